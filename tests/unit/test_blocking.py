"""XEP-0191 Blocking Command on a node without a network (tests/helpers/fake_host.py): JID matching,
the commands and their pushes (a replicated record flag selects the resources), enforcement in
``filter_local_packet`` both ways, the presence a block or an unblock sends, the limits, and the
per-member cache with the cluster request that drops it on the other members."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cluster_node.core.change_watch import poll_changes
from cluster_node.core.hooks import Hook
from cluster_node.core.router import Fanout
from cluster_node.modules.blocking import Blocking, rules
from cluster_node.modules.blocking.module import DROP_CALL, FLAG
from cluster_node.modules.blocking.rules import ERRORS_NS, NS, Blocklist, ListCache
from cluster_node.modules.disco import Disco
from cluster_node.modules.presence import Presence
from cluster_node.storage import RosterItem
from cluster_node.xmpp import errors, ns
from cluster_node.xmpp.fragment import parse_stanza
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.stanza import Stanza
from tests.helpers.fake_host import DOMAIN, FakeNode, FakeSession, error_condition, fake_node, stanza

ALICE = "alice@example.com"
BOB = "bob@example.com"
C = f"{{{ns.CLIENT}}}"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as n:
        await n.start(Blocking)
        for user in ("alice", "bob", "carol"):
            await n.create_account(f"{user}@{DOMAIN}")
        yield n


def module(node: FakeNode) -> Blocking:
    m: Blocking = node.services.modules["blocking"]
    return m


def only(items: list[Stanza]) -> Stanza:
    assert len(items) == 1, items
    return items[0]


def items_of(el: Any) -> list[str]:
    return [i.get("jid") for i in el.findall(f"{{{NS}}}item")]


async def command(node: FakeNode, session: FakeSession, payload: str, type_: str = "set") -> Stanza:
    """An IQ from ``session`` with no 'to' (handled by the server for the account); its reply."""
    await node.route(f"<iq xmlns='jabber:client' from='{session.record.jid}' type='{type_}' id='b1'>"
                     f"{payload}</iq>")
    replies = [s for s in session.delivered if s.name == "iq" and s.id == "b1"]
    session.delivered = [s for s in session.delivered if s not in replies]  # pushes stay
    return only(replies)


async def block(node: FakeNode, session: FakeSession, *jids: str) -> Stanza:
    inner = "".join(f"<item jid='{j}'/>" for j in jids)
    return await command(node, session, f"<block xmlns='{NS}'>{inner}</block>")


async def unblock(node: FakeNode, session: FakeSession, *jids: str) -> Stanza:
    inner = "".join(f"<item jid='{j}'/>" for j in jids)
    return await command(node, session, f"<unblock xmlns='{NS}'>{inner}</unblock>")


async def fetch(node: FakeNode, session: FakeSession) -> list[str]:
    reply = await command(node, session, f"<blocklist xmlns='{NS}'/>", "get")
    assert reply.type == "result", reply
    el = reply.child(NS, "blocklist")
    assert el is not None
    return items_of(el)


def chat(from_: str, to: str, body: str = "hi", type_: str = "chat", id_: str = "m1") -> Stanza:
    return stanza(f"<message xmlns='jabber:client' from='{from_}' to='{to}' type='{type_}' id='{id_}'>"
                  f"<body>{body}</body></message>")


def is_blocked_error(s: Stanza) -> bool:
    err = s.element.find(C + "error")
    return (error_condition(s) == "not-acceptable" and err is not None
            and err.find(f"{{{ERRORS_NS}}}blocked") is not None)


# -- matching (XEP-0191 §3.1, XEP-0016 §2.1) ----------------------------------------------------------


def matches(items: list[str], jid: str) -> bool:
    return Blocklist(items).matches(Jid.parse(jid))


def test_full_jid_item_matches_only_that_resource():
    assert matches(["romeo@montague.net/orchard"], "romeo@montague.net/orchard")
    assert not matches(["romeo@montague.net/orchard"], "romeo@montague.net/garden")
    assert not matches(["romeo@montague.net/orchard"], "romeo@montague.net")


def test_bare_jid_item_matches_every_resource():
    assert matches(["romeo@montague.net"], "romeo@montague.net")
    assert matches(["romeo@montague.net"], "romeo@montague.net/orchard")
    assert not matches(["romeo@montague.net"], "juliet@montague.net/orchard")
    assert not matches(["romeo@montague.net"], "montague.net")


def test_domain_resource_item_matches_that_resource_at_the_domain():
    items = ["chat.montague.net/romeo"]
    assert matches(items, "chat.montague.net/romeo")
    assert matches(items, "room@chat.montague.net/romeo")  # that nickname in any room
    assert not matches(items, "room@chat.montague.net/juliet")
    assert not matches(items, "chat.montague.net")


def test_domain_item_matches_the_domain_its_users_and_subdomains():
    items = ["montague.net"]
    for jid in ("montague.net", "montague.net/res", "romeo@montague.net", "romeo@montague.net/r",
                "chat.montague.net", "room@chat.montague.net/nick"):
        assert matches(items, jid), jid
    for jid in ("capulet.net", "evilmontague.net", "montague.net.evil"):
        assert not matches(items, jid), jid


def test_ip_literals_have_no_subdomains():
    assert matches(["10.0.0.1"], "u@10.0.0.1")
    assert not matches(["0.0.1"], "u@10.0.0.1")


def test_items_are_normalised_and_an_empty_list_matches_nothing():
    assert matches([str(Jid.parse("Romeo@Montague.NET"))], "romeo@montague.net/x")
    assert not rules.EMPTY and not rules.EMPTY.matches(Jid.parse("a@b"))


def test_actions_per_direction_and_stanza():
    assert rules.inbound("presence", None) == rules.DROP
    assert rules.inbound("presence", "subscribe") == rules.DROP
    assert rules.inbound("message", "chat") == rules.ERROR
    assert rules.inbound("message", "error") == rules.DROP
    assert rules.inbound("iq", "get") == rules.ERROR
    assert rules.inbound("iq", "result") == rules.DROP
    assert rules.outbound("message", None) == rules.ERROR
    assert rules.outbound("iq", "set") == rules.ERROR
    assert rules.outbound("iq", "result") == rules.DROP
    assert rules.outbound("presence", None) == rules.DROP
    assert rules.outbound("presence", "probe") == rules.DROP
    assert rules.outbound("presence", "unavailable") == rules.PASS
    assert rules.outbound("message", "error") == rules.PASS


def test_parse_items_normalises_dedupes_and_checks():
    el = parse_stanza(f"<block xmlns='{NS}'><item jid='A@B.example'/><item jid='a@b.example'/>"
                      f"<item jid='c.example'/></block>".encode()).element
    assert rules.parse_items(el, 10) == ["a@b.example", "c.example"]
    with pytest.raises(errors.StanzaPolicyViolation):
        rules.parse_items(el, 2)
    bad = parse_stanza(f"<block xmlns='{NS}'><item jid='@x'/></block>".encode()).element
    with pytest.raises(errors.JidMalformed):
        rules.parse_items(bad, 10)
    missing = parse_stanza(f"<block xmlns='{NS}'><item/></block>".encode()).element
    with pytest.raises(errors.BadRequest):
        rules.parse_items(missing, 10)


def test_list_cache_ages_evicts_and_keeps_stale():
    cache = ListCache(max_age=5.0, size=2)
    a, b, c = Blocklist(["a.example"]), Blocklist(["b.example"]), Blocklist(["c.example"])
    ka, kb, kc = ("a", "x"), ("b", "x"), ("c", "x")
    cache.put(ka, a, now=0.0)
    cache.put(kb, b, now=0.0)
    assert cache.get(ka, now=1.0) == (a, False)
    cache.put(ka, a, now=1.0)  # read again: the newest
    cache.put(kc, c, now=1.0)
    assert cache.get(kb, now=1.0) == (None, True) and cache.stale(kb) is None  # evicted: the oldest read
    assert cache.get(ka, now=6.0) == (a, True)  # due for a re-read, still returned
    assert cache.due(now=6.0) == [ka, kc] and cache.due(now=5.5) == []
    assert cache.drop(kc) and cache.get(kc, now=1.0) == (None, True)
    off = ListCache(max_age=0.0, size=10)
    off.put(ka, a, now=0.0)
    assert off.get(ka, now=0.0) == (None, True)
    assert rules.key_of(Jid.parse("Alice@Example.com/x")) == rules.parse_key("alice@example.com") == (
        "alice", "example.com")
    assert rules.key_of(Jid.parse("example.com")) == rules.parse_key("example.com") == ("", "example.com")


def test_change_watch_reports_each_change_once_within_its_window():
    watch = rules.ChangeWatch(start_us=1_000_000, window_us=100)
    assert watch.since() == 999_900
    assert watch.changed([("x", "alice", 1_000_010), ("x", "bob", 1_000_020)]) == [("alice", "x"), ("bob", "x")]
    assert watch.since() == 1_000_020 - 100
    # The same rows again (the window overlaps): nothing new; a new change of alice: alice.
    assert watch.changed([("x", "alice", 1_000_010), ("x", "bob", 1_000_020)]) == []
    assert watch.changed([("x", "alice", 1_000_030), ("x", "bob", 1_000_020)]) == [("alice", "x")]
    # A change stamped a little in the past (a clock behind, a late commit) is still seen.
    assert watch.changed([("x", "carol", 1_000_001)]) == [("carol", "x")]
    # What fell out of the window is forgotten (the poll no longer returns it either).
    watch.changed([("x", "dave", 1_000_500)])
    assert watch.since() == 1_000_400 and watch.changed([("x", "dave", 1_000_500)]) == []


async def test_a_failing_change_poll_is_counted_each_time_and_logged_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    watch = rules.ChangeWatch(start_us=1_000_000, window_us=100)
    counters = {"polls": 0, "poll_failures": 0}
    asked: list[int] = []

    async def down(since: int) -> list[tuple[str, str, int]]:
        asked.append(since)
        raise ConnectionRefusedError("database away")

    what = f"test lists {id(watch)}"  # the throttle is per process: a key of this test's own
    for _ in range(3):
        assert await poll_changes(watch, down, what, counters) is None
    assert asked == [999_900] * 3 and counters == {"polls": 0, "poll_failures": 3}
    lines = [r for r in caplog.records if what in r.getMessage()]
    assert len(lines) == 1 and "ConnectionRefusedError: database away" in lines[0].getMessage()

    async def up(since: int) -> list[tuple[str, str, int]]:
        return [("x", "alice", 1_000_010)]

    assert await poll_changes(watch, up, what, counters) == [("alice", "x")]
    assert counters == {"polls": 1, "poll_failures": 3}


# -- commands ------------------------------------------------------------------------------------------


async def test_get_empty_list_and_flag_on_the_record(node: FakeNode):
    phone = node.bind(f"{ALICE}/phone")
    assert await fetch(node, phone) == []
    record = node.table.lookup(Jid.parse(f"{ALICE}/phone"))
    assert record is not None and record.flags.get(FLAG) == "on"


async def test_block_and_unblock_push_to_resources_that_requested_the_list(node: FakeNode):
    phone = node.bind(f"{ALICE}/phone")
    laptop = node.bind(f"{ALICE}/laptop")
    tablet = node.bind(f"{ALICE}/tablet")  # never asked for the list: no pushes
    await fetch(node, phone)
    await fetch(node, laptop)
    reply = await block(node, phone, "romeo@montague.net", "Iago@Shakespeare.lit")
    assert reply.type == "result" and reply.payload() is None
    for s in (phone, laptop):
        push = only(s.take())
        assert push.name == "iq" and push.type == "set" and push.to == str(s.record.jid)
        el = push.child(NS, "block")
        assert el is not None and items_of(el) == ["romeo@montague.net", "iago@shakespeare.lit"]
    assert tablet.take() == []
    assert await fetch(node, tablet) == ["romeo@montague.net", "iago@shakespeare.lit"]
    # Blocking again what is blocked: a result, nothing to push.
    assert (await block(node, laptop, "romeo@montague.net")).type == "result"
    assert phone.take() == [] and laptop.take() == []
    # Unblock one: pushed with that item.
    assert (await unblock(node, laptop, "romeo@montague.net", "nobody@nowhere.example")).type == "result"
    for s in (phone, laptop, tablet):
        el = only(s.take()).child(NS, "unblock")
        assert el is not None and items_of(el) == ["romeo@montague.net"]
    # Unblock all: an empty <unblock/> (§3.5).
    await block(node, phone, "a.example", "b.example")
    for s in (phone, laptop, tablet):
        s.take()
    assert (await unblock(node, tablet)).type == "result"
    for s in (phone, laptop, tablet):
        el = only(s.take()).child(NS, "unblock")
        assert el is not None and items_of(el) == []
    assert await fetch(node, phone) == []


async def test_pushes_fan_out_with_the_flag_to_members_and_regions(node: FakeNode):
    phone = node.bind(f"{ALICE}/phone")
    await fetch(node, phone)
    remote = node.bind_remote(f"{ALICE}/desk", "node2")
    node.services.update_record(remote.with_flag(FLAG, "on"))
    to_member: list[tuple[str, Stanza]] = []
    fanned: list[tuple[Stanza, Jid, Fanout]] = []
    node.hooks.add(Hook.DELIVER_TO_MEMBER, lambda r, s: to_member.append((str(r.jid), s)) or True)
    node.hooks.add(Hook.ROUTE_FANOUT, lambda s, bare, which: fanned.append((s, bare, which)) or True)
    await block(node, phone, BOB)
    assert [jid for jid, _ in to_member] == [f"{ALICE}/desk"]
    (push, bare, which), = fanned
    assert bare == Jid.parse(ALICE) and which.flag == FLAG and push.child(NS, "block") is not None


async def test_command_errors(tmp_path: Path):
    async with fake_node(tmp_path) as node:
        await node.start(Blocking, max_items=3, max_request_items=2)
        phone = node.bind(f"{ALICE}/phone")
        assert error_condition(await command(node, phone, f"<block xmlns='{NS}'/>")) == "bad-request"
        assert error_condition(await block(node, phone, "not@valid@jid")) == "jid-malformed"
        assert error_condition(await command(node, phone, f"<block xmlns='{NS}'><item/></block>")) == "bad-request"
        assert error_condition(await block(node, phone, "a.example", "b.example", "c.example")) == "policy-violation"
        assert error_condition(await command(node, phone, f"<blocklist xmlns='{NS}'/>", "set")) == "bad-request"
        assert error_condition(await command(node, phone, f"<block xmlns='{NS}'><item jid='x.example'/></block>",
                                             "get")) == "bad-request"
        assert (await block(node, phone, "a.example", "b.example")).type == "result"
        full = await block(node, phone, "c.example", "d.example")
        assert error_condition(full) == "not-acceptable"
        assert await fetch(node, phone) == ["a.example", "b.example"]  # nothing of the refused command
        assert (await block(node, phone, "c.example")).type == "result"


async def test_another_account_cannot_read_or_change_the_list(node: FakeNode):
    bob = node.bind(f"{BOB}/pc")
    await node.route(f"<iq xmlns='jabber:client' from='{BOB}/pc' to='{ALICE}' type='get' id='x'>"
                     f"<blocklist xmlns='{NS}'/></iq>")
    assert error_condition(only(bob.take())) == "forbidden"


async def test_disco_feature(node: FakeNode):
    await node.start(Disco)
    alice = node.bind(f"{ALICE}/phone")
    await node.route(f"<iq xmlns='jabber:client' from='{ALICE}/phone' to='{DOMAIN}' type='get' id='d'>"
                     "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    reply = only(alice.take())
    features = {f.get("var") for f in reply.element.iter(f"{{{ns.DISCO_INFO}}}feature")}
    assert NS in features


async def test_removing_the_account_empties_its_list(node: FakeNode):
    phone = node.bind(f"{ALICE}/phone")
    await block(node, phone, BOB)
    assert await node.storage.remove_account("example.com", "alice")
    assert await module(node).store.items("example.com", "alice") == []


# -- enforcement -----------------------------------------------------------------------------------------


async def test_inbound_from_a_blocked_jid(node: FakeNode):
    await node.start(Presence)  # presence to alice's bare JID would reach her phone
    alice = node.bind(f"{ALICE}/phone", available=True)
    bob = node.bind(f"{BOB}/pc", available=True)
    await block(node, alice, BOB)
    alice.take()
    # Messages: service-unavailable (§3.3), nothing for alice — to her bare or full JID.
    for to in (ALICE, f"{ALICE}/phone"):
        await node.route(chat(f"{BOB}/pc", to))
        assert error_condition(only(bob.take())) == "service-unavailable"
    # IQ get/set: service-unavailable; IQ results and errors, message errors: dropped.
    await node.route(f"<iq xmlns='jabber:client' from='{BOB}/pc' to='{ALICE}/phone' type='get' id='p'>"
                     "<ping xmlns='urn:xmpp:ping'/></iq>")
    assert error_condition(only(bob.take())) == "service-unavailable"
    await node.route(f"<iq xmlns='jabber:client' from='{BOB}/pc' to='{ALICE}/phone' type='result' id='p'/>")
    await node.route(chat(f"{BOB}/pc", f"{ALICE}/phone", type_="error"))
    # Presence of any kind: no answer, no error.
    for ptype in ("", " type='unavailable'", " type='subscribe'", " type='probe'"):
        await node.route(f"<presence xmlns='jabber:client' from='{BOB}/pc' to='{ALICE}'{ptype}/>")
        await node.route(f"<presence xmlns='jabber:client' from='{BOB}/pc' to='{ALICE}/phone'{ptype}/>")
    assert bob.take() == [] and alice.take() == []
    assert module(node).counters["blocked_in"] > 5
    # Carol is not blocked.
    node.bind("carol@example.com/x", available=True)
    await node.route(chat("carol@example.com/x", ALICE, "from carol"))
    assert only(alice.take()).element.findtext(C + "body") == "from carol"


async def test_outbound_to_a_blocked_jid(node: FakeNode):
    alice = node.bind(f"{ALICE}/phone", available=True)
    bob = node.bind(f"{BOB}/pc", available=True)
    await block(node, alice, f"{BOB}/pc")  # a full JID: only that resource
    alice.take()
    await node.route(chat(f"{ALICE}/phone", f"{BOB}/pc", "can you hear me"))
    err = only(alice.take())
    assert is_blocked_error(err) and err.from_ == f"{BOB}/pc" and err.to == f"{ALICE}/phone"
    assert err.element.findtext(C + "body") == "can you hear me"  # §3.3: the payload comes back
    await node.route(f"<iq xmlns='jabber:client' from='{ALICE}/phone' to='{BOB}/pc' type='get' id='q'>"
                     "<ping xmlns='urn:xmpp:ping'/></iq>")
    assert is_blocked_error(only(alice.take()))
    # Presence: dropped without an error, except unavailable; errors pass (answers).
    await node.route(f"<presence xmlns='jabber:client' from='{ALICE}/phone' to='{BOB}/pc'/>")
    await node.route(f"<iq xmlns='jabber:client' from='{ALICE}/phone' to='{BOB}/pc' type='result' id='r'/>")
    assert alice.take() == [] and bob.take() == []
    await node.route(f"<presence xmlns='jabber:client' from='{ALICE}/phone' to='{BOB}/pc' type='unavailable'/>")
    assert only(bob.take()).type == "unavailable"
    await node.route(chat(f"{ALICE}/phone", f"{BOB}/pc", type_="error"))
    assert only(bob.take()).type == "error"
    # The bare JID is not the blocked full JID.
    await node.route(chat(f"{ALICE}/phone", BOB, "to your bare jid"))
    assert only(bob.take()).element.findtext(C + "body") == "to your bare jid"
    assert module(node).counters["blocked_out"] == 4  # message, iq get, presence, iq result


async def test_a_blocked_domain_over_s2s(node: FakeNode):
    alice = node.bind(f"{ALICE}/phone", available=True)
    remote: list[Stanza] = []

    async def s2s(s: Stanza, to: Jid) -> bool:
        remote.append(s)
        return True

    node.hooks.add(Hook.ROUTE_REMOTE, s2s)
    await block(node, alice, "evil.example")
    alice.take()
    # In from the domain or a subdomain (a gateway routes what S2S brings): answered, not delivered.
    await node.route(chat("mallory@evil.example/x", ALICE))
    await node.route(chat("room@chat.evil.example/nick", f"{ALICE}/phone", type_="groupchat"))
    assert alice.take() == []
    assert [error_condition(s) for s in remote] == ["service-unavailable", "service-unavailable"]
    assert all(s.from_ in (ALICE, f"{ALICE}/phone") for s in remote)
    remote.clear()
    # Out: never reaches S2S.
    await node.route(chat(f"{ALICE}/phone", "mallory@evil.example"))
    assert remote == [] and is_blocked_error(only(alice.take()))
    await node.route(chat(f"{ALICE}/phone", "friend@good.example"))
    assert len(remote) == 1


async def test_own_account_and_own_server_are_never_blocked(node: FakeNode):
    await node.start(Disco)
    phone = node.bind(f"{ALICE}/phone", available=True)
    laptop = node.bind(f"{ALICE}/laptop", available=True)
    bob = node.bind(f"{BOB}/pc", available=True)
    await block(node, phone, DOMAIN)  # every user of the domain
    phone.take()
    await node.route(chat(f"{ALICE}/laptop", f"{ALICE}/phone", "note to self"))
    assert only(phone.take()).element.findtext(C + "body") == "note to self"
    await node.route(f"<iq xmlns='jabber:client' from='{ALICE}/phone' to='{DOMAIN}' type='get' id='d'>"
                     "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert only(phone.take()).type == "result"
    await node.route(chat(f"{BOB}/pc", ALICE))
    assert error_condition(only(bob.take())) == "service-unavailable"
    assert laptop.take() == []


async def test_stanzas_from_another_region_are_checked_for_the_recipient(node: FakeNode):
    alice = node.bind(f"{ALICE}/phone", available=True)
    await block(node, alice, BOB)
    alice.take()
    errors_out: list[Stanza] = []
    node.hooks.add(Hook.ROUTE_ELSEWHERE, lambda s, to: errors_out.append(s) or True)
    # bob is in another region (no record here): relayed in, routed here with local_only.
    await node.route(chat(f"{BOB}/far", ALICE), local_only=True)
    assert alice.take() == []
    assert [error_condition(s) for s in errors_out] == ["service-unavailable"]
    # A sender of ours in another region is checked there, where its session is: here only the
    # recipient's list counts (carol's is empty).
    carol = node.bind("carol@example.com/x", available=True)
    await block(node, carol, "dave@example.com")
    carol.take()
    await node.route(chat("dave@example.com/far", "carol@example.com"), local_only=True)
    assert carol.take() == []
    await node.route(chat("carol@example.com/elsewhere", f"{ALICE}/phone", "from another region"),
                     local_only=True)
    assert only(alice.take()).element.findtext(C + "body") == "from another region"


# -- presence on block and unblock (§3.3, §3.4) ----------------------------------------------------------


async def test_block_sends_unavailable_to_subscribers_and_unblock_their_presence(node: FakeNode):
    await node.start(Presence)
    await node.storage.put_roster_item(DOMAIN, "alice", RosterItem(jid=BOB, subscription="from"))
    await node.storage.put_roster_item(DOMAIN, "alice", RosterItem(jid="carol@example.com", subscription="to"))
    phone = node.bind(f"{ALICE}/phone", available=True)
    node.bind(f"{ALICE}/idle")  # not available: sends nothing
    bob = node.bind(f"{BOB}/pc", available=True)
    carol = node.bind("carol@example.com/x", available=True)
    await block(node, phone, BOB, "carol@example.com")
    got = only(bob.take())
    assert (got.name, got.type, got.from_, got.to) == ("presence", "unavailable", f"{ALICE}/phone", BOB)
    assert carol.take() == []  # not subscribed to alice's presence
    phone.take()
    await unblock(node, phone, BOB)
    # The available resources answer a probe from the contact with their current presence.
    probes = [s for s in phone.take() if s.name == "presence"]
    assert [(p.type, p.from_) for p in probes] == [("probe", BOB)]


# -- the cache and the cluster ---------------------------------------------------------------------------


class FakeCalls:
    """The cluster as the module sees it: two other members, requests recorded and answered."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.fail = fail or set()

    def members(self) -> list[str]:
        return ["node2", "gw1"]

    def call(self, node: str, name: str, args: dict[str, Any]) -> bool:
        return False

    async def request(self, node: str, name: str, args: dict[str, Any], timeout: float) -> Any:
        self.requests.append((node, name, args))
        if node in self.fail:
            raise LookupError(f"no handler for {name!r} on {node}")
        return True

    def send_stanza(self, node: str, kind: str, envelope: dict[str, Any], data: bytes) -> bool:
        return False

    async def wait_acks(self) -> None:
        return None


