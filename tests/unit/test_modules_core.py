"""The ported feature modules on a node without a network (tests/helpers/fake_host.py): ping,
version, disco, roster, presence, offline, register."""

from __future__ import annotations

import platform
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from cluster_node.core.hooks import STOP, Hook
from cluster_node.modules.disco import Disco
from cluster_node.modules.offline import Offline
from cluster_node.modules.ping import Ping
from cluster_node.modules.presence import Presence
from cluster_node.modules.register import Register
from cluster_node.modules.roster import Roster
from cluster_node.modules.version import Version
from cluster_node.modules.version.module import meridian_version
from cluster_node.storage import RosterItem
from cluster_node.xmpp import ns
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.stanza import Stanza
from tests.helpers.fake_host import DOMAIN, FakeNode, FakeSession, error_condition, fake_node, stanza

ALICE = "alice@example.com"
BOB = "bob@example.com"
R = f"{{{ns.ROSTER}}}"
INFO = f"{{{ns.DISCO_INFO}}}"
C = f"{{{ns.CLIENT}}}"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as n:
        yield n


def iq(from_: str, type_: str, payload: str, to: str | None = None, id_: str = "q1") -> Stanza:
    to_attr = f" to='{to}'" if to else ""
    return stanza(f"<iq xmlns='jabber:client' from='{from_}'{to_attr} type='{type_}' id='{id_}'>{payload}</iq>")


def only(items: list[Stanza]) -> Stanza:
    assert len(items) == 1, items
    return items[0]


# -- ping ---------------------------------------------------------------------------------------------


async def test_ping_the_server(node: FakeNode):
    await node.start(Ping)
    alice = node.bind(f"{ALICE}/phone")
    await node.route(iq(f"{ALICE}/phone", "get", f"<ping xmlns='{ns.PING}'/>", to=DOMAIN, id_="p1"))
    reply = only(alice.take())
    assert (reply.name, reply.type, reply.id, reply.from_, reply.to) == ("iq", "result", "p1", DOMAIN,
                                                                         f"{ALICE}/phone")
    assert len(reply.element) == 0
    assert ns.PING in node.router.features


async def test_ping_an_account_is_answered_by_the_server_for_it(node: FakeNode):
    await node.start(Ping)
    bob = node.bind(f"{BOB}/pc")
    await node.route(iq(f"{BOB}/pc", "get", f"<ping xmlns='{ns.PING}'/>", to=ALICE, id_="p2"))
    reply = only(bob.take())
    assert (reply.type, reply.id, reply.from_, reply.to) == ("result", "p2", ALICE, f"{BOB}/pc")


async def test_ping_set_is_a_bad_request(node: FakeNode):
    await node.start(Ping)
    alice = node.bind(f"{ALICE}/phone")
    await node.route(iq(f"{ALICE}/phone", "set", f"<ping xmlns='{ns.PING}'/>", to=DOMAIN))
    assert error_condition(only(alice.take())) == "bad-request"


async def test_without_the_ping_module_a_ping_is_service_unavailable(node: FakeNode):
    alice = node.bind(f"{ALICE}/phone")
    await node.route(iq(f"{ALICE}/phone", "get", f"<ping xmlns='{ns.PING}'/>", to=DOMAIN))
    assert error_condition(only(alice.take())) == "service-unavailable"


# -- version ------------------------------------------------------------------------------------------


async def test_version(node: FakeNode):
    await node.start(Version)
    alice = node.bind(f"{ALICE}/phone")
    await node.route(iq(f"{ALICE}/phone", "get", f"<query xmlns='{ns.VERSION}'/>", to=DOMAIN, id_="v1"))
    reply = only(alice.take())
    assert (reply.type, reply.id, reply.from_) == ("result", "v1", DOMAIN)
    q = reply.child(ns.VERSION, "query")
    assert q is not None
    V = f"{{{ns.VERSION}}}"
    assert q.findtext(V + "name") == "Meridian"
    assert q.findtext(V + "version") == meridian_version() and q.findtext(V + "version")
    assert q.findtext(V + "os") == platform.system()


async def test_version_set_is_a_bad_request(node: FakeNode):
    await node.start(Version)
    alice = node.bind(f"{ALICE}/phone")
    await node.route(iq(f"{ALICE}/phone", "set", f"<query xmlns='{ns.VERSION}'/>", to=DOMAIN))
    assert error_condition(only(alice.take())) == "bad-request"


