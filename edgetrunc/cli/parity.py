"""`edgetrunc parity`: compare a Keras model with its TFLite / ONNX artifacts and report.

Every output path (the reports, --save-inputs, the --stego-cache folder) is checked before
anything runs or is created, against the others and every input (`_io.check_run_paths`;
unwritable path, a folder, one file twice, an input: exit 2). The terminal table goes to
stdout (to stderr when the JSON report goes to stdout with `--json -`); exit 0 when every artifact passes, 1 on a parity failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edgetrunc.cli import _args
from edgetrunc.cli._args import positive_int

DESCRIPTION = ("Compare Keras with every artifact on inputs of the model's own geometry (input "
               "size and channels read from the model; 256x256 for a free size). Exit 0 pass, "
               "1 parity failure, 2 error.")
MAX_SAMPLES = 1_000_000


def add_arguments(p) -> None:
    from edgetrunc.parity.check import check_parity as f

    p.add_argument("model", metavar="MODEL.keras")
    p.add_argument("artifacts", metavar="ARTIFACT", nargs="*",
                   help=".tflite or .onnx files, or .npz outputs recorded by `edgetrunc run` "
                   "(none with --load-outputs: Keras alone against the golden outputs)")
    _args.add_parameter(p, f, "samples", "number of inputs", type=_args.count(MAX_SAMPLES))
    _args.add_parameter(p, f, "inputs", "mix, random, covers, stego, a folder of images, or the "
                        "FILE.npz of an earlier --save-inputs")
    _args.add_stego(p)
    _args.add_parameter(p, f, "per_layer", "compare every layer, name the first divergent",
                        action="store_true")
    _args.add_parameter(p, f, "per_layer_samples", "with --per-layer: inputs compared layer by "
                        "layer, the first of the --samples inputs; for int8 artifacts the first "
                        "photos among them, inside the calibration domain",
                        flag="--layer-samples", type=_args.count(MAX_SAMPLES))
    _args.add_parameter(p, f, "strict_layers", "with --per-layer: a divergent layer fails the "
                        "check even when the outputs pass", action="store_true")
    _args.add_parameter(p, f, "strict_nan", "NaN deviations in probes fail the check",
                        action="store_true")
    _args.add_parameter(p, f, "probes", "skip the truncation boundary probes", flag="--no-probes",
                        action="store_false")
    _args.add_parameter(p, f, "atol", "override the absolute tolerance", type=float)
    _args.add_parameter(p, f, "rtol", "override the relative tolerance", type=float)
    p.add_argument("--json", metavar="FILE", default=None, help="write the JSON report ('-' for stdout)")
    p.add_argument("--html", metavar="FILE", default=None, help="write a self-contained HTML report")
    _args.add_custom_objects(p, f)
    _args.add_trust_lambda(p, f, "load Lambda layers that are not truncations and run them as "
                           "traced (this runs code stored in the file; edgetrunc migrate "
                           "replaces truncations and common elementwise Lambdas instead)")
    _args.add_seed(p, f, "seed of the inputs")
    _args.add_threads(p, f, "threads of each TFLite / ONNX Runtime backend (default: every "
                      "usable core)")
    _args.add_parameter(p, f, "batch_size", "inputs per inference call", type=positive_int)
    _args.add_parameter(p, f, "save_inputs", "write the inputs used, for `edgetrunc run` on a "
                        "device; compare its outputs later with `parity MODEL OUTPUTS.npz "
                        "--inputs FILE.npz`", metavar="FILE.npz")
    _args.add_parameter(p, f, "save_outputs", "write golden outputs: the inputs, every runner's "
                        "outputs (each layer's Keras output with --per-layer) and the "
                        "toolchain's versions", metavar="FILE.npz")
    _args.add_parameter(p, f, "load_outputs", "run on the inputs of a golden file and fail where "
                        "today's Keras or artifacts moved from its outputs (replaces --inputs)",
                        metavar="FILE.npz")
    _args.add_force(p, f, "let --save-outputs replace an existing file")


def _check_report_path(path, option) -> None:
    from edgetrunc.errors import InputError

    if path is None or str(path) == "-":
        return
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: folder {existing} is not writable")
    if target.exists() and not os.access(target, os.W_OK):
        raise InputError(f"{option} {path}: file is not writable")


def _check_options(args) -> None:
    from edgetrunc import _log
    from edgetrunc._io import check_run_paths
    from edgetrunc.errors import InputError
    from edgetrunc.parity.inputs import KINDS

    check_run_paths({"--json": args.json, "--html": args.html, "--save-inputs": args.save_inputs,
                     "--save-outputs": args.save_outputs, "--stego-cache": args.stego_cache},
                    {"MODEL": args.model, "ARTIFACT": args.artifacts,
                     "--inputs": None if args.inputs in KINDS else args.inputs,
                     "--load-outputs": args.load_outputs},
                    folders=("--stego-cache",))
    if args.inputs in ("mix", "random", "covers", "stego") and Path(args.inputs).is_dir():
        _log.warn(f"--inputs {args.inputs}: the built-in '{args.inputs}' inputs are used, not the "
                  f"folder of that name; pass ./{args.inputs} for the folder")
    _check_report_path(args.json, "--json")
    _check_report_path(args.html, "--html")
    _check_report_path(args.save_inputs, "--save-inputs")
    _check_report_path(args.save_outputs, "--save-outputs")
    if not args.artifacts and not args.load_outputs:
        raise InputError("ARTIFACT: expected one or more .tflite / .onnx files (or --load-outputs)")
    if args.strict_layers and not args.per_layer:
        raise InputError("--strict-layers: needs --per-layer (it judges the per-layer comparison)")
    if args.html == "-":
        raise InputError("--html -: the HTML report needs a file path")


def run(args) -> int:
    from edgetrunc import _log
    from edgetrunc.parity.check import check_parity
    from edgetrunc.parity.inputs import protected_inputs
    from edgetrunc.parity.report import terminal_report, write_html, write_json

    _check_options(args)
    protect = protected_inputs(args.model, args.artifacts, args.load_outputs or args.inputs)
    report = check_parity(args.model, args.artifacts,
                          **_args.keywords(check_parity, args, exclude=("model", "artifacts")))
    flags = _args.flags_of(add_arguments)
    table = terminal_report(report, flags)
    stream = sys.stderr if args.json == "-" else sys.stdout
    stream.write(table)
    stream.flush()
    if args.json:
        write_json(report, args.json, protect=protect)
        if args.json != "-":
            _log.info(f"wrote {args.json}")
    if args.html:
        write_html(report, args.html, protect=protect, flags=flags)
        _log.info(f"wrote {args.html}")
    return 0 if report.passed else 1
