"""The TFLite rewrites: each one a pass over a model, run in the order the lists below give.

As in tf2onnx's optimizer list, each pipeline reads top to bottom:

- `FP32_PASSES`: `pack_front_end` (exact: the same products plus exact zeros),
  `activations_before_unpack` (the same elementwise ops on the packed values), then
  `pools_as_convolutions` (a VALID average pool and the batch normalization after it as
  convolutions, reading the packed values; float: the same sums up to rounding).
- `FP16_PASSES`: `exact_fp16_front_end` (fp32 values for the truncation bounds and the
  weights before the first truncation), then the three passes of fp32.
- truncation-aware int8, around the converter's quantizer: `INT8_CALIBRATED_PASSES` on the
  calibrated float model (`pin_truncation_ranges`: the range of each truncation's tensors
  is exactly `[lower, upper]`; `mark_float_ops`: what the quantizer leaves float), then
  `INT8_QUANTIZED_PASSES` on the quantized one (`saturate_truncations`: int8 saturation
  performs the clip, MINIMUM/MAXIMUM removed; `float_islands`; the two layout passes, after
  which the saturating QUANTIZE runs on the packed values and the unpacking moves int8;
  `pools_as_convolutions`).

A pass is `pass_(model_t, context) -> bool`: it edits the `ModelT` in place and says whether
it changed it. `run_passes` runs a list over a parsed model and notes in `context.applied`
the name of each pass that changed it (the manifest's "passes"); `rewritten` parses a
flatbuffer once, runs a list, embeds the metadata and writes it once (not at all when
nothing changed). `PassContext` holds what passes read (the
truncations, options, the fp32 twin of an fp16 model) and what `mark_float_ops` leaves for
the quantizer. The rewrites for speed (`pack_front_end`, `activations_before_unpack`,
`pools_as_convolutions`; see `export.tflite.packing` and `export.tflite.pooling`) are on by
default; `literal=True` skips them (a one-to-one translation of the converter's graph).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.export.candidates import layer_hints, match_clips, range_tolerance
from edgetrunc.export.passes import layout_pass, run_passes
from edgetrunc.export.tflite import graph as tg
from edgetrunc.export.tflite import packing, pooling
from edgetrunc.export.tflite.inspect import lost_truncation
from edgetrunc.export.tflite.integer import (exact_filter_ranges, exact_filter_weights,
                                            pin_pixel_input)
from edgetrunc.runtime.layer_names import SATURATION_MARK

# Ops that XNNPACK runs in float but not in signed int8: kept float (between DEQUANTIZE and
# QUANTIZE, which XNNPACK does run) so the whole graph stays in as few partitions as possible.
INT8_KEEP_FLOAT = ("AVERAGE_POOL_2D", "SOFTMAX")
# Ops left in float after the truncation: elementwise MUL/ADD, i.e. an unfolded batch norm,
# which scales each channel by a very different factor that one per-tensor int8 scale
# cannot hold. With them float, decision agreement with Keras on a trained tlunet went from
# 0.95 to 0.99-1.0; everything else after the truncation (convolutions, TANH lookup tables,
# pooling, the classifier) is int8.
INT8_FLOAT_TYPES = ("MUL", "ADD")


@dataclass
class PassContext:
    """What the passes of one export read, and what `mark_float_ops` leaves for the quantizer.

    `fp32_reference`: the fp32 TFLite bytes of the same model (fp16 only). `denylisted`:
    output tensor names of the ops the quantizer must leave float. `literal`: skip the
    layout rewrites. `applied`: names of the passes that changed the model, in order.
    `exact_filters`: convolutions with exactly representable weights (`integer`).
    """

    truncations: list
    keep_float: tuple = INT8_KEEP_FLOAT
    float_types: tuple = INT8_FLOAT_TYPES
    literal: bool = False
    fp32_reference: bytes | None = None
    denylisted: list = field(default_factory=list)
    applied: list = field(default_factory=list)
    exact_filters: dict = field(default_factory=dict)
    target: str = "cpu"

    def passes(self, pass_list) -> list:
        """`pass_list` as run for this context's target (`for_target`)."""
        return for_target(pass_list, self.target)


def rewritten(content: bytes, passes, context: PassContext, metadata: bytes | None = None) -> bytes:
    """`content` parsed once, `passes` run over it, `metadata` (the "edgetrunc" buffer) set,
    and written once; the same bytes when no pass changed it and there is no metadata."""
    if not passes and metadata is None:
        return content
    model_t = tg.read_model(content)
    changed = run_passes(model_t, passes, context)
    if metadata is not None:
        tg.set_metadata(model_t, metadata)
    elif not changed:
        return content
    return tg.write_model(model_t)


