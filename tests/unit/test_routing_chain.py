"""The router's chain on hooks: filter_local_packet → route_remote → this region's sessions →
route_elsewhere → the account (offline_message), and deliver_to_member for other members' sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cluster_node.core.hooks import STOP, Hook
from cluster_node.core.router import Fanout
from cluster_node.xmpp import errors
from cluster_node.xmpp.fragment import parse_stanza
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.stanza import Stanza
from tests.helpers.fake_host import FakeNode, error_condition, fake_node

ALICE = "alice@example.com/phone"
BOB = "bob@example.com"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as n:
        yield n


def chat(to: str, body: str = "hi", from_: str = ALICE, mtype: str = "chat") -> str:
    return (f"<message xmlns='jabber:client' from='{from_}' to='{to}' type='{mtype}' id='m1'>"
            f"<body>{body}</body></message>")


def body(s) -> str | None:
    return s.element.findtext("{jabber:client}body")


# -- route_remote ------------------------------------------------------------------------------------


async def test_foreign_domain_goes_to_the_first_remote_handler_that_answers(node: FakeNode):
    alice = node.bind(ALICE)
    calls: list[tuple[str, str, Jid]] = []

    def handler(tag: str, answer: object):
        async def h(s, to):
            calls.append((tag, s.to, to))
            return answer
        return h

    node.hooks.add(Hook.ROUTE_REMOTE, handler("s2s", True), 90)
    node.hooks.add(Hook.ROUTE_REMOTE, handler("component", None), 10)  # not mine
    node.hooks.add(Hook.ROUTE_REMOTE, handler("gateway", True), 50)
    await node.route(chat("carol@remote.org/x"))
    assert calls == [("component", "carol@remote.org/x", Jid("carol", "remote.org", "x")),
                     ("gateway", "carol@remote.org/x", Jid("carol", "remote.org", "x"))]
    assert alice.delivered == []


async def test_foreign_domain_without_a_taker_is_remote_server_not_found(node: FakeNode):
    alice = node.bind(ALICE)
    asked: list[str] = []

    async def pass_(s, to):
        asked.append(to.domain)
        return None

    node.hooks.add(Hook.ROUTE_REMOTE, pass_)
    await node.route(chat("carol@remote.org"))
    assert asked == ["remote.org"]
    [err] = alice.delivered
    assert (err.name, err.type, err.id) == ("message", "error", "m1")
    assert (err.to, err.from_) == (ALICE, "carol@remote.org")
    assert error_condition(err) == "remote-server-not-found"


async def test_foreign_domain_with_no_handler_at_all(node: FakeNode):
    alice = node.bind(ALICE)
    await node.route(chat("remote.org"))
    assert [error_condition(s) for s in alice.delivered] == ["remote-server-not-found"]


async def test_a_false_answer_from_route_remote_stops_the_chain_with_an_error(node: FakeNode):
    alice = node.bind(ALICE)
    later: list[str] = []
    node.hooks.add(Hook.ROUTE_REMOTE, lambda s, to: False, 10)
    node.hooks.add(Hook.ROUTE_REMOTE, lambda s, to: later.append("asked") or True, 20)
    await node.route(chat("carol@remote.org"))
    assert later == []
    assert [error_condition(s) for s in alice.delivered] == ["remote-server-not-found"]


async def test_a_stanza_error_raised_by_a_remote_handler_is_bounced(node: FakeNode):
    alice = node.bind(ALICE)

    async def refuse(s, to):
        raise errors.RemoteServerTimeout("too slow")

    node.hooks.add(Hook.ROUTE_REMOTE, refuse)
    await node.route(chat("carol@remote.org"))
    assert [error_condition(s) for s in alice.delivered] == ["remote-server-timeout"]


async def test_served_domains_never_ask_route_remote(node: FakeNode):
    bob = node.bind(f"{BOB}/pc", available=True)
    asked: list[str] = []
    node.hooks.add(Hook.ROUTE_REMOTE, lambda s, to: asked.append("remote") or True)
    node.bind(ALICE)
    await node.route(chat(f"{BOB}/pc"))
    assert asked == []
    assert [body(s) for s in bob.delivered] == ["hi"]


# -- filter_local_packet ---------------------------------------------------------------------------


async def test_filter_stop_drops_the_stanza(node: FakeNode):
    alice = node.bind(ALICE)
    bob = node.bind(f"{BOB}/pc", available=True)
    seen: list[str] = []

    def drop(s, _f, _t):
        seen.append(f"drop {s.id}")
        return STOP

    node.hooks.add(Hook.FILTER_LOCAL_PACKET, lambda s, _f, _t: seen.append(f"first {s.id}"), 10)
    node.hooks.add(Hook.FILTER_LOCAL_PACKET, drop, 20)
    node.hooks.add(Hook.FILTER_LOCAL_PACKET, lambda s, _f, _t: seen.append("never"), 30)
    remote: list[str] = []
    node.hooks.add(Hook.ROUTE_REMOTE, lambda s, to: remote.append("remote") or True)
    await node.route(chat(f"{BOB}/pc"))
    await node.route(chat("carol@remote.org"))
    assert seen == ["first m1", "drop m1", "first m1", "drop m1"]
    assert bob.delivered == [] and alice.delivered == [] and remote == []


async def test_filter_passing_lets_it_through(node: FakeNode):
    bob = node.bind(f"{BOB}/pc", available=True)
    node.bind(ALICE)
    node.hooks.add(Hook.FILTER_LOCAL_PACKET, lambda s, _f, _t: None)
    node.hooks.add(Hook.FILTER_LOCAL_PACKET, lambda s, _f, _t: False)  # not STOP: goes on
    await node.route(chat(f"{BOB}/pc"))
    assert [(s.name, s.to) for s in bob.delivered] == [("message", f"{BOB}/pc")]


# -- route_elsewhere --------------------------------------------------------------------------------


async def test_elsewhere_is_not_asked_when_a_local_resource_takes_it(node: FakeNode):
    await node.create_account(BOB)
    bob = node.bind(f"{BOB}/pc", available=True, priority=1)
    node.bind(ALICE)
    asked: list[str] = []
    node.hooks.add(Hook.ROUTE_ELSEWHERE, lambda s, to: asked.append(str(to)) or True)
    fanout: list[tuple[str, Fanout]] = []
    node.hooks.add(Hook.ROUTE_FANOUT, lambda s, bare, which: fanout.append((str(bare), which)) or True)
    await node.route(chat(BOB))
    await node.route(chat(f"{BOB}/pc"))
    assert asked == []
    assert len(bob.delivered) == 2
    assert fanout == [(BOB, Fanout(set_to=False, min_priority=1))]  # the bare JID fans out to other regions


async def test_elsewhere_is_asked_when_nothing_here_and_its_answer_ends_routing(node: FakeNode):
    await node.create_account(BOB)
    node.bind(ALICE)
    asked: list[tuple[str, Jid]] = []
    offline: list[str] = []

    async def elsewhere(s, to):
        asked.append((s.id, to))
        return True

    node.hooks.add(Hook.ROUTE_ELSEWHERE, elsewhere)
    node.hooks.add(Hook.OFFLINE_MESSAGE, lambda s, to: offline.append(str(to)) or True)
    await node.route(chat(BOB))
    await node.route(chat(f"{BOB}/gone"))
    assert asked == [("m1", Jid.parse(BOB)), ("m1", Jid.parse(f"{BOB}/gone"))]
    assert offline == []


async def test_elsewhere_is_asked_when_local_resources_are_not_available(node: FakeNode):
    await node.create_account(BOB)
    node.bind(f"{BOB}/pc", available=False)
    node.bind(f"{BOB}/low", available=True, priority=-1)
    node.bind(ALICE)
    asked: list[str] = []
    node.hooks.add(Hook.ROUTE_ELSEWHERE, lambda s, to: asked.append(str(to)) or True)
    await node.route(chat(BOB))
    assert asked == [BOB]


async def test_elsewhere_saying_no_falls_back_to_local_handling(node: FakeNode):
    await node.create_account(BOB)
    node.bind(ALICE)
    order: list[str] = []
    node.hooks.add(Hook.ROUTE_ELSEWHERE, lambda s, to: order.append("elsewhere") or False)
    node.hooks.add(Hook.OFFLINE_MESSAGE, lambda s, to: order.append("offline") or True)
    await node.route(chat(BOB))
    assert order == ["elsewhere", "offline"]


async def test_local_only_never_asks_elsewhere(node: FakeNode):
    await node.create_account(BOB)
    node.bind(ALICE)
    order: list[str] = []
    node.hooks.add(Hook.ROUTE_ELSEWHERE, lambda s, to: order.append("elsewhere") or True)
    node.hooks.add(Hook.OFFLINE_MESSAGE, lambda s, to: order.append("offline") or True)
    await node.route(chat(BOB), local_only=True)
    assert order == ["offline"]


async def test_elsewhere_is_not_asked_for_the_server_itself(node: FakeNode):
    alice = node.bind(ALICE)
    asked: list[str] = []
    node.hooks.add(Hook.ROUTE_ELSEWHERE, lambda s, to: asked.append("x") or True)
    await node.route(chat("example.com"))
    assert asked == []
    assert [error_condition(s) for s in alice.delivered] == ["service-unavailable"]


# -- offline_message ------------------------------------------------------------------------------


async def test_no_offline_handler_means_service_unavailable(node: FakeNode):
    await node.create_account(BOB)
    alice = node.bind(ALICE)
    await node.route(chat(BOB))
    [err] = alice.delivered
    assert (err.type, err.to, err.from_, err.id) == ("error", ALICE, BOB, "m1")
    assert error_condition(err) == "service-unavailable"


async def test_offline_handlers_in_order_until_one_keeps_it(node: FakeNode):
    await node.create_account(BOB)
    alice = node.bind(ALICE)
    order: list[tuple[str, str]] = []

    async def push(s, to):
        order.append(("push", str(to)))
        return None

    def store(s, to):
        order.append(("store", body(s)))
        return True

    node.hooks.add(Hook.OFFLINE_MESSAGE, store, 50)
    node.hooks.add(Hook.OFFLINE_MESSAGE, push, 10)
    node.hooks.add(Hook.OFFLINE_MESSAGE, lambda s, to: order.append(("never", "")) or True, 90)
    await node.route(chat(BOB, "kept"))
    assert order == [("push", BOB), ("store", "kept")]
    assert alice.delivered == []


async def test_offline_handlers_that_all_pass_mean_service_unavailable(node: FakeNode):
    await node.create_account(BOB)
    alice = node.bind(ALICE)
    node.hooks.add(Hook.OFFLINE_MESSAGE, lambda s, to: None)
    await node.route(chat(BOB))
    assert [error_condition(s) for s in alice.delivered] == ["service-unavailable"]


async def test_no_such_account_is_service_unavailable_without_asking_offline(node: FakeNode):
    alice = node.bind(ALICE)
    asked: list[str] = []
    node.hooks.add(Hook.OFFLINE_MESSAGE, lambda s, to: asked.append("x") or True)
    await node.route(chat("nobody@example.com"))
    assert asked == []
    assert [error_condition(s) for s in alice.delivered] == ["service-unavailable"]


async def test_offline_for_a_missing_full_jid_asks_with_the_bare_jid(node: FakeNode):
    await node.create_account(BOB)
    node.bind(ALICE)
    asked: list[Jid] = []
    node.hooks.add(Hook.OFFLINE_MESSAGE, lambda s, to: asked.append(to) or True)
    await node.route(chat(f"{BOB}/gone"))
    assert asked == [Jid.parse(BOB)]


async def test_headlines_and_errors_are_never_offered_to_offline(node: FakeNode):
    await node.create_account(BOB)
    alice = node.bind(ALICE)
    asked: list[str] = []
    node.hooks.add(Hook.OFFLINE_MESSAGE, lambda s, to: asked.append(s.type) or True)
    await node.route(chat(BOB, mtype="headline"))
    await node.route(chat(BOB, mtype="error"))
    assert asked == [] and alice.delivered == []


# -- deliver_to_member ------------------------------------------------------------------------------


async def test_records_of_another_member_go_through_deliver_to_member(node: FakeNode):
    node.bind(ALICE)
    remote = node.bind_remote(f"{BOB}/tablet", "node2")
    sent: list[tuple[str, str, str | None]] = []

    def to_member(record, s):
        sent.append((record.node, record.sid, s.to))
        return True

    node.hooks.add(Hook.DELIVER_TO_MEMBER, to_member)
    await node.route(chat(f"{BOB}/tablet"))
    assert sent == [("node2", remote.sid, f"{BOB}/tablet")]


async def test_bare_jid_delivery_mixes_local_and_member_sessions(node: FakeNode):
    await node.create_account(BOB)
    node.bind(ALICE)
    here = node.bind(f"{BOB}/pc", available=True, priority=5)
    node.bind_remote(f"{BOB}/tablet", "node2", priority=5)
    node.bind_remote(f"{BOB}/old", "node3", priority=1)  # less available: not a target
    sent: list[tuple[str, str]] = []
    node.hooks.add(Hook.DELIVER_TO_MEMBER, lambda record, s: sent.append((record.node, str(record.jid))) or True)
    await node.route(chat(BOB))
    assert sent == [("node2", f"{BOB}/tablet")]
    assert [s.to for s in here.delivered] == [BOB]  # set_to=False: still to the bare JID


async def test_local_records_never_use_deliver_to_member(node: FakeNode):
    bob = node.bind(f"{BOB}/pc")
    node.bind(ALICE)
    sent: list[str] = []
    node.hooks.add(Hook.DELIVER_TO_MEMBER, lambda record, s: sent.append(record.node) or True)
    await node.route(chat(f"{BOB}/pc"))
    assert sent == [] and len(bob.delivered) == 1


async def test_member_without_a_link_loses_the_stanza_quietly(node: FakeNode, caplog: pytest.LogCaptureFixture):
    alice = node.bind(ALICE)
    node.bind_remote(f"{BOB}/tablet", "node2")
    node.hooks.add(Hook.DELIVER_TO_MEMBER, lambda record, s: None)
    with caplog.at_level("WARNING", logger="cluster_node.core.router"):
        await node.route(chat(f"{BOB}/tablet"))
    assert alice.delivered == []
    assert any("no cluster link" in r.getMessage() and "node2" in r.getMessage() for r in caplog.records)


async def test_an_account_iq_answered_where_online_asks_elsewhere_only_without_an_available_resource(
        node: FakeNode):
    """``where_online`` account IQs (last activity) go to the region where the account is online;
    other account IQs, and those with an available resource here, are answered here."""
    await node.create_account(BOB)
    node.bind(ALICE)
    answered: list[str] = []

    async def answer(req):
        answered.append(req.stanza.id)
        return None

    node.router.add_account_iq("jabber:iq:last", "query", answer, where_online=True)
    node.router.add_account_iq("vcard-temp", "vCard", answer)
    asked: list[str] = []
    node.hooks.add(Hook.ROUTE_ELSEWHERE, lambda s, to: asked.append(s.id) or True)

    def iq(id_: str, payload: str) -> str:
        return f"<iq xmlns='jabber:client' from='{ALICE}' to='{BOB}' type='get' id='{id_}'>{payload}</iq>"

    await node.route(iq("last1", "<query xmlns='jabber:iq:last'/>"))
    await node.route(iq("card1", "<vCard xmlns='vcard-temp'/>"))
    assert asked == ["last1"] and answered == ["card1"]
    node.bind(f"{BOB}/pc", available=True)
    await node.route(iq("last2", "<query xmlns='jabber:iq:last'/>"))
    assert asked == ["last1"] and answered == ["card1", "last2"]


async def test_copies_for_several_sessions_of_another_member_go_in_one_frame(node: FakeNode):
    """route_many (a room's message): this member's sessions get theirs at once; another member's
    several sessions one DELIVER_MANY_TO_MEMBER (one cluster frame, the stanza once), a member with
    one session a plain DELIVER_TO_MEMBER; without a taker, each copy on its own."""
    here = node.bind("carol@example.com/a")
    for i in range(3):
        node.bind_remote(f"user{i}@example.com/r", "node2")
    node.bind_remote("dave@example.com/r", "node3")
    many: list[tuple[str, list[str], str | None]] = []
    single: list[str] = []
    taker = object()
    node.hooks.add(Hook.DELIVER_MANY_TO_MEMBER,
                   lambda member, copies, s: many.append((member, [to for _, to in copies], s[0].to)) or True,
                   owner=taker)
    node.hooks.add(Hook.DELIVER_TO_MEMBER, lambda record, s: single.append(str(s.to)) or True)
    stanza = parse_stanza(b"<message xmlns='jabber:client' from='room@conference.example.com/x' type='groupchat'>"
                          b"<body>hi</body></message>")
    recipients = ["carol@example.com/a", *(f"user{i}@example.com/r" for i in range(3)), "dave@example.com/r"]
    assert node.router.route_many(stanza, recipients) == []
    assert [s.to for s in here.delivered] == ["carol@example.com/a"]
    assert many == [("node2", [f"user{i}@example.com/r" for i in range(3)], None)]  # 'to' set on arrival
    assert single == ["dave@example.com/r"]
    node.hooks.remove_owner(taker)
    single.clear()
    node.router.route_many(stanza, recipients)
    assert sorted(single) == sorted(recipients[1:])  # no taker: a copy each


async def test_a_run_to_one_recipient_is_one_frame_to_its_member_or_one_hand_off(node: FakeNode):
    """route_run (what a joiner gets: many stanzas, one recipient): a session here gets them in
    order; a session on another member gets them in one DELIVER_MANY_TO_MEMBER; a full JID with
    no session in the region goes to ROUTE_MANY once, with every stanza; another domain's are left
    for the routing chain, in order.  Modules reach it through ModuleHost.route_run."""
    here = node.bind("carol@example.com/a")
    node.bind_remote("dave@example.com/r", "node2")
    members: list[tuple[str, list[str], list[str | None]]] = []
    away: list[tuple[list[str | None], list[str]]] = []
    node.hooks.add(Hook.DELIVER_MANY_TO_MEMBER, lambda member, copies, run: members.append(
        (member, [to for _, to in copies], [s.from_ for s in run])) or True)
    node.hooks.add(Hook.DELIVER_TO_MEMBER, lambda record, s: pytest.fail(f"one frame for {s.to}"))
    node.hooks.add(Hook.ROUTE_MANY, lambda run, rs: away.append(([s.from_ for s in run], rs)) or True)

    def run(to: str) -> list[Stanza]:
        return [parse_stanza(f"<presence xmlns='jabber:client' from='room@conference.example.com/u{i}' "
                             f"to='{to}'/>".encode()) for i in range(5)]

    nicks = [f"room@conference.example.com/u{i}" for i in range(5)]
    assert node.router.route_run(run("carol@example.com/a"), ["carol@example.com/a"]) == []
    assert [s.from_ for s in here.delivered] == nicks
    assert node.router.route_run(run("dave@example.com/r"), ["dave@example.com/r"]) == []
    assert members == [("node2", ["dave@example.com/r"], nicks)]
    assert node.router.route_run(run("erin@example.com/x"), ["erin@example.com/x"]) == []
    assert away == [(nicks, ["erin@example.com/x"])]
    left = node.router.route_run(run("frank@other.example/x"), ["frank@other.example/x"])
    assert [(s.from_, s.to) for s in left] == [(n, "frank@other.example/x") for n in nicks]


async def test_a_run_frame_from_another_member_reaches_its_sessions_in_order(node: FakeNode):
    """The receiving side of DELIVER_MANY_TO_MEMBER (clustering's ``sessions`` envelope): a run's
    stanzas back to back with their sizes, each session getting every stanza in order with its 'to';
    a session gone meanwhile has its copies routed again from here."""
    from cluster_node import clustering

    carol, erin = node.bind("carol@example.com/a"), node.bind("erin@example.com/b")
    node.services.envelopes[clustering.SESSIONS] = lambda env, run: clustering._for_sessions(node.services, env, run)
    run = [parse_stanza(f"<presence xmlns='jabber:client' from='room@conference.example.com/u{i}' "
                        f"to='carol@example.com/a'/>".encode()) for i in range(3)]
    sizes, data = clustering.pack(run)
    to = [[carol.record.sid, "carol@example.com/a"], [erin.record.sid, "erin@example.com/b"],
          ["gone", "x@example.com/y"]]
    clustering._arrived(node.services, {"k": clustering.SESSIONS, "to": to, **sizes}, data)
    nicks = [f"room@conference.example.com/u{i}" for i in range(3)]
    assert [(s.from_, s.to) for s in carol.take()] == [(n, "carol@example.com/a") for n in nicks]
    assert [(s.from_, s.to) for s in erin.take()] == [(n, "erin@example.com/b") for n in nicks]
    await node.settle()  # (the gone session's copies: routed again, to nobody)
