"""Exact float rewrites that run before full-integer quantization (`export.onnx.integer`).

Each fuses what the TFLite converter fuses, so the QDQ graph rounds where the TFLite
full-integer model (and the quantization-aware model that simulates it) rounds:

- `pool_affine_as_depthwise`: a padding-free AveragePool followed by a per-channel Mul (and
  Add), an inference batch normalization, becomes one depthwise Conv whose taps are equal
  (`m_c / (kh * kw)`, so per-channel int8 weights hold them exactly) with the Add as its
  bias; as QDQ, one int8 output instead of three roundings;
- `matmul_add_as_gemm`: a MatMul with constant weights followed by the Add of a constant
  bias becomes one Gemm (an int32 bias, as TFLite's FULLY_CONNECTED), instead of rounding
  the product to int8 before the bias.

Both compute the same float function (up to float rounding order).
"""

from __future__ import annotations

import numpy as np

from edgetrunc.export.onnx.graph import Graph


def _attribute(node, name, default=None):
    from onnx import helper

    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def _constant_reader(graph, name, op_type):
    """`(reader, its constant operand)` when `name` has one reader of `op_type` whose other
    operand is a constant; else `(None, None)`."""
    reader = graph.sole_reader(name)
    if reader is None or reader.op_type != op_type or len(reader.input) != 2:
        return None, None
    other = reader.input[1] if reader.input[0] == name else reader.input[0]
    return (reader, np.asarray(graph.consts[other], np.float32)) if other in graph.consts else (None, None)


def _channel_vector(value, channels=None):
    """A per-channel constant of an NCHW tensor as a vector (a scalar broadcast to
    `channels`), or None when it varies over other axes."""
    if value.size == 1:
        return None if channels is None else np.full(channels, float(value.reshape(())), np.float32)
    squeezed = value.reshape(value.shape[-3:]) if value.ndim >= 3 else None
    if squeezed is None or squeezed.shape[1:] != (1, 1):
        return None
    return squeezed.reshape(-1)


def _padding_free_pool(node) -> bool:
    return (node.op_type == "AveragePool" and _attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", b"VALID", "NOTSET", "VALID")
            and not any(_attribute(node, "pads", [])) and not _attribute(node, "ceil_mode", 0))


def pool_affine_as_depthwise(model, context=None) -> bool:
    """Fuse padding-free AveragePool + per-channel Mul (+ Add) into one depthwise Conv."""
    from onnx import helper, numpy_helper

    graph = Graph(model)
    changed = False
    for pool in [n for n in model.graph.node if _padding_free_pool(n)]:
        mul, scale = _constant_reader(graph, pool.output[0], "Mul")
        if mul is None or (weights := _channel_vector(scale)) is None:
            continue
        channels = weights.size
        add, offset = _constant_reader(graph, mul.output[0], "Add")
        bias = _channel_vector(offset, channels) if add is not None else np.zeros(channels, np.float32)
        if bias is None or bias.size != channels:
            add, bias = None, np.zeros(channels, np.float32)
        kernel = [int(k) for k in _attribute(pool, "kernel_shape")]
        taps = np.broadcast_to((weights / np.float32(np.prod(kernel))).reshape(-1, 1, 1, 1),
                               (channels, 1, *kernel)).astype(np.float32)
        last = add if add is not None else mul
        name = pool.name + "/as_depthwise"
        model.graph.initializer.extend([numpy_helper.from_array(taps, name + "/taps"),
                                        numpy_helper.from_array(bias.astype(np.float32), name + "/bias")])
        conv = helper.make_node("Conv", [pool.input[0], name + "/taps", name + "/bias"],
                                [last.output[0]], name=name, group=channels,
                                kernel_shape=kernel,
                                strides=[int(s) for s in _attribute(pool, "strides", [1] * len(kernel))])
        index = list(model.graph.node).index(pool)
        for node in (pool, mul, *([add] if add is not None else [])):
            model.graph.node.remove(node)
        model.graph.node.insert(index, conv)
        graph = Graph(model)
        changed = True
    return changed


def matmul_add_as_gemm(model, context=None) -> bool:
    """Fuse MatMul (2-D input, constant 2-D weights) + Add (constant bias) into one Gemm."""
    import onnx
    from onnx import helper

    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    ranks.update({v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.input})
    graph = Graph(model)
    changed = False
    for matmul in [n for n in model.graph.node if n.op_type == "MatMul"]:
        weights = graph.consts.get(matmul.input[1])
        if weights is None or np.ndim(weights) != 2 or ranks.get(matmul.input[0]) != 2:
            continue
        add, bias = _constant_reader(graph, matmul.output[0], "Add")
        if add is None or bias.reshape(-1).size != weights.shape[1]:
            continue
        other = add.input[1] if add.input[0] == matmul.output[0] else add.input[0]
        gemm = helper.make_node("Gemm", [matmul.input[0], matmul.input[1], other],
                                [add.output[0]], name=matmul.name + "/as_gemm")
        index = list(model.graph.node).index(matmul)
        model.graph.node.remove(matmul)
        model.graph.node.remove(add)
        model.graph.node.insert(index, gemm)
        graph = Graph(model)
        changed = True
    return changed


FULL_INTEGER_FLOAT_PASSES = [pool_affine_as_depthwise, matmul_add_as_gemm]
