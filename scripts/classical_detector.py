"""A classical steganalysis baseline on exactly the tiles of an edgetrunc split.

Second-order SPAM features (Pevny, Bas and Fridrich, "Steganalysis by subtractive pixel
adjacency matrix", IEEE TIFS 2010; T = 3, 686 features: the 343 transition probabilities
P(D[k+2] | D[k+1], D[k]) of the truncated pixel differences, averaged over the 4 axis
directions and over the 4 diagonals), and an L2-regularized logistic regression on
standardized features, both in numpy alone. It trains on the training photos' cover
tiles with the stego messages a training run draws (the same tiles, stride and cache
entries as `edgetrunc train`), picks the regularization on the validation split by the rule that picks a
training run's best epoch (`edgetrunc.train.schedule.selection_score`: photo-weighted P_E,
then pooled P_E, then the mean per-photo AUC), and reports on the test split with edgetrunc's own metrics
(`edgetrunc.metrics.detection_report`): P_E pooled, per photo, and the test error at the
threshold chosen on the validation split.

    python scripts/classical_detector.py --embedding hill [--stego-cache DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

T = 3
BINS = 2 * T + 1
DIMS = 2 * BINS ** 3
LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # the L2 penalty per sample, tried


def _codes(d0, d1, d2):
    """Joint index of three truncated differences, each in -T..T."""
    return ((np.clip(d0, -T, T) + T) * BINS + (np.clip(d1, -T, T) + T)) * BINS + np.clip(d2, -T, T) + T


def _transitions(codes: np.ndarray) -> np.ndarray:
    """`[N, 343]` conditional probabilities P(u | v, w) from the joint codes of N tiles."""
    n = codes.shape[0]
    flat = (codes.reshape(n, -1) + np.arange(n)[:, None] * BINS ** 3).ravel()
    counts = np.bincount(flat, minlength=n * BINS ** 3).reshape(n, BINS ** 2, BINS)
    total = counts.sum(axis=2, keepdims=True)
    return np.divide(counts, total, out=np.zeros(counts.shape), where=total > 0).reshape(n, -1)


def spam686(tiles) -> np.ndarray:
    """Second-order SPAM features `[N, 686]` of gray tiles `[N, H, W]` or `[N, H, W, 1]`."""
    x = np.asarray(tiles)
    x = (x[..., 0] if x.ndim == 4 else x).astype(np.int16)
    axis, diagonal = np.zeros((x.shape[0], BINS ** 3)), np.zeros((x.shape[0], BINS ** 3))
    for k in range(4):  # the 4 rotations turn -> into the 4 axis directions, and the diagonal alike
        r = np.rot90(x, k, axes=(1, 2))
        d = r[:, :, :-1] - r[:, :, 1:]
        axis += _transitions(_codes(d[:, :, :-2], d[:, :, 1:-1], d[:, :, 2:]))
        d = r[:, :-1, :-1] - r[:, 1:, 1:]
        diagonal += _transitions(_codes(d[:, :-2, :-2], d[:, 1:-1, 1:-1], d[:, 2:, 2:]))
    return np.concatenate([axis / 4, diagonal / 4], axis=1)


def features(tiles, chunk: int = 32) -> np.ndarray:
    return np.concatenate([spam686(tiles[i:i + chunk]) for i in range(0, len(tiles), chunk)])


def _logistic_loss(xb, sign, w, lam) -> float:
    return float(np.logaddexp(0, -sign * (xb @ w)).mean() + 0.5 * lam * w[:-1] @ w[:-1])


def fit_logistic(x, y, lam: float, steps: int = 100) -> np.ndarray:
    """Weights `[d + 1]` (bias last) of an L2-regularized logistic regression: Newton's method
    with a backtracking line search on the (strictly convex) mean log-loss + lam/2 |w|^2."""
    xb = np.hstack([x, np.ones((x.shape[0], 1))])
    sign, penalty = 2.0 * y - 1.0, np.append(np.full(x.shape[1], lam), 0.0)
    w = np.zeros(xb.shape[1])
    loss = _logistic_loss(xb, sign, w, lam)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) / len(y) + penalty * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb / len(y) + np.diag(penalty + 1e-10)
        step, t = np.linalg.solve(hess, grad), 1.0
        while t > 1e-6 and _logistic_loss(xb, sign, w - t * step, lam) > loss - 0.25 * t * grad @ step:
            t /= 2
        w = w - t * step
        new = _logistic_loss(xb, sign, w, lam)
        if loss - new < 1e-12:
            break
        loss = new
    return w


def predict(w, x) -> np.ndarray:
    return 1 / (1 + np.exp(-(np.hstack([x, np.ones((x.shape[0], 1))]) @ w)))


def training_set(args, settings):
    """Cover/stego features of the training tiles, with K messages per tile (as training draws)."""
    from edgetrunc.data.covers import resolve_covers
    from edgetrunc.data.dataset import pair_batches, training_tiles
    from edgetrunc.data.splits import split_sources

    covers = resolve_covers(args.covers)
    splits = split_sources(covers, seed=args.seed)
    by_name = {c.name: c for c in covers}
    tiles = training_tiles([by_name[n] for n in splits["train"]], stride=args.stride, seed=args.seed)
    if settings.cached:
        from edgetrunc.data.stego_tiles import prefill_training
        tiles = tiles.subset(prefill_training(tiles, [args.payload], args.seed, settings))
    xs, ys = [], []
    for message in range(args.messages):
        for x, y in pair_batches(tiles, args.payload, 32, seed=args.seed, epoch=message,
                                 augment=False, drop_remainder=False, stego=settings):
            xs.append(features(x))
            ys.append(y)
    return np.concatenate(xs), np.concatenate(ys), len(tiles)


def run(args) -> dict:
    from edgetrunc.data.dataset import load_pairs
    from edgetrunc.data.stego_cache import StegoSettings
    from edgetrunc.metrics import detection_report, error_at
    from edgetrunc.train.schedule import selection_score

    started = time.monotonic()
    settings = StegoSettings.of_run(args.embedding, args.stego_cache, args.workers, args.messages)
    x_train, y_train, n_tiles = training_set(args, settings)
    scored = {split: load_pairs(args.covers, split, args.payload, args.seed,
                                stride=args.eval_stride, stego=settings) for split in ("val", "test")}
    feats = {split: features(pairs.x) for split, pairs in scored.items()}
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    z_train = (x_train - mean) / std
    best = None
    for lam in LAMBDAS:  # chosen on validation by the rule that picks a training's best epoch
        w = fit_logistic(z_train, y_train.astype(float), lam)
        val = detection_report(scored["val"].y, predict(w, (feats["val"] - mean) / std),
                               scored["val"].sources)
        if best is None or selection_score(val) < best[0]:
            best = (selection_score(val), lam, w, val)
    _, lam, w, val = best
    test = scored["test"]
    scores = predict(w, (feats["test"] - mean) / std)
    report = detection_report(test.y, scores, test.sources)
    report["error_at_val_threshold"] = error_at(test.y, scores, val["p_e_photo_mean_threshold"])
    return {"detector": "SPAM686 + L2 logistic regression", "embedding": args.embedding,
            "payload": args.payload, "seed": args.seed, "train_tiles": n_tiles,
            "train_stride": args.stride, "messages": args.messages,
            "train_samples": int(len(y_train)), "eval_stride": args.eval_stride,
            "lambda": lam, "val": {"p_e": val["p_e"], "p_e_photo_mean": val["p_e_photo_mean"],
                                   "auc": {k: f["auc"] for k, f in val["per_source"].items()}},
            "test": report, "test_pairs": test.n_pairs,
            "seconds": round(time.monotonic() - started, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--embedding", default="lsbm")
    p.add_argument("--covers", default="embedded")
    p.add_argument("--payload", type=float, default=0.4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stride", type=int, default=64, help="training tile stride (as in training)")
    p.add_argument("--eval-stride", type=int, default=128)
    p.add_argument("--messages", type=int, default=2, help="stego messages per training tile")
    p.add_argument("--stego-cache", default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, default=float))
    else:
        t = result["test"]
        print(f"{args.embedding}: test P_E {t['p_e']:.3f} pooled, {t['p_e_photo_mean']:.3f} "
              f"photo-weighted ({result['test_pairs']} pairs; lambda {result['lambda']:g})")
        for name, f in t["per_source"].items():
            print(f"  {name}: P_E {f['p_e']:.3f}, AUC {f['auc']:.3f}, error {f['error']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
