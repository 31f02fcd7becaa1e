"""roster module."""

from .module import Roster

__all__ = ["Roster"]
