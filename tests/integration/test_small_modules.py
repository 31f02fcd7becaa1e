"""The small modules with real processes and slixmpp's own plugins (``xep_0054`` vCards, ``xep_0049``
private storage, ``xep_0202`` entity time, ``xep_0012`` last activity; slixmpp has no XEP-0215
plugin, so external services are asked with raw IQs): everything on one node, and what a region
shares through its database — a vCard, private XML and a last logout written on one node are read
on the other — and two regions of the domain (a vCard and private XML written in eu, read in us).
An oversized vCard is refused (``not-acceptable`` over ``max_size``; a 10 MB one ends the stream at
the stanza size limit) without being stored, and the node stays up."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0054.stanza import VCardTemp
from slixmpp.xmlstream import ElementBase

from tests.helpers.node import NodeProcess
from tests.helpers.redis import RedisServer
from tests.helpers.regions import DOMAIN, Region
from tests.helpers.topologies import close, fresh_users, need_redis, one_node, two_node_region, two_regions
from tests.helpers.xmpp_client import Client
from tests.integration.test_s2s import EU, PASSWORD as S2S_PASSWORD, US, Site, World, two_sites

PASSWORD = "small-modules-secret"
SECRET = "coturn-static-auth-secret"
IMAGE = b"\x89PNG\r\n\x1a\n an avatar for the tests"
EXTDISCO = "urn:xmpp:extdisco:2"
UPDATE = "vcard-temp:x:update"
SERVICES = """
[[modules.external_services.services]]
type = "stun"
host = "stun.example.com"
port = 3478
transport = "udp"

[[modules.external_services.services]]
type = "turn"
host = "turn.example.com"
port = 3478
transport = "udp"
"""


class Prefs(ElementBase):  # type: ignore[misc]
    """A private-storage payload of our own for slixmpp's xep_0049."""

    name = "prefs"
    namespace = "urn:meridian:test:prefs"
    plugin_attrib = "test_prefs"
    interfaces = {"colour"}
    sub_interfaces = interfaces


class User(Client):
    def __init__(self, node: NodeProcess, jid: str, password: str = PASSWORD) -> None:
        super().__init__(jid, password, cert=node.cert)
        for plugin in ("xep_0054", "xep_0049", "xep_0202", "xep_0012"):
            self.register_plugin(plugin)
        self.plugin["xep_0049"].register(Prefs)


async def user(node: NodeProcess, jid: str, *, presence: bool = True) -> User:
    u = User(node, jid)
    if presence:
        await u.online(node.port)
    else:
        await u.login(node.port)
    return u


def vcard(fn: str, photo: bytes | None = None, desc: str = "") -> VCardTemp:
    v = VCardTemp()
    v["FN"] = fn
    if photo is not None:
        v["PHOTO"]["TYPE"] = "image/png"
        v["PHOTO"]["BINVAL"] = photo
    if desc:
        v["DESC"] = desc
    return v


async def get_vcard(client: User, jid: str) -> Any:
    return (await client.plugin["xep_0054"].get_vcard(jid, timeout=5))["vcard_temp"]


def condition(e: IqError) -> str:
    return str(e.iq["error"]["condition"])


async def raw_get(client: Client, to: str, payload: ET.Element) -> Any:
    iq = client.make_iq_get(ito=to)
    iq.xml.append(payload)
    return await iq.send(timeout=5)


async def subscribe(contact: User, to: User) -> None:
    """``contact`` subscribes to ``to``'s presence and ``to`` approves."""
    target = str(to.boundjid.bare)
    contact.send_presence(pto=target, ptype="subscribe")
    await to.next_presence("subscribe", sender=str(contact.boundjid.bare), timeout=20)
    to.send_presence(pto=str(contact.boundjid.bare), ptype="subscribed")
    await contact.next_presence("subscribed", sender=target, timeout=20)