def _front_end_ops(graph, candidates, matches):
    """Ops before the first truncation: ancestors of a truncation's input, none downstream."""
    truncation_ops = {i for c in candidates if c.kind == "minmax" for i in c.ops}
    downstream = set()
    for index, op in enumerate(graph.g.operators):
        if index in truncation_ops or any(graph.producer.get(int(i)) in downstream | truncation_ops
                                          for i in op.inputs if i >= 0):
            downstream.add(index)
    front = set()
    for index in matches:
        if index is not None and candidates[index].kind == "minmax":
            front |= graph.ancestors(candidates[index].input)
        elif index is not None:  # a fused clip: its op belongs to the truncation
            (op,) = candidates[index].ops
            front |= {a for t in graph.g.operators[op].inputs if t >= 0
                      for a in graph.ancestors(int(t))}
    return front - downstream


def exact_fp16_front_end(model_t, context: PassContext) -> bool:
    """fp16 weights everywhere except where they break exactness: each truncation's bounds
    (fp16 would round T = 1.7 to 1.7002) and the weights of every op before the first
    truncation (the KV filter's 1/12 steps are not fp16 numbers; their rounding leaves a DC
    gain that swamps a +-1 stego residual) are stored as the fp32 values."""
    graph = tg.Graph(model_t)
    reference = tg.Graph(tg.read_model(context.fp32_reference))
    compute = [i for i, op in enumerate(graph.g.operators) if graph.op_name(op) != "DEQUANTIZE"]
    twins = {}
    if [graph.op_name(graph.g.operators[i]) for i in compute] == [
            reference.op_name(op) for op in reference.g.operators]:
        twins = dict(zip(compute, reference.g.operators))
    truncations = context.truncations
    candidates = [c for c in graph.clip_candidates() if c.kind == "minmax"]
    atol = max([1e-3 * max(1.0, abs(t["lower"]), abs(t["upper"])) for t in truncations] or [0])
    matches = match_clips(truncations, candidates, atol=atol)
    replacements = []
    for index in sorted(_front_end_ops(graph, candidates, matches)):
        twin = twins.get(index)
        if twin is None:
            continue
        for position, tensor in enumerate(graph.g.operators[index].inputs):
            producer = graph.producer.get(int(tensor))
            if producer is None or graph.op_name(graph.g.operators[producer]) != "DEQUANTIZE":
                continue
            exact = reference.constant(int(twin.inputs[position]))
            if exact is not None:
                replacements.append((int(tensor), exact))
    for t, index in zip(truncations, matches):
        if index is not None:
            for op_name, tensor in candidates[index].bound_tensors.items():
                replacements.append((tensor, t["lower"] if op_name == "MAXIMUM" else t["upper"]))
    for tensor, value in replacements:
        graph.set_float32_constant(tensor, value)
    return bool(replacements)


def pin_truncation_ranges(model_t, context: PassContext) -> bool:
    """Set the calibrated range of each truncation's input and outputs to `[lower, upper]`."""
    graph = tg.Graph(model_t)
    candidates = graph.clip_candidates()
    for t, index in zip(context.truncations, match_clips(context.truncations, candidates)):
        if index is None:
            raise InputError(f"{t['layer']}: no MAXIMUM/MINIMUM pair (or fused clip activation) "
                             f"with bounds [{t['lower']:g}, {t['upper']:g}] in the converted graph")
        c = candidates[index]
        tensors = [graph.g.operators[i].outputs[0] for i in c.ops]
        if c.input is not None:
            tensors.append(c.input)
        low, high = _pinned_range(graph, t, tensors)
        for tensor in tensors:
            if graph.g.tensors[tensor].quantization is None:
                graph.g.tensors[tensor].quantization = tg.quantization_parameters()
            q = graph.g.tensors[tensor].quantization
            q.min, q.max = [low], [high]
    return bool(context.truncations)


