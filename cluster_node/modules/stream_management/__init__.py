"""XEP-0198 Stream Management."""

from .module import SmSettings, StreamManagement

__all__ = ["StreamManagement", "SmSettings"]
