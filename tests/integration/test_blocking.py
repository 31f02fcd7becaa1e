"""XEP-0191 Blocking Command with real processes and slixmpp's own ``xep_0191`` plugin: alice blocks
bob; bob's messages and IQs get ``<service-unavailable/>`` and never reach her; what she sends him
gets ``<not-acceptable/>`` with ``<blocked/>``; unblocking restores both ways — on one node, across
the two nodes of a region (each keeping lists for a minute: the other member's copy is dropped at
once), across two regions (lists kept for an hour: a change reaches the other region by its poll
of the changed lists, within ``poll_interval``), and over S2S with a blocked domain.  Block lists
too big (100,000 JIDs in one command, over the per-command and per-list limits) are refused."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError

from tests.helpers.cluster import eventually
from tests.helpers.node import NodeProcess
from tests.helpers.redis import RedisServer
from tests.helpers.regions import Region
from tests.helpers.topologies import (
    close,
    fresh_users,
    need_redis,
    one_node,
    replicated,
    two_node_region,
    two_regions,
)
from tests.helpers.xmpp_client import Client
from tests.helpers.xmpp_raw import RawClient
from tests.integration.test_s2s import EU, PASSWORD as S2S_PASSWORD, US, Site, two_sites

BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
PASSWORD = "blocking-secret"


class User(Client):
    """A client with slixmpp's XEP-0191 plugin, keeping chats, message errors and pushes."""

    def __init__(self, node: NodeProcess, jid: str, password: str = PASSWORD) -> None:
        super().__init__(jid, password, cert=node.cert)
        self.register_plugin("xep_0191")
        self.chats: list[Any] = []
        self.errors: list[Any] = []
        self.pushes: list[tuple[str, set[str]]] = []
        self.add_event_handler("message", lambda m: m["type"] != "error" and self.chats.append(m))
        self.add_event_handler("message_error", self.errors.append)
        self.add_event_handler("blocked", lambda iq: self.pushes.append(("block", _jids(iq["block"]))))
        self.add_event_handler("unblocked", lambda iq: self.pushes.append(("unblock", _jids(iq["unblock"]))))

    @property
    def blocking(self) -> Any:
        return self.plugin["xep_0191"]

    async def block(self, *jids: str) -> None:
        await self.blocking.block([JID(j) for j in jids], timeout=10)

    async def unblock(self, *jids: str) -> None:
        if jids:
            await self.blocking.unblock([JID(j) for j in jids], timeout=10)
            return
        iq = self.make_iq_set()  # everything: an empty <unblock/> (the plugin sends no element then)
        iq.enable("unblock")
        await iq.send(timeout=10)

    async def push(self, timeout: float = 5.0) -> tuple[str, set[str]]:
        await eventually(lambda: self.pushes, timeout, f"a push to {self.boundjid}")
        return self.pushes.pop(0)


def _jids(el: Any) -> set[str]:
    return {str(item["jid"]) for item in el["items"]}


async def outcome(sender: User, to: str, receiver: User, timeout: float = 5.0) -> str:
    """Send a chat message: ``delivered`` (``receiver`` got it), the error condition ``sender`` got
    (``+blocked`` with XEP-0191's application condition), or ``nothing`` within ``timeout``."""
    body = f"m-{uuid.uuid4().hex[:8]}"
    sender.send_message(mto=to, mbody=body, mtype="chat")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(m["body"] == body for m in receiver.chats):
            return "delivered"
        for e in sender.errors:
            if e["body"] == body:
                blocked = e.xml.find(f"{{jabber:client}}error/{{{BLOCKING_ERRORS}}}blocked") is not None
                return str(e["error"]["condition"]) + ("+blocked" if blocked else "")
        await asyncio.sleep(0.05)
    return "nothing"


async def becomes(expected: str, sender: User, to: str, receiver: User, within: float) -> list[str]:
    """Send until the outcome is ``expected`` (a change seen after a cache's TTL); what was seen."""
    deadline = time.monotonic() + within
    seen: list[str] = []
    while True:
        seen.append(await outcome(sender, to, receiver, timeout=2.0))
        if seen[-1] == expected:
            return seen
        assert time.monotonic() < deadline, f"never {expected!r} within {within} s: {seen}"
        await asyncio.sleep(0.2)


# -- one node -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with one_node(tmp_path_factory.mktemp("blocking-node"), "b1", users=("alice", "bob"), password=PASSWORD) as n:
        yield n


