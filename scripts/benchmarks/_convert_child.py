"""One measured process of the convert benchmark (`scripts/benchmarks/convert.py`).

    python scripts/benchmarks/_convert_child.py convert MODEL OUT   # edgetrunc convert, by stage
    python scripts/benchmarks/_convert_child.py bare MODEL          # the bare converter calls

Run as a file with PYTHONPATH set to the tree whose `edgetrunc` is measured (this one or an
earlier revision's), it prints one JSON line: the wall time of the work, its stages and the
process's own peak resident memory (VmHWM). `convert` wraps the functions each stage runs
(where a revision has them) and counts each second once, in the innermost stage that was
running; what no stage covers is "other". `bare` times the plain calls that make the same
five artifacts (`export._bare_conversions`, no warm-up).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# (stage, module, attribute): every module-level name bound to the function is wrapped
STAGES = [
    ("load", "keras.saving", "load_model"),
    ("float32 copy", "edgetrunc.keras.precision", "float32_model"),
    ("truncation walk", "edgetrunc.keras.truncations", "find_truncations"),
    ("calibration data", "edgetrunc.export.calibration", "calibration_pairs"),
    ("held-out data", "edgetrunc.export.calibration", "held_out_pairs"),
    ("Keras on held-out", "edgetrunc.keras.runner", "predict_probability"),
    ("TFLite converter", "edgetrunc.export.tflite.convert", "_convert"),
    ("TFLite converter", "edgetrunc.export.tflite.exporter", "_convert"),
    ("tf2onnx", "tf2onnx.convert", "from_keras"),
    ("ONNX quantizer", "onnxruntime.quantization", "quantize_static"),
    ("ONNX checker", "onnx.checker", "check_model"),
    ("passes", "edgetrunc.export.tflite.passes", "run_passes"),
    ("passes", "edgetrunc.export.onnx.passes", "run_passes"),
    ("passes", "edgetrunc.export.passes", "run_passes"),
    ("flatbuffer read/write", "edgetrunc.export.tflite.graph", "read_model"),
    ("flatbuffer read/write", "edgetrunc.export.tflite.graph", "write_model"),
    ("int8 evaluation", "edgetrunc.export.evaluation", "artifact_probability"),
    ("speed measurement", "edgetrunc.export.speed", "int8_speed"),
    ("manifest", "edgetrunc.export.manifest", "build_manifest"),
]


class Clock:
    """Exclusive time per stage: a second counts for the innermost stage running. Memory: the
    peak resident memory a stage raised the process to (`peaks`), a rise counted for the
    innermost stage running when it happened."""

    def __init__(self):
        self.seconds, self.stack, self.peaks = {}, [], {}
        self.claimed = peak_mib()

    def wrap(self, stage, function):
        def timed(*args, **kwargs):
            self.stack.append(0.0)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                inner = self.stack.pop()
                self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed - inner
                if self.stack:
                    self.stack[-1] += elapsed
                peak = peak_mib()
                if peak > self.claimed + 1:
                    self.peaks[stage], self.claimed = max(self.peaks.get(stage, 0.0), peak), peak

        timed.__wrapped__ = function
        timed.__name__ = getattr(function, "__name__", stage)  # pass names stay in manifests
        return timed


def instrument(clock: Clock) -> None:
    import edgetrunc.export  # noqa: F401  (every export module loaded, so its names are bound)

    for stage, module_name, attribute in STAGES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        original = getattr(module, attribute, None)
        if original is None or hasattr(original, "__wrapped__"):
            continue
        wrapped = clock.wrap(stage, original)
        for loaded in list(sys.modules.values()):
            names = getattr(loaded, "__dict__", {})
            for name, value in list(names.items()):
                if value is original and (loaded is module or
                                          getattr(loaded, "__name__", "").startswith("edgetrunc")):
                    setattr(loaded, name, wrapped)
    from edgetrunc.runtime import formats

    for name in ("tflite", "onnx"):
        hooks = formats.get(name).export
        object.__setattr__(hooks, "inspect", clock.wrap("inspection", hooks.inspect))


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def convert(model: str, out: str) -> dict:
    started = time.perf_counter()
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    imported = time.perf_counter() - started
    clock = Clock()
    instrument(clock)
    from edgetrunc.export import convert as run

    timings = {}
    started = time.perf_counter()
    run(model, out, timings=timings, force=True)
    total = time.perf_counter() - started
    stages = dict(clock.seconds)
    stages["other"] = total - sum(stages.values())
    return {"import_s": imported, "total_s": total, "stages": stages, "exports": timings,
            "stage_peaks_mib": clock.peaks}


def bare(model: str) -> dict:
    started = time.perf_counter()
    import keras
    import tensorflow  # noqa: F401

    imported = time.perf_counter() - started
    sys.path.append(str(Path(__file__).resolve().parents[2]))
    from scripts.benchmarks.export import _bare_conversions

    from edgetrunc.data.geometry import image_geometry
    from edgetrunc.export.calibration import calibration_pairs

    started = time.perf_counter()
    loaded = keras.saving.load_model(model, compile=False)
    load_s = time.perf_counter() - started
    calibration = calibration_pairs("embedded", image_geometry(loaded), model=loaded).x
    calibration_s = time.perf_counter() - started - load_s
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        calls = _bare_conversions(loaded, calibration, tmp, warm_up=False)
    total = time.perf_counter() - started
    return {"import_s": imported, "total_s": total, "load_s": load_s,
            "calibration_s": calibration_s, "calls": calls}


def main(argv) -> int:
    result = convert(*argv[1:3]) if argv[0] == "convert" else bare(argv[1])
    result["peak_mib"] = peak_mib()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
