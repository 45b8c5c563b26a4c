"""What the passes of both formats share: running an ordered list, and the layout rewrites.

A pass is `pass_(model, context) -> bool`: it edits a parsed model (a TFLite `ModelT`, an
`onnx.ModelProto`) in place and says whether it changed it. `run_passes` runs a list in
order and notes in `context.applied` the name of each pass that changed the model (the
manifest's "passes"). `layout_pass` makes a rewrite for speed into a pass that
`literal=True` skips: `pack_front_end`, `activations_before_unpack` and
`pools_as_convolutions` are each one such pass per format, over that format's rewrite
(`export.tflite.packing` / `pooling`, `export.onnx.packing`).
"""

from __future__ import annotations


def run_passes(model, passes, context) -> bool:
    """Run `passes` in order over `model`; whether one changed it."""
    changed = False
    for pass_ in passes:
        if pass_(model, context):
            changed = True
            context.applied.append(pass_.__name__)
    return changed


def layout_pass(name: str, rewrite, doc: str):
    """The pass `name`: unless `context.literal`, `rewrite(model)` (the number of places it
    changed) runs; it changed the model when that number is positive."""

    def pass_(model, context) -> bool:
        return not context.literal and rewrite(model) > 0

    pass_.__name__ = pass_.__qualname__ = name
    pass_.__doc__ = f"Unless `context.literal`: {doc}"
    return pass_
