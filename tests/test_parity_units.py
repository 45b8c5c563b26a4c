"""Parity building blocks on hand-written arrays: tolerance rule, detector criteria, layer-name
matching, layer mapping (NCHW, fused, folded, anonymous tensors), probe values, imports."""

import subprocess
import sys

import numpy as np
import pytest

from edgetrunc.metrics import nearly_constant
from edgetrunc.parity.compare import CompareFunc, default_tolerance
from edgetrunc._text import json_safe
from edgetrunc.parity.per_layer import compare_layers, mentioned_layers
from edgetrunc.parity.probes import expected_clip, probe_values
from edgetrunc.runtime.intermediates import ArtifactTensor


def _probabilities(p):
    p = np.asarray(p, np.float32)
    return {"out": np.stack([1 - p, p], axis=1)}


def test_element_passes_on_abs_or_rel():
    compare = CompareFunc.simple(atol=1e-3, rtol=1e-2)
    ref = {"y": np.array([1000.0, 0.0, 1.0], np.float32)}
    ok = {"y": np.array([1005.0, 5e-4, 1.0], np.float32)}  # rel 5e-3, abs 5e-4, exact
    bad = {"y": np.array([1000.0, 2e-3, 1.0], np.float32)}  # abs 2e-3 and rel inf
    assert compare(ref, ok).passed
    result = compare(ref, bad)
    assert not result.passed and result.elements_failed == 1
    assert result.max_abs_error == pytest.approx(2e-3)


def test_nan_on_one_side_fails_and_matching_nan_passes():
    compare = CompareFunc.simple()
    ref = {"y": np.array([np.nan, 1.0], np.float32)}
    assert compare(ref, {"y": np.array([np.nan, 1.0], np.float32)}).passed
    result = compare(ref, {"y": np.array([3.0, 1.0], np.float32)})
    assert result.nan_mismatches == 1 and not result.passed


def test_int8_judged_on_decisions_not_elements():
    compare = CompareFunc.simple()
    ref_p = np.linspace(0.05, 0.95, 100)
    labels = (ref_p > 0.5).astype(np.int64)
    near = np.clip(ref_p + 0.03 * np.sign(ref_p - 0.5), 0, 1)  # errors of 0.03, no decision flips
    kwargs = dict(labels=labels, reference_probability=ref_p, candidate_probability=near)
    result = compare(_probabilities(ref_p), _probabilities(near), precision="int8", **kwargs)
    assert result.passed, result.failures
    assert result.decision_agreement == 1.0 and result.probability_mae == pytest.approx(0.03, abs=1e-6)
    assert not compare(_probabilities(ref_p), _probabilities(near), precision="fp32", **kwargs).passed
    flipped = ref_p.copy()
    flipped[:10] = 1 - flipped[:10]
    result = compare(_probabilities(ref_p), _probabilities(flipped), labels=labels, precision="int8",
                     reference_probability=ref_p, candidate_probability=flipped)
    assert not result.passed
    assert any("decision agreement" in f for f in result.failures)
    assert any("accuracy" in f for f in result.failures)
    assert result.accuracy_delta == pytest.approx(-0.1)


def test_tolerance_defaults_and_overrides():
    assert default_tolerance("fp32").atol == 1e-4
    assert default_tolerance("fp16").atol == 1e-2
    assert default_tolerance("int8").elementwise is False
    assert default_tolerance("int8", atol=0.1).elementwise is True
    with pytest.raises(ValueError):
        default_tolerance("fp32", atol=-1)


def test_nearly_constant():
    assert nearly_constant(np.full(10, 0.47) + np.linspace(0, 1e-4, 10))
    assert not nearly_constant(np.linspace(0.1, 0.9, 10))


def test_mentioned_layers_segments_suffixes_and_fusion():
    names = ["conv", "group1_conv", "group1_truncation", "bn"]
    assert mentioned_layers("tlunet_1/group1_truncation_1/Minimum", names) == {"group1_truncation"}
    assert mentioned_layers("m/group1_conv_1/convolution:0", names) == {"group1_conv"}
    assert mentioned_layers("m/relu_1/Relu;m/bn_1/batchnorm/add_1;m/conv_1/convolution", names) == {
        "bn", "conv"}
    assert mentioned_layers("Conv__58:0", names) == set()
    assert "conv" not in mentioned_layers("m/group1_conv_1/convolution", names)


def _tensor(name, order, value, output_index=None):
    return ArtifactTensor(name, name, order, np.asarray(value, np.float32), None, output_index)


