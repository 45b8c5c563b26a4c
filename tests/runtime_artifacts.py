"""Real `.tflite` / `.onnx` artifacts for the runtime tests, built once per test process.

`detector_artifacts()` returns the shipped `models/` artifacts listed in
`models/manifest.json` when they exist, else small ones converted here from an untrained
`tlunet`; `block_artifacts()` converts the seed block (a rich `[N, 126, 126, 8]` output
for numeric checks) in fp32, fp16, int8, ONNX NHWC and ONNX NCHW. Conversion needs
TensorFlow; the runtime under test does not.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
_CACHE: dict = {}


def _workdir() -> Path:
    if "dir" not in _CACHE:
        _CACHE["dir"] = Path(tempfile.mkdtemp(prefix="edgetrunc-runtime-test-"))
    return _CACHE["dir"]


def shipped_artifacts() -> dict:
    """`{(format, precision): path}` of the shipped artifacts that exist (empty if none)."""
    manifest = MODELS / "manifest.json"
    if not manifest.exists():
        return {}
    try:
        entries = json.loads(manifest.read_text()).get("artifacts", [])
    except (OSError, ValueError):
        return {}
    found = {}
    for entry in entries:
        path = manifest.parent / entry.get("path", "")
        if path.is_file() and path.stat().st_size > 0:
            found.setdefault((entry.get("format"), entry.get("precision")), path)
    return found


def _representative(shape, count=8):
    rng = np.random.default_rng(0)
    for _ in range(count):
        yield [rng.uniform(0, 255, (1, *shape)).astype(np.float32)]


def tflite_bytes(model) -> bytes:
    """Plain fp32 TFLite conversion of a Keras model."""
    import tensorflow as tf

    from edgetrunc import _log

    with _log.stdout_to_stderr():
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def _convert(model, out: Path, kinds) -> dict:
    import tensorflow as tf
    import tf2onnx

    from edgetrunc import _log

    paths = {}
    shape = tuple(model.inputs[0].shape[1:])
    for kind in kinds:
        path = out / f"{model.name}_{kind}.{'onnx' if kind.startswith('onnx') else 'tflite'}"
        with _log.stdout_to_stderr():
            if kind.startswith("onnx"):
                spec = (tf.TensorSpec((None, *shape), tf.float32, name="input"),)
                nchw = ["input"] if kind == "onnx_nchw" else None
                proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17,
                                                      inputs_as_nchw=nchw)
                path.write_bytes(proto.SerializeToString())
            else:
                converter = tf.lite.TFLiteConverter.from_keras_model(model)
                if kind == "fp16":
                    converter.optimizations = [tf.lite.Optimize.DEFAULT]
                    converter.target_spec.supported_types = [tf.float16]
                elif kind == "int8":
                    converter.optimizations = [tf.lite.Optimize.DEFAULT]
                    converter.representative_dataset = lambda: _representative(shape)
                    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                    converter.inference_input_type = tf.int8
                    converter.inference_output_type = tf.int8
                path.write_bytes(converter.convert())
        paths[kind] = path
    return paths


def block_artifacts() -> dict:
    """Seed block artifacts: keys fp32, fp16, int8 (int8 I/O), onnx, onnx_nchw; plus 'keras'."""
    if "block" not in _CACHE:
        from edgetrunc.models import create

        model = create("seed_block", seed=0)
        paths = _convert(model, _workdir(), ("fp32", "fp16", "int8", "onnx", "onnx_nchw"))
        paths["keras"] = model
        _CACHE["block"] = paths
    return _CACHE["block"]


def detector_artifacts() -> dict:
    """Detector (`[N, 2]` softmax output) artifacts: keys 'tflite' and 'onnx' (fp32)."""
    if "detector" not in _CACHE:
        shipped = shipped_artifacts()
        if ("tflite", "fp32") in shipped and ("onnx", "fp32") in shipped:
            _CACHE["detector"] = {"tflite": shipped[("tflite", "fp32")],
                                  "onnx": shipped[("onnx", "fp32")], "shipped": True}
        else:
            from edgetrunc.models import create

            paths = _convert(create("tlunet", seed=0), _workdir(), ("fp32", "onnx"))
            _CACHE["detector"] = {"tflite": paths["fp32"], "onnx": paths["onnx"], "shipped": False}
    return _CACHE["detector"]


def write_test_images(folder: Path) -> dict:
    """Good and bad image files for infer tests; returns `{name: path}`."""
    from PIL import Image

    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}

    def save(name, array, **kwargs):
        path = folder / name
        Image.fromarray(array).save(path, **kwargs)
        files[name] = path

    save("square512.png", rng.integers(0, 256, (512, 512), dtype=np.uint8))
    save("wide600x300.png", rng.integers(0, 256, (300, 600), dtype=np.uint8))
    save("tile256.pgm", rng.integers(0, 256, (256, 256), dtype=np.uint8))
    save("small100.png", rng.integers(0, 256, (100, 100), dtype=np.uint8))
    save("deep16.png", rng.integers(0, 65536, (300, 300)).astype(np.uint16))
    frame = Image.fromarray(rng.integers(0, 256, (300, 300), dtype=np.uint8))
    frame.save(folder / "frames.tiff", save_all=True, append_images=[frame])
    files["frames.tiff"] = folder / "frames.tiff"
    (folder / "notes.txt").write_text("this is not an image\n")
    files["notes.txt"] = folder / "notes.txt"
    return files
