"""XEP-0313 Message Archive Management."""

from .module import Mam, MamSettings

__all__ = ["Mam", "MamSettings"]
