"""The package version and the versions of the toolchain that produced an output (no TensorFlow).

`package_versions(names)` is the one collector: training records, manifests, recordings and
benchmarks all describe their toolchain with it, reading installed distributions' metadata
(never importing them).
"""

from __future__ import annotations

import platform

__version__ = "0.1.0"

TOOLCHAIN = ("tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime",
             "ai-edge-litert", "numpy")


def package_versions(names=TOOLCHAIN, with_platform: bool = False) -> dict:
    """`{"edgetrunc": ..., "python": ..., name: version}` for each installed distribution of
    `names` (those not installed are left out); `with_platform` adds `platform.platform()`."""
    from importlib import metadata

    found = {"edgetrunc": __version__, "python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if with_platform:
        found["platform"] = platform.platform()
    return found
