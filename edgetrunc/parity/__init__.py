"""Parity checker: prove that converted models compute what the Keras model computes.

Runners (`KerasRunner` here; TFLite and ONNX Runtime runners from `edgetrunc.runtime`)
run the same 256x256 inputs; the `Comparator` pairs each artifact with the Keras
reference and a swappable `CompareFunc` judges them; `per_layer` maps every Keras layer to
an artifact tensor and names the first divergent layer; `probes` feeds boundary values to
every Truncation in every backend; `report` renders the terminal table, JSON and HTML.
`check_parity(...)` runs it all. Only `keras_runner` (and the probe conversion) import
TensorFlow, lazily.
"""

from __future__ import annotations

__all__ = ["check_parity", "KerasRunner", "Comparator", "CompareFunc", "Tolerance",
           "DEFAULT_TOLERANCES", "parity_inputs", "ParityReport"]


def __getattr__(name):
    if name in ("check_parity", "ParityReport"):
        from edgetrunc.parity import check

        return getattr(check, name)
    if name == "KerasRunner":
        from edgetrunc.parity.keras_runner import KerasRunner

        return KerasRunner
    if name == "Comparator":
        from edgetrunc.parity.comparator import Comparator

        return Comparator
    if name in ("CompareFunc", "Tolerance", "DEFAULT_TOLERANCES"):
        from edgetrunc.parity import compare

        return getattr(compare, name)
    if name == "parity_inputs":
        from edgetrunc.parity.inputs import parity_inputs

        return parity_inputs
    raise AttributeError(f"module 'edgetrunc.parity' has no attribute {name!r}")
