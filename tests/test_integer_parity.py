"""Integer parity per layer: each tensor's error in steps of its own quantization scale, and the
first layer whose error exceeds one step named in the report."""

from types import SimpleNamespace

import numpy as np
import pytest

from edgetrunc.parity.per_layer import LayerComparison
from edgetrunc.parity.report import first_over_one_step, step_lines


def _layers(*rms):
    return [LayerComparison(f"layer{i}", i, "compared", scale=0.1, max_abs_error=3 * r * 0.1,
                            error_over_scale=3 * r, rms_error_over_scale=r)
            for i, r in enumerate(rms)]


def test_the_first_layer_over_one_step_is_named():
    layers = [LayerComparison("input", 0, "input"), *_layers(0.3, 0.9, 1.4, 2.5)]
    assert first_over_one_step(layers).layer == "layer2"
    (line,) = step_lines(SimpleNamespace(layers=layers))
    assert "exceeds one step" in line and "layer2 (1.40 steps, max 4.2)" in line


def test_none_over_one_step_and_float_artifacts_say_so_or_nothing():
    assert first_over_one_step(_layers(0.2, 1.0)) is None  # one step exactly is within
    assert step_lines(SimpleNamespace(layers=_layers(0.2, 1.0))) == [
        "  no layer's rms error exceeds one step of its quantization scale"]
    assert step_lines(SimpleNamespace(layers=[LayerComparison("conv", 1, "compared")])) == []


@pytest.mark.slow
def test_a_full_integer_artifact_has_each_tensor_error_in_steps(tmp_path):
    pytest.importorskip("keras")
    from edgetrunc.export import export_tflite
    from edgetrunc.keras.runner import KerasRunner
    from edgetrunc.models import create
    from edgetrunc.parity.per_layer import compare_artifact_layers

    model = create("tlunet", input_shape=(32, 32, 1), seed=0)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 1)).astype(np.float32)
    path = tmp_path / "full.tflite"
    path.write_bytes(export_tflite(model, "int8-full", calibration=pixels))
    layers, _ = compare_artifact_layers(KerasRunner(model), path, "tflite", "int8-full", pixels[:4])
    stepped = [layer for layer in layers if layer.rms_error_over_scale is not None]
    assert len(stepped) >= 5
    assert all(0 <= layer.rms_error_over_scale <= layer.error_over_scale + 1e-9 for layer in stepped)
    (line,) = step_lines(SimpleNamespace(layers=layers))
    first = first_over_one_step(layers)
    assert (first is None) == ("no layer" in line) and (first is None or first.layer in line)
