"""The result of a parity run: one `ArtifactReport` per artifact inside a `ParityReport`.

`ParityReport.to_dict()` is the JSON report; `passed`, `probe_failures` and
`disagreements` are what the terminal and HTML reports show. No TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgetrunc.metrics import DECISION_THRESHOLD


@dataclass
class ArtifactReport:
    path: str
    format: str
    precision: str
    comparison: object  # OutputComparison
    tolerance: dict
    samples_per_second: float
    layers: list = field(default_factory=list)
    first_divergent_layer: str | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.comparison.passed

    def to_dict(self) -> dict:
        stats = self.comparison.to_dict()
        out = {"path": self.path, "format": self.format, "precision": self.precision,
               "passed": self.passed}
        out.update({k: v for k, v in stats.items() if k != "passed"})
        out.update({"tolerance": self.tolerance, "samples_per_second": self.samples_per_second,
                    "first_divergent_layer": self.first_divergent_layer,
                    "layers": [layer.to_dict() for layer in self.layers],
                    "runtime": self.metadata})
        return out


@dataclass
class ParityReport:
    reference: dict
    inputs: object  # InputSet
    artifacts: list
    probes: list
    warnings: list
    strict_nan: bool
    per_layer: bool
    seconds: float
    reference_probability: np.ndarray | None = None
    probabilities: dict = field(default_factory=dict)
    output_errors: dict = field(default_factory=dict)
    golden: list = field(default_factory=list)  # GoldenComparison per runner (load_outputs)

    @property
    def probe_failures(self) -> list:
        failures = []
        for probe in self.probes:
            if probe.error:
                failures.append(f"{probe.layer} [{probe.backend} {probe.precision}]: {probe.error}")
            if probe.value_deviations:
                failures.append(f"{probe.layer} [{probe.backend} {probe.precision}]: "
                                f"{probe.value_deviations} boundary value(s) deviate")
            if probe.nan_deviations and self.strict_nan:
                failures.append(f"{probe.layer} [{probe.backend} {probe.precision}]: NaN not propagated "
                                "(strict_nan=True)")
        return failures

    @property
    def passed(self) -> bool:
        return (all(a.passed for a in self.artifacts) and not self.probe_failures
                and all(g.passed for g in self.golden))

    def disagreements(self, path: str, limit: int = 20) -> list:
        """Inputs whose decision differs between Keras and the artifact (largest gap first)."""
        ref, got = self.reference_probability, self.probabilities.get(path)
        if ref is None or got is None:
            return []
        flipped = np.flatnonzero((ref >= DECISION_THRESHOLD) != (got >= DECISION_THRESHOLD))
        flipped = flipped[np.argsort(-np.abs(ref[flipped] - got[flipped]))][:limit]
        labels = self.inputs.labels
        return [{"input": self.inputs.names[i], "label": int(labels[i]) if labels[i] >= 0 else None,
                 "keras": float(ref[i]), "artifact": float(got[i])} for i in flipped]

    def to_dict(self) -> dict:
        artifacts = []
        for a in self.artifacts:
            entry = a.to_dict()
            entry["disagreements"] = self.disagreements(a.path)
            artifacts.append(entry)
        return {
            "passed": self.passed,
            "reference": self.reference,
            "samples": int(len(self.inputs.x)),
            "inputs": self.inputs.describe(),
            "per_layer": self.per_layer,
            "strict_nan": self.strict_nan,
            "artifacts": artifacts,
            "probes": [p.to_dict() for p in self.probes],
            "probe_failures": self.probe_failures,
            "warnings": list(self.warnings),
            **({"golden": [g.to_dict() for g in self.golden]} if self.golden else {}),
            "seconds": round(self.seconds, 3),
        }