# -- disco ------------------------------------------------------------------------------------------


def features_of(reply: Stanza) -> list[str]:
    q = reply.child(ns.DISCO_INFO, "query")
    assert q is not None, reply
    return [f.get("var", "") for f in q.findall(INFO + "feature")]


async def test_disco_lists_module_features_and_the_fold(node: FakeNode):
    await node.start(Ping)
    await node.start(Version)
    await node.start(Disco)
    node.hooks.add(Hook.DISCO_SERVER_FEATURES, lambda acc: acc | {"urn:xmpp:sm:3"})
    node.hooks.add(Hook.DISCO_SERVER_IDENTITIES,
                   lambda acc: acc + [{"category": "pubsub", "type": "pep"}])
    alice = node.bind(f"{ALICE}/phone")
    await node.route(iq(f"{ALICE}/phone", "get", f"<query xmlns='{ns.DISCO_INFO}'/>", to=DOMAIN, id_="d1"))
    reply = only(alice.take())
    assert (reply.type, reply.id, reply.from_) == ("result", "d1", DOMAIN)
    assert features_of(reply) == sorted([ns.DISCO_INFO, ns.DISCO_ITEMS, ns.PING, ns.VERSION, "urn:xmpp:sm:3"])
    q = reply.child(ns.DISCO_INFO, "query")
    assert q is not None
    assert [dict(i.attrib) for i in q.findall(INFO + "identity")] == [
        {"category": "server", "type": "im", "name": "Meridian"}, {"category": "pubsub", "type": "pep"}]


async def test_disco_fold_stop_keeps_what_came_before(node: FakeNode):
    await node.start(Disco)
    node.hooks.add(Hook.DISCO_SERVER_FEATURES, lambda acc: acc | {"urn:a"}, 10)
    node.hooks.add(Hook.DISCO_SERVER_FEATURES, lambda acc: STOP, 20)
    node.hooks.add(Hook.DISCO_SERVER_FEATURES, lambda acc: acc | {"urn:never"}, 30)
    alice = node.bind(f"{ALICE}/phone")
    await node.route(iq(f"{ALICE}/phone", "get", f"<query xmlns='{ns.DISCO_INFO}'/>", to=DOMAIN))
    assert features_of(only(alice.take())) == sorted([ns.DISCO_INFO, ns.DISCO_ITEMS, "urn:a"])


async def test_disco_node_is_item_not_found(node: FakeNode):
    await node.start(Disco)
    alice = node.bind(f"{ALICE}/phone")
    await node.route(iq(f"{ALICE}/phone", "get", f"<query xmlns='{ns.DISCO_INFO}' node='x'/>", to=DOMAIN))
    assert error_condition(only(alice.take())) == "item-not-found"


async def test_disco_of_an_account_is_only_for_itself_or_subscribers(node: FakeNode):
    await node.start(Disco)
    await node.create_account(ALICE)
    alice = node.bind(f"{ALICE}/phone")
    bob = node.bind(f"{BOB}/pc")
    await node.route(iq(f"{ALICE}/phone", "get", f"<query xmlns='{ns.DISCO_INFO}'/>", to=ALICE))
    reply = only(alice.take())
    assert reply.type == "result" and features_of(reply) == [ns.DISCO_INFO]
    await node.route(iq(f"{BOB}/pc", "get", f"<query xmlns='{ns.DISCO_INFO}'/>", to=ALICE))
    assert error_condition(only(bob.take())) == "service-unavailable"
    await node.storage.put_roster_item(DOMAIN, "alice", RosterItem(jid=BOB, subscription="from"))
    await node.route(iq(f"{BOB}/pc", "get", f"<query xmlns='{ns.DISCO_INFO}'/>", to=ALICE))
    assert only(bob.take()).type == "result"


# -- roster ------------------------------------------------------------------------------------------


async def roster_get(node: FakeNode, who: FakeSession, ver: str | None = None, id_: str = "g1") -> Stanza:
    ver_attr = f" ver='{ver}'" if ver is not None else ""
    await node.route(iq(str(who.record.jid), "get", f"<query xmlns='{ns.ROSTER}'{ver_attr}/>", id_=id_))
    return only([s for s in who.take() if s.id == id_])


