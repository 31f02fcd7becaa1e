"""The mapping through Redis Sentinel: real ``redis-server`` processes (a primary, its replica,
three ``redis-server --sentinel``), the primary killed with SIGKILL.

What is shown: the store works through Sentinel (writes to the primary, lookups from the replica
with ``read_from_replicas``); after the primary dies the Sentinels promote the replica and the
same clients, never rebuilt, write to it within seconds; a write issued in the gap is retried
until it lands (or, with a short budget, fails with a one-line ``ConnectionError``, never a hang).
Lookups from the gateway's cache during the gap, and two regions chatting through it, are in
:func:`test_two_regions_chat_through_a_failover`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
import redis.asyncio

from gateway.mapping import Location, MappingClients, MappingStore, mapping_clients
from tests.helpers.cluster import eventually
from tests.helpers.regions import DOMAIN
from tests.helpers.sentinel import MASTER, SentinelSet
from tests.helpers.topologies import gd_status, lookup, need_redis, two_regions
from tests.helpers.xmpp_client import Client

pytestmark = pytest.mark.timeout(240)

T = TypeVar("T")


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    need_redis()
    with SentinelSet() as s:
        yield s


@pytest.fixture
async def clients(sentinels: SentinelSet) -> AsyncIterator[MappingClients]:
    c = mapping_clients(sentinels.primary.url, sentinels=sentinels.addresses, sentinel_master=MASTER,
                        read_from_replicas=True)
    yield c
    await c.aclose()


def loc(region: str, sid: str, created: float) -> Location:
    return Location(region, "n1", sid, created, 0, True)


async def until(check: Callable[[], Awaitable[T]], timeout: float, what: str) -> T:
    """Await ``check`` until it answers something true; Redis errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await check()
            if value:
                return value
        except redis.RedisError as e:
            value = e  # type: ignore[assignment]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: last {value!r}")
        await asyncio.sleep(0.05)


async def server_port(client: redis.asyncio.Redis) -> int:
    """The port of the server ``client`` is talking to (CLIENT INFO's local address)."""
    info = await client.client_info()
    return int(str(info["laddr"]).rpartition(":")[2])


async def test_mapping_works_through_sentinel(sentinels: SentinelSet, clients: MappingClients) -> None:
    store = MappingStore(clients.write, clients.read, region="eu")
    assert await store.publish_session("alice@x/phone", loc("eu", "s1", 100.0))
    await store.publish_domain("muc.x")
    await store.publish_region(["127.0.0.1:5555"], {"sessions": 1})
    assert isinstance(clients.write, redis.asyncio.Redis) and isinstance(clients.read, redis.asyncio.Redis)
    assert await server_port(clients.write) == sentinels.primary.port
    assert await server_port(clients.read) == sentinels.replica.port  # lookups stay on the replica
    found = await until(lambda: store.lookup_full("alice@x/phone"), 5, "replicated to the replica")
    assert (found.region, found.sid) == ("eu", "s1")
    assert await store.lookup_domain("muc.x") == "eu"
    assert await store.endpoints("eu") == ["127.0.0.1:5555"]
    assert "Sentinel primary 'meridian' via 127.0.0.1:" in clients.description
    # a burst beyond the pool's 64 connections waits for one instead of failing
    burst = await asyncio.gather(*(store.lookup_bare(f"nobody{i}@x") for i in range(300)),
                                 *(store.publish_session(f"u{i}@x/r", loc("eu", "s", 1.0)) for i in range(300)))
    assert burst == [{}] * 300 + [True] * 300


async def test_a_failover_is_followed_without_a_restart(sentinels: SentinelSet, clients: MappingClients) -> None:
    store = MappingStore(clients.write, clients.read, region="eu", write_retry_for=0)
    assert await store.publish_many([(f"u{i}@x/r", loc("eu", f"s{i}", 1.0)) for i in range(100)]) == [True] * 100
    with sentinels.primary.client() as c:  # the replica has everything before the primary dies
        assert c.execute_command("WAIT", 1, 5000) == 1
    await until(lambda: store.lookup_full("u99@x/r"), 5, "replicated")
    survivor = sentinels.kill_primary()
    with pytest.raises(redis.ConnectionError):  # no retry budget: the gap shows
        await store.publish_session("late@x/r", loc("eu", "late", 2.0))
    promoted_after = sentinels.wait_promoted(survivor)
    promoted = time.monotonic()
    # the same clients: the next writes go to the promoted replica
    written = await until(lambda: store.publish_session("new@x/r", loc("eu", "new", 3.0)), 10,
                               "a write after the failover")
    assert written and time.monotonic() - promoted < 5, f"promoted after {promoted_after:.1f} s"
    assert await server_port(clients.write) == survivor.port
    assert set(await store.lookup_bare("u42@x")) == {"r"}  # what was replicated survived
    assert (await store.lookup_full("new@x/r")) is not None
    assert not await store.remove_session("u1@x/r", "someone-else")
    assert await store.remove_session("u1@x/r", "s1")


