"""pep module (XEP-0163 Personal Eventing Protocol on a XEP-0060 subset; XEP-0223, XEP-0402 with
XEP-0048's PEP node, XEP-0084)."""

from .module import Pep

__all__ = ["Pep"]
