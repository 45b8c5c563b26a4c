"""TFLite export in fp32, fp16 and int8 (`export_tflite`), and quieting the converters.

fp32 and fp16 come straight from `TFLiteConverter.from_keras_model` with builtin ops only
(a layer that needs a TensorFlow op fails here, naming the layer and the op). int8 is
*truncation-aware*: the model is calibrated, the calibrated range of each truncation's
producer and outputs is set to exactly `[lower, upper]`, every op before the first
truncation stays float (fixed high-pass filters stay exact and the +-1 stego residual is
never rounded away), the convolutions after it are quantized to int8 (cheap elementwise
ops, activations and the classifier tail stay float: `INT8_FLOAT_TYPES`), and the
MINIMUM/MAXIMUM pair of each truncation is removed: int8 saturation at the producer's output
performs the clip (to within half a quantization step, (upper - lower) / 510). The float
one-channel convolutions of the front end run over 2x2 blocks of pixels packed into
channels for XNNPACK, with the truncation and activations before the unpacking (in every
precision unless `literal=True`), a VALID pool with its batch normalization runs as
convolutions over the packed values, and ops XNNPACK cannot run in int8 run in float
inside the same delegate partition. The steps
are the passes of `export.tflite.passes`, run in the order of its lists.
`int8_mode="stock"` gives the converter's plain full-integer model for comparison.
"int8-full" is the full-integer model of integer-only targets (NPUs, microcontrollers): int8
input (pixels stored exactly, scale 1) and output, every op int8, exactly representable fixed
filters stored exactly (`export.tflite.integer`); a model with an op that has no int8 kernel
is refused naming the layer. `target` ("cpu", "ethos-u", "micro") drops the CPU-only
rewrites from every pass list (`passes.for_target`).
"""

from __future__ import annotations

import re

import numpy as np

from edgetrunc._log import quiet_converter
from edgetrunc.errors import InputError, first_line
from edgetrunc.export.prepared import prepare, unsupported_ops_error
from edgetrunc.export.tflite import passes
from edgetrunc.export.tflite.integer import require_full_integer
from edgetrunc.runtime.metadata import tflite_metadata_bytes

TFLITE_PRECISIONS = ("fp32", "fp16", "int8", "int8-full")
DEFAULT_TFLITE_PRECISIONS = ("fp32", "fp16", "int8")  # int8-full only when asked for
INT8_MODES = ("truncation-aware", "stock")


def _unsupported_op_error(text, model) -> InputError:
    ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither", text)))
    if not ops:
        listed = re.findall(r"(?:Custom|Flex|Select TensorFlow) ops: ([\w, ]+)", text)
        ops = sorted({op.strip() for line in listed for op in line.split(",") if op.strip()})
    nodes = re.findall(r"(?:node |loc\(fused\[|\")([\w./-]+)", text)
    return unsupported_ops_error(model, ops, nodes, "TFLite builtin")


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


def _calibration_feeds(calibration, model):
    """The representative dataset of a model with several inputs: one `{input name: sample}`
    per step (the signature's names, the Keras input names), every input of its own shape."""
    from edgetrunc.runtime.feeds import NamedInputs, check_feed

    names = [t.name for t in model.inputs]
    shapes = [tuple(t.shape) for t in model.inputs]
    if not isinstance(calibration, (NamedInputs, dict)):
        raise InputError(f"calibration: {model.name} has {len(names)} inputs; expected one array "
                         f"per input ({', '.join(names)})")
    feed = NamedInputs(check_feed("calibration", calibration, names, shapes))
    if not len(feed):
        raise InputError("calibration: no samples")

    def dataset():
        for i in range(len(feed)):
            yield {name: value[i:i + 1] for name, value in feed.arrays.items()}

    return dataset


