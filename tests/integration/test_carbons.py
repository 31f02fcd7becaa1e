"""XEP-0280 Message Carbons with real processes and slixmpp's own ``xep_0280`` plugin: alice on a
phone and a laptop, bob writing to her bare and full JIDs, alice writing from either device — on
one node, across the two nodes of a region, and across two regions (one node and one gateway each,
Redis for the mapping).  The laptop sees both sides of every conversation, the phone never gets
copies of what it sent or was sent, private and ``no-copy`` messages are not copied."""

from __future__ import annotations

import asyncio
import json
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.cluster import cluster_node, eventually, poll, system_info, wait_until
from tests.helpers.node import NodeProcess
from tests.helpers.redis import RedisServer, redis_server_binary
from tests.helpers.regions import DOMAIN, Region, make_region
from tests.helpers.xmpp_client import Client

CARBONS = "urn:xmpp:carbons:2"
PASSWORD = "carbons-secret"


class Device(Client):
    """A client with slixmpp's XEP-0280 plugin, queueing the carbons it gets (the forwarded
    messages: what was sent or received on another resource)."""

    def __init__(self, node: NodeProcess, jid: str) -> None:
        super().__init__(jid, PASSWORD, cert=node.cert)
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


async def device(node: NodeProcess, port: int, jid: str, priority: int, *, carbons: bool = True) -> Device:
    d = await Device(node, jid).online(port, priority=priority)
    if carbons:
        await d.enable_carbons()
    return d


async def replicated(*pairs: tuple[Device, Device]) -> None:
    """Each ``a`` pings ``b``: the ping follows ``a``'s carbons flag down the same cluster (and
    gateway) links, so once it is answered every member on the way has the flag."""
    for a, b in pairs:
        await a.plugin["xep_0199"].ping(str(b.boundjid), timeout=5)


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


async def close(*clients: Client) -> None:
    for c in clients:
        await c.close()


# -- one node ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path_factory.mktemp("carbons-node"), name="c1")
    for user in ("alice", "bob"):
        n.register(user, PASSWORD)
    n.start()
    yield n
    n.stop()
    assert "Traceback" not in n.log(), n.log()


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
    url = f"sqlite:///{base / 'region.db'}"
    nodes = [cluster_node(base, name, url) for name in ("r1", "r2")]
    for user in ("alice", "bob"):
        nodes[0].register(user, PASSWORD)
    for n in nodes:
        n.start()
    wait_until(lambda: all(system_info(n)["joinedNodes"] == ["r1", "r2"] for n in nodes), 20, "two joined nodes")
    yield nodes
    for n in nodes:
        n.stop()
    for n in nodes:
        assert "Traceback" not in n.log(), n.log()


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


def gd_status(gateway: NodeProcess) -> dict[str, Any]:
    return json.loads(gateway.ctl("gdistrib", "status").stdout)["data"]["gdistrib"]["status"]  # type: ignore[no-any-return]


def lookup(gateway: NodeProcess, jid: str) -> dict[str, Any]:
    return json.loads(gateway.ctl("gdistrib", "lookup", "--jid", jid).stdout)["data"]["gdistrib"]["lookup"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Region, Region]]:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    base = tmp_path_factory.mktemp("carbons-regions")
    db = f"sqlite:///{base / 'domain.db'}"
    with RedisServer() as redis:
        eu = make_region(base, "eu", storage_url=db, redis_url=redis.url, nodes=1)
        us = make_region(base, "us", storage_url=db, redis_url=redis.url, nodes=1)
        try:
            for r in (eu, us):
                r.start()
            for r in (eu, us):
                names = sorted(p.name for p in r.processes)
                for p in r.processes:
                    assert poll(lambda p=p, names=names: system_info(p)["joinedNodes"] == names, 20), p.name
            for r, other in ((eu, "us"), (us, "eu")):
                gw = r.gateways[0]
                assert poll(lambda gw=gw, other=other: gd_status(gw)["links"].get(other, {}).get("up"), 15)
            yield eu, us
        finally:
            for r in (eu, us):
                r.stop()
        for p in eu.processes + us.processes:
            assert "Traceback" not in p.log(), p.log()


async def test_two_regions(regions: tuple[Region, Region]):
    eu, us = regions
    alice, bob = f"alice{uuid.uuid4().hex[:6]}", f"bob{uuid.uuid4().hex[:6]}"
    for user in (alice, bob):
        eu.nodes[0].register(user, PASSWORD, DOMAIN)
    alice_jid, bob_jid = f"{alice}@{DOMAIN}", f"{bob}@{DOMAIN}"
    eu_node, us_node = eu.nodes[0], us.nodes[0]
    laptop = await device(eu_node, eu_node.port, f"{alice_jid}/laptop", 1)
    phone = await device(us_node, us_node.port, f"{alice_jid}/phone", 5)
    bob_pc = await device(us_node, us_node.port, f"{bob_jid}/pc", 0, carbons=False)
    try:
        for gw in (eu.gateways[0], us.gateways[0]):
            await eventually(lambda gw=gw: sorted(lookup(gw, alice_jid)) == ["laptop", "phone"], 10,
                             "both of alice's resources mapped")
            await eventually(lambda gw=gw: "pc" in lookup(gw, bob_jid), 10, "bob mapped")
        await replicated((laptop, phone), (phone, laptop))
        await check_conversation(phone, laptop, bob_pc, alice_jid, bob_jid)
    finally:
        await close(phone, laptop, bob_pc)
