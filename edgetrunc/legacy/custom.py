"""The user's own code, given on purpose: `custom_objects` as a dict or a Python file.

`load_custom_objects(value)` turns what the user gave (`--custom-objects FILE.py`, or the
Python API's `custom_objects=`: a dict as `keras.saving.load_model` takes, or the path of a
`.py` file) into a `CustomObjects` dict that remembers where it came from. A file is run
(imported as a module of its own) because the user named it, and only then: its public
functions and classes (or the names of its `__all__`) are offered to Keras deserialization
by name, exactly as `keras.saving.load_model(custom_objects=...)` offers them. Without it,
nothing named in a model file is imported. `custom_objects_scope` makes them visible to every
lookup of a load (`keras.saving.get_registered_object`, activations saved by name);
`missing_names_error` is the one line naming the file and the names the model needs but it
does not define.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
from pathlib import Path

from edgetrunc.errors import InputError, first_line

PARAM = "custom_objects"


class CustomObjects(dict):
    """`{name: function or class}` given by the user; `source` names where they came from
    (the file, or `custom_objects` for a dict)."""

    def __init__(self, objects=(), source: str = PARAM):
        super().__init__(objects)
        self.source = source


def load_custom_objects(value) -> CustomObjects | None:
    """`None`, a dict or the path of a `.py` file -> `CustomObjects` (None stays None).

    A file is imported under a private module name (its own folder first on `sys.path` while
    it runs, so it may import its siblings); a file that is missing, not `.py`, fails to
    import or defines no public function or class raises InputError naming it.
    """
    if value is None or isinstance(value, CustomObjects):
        return value
    if isinstance(value, dict):
        return CustomObjects(value)
    path = Path(value)
    where = f"{PARAM} {path}"
    if path.suffix != ".py":
        raise InputError(f"{where}: expected a Python file (.py) of your own functions and "
                         "classes", param=PARAM)
    if not path.is_file():
        raise InputError(f"{where}: no such file", param=PARAM)
    module = _import_file(path, where)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name in vars(module) if not name.startswith("_")]
    objects = {name: getattr(module, name) for name in names if hasattr(module, name)
               and (inspect.isclass(getattr(module, name))
                    or inspect.isfunction(getattr(module, name)))}
    if not objects:
        raise InputError(f"{where}: defines no public function or class to offer to Keras",
                         param=PARAM)
    return CustomObjects(objects, source=str(path))


def _import_file(path: Path, where: str):
    name = f"edgetrunc_custom_objects_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"{where}: cannot be imported as a Python module", param=PARAM)
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # the user's code: any failure is one line, not a traceback
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise InputError(f"{where}: fails to import ({type(exc).__name__}: "
                         f"{first_line(exc)})", param=PARAM) from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def custom_objects_scope(custom_objects):
    """While active, Keras resolves the user's objects by name (a no-op for None)."""
    if not custom_objects:
        return contextlib.nullcontext()
    import keras

    return keras.saving.custom_object_scope(dict(custom_objects))


def missing_names_error(path, custom_objects, names) -> InputError:
    """The one line for a model that needs `names`, which `custom_objects` does not define."""
    shown = ", ".join(dict.fromkeys(names))
    return InputError(f"{path}: needs {shown}, which {_source(custom_objects)} does not "
                      "define (its public functions and classes are offered by name)")


def _source(custom_objects) -> str:
    source = getattr(custom_objects, "source", PARAM)
    return f"--custom-objects {source}" if source != PARAM else "custom_objects"


def needed_names(config, known=()) -> list[str]:
    """Names a model config needs that Keras does not know: layer classes, activation
    functions saved by name and Lambda functions stored by name (`known` excluded)."""
    from edgetrunc.legacy.activations import activation_function_name, unknown_activation
    from edgetrunc.legacy.classes import TF_OP_LAYERS, _is_known_class
    from edgetrunc.legacy.config import config_dicts, functions_stored_by_name

    needed = []
    for model_config in [d for d in config_dicts(config) if isinstance(d.get("layers"), list)]:
        for node in model_config["layers"]:
            if not isinstance(node, dict) or not isinstance(node.get("class_name"), str):
                continue
            layer_config = node.get("config") if isinstance(node.get("config"), dict) else {}
            if node["class_name"] not in TF_OP_LAYERS and not _is_known_class(node):
                needed.append(node["class_name"].rsplit(">", 1)[-1])
            if unknown_activation(node) is not None:
                needed.append(activation_function_name(layer_config.get("activation")))
            if node["class_name"] == "Lambda":
                needed += [function for _, function, _ in functions_stored_by_name([layer_config])
                           if isinstance(function, str)]
    return [name for name in dict.fromkeys(needed) if name not in known]


def check_custom_objects(path, config, custom_objects, truncation_classes=()):
    """Refuse, in one line naming the file, a model that needs names the user's objects do
    not define (nor `--truncation-class` maps). A no-op without custom objects."""
    if custom_objects is None:
        return
    given = set(custom_objects) | {str(key).rsplit(">", 1)[-1] for key in custom_objects}
    missing = [name for name in needed_names(config) if name not in given
               and name not in (truncation_classes or ())]
    if missing:
        raise missing_names_error(path, custom_objects, missing)