async def test_roster_get_marks_the_session_interested(node: FakeNode):
    await node.start(Roster)
    a = node.bind(f"{ALICE}/a")
    b = node.bind(f"{ALICE}/b")
    reply = await roster_get(node, a)
    assert (reply.type, reply.from_, reply.to) == ("result", ALICE, f"{ALICE}/a")
    q = reply.child(ns.ROSTER, "query")
    assert q is not None and q.findall(R + "item") == []
    assert q.get("ver") == await node.storage.roster_version(DOMAIN, "alice")
    assert node.table.lookup(Jid.parse(f"{ALICE}/a")).interested is True
    assert a.record.interested is True  # the connection's record too
    assert node.table.lookup(Jid.parse(f"{ALICE}/b")).interested is False
    assert b.delivered == []


async def test_roster_set_stores_and_pushes_to_interested_resources_only(node: FakeNode):
    await node.start(Roster)
    a = node.bind(f"{ALICE}/a")
    b = node.bind(f"{ALICE}/b")  # never asked for the roster: no pushes (RFC 6121 §2.1.6)
    c = node.bind(f"{ALICE}/c", interested=True)
    other = node.bind(f"{BOB}/pc", interested=True)
    await roster_get(node, a)
    await node.route(iq(f"{ALICE}/a", "set",
                        f"<query xmlns='{ns.ROSTER}'><item jid='{BOB}' name='Bob'><group>Friends</group>"
                        f"<group>Work</group></item></query>", id_="s1"))
    items, ver = await node.storage.get_roster(DOMAIN, "alice")
    assert items == [RosterItem(jid=BOB, name="Bob", subscription="none", ask=False, groups=("Friends", "Work"))]

    got_a = a.take()
    assert [(s.type, s.id) for s in got_a][-1] == ("result", "s1")
    for session, stanzas in ((a, [s for s in got_a if s.type == "set"]), (c, c.take())):
        push = only(stanzas)
        assert (push.name, push.to) == ("iq", str(session.record.jid))
        assert push.id and push.id.startswith("push")
        q = push.child(ns.ROSTER, "query")
        assert q is not None and q.get("ver") == ver
        item = only(q.findall(R + "item"))  # type: ignore[arg-type]
        assert dict(item.attrib) == {"jid": BOB, "subscription": "none", "name": "Bob"}
        assert [g.text for g in item.findall(R + "group")] == ["Friends", "Work"]
    assert b.delivered == [] and other.delivered == []


async def test_roster_get_returns_items_and_honours_ver(node: FakeNode):
    await node.start(Roster)
    a = node.bind(f"{ALICE}/a")
    await node.storage.put_roster_item(DOMAIN, "alice", RosterItem(jid=BOB, subscription="both", ask=False))
    await node.storage.put_roster_item(DOMAIN, "alice", RosterItem(jid="carol@example.com", ask=True))
    reply = await roster_get(node, a)
    q = reply.child(ns.ROSTER, "query")
    assert q is not None
    assert sorted((i.get("jid"), i.get("subscription"), i.get("ask")) for i in q.findall(R + "item")) == [
        (BOB, "both", None), ("carol@example.com", "none", "subscribe")]
    ver = q.get("ver")
    assert ver
    same = await roster_get(node, a, ver=ver, id_="g2")
    assert same.type == "result" and len(same.element) == 0  # RFC 6121 §2.6.3: unchanged
    older = await roster_get(node, a, ver="stale", id_="g3")
    assert older.child(ns.ROSTER, "query") is not None


