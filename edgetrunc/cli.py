"""Command line: argument parsing only; every command calls the Python API.

Each subcommand's glue (calling the API, printing the table or JSON) lives in
`edgetrunc/_cli/<command>.py` as `run(args) -> exit code`, imported only when that command
runs, so `edgetrunc infer` never imports TensorFlow. Errors the user can cause end in one
line on stderr and exit code 2; a failed check (parity, accuracy) exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from edgetrunc._version import __version__
from edgetrunc.errors import EdgetruncError


def _csv(kind, allowed=None):
    def parse(text):
        items = [item.strip() for item in text.split(",") if item.strip()]
        if allowed is not None:
            bad = [item for item in items if item not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"unknown {kind} {', '.join(bad)!s}; expected any of {', '.join(allowed)}"
                )
        return items

    return parse


def _int_list(text):
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers; got {text!r}")
    return values


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _payload(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1]; got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"payload must be in (0, 1] bits per pixel; got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgetrunc",
        description="Train, export, parity-check and run Keras models with Truncation "
        "(hard clip) layers on edge devices.",
        epilog="Exit codes: 0 success, 1 the check failed (parity, accuracy), 2 bad input or usage.",
    )
    parser.add_argument("--version", action="version", version=f"edgetrunc {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or logs on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a registered model on cover/stego pairs",
                       description="Train a registered model (default tlunet) on 256x256 "
                       "cover/stego tile pairs and write the model plus a training record.")
    p.add_argument("--model", default="tlunet", help="registered model name (default: tlunet)")
    p.add_argument("--covers", default="embedded",
                   help="'embedded' (scikit-image photos) or a folder of PNG/PGM/TIFF images")
    p.add_argument("--payload", type=_payload, default=0.4,
                   help="LSB-matching payload in bits per pixel (default: 0.4)")
    p.add_argument("--epochs", type=_positive_int, default=30, help="maximum epochs (default: 30)")
    p.add_argument("--batch-size", type=_positive_int, default=16,
                   help="pairs per batch; each pair is a cover and its stego (default: 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (default: 1e-3)")
    p.add_argument("--patience", type=_positive_int, default=8,
                   help="early stopping patience in epochs (default: 8)")
    p.add_argument("--curriculum", type=str, default=None,
                   help="payload schedule from high to the target, e.g. '1.0,0.7,0.4'")
    p.add_argument("--max-tiles", type=_positive_int, default=None,
                   help="use at most this many training tiles (quick runs)")
    p.add_argument("--stride", type=_positive_int, default=None,
                   help="tile stride for training tiles (default: 256, non-overlapping)")
    p.add_argument("--strategy", default="default",
                   help="tf.distribute strategy: default, mirrored, or one/device (default: default)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="model builder argument, repeatable (e.g. front_end=srm6, width=2)")
    p.add_argument("--stage-epochs", type=_positive_int, default=2,
                   help="epochs per curriculum stage before the target payload (default: 2)")
    p.add_argument("--lr-schedule", choices=("cosine", "plateau", "constant"), default="cosine",
                   help="learning-rate schedule (default: cosine)")
    p.add_argument("--time-budget", type=float, default=None, metavar="MIN",
                   help="wall-time budget in minutes; no epoch starts that would overrun it")
    p.add_argument("--eval-stride", type=_positive_int, default=128,
                   help="tile stride of the validation and test tiles (default: 128)")
    p.add_argument("--max-eval-pairs", type=_positive_int, default=None,
                   help="use at most this many validation and test pairs (quick runs)")
    p.add_argument("--bn-reestimate", choices=("epoch", "end", "none"), default="epoch",
                   help="re-estimate batch-norm statistics on training tiles after every "
                   "epoch, once at the end, or never (default: epoch)")
    p.add_argument("--frozen-bn", type=float, default=0.0, metavar="FRACTION",
                   help="last fraction of the epochs trained with batch norm frozen in "
                   "inference mode, after re-estimating its statistics (default: 0)")
    p.add_argument("--out", default="models/tlunet.keras", help="output .keras path")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--force", action="store_true", help="replace an existing output")

    p = sub.add_parser("evaluate", help="accuracy, AUC, P_E of a .keras, .tflite or .onnx model",
                       description="Evaluate a detector on the held-out test split (or a folder).")
    p.add_argument("model", metavar="MODEL", help=".keras, .tflite or .onnx file")
    p.add_argument("--covers", default="embedded",
                   help="'embedded' (held-out test photos) or a folder of cover images")
    p.add_argument("--payload", type=_payload, default=0.4, help="payload in bpp (default: 0.4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and embedding (default: 0)")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default=None,
                   help="which photos to score (default: test for embedded, all for a folder)")
    p.add_argument("--stride", type=_positive_int, default=128,
                   help="tile stride in pixels (default: 128, as in the training record)")
    p.add_argument("--max-pairs", type=_positive_int, default=None, help="score at most this many pairs")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")

    p = sub.add_parser("convert", help="export to TFLite and ONNX with the truncation mapping checked",
                       description="Convert a Keras model (.keras, or a full-model .h5) to TFLite and "
                       "ONNX; every artifact is read back and its truncation mapping checked.")
    p.add_argument("model", metavar="MODEL", help=".keras or full-model .h5 file")
    p.add_argument("--out", default=None, help="output folder (default: beside the model)")
    p.add_argument("--tflite", type=_csv("precision", ("fp32", "fp16", "int8")),
                   default=["fp32", "fp16", "int8"], help="TFLite precisions (default: fp32,fp16,int8)")
    p.add_argument("--onnx", type=_csv("precision", ("fp32", "int8")), default=["fp32", "int8"],
                   help="ONNX precisions (default: fp32,int8)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 13..21 (default: 17)")
    p.add_argument("--nchw", action="store_true", help="ONNX input as NCHW instead of NHWC")
    p.add_argument("--calibration", default="embedded",
                   help="int8 calibration images: 'embedded' or a folder (default: embedded)")
    p.add_argument("--int8-io", action="store_true", help="TFLite int8 with int8 input/output")
    p.add_argument("--int8-mode", choices=("truncation-aware", "stock"), default="truncation-aware",
                   help="int8 quantization: truncation-aware (float before the first truncation, "
                   "clip by int8 saturation) or the converters' stock full-integer path, for "
                   "comparison (default: truncation-aware)")
    p.add_argument("--pack-front-end", action="store_true",
                   help="fp32/fp16 TFLite: pack one-channel convolutions 4 pixels per channel "
                   "(faster on XNNPACK; int8 always does)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON on stdout")
    p.add_argument("--force", action="store_true", help="replace existing artifacts")

    p = sub.add_parser("parity", help="prove converted models compute what the Keras model computes",
                       description="Compare Keras with every artifact on 256x256 inputs. "
                       "Exit 0 pass, 1 parity failure, 2 error.")
    p.add_argument("model", metavar="MODEL.keras")
    p.add_argument("artifacts", metavar="ARTIFACT", nargs="+",
                   help=".tflite or .onnx files, or .npz outputs recorded by `edgetrunc run`")
    p.add_argument("--samples", type=_positive_int, default=64, help="number of inputs (default: 64)")
    p.add_argument("--inputs", default="mix",
                   help="mix, random, covers, stego, a folder of images, or the FILE.npz of an "
                   "earlier --save-inputs (default: mix)")
    p.add_argument("--per-layer", action="store_true", help="compare every layer, name the first divergent")
    p.add_argument("--strict-layers", action="store_true",
                   help="with --per-layer: a divergent layer fails the check even when the outputs pass")
    p.add_argument("--strict-nan", action="store_true", help="NaN deviations in probes fail the check")
    p.add_argument("--no-probes", action="store_true", help="skip the truncation boundary probes")
    p.add_argument("--atol", type=float, default=None, help="override the absolute tolerance")
    p.add_argument("--rtol", type=float, default=None, help="override the relative tolerance")
    p.add_argument("--json", metavar="FILE", default=None, help="write the JSON report ('-' for stdout)")
    p.add_argument("--html", metavar="FILE", default=None, help="write a self-contained HTML report")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs (default: 0)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="threads of each TFLite / ONNX Runtime backend (default: every usable core)")
    p.add_argument("--batch-size", type=_positive_int, default=16,
                   help="inputs per inference call (default: 16)")
    p.add_argument("--save-inputs", metavar="FILE.npz", default=None,
                   help="write the inputs used, for `edgetrunc run` on a device; compare its "
                   "outputs later with `parity MODEL OUTPUTS.npz --inputs FILE.npz`")

    p = sub.add_parser("infer", help="stego probability of images with a .tflite or .onnx model (no TensorFlow)",
                       description="Score images (tiled into 256x256) with a converted model.")
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--threads", type=_positive_int, default=None, help="interpreter threads")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")

    p = sub.add_parser("run", help="record an artifact's outputs on saved inputs, for parity elsewhere (no TensorFlow)",
                       description="Run a .tflite or .onnx artifact on the inputs saved by "
                       "`edgetrunc parity --save-inputs` and record its outputs (with the artifact's hash and "
                       "this machine's platform); compare them with Keras on another machine: "
                       "`edgetrunc parity MODEL.keras OUTPUTS.npz --inputs INPUTS.npz`.")
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("inputs", metavar="INPUTS.npz")
    p.add_argument("--out", required=True, metavar="OUTPUTS.npz")
    p.add_argument("--threads", type=_positive_int, default=None, help="interpreter threads")
    p.add_argument("--json", action="store_true", help="print the recording's metadata as JSON")

    p = sub.add_parser("bench", help="latency and throughput of .tflite / .onnx artifacts (no TensorFlow)",
                       description="Benchmark artifacts interleaved; latency percentiles, throughput, peak memory.")
    p.add_argument("artifacts", metavar="ARTIFACT", nargs="+")
    p.add_argument("--threads", type=_int_list, default=[1], help="thread counts, e.g. 1,2 (default: 1)")
    p.add_argument("--runs", type=_positive_int, default=50, help="timed runs (default: 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default: 5)")
    p.add_argument("--batch", type=_positive_int, default=1, help="batch size (default: 1)")
    p.add_argument("--no-xnnpack", action="store_true",
                   help="TFLite: built-in kernels instead of the XNNPACK delegate")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")

    p = sub.add_parser("migrate", help="turn a legacy model's truncations into Truncation layers, as .keras",
                       description="Load a legacy model (Keras 3 .keras, or tf.keras 2 .h5, .keras or "
                       "SavedModel folder) whose truncation is a Lambda, a tf.clip_by_value / "
                       "minimum-maximum op layer or a custom class named with --truncation-class; "
                       "replace each with Truncation, check that outputs are unchanged, save as .keras.")
    p.add_argument("legacy", metavar="LEGACY", help="a .keras or .h5 file, or a SavedModel folder")
    p.add_argument("--out", required=True, metavar="NEW.keras")
    p.add_argument("--trust-lambda", action="store_true",
                   help="allow loading Lambda layers (this runs code stored in the file)")
    p.add_argument("--json", action="store_true", help="print the migration report as JSON")
    p.add_argument("--define", action="append", default=[], metavar="NAME=VALUE",
                   help="a global a saved lambda reads but the file does not store, e.g. T=3.0 "
                   "(VALUE is a Python literal; repeatable)")
    p.add_argument("--truncation-class", action="append", default=[], metavar="CLASS[=T]",
                   help="a custom layer class of the legacy file that is a truncation (clip to "
                   "[-T, T]): map it to Truncation, T from its saved config or given (repeatable)")
    return parser


_TENSORFLOW_COMMANDS = ("train", "convert", "parity")
_RUNTIME_SUFFIXES = (".tflite", ".onnx")


def _quiet_tensorflow(args):
    """TensorFlow's logs off; commands that use it import it first, with its banner kept
    off stderr (oneDNN stays on, TensorFlow's default: 2-3x faster convolutions on x86)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    keras_model = args.command == "evaluate" and not str(args.model).lower().endswith(_RUNTIME_SUFFIXES)
    if args.command in _TENSORFLOW_COMMANDS or keras_model:
        from edgetrunc import _log

        try:
            _log.import_tensorflow_quietly()
        except ImportError:
            pass  # the command says what to install when it needs TensorFlow
    else:  # TensorFlow only if needed, late (migrate refuses lambdas without it): no banner
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    _quiet_tensorflow(args)
    from edgetrunc import _log

    _log.set_quiet(args.quiet)
    try:
        module = importlib.import_module(f"edgetrunc._cli.{args.command}")
        return int(module.run(args) or 0)
    except EdgetruncError as exc:
        message = str(exc).replace("\r", "\\r").replace("\n", "\\n")  # one line, even for odd file names
        print(f"edgetrunc {args.command}: error: {message}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the file system refused (disk full, permissions, read-only, ...)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"edgetrunc {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgetrunc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
