"""fast module (XEP-0484 Fast Authentication Streamlining Tokens)."""

from .module import Fast

__all__ = ["Fast"]
