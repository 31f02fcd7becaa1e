"""MappingStore against a real redis-server (started per test, never the system one).

Covers what the mapping promises the relay: a stale refresh never overwrites a newer login in
another region (https://github.com/esl/MongooseIM/pull/2392), a logout removes only its own session, a user online in
several regions keeps all of them, entries expire, reads can come from a replica, and nothing
found in Redis can crash a lookup.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.connection import AbstractConnection

from gateway.mapping import (
    REGIONS_KEY,
    Location,
    MappingStore,
    domain_key,
    endpoints_key,
    resources_key,
    status_key,
)
from tests.helpers.redis import RedisServer

pytestmark = pytest.mark.timeout(120)


class Clock:
    """Injected time: tests move it instead of sleeping."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


StoreFactory = Callable[..., MappingStore]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    c = redis.asyncio.Redis.from_url(redis_server.url)
    yield c
    await c.aclose()


@pytest.fixture
def make_store(client: redis.asyncio.Redis, clock: Clock) -> StoreFactory:
    def make(region: str = "eu", **kwargs: Any) -> MappingStore:
        kwargs.setdefault("clock", clock)
        return MappingStore(client, region=region, **kwargs)
    return make


def loc(region: str, sid: str, created: float, *, node: str = "n1", priority: int = 0,
        available: bool = True) -> Location:
    return Location(region, node, sid, created, priority, available)


# -- sessions ---------------------------------------------------------------------------------

async def test_publish_and_lookup(make_store: StoreFactory, clock: Clock) -> None:
    eu = make_store("eu")
    assert await eu.publish_session("alice@x/phone", loc("eu", "s1", 100.0, priority=5))
    found = await eu.lookup_full("alice@x/phone")
    assert found == Location("eu", "n1", "s1", 100.0, 5, True, clock.now + 120.0)
    assert await eu.lookup_bare("alice@x") == {"phone": found}
    assert await eu.lookup_full("alice@x/laptop") is None
    assert await eu.lookup_bare("bob@x") == {}


async def test_stale_refresh_never_overwrites_a_newer_login(make_store: StoreFactory) -> None:
    eu, us = make_store("eu"), make_store("us")
    assert await eu.publish_session("alice@x/phone", loc("eu", "s-eu", 100.0))
    # alice logs in again from the US (a newer incarnation of the same full JID)
    assert await us.publish_session("alice@x/phone", loc("us", "s-us", 200.0))
    # the EU's periodic refresh of the old session arrives late: refused
    assert not await eu.publish_session("alice@x/phone", loc("eu", "s-eu", 100.0))
    assert await eu.publish_many([("alice@x/phone", loc("eu", "s-eu", 100.0))]) == [False]
    current = await eu.lookup_full("alice@x/phone")
    assert current is not None and (current.region, current.sid) == ("us", "s-us")
    # and the EU's late logout of the old session removes nothing
    assert not await eu.remove_session("alice@x/phone", "s-eu")
    assert (await us.lookup_full("alice@x/phone")) == current


async def test_concurrent_writers_newest_created_wins(make_store: StoreFactory) -> None:
    stores = [make_store(f"r{i}") for i in range(8)]
    await asyncio.gather(*(s.publish_session("alice@x/r", loc(s.region, f"s{i}", float(i)))
                           for i, s in enumerate(stores) for _ in range(5)))
    found = await stores[0].lookup_full("alice@x/r")
    assert found is not None and (found.region, found.created) == ("r7", 7.0)


async def test_same_created_refresh_extends_expiry(make_store: StoreFactory, clock: Clock,
                                                   client: redis.asyncio.Redis) -> None:
    eu = make_store("eu", expire_after=60.0)
    assert await eu.publish_session("alice@x/phone", loc("eu", "s1", 100.0, available=False))
    first = await eu.lookup_full("alice@x/phone")
    clock.now += 40
    # a refresh of the same session (same created) may also carry new presence
    assert await eu.publish_session("alice@x/phone", loc("eu", "s1", 100.0, priority=3, available=True))
    second = await eu.lookup_full("alice@x/phone")
    assert first is not None and second is not None
    assert second.expires_at == first.expires_at + 40
    assert (second.priority, second.available) == (3, True)
    clock.now += 40  # 80 s after the first write, 40 after the refresh
    assert await eu.lookup_full("alice@x/phone") == second
    assert 55_000 < await client.pttl(resources_key("alice@x")) <= 60_000


