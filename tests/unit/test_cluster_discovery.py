"""RdbmsDiscovery against a real SQLite file, and against a store that goes silent."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cluster_node.cluster import discovery as discovery_mod
from cluster_node.cluster.discovery import Peer, RdbmsDiscovery
from cluster_node.storage import open_storage


def member(db: Path, node: str, address: str, **kw) -> RdbmsDiscovery:
    return RdbmsDiscovery(lambda: open_storage(f"sqlite:///{db}"), "c", node, address, refresh_interval=1.0, **kw)


async def test_members_find_each_other_with_distinct_numbers(tmp_path):
    a, b = member(tmp_path / "d.db", "a", "h:1"), member(tmp_path / "d.db", "b", "h:2")
    try:
        await a.refresh()
        peers = await b.refresh()
        assert sorted(peers, key=lambda p: p.node) == [Peer("a", "h:1", 1), Peer("b", "h:2", 2)]
        assert (a.node_num, b.node_num) == (1, 2)
    finally:
        await a.close()
        await b.close()


async def test_a_second_process_with_a_live_members_name_does_not_take_its_row(tmp_path, monkeypatch, caplog):
    now = [1_000_000.0]
    monkeypatch.setattr(discovery_mod.time, "time", lambda: now[0])
    original, double = member(tmp_path / "d.db", "a", "h:1"), member(tmp_path / "d.db", "a", "h:9")
    try:
        await original.refresh()
        now[0] += 1
        assert await double.refresh() == [Peer("a", "h:1", 1)]
        assert double.node_num is None
        assert "duplicate node name?" in caplog.text
        now[0] += 1
        await original.refresh()
        assert await double.refresh() == [Peer("a", "h:1", 1)]  # still the original's address
        now[0] += 10  # the original stopped refreshing: its row is stale, the name is free
        assert await double.refresh() == [Peer("a", "h:9", 1)]
        assert double.node_num == 1
    finally:
        await original.close()
        await double.close()


class SilentStore:
    """A database that stops answering, and whose driver will not give up a query it started
    (cleanup shielded until the server answers, as asyncpg's pool release is)."""

    opened = 0

    async def open(self) -> None:
        SilentStore.opened += 1

    async def close(self) -> None:
        await asyncio.shield(asyncio.Event().wait())

    async def discovery_register(self, cluster: str, node: str, address: str, now: int) -> int:
        return 1

    async def discovery_nodes(self, cluster: str) -> list[tuple[str, str, int, int]]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.Event().wait())  # "waiting for the cancel to be acknowledged"
        return []

    async def discovery_cleanup(self, cluster: str, older_than: int) -> int:
        return 0


async def test_a_silent_database_fails_the_refresh_in_time_and_is_reopened():
    SilentStore.opened = 0
    d = RdbmsDiscovery(SilentStore, "c", "a", "h:1", timeout=0.3)
    for attempt in (1, 2):
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="no answer from the discovery database"):
            await d.refresh()
        assert time.monotonic() - started < 1.0
        assert SilentStore.opened == attempt  # a fresh store for each attempt
    d.store = SilentStore()  # closing hangs too: the member's stop must not
    started = time.monotonic()
    await d.close()
    assert time.monotonic() - started < 1.0 and d.store is None


class SlowStore:
    """A store whose registration is interrupted mid-transaction and needs a moment to roll back."""

    def __init__(self) -> None:
        self.closed = False
        self.rolled_back_open = None

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True

    async def discovery_register(self, cluster: str, node: str, address: str, now: int) -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # ROLLBACK
            self.rolled_back_open = not self.closed
            raise
        return 1

    async def discovery_nodes(self, cluster: str) -> list[tuple[str, str, int, int]]:
        return []

    async def discovery_cleanup(self, cluster: str, older_than: int) -> int:
        return 0


async def test_stopping_mid_refresh_lets_the_transaction_end_before_closing():
    store = SlowStore()
    d = RdbmsDiscovery(lambda: store, "c", "a", "h:1")
    loop_task = asyncio.ensure_future(d.refresh())  # the member's discovery loop
    while d.store is None:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)
    loop_task.cancel()  # the member stops...
    with pytest.raises(asyncio.CancelledError):
        await loop_task
    await d.close()  # ...then closes discovery
    assert store.rolled_back_open is True and store.closed
