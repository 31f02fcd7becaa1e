"""blocking module (XEP-0191 Blocking Command)."""

from .module import Blocking

__all__ = ["Blocking"]
