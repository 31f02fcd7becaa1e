"""XEP-0163 PEP with real processes and slixmpp's own plugins (``xep_0060``, ``xep_0163``,
``xep_0115``, ``xep_0084``, ``xep_0402``, ``xep_0048``/``xep_0223``): alice and bob are mutually
subscribed; alice publishes her avatar; bob's client, whose caps say ``urn:xmpp:avatar:metadata+notify``,
gets the last item when it comes online and every new one after — on one node, with alice and bob
on the two nodes of a region, and in two regions (one node and one gateway each, Redis for the
mapping; the item written in eu is read in us).  On one node also: XEP-0402 bookmarks published
and retrieved, and read back through XEP-0048's PEP node and through XEP-0049 private storage
(``xep_0049``), which also writes them (in two regions too); the errors of a foreign publish and
an unknown node."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0048.stanza import Bookmarks
from slixmpp.plugins.xep_0054.stanza import VCardTemp
from slixmpp.plugins.xep_0084.stanza import MetaData

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

PASSWORD = "pep-secret"
BOOKMARKS2 = "urn:xmpp:bookmarks:1"
AVATAR = b"\x89PNG not really an image"


class PepClient(Client):
    """A client with slixmpp's PEP plugins (and vCards, ``xep_0054``); the avatar metadata events it
    gets are queued (its caps carry ``urn:xmpp:avatar:metadata+notify``, added by ``xep_0084``)."""

    def __init__(self, node: NodeProcess, jid: str, password: str = PASSWORD) -> None:
        super().__init__(jid, password, cert=node.cert)
        for plugin in ("xep_0004", "xep_0060", "xep_0115", "xep_0163", "xep_0084", "xep_0223", "xep_0048",
                       "xep_0402", "xep_0054"):
            self.register_plugin(plugin)
        self.avatars: asyncio.Queue[Any] = asyncio.Queue()
        self.add_event_handler("avatar_metadata_publish", lambda m: self.avatars.put_nowait(m))

    async def avatar(self, timeout: float = 10.0) -> str:
        """The item id of the next avatar metadata event."""
        msg = await asyncio.wait_for(self.avatars.get(), timeout)
        return str(msg["pubsub_event"]["items"]["item"]["id"])

    async def publish_avatar(self, data: bytes) -> str:
        xep = self.plugin["xep_0084"]
        item_id: str = xep.generate_id(data)
        await xep.publish_avatar(data, timeout=5)
        await xep.publish_avatar_metadata({"id": item_id, "type": "image/png", "bytes": len(data)}, timeout=5)
        return item_id


async def client(node: NodeProcess, port: int, jid: str) -> PepClient:
    return await PepClient(node, jid).online(port)  # type: ignore[return-value]


async def befriend(a: Client, b: Client) -> None:
    """Mutual presence subscription between the accounts of ``a`` and ``b``."""
    a_bare, b_bare = str(a.boundjid.bare), str(b.boundjid.bare)
    a.send_presence(pto=b_bare, ptype="subscribe")
    await b.next_presence("subscribe", sender=a_bare, timeout=10)
    b.send_presence(pto=a_bare, ptype="subscribed")
    b.send_presence(pto=a_bare, ptype="subscribe")
    await a.next_presence("subscribe", sender=b_bare, timeout=10)
    a.send_presence(pto=b_bare, ptype="subscribed")
    await b.next_presence("available", sender=a_bare, timeout=10)  # a's presence follows its approval


async def avatar_flow(alice: PepClient, bob_setup: PepClient, device_on: tuple[NodeProcess, int],
                      bob_jid: str) -> PepClient:
    """alice publishes an avatar; bob's device, coming online, gets it as the last item, then the
    next one as it is published.  Returns the device."""
    await befriend(alice, bob_setup)
    first = await alice.publish_avatar(AVATAR)
    assert await bob_setup.avatar() == first  # bob's first client asked for it too
    node, port = device_on
    device = await client(node, port, f"{bob_jid}/device")
    assert await device.avatar() == first  # XEP-0163 §4.3.2: the last item on coming online
    # The ping follows the device's record (with its interest flags) down the same links.
    await replicated((device, alice))
    second = await alice.publish_avatar(AVATAR + b"2")
    assert await device.avatar() == second
    assert await bob_setup.avatar() == second
    return device


# -- one node --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with one_node(tmp_path_factory.mktemp("pep-node"), "p1", users=("alice", "bob"), password=PASSWORD) as n:
        yield n


async def test_one_node(node: NodeProcess):
    alice = await client(node, node.port, "alice@localhost/phone")
    bob = await client(node, node.port, "bob@localhost/pc")
    device = None
    try:
        info = await alice.plugin["xep_0030"].get_info(jid="alice@localhost", timeout=5)
        assert ("pubsub", "pep", None, None) in info["disco_info"]["identities"]
        assert "http://jabber.org/protocol/pubsub#publish-options" in info["disco_info"]["features"]
        device = await avatar_flow(alice, bob, (node, node.port), "bob@localhost")
        # bob reads alice's avatar (presence access); he cannot publish to her nodes.
        got = await bob.plugin["xep_0060"].get_items(jid="alice@localhost", node=MetaData.namespace, timeout=5)
        assert len(got["pubsub"]["items"]) == 1
        with pytest.raises(IqError) as e:
            await bob.plugin["xep_0060"].publish("alice@localhost", MetaData.namespace, payload=MetaData(), timeout=5)
        assert e.value.iq["error"]["condition"] == "forbidden"
        with pytest.raises(IqError) as e:
            await bob.plugin["xep_0060"].get_items(jid="alice@localhost", node="urn:none", timeout=5)
        assert e.value.iq["error"]["condition"] == "item-not-found"
        await bookmarks(alice)
    finally:
        await close(*(c for c in (alice, bob, device) if c is not None))


async def test_access_models_private_nodes_and_subscriptions(node: NodeProcess):
    """XEP-0223 private storage is the owner's alone until she names a member (XEP-0060 §8.9);
    an explicit subscription (§6.1) to an open node brings its events to a client without caps."""
    alice = await client(node, node.port, "alice@localhost/desk")
    bob = await client(node, node.port, "bob@localhost/desk")
    try:
        xep_0060 = alice.plugin["xep_0060"]
        note = MetaData()  # any payload: a XEP-0223 node stores what it is given
        await alice.plugin["xep_0223"].store(note, node="urn:example:notes", id="n1", timeout=5)
        with pytest.raises(IqError) as e:
            await bob.plugin["xep_0060"].get_items(jid="alice@localhost", node="urn:example:notes", timeout=5)
        assert e.value.iq["error"]["condition"] == "not-allowed"
        await xep_0060.modify_affiliations("alice@localhost", "urn:example:notes",
                                           affiliations=[("bob@localhost", "member")], timeout=5)
        got = await bob.plugin["xep_0060"].get_items(jid="alice@localhost", node="urn:example:notes", timeout=5)
        assert [i["id"] for i in got["pubsub"]["items"]] == ["n1"]
        # Publishing to another account's node: forbidden, whatever the affiliation.
        with pytest.raises(IqError) as e:
            await bob.plugin["xep_0060"].publish("alice@localhost", "urn:example:notes", payload=MetaData(), timeout=5)
        assert e.value.iq["error"]["condition"] == "forbidden"
        # An open node: bob (no presence subscription, no caps for it) subscribes and gets events.
        options = alice.plugin["xep_0004"].make_form(ftype="submit")
        options.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
        options.add_field(var="pubsub#access_model", value="open")
        options.add_field(var="pubsub#send_last_published_item", value="never")
        await xep_0060.publish(None, "urn:example:news", id="first", payload=MetaData(), options=options, timeout=5)
        events: asyncio.Queue[Any] = asyncio.Queue()
        bob.add_event_handler("pubsub_publish", lambda m: events.put_nowait(m))
        sub = await bob.plugin["xep_0060"].subscribe("alice@localhost", "urn:example:news", timeout=5)
        assert sub["pubsub"]["subscription"]["subscription"] == "subscribed"
        await xep_0060.publish(None, "urn:example:news", id="second", payload=MetaData(), timeout=5)
        got_event = await asyncio.wait_for(events.get(), 10)
        assert got_event["pubsub_event"]["items"]["item"]["id"] == "second"
        await bob.plugin["xep_0060"].unsubscribe("alice@localhost", "urn:example:news", timeout=5)
        with pytest.raises(IqError) as e:
            await bob.plugin["xep_0060"].unsubscribe("alice@localhost", "urn:example:news", timeout=5)
        assert e.value.iq["error"]["condition"] == "unexpected-request"
    finally:
        await close(alice, bob)


class CapsClient(Client):
    """A client with caps (``xep_0115``) and PubSub but no avatar plugin: its caps carry no
    ``urn:xmpp:avatar:metadata+notify``, so PEP must not send it avatar events (XEP-0163 §4.2)."""

    def __init__(self, node: NodeProcess, jid: str) -> None:
        super().__init__(jid, PASSWORD, cert=node.cert)
        for plugin in ("xep_0004", "xep_0060", "xep_0115", "xep_0163"):
            self.register_plugin(plugin)


def publish_options(c: Client, **values: str) -> Any:
    options = c.plugin["xep_0004"].make_form(ftype="submit")
    options.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
    for var, value in values.items():
        options.add_field(var=f"pubsub#{var}", value=value)
    return options


async def test_caps_filter_retract_and_max_items(node: NodeProcess):
    """Over real sockets: a resource whose caps lack ``+notify`` gets no avatar event while its
    sibling with it does; ``max_items`` keeps the newest items; a retract removes the item and is
    notified to a subscriber (``notify_retract``); a node that does not persist keeps its last item."""
    alice_jid, bob_jid = fresh_users(node, PASSWORD, "alice", "bob", domain="localhost")
    alice = await client(node, node.port, f"{alice_jid}/desk")
    bob = await client(node, node.port, f"{bob_jid}/pep")
    plain = await CapsClient(node, f"{bob_jid}/plain").online(node.port)
    try:
        await befriend(alice, bob)
        await replicated((plain, alice))
        first = await alice.publish_avatar(AVATAR)
        assert await bob.avatar() == first
        alice.send_message(mto=f"{bob_jid}/plain", mbody="after the avatar", mtype="chat")
        while True:  # everything the plain resource got until alice's message: no avatar event
            msg = await plain.next_message(timeout=10, body=False)
            assert msg.xml.find("{http://jabber.org/protocol/pubsub#event}event") is None, msg
            if msg["body"] == "after the avatar":
                break
        xep_0060 = alice.plugin["xep_0060"]
        feed = "urn:example:feed"
        for n in ("one", "two", "three"):
            await xep_0060.publish(None, feed, id=n, payload=MetaData(), timeout=5,
                                   options=publish_options(alice, max_items="2", access_model="open",
                                                           send_last_published_item="never"))
        got = await bob.plugin["xep_0060"].get_items(jid=alice_jid, node=feed, timeout=5)
        assert sorted(i["id"] for i in got["pubsub"]["items"]) == ["three", "two"]  # "one" pushed out
        retracts: asyncio.Queue[Any] = asyncio.Queue()
        bob.add_event_handler("pubsub_retract", lambda m: retracts.put_nowait(m))
        await bob.plugin["xep_0060"].subscribe(alice_jid, feed, timeout=5)
        await xep_0060.retract(None, feed, "three", notify=True, timeout=5)
        event = await asyncio.wait_for(retracts.get(), 10)
        assert event["pubsub_event"]["items"]["retract"]["id"] == "three"
        got = await bob.plugin["xep_0060"].get_items(jid=alice_jid, node=feed, timeout=5)
        assert [i["id"] for i in got["pubsub"]["items"]] == ["two"]
        with pytest.raises(IqError) as e:  # only the owner retracts
            await bob.plugin["xep_0060"].retract(alice_jid, feed, "two", timeout=5)
        assert e.value.iq["error"]["condition"] == "forbidden"
        transient = "urn:example:now-playing"
        for n in ("a", "b"):
            await xep_0060.publish(None, transient, id=n, payload=MetaData(), timeout=5,
                                   options=publish_options(alice, persist_items="false", access_model="open"))
        got = await bob.plugin["xep_0060"].get_items(jid=alice_jid, node=transient, timeout=5)
        assert [i["id"] for i in got["pubsub"]["items"]] == ["b"]
    finally:
        await close(alice, bob, plain)


async def bookmarks(alice: PepClient) -> None:
    """XEP-0402: a bookmark published with the XEP's publish-options, retrieved, and seen through
    XEP-0048's PEP node (XEP-0223) by an older client; the wrong options are refused."""
    conf = alice.plugin["xep_0402"].stanza.Conference()
    conf["name"], conf["autojoin"], conf["nick"] = "The Coven", True, "puck"
    options = alice.plugin["xep_0004"].make_form(ftype="submit")
    options.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
    for var, value in (("pubsub#persist_items", "true"), ("pubsub#max_items", "max"),
                       ("pubsub#send_last_published_item", "never"), ("pubsub#access_model", "whitelist")):
        options.add_field(var=var, value=value)
    xep_0060 = alice.plugin["xep_0060"]
    await xep_0060.publish(None, BOOKMARKS2, id="coven@chat.localhost", payload=conf, options=options, timeout=5)
    got = await xep_0060.get_items(jid=None, node=BOOKMARKS2, timeout=5)
    items = list(got["pubsub"]["items"])
    assert [i["id"] for i in items] == ["coven@chat.localhost"]
    assert items[0]["conference"]["name"] == "The Coven" and items[0]["conference"]["autojoin"]
    legacy = await alice.plugin["xep_0048"].get_bookmarks(method="xep_0223", timeout=5)
    conferences = legacy["pubsub"]["items"]["item"]["bookmarks"]["conferences"]
    assert [(str(c["jid"]), c["name"], c["nick"]) for c in conferences] == [
        ("coven@chat.localhost", "The Coven", "puck")]
    # The node exists as whitelisted: asking for it open is a precondition that is not met.
    open_options = alice.plugin["xep_0004"].make_form(ftype="submit")
    open_options.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#publish-options")
    open_options.add_field(var="pubsub#access_model", value="open")
    with pytest.raises(IqError) as e:
        await xep_0060.publish(None, BOOKMARKS2, id="x@chat.localhost", payload=conf, options=open_options,
                               timeout=5)
    assert e.value.iq["error"]["condition"] == "conflict"
    await bookmarks_through_private_storage(alice, "coven@chat.localhost")


