"""Comparing a migrated model with the original one, built with the user's own code.

When every class or activation function mapped by `--truncation-class` was checked against
its code (`edgetrunc.legacy.mapping_check`), the original model can be built as well: its
file loaded with the user's custom objects and nothing mapped. `compare_with_original` runs
both on `verify.sample_inputs`: on pixel-like and standard-normal inputs they must agree
(the mapped code computes the same clip); on huge inputs the difference is only reported
(a legacy Lambda truncation's float cancellation, see `verify`).
"""

from __future__ import annotations

from edgetrunc.errors import InputError
from edgetrunc.legacy import load_legacy
from edgetrunc.migrate.probe import as_number
from edgetrunc.migrate.verify import max_diff, model_outputs, sample_inputs

CHECKED = "checked against its code"
REPORTED_ONLY = ("huge",)


def compare_with_original(legacy_path, migrated, mapped, trust_lambda=False, extra_globals=None,
                          custom_objects=None, seed=0) -> dict | None:
    """`{"max_abs_diff": {set: diff}, "passed", "failures"}` of the migrated model against
    the original built with `custom_objects`; None when some mapping has no code."""
    asked = [m for m in mapped if m.source.startswith(("class ", "activation "))]
    if custom_objects is None or not asked or not all(CHECKED in m.note for m in asked):
        return None
    try:
        original = load_legacy(legacy_path, trust_lambda=trust_lambda,
                               extra_globals=extra_globals, custom_objects=custom_objects)[0]
    except InputError as exc:
        return {"max_abs_diff": {}, "passed": None, "failures": [],
                "note": f"the original model could not be built with its code ({exc})"}
    diffs, scale = {}, 0.0
    for name, arrays in sample_inputs(migrated, seed).items():
        reference = model_outputs(original, arrays)
        diffs[name] = max_diff(model_outputs(migrated, arrays), reference)
        if name not in REPORTED_ONLY:
            scale = max([scale] + [float(abs(r).max(initial=0.0)) for r in reference])
    tolerance = 1e-5 * max(1.0, scale)
    failures = [f"the migrated model differs from the original built with its code by "
                f"{diff:g} on {name} inputs (> {tolerance:g})"
                for name, diff in diffs.items() if name not in REPORTED_ONLY
                and not diff <= tolerance]
    return {"max_abs_diff": {name: as_number(diff) for name, diff in diffs.items()},
            "passed": not failures, "failures": failures}
