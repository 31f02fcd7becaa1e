"""Service leases (MUC re-homing) against a real redis-server: the home region takes a free service
at once, another region only after the wait, nobody takes a held one, the holder renews it, and a
holder that cannot reach Redis for ``expire_after`` stops serving — what members read from the
routes (``holder/<domain>/<gateway>``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from cluster_node.cluster.table import Op, ReplicatedTable
from gateway.leases import Leases, claims, may_take
from gateway.mapping import MappingStore, domain_key
from tests.helpers.redis import RedisServer

pytestmark = pytest.mark.timeout(120)

MUC = "conference.example.com"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    c = redis.asyncio.Redis.from_url(redis_server.url)
    await c.flushdb()
    yield c
    await c.aclose()


def region(client: Any, name: str, clock: Clock, *, home: bool, after: float = 30.0
           ) -> tuple[Leases, ReplicatedTable, list[tuple[str, str | None]]]:
    """A region's routes with one member's claim, and its gateway's leases."""
    routes = ReplicatedTable("routes", f"{name}-n1")
    routes.insert(f"claim/{MUC}/{name}-n1", {"home": home, "after": after})
    changes: list[tuple[str, str | None]] = []
    sent: list[Op] = []
    leases = Leases(MappingStore(client, region=name, expire_after=10.0), routes, sent.append, node=f"{name}-gw1",
                    region=name, expire_after=10.0, every=1.0, on_change=lambda d, h: changes.append((d, h)),
                    clock=clock)
    return leases, routes, changes


def holder_record(routes: ReplicatedTable, name: str) -> Any:
    record = routes.lookup(f"holder/{MUC}/{name}-gw1")
    return None if record is None else record.value


def test_the_rule() -> None:
    assert may_take(True, None, 0.0, 0.0)  # home: at once
    assert not may_take(False, None, 100.0, 30.0)  # not seen free yet
    assert not may_take(False, 80.0, 100.0, 30.0) and may_take(False, 70.0, 100.0, 30.0)
    assert not may_take(False, 0.0, 100.0, 0.0)  # no re-homing
    routes = ReplicatedTable("routes", "n1")
    routes.insert(f"claim/{MUC}/n1", {"home": False, "after": 60})
    routes.insert(f"claim/{MUC}/n2", {"home": True, "after": 30.0})
    routes.insert(f"claim/{MUC}/n3", {"home": False, "after": "soon"})
    routes.insert("service/upload.example.com/n1", {})
    routes.insert(f"holder/{MUC}/gw1", {"region": "eu"})
    assert claims(routes) == {MUC: (True, 30.0)}


async def test_home_takes_it_others_wait_and_take_it_when_it_lapses(client: redis.asyncio.Redis) -> None:
    clock = Clock()
    us, us_routes, us_changes = region(client, "us", clock, home=False)
    eu, eu_routes, _ = region(client, "eu", clock, home=True)
    await us.tick()  # free, but us waits for its home
    assert await client.get(domain_key(MUC)) is None and holder_record(us_routes, "us") == {"region": ""}
    await eu.tick()
    assert await client.get(domain_key(MUC)) == b"eu" and holder_record(eu_routes, "eu") == {"region": "eu"}
    clock.now += 5
    await us.tick()
    assert us.held == {MUC: "eu"} and us_changes[-1] == (MUC, "eu")
    clock.now += 60
    await eu.tick()  # renewed: still 10 s to live
    assert 9_000 < await client.pttl(domain_key(MUC)) <= 10_000
    await us.tick()
    assert us.held == {MUC: "eu"}

    await client.delete(domain_key(MUC))  # eu's gateways gone: the entry expired
    await us.tick()
    assert us.held == {MUC: None}
    clock.now += 29
    await us.tick()
    assert us.held == {MUC: None}
    clock.now += 1
    await us.tick()
    assert us.held == {MUC: "us"} and holder_record(us_routes, "us") == {"region": "us"}
    assert await client.get(domain_key(MUC)) == b"us"
    await eu.tick()  # eu is back: no fail-back while us holds it
    assert eu.held == {MUC: "us"} and holder_record(eu_routes, "eu") == {"region": "us"}


async def test_a_holder_cut_off_from_redis_stops_serving(redis_server: RedisServer) -> None:
    clock = Clock()
    client = redis.asyncio.Redis.from_url(redis_server.url)
    eu, routes, _ = region(client, "eu", clock, home=True)
    try:
        await eu.tick()
        assert eu.held == {MUC: "eu"}
        broken = redis.asyncio.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
        eu.store = MappingStore(broken, region="eu", expire_after=10.0, write_retry_for=0)
        clock.now += 5
        await eu.tick()
        assert eu.held == {MUC: "eu"}  # not yet: the lease is still ours
        clock.now += 5
        await eu.tick()
        assert eu.held == {MUC: None} and holder_record(routes, "eu") == {"region": ""}
        await broken.aclose()
        routes.delete(f"claim/{MUC}/eu-n1")  # the module stopped
        await eu.tick()
        assert eu.held == {} and holder_record(routes, "eu") is None
    finally:
        await client.aclose()