async def bookmarks_through_private_storage(alice: PepClient, present: str) -> None:
    """XEP-0402 §5.3: a XEP-0048 client on XEP-0049 private storage (slixmpp's xep_0048 default)
    reads the XEP-0402 list (``present`` is in it) and replaces it; a XEP-0402 client sees the change."""
    xep_0048 = alice.plugin["xep_0048"]
    info = await alice.plugin["xep_0030"].get_info(jid=alice.boundjid.bare, timeout=5)
    assert f"{BOOKMARKS2}#compat" in info["disco_info"]["features"]
    got = await xep_0048.get_bookmarks(method="xep_0049", timeout=5)
    assert present in [str(c["jid"]) for c in got["private"]["bookmarks"]["conferences"]]
    storage = Bookmarks()
    storage.add_conference("hall@chat.example.net", "oberon", name="The Hall", autojoin=True)
    storage.add_url("https://example.net/", name="Site")
    await xep_0048.set_bookmarks(storage, method="xep_0049", timeout=5)
    got = await alice.plugin["xep_0060"].get_items(jid=None, node=BOOKMARKS2, timeout=5)
    items = list(got["pubsub"]["items"])
    assert [i["id"] for i in items] == ["hall@chat.example.net"]
    assert items[0]["conference"]["name"] == "The Hall" and items[0]["conference"]["nick"] == "oberon"
    got = await xep_0048.get_bookmarks(method="xep_0049", timeout=5)
    assert [str(c["jid"]) for c in got["private"]["bookmarks"]["conferences"]] == ["hall@chat.example.net"]
    assert [u["url"] for u in got["private"]["bookmarks"]["urls"]] == ["https://example.net/"]


