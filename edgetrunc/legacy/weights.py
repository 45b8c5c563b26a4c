"""The weights a saved layer stores, read from the file without building the model.

`stored_layer_weights(path, format)` returns a function `layer name -> {weight name: array}`
for a full-model `.h5` (`model_weights/<layer>/...`) and for Keras 3 / tf.keras 2 `.keras`
archives (`model.weights.h5`, `layers/<layer>/vars/<i>`); a SavedModel's weights are matched
when it is loaded. `threshold_from_weights` reads a learned threshold: a class mapped to
`Truncation` may store one scalar weight, whose value is its T.
"""

from __future__ import annotations

import math
import zipfile

from edgetrunc.errors import InputError


def stored_layer_weights(path, file_format):
    """`layer name -> {weight name: numpy array}` of what the file stores for that layer."""
    def read(layer):
        import h5py

        found = {}

        def keep(name, item):
            if isinstance(item, h5py.Dataset):
                found[name.split(":")[0]] = item[()]
        try:
            if file_format == "h5":
                with h5py.File(path, "r") as handle:
                    group = handle.get("model_weights", handle).get(layer)
                    if group is not None:
                        group.visititems(keep)
            elif file_format in ("keras", "tf-keras"):
                with zipfile.ZipFile(path) as archive, \
                        archive.open("model.weights.h5") as data, h5py.File(data, "r") as handle:
                    group = handle.get(f"layers/{layer}")
                    if group is not None:
                        group.visititems(keep)
        except (OSError, KeyError):
            return {}
        return {name.rsplit("/", 1)[-1] if "/" in name else name: value
                for name, value in found.items()}
    return read


def threshold_from_weights(class_name, layer, weights, threshold):
    """`(lower, upper, weight name)` of a class storing one scalar weight (a learned T).

    Anything else is refused naming the weights; a given `threshold` must equal the stored
    one (the file's value is never dropped)."""
    import numpy as np

    names = ", ".join(f"'{key}' {list(np.shape(value))}" for key, value in weights.items())
    if len(weights) != 1 or np.size(next(iter(weights.values()))) != 1:
        raise InputError(f"layer '{layer}' (class {class_name}) stores the weight(s) {names}; "
                         "only a class with one scalar weight (a learned threshold) can be "
                         "mapped to Truncation")
    key, value = next(iter(weights.items()))
    stored = abs(float(np.asarray(value, dtype="float64").reshape(-1)[0]))
    if not (math.isfinite(stored) and stored > 0):
        raise InputError(f"layer '{layer}' (class {class_name}): its stored weight '{key}' is "
                         f"{stored:g}, not a threshold > 0")
    if threshold is not None and not math.isclose(threshold, stored, rel_tol=1e-6):
        raise InputError(f"layer '{layer}' (class {class_name}) stores its threshold as the "
                         f"weight '{key}' = {stored:.7g}, not {threshold:g}; give "
                         f"--truncation-class {class_name} without =T to use the stored value")
    return -stored, stored, key
