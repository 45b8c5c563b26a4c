"""ONNX export in fp32 (tf2onnx) and int8 (QDQ, onnxruntime static quantization), with the
truncation rewritten into one `Clip` and the inspector of that mapping.

tf2onnx emits each truncation as a `Max` and a `Min` with constant operands; they are
rewritten into one `Clip` with scalar float bounds, named `<layer>/Clip` (ONNX Runtime
refuses non-scalar Clip bounds). int8 is truncation-aware as in TFLite: nodes before the
first truncation stay float, and the tensors around each Clip are quantized with range
exactly `[lower, upper]` (tensor quantization overrides), so the truncated tensor keeps
about 255 distinct levels instead of the handful the raw calibration range leaves.
"""

from __future__ import annotations

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.keras.precision import float32_model
from edgetrunc.export._truncations import find_truncations, match_clips

ONNX_PRECISIONS = ("fp32", "int8")
OPSETS = range(13, 22)
INT8_MAX_OPSET = 20
TF2ONNX_MAX_OPSET = 18  # tf2onnx 1.17 writes up to 18; newer opsets via onnx.version_converter
INPUT_NAME = "input"
CLIP_SUFFIX = "/Clip"
# Quantized after the first truncation; everything else stays float, as in TFLite int8
# (see `_tflite.INT8_FLOAT_TYPES`). On a trained tlunet, adding Tanh to these dropped the
# decision agreement with Keras from 0.99 to 0.94; Mul/Add (unfolded batch norm) likewise.
ONNX_INT8_TYPES = ("Conv", "AveragePool", "MaxPool", "Relu", "Clip")


def _check_opset(opset, precision="fp32"):
    if not isinstance(opset, (int, np.integer)) or int(opset) not in OPSETS:
        raise InputError(f"opset: {opset!r}; expected an ONNX opset from {OPSETS[0]} to {OPSETS[-1]}")
    if precision == "int8" and int(opset) > INT8_MAX_OPSET:
        raise InputError(f"opset: int8 ONNX at opset {opset} does not load in onnxruntime "
                         f"(its QDQ optimizer rejects the opset-21 QuantizeLinear); expected "
                         f"an opset from {OPSETS[0]} to {INT8_MAX_OPSET} for int8")


