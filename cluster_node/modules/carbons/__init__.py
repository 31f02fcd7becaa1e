"""carbons module (XEP-0280 Message Carbons)."""

from .module import Carbons

__all__ = ["Carbons"]
