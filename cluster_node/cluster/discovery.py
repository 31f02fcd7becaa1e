"""How members of a cluster find each other (MongooseIM's ``cets_discovery`` backends).

``rdbms``: each member upserts its row in ``discovery_nodes`` every few seconds, reads the rows
of its cluster and deletes rows not refreshed for ``last_seen_threshold``.  ``file``: a static
list.  Either way the result is a list of :class:`Peer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

__all__ = ["Peer", "Discovery", "RdbmsDiscovery", "FileDiscovery", "parse_peer"]

log = logging.getLogger("meridian.cluster")

T = TypeVar("T")


@dataclass(frozen=True)
class Peer:
    node: str
    address: str  # host:port of its cluster listener
    node_num: int | None = None
    # When the member last refreshed its row (epoch s; None: a static list).  Rows of members that
    # died stay for ``last_seen_threshold``: readiness waits only for members whose row is fresh.
    updated: int | None = field(default=None, compare=False)


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
                 last_seen_threshold: float = 3600.0, refresh_interval: float = 5.0,
                 timeout: float | None = None) -> None:
        self.open_store = open_store
        # A database that stops answering (no error, just silence) must not hang discovery: the
        # member would go on reporting discoveryWorks while never refreshing its row.
        self.timeout = timeout if timeout is not None else max(5.0, 2 * refresh_interval)
        self.store: _DiscoveryStore | None = None
        self.cluster = cluster
        self.node = node
        self.address = address
        self.last_seen_threshold = last_seen_threshold
        self.refresh_interval = refresh_interval
        self._num: int | None = None
        self._warned = False
        self._work: asyncio.Future[list[Peer]] | None = None  # the refresh under way

    @property
    def node_num(self) -> int | None:
        return self._num

    async def refresh(self) -> list[Peer]:
        self._work = asyncio.ensure_future(self._open_and_refresh())
        try:
            return await _bounded(self._work, self.timeout,
                                  f"no answer from the discovery database in {self.timeout:.1f}s")
        except Exception:
            # Reopened on the next refresh.  The old one is closed once the abandoned work let go
            # of it, in the background: that may hang on the same silent connection.
            store, self.store = self.store, None
            _background(_retire(self._work, store, self.timeout))
            raise

    async def _open_and_refresh(self) -> list[Peer]:
        if self.store is None:
            self.store = self.open_store()  # kept before open(): a half-open store is closed on failure
            await self.store.open()
        return await self._refresh(self.store)

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
                return [Peer(n, a, num, updated) for n, a, num, updated in rows]
        self._num = await store.discovery_register(self.cluster, self.node, self.address, now)
        await store.discovery_cleanup(self.cluster, now - int(self.last_seen_threshold))
        return [Peer(n, a, num, updated) for n, a, num, updated in await store.discovery_nodes(self.cluster)]

    async def close(self) -> None:
        work, self._work = self._work, None
        store, self.store = self.store, None
        await _retire(work, store, min(self.timeout, 2.0))


async def _retire(work: asyncio.Future[Any] | None, store: _DiscoveryStore | None, grace: float) -> None:
    """Close ``store`` after ``work`` (a refresh, e.g. cancelled by the member's stop) is done with
    it — its rollback must not meet a closed database — each wait bounded by ``grace``."""
    if work is not None and not work.done():
        if isinstance(work, asyncio.Task) and not work.cancelling():
            work.cancel()  # once: a second cancel would interrupt its rollback
        await asyncio.wait({work}, timeout=grace)
    if store is not None:
        with contextlib.suppress(Exception):  # closing may hang on the same silent connection
            await _bounded(store.close(), grace, "closing the discovery database")


async def _bounded(coro: Coroutine[Any, Any, T] | asyncio.Future[T], timeout: float, what: str) -> T:
    """``await coro`` for at most ``timeout`` seconds, then abandon it (raising TimeoutError).

    Not ``asyncio.timeout``/``wait_for``: they wait for the cancelled work to finish, and a database
    driver may shield its cleanup until the server answers (asyncpg waits for the cancel request of
    the interrupted query to be acknowledged) — forever, when the database has gone silent."""
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        _background(task)
        raise
    if not done:
        task.cancel()
        _background(task)
        raise TimeoutError(what)
    return task.result()


_abandoned: set[asyncio.Future[Any]] = set()  # strong references until they finish


def _background(work: Coroutine[Any, Any, Any] | asyncio.Future[Any]) -> None:
    """Let ``work`` finish (or not) on its own; its outcome is ignored."""
    task = asyncio.ensure_future(work)
    _abandoned.add(task)
    task.add_done_callback(_forget)


def _forget(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" at exit


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
