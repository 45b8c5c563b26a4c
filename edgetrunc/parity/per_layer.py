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
QuantizationDebugger). One pass does it all: the samples are read a few at a time, the Keras
model computes each chunk's layer outputs once for every artifact (`_layer_reader`), and every
candidate tensor's statistics and each layer's own error, for the mapping so far, are kept as
running sums (`_layer_stats`, `_layer_map`), so memory is bounded. Further readings happen only
when needed: fitting suspected folded layers, and replaying a layer whose mapping changed after
an earlier chunk. No TensorFlow here: the Keras side comes from the runner.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.parity._layer_map import (add_candidate_errors, candidates, choose,
                                         mentioned_layers)  # noqa: F401 - part of this module's API
from edgetrunc.parity._layer_stats import ChannelFit, ErrorStats, view_in_layout

# Max |error| / max |reference| above which a layer diverges (see docs/PARITY.md).
LAYER_TOLERANCES = {"fp32": 1e-2, "fp16": 1e-2, "int8": 0.5}
AFFINE_RESIDUAL = 1e-3


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
    rms_error_over_scale: float | None = None  # TFLite's QuantizationDebugger rmse/scale
    local_error: float | None = None
    divergent: bool = False
    fused_into: str | None = None
    fused_layers: list = field(default_factory=list)

    def to_dict(self):
        return asdict(self)


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
    from edgetrunc.parity._layer_reader import MemoryReader

    state = _ArtifactLayers(None, "memory", precision, tolerance, set(input_layers), list(output_layers))
    return _compare(MemoryReader(layer_outputs, tensors), [state])[0]


def compare_artifact_layers(keras_runner, artifact_path, artifact_format: str, precision: str,
                            batch: np.ndarray, tolerance: float | None = None,
                            chunk_bytes: int = LAYER_CHUNK_BYTES, threads: int | None = None) -> tuple:
    """Per-layer comparison of one artifact on `batch`; returns `(layers, first divergent layer)`."""
    return compare_artifacts_layers(keras_runner, [(artifact_path, artifact_format, precision)], batch,
                                    tolerance, chunk_bytes, threads)[0]


