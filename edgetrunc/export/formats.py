"""The export level of each artifact format: exporter, inspector, metadata, manifest notes.

`ExportHooks` is attached to the runtime's descriptor of its format
(`edgetrunc.runtime.formats.attach_export`), so one descriptor per format holds everything:
`export_format(name)` returns the descriptor with its hooks. `artifact(model, precision,
calibration, applied, metadata, **options)` returns the bytes of one artifact (metadata
embedded when given); each format takes the options it knows (`option_names`) and ignores
the others. `inspect(path, truncations, precision)` reads a written artifact back and checks
its truncation mapping. `opset(path)` is the opset an artifact was written with (None where
a format has none), so a probe converts like the artifact. The manifest notes say how an int8
artifact of the format is quantized.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from edgetrunc.export.onnx.exporter import ONNX_PRECISIONS, export_onnx
from edgetrunc.export.onnx.inspect import inspect_onnx
from edgetrunc.export.onnx.quantize import ONNX_INT8_TYPES
from edgetrunc.export.tflite.exporter import TFLITE_PRECISIONS, export_tflite
from edgetrunc.export.tflite.inspect import inspect_tflite
from edgetrunc.export.tflite.passes import INT8_FLOAT_TYPES, INT8_KEEP_FLOAT
from edgetrunc.runtime import formats


@dataclass(frozen=True)
class ExportHooks:
    """What the export level knows of one format (see the module docstring)."""

    convert: Callable  # (model or PreparedModel, precision, calibration, applied, metadata,
    #                    **options) -> bytes
    inspect: Callable  # (path or bytes, truncations, precision) -> inspector report
    precisions: tuple
    option_names: tuple
    opset: Callable = lambda path: None
    int8_truncation: str = ""  # how an int8 artifact performs a truncation (manifest)
    int8_io: bool = False  # whether its inputs and outputs can be int8
    int8_aware_notes: Callable = lambda literal: {}  # manifest keys of truncation-aware int8
    int8_layout: dict = field(default_factory=dict)  # manifest keys of every int8 artifact

    def artifact(self, model, precision, calibration=None, applied=None, metadata=None,
                 **options) -> bytes:
        known = {key: value for key, value in options.items() if key in self.option_names}
        return self.convert(model, precision, calibration, applied, metadata, **known)


def export_format(name: str):
    """The descriptor of the format `name` with its export hooks (InputError if unknown)."""
    fmt = formats.get(name)
    if fmt.export is None:
        from edgetrunc.errors import InputError

        raise InputError(f"the {name} format has no exporter; expected any of "
                         f"{', '.join(f.name for f in formats.formats() if f.export)}")
    return fmt


def _tflite(model, precision, calibration, applied, metadata, **options) -> bytes:
    return export_tflite(model, precision, calibration=calibration, applied=applied,
                         metadata=metadata, **options)


def _onnx(model, precision, calibration, applied, metadata, **options) -> bytes:
    return export_onnx(model, precision, calibration=calibration, applied=applied,
                       metadata=metadata, **options).SerializeToString()


def onnx_opset(path) -> int | None:
    """The default-domain opset of an ONNX file (None if it cannot be read)."""
    from edgetrunc.runtime._base import check_model_size

    try:
        import onnx

        check_model_size(path)
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable files were already reported by the runner
        return None
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _tflite_aware_notes(literal) -> dict:
    return {"float_op_types": list(INT8_FLOAT_TYPES), "float_inside_xnnpack": list(INT8_KEEP_FLOAT),
            "front_end": ("float" if literal else
                          "float, one-channel convolutions packed over 2x2 blocks")}


formats.attach_export("tflite", ExportHooks(
    _tflite, inspect_tflite, TFLITE_PRECISIONS, ("int8_io", "int8_mode", "literal", "target"),
    int8_truncation=("range of each truncation's producer set to [lower, upper]; int8 "
                     "saturation performs the clip"),
    int8_io=True, int8_aware_notes=_tflite_aware_notes))
formats.attach_export("onnx", ExportHooks(
    _onnx, inspect_onnx, ONNX_PRECISIONS, ("opset", "nchw", "int8_mode", "literal"),
    opset=onnx_opset,
    int8_truncation="Clip input and output quantized with range [lower, upper]",
    int8_aware_notes=lambda literal: {"int8_op_types": list(ONNX_INT8_TYPES)},
    int8_layout={"format": "QDQ"}))
