"""TFLite export in fp32, fp16 and int8, and the inspector of the truncation mapping.

fp32 and fp16 come straight from `TFLiteConverter.from_keras_model` with builtin ops only
(a layer that needs a TensorFlow op fails here, naming the layer and the op). int8 is
*truncation-aware*: the model is calibrated, the calibrated range of each truncation's
producer and outputs is set to exactly `[lower, upper]`, every op before the first
truncation stays float (fixed high-pass filters stay exact and the +-1 stego residual is
never rounded away), the convolutions after it are quantized to int8 (cheap elementwise
ops, activations and the classifier tail stay float: `INT8_FLOAT_TYPES`), and the
MINIMUM/MAXIMUM pair of each truncation is removed: int8 saturation at the producer's output
performs the clip (to within half a quantization step, (upper - lower) / 510). The float
one-channel convolutions of the front end are packed 4 pixels per channel for XNNPACK, and
ops XNNPACK cannot run in int8 run in float inside the same delegate partition.
`int8_mode="stock"` gives the converter's plain full-integer model for comparison.
"""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np

from edgetrunc import _log
from edgetrunc.errors import InputError, first_line
from edgetrunc.export import _tflite_graph as tg
from edgetrunc.keras.precision import float32_model
from edgetrunc.export._truncations import find_truncations, layer_hints, match_clips

TFLITE_PRECISIONS = ("fp32", "fp16", "int8")
INT8_MODES = ("truncation-aware", "stock")
# Ops that XNNPACK runs in float but not in signed int8: kept float (between DEQUANTIZE and
# QUANTIZE, which XNNPACK does run) so the whole graph stays in as few partitions as possible.
INT8_KEEP_FLOAT = ("AVERAGE_POOL_2D", "SOFTMAX")
# Ops left in float after the truncation: elementwise MUL/ADD, i.e. an unfolded batch norm,
# which scales each channel by a very different factor that one per-tensor int8 scale
# cannot hold. With them float, decision agreement with Keras on a trained tlunet went from
# 0.95 to 0.99-1.0; everything else after the truncation (convolutions, TANH lookup tables,
# pooling, the classifier) is int8.
INT8_FLOAT_TYPES = ("MUL", "ADD")
_FORBIDDEN_OPS = ("IdentityN", "IDENTITY_N")


@contextlib.contextmanager
def quiet_converter(log=None):
    """Keep converter chatter ('Saved artifact at', signatures, native prints) off the
    terminal; native diagnostics are collected into `log` when given."""
    import logging
    import warnings

    log = [] if log is None else log
    with contextlib.redirect_stdout(io.StringIO()), _log.native_output_captured(log), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loggers = [logging.getLogger(n) for n in ("absl", "tensorflow", "tf2onnx", "")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _unsupported_op_error(text, model) -> InputError:
    ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither", text)))
    if not ops:
        listed = re.findall(r"(?:Custom|Flex|Select TensorFlow) ops: ([\w, ]+)", text)
        ops = sorted({op.strip() for line in listed for op in line.split(",") if op.strip()})
    ops = ops or ["unknown"]
    layer_names = [layer.name for layer in getattr(model, "layers", [])]
    nodes = re.findall(r"(?:node |loc\(fused\[|\")([\w./-]+)", text)
    layer = next((n for node in nodes for n in layer_names
                  if re.search(rf"(?:^|/){re.escape(n)}(?:_\d+)?/", node)), None)
    where = f"layer '{layer}'" if layer else "a layer"
    return InputError(
        f"{getattr(model, 'name', 'model')}: {where} uses TensorFlow op(s) "
        f"{', '.join(ops)} with no TFLite builtin equivalent; expected builtin ops only")


def _convert(converter, model, int8_only=False) -> bytes:
    import tensorflow as tf

    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if int8_only else tf.lite.OpsSet.TFLITE_BUILTINS]
    log = []
    try:
        with quiet_converter(log):
            return bytes(converter.convert())
    except Exception as exc:  # converter errors are ConverterError / various
        text = f"{exc}\n{''.join(log)}"
        if re.search(r"custom op|flex op|Select TensorFlow op|not supported", text, re.I):
            raise _unsupported_op_error(text, model) from None
        raise InputError(f"{getattr(model, 'name', 'model')}: TFLite conversion failed "
                         f"({first_line(exc)})") from None