async def test_expired_entry_is_replaced_by_an_older_login(make_store: StoreFactory, clock: Clock) -> None:
    """An expired entry holds nothing: even a login with an earlier ``created`` (clock skew
    between regions) may take the JID once the newer one stopped being refreshed."""
    eu, us = make_store("eu", expire_after=10.0), make_store("us", expire_after=10.0)
    assert await us.publish_session("alice@x/phone", loc("us", "s-us", 500.0))
    assert not await eu.publish_session("alice@x/phone", loc("eu", "s-eu", 400.0))
    clock.now += 11
    assert await eu.publish_session("alice@x/phone", loc("eu", "s-eu", 400.0))
    found = await eu.lookup_full("alice@x/phone")
    assert found is not None and found.region == "eu"


async def test_remove_only_own_sid(make_store: StoreFactory, client: redis.asyncio.Redis) -> None:
    eu = make_store("eu")
    await eu.publish_session("alice@x/phone", loc("eu", "s1", 100.0))
    await eu.publish_session("alice@x/laptop", loc("eu", "s2", 101.0))
    assert not await eu.remove_session("alice@x/phone", "someone-else")
    assert not await eu.remove_session("alice@x/tablet", "s1")
    assert await eu.remove_session("alice@x/phone", "s1")
    assert not await eu.remove_session("alice@x/phone", "s1")  # idempotent
    assert set(await eu.lookup_bare("alice@x")) == {"laptop"}
    assert await eu.remove_session("alice@x/laptop", "s2")
    assert not await client.exists(resources_key("alice@x"))  # last resource gone: key gone


async def test_user_online_in_two_regions(make_store: StoreFactory) -> None:
    eu, us = make_store("eu"), make_store("us")
    await eu.publish_session("alice@x/phone", loc("eu", "s-eu", 100.0, priority=1))
    await us.publish_session("alice@x/laptop", loc("us", "s-us", 150.0, priority=5, node="n7"))
    resources = await eu.lookup_bare("alice@x")
    assert {r: (v.region, v.node, v.priority) for r, v in resources.items()} == {
        "phone": ("eu", "n1", 1), "laptop": ("us", "n7", 5)}
    assert {v.region for v in resources.values()} == {"eu", "us"}
    # logging out of one region leaves the other
    assert await eu.remove_session("alice@x/phone", "s-eu")
    assert set(await us.lookup_bare("alice@x")) == {"laptop"}
    assert (await eu.lookup_full("alice@x/laptop")) == resources["laptop"]


# -- expiry -----------------------------------------------------------------------------------

async def test_expired_fields_filtered_and_dropped_injected_clock(make_store: StoreFactory, clock: Clock,
                                                                  client: redis.asyncio.Redis) -> None:
    eu, us = make_store("eu", expire_after=120.0), make_store("us", expire_after=120.0)
    await eu.publish_session("alice@x/phone", loc("eu", "s-eu", 1.0))
    clock.now += 60
    await us.publish_session("alice@x/laptop", loc("us", "s-us", 2.0))
    clock.now += 61  # the EU (dead) stopped refreshing 121 s ago; the US refreshed 61 s ago
    assert set(await us.lookup_bare("alice@x")) == {"laptop"}
    assert await us.lookup_full("alice@x/phone") is None
    assert await client.hlen(resources_key("alice@x")) == 2  # readers filter, writers drop:
    await us.publish_session("alice@x/laptop", loc("us", "s-us", 2.0))
    assert await client.hkeys(resources_key("alice@x")) == [b"laptop"]
    assert 119_000 < await client.pttl(resources_key("alice@x")) <= 120_000