# -- a two-node region ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    with two_node_region(tmp_path_factory.mktemp("pep-region"), users=("alice", "bob"), password=PASSWORD) as nodes:
        yield nodes


async def test_two_nodes_of_a_region(region: list[NodeProcess]):
    """alice on r1 publishes; bob's clients are on r2 (the device's interest reaches r1 on its record)."""
    r1, r2 = region
    alice = await client(r1, r1.port, "alice@localhost/phone")
    bob = await client(r2, r2.port, "bob@localhost/pc")
    device = None
    laptop = None
    try:
        device = await avatar_flow(alice, bob, (r2, r2.port), "bob@localhost")
        # Bookmarks (XEP-0402 and its XEP-0048/0049 views) written on r1, read and rewritten on r2.
        await bookmarks(alice)
        laptop = await client(r2, r2.port, "alice@localhost/laptop")
        mine = await laptop.plugin["xep_0060"].get_items(jid=None, node=BOOKMARKS2, timeout=5)
        assert [i["id"] for i in mine["pubsub"]["items"]] == ["hall@chat.example.net"]
        await bookmarks_through_private_storage(laptop, "hall@chat.example.net")
    finally:
        await close(*(c for c in (alice, bob, device, laptop) if c is not None))


# -- two regions -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Region, Region]]:
    need_redis()
    base = tmp_path_factory.mktemp("pep-regions")
    with RedisServer() as redis, two_regions(base, redis) as both:
        yield both.eu, both.us