async def test_a_change_is_dropped_from_every_other_members_cache(node: FakeNode):
    calls = FakeCalls(fail={"gw1"})  # a member without the module: the command still succeeds
    node.services.calls = calls
    phone = node.bind(f"{ALICE}/phone")
    assert (await block(node, phone, BOB)).type == "result"
    assert calls.requests == [("node2", DROP_CALL, {"user": ALICE}), ("gw1", DROP_CALL, {"user": ALICE})]
    calls.requests.clear()
    assert (await block(node, phone, BOB)).type == "result"
    assert calls.requests == []  # nothing changed: nothing to drop
    await unblock(node, phone)
    assert [r[0] for r in calls.requests] == ["node2", "gw1"]


async def test_the_drop_call_makes_the_next_stanza_read_the_database(tmp_path: Path):
    async with fake_node(tmp_path) as node:
        m: Blocking = await node.start(Blocking, cache_ttl=3600, poll_interval=0)
        alice = node.bind(f"{ALICE}/phone", available=True)
        bob = node.bind(f"{BOB}/pc", available=True)
        await node.route(chat(f"{BOB}/pc", ALICE, "before"))
        assert only(alice.take()).element.findtext(C + "body") == "before"  # alice's empty list cached
        # Another member blocks (it writes the database) ...
        assert await m.store.add(DOMAIN, "alice", [BOB], 10) == [BOB]
        await node.route(chat(f"{BOB}/pc", ALICE, "cached"))
        assert only(alice.take()).element.findtext(C + "body") == "cached"
        # ... and asks this member to drop its copy.
        handler = node.services.call_handlers[DROP_CALL]
        assert handler("node2", {"user": ALICE}) is True
        await node.route(chat(f"{BOB}/pc", ALICE, "blocked"))
        assert alice.take() == [] and error_condition(only(bob.take())) == "service-unavailable"
        with pytest.raises(ValueError):
            handler("node2", {"user": 42})


