"""A replicated in-memory table, CETS-style, with owners (sans-IO).

Every record names its owner, the member that wrote it.  A member sends others only what it
owns (ops as they happen, a dump of its own records on join), so merging is exact: on a dump
from P, P's records here are replaced by the dump.  A record P deleted while partitioned from us
is simply absent from P's dump and is dropped — it cannot come back (CETS, which merges whole
tables without owners or tombstones, resurrects it).  When a member goes down, its records go.

The same key owned by two members (e.g. one full JID logged in on both sides of a partition) is
a conflict: a per-table handler picks the winner deterministically, so both sides agree without
talking, and the loser's owner is told (``on_lost``) so it can close its session.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["Record", "Op", "ReplicatedTable", "Change", "collector_paused"]

Value = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    value: Mapping[str, Any]  # a dict as it came; a read-only view where the table keeps a compact form
    owner: str


@dataclass(frozen=True, slots=True)
class Op:
    table: str
    op: str  # "insert" | "delete"
    key: str
    owner: str
    value: Value | None = None

    def to_json(self, seq: int) -> dict[str, Any]:
        d: dict[str, Any] = {"table": self.table, "seq": seq, "op": self.op, "key": self.key, "owner": self.owner}
        if self.value is not None:
            d["value"] = self.value
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Op:
        op, key, owner, table = d.get("op"), d.get("key"), d.get("owner"), d.get("table")
        value = d.get("value")
        if op not in ("insert", "delete") or not all(isinstance(x, str) for x in (key, owner, table)):
            raise ValueError("bad op")
        if op == "insert" and not isinstance(value, dict):
            raise ValueError("insert without a value")
        return cls(str(table), str(op), str(key), str(owner), value if op == "insert" else None)


Change = tuple[str, Record]  # ("insert" | "delete", record)
ConflictHandler = Callable[[Record, Record], Record]  # (ours, theirs) -> winner
Handover = Callable[[Record, Record], bool]  # (current, incoming) -> the incoming one takes over, planned
Keep = Callable[[Record], Record]  # what the table holds of a record it takes in


@contextmanager
def collector_paused(full_pass_after: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Hold Python's cyclic garbage collector during a bulk change (a large frame decoded, a dump
    merged).  Such a change allocates hundreds of thousands of objects without making a reference
    cycle, yet the collector runs every 700 allocations, and as the table grows it walks the whole
    heap again and again (a table of 100k sessions is half a million objects, ~0.1 s a full pass)
    to find nothing.  When ``full_pass_after()`` says the change was large, one full pass is made
    at the end, while the caller is still busy anyway, rather than later in the middle of some
    unrelated request (the collector would make it soon: it does when the long-lived objects grew
    by a quarter).  Does nothing when the collector is off (the process's choice is kept)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        if full_pass_after():
            gc.collect()


def _plain(value: Mapping[str, Any]) -> Value:
    """A record's value as a dict to send: a kept view builds it (its ``to_value``, when it has one)."""
    if isinstance(value, dict):
        return value
    to_value = getattr(value, "to_value", None)
    return to_value() if callable(to_value) else dict(value)


def keep_first_owner(a: Record, b: Record) -> Record:
    """Default conflict rule: the smaller owner name wins (deterministic on every member)."""
    return a if a.owner <= b.owner else b