async def test_roster_remove_runs_roster_remove_and_pushes_removal(node: FakeNode):
    await node.start(Roster)
    removed: list[tuple[Jid, Jid]] = []
    node.hooks.add(Hook.ROSTER_REMOVE, lambda user, contact: removed.append((user, contact)))
    a = node.bind(f"{ALICE}/a", interested=True)
    await node.storage.put_roster_item(DOMAIN, "alice", RosterItem(jid=BOB, subscription="to"))
    await node.route(iq(f"{ALICE}/a", "set",
                        f"<query xmlns='{ns.ROSTER}'><item jid='{BOB}' subscription='remove'/></query>", id_="r1"))
    assert removed == [(Jid.parse(ALICE), Jid.parse(BOB))]
    items, ver = await node.storage.get_roster(DOMAIN, "alice")
    assert items == []
    got = a.take()
    push = only([s for s in got if s.type == "set"])
    q = push.child(ns.ROSTER, "query")
    assert q is not None and q.get("ver") == ver
    assert dict(only(q.findall(R + "item")).attrib) == {"jid": BOB, "subscription": "remove"}  # type: ignore[arg-type]
    assert [(s.type, s.id) for s in got if s.type != "set"] == [("result", "r1")]

    await node.route(iq(f"{ALICE}/a", "set",
                        f"<query xmlns='{ns.ROSTER}'><item jid='{BOB}' subscription='remove'/></query>", id_="r2"))
    assert [(s.id, error_condition(s)) for s in a.take()] == [("r2", "item-not-found")]


async def test_roster_of_another_account_is_forbidden(node: FakeNode):
    await node.start(Roster)
    a = node.bind(f"{ALICE}/a")
    await node.route(iq(f"{ALICE}/a", "get", f"<query xmlns='{ns.ROSTER}'/>", to=BOB))
    assert error_condition(only(a.take())) == "forbidden"


async def test_roster_set_with_two_items_is_a_bad_request(node: FakeNode):
    await node.start(Roster)
    a = node.bind(f"{ALICE}/a")
    await node.route(iq(f"{ALICE}/a", "set",
                        f"<query xmlns='{ns.ROSTER}'><item jid='{BOB}'/><item jid='c@example.com'/></query>"))
    assert error_condition(only(a.take())) == "bad-request"
    assert (await node.storage.get_roster(DOMAIN, "alice"))[0] == []


async def test_roster_ver_stream_feature_only_after_auth(node: FakeNode):
    await node.start(Roster)
    ver = f"<ver xmlns='{ns.ROSTER_VER}'/>".encode()
    assert node.hooks.fold(Hook.C2S_FEATURES, [], "post_auth", None) == [ver]
    assert node.hooks.fold(Hook.C2S_FEATURES, [], "pre_auth", None) == []
    assert node.hooks.fold(Hook.C2S_FEATURES, [], "pre_tls", None) == []


# -- presence ------------------------------------------------------------------------------------


async def subscribed_pair(node: FakeNode) -> None:
    """alice and bob, each with the other as 'both'."""
    await node.create_account(ALICE)
    await node.create_account(BOB)
    await node.storage.put_roster_item(DOMAIN, "alice", RosterItem(jid=BOB, subscription="both"))
    await node.storage.put_roster_item(DOMAIN, "bob", RosterItem(jid=ALICE, subscription="both"))


async def send(node: FakeNode, session: FakeSession, xml: str) -> None:
    """A stanza from the client, ``from`` stamped by the stream, through the session manager."""
    s = stanza(xml).with_attrs(from_=str(session.record.jid))
    await node.sessions.outbound(session, s)
    await node.settle()


async def test_initial_presence_broadcasts_to_subscribed_contacts_and_probes(node: FakeNode):
    await node.start(Roster)
    await node.start(Presence)
    await subscribed_pair(node)
    bob = node.bind(f"{BOB}/pc", available=True)
    alice = node.bind(f"{ALICE}/phone")
    other = node.bind("carol@example.com/x", available=True)
    seen: list[tuple[str, bool, int]] = []
    node.hooks.add(Hook.PRESENCE_AVAILABLE,
                   lambda s, initial, prio, _prev: seen.append((str(s.record.jid), initial, prio)))

    await send(node, alice, "<presence xmlns='jabber:client'><show>chat</show><priority>5</priority></presence>")

    record = node.table.lookup(Jid.parse(f"{ALICE}/phone"))
    assert record is not None and (record.available, record.priority) == (True, 5)
    assert alice.record == record and alice.last_presence is not None
    got = bob.take()
    available = [s for s in got if s.type is None]
    assert [(s.from_, s.to, s.element.findtext(C + "show")) for s in available] == [(f"{ALICE}/phone", BOB, "chat")]
    probes = [s for s in got if s.type == "probe"]
    assert [(s.from_, s.to) for s in probes] == [(ALICE, f"{BOB}/pc")]
    assert len(got) == 2
    # Its own presence comes back to it (RFC 6121 §4.2.2); not a probe of itself.
    assert [(s.from_, s.to, s.type) for s in alice.take()] == [(f"{ALICE}/phone", f"{ALICE}/phone", None)]
    assert other.delivered == []  # no subscription
    assert seen == [(f"{ALICE}/phone", True, 5)]


