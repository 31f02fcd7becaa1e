"""How members of a cluster find each other (MongooseIM's ``cets_discovery`` backends).

``rdbms``: each member upserts its row in ``discovery_nodes`` every few seconds, reads the rows
of its cluster and deletes rows not refreshed for ``last_seen_threshold``.  ``file``: a static
list.  Either way the result is a list of :class:`Peer`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Peer", "Discovery", "RdbmsDiscovery", "FileDiscovery", "parse_peer"]

log = logging.getLogger("meridian.cluster")


@dataclass(frozen=True)
class Peer:
    node: str
    address: str  # host:port of its cluster listener
    node_num: int | None = None


class Discovery(Protocol):
    async def refresh(self) -> list[Peer]:
        """Register ourselves (where the backend can) and return every known member, us included."""
    @property
    def node_num(self) -> int | None: ...

    async def close(self) -> None: ...


class _DiscoveryStore(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def discovery_register(self, cluster: str, node: str, address: str, now: int) -> int: ...
    async def discovery_nodes(self, cluster: str) -> list[tuple[str, str, int, int]]: ...
    async def discovery_cleanup(self, cluster: str, older_than: int) -> int: ...


class RdbmsDiscovery:
    """The region's database as the meeting point.  The store is opened on first use and reopened
    after a failure, so a database that is down when the member starts (or later) only delays
    discovery: the links already up keep working meanwhile."""

    def __init__(self, open_store: Callable[[], _DiscoveryStore], cluster: str, node: str, address: str,
                 last_seen_threshold: float = 3600.0, refresh_interval: float = 5.0) -> None:
        self.open_store = open_store
        self.store: _DiscoveryStore | None = None
        self.cluster = cluster
        self.node = node
        self.address = address
        self.last_seen_threshold = last_seen_threshold
        self.refresh_interval = refresh_interval
        self._num: int | None = None
        self._warned = False

    @property
    def node_num(self) -> int | None:
        return self._num

    async def refresh(self) -> list[Peer]:
        if self.store is None:
            store = self.open_store()
            await store.open()
            self.store = store
        try:
            return await self._refresh(self.store)
        except Exception:
            store, self.store = self.store, None
            with contextlib.suppress(Exception):
                await store.close()
            raise

    async def _refresh(self, store: _DiscoveryStore) -> list[Peer]:
        now = int(time.time())
        if self._num is None:  # first registration: is our name already taken by a live member?
            rows = await store.discovery_nodes(self.cluster)
            # Timestamps are whole seconds: "live" is refreshed within 3 intervals, and at least 2 s.
            live = max(3 * self.refresh_interval, 2.0)
            taken = [(address, now - updated) for node, address, _, updated in rows
                     if node == self.node and address != self.address and now - updated < live]
            if taken:
                # Overwriting the row would send the others to us instead of to the live member;
                # read only until its row goes stale (it stopped), then take the name over.
                address, age = taken[0]
                if not self._warned:
                    log.warning("node name %r is registered by another live member at %s (updated %ds ago): "
                                "duplicate node name? Not registering while it refreshes its row; its "
                                "members' links will refuse ours", self.node, address, age)
                    self._warned = True
                await store.discovery_cleanup(self.cluster, now - int(self.last_seen_threshold))
                return [Peer(n, a, num) for n, a, num, _ in rows]
        self._num = await store.discovery_register(self.cluster, self.node, self.address, now)
        await store.discovery_cleanup(self.cluster, now - int(self.last_seen_threshold))
        return [Peer(n, a, num) for n, a, num, _ in await store.discovery_nodes(self.cluster)]

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None


def parse_peer(spec: str) -> Peer:
    """``name@host:port``."""
    name, at, address = spec.partition("@")
    if not at or not name or ":" not in address:
        raise ValueError(f"{spec!r}: expected name@host:port")
    return Peer(name, address)


class FileDiscovery:
    def __init__(self, peers: list[Peer], node: str) -> None:
        self.peers = peers
        nums = {p.node: i + 1 for i, p in enumerate(sorted(peers, key=lambda p: p.node))}
        self._num = nums.get(node)

    @property
    def node_num(self) -> int | None:
        return self._num

    async def refresh(self) -> list[Peer]:
        return list(self.peers)

    async def close(self) -> None:
        pass
