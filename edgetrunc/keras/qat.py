"""Quantization-aware models: what the full-integer converter will compute, simulated in Keras.

`quantize_model(model, calibration)` clones a functional model for quantization-aware
fine-tuning: convolutions and dense layers compute with per-channel int8 fake-quantized
weights (`keras.fake_quant`), and a `FakeQuant` follows each layer whose output becomes an
int8 tensor of the full-integer TFLite graph, with the range the converter gives it:

| layer | its int8 range |
|---|---|
| `Truncation` | `[lower, upper]` (the clip is int8 saturation) |
| tanh / sigmoid / softmax inside the model | the converter's fixed output ranges |
| the detector's output layer (softmax over 2 classes, or sigmoid) | the stego logit `z_stego - z_cover`, one unit, tracked |
| an exact fixed filter reading the pixels | `[-128, 127]` steps of the filter |
| anything else written to memory | tracked: calibrated, a moving average of batch extremes while training, calibrated again at the end |

No `FakeQuant` goes where the converter fuses ops into one (a convolution and the batch
normalization, truncation or ReLU after it; a VALID pool and its batch normalization) or
keeps the input's scale (pools, reshapes; not a global average, whose MEAN gets its own
range). The detector's output is its logit: softmax over (cover, stego) is a sigmoid of the
logit difference, so the clone's last layer is one `Dense` unit with the weights
`w_stego - w_cover` and no activation, and the full-integer artifact outputs that int8 logit
(a fine scale where decisions are made; an int8 softmax output has steps of 1/256 and ties
the tiles near 0.5 and the confident ones). Batch normalization is frozen (inference
statistics, as exported). `export_ready(model)` returns the fine-tuned model as the plain
model the converter takes (plain layers, a fixed `FakeQuant` only after an exact filter): the
converter gives each tensor
the range the training simulated, fixed ranges by the same rules and tracked ones by
calibrating on the same tiles, so the full-integer artifact computes what was simulated.
(Converting the `FakeQuant` ops themselves, as the TFLite converter can, split the fused
convolution + batch normalization chains and was not exact.)
"""

from __future__ import annotations

import numpy as np

from edgetrunc.keras.fake_quant import QUANTIZED, TANH_RANGE, UNIT_RANGE, FakeQuant
from edgetrunc.keras.truncations import find_truncations
from edgetrunc.models._filters import exact_steps

_FIXED_ACTIVATIONS = {"tanh": TANH_RANGE, "sigmoid": UNIT_RANGE, "softmax": UNIT_RANGE}
_FUSED_ACTIVATIONS = ("relu", "relu6")
_SCALE_KEEPING = ("AveragePooling2D", "MaxPooling2D", "GlobalMaxPooling2D", "Flatten", "Reshape",
                  "Dropout", "InputLayer")
_WEIGHTED = tuple(QUANTIZED)


def _activation_name(layer) -> str | None:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) if activation is not None else None


def _consumers(model) -> dict:
    """{layer name: [layers reading its output]} inside `model`."""
    readers = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                source = tensor._keras_history.operation
                readers.setdefault(source.name, []).append(layer)
    return readers


def _fused_into(layer, reader) -> bool:
    """Whether the converter fuses `layer` with its sole `reader` (no tensor between)."""
    kind, reads = type(layer).__name__, type(reader).__name__
    linear = _activation_name(layer) in (None, "linear")
    follower_fuses = (reads in ("BatchNormalization", "Truncation")
                      or (reads == "Activation" and _activation_name(reader) in _FUSED_ACTIVATIONS))
    if kind in _WEIGHTED and linear:
        return follower_fuses
    if kind == "BatchNormalization":
        return reads == "Truncation" or (reads == "Activation"
                                         and _activation_name(reader) in _FUSED_ACTIVATIONS)
    if kind == "AveragePooling2D" and getattr(layer, "padding", "") == "valid":
        return reads == "BatchNormalization"
    return False


def _logit_head(layer, outputs) -> bool:
    """Whether `layer` is a detector's output: Dense over (cover, stego) with softmax, or
    one sigmoid unit (its clone outputs the stego logit, see the module docstring)."""
    if type(layer).__name__ != "Dense" or layer.name not in outputs:
        return False
    activation = _activation_name(layer)
    return (activation, layer.units) in (("softmax", 2), ("sigmoid", 1))


def logit_weights(layer) -> list:
    """`[kernel [F, 1], bias [1]]` of the stego logit of a `_logit_head` layer: for softmax
    over (cover, stego), `w_stego - w_cover` (the softmax's stego column is the sigmoid of it)."""
    kernel, *bias = layer.get_weights()
    bias = bias[0] if bias else np.zeros(kernel.shape[1], kernel.dtype)
    if kernel.shape[1] == 2:
        kernel, bias = kernel[:, 1:] - kernel[:, :1], bias[1:] - bias[:1]
    return [kernel, bias]


def _exact_step(layer, model) -> float | None:
    """The one weight step of a fixed convolution reading the model's input, else None."""
    if type(layer).__name__ != "Conv2D" or layer.trainable or layer.use_bias:
        return None
    if _activation_name(layer) not in (None, "linear"):
        return None
    if not any(t._keras_history.operation.name == model.layers[0].name
               for node in layer._inbound_nodes for t in node.input_tensors):
        return None
    steps = exact_steps(np.asarray(layer.get_weights()[0]), 3)
    if steps is None or not np.allclose(steps, steps[0], rtol=1e-6):
        return None
    return float(steps[0])


