"""The pytest plugin of edgetrunc (entry point `pytest11`; or `-p edgetrunc.testing.plugin`).

- `converted_artifacts(model, tflite=..., onnx=...)` (session fixture): the `ArtifactSet` of a
  `.keras` path or an in-memory model, converted once and cached under pytest's cache folder
  (`.pytest_cache/d/edgetrunc-artifacts`), so later sessions reuse it while the model, the
  options and the toolchain stay the same.
- `@pytest.mark.parity_artifacts(*sources, tflite=..., onnx=...)` parametrizes a test over
  artifacts, one test per artifact, given to it by the `parity_artifact` fixture (a path) with
  the Keras model it came from in `parity_model`. A source is a `.keras` model (converted
  at set-up, cached, precisions as `converted_artifacts`), a `manifest.json` or a folder holding
  one (its artifacts), or an artifact file. Relative paths start at the test file's folder (else the current one).
- `--parity-html DIR` writes the HTML parity report of every failing test that ran
  `assert_parity` to `DIR/<test>.html`.

Loading the plugin imports neither TensorFlow nor numpy: a session that uses none of it pays nothing.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

MARKER = "parity_artifacts"
TFLITE = ("fp32", "fp16", "int8")
ONNX = ("fp32", "int8")
MODEL_SUFFIXES = (".keras", ".h5")


@dataclass(frozen=True)
class ArtifactSpec:
    """One parametrization: an artifact file, or one artifact of a model converted at set-up."""

    artifact: Path | None
    model: Path | None = None
    name: str | None = None  # the artifact of a converted model ('fp32.tflite')
    tflite: tuple = TFLITE
    onnx: tuple = ONNX

    @property
    def id(self) -> str:
        return self.artifact.name if self.artifact is not None else f"{self.model.stem}_{self.name}"


def pytest_addoption(parser):
    group = parser.getgroup("edgetrunc", "edgetrunc parity")
    group.addoption("--parity-html", metavar="DIR", default=None,
                    help="write the HTML parity report of each failing test that ran assert_parity")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"{MARKER}(*sources, tflite=..., onnx=...): run the test once per artifact of "
        "each source (a .keras model converted once, a manifest.json or its folder, an artifact); "
        "the test takes the `parity_artifact` and `parity_model` fixtures")


def _resolve(source, base: Path) -> Path:
    path = Path(source)
    if path.is_absolute():
        return path
    return next((c for c in (base / path, Path.cwd() / path) if c.exists()), base / path)


def _specs(marker, base: Path) -> list:
    from edgetrunc.testing.artifacts import read_manifest

    tflite = tuple(marker.kwargs.get("tflite", TFLITE))
    onnx = tuple(marker.kwargs.get("onnx", ONNX))
    specs = []
    for source in marker.args:
        path = _resolve(source, base)
        if path.suffix.lower() in MODEL_SUFFIXES:
            specs += [ArtifactSpec(None, path, f"{p}.tflite", tflite, onnx) for p in tflite]
            specs += [ArtifactSpec(None, path, f"{p}.onnx", tflite, onnx) for p in onnx]
        elif path.is_dir() or path.name == "manifest.json":
            found = read_manifest(path)
            specs += [ArtifactSpec(artifact, found.model) for artifact in found.paths]
        else:
            specs.append(ArtifactSpec(path))
    return specs


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None or "parity_artifact" not in metafunc.fixturenames:
        return
    from edgetrunc.errors import InputError

    try:
        specs = _specs(marker, Path(str(metafunc.definition.fspath)).parent)
    except InputError as exc:
        raise pytest.UsageError(f"{MARKER}: {exc}") from None
    metafunc.parametrize("parity_artifact", specs, ids=[s.id for s in specs], indirect=True)


@pytest.fixture(scope="session")
def converted_artifacts(request, tmp_path_factory):
    """`converted_artifacts(model, tflite=..., onnx=..., **convert options) -> ArtifactSet`."""
    from edgetrunc.testing.artifacts import ArtifactCache

    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("edgetrunc-artifacts") if cache is not None else tmp_path_factory.mktemp("artifacts")
    store = ArtifactCache(folder)
    sets = {}

    def convert(model, tflite=TFLITE, onnx=ONNX, **options):
        key = (str(model) if isinstance(model, (str, Path)) else id(model), tuple(tflite), tuple(onnx),
               tuple(sorted(options.items())))
        if key not in sets:
            sets[key] = store.convert(model, tflite=tuple(tflite), onnx=tuple(onnx), **options)
        return sets[key]

    return convert


def _spec(request) -> ArtifactSpec:
    callspec = getattr(request.node, "callspec", None)
    spec = callspec.params.get("parity_artifact") if callspec is not None else None
    if not isinstance(spec, ArtifactSpec):
        pytest.fail(f"parity_artifact / parity_model need @pytest.mark.{MARKER}(...) on the test",
                    pytrace=False)
    return spec


@pytest.fixture
def parity_artifact(request, converted_artifacts):
    """The artifact path of this parametrization (`@pytest.mark.parity_artifacts`)."""
    spec = _spec(request)
    if spec.artifact is not None:
        return spec.artifact
    return _converted(converted_artifacts, spec)[spec.name]


@pytest.fixture
def parity_model(request, converted_artifacts):
    """The Keras model path the `parity_artifact` came from (None for a bare artifact file)."""
    spec = _spec(request)
    if spec.artifact is None:
        return _converted(converted_artifacts, spec).model
    return spec.model


def _converted(converted_artifacts, spec: ArtifactSpec):
    """The converted set of a model source; a model that cannot be converted fails in one line."""
    from edgetrunc.errors import InputError

    try:
        return converted_artifacts(spec.model, spec.tflite, spec.onnx)
    except InputError as exc:
        pytest.fail(f"{MARKER}: {exc}", pytrace=False)


def _recent_reports() -> list | None:
    asserts = sys.modules.get("edgetrunc.testing.asserts")  # loaded only by a test that used it
    return None if asserts is None else asserts.RECENT_REPORTS


def pytest_runtest_setup(item):
    reports = _recent_reports()
    if reports:
        reports.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    result = outcome.get_result()
    folder = item.config.getoption("parity_html")
    reports = _recent_reports()
    if not folder or not reports or result.when != "call" or not result.failed:
        return
    from edgetrunc.parity.report import write_html

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid).strip("_")[:150]
    written = []
    for i, report in enumerate(r for r in reports if not r.passed):
        path = Path(folder) / (f"{stem}.html" if i == 0 else f"{stem}.{i}.html")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_html(report, path)
        written.append(str(path))
    reports.clear()
    if written:
        result.sections.append(("edgetrunc parity", "HTML parity report: " + ", ".join(written)))