async def test_unsubscribed_contact_gets_no_presence(node: FakeNode):
    await node.start(Roster)
    await node.start(Presence)
    await node.create_account(ALICE)
    await node.create_account(BOB)
    await node.storage.put_roster_item(DOMAIN, "alice", RosterItem(jid=BOB, subscription="to"))
    await node.storage.put_roster_item(DOMAIN, "bob", RosterItem(jid=ALICE, subscription="from"))
    bob = node.bind(f"{BOB}/pc", available=True)
    alice = node.bind(f"{ALICE}/phone")
    await send(node, alice, "<presence xmlns='jabber:client'/>")
    # alice is 'to' bob: she probes him but does not send him her presence.
    assert [(s.type, s.from_) for s in bob.take()] == [("probe", ALICE)]


async def test_presence_is_handled_by_the_module_not_routed(node: FakeNode):
    await node.start(Presence)
    alice = node.bind(f"{ALICE}/phone")
    routed: list[str] = []
    node.hooks.add(Hook.FILTER_LOCAL_PACKET, lambda s, _f, _t: routed.append(s.name))
    await send(node, alice, "<presence xmlns='jabber:client'/>")
    assert routed == []


async def test_session_closed_sends_unavailable_to_contacts(node: FakeNode):
    await node.start(Roster)
    await node.start(Presence)
    await subscribed_pair(node)
    bob = node.bind(f"{BOB}/pc", available=True)
    alice = node.bind(f"{ALICE}/phone")
    await send(node, alice, "<presence xmlns='jabber:client'/>")
    bob.take()
    record = alice.record

    await node.sessions.end(alice)
    await node.settle()

    assert [(s.type, s.from_, s.to) for s in bob.take()] == [("unavailable", f"{ALICE}/phone", BOB)]
    assert node.table.lookup(record.jid) is None
    assert node.local.get(record.sid) is None


async def test_session_closed_without_presence_sends_nothing(node: FakeNode):
    await node.start(Roster)
    await node.start(Presence)
    await subscribed_pair(node)
    bob = node.bind(f"{BOB}/pc", available=True)
    alice = node.bind(f"{ALICE}/phone")
    await node.sessions.end(alice)
    await node.settle()
    assert bob.delivered == []


async def test_unavailable_goes_to_directed_presence_recipients(node: FakeNode):
    await node.start(Presence)
    carol = node.bind("carol@example.com/x", available=True)
    alice = node.bind(f"{ALICE}/phone")
    await send(node, alice, "<presence xmlns='jabber:client' to='carol@example.com/x'/>")
    assert [(s.type, s.from_) for s in carol.take()] == [(None, f"{ALICE}/phone")]
    assert alice.directed == {"carol@example.com/x"}
    await node.sessions.end(alice)
    await node.settle()
    assert [(s.type, s.from_, s.to) for s in carol.take()] == [("unavailable", f"{ALICE}/phone",
                                                                "carol@example.com/x")]


# -- offline -------------------------------------------------------------------------------------


def message(to: str, body: str, from_: str = f"{ALICE}/phone", id_: str = "m1") -> Stanza:
    return stanza(f"<message xmlns='jabber:client' from='{from_}' to='{to}' type='chat' id='{id_}'>"
                  f"<body>{body}</body></message>")


async def test_offline_stores_for_an_account_without_sessions(node: FakeNode):
    await node.start(Offline)
    await node.create_account(BOB)
    alice = node.bind(f"{ALICE}/phone")
    await node.route(message(BOB, "one", id_="m1"))
    await node.route(message(f"{BOB}/gone", "two", id_="m2"))
    assert alice.delivered == []  # kept, so no error
    assert await node.storage.count_offline(DOMAIN, "bob") == 2


