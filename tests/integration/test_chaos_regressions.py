"""Bugs the chaos suite (``benchmarks/chaos.py``) found under load, each reproduced on its own.

- **A region with two gateways advertised one at a time.**  Each gateway wrote the region's
  endpoint list in Redis with only its own endpoint, so the list flipped every announce interval;
  the other regions closed their links to the gateway just dropped from it and resent what was in
  flight through the other one, which delivered it a second time.
- **A member stopping while clients resume the sessions it holds.**  Its hand-over of a detached
  session to another member and the takeover asked by the member the client resumed on both went
  ahead: two members held the session, one copy was closed as a cluster conflict, and the client's
  next resume failed on a stale count (messages lost and delivered twice).
- **A stopping gateway dropped what it had accepted**: the stanzas waiting in its per-conversation
  queues were cancelled (:meth:`gateway.ordering.PairQueues.drain` now lets them run first).
- **Lookups read an empty "replica" after a Redis failover**: the killed primary, restarted, is
  listed by the Sentinels as a replica at once, but is empty and still a primary of its own for
  about 10 s; gateways reading from replicas found nobody anywhere and stored messages for online
  users offline.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import time
import tomllib
from pathlib import Path

import pytest

from cluster_node.net.control import query_control
from gateway.mapping.keys import endpoints_key
from gateway.mapping.sentinel import sentinel_clients
from gateway.ordering import PairQueues
from tests.helpers.cluster import system_info, wait_until
from tests.helpers.node import NodeProcess
from tests.helpers.redis import RedisServer
from tests.helpers.sentinel import MASTER, SentinelSet
from tests.helpers.topologies import check_logs, logged_in, need_redis, region_node, register, two_regions
from tests.helpers.xmpp_raw import RawClient, local

pytestmark = pytest.mark.timeout(360)


def link_endpoint(gateway: NodeProcess) -> str:
    return str(tomllib.loads(gateway.config.read_text())["gdistrib"]["connections"]["endpoints"][0])


def test_every_gateway_of_a_region_is_advertised(tmp_path: Path) -> None:
    """Read over several announce intervals (0.5 s here), eu's endpoint list names both gateways."""
    need_redis()
    with RedisServer() as redis, two_regions(tmp_path, redis, eu={"gateways": 2}) as world:
        expected = sorted(link_endpoint(gw) for gw in world.eu.gateways)
        seen = []
        with redis.client() as r:
            for _ in range(20):
                seen.append(sorted(json.loads(r.get(endpoints_key("eu")) or "[]")))
                time.sleep(0.2)
        assert all(s == expected for s in seen), seen


async def test_resume_while_the_holder_hands_its_sessions_over(tmp_path: Path) -> None:
    """h1 stops: its 40 SM sessions are handed to h2.  Then h2 stops while the 40 clients resume on
    h3, one every 5 ms: whichever way each session reaches h3 (taken over from h2, or handed over
    by h2 and followed there), every client resumes, and its session is the one h3 routes to."""
    names, users = ("h1", "h2", "h3"), [f"u{i}" for i in range(40)]
    url = f"sqlite:///{tmp_path / 'region.db'}"
    nodes = [region_node(tmp_path, n, url, settings={"modules": {"stream_management": {"resume_timeout": 60}}})
             for n in names]
    h1, h2, h3 = nodes
    register(h1, users, "secret")
    clients: list[RawClient] = []
    try:
        for n in nodes:
            n.start()
        wait_until(lambda: all(system_info(n)["joinedNodes"] == list(names) for n in nodes), 20, "three joined")
        clients = [RawClient(h1.port, h1.cert) for _ in users]
        enabled = await asyncio.gather(*(c.start(u, "secret", "r") for c, u in zip(clients, users, strict=True)))
        ids = [e.get("id") for e in enabled if e is not None]
        await asyncio.to_thread(h1.stop)  # SIGTERM: every session detached, handed to h2

        async def detached_on_h2() -> int:
            status, body = await query_control(h2.workdir / "data" / "control.sock", "sm", "status")
            return int(body["data"]["sm"]["status"]["detached"]) if status == 200 else -1

        deadline = time.monotonic() + 15
        while await detached_on_h2() != len(users):
            assert time.monotonic() < deadline, "h2 did not adopt every session"
            await asyncio.sleep(0.1)
        ready = list(await asyncio.gather(*(logged_in(h3, u, "secret") for u in users)))
        clients.extend(ready)
        assert h2.proc is not None
        h2.proc.send_signal(signal.SIGTERM)

        async def resume(i: int) -> str:
            await asyncio.sleep(i * 0.005)
            return local(await ready[i].resume(str(ids[i]), 0))

        assert await asyncio.gather(*(resume(i) for i in range(len(users)))) == ["resumed"] * len(users)
        await asyncio.to_thread(h2.proc.wait, 30)
        for u, c in zip(users, ready, strict=True):  # each session is routable where it resumed
            c.send(f"<message to='{u}@localhost/r' type='chat' id='x'><body>to myself</body></message>")
        for c in ready:
            el = await c.next(lambda e: local(e) in ("message", "error"), timeout=10)
            assert local(el) == "message", el.attrib
    finally:
        for c in clients:
            c.die()
        for n in nodes:
            n.stop()
    check_logs(*nodes)


async def test_pair_queues_drain_runs_what_was_submitted() -> None:
    """What a stopping gateway accepted runs before its queues close, in order per pair."""
    queues, done = PairQueues(), []

    async def job(tag: str) -> None:
        await asyncio.sleep(0.05)
        done.append(tag)

    for tag in ("a1", "a2", "a3"):
        queues.submit(("a", "b"), functools.partial(job, tag))
    queues.submit(("c", "d"), functools.partial(job, "c1"))
    await queues.drain(5.0)
    await queues.close()
    assert done.index("a1") < done.index("a2") < done.index("a3") and sorted(done) == ["a1", "a2", "a3", "c1"]


async def test_replica_reads_skip_a_replica_not_linked_to_its_primary() -> None:
    """After a failover the old primary comes back empty; until the Sentinels make it a replica,
    reads that may go to replicas must still find what the new primary holds."""
    need_redis()
    with SentinelSet() as s:
        with s.primary.client() as c:
            c.set("probe", "here")
        with s.replica.client() as c:
            wait_until(lambda: c.get("probe") == b"here", 10, "the key replicated")
        old, survivor = s.primary, s.kill_primary()
        await asyncio.to_thread(s.wait_promoted, survivor)
        await asyncio.to_thread(old.start)
        manager, write, read = sentinel_clients(s.addresses, MASTER, url="redis://127.0.0.1:6379/0",
                                                replica_reads=True)
        assert read is not None
        try:
            with old.client() as c:  # what the fix is about: listed as a replica, yet empty and a primary
                assert c.info("replication")["role"] == "master" and c.dbsize() == 0
            for _ in range(5):
                assert await read.get("probe") == b"here"
        finally:
            await read.aclose()
            await write.aclose()
            for sentinel in manager.sentinels:
                await sentinel.aclose()
