"""The exact ONNX layout rewrites: the packed seed-block convolution and the activations moved
ahead of its unpacking give the literal graph's results; `literal=True` leaves them out."""

import numpy as np
import pytest

pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")

from edgetrunc.export import export_onnx  # noqa: E402
from edgetrunc.models import create  # noqa: E402
from edgetrunc.runtime.onnx_runner import ONNXRunner  # noqa: E402


def test_packed_onnx_graph_matches_the_literal_one():
    model = create("tlunet", input_shape=(32, 64, 1), seed=2)
    literal_passes, packed_passes = [], []
    literal = export_onnx(model, "fp32", literal=True, applied=literal_passes)
    packed = export_onnx(model, "fp32", applied=packed_passes)
    assert packed_passes[-1] == "pack_front_end"
    assert "pack_front_end" not in literal_passes
    first_conv = next(n for n in packed.graph.node if n.op_type == "Conv")
    assert "packed" not in first_conv.name  # the one-output front end stays literal
    clip = next(n for n in packed.graph.node if n.op_type == "Clip")
    assert not clip.output[0].endswith("/packed")  # the truncation's output stays comparable
    x = np.random.default_rng(1).uniform(0, 255, (3, 32, 64, 1)).astype(np.float32)
    a = ONNXRunner(literal.SerializeToString(), threads=1).infer(x)
    b = ONNXRunner(packed.SerializeToString(), threads=1).infer(x)
    np.testing.assert_allclose(next(iter(b.values())), next(iter(a.values())), atol=1e-5)
