"""presence module."""

from .module import Presence

__all__ = ["Presence"]
