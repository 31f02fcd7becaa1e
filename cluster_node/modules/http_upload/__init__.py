"""http_upload module."""

from .module import HttpUpload

__all__ = ["HttpUpload"]