def entity_time(t: Any) -> datetime:
    """XEP-0202's utc, read as sent: this slixmpp's getters cannot parse the XEP's own formats
    (get_utc appends a second 'Z'; get_tzo hands a bare time to a dateTime parser)."""
    assert re.fullmatch(r"[+-]\d\d:\d\d", t["entity_time"].xml.findtext("{urn:xmpp:time}tzo"))
    utc = t["entity_time"].xml.findtext("{urn:xmpp:time}utc")
    return datetime.strptime(utc, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def abuse_addresses(info: Any) -> list[str | None]:
    """XEP-0157's abuse addresses in a disco#info answer."""
    forms = info.xml.findall("{http://jabber.org/protocol/disco#info}query/{jabber:x:data}x")
    return [v.text for f in forms for fld in f for v in fld if fld.get("var") == "abuse-addresses"]


async def last_activity_after_logout(contact: User, alice: User, status: str, *, settle: float) -> None:
    """``contact`` subscribes to alice: her last activity is 0 while she is online; once she left
    with ``status`` (and ``settle`` seconds passed), a couple of seconds and that status."""
    alice_jid = str(alice.boundjid.bare)
    await subscribe(contact, alice)
    last = await contact.plugin["xep_0012"].get_last_activity(alice_jid, timeout=10)
    assert int(last["last_activity"]["seconds"]) == 0  # online
    alice.send_presence(ptype="unavailable", pstatus=status)
    await close(alice)
    await asyncio.sleep(settle)
    last = await contact.plugin["xep_0012"].get_last_activity(alice_jid, timeout=10)
    # A few seconds: the answer may cross regions, on a loaded machine.
    assert int(last["last_activity"]["seconds"]) <= 2 + 3 and last["last_activity"]["status"] == status


# -- one node --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with one_node(tmp_path_factory.mktemp("small-node"), "sm1", users=("alice", "bob", "carol"), password=PASSWORD,
                  config=SERVICES, settings={"modules": {
                      "external_services": {"secret": SECRET, "ttl": 600},
                      "contact_addresses": {"abuse": ["mailto:abuse@localhost", "xmpp:abuse@localhost"]},
                  }}) as n:
        yield n


async def test_vcards_and_avatar_hash_on_one_node(node: NodeProcess):
    alice = await user(node, "alice@localhost/phone")
    laptop = await user(node, "alice@localhost/laptop")
    bob = await user(node, "bob@localhost/pc")
    try:
        assert (await get_vcard(alice, "alice@localhost"))["FN"] == ""  # nothing yet: an empty vCard
        with pytest.raises(IqError) as e:
            await get_vcard(bob, "alice@localhost")
        assert condition(e.value) == "service-unavailable"
        await alice.plugin["xep_0054"].publish_vcard(vcard("Alice", IMAGE), timeout=5)
        got = await get_vcard(bob, "alice@localhost")
        assert (got["FN"], got["PHOTO"]["BINVAL"]) == ("Alice", IMAGE)
        assert (await get_vcard(alice, "alice@localhost"))["FN"] == "Alice"
        # Only alice writes her vCard.
        iq = bob.make_iq_set(ito="alice@localhost")
        iq.append(vcard("Mallory"))
        with pytest.raises(IqError) as e:
            await iq.send(timeout=5)
        assert condition(e.value) == "forbidden"
        # XEP-0153: her next presence carries the hash of the image, seen by her other resource.
        while not laptop.presences.empty():
            laptop.presences.get_nowait()
        alice.send_presence(pstatus="with an avatar")
        p = await laptop.next_presence(sender="alice@localhost/phone")
        assert p.xml.findtext(f"{{{UPDATE}}}x/{{{UPDATE}}}photo") == hashlib.sha1(IMAGE).hexdigest()
    finally:
        await close(alice, laptop, bob)


async def test_oversized_vcards_are_refused_and_the_node_stays_up(node: NodeProcess):
    carol = await user(node, "carol@localhost/pc", presence=False)
    try:
        await carol.plugin["xep_0054"].publish_vcard(vcard("Carol"), timeout=5)
        # Over max_size (64 KiB) but within the stanza limit: not-acceptable.
        with pytest.raises(IqError) as e:
            await carol.plugin["xep_0054"].publish_vcard(vcard("Carol", desc="x" * 100_000), timeout=5)
        assert condition(e.value) == "not-acceptable"
        # 10 MB: over the stanza size limit (XEP-0478), the stream ends with a policy-violation.
        gone = carol.disconnected
        iq = carol.make_iq_set()
        iq.append(vcard("Carol", desc="x" * 10_000_000))
        iq.send(timeout=30)
        await asyncio.wait_for(gone, 20)
        assert any("policy-violation" in str(err["condition"]) for err in carol.stream_errors), carol.stream_errors
    finally:
        await close(carol)
    assert node.alive()
    carol = await user(node, "carol@localhost/pc", presence=False)
    try:
        assert (await get_vcard(carol, "carol@localhost"))["FN"] == "Carol"
    finally:
        await close(carol)


