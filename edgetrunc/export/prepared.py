"""A Keras model as the exporters take it, prepared once for every artifact of a conversion.

`prepare(model)` makes the float32 model (`keras.precision.float32_model`) and walks its
truncations once (`keras.truncations.find_truncations`); `export_tflite` and `export_onnx`
take a `PreparedModel` or a plain Keras model (prepared on the spot), so `convert` loads a
model once and walks it once however many artifacts it writes. A `PreparedModel` also keeps
what one export computes and another reuses: the TFLite converter's plain fp32 bytes (the
fp16 export reads its fp32 constants from them) and the ONNX graph tf2onnx gave, after the
exact fp32 passes (the int8 export starts from a copy of it). Each is the same bytes the
export would compute again (the same model, the same converter, in the same process).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgetrunc.errors import InputError


@dataclass
class PreparedModel:
    """`model` in float32 with its `truncations`; `cache` holds what exports share (keyed by
    the exporter: `("tflite-fp32",)`, `("onnx-fp32", opset, nchw)`)."""

    model: object
    truncations: list
    cache: dict = field(default_factory=dict)

    @property
    def converter_model(self):
        """The model the converters take: a quantization-aware model's plain twin
        (`keras.qat.export_ready`), made once; the model itself otherwise."""
        if "converter-model" not in self.cache:
            from edgetrunc.keras.qat import export_ready, quantization_aware

            model = self.model
            self.cache["converter-model"] = export_ready(model) if quantization_aware(model) else model
        return self.cache["converter-model"]


def prepare(model) -> PreparedModel:
    """`model` (a Keras model or a `PreparedModel`) prepared for export (see the module)."""
    if isinstance(model, PreparedModel):
        return model
    from edgetrunc.keras.precision import float32_model
    from edgetrunc.keras.truncations import find_truncations

    model = float32_model(model)
    return PreparedModel(model, find_truncations(model))


def unsupported_ops_error(model, ops, nodes, missing: str) -> InputError:
    """The one line for a model whose layer uses TensorFlow `ops` a converter has no
    equivalent of (`missing`: "TFLite builtin", "ONNX op"): the layer is the first that a
    converter node name in `nodes` comes from (`runtime.layer_names.first_layer`)."""
    from edgetrunc.runtime.layer_names import first_layer

    layer = first_layer(nodes, [layer.name for layer in getattr(model, "layers", [])])
    where = f"layer '{layer}'" if layer else "a layer"
    return InputError(
        f"{getattr(model, 'name', 'model')}: {where} uses TensorFlow op(s) "
        f"{', '.join(sorted(ops)) or 'unknown'} with no {missing} equivalent; expected "
        f"{missing} ops only")
