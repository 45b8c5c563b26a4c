"""Model registry and the registered models (`seed_block`, `tlunet`).

`create(name, **kwargs)` builds a registered model; `list_models()` lists the names;
`@register` adds a builder.
"""

from edgetrunc.models._registry import create, list_models, register
from edgetrunc.models import seed_block as _seed_block  # noqa: F401  (registers)
from edgetrunc.models import tlunet as _tlunet  # noqa: F401  (registers)
from edgetrunc.models._filters import high_pass_bank

__all__ = ["create", "list_models", "register", "high_pass_bank"]