def test_compare_layers_maps_nchw_fused_folded_and_anonymous():
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    bn = conv * np.array([2.0, 0.5, 1.5], np.float32) + np.array([0.1, -0.2, 0.3], np.float32)
    act = np.tanh(bn)
    pool = act[:, ::2, ::2, :]
    dense = rng.normal(size=(2, 2)).astype(np.float32)
    outputs = {"input": np.zeros((2, 4, 4, 1), np.float32), "conv": conv, "bn": bn, "act": act,
               "pool": pool, "dense": dense}
    tensors = [
        _tensor("m/conv_1/convolution", 0, bn.transpose(0, 3, 1, 2)),  # BN folded into the conv
        _tensor("m/act_1/Tanh", 1, act),
        _tensor("Pool__7:0", 2, pool),  # anonymous: between act and dense
        _tensor("StatefulPartitionedCall:0", 3, dense, output_index=0),
    ]
    layers, first = compare_layers(outputs, tensors, "fp32", {"input"}, ["dense"])
    by_name = {layer.layer: layer for layer in layers}
    assert first is None
    assert by_name["bn"].status == "compared" and by_name["bn"].layout == "NCHW"
    assert by_name["conv"].status == "fused" and by_name["conv"].fused_into == "bn"
    assert by_name["pool"].status == "compared" and by_name["pool"].tensor == "Pool__7:0"
    assert by_name["dense"].status == "compared"

    partial = bn - np.array([0.1, -0.2, 0.3], np.float32)  # offset moved into the next op
    tampered = act.copy()
    tampered[0, :2, :, 1] += 0.5  # one channel, data-dependent: not an affine map
    tensors = [_tensor("m/conv_1/convolution", 0, conv), _tensor("m/bn_1/mul_1", 1, partial),
               _tensor("m/act_1/Tanh", 2, tampered), _tensor("m/pool_1/AvgPool", 3, pool),
               _tensor("out", 4, dense, output_index=0)]
    layers, first = compare_layers(outputs, tensors, "fp32", {"input"}, ["dense"])
    by_name = {layer.layer: layer for layer in layers}
    assert by_name["bn"].status == "folded" and not by_name["bn"].divergent
    assert by_name["act"].divergent and first == "act"


def test_probe_values_and_expected_clip():
    labels, values = zip(*probe_values(-3.0, 3.0))
    values = np.array(values, np.float32)
    out = dict(zip(labels, expected_clip(values, -3.0, 3.0)))
    assert np.isnan(out["NaN"])
    assert out["+inf"] == 3.0 and out["-inf"] == -3.0 and out["+1e30"] == 3.0
    assert out["+T-ulp"] < 3.0 and out["+T+ulp"] == 3.0 and out["-T+ulp"] > -3.0
    assert [json_safe(v) for v in (np.nan, np.inf, -np.inf, 1.5)] == ["NaN", "inf", "-inf", 1.5]


def test_parity_modules_import_without_tensorflow():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'keras'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import edgetrunc.parity, edgetrunc.parity.compare, edgetrunc.parity.comparator\n"
        "import edgetrunc.parity.inputs, edgetrunc.parity.per_layer, edgetrunc.parity.report\n"
        "import edgetrunc.parity.check, edgetrunc.parity.probes, edgetrunc.keras.runner\n"
        "import edgetrunc.cli.parity\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_json_safe_turns_non_finite_numbers_into_strings():
    import json

    value = json_safe({"a": [float("inf"), np.float32(np.nan), 1.5], "b": np.array([-np.inf, 2.0])})
    assert value == {"a": ["inf", "NaN", 1.5], "b": ["-inf", 2.0]}
    json.dumps(value, allow_nan=False)


def test_nan_outputs_fail_with_a_clear_reason():
    compare = CompareFunc.simple()
    ref_p = np.linspace(0.1, 0.9, 8)
    got_p = ref_p.copy()
    got_p[:2] = np.nan
    for precision in ("fp32", "int8"):
        result = compare(_probabilities(ref_p), _probabilities(got_p), precision=precision,
                         reference_probability=ref_p, candidate_probability=got_p)
        assert not result.passed
        assert any("NaN for 2 input(s)" in f for f in result.failures), result.failures
        assert result.nan_mismatches == 4


def test_output_shape_mismatch_names_the_artifact():
    from edgetrunc.errors import InputError
    from edgetrunc.parity.comparator import Comparator, RunResult, RunResults

    results = RunResults([RunResult("keras", {"out": np.zeros((2, 2), np.float32)}, 1.0, 2),
                          RunResult("model.onnx", {"out": np.zeros((2, 1), np.float32)}, 1.0, 2)])
    with pytest.raises(InputError, match=r"^model\.onnx: output shape differs: reference \[2, 2\]"):
        Comparator.compare_accuracy(results, CompareFunc.simple())
