"""XEP-0163 PEP on a node without a network (tests/helpers/fake_host.py): requests and forms
(sans-IO), publish/retract/items/configure/delete/purge, access models, publish-options
preconditions, the limits, who gets notifications (the owner's resources, presence subscribers
whose resources asked for the node through caps — here, on another member, in another domain),
the last item on coming online, the caps round trip and its cache, XEP-0402 ↔ XEP-0048 bookmarks
and the XEP-0084 access rule."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from cluster_node.core.hooks import Hook
from cluster_node.core.sessions import SessionRecord
from cluster_node.modules.disco import Disco
from cluster_node.modules.pep import Pep, protocol as p
from cluster_node.modules.pep.module import ID_PREFIX
from cluster_node.modules.pep.protocol import (
    BOOKMARKS2,
    BOOKMARKS_LEGACY,
    EVENT,
    OWNER,
    PUBSUB,
    Caps,
    FormUnsupported,
    FormValueError,
    NodeConfig,
)
from cluster_node.modules.pep.store import PepStore
from cluster_node.modules.private import PrivateStorage
from cluster_node.storage import RosterItem, Storage, open_storage
from cluster_node.xmpp import errors, ns
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.stanza import Stanza
from tests.helpers.fake_host import DOMAIN, FakeNode, FakeSession, error_condition, fake_node, stanza

ALICE, BOB, CAROL = f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}"
DAVE = "dave@other.example"
TUNE = "http://jabber.org/protocol/tune"
AVATAR_MD = "urn:xmpp:avatar:metadata"
AVATAR_DATA = "urn:xmpp:avatar:data"
X = "jabber:x:data"
_P, _O, _E = f"{{{PUBSUB}}}", f"{{{OWNER}}}", f"{{{EVENT}}}"


# -- helpers ------------------------------------------------------------------------------------------


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as n:
        for user in ("alice", "bob", "carol"):
            await n.create_account(f"{user}@{DOMAIN}")
        await n.start(Pep, max_items_per_node=5, max_payload=2048, max_nodes_per_user=4, caps_timeout=2.0)
        yield n


def pep(node: FakeNode) -> Pep:
    m: Pep = node.services.modules["pep"]
    return m


async def subscribe(node: FakeNode, user: str, contact: str, subscription: str) -> None:
    """``contact`` in ``user``'s roster with ``subscription`` (presence: 'from' = contact sees user)."""
    j = Jid.parse(user)
    await node.storage.put_roster_item(j.domain, j.local or "", RosterItem(jid=contact, subscription=subscription))


async def mutual(node: FakeNode, a: str, b: str) -> None:
    await subscribe(node, a, b, "both")
    await subscribe(node, b, a, "both")


def form(form_type: str, **fields: str) -> str:
    inner = f"<field var='FORM_TYPE' type='hidden'><value>{form_type}</value></field>"
    inner += "".join(f"<field var='pubsub#{k}'><value>{v}</value></field>" for k, v in fields.items())
    return f"<x xmlns='{X}' type='submit'>{inner}</x>"


def publish_xml(node_name: str, payload: str, item_id: str | None = "current", **options: str) -> str:
    item = f"<item id='{item_id}'>{payload}</item>" if item_id else f"<item>{payload}</item>"
    opts = f"<publish-options>{form(p.PUBLISH_OPTIONS, **options)}</publish-options>" if options else ""
    return f"<pubsub xmlns='{PUBSUB}'><publish node='{node_name}'>{item}</publish>{opts}</pubsub>"


def tune(title: str) -> str:
    return f"<tune xmlns='{TUNE}'><title>{title}</title></tune>"


async def iq(node: FakeNode, session: FakeSession, payload: str, type_: str = "set", to: str | None = None) -> Stanza:
    """An IQ from ``session`` (to ``to``, else its own account); its reply (events stay queued)."""
    to_attr = f" to='{to}'" if to else ""
    await node.route(f"<iq xmlns='jabber:client' from='{session.record.jid}'{to_attr} type='{type_}' id='q1'>"
                     f"{payload}</iq>")
    replies = [s for s in session.delivered if s.name == "iq" and s.id == "q1"]
    session.delivered = [s for s in session.delivered if s not in replies]
    assert len(replies) == 1, replies
    return replies[0]


async def publish(node: FakeNode, session: FakeSession, node_name: str, payload: str,
                  item_id: str | None = "current", **options: str) -> Stanza:
    return await iq(node, session, publish_xml(node_name, payload, item_id, **options))


async def items(node: FakeNode, session: FakeSession, owner: str, node_name: str, extra: str = "",
                inner: str = "") -> Stanza:
    return await iq(node, session, f"<pubsub xmlns='{PUBSUB}'><items node='{node_name}'{extra}>{inner}</items>"
                    f"</pubsub>", "get", owner)


def item_ids(reply: Stanza) -> list[str]:
    el = reply.element.find(f"{_P}pubsub/{_P}items")
    assert el is not None, reply
    return [i.get("id", "") for i in el.findall(_P + "item")]


def events(session: FakeSession, kind: str = "item") -> list[tuple[str, str, str]]:
    """(node, kind, id) of the PEP events delivered to ``session`` since the last call; kind is
    item, retract, delete or purge."""
    out = []
    for s in session.take():
        ev = s.element.find(_E + "event")
        if s.name != "message" or ev is None:
            continue
        assert s.type == "headline" and s.to == str(session.record.jid), s
        for child in ev:
            if child.tag == _E + "items":
                for it in child:
                    out.append((child.get("node", ""), it.tag.rpartition("}")[2], it.get("id", "")))
            else:
                out.append((child.get("node", ""), child.tag.rpartition("}")[2], ""))
    return out


def set_interest(node: FakeNode, session: FakeSession, *nodes: str) -> None:
    """What the caps round trip leaves on the record (tested in test_caps_round_trip)."""
    session.set_record(replace(session.record, flags=p.notify_flags(session.record.flags, nodes)))


