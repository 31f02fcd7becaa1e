"""vcard module."""

from .module import Vcard

__all__ = ["Vcard"]