class _OnnxGraph:
    def __init__(self, model):
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.consts = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.consts[node.output[0]] = numpy_helper.to_array(attr.t)
        self.refresh()

    def refresh(self):
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def scalar(self, name):
        value = self.consts.get(name)
        if value is None and name in self.producer and self.producer[name].op_type in (
                "DequantizeLinear",):
            node = self.producer[name]
            q = self.consts.get(node.input[0])
            scale = self.consts.get(node.input[1])
            zp = self.consts.get(node.input[2]) if len(node.input) > 2 else 0
            if q is not None and scale is not None:
                value = (q.astype(np.float64) - np.asarray(zp, np.float64)) * scale
        if value is None or np.size(value) != 1:
            return None
        return float(np.asarray(value).reshape(()))

    def bounded(self, node):
        if len(node.input) != 2:
            return None
        a, b = node.input
        ca, cb = self.scalar(a), self.scalar(b)
        if cb is not None and ca is None:
            return a, cb
        if ca is not None and cb is None:
            return b, ca
        return None

    def minmax_candidates(self):
        found = []
        for node in self.graph.node:
            if node.op_type not in ("Max", "Min"):
                continue
            first = self.bounded(node)
            consumers = self.consumers.get(node.output[0], [])
            if first is None or len(consumers) != 1:
                continue
            second = consumers[0]
            if second.op_type not in ("Max", "Min") or second.op_type == node.op_type:
                continue
            other = self.bounded(second)
            if other is None or other[0] != node.output[0]:
                continue
            lower, upper = (first[1], other[1]) if node.op_type == "Max" else (other[1], first[1])
            found.append({"nodes": [node, second], "input": first[0], "output": second.output[0],
                          "lower": lower, "upper": upper, "names": [node.name, second.name],
                          "mapped_to": f"{node.op_type}+{second.op_type}"})
        return found

    def clip_nodes(self):
        found = []
        for node in self.graph.node:
            if node.op_type != "Clip":
                continue
            lower = self.scalar(node.input[1]) if len(node.input) > 1 and node.input[1] else None
            upper = self.scalar(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            found.append({"node": node, "lower": lower, "upper": upper, "names": [node.name],
                          "input": node.input[0], "output": node.output[0]})
        return found

    def ancestors(self, tensor):
        seen, stack = [], [tensor]
        visited = set()
        while stack:
            node = self.producer.get(stack.pop())
            if node is None or id(node) in visited:
                continue
            visited.add(id(node))
            seen.append(node)
            stack.extend(node.input)
        return seen


def _rewrite_clips(model, truncations):
    """Replace each truncation's Max/Min pair by one Clip with scalar float bounds."""
    from onnx import helper, numpy_helper

    graph = _OnnxGraph(model)
    candidates = graph.minmax_candidates()
    matches = match_clips(truncations, candidates)
    for t, index in zip(truncations, matches):
        if index is None:
            raise InputError(f"{t['layer']}: no Max/Min pair with bounds [{t['lower']:g}, "
                             f"{t['upper']:g}] in the ONNX graph from tf2onnx")
        c = candidates[index]
        lo_name, hi_name = f"{t['layer']}/clip_min", f"{t['layer']}/clip_max"
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array(t["lower"], np.float32), lo_name),
            numpy_helper.from_array(np.array(t["upper"], np.float32), hi_name)])
        clip = helper.make_node("Clip", [c["input"], lo_name, hi_name], [c["output"]],
                                name=f"{t['layer']}{CLIP_SUFFIX}")
        nodes = list(model.graph.node)
        position = nodes.index(c["nodes"][0])
        for node in c["nodes"]:
            model.graph.node.remove(node)
        model.graph.node.insert(position, clip)
    _drop_unused_initializers(model)


def _canonical_names(model):
    """Renumber tf2onnx's counter-suffixed names (`new_shape__78`) in graph order, so the same
    model always gives the same bytes (the counters depend on what ran before)."""
    import re

    pattern = re.compile(r"^(.*?)__\d+((?::\d+)?)$")
    mapping, counter = {}, [0]

    def rename(name):
        if not name or name in mapping:
            return mapping.get(name, name)
        match = pattern.match(name)
        if match is None:
            return name
        counter[0] += 1
        mapping[name] = f"{match.group(1)}__{counter[0]}{match.group(2)}"
        return mapping[name]

    graph = model.graph
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename(name)
        for i, name in enumerate(node.output):
            node.output[i] = rename(name)
        node.name = rename(node.name)
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for value in [*graph.value_info, *graph.input, *graph.output]:
        value.name = rename(value.name)
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and pattern.match(dim.dim_param):
                dim.dim_param = rename(dim.dim_param)


