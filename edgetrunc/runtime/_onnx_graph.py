"""Reading an ONNX graph safely before ONNX Runtime sees it (no TensorFlow).

`read_onnx_graph` parses the model's structure with the `onnx` package without loading its
external data; `check_onnx_graph` then refuses what must not run: external data that lies
outside the model's folder (or any external data of a model given as bytes, which has no
folder) and control-flow loops (`Loop`, `Scan`, anywhere in the graph or its subgraphs),
which can run unbounded. External data is always resolved next to the model file, never
from the current folder. Without the `onnx` package the loop check reads the raw bytes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from edgetrunc.errors import InputError, first_line

UNBOUNDED_OPS = ("Loop", "Scan")
# NodeProto.op_type is field 4 (a length-delimited string): tag 0x22, then the length.
_RAW_UNBOUNDED = re.compile(rb"\x22\x04(Loop|Scan)")


def read_onnx_graph(path, content: bytes | None):
    """The `onnx.ModelProto` of a model file (`content` None) or of its bytes, external data
    not loaded; None without the `onnx` package. InputError naming `path` if unreadable."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        if content is not None:
            return onnx.load_from_string(bytes(content))
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors
        raise InputError(f"{path}: not a valid ONNX model ({first_line(exc)[:160]})") from None


def _graphs(graph):
    """`graph` and every subgraph of its nodes (If branches, Loop / Scan bodies), depth first."""
    pending = [graph]
    while pending:
        current = pending.pop()
        yield current
        for node in current.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    pending.append(attribute.g)
                pending.extend(attribute.graphs)


def _tensors(graph):
    for current in _graphs(graph):
        yield from current.initializer
        for node in current.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
        for sparse in current.sparse_initializer:
            yield sparse.values
            yield sparse.indices


def _check_external_data(model, path, in_memory: bool) -> None:
    folder = os.path.realpath(Path(path).parent)
    for tensor in _tensors(model.graph):
        if tensor.data_location != 1:  # TensorProto.EXTERNAL
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if in_memory:
            raise InputError(f"{path}: tensor {tensor.name!r} keeps its data in an external file "
                             f"({location!r}); open the model from its file")
        target = os.path.realpath(os.path.join(folder, location))
        if not location or os.path.isabs(location) or os.path.commonpath([folder, target]) != folder:
            raise InputError(f"{path}: external data {location!r} of tensor {tensor.name!r} lies "
                             "outside the model's folder; refusing to read it")
        if not os.path.isfile(target):
            raise InputError(f"{path}: external data file {location!r} of tensor {tensor.name!r} "
                             "is missing beside the model")


def check_onnx_graph(model, path, content: bytes | None) -> None:
    """Refuse external data outside the model's folder and unbounded control flow (see the
    module docstring). `model` is `read_onnx_graph`'s answer (None: check the raw bytes)."""
    if model is None:
        raw = content if content is not None else Path(path).read_bytes()
        found = _RAW_UNBOUNDED.search(raw)
        ops = [found.group(1).decode()] if found else []
    else:
        _check_external_data(model, path, content is not None)
        ops = sorted({node.op_type for graph in _graphs(model.graph) for node in graph.node
                      if node.op_type in UNBOUNDED_OPS and node.domain in ("", "ai.onnx")})
    if ops:
        raise InputError(f"{path}: ONNX op {ops[0]} is not supported: control-flow loops can run "
                         "unbounded")
