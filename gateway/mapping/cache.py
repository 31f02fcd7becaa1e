"""A bounded TTL + LRU cache in front of the mapping store, with no I/O and time as an argument.

Why: every relayed stanza needs the destination's region, and asking Redis (even a local
replica) per stanza would put a round trip on the hot path.  Entries are short-lived because the
mapping changes (logins, region moves); a stale entry costs one misrouted stanza, which the relay
re-resolves after :meth:`MappingCache.invalidate`.  JIDs move often, so they live briefly;
routed domains (components, MUC services) rarely move, so they may live longer.  Misses can be
cached too (negative entries), so a flood of stanzas to an offline JID does not become a flood
of Redis reads — but briefly, so a fresh login is found soon.

Sans-IO like the protocol cores: ``now`` is passed in, so tests never sleep.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

__all__ = ["MappingCache", "Kind"]

V = TypeVar("V")
Kind = Literal["jid", "domain"]


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V | None  # None: a cached miss
    expires_at: float


class MappingCache(Generic[V]):
    """Key -> value (or a cached miss), each with a deadline; at most ``max_size`` entries, the
    least recently used evicted first.

    ``get`` answers ``(hit, value)``: ``(True, None)`` is a cached miss ("not mapped, do not ask"),
    ``(False, None)`` means "ask the store".  ``miss_lifetime=None`` disables negative caching.
    """

    def __init__(self, max_size: int = 100_000, *, jid_lifetime: float = 5.0, domain_lifetime: float = 60.0,
                 miss_lifetime: float | None = None) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if jid_lifetime <= 0 or domain_lifetime <= 0 or (miss_lifetime is not None and miss_lifetime <= 0):
            raise ValueError("lifetimes must be positive")
        self.max_size = max_size
        self.lifetimes: dict[Kind, float] = {"jid": jid_lifetime, "domain": domain_lifetime}
        self.miss_lifetime = miss_lifetime
        self._entries: OrderedDict[Hashable, _Entry[V]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: Hashable, now: float) -> tuple[bool, V | None]:
        """The cached answer for ``key`` at time ``now``; a hit makes it most recently used."""
        entry = self._entries.get(key)
        if entry is None or entry.expires_at <= now:
            self.misses += 1  # an expired entry stays (until purged or evicted) for stale()
            return False, None
        self._entries.move_to_end(key)
        self.hits += 1
        return True, entry.value

    def peek(self, key: Hashable, now: float) -> tuple[bool, V | None]:
        """:meth:`get` for a caller that only looks (a shortcut it may skip): not counted, the
        entry's place in the LRU order unchanged."""
        entry = self._entries.get(key)
        if entry is None or entry.expires_at <= now:
            return False, None
        return True, entry.value

    def put(self, key: Hashable, value: V | None, now: float, *, kind: Kind = "jid") -> None:
        """Remember the store's answer; ``value=None`` records a miss (only if misses are cached,
        otherwise it just drops what was cached, so a stale positive answer cannot outlive it)."""
        if value is None:
            if self.miss_lifetime is None:
                self._entries.pop(key, None)
                return
            lifetime = self.miss_lifetime
        else:
            lifetime = self.lifetimes[kind]
        self._entries[key] = _Entry(value, now + lifetime)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)
            self.evictions += 1

    def stale(self, key: Hashable) -> V | None:
        """The last answer cached for ``key``, expired or not: what to go on while the store is
        unreachable (established conversations continue while Redis is down)."""
        entry = self._entries.get(key)
        return entry.value if entry is not None else None

    def invalidate(self, key: Hashable) -> bool:
        """Make the next lookup of ``key`` ask the store (the JID moved, or changed in another
        region); True if it was cached and live.  The answer itself stays for :meth:`stale`: if
        the store is unreachable at that next lookup (a failover just began), the last known
        region is a better guess than none, which would send the stanza to offline storage."""
        entry = self._entries.get(key)
        if entry is None or entry.expires_at == -math.inf:
            return False
        entry.expires_at = -math.inf
        return True

    def purge(self, now: float) -> int:
        """Drop every expired entry (a periodic sweep, skipped while the store is unreachable)."""
        dead = [k for k, e in self._entries.items() if e.expires_at <= now]
        for k in dead:
            del self._entries[k]
        return len(dead)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
