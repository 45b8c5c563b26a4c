"""Which Keras layer a converter's tensor or op name belongs to (no TensorFlow).

TFLite and ONNX converters keep the Keras layer names in their tensor and op names:
`model_1/<layer>_1/Op` (TensorFlow scopes add `_N`), `<layer>/Clip`, and names of fused ops
joined by `;` (`m_1/group2_bn_1/add;m_1/group2_conv_1/conv`). The TFLite passes mark a
truncation folded into its producer's saturation as `SATURATION_MARK/<layer>`. A scope
loses its `_N` and `:N` (output index) suffixes before it is compared.

With `known` layer names, a scope names a layer when it is one of them, or one of them plus
`_N`. Without, the layer is the scope after the model's (`model/<layer>/op`) or the first of
two (`<layer>/op`); a bare name (`Conv__8`, `input:0`) has no layer.
"""

from __future__ import annotations

import re

SATURATION_MARK = "edgetrunc_clip_by_saturation"
_SUFFIX = re.compile(r"(?:_\d+)?(?::\d+)?$")


def layers_in(name, known=()) -> list:
    """The layers the tensor or op `name` mentions, one per `;`-joined part, in its order.

    `layers_in("m_1/group2_bn_1/add;m_1/group2_conv_1/conv")` -> `["group2_bn", "group2_conv"]`.
    """
    found = []
    for part in str(name).split(";"):
        layer = _layer_in([scope for scope in part.split("/") if scope], known)
        if layer and layer not in found:
            found.append(layer)
    return found


def first_layer(names, known=()) -> str | None:
    """The first layer that any of `names` mentions (in order), or None."""
    return next((layer for name in names for layer in layers_in(name, known)), None)


def layer_of(names, known=()) -> str | None:
    """Every layer `names` mention, joined by `+` (ordered as in `known`, when given), or None.

    `layer_of(["tlunet_1/group1_conv_1/convolution"])` -> `"group1_conv"`.
    """
    found = []
    for name in names:
        found += [layer for layer in layers_in(name, known) if layer not in found]
    if known:
        order = list(known)
        found.sort(key=lambda layer: order.index(layer) if layer in order else len(order))
    return "+".join(found) or None


def _layer_in(scopes: list, known) -> str | None:
    if len(scopes) >= 2 and scopes[0] == SATURATION_MARK:
        return _known_layer(scopes[1], known) if known else scopes[1]
    if known:
        return next((layer for scope in scopes if (layer := _known_layer(scope, known))), None)
    bare = [_SUFFIX.sub("", scope) for scope in scopes]
    if len(bare) >= 3:
        return bare[1]
    return bare[0] if len(bare) == 2 else None


def _known_layer(scope: str, known) -> str | None:
    scope = re.sub(r":\d+$", "", scope)
    return next((layer for layer in known if re.fullmatch(rf"{re.escape(layer)}(?:_\d+)?", scope)),
                None)
