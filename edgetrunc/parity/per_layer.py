"""Per-layer parity: map every Keras layer output to a tensor of the artifact and find the first divergence.

The artifact's intermediate tensors come from the runtime (`open_with_intermediates`: a
TFLite runner that keeps every tensor, an ONNX runner whose every node output is an
output). Converters keep Keras layer names in tensor names (`tlunet_1/group1_truncation_1/Minimum`, fused
tensors joined by `;`), so a tensor's candidate layers are the layers its name mentions
(with or without the `_N` scope suffix), the layers between them, and the layers after
them that no tensor mentions (a batch normalization folded into its convolution). Each
tensor goes to the candidate whose Keras output it matches best (NCHW transposed back,
int8 dequantized); a layer left without a tensor is `fused` into its neighbour. A tensor
that equals its layer's output up to a per-channel affine map is `folded` (the rest of the
layer lives in the next op, e.g. a batch-norm offset moved into the next convolution's bias).
The first `compared` layer in graph order whose normalized error exceeds the precision's
bound diverges; the divergence is attributed to the layer, up to that one, with the largest
own error (`local_error`: the Keras layers run on the artifact's previous value, as in TFLite's
QuantizationDebugger). Memory is bounded: the samples are read a few at a time, once per pass
(map, measure, and, when needed, fit folded layers and replay), keeping running statistics
(`_layer_stats`). No TensorFlow here: the Keras side comes from the runner.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.parity._layer_stats import ChannelFit, ErrorStats, reference_views, view_in_layout

# Max |error| / max |reference| above which a layer diverges (see docs/PARITY.md).
LAYER_TOLERANCES = {"fp32": 1e-2, "fp16": 1e-2, "int8": 0.5}
AFFINE_RESIDUAL = 1e-3
_SUFFIX = re.compile(r"^(.*)_\d+$")


@dataclass
class LayerComparison:
    """One Keras layer against its artifact tensor (JSON-ready)."""

    layer: str
    index: int
    status: str  # compared | folded | fused | input | unmapped
    tensor: str | None = None
    shape: list | None = None
    layout: str | None = None
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    normalized_error: float | None = None
    relative_rms_error: float | None = None
    cosine: float | None = None
    scale: float | None = None
    error_over_scale: float | None = None
    local_error: float | None = None
    divergent: bool = False
    fused_into: str | None = None
    fused_layers: list = field(default_factory=list)

    def to_dict(self):
        return asdict(self)


def mentioned_layers(tensor_name: str, layer_names) -> set:
    """Layer names that appear as a path segment of `tensor_name` (each `;` part, `_N` suffix optional)."""
    layer_set = set(layer_names)
    found = set()
    for piece in tensor_name.split(";"):
        for segment in piece.split("/"):
            segment = segment.split(":")[0]
            if segment in layer_set:
                found.add(segment)
            match = _SUFFIX.match(segment)
            if match and match.group(1) in layer_set:
                found.add(match.group(1))
    return found


LAYER_CHUNK_BYTES = 256 * 2 ** 20  # Keras layer outputs held at once by the streamed comparison


def _layer_tolerance(precision: str, tolerance: float | None) -> float:
    if tolerance is not None:
        return tolerance
    from edgetrunc.parity.compare import tolerance_key

    return LAYER_TOLERANCES.get(tolerance_key(precision), LAYER_TOLERANCES["fp32"])


def compare_layers(layer_outputs: dict, tensors: list, precision: str = "fp32",
                   input_layers=(), output_layers=(), tolerance: float | None = None) -> tuple:
    """Map and compare arrays held in memory; returns `(list of LayerComparison in graph order,
    first divergent layer or None)`.

    `output_layers[i]` is the layer that produces the model's i-th output: the artifact's
    i-th output tensor is a candidate for it whatever its name.
    """
    return _compare_chunks([(layer_outputs, list(tensors))], precision, input_layers,
                           output_layers, tolerance)


def compare_artifact_layers(keras_runner, artifact_path, artifact_format: str, precision: str,
                            batch: np.ndarray, tolerance: float | None = None,
                            chunk_bytes: int = LAYER_CHUNK_BYTES, threads: int | None = None) -> tuple:
    """Per-layer comparison of one artifact on `batch`; returns `(layers, first divergent layer)`.

    The samples are read a few at a time (at most `chunk_bytes` of Keras layer outputs, at
    least one sample), once per pass, and only running statistics are kept, so memory does not
    grow with the number of samples. The artifact's runner that keeps every tensor lives only
    for this call; its memory goes back to the OS when it ends.
    """
    from edgetrunc.runtime import formats, open_with_intermediates

    fmt = formats.get(artifact_format)
    if not fmt.intermediates:
        raise InputError(f"{artifact_path}: per-layer comparison needs a runner that keeps every "
                         f"tensor; the {fmt.name} format has none")
    from edgetrunc.runtime.intermediates import intermediate_threads, release_memory

    per_sample = keras_runner.layer_output_bytes(tuple(batch.shape[1:]))
    size = max(1, min(len(batch), int(chunk_bytes) // max(per_sample, 1)))
    model = keras_runner.model
    input_layers = {layer.name for layer in model.layers if type(layer).__name__ == "InputLayer"}
    output_layers = [t._keras_history[0].name for t in model.outputs]
    release_memory()  # what the output comparison left, before the largest allocations
    chunks = _ArtifactChunks(keras_runner, lambda: open_with_intermediates(
        artifact_path, threads=intermediate_threads(threads)), fmt.lazy_tensors, batch, size)
    try:
        results, first = _compare_chunks(chunks, precision, input_layers, output_layers, tolerance,
                                         keras_runner.single_inbound(), keras_runner.replay)
    finally:
        chunks.runner = None
        release_memory()
    return results, attribute_divergence(results, first)


class _ArtifactChunks:
    """`(Keras layer outputs, artifact tensors)` of `size` samples at a time, read anew on every
    pass over it; TFLite tensors are read one at a time when asked for (`ArtifactTensor.read`).
    A TFLite runner (a fixed arena) serves every chunk; an ONNX runner, which holds its last
    run's tensors until its next run ends, is opened per chunk, so the tensors of two runs never coexist."""

    def __init__(self, keras_runner, open_runner, lazy: bool, batch: np.ndarray, size: int):
        self.keras_runner, self.open_runner, self.batch, self.size = keras_runner, open_runner, batch, size
        self.lazy = lazy
        self.runner = open_runner() if self.lazy else None

    def __iter__(self):
        for start in range(0, len(self.batch), self.size):
            part = self.batch[start:start + self.size]
            runner = self.runner or self.open_runner()
            runner.infer(part)
            outputs = self.keras_runner.layer_outputs(part)
            tensors = runner.intermediate_tensors(**({"lazy": True} if self.lazy else {}))
            yield outputs, tensors
            outputs.clear()  # this chunk's arrays go before the next chunk's arrive
            tensors.clear()
            del outputs, tensors, runner


