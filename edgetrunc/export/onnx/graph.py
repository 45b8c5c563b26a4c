"""The ONNX graph view: constants, producers and consumers of a `ModelProto`, and its clips.

`Graph` resolves initializers and `Constant` nodes (following a DequantizeLinear of a
quantized constant), producers and consumers, and lists the `ClipCandidate`s of the graph:
Max/Min pairs with constant bounds (what tf2onnx emits for a truncation) and `Clip` nodes.
The names the exporter gives what it writes are here too: the input (`INPUT_NAME`) and each
truncation's Clip (`<layer>/Clip`).
"""

from __future__ import annotations

import numpy as np

from edgetrunc.export.candidates import ClipCandidate

INPUT_NAME = "input"
CLIP_SUFFIX = "/Clip"


def load_onnx_proto(model):
    """An `onnx.ModelProto` from a proto, serialized bytes or a path."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    return onnx.load(str(model))


class Graph:
    """The graph of a `ModelProto` with constants, producers and consumers resolved."""

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
        self.outputs = {o.name for o in self.graph.output}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def sole_reader(self, name):
        """The one node that reads tensor `name`, when exactly one does and it is not a graph
        output (so the two can be rewritten together); else None."""
        readers = self.consumers.get(name, [])
        if len(readers) != 1 or name in self.outputs:
            return None
        return readers[0]

    def scalar(self, name):
        """The value of tensor `name` if it is a scalar constant (through a DequantizeLinear)."""
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
        """`(variable input, constant bound)` of a binary Min/Max, else None."""
        if len(node.input) != 2:
            return None
        a, b = node.input
        ca, cb = self.scalar(a), self.scalar(b)
        if cb is not None and ca is None:
            return a, cb
        if ca is not None and cb is None:
            return b, ca
        return None

    def minmax_candidates(self) -> list[ClipCandidate]:
        """Every Max->Min (or Min->Max) pair with scalar constant bounds, then every other Max
        (`[bound, inf]`) or Min (`[-inf, bound]`) with a scalar constant bound (a one-sided
        clip), each in graph order."""
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
            found.append(ClipCandidate("minmax", [node, second], lower, upper,
                                       [node.name, second.name],
                                       f"{node.op_type}+{second.op_type}", first[0],
                                       second.output[0]))
        paired = {id(n) for c in found for n in c.ops}
        for node in self.graph.node:
            bounded = self.bounded(node) if node.op_type in ("Max", "Min") else None
            if bounded is None or id(node) in paired:
                continue
            lower, upper = (bounded[1], np.inf) if node.op_type == "Max" else (-np.inf, bounded[1])
            found.append(ClipCandidate("minmax", [node], lower, upper, [node.name], node.op_type,
                                       bounded[0], node.output[0]))
        return found

    def clip_candidates(self) -> list[ClipCandidate]:
        """Every `Clip` node in graph order; an absent bound is open (-inf, inf), a bound that
        is not constant None."""
        found = []
        for node in self.graph.node:
            if node.op_type != "Clip":
                continue
            lower = self.scalar(node.input[1]) if len(node.input) > 1 and node.input[1] else -np.inf
            upper = self.scalar(node.input[2]) if len(node.input) > 2 and node.input[2] else np.inf
            found.append(ClipCandidate("clip", [node], lower, upper, [node.name], "Clip",
                                       node.input[0], node.output[0]))
        return found

    def ancestors(self, tensor):
        """Every node that tensor `tensor` depends on."""
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
