"""register module."""

from .module import Register

__all__ = ["Register"]
