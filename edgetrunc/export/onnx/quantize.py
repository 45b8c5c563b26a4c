"""Truncation-aware QDQ int8 of an fp32 ONNX model (`quantize_onnx`, onnxruntime's quantizer).

As in TFLite int8: nodes before the first truncation stay float, the nodes after it of the
`ONNX_INT8_TYPES` are quantized, and the tensors around each truncation's Clip are quantized
with range exactly `[lower, upper]` (tensor quantization overrides; a one-sided clip from
its finite bound to the calibrated value on the open side, `open_side_ranges`), so the truncated tensor
keeps about 255 distinct levels instead of the handful the raw calibration range leaves;
then `passes.INT8_QUANTIZED_PASSES` run. `int8_mode="stock"` is onnxruntime's defaults.
"""

from __future__ import annotations

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.export.onnx import passes
from edgetrunc.export.onnx.graph import CLIP_SUFFIX, INPUT_NAME, Graph
from edgetrunc.export.passes import run_passes
from edgetrunc._log import quiet_converter

# Quantized after the first truncation; everything else stays float, as in TFLite int8
# (see `export.tflite.passes.INT8_FLOAT_TYPES`). On a trained tlunet, adding Tanh to these
# dropped the decision agreement with Keras from 0.99 to 0.94; Mul/Add (unfolded batch
# norm) likewise.
ONNX_INT8_TYPES = ("Conv", "AveragePool", "MaxPool", "Relu", "Clip")
# Activation type of the QDQ graph. onnxruntime's CPU provider fuses DequantizeLinear ->
# Conv -> QuantizeLinear into one QLinearConv for uint8 activations on every x86 CPU, for
# int8 ones only where it allows signed int8 (e.g. with VNNI); elsewhere such a Conv runs as
# a float Conv between quantize / dequantize pairs. Measured here (2-core AMD EPYC, 1 thread):
# the 14-block residual fixture 0.74x fp32 with int8 (22 of 36 Conv left float) and 1.64x
# with uint8 (all 36 fused); tlunet 0.87x with int8 and 0.73x with uint8 (its convolutions
# fuse either way). int8 stays the default; uint8 where int8 leaves a Conv unfused here
# (`quantize_onnx`).
ACTIVATION_TYPE = "QInt8"


class _Reader:
    """onnxruntime CalibrationDataReader over an array of NHWC inputs."""

    def __init__(self, x, nchw):
        self._x = _feed_arrays(x, nchw)
        self._i = 0

    def get_next(self):
        if self._i >= len(next(iter(self._x.values()))):
            return None
        batch = {name: np.ascontiguousarray(value[self._i:self._i + 1])
                 for name, value in self._x.items()}
        self._i += 1
        return batch

    def rewind(self):
        self._i = 0


def _feed_arrays(x, nchw) -> dict:
    """`{ONNX input name: array}`: one array is the input "input" (NCHW when `nchw`), a feed of
    several inputs keeps its names."""
    from edgetrunc.runtime.feeds import NamedInputs

    if isinstance(x, NamedInputs):
        return dict(x.arrays)
    return {INPUT_NAME: np.transpose(x, (0, 3, 1, 2)) if nchw else x}


def _calibration(calibration):
    from edgetrunc.runtime.feeds import NamedInputs

    if isinstance(calibration, dict):
        calibration = NamedInputs(calibration)
    if isinstance(calibration, NamedInputs):
        if not len(calibration):
            raise InputError("calibration: no samples")
        return calibration.astype(np.float32, copy=False)
    if calibration is None:
        raise InputError("calibration: int8 export needs calibration images; expected an array "
                         "[N, H, W, C] of model inputs")
    x = np.asarray(calibration, np.float32)
    if x.ndim != 4 or len(x) == 0:
        raise InputError(f"calibration: shape {x.shape}; expected [N, H, W, C] with N > 0")
    return x


def clip_overrides(graph, truncations, ranges) -> tuple:
    """`(clips by name, tensor overrides)`: the input and output of each truncation's Clip
    quantized with its range (`ranges`, `open_side_ranges`)."""
    clips = {c.ops[0].name: c for c in graph.clip_candidates()}
    overrides = {}
    for t in truncations:
        clip = clips.get(f"{t['layer']}{CLIP_SUFFIX}")
        if clip is None:
            raise InputError(f"{t['layer']}: no Clip node in the fp32 ONNX graph to quantize")
        low, high = ranges[t["layer"]]
        bounds = [{"rmin": np.float32(low), "rmax": np.float32(high)}]
        overrides[clip.output] = bounds
        overrides[clip.input] = bounds
    return clips, overrides


def _truncation_aware_plan(proto, truncations, ranges):
    """`(clips by name, nodes kept float, op types to quantize, quantizer options)`;
    `ranges`: the int8 range of each truncation (`open_side_ranges`)."""
    graph = Graph(proto)
    clips, overrides = clip_overrides(graph, truncations, ranges)
    exclude, downstream = set(), set()
    for t in truncations:
        clip = clips[f"{t['layer']}{CLIP_SUFFIX}"]
        exclude |= {n.name for n in graph.ancestors(clip.input)}
    # Every node that reads (transitively) a truncation output is quantized.
    order = list(proto.graph.node)
    tainted = {clips[f"{t['layer']}{CLIP_SUFFIX}"].output for t in truncations}
    for node in order:
        if any(name in tainted for name in node.input):
            tainted.update(node.output)
            downstream.add(node.name)
    exclude -= downstream
    op_types = sorted({n.op_type for n in order if n.name in downstream} & set(ONNX_INT8_TYPES))
    options = {"TensorQuantOverrides": overrides, "ActivationSymmetric": False,
               "WeightSymmetric": True}
    return clips, exclude, op_types, options


