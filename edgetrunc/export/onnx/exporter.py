"""ONNX export in fp32 (tf2onnx) and int8 (QDQ, `export.onnx.quantize`): `export_onnx`.

tf2onnx emits each truncation as a `Max` and a `Min` with constant operands; the passes of
`export.onnx.passes` rewrite them into one `Clip` per truncation and make the graph's names
deterministic. Opsets above what tf2onnx writes come from `onnx.version_converter`.
`set_onnx_metadata` writes the embedded metadata into `metadata_props`. The graph tf2onnx
gives a `PreparedModel` is converted once for all its precisions (`export.prepared`).
"""

from __future__ import annotations

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.export.onnx import passes
from edgetrunc.export.onnx.graph import INPUT_NAME
from edgetrunc.export.onnx.integer import quantize_full_integer
from edgetrunc.export.onnx.integer_passes import FULL_INTEGER_FLOAT_PASSES
from edgetrunc.export.onnx.quantize import quantize_onnx
from edgetrunc.export.passes import run_passes
from edgetrunc.export.prepared import prepare, unsupported_ops_error
from edgetrunc._log import quiet_converter
from edgetrunc.runtime.metadata import onnx_props

ONNX_PRECISIONS = ("fp32", "int8", "int8-full")
DEFAULT_ONNX_PRECISIONS = ("fp32", "int8")  # int8-full only when asked for
OPSETS = range(13, 22)
INT8_MAX_OPSET = 20
TF2ONNX_MAX_OPSET = 18  # tf2onnx 1.17 writes up to 18; newer opsets via onnx.version_converter


def check_opset(opset, precision="fp32"):
    """Raise InputError unless `opset` is an opset the exporter writes for `precision`."""
    if not isinstance(opset, (int, np.integer)) or int(opset) not in OPSETS:
        raise InputError(f"opset: {opset!r}; expected an ONNX opset from {OPSETS[0]} to {OPSETS[-1]}")
    if precision.startswith("int8") and int(opset) > INT8_MAX_OPSET:
        raise InputError(f"opset: int8 ONNX at opset {opset} does not load in onnxruntime "
                         f"(its QDQ optimizer rejects the opset-21 QuantizeLinear); expected "
                         f"an opset from {OPSETS[0]} to {INT8_MAX_OPSET} for int8")


def _from_keras(model, opset, nchw):
    """tf2onnx's ModelProto of `model` (free batch size): one input is named "input"; several
    keep their Keras names and order (`onnx_input_names`)."""
    import keras
    import tensorflow as tf
    import tf2onnx

    names = onnx_input_names(model)
    if nchw and len(names) > 1:
        raise InputError(f"nchw: {model.name} has {len(names)} inputs; a model with several "
                         "inputs is exported with its own layouts (no --nchw)", param="nchw")
    specs = [tf.TensorSpec((None,) + tuple(t.shape[1:]), tf.float32, name=name)
             for t, name in zip(model.inputs, names)]
    if isinstance(model, keras.Sequential):  # tf2onnx cannot trace a Keras 3 Sequential
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    try:
        with quiet_converter():
            proto, _ = tf2onnx.convert.from_keras(
                model, input_signature=specs, opset=min(int(opset), TF2ONNX_MAX_OPSET),
                inputs_as_nchw=[INPUT_NAME] if nchw else None)
    except Exception as exc:
        raise InputError(f"{model.name}: tf2onnx could not convert the model ({exc})".splitlines()[0]) from None
    _refuse_tensorflow_ops(proto, model)
    return proto


def _refuse_tensorflow_ops(proto, model) -> None:
    """tf2onnx leaves a TensorFlow op it cannot convert in the graph as it is (and logs it):
    one line naming the layer and the op instead of the checker's traceback."""
    import onnx

    unknown = [node for node in proto.graph.node if node.domain in ("", "ai.onnx")
               and not onnx.defs.has(node.op_type)]
    if unknown:
        raise unsupported_ops_error(model, {node.op_type for node in unknown},
                                    [node.name for node in unknown], "ONNX op")


def onnx_input_names(model) -> list:
    """The ONNX input names of `model`: "input" for one input, the Keras names for several."""
    if len(model.inputs) == 1:
        return [INPUT_NAME]
    return [t.name for t in model.inputs]