async def test_private_storage_on_one_node(node: NodeProcess):
    alice = await user(node, "alice@localhost/phone", presence=False)
    bob = await user(node, "bob@localhost/pc", presence=False)
    try:
        prefs = Prefs()
        prefs["colour"] = "teal"
        await alice.plugin["xep_0049"].store(prefs, timeout=5)
        got = await alice.plugin["xep_0049"].retrieve("test_prefs", timeout=5)
        assert got["private"]["test_prefs"]["colour"] == "teal"
        asked = ET.Element("{jabber:iq:private}query")
        ET.SubElement(asked, f"{{{Prefs.namespace}}}prefs")
        with pytest.raises(IqError) as e:
            await raw_get(bob, "alice@localhost", asked)
        assert condition(e.value) == "forbidden"
        # Nothing stored for bob: the element comes back empty.
        got = await bob.plugin["xep_0049"].retrieve("test_prefs", timeout=5)
        assert got["private"]["test_prefs"]["colour"] == ""
    finally:
        await close(alice, bob)


async def test_time_uptime_and_last_activity_on_one_node(node: NodeProcess):
    alice = await user(node, "alice@localhost/phone")
    bob = await user(node, "bob@localhost/pc")
    carol = await user(node, "carol@localhost/pc", presence=False)
    try:
        t = await bob.plugin["xep_0202"].get_entity_time("localhost", timeout=5)
        assert abs(entity_time(t).timestamp() - time.time()) < 5
        up = await bob.plugin["xep_0012"].get_last_activity("localhost", timeout=5)
        assert 0 <= int(up["last_activity"]["seconds"]) < 600
        # Only those subscribed to alice's presence may ask how long ago she left.
        with pytest.raises(IqError) as e:
            await carol.plugin["xep_0012"].get_last_activity("alice@localhost", timeout=5)
        assert condition(e.value) == "forbidden"
        await last_activity_after_logout(bob, alice, "Heading Home", settle=0.3)
    finally:
        await close(alice, bob, carol)


async def test_extdisco_and_server_features_on_one_node(node: NodeProcess):
    alice = await user(node, "alice@localhost/phone", presence=False)
    try:
        got = await raw_get(alice, "localhost", ET.Element(f"{{{EXTDISCO}}}services"))
        services = got.xml.findall(f"{{{EXTDISCO}}}services/{{{EXTDISCO}}}service")
        assert [(s.get("type"), s.get("host"), s.get("port")) for s in services] == [
            ("stun", "stun.example.com", "3478"), ("turn", "turn.example.com", "3478")]
        assert services[0].get("username") is None
        username, password = services[1].get("username"), services[1].get("password")
        expiry, _, who = username.partition(":")
        assert who == "alice@localhost" and abs(int(expiry) - (time.time() + 600)) < 10
        mac = hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()
        assert password == base64.b64encode(mac).decode()
        asked = ET.Element(f"{{{EXTDISCO}}}credentials")
        ET.SubElement(asked, f"{{{EXTDISCO}}}service", {"host": "turn.example.com", "type": "turn"})
        got = await raw_get(alice, "localhost", asked)
        creds = got.xml.findall(f"{{{EXTDISCO}}}credentials/{{{EXTDISCO}}}service")
        assert [c.get("port") for c in creds] == ["3478"] and creds[0].get("password")
        info = await alice.plugin["xep_0030"].get_info(jid="localhost", timeout=5)
        features = set(info["disco_info"]["features"])
        assert {"vcard-temp", "jabber:iq:last", "urn:xmpp:time", EXTDISCO} <= features
        assert abuse_addresses(info) == ["mailto:abuse@localhost", "xmpp:abuse@localhost"]
    finally:
        await close(alice)


# -- a two-node region: what one node stores, the other reads -------------------------------------------------


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    with two_node_region(tmp_path_factory.mktemp("small-region"), users=("alice", "bob"), password=PASSWORD) as nodes:
        yield nodes


async def test_region_shares_vcards_private_xml_and_last_activity(region: list[NodeProcess]):
    r1, r2 = region
    alice = await user(r1, "alice@localhost/phone")
    bob = await user(r2, "bob@localhost/pc")
    alice_too = await user(r2, "alice@localhost/laptop", presence=False)
    try:
        await alice.plugin["xep_0054"].publish_vcard(vcard("Alice of r1", IMAGE), timeout=5)
        got = await get_vcard(bob, "alice@localhost")
        assert (got["FN"], got["PHOTO"]["BINVAL"]) == ("Alice of r1", IMAGE)
        prefs = Prefs()
        prefs["colour"] = "ochre"
        await alice.plugin["xep_0049"].store(prefs, timeout=5)
        got = await alice_too.plugin["xep_0049"].retrieve("test_prefs", timeout=5)
        assert got["private"]["test_prefs"]["colour"] == "ochre"
        # Last activity: alice online on r1 is 0 for bob on r2; once she left, her status from the database.
        await close(alice_too)
        await last_activity_after_logout(bob, alice, "gone from r1", settle=0.5)
    finally:
        await close(alice, bob, alice_too)


# -- two regions of one domain ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Region, Region]]:
    need_redis()
    with RedisServer() as redis, two_regions(tmp_path_factory.mktemp("small-regions"), redis) as both:
        yield both.eu, both.us


