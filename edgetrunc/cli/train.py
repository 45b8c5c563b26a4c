"""`edgetrunc train`: train a registered detector and write it with its training record.

Assembles `edgetrunc.train.train(...)` from the parsed options; progress and per-epoch
figures go to stderr, and the closing summary (test accuracy, AUC, P_E, pooled and per
photo) to stdout.
"""

from __future__ import annotations

import shlex
import sys

from edgetrunc.cli import _args
from edgetrunc.cli._args import positive_int

DESCRIPTION = ("Train a registered model (default tlunet) on cover/stego tile pairs of the "
               "model's input size and "
               "write the model plus a training record.")


def add_arguments(p) -> None:
    p.add_argument("--model", default="tlunet", help="registered model name (default: tlunet)")
    _args.add_covers(p, "'embedded' (scikit-image photos) or a folder of PNG/PGM/TIFF images")
    _args.add_payload(p, "payload in bits per pixel (default: 0.4)")
    _args.add_stego(p, messages=True)
    p.add_argument("--epochs", type=positive_int, default=30, help="maximum epochs (default: 30)")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="pairs per batch; each pair is a cover and its stego (default: 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (default: 1e-3)")
    p.add_argument("--patience", type=positive_int, default=8,
                   help="early stopping patience in epochs (default: 8)")
    p.add_argument("--curriculum", type=str, default=None,
                   help="payload schedule from high to the target, e.g. '1.0,0.7,0.4'")
    p.add_argument("--max-tiles", type=positive_int, default=None,
                   help="use at most this many training tiles (quick runs)")
    p.add_argument("--stride", type=positive_int, default=None,
                   help="tile stride for training tiles (default: the model's input size, "
                   "non-overlapping)")
    p.add_argument("--strategy", default="default",
                   help="tf.distribute strategy: default, mirrored, multiworker (several "
                   "machines, the cluster from TF_CONFIG; only the chief writes --out), or "
                   "one:DEVICE (default: default)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="model builder argument, repeatable (e.g. front_end=srm6, width=2)")
    p.add_argument("--stage-epochs", type=positive_int, default=2,
                   help="epochs per curriculum stage before the target payload (default: 2)")
    p.add_argument("--lr-schedule", choices=("cosine", "plateau", "constant"), default="cosine",
                   help="learning-rate schedule (default: cosine)")
    p.add_argument("--time-budget", type=float, default=None, metavar="MIN",
                   help="wall-time budget in minutes; no epoch starts that would overrun it")
    p.add_argument("--eval-stride", type=positive_int, default=128,
                   help="tile stride of the validation and test tiles (default: 128)")
    p.add_argument("--max-eval-pairs", type=positive_int, default=None,
                   help="use at most this many validation and test pairs (quick runs)")
    p.add_argument("--stream", choices=("auto", "on", "off"), default="auto",
                   help="read the training tiles from the cover files every epoch instead of "
                   "holding them in memory (auto: a folder over 64 MiB of decoded pixels)")
    p.add_argument("--shuffle-buffer", type=positive_int, default=1024, metavar="PAIRS",
                   help="pairs in the shuffle buffer of a streamed epoch (default: 1024)")
    p.add_argument("--bn-reestimate", choices=("epoch", "end", "none"), default="epoch",
                   help="re-estimate batch-norm statistics on training tiles after every "
                   "epoch, once at the end, or never (default: epoch)")
    p.add_argument("--frozen-bn", type=float, default=0.0, metavar="FRACTION",
                   help="last fraction of the epochs trained with batch norm frozen in "
                   "inference mode, after re-estimating its statistics (default: 0)")
    p.add_argument("--qat", action="store_true",
                   help="quantization-aware fine-tuning for full-integer export: after training "
                   "(or of the --init model), written beside the output as <name>_qat.keras")
    p.add_argument("--init", default=None, metavar="MODEL.keras",
                   help="with --qat: fine-tune this trained model instead of training one")
    p.add_argument("--qat-epochs", type=positive_int, default=2,
                   help="quantization-aware fine-tuning epochs (default: 2)")
    p.add_argument("--qat-lr", type=float, default=1e-5,
                   help="quantization-aware fine-tuning learning rate (default: 1e-5)")
    p.add_argument("--qat-pairs", type=positive_int, default=256,
                   help="cover/stego training pairs of the fine-tuning (default: 256)")
    _args.add_out(p, "output .keras path", default="models/tlunet.keras")
    _args.add_seed(p)
    _args.add_force(p, "replace an existing output")


def _summary(record) -> str:
    if record.get("model_file") is None:  # a worker that is not the chief
        return (f"worker {record['worker']} of {record['workers']}: {record['epochs']} epochs "
                f"({record['stop_reason']}); the chief writes the model and the training record")
    lines = [f"model: {record['model_file']}  (best epoch {record['best_epoch']} of "
             f"{len(record['epochs'])}; {record['stop_reason']})",
             f"wall time: {record['wall_seconds'] / 60:.1f} min, "
             f"{record['images_per_second']:.0f} training images/s"]
    test = record.get("test")
    if test:
        lines.append(f"test ({record['data']['test_pairs']} pairs, payload "
                     f"{record['config']['payload']} bpp): accuracy {test['accuracy']:.3f}, "
                     f"AUC {test['auc']:.3f}, P_E {test['p_e']:.3f}, "
                     f"per-photo mean P_E {test['p_e_photo_mean']:.3f}")
        notes = record["data"]["photo_notes"]
        for name, figures in test["per_source"].items():
            lines.append(f"  {name:22s} P_E {figures['p_e']:.3f}  accuracy "
                         f"{figures['accuracy']:.3f}  ({figures['samples'] // 2} pairs; "
                         f"{notes[name]['note']})")
    return "\n".join(lines)


def _qat_summary(record) -> str:
    held = record["held_out"]
    return (f"quantization-aware model: {record['model_file']} ({record['epochs']} epochs, "
            f"{record['train_tiles']} tiles)\nheld-out ({held['samples']} tiles): float P_E "
            f"{held['float']['p_e']:.3f}, quantization-aware P_E {held['qat']['p_e']:.3f}, "
            f"decision agreement {held['decision_agreement_with_float']:.3f}")


def _fine_tune(args, source) -> None:
    from pathlib import Path

    from edgetrunc.train.qat import fine_tune_qat

    out = Path(args.out)
    out = out if args.init else out.with_name(f"{out.stem}_qat{out.suffix}")
    record = fine_tune_qat(source, out, covers=args.covers, payload=args.payload,
                           epochs=args.qat_epochs, max_pairs=args.qat_pairs, lr=args.qat_lr,
                           batch_size=args.batch_size, seed=args.seed, force=args.force)
    print(_qat_summary(record))


def run(args) -> int:
    from edgetrunc.errors import InputError
    from edgetrunc.train import train

    if args.init and not args.qat:
        raise InputError("init: fine-tuning an existing model is quantization-aware; add --qat",
                         param="init")
    if args.init:
        _fine_tune(args, args.init)
        return 0

    command = "edgetrunc " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else None
    record = train(model=args.model, covers=args.covers, payload=args.payload,
                   epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   patience=args.patience, curriculum=args.curriculum,
                   stage_epochs=args.stage_epochs, max_tiles=args.max_tiles, stride=args.stride,
                   strategy=args.strategy, out=args.out, seed=args.seed, force=args.force,
                   time_budget=args.time_budget, model_kwargs=args.model_arg,
                   lr_schedule=args.lr_schedule, eval_stride=args.eval_stride,
                   max_eval_pairs=args.max_eval_pairs,
                   bn_reestimate=args.bn_reestimate,
                   frozen_bn_fraction=args.frozen_bn, command=command,
                   embedding=args.embedding, messages=args.messages,
                   stego_cache=args.stego_cache, workers=args.workers, stream=args.stream,
                   shuffle_buffer=args.shuffle_buffer)
    print(_summary(record))
    if args.qat and record.get("model_file"):
        _fine_tune(args, record["model_file"])
    return 0
