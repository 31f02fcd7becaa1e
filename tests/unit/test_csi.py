"""XEP-0352 Client State Indication: the sans-IO buffering policy, then the module on a node without a
network (tests/helpers/fake_host.py) with sessions that filter and write the way c2s connections do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cluster_node.core.hooks import Hook
from cluster_node.modules.csi import Csi
from cluster_node.modules.csi.policy import NS, CsiPolicy, Kind, classify
from cluster_node.xmpp.stanza import Stanza
from tests.helpers.fake_host import FakeNode, FakeSession, fake_node, stanza

ME = "alice@example.com/phone"
SM = "urn:xmpp:sm:3"


def pres(sender: str, ptype: str | None = None, show: str | None = None) -> Stanza:
    t = f" type='{ptype}'" if ptype else ""
    inner = f"<show>{show}</show>" if show else ""
    return stanza(f"<presence xmlns='jabber:client' from='{sender}' to='{ME}'{t}>{inner}</presence>")


def msg(sender: str, payload: str, mtype: str = "chat") -> Stanza:
    return stanza(f"<message xmlns='jabber:client' from='{sender}' to='{ME}' type='{mtype}'>{payload}</message>")


COMPOSING = "<composing xmlns='http://jabber.org/protocol/chatstates'/>"
OMEMO = ("<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><iv>AA==</iv></header>"
         "<payload>AA==</payload></encrypted>")


def shown(stanzas: Any) -> list[tuple[str, str | None, str | None]]:
    """(kind, sender, type) of each stanza, to compare sequences."""
    return [(s.name, s.from_, s.type) for s in stanzas]


def inactive(**kw: Any) -> CsiPolicy:
    p = CsiPolicy(**kw)
    p.set_inactive()
    return p


# -- classification -----------------------------------------------------------------------------------


@pytest.mark.parametrize("s, kind", [
    (pres("bob@example.com/pc"), Kind.PRESENCE),
    (pres("bob@example.com/pc", "unavailable"), Kind.PRESENCE),
    (pres("bob@example.com", "subscribe"), Kind.IMPORTANT),
    (pres("bob@example.com", "subscribed"), Kind.IMPORTANT),
    (pres("bob@example.com", "unsubscribed"), Kind.IMPORTANT),
    (pres("bob@example.com", "error"), Kind.IMPORTANT),
    (msg("bob@example.com/pc", COMPOSING), Kind.DROP),
    (msg("bob@example.com/pc", "<paused xmlns='http://jabber.org/protocol/chatstates'/><thread>t1</thread>"
                               "<no-store xmlns='urn:xmpp:hints'/><origin-id xmlns='urn:xmpp:sid:0' id='x'/>"),
     Kind.DROP),
    (msg("room@muc.example.com/bob", COMPOSING, "groupchat"), Kind.DROP),
    (msg("bob@example.com/pc", f"<body>hi</body>{COMPOSING}"), Kind.IMPORTANT),
    (msg("bob@example.com/pc", f"{OMEMO}{COMPOSING}"), Kind.IMPORTANT),
    (msg("bob@example.com/pc", f"{COMPOSING}<received xmlns='urn:xmpp:receipts' id='m1'/>"), Kind.IMPORTANT),
    (msg("bob@example.com/pc", "<displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/>"), Kind.IMPORTANT),
    (msg("bob@example.com/pc", COMPOSING, "error"), Kind.IMPORTANT),
    (msg("bob@example.com/pc", ""), Kind.IMPORTANT),
    (stanza(f"<iq xmlns='jabber:client' from='bob@example.com/pc' to='{ME}' type='get' id='1'>"
            "<ping xmlns='urn:xmpp:ping'/></iq>"), Kind.IMPORTANT),
])
def test_classify(s: Stanza, kind: Kind) -> None:
    assert classify(s)[0] is kind


def test_classify_carbons_and_muc_self_presence() -> None:
    fwd = ("<{w} xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
           "<message xmlns='jabber:client' from='bob@example.com/pc' to='alice@example.com/desk' type='chat'>"
           "{inner}</message></forwarded></{w}>")
    assert classify(msg("alice@example.com", fwd.format(w="received", inner=COMPOSING))) == (Kind.DROP,
                                                                                             "carbon-chat-state")
    assert classify(msg("alice@example.com", fwd.format(w="sent", inner="<body>x</body>")))[0] is Kind.IMPORTANT
    joined = stanza(f"<presence xmlns='jabber:client' from='room@muc.example.com/alice' to='{ME}'>"
                    "<x xmlns='http://jabber.org/protocol/muc#user'><item role='participant'/>"
                    "<status code='110'/></x></presence>")
    other = stanza(f"<presence xmlns='jabber:client' from='room@muc.example.com/bob' to='{ME}'>"
                   "<x xmlns='http://jabber.org/protocol/muc#user'><item role='participant'/></x></presence>")
    assert classify(joined) == (Kind.IMPORTANT, "muc-self-presence")
    assert classify(other)[0] is Kind.PRESENCE
    s2s = stanza(f"<message xmlns='jabber:server' from='bob@other.example/pc' to='{ME}'><body>hi</body></message>")
    assert classify(s2s) == (Kind.IMPORTANT, "body")
    s2s_state = stanza(f"<message xmlns='jabber:server' from='bob@other.example/pc' to='{ME}'>{COMPOSING}</message>")
    assert classify(s2s_state)[0] is Kind.DROP


# -- the policy ----------------------------------------------------------------------------------------


def test_active_delivers_everything() -> None:
    p = CsiPolicy()
    assert p.state == "active"
    for s in (pres("bob@example.com/pc"), msg("bob@example.com/pc", COMPOSING)):
        out = p.receive(s, 0.0)
        assert out.deliver and out.write == ()
    assert len(p) == 0 and p.deadline is None


def test_presence_is_held_and_deduplicated_per_full_sender() -> None:
    p = inactive()
    for s in (pres("bob@example.com/pc", show="away"), pres("bob@example.com/phone"),
              pres("bob@example.com/pc", show="xa"), pres("carol@example.com/x")):
        out = p.receive(s, 1.0)
        assert not out.deliver and out.write == ()
    held = p.held
    # bob/pc's newest replaces the first and moves behind bob/phone: the order the survivors arrived
    assert shown(held) == [("presence", "bob@example.com/phone", None), ("presence", "bob@example.com/pc", None),
                           ("presence", "carol@example.com/x", None)]
    assert held[1].element.findtext("{jabber:client}show") == "xa"
    assert p.stats["held"] == 4 and p.stats["replaced"] == 1


def test_unavailable_replaces_available_and_available_replaces_unavailable() -> None:
    p = inactive()
    p.receive(pres("bob@example.com/pc"), 0.0)
    p.receive(pres("bob@example.com/pc", "unavailable"), 0.0)
    assert shown(p.held) == [("presence", "bob@example.com/pc", "unavailable")]
    p.receive(pres("bob@example.com/pc", show="dnd"), 0.0)
    assert shown(p.held) == [("presence", "bob@example.com/pc", None)]


def test_chat_states_are_dropped() -> None:
    p = inactive()
    p.receive(pres("bob@example.com/pc"), 0.0)
    out = p.receive(msg("bob@example.com/pc", COMPOSING), 0.0)
    assert (out.deliver, out.write, out.reason) == (False, (), "chat-state")
    assert len(p) == 1  # nothing flushed by a dropped stanza
    assert p.stats["dropped"] == 1


@pytest.mark.parametrize("important", [
    msg("bob@example.com/pc", "<body>hello</body>"),
    msg("bob@example.com/pc", OMEMO),
    pres("bob@example.com", "subscribe"),
    stanza(f"<iq xmlns='jabber:client' from='example.com' to='{ME}' type='set' id='push'>"
           "<query xmlns='jabber:iq:roster'><item jid='dan@example.com'/></query></iq>"),
    msg("bob@example.com/pc", "<x xmlns='urn:example:unknown'/>"),
])
def test_important_passes_after_the_held_presence_in_order(important: Stanza) -> None:
    p = inactive()
    p.receive(pres("bob@example.com/pc"), 0.0)
    p.receive(pres("carol@example.com/x"), 0.0)
    p.receive(pres("bob@example.com/pc", "unavailable"), 0.0)
    out = p.receive(important, 0.0)
    assert out.deliver
    assert shown(out.write) == [("presence", "carol@example.com/x", None),
                                ("presence", "bob@example.com/pc", "unavailable")]
    assert len(p) == 0 and p.deadline is None
    # with nothing held, an important stanza passes alone
    again = p.receive(important, 0.0)
    assert again.deliver and again.write == ()
    assert p.stats["flush:important"] == 1 and p.stats["flushed"] == 2 and p.stats["important"] == 2


def test_own_presence_reflected_is_not_held() -> None:
    p = CsiPolicy(owner=ME)
    p.set_inactive()
    p.receive(pres("bob@example.com/pc"), 0.0)
    out = p.receive(pres(ME, show="away"), 0.0)
    assert out.deliver and out.reason == "own-presence"
    assert shown(out.write) == [("presence", "bob@example.com/pc", None)]


def test_max_held_overflow_flushes_everything_in_order() -> None:
    p = inactive(max_held=3)
    senders = [f"u{i}@example.com/r" for i in range(3)]
    for sender in senders:
        assert p.receive(pres(sender), 0.0).write == ()
    assert p.receive(pres(senders[0], show="away"), 0.0).write == ()  # a replacement does not grow it
    out = p.receive(pres("u9@example.com/r"), 0.0)
    assert not out.deliver and out.reason == "overflow"
    assert [s.from_ for s in out.write] == [senders[1], senders[2], senders[0], "u9@example.com/r"]
    assert len(p) == 0 and p.stats["flush:overflow"] == 1


def test_max_delay_deadline_and_due() -> None:
    p = inactive(max_delay=10.0)
    assert p.deadline is None and p.due(100.0) == []
    p.receive(pres("bob@example.com/pc"), 5.0)
    p.receive(pres("carol@example.com/x"), 7.0)
    p.receive(pres("bob@example.com/pc", show="away"), 8.0)
    assert p.deadline == 15.0  # from the first stanza held in an empty queue
    assert p.due(14.9) == []
    assert [s.from_ for s in p.due(15.0)] == ["carol@example.com/x", "bob@example.com/pc"]
    assert p.deadline is None
    p.receive(pres("dan@example.com/y"), 20.0)
    assert p.deadline == 30.0


def test_active_flushes_and_stops_holding() -> None:
    p = inactive()
    p.receive(pres("bob@example.com/pc"), 0.0)
    p.receive(msg("bob@example.com/pc", COMPOSING), 0.0)
    assert shown(p.set_active()) == [("presence", "bob@example.com/pc", None)]
    assert p.state == "active" and len(p) == 0
    assert p.receive(pres("bob@example.com/pc"), 0.0).deliver
    assert p.stats["flush:active"] == 1


# -- the module -----------------------------------------------------------------------------------------


class Conn(FakeSession):
    """A session that filters and writes like a c2s connection: ``deliver`` asks
    ``user_receive_filter``, ``write`` puts it on the wire or, once closed, hands it to the session
    manager's ``undeliverable`` (and so to ``session_hold``)."""

    def __init__(self, node: FakeNode) -> None:
        super().__init__(node.services)
        self.node = node
        self.is_open = True
        self.raw: list[bytes] = []

    def deliver(self, stanza: Stanza) -> None:
        if not self.is_open:
            self.node.sessions.undeliverable(self, stanza)
        elif not self.node.hooks.first(Hook.USER_RECEIVE_FILTER, self, stanza):
            self.write(stanza)

    def write(self, stanza: Stanza) -> None:
        if not self.is_open:
            self.node.sessions.undeliverable(self, stanza)
            return
        self.delivered.append(stanza)

    def send_raw(self, data: bytes) -> None:
        self.raw.append(data)

    def element(self, xml: str) -> Any:
        return self.node.hooks.first(Hook.C2S_ELEMENT, self, stanza(xml))


