"""MUC across two regions of one domain (eu and us: a node and a gateway each, Redis for the
mapping), with the rooms homed in eu (``home_cluster = "eu"``): eu's members publish
``conference.example.com`` to the mapping, us's gateway relays the service's stanzas there.  alice
in eu and bob in us share a room: join, chat in one order for both, subject, kick, history."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from slixmpp import JID

from gateway.mapping.keys import domain_key
from tests.helpers.cluster import eventually
from tests.helpers.redis import RedisServer
from tests.helpers.regions import Region
from tests.helpers.topologies import close, fresh_users, lookup, need_redis, two_regions

from .test_muc import PASSWORD, MucClient, create

SERVICE = "conference.example.com"
MUC = {"modules": {"muc": {"home_cluster": "eu"}}}


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Region, Region, str]]:
    need_redis()
    with RedisServer() as redis, two_regions(tmp_path_factory.mktemp("muc-regions"), redis, node_settings=MUC,
                                             gateway_settings=MUC) as both:
        yield both.eu, both.us, redis.url


async def published(redis_url: str, domain: str) -> str | None:
    client = aioredis.from_url(redis_url)
    try:
        value = await client.get(domain_key(domain))
        return value.decode() if value is not None else None
    finally:
        await client.aclose()


async def test_one_room_across_two_regions(regions: tuple[Region, Region, str]) -> None:
    eu, us, redis_url = regions
    for _ in range(100):  # eu's gateway publishes the service of its members
        if await published(redis_url, SERVICE) == "eu":
            break
        await asyncio.sleep(0.1)
    assert await published(redis_url, SERVICE) == "eu"
    alice_jid, bob_jid = fresh_users(eu.nodes[0], PASSWORD, "alice", "bob")
    alice = MucClient(eu.nodes[0], f"{alice_jid}/eu")
    bob = MucClient(us.nodes[0], f"{bob_jid}/us")
    await alice.online(eu.nodes[0].port, roster=False)
    await bob.online(us.nodes[0].port, roster=False)
    room = JID(f"across@{SERVICE}")
    try:
        for gw in (eu.gateways[0], us.gateways[0]):
            await eventually(lambda gw=gw: "eu" in lookup(gw, alice_jid), 10, "alice mapped")
            await eventually(lambda gw=gw: "us" in lookup(gw, bob_jid), 10, "bob mapped")
        await create(alice, room, "Alice", **{"muc#roomconfig_roomname": "Across"})
        await bob.muc.join_muc_wait(room, "Bob", timeout=15)
        await alice.presence_of("Bob")

        alice.muc.set_subject(room, "Two regions")
        for i in range(5):  # both speak at once: one sequence, the same order for both
            alice.send_message(mto=room, mbody=f"a{i}", mtype="groupchat")
            bob.send_message(mto=room, mbody=f"b{i}", mtype="groupchat")

        async def ten(c: MucClient) -> list[str]:
            got: list[str] = []
            while len(got) < 10:
                got.append((await asyncio.wait_for(c.groupchat.get(), 15))["body"])
            return got

        seen_by_alice, seen_by_bob = await ten(alice), await ten(bob)
        assert seen_by_alice == seen_by_bob and sorted(seen_by_alice) == sorted(
            [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)])

        await alice.muc.set_role(room, "Bob", "none", reason="bye", timeout=15)
        kicked = await bob.presence_of("Bob", codes=frozenset({307}), ptype="unavailable", timeout=15)
        assert kicked["muc"]["item"]["reason"] == "bye"
        _, subject, _, history = await bob.muc.join_muc_wait(room, "Bob", maxstanzas=3, timeout=15)
        assert subject["subject"] == "Two regions"
        assert [h["body"] for h in history] == seen_by_alice[-3:]
    finally:
        await close(alice, bob)
