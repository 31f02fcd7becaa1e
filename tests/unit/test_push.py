"""XEP-0357 Push Notifications on a node without a network (tests/helpers/fake_host.py): the enable
and disable IQs and their storage, the notification (summary form, publish-options, the id that
names the node), which messages notify (offline storage; a session detached by stream management,
held here, on another member, or reached by a message relayed from another region; never a live
session), app-server errors that disable a registration, and the rate limit."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cluster_node.core.hooks import Hook
from cluster_node.modules.disco import Disco
from cluster_node.modules.offline import Offline
from cluster_node.modules.push import Push, notification as n
from cluster_node.modules.push.module import FLAG
from cluster_node.modules.push.notification import DATA, NS, PUBSUB
from cluster_node.xmpp import ns
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.stanza import Stanza
from tests.helpers.fake_host import DOMAIN, FakeNode, FakeSession, error_condition, fake_node, stanza

ALICE = "alice@example.com"
BOB = "bob@example.com"
APP = "push.example.org"
OMEMO = "eu.siacs.conversations.axolotl"
OPTIONS = (f"<x xmlns='{DATA}' type='submit'><field var='FORM_TYPE'><value>{n.PUBLISH_OPTIONS}</value></field>"
           "<field var='secret'><value>s3cr3t</value></field></x>")


class AppServer:
    """The ``route_remote`` chain's only link: keeps what goes to other domains."""

    def __init__(self, node: FakeNode) -> None:
        self.got: list[Stanza] = []
        node.hooks.add(Hook.ROUTE_REMOTE, self._take, 10)

    def _take(self, s: Stanza, to: Jid) -> bool:
        self.got.append(s)
        return True

    def take(self) -> list[Stanza]:
        out, self.got = self.got, []
        return out


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as nd:
        await nd.start(Offline)
        for user in ("alice", "bob"):
            await nd.create_account(f"{user}@{DOMAIN}")
        yield nd


@pytest.fixture
async def push(node: FakeNode) -> Push:
    module: Push = await node.start(Push)
    return module


@pytest.fixture
def app(node: FakeNode) -> AppServer:
    return AppServer(node)


async def iq(node: FakeNode, session: FakeSession, payload: str, type_: str = "set") -> Stanza:
    await node.route(f"<iq xmlns='jabber:client' from='{session.record.jid}' type='{type_}' id='p1'>{payload}</iq>")
    replies = [s for s in session.take() if s.name == "iq" and s.id == "p1"]
    assert len(replies) == 1, replies
    return replies[0]


def enable_xml(node_name: str, jid: str = APP, form: str = "") -> str:
    return f"<enable xmlns='{NS}' jid='{jid}' node='{node_name}'>{form}</enable>"


async def enable(node: FakeNode, session: FakeSession, node_name: str, jid: str = APP, form: str = "") -> None:
    reply = await iq(node, session, enable_xml(node_name, jid, form))
    assert reply.type == "result", reply


def msg(to: str, body: str | None = "hello", type_: str = "chat", extra: str = "", from_: str = f"{BOB}/pc") -> str:
    body_el = f"<body>{body}</body>" if body is not None else ""
    return f"<message xmlns='jabber:client' from='{from_}' to='{to}' type='{type_}'>{body_el}{extra}</message>"


def detach(node: FakeNode, session: FakeSession) -> None:
    """What stream management does when the connection dies: the record is flagged detached."""
    node.services.update_record(session.record.with_flag("sm", "detached"))


def fields(publish: Stanza) -> dict[str, str]:
    """The summary form of a publish IQ, checking the XEP-0357 §7 shape on the way."""
    assert publish.name == "iq" and publish.type == "set"
    pubsub = publish.child(PUBSUB, "pubsub")
    assert pubsub is not None
    notification = pubsub.find(f"{{{PUBSUB}}}publish/{{{PUBSUB}}}item/{{{NS}}}notification")
    assert notification is not None, ET.tostring(publish.element)
    form = notification.find(f"{{{DATA}}}x")
    assert form is not None and form.get("type") == "submit"
    out = {}
    for field in form.findall(f"{{{DATA}}}field"):
        value = field.find(f"{{{DATA}}}value")
        out[str(field.get("var"))] = value.text or "" if value is not None else ""
    return out


def publish_node(publish: Stanza) -> str | None:
    el = publish.element.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish")
    assert el is not None
    return el.get("node")


