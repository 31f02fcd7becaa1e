"""last module."""

from .module import LastActivity

__all__ = ["LastActivity"]