def _fixed_exact(layer) -> bool:
    """Whether `layer` is a fixed convolution whose weights are integer multiples of one step
    per output channel: the converter stores those exactly (`exact_filter_weights`), so its
    quantization-aware clone computes with them as they are."""
    axis = {"Conv2D": 3, "DepthwiseConv2D": 2}.get(type(layer).__name__)
    if axis is None or layer.trainable:
        return False
    kernel = np.asarray(layer.get_weights()[0])
    if axis == 2:  # depthwise [kh, kw, C, M]: output channels C * M
        kernel, axis = kernel.reshape(*kernel.shape[:2], -1), 2
    return exact_steps(kernel, axis) is not None


def fake_quant_plan(model) -> dict:
    """{layer name: "tracked" or a fixed (min, max)} of the layers a `FakeQuant` follows."""
    bounds = {t["layer"]: (t["lower"], t["upper"]) for t in find_truncations(model)}
    readers = _consumers(model)
    outputs = {t._keras_history.operation.name for t in model.outputs}
    plan = {}
    for layer in model.layers:
        kind = type(layer).__name__
        after = readers.get(layer.name, [])
        if kind in _SCALE_KEEPING or (len(after) == 1 and _fused_into(layer, after[0])):
            continue
        step = _exact_step(layer, model)
        if _logit_head(layer, outputs):
            plan[layer.name] = "tracked"  # the stego logit, the artifact's int8 output
        elif layer.name in bounds:
            plan[layer.name] = bounds[layer.name]
        elif _activation_name(layer) in _FIXED_ACTIVATIONS:
            plan[layer.name] = _FIXED_ACTIVATIONS[_activation_name(layer)]
        elif step is not None:
            plan[layer.name] = (-128 * step, 127 * step)
        else:
            plan[layer.name] = "tracked"
    return plan


def _clone_layer(layer, exact: set, heads: set):
    import keras

    config = layer.get_config()
    kind = type(layer).__name__
    if layer.name in heads:
        config.update(units=1, activation="linear", use_bias=True)
    if kind in QUANTIZED:
        if kind in ("Conv2D", "DepthwiseConv2D"):
            config["exact_weights"] = layer.name in exact
        return QUANTIZED[kind].from_config(config)
    if kind == "BatchNormalization":
        config["trainable"] = False  # frozen: inference statistics, as exported
    return layer.__class__.from_config(config) if not isinstance(layer, keras.Model) else layer


def quantize_model(model, calibration=None, batch_size: int = 16):
    """The quantization-aware clone of functional `model` (see the module docstring), with
    its weights; tracked ranges are calibrated on `calibration` (model inputs) when given."""
    import keras

    plan = fake_quant_plan(model)
    exact = {layer.name for layer in model.layers if _fixed_exact(layer)}
    outputs = {t._keras_history.operation.name for t in model.outputs}
    heads = {layer.name for layer in model.layers if _logit_head(layer, outputs)}

    def call(layer, *args, **kwargs):
        output = layer(*args, **kwargs)
        if layer.name not in plan:
            return output
        fixed = None if plan[layer.name] == "tracked" else plan[layer.name]
        return FakeQuant(fixed, name=f"{layer.name}_fake_quant")(output)

    clone = keras.models.clone_model(
        model, clone_function=lambda layer: _clone_layer(layer, exact, heads), call_function=call)
    for layer in model.layers:
        if layer.weights:
            weights = logit_weights(layer) if layer.name in heads else layer.get_weights()
            clone.get_layer(layer.name).set_weights(weights)
    if calibration is not None:
        calibrate_ranges(clone, calibration, batch_size)
    return clone


def calibrate_ranges(model, calibration, batch_size: int = 16) -> None:
    """Set each tracked `FakeQuant` range to the extremes of its input on `calibration`, as
    the converter calibrates them: computed by the plain model of `export_ready` (float
    activations, no rounding before them)."""
    import keras

    tracked = [layer for layer in model.layers if isinstance(layer, FakeQuant) and layer.fixed is None]
    if not tracked:
        return
    plain = export_ready(model)
    sources = [layer.input._keras_history.operation.name for layer in tracked]
    probe = keras.Model(plain.inputs, [plain.get_layer(name).output for name in sources])
    outputs = probe.predict(np.asarray(calibration, np.float32), batch_size=batch_size, verbose=0)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    for layer, values in zip(tracked, outputs):
        layer.set_range(float(np.min(values)), float(np.max(values)))


def quantization_aware(model) -> bool:
    """Whether `model` holds fake quantization (made by `quantize_model`)."""
    kinds = (FakeQuant, *QUANTIZED.values())
    return any(isinstance(layer, kinds) for layer in getattr(model, "layers", []))


def export_ready(model):
    """`model` (quantization-aware) as the plain model the converter takes: plain layers for
    the weights, no `FakeQuant` but the fixed one after an exact fixed filter (its saturation at
    +-127 steps shapes what everything after it is calibrated on; the converter reads it as
    the exact range it sets anyway). The converter gives every tensor the range the training
    simulated: fixed ranges by the same rules, tracked ones by calibrating on the same tiles
    (`fine_tune_qat` re-calibrates them after training)."""
    import keras

    def call(layer, *args, **kwargs):
        source = getattr(args[0], "_keras_history", None) if args else None
        exact = source is not None and getattr(source.operation, "exact_weights", False)
        if isinstance(layer, FakeQuant) and not (exact and layer.fixed is not None):
            return args[0]
        return layer(*args, **kwargs)

    def plain(layer):
        for base, quantized in QUANTIZED.items():
            if type(layer) is quantized:
                config = {k: v for k, v in layer.get_config().items() if k != "exact_weights"}
                return getattr(keras.layers, base).from_config(config)
        return layer.__class__.from_config(layer.get_config())

    clone = keras.models.clone_model(model, clone_function=plain, call_function=call)
    for layer in clone.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return clone