async def test_offline_delivers_on_initial_available_presence(node: FakeNode):
    await node.start(Offline)
    await node.create_account(BOB)
    node.bind(f"{ALICE}/phone")
    await node.route(message(BOB, "one", id_="m1"))
    await node.route(message(BOB, "two", id_="m2"))
    bob = node.bind(f"{BOB}/pc", available=True)

    await node.hooks.run_async(Hook.PRESENCE_AVAILABLE, bob, True, 0, 0)

    got = bob.take()
    assert [(s.id, s.from_, s.to, s.element.findtext(C + "body")) for s in got] == [
        ("m1", f"{ALICE}/phone", f"{BOB}/pc", "one"), ("m2", f"{ALICE}/phone", f"{BOB}/pc", "two")]
    delay = got[0].element.find(f"{{{ns.DELAY}}}delay")
    assert delay is not None and delay.get("from") == DOMAIN and delay.get("stamp")
    assert await node.storage.count_offline(DOMAIN, "bob") == 0


@pytest.mark.parametrize(("initial", "priority", "previous"), [(True, -1, 0), (False, 0, 0), (False, 3, 1)])
async def test_offline_waits_for_presence_that_makes_the_resource_eligible(
        node: FakeNode, initial: bool, priority: int, previous: int):
    await node.start(Offline)
    await node.create_account(BOB)
    node.bind(f"{ALICE}/phone")
    await node.route(message(BOB, "one"))
    bob = node.bind(f"{BOB}/pc", available=True, priority=priority)
    await node.hooks.run_async(Hook.PRESENCE_AVAILABLE, bob, initial, priority, previous)
    assert bob.delivered == []
    assert await node.storage.count_offline(DOMAIN, "bob") == 1


async def test_offline_delivers_when_a_negative_priority_becomes_non_negative(node: FakeNode):
    """XEP-0160 §3: the update from -1 to 1 makes the resource eligible: stored messages follow."""
    await node.start(Roster)
    await node.start(Presence)
    await node.start(Offline)
    await node.create_account(BOB)
    node.bind(f"{ALICE}/phone")
    bob = node.bind(f"{BOB}/pc")
    await send(node, bob, "<presence xmlns='jabber:client'><priority>-1</priority></presence>")
    await node.route(message(BOB, "kept"))
    assert await node.storage.count_offline(DOMAIN, "bob") == 1
    bob.take()
    await send(node, bob, "<presence xmlns='jabber:client'><priority>1</priority></presence>")
    assert [s.element.findtext(C + "body") for s in bob.take() if s.name == "message"] == ["kept"]
    assert await node.storage.count_offline(DOMAIN, "bob") == 0


async def test_offline_through_the_presence_module(node: FakeNode):
    await node.start(Roster)
    await node.start(Presence)
    await node.start(Offline)
    await node.create_account(BOB)
    node.bind(f"{ALICE}/phone")
    await node.route(message(BOB, "while away"))
    bob = node.bind(f"{BOB}/pc")
    await send(node, bob, "<presence xmlns='jabber:client'/>")
    msgs = [s for s in bob.take() if s.name == "message"]
    assert [s.element.findtext(C + "body") for s in msgs] == ["while away"]
    assert await node.storage.count_offline(DOMAIN, "bob") == 0


async def test_offline_drops_chat_states_quietly(node: FakeNode):
    await node.start(Offline)
    await node.create_account(BOB)
    alice = node.bind(f"{ALICE}/phone")
    await node.route(stanza(f"<message xmlns='jabber:client' from='{ALICE}/phone' to='{BOB}' type='chat'>"
                            "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>"))
    assert alice.delivered == []
    assert await node.storage.count_offline(DOMAIN, "bob") == 0


async def test_offline_disabled_by_max_messages_zero_is_service_unavailable(tmp_path: Path):
    async with fake_node(tmp_path, offline={"max_messages": 0}) as node:
        await node.start(Offline)
        await node.create_account(BOB)
        alice = node.bind(f"{ALICE}/phone")
        await node.route(message(BOB, "one"))
        assert [error_condition(s) for s in alice.delivered] == ["service-unavailable"]
        assert await node.storage.count_offline(DOMAIN, "bob") == 0


