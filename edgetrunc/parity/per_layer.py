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
QuantizationDebugger). No TensorFlow here: the Keras side comes from the runner.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from edgetrunc.errors import InputError
from edgetrunc.runtime import open_with_intermediates

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


def _as_reference_layout(value: np.ndarray, ref_shape: tuple):
    """Yield `(array, layout)` views of `value` shaped like the reference (NHWC, NCHW, squeezed)."""
    if value.shape == ref_shape:
        yield value, "NHWC" if value.ndim == 4 else "same"
    if value.ndim == 4 and len(ref_shape) == 4 and value.transpose(0, 2, 3, 1).shape == ref_shape:
        yield value.transpose(0, 2, 3, 1), "NCHW"
    if value.size == int(np.prod(ref_shape)) and value.shape != ref_shape and (
            [d for d in value.shape if d != 1] == [d for d in ref_shape if d != 1]):
        yield value.reshape(ref_shape), "reshaped"


def normalized_error(reference: np.ndarray, value: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    diff = np.abs(ref - value.astype(np.float64))
    both_nan = np.isnan(ref) & np.isnan(value)
    diff[both_nan] = 0.0
    if np.isnan(diff).any():
        return float("inf")
    peak = float(np.nanmax(np.abs(ref))) if ref.size else 0.0
    return float(diff.max() / max(peak, 1e-12)) if diff.size else 0.0


def is_channel_affine(reference: np.ndarray, value: np.ndarray, tolerance: float) -> bool:
    """True if every channel (last axis) of `value` is `a * reference + b` up to `tolerance`."""
    if reference.ndim < 3 or reference.shape != value.shape or reference.size // reference.shape[-1] < 32:
        return False  # too few points per channel for a fit to mean anything
    ref = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
    got = value.reshape(-1, value.shape[-1]).astype(np.float64)
    for c in range(ref.shape[1]):
        x, y = ref[:, c], got[:, c]
        design = np.stack([x, np.ones_like(x)], axis=1)
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        residual = np.abs(design @ coef - y).max()
        spread = max(np.abs(y).max(), 1e-12)
        if coef[0] == 0 and np.ptp(x) > 0 or residual > tolerance * spread:
            return False
    return True


def _relative_rms(reference, value):
    ref = reference.astype(np.float64)
    diff = ref - value.astype(np.float64)
    diff[np.isnan(ref) & np.isnan(value)] = 0.0
    if np.isnan(diff).any():
        return None
    scale = float(np.sqrt(np.mean(ref ** 2))) if ref.size else 0.0
    return float(np.sqrt(np.mean(diff ** 2)) / max(scale, 1e-12)) if diff.size else 0.0


def _cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(np.dot(a, b) / norm) if norm > 0 else None


def compare_layers(layer_outputs: dict, tensors: list, precision: str = "fp32",
                   input_layers=(), output_layers=(), tolerance: float | None = None,
                   views: dict | None = None) -> tuple:
    """Map and compare; returns `(list of LayerComparison in graph order, first divergent layer or None)`.

    `output_layers[i]` is the layer that produces the model's i-th output: the artifact's
    i-th output tensor is a candidate for it whatever its name. If `views` is a dict, it
    receives the artifact's value of every compared layer, in the Keras layout.
    """
    if tolerance is None:
        from edgetrunc.parity.compare import tolerance_key

        tolerance = LAYER_TOLERANCES.get(tolerance_key(precision), LAYER_TOLERANCES["fp32"])
    best = assign_tensors(layer_outputs, tensors, output_layers)
    results = []
    for index, name in enumerate(layer_outputs):
        if name in input_layers:
            results.append(LayerComparison(name, index, "input"))
            continue
        if name not in best:
            results.append(LayerComparison(name, index, "unmapped"))
            continue
        err, _, tensor, view, layout = best[name]
        item = _compare_layer(name, index, layer_outputs[name], tensor, view, layout, err, tolerance)
        if views is not None and item.status == "compared":
            views[name] = view
        results.append(item)

    _resolve_fused(results)
    first = next((r for r in results if r.divergent), None)
    first_name = None
    if first is not None:
        first_name = first.fused_layers[0] if first.fused_layers else first.layer
    return results, first_name


def assign_tensors(layer_outputs: dict, tensors: list, output_layers=()) -> dict:
    """`{layer: (error, order, tensor, view, layout)}`: the artifact tensor that carries each layer.

    A tensor's candidates are the layers its name mentions, the layers between them and the
    unmentioned layers after them (see the module docstring); it goes to the candidate it
    matches best, and a layer keeps the best of the tensors that went to it (`_better`).
    """
    names = list(layer_outputs)
    position = {name: i for i, name in enumerate(names)}
    mentions = [mentioned_layers(t.name, names) for t in tensors]
    for tensor, mentioned in zip(tensors, mentions):
        if tensor.output_index is not None and tensor.output_index < len(output_layers):
            mentioned.add(output_layers[tensor.output_index])
    mentioned_anywhere = set().union(*mentions) if mentions else set()
    anonymous = _anonymous_candidates(mentions, position, names)

    best: dict = {}
    for i, (tensor, mentioned) in enumerate(zip(tensors, mentions)):
        if not mentioned:
            candidates = anonymous.get(i, [])
        else:
            low, high = min(position[m] for m in mentioned), max(position[m] for m in mentioned)
            candidates = names[low:high + 1]
            for name in names[high + 1:]:
                if name in mentioned_anywhere:
                    break
                candidates.append(name)
        choice = None
        for name in candidates:
            ref = layer_outputs[name]
            for view, layout in _as_reference_layout(tensor.value, ref.shape):
                err = normalized_error(ref, view)
                if choice is None or err < choice[0] or (err == choice[0] and name in mentioned):
                    choice = (err, name, view, layout)
        if choice is None:
            continue
        err, name, view, layout = choice
        current = best.get(name)
        if current is None or _better(err, tensor, current[0], current[2]):
            best[name] = (err, tensor.order, tensor, view, layout)
    return best


def _compare_layer(name: str, index: int, ref: np.ndarray, tensor, view: np.ndarray, layout: str,
                   err: float, tolerance: float) -> LayerComparison:
    """One layer's Keras output against the artifact tensor that carries it."""
    diff = np.abs(ref.astype(np.float64) - view.astype(np.float64))
    diff[np.isnan(ref) & np.isnan(view)] = 0.0
    item = LayerComparison(
        name, index, "compared", tensor=tensor.name, shape=list(ref.shape), layout=layout,
        max_abs_error=float(np.nanmax(diff)) if diff.size else 0.0,
        mean_abs_error=float(np.nanmean(diff)) if diff.size else 0.0,
        normalized_error=err if np.isfinite(err) else None,
        relative_rms_error=_relative_rms(ref, view), cosine=_cosine(ref, view),
        scale=tensor.scale)
    if tensor.scale:
        item.error_over_scale = item.max_abs_error / tensor.scale
    if not err <= tolerance:
        if np.isfinite(err) and is_channel_affine(ref, view, AFFINE_RESIDUAL + tolerance):
            item.status = "folded"
        else:
            item.divergent = True
    return item


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


def compare_artifact_layers(keras_runner, artifact_path, artifact_format: str, precision: str,
                            batch: np.ndarray, layer_outputs: dict | None = None,
                            tolerance: float | None = None) -> tuple:
    """Per-layer comparison of one artifact; returns `(layers, first divergent layer)`."""
    layer_outputs = layer_outputs if layer_outputs is not None else keras_runner.layer_outputs(batch)
    if artifact_format not in ("tflite", "onnx"):
        raise InputError(f"{artifact_path}: per-layer comparison supports .tflite and .onnx")
    runner = open_with_intermediates(artifact_path)
    runner.infer(batch)
    tensors = runner.intermediate_tensors()
    model = keras_runner.model
    input_layers = {layer.name for layer in model.layers if type(layer).__name__ == "InputLayer"}
    output_layers = [t._keras_history[0].name for t in model.outputs]
    views = {}
    results, first = compare_layers(layer_outputs, tensors, precision, input_layers, output_layers,
                                    tolerance, views)
    local_errors(results, views, keras_runner.single_inbound(), keras_runner.replay)
    return results, attribute_divergence(results, first)


def _segment(inbound: dict, start: str, end: str) -> list | None:
    """Layers after `start` up to `end` when they form a plain chain from `start`, else None."""
    segment, name = [], end
    while name != start:
        segment.append(name)
        name = inbound.get(name)
        if name is None or len(segment) > len(inbound):
            return None
    return segment[::-1]


def local_errors(results: list, views: dict, inbound: dict, replay) -> None:
    """Set each compared layer's `local_error`: its own error, without what it inherited.

    As TFLite's QuantizationDebugger does, the Keras layers between the previous compared
    layer and this one (when they form a plain chain: `inbound` maps each layer to its only
    inbound layer) run on the artifact's own value of the previous layer, and the artifact's
    value of this layer is compared with that result (normalized like `normalized_error`).
    """
    compared = [r for r in results if r.status == "compared" and r.layer in views]
    for previous, item in zip(compared, compared[1:]):
        segment = _segment(inbound, previous.layer, item.layer)
        if not segment:
            continue
        expected = replay(segment, views[previous.layer])
        if expected is not None and expected.shape == views[item.layer].shape:
            err = normalized_error(expected, views[item.layer])
            item.local_error = err if np.isfinite(err) else None


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
