"""Where the Truncation layers of a Keras model are, and how converted graphs name them.

`find_truncations` lists every `Truncation` layer (nested models included) with the bounds
in force, learned thresholds included. Converters name the ops they emit after the layer
(`model_1/group1_truncation_1/Minimum`); `layer_pattern` matches those names, so the
inspectors can attribute every op of a converted graph to the layer it came from.
"""

from __future__ import annotations

import re

from edgetrunc.keras.truncations import find_truncations  # noqa: F401


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
    """Assign each truncation (Keras order) a clip candidate (graph order) with equal bounds.

    `candidates` are dicts with "lower", "upper" (float32 values read from the graph) and
    "names"; name hints decide between candidates with the same bounds (equal as float32,
    or within `atol` for quantized constants). Returns a list
    aligned with `truncations`: the candidate index, or None where nothing matches.
    """
    import numpy as np

    taken = set()
    result = []
    for t in truncations:
        bounds = (np.float32(t["lower"]), np.float32(t["upper"]))
        same = [i for i, c in enumerate(candidates) if i not in taken
                and _close((np.float32(c["lower"]), np.float32(c["upper"])), bounds, atol)]
        hinted = [i for i in same if t["layer"] in layer_hints(candidates[i]["names"], truncations)]
        unhinted = [i for i in same if not layer_hints(candidates[i]["names"], truncations)]
        choice = (hinted or unhinted or same or [None])[0]
        if choice is not None:
            taken.add(choice)
        result.append(choice)
    return result


def _close(a, b, atol):
    if atol == 0:
        return a == b
    return abs(float(a[0]) - float(b[0])) <= atol and abs(float(a[1]) - float(b[1])) <= atol