async def test_offline_full_is_service_unavailable(tmp_path: Path):
    async with fake_node(tmp_path, offline={"max_messages": 1}) as node:
        await node.start(Offline)
        await node.create_account(BOB)
        alice = node.bind(f"{ALICE}/phone")
        await node.route(message(BOB, "one", id_="m1"))
        await node.route(message(BOB, "two", id_="m2"))
        assert [(s.id, error_condition(s)) for s in alice.delivered] == [("m2", "service-unavailable")]
        assert await node.storage.count_offline(DOMAIN, "bob") == 1
        assert node.services.refusals == {"offline.max_messages": 1}


# -- register --------------------------------------------------------------------------------------


REGISTER_FEATURE = f"<register xmlns='{ns.REGISTER_FEATURE}'/>".encode()


async def test_register_feature_only_when_in_band_registration_is_allowed(tmp_path: Path):
    async with fake_node(tmp_path, registration={"allow_in_band": True}) as node:
        await node.start(Register)
        assert node.hooks.fold(Hook.C2S_FEATURES, [], "pre_auth", None) == [REGISTER_FEATURE]
        assert node.hooks.fold(Hook.C2S_FEATURES, [], "post_auth", None) == []
        assert node.hooks.fold(Hook.C2S_FEATURES, [], "pre_tls", None) == []
        assert node.hooks.has(Hook.C2S_PRE_AUTH_IQ) is True
        assert ns.REGISTER in node.router.features


async def test_no_register_feature_by_default(node: FakeNode):
    assert node.services.settings.registration.allow_in_band is False
    await node.start(Register)
    assert node.hooks.fold(Hook.C2S_FEATURES, [], "pre_auth", None) == []
    assert node.hooks.has(Hook.C2S_FEATURES) is False
    assert node.hooks.has(Hook.C2S_PRE_AUTH_IQ) is False
    assert ns.REGISTER in node.router.features  # logged-in users may still change passwords


async def test_register_pre_auth_form_and_account_creation(tmp_path: Path):
    async with fake_node(tmp_path, registration={"allow_in_band": True}) as node:
        await node.start(Register)
        form = await node.hooks.first_async(
            Hook.C2S_PRE_AUTH_IQ,
            stanza(f"<iq xmlns='jabber:client' type='get' id='f1'><query xmlns='{ns.REGISTER}'/></iq>"), DOMAIN)
        assert (form.type, form.id) == ("result", "f1")
        q = form.child(ns.REGISTER, "query")
        assert q is not None and q.find(f"{{{ns.REGISTER}}}username") is not None
        done = await node.hooks.first_async(
            Hook.C2S_PRE_AUTH_IQ,
            stanza(f"<iq xmlns='jabber:client' type='set' id='f2'><query xmlns='{ns.REGISTER}'>"
                   "<username>dave</username><password>long-enough-pw</password></query></iq>"),
            DOMAIN)
        assert (done.type, done.id) == ("result", "f2")
        assert await node.storage.account_exists(DOMAIN, "dave") is True
        again = await node.hooks.first_async(
            Hook.C2S_PRE_AUTH_IQ,
            stanza(f"<iq xmlns='jabber:client' type='set' id='f3'><query xmlns='{ns.REGISTER}'>"
                   "<username>dave</username><password>long-enough-pw</password></query></iq>"),
            DOMAIN)
        assert (again.id, error_condition(again)) == ("f3", "conflict")


async def test_registrations_per_address_are_limited_and_counted(tmp_path: Path):
    async with fake_node(tmp_path, registration={"allow_in_band": True, "max_per_address": 1}) as node:
        await node.start(Register)

        async def register(username: str, ip: str) -> Stanza:
            iq = stanza(f"<iq xmlns='jabber:client' type='set' id='{username}'><query xmlns='{ns.REGISTER}'>"
                        f"<username>{username}</username><password>long-enough-pw</password></query></iq>")
            return await node.hooks.first_async(Hook.C2S_PRE_AUTH_IQ, iq, DOMAIN, SimpleNamespace(ip=ip))

        assert (await register("erin", "192.0.2.7")).type == "result"
        assert error_condition(await register("frank", "192.0.2.7")) == "resource-constraint"
        assert (await register("grace", "192.0.2.8")).type == "result"  # another address
        assert node.services.refusals == {"registration.max_per_address": 1}
        assert await node.storage.account_exists(DOMAIN, "frank") is False