async def test_two_regions(regions: tuple[Region, Region]):
    """alice publishes in eu; bob in us reads the item and gets the events; alice's bookmark
    written in eu is read by her own client in us."""
    eu, us = regions
    alice_jid, bob_jid = fresh_users(eu.nodes[0], PASSWORD, "alice", "bob")
    eu_node, us_node = eu.nodes[0], us.nodes[0]
    phone = await client(eu_node, eu_node.port, f"{alice_jid}/phone")
    pc = await client(us_node, us_node.port, f"{bob_jid}/pc")
    clients: list[Client] = [phone, pc]
    try:
        await mapped((eu.gateways[0], us.gateways[0]), {alice_jid: ["phone"], bob_jid: ["pc"]})
        device = await avatar_flow(phone, pc, (us_node, us_node.port), bob_jid)
        clients.append(device)
        got = await pc.plugin["xep_0060"].get_items(jid=alice_jid, node=MetaData.namespace, timeout=5)
        assert len(got["pubsub"]["items"]) == 1  # written in eu, read in us
        conf = phone.plugin["xep_0402"].stanza.Conference()
        conf["name"] = "Across"
        await phone.plugin["xep_0060"].publish(None, BOOKMARKS2, id="across@chat.example.com", payload=conf,
                                               timeout=5)
        laptop = await client(us_node, us_node.port, f"{alice_jid}/laptop")
        clients.append(laptop)
        mine = await laptop.plugin["xep_0060"].get_items(jid=None, node=BOOKMARKS2, timeout=5)
        assert [i["id"] for i in mine["pubsub"]["items"]] == ["across@chat.example.com"]
        # Her older client in us keeps bookmarks through XEP-0049; her eu phone reads them as XEP-0402.
        await bookmarks_through_private_storage(laptop, "across@chat.example.com")
        mine = await phone.plugin["xep_0060"].get_items(jid=None, node=BOOKMARKS2, timeout=5)
        assert [i["id"] for i in mine["pubsub"]["items"]] == ["hall@chat.example.net"]
    finally:
        await close(*clients)


