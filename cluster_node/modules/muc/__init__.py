"""XEP-0045 Multi-User Chat (with XEP-0249, XEP-0410, XEP-0421 and XEP-0359)."""

from .module import Muc, MucSettings

__all__ = ["Muc", "MucSettings"]
