"""external_services module."""

from .module import ExternalServices

__all__ = ["ExternalServices"]