def bind(node: FakeNode, full: str = ME) -> Conn:
    plain = node.bind(full)
    conn = Conn(node)
    conn.record = plain.record
    node.local.add(conn.record.sid, conn)
    return conn


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as n:
        yield n


async def test_feature_after_authentication_only(node: FakeNode) -> None:
    await node.start(Csi)
    assert node.hooks.fold(Hook.C2S_FEATURES, [], "post_auth", None) == [f"<csi xmlns='{NS}'/>".encode()]
    assert node.hooks.fold(Hook.C2S_FEATURES, [], "pre_auth", None) == []


async def test_state_in_ext_and_on_the_replicated_record(node: FakeNode) -> None:
    csi = await node.start(Csi)
    alice = bind(node)
    assert alice.element(f"<inactive xmlns='{NS}'/>") is True
    assert alice.ext["csi"].state == "inactive"
    assert node.table.lookup(alice.record.jid).flags == {"csi": "inactive"}  # type: ignore[union-attr]
    assert alice.element(f"<inactive xmlns='{NS}'/>") is True  # twice: no change
    assert alice.element(f"<bogus xmlns='{NS}'/>") is None  # unsupported-stanza-type
    assert alice.element(f"<active xmlns='{NS}'/>") is True
    assert alice.ext["csi"].state == "active"
    assert node.table.lookup(alice.record.jid).flags == {}  # type: ignore[union-attr]
    assert csi.status()["inactive"] == 0 and csi.stats["went_inactive"] == 1 and csi.stats["went_active"] == 1