def _calibration_batches(calibration, model):
    if len(model.inputs) > 1:
        return _calibration_feeds(calibration, model)
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
                  literal=False, applied=None, target="cpu", metadata=None) -> bytes:
    """Convert a Keras model to TFLite bytes (builtin ops only).

    Args:
        model: a `keras.Model`, or the `export.prepared.PreparedModel` of one (prepared
            once for every precision; the fp16 export reuses the fp32 conversion).
        precision: "fp32", "fp16" (fp16 weights, fp32 compute) or "int8".
        calibration: int8 only, float32 inputs `[N, H, W, C]` for the activation ranges.
        int8_io: int8 only, int8 input and output tensors instead of float ones.
        int8_mode: "truncation-aware" (default, see the module docstring) or "stock" (the
            converter's full-integer quantization, MINIMUM/MAXIMUM kept).
        keep_float: int8 only, single-input op types run in float between DEQUANTIZE and
            QUANTIZE (default `INT8_KEEP_FLOAT`: those XNNPACK cannot run in int8).
        float_types: int8 only, op types left unquantized after the truncation (default
            `INT8_FLOAT_TYPES`).
        literal: skip the rewrites that are on by default (packing float one-channel
            convolutions over 2x2 blocks, `packing.pack_convolution_chains`, the ops after
            them before the unpacking, and int8 VALID pools as depthwise convolutions); the
            truncation-aware int8 passes run either way.
        applied: a list that receives the names of the passes that changed the model.
        target: "cpu" (default), "ethos-u" or "micro": the pass lists run for that target.
        metadata: the embedded metadata (`runtime.metadata.artifact_metadata`) to write into
            the "edgetrunc" buffer, or None. The converter's flatbuffer is parsed once, the
            passes and the metadata edit the parsed model, and it is written once.
    """
    import tensorflow as tf

    if precision not in TFLITE_PRECISIONS:
        raise InputError(f"precision: unknown TFLite precision {precision!r}; expected one of "
                         f"{', '.join(TFLITE_PRECISIONS)}")
    if int8_mode not in INT8_MODES:
        raise InputError(f"int8_mode: {int8_mode!r}; expected one of {', '.join(INT8_MODES)}")
    passes.for_target([], target)  # refuses an unknown target before any work
    prepared = prepare(model)
    model = prepared.converter_model
    context = passes.PassContext(
        prepared.truncations, literal=bool(literal),
        applied=[] if applied is None else applied,
        keep_float=passes.INT8_KEEP_FLOAT if keep_float is None else tuple(keep_float),
        float_types=passes.INT8_FLOAT_TYPES if float_types is None else tuple(float_types),
        target=target)
    payload = None if metadata is None else tflite_metadata_bytes(metadata)
    if precision == "fp32":
        return passes.rewritten(_fp32(prepared), context.passes(passes.FP32_PASSES), context,
                                payload)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
        fp16 = _convert(converter, model)
        context.fp32_reference = _fp32(prepared)
        return passes.rewritten(fp16, context.passes(passes.FP16_PASSES), context, payload)
    converter.representative_dataset = _calibration_batches(calibration, model)
    if precision == "int8-full":
        return _full_integer(converter, model, context, payload)
    if int8_mode == "stock":
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        return passes.rewritten(_convert(converter, model, int8_only=True), [], context, payload)
    return _truncation_aware_int8(converter, model, int8_io, context, payload)


def _fp32(prepared) -> bytes:
    """The converter's plain fp32 bytes of `prepared`, converted once (the fp32 artifact
    and the fp16 export's fp32 reference are the same conversion)."""
    import tensorflow as tf

    if ("tflite-fp32",) not in prepared.cache:
        model = prepared.converter_model
        prepared.cache[("tflite-fp32",)] = _convert(
            tf.lite.TFLiteConverter.from_keras_model(model), model)
    return prepared.cache[("tflite-fp32",)]


def _truncation_aware_int8(converter, model, int8_io, context, payload) -> bytes:
    """Calibrate, run `INT8_CALIBRATED_PASSES`, quantize, run `INT8_QUANTIZED_PASSES`."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert

    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True
    calibrated = passes.rewritten(_convert(converter, model),
                                  context.passes(passes.INT8_CALIBRATED_PASSES), context)
    io_type = tf.int8 if int8_io else tf.float32
    with quiet_converter():
        quantized = tflite_convert.mlir_quantize(
            calibrated, fully_quantize=bool(int8_io), input_data_type=io_type,
            output_data_type=io_type, denylisted_nodes=context.denylisted or None)
    return passes.rewritten(bytes(quantized), context.passes(passes.INT8_QUANTIZED_PASSES),
                            context, payload)


def _full_integer(converter, model, context, payload) -> bytes:
    """Calibrate, run `INT8_FULL_CALIBRATED_PASSES`, quantize every op with int8 input and
    output, run `INT8_FULL_QUANTIZED_PASSES`, and refuse what is not full-integer."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert

    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True
    calibrated = passes.rewritten(_convert(converter, model),
                                  context.passes(passes.INT8_FULL_CALIBRATED_PASSES), context)
    with quiet_converter():
        quantized = tflite_convert.mlir_quantize(
            calibrated, fully_quantize=True, input_data_type=tf.int8, output_data_type=tf.int8)
    content = passes.rewritten(bytes(quantized), context.passes(passes.INT8_FULL_QUANTIZED_PASSES),
                               context, payload)
    require_full_integer(content, [layer.name for layer in model.layers])
    return content


def embed_tflite_metadata(content: bytes, payload: dict) -> bytes:
    """`content` with `payload` (`runtime.metadata.artifact_metadata`) in its metadata."""
    return passes.rewritten(content, [], passes.PassContext([]), tflite_metadata_bytes(payload))
