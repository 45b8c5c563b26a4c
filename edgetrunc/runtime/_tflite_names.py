"""Names in a TFLite flatbuffer made readable before the interpreter sees them (no TensorFlow).

The interpreter hands tensor and signature names to Python as UTF-8 text and raises on a
name that is not valid UTF-8. `readable_names` returns the model's bytes with every such
byte of a tensor, subgraph or signature name replaced by '?': the same length, so every
offset of the flatbuffer holds and nothing else changes. `signature_order` reads the Keras
input names and output order back from the signature of an interpreter.
"""

from __future__ import annotations

import struct

from edgetrunc.runtime.metadata import tflite_schema

_TENSOR_NAME, _SUBGRAPH_NAME, _SIGNATURE_KEY, _TENSOR_MAP_NAME = 10, 12, 8, 4  # vtable slots


def _string_span(table, slot, size: int):
    """`(start, length)` of the string field at vtable `slot` of a flatbuffer table, or None."""
    offset = table.Offset(slot)
    if not offset:
        return None
    where = offset + table.Pos
    where += struct.unpack_from("<I", table.Bytes, where)[0]
    length = struct.unpack_from("<I", table.Bytes, where)[0]
    start = where + 4
    return (start, length) if start + length <= size else None


def _name_spans(model, size: int) -> list:
    spans = []
    for i in range(model.SubgraphsLength()):
        graph = model.Subgraphs(i)
        spans.append(_string_span(graph._tab, _SUBGRAPH_NAME, size))
        spans += [_string_span(graph.Tensors(j)._tab, _TENSOR_NAME, size)
                  for j in range(graph.TensorsLength())]
    for i in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(i)
        spans.append(_string_span(signature._tab, _SIGNATURE_KEY, size))
        spans += [_string_span(signature.Inputs(j)._tab, _TENSOR_MAP_NAME, size)
                  for j in range(signature.InputsLength())]
        spans += [_string_span(signature.Outputs(j)._tab, _TENSOR_MAP_NAME, size)
                  for j in range(signature.OutputsLength())]
    return [span for span in spans if span is not None]


def readable_name(raw: bytes) -> bytes:
    """`raw` with each byte that is not part of valid UTF-8 replaced by '?' (same length)."""
    text = raw.decode("utf-8", "surrogateescape")
    return "".join("?" if "\udc80" <= ch <= "\udcff" else ch for ch in text).encode("utf-8")


def readable_names(content: bytes) -> bytes:
    """`content` with invalid UTF-8 in its names replaced (see the module docstring); `content`
    itself when every name is valid, or when it cannot be parsed (the interpreter judges it)."""
    schema = tflite_schema()
    if schema is None:
        return content
    try:
        spans = _name_spans(schema.Model.GetRootAs(content, 0), len(content))
    except Exception:  # a damaged flatbuffer: left to the interpreter's verifier
        return content
    patched = None
    for start, length in spans:
        raw = bytes(content[start:start + length])
        try:
            raw.decode("utf-8")
            continue
        except UnicodeDecodeError:
            pass
        patched = patched if patched is not None else bytearray(content)
        patched[start:start + length] = readable_name(raw)
    return bytes(patched) if patched is not None else content


def signature_order(interpreter, inputs: list, outputs: list) -> tuple:
    """`(input names, output details)`: the signature's input names (the Keras input names) in
    input order, and the outputs in the Keras model's order (`output_0`, `output_1`, ... of the
    signature; the converter may store them in another order). Without a signature, the
    tensor names and the stored order."""
    try:
        signature = next(iter(interpreter._get_full_signature_list().values()), {})
    except (AttributeError, ValueError, RuntimeError):
        signature = {}
    by_index = {int(index): name for name, index in signature.get("inputs", {}).items()}
    names = [by_index.get(int(d["index"]), d["name"]) for d in inputs]
    if len(set(names)) != len(names):
        names = [d["name"] for d in inputs]
    keyed = signature.get("outputs", {})
    position = {int(index): int(key.rsplit("_", 1)[1]) for key, index in keyed.items()
                if key.startswith("output_") and key.rsplit("_", 1)[1].isdigit()}
    if len(position) == len(outputs) and all(int(d["index"]) in position for d in outputs):
        outputs = sorted(outputs, key=lambda d: position[int(d["index"])])
    return names, outputs