def compare_artifacts_layers(keras_runner, artifacts: list, batch: np.ndarray,
                             tolerance: float | None = None, chunk_bytes: int = LAYER_CHUNK_BYTES,
                             threads: int | None = None) -> list:
    """Per-layer comparison of every `(path, format, precision)` artifact on `batch`; returns
    `[(layers, first divergent layer)]` in the same order.

    The samples are read a few at a time (at most `chunk_bytes` of Keras layer outputs, at
    least one sample); the Keras model computes each chunk's layer outputs once for every
    artifact, and each artifact runs a chunk in one invocation (`_layer_reader`). Only running
    statistics are kept, so memory does not grow with the number of samples or artifacts.
    """
    from edgetrunc.parity._layer_reader import LayerReader
    from edgetrunc.parity.input_feeds import sample_dims
    from edgetrunc.runtime.feeds import sample_shapes
    from edgetrunc.runtime import formats
    from edgetrunc.runtime.intermediates import release_memory

    for path, artifact_format, _ in artifacts:
        if not formats.get(artifact_format).intermediates:
            raise InputError(f"{path}: per-layer comparison needs a runner that keeps every "
                             f"tensor; the {artifact_format} format has none")
    per_sample = keras_runner.layer_output_bytes(sample_dims(sample_shapes(batch)))
    size = max(1, min(len(batch), int(chunk_bytes) // max(per_sample, 1)))
    model = keras_runner.model
    input_layers = {layer.name for layer in model.layers if type(layer).__name__ == "InputLayer"}
    output_layers = [t._keras_history[0].name for t in model.outputs]
    states = [_ArtifactLayers(path, fmt, precision, tolerance, input_layers, output_layers)
              for path, fmt, precision in artifacts]
    release_memory()  # what the output comparison left, before the largest allocations
    reader = LayerReader(keras_runner, states, batch, size, threads)
    try:
        found = _compare(reader, states, keras_runner.single_inbound(), keras_runner.replay)
    finally:
        reader.close()
        release_memory()
    return [(results, attribute_divergence(results, first)) for results, first in found]


def _compare(reader, states: list, inbound: dict | None = None, replay=None) -> list:
    """Map every tensor and, for the mapping so far, measure each layer and its own error, in one
    pass; then, where needed, measure the layers whose mapping changed after their chunk and fit
    the suspected folded layers (one more reading; a second for the fit's residual), and replay
    the layers whose own error was measured on another mapping (artifact only)."""
    for outputs, state, tensors in reader.read(states):
        state.add_chunk(outputs, tensors, inbound, replay)
    for state in states:
        state.finish_mapping()
    measuring = [state for state in states if state.fits or state.remeasure]
    for outputs, state, tensors in reader.read(measuring) if measuring else ():
        state.visit(outputs, tensors, state.measure_targets(), "add")
    fitted = [state for state in measuring if state.solve_fits()]
    for outputs, state, tensors in reader.read(fitted) if fitted else ():
        state.visit(outputs, tensors, {n: [fit] for n, fit in state.fitted.items()}, "add_residual")
    for state in measuring:
        state.set_folded()
    redo = [state for state in states if state.plan_local(inbound)]
    for outputs, state, tensors in reader.read(redo, keras=False) if redo else ():
        views = _chunk_views(outputs, tensors, _by_key(_needed(state.chosen, state.redo)))
        _local_errors(views, state.redo, replay)
    return [state.result() for state in states]


class _ArtifactLayers:
    """The per-layer comparison of one artifact, built chunk by chunk (see `_compare`)."""

    def __init__(self, path, artifact_format, precision, tolerance, input_layers, output_layers):
        self.path, self.format = path, artifact_format
        self.tolerance = _layer_tolerance(precision, tolerance)
        self.input_layers, self.output_layers = input_layers, output_layers
        self.names, self.candidates, self.seen, self.errors, self.count = None, {}, {}, {}, 0
        # measured on the mapping of each chunk: layer or (previous, layer) -> [mapping, stats, chunks]
        self.measured: dict = {}
        self.running: dict = {}
        self.chosen, self.stats, self.remeasure = {}, {}, {}
        self.fits, self.fitted, self.folded = {}, {}, set()
        self.local, self.redo = {}, []

    def add_chunk(self, outputs, tensors, inbound, replay) -> None:
        self.count += 1
        if self.names is None:
            self.names = list(outputs)
            self.candidates = candidates(self.names, tensors, self.output_layers)
        for tensor in tensors:
            if tensor.key in self.candidates:
                add_candidate_errors(tensor, outputs, self.candidates[tensor.key][0], self.seen, self.errors)
        chosen = self._chosen(choose(self.names, self.candidates, self.seen, self.errors, self.count))
        stats = [(name, self._running(self.measured, name, (entry[2].key, entry[3]), ErrorStats))
                 for name, entry in chosen.items()]
        targets = []
        if inbound is not None and replay is not None:
            for previous, name, segment in _local_chain(self.names, chosen, set(), inbound):
                record = self._running(self.running, (previous, name), _mapping(chosen, previous, name, segment),
                                       lambda: ErrorStats(full=False))
                targets.append(((previous, name, segment), record))
        stats = [(name, record) for name, record in stats if record is not None]
        targets = [(entry, record) for entry, record in targets if record is not None]
        views = _chunk_views(outputs, tensors, _by_key({**{n: chosen[n] for n, _ in stats},
                                                        **_needed(chosen, targets)}))
        for name, record in stats:
            if name in views:
                record.add(outputs[name], views[name])
        _local_errors(views, targets, replay)

    def _running(self, table: dict, key, used, make):
        """The statistics of `key` measured on mapping `used` since the first chunk, or None once
        the mapping changed (the key is then measured again after the pass)."""
        record = table.setdefault(key, [used, make(), 0])
        if record[0] != used or record[2] != self.count - 1:
            return None
        record[2] += 1
        return record[1]

    def _chosen(self, best: dict) -> dict:
        return {name: entry for name, entry in best.items() if name not in self.input_layers}

    def _held(self, table: dict, key, used):
        record = table.get(key)
        return record[1] if record and record[0] == used and record[2] == self.count else None

    def finish_mapping(self) -> None:
        self.chosen = self._chosen(choose(self.names or [], self.candidates, self.seen, self.errors,
                                          self.count))
        for name, entry in self.chosen.items():
            held = self._held(self.measured, name, (entry[2].key, entry[3]))
            if held is not None:
                self.stats[name] = held
            else:
                self.remeasure[name] = ErrorStats()
        self.fits = {name: ChannelFit() for name, entry in self.chosen.items()
                     if np.isfinite(entry[0]) and not entry[0] <= self.tolerance}

    def measure_targets(self) -> dict:
        targets = {name: [stats] for name, stats in self.remeasure.items()}
        for name, fit in self.fits.items():
            targets.setdefault(name, []).append(fit)
        return targets

    def visit(self, outputs, tensors, targets: dict, method: str) -> None:
        views = _chunk_views(outputs, tensors, _by_key({n: self.chosen[n] for n in targets}))
        for name, view in views.items():
            for target in targets[name]:
                getattr(target, method)(outputs[name], view)

    def solve_fits(self) -> bool:
        self.fitted = {name: fit for name, fit in self.fits.items() if fit.fit()}
        return bool(self.fitted)

    def set_folded(self) -> None:
        self.folded = {name for name, fit in self.fitted.items()
                       if fit.is_affine(AFFINE_RESIDUAL + self.tolerance)}

    def plan_local(self, inbound) -> bool:
        """Keep the own errors measured in the first pass whose mapping held over every chunk;
        the others (`redo`) need one more reading."""
        for previous, name, segment in _local_chain(self.names or [], self.chosen, self.folded, inbound):
            held = self._held(self.running, (previous, name), _mapping(self.chosen, previous, name, segment))
            self.local[name] = held if held is not None else ErrorStats(full=False)
            if held is None:
                self.redo.append(((previous, name, segment), self.local[name]))
        return bool(self.redo)

    def result(self) -> tuple:
        stats = {**self.stats, **self.remeasure}
        results = [_layer_result(name, index, self.input_layers, self.chosen, stats, self.folded,
                                 self.local, self.tolerance) for index, name in enumerate(self.names or [])]
        _resolve_fused(results)
        first = next((r for r in results if r.divergent), None)
        first_name = None
        if first is not None:
            first_name = first.fused_layers[0] if first.fused_layers else first.layer
        return results, first_name


def _needed(chosen: dict, targets: list) -> dict:
    """The chosen entries of the layers a list of `((previous, layer, segment), stats)` reads."""
    return {n: chosen[n] for (previous, name, _), _ in targets for n in (previous, name)}


def _local_errors(views: dict, targets: list, replay) -> None:
    """Each chained layer's own error on a chunk (as TFLite's QuantizationDebugger does): the Keras
    layers after the previous compared layer run on the artifact's value of it, and the artifact's
    value of the layer is compared with that. `targets`: `[((previous, layer, segment), stats)]`."""
    for (previous, name, segment), stats in targets:
        if previous in views and name in views:
            expected = replay(segment, views[previous])
            if expected is not None and expected.shape == views[name].shape:
                stats.add(expected, views[name])


def _mapping(chosen: dict, previous: str, name: str, segment: list) -> tuple:
    """What a layer's own error depends on: the tensors (and layouts) of it and its predecessor."""
    return (chosen[previous][2].key, chosen[previous][3], chosen[name][2].key, chosen[name][3],
            tuple(segment))


def _by_key(chosen: dict) -> dict:
    return {entry[2].key: (name, entry[3]) for name, entry in chosen.items()}


def _layer_result(name, index, input_layers, chosen, stats, folded, local, tolerance) -> LayerComparison:
    if name in input_layers:
        return LayerComparison(name, index, "input")
    if name not in chosen:
        return LayerComparison(name, index, "unmapped")
    err, _, tensor, layout, _ = chosen[name]
    figures = stats[name]
    item = LayerComparison(
        name, index, "compared", tensor=tensor.name, shape=figures.shape, layout=layout,
        max_abs_error=figures.max_diff, mean_abs_error=figures.mean_abs,
        normalized_error=err if np.isfinite(err) else None,
        relative_rms_error=figures.relative_rms, cosine=figures.cosine, scale=tensor.scale)
    if tensor.scale:
        item.error_over_scale = item.max_abs_error / tensor.scale
        if figures.count and np.isfinite(figures.sq_diff):
            item.rms_error_over_scale = float(np.sqrt(figures.sq_diff / figures.count)) / tensor.scale
    if not err <= tolerance:
        if name in folded:
            item.status = "folded"
        else:
            item.divergent = True
    if name in local:
        own = local[name].normalized
        item.local_error = own if np.isfinite(own) else None
    return item


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