async def registrations(node: FakeNode, user: str = "alice") -> list[tuple[str, str, str]]:
    module: Push = node.services.modules["push"]
    return [(r.jid, r.node, r.resource) for r in await module.store.registrations(DOMAIN, user)]


# -- sans-IO -------------------------------------------------------------------------------------------


def test_summary_of_which_messages_notify() -> None:
    s = n.summary_of(stanza(msg(ALICE)))
    assert s == n.Summary(f"{BOB}/pc", "hello")
    assert n.summary_of(stanza(msg(ALICE, type_="normal"))) is not None
    no_type = stanza(f"<message xmlns='jabber:client' from='{BOB}' to='{ALICE}'><body>x</body></message>")
    assert n.summary_of(no_type) is not None
    for type_ in ("headline", "groupchat", "error"):
        assert n.summary_of(stanza(msg(ALICE, type_=type_))) is None
    state = "<active xmlns='http://jabber.org/protocol/chatstates'/>"
    assert n.summary_of(stanza(msg(ALICE, body=None, extra=state))) is None
    receipt = "<received xmlns='urn:xmpp:receipts' id='x'/>"
    assert n.summary_of(stanza(msg(ALICE, body=None, extra=receipt))) is None
    # Encrypted: notifies without a body; its fallback body is never shown.
    omemo = f"<encrypted xmlns='{OMEMO}'><payload>AAAA</payload></encrypted>"
    assert n.summary_of(stanza(msg(ALICE, body=None, extra=omemo))) == n.Summary(f"{BOB}/pc", None)
    assert n.summary_of(stanza(msg(ALICE, body="I sent you an OMEMO message", extra=omemo))) == n.Summary(
        f"{BOB}/pc", None)
    assert n.summary_of(stanza(f"<presence xmlns='jabber:client' from='{BOB}'/>")) is None


def test_notification_shape_and_id() -> None:
    form = n.summary_form(3, "juliet@capulet.example/balcony", None)
    iq_id = n.make_id("yxs32uqsflafdk3iuqo")
    publish = n.publish_iq(ALICE, APP, "yxs32uqsflafdk3iuqo", iq_id, form, OPTIONS)
    assert (publish.to, publish.from_, publish.id) == (APP, ALICE, iq_id)
    assert publish_node(publish) == "yxs32uqsflafdk3iuqo"
    assert fields(publish) == {"FORM_TYPE": n.SUMMARY, "message-count": "3",
                               "last-message-sender": "juliet@capulet.example/balcony"}
    options = publish.element.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish-options/{{{DATA}}}x")
    assert options is not None
    secret = [f for f in options if f.get("var") == "secret"][0]
    assert secret.findtext(f"{{{DATA}}}value") == "s3cr3t"
    # The bytes on the wire parse back to the same thing.
    again = stanza(publish.to_bytes().decode())
    assert fields(again)["message-count"] == "3"
    # A body, when allowed, is cut to MAX_BODY characters.
    long = fields(n.publish_iq(ALICE, APP, "x", "i", n.summary_form(1, None, "y" * 2000)))
    assert long["last-message-body"] == "y" * n.MAX_BODY and "last-message-sender" not in long
    # No publish-options without a form.
    bare = n.publish_iq(ALICE, APP, "x", "i", form)
    assert bare.element.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish-options") is None
    # The id names the node, whatever characters it has.
    for name in ("yxs32uqsflafdk3iuqo", "a.b-c/d é", "x" * 300):
        assert n.node_of_id(n.make_id(name)) == name
    assert n.make_id("x") != n.make_id("x")
    for other in (None, "", "p1", "push.", "push.abcd", "push.abcd.", "push.abcd.!!!"):
        assert n.node_of_id(other) is None


def test_parse_requests() -> None:
    e = n.parse_enable(ET.fromstring(enable_xml("n1", "Push.Example.ORG")))
    assert (e.jid, e.node, e.options) == (APP, "n1", "")
    with_form = n.parse_enable(ET.fromstring(enable_xml("n1", form=OPTIONS)))
    assert "s3cr3t" in with_form.options and ET.fromstring(with_form.options).tag == f"{{{DATA}}}x"
    bad = [f"<enable xmlns='{NS}' node='n'/>", f"<enable xmlns='{NS}' jid='{APP}'/>",
           f"<enable xmlns='{NS}' jid='{APP}' node=''/>", f"<enable xmlns='{NS}' jid='a@@b' node='n'/>",
           enable_xml("n", form=f"<x xmlns='{DATA}' type='form'/>"),
           enable_xml("n", form=f"<x xmlns='{DATA}' type='submit'><field var='FORM_TYPE'><value>urn:other"
                               "</value></field></x>"),
           enable_xml("n", form=OPTIONS + OPTIONS), enable_xml("x" * (n.MAX_NODE + 1))]
    for xml in bad:
        with pytest.raises(n.RequestError):
            n.parse_enable(ET.fromstring(xml))
    assert n.parse_disable(ET.fromstring(f"<disable xmlns='{NS}' jid='{APP}'/>")) == (APP, None)
    assert n.parse_disable(ET.fromstring(f"<disable xmlns='{NS}' jid='{APP}' node='n'/>")) == (APP, "n")


