"""Why a stanza could not be relayed to another region, as XMPP stanza errors (RFC 6120 §8.3.3).

The relay catches :class:`LinkError` and answers the sender with ``exc.to_xml()``: the condition
and type are class attributes inherited from :mod:`cluster_node.xmpp.errors`, so there is one
mapping from link trouble to XMPP, here.
"""

from __future__ import annotations

from cluster_node.xmpp.errors import RemoteServerTimeout, StanzaError, StanzaResourceConstraint

__all__ = ["LinkError", "LinkDown", "QueueFull"]


class LinkError(StanzaError):
    """A stanza for another region was not accepted for relaying.  ``limit``: the
    ``[gdistrib.connections]`` setting whose bound refused it (the relay counts the refusal by
    it), empty when none did (a region without endpoints, a shutdown)."""

    def __init__(self, text: str | None = None, *, limit: str = "") -> None:
        super().__init__(text)
        self.limit = limit


class LinkDown(LinkError, RemoteServerTimeout):
    """No live connection to the region, and none came up within the short wait (remote-server-timeout)."""


class QueueFull(LinkError, StanzaResourceConstraint):
    """The region's bounded queue is full: the sender is told to wait rather than the queue growing."""