def _calibration_batches(calibration, model):
    if calibration is None:
        raise InputError("calibration: int8 export needs calibration images; expected an array "
                         "[N, H, W, C] of model inputs")
    x = np.asarray(calibration, dtype=np.float32)
    expected = tuple(model.inputs[0].shape[1:])
    if x.ndim != 4 or len(expected) != 3 or any(
            d is not None and int(d) != n for d, n in zip(expected, x.shape[1:])):
        raise InputError(f"calibration: shape {x.shape}; expected [N, {', '.join(map(str, expected))}]")
    if len(x) == 0:
        raise InputError("calibration: no images")

    def dataset():
        for i in range(len(x)):
            yield [x[i:i + 1]]

    return dataset


def export_tflite(model, precision="fp32", calibration=None, int8_io=False,
                  int8_mode="truncation-aware", keep_float=None, float_types=None,
                  pack_front_end=None) -> bytes:
    """Convert a Keras model to TFLite bytes (builtin ops only).

    Args:
        model: a `keras.Model`.
        precision: "fp32", "fp16" (fp16 weights, fp32 compute) or "int8".
        calibration: int8 only, float32 inputs `[N, H, W, C]` for the activation ranges.
        int8_io: int8 only, int8 input and output tensors instead of float ones.
        int8_mode: "truncation-aware" (default, see the module docstring) or "stock" (the
            converter's full-integer quantization, MINIMUM/MAXIMUM kept).
        keep_float: int8 only, single-input op types run in float between DEQUANTIZE and
            QUANTIZE (default `INT8_KEEP_FLOAT`: those XNNPACK cannot run in int8).
        float_types: int8 only, op types left unquantized after the truncation (default
            `INT8_FLOAT_TYPES`).
        pack_front_end: rewrite float one-channel convolutions into a 4-pixels-per-channel
            layout (see `pack_single_channel_convs`); default on for truncation-aware int8,
            whose front end is float, off for fp32/fp16 (which stay a literal translation).
    """
    import tensorflow as tf

    if precision not in TFLITE_PRECISIONS:
        raise InputError(f"precision: unknown TFLite precision {precision!r}; expected one of "
                         f"{', '.join(TFLITE_PRECISIONS)}")
    keep_float = INT8_KEEP_FLOAT if keep_float is None else tuple(keep_float)
    if int8_mode not in INT8_MODES:
        raise InputError(f"int8_mode: {int8_mode!r}; expected one of {', '.join(INT8_MODES)}")
    model = float32_model(model)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "fp32":
        return _packed(_convert(converter, model), pack_front_end)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
        fp16 = _convert(converter, model)
        fp32 = _convert(tf.lite.TFLiteConverter.from_keras_model(model), model)
        return _packed(_fp16_exact_front_end(fp16, fp32, find_truncations(model)), pack_front_end)
    converter.representative_dataset = _calibration_batches(calibration, model)
    if int8_mode == "stock":
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return _convert(converter, model, int8_only=True)
    float_types = INT8_FLOAT_TYPES if float_types is None else tuple(float_types)
    return _truncation_aware_int8(converter, model, int8_io, keep_float, float_types,
                                  True if pack_front_end is None else pack_front_end)


