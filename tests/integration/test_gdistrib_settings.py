"""Two settings of global distribution, each shown to change what happens between real regions:

- ``gdistrib.global_host``: only the listed domains are shared by the regions.  eu and us both serve
  example.com and staff.example.com, sharing example.com alone: an example.com user is reached in
  the other region at once; a staff.example.com user is never published to Redis, so a message to
  her from the other region is kept for her (offline storage, delivered with a delay stamp at her
  next login), not relayed.
- ``gdistrib.message_ttl``: the hop limit of a relayed stanza.  A stanza that reaches a region its
  recipient has just left is resent to the region the mapping names now; eu sends with a limit of
  1, so there its sender gets ``remote-server-timeout`` instead; us sends with the default (4), so
  its stanza is sent on and reaches its recipient.

The mapping entries that send a stanza to the wrong region are written by the test into the real
Redis the gateways use, the moment the receiving gateway has bounced the stanza (its counter says
so), which is what a user who moves between regions in that instant looks like."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio

from gateway.mapping import Location, MappingStore
from gateway.mapping.keys import resources_key
from tests.helpers.cluster import eventually
from tests.helpers.node import NodeProcess
from tests.helpers.redis import RedisServer
from tests.helpers.regions import DOMAIN
from tests.helpers.topologies import TwoRegions, close, fresh_users, gd_status, lookup, need_redis, two_regions
from tests.helpers.xmpp_client import Client

STAFF = "staff.example.com"
PASSWORD = "gd-settings-secret"
# A resend waits this long (then looks again, once): time for the test to move the mapping entry.
RESEND_MS = 3000


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    need_redis()
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[TwoRegions]:
    common: dict[str, Any] = {"global_host": [DOMAIN], "bounce": {"resend_after_ms": RESEND_MS, "max_retries": 1}}
    eu = {"domains": [DOMAIN, STAFF], "gdistrib": {**common, "message_ttl": 1}}
    us = {"domains": [DOMAIN, STAFF], "gdistrib": common}
    with two_regions(tmp_path_factory.mktemp("gd-settings"), redis_server, eu=eu, us=us) as both:
        yield both


@pytest.fixture
async def mapping(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def user(node: NodeProcess, jid: str, resource: str) -> Client:
    return Client(f"{jid}/{resource}", PASSWORD, cert=node.cert)


def counters(gateway: NodeProcess) -> dict[str, Any]:
    return gd_status(gateway)["counters"]  # type: ignore[no-any-return]


# -- global_host ---------------------------------------------------------------------------------------


async def test_only_the_global_hosts_accounts_are_shared_by_the_regions(
        world: TwoRegions, mapping: redis.asyncio.Redis) -> None:
    eu, us = world.eu.nodes[0], world.us.nodes[0]
    (alice,) = fresh_users(eu, PASSWORD, "alice")
    (ann,) = fresh_users(eu, PASSWORD, "ann", domain=STAFF)
    (bob,) = fresh_users(us, PASSWORD, "bob")
    a = await user(eu, alice, "desk").online(eu.port)
    n = await user(eu, ann, "desk").online(eu.port)
    b = await user(us, bob, "desk").online(us.port)
    try:
        await eventually(lambda: lookup(world.us.gateways[0], alice).get("desk"), 15, "alice mapped in us")
        # The shared domain: relayed to eu at once.
        b.send_message(mto=alice, mbody="to the shared domain", mtype="chat")
        m = await a.next_message(10)
        assert m["body"] == "to the shared domain" and not m["delay"]["stamp"]
        # The other domain: ann's session was never written to Redis, while alice's was.
        assert await mapping.exists(resources_key(alice)) == 1
        assert await mapping.exists(resources_key(ann)) == 0
        relayed = counters(world.us.gateways[0])["relayed"].get("eu", 0)
        b.send_message(mto=ann, mbody="to staff, from us", mtype="chat")
        # us keeps it (ann is not its user's to look for elsewhere): stored, not relayed.
        await eventually(lambda: counters(world.us.gateways[0])["handledLocally"] >= 1, 15, "handled in us")
        assert counters(world.us.gateways[0])["relayed"].get("eu", 0) == relayed
        with pytest.raises(TimeoutError):
            await n.next_message(2)
        await n.close()
        # At her next login the message is there, from offline storage.
        n = await user(eu, ann, "again").online(eu.port)
        m = await n.next_message(10)
        assert m["body"] == "to staff, from us" and m["delay"]["stamp"] is not None
    finally:
        await close(a, n, b)


# -- message_ttl ---------------------------------------------------------------------------------------


async def moved_while_relayed(world: TwoRegions, mapping: redis.asyncio.Redis, sender: Client, to: str,
                              first: str, then: str) -> None:
    """``sender`` writes to ``to`` (a full JID the mapping says is in region ``first``); as soon as
    ``first``'s gateway has found nobody there and is waiting to look again, the entry moves to
    region ``then``."""
    gateway = {"eu": world.eu, "us": world.us}[first].gateways[0]
    store = {region: MappingStore(mapping, region=region) for region in (first, then)}
    created = time.time()
    assert await store[first].publish_session(to, Location(first, f"{first}-n9", "sid-1", created, 0, True))
    bounced = counters(gateway)["bounced"]
    sender.send_message(mto=to, mbody="are you there?", mtype="chat")
    await eventually(lambda: counters(gateway)["bounced"] > bounced, RESEND_MS / 1000 - 0.5,
                     f"{first} bounced it")
    assert await store[first].remove_session(to, "sid-1")
    assert await store[then].publish_session(to, Location(then, f"{then}-n9", "sid-2", created + 1, 0, True))


async def test_a_stanza_past_its_hop_limit_is_an_error_to_its_sender(
        world: TwoRegions, mapping: redis.asyncio.Redis) -> None:
    eu = world.eu.nodes[0]
    alice, ghost = fresh_users(eu, PASSWORD, "alice", "ghost")
    a = await user(eu, alice, "desk").online(eu.port)
    try:
        drops = counters(world.us.gateways[0])["ttlDrops"]
        # eu relays with a limit of 1: us may not send it on.
        await moved_while_relayed(world, mapping, a, f"{ghost}/x", "us", "eu")
        error = await a.next_message(10, body=False)
        while error["type"] != "error":
            error = await a.next_message(10, body=False)
        assert error["error"]["condition"] == "remote-server-timeout" and "hop limit" in error["error"]["text"]
        assert counters(world.us.gateways[0])["ttlDrops"] == drops + 1
    finally:
        await close(a)


async def test_within_the_hop_limit_a_stanza_follows_its_recipient(
        world: TwoRegions, mapping: redis.asyncio.Redis) -> None:
    us = world.us.nodes[0]
    carol, dave = fresh_users(us, PASSWORD, "carol", "dave")
    c = await user(us, carol, "desk").online(us.port)
    try:
        drops = counters(world.eu.gateways[0])["ttlDrops"]
        back = sum(counters(world.us.gateways[0])["received"].values())  # counted by origin: us
        # us relays with the default limit (4): eu finds dave gone and sends it on, back to us.
        await moved_while_relayed(world, mapping, c, f"{dave}/x", "eu", "us")
        await eventually(lambda: sum(counters(world.us.gateways[0])["received"].values()) > back, 15,
                         "the stanza relayed back to us")
        # dave logs in in us now: the stanza reaches him (live while us looks again, or from
        # offline storage once it has given up), and no error goes back to carol.
        d = await user(us, dave, f"phone-{uuid.uuid4().hex[:4]}").online(us.port)
        try:
            m = await d.next_message(15)
            assert m["body"] == "are you there?"
        finally:
            await close(d)
        with pytest.raises(TimeoutError):
            await c.next_message(1, body=False)
        assert counters(world.eu.gateways[0])["ttlDrops"] == drops
    finally:
        await close(c)
