"""Running statistics of a layer's artifact value against its Keras reference, chunk by chunk.

The per-layer comparison reads the samples a few at a time and keeps only these sums:
`ErrorStats` (max / mean absolute error, normalized error, relative RMS error, cosine) and
`ChannelFit` (a per-channel affine fit `value = a * reference + b` and its largest residual,
two readings of the data). Each figure equals the one computed on every sample at once, up
to float rounding of the sums.
"""

from __future__ import annotations

import numpy as np

BLOCK = 1 << 20  # values compared at once (float64 temporaries of 8 MB each)


def reference_views(value: np.ndarray, ref_shape: tuple):
    """Yield `(array, layout)` views of `value` shaped like the reference (NHWC, NCHW, squeezed,
    or packed by space-to-depth: `[N, H/b, W/b, b*b*C]`, or `[N, b*b*C, H/b, W/b]` in NCHW,
    channel `(row in block * b + column) * C + c` as TFLite's SPACE_TO_DEPTH and ONNX's
    SpaceToDepth write it)."""
    if value.shape == ref_shape:
        yield value, "NHWC" if value.ndim == 4 else "same"
    if value.ndim == 4 and len(ref_shape) == 4 and value.transpose(0, 2, 3, 1).shape == ref_shape:
        yield value.transpose(0, 2, 3, 1), "NCHW"
    if value.size == int(np.prod(ref_shape)) and value.shape != ref_shape and (
            [d for d in value.shape if d != 1] == [d for d in ref_shape if d != 1]):
        yield value.reshape(ref_shape), "reshaped"
    if value.ndim != 4:
        return
    for packed, layout in ((value, ""), (value.transpose(0, 2, 3, 1), " NCHW")):
        block = space_to_depth_block(packed.shape, ref_shape)
        if block:
            n, h, w, _ = packed.shape
            channels = ref_shape[3]
            yield (packed.reshape(n, h, w, block, block, channels).transpose(0, 1, 3, 2, 4, 5)
                   .reshape(ref_shape)), f"space-to-depth {block}{layout}"


def space_to_depth_block(shape: tuple, ref_shape: tuple) -> int | None:
    """`b` > 1 if `shape` is `ref_shape` `[N, H, W, C]` packed as `[N, H/b, W/b, b*b*C]`."""
    if len(shape) != 4 or len(ref_shape) != 4 or shape[0] != ref_shape[0] or not shape[1]:
        return None
    block = ref_shape[1] // shape[1]
    if block > 1 and ref_shape[1] == block * shape[1] and ref_shape[2] == block * shape[2] \
            and shape[3] == block * block * ref_shape[3]:
        return block
    return None


def view_in_layout(value: np.ndarray, ref_shape: tuple, layout: str):
    """The view of `value` that `reference_views` names `layout`, or None."""
    return next((view for view, name in reference_views(value, ref_shape) if name == layout), None)