def _compare_chunks(chunks, precision, input_layers, output_layers, tolerance,
                    inbound: dict | None = None, replay=None) -> tuple:
    """Map tensors to layers (first pass), then measure the chosen pairs, fit the suspected
    folded layers and replay the Keras layers for `local_error` (one more pass each, as needed)."""
    tolerance = _layer_tolerance(precision, tolerance)
    names, best = _assign(chunks, output_layers)
    chosen = {name: entry for name, entry in best.items() if name not in input_layers}
    suspects = {name for name, entry in chosen.items() if np.isfinite(entry[0]) and not entry[0] <= tolerance}
    stats = {name: ErrorStats() for name in chosen}
    fits = {name: ChannelFit() for name in suspects}
    local: dict = {}
    chain = None if suspects else _local_chain(names, chosen, set(), inbound)

    def measure(outputs, views):
        for name, view in views.items():
            stats[name].add(outputs[name], view)
            if name in fits:
                fits[name].add(outputs[name], view)
        _add_local(local, chain, views, replay)

    _read_chosen(chunks, chosen, measure)
    folded = set()
    fitted = {name: fit for name, fit in fits.items() if fit.fit()}
    if fitted:
        _read_chosen(chunks, {n: chosen[n] for n in fitted},
                     lambda outputs, views: [fitted[n].add_residual(outputs[n], v) for n, v in views.items()])
        folded = {name for name, fit in fitted.items() if fit.is_affine(AFFINE_RESIDUAL + tolerance)}
    if suspects:
        chain = _local_chain(names, chosen, folded, inbound)
        if chain:
            _read_chosen(chunks, chosen, lambda outputs, views: _add_local(local, chain, views, replay))
    results = [_layer_result(name, index, input_layers, chosen, stats, folded, local, tolerance)
               for index, name in enumerate(names)]
    _resolve_fused(results)
    first = next((r for r in results if r.divergent), None)
    first_name = None
    if first is not None:
        first_name = first.fused_layers[0] if first.fused_layers else first.layer
    return results, first_name