def _pinned_range(graph, t, tensors):
    """`[lower, upper]`; for a one-sided clip the finite bound is the range's edge and the open
    side keeps the widest calibrated value of `tensors` (beyond the bound by one step at least)."""
    low, high = float(t["lower"]), float(t["upper"])
    if not (np.isinf(low) or np.isinf(high)):
        return low, high
    q = [graph.g.tensors[i].quantization for i in tensors]
    calibrated = [(float(p.min[0]), float(p.max[0])) for p in q
                  if p is not None and p.min is not None and len(p.min)]
    if not calibrated:
        raise InputError(f"{t['layer']}: no calibrated range for the open side of its one-sided "
                         "clip in the converted graph")
    if np.isinf(low):
        return min(min(c[0] for c in calibrated), high - max(abs(high), 1.0) / 255), high
    return low, max(max(c[1] for c in calibrated), low + max(abs(low), 1.0) / 255)


def mark_float_ops(model_t, context: PassContext) -> bool:
    """Name, in `context.denylisted`, the ops the quantizer leaves float: every op before the
    first truncation and the `float_types` ones after it. Changes nothing."""
    graph = tg.Graph(model_t)
    candidates = graph.clip_candidates()
    matches = match_clips(context.truncations, candidates)
    truncation_ops = {i for c in candidates if c.kind == "minmax" for i in c.ops}
    float_ops = _front_end_ops(graph, candidates, matches)
    float_ops |= {i for i, op in enumerate(graph.g.operators)
                  if graph.op_name(op) in context.float_types and i not in truncation_ops}
    context.denylisted = [graph.tensor_name(graph.g.operators[i].outputs[0])
                          for i in sorted(float_ops)]
    return False


def saturate_truncations(model_t, context: PassContext) -> bool:
    """Delete each truncation's MAXIMUM/MINIMUM; its producer's int8 saturation clips."""
    graph = tg.Graph(model_t)
    removed = False
    for t in context.truncations:
        candidates = graph.clip_candidates()
        atol = range_tolerance(t)
        (index,) = match_clips([t], candidates, atol=atol)
        if index is None:
            index = _stacked_clip(graph, candidates, t, context.truncations, atol)
        if index is None:
            raise InputError(lost_truncation(graph, candidates, t))
        c = candidates[index]
        if c.kind != "minmax":
            continue  # a fused activation clips at the producer's requantization already
        source, clipped = int(c.input), int(c.output)
        if len(graph.consumers.get(source, [])) != 1 or source in set(int(i) for i in graph.g.inputs):
            continue  # the unclipped tensor is read elsewhere: keep the clip ops
        src, dst = graph.g.tensors[source], graph.g.tensors[clipped]
        if dst.type != src.type or graph.producer.get(source) is None:
            continue
        src.quantization = dst.quantization
        src.name = f"{graph.tensor_name(source)};{SATURATION_MARK}/{t['layer']}"
        graph.remove_ops(c.ops, {clipped: source})
        removed = True
    return removed


def _stacked_clip(graph, candidates, t, truncations, atol):
    """The candidate of truncation `t` when a narrower clip follows it directly.

    The quantizer gives the tensor between two stacked truncations the range of the second,
    so the first one's bounds are stored in that narrower int8 range: it then clips to the
    intersection of its bounds and that range, which is what the pair computes in float too.
    Only a candidate named after `t` is considered.
    """
    for index, c in enumerate(candidates):
        if c.kind != "minmax" or t["layer"] not in layer_hints(c.names, truncations):
            continue
        q = graph.g.tensors[int(c.output)].quantization
        if q is None or q.scale is None or len(q.scale) != 1:
            continue
        low = (-128 - int(q.zeroPoint[0])) * float(q.scale[0])
        high = (127 - int(q.zeroPoint[0])) * float(q.scale[0])
        lower, upper = max(t["lower"], low), min(t["upper"], high)
        if lower < upper and abs(c.lower - lower) <= atol and abs(c.upper - upper) <= atol:
            return index
    return None


