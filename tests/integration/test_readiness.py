"""``/ready`` is what a load balancer (Kubernetes' readiness probe) may trust: a member of a region
is ready once its listeners are open, storage answers, and it has joined every *live* member of
the region (linked, their session tables merged) — rows of members that stopped refreshing their
discovery row are not waited for; after a grace period a member whose live peers stay out of
reach is ready anyway; a member whose database stops answering is not ready until it is back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from cluster_node.storage import open_storage
from tests.helpers.cluster import cluster_node, system_info
from tests.helpers.node import NodeProcess
from tests.helpers.ports import free_port
from tests.helpers.postgres import PostgresServer, pg_bindir
from tests.helpers.topologies import check_logs


async def ready(node: NodeProcess) -> tuple[int, dict[str, Any]]:
    status, body = await node.http("GET", f"{node.admin_url}/ready")
    return status, body


async def test_ready_waits_for_every_live_member_and_not_for_stale_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'region.db'}"
    # A member that refreshes its row (so it counts as live) but never answers on its address.
    ghost = open_storage(url)
    await ghost.open()
    address = f"127.0.0.1:{free_port()}"
    alive = True

    async def refresh_ghost() -> None:
        while alive:
            await ghost.discovery_register("meridian", "zz-ghost", address, int(time.time()))
            await asyncio.sleep(0.3)

    refresher = asyncio.create_task(refresh_ghost())
    await asyncio.sleep(0.1)
    # Grace (3 refreshes + ping_timeout) long enough to see the wait: ~12 s.
    a = cluster_node(tmp_path, "a", url, ping_timeout=11.0)
    b = cluster_node(tmp_path, "b", url, ping_timeout=11.0)
    try:
        await asyncio.to_thread(a.start)
        status, body = await ready(a)
        assert status == 503 and body["checks"] == {"listeners": True, "storage": True, "cluster": False}, body
        # The ghost stops refreshing its row: once the row is stale, nothing is waited for.
        alive = False
        await refresher
        t = time.monotonic()
        while (await ready(a))[0] != 200:
            assert time.monotonic() - t < 8, await ready(a)
            await asyncio.sleep(0.1)
        # A second member: ready only once joined to the first (and its sessions merged).
        await asyncio.to_thread(b.start)
        while True:
            status, body = await ready(b)
            if status == 200:
                break
            assert body["checks"]["cluster"] is False and body["checks"]["storage"] is True, body
            await asyncio.sleep(0.05)
        assert "a" in (await asyncio.to_thread(system_info, b))["joinedNodes"]
    finally:
        alive = False
        refresher.cancel()
        await ghost.close()
        for n in (b, a):
            n.stop()
    check_logs(a, b)


async def test_a_node_whose_database_stops_answering_is_not_ready_until_it_is_back(tmp_path: Path) -> None:
    """Storage is part of readiness: with its PostgreSQL down, a node answers 503 with
    ``storage: false`` (in the probe's bounded time, not a hang) and is ready again once the
    database is back — nothing restarted on the node."""
    if pg_bindir() is None:
        pytest.skip("PostgreSQL is not installed")
    pg = PostgresServer().start()
    try:
        node = NodeProcess(tmp_path / "n", name="pgready", storage_url=pg.url())
        await asyncio.to_thread(node.start)
        try:
            status, body = await ready(node)
            assert status == 200 and body["checks"]["storage"] is True, body
            await asyncio.to_thread(pg.kill)
            t = time.monotonic()
            while True:
                status, body = await ready(node)
                if status == 503:
                    break
                assert time.monotonic() - t < 20, body
                await asyncio.sleep(0.2)
            assert body["checks"] == {"listeners": True, "storage": False}, body
            await asyncio.to_thread(pg.restart)
            t = time.monotonic()
            while (await ready(node))[0] != 200:
                assert time.monotonic() - t < 30, await ready(node)
                await asyncio.sleep(0.2)
        finally:
            node.stop()
    finally:
        pg.stop()
