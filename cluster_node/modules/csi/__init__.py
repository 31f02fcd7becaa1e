"""csi module (XEP-0352 Client State Indication)."""

from .module import Csi

__all__ = ["Csi"]