def _front_end_ops(graph, candidates, matches):
    """Ops before the first truncation: ancestors of a truncation's input, none downstream."""
    truncation_ops = {i for c in candidates if c["kind"] == "minmax" for i in c["ops"]}
    downstream = set()
    for index, op in enumerate(graph.g.operators):
        if index in truncation_ops or any(graph.producer.get(int(i)) in downstream | truncation_ops
                                          for i in op.inputs if i >= 0):
            downstream.add(index)
    front = set()
    for index in matches:
        if index is not None and candidates[index]["kind"] == "minmax":
            front |= graph.ancestors(candidates[index]["input"])
        elif index is not None:  # a fused clip: its op belongs to the truncation
            (op,) = candidates[index]["ops"]
            front |= {a for t in graph.g.operators[op].inputs if t >= 0
                      for a in graph.ancestors(int(t))}
    return front - downstream, truncation_ops, downstream


def _fp16_exact_front_end(fp16, fp32, truncations) -> bytes:
    """fp16 weights everywhere except where they break exactness: each truncation's bounds
    (fp16 would round T = 1.7 to 1.7002) and the weights of every op before the first
    truncation (the KV filter's 1/12 steps are not fp16 numbers; their rounding leaves a DC
    gain that swamps a +-1 stego residual) are stored as the fp32 values."""
    model_t = tg.read_model(fp16)
    graph = tg.Graph(model_t)
    reference = tg.Graph(tg.read_model(fp32))
    compute = [i for i, op in enumerate(graph.g.operators) if graph.op_name(op) != "DEQUANTIZE"]
    twins = {}
    if [graph.op_name(graph.g.operators[i]) for i in compute] == [
            reference.op_name(op) for op in reference.g.operators]:
        twins = dict(zip(compute, reference.g.operators))
    candidates = [c for c in graph.clip_candidates() if c["kind"] == "minmax"]
    atol = max([1e-3 * max(1.0, abs(t["lower"]), abs(t["upper"])) for t in truncations] or [0])
    matches = match_clips(truncations, candidates, atol=atol)
    front, _, _ = _front_end_ops(graph, candidates, matches)
    replacements = []
    for index in sorted(front):
        op = graph.g.operators[index]
        twin = twins.get(index)
        if twin is None:
            continue
        for position, tensor in enumerate(op.inputs):
            producer = graph.producer.get(int(tensor))
            if producer is None or graph.op_name(graph.g.operators[producer]) != "DEQUANTIZE":
                continue
            exact = reference.constant(int(twin.inputs[position]))
            if exact is not None:
                replacements.append((int(tensor), exact))
    for t, index in zip(truncations, matches):
        if index is None:
            continue
        for op_name, tensor in candidates[index]["bound_tensors"].items():
            replacements.append((tensor, t["lower"] if op_name == "MAXIMUM" else t["upper"]))
    for tensor, value in replacements:
        graph.set_float32_constant(tensor, value)
    return tg.write_model(model_t)


def _truncation_aware_int8(converter, model, int8_io, keep_float=(), float_types=(),
                           pack_front_end=True) -> bytes:
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert

    truncations = find_truncations(model)
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True
    calibrated = _convert(converter, model)

    model_t = tg.read_model(calibrated)
    graph = tg.Graph(model_t)
    candidates = graph.clip_candidates()
    matches = match_clips(truncations, candidates)
    float_ops = set()
    for t, index in zip(truncations, matches):
        if index is None:
            raise InputError(f"{t['layer']}: no MAXIMUM/MINIMUM pair (or fused clip activation) "
                             f"with bounds [{t['lower']:g}, {t['upper']:g}] in the converted graph")
        c = candidates[index]
        tensors = [graph.g.operators[i].outputs[0] for i in c["ops"]]
        if c["input"] is not None:
            tensors.append(c["input"])
        for tensor in tensors:
            if graph.g.tensors[tensor].quantization is None:
                graph.g.tensors[tensor].quantization = tg.quantization_parameters()
            q = graph.g.tensors[tensor].quantization
            q.min, q.max = [float(t["lower"])], [float(t["upper"])]
    front, truncation_ops, _ = _front_end_ops(graph, candidates, matches)
    truncation_ops = {i for c in candidates if c["kind"] == "minmax" for i in c["ops"]}
    float_ops |= front
    float_ops |= {i for i, op in enumerate(graph.g.operators)
                  if graph.op_name(op) in float_types and i not in truncation_ops}
    denylisted = [graph.tensor_name(graph.g.operators[i].outputs[0]) for i in sorted(float_ops)]

    io_type = tf.int8 if int8_io else tf.float32
    with quiet_converter():
        quantized = tflite_convert.mlir_quantize(
            tg.write_model(model_t), fully_quantize=bool(int8_io), input_data_type=io_type,
            output_data_type=io_type, denylisted_nodes=denylisted or None)
    quantized = _remove_truncation_ops(quantized, truncations)
    model_t = tg.read_model(quantized)
    if keep_float:
        tg.float_islands(model_t, set(keep_float))
    if pack_front_end:
        tg.pack_single_channel_convs(model_t, range(len(model_t.subgraphs[0].operators)))
    return tg.write_model(model_t)