def quantize_onnx(proto, truncations, calibration, nchw=False, int8_mode="truncation-aware",
                  applied=None):
    """QDQ int8 of an fp32 ModelProto whose truncations are Clips (see module docstring);
    `applied` receives the names of the passes that changed the quantized model.

    Truncation-aware: when onnxruntime here leaves a Conv of the int8-activation graph
    unfused (a float Conv between quantize / dequantize pairs, `export.speed.onnx_kernels`)
    and uint8 activations fuse more of them, the uint8 graph is returned and `applied`
    gets "uint8_activations" (see `ACTIVATION_TYPE`)."""
    before = len(applied) if applied is not None else 0
    quantized = _quantize(proto, truncations, calibration, nchw, int8_mode, applied,
                          ACTIVATION_TYPE)
    if int8_mode == "stock":
        return quantized
    from edgetrunc.export.speed import onnx_kernels

    unfused = onnx_kernels(quantized)["float_between_qdq"].get("Conv", 0)
    if not unfused:
        return quantized
    fallback_applied = []
    fallback = _quantize(proto, truncations, calibration, nchw, int8_mode, fallback_applied,
                         "QUInt8")
    if onnx_kernels(fallback)["float_between_qdq"].get("Conv", 0) >= unfused:
        return quantized
    if applied is not None:
        del applied[before:]  # the passes of the int8 attempt
        applied.extend(fallback_applied + ["uint8_activations"])
    return fallback


def _quantize(proto, truncations, calibration, nchw, int8_mode, applied, activation_type):
    import onnx

    x = _calibration(calibration)
    ranges = open_side_ranges(proto, truncations, x, nchw)
    clips, exclude, op_types, options = _truncation_aware_plan(proto, truncations, ranges)
    if int8_mode == "stock":
        exclude, op_types, options = set(), None, {}
    if op_types == []:
        # Nothing after the truncations is of an `ONNX_INT8_TYPES` type (a dense head):
        # onnxruntime reads an empty list as every type and would quantize the Softmax
        # and output heads too, so only the truncations' QDQ is added (the passes).
        quantized = onnx.ModelProto.FromString(proto.SerializeToString())
    else:
        quantized = _quantize_static(proto, x, nchw, activation_type, sorted(exclude),
                                     op_types, options)
    if int8_mode != "stock":
        outputs = {t["layer"]: clips[f"{t['layer']}{CLIP_SUFFIX}"].output for t in truncations}
        run_passes(quantized, passes.INT8_QUANTIZED_PASSES,
                   passes.PassContext(truncations, outputs, ranges,
                                      applied=[] if applied is None else applied,
                                      unsigned=activation_type == "QUInt8"))
    return quantized


def _quantize_static(proto, x, nchw, activation_type, exclude, op_types, options):
    """onnxruntime's QDQ `quantize_static` of a copy of `proto`, MinMax-calibrated on `x`."""
    import tempfile
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with quiet_converter(), tempfile.TemporaryDirectory(prefix="edgetrunc-onnx-") as tmp:
        output = Path(tmp) / "int8.onnx"
        quantize_static(
            onnx.ModelProto.FromString(proto.SerializeToString()), output, _Reader(x, nchw),
            quant_format=QuantFormat.QDQ, activation_type=getattr(QuantType, activation_type),
            weight_type=QuantType.QInt8, per_channel=True,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
            op_types_to_quantize=op_types, extra_options=options)
        return onnx.load(str(output))


def open_side_ranges(proto, truncations, x, nchw=False) -> dict:
    """`{layer: (low, high)}`: the int8 range of each truncation's Clip. Two-sided: `[lower,
    upper]`. One-sided: the finite bound is the range's edge, the open side the extreme of
    the Clip's input over the calibration inputs `x` (run in fp32; one step past the bound
    at least)."""
    import onnx
    import onnxruntime as ort

    ranges = {t["layer"]: (t["lower"], t["upper"]) for t in truncations}
    open_sided = [t for t in truncations if np.isinf(t["lower"]) or np.isinf(t["upper"])]
    if not open_sided:
        return ranges
    clips = {c.ops[0].name: c for c in Graph(proto).clip_candidates()}
    probe = onnx.ModelProto.FromString(proto.SerializeToString())
    names = [clips[f"{t['layer']}{CLIP_SUFFIX}"].input for t in open_sided
             if f"{t['layer']}{CLIP_SUFFIX}" in clips]
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = _feed_arrays(x, nchw)
    count = len(next(iter(feed.values())))
    values = [session.run(names, {k: v[i:i + 8] for k, v in feed.items()})
              for i in range(0, count, 8)]
    for j, t in enumerate(t for t in open_sided if f"{t['layer']}{CLIP_SUFFIX}" in clips):
        low = min(float(np.min(v[j])) for v in values)
        high = max(float(np.max(v[j])) for v in values)
        if np.isinf(t["lower"]):
            ranges[t["layer"]] = (min(low, t["upper"] - max(abs(t["upper"]), 1.0) / 255), t["upper"])
        else:
            ranges[t["layer"]] = (t["lower"], max(high, t["lower"] + max(abs(t["lower"]), 1.0) / 255))
    return ranges
