"""contact_addresses module."""

from .module import ContactAddresses

__all__ = ["ContactAddresses"]
