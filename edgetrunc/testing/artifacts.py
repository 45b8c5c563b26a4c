"""Converted artifact sets, cached in a folder: what the pytest plugin's fixtures hand out.

`ArtifactCache(folder).convert(model, tflite=..., onnx=...)` runs `export.convert` once per
model content and options: the set lives in `folder/<key>/`, where `key` is a hash of the
model file's bytes, the requested precisions, the edgetrunc version and the toolchain's
versions, so a new model, option or converter version converts anew and an unchanged one is
read back (a set is complete once its `manifest.json` is written: `convert` commits it last).
An in-memory Keras model is saved to the cache first. `artifacts_of(source)` lists the
artifacts of a `manifest.json` (or a folder holding one) without converting anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetrunc.errors import InputError

MANIFEST = "manifest.json"


@dataclass
class ArtifactSet:
    """A converted model: its `.keras` path, the artifact paths and the manifest."""

    model: Path
    folder: Path
    manifest: dict = field(default_factory=dict)

    @property
    def paths(self) -> list:
        return [self.folder / entry["path"] for entry in self.manifest.get("artifacts", [])]

    def __iter__(self):
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, name: str) -> Path:
        """The artifact whose file name is `name`, or ends with `_name.<suffix>` ('fp32.onnx')."""
        for path in self.paths:
            if path.name == name or path.name.endswith(f"_{name}"):
                return path
        raise KeyError(f"{name}: not in the artifact set ({', '.join(p.name for p in self.paths)})")


def read_manifest(source) -> ArtifactSet:
    """The artifact set a `manifest.json` (or a folder holding one) lists; InputError if none."""
    path = Path(source)
    manifest_path = path / MANIFEST if path.is_dir() else path
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["artifacts"]
        model = manifest_path.parent / manifest["source"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{source}: expected a manifest.json written by edgetrunc convert (or a "
                         "folder holding one)") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "path" in e for e in entries):
        raise InputError(f"{manifest_path}: 'artifacts' is not a list of artifact entries")
    return ArtifactSet(model, manifest_path.parent, manifest)


def cache_key(model_path: Path, tflite, onnx, options: dict) -> str:
    from edgetrunc._version import package_versions

    digest = hashlib.sha256(Path(model_path).read_bytes())
    digest.update(json.dumps([list(tflite), list(onnx), options, package_versions()],
                             sort_keys=True).encode())
    return digest.hexdigest()[:20]


class ArtifactCache:
    """Convert models once into `folder` (see the module docstring)."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def _model_file(self, model) -> Path:
        if isinstance(model, (str, Path)):
            from edgetrunc._io import require_file

            return require_file(model, "Keras model (.keras)")
        digest = hashlib.sha256(model.to_json().encode())
        for weight in model.weights:
            digest.update(np.asarray(weight).tobytes())
        staged = self.folder / "models" / digest.hexdigest()[:20] / f"{model.name}.keras"
        if not staged.is_file():  # saved once: the same config and weights are the same model
            from edgetrunc._io import atomic_path

            staged.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(staged) as tmp:
                model.save(tmp)
        return staged

    def convert(self, model, tflite=("fp32", "fp16", "int8"), onnx=("fp32", "int8"),
                **options) -> ArtifactSet:
        """The artifact set of `model` (`.keras` path or `keras.Model`), converted when not cached."""
        source = self._model_file(model)
        folder = self.folder / cache_key(source, tflite, onnx, options)
        if not (folder / MANIFEST).is_file():
            from edgetrunc.export.conversion import convert

            folder.mkdir(parents=True, exist_ok=True)
            convert(source, out_dir=folder, tflite=tflite, onnx=onnx, evaluate=False, force=True,
                    **options)
        found = read_manifest(folder)
        return ArtifactSet(source, folder, found.manifest)