def _packed(content, pack_front_end) -> bytes:
    if not pack_front_end:
        return content
    model_t = tg.read_model(content)
    if not tg.pack_single_channel_convs(model_t, range(len(model_t.subgraphs[0].operators))):
        return content
    return tg.write_model(model_t)


def _remove_truncation_ops(content, truncations) -> bytes:
    """Delete each truncation's MAXIMUM/MINIMUM; its producer's int8 saturation clips."""
    model_t = tg.read_model(content)
    graph = tg.Graph(model_t)
    for t in truncations:
        candidates = graph.clip_candidates()
        atol = (t["upper"] - t["lower"]) / 255
        (index,) = match_clips([t], candidates, atol=atol)
        if index is None:
            index = _stacked_clip(graph, candidates, t, truncations, atol)
        if index is None:
            raise InputError(f"{t['layer']}: truncation ops not found after quantization")
        c = candidates[index]
        if c["kind"] != "minmax":
            continue  # a fused activation clips at the producer's requantization already
        source, clipped = int(c["input"]), int(c["output"])
        if len(graph.consumers.get(source, [])) != 1 or source in set(int(i) for i in graph.g.inputs):
            continue  # the unclipped tensor is read elsewhere: keep the clip ops
        src, dst = graph.g.tensors[source], graph.g.tensors[clipped]
        if dst.type != src.type or graph.producer.get(source) is None:
            continue
        src.quantization = dst.quantization
        src.name = f"{graph.tensor_name(source)};{tg.SATURATION_MARK}/{t['layer']}"
        graph.remove_ops(c["ops"], {clipped: source})
    return tg.write_model(model_t)


def _stacked_clip(graph, candidates, t, truncations, atol):
    """The candidate of truncation `t` when a narrower clip follows it directly.

    The quantizer gives the tensor between two stacked truncations the range of the second,
    so the first one's bounds are stored in that narrower int8 range: it then clips to the
    intersection of its bounds and that range, which is what the pair computes in float too.
    Only a candidate named after `t` is considered.
    """
    for index, c in enumerate(candidates):
        if c["kind"] != "minmax" or t["layer"] not in layer_hints(c["names"], truncations):
            continue
        q = graph.g.tensors[int(c["output"])].quantization
        if q is None or q.scale is None or len(q.scale) != 1:
            continue
        low = (-128 - int(q.zeroPoint[0])) * float(q.scale[0])
        high = (127 - int(q.zeroPoint[0])) * float(q.scale[0])
        lower, upper = max(t["lower"], low), min(t["upper"], high)
        if lower < upper and abs(c["lower"] - lower) <= atol and abs(c["upper"] - upper) <= atol:
            return index
    return None


def embed_tflite_metadata(content: bytes, payload: dict) -> bytes:
    model_t = tg.read_model(content)
    tg.set_metadata(model_t, payload)
    return tg.write_model(model_t)


def read_tflite_metadata(content) -> dict | None:
    return tg.read_metadata(tg.read_model(content))


def tflite_ops(content) -> dict:
    """`{op name: count}` of a `.tflite` model (bytes or path)."""
    return tg.Graph(tg.read_model(content)).ops()


