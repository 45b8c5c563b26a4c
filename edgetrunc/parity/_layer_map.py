"""Which artifact tensor carries which Keras layer: candidates by name, choice by error.

Converters keep Keras layer names in tensor names (`tlunet_1/group1_truncation_1/Minimum`,
fused tensors joined by `;`), so a tensor's candidate layers are the layers its name mentions
(with or without the `_N` scope suffix), the layers between them, and the layers after them
that no tensor mentions (a batch normalization folded into its convolution); a tensor whose
name mentions no layer takes the unmentioned layers around it. Each tensor goes to the
candidate whose Keras output it matches best (`ErrorStats` over every chunk read), and a layer
keeps the best of the tensors that went to it. No TensorFlow.
"""

from __future__ import annotations

import re
from dataclasses import replace

from edgetrunc.parity._layer_stats import ErrorStats, reference_views

_SUFFIX = re.compile(r"^(.*)_\d+$")


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


def choose(names: list, candidates: dict, seen: dict, errors: dict, count: int) -> dict:
    """`{layer: (error, order, tensor, layout, ErrorStats)}`: the artifact tensor that carries
    each layer, over the `count` chunks read so far.

    A tensor's candidates are the layers its name mentions, the layers between them and the
    unmentioned layers after them (see the module docstring); it goes to the candidate it
    matches best, and a layer keeps the best of the tensors that went to it (`_better`).
    """
    best: dict = {}
    for key, tensor in seen.items():
        mentioned, choice = candidates[key][1], None
        for (name, layout), (stats, chunks_seen) in errors[key].items():
            err = stats.normalized
            if chunks_seen == count and (choice is None or err < choice[0]
                                         or (err == choice[0] and name in mentioned)):
                choice = (err, name, layout, stats)
        if choice is None:
            continue
        err, name, layout, stats = choice
        current = best.get(name)
        if current is None or _better(err, tensor, current[0], current[2]):
            best[name] = (err, tensor.order, tensor, layout, stats)
    return best


def add_candidate_errors(tensor, outputs: dict, names: list, seen: dict, errors: dict) -> None:
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


def candidates(names: list, tensors: list, output_layers=()) -> dict:
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