# -- another domain over S2S -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Site]]:
    """Two Meridian deployments with their own domains, as tests/integration/test_s2s.py starts them."""
    with two_sites(tmp_path_factory.mktemp("pep-s2s")) as world:
        yield world.eu, world.us


async def test_over_s2s(domains: tuple[Site, Site]):
    """bob, of another domain, and alice befriend over S2S: her avatar reaches his client as an
    event (his interest learnt from his caps, asked over S2S), he reads her node's items and her
    vCard (XEP-0054) through his own server, and cannot publish to her node."""
    eu, us = domains
    alice_jid, bob_jid = f"{eu.user('alice')}@{EU}", f"{us.user('bob')}@{US}"
    alice = await PepClient(eu.node, f"{alice_jid}/phone", S2S_PASSWORD).online(eu.node.port)
    bob = await PepClient(us.node, f"{bob_jid}/pc", S2S_PASSWORD).online(us.node.port)
    try:
        # bob asks first: his presence, sent when he approves alice's request, then reaches a
        # subscriber of hers (an other-domain contact's interest is learnt from its presence).
        await befriend(bob, alice)
        card = VCardTemp()
        card["FN"] = "Alice of eu1"
        await alice.plugin["xep_0054"].publish_vcard(card, timeout=5)
        first = await alice.publish_avatar(AVATAR)
        assert await bob.avatar(timeout=20) == first  # as it is published, or as the last item once known
        got = await bob.plugin["xep_0060"].get_items(jid=alice_jid, node=MetaData.namespace, timeout=10)
        assert [i["id"] for i in got["pubsub"]["items"]] == [first]
        vcard = await bob.plugin["xep_0054"].get_vcard(alice_jid, timeout=10)
        assert vcard["vcard_temp"]["FN"] == "Alice of eu1"
        with pytest.raises(IqError) as e:
            await bob.plugin["xep_0060"].publish(alice_jid, MetaData.namespace, payload=MetaData(), timeout=10)
        assert e.value.iq["error"]["condition"] == "forbidden"
        second = await alice.publish_avatar(AVATAR + b"2")
        assert await bob.avatar(timeout=10) == second
    finally:
        await close(alice, bob)