async def test_old_lists_are_read_again_by_the_periodic_job_and_a_failed_read_keeps_the_last(tmp_path: Path):
    async with fake_node(tmp_path) as node:
        # The periodic job every hour: the test runs it itself (m.tick()), so it never races it.
        m: Blocking = await node.start(Blocking, cache_ttl=0.05, poll_interval=3600)
        alice = node.bind(f"{ALICE}/phone", available=True)
        bob = node.bind(f"{BOB}/pc", available=True)
        await node.route(chat(f"{BOB}/pc", ALICE, "before"))
        assert len(alice.take()) == 1
        await m.store.add(DOMAIN, "alice", [BOB], 10)  # another region blocks; no poll here
        await asyncio.sleep(0.06)
        # Past cache_ttl: stanzas go on with the copy at hand until the periodic job read it again.
        reads = m.counters["reads"]
        await node.route(chat(f"{BOB}/pc", ALICE, "with the old copy"))
        assert len(alice.take()) == 1 and m.counters["reads"] == reads
        await m.tick()
        await read_done(m)
        assert m.counters["reads"] > reads
        await node.route(chat(f"{BOB}/pc", ALICE, "after the re-read"))
        assert alice.take() == [] and len(bob.take()) == 1

        async def broken(users: dict[tuple[str, str], None]) -> dict[tuple[str, str], list[str]]:
            raise OSError("database down")

        m._reader._call_many = broken
        await asyncio.sleep(0.06)
        for _ in range(2):
            await m.tick()
            await read_done(m)
            await node.route(chat(f"{BOB}/pc", ALICE, "database down"))
        assert alice.take() == [] and len(bob.take()) == 2  # the last list read still holds
        assert m.counters["read_failures"] >= 1
        carol = node.bind("carol@example.com/x", available=True)
        await node.route(chat(f"{ALICE}/phone", "carol@example.com", "no list known"))
        assert len(carol.take()) == 1  # nothing known: let through