async def test_key_ttl_follows_the_latest_field(make_store: StoreFactory, clock: Clock,
                                                client: redis.asyncio.Redis) -> None:
    short, long = make_store("eu", expire_after=30.0), make_store("us", expire_after=300.0)
    await long.publish_session("alice@x/a", loc("us", "s1", 1.0))
    await short.publish_session("alice@x/b", loc("eu", "s2", 2.0))
    assert 299_000 < await client.pttl(resources_key("alice@x")) <= 300_000  # never shortened
    await long.remove_session("alice@x/a", "s1")
    assert 29_000 < await client.pttl(resources_key("alice@x")) <= 30_000


async def test_real_ttls_expire_everything(client: redis.asyncio.Redis) -> None:
    eu = MappingStore(client, region="eu", expire_after=1.0)
    await eu.publish_session("alice@x/phone", loc("eu", "s1", time.time()))
    await eu.publish_domain("muc.x")
    await eu.publish_region(["10.0.0.1:5999"], {"members": 3})
    assert await eu.lookup_full("alice@x/phone") is not None
    assert await eu.regions() == ["eu"]
    assert 0 < await client.pttl(resources_key("alice@x")) <= 1000
    await asyncio.sleep(1.2)
    assert await eu.lookup_bare("alice@x") == {}
    assert await eu.lookup_domain("muc.x") is None
    assert await eu.endpoints("eu") == []
    assert await eu.regions() == []
    assert await eu.statuses() == {}
    assert await client.exists(resources_key("alice@x"), domain_key("muc.x"), endpoints_key("eu"),
                               status_key("eu")) == 0


# -- routed domains ---------------------------------------------------------------------------

async def test_domains(make_store: StoreFactory, client: redis.asyncio.Redis) -> None:
    eu, us = make_store("eu"), make_store("us")
    assert await us.lookup_domain("muc.x") is None
    await eu.publish_domain("muc.x")
    assert await us.lookup_domain("muc.x") == "eu"
    assert 119_000 < await client.pttl(domain_key("muc.x")) <= 120_000
    assert not await us.remove_domain("muc.x")  # not ours to remove
    assert await us.lookup_domain("muc.x") == "eu"
    await us.publish_domain("muc.x")  # the service moved to the US
    assert not await eu.remove_domain("muc.x")  # the EU's late unregister leaves it
    assert await eu.lookup_domain("muc.x") == "us"
    assert await us.remove_domain("muc.x")
    assert await eu.lookup_domain("muc.x") is None


# -- regions ----------------------------------------------------------------------------------

async def test_regions_endpoints_status(make_store: StoreFactory, clock: Clock) -> None:
    eu, us = make_store("eu", expire_after=120.0), make_store("us", expire_after=120.0)
    await eu.publish_region(["eu1.example:5999", "eu2.example:5999"], {"members": 3, "links": {"us": "up"}})
    clock.now += 100
    await us.publish_region(["us1.example:5999"], {"members": 2, "queues": {"eu": 0}, "rate": 1.5})
    assert await us.regions() == ["eu", "us"]
    assert await us.endpoints("eu") == ["eu1.example:5999", "eu2.example:5999"]
    assert await eu.endpoints("us") == ["us1.example:5999"]
    assert await eu.endpoints("ap") == []
    assert await eu.statuses() == {"eu": {"members": 3, "links": {"us": "up"}},
                                   "us": {"members": 2, "queues": {"eu": 0}, "rate": 1.5}}
    clock.now += 21  # the EU was last seen 121 s ago: not live, still known
    assert await us.regions() == ["us"]
    assert set(await us.statuses()) == {"us"}
    assert await us.last_seen() == {"eu": clock.now - 121, "us": clock.now - 21}


async def test_dead_regions_are_forgotten(make_store: StoreFactory, clock: Clock,
                                          client: redis.asyncio.Redis) -> None:
    eu, us = make_store("eu", forget_after=3600.0), make_store("us", forget_after=3600.0)
    await eu.publish_region([], {})
    clock.now += 3601
    await us.publish_region([], {})
    assert await client.zrange(REGIONS_KEY, 0, -1) == [b"us"]


# -- replica reads ----------------------------------------------------------------------------

