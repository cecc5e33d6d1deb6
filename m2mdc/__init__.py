"""M2M-DC compression library: ``m2mdc.compress(model, train, val, budget_gmacs=...)`` compresses your own
module on your own data (m2mdc.api); the command-line tools are ``python -m m2mdc.compress`` and friends."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .api import Compressed, compress
    from .errors import UserError

__all__ = ["Compressed", "UserError", "compress"]


def __getattr__(name: str):
    # resolved on first use (PEP 562): importing the API eagerly costs every `import m2mdc.<module>` ~3.8 s
    # (python -X importtime: torch, torchvision, fvcore) and would make the package import its own modules
    if name in ("Compressed", "compress"):
        from . import api

        return getattr(api, name)
    if name == "UserError":
        from .errors import UserError

        return UserError
    raise AttributeError(f"module 'm2mdc' has no attribute {name!r}")
