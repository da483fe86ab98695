"""fltac_secure: privacy-hardened federated fine-tuning with FL-TAC.

Layers (imports only point downwards):
    cli -> roles (aggregator/, collaborator/) -> federation -> transport, pki, plan
    -> learning, privacy, data (pure: arrays in, arrays out, no sockets or files).

Using a trained adapter: ``fltac_secure.load_adapter(folder).predict(texts)``
(see ``fltac_secure.learning.classifier``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load_adapter"]

if TYPE_CHECKING:
    from fltac_secure.learning.classifier import load_adapter


def __getattr__(name: str) -> Any:
    """``fltac_secure.load_adapter`` without importing torch at ``import fltac_secure`` (PEP 562)."""
    if name == "load_adapter":
        from fltac_secure.learning.classifier import load_adapter

        return load_adapter
    raise AttributeError(f"module 'fltac_secure' has no attribute {name!r}")