async def test_reads_from_a_replica(redis_server: RedisServer, client: redis.asyncio.Redis, clock: Clock) -> None:
    with RedisServer(replicaof=redis_server.address) as replica:
        replica.wait_synced()
        read = redis.asyncio.Redis.from_url(replica.url)
        try:
            eu = MappingStore(client, read, region="eu", clock=clock)
            await eu.publish_session("alice@x/phone", loc("eu", "s1", 100.0))
            await eu.publish_domain("muc.x")
            await eu.publish_region(["eu1:5999"], {"members": 1})
            assert await client.wait(1, 5000) == 1  # replicated
            before = await _calls(client, "hgetall")
            assert set(await eu.lookup_bare("alice@x")) == {"phone"}
            assert (await eu.lookup_full("alice@x/phone")) is not None
            assert await eu.lookup_domain("muc.x") == "eu"
            assert await eu.regions() == ["eu"] and await eu.endpoints("eu") == ["eu1:5999"]
            assert await eu.statuses() == {"eu": {"members": 1}}
            assert await _calls(read, "hgetall") == 1 and await _calls(read, "hget") == 1
            assert await _calls(client, "hgetall") == before  # the primary was not asked
            # writes still go to the primary, and removals replicate too
            assert await eu.remove_session("alice@x/phone", "s1")
            assert await client.wait(1, 5000) == 1
            assert await eu.lookup_bare("alice@x") == {}
        finally:
            await read.aclose()


async def _calls(c: redis.asyncio.Redis, command: str) -> int:
    stats = await c.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


# -- bulk publish, scripts, outages -----------------------------------------------------------