async def test_one_node(node: NodeProcess):
    alice, bob_jid = "alice@localhost", "bob@localhost"
    phone = await User(node, f"{alice}/phone").online(node.port)
    laptop = await User(node, f"{alice}/laptop").online(node.port)
    bob = await User(node, f"{bob_jid}/pc").online(node.port)
    try:
        info = await phone.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
        assert "urn:xmpp:blocking" in info["disco_info"]["features"]
        assert await phone.blocking.get_blocked_jids(timeout=5) == set()
        assert await outcome(bob, alice, phone) == "delivered"
        await phone.block(bob_jid)
        # Pushed to the resource that fetched the list; the laptop never did.
        assert await phone.push() == ("block", {bob_jid})
        assert await outcome(bob, alice, phone) == "service-unavailable"
        assert await outcome(bob, f"{alice}/laptop", laptop) == "service-unavailable"
        with pytest.raises(IqError) as e:
            await bob.plugin["xep_0199"].ping(f"{alice}/phone", timeout=5)
        assert e.value.iq["error"]["condition"] == "service-unavailable"
        assert await outcome(phone, bob_jid, bob) == "not-acceptable+blocked"
        assert await outcome(laptop, f"{bob_jid}/pc", bob) == "not-acceptable+blocked"
        assert await laptop.blocking.get_blocked_jids(timeout=5) == {JID(bob_jid)}
        await laptop.unblock()  # everything: an empty <unblock/> pushed to both
        assert await phone.push() == ("unblock", set())
        assert await laptop.push() == ("unblock", set())
        assert laptop.pushes == [] and phone.pushes == []
        assert await outcome(bob, alice, phone) == "delivered"
        assert await outcome(phone, bob_jid, bob) == "delivered"
        await bob.plugin["xep_0199"].ping(f"{alice}/phone", timeout=5)
        # Nothing blocked ever reached alice: the chats she got are the two delivered ones.
        assert len(phone.chats) == 2
    finally:
        await close(phone, laptop, bob)


async def test_huge_block_lists_are_refused_and_the_node_stays_up(node: NodeProcess):
    """A block of 100,000 JIDs in one command ends the stream at the stanza size limit (XEP-0478);
    one over ``max_request_items`` (250) is a policy-violation; a list at ``max_items`` (1000)
    refuses one more (not-acceptable).  Nothing of a refused command is stored; others still chat."""
    user = fresh_users(node, PASSWORD, "hoarder", domain="localhost")[0]
    spam = [f"spam{i}@junk{i % 97}.example" for i in range(100_000)]
    c = await User(node, f"{user}/pc").online(node.port)
    try:
        gone = c.disconnected
        c.blocking.block([JID(j) for j in spam], timeout=30)  # a ~3.5 MB stanza: never answered
        await asyncio.wait_for(gone, 20)
        assert any("policy-violation" in str(e["condition"]) for e in c.stream_errors), c.stream_errors
    finally:
        await close(c)
    assert node.alive()
    # Over max_request_items: policy-violation (read raw: slixmpp cannot parse that condition).
    raw = RawClient(node.port, node.cert)
    try:
        await raw.start(user.partition("@")[0], PASSWORD, "raw", sm=False)
        items = "".join(f"<item jid='{j}'/>" for j in spam[:251])
        raw.send(f"<iq type='set' id='many'><block xmlns='urn:xmpp:blocking'>{items}</block></iq>")
        reply = await raw.next(lambda el: el.get("id") == "many")
        assert reply.get("type") == "error"
        assert reply.find(".//{urn:ietf:params:xml:ns:xmpp-stanzas}policy-violation") is not None
    finally:
        await raw.close()
    c = await User(node, f"{user}/pc").online(node.port)
    try:
        assert await c.blocking.get_blocked_jids(timeout=5) == set()
        for i in range(4):
            await c.block(*spam[i * 250:(i + 1) * 250])
        with pytest.raises(IqError) as e:
            await c.block(spam[1000])
        assert e.value.iq["error"]["condition"] == "not-acceptable"
        assert len(await c.blocking.get_blocked_jids(timeout=10)) == 1000
        # Matching a list at the limit still lets everyone else through.
        bob = await User(node, "bob@localhost/hoard").online(node.port)
        try:
            assert await outcome(bob, f"{user}/pc", c) == "delivered"
            assert await outcome(c, "bob@localhost/hoard", bob) == "delivered"
        finally:
            await close(bob)
    finally:
        await close(c)


