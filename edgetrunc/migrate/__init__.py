"""Migration of legacy `Lambda` truncations to the `Truncation` layer (`edgetrunc migrate`).

A legacy `.keras`, `.h5` or SavedModel is read by `edgetrunc.legacy` (its config without
running anything; stored lambdas only when the caller trusts the file). Then:

- `probe`: decide by behaviour whether each Lambda computes clip(x, lower, upper), and with
  which gradient (`probe_lambda` -> `LambdaVerdict`);
- `rewrite`: rebuild the model with a `Truncation` of the same name in place of each clip
  (`replace_lambdas`), every other layer and weight kept;
- `verify`: compare the result with the original on sample inputs (`verify_outputs`);
- `op_inventory`: the TFLite op inventory before and after (`tflite_op_inventory`);
- `pipeline`: `migrate`, the whole command: all of the above, then an atomic write.
"""

from edgetrunc.legacy import parse_truncation_classes, read_model_config
from edgetrunc.migrate.op_inventory import op_inventory_change, tflite_op_inventory
from edgetrunc.migrate.pipeline import migrate
from edgetrunc.migrate.probe import LambdaVerdict, probe_lambda
from edgetrunc.migrate.rewrite import lambda_layers, replace_lambdas
from edgetrunc.migrate.verify import sample_inputs, verify_outputs

__all__ = [
    "LambdaVerdict",
    "lambda_layers",
    "migrate",
    "op_inventory_change",
    "parse_truncation_classes",
    "probe_lambda",
    "read_model_config",
    "replace_lambdas",
    "sample_inputs",
    "tflite_op_inventory",
    "verify_outputs",
]
