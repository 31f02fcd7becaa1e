"""RFC 6121 §2.6 / XEP-0237 roster versioning with diffs, with real slixmpp clients (which send
their cached version when the server announces ``urn:xmpp:features:rosterver``): a client back
with an old version gets an empty result and then only what changed, as pushes, each with its
own version; an unknown version gets the whole roster.  On one node, across the two nodes of a
region and across two regions of one domain (the versions live in the shared database)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.node import NodeProcess
from tests.helpers.redis import RedisServer
from tests.helpers.regions import DOMAIN
from tests.helpers.topologies import TwoRegions, need_redis, two_node_region, two_regions
from tests.helpers.xmpp_client import Client

PASSWORD = "pw-rosterver"


async def login(node, user: str, resource: str, cached_ver: str | None = None, domain: str = "localhost") -> Client:
    c = Client(f"{user}@{domain}/{resource}", PASSWORD, cert=node.cert)
    if cached_ver is not None:
        c.client_roster.version = cached_ver  # what a client keeps with its cached roster
    return await c.login(node.port)


def items(iq: Any) -> dict[str, str]:
    return {str(jid): item["name"] for jid, item in iq["roster"]["items"].items()}


async def roster_events(c: Client, pushes: int) -> list[Any]:
    """What the client received about its roster (results and pushes), until ``pushes`` pushes."""
    out: list[Any] = []
    while sum(iq["type"] == "set" for iq in out) < pushes:
        out.append(await asyncio.wait_for(c.roster_pushes.get(), 5))
    return out


async def only_the_changes(first_node, other_node, back_node, domain: str = "localhost") -> None:
    """A client caches its roster on ``first_node``; another resource changes it on ``other_node``;
    the client comes back to ``back_node`` with its cached version and gets only the changes."""
    user = f"rv{uuid.uuid4().hex[:6]}"
    first_node.register(user, PASSWORD, domain)
    first = await login(first_node, user, "phone", domain=domain)
    try:
        for n in range(6):
            await first.update_roster(f"c{n}@{domain}", name=f"C{n}")
        cached = await first.get_roster()  # the client caches the roster and its version
    finally:
        await first.close()
    cache, cached_ver = items(cached), cached["roster"]["ver"]
    assert sorted(cache) == [f"c{n}@{domain}" for n in range(6)] and cached_ver

    other = await login(other_node, user, "desktop", domain=domain)  # meanwhile, another resource changes it
    try:
        await other.update_roster(f"c1@{domain}", name="Renamed")
        await other.update_roster(f"c2@{domain}", subscription="remove")
        await other.update_roster(f"new@{domain}", name="New")
    finally:
        await other.close()

    back = await login(back_node, user, "phone", cached_ver, domain=domain)
    try:
        result = await back.get_roster()  # slixmpp sends its cached version itself
        # RFC 6121 §2.6.3: empty (a whole roster would carry its version).
        assert result["type"] == "result" and not result["roster"]["ver"] and not result["roster"]["items"]
        events = await roster_events(back, 3)
        assert [iq["type"] for iq in events] == ["result", "set", "set", "set"]  # the result first
        got = events[1:]
        changes = [(iq["roster"]["ver"], jid, item["subscription"], item["name"])
                   for iq in got for jid, item in iq["roster"]["items"].items()]
        assert [(str(jid), sub, name) for _, jid, sub, name in changes] == [
            (f"c1@{domain}", "none", "Renamed"), (f"c2@{domain}", "remove", ""), (f"new@{domain}", "none", "New")]
        vers = [int(v) for v, *_ in changes]
        assert vers == sorted(vers) and vers[0] > int(cached_ver)
        await asyncio.sleep(0.3)
        assert back.roster_pushes.empty()  # nothing else: only the changes
        assert back.client_roster.version == changes[-1][0]

        # The cache with the pushes applied is the server's roster, at the server's version.
        for _, jid, sub, name in changes:
            if sub == "remove":
                cache.pop(str(jid), None)
            else:
                cache[str(jid)] = name
        fresh = await login(other_node, user, "check", "", domain=domain)
        try:
            whole = await fresh.get_roster()
        finally:
            await fresh.close()
        assert items(whole) == cache and whole["roster"]["ver"] == back.client_roster.version

        iq = back.make_iq_get(queryxmlns="jabber:iq:roster")  # its version is now current: nothing at all
        iq["roster"]["ver"] = back.client_roster.version
        unchanged = await iq.send(timeout=5)
        assert unchanged.xml.find("{jabber:iq:roster}query") is None  # on the wire: an empty result
        await asyncio.sleep(0.3)
        assert back.roster_pushes.empty()
    finally:
        await back.close()


async def test_a_client_back_with_an_old_version_gets_only_the_changes(node):
    await only_the_changes(node, node, node)


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    with two_node_region(tmp_path_factory.mktemp("rosterver-region"), names=("rv1", "rv2")) as nodes:
        yield nodes


async def test_changed_on_another_node_of_the_region(region: list[NodeProcess]) -> None:
    """The versions are the shared database's, not a node's: cached on one member, changed on the
    other, back on the first."""
    r1, r2 = region
    await only_the_changes(r1, r2, r1)


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoRegions]:
    need_redis()
    with RedisServer() as redis, two_regions(tmp_path_factory.mktemp("rosterver-regions"), redis) as both:
        yield both


async def test_changed_in_another_region_of_the_domain(regions: TwoRegions) -> None:
    """Cached in eu, changed in us, back in eu: the same versions in every region."""
    eu, us = regions.eu.nodes[0], regions.us.nodes[0]
    await only_the_changes(eu, us, eu, DOMAIN)


async def test_an_unknown_version_gets_the_whole_roster(node):
    user = f"rv{uuid.uuid4().hex[:6]}"
    node.register(user, PASSWORD)
    first = await login(node, user, "a")
    try:
        for n in range(3):
            await first.update_roster(f"c{n}@localhost", name=f"C{n}")
    finally:
        await first.close()
    for ver in ("999999", "not-ours"):
        c = await login(node, user, "b", ver)
        try:
            whole = await c.get_roster()
            assert sorted(items(whole)) == ["c0@localhost", "c1@localhost", "c2@localhost"]
            assert whole["roster"]["ver"] not in ("", ver)
        finally:
            await c.close()
