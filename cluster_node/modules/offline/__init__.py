"""offline module."""

from .module import Offline

__all__ = ["Offline"]
