"""The session table: which full JIDs are online, on which member, with what presence summary.

The table holds plain records keyed by full JID; it is what the cluster replicates (each record
names the member that owns it), and what the gateway publishes.  The live connection objects stay
in :class:`LocalSessions`, on the member that holds them.
"""

from __future__ import annotations

import itertools
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol

from ..cluster.table import Op, Record, ReplicatedTable
from ..xmpp.jid import Jid
from ..xmpp.stanza import Stanza

__all__ = ["SessionRecord", "SessionTable", "LocalSession", "LocalSessions", "Change"]

# Most sessions have no module flags: they share this one empty mapping (a dict each is 64 bytes,
# and a region's table holds every session of the region on every member).
NO_FLAGS: Mapping[str, str] = MappingProxyType({})


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
    flags: Mapping[str, str] = field(default_factory=lambda: NO_FLAGS)

    def with_presence(self, *, available: bool, priority: int) -> SessionRecord:
        return replace(self, available=available, priority=priority)

    def with_flag(self, key: str, value: str | None) -> SessionRecord:
        """A copy with module flag ``key`` set (``None`` removes it)."""
        flags = {k: v for k, v in self.flags.items() if k != key}
        if value is not None:
            flags[key] = value
        return replace(self, flags=flags or NO_FLAGS)


    def to_value(self) -> dict[str, Any]:
        value = {"node": self.node, "sid": self.sid, "created": self.created, "priority": self.priority,
                 "available": self.available, "interested": self.interested}  # the keys of _ALWAYS
        if self.prev:
            value["prev"] = self.prev
        if self.flags:
            value["flags"] = dict(self.flags)
        return value

    @classmethod
    def from_table(cls, record: Record) -> SessionRecord:
        v = record.value
        if isinstance(v, SessionValue):  # held by the table: parsed when it came in
            return v.session
        flags = v.get("flags")
        # The member's name is shared by every record it owns: one string, not one per session.
        return cls(_key_jid(record.key), sys.intern(str(v["node"])), str(v["sid"]), float(v["created"]),
                   int(v.get("priority", 0)), bool(v.get("available")), bool(v.get("interested")),
                   str(v.get("prev", "")),
                   {str(k): str(x) for k, x in flags.items()} if isinstance(flags, dict) and flags else NO_FLAGS)


_ALWAYS = ("node", "sid", "created", "priority", "available", "interested")  # to_value's keys, always there


class SessionValue(Mapping[str, Any]):
    """The value of a session's table record, read from its :class:`SessionRecord`: the table
    keeps this instead of the dict the record arrived as (48 bytes against ~270, a region's
    table holding every session on every member).  Reads (a conflict, a dump) build the dict."""

    __slots__ = ("session",)

    def __init__(self, session: SessionRecord) -> None:
        self.session = session

    def __getitem__(self, key: str) -> Any:
        s = self.session
        if key in _ALWAYS:
            return getattr(s, key)
        if key == "prev" and s.prev:
            return s.prev
        if key == "flags" and s.flags:
            return dict(s.flags)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        yield from _ALWAYS
        if self.session.prev:
            yield "prev"
        if self.session.flags:
            yield "flags"

    def __len__(self) -> int:
        return len(_ALWAYS) + bool(self.session.prev) + bool(self.session.flags)

    def __repr__(self) -> str:
        return f"SessionValue({self.session!r})"

    def to_value(self) -> dict[str, Any]:
        """The dict a dump sends (faster than ``dict(view)``)."""
        return self.session.to_value()


def keep_session(record: Record) -> Record:
    """What the sessions table holds of a record: its value as a view of the parsed session."""
    return Record(record.key, SessionValue(SessionRecord.from_table(record)), sys.intern(record.owner))


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
    return Jid(local, sys.intern(domain), resource)  # a few domains, a million sessions: shared


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
        self.replicated = ReplicatedTable("sessions", node, on_conflict=newest_session, handover=takes_over,
                                          keep=keep_session)
        self.replicated.listeners.append(self._changed)
        self._by_full: dict[Jid, SessionRecord] = {}
        # bare JID → its one session's record, or a dict resource → record when it has several
        # (most accounts have one resource online: a dict each would be ~230 bytes a session).
        self._by_bare: dict[Jid, SessionRecord | dict[str, SessionRecord]] = {}
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
            held = self._by_bare.get(bare)
            if held is None:
                self._by_bare[bare] = record
            elif isinstance(held, SessionRecord):
                self._by_bare[bare] = record if held.jid == jid else {held.jid.resource or "": held, resource: record}
            else:
                held[resource] = record
        else:
            if self._by_full.get(jid) == record:
                del self._by_full[jid]
            held = self._by_bare.get(bare)
            if isinstance(held, SessionRecord):
                if held == record:
                    del self._by_bare[bare]
            elif held is not None and held.get(resource) == record:
                del held[resource]
                if len(held) == 1:
                    self._by_bare[bare] = next(iter(held.values()))
        for listener in self._listeners:
            listener((kind, record))

    def lookup(self, jid: Jid) -> SessionRecord | None:
        return self._by_full.get(jid)

    def resources(self, bare: Jid) -> list[SessionRecord]:
        found = self._by_bare.get(bare)
        if found is None:
            return []
        return [found] if isinstance(found, SessionRecord) else list(found.values())

    def any_flagged(self, bare: Jid, flag: str) -> bool:
        """Whether a resource of ``bare`` has module flag ``flag`` (asked for every message by
        carbons: no list built, as :meth:`resources` does)."""
        found = self._by_bare.get(bare)
        if found is None:
            return False
        if isinstance(found, SessionRecord):
            return bool(found.flags.get(flag))
        return any(r.flags.get(flag) for r in found.values())

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
