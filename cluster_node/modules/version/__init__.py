"""version module."""

from .module import Version

__all__ = ["Version"]
