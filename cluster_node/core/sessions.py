"""The session table: which full JIDs are online, on which member, with what presence summary.

The table holds plain records keyed by full JID; it is what the cluster replicates (each record
names the member that owns it), and what the gateway publishes.  The live connection objects stay
in :class:`LocalSessions`, on the member that holds them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from ..xmpp.jid import Jid
from ..xmpp.stanza import Stanza

__all__ = ["SessionRecord", "SessionTable", "LocalSession", "LocalSessions", "Change"]


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One bound resource.  ``node`` owns it; ``created`` orders duplicates (newest wins)."""

    jid: Jid
    node: str
    sid: str
    created: float
    priority: int = 0
    available: bool = False  # has sent available presence (RFC 6121 §4.2)
    interested: bool = False  # has requested the roster (RFC 6121 §2.1.6: gets roster pushes)

    def with_presence(self, *, available: bool, priority: int) -> SessionRecord:
        return replace(self, available=available, priority=priority)


Change = tuple[str, SessionRecord]  # ("insert" | "delete", record)


class SessionTable:
    """Full JID → record, with a bare-JID index for RFC 6121 bare-JID delivery."""

    def __init__(self) -> None:
        self._by_full: dict[Jid, SessionRecord] = {}
        self._by_bare: dict[Jid, dict[str, SessionRecord]] = {}
        self._listeners: list[Callable[[Change], None]] = []

    def subscribe(self, listener: Callable[[Change], None]) -> None:
        """Call ``listener`` after every insert/delete (the gateway publishes from here)."""
        self._listeners.append(listener)

    def insert(self, record: SessionRecord) -> None:
        self._by_full[record.jid] = record
        self._by_bare.setdefault(record.jid.bare, {})[record.jid.resource or ""] = record
        for listener in self._listeners:
            listener(("insert", record))

    def delete(self, jid: Jid, sid: str | None = None) -> SessionRecord | None:
        """Remove ``jid``'s record (only if it is still session ``sid``, when given)."""
        record = self._by_full.get(jid)
        if record is None or (sid is not None and record.sid != sid):
            return None
        del self._by_full[jid]
        resources = self._by_bare.get(jid.bare)
        if resources is not None:
            resources.pop(jid.resource or "", None)
            if not resources:
                del self._by_bare[jid.bare]
        for listener in self._listeners:
            listener(("delete", record))
        return record

    def lookup(self, jid: Jid) -> SessionRecord | None:
        return self._by_full.get(jid)

    def resources(self, bare: Jid) -> list[SessionRecord]:
        found = self._by_bare.get(bare)
        return list(found.values()) if found else []

    def match(self, predicate: Callable[[SessionRecord], bool]) -> list[SessionRecord]:
        return [r for r in self._by_full.values() if predicate(r)]

    def __len__(self) -> int:
        return len(self._by_full)

    def __iter__(self) -> Iterator[SessionRecord]:
        return iter(list(self._by_full.values()))


class LocalSession(Protocol):
    """What the router needs of a connection held by this member."""

    record: SessionRecord

    def deliver(self, stanza: Stanza) -> None:
        """Write ``stanza`` to the client (session-level handling, e.g. probes, happens before)."""

    def kick(self, condition: str, text: str | None = None) -> None:
        """Close the stream with a stream error (e.g. ``conflict``)."""


class LocalSessions:
    """The live sessions of this member, by session id; also hands out session ids."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._incarnation = f"{int(time.time() * 1000):x}"
        self._counter = itertools.count(1)
        self._sessions: dict[str, LocalSession] = {}

    def new_sid(self) -> str:
        return f"{self.node}.{self._incarnation}.{next(self._counter)}"

    def add(self, sid: str, session: LocalSession) -> None:
        self._sessions[sid] = session

    def remove(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    def get(self, sid: str) -> LocalSession | None:
        return self._sessions.get(sid)

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[LocalSession]:
        return iter(list(self._sessions.values()))