class ReplicatedTable:
    def __init__(self, name: str, me: str, on_conflict: ConflictHandler = keep_first_owner,
                 handover: Handover | None = None, keep: Keep | None = None) -> None:
        self.name = name
        self.me = me
        self.on_conflict = on_conflict
        # A record another member writes to take a key over on purpose (a session resumed there):
        # it replaces the current one without being a conflict.
        self.handover = handover
        # A table of a million records (sessions) keeps each in its own compact form rather than
        # the dict it arrived as: ``keep`` returns the record to hold, its value a read-only
        # mapping of the same items (the listeners see the record held).
        self.keep = keep
        self._records: dict[str, Record] = {}
        self.listeners: list[Callable[[Change], None]] = []
        self.on_lost: Callable[[Record], None] | None = None  # a record of ours lost a conflict
        self._merging: dict[str, set[str]] = {}  # owner → keys of its dump taken so far (a dump in parts)
        self.conflicts = 0

    # -- reads -------------------------------------------------------------------------------

    def lookup(self, key: str) -> Record | None:
        return self._records.get(key)

    def match(self, predicate: Callable[[Record], bool]) -> list[Record]:
        return [r for r in self._records.values() if predicate(r)]

    def owned_by(self, owner: str) -> list[Record]:
        return [r for r in self._records.values() if r.owner == owner]

    def owners(self) -> set[str]:
        return {r.owner for r in self._records.values()}

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(list(self._records.values()))

    def memory(self) -> int:
        """A rough size in bytes (for tableInfo)."""
        return sum(len(r.key) + 64 + 48 * len(r.value) for r in self._records.values())

    # -- local writes: return the op to send to every member -----------------------------------

    def insert(self, key: str, value: Value) -> Op:
        self._put(Record(key, value, self.me))
        return Op(self.name, "insert", key, self.me, value)

    def delete(self, key: str) -> Op | None:
        record = self._records.get(key)
        if record is None or record.owner != self.me:
            return None
        self._remove(key)
        return Op(self.name, "delete", key, self.me)

    # -- remote writes ------------------------------------------------------------------------

    def apply(self, op: Op) -> None:
        """An op from its owner (a member only sends ops about its own records)."""
        if op.op == "delete":
            current = self._records.get(op.key)
            if current is not None and current.owner == op.owner:
                self._remove(op.key)
            return
        assert op.value is not None
        self._upsert(Record(op.key, op.value, op.owner))

    def merge(self, owner: str, records: list[Record], *, first: bool = True, last: bool = True) -> None:
        """``owner``'s dump of its own records: they replace what we held for it.  A large dump
        comes in parts (``first`` … ``last``); what the owner no longer has goes at the last."""
        incoming = {r.key: r for r in records if r.owner == owner}
        if first and last:  # a whole dump: drop the stale records before taking the new ones
            for stale in [r for r in self._records.values() if r.owner == owner and r.key not in incoming]:
                self._remove(stale.key)
            seen: set[str] = set()
        else:
            seen = self._merging[owner] = set() if first else self._merging.setdefault(owner, set())
            seen.update(incoming)
        taken = len(seen) or len(incoming)
        # A full pass after a dump that grew the table by a quarter (or more) and by many records.
        with collector_paused(lambda: last and taken >= 10_000 and 4 * taken >= len(self._records)):
            held = self._records
            for key, record in incoming.items():
                if key in held:
                    self._upsert(record)
                else:  # the usual case on a join: new to us, no conflict possible
                    if self.keep is not None:
                        record = self.keep(record)
                    held[key] = record
                    self._notify(("insert", record))
        if last and not first:
            del self._merging[owner]
            for stale in [r for r in self._records.values() if r.owner == owner and r.key not in seen]:
                self._remove(stale.key)

    def drop_owner(self, owner: str) -> list[Record]:
        """``owner`` is down: remove and return its records."""
        self._merging.pop(owner, None)  # a dump cut short: the next one starts afresh
        gone = self.owned_by(owner)
        for record in gone:
            self._remove(record.key)
        return gone

    def dump(self) -> list[list[Any]]:
        return [[r.key, _plain(r.value), r.owner] for r in self._records.values() if r.owner == self.me]

    # -- internals ----------------------------------------------------------------------------

    def _upsert(self, record: Record) -> None:
        current = self._records.get(record.key)
        if current is None or current.owner == record.owner:
            if current != record:
                self._put(record)
            return
        if self.handover is not None and self.handover(current, record):
            self._put(record)
            return
        self.conflicts += 1
        winner = self.on_conflict(current, record)
        loser = record if winner is current else current
        if winner is not current:
            self._put(winner)
        if loser.owner == self.me and self.on_lost is not None:
            self.on_lost(loser)

    def _put(self, record: Record) -> None:
        if self.keep is not None:
            record = self.keep(record)
        old = self._records.get(record.key)
        if old is not None and old.owner != record.owner:
            self._notify(("delete", old))
        self._records[record.key] = record
        self._notify(("insert", record))

    def _remove(self, key: str) -> None:
        record = self._records.pop(key)
        self._notify(("delete", record))

    def _notify(self, change: Change) -> None:
        for listener in self.listeners:
            listener(change)