async def test_filtering_on_a_session(node: FakeNode) -> None:
    await node.start(Csi)
    alice = bind(node)
    alice.element(f"<inactive xmlns='{NS}'/>")
    alice.deliver(pres("bob@example.com/pc", show="away"))
    alice.deliver(msg("bob@example.com/pc", COMPOSING))
    alice.deliver(pres("bob@example.com/pc"))
    assert alice.take() == []
    alice.deliver(msg("bob@example.com/pc", "<body>hi</body>"))
    got = alice.take()
    assert shown(got) == [("presence", "bob@example.com/pc", None), ("message", "bob@example.com/pc", "chat")]
    assert got[0].element.find("{jabber:client}show") is None  # the latest one
    alice.deliver(pres("carol@example.com/x"))
    alice.element(f"<active xmlns='{NS}'/>")
    assert shown(alice.take()) == [("presence", "carol@example.com/x", None)]
    alice.deliver(msg("bob@example.com/pc", COMPOSING))  # active: everything passes
    assert len(alice.take()) == 1


async def test_sm_request_and_client_traffic_flush_first(node: FakeNode) -> None:
    order: list[str] = []
    await node.start(Csi)
    node.hooks.add(Hook.C2S_ELEMENT, lambda s, el: order.append(f"sm:{len(s.delivered)}") or True)
    alice = bind(node)
    alice.element(f"<inactive xmlns='{NS}'/>")
    alice.deliver(pres("bob@example.com/pc"))
    assert alice.element(f"<r xmlns='{SM}'/>") is True  # still answered by stream management
    assert order == ["sm:1"]  # after the flush
    alice.deliver(pres("carol@example.com/x"))
    node.hooks.run(Hook.C2S_STANZA_RECEIVED, alice, stanza("<message xmlns='jabber:client' to='x@example.com'/>"))
    assert [s.from_ for s in alice.take()] == ["bob@example.com/pc", "carol@example.com/x"]


