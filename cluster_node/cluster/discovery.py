"""How members of a cluster find each other (MongooseIM's ``cets_discovery`` backends).

``rdbms``: each member upserts its row in ``discovery_nodes`` every few seconds, reads the rows
of its cluster and deletes rows not refreshed for ``last_seen_threshold``.  ``file``: a static
list.  Either way the result is a list of :class:`Peer`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Peer", "Discovery", "RdbmsDiscovery", "FileDiscovery", "parse_peer"]


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


class _DiscoveryStore(Protocol):
    async def discovery_register(self, cluster: str, node: str, address: str, now: int) -> int: ...
    async def discovery_nodes(self, cluster: str) -> list[tuple[str, str, int, int]]: ...
    async def discovery_cleanup(self, cluster: str, older_than: int) -> int: ...


class RdbmsDiscovery:
    def __init__(self, store: _DiscoveryStore, cluster: str, node: str, address: str,
                 last_seen_threshold: float = 3600.0) -> None:
        self.store = store
        self.cluster = cluster
        self.node = node
        self.address = address
        self.last_seen_threshold = last_seen_threshold
        self._num: int | None = None

    @property
    def node_num(self) -> int | None:
        return self._num

    async def refresh(self) -> list[Peer]:
        now = int(time.time())
        self._num = await self.store.discovery_register(self.cluster, self.node, self.address, now)
        await self.store.discovery_cleanup(self.cluster, now - int(self.last_seen_threshold))
        return [Peer(n, a, num) for n, a, num, _ in await self.store.discovery_nodes(self.cluster)]


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