def _drop_unused_initializers(model):
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def export_onnx(model, precision="fp32", opset=17, nchw=False, calibration=None,
                int8_mode="truncation-aware"):
    """Convert a Keras model to an `onnx.ModelProto` (input "input", dynamic batch).

    Args:
        model: a `keras.Model` with one image input `[N, H, W, C]`.
        precision: "fp32" or "int8" (QDQ, truncation-aware; needs `calibration`).
        opset: ONNX opset, 13..21. Defaults to 17.
        nchw: input as `[N, C, H, W]` instead of NHWC.
        calibration: int8 only, float32 inputs `[N, H, W, C]` (NHWC whatever `nchw` is).
        int8_mode: "truncation-aware" (default) or "stock" (onnxruntime's defaults: every
            node quantized, calibrated ranges; for comparison).
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    from edgetrunc.export._tflite import quiet_converter

    if precision not in ONNX_PRECISIONS:
        raise InputError(f"precision: unknown ONNX precision {precision!r}; expected one of "
                         f"{', '.join(ONNX_PRECISIONS)}")
    _check_opset(opset, precision)
    model = float32_model(model)
    if len(model.inputs) != 1:
        raise InputError(f"{model.name}: {len(model.inputs)} inputs; expected one image input")
    shape = tuple(model.inputs[0].shape)
    spec = tf.TensorSpec((None,) + tuple(shape[1:]), tf.float32, name=INPUT_NAME)
    import keras

    if isinstance(model, keras.Sequential):  # tf2onnx cannot trace a Keras 3 Sequential
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    try:
        with quiet_converter():
            proto, _ = tf2onnx.convert.from_keras(
                model, input_signature=[spec], opset=min(int(opset), TF2ONNX_MAX_OPSET),
                inputs_as_nchw=[INPUT_NAME] if nchw else None)
    except Exception as exc:
        raise InputError(f"{model.name}: tf2onnx could not convert the model ({exc})".splitlines()[0]) from None
    truncations = find_truncations(model)
    _rewrite_clips(proto, truncations)
    _canonical_names(proto)
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"
    proto.producer_name = "edgetrunc"
    onnx.checker.check_model(proto, full_check=True)
    if precision == "int8":
        proto = quantize_onnx(proto, truncations, calibration, nchw, int8_mode)
    if int(opset) > TF2ONNX_MAX_OPSET:
        from onnx import version_converter

        proto = version_converter.convert_version(proto, int(opset))
        onnx.checker.check_model(proto, full_check=True)
    return proto


class _Reader:
    """onnxruntime CalibrationDataReader over an array of NHWC inputs."""

    def __init__(self, x, nchw):
        self._x = np.transpose(x, (0, 3, 1, 2)) if nchw else x
        self._i = 0

    def get_next(self):
        if self._i >= len(self._x):
            return None
        batch = {INPUT_NAME: np.ascontiguousarray(self._x[self._i:self._i + 1])}
        self._i += 1
        return batch

    def rewind(self):
        self._i = 0


def quantize_onnx(proto, truncations, calibration, nchw=False, int8_mode="truncation-aware"):
    """QDQ int8 of an fp32 ModelProto whose truncations are Clips (see module docstring)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgetrunc.export._tflite import quiet_converter

    if calibration is None:
        raise InputError("calibration: int8 export needs calibration images; expected an array "
                         "[N, H, W, C] of model inputs")
    x = np.asarray(calibration, np.float32)
    if x.ndim != 4 or len(x) == 0:
        raise InputError(f"calibration: shape {x.shape}; expected [N, H, W, C] with N > 0")
    graph = _OnnxGraph(proto)
    clips = {c["node"].name: c for c in graph.clip_nodes()}
    overrides, exclude, downstream = {}, set(), set()
    for t in truncations:
        clip = clips.get(f"{t['layer']}{CLIP_SUFFIX}")
        if clip is None:
            raise InputError(f"{t['layer']}: no Clip node in the fp32 ONNX graph to quantize")
        bounds = [{"rmin": np.float32(t["lower"]), "rmax": np.float32(t["upper"])}]
        overrides[clip["output"]] = bounds
        overrides[clip["input"]] = bounds
        exclude |= {n.name for n in graph.ancestors(clip["input"])}
    # Every node that reads (transitively) a truncation output is quantized.
    order = list(proto.graph.node)
    tainted = {clips[f"{t['layer']}{CLIP_SUFFIX}"]["output"] for t in truncations}
    for node in order:
        if any(name in tainted for name in node.input):
            tainted.update(node.output)
            downstream.add(node.name)
    exclude -= downstream
    op_types = sorted({n.op_type for n in order if n.name in downstream} & set(ONNX_INT8_TYPES))
    options = {"TensorQuantOverrides": overrides, "ActivationSymmetric": False,
               "WeightSymmetric": True}
    if int8_mode == "stock":
        exclude, op_types, options = set(), None, {}
    import tempfile
    from pathlib import Path

    with quiet_converter(), tempfile.TemporaryDirectory(prefix="edgetrunc-onnx-") as tmp:
        output = Path(tmp) / "int8.onnx"
        quantize_static(
            onnx.ModelProto.FromString(proto.SerializeToString()), output, _Reader(x, nchw),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8, per_channel=True,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=sorted(exclude),
            op_types_to_quantize=op_types, extra_options=options)
        quantized = onnx.load(str(output))
    if int8_mode != "stock":
        outputs = {t["layer"]: clips[f"{t['layer']}{CLIP_SUFFIX}"]["output"] for t in truncations}
        _quantize_clip_outputs(quantized, truncations, outputs)
    return quantized


