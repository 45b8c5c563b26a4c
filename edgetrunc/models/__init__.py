"""Model registry and the registered models (`seed_block`, `tlunet`, `yenet`).

`create(name, **kwargs)` builds a registered model; `list_models()` lists the names;
`@register` adds a builder. Importing the package imports no Keras: the built-in builders
register when the registry is first asked.
"""

from edgetrunc.models._registry import create, list_models, register
from edgetrunc.models._filters import high_pass_bank

__all__ = ["create", "list_models", "register", "high_pass_bank"]
