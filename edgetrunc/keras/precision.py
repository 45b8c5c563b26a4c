"""Export computes in float32: a mixed-precision model is rebuilt with the float32 policy.

A Keras model trained under `mixed_float16` (or `mixed_bfloat16`) keeps its variables in
float32 but computes in half precision; converted as it is, its graph is full of casts and
float16 convolutions that TFLite's builtin ops and ONNX Runtime's CPU kernels do not take.
`float32_model` returns a float32 copy (same config, every dtype policy set to float32, the
same weights), so the exported fp32 artifact is the model's float32 arithmetic, and fp16 /
int8 are derived from it as for any other model.
"""

from __future__ import annotations

from edgetrunc import _log
from edgetrunc.errors import InputError, first_line


def _policy_name(policy) -> str:
    return getattr(policy, "name", str(policy))


def reduced_precision_layers(model) -> list[str]:
    """Names of the layers (nested models included) that do not compute in float32."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None and getattr(policy, "compute_dtype", "float32") != "float32":
            found.append(layer.name)
    return found


def _float32_config(value):
    if isinstance(value, dict):
        if value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy", "Policy") and \
                isinstance(value.get("config"), dict):
            return {**value, "config": {**value["config"], "name": "float32"}}
        return {key: _float32_config(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_float32_config(item) for item in value]
    if value in ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16"):
        return "float32"
    return value


def float32_model(model):
    """`model` itself if every layer computes in float32, else a float32 copy (see above)."""
    import numpy as np

    reduced = reduced_precision_layers(model)
    if not reduced:
        return model
    import edgetrunc.layers  # noqa: F401  (Truncation must be registered to rebuild)

    config = _float32_config(model.get_config())
    try:
        copy = model.__class__.from_config(config)
        weights = model.get_weights()
        copy.set_weights([np.asarray(w, dtype=np.float32) if np.issubdtype(np.asarray(w).dtype, np.floating)
                          else w for w in weights])
    except Exception as exc:  # rebuilding a subclassed or unusual model
        raise InputError(f"{model.name}: layers {', '.join(reduced[:3])} compute in reduced precision "
                         f"and the model cannot be rebuilt in float32 ({first_line(exc, 160)})") from None
    still_reduced = reduced_precision_layers(copy)
    if still_reduced:
        raise InputError(f"{model.name}: layers {', '.join(still_reduced[:3])} "
                         "still compute in reduced precision after setting the float32 policy")
    _log.info(f"{model.name}: {len(reduced)} layer(s) compute in reduced precision "
              f"(e.g. {reduced[0]}); exporting a float32 copy with the same weights")
    return copy