async def read_done(m: Blocking) -> None:
    """Wait for the lists being read in the background."""
    while m._loading:
        await asyncio.gather(*m._loading.values(), return_exceptions=True)


async def test_a_change_made_elsewhere_is_seen_by_the_poll(tmp_path: Path):
    """Another region (another member writing the database, no cluster call) blocks: this
    member's cached lists hold until its poll of the change table drops them."""
    async with fake_node(tmp_path) as node:
        m: Blocking = await node.start(Blocking, cache_ttl=3600, poll_interval=3600)
        alice = node.bind(f"{ALICE}/phone", available=True)
        bob = node.bind(f"{BOB}/pc", available=True)
        await node.route(chat(f"{BOB}/pc", ALICE, "before"))
        assert len(alice.take()) == 1
        reads = m.counters["reads"]
        for _ in range(3):  # cached: no read
            await node.route(chat(f"{BOB}/pc", ALICE, "cached"))
        assert len(alice.take()) == 3 and m.counters["reads"] == reads
        await m.store.add(DOMAIN, "alice", [BOB], 10)
        await node.route(chat(f"{BOB}/pc", ALICE, "not polled yet"))
        assert len(alice.take()) == 1
        await m.poll()
        assert m.counters["dropped_by_poll"] == 1
        await node.route(chat(f"{BOB}/pc", ALICE, "blocked now"))
        assert alice.take() == [] and error_condition(only(bob.take())) == "service-unavailable"
        await m.poll()  # the same change again: nothing dropped
        assert m.counters["dropped_by_poll"] == 1
        await m.store.remove(DOMAIN, "alice", None)
        await m.poll()
        await node.route(chat(f"{BOB}/pc", ALICE, "unblocked"))
        assert len(alice.take()) == 1


