"""push module (XEP-0357 Push Notifications)."""

from .module import Push

__all__ = ["Push"]