def _step_range(spec_q):
    scale = float(spec_q.scale[0])
    zero_point = int(spec_q.zeroPoint[0])
    return (-128 - zero_point) * scale, (127 - zero_point) * scale, scale


def inspect_tflite(content, truncations, precision) -> dict:
    """Check the truncation mapping of a written `.tflite` model; raise InputError naming the
    layer if a rule breaks. Returns `{"ops", "truncations", "inputs", "outputs"}`."""
    model_t = tg.read_model(content)
    graph = tg.Graph(model_t)
    ops = graph.ops()
    bad = [name for name in ops if name.startswith("CUSTOM") or name in _FORBIDDEN_OPS
           or "Flex" in name]
    if bad:
        raise InputError(f"tflite: non-builtin op(s) {', '.join(bad)}; expected builtin ops only")
    mapping = []
    candidates = graph.clip_candidates()
    if precision in ("fp32", "fp16"):
        matches = match_clips(truncations, candidates)
        for t, index in zip(truncations, matches):
            if index is None:
                raise InputError(
                    f"{t['layer']}: no MAXIMUM+MINIMUM with constant bounds [{t['lower']:g}, "
                    f"{t['upper']:g}] (or fused clip activation) in the {precision} TFLite graph")
            mapping.append({**t, "mapped_to": candidates[index]["mapped_to"]})
    else:
        marked, together = {}, {}  # layer -> saturation tensor; tensor -> its stacked layers
        for i in range(len(graph.g.tensors)):
            for part in graph.tensor_name(i).split(";"):
                if part.startswith(f"{tg.SATURATION_MARK}/"):
                    marked[part.split("/", 1)[1]] = i
                    together.setdefault(i, []).append(part.split("/", 1)[1])
        bounds = {t["layer"]: (t["lower"], t["upper"]) for t in truncations}
        leftovers = candidates
        left_matches = [
            match_clips([t], leftovers, atol=(t["upper"] - t["lower"]) / 255)[0] for t in truncations]
        for t, left in zip(truncations, left_matches):
            if t["layer"] in marked:
                index = marked[t["layer"]]
                q = graph.g.tensors[index].quantization
                if q is None or q.scale is None or not len(q.scale):
                    raise InputError(f"{t['layer']}: saturation tensor is not quantized")
                low, high, scale = _step_range(q)
                # stacked truncations saturate once, to the intersection of their bounds
                stacked = [bounds[name] for name in together[index] if name in bounds]
                lower, upper = max(b[0] for b in stacked), min(b[1] for b in stacked)
                if abs(low - lower) > scale * 0.51 + 1e-6 or abs(high - upper) > scale * 0.51 + 1e-6:
                    raise InputError(
                        f"{t['layer']}: int8 range [{low:g}, {high:g}] of the truncated tensor is "
                        f"not [{lower:g}, {upper:g}] to within half a step ({scale:g})")
                if left is not None:
                    raise InputError(f"{t['layer']}: MAXIMUM/MINIMUM still present in the int8 graph")
                producer = graph.producer.get(index)
                what = graph.op_name(graph.g.operators[producer]) if producer is not None else "input"
                mapped = f"{what} int8 saturation"
                if len(together[index]) > 1:
                    mapped += f" (stacked: {' + '.join(together[index])})"
            elif left is not None:
                kind = "int8" if int(graph.g.tensors[leftovers[left]["output"]].type) == 9 else "float"
                mapped = f"{leftovers[left]['mapped_to']} ({kind})"
            else:
                raise InputError(f"{t['layer']}: truncation neither removed into int8 saturation "
                                 "nor present as MAXIMUM/MINIMUM in the int8 graph")
            mapping.append({**t, "mapped_to": mapped})
    return {
        "ops": ops,
        "truncations": mapping,
        "inputs": [tg.tensor_spec(graph, i) for i in graph.g.inputs],
        "outputs": [tg.tensor_spec(graph, i) for i in graph.g.outputs],
    }