async def test_concurrent_reads_of_one_list_share_one_query(node: FakeNode):
    m = module(node)
    queries = m._reader.calls
    lists = await asyncio.gather(*(m.blocklist(Jid.parse(ALICE)) for _ in range(5)))
    assert m._reader.calls == queries + 1 and all(bl is lists[0] for bl in lists)
    await m.blocklist(Jid.parse(ALICE))
    assert m._reader.calls == queries + 1  # cached


async def test_a_burst_of_first_stanzas_reads_the_lists_in_a_few_queries(node: FakeNode):
    """200 users who just logged in each send a first message: their lists (and the recipients')
    are read together, not one query each — one by one, a busy node made the last of them wait
    seconds (the SQLite thread gets the GIL every few milliseconds)."""
    m = module(node)
    await m.store.add(DOMAIN, "u7", ["u8@example.com"], 10)
    users = [f"u{i}@example.com" for i in range(200)]
    sessions = [node.bind(f"{u}/r", available=True) for u in users]
    queries = m._reader.calls
    await asyncio.gather(*(node.route(chat(f"{users[i]}/r", users[(i + 1) % 200], "first")) for i in range(200)))
    assert m._reader.calls - queries <= 3
    assert m.counters["reads"] == 200  # each list read once
    got = [s.take() for s in sessions]
    assert got[8] == []  # u7 blocked u8: u7's message to u8 stopped, u7 told why
    assert [error_condition(x) for x in got[7]] == [None, "not-acceptable"]  # u6's message, the error
    assert all(len(g) == 1 and g[0].type == "chat" for i, g in enumerate(got) if i not in (7, 8))


async def test_builtin_registry_has_blocking():
    from cluster_node.modules import BUILTIN

    assert BUILTIN["blocking"] is Blocking
