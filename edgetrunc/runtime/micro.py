"""TFLite Micro, the microcontroller runtime, run on this machine through its Python package.

`micro_check` loads a full-integer `.tflite` into TFLite Micro's own interpreter (package
`tflite-micro`, the `.[npu]` extra), reads the tensor arena it needs from its allocation
recording, runs every input through it and through ai-edge-litert's reference kernels, and
reports the largest output difference in quantization steps. A model TFLite Micro cannot
allocate (a float op, an op it lacks) is one `InputError` line. No TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

import numpy as np

from edgetrunc.errors import InputError, first_line

ARENA_BYTES = 64 << 20  # what the check allocates; the model's own need is read back


def _flush_native() -> None:
    import ctypes

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _native_captured(log: list):
    """Collect native writes to stdout and stderr (TFLite Micro prints its allocations there)
    into `log`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            _flush_native()
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            capture.seek(0)
            log.append(capture.read().decode(errors="replace"))


def _micro_runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise InputError("tflite-micro is not installed; expected pip install 'edgetrunc[npu]'") from None
    return runtime


def _reference_outputs(content: bytes, batch: np.ndarray) -> list:
    from edgetrunc.runtime.tflite_runner import load_interpreter_module

    module, _ = load_interpreter_module()
    interpreter = module.Interpreter(
        model_content=content, num_threads=1,
        experimental_op_resolver_type=module.OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for x in batch:
        interpreter.set_tensor(inp["index"], x[None])
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"])[0].copy())
    return results


def micro_check(path, batch: np.ndarray) -> dict:
    """Run `batch` (model inputs `[N, H, W, C]`, e.g. pixel values, quantized here with the
    model's input scale and zero point) through TFLite Micro and ai-edge-litert's reference
    kernels; `{"arena_bytes", "samples", "max_step_difference", "runs"}`."""
    from edgetrunc.runtime.quantized_io import quantize_input

    with open(path, "rb") as fh:
        content = fh.read()
    runtime = _micro_runtime()
    log = []
    try:
        with _native_captured(log):
            interpreter = runtime.Interpreter.from_bytes(content, arena_size=ARENA_BYTES)
            interpreter.print_allocations()
    except RuntimeError as exc:
        raise InputError(f"{path}: TFLite Micro cannot allocate the model ({first_line(exc)}); "
                         "expected a full-integer model of TFLite Micro's ops") from None
    found = re.search(r"Arena allocation total (\d+) bytes", "".join(log))
    details = interpreter.get_input_details(0)
    params = details["quantization_parameters"]
    if not len(params["scales"]):
        raise InputError(f"{path}: float input; expected a full-integer model")
    batch = quantize_input(np.asarray(batch, np.float32), details["dtype"],
                           float(params["scales"][0]), int(params["zero_points"][0]))
    micro = []
    for x in batch:
        interpreter.set_input(x[None], 0)
        interpreter.invoke()
        micro.append(np.asarray(interpreter.get_output(0))[0].copy())
    reference = _reference_outputs(content, batch)
    steps = max((int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64))))
                 for a, b in zip(micro, reference)), default=0)
    return {"arena_bytes": int(found.group(1)) if found else None, "samples": int(len(batch)),
            "max_step_difference": steps, "runs": True}