def test_which_errors_disable() -> None:
    def err(condition: str, etype: str) -> Stanza:
        return stanza(f"<iq xmlns='jabber:client' type='error' id='x'><error type='{etype}'>"
                      f"<{condition} xmlns='{ns.STANZAS}'/></error></iq>")

    assert n.error_of(err("item-not-found", "cancel")) == ("item-not-found", "cancel")
    assert n.disables(*n.error_of(err("item-not-found", "cancel")))
    assert n.disables(*n.error_of(err("not-authorized", "auth")))
    assert not n.disables(*n.error_of(err("internal-server-error", "wait")))
    assert not n.disables(*n.error_of(err("remote-server-not-found", "cancel")))
    assert not n.disables(*n.error_of(err("service-unavailable", "cancel")))


# -- enable / disable ---------------------------------------------------------------------------------


async def test_enable_disable_and_storage(node: FakeNode, push: Push) -> None:
    phone = node.bind(f"{ALICE}/phone")
    tablet = node.bind(f"{ALICE}/tablet")
    await enable(node, phone, "phone-node", form=OPTIONS)
    await enable(node, tablet, "tablet-node")
    await enable(node, tablet, "tablet-node")  # twice: one registration
    assert await registrations(node) == [(APP, "phone-node", "phone"), (APP, "tablet-node", "tablet")]
    stored = (await push.store.registrations(DOMAIN, "alice", "phone"))[0]
    assert "s3cr3t" in stored.options
    for session in (phone, tablet):
        assert session.record.flags.get(FLAG) == "on"
        record = node.table.lookup(session.record.jid)
        assert record is not None and record.flags.get(FLAG) == "on"  # replicated with the record
    # Disabling one node: the other stays; the phone has none left, its flag goes.
    reply = await iq(node, phone, f"<disable xmlns='{NS}' jid='{APP}' node='phone-node'/>")
    assert reply.type == "result"
    assert await registrations(node) == [(APP, "tablet-node", "tablet")]
    assert FLAG not in phone.record.flags and tablet.record.flags.get(FLAG) == "on"
    # Disabling what is not there is fine; without a node: every node of that app server.
    assert (await iq(node, phone, f"<disable xmlns='{NS}' jid='other.example'/>")).type == "result"
    await enable(node, tablet, "second")
    await iq(node, tablet, f"<disable xmlns='{NS}' jid='{APP}'/>")
    assert await registrations(node) == []
    assert FLAG not in tablet.record.flags


async def test_enable_refusals(node: FakeNode, push: Push) -> None:
    phone = node.bind(f"{ALICE}/phone")
    assert error_condition(await iq(node, phone, enable_xml("n"), type_="get")) == "bad-request"
    assert error_condition(await iq(node, phone, f"<enable xmlns='{NS}' jid='{APP}'/>")) == "bad-request"
    # The app server is never this deployment: neither its domain nor one of its accounts.
    assert error_condition(await iq(node, phone, enable_xml("n", jid=DOMAIN))) == "not-acceptable"
    assert error_condition(await iq(node, phone, enable_xml("n", jid=BOB))) == "not-acceptable"
    # Another account cannot enable for alice.
    bob = node.bind(f"{BOB}/pc")
    await node.route(f"<iq xmlns='jabber:client' from='{BOB}/pc' to='{ALICE}' type='set' id='p1'>"
                     f"{enable_xml('n')}</iq>")
    assert error_condition(bob.take()[-1]) == "not-allowed"
    assert await registrations(node) == []


async def test_oldest_registration_makes_room(node: FakeNode) -> None:
    push: Push = await node.start(Push, max_registrations=2)
    phone = node.bind(f"{ALICE}/phone")
    for name in ("a", "b", "c"):
        await enable(node, phone, name)
    assert [r[1] for r in await registrations(node)] == ["b", "c"]
    await enable(node, phone, "b")  # re-enabling refreshes, nothing goes
    assert [r[1] for r in await registrations(node)] == ["c", "b"]
    assert push.counters["enabled"] == 4