class ErrorStats:
    """Error of values against references, accumulated over chunks of samples.

    `full=False` keeps only what the normalized error needs (max |error|, max |reference|).
    """

    def __init__(self, full: bool = True):
        self.full = full
        self.shape = None  # the reference's shape, samples of every chunk counted
        self.size = 0
        self.max_diff = 0.0
        self.peak = 0.0
        self.has_nan = False  # an error that is NaN where the two values are not both NaN
        self.sum_diff = 0.0
        self.count = 0  # errors that are not NaN
        self.sq_diff = 0.0
        self.sq_ref = 0.0
        self.dot = 0.0
        self.sq_value = 0.0

    def add(self, reference: np.ndarray, value: np.ndarray) -> None:
        if not reference.size:
            return
        if self.shape is None:
            self.shape = list(reference.shape)
        elif reference.ndim:
            self.shape[0] += reference.shape[0]
        ref_flat, got_flat = np.ravel(reference), np.ravel(value)
        for start in range(0, ref_flat.size, BLOCK):  # float64 copies of one block at a time
            self._add_block(ref_flat[start:start + BLOCK], got_flat[start:start + BLOCK])

    def _add_block(self, reference: np.ndarray, value: np.ndarray) -> None:
        if not self.full:  # maxima only, in the values' precision (close float32 values subtract exactly)
            signed = np.subtract(reference, value, dtype=np.result_type(reference, value, np.float32))
            if not np.isnan(signed).any():
                self.size += signed.size
                self.max_diff = max(self.max_diff, float(signed.max()), -float(signed.min()))
                self.peak = max(self.peak, float(reference.max()), -float(reference.min()))
                return
        ref = reference.astype(np.float64)
        got = value.astype(np.float64)
        signed = ref - got
        if self.full and not np.isnan(signed).any():  # no NaN on either side: no masks
            self._add_finite(ref, got, signed)
            return
        both_nan = np.isnan(ref) & np.isnan(got)
        signed[both_nan] = 0.0
        diff = np.abs(signed)
        self.size += diff.size
        nan = np.isnan(diff)
        self.has_nan = self.has_nan or bool(nan.any())
        if not nan.all():
            self.max_diff = max(self.max_diff, float(np.nanmax(diff)))
        abs_ref = np.abs(ref)
        if not np.isnan(abs_ref).all():
            self.peak = max(self.peak, float(np.nanmax(abs_ref)))
        if not self.full:
            return
        self.sum_diff += float(np.nansum(diff))
        self.count += int(diff.size - nan.sum())
        self.sq_diff += float(np.sum(signed ** 2))
        self.sq_ref += float(np.sum(ref ** 2))
        self.dot += float(np.dot(ref, got))
        self.sq_value += float(np.sum(got ** 2))

    def _add_finite(self, ref: np.ndarray, got: np.ndarray, signed: np.ndarray) -> None:
        """`_add_block` where no value is NaN: the same sums without masks (einsum: no BLAS threads
        competing with the runtimes' own)."""
        self.size += signed.size
        self.max_diff = max(self.max_diff, float(signed.max()), -float(signed.min()))
        self.peak = max(self.peak, float(ref.max()), -float(ref.min()))
        self.count += signed.size
        self.sq_diff += float(np.einsum("i,i->", signed, signed))
        np.abs(signed, out=signed)
        self.sum_diff += float(signed.sum())
        self.sq_ref += float(np.einsum("i,i->", ref, ref))
        self.dot += float(np.einsum("i,i->", ref, got))
        self.sq_value += float(np.einsum("i,i->", got, got))

    @property
    def normalized(self) -> float:
        """Max |error| / max |reference| (inf when an error is NaN)."""
        if self.has_nan:
            return float("inf")
        return self.max_diff / max(self.peak, 1e-12) if self.size else 0.0

    @property
    def mean_abs(self) -> float:
        return self.sum_diff / self.count if self.count else (0.0 if not self.size else float("nan"))

    @property
    def relative_rms(self) -> float | None:
        if not self.size:
            return 0.0
        if np.isnan(self.sq_diff):
            return None
        scale = float(np.sqrt(self.sq_ref / self.size))
        return float(np.sqrt(self.sq_diff / self.size) / max(scale, 1e-12))

    @property
    def cosine(self) -> float | None:
        norm = np.sqrt(self.sq_ref) * np.sqrt(self.sq_value)
        return float(self.dot / norm) if norm > 0 else None


class ChannelFit:
    """Whether every channel (last axis) of the values is `a * reference + b`, in two readings:
    `add` the chunks to fit `a, b`, then `add_residual` the same chunks to measure the fit."""

    def __init__(self):
        self.sums = None  # per channel: n, sum x, sum x^2, sum y, sum xy
        self.low = self.high = None
        self.coefficients = None
        self.residual = None
        self.spread = None
        self.ndim_ok = True

    @staticmethod
    def _flat(reference, value):
        channels = reference.shape[-1]
        return (reference.reshape(-1, channels).astype(np.float64),
                value.reshape(-1, channels).astype(np.float64))

    def add(self, reference: np.ndarray, value: np.ndarray) -> None:
        if reference.ndim < 3 or reference.shape != value.shape:
            self.ndim_ok = False
            return
        x, y = self._flat(reference, value)
        sums = np.stack([np.full(x.shape[1], x.shape[0], np.float64), x.sum(0), (x * x).sum(0),
                         y.sum(0), (x * y).sum(0)])
        self.sums = sums if self.sums is None else self.sums + sums
        low, high = x.min(0), x.max(0)
        self.low = low if self.low is None else np.minimum(self.low, low)
        self.high = high if self.high is None else np.maximum(self.high, high)

    def fit(self) -> bool:
        """Solve each channel's least squares; False when the data cannot show an affine map."""
        if not self.ndim_ok or self.sums is None or self.sums[0, 0] < 32:
            return False  # too few points per channel for a fit to mean anything
        n, sx, sxx, sy, sxy = self.sums
        coefficients = []
        for c in range(self.sums.shape[1]):
            normal = np.array([[sxx[c], sx[c]], [sx[c], n[c]]])
            coef, *_ = np.linalg.lstsq(normal, np.array([sxy[c], sy[c]]), rcond=None)
            if coef[0] == 0 and self.high[c] > self.low[c]:
                return False
            coefficients.append(coef)
        self.coefficients = np.array(coefficients)
        self.residual = np.zeros(len(coefficients))
        self.spread = np.zeros(len(coefficients))
        return True

    def add_residual(self, reference: np.ndarray, value: np.ndarray) -> None:
        x, y = self._flat(reference, value)
        a, b = self.coefficients[:, 0], self.coefficients[:, 1]
        self.residual = np.maximum(self.residual, np.abs(a * x + b - y).max(0))
        self.spread = np.maximum(self.spread, np.abs(y).max(0))

    def is_affine(self, tolerance: float) -> bool:
        return bool(np.all(self.residual <= tolerance * np.maximum(self.spread, 1e-12)))
