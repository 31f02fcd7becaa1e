"""private module."""

from .module import PrivateStorage

__all__ = ["PrivateStorage"]