async def test_disco_feature_on_the_account(node: FakeNode, push: Push) -> None:
    await node.start(Disco)
    phone = node.bind(f"{ALICE}/phone")
    await node.route(f"<iq xmlns='jabber:client' from='{ALICE}/phone' to='{ALICE}' type='get' id='d1'>"
                     f"<query xmlns='{ns.DISCO_INFO}'/></iq>")
    reply = phone.take()[-1]
    features = {f.get("var") for f in reply.element.iter(f"{{{ns.DISCO_INFO}}}feature")}
    assert NS in features


# -- which messages notify ---------------------------------------------------------------------------


async def test_offline_message_notifies_every_registration_and_is_stored(node: FakeNode, push: Push,
                                                                          app: AppServer) -> None:
    phone, tablet = node.bind(f"{ALICE}/phone"), node.bind(f"{ALICE}/tablet")
    await enable(node, phone, "phone-node", form=OPTIONS)
    await enable(node, tablet, "tablet-node")
    await node.sessions.end(phone)
    await node.sessions.end(tablet)
    await node.route(msg(ALICE))
    got = app.take()
    assert sorted(str(publish_node(p)) for p in got) == ["phone-node", "tablet-node"]
    for p in got:
        assert (p.from_, p.to) == (ALICE, APP)
        assert fields(p) == {"FORM_TYPE": n.SUMMARY, "message-count": "1", "last-message-sender": f"{BOB}/pc"}
        assert n.node_of_id(p.id) == publish_node(p)
    with_options = [p for p in got if publish_node(p) == "phone-node"][0]
    assert with_options.element.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish-options") is not None
    assert await node.storage.count_offline(DOMAIN, "alice") == 1  # still stored
    # Not worth a push: a chat state alone (nor stored), a headline.
    await node.route(msg(ALICE, body=None, extra="<composing xmlns='http://jabber.org/protocol/chatstates'/>"))
    await node.route(msg(ALICE, type_="headline"))
    assert app.take() == []
    # An encrypted message notifies (its fallback body never shown).
    omemo = f"<encrypted xmlns='{OMEMO}'><payload>AAAA</payload></encrypted>"
    await node.route(msg(ALICE, body="fallback", extra=omemo))
    assert len(app.take()) == 2
    # A user without registrations: nothing.
    await node.route(msg(BOB, from_=f"{ALICE}/x"))
    assert app.take() == []


async def test_include_body(node: FakeNode, app: AppServer) -> None:
    await node.start(Push, include_body=True)
    phone = node.bind(f"{ALICE}/phone")
    await enable(node, phone, "n")
    await node.sessions.end(phone)
    await node.route(msg(ALICE, body="wherefore art thou"))
    assert fields(app.take()[0])["last-message-body"] == "wherefore art thou"
    omemo = f"<encrypted xmlns='{OMEMO}'/>"
    await node.route(msg(ALICE, body="fallback", extra=omemo))
    assert "last-message-body" not in fields(app.take()[0])


async def test_detached_session_notifies_its_registrations(node: FakeNode, push: Push, app: AppServer) -> None:
    phone = node.bind(f"{ALICE}/phone", available=True)
    laptop = node.bind(f"{ALICE}/laptop", available=True)
    await enable(node, phone, "phone-node")
    await enable(node, laptop, "laptop-node")
    # Live: delivered, no notification.
    await node.route(msg(ALICE))
    await node.route(msg(f"{ALICE}/phone"))
    assert app.take() == []
    assert len(phone.of("message")) == 2
    node.services.update_record(phone.record.with_flag("sm", "on"))
    await node.route(msg(ALICE))
    assert app.take() == []
    # Detached: the bare JID (both resources get it, the phone's registration notifies) and the
    # full JID.
    detach(node, phone)
    await node.route(msg(ALICE))
    assert [publish_node(p) for p in app.take()] == ["phone-node"]
    await node.route(msg(f"{ALICE}/phone"))
    assert [publish_node(p) for p in app.take()] == ["phone-node"]
    # A message to the laptop only, or without content: nothing.
    await node.route(msg(f"{ALICE}/laptop"))
    await node.route(msg(f"{ALICE}/phone", body=None, extra="<gone xmlns='http://jabber.org/protocol/chatstates'/>"))
    assert app.take() == []
    # A detached session whose resource never enabled push: nothing.
    detach(node, laptop)
    node.services.update_record(laptop.record.with_flag(FLAG, None))
    await node.route(msg(f"{ALICE}/laptop"))
    assert app.take() == []


