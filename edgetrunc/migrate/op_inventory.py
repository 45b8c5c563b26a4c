"""The TFLite op inventory of a model before and after migration (stock TFLite converter).

`tflite_op_inventory` converts a Keras model as it is and counts its ops with
`edgetrunc.export.tflite_ops`; `op_inventory_change` reports what migration removed and added.
"""

from __future__ import annotations

import contextlib
import io

from edgetrunc import _log
from edgetrunc.errors import first_line


def tflite_op_inventory(model) -> dict:
    """`{op name: count}` of `model` converted with the stock TFLite converter."""
    import tensorflow as tf

    from edgetrunc.export import tflite_ops

    quiet = contextlib.redirect_stdout(io.StringIO()) if _log.is_quiet() else _log.stdout_to_stderr()
    with quiet:
        content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    return tflite_ops(content)


def inventory_or_error(model) -> dict:
    """`tflite_op_inventory(model)`, or `{"error": reason}` when the converter fails (its
    native diagnostics, which the exception repeats, are kept off stderr)."""
    try:
        with _log.native_output_captured([]):
            return tflite_op_inventory(model)
    except Exception as exc:
        return {"error": first_line(exc)}


def op_inventory_change(before: dict, after: dict) -> dict:
    """Before/after op counts, their totals, and what was removed or added."""
    report = {"before": before, "after": after}
    if "error" in before or "error" in after:
        return report
    removed = {op: n - after.get(op, 0) for op, n in before.items() if n > after.get(op, 0)}
    added = {op: n - before.get(op, 0) for op, n in after.items() if n > before.get(op, 0)}
    report.update(total_before=sum(before.values()), total_after=sum(after.values()),
                  removed=removed, added=added)
    return report
