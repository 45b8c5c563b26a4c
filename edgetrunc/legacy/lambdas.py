"""What saved `Lambda` layers need to load and run in Keras 3, and finding them in a model.

A saved lambda is Python bytecode whose globals are not in the file: `lambda_globals` gives
the names such code expects (`tf`, `keras`, `K` as `LegacyBackend`, `np`, `math`),
`missing_global_names` lists those it reads that nobody gives (decoding runs nothing),
`lambdas_rebuilt_with` makes Keras rebuild lambdas with them and `rebind_lambda_globals`
re-binds a loaded one. `keras_patched` is the one way this package patches Keras while
loading; `lambda_layers` finds every Lambda of a model, nested graph models included.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import dis
import marshal
import math
import types

import numpy as np

from edgetrunc.errors import InputError


class LegacyBackend:
    """`K` for saved lambdas: the Keras 2 backend names old code uses, on top of `keras.ops`.

    Names not defined here come from `keras.ops`, then `keras.backend`. `switch` accepts
    callables and a condition of lower rank, as the Keras 2 backend did.
    """

    def __getattr__(self, name):
        import keras

        for source in (keras.ops, keras.backend):
            if hasattr(source, name):
                return getattr(source, name)
        raise AttributeError(f"K.{name} is not available in Keras 3 "
                             "(this K covers keras.ops and keras.backend)")

    @staticmethod
    def switch(condition, then_expression, else_expression):
        from keras import ops

        then_value = then_expression() if callable(then_expression) else then_expression
        else_value = else_expression() if callable(else_expression) else else_expression
        condition = ops.convert_to_tensor(condition)
        target_rank = max(len(ops.shape(then_value)), len(ops.shape(else_value)))
        while len(condition.shape) < target_rank:
            condition = ops.expand_dims(condition, -1)
        return ops.where(condition, then_value, else_value)

    @staticmethod
    def clip(x, min_value=None, max_value=None):
        from keras import ops

        if min_value is None and max_value is None:
            return x
        if max_value is not None and min_value is not None and max_value < min_value:
            max_value = min_value
        if min_value is None:
            return ops.minimum(x, max_value)
        if max_value is None:
            return ops.maximum(x, min_value)
        return ops.clip(x, min_value, max_value)

    @staticmethod
    def int_shape(x):
        return tuple(x.shape)

    @staticmethod
    def pow(x, a):
        from keras import ops

        return ops.power(x, a)

    @staticmethod
    def permute_dimensions(x, pattern):
        from keras import ops

        return ops.transpose(x, pattern)

    @staticmethod
    def batch_flatten(x):
        from keras import ops

        return ops.reshape(x, (ops.shape(x)[0], -1))

    @staticmethod
    def l2_normalize(x, axis=None):
        from keras import ops

        return ops.normalize(x, axis=-1 if axis is None else axis, order=2)

    @staticmethod
    def concatenate(tensors, axis=-1):
        from keras import ops

        return ops.concatenate(tensors, axis=axis)


def lambda_globals(extra=None) -> dict:
    """The globals given to rebuilt lambdas: `tf`, `keras`, `K` (also as `backend`), `np`,
    `math` (+ `extra`)."""
    import keras
    import tensorflow as tf

    namespace = {"__builtins__": builtins, "__name__": "edgetrunc_migrated_lambda",
                 "tf": tf, "keras": keras, "K": LegacyBackend(), "backend": LegacyBackend(),
                 "np": np, "math": math}
    namespace.update(extra or {})
    return namespace


def _stored_code_objects(lambda_config):
    """The code objects of a Lambda config's stored functions (decoding runs nothing)."""
    for key in ("function", "output_shape"):
        stored = lambda_config.get(key)
        code = None
        if isinstance(stored, dict) and stored.get("class_name") == "__lambda__":
            code = stored.get("config", {}).get("code")
        elif key == "function" and isinstance(stored, list) and stored:
            code = stored[0]
        if isinstance(code, str):
            yield key, code


def missing_global_names(lambda_config, namespace) -> set[str]:
    """Global names a stored lambda reads that neither `namespace` nor builtins provide.

    Raises InputError when the bytecode cannot be decoded (saved by another Python).
    """
    missing = set()
    for key, encoded in _stored_code_objects(lambda_config):
        try:
            code = marshal.loads(base64.b64decode(encoded.encode("ascii")))
        except Exception:
            name = lambda_config.get("name", "?")
            raise InputError(
                f"layer '{name}': its {key} bytecode cannot be decoded; it was probably "
                "saved by another Python version (lambdas load only in the Python that saved them)"
            ) from None
        for name in _global_reads(code):
            if name not in namespace and not hasattr(builtins, name):
                missing.add(name)
    return missing


def _global_reads(code):
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            yield instruction.argval
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _global_reads(const)


@contextlib.contextmanager
def keras_patched(module_name: str, attribute: str, wrap):
    """While active, Keras's `module_name.attribute` is `wrap(original)`; a no-op if a Keras
    version moved it (the callers then fall back to what they can do after loading). Only
    Keras's own modules, named by edgetrunc's code, are imported here; never a file's."""
    import importlib

    if module_name.split(".")[0] != "keras":
        raise ValueError(f"keras_patched patches Keras modules only, not {module_name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError:  # pragma: no cover - depends on the Keras layout
        yield
        return
    original = getattr(module, attribute, None)
    if original is None:  # pragma: no cover
        yield
        return
    setattr(module, attribute, wrap(original))
    try:
        yield
    finally:
        setattr(module, attribute, original)


def lambdas_rebuilt_with(namespace):
    """While active, Keras rebuilds every stored lambda with `namespace` as its globals.

    Keras rebuilds a saved lambda with `python_utils.func_load`, whose default globals
    are that module's own (so `tf` is undefined); this passes `namespace` instead. If a
    Keras version moves it, lambdas are still re-bound after loading.
    """
    def wrap(original):
        def func_load(code, defaults=None, closure=None, globs=None):
            if isinstance(code, (tuple, list)):
                code, defaults, closure = code
            if isinstance(defaults, list):  # Keras 2 stores a function's defaults as a list
                defaults = tuple(defaults)
            fn = original(code, defaults=defaults, closure=closure, globs=namespace)
            # named "<lambda>", Keras saves it as code again, not as a name nobody defines
            return types.FunctionType(fn.__code__, namespace, "<lambda>", fn.__defaults__,
                                      fn.__closure__) if isinstance(fn, types.FunctionType) else fn
        return func_load

    return keras_patched("keras.src.utils.python_utils", "func_load", wrap)


def rebind_lambda_globals(layer, namespace):
    """Give a loaded Lambda's functions `namespace` as their globals."""
    for attribute in ("function", "_output_shape"):
        fn = getattr(layer, attribute, None)
        if isinstance(fn, types.FunctionType) and fn.__name__ == "<lambda>" \
                and fn.__globals__ is not namespace:
            setattr(layer, attribute, types.FunctionType(
                fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__))


def is_graph_model(model) -> bool:
    """Whether `model` is a Functional or Sequential model (one that can be rebuilt)."""
    import keras
    from keras.src.models.functional import Functional

    return isinstance(model, (Functional, keras.Sequential))


def lambda_layers(model, prefix="") -> list:
    """`(layer, path)` of every Lambda in a model, nested Functional/Sequential included."""
    import keras

    found, seen = [], set()
    for layer in model.layers:
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.layers.Lambda):
            found.append((layer, path))
        elif isinstance(layer, keras.Model) and is_graph_model(layer):
            found.extend(lambda_layers(layer, prefix=f"{path}/"))
    return found
