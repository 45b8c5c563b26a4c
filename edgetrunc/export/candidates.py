"""Clip candidates: the ops of a converted graph that could be a truncation, in either format.

A graph view (`export.tflite.graph`, `export.onnx.graph`) lists every way its graph clips a
tensor to constant bounds as a `ClipCandidate`; `match_clips` assigns each truncation of the
Keras model (`find_truncations`, Keras order) the candidate with its bounds. Converters name
the ops they emit after the layer (`model_1/group1_truncation_1/Minimum`); `layer_hints`
reads those names, so that candidates with equal bounds go to the layer they came from.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field


@dataclass
class ClipCandidate:
    """One place where a converted graph clips a tensor to `[lower, upper]`.

    `kind` is "minmax" (a MAXIMUM/MINIMUM or Max/Min pair with constant bounds, or one such
    op alone: a one-sided clip, whose open side is -inf or inf), "fused" (a
    TFLite op with a fused RELU6 / RELU_N1_TO_1 / RELU_0_TO_1 activation) or "clip" (an ONNX
    `Clip` node, whose bounds are None where absent or not constant). `ops` are the op
    indices (TFLite) or nodes (ONNX) that clip; `input` / `output` the tensor before and
    after (TFLite indices or ONNX names; `input` is None for a fused activation); `names`
    the op / tensor names that hint at the layer; `mapped_to` the description the inspector
    reports; `bound_tensors` (TFLite pairs) the constant operand of each op, by op name.
    """

    kind: str
    ops: list
    lower: float | None
    upper: float | None
    names: list
    mapped_to: str
    input: int | str | None
    output: int | str
    bound_tensors: dict = field(default_factory=dict)


def layer_hints(names, truncations) -> set[str]:
    """Truncation layers whose name appears as a path component of any of `names`.

    Converters derive op names from the layer (`model_1/truncation_1/Minimum`), adding a
    `_<n>` suffix that is not always the same, so this is a hint for matching, never proof.
    """
    hints = set()
    for name in names:
        for component in re.split(r"[/;]", name):
            for t in truncations:
                if re.fullmatch(rf"{re.escape(t['layer'])}(?:_\d+)?", component):
                    hints.add(t["layer"])
    return hints


def match_clips(truncations, candidates, atol=0.0):
    """Assign each truncation (Keras order) a `ClipCandidate` (graph order) with equal bounds.

    Bounds are compared as float32 values, exactly or within `atol` for quantized constants;
    name hints decide between candidates with the same bounds. Returns a list aligned with
    `truncations`: the candidate index, or None where nothing matches.
    """
    import numpy as np

    taken = set()
    result = []
    for t in truncations:
        bounds = (np.float32(t["lower"]), np.float32(t["upper"]))
        same = [i for i, c in enumerate(candidates) if i not in taken
                and _close((np.float32(c.lower), np.float32(c.upper)), bounds, atol)]
        hinted = [i for i in same if t["layer"] in layer_hints(candidates[i].names, truncations)]
        unhinted = [i for i in same if not layer_hints(candidates[i].names, truncations)]
        choice = (hinted or unhinted or same or [None])[0]
        if choice is not None:
            taken.add(choice)
        result.append(choice)
    return result


def _close(a, b, atol):
    if atol == 0:
        return a == b
    return all(x == y if math.isinf(x) or math.isinf(y) else abs(x - y) <= atol
               for x, y in zip(map(float, a), map(float, b)))


def is_one_sided(t) -> bool:
    """Whether truncation `t` (`{"lower", "upper"}`) has an open (infinite) side."""
    return math.isinf(t["lower"]) or math.isinf(t["upper"])


def range_tolerance(t, steps=255) -> float:
    """How far a quantized bound of `t` may lie from the true one: one step of the range
    `[lower, upper]` in `steps` steps; any distance for a one-sided clip, whose int8 range
    ends at its finite bound on one side and at the calibrated value on the other (the
    candidates' open sides still have to match exactly, and name hints decide)."""
    return math.inf if is_one_sided(t) else (t["upper"] - t["lower"]) / steps


def range_mismatch(low, high, t, scale) -> bool:
    """Whether an int8 range `[low, high]` of step `scale` misses the bounds of `t` by more
    than half a step; the open side of a one-sided clip is not checked."""
    slack = 0.51 * scale + 1e-6
    return any(not math.isinf(bound) and abs(edge - bound) > slack
               for edge, bound in ((low, t["lower"]), (high, t["upper"])))