def export_onnx(model, precision="fp32", opset=17, nchw=False, calibration=None,
                int8_mode="truncation-aware", literal=False, applied=None, metadata=None):
    """Convert a Keras model to an `onnx.ModelProto` (input "input", dynamic batch).

    Args:
        model: a `keras.Model` (one image input `[N, H, W, C]`, or several inputs of any
            shape, named as in Keras), or the `export.prepared.PreparedModel` of one (its
            fp32 graph is converted once for every precision).
        precision: "fp32", "int8" (QDQ, truncation-aware; needs `calibration`) or
            "int8-full" (QDQ with int8 input and output, `export.onnx.integer`; needs
            `calibration`; `nchw` and `int8_mode` do not apply).
        opset: ONNX opset, 13..21. Defaults to 17.
        nchw: input as `[N, C, H, W]` instead of NHWC.
        calibration: int8 only, float32 inputs `[N, H, W, C]` (NHWC whatever `nchw` is);
            for several inputs, `NamedInputs` (or a dict) keyed by the Keras input names.
        int8_mode: "truncation-aware" (default) or "stock" (onnxruntime's defaults: every
            node quantized, calibrated ranges; for comparison).
        literal: skip the rewrites for speed (`passes.FP32_LAYOUT_PASSES`, on by default;
            they leave an int8 QDQ graph as it is).
        applied: a list that receives the names of the passes that changed the model.
        metadata: the embedded metadata (`runtime.metadata.artifact_metadata`) to write into
            `metadata_props`, or None.
    """
    import onnx

    if precision not in ONNX_PRECISIONS:
        raise InputError(f"precision: unknown ONNX precision {precision!r}; expected one of "
                         f"{', '.join(ONNX_PRECISIONS)}")
    check_opset(opset, precision)
    prepared = prepare(model)
    if precision == "int8-full":
        prepared = _full_integer_source(prepared, nchw)
    context = passes.PassContext(prepared.truncations, literal=bool(literal),
                                 applied=[] if applied is None else applied)
    proto = _checked_fp32(prepared, opset, nchw, context)
    if precision == "int8" and int8_mode != "stock":
        # the layout rewrites run on the float graph, before quantization: the quantizer then
        # sees the packed front end (kept float) and the VALID pools as convolutions; left as
        # AveragePool they become onnxruntime's QLinearAveragePool, which took about a third
        # of tlunet's int8 time in its profiler (the float pools: under 1%)
        run_passes(proto, passes.FP32_LAYOUT_PASSES, context)
    if precision == "int8-full":
        run_passes(proto, FULL_INTEGER_FLOAT_PASSES, context)
        onnx.checker.check_model(proto, full_check=True)
        proto = quantize_full_integer(proto, prepared.truncations, calibration,
                                      [layer.name for layer in prepared.model.layers],
                                      context.applied)
    elif precision == "int8":
        proto = quantize_onnx(proto, prepared.truncations, calibration, nchw, int8_mode,
                              applied=context.applied)
    run_passes(proto, passes.FP32_LAYOUT_PASSES, context)  # a no-op on QDQ graphs
    if int(opset) > TF2ONNX_MAX_OPSET:
        from onnx import version_converter

        proto = version_converter.convert_version(proto, int(opset))
        onnx.checker.check_model(proto, full_check=True)
    if metadata is not None:
        set_onnx_metadata(proto, metadata)
    return proto


def _full_integer_source(prepared, nchw):
    """The prepared model a full-integer export converts: a quantization-aware model's plain
    twin (its ranges those QAT simulated; `keras.qat.export_ready`), prepared once."""
    model = prepared.model
    if nchw or len(model.inputs) > 1:
        raise InputError(f"{model.name}: int8-full ONNX takes one NHWC pixel input; expected "
                         "a model with one image input and no nchw", param="nchw")
    if prepared.converter_model is model:
        return prepared
    if "export-ready" not in prepared.cache:
        prepared.cache["export-ready"] = prepare(prepared.converter_model)
    return prepared.cache["export-ready"]


def _checked_fp32(prepared, opset, nchw, context):
    """A copy of tf2onnx's graph of `prepared` after `passes.FP32_PASSES`, checked; converted
    once per prepared model, opset and layout (the passes' names noted in `context.applied`
    each time)."""
    import onnx

    key = ("onnx-fp32", min(int(opset), TF2ONNX_MAX_OPSET), bool(nchw))
    if key not in prepared.cache:
        proto = _from_keras(prepared.model, opset, nchw)
        fp32_context = passes.PassContext(prepared.truncations)
        run_passes(proto, passes.FP32_PASSES, fp32_context)
        proto.producer_name = "edgetrunc"
        onnx.checker.check_model(proto, full_check=True)
        prepared.cache[key] = (proto, fp32_context.applied)
    proto, applied = prepared.cache[key]
    context.applied.extend(applied)
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def set_onnx_metadata(model, payload: dict) -> None:
    """Store `payload` (`runtime.metadata.artifact_metadata`) in `metadata_props`."""
    existing = {p.key: p for p in model.metadata_props}
    for key, text in onnx_props(payload).items():
        if key in existing:
            existing[key].value = text
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, text
