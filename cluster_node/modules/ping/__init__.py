"""ping module."""

from .module import Ping

__all__ = ["Ping"]
