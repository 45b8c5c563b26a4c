"""Parity assertions for a user's own test suite, and the pytest plugin that serves them.

`assert_parity(model, artifacts, ...)` runs the parity check (`parity.check_parity`) and
raises `AssertionError` with the summary a person needs (worst artifact, layer and sample,
error against tolerance) or returns the `ParityReport`; `golden=FILE` also compares with
golden outputs. `assert_truncations_exported(artifact)` checks the truncation mapping, the op
counts and that no custom op is left, as one assertion. Both take `.keras` paths or in-memory
Keras models, and `.tflite` / `.onnx` paths or bytes; bad input is one-line `AssertionError`.
`edgetrunc.testing.plugin` is the pytest plugin (fixtures, `--parity-html`, the
`parity_artifacts` marker). Importing this package imports no TensorFlow.
"""

from __future__ import annotations

__all__ = ["assert_parity", "assert_truncations_exported", "parity_summary"]


def __getattr__(name):
    if name in __all__:
        from edgetrunc.testing import asserts

        return getattr(asserts, name)
    raise AttributeError(f"module 'edgetrunc.testing' has no attribute {name!r}")