def _layer_result(name, index, input_layers, chosen, stats, folded, local, tolerance) -> LayerComparison:
    if name in input_layers:
        return LayerComparison(name, index, "input")
    if name not in chosen:
        return LayerComparison(name, index, "unmapped")
    err, _, tensor, layout = chosen[name]
    figures = stats[name]
    item = LayerComparison(
        name, index, "compared", tensor=tensor.name, shape=figures.shape, layout=layout,
        max_abs_error=figures.max_diff, mean_abs_error=figures.mean_abs,
        normalized_error=err if np.isfinite(err) else None,
        relative_rms_error=figures.relative_rms, cosine=figures.cosine, scale=tensor.scale)
    if tensor.scale:
        item.error_over_scale = item.max_abs_error / tensor.scale
    if not err <= tolerance:
        if name in folded:
            item.status = "folded"
        else:
            item.divergent = True
    if name in local:
        own = local[name].normalized
        item.local_error = own if np.isfinite(own) else None
    return item


def _read_chosen(chunks, chosen: dict, visit) -> None:
    """Call `visit(layer outputs, {layer: artifact value in the Keras layout})` per chunk."""
    by_key = {entry[2].key: (name, entry[3]) for name, entry in chosen.items()}
    for outputs, tensors in chunks:
        visit(outputs, _chunk_views(outputs, tensors, by_key))  # nothing of a chunk outlives it


def _chunk_views(outputs: dict, tensors: list, by_key: dict) -> dict:
    views = {}
    for tensor in tensors:
        if tensor.key not in by_key:
            continue
        name, layout = by_key[tensor.key]
        value = tensor.read()
        view = None if value is None else view_in_layout(value, outputs[name].shape, layout)
        if view is not None:
            views[name] = view
    return views


def _assign(chunks, output_layers=()) -> tuple:
    """`(layer names, {layer: (error, order, tensor, layout)})`: the artifact tensor that carries
    each layer, over every chunk.

    A tensor's candidates are the layers its name mentions, the layers between them and the
    unmentioned layers after them (see the module docstring); it goes to the candidate it
    matches best, and a layer keeps the best of the tensors that went to it (`_better`).
    """
    names, candidates, seen, errors, count = None, {}, {}, {}, 0
    for outputs, tensors in chunks:
        count += 1
        if names is None:
            names = list(outputs)
            candidates = _candidates(names, tensors, output_layers)
        for tensor in tensors:
            if tensor.key in candidates:
                _add_candidate_errors(tensor, outputs, candidates[tensor.key][0], seen, errors)
    best: dict = {}
    for key, tensor in seen.items():
        mentioned, choice = candidates[key][1], None
        for (name, layout), (stats, chunks_seen) in errors[key].items():
            err = stats.normalized
            if chunks_seen == count and (choice is None or err < choice[0]
                                         or (err == choice[0] and name in mentioned)):
                choice = (err, name, layout)
        if choice is None:
            continue
        err, name, layout = choice
        current = best.get(name)
        if current is None or _better(err, tensor, current[0], current[2]):
            best[name] = (err, tensor.order, tensor, layout)
    return names or [], best


def _add_candidate_errors(tensor, outputs: dict, names: list, seen: dict, errors: dict) -> None:
    """Add the error of `tensor` against each of its candidate layers `names` on one chunk."""
    value = tensor.read()
    if value is None:
        return
    seen.setdefault(tensor.key, replace(tensor, value=None, load=None))
    found = errors.setdefault(tensor.key, {})
    for name in names:
        for view, layout in reference_views(value, outputs[name].shape):
            record = found.setdefault((name, layout), [ErrorStats(full=False), 0])
            record[0].add(outputs[name], view)
            record[1] += 1


def _candidates(names: list, tensors: list, output_layers=()) -> dict:
    """`{tensor key: (candidate layers, layers its name mentions)}`."""
    position = {name: i for i, name in enumerate(names)}
    mentions = [mentioned_layers(t.name, names) for t in tensors]
    for tensor, mentioned in zip(tensors, mentions):
        if tensor.output_index is not None and tensor.output_index < len(output_layers):
            mentioned.add(output_layers[tensor.output_index])
    mentioned_anywhere = set().union(*mentions) if mentions else set()
    anonymous = _anonymous_candidates(mentions, position, names)
    result = {}
    for i, (tensor, mentioned) in enumerate(zip(tensors, mentions)):
        if not mentioned:
            result[tensor.key] = (anonymous.get(i, []), mentioned)
            continue
        low, high = min(position[m] for m in mentioned), max(position[m] for m in mentioned)
        chosen = names[low:high + 1]
        for name in names[high + 1:]:
            if name in mentioned_anywhere:
                break
            chosen.append(name)
        result[tensor.key] = (chosen, mentioned)
    return result


