"""Parity checker: prove that converted models compute what the Keras model computes.

Runners (`KerasRunner` from `edgetrunc.keras.runner`; TFLite and ONNX Runtime runners
from `edgetrunc.runtime`) run the same 256x256 inputs; the `Comparator` pairs each artifact
with the Keras reference and a swappable `CompareFunc` judges them; `per_layer` maps every Keras layer to
an artifact tensor and names the first divergent layer; `probes` feeds boundary values to
every Truncation in every backend (nested models included); `results` holds the
`ParityReport`; `report` renders the terminal table, JSON and HTML; `golden` writes and
compares golden outputs (`--save-outputs` / `--load-outputs`). `check_parity(...)` runs it
all. Only the Keras runner and the probe conversion import TensorFlow, lazily.
"""

from __future__ import annotations

__all__ = ["check_parity", "KerasRunner", "Comparator", "CompareFunc", "Tolerance",
           "DEFAULT_TOLERANCES", "parity_inputs", "ParityReport"]


def __getattr__(name):
    if name == "check_parity":
        from edgetrunc.parity.check import check_parity

        return check_parity
    if name == "ParityReport":
        from edgetrunc.parity.results import ParityReport

        return ParityReport
    if name == "KerasRunner":
        from edgetrunc.keras.runner import KerasRunner

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
