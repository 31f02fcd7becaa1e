"""XEP-0280 Message Carbons on a node without a network (tests/helpers/fake_host.py): which messages
are eligible, the wrapping, enable/disable as a replicated record flag, and which resources get
sent and received copies — here, on another member (``deliver_to_member``) and in other regions
(``route_fanout``, whose ``Fanout`` every region applies to its own records)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cluster_node.core.hooks import Hook
from cluster_node.core.router import Fanout
from cluster_node.modules.carbons import Carbons, rules
from cluster_node.modules.carbons.module import FLAG
from cluster_node.modules.carbons.rules import FORWARD, NS
from cluster_node.modules.disco import Disco
from cluster_node.xmpp import ns
from cluster_node.xmpp.fragment import parse_stanza
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.stanza import Stanza
from tests.helpers.fake_host import DOMAIN, FakeNode, FakeSession, error_condition, fake_node, stanza

ALICE = "alice@example.com"
BOB = "bob@example.com"
C = f"{{{ns.CLIENT}}}"
HINTS = "urn:xmpp:hints"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as n:
        await n.start(Carbons)
        yield n


def only(items: list[Stanza]) -> Stanza:
    assert len(items) == 1, items
    return items[0]


def msg(from_: str, to: str | None, body: str = "hi", type_: str | None = "chat", extra: str = "") -> Stanza:
    attrs = f" from='{from_}'" + (f" to='{to}'" if to else "") + (f" type='{type_}'" if type_ else "")
    body_el = f"<body>{body}</body>" if body else ""
    return stanza(f"<message xmlns='jabber:client'{attrs} id='m1'>{body_el}{extra}</message>")


def carbon(s: Stanza, direction: str) -> Stanza:
    """The forwarded original inside a carbon (asserting its shape)."""
    assert s.name == "message"
    box = s.child(NS, direction)
    assert box is not None, s
    forwarded = box.find(f"{{{FORWARD}}}forwarded")
    assert forwarded is not None
    inner = forwarded.find(C + "message")
    assert inner is not None
    return Stanza(inner)


def carbons_of(session: FakeSession, direction: str) -> list[Stanza]:
    return [carbon(s, direction) for s in session.delivered if s.child(NS, direction) is not None]


def originals(session: FakeSession) -> list[Stanza]:
    return [s for s in session.delivered if s.child(NS, "sent") is None and s.child(NS, "received") is None]


async def enable(node: FakeNode, session: FakeSession, payload: str = "enable", to: str | None = None) -> Stanza:
    jid = str(session.record.jid)
    to_attr = f" to='{to}'" if to else ""
    await node.route(f"<iq xmlns='jabber:client' from='{jid}'{to_attr} type='set' id='c1'>"
                     f"<{payload} xmlns='{NS}'/></iq>")
    return session.take()[-1]


def flagged(node: FakeNode, full: str) -> str | None:
    record = node.table.lookup(Jid.parse(full))
    assert record is not None
    return record.flags.get(FLAG)


def remote(node: FakeNode, full: str, *, priority: int = 0, carbons: bool = True) -> None:
    """A session of another member (its record replicated here), carbons-enabled or not."""
    record = node.bind_remote(full, priority=priority)
    if carbons:
        node.table.insert(record.with_flag(FLAG, "on"))


def capture_members(node: FakeNode) -> list[tuple[str, Stanza]]:
    sent: list[tuple[str, Stanza]] = []
    node.hooks.add(Hook.DELIVER_TO_MEMBER, lambda record, s: sent.append((str(record.jid), s)) or True)
    return sent


def capture_fanouts(node: FakeNode) -> list[tuple[Stanza, str, Fanout]]:
    fanouts: list[tuple[Stanza, str, Fanout]] = []
    node.hooks.add(Hook.ROUTE_FANOUT, lambda s, bare, which: fanouts.append((s, str(bare), which)) or True)
    node.services.other_regions = lambda: True  # a region with a gateway
    return fanouts


async def online(node: FakeNode, full: str, *, priority: int = 0, carbons: bool = False) -> FakeSession:
    session = node.bind(full, available=True, priority=priority)
    if carbons:
        reply = await enable(node, session)
        assert reply.type == "result", reply
    return session


# -- eligibility (XEP-0280 §6, §7; XEP-0334) ------------------------------------------------------------

ELIGIBILITY = [
    ("<message type='chat'><body>hi</body></message>", None),
    ("<message type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>", None),
    ("<message type='normal'><body>hi</body></message>", None),
    ("<message><body>no type is normal</body></message>", None),
    ("<message><received xmlns='urn:xmpp:receipts' id='x'/></message>", None),
    ("<message><displayed xmlns='urn:xmpp:chat-markers:0' id='x'/></message>", None),
    ("<message><composing xmlns='http://jabber.org/protocol/chatstates'/></message>", None),
    ("<message type='normal'/>", "type normal without a body or an IM payload"),
    ("<message><subject>only a subject</subject></message>", "type normal without a body or an IM payload"),
    ("<message type='headline'><body>news</body></message>", "type headline"),
    ("<message type='groupchat'><body>room</body></message>", "type groupchat"),
    ("<message type='error'><body>bounce</body></message>", "type error"),
    ("<message type='weird'><body>?</body></message>", "unknown type 'weird'"),
    (f"<message type='chat'><body>hi</body><private xmlns='{NS}'/></message>", "private"),
    (f"<message type='chat'><body>hi</body><no-copy xmlns='{HINTS}'/></message>", "no-copy hint"),
    (f"<message type='chat'><sent xmlns='{NS}'><forwarded xmlns='{FORWARD}'/></sent></message>", "already a carbon"),
    (f"<message type='chat'><received xmlns='{NS}'><forwarded xmlns='{FORWARD}'/></received></message>",
     "already a carbon"),
    ("<presence/>", "not a message"),
    ("<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>", "not a message"),
]


@pytest.mark.parametrize(("xml", "why"), ELIGIBILITY)
def test_eligibility(xml: str, why: str | None):
    s = stanza(xml)
    assert rules.ineligible(s) == why
    assert rules.eligible(s) is (why is None)


def test_private_is_found_without_parsing_other_messages_and_stripped():
    plain = msg(BOB, ALICE)
    assert not rules.is_private(plain)
    private = msg(BOB, ALICE, extra=f"<private xmlns='{NS}'/><thread>t1</thread>")
    assert rules.is_private(private)
    assert not rules.is_private(msg(BOB, ALICE, extra=f"<no-copy xmlns='{HINTS}'/>"))
    stripped = rules.strip_private(private)
    assert isinstance(stripped, rules.Unprivate)
    assert stripped.child(NS, "private") is None
    assert (stripped.from_, stripped.to, stripped.type, stripped.id) == (BOB, ALICE, "chat", "m1")
    back = parse_stanza(stripped.to_bytes())
    assert [c.tag for c in back.element] == [C + "body", C + "thread"]
    assert back.element.findtext(C + "body") == "hi"


# -- wrapping --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["sent", "received"])
def test_wrap_forwards_the_original_from_the_bare_jid(direction: str):
    original = msg(f"{BOB}/pc", f"{ALICE}/phone", body="a &lt; b &amp; 'c'", extra="<thread>t1</thread>")
    copy = rules.wrap(direction, original, ALICE)
    assert (copy.name, copy.from_, copy.to, copy.type) == ("message", ALICE, None, "chat")
    addressed = copy.with_attrs(to=f"{ALICE}/laptop")
    data = addressed.to_bytes()
    assert data.startswith(f"<message from='{ALICE}' type='chat' to='{ALICE}/laptop'>".encode())
    assert b"<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'" in data
    back = parse_stanza(data)  # what the client reads
    assert back.to == f"{ALICE}/laptop" and [c.tag for c in back.element] == [f"{{{NS}}}{direction}"]
    inner = carbon(back, direction)
    assert (inner.from_, inner.to, inner.type, inner.id) == (f"{BOB}/pc", f"{ALICE}/phone", "chat", "m1")
    assert inner.element.findtext(C + "body") == "a < b & 'c'"
    assert inner.element.findtext(C + "thread") == "t1"


def test_a_carbon_is_serialized_once_and_only_when_copied():
    """An original without kept bytes (built or changed as a tree): no bytes until a resource
    takes it (a gateway's carbon nobody elsewhere gets costs no serialization); then once, each
    copy rewriting only its start tag."""
    copy = rules.wrap("received", Stanza(msg(f"{BOB}/pc", f"{ALICE}/phone").element), ALICE)
    assert isinstance(copy, rules.Carbon) and copy._raw is None
    first, second = copy.with_attrs(to=f"{ALICE}/laptop"), copy.with_attrs(to=f"{ALICE}/tablet")
    raw = copy._raw
    assert raw is not None and first.to_bytes().endswith(raw[raw.index(b">") + 1:])
    assert second.to_bytes().replace(b"tablet", b"laptop") == first.to_bytes()


def _shape(data: bytes) -> tuple[object, ...]:
    """What a namespace-aware reader sees (prefixes aside)."""
    def walk(el: ET.Element) -> tuple[object, ...]:
        return el.tag, sorted(el.attrib.items()), el.text, el.tail, [walk(c) for c in el]
    return walk(ET.fromstring(data))


@pytest.mark.parametrize("original", [
    "<message to='b@x/r' type='chat' id='1'><body>a &amp; b</body></message>",  # a TCP client's
    "<message xmlns='jabber:client' to='b@x' id='2'><body>hi</body></message>",  # a WebSocket client's
    "<message to='b@x' type='normal'/>",
    "<message to='b@x' xml:lang='fr'><body>salut</body><x:y xmlns:x='urn:x'><x:z/></x:y></message>",
    "<message\tto='b@x'><body>tab</body><thread parent='p'>t</thread></message>",
])
@pytest.mark.parametrize("direction", ["sent", "received"])
def test_a_carbon_of_kept_bytes_embeds_them_and_reads_as_the_tree_would(original: str, direction: str):
    """A client's bytes go into the carbon as they are (no serialization of the original), with
    jabber:client declared where the client's stream implied it: what a client parses is the
    same as the tree serialized."""
    kept = stanza(original).stamp(from_="a@x/phone")
    assert kept.kept_bytes() is not None
    copy = rules.wrap(direction, kept, "a@x")
    raw = kept.kept_bytes()
    assert raw is not None and copy._raw is not None and raw[len("<message"):] in copy._raw  # as they are
    tree = rules.wrap(direction, Stanza(kept.element), "a@x")
    for c in (copy, copy.with_attrs(to="a@x/laptop")):
        want = tree.with_attrs(to=c.to) if c.to else tree
        assert _shape(c.to_bytes()) == _shape(want.to_bytes())
    inner = carbon(parse_stanza(copy.to_bytes()), direction)
    assert inner.namespace == ns.CLIENT and inner.from_ == "a@x/phone"


def test_wrap_keeps_a_missing_type_missing_and_refuses_other_directions():
    copy = rules.wrap("received", msg(BOB, ALICE, type_=None), ALICE)
    assert copy.type is None
    with pytest.raises(ValueError):
        rules.wrap("forwarded", msg(BOB, ALICE), ALICE)


# -- enable / disable -------------------------------------------------------------------------------------


async def test_enable_and_disable_flag_the_replicated_record(node: FakeNode):
    phone = node.bind(f"{ALICE}/phone")
    reply = await enable(node, phone)
    assert (reply.type, reply.id, reply.to, reply.from_) == ("result", "c1", f"{ALICE}/phone", ALICE)
    assert len(reply.element) == 0
    assert flagged(node, f"{ALICE}/phone") == "on"
    assert phone.record.flags.get(FLAG) == "on"  # the connection's record too
    assert (await enable(node, phone)).type == "result"  # twice is fine
    assert flagged(node, f"{ALICE}/phone") == "on"
    assert (await enable(node, phone, "disable")).type == "result"
    assert flagged(node, f"{ALICE}/phone") is None
    assert (await enable(node, phone, "disable")).type == "result"
    assert (await enable(node, phone, to=ALICE)).type == "result"  # to the own bare JID
    assert flagged(node, f"{ALICE}/phone") == "on"


async def test_enable_keeps_other_flags_and_presence(node: FakeNode):
    phone = node.bind(f"{ALICE}/phone", available=True, priority=3)
    phone.set_record(phone.record.with_flag("sm", "on"))
    await enable(node, phone)
    record = node.table.lookup(Jid.parse(f"{ALICE}/phone"))
    assert record is not None
    assert dict(record.flags) == {"sm": "on", FLAG: "on"}
    assert (record.available, record.priority) == (True, 3)


async def test_enable_for_another_account_or_as_get_is_refused(node: FakeNode):
    node.bind(f"{ALICE}/phone")
    bob = node.bind(f"{BOB}/pc")
    reply = await enable(node, bob, to=ALICE)
    assert error_condition(reply) == "not-allowed"
    assert flagged(node, f"{ALICE}/phone") is None and flagged(node, f"{BOB}/pc") is None
    await node.route(f"<iq xmlns='jabber:client' from='{BOB}/pc' type='get' id='g'><enable xmlns='{NS}'/></iq>")
    assert error_condition(only(bob.take())) == "bad-request"


async def test_disco_lists_the_carbons_feature(node: FakeNode):
    await node.start(Disco)
    phone = node.bind(f"{ALICE}/phone")
    await node.route(f"<iq xmlns='jabber:client' from='{ALICE}/phone' to='{DOMAIN}' type='get' id='d'>"
                     f"<query xmlns='{ns.DISCO_INFO}'/></iq>")
    q = only(phone.take()).child(ns.DISCO_INFO, "query")
    assert q is not None
    assert NS in [f.get("var") for f in q.findall(f"{{{ns.DISCO_INFO}}}feature")]


# -- sent carbons --------------------------------------------------------------------------------------------


async def test_sent_carbons_reach_the_other_enabled_resources_here_on_members_and_in_regions(node: FakeNode):
    members, fanouts = capture_members(node), capture_fanouts(node)
    phone = await online(node, f"{ALICE}/phone", carbons=True)
    laptop = await online(node, f"{ALICE}/laptop", carbons=True)
    tablet = await online(node, f"{ALICE}/tablet")  # carbons not enabled
    remote(node, f"{ALICE}/desk")  # on node2, enabled
    remote(node, f"{ALICE}/tv", carbons=False)
    bob = await online(node, f"{BOB}/pc")
    original = msg(f"{ALICE}/phone", f"{BOB}/pc", body="from the phone")
    await node.sessions.outbound(phone, original)  # type: ignore[arg-type]
    await node.settle()
    assert only(bob.take()).element.findtext(C + "body") == "from the phone"
    copy = only(laptop.take())
    assert (copy.from_, copy.to, copy.type) == (ALICE, f"{ALICE}/laptop", "chat")
    inner = carbon(copy, "sent")
    assert (inner.from_, inner.to) == (f"{ALICE}/phone", f"{BOB}/pc")
    assert inner.element.findtext(C + "body") == "from the phone"
    assert phone.delivered == [] and tablet.delivered == []
    assert [(to, carbon(s, "sent").element.findtext(C + "body")) for to, s in members] == [
        (f"{ALICE}/desk", "from the phone")]
    # The other regions apply the same selection to their own records.
    [(relayed, bare, which)] = [f for f in fanouts if f[0].child(NS, "sent") is not None]
    assert bare == ALICE
    assert which == Fanout(flag=FLAG, exclude=f"{ALICE}/phone", set_to=True)
    assert carbon(relayed, "sent").element.findtext(C + "body") == "from the phone"


async def test_the_sender_gets_no_copy_and_nothing_is_copied_without_enabled_resources(node: FakeNode):
    phone = await online(node, f"{ALICE}/phone", carbons=True)
    laptop = await online(node, f"{ALICE}/laptop")
    bob = await online(node, f"{BOB}/pc")
    await node.sessions.outbound(phone, msg(f"{ALICE}/phone", BOB))  # type: ignore[arg-type]
    await node.settle()
    assert len(bob.take()) == 1
    assert phone.delivered == [] and laptop.delivered == []


@pytest.mark.parametrize("extra", [f"<private xmlns='{NS}'/>", f"<no-copy xmlns='{HINTS}'/>"])
async def test_private_and_no_copy_messages_are_not_copied_when_sent(node: FakeNode, extra: str):
    phone = await online(node, f"{ALICE}/phone")
    laptop = await online(node, f"{ALICE}/laptop", carbons=True)
    bob = await online(node, f"{BOB}/pc")
    await node.sessions.outbound(phone, msg(f"{ALICE}/phone", f"{BOB}/pc", extra=extra))  # type: ignore[arg-type]
    await node.settle()
    assert laptop.delivered == []
    got = only(bob.take())
    assert got.child(NS, "private") is None  # the recipient's server removes <private/> (§7)
    assert (got.child(HINTS, "no-copy") is not None) is ("no-copy" in extra)


async def test_ineligible_messages_are_not_copied_when_sent(node: FakeNode):
    phone = await online(node, f"{ALICE}/phone")
    laptop = await online(node, f"{ALICE}/laptop", carbons=True)
    await online(node, f"{BOB}/pc")
    for s in (msg(f"{ALICE}/phone", f"{BOB}/pc", type_="headline"), msg(f"{ALICE}/phone", f"{BOB}/pc", type_=None,
                                                                        body=""),
              stanza(f"<presence xmlns='jabber:client' from='{ALICE}/phone' to='{BOB}'/>")):
        await node.sessions.outbound(phone, s)  # type: ignore[arg-type]
    await node.settle()
    assert laptop.delivered == []


# -- received carbons ----------------------------------------------------------------------------------------


async def test_no_copy_is_made_in_a_region_without_gateways_when_no_resource_has_carbons(node: FakeNode):
    """A cluster's members route a fan-out to their region's gateways: in a region that has none
    (one node or many), a copy no resource here can take is not built at all."""
    members = capture_members(node)
    fanouts: list[Stanza] = []
    node.hooks.add(Hook.ROUTE_FANOUT, lambda s, bare, which: fanouts.append(s) or True)  # a member's hand-off
    phone = await online(node, f"{ALICE}/phone")
    remote(node, f"{ALICE}/desk", carbons=False)
    bob = await online(node, f"{BOB}/pc")
    await node.sessions.outbound(phone, msg(f"{ALICE}/phone", f"{BOB}/pc", body="hi"))  # type: ignore[arg-type]
    await node.route(msg(f"{BOB}/pc", f"{ALICE}/phone", body="hello"))
    await node.settle()
    assert only(bob.take()).element.findtext(C + "body") == "hi"
    assert only(phone.take()).element.findtext(C + "body") == "hello"
    assert fanouts == [] and members == []
    assert node.services.modules["carbons"].counters == {"sent": 0, "received": 0}
    # Once the region has a gateway, another region may hold a carbons-enabled resource.
    node.services.other_regions = lambda: True
    await node.sessions.outbound(phone, msg(f"{ALICE}/phone", f"{BOB}/pc", body="again"))  # type: ignore[arg-type]
    await node.settle()
    assert sum(s.child(NS, "sent") is not None for s in fanouts) == 1


async def test_received_carbons_for_a_full_jid_skip_the_addressed_resource(node: FakeNode):
    members, fanouts = capture_members(node), capture_fanouts(node)
    phone = await online(node, f"{ALICE}/phone", carbons=True)
    laptop = await online(node, f"{ALICE}/laptop", carbons=True)
    tablet = await online(node, f"{ALICE}/tablet")
    remote(node, f"{ALICE}/desk")
    await online(node, f"{BOB}/pc")
    await node.route(msg(f"{BOB}/pc", f"{ALICE}/phone", body="to the phone"))
    got = only(phone.take())
    assert got.child(NS, "received") is None and got.element.findtext(C + "body") == "to the phone"
    copy = only(laptop.take())
    assert (copy.from_, copy.to, copy.type) == (ALICE, f"{ALICE}/laptop", "chat")
    inner = carbon(copy, "received")
    assert (inner.from_, inner.to) == (f"{BOB}/pc", f"{ALICE}/phone")
    assert tablet.delivered == []
    assert [(to, carbon(s, "received").to) for to, s in members] == [(f"{ALICE}/desk", f"{ALICE}/phone")]
    [(_, bare, which)] = [f for f in fanouts if f[0].child(NS, "received") is not None]
    assert (bare, which) == (ALICE, Fanout(flag=FLAG, exclude=f"{ALICE}/phone", set_to=True))


async def test_received_carbons_for_a_bare_jid_go_to_those_below_the_delivery_priority(node: FakeNode):
    members, fanouts = capture_members(node), capture_fanouts(node)
    phone = await online(node, f"{ALICE}/phone", priority=5, carbons=True)  # gets the original
    tablet = await online(node, f"{ALICE}/tablet", priority=5)  # gets the original
    laptop = await online(node, f"{ALICE}/laptop", priority=1, carbons=True)  # a carbon
    watch = await online(node, f"{ALICE}/watch", priority=1)  # nothing
    low = await online(node, f"{ALICE}/low", priority=-1, carbons=True)  # a carbon (negative: never the original)
    remote(node, f"{ALICE}/desk", priority=5)  # the original, on node2
    remote(node, f"{ALICE}/tv", priority=0)  # a carbon, on node2
    await node.route(msg(BOB, ALICE, body="to the bare jid"))
    assert [s.element.findtext(C + "body") for s in originals(phone)] == ["to the bare jid"]
    assert carbons_of(phone, "received") == []
    assert len(originals(tablet)) == 1 and watch.delivered == []
    for session in (laptop, low):
        copy = only(session.take())
        assert (copy.from_, copy.to) == (ALICE, str(session.record.jid))
        assert carbon(copy, "received").to == ALICE
    got = sorted((to, s.child(NS, "received") is not None) for to, s in members)
    assert got == [(f"{ALICE}/desk", False), (f"{ALICE}/tv", True)]
    assert [which for s, _, which in fanouts if s.child(NS, "received") is not None] == [
        Fanout(flag=FLAG, max_priority=4, set_to=True)]


async def test_no_received_carbons_when_every_enabled_resource_got_the_original(node: FakeNode):
    phone = await online(node, f"{ALICE}/phone", carbons=True)
    laptop = await online(node, f"{ALICE}/laptop", carbons=True)
    await node.route(msg(BOB, ALICE))
    assert [len(originals(s)) for s in (phone, laptop)] == [1, 1]
    assert carbons_of(phone, "received") == carbons_of(laptop, "received") == []


async def test_a_message_to_an_absent_resource_is_copied_like_one_to_the_bare_jid(node: FakeNode):
    phone = await online(node, f"{ALICE}/phone", priority=2)
    laptop = await online(node, f"{ALICE}/laptop", priority=0, carbons=True)
    await node.route(msg(BOB, f"{ALICE}/gone", body="where?"))
    assert len(originals(phone)) == 1
    assert [c.to for c in carbons_of(laptop, "received")] == [f"{ALICE}/gone"]


@pytest.mark.parametrize("extra", [f"<private xmlns='{NS}'/>", f"<no-copy xmlns='{HINTS}'/>"])
async def test_private_and_no_copy_messages_are_not_copied_when_received(node: FakeNode, extra: str):
    phone = await online(node, f"{ALICE}/phone", carbons=True)
    laptop = await online(node, f"{ALICE}/laptop", carbons=True)
    await node.route(msg(f"{BOB}/pc", f"{ALICE}/phone", extra=extra))
    got = only(phone.take())
    assert got.child(NS, "private") is None  # removed before delivery (§7)
    assert got.element.findtext(C + "body") == "hi"
    assert laptop.delivered == []
    await node.route(msg(f"{BOB}/pc", ALICE, extra=extra))  # to the bare JID: both get it, no carbons
    assert [s.child(NS, "private") for s in phone.take() + laptop.take()] == [None, None]


async def test_ineligible_messages_are_not_copied_when_received(node: FakeNode):
    phone = await online(node, f"{ALICE}/phone", carbons=True)
    laptop = await online(node, f"{ALICE}/laptop", carbons=True)
    await node.route(msg(f"{BOB}/pc", f"{ALICE}/phone", type_="headline"))
    await node.route(msg(f"{BOB}/pc", f"{ALICE}/phone", type_="normal", body=""))
    already = rules.wrap("received", msg(f"{BOB}/pc", f"{ALICE}/x"), ALICE).with_attrs(to=f"{ALICE}/phone")
    await node.route(already)  # a carbon is never copied again
    assert len(phone.take()) == 3
    assert laptop.delivered == []


async def test_a_message_between_two_resources_of_the_account_is_copied_once(node: FakeNode):
    phone = await online(node, f"{ALICE}/phone", carbons=True)
    laptop = await online(node, f"{ALICE}/laptop")
    tablet = await online(node, f"{ALICE}/tablet", carbons=True)
    await node.sessions.outbound(phone, msg(f"{ALICE}/phone", f"{ALICE}/laptop", body="note"))  # type: ignore[arg-type]
    await node.settle()
    assert [s.element.findtext(C + "body") for s in laptop.take()] == ["note"]
    assert phone.delivered == []  # no received carbon back to the sender
    assert [c.to for c in carbons_of(tablet, "sent")] == [f"{ALICE}/laptop"]
    assert carbons_of(tablet, "received") == []
    assert len(tablet.delivered) == 1


async def test_a_message_without_to_is_forwarded_to_the_own_bare_jid(node: FakeNode):
    phone = await online(node, f"{ALICE}/phone", priority=-1)
    laptop = await online(node, f"{ALICE}/laptop", priority=-1, carbons=True)
    s = stanza(f"<message xmlns='jabber:client' from='{ALICE}/phone' type='chat'><body>self</body></message>")
    await node.sessions.outbound(phone, s)  # type: ignore[arg-type]
    await node.settle()
    [inner] = carbons_of(laptop, "sent")
    assert (inner.from_, inner.to) == (f"{ALICE}/phone", ALICE)


async def test_stopping_the_module_removes_the_feature_and_the_copies(node: FakeNode):
    module = node.services.modules["carbons"]
    phone = await online(node, f"{ALICE}/phone", carbons=True)
    laptop = await online(node, f"{ALICE}/laptop", carbons=True)
    await node.route(msg(f"{BOB}/pc", f"{ALICE}/phone"))
    assert len(laptop.take()) == 1
    module.stop()
    module.host.release()  # what the loader does after stop()
    await node.route(msg(f"{BOB}/pc", f"{ALICE}/phone"))
    assert laptop.delivered == [] and len(phone.take()) == 2
    assert node.hooks.fold(Hook.DISCO_SERVER_FEATURES, set()) == set()
    await node.route(f"<iq xmlns='jabber:client' from='{ALICE}/phone' type='set' id='x'><enable xmlns='{NS}'/></iq>")
    assert error_condition(phone.take()[-1]) == "service-unavailable"


def test_carbons_are_a_builtin_module():
    from cluster_node.modules import BUILTIN

    assert BUILTIN["carbons"] is Carbons
    assert [x.number for x in Carbons.xeps] == [280, 334]