def _better(err, tensor, current_err, current) -> bool:
    """Whether `tensor` (error `err`) should carry a layer instead of `current`.

    The lower error wins; errors equal up to float rounding (an int8 tensor and its
    DEQUANTIZE copy) prefer the quantized tensor, which carries the scale, then the later one.
    """
    if abs(err - current_err) > 1e-3 * max(err, current_err):
        return err < current_err
    return (tensor.scale is not None, tensor.order) > (current.scale is not None, current.order)


def _anonymous_candidates(mentions: list, position: dict, names: list) -> dict:
    """Candidates of tensors whose names mention no layer (e.g. `Conv__58:0` after an optimizer
    folded a batch normalization): the layers no tensor mentions between the last layer
    mentioned before it (in execution order) and the first one mentioned after it."""
    mentioned_anywhere = set().union(*mentions) if mentions else set()
    candidates = {}
    highest = -1
    for i, mentioned in enumerate(mentions):
        if mentioned:
            highest = max(highest, *(position[m] for m in mentioned))
            continue
        following = next((min(position[m] for m in later) for later in mentions[i + 1:] if later),
                         len(names))
        between = [n for n in names[highest + 1:following] if n not in mentioned_anywhere]
        if between:
            candidates[i] = between
    return candidates


def _resolve_fused(results: list) -> None:
    """Give each unmapped layer the neighbour that carries its computation (next mapped layer first)."""
    carriers = [r for r in results if r.status in ("compared", "folded")]
    for i, item in enumerate(results):
        if item.status != "unmapped":
            continue
        later = next((r for r in results[i + 1:] if r.status in ("compared", "folded")), None)
        earlier = next((r for r in reversed(results[:i]) if r.status in ("compared", "folded")), None)
        carrier = later or earlier
        if carrier is None or not carriers:
            continue
        item.status = "fused"
        item.fused_into = carrier.layer
    for item in results:
        if item.status in ("compared", "folded"):
            group = [r.layer for r in results if r.fused_into == item.layer and r.index < item.index]
            item.fused_layers = group + [item.layer] if group else []


def _segment(inbound: dict, start: str, end: str) -> list | None:
    """Layers after `start` up to `end` when they form a plain chain from `start`, else None."""
    segment, name = [], end
    while name != start:
        segment.append(name)
        name = inbound.get(name)
        if name is None or len(segment) > len(inbound):
            return None
    return segment[::-1]


def _local_chain(names: list, chosen: dict, folded: set, inbound: dict | None) -> list:
    """`(previous compared layer, layer, Keras layers between)` for the compared layers whose
    segment from the previous one is a plain chain (`inbound`: each layer's only inbound layer)."""
    if inbound is None:
        return []
    compared = [name for name in names if name in chosen and name not in folded]
    chain = []
    for previous, name in zip(compared, compared[1:]):
        segment = _segment(inbound, previous, name)
        if segment:
            chain.append((previous, name, segment))
    return chain


def _add_local(local: dict, chain, views: dict, replay) -> None:
    """Accumulate each layer's own error on a chunk: as TFLite's QuantizationDebugger does, the
    Keras layers between the previous compared layer and this one run on the artifact's own
    value of the previous layer, and the artifact's value of this layer is compared with that."""
    for previous, name, segment in chain or ():
        if previous not in views or name not in views:
            continue
        expected = replay(segment, views[previous])
        if expected is not None and expected.shape == views[name].shape:
            local.setdefault(name, ErrorStats(full=False)).add(expected, views[name])


def attribute_divergence(results: list, first: str | None) -> str | None:
    """The layer a divergence starts in: of the compared layers up to the first divergent one,
    the one with the largest own (`local_error`) error, named by the first layer fused into it.

    Errors propagate: a tampered convolution can stay under the bound while the activation after
    it, which amplifies the error, crosses it; its own error then stands out.
    """
    if first is None:
        return None
    flagged = next(r for r in results if r.divergent)
    candidates = [r for r in results[:flagged.index + 1]
                  if r.status == "compared" and r.local_error is not None]
    if flagged.local_error is None or not candidates:
        return first
    source = max(candidates, key=lambda r: r.local_error)
    if source.local_error <= flagged.local_error:
        return first
    return source.fused_layers[0] if source.fused_layers else source.layer
