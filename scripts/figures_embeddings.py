"""Figures per embedding for docs/TRAINING.md: fill the stego cache, then tabulate.

`fill EMBEDDING`: embeds, into the stego cache, every stego tile a training run with the
given settings will use (the training tiles' K messages and the validation, test and probe
tiles), timed, so that the run's `--time-budget` is spent on training alone.
`table`: reads each run's `evaluate --json` output, training record and classical-detector
figures (scripts/classical_detector.py) and prints the markdown tables the figures section
is written from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def fill(args) -> int:
    from edgetrunc.train.config import TrainConfig
    from edgetrunc.train.loop import prepare_data

    config = TrainConfig(embedding=args.embedding, payload=args.payload, stride=args.stride,
                         messages=args.messages, stego_cache=args.stego_cache,
                         workers=args.workers, seed=args.seed, curriculum=args.curriculum)
    started = time.monotonic()
    data = prepare_data(config)
    seconds = time.monotonic() - started
    stats = config.stego.stats
    out = {"embedding": args.embedding, "payload": args.payload, "messages": args.messages,
           "stride": args.stride, "training_tiles": len(data.tiles), "seconds": round(seconds, 1),
           "cache": stats.describe() if hasattr(stats, "describe") else str(stats),
           "workers": config.stego.workers}
    print(json.dumps(out))
    return 0


def _load(path):
    return json.loads(Path(path).read_text()) if path else None


def _f(value, digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _overview_row(name, cnn, spam, record) -> str:
    t = cnn
    training = (f"{record['wall_seconds'] / 60:.1f} min, {len(record['epochs'])} epochs"
                if record else "-")
    return (f"| {name} | {t['pairs']} | {_f(t['auc'])} | **{_f(t['p_e'])}** | "
            f"**{_f(t['p_e_photo_mean'])}** | {_f(spam['test']['auc'])} | {_f(spam['test']['p_e'])} | "
            f"{_f(spam['test']['p_e_photo_mean'])} | {training} |")


def _photo_rows(cnn, spam) -> list:
    rows = ["| test photo | pairs | JPEG history | tlunet AUC | tlunet P_E (own threshold) | "
            "tlunet error at the shared threshold | SPAM AUC | SPAM P_E (own threshold) | "
            "SPAM error at the shared threshold |", "|---|---|---|---|---|---|---|---|---|"]
    for name, f in cnn["per_source"].items():
        g = spam["test"]["per_source"].get(name, {})
        jpeg = "yes" if f.get("jpeg_history") else "no"
        rows.append(f"| {name} | {f.get('pairs', f['samples'] // 2)} | {jpeg} | {_f(f['auc'])} | "
                    f"{_f(f['p_e'])} | {_f(f['error'])} | {_f(g.get('auc'))} | {_f(g.get('p_e'))} | "
                    f"{_f(g.get('error'))} |")
    return rows


def table(args) -> int:
    """Markdown: one overview row per embedding, then each embedding's per-photo table."""
    entries = []
    for item in args.entry:
        name, _, paths = item.partition("=")
        files = (paths.split(",") + [None] * 4)[:4]
        entries.append((name, *[_load(f) for f in files]))
    lines = ["| embedding | test pairs | tlunet AUC | tlunet P_E pooled | tlunet P_E, photos "
             "weighted equally | SPAM AUC | SPAM P_E pooled | SPAM P_E, photos weighted equally | "
             "training |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [_overview_row(name, cnn, spam, record) for name, cnn, spam, record, _ in entries]
    for name, cnn, spam, record, filled in entries:
        lines += ["", f"{name}:", ""] + _photo_rows(cnn, spam)
        notes = [f"SPAM: lambda {spam['lambda']:g}, {spam['train_samples']} training samples "
                 f"({spam['train_tiles']} tiles x {spam['messages']} messages x cover/stego), "
                 f"test error at the validation-chosen threshold {_f(spam['test']['error_at_val_threshold'])}"]
        if record:
            notes.append(f"tlunet: {record['wall_seconds'] / 60:.1f} min, {len(record['epochs'])} "
                         f"epochs ({record['stop_reason']}), best epoch {record['best_epoch']}, "
                         f"{record['images_per_second']:.1f} images/s; validation P_E "
                         f"{_f(record['val']['p_e'])}, photo-weighted {_f(record['val']['p_e_photo_mean'])}")
        if filled:
            notes.append(f"stego cache filled in {filled['seconds']:.0f} s ({filled['cache']}, "
                         f"{filled['workers']} workers)")
        lines += [""] + [f"- {note}" for note in notes]
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fill", help="embed a run's stego tiles into the cache, timed")
    f.add_argument("embedding")
    f.add_argument("--payload", type=float, default=0.4)
    f.add_argument("--stride", type=int, default=64)
    f.add_argument("--messages", type=int, default=2)
    f.add_argument("--curriculum", default=None)
    f.add_argument("--stego-cache", default=None)
    f.add_argument("--workers", type=int, default=None)
    f.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("table", help="print the markdown tables of the figures")
    t.add_argument("--entry", action="append", required=True,
                   help="NAME=EVALUATE.json,CLASSICAL.json[,RECORD.training.json[,FILL.json]]")
    args = p.parse_args(argv)
    return {"fill": fill, "table": table}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
