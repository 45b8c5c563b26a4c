"""Model registry: `register` a builder function, `create` a model by name, `list_models`.

Learned from timm: a model is a small function decorated with `@register`; `create(name,
**kwargs)` looks it up and calls it. Builders return uncompiled `keras.Model` objects. The
built-in builders import Keras, so they register when the registry is first asked
(`list_models`, `create`), not when `edgetrunc.models` is imported.
"""

from __future__ import annotations

import importlib
from typing import Callable

_MODELS: dict[str, Callable] = {}
_BUILT_IN = ("edgetrunc.models.seed_block", "edgetrunc.models.tlunet", "edgetrunc.models.yenet")


def _register_built_in() -> None:
    for module in _BUILT_IN:
        importlib.import_module(module)


def register(fn: Callable = None, *, name: str | None = None):
    """Register a model builder under `name` (the function name by default)."""

    def wrap(builder):
        key = name or builder.__name__
        if key in _MODELS and _MODELS[key] is not builder:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = builder
        return builder

    return wrap(fn) if fn is not None else wrap


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _register_built_in()
    return sorted(_MODELS)


def create(name: str, **kwargs):
    """Build the registered model `name` with the builder's keyword arguments."""
    _register_built_in()
    if name not in _MODELS:
        raise ValueError(
            f"unknown model {name!r}; expected one of: {', '.join(list_models())}"
        )
    return _MODELS[name](**kwargs)