async def test_without_client_traffic_flush_only_r_flushes(node: FakeNode) -> None:
    await node.start(Csi, flush_on_client_traffic=False)
    alice = bind(node)
    alice.element(f"<inactive xmlns='{NS}'/>")
    alice.deliver(pres("bob@example.com/pc"))
    node.hooks.run(Hook.C2S_STANZA_RECEIVED, alice, stanza("<message xmlns='jabber:client' to='x@example.com'/>"))
    alice.element(f"<a xmlns='{SM}' h='0'/>")
    assert alice.take() == []
    alice.element(f"<r xmlns='{SM}'/>")
    assert len(alice.take()) == 1


async def test_max_delay_timer_flushes_and_is_cancelled_on_active(node: FakeNode) -> None:
    csi = await node.start(Csi, max_delay=0.1)
    alice = bind(node)
    alice.element(f"<inactive xmlns='{NS}'/>")
    alice.deliver(pres("bob@example.com/pc"))
    assert csi.timers[alice] is not None
    await asyncio.sleep(0.2)
    assert [s.from_ for s in alice.take()] == ["bob@example.com/pc"]
    assert csi.stats["flush:timer"] == 1 and csi.timers[alice] is None
    alice.deliver(pres("carol@example.com/x"))
    timer = csi.timers[alice]
    assert timer is not None
    alice.element(f"<active xmlns='{NS}'/>")
    assert alice not in csi.timers and timer.cancelled()


