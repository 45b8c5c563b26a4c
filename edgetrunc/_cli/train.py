"""`edgetrunc train`: train a registered detector and write it with its training record.

Assembles `edgetrunc.train.train(...)` from the parsed options; progress and per-epoch
figures go to stderr, and the closing summary (test accuracy, AUC, P_E, pooled and per
photo) to stdout.
"""

from __future__ import annotations

import shlex
import sys


def _summary(record) -> str:
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


def run(args) -> int:
    from edgetrunc.train import train

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
                   frozen_bn_fraction=args.frozen_bn, command=command)
    print(_summary(record))
    return 0