def _quantize_clip_outputs(model, truncations, clip_outputs):
    """Give each truncation Clip whose output is still float a QuantizeLinear/DequantizeLinear
    pair with range exactly [lower, upper] (scale (upper - lower) / 255): the truncated
    tensor is int8 with 255 levels, as in the TFLite int8 artifact. A Clip that onnxruntime
    folded into its (quantized) producer leaves that QuantizeLinear, with the overridden
    range [lower, upper]; it is named `<layer>/QuantizeLinear` for the inspector."""
    from onnx import helper, numpy_helper

    graph = _OnnxGraph(model)
    for t in truncations:
        clip = next((n for n in model.graph.node if n.name == f"{t['layer']}{CLIP_SUFFIX}"), None)
        if clip is None:
            quant = next((n for n in graph.consumers.get(clip_outputs[t["layer"]], [])
                          if n.op_type == "QuantizeLinear"), None)
            if quant is not None:
                quant.name = f"{t['layer']}/QuantizeLinear"
            continue
        out = clip.output[0]
        readers = graph.consumers.get(out, [])
        if any(r.op_type == "QuantizeLinear" for r in readers):
            continue
        if any(o.name == out for o in model.graph.output):  # keep the graph output's name
            clip.output[0] = f"{out}/unquantized"
            readers, out = [], clip.output[0]
        scale = np.float32((t["upper"] - t["lower"]) / 255.0)
        zero = np.int8(np.clip(np.round(-128 - t["lower"] / scale), -128, 127))
        names = {k: f"{t['layer']}/truncated_{k}" for k in ("scale", "zero_point", "q", "dq")}
        if out.endswith("/unquantized"):
            names["dq"] = out[:-len("/unquantized")]
        model.graph.initializer.extend([numpy_helper.from_array(np.array(scale), names["scale"]),
                                        numpy_helper.from_array(np.array(zero), names["zero_point"])])
        quant = helper.make_node("QuantizeLinear", [out, names["scale"], names["zero_point"]],
                                 [names["q"]], name=f"{t['layer']}/QuantizeLinear")
        dequant = helper.make_node("DequantizeLinear", [names["q"], names["scale"],
                                                        names["zero_point"]],
                                   [names["dq"]], name=f"{t['layer']}/DequantizeLinear")
        for reader in readers:
            for i, name in enumerate(reader.input):
                if name == out:
                    reader.input[i] = names["dq"]
        nodes = list(model.graph.node)
        position = nodes.index(clip) + 1
        model.graph.node.insert(position, dequant)
        model.graph.node.insert(position, quant)
        graph.refresh()


def onnx_ops(model) -> dict:
    """`{op_type: count}` of an ONNX model (proto or path)."""
    model = _load(model)
    counts = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _load(model):
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    return onnx.load(str(model))


def _value_info(v):
    dims = []
    for d in v.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or -1))
    from onnx import helper

    dtype = helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
    return {"name": v.name, "shape": dims, "dtype": dtype}


