"""XEP-0280 Message Carbons with real processes and slixmpp's own ``xep_0280`` plugin: alice on a
phone and a laptop, bob writing to her bare and full JIDs, alice writing from either device — on
one node, across the two nodes of a region, and across two regions (one node and one gateway each,
Redis for the mapping).  The laptop sees both sides of every conversation, the phone never gets
copies of what it sent or was sent, private and ``no-copy`` messages are not copied."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.node import NodeProcess
from tests.helpers.redis import RedisServer
from tests.helpers.regions import Region
from tests.helpers.topologies import (
    close,
    fresh_users,
    mapped,
    need_redis,
    one_node,
    replicated,
    two_node_region,
    two_regions,
)
from tests.helpers.xmpp_client import Client
from tests.integration.test_s2s import EU, PASSWORD as S2S_PASSWORD, US, Site, two_sites

CARBONS = "urn:xmpp:carbons:2"
PASSWORD = "carbons-secret"


class Device(Client):
    """A client with slixmpp's XEP-0280 plugin, queueing the carbons it gets (the forwarded
    messages: what was sent or received on another resource)."""

    def __init__(self, node: NodeProcess, jid: str, password: str = PASSWORD) -> None:
        super().__init__(jid, password, cert=node.cert)
        self.register_plugin("xep_0280")
        self.carbons: dict[str, asyncio.Queue[Any]] = {"sent": asyncio.Queue(), "received": asyncio.Queue()}
        self.add_event_handler("carbon_sent", lambda m: self.carbons["sent"].put_nowait(m["carbon_sent"]))
        self.add_event_handler("carbon_received",
                               lambda m: self.carbons["received"].put_nowait(m["carbon_received"]))

    async def carbon(self, direction: str, timeout: float = 5.0) -> Any:
        return await asyncio.wait_for(self.carbons[direction].get(), timeout)

    def no_carbons(self) -> bool:
        return self.carbons["sent"].empty() and self.carbons["received"].empty()

    async def enable_carbons(self) -> None:
        await self.plugin["xep_0280"].enable(timeout=5)


async def device(node: NodeProcess, port: int, jid: str, priority: int, *, carbons: bool = True,
                 password: str = PASSWORD) -> Device:
    d = await Device(node, jid, password).online(port, priority=priority)
    if carbons:
        await d.enable_carbons()
    return d


async def check_conversation(phone: Device, laptop: Device, bob: Device, alice: str, bob_jid: str) -> None:
    """The carbons every topology must show (alice's phone has priority 5, her laptop 1)."""
    # bob → alice/phone: the laptop gets a received carbon.
    bob.send_message(mto=f"{alice}/phone", mbody="to your phone", mtype="chat")
    assert (await phone.next_message())["body"] == "to your phone"
    fwd = await laptop.carbon("received")
    assert (fwd["body"], str(fwd["to"]), fwd["from"].bare) == ("to your phone", f"{alice}/phone", bob_jid)
    # bob → alice: the phone (the most available) gets it, the laptop a received carbon.
    bob.send_message(mto=alice, mbody="to you", mtype="chat")
    assert (await phone.next_message())["body"] == "to you"
    fwd = await laptop.carbon("received")
    assert (fwd["body"], str(fwd["to"])) == ("to you", alice)
    # alice/phone → bob: the laptop gets a sent carbon.
    phone.send_message(mto=bob_jid, mbody="from my phone", mtype="chat")
    assert (await bob.next_message())["body"] == "from my phone"
    fwd = await laptop.carbon("sent")
    assert (fwd["body"], str(fwd["from"]), str(fwd["to"])) == ("from my phone", f"{alice}/phone", bob_jid)
    # alice/laptop → bob: the phone gets a sent carbon.
    laptop.send_message(mto=bob_jid, mbody="from my laptop", mtype="chat")
    assert (await bob.next_message())["body"] == "from my laptop"
    fwd = await phone.carbon("sent")
    assert (fwd["body"], str(fwd["from"])) == ("from my laptop", f"{alice}/laptop")
    # Private (XEP-0280 §7) and no-copy (XEP-0334): no copies; bob gets no <private/>.  The next
    # carbon the laptop gets is of the message after them.
    send_private(phone, bob_jid, "private")
    got = await bob.next_message()
    assert got["body"] == "private" and got.xml.find(f"{{{CARBONS}}}private") is None
    no_copy = phone.make_message(mto=bob_jid, mbody="no copy", mtype="chat")
    no_copy.xml.append(ET.Element("{urn:xmpp:hints}no-copy"))
    no_copy.send()
    assert (await bob.next_message())["body"] == "no copy"
    phone.send_message(mto=bob_jid, mbody="sent after", mtype="chat")
    assert (await bob.next_message())["body"] == "sent after"
    assert (await laptop.carbon("sent"))["body"] == "sent after"
    send_private(bob, f"{alice}/phone", "private back")
    got = await phone.next_message()
    assert got["body"] == "private back" and got.xml.find(f"{{{CARBONS}}}private") is None
    bob.send_message(mto=f"{alice}/phone", mbody="received after", mtype="chat")
    assert (await phone.next_message())["body"] == "received after"
    assert (await laptop.carbon("received"))["body"] == "received after"
    # No copies to the resource that sent or got the original.
    await replicated((laptop, phone), (phone, laptop))
    assert phone.no_carbons() and laptop.no_carbons()


def send_private(sender: Device, to: str, body: str) -> None:
    m = sender.make_message(mto=to, mbody=body, mtype="chat")
    m.enable("carbon_private")
    m.send()


# -- one node ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with one_node(tmp_path_factory.mktemp("carbons-node"), "c1", users=("alice", "bob"), password=PASSWORD) as n:
        yield n


async def test_one_node(node: NodeProcess):
    phone = await device(node, node.port, "alice@localhost/phone", 5)
    laptop = await device(node, node.port, "alice@localhost/laptop", 1)
    bob = await device(node, node.port, "bob@localhost/pc", 0, carbons=False)
    try:
        info = await phone.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
        assert CARBONS in info["disco_info"]["features"]
        await check_conversation(phone, laptop, bob, "alice@localhost", "bob@localhost")
        # Disabled: no more copies; enabling again (twice) brings them back.
        await laptop.plugin["xep_0280"].disable(timeout=5)
        phone.send_message(mto="bob@localhost", mbody="unseen", mtype="chat")
        assert (await bob.next_message())["body"] == "unseen"
        await laptop.enable_carbons()
        await laptop.enable_carbons()
        phone.send_message(mto="bob@localhost", mbody="seen", mtype="chat")
        assert (await bob.next_message())["body"] == "seen"
        assert (await laptop.carbon("sent"))["body"] == "seen"
    finally:
        await close(phone, laptop, bob)


# -- a two-node region -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    base = tmp_path_factory.mktemp("carbons-region")
    with two_node_region(base, users=("alice", "bob"), password=PASSWORD) as nodes:
        yield nodes


async def test_two_nodes_of_a_region(region: list[NodeProcess]):
    r1, r2 = region
    phone = await device(r1, r1.port, "alice@localhost/phone", 5)
    laptop = await device(r2, r2.port, "alice@localhost/laptop", 1)
    bob = await device(r1, r1.port, "bob@localhost/pc", 0, carbons=False)
    try:
        await replicated((laptop, phone), (phone, laptop))
        await check_conversation(phone, laptop, bob, "alice@localhost", "bob@localhost")
    finally:
        await close(phone, laptop, bob)


# -- two regions ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Region, Region]]:
    need_redis()
    base = tmp_path_factory.mktemp("carbons-regions")
    with RedisServer() as redis, two_regions(base, redis) as both:
        yield both.eu, both.us


async def test_two_regions(regions: tuple[Region, Region]):
    eu, us = regions
    alice_jid, bob_jid = fresh_users(eu.nodes[0], PASSWORD, "alice", "bob")
    eu_node, us_node = eu.nodes[0], us.nodes[0]
    laptop = await device(eu_node, eu_node.port, f"{alice_jid}/laptop", 1)
    phone = await device(us_node, us_node.port, f"{alice_jid}/phone", 5)
    bob_pc = await device(us_node, us_node.port, f"{bob_jid}/pc", 0, carbons=False)
    try:
        await mapped((eu.gateways[0], us.gateways[0]), {alice_jid: ["laptop", "phone"], bob_jid: ["pc"]})
        await replicated((laptop, phone), (phone, laptop))
        await check_conversation(phone, laptop, bob_pc, alice_jid, bob_jid)
    finally:
        await close(phone, laptop, bob_pc)


# -- another domain over S2S -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Site]]:
    with two_sites(tmp_path_factory.mktemp("carbons-s2s")) as world:
        yield world.eu, world.us


async def test_with_a_contact_of_another_domain_over_s2s(domains: tuple[Site, Site]):
    """bob of another domain writes to alice over S2S, and she answers: her laptop sees both sides
    (the received carbon made where the message came in, eu's gateway; the sent one on her node)."""
    eu, us = domains
    alice_jid, bob_jid = f"{eu.user('alice')}@{EU}", f"{us.user('bob')}@{US}"
    phone = await device(eu.node, eu.node.port, f"{alice_jid}/phone", 5, password=S2S_PASSWORD)
    laptop = await device(eu.node, eu.node.port, f"{alice_jid}/laptop", 1, password=S2S_PASSWORD)
    bob = await device(us.node, us.node.port, f"{bob_jid}/pc", 0, carbons=False, password=S2S_PASSWORD)
    try:
        await replicated((laptop, phone), (phone, laptop))
        bob.send_message(mto=f"{alice_jid}/phone", mbody="over s2s", mtype="chat")
        assert (await phone.next_message(timeout=20))["body"] == "over s2s"
        fwd = await laptop.carbon("received", timeout=10)
        assert (fwd["body"], fwd["from"].bare) == ("over s2s", bob_jid)
        phone.send_message(mto=bob_jid, mbody="and back", mtype="chat")
        assert (await bob.next_message(timeout=20))["body"] == "and back"
        fwd = await laptop.carbon("sent", timeout=10)
        assert (fwd["body"], str(fwd["to"])) == ("and back", bob_jid)
        assert phone.no_carbons()
    finally:
        await close(phone, laptop, bob)
