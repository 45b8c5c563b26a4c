"""`edgetrunc train`: train a registered detector and write it with its training record.

Its options are declared from `TrainConfig`'s fields (and `QatOptions`), each with its
default, help and flag written once, and parse straight into a `TrainConfig`; progress and
per-epoch figures go to stderr, and the closing summary (test accuracy, AUC, P_E, pooled
and per photo) to stdout.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass

from edgetrunc._options import from_namespace, option, positive_int
from edgetrunc.cli import _args
from edgetrunc.train.config import TrainConfig
from edgetrunc.train.qat import QAT_EPOCHS, QAT_LR, QAT_TRAIN_PAIRS

DESCRIPTION = ("Train a registered model (default tlunet) on cover/stego tile pairs of the "
               "model's input size and "
               "write the model plus a training record.")


@dataclass
class QatOptions:
    """The quantization-aware fine-tuning options (`edgetrunc.train.qat.fine_tune_qat`)."""

    qat: bool = option(False, "quantization-aware fine-tuning for full-integer export: after "
                       "training (or of the --init model), written beside the output as "
                       "<name>_qat.keras", action="store_true")
    init: str | None = option(None, "with --qat: fine-tune this trained model instead of "
                              "training one", metavar="MODEL.keras")
    qat_epochs: int = option(QAT_EPOCHS, "quantization-aware fine-tuning epochs",
                             type=positive_int)
    qat_lr: float = option(QAT_LR, "quantization-aware fine-tuning learning rate", type=float)
    qat_pairs: int = option(QAT_TRAIN_PAIRS, "cover/stego training pairs of the fine-tuning",
                            type=positive_int)


def add_arguments(p) -> None:
    _args.add_options(p, TrainConfig)
    _args.add_options(p, QatOptions)


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
            f"decision agreement {held['decision_agreement_with_float']:.3f} (before fine-tuning "
            f"{held['decision_agreement_before_fine_tuning']:.3f})")


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
    record = train(from_namespace(TrainConfig, args, command=command))
    print(_summary(record))
    if args.qat and record.get("model_file"):
        _fine_tune(args, record["model_file"])
    return 0
