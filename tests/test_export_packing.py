"""The exact space-to-depth packing of one-channel convolutions (TFLite) and the elementwise
ops moved before its unpacking: same results as the literal graph, and per-layer parity
still reads every layer (packed values through the space-to-depth view)."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from edgetrunc.export import export_tflite, tflite_ops  # noqa: E402
from edgetrunc.export.tflite.graph import Graph, read_model  # noqa: E402
from edgetrunc.export.blocks import space_to_depth_kernel  # noqa: E402
from edgetrunc.parity._layer_stats import reference_views, space_to_depth_block  # noqa: E402


def _conv_same(x, kernel):
    """NHWC SAME convolution, stride 1: x `[N, H, W, Cin]`, kernel `[Cout, kh, kw, Cin]`."""
    _, kh, kw, _ = kernel.shape
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros((*x.shape[:3], kernel.shape[0]))
    for i in range(kh):
        for j in range(kw):
            window = padded[:, i:i + x.shape[1], j:j + x.shape[2], :]
            out += np.einsum("nhwc,oc->nhwo", window, kernel[:, i, j, :])
    return out


def _space_to_depth(x, block):
    n, h, w, c = x.shape
    return x.reshape(n, h // block, block, w // block, block, c).transpose(0, 1, 3, 2, 4, 5) \
        .reshape(n, h // block, w // block, block * block * c)


@pytest.mark.parametrize("shape", [(1, 5, 5, 1), (3, 3, 3, 1), (2, 7, 5, 1), (4, 5, 5, 2)])
def test_packed_kernel_computes_the_same_convolution(shape):
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal(shape)
    x = rng.standard_normal((2, 12, 16, shape[3]))
    expected = _conv_same(x, kernel)
    packed = _conv_same(_space_to_depth(x, 2), space_to_depth_kernel(kernel, 2).astype(np.float64))
    (view, layout), = [v for v in reference_views(packed, expected.shape) if v[1] != "reshaped"]
    assert layout == "space-to-depth 2"
    np.testing.assert_allclose(view, expected, atol=1e-5)
    assert np.count_nonzero(space_to_depth_kernel(kernel, 2)) == 4 * np.count_nonzero(kernel)


def test_space_to_depth_view_needs_the_exact_shape():
    assert space_to_depth_block((1, 8, 8, 32), (1, 16, 16, 8)) == 2
    assert space_to_depth_block((1, 4, 4, 128), (1, 16, 16, 8)) == 4
    assert space_to_depth_block((1, 8, 8, 16), (1, 16, 16, 8)) is None
    assert space_to_depth_block((1, 16, 16, 8), (1, 16, 16, 8)) is None
    assert space_to_depth_block((2, 8, 8, 32), (1, 16, 16, 8)) is None


def _model(input_shape):
    from edgetrunc import Truncation

    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(1, 5, padding="same", name="hpf")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="seed")(x)
    x = Truncation(2.0, name="clip")(x)
    x = keras.layers.Activation("tanh", name="act")(x)
    x = keras.layers.Conv2D(3, 3, padding="same", name="body")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))


def test_chain_and_moved_activations_give_the_literal_results(tmp_path):
    from edgetrunc.keras.runner import KerasRunner
    from edgetrunc.parity.per_layer import compare_artifact_layers
    from edgetrunc.runtime.tflite_runner import TFLiteRunner

    model = _model((24, 20, 1))
    applied = []
    packed = export_tflite(model, "fp32", applied=applied)
    plain = export_tflite(model, "fp32", literal=True)
    assert applied == ["pack_front_end", "activations_before_unpack"]
    graph = Graph(read_model(packed))
    order = [graph.op_name(op) for op in graph.g.operators]
    assert order[:6] == ["SPACE_TO_DEPTH", "CONV_2D", "CONV_2D", "MAXIMUM", "MINIMUM", "TANH"]
    assert order[6] == "DEPTH_TO_SPACE" and "SPACE_TO_DEPTH" not in tflite_ops(plain)
    x = np.random.default_rng(3).uniform(0, 255, (3, 24, 20, 1)).astype(np.float32)
    a, b = TFLiteRunner(plain).infer(x), TFLiteRunner(packed).infer(x)
    np.testing.assert_allclose(next(iter(b.values())), next(iter(a.values())), atol=1e-6)
    path = tmp_path / "packed.tflite"
    path.write_bytes(packed)
    layers, first = compare_artifact_layers(KerasRunner(model), path, "tflite", "fp32", x)
    assert first is None
    by_name = {layer.layer: layer for layer in layers}
    for name in ("hpf", "seed", "clip", "act"):
        assert by_name[name].status == "compared", by_name[name]
    assert by_name["clip"].layout == "space-to-depth 2"


@pytest.mark.parametrize("input_shape", [(25, 20, 1), (None, None, 1)])
def test_what_cannot_be_packed_stays_literal(input_shape):
    """An odd side or a free input size: nothing to pack."""
    applied = []
    content = export_tflite(_model(input_shape), "fp32", applied=applied)
    assert applied == [] and "SPACE_TO_DEPTH" not in tflite_ops(content)


def test_an_rgb_front_end_packs_only_its_one_channel_convolution():
    """With 3 input channels the first convolution stays literal; the next one reads one
    channel and is packed alone."""
    from edgetrunc.runtime.tflite_runner import TFLiteRunner

    model = _model((24, 20, 3))
    packed = export_tflite(model, "fp32")
    graph = Graph(read_model(packed))
    order = [graph.op_name(op) for op in graph.g.operators]
    assert order[:3] == ["CONV_2D", "SPACE_TO_DEPTH", "CONV_2D"]
    x = np.random.default_rng(4).uniform(0, 255, (2, 24, 20, 3)).astype(np.float32)
    plain = export_tflite(model, "fp32", literal=True)
    np.testing.assert_allclose(next(iter(TFLiteRunner(packed).infer(x).values())),
                               next(iter(TFLiteRunner(plain).infer(x).values())), atol=1e-6)