async def test_detach_with_sm_hands_held_presence_to_session_hold(node: FakeNode) -> None:
    """On a closed stream ``write`` goes to ``session_hold``, where stream management keeps it for
    the detached session: this stands in for it at its priority (50)."""
    kept: list[Stanza] = []
    await node.start(Csi)
    node.hooks.add(Hook.SESSION_HOLD, lambda s, st: kept.append(st) or True)
    detach_saw: list[dict[str, str]] = []
    node.hooks.add(Hook.SESSION_DETACH, lambda s, reason: detach_saw.append(dict(s.record.flags)) or True)
    alice = bind(node)
    alice.ext["sm"] = object()
    alice.element(f"<inactive xmlns='{NS}'/>")
    alice.deliver(pres("bob@example.com/pc"))
    alice.deliver(pres("carol@example.com/x"))
    alice.is_open = False
    await node.sessions.closed(alice, "lost")
    assert [s.from_ for s in kept] == ["bob@example.com/pc", "carol@example.com/x"]
    assert detach_saw == [{}]  # the session stays (detached) without the inactive flag
    assert "csi" not in alice.ext


async def test_a_stanza_reaching_the_closing_stream_follows_the_held_ones(node: FakeNode) -> None:
    kept: list[Stanza] = []
    await node.start(Csi)
    node.hooks.add(Hook.SESSION_HOLD, lambda s, st: kept.append(st) or True)
    alice = bind(node)
    alice.ext["sm"] = object()
    alice.element(f"<inactive xmlns='{NS}'/>")
    alice.deliver(pres("bob@example.com/pc", show="away"))
    alice.is_open = False
    alice.deliver(pres("bob@example.com/pc"))  # newer, after the stream started closing
    assert [(s.from_, s.element.findtext("{jabber:client}show")) for s in kept] == [
        ("bob@example.com/pc", "away"), ("bob@example.com/pc", None)]


async def test_without_sm_held_presence_ends_with_the_session(node: FakeNode) -> None:
    held: list[Stanza] = []
    csi = await node.start(Csi)
    node.hooks.add(Hook.SESSION_HOLD, lambda s, st: held.append(st) or None)
    alice = bind(node)
    alice.element(f"<inactive xmlns='{NS}'/>")
    alice.deliver(pres("bob@example.com/pc"))
    alice.is_open = False
    await node.sessions.closed(alice, "closed")
    assert held == [] and csi.stats["discarded"] == 1
    assert node.table.lookup(alice.record.jid) is None
    assert csi.timers == {}


async def test_metrics_collector(node: FakeNode) -> None:
    await node.start(Csi, max_held=1)
    alice = bind(node)
    alice.element(f"<inactive xmlns='{NS}'/>")
    alice.deliver(pres("bob@example.com/pc"))
    alice.deliver(msg("bob@example.com/pc", COMPOSING))
    (collector,) = node.services.collectors
    values = {(s.name, tuple(s.labels.values())): s.value for m in collector.collect() for s in m.samples}
    assert values[("meridian_csi_inactive_sessions", ())] == 1
    assert values[("meridian_csi_held", ())] == 1
    assert values[("meridian_csi_stanzas_total", ("held",))] == 1
    assert values[("meridian_csi_stanzas_total", ("dropped",))] == 1
    alice.deliver(pres("carol@example.com/x"))  # over max_held: all out
    values = {(s.name, tuple(s.labels.values())): s.value for m in collector.collect() for s in m.samples}
    assert values[("meridian_csi_flushes_total", ("overflow",))] == 1
    assert values[("meridian_csi_stanzas_total", ("flushed",))] == 2
