"""Reading Keras 2 and SavedModel files in Keras 3, as `keras.src.legacy.saving` does for Keras.

- `config`: the format and model config of a saved file, read without running anything, and
  the scans of a config for the code it would run (`find_lambda_configs`, ...);
- `classes`: layer classes Keras 3 cannot build, and the ones mapped to `Truncation`
  (`map_config_layers`, `parse_truncation_classes`, `UnknownLayerClass`);
- `lambdas`: what saved `Lambda` layers need (`lambda_globals`, `LegacyBackend`) and where
  they are in a loaded model (`lambda_layers`);
- `activations`: truncations written as activation functions saved by name;
- `objects`: training-only objects (initializers, regularizers, constraints) Keras 3 cannot
  rebuild, replaced by defaults, and Keras 2 layer keys Keras 3 refuses;
- `weights`: a layer's stored weights read from the file (a learned threshold);
- `custom`: the user's own objects (`--custom-objects FILE.py`), given on purpose;
- `mapping_check`: every `--truncation-class` mapping checked against its code, if given;
- `load`: `load_legacy` / `load_legacy_model`, the Keras 2 archive, `.h5` and SavedModel loaders.

`edgetrunc.keras.load.load_keras_model` sends a file here when Keras 3 cannot read it as it is.
Imports TensorFlow / Keras lazily, inside functions.
"""

from edgetrunc.legacy.classes import (
    MappedLayer,
    UnknownLayerClass,
    map_config_layers,
    parse_truncation_classes,
)
from edgetrunc.legacy.config import (
    FORMAT_NAMES,
    LEGACY_SUFFIXES,
    count_stored_functions,
    find_lambda_configs,
    functions_stored_by_name,
    is_savedmodel,
    read_model_config,
    require_model_file,
)
from edgetrunc.legacy.custom import (
    CustomObjects,
    check_custom_objects,
    custom_objects_scope,
    load_custom_objects,
)
from edgetrunc.legacy.lambdas import (
    LegacyBackend,
    is_graph_model,
    lambda_globals,
    lambda_layers,
    missing_global_names,
)
from edgetrunc.legacy.load import load_legacy, load_legacy_model

__all__ = [
    "CustomObjects",
    "check_custom_objects",
    "custom_objects_scope",
    "load_custom_objects",
    "FORMAT_NAMES",
    "LEGACY_SUFFIXES",
    "LegacyBackend",
    "MappedLayer",
    "UnknownLayerClass",
    "count_stored_functions",
    "find_lambda_configs",
    "functions_stored_by_name",
    "is_graph_model",
    "is_savedmodel",
    "lambda_globals",
    "lambda_layers",
    "load_legacy",
    "load_legacy_model",
    "map_config_layers",
    "missing_global_names",
    "parse_truncation_classes",
    "read_model_config",
    "require_model_file",
]
