"""disco module."""

from .module import Disco

__all__ = ["Disco"]
