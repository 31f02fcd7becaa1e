"""The receiver's memory of recently delivered stanza ids (sans-IO), so resends are delivered once.

A sender resends what a lost connection left unacked, and some of it may have arrived: the ACK was
lost with the connection.  The receiving gateway drops a stanza whose id it has delivered recently.
The window is bounded by count, so a peer cannot grow it; it must be larger than what a peer can
have in flight at once (connections × ``max_unacked``), which bounds what can ever be resent.
"""

from __future__ import annotations

from collections import deque

__all__ = ["RecentIds"]


class RecentIds:
    """A bounded set of the ``size`` most recently added ids (oldest forgotten first)."""

    def __init__(self, size: int = 65536) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._ids: set[str] = set()
        self._order: deque[str] = deque()

    def add(self, id: str) -> bool:
        """Remember ``id``; True when it is new, False when it was seen within the window."""
        if id in self._ids:
            return False
        self._ids.add(id)
        self._order.append(id)
        if len(self._order) > self.size:
            self._ids.discard(self._order.popleft())
        return True

    def __contains__(self, id: object) -> bool:
        return id in self._ids

    def __len__(self) -> int:
        return len(self._order)
