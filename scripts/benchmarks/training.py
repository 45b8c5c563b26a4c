"""Training throughput of `tlunet` with its Truncation vs the same model with ReLU in its place.

Both models are built with the same seed, compiled the same way (Adam, sparse categorical
cross-entropy) and fed the same cover/stego pair batch; their training steps are timed
interleaved (A, B, A, B, ...) so that load on the machine hits both alike. Prints a table
and writes it to the "training" section of BENCHMARKS.md.

    python -m scripts.benchmarks training [--rounds 6] [--steps 3] [--batch-pairs 16] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from scripts.benchmarks._markdown import (ROOT, machine_description, markdown_table,  # noqa: E402
                                          publish)


def shipped_run_summary() -> list[str]:
    """Lines on the run that trained models/tlunet.keras, from its training record."""
    import json

    record_file = ROOT / "models" / "tlunet.training.json"
    if not record_file.exists():
        return []
    record = json.loads(record_file.read_text())
    test = record.get("test") or {}
    return [
        "",
        "### The shipped training run (`make train`, from `models/tlunet.training.json`)",
        "",
        markdown_table(("wall time", "training images", "training images/s", "epochs",
                        "best epoch", "test P_E", "test P_E, photos weighted equally"),
                       [(f"{record['wall_seconds'] / 60:.1f} min", record["trained_images"],
                         f"{record['images_per_second']:.1f}", len(record["epochs"]),
                         record["best_epoch"], f"{test.get('p_e', float('nan')):.3f}",
                         f"{test.get('p_e_photo_mean', float('nan')):.3f}")]),
        "",
        "Images/s counts training images only (validation, batch-norm re-estimation and "
        "checkpoints excluded); the run shared its 2 cores with other jobs.",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default: 6)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per round (default: 3)")
    parser.add_argument("--batch-pairs", type=int, default=16, help="pairs per batch (default: 16)")
    parser.add_argument("--front-end", default="kv", help="front end of tlunet (default: kv)")
    parser.add_argument("--note", default="", help="a line added under the table (e.g. load)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from edgetrunc.data import load_pairs
    from edgetrunc.models import create

    pairs = load_pairs("embedded", split="train", payload=0.4, seed=0, max_pairs=args.batch_pairs)
    x, y = pairs.x, pairs.y
    variants = {"Truncation (T=3)": True, "ReLU in its place": False}
    models = {}
    for name, truncation in variants.items():
        model = create("tlunet", seed=0, truncation=truncation, front_end=args.front_end)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        for _ in range(2):
            model.train_on_batch(x, y)
        models[name] = model
    rates = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(x, y)
            rates[name].append(args.steps * len(x) / (time.perf_counter() - start))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    reference = medians["ReLU in its place"]
    rows = [(name, f"{medians[name]:.1f}", f"{min(r):.1f} - {max(r):.1f}",
             f"{reference / medians[name]:.3f}") for name, r in rates.items()]
    ratio = reference / medians["Truncation (T=3)"]
    table = markdown_table(("model", "images/s (median)", "range over rounds",
                            "time ratio vs ReLU"), rows)
    text = "\n".join([
        "## Training throughput: Truncation vs ReLU",
        "",
        f"`python -m scripts.benchmarks training` on {machine_description()}; TensorFlow "
        f"{tf.__version__}, Keras {keras.__version__}. `tlunet` (front end `{args.front_end}`), "
        f"batch of {args.batch_pairs} cover/stego pairs ({len(x)} images of 256x256), "
        f"`train_on_batch`, {args.rounds} interleaved rounds of {args.steps} steps each.",
        "",
        table,
        "",
        f"Training time with Truncation / with ReLU: **{ratio:.3f}** (goal <= 1.05: "
        f"{'met' if ratio <= 1.05 else 'not met'}).",
    ] + ([args.note] if args.note else []) + shipped_run_summary())
    return publish("training", text, not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
