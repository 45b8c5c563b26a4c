"""What an artifact says about itself, read without running it (no TensorFlow needed).

The metadata edgetrunc embeds: one schema (`KEYS`) for both formats, one reader. A `.tflite`
model holds it as one JSON object in the metadata buffer named "edgetrunc"; an `.onnx` model
holds each key as a `metadata_props` entry with a JSON value. `read_metadata` (either
format), `read_tflite_metadata` and `read_onnx_metadata` return the same dict; ONNX
artifacts written before the keys were shared (`edgetrunc.version`, `edgetrunc.source`, ...)
read into the same keys. `artifact_metadata`, `tflite_metadata_bytes` and `onnx_props` are
the writing side, used by the exporter. The op inventory of an artifact (`tflite_ops`,
`onnx_ops`: `{op name: count}`) is read here too, one counter per format. TFLite files are
read with the flatbuffer schema module of ai-edge-litert (TensorFlow's when only TensorFlow
is installed), ONNX files with the `onnx` package.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from edgetrunc._text import json_safe
from edgetrunc.runtime._base import check_model_size

METADATA_NAME = "edgetrunc"
KEYS = ("edgetrunc_version", "source", "source_sha256", "truncations", "format", "precision")
_JSON_KEYS = ("truncations",)  # the others are text
_ONNX_KEYS_BEFORE_SHARED_SCHEMA = {
    "edgetrunc.version": "edgetrunc_version", "edgetrunc.source": "source",
    "edgetrunc.source_sha256": "source_sha256", "edgetrunc.truncations": "truncations",
    "edgetrunc.precision": "precision"}
_SCHEMA_MODULES = ("ai_edge_litert.schema_py_generated", "tensorflow.lite.python.schema_py_generated")
_FLATBUFFER_UTILS = ("ai_edge_litert.tools.flatbuffer_utils",
                     "tensorflow.lite.tools.flatbuffer_utils")


def artifact_metadata(version, source, source_sha256, truncations, fmt, precision) -> dict:
    """The metadata of one artifact, every key of `KEYS` (strict JSON: the open side of a
    one-sided truncation is the string "-inf" or "inf")."""
    return dict(zip(KEYS, (version, source, source_sha256, json_safe(truncations), fmt,
                           precision)))


def tflite_metadata_bytes(payload: dict) -> bytes:
    """The content of the TFLite metadata buffer "edgetrunc" for `payload`."""
    return json.dumps(payload, sort_keys=True).encode()


def onnx_props(payload: dict) -> dict:
    """`{key: text}` for ONNX `metadata_props`: text as it is, the truncations as JSON."""
    return {key: json.dumps(value, sort_keys=True) if key in _JSON_KEYS else str(value)
            for key, value in payload.items()}


def from_onnx_props(props: dict) -> dict | None:
    """The edgetrunc metadata in ONNX `metadata_props` (`{key: text}`), None when there is none."""
    found = {}
    for key, text in props.items():
        key = _ONNX_KEYS_BEFORE_SHARED_SCHEMA.get(key, key)
        if key not in KEYS:
            continue
        try:
            found[key] = json.loads(text) if key in _JSON_KEYS else text
        except ValueError:
            found[key] = text
    return found or None


def _content(artifact) -> bytes:
    if isinstance(artifact, (bytes, bytearray, memoryview)):
        return bytes(artifact)
    check_model_size(artifact)
    return Path(artifact).read_bytes()


def is_tflite(content: bytes) -> bool:
    """Whether `content` is a TFLite flatbuffer (file identifier 'TFL3' at byte 4)."""
    return len(content) >= 8 and content[4:8] == b"TFL3"


def read_metadata(artifact) -> dict | None:
    """The edgetrunc metadata of a `.tflite` or `.onnx` artifact (bytes or path), else None."""
    content = _content(artifact)
    return read_tflite_metadata(content) if is_tflite(content) else read_onnx_metadata(content)


def _first_module(names):
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def tflite_schema(writer: bool = False):
    """The TFLite flatbuffer schema module (ai-edge-litert's, else TensorFlow's); None if
    neither. `writer=True` (the exporter) takes TensorFlow's first: the schema of the converter
    that wrote the bytes it rewrites."""
    return _first_module(_SCHEMA_MODULES[::-1] if writer else _SCHEMA_MODULES)


def tflite_flatbuffer_utils(writer: bool = False):
    """The `flatbuffer_utils` module (bytes <-> mutable `ModelT`) beside `tflite_schema`."""
    return _first_module(_FLATBUFFER_UTILS[::-1] if writer else _FLATBUFFER_UTILS)


def _tflite_model(content: bytes):
    schema = tflite_schema()
    return None if schema is None else (schema, schema.Model.GetRootAs(content, 0))


def read_tflite_metadata(artifact) -> dict | None:
    """The edgetrunc metadata of a `.tflite` model (bytes or path); None when absent."""
    try:
        opened = _tflite_model(_content(artifact))
        if opened is None:
            return None
        _, model = opened
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if (entry.Name() or b"").decode() == METADATA_NAME:
                data = model.Buffers(entry.Buffer()).DataAsNumpy()
                return json.loads(bytes(data).decode()) if not isinstance(data, int) else None
    except (ValueError, UnicodeDecodeError, IndexError, TypeError, AttributeError):
        return None
    return None


def _onnx_model(model):
    if hasattr(model, "graph"):  # an onnx.ModelProto
        return model
    import onnx

    if isinstance(model, (bytes, bytearray, memoryview)):
        return onnx.load_from_string(bytes(model))
    check_model_size(model)
    return onnx.load(str(model), load_external_data=False)  # the graph, not the weights


def read_onnx_metadata(model) -> dict | None:
    """The edgetrunc metadata of an ONNX model (`ModelProto`, bytes or path); None when absent
    or when the `onnx` package is not installed."""
    try:
        proto = _onnx_model(model)
    except ImportError:
        return None
    return from_onnx_props({p.key: p.value for p in proto.metadata_props})


def opcode_name(names: dict, builtin: int, deprecated: int, custom) -> str:
    """The op name of a TFLite operator code (`CUSTOM:<name>` for a custom op); `names` maps
    builtin codes to names. The larger of the two builtin code fields is the real one."""
    code = max(int(builtin), int(deprecated))
    name = names.get(code, str(code))
    if name == "CUSTOM":
        return f"CUSTOM:{custom.decode('utf-8', 'replace') if isinstance(custom, bytes) else custom}"
    return name


def builtin_names(schema) -> dict:
    """`{builtin code: op name}` of a TFLite schema module."""
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def tflite_ops(artifact) -> dict | None:
    """`{op name: count}` of the main subgraph of a `.tflite` model (bytes or path), sorted;
    None when neither ai-edge-litert nor TensorFlow (the schema module) is installed."""
    opened = _tflite_model(_content(artifact))
    if opened is None:
        return None
    schema, model = opened
    names, graph = builtin_names(schema), model.Subgraphs(0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    counts = {}
    for i in range(graph.OperatorsLength()):
        code = codes[graph.Operators(i).OpcodeIndex()]
        name = opcode_name(names, code.BuiltinCode(), code.DeprecatedBuiltinCode(), code.CustomCode())
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def onnx_ops(model) -> dict:
    """`{op_type: count}` of an ONNX model (`ModelProto`, bytes or path), sorted."""
    counts = {}
    for node in _onnx_model(model).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