def float_islands(model_t, context: PassContext) -> bool:
    """Run each single-input int8 op of a `keep_float` type in float: DEQUANTIZE -> op -> QUANTIZE.

    XNNPACK runs AVERAGE_POOL_2D and SOFTMAX in float but not in signed int8; in float they
    stay inside the delegate instead of splitting the graph.
    """
    if not context.keep_float:
        return False
    graph = tg.Graph(model_t)
    codes = len(model_t.operatorCodes)
    int8 = tg.schema_module().TensorType.INT8
    dequantize = tg.opcode_index(model_t, "DEQUANTIZE")
    quantize = tg.opcode_index(model_t, "QUANTIZE")
    moved, operators = 0, []
    for op in graph.g.operators:
        variable = [int(t) for t in op.inputs if t >= 0 and graph.constant(int(t)) is None]
        if (graph.op_name(op) not in context.keep_float or len(variable) != 1
                or len(op.outputs) != 1 or graph.g.tensors[variable[0]].type != int8
                or graph.g.tensors[int(op.outputs[0])].type != int8):
            operators.append(op)
            continue
        source, target = variable[0], int(op.outputs[0])
        source_f = tg.float_twin(graph, source, "dequantized")
        target_f = tg.float_twin(graph, target, "float")
        op.inputs = np.array([source_f if int(t) == source else int(t) for t in op.inputs], np.int32)
        op.outputs = np.array([target_f], np.int32)
        operators += [tg.new_op(dequantize, [source], [source_f]), op,
                      tg.new_op(quantize, [target_f], [target])]
        moved += 1
    graph.g.operators = operators
    dropped = _drop_requantize_pairs(tg.Graph(model_t), quantize, dequantize)
    return bool(moved or dropped or len(model_t.operatorCodes) != codes)


def _drop_requantize_pairs(graph, quantize, dequantize) -> bool:
    """Remove QUANTIZE -> DEQUANTIZE round trips (float -> int8 -> float) that nothing else reads."""
    drop, replace = set(), {}
    for i, op in enumerate(graph.g.operators):
        if op.opcodeIndex != quantize:
            continue
        q_out = int(op.outputs[0])
        index = graph.sole_reader(q_out)
        if index is None or SATURATION_MARK in graph.tensor_name(q_out):
            continue  # a truncation's saturating QUANTIZE is the clip itself
        reader = graph.g.operators[index]
        if reader.opcodeIndex != dequantize:
            continue
        drop |= {i, index}
        replace[int(reader.outputs[0])] = int(op.inputs[0])
    if drop:
        graph.remove_ops(drop, replace)
    return bool(drop)


pack_front_end = layout_pass(
    "pack_front_end", packing.pack_convolution_chains,
    "run every chain of float one-channel convolutions in a 2x2 space-to-depth layout "
    "(`packing.pack_convolution_chains`).")
activations_before_unpack = layout_pass(
    "activations_before_unpack", packing.elementwise_before_unpack,
    "run the truncation and activation ops that follow a packed chain before its unpacking "
    "(`packing.elementwise_before_unpack`).")
pools_as_convolutions = layout_pass(
    "pools_as_convolutions", pooling.rewrite_pools_as_convolutions,
    "each VALID AVERAGE_POOL_2D with the per-channel MUL / ADD after it (int8: between "
    "DEQUANTIZE and QUANTIZE) becomes convolutions, reading the packed values when it follows "
    "an unpacking (`pooling.rewrite_pools_as_convolutions`).")


FP32_PASSES = [pack_front_end, activations_before_unpack, pools_as_convolutions]
FP16_PASSES = [exact_fp16_front_end, pack_front_end, activations_before_unpack,
               pools_as_convolutions]
INT8_CALIBRATED_PASSES = [pin_truncation_ranges, mark_float_ops]
INT8_QUANTIZED_PASSES = [saturate_truncations, float_islands, pack_front_end,
                         activations_before_unpack, pools_as_convolutions]
INT8_FULL_CALIBRATED_PASSES = [pin_pixel_input, pin_truncation_ranges, exact_filter_ranges,
                               pools_as_convolutions]
# exact_filter_weights finds its convolutions by output tensor name, which saturate_truncations
# renames where an exact filter feeds a truncation directly (Ye-Net's SRM bank): it runs first.
INT8_FULL_QUANTIZED_PASSES = [exact_filter_weights, saturate_truncations, pack_front_end,
                              activations_before_unpack]

# Where an artifact runs: "cpu" (XNNPACK and the reference kernels), "ethos-u" (Arm's NPUs,
# compiled by Vela) or "micro" (TFLite Micro). The space-to-depth packing is a CPU speed
# rewrite: SPACE_TO_DEPTH / DEPTH_TO_SPACE are no Ethos-U operators and buy nothing on a
# microcontroller, so the other targets run every list without it.
TARGETS = ("cpu", "ethos-u", "micro")
CPU_ONLY_PASSES = (pack_front_end, activations_before_unpack)


def for_target(pass_list, target: str) -> list:
    """`pass_list` as run for `target` (one of `TARGETS`)."""
    if target not in TARGETS:
        raise InputError(f"target: unknown target {target!r}; expected one of {', '.join(TARGETS)}",
                         param="target")
    return [p for p in pass_list if target == "cpu" or p not in CPU_ONLY_PASSES]
