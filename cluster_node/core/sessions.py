"""The session table: which full JIDs are online, on which member, with what presence summary.

The table holds plain records keyed by full JID; it is what the cluster replicates (each record
names the member that owns it), and what the gateway publishes.  The live connection objects stay
in :class:`LocalSessions`, on the member that holds them.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..cluster.table import Op, Record, ReplicatedTable
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
    prev: str = ""  # the session id this one took over (XEP-0198 resumption on another member)
    # Modules' flags that every member and region must see (XEP-0198 "sm": "on"/"detached"; later
    # carbons, CSI…): short strings, replicated with the record.
    flags: Mapping[str, str] = field(default_factory=dict)

    def with_presence(self, *, available: bool, priority: int) -> SessionRecord:
        return replace(self, available=available, priority=priority)

    def with_flag(self, key: str, value: str | None) -> SessionRecord:
        """A copy with module flag ``key`` set (``None`` removes it)."""
        flags = {k: v for k, v in self.flags.items() if k != key}
        if value is not None:
            flags[key] = value
        return replace(self, flags=flags)


    def to_value(self) -> dict[str, Any]:
        value = {"node": self.node, "sid": self.sid, "created": self.created, "priority": self.priority,
                 "available": self.available, "interested": self.interested}
        if self.prev:
            value["prev"] = self.prev
        if self.flags:
            value["flags"] = dict(self.flags)
        return value

    @classmethod
    def from_table(cls, record: Record) -> SessionRecord:
        v = record.value
        flags = v.get("flags")
        return cls(_key_jid(record.key), str(v["node"]), str(v["sid"]), float(v["created"]),
                   int(v.get("priority", 0)), bool(v.get("available")), bool(v.get("interested")),
                   str(v.get("prev", "")),
                   {str(k): str(x) for k, x in flags.items()} if isinstance(flags, dict) else {})


# A full JID already in canonical form and plain ASCII, as ``str(jid)`` writes the keys of the
# table: localpart of [a-z0-9._+-], domain of LDH labels (1-63 each), printable ASCII resource not
# starting or ending with a space.  Jid.parse returns exactly these three parts for such a string
# (its ASCII fast paths apply and nothing changes), but through the PRECIS checks and an LRU cache
# that a 100k-session merge only thrashes: ~7 µs a key against ~1 µs here.  Anything else (non-ASCII,
# IP literals, a trailing dot, over-long parts) goes through Jid.parse.
_CANONICAL_FULL_JID = re.compile(r"([a-z0-9._+\-]{1,1023})"  # localpart
                                 r"@((?:[a-z0-9\-]{1,63}\.)*[a-z0-9\-]{1,63})"  # domainpart
                                 r"/([\x21-\x7e](?:[\x21-\x7e ]{0,1021}[\x21-\x7e])?)")  # resourcepart


def _key_jid(key: str) -> Jid:
    """The JID of a session table key (a full JID, written by its owner as ``str(jid)``)."""
    m = _CANONICAL_FULL_JID.fullmatch(key)
    if m is None or len(m.group(2)) > 1023:
        return Jid.parse(key)
    local, domain, resource = m.groups()
    return Jid(local, domain, resource)


Change = tuple[str, SessionRecord]  # ("insert" | "delete", record)


def newest_session(ours: Record, theirs: Record) -> Record:
    """Sessions conflict handler: the newer login keeps the full JID (RFC 6120 §7.7.2.2 kick-old)."""
    a, b = (ours.value["created"], ours.owner), (theirs.value["created"], theirs.owner)
    return ours if a >= b else theirs


def takes_over(current: Record, incoming: Record) -> bool:
    """A session resumed on another member names the one it replaces: not a conflict."""
    prev = incoming.value.get("prev")
    return bool(prev) and prev == current.value.get("sid")


class SessionTable:
    """Full JID → record, replicated to every cluster member, with a bare-JID index for
    RFC 6121 bare-JID delivery.  Local writes return the op the cluster broadcasts."""

    def __init__(self, node: str = "local") -> None:
        self.replicated = ReplicatedTable("sessions", node, on_conflict=newest_session, handover=takes_over)
        self.replicated.listeners.append(self._changed)
        self._by_full: dict[Jid, SessionRecord] = {}
        self._by_bare: dict[Jid, dict[str, SessionRecord]] = {}
        self._listeners: list[Callable[[Change], None]] = []
        self.on_local_op: Callable[[Op], None] | None = None

    def subscribe(self, listener: Callable[[Change], None]) -> None:
        """Call ``listener`` after every insert/delete, local or replicated (the gateway publishes here)."""
        self._listeners.append(listener)

    def insert(self, record: SessionRecord) -> None:
        op = self.replicated.insert(str(record.jid), record.to_value())
        if self.on_local_op is not None:
            self.on_local_op(op)

    def delete(self, jid: Jid, sid: str | None = None) -> SessionRecord | None:
        """Remove ``jid``'s record (only if it is still session ``sid``, when given)."""
        record = self._by_full.get(jid)
        if record is None or (sid is not None and record.sid != sid):
            return None
        op = self.replicated.delete(str(jid))
        if op is not None and self.on_local_op is not None:
            self.on_local_op(op)
        return record

    def _changed(self, change: tuple[str, Record]) -> None:
        kind, raw = change
        record = SessionRecord.from_table(raw)
        jid = record.jid
        bare = jid.bare
        resource = jid.resource or ""
        if kind == "insert":
            self._by_full[jid] = record
            resources = self._by_bare.get(bare)
            if resources is None:
                self._by_bare[bare] = {resource: record}
            else:
                resources[resource] = record
        else:
            if self._by_full.get(jid) == record:
                del self._by_full[jid]
            resources = self._by_bare.get(bare)
            if resources is not None and resources.get(resource) == record:
                del resources[resource]
                if not resources:
                    del self._by_bare[bare]
        for listener in self._listeners:
            listener((kind, record))

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
    """A session held by this member: a client connection, or what stands for one (a session
    detached by XEP-0198, waiting for its client)."""

    record: SessionRecord
    last_presence: Stanza | None
    directed: set[str]  # full JIDs that got directed presence (RFC 6121 §4.6)
    ext: dict[str, Any]  # per-session state of modules, by module name

    def deliver(self, stanza: Stanza) -> None:
        """Write ``stanza`` to the client (session-level handling, e.g. probes, happens before)."""

    def kick(self, condition: str, text: str | None = None, *, reason: str = "kicked") -> None:
        """Close the stream with a stream error (e.g. ``conflict``)."""

    def set_record(self, record: SessionRecord) -> None:
        """The session's record changed (presence, roster interest): keep the table in step."""


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