# -- a two-node region -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    """Nodes whose block lists stay cached for a minute: only the drop a change sends to the other
    members can make it hold there."""
    with two_node_region(tmp_path_factory.mktemp("blocking-region"), users=("alice", "bob"), password=PASSWORD,
                         settings={"modules": {"blocking": {"cache_ttl": 60.0}}}) as nodes:
        yield nodes


async def test_two_nodes_of_a_region(region: list[NodeProcess]):
    r1, r2 = region
    alice, bob_jid = "alice@localhost", "bob@localhost"
    phone = await User(r1, f"{alice}/phone").online(r1.port)
    laptop = await User(r2, f"{alice}/laptop").online(r2.port)
    bob = await User(r2, f"{bob_jid}/pc").online(r2.port)
    try:
        await laptop.blocking.get_blocked_jids(timeout=5)
        await replicated((laptop, phone))  # the flag reached r1
        # Both nodes read (and cache) alice's empty list.
        assert await outcome(bob, f"{alice}/phone", phone) == "delivered"
        assert await outcome(phone, bob_jid, bob) == "delivered"
        assert await outcome(laptop, bob_jid, bob) == "delivered"
        await phone.block(bob_jid)  # on r1
        assert await laptop.push() == ("block", {bob_jid})  # on r2
        # At once on both nodes: r2 (bob's, and the laptop's) dropped its copy before the result.
        assert await outcome(bob, f"{alice}/phone", phone) == "service-unavailable"
        assert await outcome(laptop, bob_jid, bob) == "not-acceptable+blocked"
        assert await outcome(phone, bob_jid, bob) == "not-acceptable+blocked"
        await laptop.unblock(bob_jid)  # on r2
        assert await outcome(phone, bob_jid, bob) == "delivered"
        assert await outcome(bob, alice, phone) == "delivered"
    finally:
        await close(phone, laptop, bob)


# -- two regions ---------------------------------------------------------------------------------------

POLL = 0.5  # how often the regions' nodes and gateways read the changed block lists


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Region, Region]]:
    need_redis()
    base = tmp_path_factory.mktemp("blocking-regions")
    modules = {"modules": {"blocking": {"cache_ttl": 3600, "poll_interval": POLL}}}
    with RedisServer() as redis, two_regions(base, redis, node_settings=modules, gateway_settings=modules,
                                             links=False) as both:
        yield both.eu, both.us


async def test_two_regions(regions: tuple[Region, Region]):
    eu, us = regions
    alice_jid, bob_jid = fresh_users(eu.nodes[0], PASSWORD, "alice", "bob")
    phone = await User(eu.nodes[0], f"{alice_jid}/phone").online(eu.nodes[0].port)
    pc = await User(us.nodes[0], f"{bob_jid}/pc").online(us.nodes[0].port)
    try:
        # Until both are mapped (Redis) a message may take a while: wait for the first.
        await becomes("delivered", pc, alice_jid, phone, within=15)
        assert await outcome(phone, bob_jid, pc) == "delivered"
        await phone.block(bob_jid)  # in eu
        # In: the gateway of alice's region has the change at once; bob's node in the other
        # region stops the messages itself once its poll saw the change.  Never delivered.
        seen = await becomes("service-unavailable", pc, alice_jid, phone, within=POLL + 5)
        assert "delivered" not in seen, seen
        await asyncio.sleep(POLL + 0.5)
        assert await outcome(pc, f"{alice_jid}/phone", phone) == "service-unavailable"
        # Out: checked in alice's region, at once.
        assert await outcome(phone, bob_jid, pc) == "not-acceptable+blocked"
        await phone.unblock()
        assert await outcome(phone, bob_jid, pc) == "delivered"
        start = time.monotonic()
        await becomes("delivered", pc, alice_jid, phone, within=POLL + 5)
        assert time.monotonic() - start < POLL + 5
    finally:
        await close(phone, pc)


# -- another domain over S2S -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Site]]:
    """Two deployments with their own domains, as tests/integration/test_s2s.py starts them."""
    with two_sites(tmp_path_factory.mktemp("blocking-s2s")) as world:
        yield world.eu, world.us


async def test_over_s2s(domains: tuple[Site, Site]):
    eu, us = domains
    alice, bob = eu.user("alice"), us.user("bob")
    alice_jid, bob_jid = f"{alice}@{EU}", f"{bob}@{US}"
    a = await User(eu.node, f"{alice_jid}/laptop", S2S_PASSWORD).online(eu.node.port)
    b = await User(us.node, f"{bob_jid}/phone", S2S_PASSWORD).online(us.node.port)
    try:
        assert await outcome(b, alice_jid, a, timeout=20) == "delivered"  # the S2S streams are up
        assert await outcome(a, bob_jid, b, timeout=20) == "delivered"
        await a.block(US)  # the whole domain
        # In through alice's gateway: answered over S2S, never delivered.
        assert await outcome(b, alice_jid, a, timeout=10) == "service-unavailable"
        with pytest.raises(IqError) as e:
            await b.plugin["xep_0199"].ping(f"{alice_jid}/laptop", timeout=10)
        assert e.value.iq["error"]["condition"] == "service-unavailable"
        # Out: stopped at alice's node, nothing goes over S2S.
        assert await outcome(a, bob_jid, b) == "not-acceptable+blocked"
        await a.unblock(US)
        assert await outcome(b, alice_jid, a, timeout=10) == "delivered"
        assert await outcome(a, bob_jid, b, timeout=10) == "delivered"
    finally:
        await close(a, b)