async def until(check: Callable[[], object], timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


# -- protocol: requests and forms ---------------------------------------------------------------------


def _el(xml: str) -> ET.Element:
    return ET.fromstring(xml)


def test_parse_publish_and_its_errors():
    req = p.parse_request("set", _el(publish_xml(TUNE, tune("x"), "i1", access_model="open")))
    assert isinstance(req, p.Publish) and (req.node, req.item_id) == (TUNE, "i1")
    assert req.options == {"FORM_TYPE": [p.PUBLISH_OPTIONS], "pubsub#access_model": ["open"]}
    assert req.payload.tag == f"{{{TUNE}}}tune"
    bad: list[tuple[str, str, type[errors.StanzaError]]] = [
        ("get", publish_xml(TUNE, tune("x")), errors.BadRequest),
        ("set", f"<pubsub xmlns='{PUBSUB}'><publish><item>{tune('x')}</item></publish></pubsub>", p.NodeIdRequired),
        ("set", f"<pubsub xmlns='{PUBSUB}'><publish node='n'/></pubsub>", p.ItemRequired),
        ("set", f"<pubsub xmlns='{PUBSUB}'><publish node='n'><item/></publish></pubsub>", p.PayloadRequired),
        ("set", f"<pubsub xmlns='{PUBSUB}'><publish node='n'><item>{tune('a')}{tune('b')}</item></publish></pubsub>",
         p.InvalidPayload),
        ("set", f"<pubsub xmlns='{PUBSUB}'><publish node='n'><item>{tune('a')}</item><item>{tune('b')}</item>"
         f"</publish></pubsub>", p.InvalidPayload),
        ("set", f"<pubsub xmlns='{PUBSUB}'><publish node='n'><item>{tune('a')}</item></publish><publish-options>"
         f"{form(p.NODE_CONFIG, access_model='open')}</publish-options></pubsub>", p.InvalidOptions),
        ("set", f"<pubsub xmlns='{PUBSUB}'><options node='n' jid='a@b'/></pubsub>", p.Unsupported),
        ("get", f"<pubsub xmlns='{PUBSUB}'><subscribe node='n' jid='a@b'/></pubsub>", errors.BadRequest),
        ("set", f"<pubsub xmlns='{PUBSUB}'><subscribe node='n'/></pubsub>", p.InvalidJid),
        ("set", f"<pubsub xmlns='{OWNER}'><affiliations node='n'><affiliation jid='a@b' affiliation='publisher'/>"
         f"</affiliations></pubsub>", errors.NotAcceptable),
        ("set", f"<pubsub xmlns='{OWNER}'><subscriptions node='n'/></pubsub>", errors.BadRequest),
        ("get", f"<pubsub xmlns='{PUBSUB}'><items node='n' max_items='0'/></pubsub>", errors.BadRequest),
        ("get", f"<pubsub xmlns='{PUBSUB}'><items node='n' max_items='x'/></pubsub>", errors.BadRequest),
        ("set", f"<pubsub xmlns='{PUBSUB}'><retract node='n'/></pubsub>", p.ItemRequired),
        ("set", f"<pubsub xmlns='{PUBSUB}'><create/></pubsub>", p.NodeIdRequired),
        ("set", f"<pubsub xmlns='{OWNER}'><delete/></pubsub>", p.NodeIdRequired),
        ("get", f"<pubsub xmlns='{OWNER}'><delete node='n'/></pubsub>", errors.BadRequest),
    ]
    for type_, xml, error in bad:
        with pytest.raises(error):
            p.parse_request(type_, _el(xml))
    # The reply carries the RFC 6120 condition and XEP-0060's application element.
    xml = p.PreconditionNotMet("x").to_xml().decode()
    assert "<conflict xmlns" in xml
    assert '<precondition-not-met xmlns="http://jabber.org/protocol/pubsub#errors" />' in xml
    assert p.PreconditionNotMet.condition == "conflict" and p.PayloadTooBig.condition == "not-acceptable"


def test_parse_other_requests():
    def parse(type_: str, xml: str) -> p.Request:
        return p.parse_request(type_, _el(xml))

    assert parse("get", f"<pubsub xmlns='{PUBSUB}'><items node='n' max_items='2'><item id='a'/></items></pubsub>") \
        == p.Items("n", 2, ("a",))
    assert parse("set", f"<pubsub xmlns='{PUBSUB}'><retract node='n' notify='1'><item id='a'/></retract></pubsub>") \
        == p.Retract("n", ("a",), True)
    assert parse("set", f"<pubsub xmlns='{PUBSUB}'><retract node='n'><item id='a'/></retract></pubsub>") \
        == p.Retract("n", ("a",), None)
    assert parse("get", f"<pubsub xmlns='{OWNER}'><configure node='n'/></pubsub>") == p.GetConfig("n")
    assert parse("set", f"<pubsub xmlns='{OWNER}'><configure node='n'><x xmlns='{X}' type='cancel'/></configure>"
                        f"</pubsub>") == p.SetConfig("n", None)
    assert parse("set", f"<pubsub xmlns='{OWNER}'><purge node='n'/></pubsub>") == p.Purge("n")
    assert parse("get", f"<pubsub xmlns='{OWNER}'><default/></pubsub>") == p.GetDefault()
    assert parse("get", f"<pubsub xmlns='{PUBSUB}'><affiliations/></pubsub>") == p.Affiliations(None)
    created = parse("set", f"<pubsub xmlns='{PUBSUB}'><create node='n'/><configure>"
                           f"{form(p.NODE_CONFIG, max_items='3')}</configure></pubsub>")
    assert isinstance(created, p.Create) and created.config and created.config["pubsub#max_items"] == ["3"]


def test_node_config_fields_and_preconditions():
    base = NodeConfig()
    assert (base.access_model, base.persist_items, base.max_items) == ("presence", True, 1)
    c = p.apply_fields(base, {"pubsub#access_model": ["whitelist"], "pubsub#max_items": ["max"],
                              "pubsub#persist_items": ["true"], "pubsub#send_last_published_item": ["never"]}, 10)
    assert (c.access_model, c.max_items, c.effective_max(10), c.send_last_published_item) == (
        "whitelist", None, 10, "never")
    assert p.apply_fields(base, {"pubsub#persist_items": ["0"]}, 10).effective_max(10) == 1
    for fields, error in (({"pubsub#persist_items": ["maybe"]}, FormValueError),
                          ({"pubsub#max_items": ["0"]}, FormValueError),
                          ({"pubsub#max_items": ["lots"]}, FormValueError),
                          ({"pubsub#access_model": ["everyone"]}, FormValueError),
                          ({"pubsub#access_model": ["roster"]}, FormUnsupported),
                          ({"pubsub#max_items": ["11"]}, FormUnsupported),
                          ({"pubsub#made_up": ["1"]}, FormUnsupported),
                          ({"muc#roomconfig_x": ["1"]}, FormUnsupported),
                          ({"pubsub#publish_model": ["open"]}, FormUnsupported)):
        with pytest.raises(error):
            p.apply_fields(base, fields, 10)
    # Preconditions: the node's configuration must already be what is asked ("max" == the cap).
    node = NodeConfig(access_model="whitelist", max_items=None)
    assert p.preconditions_met(node, {"pubsub#access_model": ["whitelist"], "pubsub#max_items": ["max"]}, 10)
    assert p.preconditions_met(node, {"pubsub#max_items": ["10"]}, 10)
    assert not p.preconditions_met(node, {"pubsub#access_model": ["open"]}, 10)
    assert not p.preconditions_met(node, {"pubsub#max_items": ["3"]}, 10)
    assert not p.preconditions_met(node, {"pubsub#made_up": ["1"]}, 10)
    with pytest.raises(FormValueError):
        p.preconditions_met(node, {"pubsub#persist_items": ["maybe"]}, 10)
    # JSON round trip, with garbage falling back to the defaults.
    assert NodeConfig.from_json(node.to_json()) == node
    assert NodeConfig.from_json({"access_model": 3, "max_items": 0}) == NodeConfig()
    # The form lists the current values and reads back as the same configuration.
    x = p.config_form(node, 10)
    read = p.parse_form(x, p.NODE_CONFIG)
    assert read is not None and p.apply_fields(NodeConfig(), read, 10) == node


def test_access_rules():
    for model, owner, subscribed, error in (("presence", True, False, None), ("presence", False, True, None),
                                            ("presence", False, False, p.PresenceSubscriptionRequired),
                                            ("open", False, False, None), ("whitelist", True, False, None),
                                            ("whitelist", False, True, p.ClosedNode)):
        config = NodeConfig(access_model=model)
        if error is None:
            p.may_read(config, owner=owner, subscribed=subscribed)
        else:
            with pytest.raises(error):
                p.may_read(config, owner=owner, subscribed=subscribed)


# -- protocol: caps -----------------------------------------------------------------------------------

SIMPLE = ("<query xmlns='http://jabber.org/protocol/disco#info'>"
          "<identity category='client' type='pc' name='Exodus 0.9.1'/>"
          "<feature var='http://jabber.org/protocol/caps'/><feature var='http://jabber.org/protocol/disco#info'/>"
          "<feature var='http://jabber.org/protocol/disco#items'/><feature var='http://jabber.org/protocol/muc'/>"
          "</query>")
COMPLEX = ("<query xmlns='http://jabber.org/protocol/disco#info'>"
           "<identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>"
           "<identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>"
           "<feature var='http://jabber.org/protocol/caps'/><feature var='http://jabber.org/protocol/disco#info'/>"
           "<feature var='http://jabber.org/protocol/disco#items'/><feature var='http://jabber.org/protocol/muc'/>"
           "<x xmlns='jabber:x:data' type='result'>"
           "<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>"
           "<field var='ip_version'><value>ipv4</value><value>ipv6</value></field>"
           "<field var='os'><value>Mac</value></field><field var='os_version'><value>10.5.1</value></field>"
           "<field var='software'><value>Psi</value></field><field var='software_version'><value>0.11</value></field>"
           "</x></query>")


def test_caps_verification_string_and_hash():
    """XEP-0115 §5.2 and §5.3 examples."""
    simple = _el(SIMPLE)
    assert p.verification_string(simple) == (
        "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<http://jabber.org/protocol/disco#info<"
        "http://jabber.org/protocol/disco#items<http://jabber.org/protocol/muc<")
    assert p.verify_caps(Caps("http://code.google.com/p/exodus", "QgayPKawpkPSDYmwT/WM94uAlu0=", "sha-1"), simple)
    assert not p.verify_caps(Caps("n", "QgayPKawpkPSDYmwT/WM94uAlu0=", "md5"), simple)
    assert not p.verify_caps(Caps("n", "AAAAPKawpkPSDYmwT/WM94uAlu0=", "sha-1"), simple)
    assert not p.verify_caps(Caps("n", "not base64!", "sha-1"), simple)
    assert p.verify_caps(Caps("http://psi-im.org", "q07IKJEyjvHSyhy//CH0CxmKi8w=", "sha-1"), _el(COMPLEX))
    duplicated = _el(SIMPLE.replace("</query>", "<feature var='http://jabber.org/protocol/muc'/></query>"))
    assert p.verification_string(duplicated) is None
    assert p.notify_nodes(["a+notify", "b", "+notify", "urn:xmpp:avatar:metadata+notify"]) == {
        "a", "urn:xmpp:avatar:metadata"}
    presence = stanza("<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
                      "node='http://x' ver='abc='/></presence>")
    assert p.caps_of(presence) == Caps("http://x", "abc=", "sha-1")
    assert p.caps_of(stanza("<presence xmlns='jabber:client'/>")) is None
    assert p.notify_flags({"carbons": "on", p.notify_flag("old"): "1"}, ["new"]) == {"carbons": "on",
                                                                                      p.notify_flag("new"): "1"}


def test_bookmarks_conversions():
    legacy = _el(f"<storage xmlns='{BOOKMARKS_LEGACY}'><conference jid='a@muc.x' name='A' autojoin='1'><nick>n"
                 f"</nick></conference><conference jid='b@muc.x'/><url name='site' url='https://x'/></storage>")
    keep = _el(f"<conference xmlns='{BOOKMARKS2}'><extensions><x xmlns='urn:example'/></extensions></conference>")
    b2 = p.legacy_to_bookmarks2(legacy, {"a@muc.x": keep})
    assert list(b2) == ["a@muc.x", "b@muc.x"]
    a = b2["a@muc.x"]
    assert (a.get("name"), a.get("autojoin"), a.findtext(f"{{{BOOKMARKS2}}}nick")) == ("A", "true", "n")
    assert a.find(f"{{{BOOKMARKS2}}}extensions/{{urn:example}}x") is not None
    back = p.bookmarks2_to_legacy(b2.items(), legacy)
    confs = back.findall(f"{{{BOOKMARKS_LEGACY}}}conference")
    assert [(c.get("jid"), c.get("autojoin")) for c in confs] == [("a@muc.x", "true"), ("b@muc.x", "false")]
    assert back.find(f"{{{BOOKMARKS_LEGACY}}}url") is not None  # URL bookmarks survive
    reordered = _el(f"<conference xmlns='{BOOKMARKS2}' autojoin='1' name='A'><nick>n</nick><extensions>"
                    f"<x xmlns='urn:example'/></extensions></conference>")
    assert p.same_conference(a, reordered) and not p.same_conference(a, b2["b@muc.x"])
    assert p.legacy_to_bookmarks2(_el("<other xmlns='urn:x'/>"), {}) == {}


# -- the service ---------------------------------------------------------------------------------------


async def test_publish_items_retract_and_the_owners_resources(node: FakeNode):
    phone = node.bind(f"{ALICE}/phone", available=True)
    laptop = node.bind(f"{ALICE}/laptop", available=True)
    away = node.bind(f"{ALICE}/away")  # bound, no presence: no events
    reply = await publish(node, phone, TUNE, tune("one"), item_id=None)
    assert reply.type == "result", reply
    generated = reply.element.find(f"{_P}pubsub/{_P}publish/{_P}item")
    assert generated is not None and generated.get("id")
    assert events(phone) == events(laptop) == [(TUNE, "item", generated.get("id"))]
    assert events(away) == []
    # Default max_items is 1: the next item replaces it.
    await publish(node, phone, TUNE, tune("two"), item_id="t2")
    got = await items(node, phone, ALICE, TUNE)
    assert item_ids(got) == ["t2"]
    payload = got.element.find(f"{_P}pubsub/{_P}items/{_P}item/{{{TUNE}}}tune/{{{TUNE}}}title")
    assert payload is not None and payload.text == "two"
    # No 'to' and the bare JID are the same service.
    assert item_ids(await iq(node, phone, f"<pubsub xmlns='{PUBSUB}'><items node='{TUNE}'/></pubsub>", "get")) == ["t2"]
    # Unknown node and item.
    assert error_condition(await items(node, phone, ALICE, "urn:none")) == "item-not-found"
    assert error_condition(await items(node, phone, ALICE, TUNE, inner="<item id='zz'/>")) == "item-not-found"
    retract = f"<pubsub xmlns='{PUBSUB}'><retract node='{TUNE}' notify='true'><item id='%s'/></retract></pubsub>"
    assert error_condition(await iq(node, phone, retract % "zz")) == "item-not-found"
    events(laptop)
    assert (await iq(node, phone, retract % "t2")).type == "result"
    assert events(laptop) == [(TUNE, "retract", "t2")]
    assert item_ids(await items(node, phone, ALICE, TUNE)) == []


async def test_only_the_owner_writes(node: FakeNode):
    alice = node.bind(f"{ALICE}/phone", available=True)
    bob = node.bind(f"{BOB}/pc", available=True)
    await mutual(node, ALICE, BOB)
    await publish(node, alice, TUNE, tune("mine"))
    to_alice = publish_xml(TUNE, tune("not yours"))
    assert error_condition(await iq(node, bob, to_alice, to=ALICE)) == "forbidden"
    for xml in (f"<pubsub xmlns='{PUBSUB}'><retract node='{TUNE}'><item id='current'/></retract></pubsub>",
                f"<pubsub xmlns='{PUBSUB}'><create node='n'/></pubsub>",
                f"<pubsub xmlns='{OWNER}'><delete node='{TUNE}'/></pubsub>",
                f"<pubsub xmlns='{OWNER}'><purge node='{TUNE}'/></pubsub>"):
        assert error_condition(await iq(node, bob, xml, to=ALICE)) == "forbidden", xml
    assert error_condition(await iq(node, bob, f"<pubsub xmlns='{OWNER}'><configure node='{TUNE}'/></pubsub>",
                                    "get", ALICE)) == "forbidden"
    assert item_ids(await items(node, bob, ALICE, TUNE)) == ["current"]


async def test_access_models(node: FakeNode):
    alice = node.bind(f"{ALICE}/phone", available=True)
    bob = node.bind(f"{BOB}/pc", available=True)  # alice's roster: from (bob sees her presence)
    carol = node.bind(f"{CAROL}/pc", available=True)  # alice's roster: to (carol does not)
    await subscribe(node, ALICE, BOB, "from")
    await subscribe(node, ALICE, CAROL, "to")
    await publish(node, alice, "presence-node", tune("p"))
    await publish(node, alice, "open-node", tune("o"), access_model="open")
    await publish(node, alice, "private-node", tune("w"), access_model="whitelist")
    assert item_ids(await items(node, bob, ALICE, "presence-node")) == ["current"]
    assert error_condition(await items(node, carol, ALICE, "presence-node")) == "not-authorized"
    assert item_ids(await items(node, carol, ALICE, "open-node")) == ["current"]
    assert error_condition(await items(node, bob, ALICE, "private-node")) == "not-allowed"
    assert item_ids(await items(node, alice, ALICE, "private-node")) == ["current"]
    # Affiliations: the owner's nodes for the owner, none for others; no explicit subscriptions yet.
    affs = await iq(node, alice, f"<pubsub xmlns='{PUBSUB}'><affiliations/></pubsub>", "get")
    listed = affs.element.findall(f"{_P}pubsub/{_P}affiliations/{_P}affiliation")
    assert sorted(a.get("node") for a in listed) == ["open-node", "presence-node", "private-node"]
    affs = await iq(node, bob, f"<pubsub xmlns='{PUBSUB}'><affiliations/></pubsub>", "get", ALICE)
    assert affs.element.findall(f"{_P}pubsub/{_P}affiliations/{_P}affiliation") == []
    subs = await iq(node, bob, f"<pubsub xmlns='{PUBSUB}'><subscriptions/></pubsub>", "get", ALICE)
    assert subs.type == "result"
    owner_affs = await iq(node, alice, f"<pubsub xmlns='{OWNER}'><affiliations node='open-node'/></pubsub>", "get")
    aff = owner_affs.element.find(f"{_O}pubsub/{_O}affiliations/{_O}affiliation")
    assert aff is not None and (aff.get("jid"), aff.get("affiliation")) == (ALICE, "owner")


async def test_whitelist_members_and_outcasts(node: FakeNode):
    """XEP-0060 §8.9: the owner names members (they read a whitelist node, and get its
    notifications when they asked for them) and outcasts (they read nothing)."""
    alice = node.bind(f"{ALICE}/phone", available=True)
    bob = node.bind(f"{BOB}/pc", available=True)
    carol = node.bind(f"{CAROL}/pc", available=True)
    await mutual(node, ALICE, BOB)
    await mutual(node, ALICE, CAROL)
    set_interest(node, bob, "private-node", "presence-node")
    set_interest(node, carol, "private-node", "presence-node")
    await publish(node, alice, "private-node", tune("w"), access_model="whitelist")
    await publish(node, alice, "presence-node", tune("p"))
    events(bob), events(carol)
    assert error_condition(await items(node, bob, ALICE, "private-node")) == "not-allowed"

    def affiliate(node_name: str, jid: str, aff: str) -> str:
        return (f"<pubsub xmlns='{OWNER}'><affiliations node='{node_name}'>"
                f"<affiliation jid='{jid}' affiliation='{aff}'/></affiliations></pubsub>")

    assert (await iq(node, alice, affiliate("private-node", BOB, "member"))).type == "result"
    assert (await iq(node, alice, affiliate("presence-node", f"{CAROL}/pc", "outcast"))).type == "result"
    assert item_ids(await items(node, bob, ALICE, "private-node")) == ["current"]
    assert error_condition(await items(node, carol, ALICE, "private-node")) == "not-allowed"
    assert error_condition(await items(node, carol, ALICE, "presence-node")) == "forbidden"
    got = await iq(node, alice, f"<pubsub xmlns='{OWNER}'><affiliations node='private-node'/></pubsub>", "get")
    listed = got.element.findall(f"{_O}pubsub/{_O}affiliations/{_O}affiliation")
    assert [(a.get("jid"), a.get("affiliation")) for a in listed] == [(ALICE, "owner"), (BOB, "member")]
    mine = await iq(node, bob, f"<pubsub xmlns='{PUBSUB}'><affiliations/></pubsub>", "get", ALICE)
    assert [(a.get("node"), a.get("affiliation")) for a in mine.element.iter(_P + "affiliation")] == [
        ("private-node", "member")]
    # Notifications follow: the member gets the whitelist node's, the outcast not the presence node's.
    await publish(node, alice, "private-node", tune("w2"))
    await publish(node, alice, "presence-node", tune("p2"))
    assert sorted(events(bob)) == [("presence-node", "item", "current"), ("private-node", "item", "current")]
    assert events(carol) == []
    # The owner stays the owner; only member, outcast and none are offered; 'none' removes.
    assert error_condition(await iq(node, alice, affiliate("private-node", ALICE, "none"))) == "not-acceptable"
    assert error_condition(await iq(node, alice, affiliate("private-node", BOB, "publisher"))) == "not-acceptable"
    assert error_condition(await iq(node, bob, affiliate("private-node", BOB, "member"), to=ALICE)) == "forbidden"
    await iq(node, alice, affiliate("private-node", BOB, "none"))
    assert error_condition(await items(node, bob, ALICE, "private-node")) == "not-allowed"
    # Publish-options preconditions are about the configuration, not the affiliations.
    await iq(node, alice, affiliate("private-node", BOB, "member"))
    assert (await publish(node, alice, "private-node", tune("w3"), access_model="whitelist")).type == "result"


async def test_explicit_subscriptions(node: FakeNode):
    """XEP-0060 §6.1/§6.2 on a PEP node: subscribe (per access model), the last item on
    subscribing, notifications to the subscribed JID, unsubscribe, the owner's management."""
    alice = node.bind(f"{ALICE}/phone", available=True)
    bob = node.bind(f"{BOB}/pc", available=True)  # no caps interest: only explicit subscriptions
    carol = node.bind(f"{CAROL}/pc", available=True)
    await subscribe(node, ALICE, BOB, "from")
    await publish(node, alice, "presence-node", tune("p"))
    await publish(node, alice, "open-node", tune("o"), access_model="open")
    await publish(node, alice, "private-node", tune("w"), access_model="whitelist")
    events(bob), events(carol)

    def sub(node_name: str, jid: str, verb: str = "subscribe") -> str:
        return f"<pubsub xmlns='{PUBSUB}'><{verb} node='{node_name}' jid='{jid}'/></pubsub>"

    reply = await iq(node, bob, sub("presence-node", f"{BOB}/pc"), to=ALICE)
    el = reply.element.find(f"{_P}pubsub/{_P}subscription")
    assert el is not None and (el.get("jid"), el.get("subscription")) == (f"{BOB}/pc", "subscribed")
    await until(lambda: bob.of("message", "headline"))
    assert events(bob) == [("presence-node", "item", "current")]  # the last item (send_last_published_item)
    assert (await iq(node, carol, sub("open-node", CAROL), to=ALICE)).type == "result"
    assert error_condition(await iq(node, carol, sub("presence-node", CAROL), to=ALICE)) == "not-authorized"
    assert error_condition(await iq(node, bob, sub("private-node", BOB), to=ALICE)) == "not-allowed"
    assert error_condition(await iq(node, bob, sub("presence-node", CAROL), to=ALICE)) == "bad-request"
    assert error_condition(await iq(node, bob, sub("none", BOB), to=ALICE)) == "item-not-found"
    await until(lambda: carol.of("message", "headline"))
    events(carol)
    await publish(node, alice, "presence-node", tune("p2"))
    await publish(node, alice, "open-node", tune("o2"))
    assert events(bob) == [("presence-node", "item", "current")]
    assert events(carol) == [("open-node", "item", "current")]
    listed = await iq(node, bob, f"<pubsub xmlns='{PUBSUB}'><subscriptions/></pubsub>", "get", ALICE)
    assert [(s.get("node"), s.get("jid")) for s in listed.element.iter(_P + "subscription")] == [
        ("presence-node", f"{BOB}/pc")]
    # Access lost (presence subscription gone): no more notifications.
    await subscribe(node, ALICE, BOB, "none")
    await publish(node, alice, "presence-node", tune("p3"))
    assert events(bob) == []
    # Unsubscribe; twice is not-subscribed (unexpected-request).
    assert (await iq(node, carol, sub("open-node", CAROL, "unsubscribe"), to=ALICE)).type == "result"
    assert error_condition(await iq(node, carol, sub("open-node", CAROL, "unsubscribe"), to=ALICE)) \
        == "unexpected-request"
    # The owner lists and manages them; deleting the node tells its subscribers.
    owner_subs = (f"<pubsub xmlns='{OWNER}'><subscriptions node='open-node'><subscription jid='{CAROL}' "
                  f"subscription='subscribed'/></subscriptions></pubsub>")
    assert (await iq(node, alice, owner_subs)).type == "result"
    got = await iq(node, alice, f"<pubsub xmlns='{OWNER}'><subscriptions node='open-node'/></pubsub>", "get")
    assert [s.get("jid") for s in got.element.iter(_O + "subscription")] == [CAROL]
    await iq(node, alice, f"<pubsub xmlns='{OWNER}'><delete node='open-node'/></pubsub>")
    assert events(carol) == [("open-node", "delete", "")]


async def test_publish_options_are_preconditions(node: FakeNode):
    alice = node.bind(f"{ALICE}/phone", available=True)
    # A new node takes them.
    assert (await publish(node, alice, "n1", tune("a"), access_model="whitelist", max_items="max")).type == "result"
    assert (await pep(node).store.node(Jid.parse(ALICE), "n1")) == NodeConfig(access_model="whitelist", max_items=None)
    # The same again, and "max" spelled as the cap: met.
    assert (await publish(node, alice, "n1", tune("b"), access_model="whitelist", max_items="5")).type == "result"
    # Different: precondition-not-met (conflict), nothing stored.
    reply = await publish(node, alice, "n1", tune("c"), "c", access_model="open")
    assert error_condition(reply) == "conflict" and "precondition-not-met" in reply.to_bytes().decode()
    assert "c" not in item_ids(await items(node, alice, ALICE, "n1"))
    # Unreadable values: bad-request; values not offered on a new node: precondition-not-met.
    assert error_condition(await publish(node, alice, "n1", tune("d"), persist_items="maybe")) == "bad-request"
    assert error_condition(await publish(node, alice, "n2", tune("d"), access_model="roster")) == "conflict"
    assert error_condition(await publish(node, alice, "n2", tune("d"), made_up="1")) == "conflict"
    assert error_condition(await publish(node, alice, "n2", tune("d"), max_items="6")) == "conflict"  # cap is 5
    assert await pep(node).store.node(Jid.parse(ALICE), "n2") is None


async def test_configure_create_delete_purge(node: FakeNode):
    alice = node.bind(f"{ALICE}/phone", available=True)
    await publish(node, alice, TUNE, tune("a"))
    got = await iq(node, alice, f"<pubsub xmlns='{OWNER}'><configure node='{TUNE}'/></pubsub>", "get")
    x = got.element.find(f"{_O}pubsub/{_O}configure/{{{X}}}x")
    assert x is not None
    values = {f.get("var"): f.findtext(f"{{{X}}}value") for f in x.findall(f"{{{X}}}field")}
    assert values["FORM_TYPE"] == p.NODE_CONFIG and values["pubsub#access_model"] == "presence"
    assert values["pubsub#max_items"] == "1"
    configure = f"<pubsub xmlns='{OWNER}'><configure node='{TUNE}'>%s</configure></pubsub>"
    assert (await iq(node, alice, configure % form(p.NODE_CONFIG, max_items="3", access_model="open"))).type == "result"
    assert await pep(node).store.node(Jid.parse(ALICE), TUNE) == NodeConfig(access_model="open", max_items=3)
    assert error_condition(await iq(node, alice, configure % form(p.NODE_CONFIG, max_items="many"))) == "bad-request"
    assert error_condition(await iq(node, alice, configure % form(p.NODE_CONFIG, access_model="roster"))) \
        == "not-acceptable"
    assert error_condition(await iq(node, alice, configure % form(p.PUBLISH_OPTIONS))) == "bad-request"
    for i in range(4):
        await publish(node, alice, TUNE, tune(str(i)), f"i{i}")
    assert item_ids(await items(node, alice, ALICE, TUNE)) == ["i1", "i2", "i3"]
    assert item_ids(await items(node, alice, ALICE, TUNE, " max_items='2'")) == ["i2", "i3"]
    assert item_ids(await items(node, alice, ALICE, TUNE, inner="<item id='i1'/><item id='zz'/>")) == ["i1"]
    # Shrinking max_items evicts the oldest.
    await iq(node, alice, configure % form(p.NODE_CONFIG, max_items="1"))
    assert item_ids(await items(node, alice, ALICE, TUNE)) == ["i3"]
    default = await iq(node, alice, f"<pubsub xmlns='{OWNER}'><default/></pubsub>", "get")
    assert default.element.find(f"{_O}pubsub/{_O}default/{{{X}}}x") is not None
    # Create (with a configuration), conflict when it exists.
    create = f"<pubsub xmlns='{PUBSUB}'><create node='made'/><configure>{form(p.NODE_CONFIG, max_items='2')}" \
             f"</configure></pubsub>"
    assert (await iq(node, alice, create)).type == "result"
    assert (await pep(node).store.node(Jid.parse(ALICE), "made")) == NodeConfig(max_items=2)
    assert error_condition(await iq(node, alice, create)) == "conflict"
    # Purge and delete notify the owner's resources; a deleted node is gone.
    events(alice)
    assert (await iq(node, alice, f"<pubsub xmlns='{OWNER}'><purge node='{TUNE}'/></pubsub>")).type == "result"
    assert item_ids(await items(node, alice, ALICE, TUNE)) == []
    assert (await iq(node, alice, f"<pubsub xmlns='{OWNER}'><delete node='{TUNE}'/></pubsub>")).type == "result"
    assert events(alice) == [(TUNE, "purge", ""), (TUNE, "delete", "")]
    assert error_condition(await items(node, alice, ALICE, TUNE)) == "item-not-found"
    assert error_condition(await iq(node, alice, f"<pubsub xmlns='{OWNER}'><delete node='{TUNE}'/></pubsub>")) \
        == "item-not-found"


async def test_limits(node: FakeNode):
    alice = node.bind(f"{ALICE}/phone", available=True)
    big = f"<blob xmlns='urn:example'>{'x' * 2100}</blob>"
    reply = await publish(node, alice, "big", big)
    assert error_condition(reply) == "not-acceptable" and "payload-too-big" in reply.to_bytes().decode()
    # max_items "max" is the per-node cap (5 here).
    for i in range(7):
        await publish(node, alice, "many", tune(str(i)), f"i{i}", max_items="max")
    assert item_ids(await items(node, alice, ALICE, "many")) == [f"i{i}" for i in range(2, 7)]
    # At most 4 nodes per account.
    for name in ("n2", "n3", "n4"):
        assert (await publish(node, alice, name, tune(name))).type == "result"
    reply = await publish(node, alice, "n5", tune("x"))
    assert error_condition(reply) == "not-allowed" and "max-nodes-exceeded" in reply.to_bytes().decode()
    assert error_condition(await iq(node, alice, f"<pubsub xmlns='{PUBSUB}'><create node='n5'/></pubsub>")) \
        == "not-allowed"
    assert (await publish(node, alice, "n4", tune("again"))).type == "result"  # existing nodes still take items


# -- who gets notifications ------------------------------------------------------------------------------


async def test_notification_targets(node: FakeNode):
    alice = node.bind(f"{ALICE}/phone", available=True)
    bob_pc = node.bind(f"{BOB}/pc", available=True)  # asked for TUNE
    bob_tv = node.bind(f"{BOB}/tv", available=True)  # asked for nothing
    carol = node.bind(f"{CAROL}/pc", available=True)  # asked for TUNE, not subscribed
    await subscribe(node, ALICE, BOB, "from")
    await subscribe(node, ALICE, CAROL, "to")
    set_interest(node, bob_pc, TUNE, AVATAR_MD)
    set_interest(node, carol, TUNE)
    sent: list[tuple[str, Stanza]] = []

    def to_member(record: SessionRecord, s: Stanza) -> bool:
        sent.append((str(record.jid), s))
        return True

    node.hooks.add(Hook.DELIVER_TO_MEMBER, to_member)
    node.table.insert(SessionRecord(Jid.parse(f"{BOB}/far"), "node2", "node2.1", 1.0, available=True,
                                    flags={p.notify_flag(TUNE): "1"}))
    node.table.insert(SessionRecord(Jid.parse(f"{BOB}/far2"), "node2", "node2.2", 1.0, available=True))
    await publish(node, alice, TUNE, tune("t"))
    assert events(alice) == [(TUNE, "item", "current")]
    assert events(bob_pc) == [(TUNE, "item", "current")]
    assert events(bob_tv) == [] and events(carol) == []
    assert [(jid, s.to) for jid, s in sent] == [(f"{BOB}/far", f"{BOB}/far")]
    # Another node: bob_pc's other interest.
    await publish(node, alice, AVATAR_MD, "<metadata xmlns='urn:xmpp:avatar:metadata'/>")
    assert events(bob_pc) == [(AVATAR_MD, "item", "current")]
    # A whitelisted node: the owner only.
    await publish(node, alice, "secret", tune("s"), access_model="whitelist")
    set_interest(node, bob_pc, "secret")
    await publish(node, alice, "secret", tune("s2"))
    assert events(alice) == [(AVATAR_MD, "item", "current"), ("secret", "item", "current"),
                             ("secret", "item", "current")]
    assert events(bob_pc) == []
    # No payloads when the node says so.
    set_interest(node, bob_pc, TUNE)
    await iq(node, alice, f"<pubsub xmlns='{OWNER}'><configure node='{TUNE}'>"
             f"{form(p.NODE_CONFIG, deliver_payloads='0')}</configure></pubsub>")
    await publish(node, alice, TUNE, tune("t2"))
    got = [s for s in bob_pc.take() if s.name == "message"]
    assert len(got) == 1
    item = got[0].element.find(f"{_E}event/{_E}items/{_E}item")
    assert item is not None and len(item) == 0


async def test_caps_round_trip_flags_cache_and_last_items(node: FakeNode):
    """The server asks the resource for its caps' features once per ver, sets the record's flags,
    and sends it the last items of the nodes it asked for (its own account's and its contacts')."""
    alice = node.bind(f"{ALICE}/phone", available=True)
    await mutual(node, ALICE, BOB)
    await publish(node, alice, AVATAR_MD, "<metadata xmlns='urn:xmpp:avatar:metadata'/>", "av1")
    await publish(node, alice, TUNE, tune("t"))  # bob does not ask for tunes
    await publish(node, alice, "secret", tune("s"), access_model="whitelist")
    features = ["http://jabber.org/protocol/caps", f"{AVATAR_MD}+notify", "secret+notify"]
    query = ("<query xmlns='http://jabber.org/protocol/disco#info' node='http://client#VER'>"
             "<identity category='client' type='pc'/>"
             + "".join(f"<feature var='{f}'/>" for f in features) + "</query>")
    s = "client/pc//<" + "".join(f"{f}<" for f in sorted(features))
    ver = base64.b64encode(hashlib.sha1(s.encode()).digest()).decode()
    query = query.replace("VER", ver)

    async def online(session: FakeSession) -> None:
        session.last_presence = stanza(f"<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps'"
                                       f" hash='sha-1' node='http://client' ver='{ver}'/></presence>")
        await node.hooks.run_async(Hook.PRESENCE_AVAILABLE, session, True, 0, 0)

    bob = node.bind(f"{BOB}/pc", available=True)
    await online(bob)
    await until(lambda: bob.of("iq", "get"))
    ask = bob.take()[0]
    assert ask.from_ == DOMAIN and ask.id and ask.id.startswith(ID_PREFIX)
    asked = ask.element.find(f"{{{ns.DISCO_INFO}}}query")
    assert asked is not None and asked.get("node") == f"http://client#{ver}"
    await node.route(f"<iq xmlns='jabber:client' from='{BOB}/pc' to='{DOMAIN}' type='result' id='{ask.id}'>"
                     f"{query}</iq>")
    record = node.table.lookup(Jid.parse(f"{BOB}/pc"))
    assert record is not None and set(record.flags) == {p.notify_flag(AVATAR_MD), p.notify_flag("secret")}
    # The last item of alice's avatar metadata (with its publication time); not her whitelisted node.
    got = [m for m in bob.take() if m.name == "message"]
    assert len(got) == 1 and got[0].element.find(f"{{{ns.DELAY}}}delay") is not None
    ids = [(i.get("id")) for i in got[0].element.iter(_E + "item")]
    assert ids == ["av1"] and got[0].from_ == ALICE
    # Alice's own resource with the same caps: no second query (verified ver, cached), her own
    # whitelisted node's last item too.
    alice2 = node.bind(f"{ALICE}/tablet", available=True)
    await online(alice2)
    await node.settle()
    assert alice2.of("iq") == []
    assert sorted(e[0] for e in events(alice2)) == ["secret", AVATAR_MD]
    assert pep(node).counters["caps_hits"] == 1
    # A publish now reaches bob by his flag.
    await publish(node, alice, AVATAR_MD, "<metadata xmlns='urn:xmpp:avatar:metadata'/>", "av2")
    assert events(bob) == [(AVATAR_MD, "item", "av2")]
    # A presence update with the same caps: nothing new.
    await node.hooks.run_async(Hook.PRESENCE_AVAILABLE, bob, False, 0, 0)
    await node.settle()
    assert bob.take() == []


async def test_unverified_caps_are_used_but_not_cached(node: FakeNode):
    bob = node.bind(f"{BOB}/pc", available=True)
    bob.last_presence = stanza("<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' "
                               "hash='sha-1' node='http://client' ver='bm90IHRoZSBoYXNo'/></presence>")
    await node.hooks.run_async(Hook.PRESENCE_AVAILABLE, bob, True, 0, 0)
    await until(lambda: bob.of("iq", "get"))
    ask = bob.take()[0]
    await node.route(f"<iq xmlns='jabber:client' from='{BOB}/pc' to='{DOMAIN}' type='result' id='{ask.id}'>"
                     f"<query xmlns='http://jabber.org/protocol/disco#info'><feature var='{TUNE}+notify'/></query>"
                     f"</iq>")
    record = node.table.lookup(Jid.parse(f"{BOB}/pc"))
    assert record is not None and p.notify_flag(TUNE) in record.flags
    assert pep(node).status()["cachedCaps"] == 0 and pep(node).counters["caps_unverified"] == 1
    # An answer from someone else is not taken for it.
    bob2 = node.bind(f"{BOB}/tv", available=True)
    bob2.last_presence = bob.last_presence
    await node.hooks.run_async(Hook.PRESENCE_AVAILABLE, bob2, True, 0, 0)
    await until(lambda: bob2.of("iq", "get"))
    ask = bob2.take()[0]
    carol = node.bind(f"{CAROL}/pc", available=True)
    await node.router.route(stanza(f"<iq xmlns='jabber:client' from='{CAROL}/pc' to='{DOMAIN}' type='result' "
                                   f"id='{ask.id}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"))
    assert pep(node).status()["pendingCaps"] == 1
    await node.route(f"<iq xmlns='jabber:client' from='{BOB}/tv' to='{DOMAIN}' type='error' id='{ask.id}'>"
                     f"<query xmlns='http://jabber.org/protocol/disco#info'/><error type='cancel'>"
                     f"<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>")
    record = node.table.lookup(Jid.parse(f"{BOB}/tv"))
    assert record is not None and not record.flags
    assert carol.take() == []


async def test_contacts_of_other_domains(node: FakeNode):
    """Their presence reaching alice (``presence_delivered``) records their interest; notifications
    go to their full JIDs through the routing chain (S2S)."""
    alice = node.bind(f"{ALICE}/phone", available=True)
    await subscribe(node, ALICE, DAVE, "both")
    await publish(node, alice, TUNE, tune("before"))
    remote: list[Stanza] = []

    def route_remote(s: Stanza, to: Jid) -> bool:
        remote.append(s)
        return True

    node.hooks.add(Hook.ROUTE_REMOTE, route_remote)
    presence = stanza(f"<presence xmlns='jabber:client' from='{DAVE}/laptop' to='{ALICE}'>"
                      f"<c xmlns='http://jabber.org/protocol/caps' node='http://other' ver='v1'/></presence>")
    node.hooks.run(Hook.PRESENCE_DELIVERED, presence, Jid.parse(f"{DAVE}/laptop"), Jid.parse(ALICE))
    await until(lambda: remote)
    ask = remote.pop()
    assert (ask.name, ask.to, ask.from_) == ("iq", f"{DAVE}/laptop", DOMAIN)
    await node.route(f"<iq xmlns='jabber:client' from='{DAVE}/laptop' to='{DOMAIN}' type='result' id='{ask.id}'>"
                     f"<query xmlns='http://jabber.org/protocol/disco#info'><feature var='{TUNE}+notify'/></query>"
                     f"</iq>")
    assert await pep(node).store.remote_get(Jid.parse(ALICE), Jid.parse(f"{DAVE}/laptop")) == {TUNE}
    assert [(s.name, s.to) for s in remote] == [("message", f"{DAVE}/laptop")]  # the last item
    remote.clear()
    await publish(node, alice, TUNE, tune("now"))
    assert [(s.name, s.to, s.from_) for s in remote] == [("message", f"{DAVE}/laptop", ALICE)]
    remote.clear()
    gone = stanza(f"<presence xmlns='jabber:client' from='{DAVE}/laptop' to='{ALICE}' type='unavailable'/>")
    node.hooks.run(Hook.PRESENCE_DELIVERED, gone, Jid.parse(f"{DAVE}/laptop"), Jid.parse(ALICE))
    await node.settle()
    await publish(node, alice, TUNE, tune("later"))
    assert remote == []
    # Someone alice does not share presence with is not recorded.
    node.hooks.run(Hook.PRESENCE_DELIVERED, presence.with_attrs(from_="eve@other.example/x"),
                   Jid.parse("eve@other.example/x"), Jid.parse(ALICE))
    await node.settle()
    assert remote == [] and await pep(node).store.remote_for(Jid.parse(ALICE)) == []


# -- bookmarks, avatars, disco ----------------------------------------------------------------------------


async def test_bookmarks2_and_legacy_pep_node_stay_in_step(node: FakeNode):
    alice = node.bind(f"{ALICE}/phone", available=True)
    b2_options = {"persist_items": "true", "max_items": "max", "send_last_published_item": "never",
                  "access_model": "whitelist"}
    conf = f"<conference xmlns='{BOOKMARKS2}' name='Coven' autojoin='true'><nick>puck</nick></conference>"
    assert (await publish(node, alice, BOOKMARKS2, conf, "coven@chat.x", **b2_options)).type == "result"
    legacy = await items(node, alice, ALICE, BOOKMARKS_LEGACY)
    confs = legacy.element.findall(f".//{{{BOOKMARKS_LEGACY}}}conference")
    assert [(c.get("jid"), c.get("name"), c.get("autojoin")) for c in confs] == [("coven@chat.x", "Coven", "true")]
    assert events(alice) == [(BOOKMARKS2, "item", "coven@chat.x"), (BOOKMARKS_LEGACY, "item", "current")]
    # A XEP-0048 client (XEP-0223 options) replaces the list: one more, the first one renamed.
    storage = (f"<storage xmlns='{BOOKMARKS_LEGACY}'><conference jid='coven@chat.x' name='The Coven' autojoin='1'>"
               f"<nick>puck</nick></conference><conference jid='other@chat.x' autojoin='0'/></storage>")
    assert (await publish(node, alice, BOOKMARKS_LEGACY, storage, "current", persist_items="true",
                          access_model="whitelist")).type == "result"
    got = await items(node, alice, ALICE, BOOKMARKS2)
    assert sorted(item_ids(got)) == ["coven@chat.x", "other@chat.x"]
    named = got.element.find(f".//{_P}item[@id='coven@chat.x']/{{{BOOKMARKS2}}}conference")
    assert named is not None and named.get("name") == "The Coven"
    assert sorted(events(alice)) == sorted([(BOOKMARKS2, "item", "coven@chat.x"), (BOOKMARKS2, "item", "other@chat.x"),
                                            (BOOKMARKS_LEGACY, "item", "current")])
    # Dropping one there retracts it here.
    storage = f"<storage xmlns='{BOOKMARKS_LEGACY}'><conference jid='other@chat.x'/></storage>"
    await publish(node, alice, BOOKMARKS_LEGACY, storage)
    assert item_ids(await items(node, alice, ALICE, BOOKMARKS2)) == ["other@chat.x"]
    assert (BOOKMARKS2, "retract", "coven@chat.x") in events(alice)
    # Retracting a XEP-0402 item rewrites the legacy list.
    await iq(node, alice, f"<pubsub xmlns='{PUBSUB}'><retract node='{BOOKMARKS2}' notify='1'><item id='other@chat.x'/>"
             f"</retract></pubsub>")
    legacy = await items(node, alice, ALICE, BOOKMARKS_LEGACY)
    assert legacy.element.findall(f".//{{{BOOKMARKS_LEGACY}}}conference") == []
    assert await pep(node).store.node(Jid.parse(ALICE), BOOKMARKS2) == NodeConfig(
        access_model="whitelist", max_items=None, send_last_published_item="never")


PRIVATE = "jabber:iq:private"


def private_get() -> str:
    return f"<query xmlns='{PRIVATE}'><storage xmlns='{BOOKMARKS_LEGACY}'/></query>"


def stored_conferences(reply: Stanza) -> list[tuple[str | None, str | None]]:
    assert reply.type == "result", reply
    storage = reply.element.findall(f"{{{PRIVATE}}}query/{{{BOOKMARKS_LEGACY}}}storage")
    assert len(storage) == 1, reply
    return [(c.get("jid"), c.get("name")) for c in storage[0].findall(f"{{{BOOKMARKS_LEGACY}}}conference")]


async def test_bookmarks_through_private_storage_are_the_pep_ones(node: FakeNode):
    """XEP-0402 §5.3: a XEP-0049 client's storage:bookmarks is the XEP-0402 list (and the legacy
    PEP node), both ways; other private XML stays private XML."""
    await node.start(PrivateStorage)
    await node.start(Disco)
    alice = node.bind(f"{ALICE}/phone", available=True)
    # Nothing anywhere: the empty element, as before.
    assert stored_conferences(await iq(node, alice, private_get(), "get")) == []
    # A XEP-0049 set publishes: XEP-0402 items (with notifications) and the legacy node.
    storage = (f"<storage xmlns='{BOOKMARKS_LEGACY}'><conference jid='coven@chat.x' name='Coven' autojoin='true'>"
               f"<nick>puck</nick></conference><url name='Site' url='https://x.example/'/></storage>")
    assert (await iq(node, alice, f"<query xmlns='{PRIVATE}'>{storage}</query>")).type == "result"
    got = await items(node, alice, ALICE, BOOKMARKS2)
    assert item_ids(got) == ["coven@chat.x"]
    conf = got.element.find(f".//{{{BOOKMARKS2}}}conference")
    assert conf is not None and conf.get("autojoin") == "true" and conf.findtext(f"{{{BOOKMARKS2}}}nick") == "puck"
    assert sorted(events(alice)) == sorted([(BOOKMARKS2, "item", "coven@chat.x"),
                                            (BOOKMARKS_LEGACY, "item", "current")])
    assert await pep(node).store.node(Jid.parse(ALICE), BOOKMARKS_LEGACY) == NodeConfig(access_model="whitelist")
    # A XEP-0402 client adds one: the XEP-0049 client reads both (and its <url/> is kept).
    b2 = f"<conference xmlns='{BOOKMARKS2}' name='Garden'/>"
    await publish(node, alice, BOOKMARKS2, b2, "garden@chat.x", access_model="whitelist", max_items="max")
    reply = await iq(node, alice, private_get(), "get")
    assert stored_conferences(reply) == [("coven@chat.x", "Coven"), ("garden@chat.x", "Garden")]
    assert reply.element.find(f".//{{{BOOKMARKS_LEGACY}}}url") is not None
    # Retracting through XEP-0402 removes it there too; a XEP-0049 set of one drops the other item.
    await iq(node, alice, f"<pubsub xmlns='{PUBSUB}'><retract node='{BOOKMARKS2}'><item id='coven@chat.x'/>"
             f"</retract></pubsub>")
    assert stored_conferences(await iq(node, alice, private_get(), "get")) == [("garden@chat.x", "Garden")]
    storage = f"<storage xmlns='{BOOKMARKS_LEGACY}'><conference jid='hall@chat.x' name='Hall'/></storage>"
    await iq(node, alice, f"<query xmlns='{PRIVATE}'>{storage}</query>")
    assert item_ids(await items(node, alice, ALICE, BOOKMARKS2)) == ["hall@chat.x"]
    # Nothing of it is in the private XML table; other namespaces still are.
    private = node.services.modules["private"].store
    assert await private.get(Jid.parse(ALICE), [BOOKMARKS_LEGACY]) == {}
    await iq(node, alice, f"<query xmlns='{PRIVATE}'><prefs xmlns='urn:x:prefs'>teal</prefs></query>")
    assert await private.get(Jid.parse(ALICE), ["urn:x:prefs"]) != {}
    # Too big for a PEP item: refused as PEP refuses it (max_payload 2048 here), nothing changed.
    many = "".join(f"<conference jid='r{i}@chat.x' name='{'n' * 40}'/>" for i in range(60))
    reply = await iq(node, alice, f"<query xmlns='{PRIVATE}'><storage xmlns='{BOOKMARKS_LEGACY}'>{many}</storage>"
                                  f"</query>")
    assert error_condition(reply) == "not-acceptable"
    assert item_ids(await items(node, alice, ALICE, BOOKMARKS2)) == ["hall@chat.x"]
    # The account says so (XEP-0402 §5.3).
    info = await iq(node, alice, f"<query xmlns='{ns.DISCO_INFO}'/>", "get", ALICE)
    features = {f.get("var") for f in info.element.iter(f"{{{ns.DISCO_INFO}}}feature")}
    assert {p.BOOKMARKS2_COMPAT, p.BOOKMARKS2_COMPAT_PEP} <= features


async def test_bookmarks_stored_as_private_xml_before_move_to_pep(node: FakeNode):
    """A list stored as private XML before PEP kept bookmarks is served, then moved to PEP by
    the first get (so XEP-0402 clients see it), and not left behind."""
    await node.start(PrivateStorage)
    owner = Jid.parse(ALICE)
    old = f"<query xmlns='{PRIVATE}'><storage xmlns='{BOOKMARKS_LEGACY}'><conference jid='old@chat.x' name='Old'/>" \
          f"</storage></query>".encode()
    assert await node.services.modules["private"].store.put(owner, {BOOKMARKS_LEGACY: old}, 10)
    alice = node.bind(f"{ALICE}/phone", available=True)
    assert stored_conferences(await iq(node, alice, private_get(), "get")) == [("old@chat.x", "Old")]
    assert item_ids(await items(node, alice, ALICE, BOOKMARKS2)) == ["old@chat.x"]
    assert await node.services.modules["private"].store.get(owner, [BOOKMARKS_LEGACY]) == {}
    assert stored_conferences(await iq(node, alice, private_get(), "get")) == [("old@chat.x", "Old")]


async def test_without_compat_bookmarks_stay_private_xml(tmp_path: Path):
    async with fake_node(tmp_path) as n:
        await n.create_account(ALICE)
        await n.start(Pep, bookmarks_compat=False)
        await n.start(PrivateStorage)
        alice = n.bind(f"{ALICE}/phone", available=True)
        storage = f"<storage xmlns='{BOOKMARKS_LEGACY}'><conference jid='a@chat.x' name='A'/></storage>"
        assert (await iq(n, alice, f"<query xmlns='{PRIVATE}'>{storage}</query>")).type == "result"
        assert error_condition(await items(n, alice, ALICE, BOOKMARKS2)) == "item-not-found"
        assert stored_conferences(await iq(n, alice, private_get(), "get")) == [("a@chat.x", "A")]


async def test_avatar_nodes_share_their_access_model(node: FakeNode):
    alice = node.bind(f"{ALICE}/phone", available=True)
    owner = Jid.parse(ALICE)
    await publish(node, alice, AVATAR_MD, "<metadata xmlns='urn:xmpp:avatar:metadata'/>", "h", access_model="open")
    await publish(node, alice, AVATAR_DATA, "<data xmlns='urn:xmpp:avatar:data'>AAAA</data>", "h")
    data = await pep(node).store.node(owner, AVATAR_DATA)
    assert data is not None and data.access_model == "open"
    await iq(node, alice, f"<pubsub xmlns='{OWNER}'><configure node='{AVATAR_DATA}'>"
             f"{form(p.NODE_CONFIG, access_model='presence')}</configure></pubsub>")
    metadata = await pep(node).store.node(owner, AVATAR_MD)
    assert metadata is not None and metadata.access_model == "presence"


async def test_account_disco_has_the_pep_identity_and_features(node: FakeNode):
    await node.start(Disco)
    alice = node.bind(f"{ALICE}/phone", available=True)
    reply = await iq(node, alice, f"<query xmlns='{ns.DISCO_INFO}'/>", "get", ALICE)
    q = reply.element.find(f"{{{ns.DISCO_INFO}}}query")
    assert q is not None
    identities = {(i.get("category"), i.get("type")) for i in q.findall(f"{{{ns.DISCO_INFO}}}identity")}
    assert ("pubsub", "pep") in identities and ("account", "registered") in identities
    features = {f.get("var") for f in q.findall(f"{{{ns.DISCO_INFO}}}feature")}
    assert {f"{PUBSUB}#publish", f"{PUBSUB}#publish-options", f"{PUBSUB}#auto-create", f"{PUBSUB}#retrieve-items",
            p.BOOKMARKS2_COMPAT_PEP} <= features


# -- the store on both backends ----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def storage(request: pytest.FixtureRequest) -> AsyncIterator[Storage]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_db_url")
    s = open_storage(url)
    await s.open()
    for name in ("alice", "bob"):
        assert await s.create_account(DOMAIN, name, {})
    yield s
    await s.close()


async def test_store_on_both_backends(storage: Storage):
    store = PepStore(storage)
    await store.migrate()
    await store.migrate()  # idempotent
    alice, bob = Jid.parse(ALICE), Jid.parse(BOB)
    config = NodeConfig(max_items=2)

    def create(existing: NodeConfig | None, count: int) -> NodeConfig:
        return existing or config

    first = await store.publish(alice, TUNE, "a", b"<a/>", f"{ALICE}/x", create, 5)
    assert first.created_node and first.config == config and first.evicted == []
    await store.publish(alice, TUNE, "b", b"<b/>", f"{ALICE}/x", create, 5)
    third = await store.publish(alice, TUNE, "c", b"<c/>", f"{ALICE}/x", create, 5)
    assert not third.created_node and third.evicted == ["a"]
    await store.publish(alice, TUNE, "b", b"<b2/>", f"{ALICE}/x", create, 5)  # replaced: now the newest
    assert [(i.item_id, i.payload) for i in await store.items(alice, TUNE)] == [("c", b"<c/>"), ("b", b"<b2/>")]
    assert [i.item_id for i in await store.items(alice, TUNE, 1)] == ["b"]
    assert [i.item_id for i in await store.items(alice, TUNE, None, ["c", "zz"])] == ["c"]
    await store.publish(bob, TUNE, "x", b"<x/>", BOB, create, 5)
    last = await store.last_items([alice, bob, Jid.parse(CAROL)], [TUNE, "none"])
    assert sorted((str(li.owner), li.item.item_id) for li in last) == [(ALICE, "b"), (BOB, "x")]
    assert await store.configure(alice, TUNE, NodeConfig(max_items=1), 5) == ["c"]
    assert await store.configure(alice, "none", NodeConfig(), 5) is None
    assert await store.retract(alice, TUNE, ["b", "zz"]) == ["b"]
    assert await store.nodes(alice) == {TUNE: NodeConfig(max_items=1)}
    assert await store.purge(alice, TUNE) and not await store.purge(alice, "none")
    assert await store.delete(alice, TUNE) and not await store.delete(alice, TUNE)
    await store.remote_put(alice, Jid.parse(f"{DAVE}/a"), [TUNE])
    await store.remote_put(alice, Jid.parse(f"{DAVE}/a"), [TUNE, AVATAR_MD])
    assert await store.remote_for(alice) == [(f"{DAVE}/a", frozenset({TUNE, AVATAR_MD}))]
    await store.remote_delete(alice, Jid.parse(f"{DAVE}/a"))
    assert await store.remote_get(alice, Jid.parse(f"{DAVE}/a")) is None
    # Removing the account removes its nodes and items.
    assert await storage.remove_account(DOMAIN, "bob")
    assert await store.nodes(bob) == {} and await store.items(bob, TUNE) == []