def inspect_onnx(model, truncations, precision) -> dict:
    """Check the truncation mapping of a written ONNX model; raise InputError naming the layer
    if a rule breaks. Returns `{"ops", "truncations", "inputs", "outputs"}`."""
    import onnx

    model = _load(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise InputError(f"onnx: model fails onnx.checker ({str(exc).splitlines()[0]})") from None
    graph = _OnnxGraph(model)
    clips = graph.clip_nodes()
    leftovers = graph.minmax_candidates()
    mapping = []
    for t in truncations:
        mine = [c for c in clips if c["node"].name == f"{t['layer']}{CLIP_SUFFIX}"]
        if not mine and precision == "int8" and match_clips([t], leftovers)[0] is None:
            quant = next((n for n in model.graph.node
                          if n.name == f"{t['layer']}/QuantizeLinear"), None)
            if quant is not None:
                _check_range(graph, t, quant)
                mapped = "folded into the producer's int8 output (range [lower, upper])"
            else:
                mapped = "folded into the producer's QuantizeLinear (calibrated range)"
            mapping.append({**t, "mapped_to": mapped})
            continue
        if len(mine) != 1:
            raise InputError(f"{t['layer']}: expected one Clip node named "
                             f"'{t['layer']}{CLIP_SUFFIX}', found {len(mine)}")
        clip = mine[0]
        for which, name in (("min", 1), ("max", 2)):
            if len(clip["node"].input) <= name or clip["node"].input[name] not in graph.consts:
                raise InputError(f"{t['layer']}: Clip {which} bound is not a scalar initializer")
            if np.size(graph.consts[clip["node"].input[name]]) != 1 or np.ndim(
                    graph.consts[clip["node"].input[name]]) != 0:
                raise InputError(f"{t['layer']}: Clip {which} bound is not a scalar")
        if (np.float32(clip["lower"]), np.float32(clip["upper"])) != (
                np.float32(t["lower"]), np.float32(t["upper"])):
            raise InputError(f"{t['layer']}: Clip bounds [{clip['lower']:g}, {clip['upper']:g}]; "
                             f"expected [{t['lower']:g}, {t['upper']:g}]")
        if match_clips([t], leftovers)[0] is not None:
            raise InputError(f"{t['layer']}: a Max/Min pair with its bounds is still in the graph")
        mapped = "Clip"
        if precision == "int8":
            mapped = _check_int8_clip(graph, t, clip)
        mapping.append({**t, "mapped_to": mapped})
    return {
        "ops": onnx_ops(model),
        "truncations": mapping,
        "inputs": [_value_info(v) for v in model.graph.input],
        "outputs": [_value_info(v) for v in model.graph.output],
    }


def _check_int8_clip(graph, t, clip):
    """The Clip's output must be quantized with range [lower, upper] (to within half a step)."""
    readers = graph.consumers.get(clip["output"], [])
    quant = [n for n in readers if n.op_type == "QuantizeLinear"]
    if not quant:
        raise InputError(f"{t['layer']}: Clip output is not quantized in the int8 ONNX graph")
    _check_range(graph, t, quant[0])
    return "Clip (QDQ int8, range [lower, upper])"


def _check_range(graph, t, node):
    scale = float(np.asarray(graph.consts[node.input[1]]).reshape(()))
    zp = int(np.asarray(graph.consts[node.input[2]]).reshape(()))
    low, high = (-128 - zp) * scale, (127 - zp) * scale
    if abs(low - t["lower"]) > 0.51 * scale + 1e-6 or abs(high - t["upper"]) > 0.51 * scale + 1e-6:
        raise InputError(f"{t['layer']}: int8 range [{low:g}, {high:g}] of the Clip output; "
                         f"expected [{t['lower']:g}, {t['upper']:g}]")


def set_onnx_metadata(model, payload: dict) -> None:
    """Store every key of `payload` in `metadata_props` (JSON-encoded values)."""
    import json

    existing = {p.key: p for p in model.metadata_props}
    for key, value in payload.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        if key in existing:
            existing[key].value = text
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, text


def read_onnx_metadata(model) -> dict:
    return {p.key: p.value for p in _load(model).metadata_props}