@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts writes of request bytes to any Redis connection: one per round trip."""
    count = [0]
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        count[0] += 1
        await original(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return count


async def test_publish_many_10000_in_few_round_trips(make_store: StoreFactory, client: redis.asyncio.Redis,
                                                     clock: Clock, round_trips: list[int]) -> None:
    eu = make_store("eu")
    await eu.publish_session("warm@x/up", loc("eu", "s", 1.0))  # connection made, script loaded
    entries = [(f"user{i}@x/res{i % 3}", loc("eu", f"s{i}", float(i))) for i in range(10_000)]
    round_trips[0] = 0
    started = time.monotonic()
    results = await eu.publish_many(entries, batch_size=2_000)
    elapsed = time.monotonic() - started
    assert results == [True] * 10_000
    assert round_trips[0] == 5  # one per batch
    assert elapsed < 10
    assert await client.dbsize() == 10_001
    assert (await eu.lookup_full("user9999@x/res0")) == Location("eu", "n1", "s9999", 9999.0, 0, True,
                                                                  clock.now + 120.0)
    # a second pass refreshes every entry; default batches of 500
    round_trips[0] = 0
    assert await eu.publish_many(entries) == [True] * 10_000
    assert round_trips[0] == 20


async def test_publish_many_mixed_results_keep_order(make_store: StoreFactory) -> None:
    eu, us = make_store("eu"), make_store("us")
    await us.publish_session("b@x/r", loc("us", "new", 500.0))
    results = await eu.publish_many([("a@x/r", loc("eu", "1", 1.0)), ("b@x/r", loc("eu", "old", 1.0)),
                                     ("c@x/r", loc("eu", "3", 1.0))], batch_size=2)
    assert results == [True, False, True]
    assert await eu.publish_many([]) == []


async def test_scripts_survive_script_flush(make_store: StoreFactory, client: redis.asyncio.Redis) -> None:
    eu = make_store("eu")
    assert await eu.publish_session("alice@x/phone", loc("eu", "s1", 1.0))
    await client.script_flush()
    assert await eu.publish_session("alice@x/laptop", loc("eu", "s2", 1.0))
    await client.script_flush()
    assert await eu.remove_session("alice@x/laptop", "s2")
    await client.script_flush()
    await eu.publish_domain("muc.x")
    assert await eu.remove_domain("muc.x")
    await client.script_flush()
    assert await eu.publish_many([(f"u{i}@x/r", loc("eu", "s", 1.0)) for i in range(1200)]) == [True] * 1200
    assert set(await eu.lookup_bare("alice@x")) == {"phone"}


async def test_redis_down_then_back_empty(redis_server: RedisServer, make_store: StoreFactory) -> None:
    """Redis restarts without its data: calls fail while it is down, the re-publish restores all."""
    eu = make_store("eu")
    sessions = [(f"u{i}@x/r", loc("eu", f"s{i}", 1.0)) for i in range(100)]
    await eu.publish_many(sessions)
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        await eu.publish_session("alice@x/r", loc("eu", "s", 1.0))
    with pytest.raises(redis.ConnectionError):
        await eu.lookup_bare("u1@x")
    redis_server.start()
    assert await eu.lookup_bare("u1@x") == {}  # came back empty (no persistence)
    assert await eu.publish_many(sessions) == [True] * 100  # scripts reloaded on the new server
    assert set(await eu.lookup_bare("u1@x")) == {"r"}


# -- hostile or corrupt data ------------------------------------------------------------------

async def test_malformed_values_are_ignored(make_store: StoreFactory, client: redis.asyncio.Redis,
                                            clock: Clock) -> None:
    eu = make_store("eu")
    key = resources_key("alice@x")
    good = Location("us", "n", "s", 1.0, 0, True, clock.now + 50).encode()
    await client.hset(key, mapping={
        "good": good, "junk": "not json", "list": "[1,2]", "partial": '{"r":"eu"}', "binary": b"\xff\xfe",
        "strc": '{"r":"eu","n":"n","s":"s","c":"1","e":99999999999}', b"\xff": good,
    })
    await client.expire(key, 600)
    assert set(await eu.lookup_bare("alice@x")) == {"good"}
    assert await eu.lookup_full("alice@x/junk") is None
    assert await eu.lookup_full("alice@x/binary") is None
    # a write over garbage succeeds, and the script clears the rest of it
    assert await eu.publish_session("alice@x/junk", loc("eu", "s1", 1.0))
    assert await eu.remove_session("alice@x/junk", "s1")
    assert set(await client.hkeys(key)) == {b"good", b"\xff"}  # a valid value under a non-UTF-8 name
    # values of the wrong type, or garbage in the region keys
    await client.set(resources_key("bob@x"), "a string")
    assert await eu.lookup_bare("bob@x") == {}
    assert await eu.lookup_full("bob@x/r") is None
    await client.hset(domain_key("muc.x"), "f", "v")
    assert await eu.lookup_domain("muc.x") is None
    await client.set(endpoints_key("eu"), "{nope")
    assert await eu.endpoints("eu") == []
    await client.set(endpoints_key("eu"), json.dumps(["a:1", 2, None, "b:2"]))
    assert await eu.endpoints("eu") == ["a:1", "b:2"]
    await client.zadd(REGIONS_KEY, {"eu": clock.now, "us": clock.now, "ap": clock.now})
    await client.set(status_key("eu"), "not json")
    await client.set(status_key("us"), "[1]")
    await client.set(status_key("ap"), json.dumps({"ok": True}))
    assert await eu.statuses() == {"ap": {"ok": True}}


async def test_decoded_responses_client(redis_server: RedisServer, clock: Clock) -> None:
    """A client made with ``decode_responses=True`` works the same."""
    c = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        eu = MappingStore(c, region="eu", clock=clock)
        assert await eu.publish_session("alice@x/phone", loc("eu", "s1", 1.0))
        assert set(await eu.lookup_bare("alice@x")) == {"phone"}
        await eu.publish_domain("muc.x")
        assert await eu.lookup_domain("muc.x") == "eu"
        await eu.publish_region(["h:1"], {"a": 1})
        assert await eu.regions() == ["eu"] and await eu.statuses() == {"eu": {"a": 1}}
        assert await eu.last_seen() == {"eu": clock.now}
    finally:
        await c.aclose()


async def test_not_a_full_jid_is_refused(make_store: StoreFactory, client: redis.asyncio.Redis) -> None:
    eu = make_store("eu")
    with pytest.raises(ValueError):
        await eu.publish_session("alice@x", loc("eu", "s", 1.0))
    with pytest.raises(ValueError):
        await eu.remove_session("alice@x", "s")
    with pytest.raises(ValueError):
        MappingStore(client, region="eu", expire_after=0)

