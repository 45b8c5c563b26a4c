"""Artifact formats: one descriptor per format, registered once, asked by every command.

An `ArtifactFormat` says what a file of that format is and how it runs: its `name` and
`suffix`, its runner class, how the typed `RunnerOptions` map to that runner's keywords, the
options for backends that share the cores one after another (parity, bench), whether its
runner keeps intermediate tensors for the per-layer view (and how), its per-op profiler, the
backends its truncations are probed in, and whether it holds a model at all (recorded
outputs replay a device's run). `register(fmt)` adds a format; `for_path(path)` finds a
file's format (a one-line `InputError` naming the known suffixes otherwise); `get(name)`
finds one by name. Parity, infer, run, bench, evaluate and profile ask these descriptors and
never test a suffix.

The export level attaches its hooks (exporter, inspector, metadata, manifest notes) to the
same descriptor with `attach_export` from `edgetrunc.export.formats`, so this level imports
nothing above it. A format defined outside the package (a plugin) registers itself in its
own module; `plugin_modules()` names those modules so that worker processes (the benchmark)
import them too. No TensorFlow; runner classes given as `"module:Class"` are imported only
when a runner is created.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from edgetrunc.errors import InputError


@dataclass(frozen=True)
class RunnerOptions:
    """How a runner runs: one typed object for every backend.

    Each format maps the fields that apply to it onto its runner (`ArtifactFormat.option_names`)
    and ignores the others.

    Args:
        threads: interpreter / intra-op threads (default: the backend's choice).
        xnnpack: TFLite: apply the XNNPACK delegate (default); False runs the built-in kernels.
        spin: ONNX Runtime: idle worker threads busy-wait between runs (its default); False
            frees the cores for whatever runs next.
        keep_tensors: keep every intermediate tensor of the last `infer` readable.
    """

    threads: int | None = None
    xnnpack: bool = True
    spin: bool = True
    keep_tensors: bool = False

    def updated(self, **changes) -> "RunnerOptions":
        """A copy with `changes` applied (field names of `RunnerOptions`)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RunnerOptions":
        """Options from a dict of field names; an unknown name raises InputError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"runner options: unknown {', '.join(unknown)}; expected any of "
                             f"{', '.join(sorted(known))}")
        return cls(**values)


@dataclass
class ArtifactFormat:
    """One artifact format (see the module docstring).

    `runner`: a `BaseRunner` subclass or `"module:Class"`. `option_names`: `RunnerOptions`
    field -> the runner's keyword (`threads` always goes as `threads`). `shared_cores`: the
    option changes for a runner that shares the cores with others run one after another.
    `intermediates`: its runner keeps every tensor (`keep_tensors`), with `intermediate_options`
    changes; `lazy_tensors`: those tensors are read one at a time and one runner serves every
    chunk of the per-layer view. `profiler`: `profile(path, threads, runs, warmup, batch, seed)`
    or `"module:function"`. `probe_backends`: `{backend label: option changes}` that each
    probe runs in. `has_model`: False for recorded outputs (parity only). `export`: the hooks
    of the export level (`edgetrunc.export.formats`), None until attached.
    """

    name: str
    suffix: str
    runner: object
    description: str = ""
    option_names: dict = field(default_factory=dict)
    shared_cores: dict = field(default_factory=dict)
    intermediates: bool = False
    intermediate_options: dict = field(default_factory=dict)
    lazy_tensors: bool = False
    profiler: object = None
    probe_backends: dict = field(default_factory=dict)
    has_model: bool = True
    export: object = None

    def runner_class(self):
        return _resolve(self.runner)

    def profile_function(self):
        return None if self.profiler is None else _resolve(self.profiler)

    def runner_kwargs(self, options: RunnerOptions) -> dict:
        """The keywords of this format's runner for `options`."""
        values = options.to_dict()
        return {"threads": values["threads"],
                **{keyword: values[name] for name, keyword in self.option_names.items()}}

    def open(self, source, options: RunnerOptions | None = None, **changes):
        """A runner of `source` (a path or the model's bytes) with `options` (`changes` applied)."""
        options = options or RunnerOptions()
        if changes:
            options = options.updated(**changes)
        return self.runner_class()(source, **self.runner_kwargs(options))


_FORMATS: dict = {}
_BUILTIN_MODULES = ("edgetrunc.runtime",)


def _resolve(target):
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def register(fmt: ArtifactFormat) -> ArtifactFormat:
    """Add `fmt` (replacing a format of the same name); its suffix must be free."""
    suffix = fmt.suffix.lower()
    taken = next((f for f in _FORMATS.values() if f.suffix == suffix and f.name != fmt.name), None)
    if taken is not None:
        raise ValueError(f"suffix {suffix} is taken by the format {taken.name!r}")
    fmt.suffix = suffix
    _FORMATS[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    """Remove the format `name` (a plugin's, e.g. in a test); unknown names are ignored."""
    _FORMATS.pop(name, None)


def formats(runnable: bool = False) -> list:
    """Every registered format, in registration order; `runnable`: only those with a model."""
    return [f for f in _FORMATS.values() if f.has_model or not runnable]


def suffixes(runnable: bool = False) -> tuple:
    return tuple(f.suffix for f in formats(runnable))


def get(name: str) -> ArtifactFormat:
    """The format named `name` ("tflite", "onnx", ...); InputError if none is."""
    try:
        return _FORMATS[name]
    except KeyError:
        raise InputError(f"unknown artifact format {name!r}; expected any of "
                         f"{', '.join(_FORMATS)}") from None


def find(path, runnable: bool = False) -> ArtifactFormat | None:
    """The format of `path` by its suffix, or None."""
    suffix = Path(str(path)).suffix.lower()
    return next((f for f in formats(runnable) if f.suffix == suffix), None)


def for_path(path, runnable: bool = False) -> ArtifactFormat:
    """The format of `path`; InputError naming the known suffixes when it has none.
    `runnable`: only formats that hold a model (not recorded outputs)."""
    fmt = find(path, runnable)
    if fmt is None:
        suffix = Path(str(path)).suffix
        known = " or ".join(f.suffix for f in formats(runnable))
        raise InputError(f"{path}: unsupported model file '{suffix or 'no suffix'}'; expected a "
                         f"{known} artifact")
    return fmt


def plugin_modules() -> list:
    """Modules of the formats registered outside this package (their runners' modules)."""
    modules = []
    for fmt in _FORMATS.values():
        module = (fmt.runner.partition(":")[0] if isinstance(fmt.runner, str)
                  else fmt.runner.__module__)
        if not module.startswith(_BUILTIN_MODULES) and module not in modules:
            modules.append(module)
    return modules


def attach_export(name: str, hooks) -> None:
    """Give the format `name` its export-level hooks (called from `edgetrunc.export`)."""
    get(name).export = hooks


register(ArtifactFormat(
    "tflite", ".tflite", "edgetrunc.runtime.tflite_runner:TFLiteRunner",
    description="TFLite flatbuffer",
    option_names={"xnnpack": "use_xnnpack", "keep_tensors": "preserve_all_tensors"},
    intermediates=True, intermediate_options={"xnnpack": False},  # XNNPACK keeps its own
    lazy_tensors=True, profiler="edgetrunc.runtime.profile:_profile_tflite",
    probe_backends={"tflite-xnnpack": {"xnnpack": True}, "tflite-builtin": {"xnnpack": False}}))
register(ArtifactFormat(
    "onnx", ".onnx", "edgetrunc.runtime.onnx_runner:ONNXRunner",
    description="ONNX model",
    option_names={"spin": "spin", "keep_tensors": "preserve_all_tensors"},
    shared_cores={"spin": False},  # idle busy-waiting threads would slow the next backend
    intermediates=True, profiler="edgetrunc.runtime.profile:_profile_onnx",
    probe_backends={"onnxruntime": {}}))
register(ArtifactFormat(
    "recorded", ".npz", "edgetrunc.runtime.recorded:RecordedRunner",
    description="outputs recorded by edgetrunc run", has_model=False))