async def test_detached_below_a_live_resource_is_not_notified(node: FakeNode, push: Push, app: AppServer) -> None:
    phone = node.bind(f"{ALICE}/phone", available=True, priority=0)
    node.bind(f"{ALICE}/desk", available=True, priority=5)
    await enable(node, phone, "phone-node")
    detach(node, phone)
    await node.route(msg(ALICE))  # the desk, the most available, has it
    assert app.take() == []


async def test_detached_on_another_member_or_relayed_from_another_region(node: FakeNode, push: Push,
                                                                          app: AppServer) -> None:
    """Records are replicated: the member routing the message decides.  A message relayed from
    another region is routed here with local_only, and the same check runs."""
    phone = node.bind(f"{ALICE}/phone", available=True)
    await enable(node, phone, "phone-node")
    await node.sessions.end(phone)
    sent: list[tuple[Any, Stanza]] = []
    node.hooks.add(Hook.DELIVER_TO_MEMBER, lambda record, s: sent.append((record, s)) or True)
    record = node.bind_remote(f"{ALICE}/phone", "node2").with_flag(FLAG, "on").with_flag("sm", "detached")
    node.table.insert(record)
    await node.route(msg(ALICE))
    assert len(sent) == 1 and sent[0][0].node == "node2"
    assert [publish_node(p) for p in app.take()] == ["phone-node"]
    await node.route(msg(ALICE), local_only=True)
    assert [publish_node(p) for p in app.take()] == ["phone-node"]
    await node.route(msg(f"{ALICE}/phone"), local_only=True)
    assert [publish_node(p) for p in app.take()] == ["phone-node"]
    assert push.counters["notified"] == 3


# -- app server errors (§8) ----------------------------------------------------------------------------


async def test_app_server_error_disables_the_registration(node: FakeNode, push: Push, app: AppServer) -> None:
    phone = node.bind(f"{ALICE}/phone")
    await enable(node, phone, "gone")
    await enable(node, phone, "kept")
    await node.sessions.end(phone)
    await node.route(msg(ALICE))
    by_node = {publish_node(p): p for p in app.take()}
    assert set(by_node) == {"gone", "kept"}

    def reply(p: Stanza, condition: str, etype: str = "cancel", from_: str = APP) -> str:
        return (f"<iq xmlns='jabber:client' from='{from_}' to='{ALICE}' type='error' id='{p.id}'>"
                f"<error type='{etype}'><{condition} xmlns='{ns.STANZAS}'/></error></iq>")

    # Temporary, or from someone else than the app server: kept.
    await node.route(reply(by_node["gone"], "resource-constraint", "wait"))
    await node.route(reply(by_node["gone"], "item-not-found", from_="evil.example"))
    await node.route(reply(by_node["gone"], "remote-server-not-found"))
    await node.route(f"<iq xmlns='jabber:client' from='{APP}' to='{ALICE}' type='result' id='{by_node['kept'].id}'/>")
    assert [r[1] for r in await registrations(node)] == ["gone", "kept"]
    # item-not-found from the app server: that registration goes.
    await node.route(reply(by_node["gone"], "item-not-found"))
    assert [r[1] for r in await registrations(node)] == ["kept"]
    assert push.counters["remote_disabled"] == 1
    await node.route(msg(ALICE))
    assert [publish_node(p) for p in app.take()] == ["kept"]


async def test_min_interval_coalesces(node: FakeNode, app: AppServer) -> None:
    push: Push = await node.start(Push, min_interval=0.3)
    phone = node.bind(f"{ALICE}/phone")
    await enable(node, phone, "n")
    await node.sessions.end(phone)
    await node.route(msg(ALICE, from_=f"{BOB}/a"))
    assert fields(app.take()[0])["message-count"] == "1"
    await node.route(msg(ALICE, from_=f"{BOB}/b"))
    await node.route(msg(ALICE, from_=f"{BOB}/c"))
    assert app.take() == [] and push.status()["waiting"] == 1
    await asyncio.sleep(0.45)
    await node.settle()
    got = app.take()
    assert len(got) == 1
    assert fields(got[0])["message-count"] == "2" and fields(got[0])["last-message-sender"] == f"{BOB}/c"
    assert push.counters["coalesced"] == 2 and push.counters["notified"] == 2
