"""time module."""

from .module import EntityTime

__all__ = ["EntityTime"]
