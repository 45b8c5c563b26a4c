"""Checking every truncation mapping the user asked for, whenever its code is available.

`--truncation-class NAME[=T]` maps a class or an activation function to clip(x, -T, T).
When the code of NAME is at hand (the user's custom objects, the registry, or Keras's own
activations and layers), `check_mappings` runs it on values around the bounds, far outside
them, at the bounds' neighbours and at NaN and ±inf, with the layer's stored weights, and
compares it with the clip: anything else (3 tanh(x) is not a clip) is refused in one line
naming the layer, the class and the probe's worst value. When the code is not available,
one warning line per layer says that the mapping is unverified.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgetrunc import _log
from edgetrunc.errors import InputError, first_line
from edgetrunc.legacy.activations import activation_bounds, asked_activation
from edgetrunc.legacy.config import config_dicts

UNCHECKED_NOTE = "; its code is not in the file, so its behaviour was not checked"


@dataclasses.dataclass
class ClipProbe:
    """How far a function is from clip(x, lower, upper) on the probe values."""

    lower: float
    upper: float
    worst_x: float
    worst_y: float
    worst_clip: float
    worst_error: float
    probes: int
    passed: bool


def probe_values(lower: float, upper: float, dtype="float32") -> np.ndarray:
    """Values around and between the bounds, their float neighbours, far outside, NaN, ±inf."""
    width = upper - lower
    scale = max(abs(lower), abs(upper), width)
    near = [np.nextafter(np.asarray(b, dtype), np.asarray(d, dtype))
            for b in (lower, upper) for d in (-np.inf, np.inf)]
    values = np.concatenate([
        np.linspace(lower - width, upper + width, 241), [lower, upper, 0.0], near,
        [s * scale * m for s in (-1, 1) for m in (2.0, 10.0, 1e3, 1e6)], [np.nan, np.inf, -np.inf]])
    return values.astype(dtype)


def compare_with_clip(fn, lower: float, upper: float, dtype="float32") -> ClipProbe:
    """Run `fn` (NumPy in, NumPy out, elementwise) on `probe_values` and compare with the
    clip. Finite inputs may differ by float cancellation only (`x + (clip(x) - x)`); NaN must
    stay NaN; ±inf must give the bound (or NaN, the cancellation form's inf - inf)."""
    x = probe_values(lower, upper, dtype)
    y = np.asarray(fn(x), dtype=np.float64).reshape(-1)
    if y.shape != x.shape:
        raise ValueError(f"returns {y.size} values for {x.size} inputs (not elementwise)")
    x64 = x.astype(np.float64)
    expected = np.clip(x64, lower, upper)
    with np.errstate(invalid="ignore"):
        error = np.abs(y - expected)
    error = np.where(np.isnan(y) & np.isnan(expected), 0.0, np.where(np.isnan(error), np.inf, error))
    error = np.where(np.isinf(x64) & np.isnan(y), 0.0, error)
    scale = max(abs(lower), abs(upper))
    finite = np.isfinite(x64)
    allowed = np.full(x.shape, 0.0)
    allowed[finite] = (2 * np.spacing((np.abs(x[finite]) + np.asarray(scale, x.dtype)))
                       .astype(np.float64) + 2 * float(np.spacing(np.asarray(scale, x.dtype))))
    worst = int(np.argmax(error))
    return ClipProbe(lower, upper, float(x64[worst]), float(y[worst]), float(expected[worst]),
                     float(error[worst]), int(x.size), bool(np.all(error <= allowed)))


def check_mappings(path, config, mapped, truncation_classes, layer_weights=None,
                   custom_objects=None) -> None:
    """Check each layer mapped by `--truncation-class` against its code, where available.

    `mapped` are the `MappedLayer`s of `map_config_layers(config, ...)`; their notes say how
    each was checked. Run inside the user's custom-objects scope (`legacy.custom`)."""
    if not truncation_classes:
        return
    given = (f"--custom-objects {custom_objects.source}"
             if getattr(custom_objects, "source", "custom_objects") != "custom_objects"
             else "custom objects")
    by_layer = {m.layer: m for m in mapped}
    for model_config in [d for d in config_dicts(config) if isinstance(d.get("layers"), list)]:
        for node in model_config["layers"]:
            if not isinstance(node, dict) or not isinstance(node.get("class_name"), str):
                continue
            name = str((node.get("config") or {}).get("name") or node.get("name") or "?")
            activation = asked_activation(node, truncation_classes)
            if activation is not None:
                found = [m for m in mapped if m.layer == name or f"of layer '{name}'" in m.source]
                lower, upper, _ = activation_bounds(name, *activation)
                _check_one(path, name, f"activation {activation[0]}", activation[0],
                           truncation_classes[activation[0]], lower, upper,
                           _activation_code(activation[0], given), found)
                continue
            class_name = node["class_name"]
            asked = next((c for c in (class_name, class_name.rsplit(">", 1)[-1])
                          if c in truncation_classes), None)
            if asked is None or name not in by_layer:
                continue
            m = by_layer[name]
            weights = layer_weights(name) if layer_weights else {}
            _check_one(path, name, f"class {asked}", asked, truncation_classes[asked], m.lower,
                       m.upper, _class_code(node, weights, given), [m])


def _check_one(path, layer, what, option, threshold, lower, upper, code, found) -> None:
    """Probe one mapping; refuse a mismatch, warn when the code is not available."""
    clip = f"clip(x, {lower:g}, {upper:g})"
    if code is None:
        _log.warn(f"{path}: layer '{layer}' ({what}) mapped to {clip} unverified: its code is "
                  "not available (give it with --custom-objects FILE.py to check the mapping)")
        return
    source, fn = code
    try:
        result = compare_with_clip(fn, lower, upper)
    except Exception as exc:  # the user's code on probe values
        raise InputError(f"{path}: layer '{layer}' ({what}): its code ({source}) cannot be "
                         f"checked against {clip} ({first_line(exc)})") from None
    given = f"{option}={threshold:g}" if threshold is not None else option
    if not result.passed:
        raise InputError(
            f"{path}: layer '{layer}' ({what}): --truncation-class {given} maps it to {clip}, "
            f"but its code ({source}) computes something else: f({result.worst_x:g}) = "
            f"{result.worst_y:.6g} where the clip gives {result.worst_clip:g} (the probe's "
            f"worst |difference|, {result.worst_error:.3g}); leave it out of "
            "--truncation-class to keep it as it is (converted and parity-checked as it is)")
    for m in found:
        m.note = (m.note.replace(UNCHECKED_NOTE, "") + f"; checked against its code ({source}): "
                  f"max |f(x) - clip| {result.worst_error:g} on {result.probes} probe values")


def _activation_code(name, given):
    """`(source, numpy fn)` of an activation function given or known to Keras, or None."""
    import keras

    fn = keras.saving.get_registered_object(name)
    source = given
    if fn is None:
        try:
            fn = keras.activations.get(name)
        except Exception:
            return None
        source = f"Keras's {name}"
    return source, _numpy(fn)


def _class_code(node, weights, given):
    """`(source, numpy fn)` of a layer built from its saved config with the class given or
    known to Keras and its stored weights, or None when the class is not available."""
    import keras

    class_name = node["class_name"]
    cls = next((keras.saving.get_registered_object(key) for key in
                (node.get("registered_name"), class_name, class_name.rsplit(">", 1)[-1])
                if isinstance(key, str) and keras.saving.get_registered_object(key)), None)
    source = given
    if cls is None and isinstance(getattr(keras.layers, class_name, None), type):
        cls, source = getattr(keras.layers, class_name), f"Keras's {class_name}"
    if cls is None:
        return None
    config = {k: v for k, v in (node.get("config") or {}).items() if k not in ("dtype",)}
    return source, _numpy(lambda x: _call_built(cls, config, x, weights))


def _call_built(cls, config, x, weights):
    """A layer of `cls` built from its saved `config` on `x` (shaped [1, 1, n, 1]), with its
    stored `weights`, called on `x`."""
    from keras import ops

    layer = cls.from_config(config)
    data = ops.reshape(x, (1, 1, -1, 1))
    layer.build(tuple(data.shape))
    _set_stored_weights(layer, weights)
    return layer(data)


def _set_stored_weights(layer, weights) -> None:
    if not weights:
        return
    variables = list(layer.weights)
    if len(variables) != len(weights):
        raise ValueError(f"the class builds {len(variables)} weight(s), the file stores "
                         f"{len(weights)}")
    if all(str(k).startswith("vars/") for k in weights):  # archives number them in order
        values = [weights[k] for k in sorted(weights, key=lambda k: int(k.split("/")[1]))]
    else:
        names = {v.name.split("/")[-1].split(":")[0]: v for v in variables}
        values = [weights[names_key] for names_key in names] if set(names) == set(weights) \
            else list(weights.values())
    for variable, value in zip(variables, values):
        variable.assign(np.asarray(value).reshape(variable.shape))


def _numpy(call):
    """`call` on a tensor of `x`, its answer as a flat NumPy array."""
    def run(x):
        from keras import ops

        return np.asarray(ops.convert_to_numpy(call(ops.convert_to_tensor(x)))).reshape(-1)
    return run