async def test_a_write_in_the_gap_is_retried_until_it_lands(sentinels: SentinelSet,
                                                            clients: MappingClients) -> None:
    store = MappingStore(clients.write, clients.read, region="eu", write_retry_for=30.0)
    assert await store.publish_session("alice@x/phone", loc("eu", "s1", 100.0))
    survivor = sentinels.kill_primary()
    started = time.monotonic()
    assert await store.publish_session("bob@x/phone", loc("eu", "s2", 200.0))  # no error: retried
    took = time.monotonic() - started
    assert store.write_retries > 0
    assert sentinels.primary_address() == survivor.address and took < 20
    with survivor.client() as c:
        assert c.hexists("gd:{bob@x}:res", "phone")


async def test_the_retries_are_bounded(sentinels: SentinelSet, clients: MappingClients) -> None:
    store = MappingStore(clients.write, clients.read, region="eu", write_retry_for=0.5)
    assert await store.publish_session("alice@x/phone", loc("eu", "s1", 100.0))
    sentinels.kill_primary()
    await asyncio.sleep(sentinels.down_after_ms / 1000 + 0.3)  # the Sentinels see it down now
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError) as e:
        await store.publish_session("bob@x/phone", loc("eu", "s2", 200.0))
    assert time.monotonic() - started < 3
    assert store.write_retries >= 1
    assert "\n" not in str(e.value) and len(str(e.value)) < 300, str(e.value)  # one line for the log


# -- two regions, gateways through Sentinel -------------------------------------------------------

PASSWORD = "sentinel-pass"


async def test_two_regions_chat_through_a_failover(tmp_path: Path) -> None:
    """alice in eu and bob in us chat; the primary is killed: they keep chatting (the eu gateway
    routes from its cache, the us gateway reads its replica), and after the promotion a new
    login is published and found without restarting anything."""
    need_redis()
    with SentinelSet(down_after_ms=4000, failover_timeout_ms=8000) as s:
        sentinel = {"sentinels": s.addresses, "sentinel_master": MASTER}
        with two_regions(tmp_path, s.primary, users=["alice", "bob", "carol"], password=PASSWORD,
                         eu={"gdistrib": {"redis": sentinel}},
                         us={"gdistrib": {"redis": {**sentinel, "read_from_replicas": True}}}) as world:
            eu_gw, us_gw = world.eu.gateways[0], world.us.gateways[0]
            eu_node, us_node = world.eu.nodes[0], world.us.nodes[0]
            a = await Client(f"alice@{DOMAIN}/laptop", PASSWORD, cert=eu_node.cert).online(eu_node.port)
            b = await Client(f"bob@{DOMAIN}/phone", PASSWORD, cert=us_node.cert).online(us_node.port)
            c: Client | None = None
            try:
                await eventually(lambda: lookup(eu_gw, f"bob@{DOMAIN}").get("phone"), 10, "bob mapped")
                await eventually(lambda: lookup(us_gw, f"alice@{DOMAIN}").get("laptop"), 10, "alice mapped")
                a.send_message(mto=f"bob@{DOMAIN}/phone", mbody="before", mtype="chat")
                assert (await b.next_message(timeout=5))["body"] == "before"

                survivor = s.kill_primary()
                # eu reads the dead primary: its answer comes from the cache
                assert lookup(eu_gw, f"bob@{DOMAIN}")["phone"]["region"] == "us"
                assert gd_status(eu_gw)["redis"]["reads"] is False
                for i in range(3):
                    a.send_message(mto=f"bob@{DOMAIN}/phone", mbody=f"gap-{i}", mtype="chat")
                    assert (await b.next_message(timeout=5))["body"] == f"gap-{i}"
                    b.send_message(mto=f"alice@{DOMAIN}", mbody=f"reply-{i}", mtype="chat")
                    assert (await a.next_message(timeout=5))["body"] == f"reply-{i}"
                s.wait_promoted(survivor)

                c = await Client(f"carol@{DOMAIN}/tablet", PASSWORD, cert=us_node.cert).online(us_node.port)
                await eventually(lambda: lookup(eu_gw, f"carol@{DOMAIN}").get("tablet"), 15, "carol published")
                a.send_message(mto=f"carol@{DOMAIN}", mbody="after", mtype="chat")
                assert (await c.next_message(timeout=5))["body"] == "after"
                a.send_message(mto=f"bob@{DOMAIN}/phone", mbody="still here", mtype="chat")
                assert (await b.next_message(timeout=5))["body"] == "still here"
                for gw in (eu_gw, us_gw):
                    await eventually(lambda gw=gw: gd_status(gw)["redis"] == {"reads": True, "writes": True}, 15,
                                     f"{gw.name} healthy again")
            finally:
                for x in (a, b, c):
                    if x is not None:
                        await x.close()
            for gw in (eu_gw, us_gw):  # one WARNING per outage, not one per failed call
                log = gw.log()
                assert log.count("Redis write failed") <= 1, log
                assert log.count("Redis lookup failed") <= 1, log
