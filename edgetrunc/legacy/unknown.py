"""What a file needs that Keras 3 does not have, said all at once (`UnknownLayerClass`): one
line per unknown class, activation function or op layer, naming its layers and what to pass
for it. The advice fits the way the file names the class: a class saved as "Package>Name"
resolves once registered under that package; a bare name (a tf.keras 2 file) only through
`custom_objects`.
"""

from __future__ import annotations

from edgetrunc.errors import InputError, InputErrors


class UnknownLayerClass(InputErrors):
    """Layers Keras 3 cannot build, all of them: `layers` lists `(name, class)` (an activation
    function saved by name as `(name, "activation tlu")`); one line each in `lines`, with what
    to pass for it."""

    def __init__(self, layers, other_lines=()):
        self.layers = layers
        grouped = {}  # one line per class or function, naming every layer of it
        for name, class_name in layers:
            grouped.setdefault(class_name, []).append(name)
        super().__init__([*other_lines, *(_unknown_line(", ".join(f"'{n}'" for n in names),
                                                        class_name, len(names))
                                          for class_name, names in grouped.items())])


def _unknown_line(names, class_name, count=1) -> str:
    what = f"layer {names}" if count == 1 else f"layers {names}"
    if class_name.startswith("activation "):
        function = class_name.split(" ", 1)[1]
        return (f"{what} use{'s' if count == 1 else ''} the activation function '{function}', "
                "saved by name only "
                "(its code is not in the file); if it is a truncation (clip to [-T, T]) give "
                f"--truncation-class {function}=T to edgetrunc migrate, otherwise give its code "
                "with --custom-objects FILE.py")
    if class_name.startswith("TFOpLambda"):
        return (f"{what} {'is a' if count == 1 else 'are'} tf.keras 2 op layer"
                f"{'' if count == 1 else 's'} ({class_name[11:]}), which Keras 3 "
                "cannot rebuild (only tf.clip_by_value, tf.minimum and tf.maximum clips are "
                "mapped); rewrite it as a Keras layer and re-save")
    short = class_name.rsplit(">", 1)[-1]
    # a class saved as "Package>Name" resolves once registered under that package; a bare
    # name (tf.keras 2 files store the bare class name) only through custom_objects
    package = class_name.rsplit(">", 1)[0] if ">" in class_name else None
    code = (f"register it with keras.saving.register_keras_serializable(package='{package}')"
            if package else f"load it in Python with custom_objects={{'{short}': {short}}}")
    return (f"{what} {'is' if count == 1 else 'are'} of class '{class_name}', which Keras 3 "
            "does not know (a class "
            "of the code that saved the file; its code is not in the file); if it is a "
            f"truncation (clip to [-T, T]) give --truncation-class {short} to edgetrunc "
            f"migrate, otherwise give its code with --custom-objects FILE.py (in Python: {code})")


def refuse_foreign_module(node, name: str, class_name: str) -> None:
    """A Keras class saved under a foreign module (`"module": "this"`) is named as such."""
    import keras

    module = node.get("module")
    if isinstance(module, str) and module and isinstance(getattr(keras.layers, class_name, None), type):
        raise InputError(f"layer {name!r} of the Keras class '{class_name}' names the module "
                         f"{module[:60]!r}, not a Keras module; edgetrunc never imports a module "
                         "a model file names (expected keras.layers or no module)")