async def test_vcard_and_private_xml_written_in_eu_are_read_in_us(regions: tuple[Region, Region]):
    """The domain's one database: what alice stores through eu, bob (and her own client) read in us;
    her avatar hash (XEP-0153) is in the presence her us client broadcasts."""
    eu, us = regions
    alice_jid, bob_jid = fresh_users(eu.nodes[0], PASSWORD, "alice", "bob")
    phone = await user(eu.nodes[0], f"{alice_jid}/phone", presence=False)
    pc = await user(us.nodes[0], f"{bob_jid}/pc", presence=False)
    laptop = await user(us.nodes[0], f"{alice_jid}/laptop", presence=False)
    try:
        await phone.plugin["xep_0054"].publish_vcard(vcard("Alice of eu", IMAGE), timeout=5)
        got = await get_vcard(pc, alice_jid)
        assert (got["FN"], got["PHOTO"]["BINVAL"]) == ("Alice of eu", IMAGE)
        prefs = Prefs()
        prefs["colour"] = "vermilion"
        await phone.plugin["xep_0049"].store(prefs, timeout=5)
        got = await laptop.plugin["xep_0049"].retrieve("test_prefs", timeout=5)
        assert got["private"]["test_prefs"]["colour"] == "vermilion"
        phone.send_presence()
        laptop.send_presence()
        p = await phone.next_presence(sender=f"{alice_jid}/laptop", timeout=10)
        assert p.xml.findtext(f"{{{UPDATE}}}x/{{{UPDATE}}}photo") == hashlib.sha1(IMAGE).hexdigest()
    finally:
        await close(phone, pc, laptop)


async def test_last_activity_and_time_across_regions(regions: tuple[Region, Region]):
    """bob in us asks how long ago alice left eu (the logout is written in eu, read in us), the
    domain's time through either region, and gets TURN credentials from his own region's node."""
    eu, us = regions
    alice_jid, bob_jid = fresh_users(eu.nodes[0], PASSWORD, "alice", "bob")
    alice = await user(eu.nodes[0], f"{alice_jid}/phone")
    bob = await user(us.nodes[0], f"{bob_jid}/pc")
    try:
        t = await bob.plugin["xep_0202"].get_entity_time(DOMAIN, timeout=5)
        assert abs(entity_time(t).timestamp() - time.time()) < 5
        await last_activity_after_logout(bob, alice, "left eu", settle=0.5)
    finally:
        await close(alice, bob)


# -- another domain over S2S -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Two Meridian deployments with their own domains; eu1 publishes contact addresses and TURN
    (in its gateway's settings too: a stanza from another server to the domain is answered there)."""
    modules = {"modules": {"external_services": {"secret": SECRET, "ttl": 600},
                           "contact_addresses": {"abuse": [f"mailto:abuse@{EU}"]}}}
    with two_sites(tmp_path_factory.mktemp("small-s2s"),
                   lambda b, name, domain, url, d: Site(b, name, domain, url, d, node_settings=modules,
                                                        gateway_settings=modules)) as world:
        yield world


async def test_time_last_activity_addresses_and_extdisco_over_s2s(domains: World):
    """bob of us1 asks eu1, over S2S: its time, its contact addresses (XEP-0157 is for exactly
    this), how long ago alice of eu1 left (he is subscribed to her), and for TURN credentials,
    which eu1 gives its own accounts only (``forbidden``)."""
    eu, us = domains.eu, domains.us
    alice_jid, bob_jid = f"{eu.user('alice')}@{EU}", f"{us.user('bob')}@{US}"
    alice = User(eu.node, f"{alice_jid}/phone", S2S_PASSWORD)
    bob = User(us.node, f"{bob_jid}/pc", S2S_PASSWORD)
    await alice.online(eu.node.port)
    await bob.online(us.node.port)
    try:
        t = await bob.plugin["xep_0202"].get_entity_time(EU, timeout=20)
        assert abs(entity_time(t).timestamp() - time.time()) < 5
        info = await bob.plugin["xep_0030"].get_info(jid=EU, timeout=10)
        assert abuse_addresses(info) == [f"mailto:abuse@{EU}"]
        up = await bob.plugin["xep_0012"].get_last_activity(EU, timeout=10)
        assert 0 <= int(up["last_activity"]["seconds"]) < 600
        with pytest.raises(IqError) as e:
            await raw_get(bob, EU, ET.Element(f"{{{EXTDISCO}}}services"))
        assert condition(e.value) == "forbidden"
        await last_activity_after_logout(bob, alice, "left eu1", settle=0.5)
    finally:
        await close(alice, bob)
