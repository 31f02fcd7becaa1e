"""XEP-0313 Message Archive Management: the sans-IO protocol (cluster_node/modules/mam/query.py),
the module on a node without a network (tests/helpers/fake_host.py: real core objects, SQLite),
and the archive's SQL on both backends (SQLite file, PostgreSQL server)."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cluster_node.core.hooks import Hook
from cluster_node.modules.disco import Disco
from cluster_node.modules.mam import Mam, query as q
from cluster_node.modules.mam.store import ArchiveStore
from cluster_node.modules.offline import Offline
from cluster_node.storage import RosterItem, open_storage
from cluster_node.xmpp import errors, ns
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.stanza import Stanza
from tests.helpers.fake_host import DOMAIN, FakeNode, FakeSession, error_condition, fake_node, stanza

ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"
MAM = q.MAM
RSM = q.RSM
SID = q.SID
X = q.XDATA
NOW = 1_750_000_000_000_000  # µs: June 2025


# -- sans-IO: what is archived -----------------------------------------------------------------------


@pytest.mark.parametrize(("xml", "archived"), [
    ("<message type='chat'><body>hi</body></message>", True),
    ("<message><body>normal, no type</body></message>", True),
    ("<message type='normal'><body>hi</body></message>", True),
    ("<message type='headline'><body>news</body></message>", False),
    ("<message type='groupchat'><body>room</body></message>", False),
    ("<message type='error'><body>x</body></message>", False),
    ("<message type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>", False),
    ("<message type='chat'><store xmlns='urn:xmpp:hints'/><received xmlns='urn:xmpp:receipts'/></message>", True),
    ("<message type='chat'><body>secret</body><no-store xmlns='urn:xmpp:hints'/></message>", False),
    ("<message type='chat'><body>secret</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>", False),
    ("<message type='chat'><body>x</body><store xmlns='urn:xmpp:hints'/><no-store xmlns='urn:xmpp:hints'/></message>",
     False),
    ("<presence/>", False),
])
def test_what_is_archived(xml: str, archived: bool):
    assert q.archivable(stanza(xml)) is archived


# -- sans-IO: ids ------------------------------------------------------------------------------------------


def test_ids_carry_the_time_and_sort_by_it():
    a, b = q.make_id(NOW, 2047), q.make_id(NOW + 1, 0)
    assert a < b and q.id_time(a) == NOW and q.id_time(b) == NOW + 1
    assert 0 < a < 1 << 63 and q.make_id(1 << 60, 5) < 1 << 63  # the time is capped, never the sign bit
    assert q.parse_id(str(a)) == a


def test_id_generator_never_goes_back():
    gen = q.IdGenerator()
    out = [gen.next(NOW, 2047), gen.next(NOW, 0), gen.next(NOW - 5_000_000, 0), gen.next(NOW + 10, 1)]
    ids = [i for i, _ in out]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert [ts for _, ts in out] == [NOW, NOW + 1, NOW + 2, NOW + 10]


@pytest.mark.parametrize("bad", ["", "abc", "-1", "1.5", "12 3", str(1 << 63), "1" * 20, "٣"])
def test_malformed_ids_are_bad_requests(bad: str):
    with pytest.raises(errors.BadRequest):
        q.parse_id(bad)


def test_stamps():
    assert q.parse_stamp("2010-07-10T23:08:25Z") == 1278803305_000_000
    assert q.parse_stamp("2010-07-10T23:08:25.5+02:00") == 1278796105_500_000
    assert q.format_stamp(1278803305_000_001) == "2010-07-10T23:08:25.000001Z"
    assert q.parse_stamp(q.format_stamp(NOW)) == NOW
    for bad in ("yesterday", "2010-07-10", "2010-07-10T23:08:25", "2010-13-10T23:08:25Z", "2010-07-10 23:08:25Z"):
        with pytest.raises(errors.BadRequest):
            q.parse_stamp(bad)


# -- sans-IO: queries ------------------------------------------------------------------------------------


def form(**fields: str | list[str]) -> str:
    out = [f"<x xmlns='{X}' type='submit'><field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>"]
    for var, value in fields.items():
        values = value if isinstance(value, list) else [value]
        out.append(f"<field var='{var.replace('_', '-')}'>" + "".join(f"<value>{v}</value>" for v in values)
                   + "</field>")
    return "".join(out) + "</x>"


def rsm(max_: int | str | None = None, after: str | None = None, before: str | None = None) -> str:
    parts = []
    if max_ is not None:
        parts.append(f"<max>{max_}</max>")
    if after is not None:
        parts.append(f"<after>{after}</after>")
    if before is not None:
        parts.append(f"<before>{before}</before>" if before else "<before/>")
    return f"<set xmlns='{RSM}'>{''.join(parts)}</set>"


def parse(inner: str = "", queryid: str | None = "f27", max_page: int = 250) -> q.Query:
    attr = f" queryid='{queryid}'" if queryid else ""
    el = stanza(f"<iq type='set' id='1'><query xmlns='{MAM}'{attr}>{inner}</query></iq>").payload()
    assert el is not None
    return q.parse_query(el, default_page=50, max_page=max_page)


def test_a_query_without_filters():
    query = parse()
    assert (query.queryid, query.filters, query.max, query.backward, query.flip) == ("f27", q.Filters(), 50, False,
                                                                                      False)


def test_query_filters():
    t0, t1 = "2025-06-15T12:00:00Z", "2025-06-16T12:00:00Z"
    query = parse(form(**{"with": "Bob@Example.com/Phone", "start": t0, "end": t1}))
    f = query.filters
    assert (f.with_bare, f.with_resource) == (BOB, "Phone")
    assert q.id_time(f.min_id or 0) == q.parse_stamp(t0) and q.id_time(f.max_id or 0) == q.parse_stamp(t1)
    assert f.min_id == q.make_id(q.parse_stamp(t0), 0) and f.max_id == q.make_id(q.parse_stamp(t1), 2047)
    assert parse(form(**{"with": BOB})).filters.with_resource is None
    ids = parse(form(after_id="100", before_id="900", ids=["5", "3", "5"]))
    assert (ids.filters.min_id, ids.filters.max_id, ids.filters.ids) == (101, 899, (3, 5))
    assert ids.referenced == (100, 900, 3, 5)


def test_empty_fields_are_no_filter():
    empty = f"<x xmlns='{X}' type='submit'><field var='with'/><field var='start'><value/></field>" \
            f"<field var='ids'><value> </value></field></x>"
    assert parse(empty).filters == q.Filters()


def test_rsm_paging_and_flip():
    assert parse(rsm(10)).max == 10
    assert parse(rsm(1000000000)).max == 250  # clamped: never everything at once
    assert parse(rsm(0)).max == 0
    forward = parse(rsm(5, after="42"))
    assert (forward.after, forward.before, forward.backward, forward.referenced) == (42, None, False, (42,))
    last = parse(rsm(5, before=""))
    assert (last.before, last.backward, last.referenced) == (None, True, ())
    back = parse(rsm(5, before="77") + f"<flip-page xmlns='{MAM}'/>")
    assert (back.before, back.backward, back.flip) == (77, True, True)
    both = parse(rsm(5, after="1", before="9"))
    assert (both.after, both.before, both.backward) == (1, 9, False)


@pytest.mark.parametrize(("inner", "condition"), [
    (form(**{"with": "not a jid@@"}), "bad-request"),
    (form(start="last tuesday"), "bad-request"),
    (form(end="2025-06-15"), "bad-request"),
    (form(after_id="abc"), "bad-request"),
    (form(ids=["1", "x"]), "bad-request"),
    (form(ids=[str(i) for i in range(1, 300)]), "bad-request"),
    (form(start=["2025-06-15T12:00:00Z", "2025-06-16T12:00:00Z"]), "bad-request"),
    (form(**{"include-groupchat": "true"}), "feature-not-implemented"),
    (form(**{"{urn:example}full-text": "x"}), "feature-not-implemented"),
    (f"<x xmlns='{X}' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:1</value></field></x>",
     "bad-request"),
    (f"<x xmlns='{X}' type='form'/>", "bad-request"),
    (rsm("ten"), "bad-request"),
    (rsm(-1), "bad-request"),
    (rsm(5, after=""), "bad-request"),
    (rsm(5, before="x"), "bad-request"),
    (f"<set xmlns='{RSM}'><max>5</max><index>10</index></set>", "feature-not-implemented"),
])
def test_bad_queries(inner: str, condition: str):
    with pytest.raises(errors.StanzaError) as e:
        parse(inner)
    assert e.value.condition == condition


def test_the_query_form_lists_our_fields():
    x = q.query_form().find(f"{{{X}}}x")
    assert x is not None and x.get("type") == "form"
    fields = {f.get("var"): f.get("type") for f in x.findall(f"{{{X}}}field")}
    assert fields == {"FORM_TYPE": "hidden", "with": "jid-single", "start": "text-single", "end": "text-single",
                      "before-id": "text-single", "after-id": "text-single", "ids": "list-multi"}
    assert x.find(f"{{{X}}}field[@var='ids']/{{{q.XDATA_VALIDATE}}}validate/{{{q.XDATA_VALIDATE}}}open") is not None


def test_fin_and_results():
    page = q.Page([(11, NOW, b""), (12, NOW + 1, b"")], complete=False, count=30)
    fin = q.fin_element(page)
    assert fin.get("complete") == "false"
    assert [(c.tag.split("}")[1], c.text) for c in fin.find(f"{{{RSM}}}set") or []] == [
        ("first", "11"), ("last", "12"), ("count", "30")]
    empty = q.fin_element(q.Page([], True, 0))
    assert empty.get("complete") == "true" and [c.tag.split("}")[1] for c in empty[0]] == ["count"]
    original = stanza("<message from='bob@example.com/pc' to='alice@example.com' type='chat'><body>hi</body></message>")
    msg = q.result_message(ALICE, f"{ALICE}/phone", "f27", 11, NOW, original.element, "r1")
    data = msg.to_bytes().decode()
    assert data.startswith("<message from='alice@example.com' to='alice@example.com/phone' id='r1'>"
                           f"<result xmlns='{MAM}' id='11' queryid='f27'><forwarded xmlns='urn:xmpp:forward:0'>"
                           f"<delay xmlns='urn:xmpp:delay' stamp='{q.format_stamp(NOW)}'/>"
                           "<message xmlns='jabber:client' from='bob@example.com/pc'"), data


# -- sans-IO: stanza ids and preferences ------------------------------------------------------------------


def test_forged_stanza_ids_go_and_ours_is_added():
    alice = Jid.parse(ALICE)
    s = stanza(f"<message from='{BOB}/pc' to='{ALICE}' type='chat'><body>hi</body>"
               f"<stanza-id xmlns='{SID}' id='forged' by='Alice@example.com'/>"
               f"<stanza-id xmlns='{SID}' id='room-1' by='room@muc.example.com'/>"
               f"<origin-id xmlns='{SID}' id='origin-1'/></message>")
    clean = q.without_forged_ids(s, alice)
    ids = [(c.tag.split("}")[1], c.get("id")) for c in clean.element if c.tag.startswith(f"{{{SID}}}")]
    assert ids == [("stanza-id", "room-1"), ("origin-id", "origin-1")]
    assert q.claimed_id(s, alice) is None  # not one of our ids
    claim = stanza(f"<message type='chat'><stanza-id xmlns='{SID}' id='42' by='{ALICE}'/></message>")
    assert q.claimed_id(claim, alice) == 42 and q.claimed_id(claim, Jid.parse(BOB)) is None
    twice = stanza(f"<message type='chat'><stanza-id xmlns='{SID}' id='42' by='{ALICE}'/>"
                   f"<stanza-id xmlns='{SID}' id='43' by='{ALICE}'/></message>")
    assert q.claimed_id(twice, alice) is None
    plain = stanza(f"<message from='{BOB}/pc' type='chat'><body>hi</body></message>")
    assert q.without_forged_ids(plain, alice) is plain
    tagged = q.with_stanza_id(clean, alice, 1234)
    sid = tagged.element.findall(f"{{{SID}}}stanza-id")[-1]
    assert (sid.get("id"), sid.get("by")) == ("1234", ALICE)
    assert b"stanza-id" in tagged.to_bytes() and tagged.to == ALICE


def test_prefs_decide_per_correspondent():
    prefs = q.Prefs("always", always=(BOB,), never=(CAROL, f"{BOB}/work"))
    bob, carol = Jid.parse(f"{BOB}/pc"), Jid.parse(f"{CAROL}/x")
    assert q.decide(prefs, bob) is True
    assert q.decide(prefs, Jid.parse(f"{BOB}/work")) is False  # a full JID listed: that resource only
    assert q.decide(prefs, carol) is False and q.decide(prefs, carol.bare) is False
    assert q.decide(q.Prefs("never", always=(BOB,)), bob) is True
    assert q.decide(q.Prefs("never"), bob) is False
    assert q.decide(q.Prefs("roster"), bob) is None
    assert q.decide(q.Prefs("roster", never=(BOB,)), bob) is False


def test_prefs_parse_and_render():
    el = stanza(f"<iq type='set' id='p'><prefs xmlns='{MAM}' default='roster'><always><jid>Bob@Example.com</jid>"
                f"<jid>bob@example.com</jid></always><never><jid>{CAROL}</jid></never></prefs></iq>").payload()
    assert el is not None
    prefs = q.parse_prefs(el)
    assert prefs == q.Prefs("roster", (BOB,), (CAROL,))
    back = q.prefs_element(q.Prefs())
    assert back.get("default") == "always" and [c.tag for c in back] == [f"{{{MAM}}}always", f"{{{MAM}}}never"]
    for bad in (f"<prefs xmlns='{MAM}'/>", f"<prefs xmlns='{MAM}' default='sometimes'/>",
                f"<prefs xmlns='{MAM}' default='always'><never><jid>a@@b</jid></never></prefs>"):
        with pytest.raises(errors.BadRequest):
            q.parse_prefs(stanza(f"<iq type='set' id='p'>{bad}</iq>").payload())  # type: ignore[arg-type]


# -- the module on a fake node ----------------------------------------------------------------------------


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as n:
        for user in (ALICE, BOB, CAROL):
            await n.create_account(user)
        yield n


async def start(node: FakeNode, **settings: object) -> Mam:
    module: Mam = await node.start(Mam, **settings)
    return module


async def send(node: FakeNode, session: FakeSession, to: str, body: str | None = "hi", *, extra: str = "",
               mtype: str = "chat") -> None:
    """A message from the client of ``session``, as its stream hands it over (user_send_packet, then
    routing)."""
    b = f"<body>{body}</body>" if body is not None else ""
    s = stanza(f"<message to='{to}' type='{mtype}' id='m{time.monotonic_ns()}'>{b}{extra}</message>")
    await node.sessions.outbound(session, s.with_attrs(from_=str(session.record.jid)))  # type: ignore[arg-type]
    await node.settle()


async def ask(node: FakeNode, session: FakeSession, inner: str = "", *, name: str = "query", type_: str = "set",
              to: str | None = None, queryid: str | None = "f27", attrs: str = "") -> tuple[list[Stanza], Stanza]:
    """An archive request; (the result messages, the iq reply)."""
    to_attr = f" to='{to}'" if to else ""
    qid = f" queryid='{queryid}'" if queryid and name == "query" else ""
    session.take()
    await node.route(stanza(f"<iq from='{session.record.jid}'{to_attr} type='{type_}' id='a1'>"
                            f"<{name} xmlns='{MAM}'{qid}{attrs}>{inner}</{name}></iq>"))
    got = session.take()
    assert got and got[-1].name == "iq" and got[-1].id == "a1", got
    return got[:-1], got[-1]


def result_ids(results: list[Stanza]) -> list[int]:
    return [int(r.element.find(f"{{{MAM}}}result").get("id")) for r in results]  # type: ignore[union-attr]


def result_bodies(results: list[Stanza]) -> list[str]:
    out = []
    for r in results:
        body = r.element.find(f"{{{MAM}}}result/{{urn:xmpp:forward:0}}forwarded/{{{ns.CLIENT}}}message/"
                              f"{{{ns.CLIENT}}}body")
        out.append(body.text if body is not None else "")
    return out


def fin_of(reply: Stanza) -> tuple[str | None, str | None, str | None, str | None]:
    """(complete, first, last, count) of a <fin/>."""
    fin = reply.element.find(f"{{{MAM}}}fin")
    assert fin is not None, reply
    get = lambda name: fin.findtext(f"{{{RSM}}}set/{{{RSM}}}{name}")  # noqa: E731
    return fin.get("complete"), get("first"), get("last"), get("count")


async def test_sent_and_received_are_archived_and_the_recipient_learns_the_id(node: FakeNode):
    await start(node)
    alice, bob = node.bind(f"{ALICE}/phone"), node.bind(f"{BOB}/pc", available=True)
    await send(node, alice, f"{BOB}/pc", "hello bob")
    got = bob.take()
    assert len(got) == 1 and got[0].element.findtext(f"{{{ns.CLIENT}}}body") == "hello bob"
    sid = got[0].element.find(f"{{{SID}}}stanza-id")
    assert sid is not None and sid.get("by") == BOB
    results, reply = await ask(node, bob)
    assert result_ids(results) == [int(sid.get("id") or 0)] and result_bodies(results) == ["hello bob"]
    assert results[0].from_ == BOB and results[0].to == f"{BOB}/pc"
    forwarded = results[0].element.find(f"{{{MAM}}}result/{{urn:xmpp:forward:0}}forwarded")
    assert forwarded is not None and forwarded.find(f"{{{ns.DELAY}}}delay").get("stamp")  # type: ignore[union-attr]
    inner = forwarded.find(f"{{{ns.CLIENT}}}message")
    assert inner is not None and inner.get("from") == f"{ALICE}/phone" and inner.get("to") == f"{BOB}/pc"
    assert results[0].element.find(f"{{{MAM}}}result").get("queryid") == "f27"  # type: ignore[union-attr]
    assert reply.type == "result" and fin_of(reply) == ("true", sid.get("id"), sid.get("id"), "1")
    sent, _ = await ask(node, alice)
    assert result_bodies(sent) == ["hello bob"]
    assert result_ids(sent) != result_ids(results)  # one copy in each archive, each with its own id


async def test_what_is_not_archived(node: FakeNode):
    await start(node)
    alice, bob = node.bind(f"{ALICE}/phone"), node.bind(f"{BOB}/pc", available=True)
    await send(node, alice, BOB, None, extra="<composing xmlns='http://jabber.org/protocol/chatstates'/>")
    await send(node, alice, BOB, "secret", extra="<no-store xmlns='urn:xmpp:hints'/>")
    await send(node, alice, BOB, "ephemeral", extra="<no-permanent-store xmlns='urn:xmpp:hints'/>")
    await send(node, alice, BOB, "news", mtype="headline")
    await send(node, alice, f"{BOB}/pc", "room", mtype="groupchat")
    await send(node, alice, BOB, "oops", mtype="error")
    await send(node, alice, DOMAIN, "to the server")
    await send(node, alice, BOB, None,
               extra="<received xmlns='urn:xmpp:receipts' id='x'/><store xmlns='urn:xmpp:hints'/>")
    for session in (alice, bob):
        results, reply = await ask(node, session)
        assert len(results) == 1, result_bodies(results)  # only the receipt with <store/>
        assert fin_of(reply)[3] == "1"
    assert all(m.element.find(f"{{{SID}}}stanza-id") is None for m in bob.take() if m.name == "message")


async def test_messages_to_other_domains_and_to_oneself(node: FakeNode):
    await start(node)
    alice, phone2 = node.bind(f"{ALICE}/phone", available=True), node.bind(f"{ALICE}/tablet", available=True)
    node.hooks.add(Hook.ROUTE_REMOTE, lambda s, to: True)  # S2S took it
    await send(node, alice, "romeo@montague.lit/orchard", "over s2s")
    await send(node, alice, f"{ALICE}/tablet", "note to self")
    results, _ = await ask(node, alice)
    assert result_bodies(results) == ["over s2s", "note to self"]  # to oneself: once, as received
    inner = results[0].element.find(f".//{{{ns.CLIENT}}}message")
    assert inner is not None and inner.get("to") == "romeo@montague.lit/orchard"
    only_self, _ = await ask(node, alice, form(**{"with": ALICE}))
    assert result_bodies(only_self) == ["note to self"]
    assert phone2.of("message")[0].element.find(f"{{{SID}}}stanza-id") is not None


@pytest.mark.parametrize("content", ["jabber:component:accept", "jabber:server"])
async def test_a_message_from_a_component_or_a_server_reaches_the_client_in_its_namespace(node: FakeNode,
                                                                                           content: str):
    await start(node)
    bob = node.bind(f"{BOB}/pc", available=True)
    el = ET.Element(f"{{{content}}}message", {"from": "bot@echo.example.com", "to": BOB, "type": "chat"})
    ET.SubElement(el, f"{{{content}}}body").text = "from a component"
    ET.SubElement(el, "{urn:example}extra").text = "kept"
    await node.route(Stanza(el))
    got = bob.of("message")
    assert len(got) == 1 and got[0].namespace == ns.CLIENT
    assert got[0].element.findtext(f"{{{ns.CLIENT}}}body") == "from a component"
    assert got[0].element.findtext("{urn:example}extra") == "kept"
    assert got[0].element.find(f"{{{SID}}}stanza-id") is not None
    assert b"jabber:component" not in got[0].to_bytes() and b"jabber:server" not in got[0].to_bytes()
    results, _ = await ask(node, bob)
    assert result_bodies(results) == ["from a component"]


async def test_a_forged_stanza_id_is_stripped(node: FakeNode):
    await start(node)
    alice, bob = node.bind(f"{ALICE}/phone"), node.bind(f"{BOB}/pc", available=True)
    await send(node, alice, BOB, "trust me", extra=f"<stanza-id xmlns='{SID}' id='forged' by='{BOB}'/>"
                                                   f"<stanza-id xmlns='{SID}' id='other' by='muc.example.com'/>")
    got = bob.of("message")[0]
    ids = {(s.get("by"), s.get("id")) for s in got.element.findall(f"{{{SID}}}stanza-id")}
    assert ("muc.example.com", "other") in ids and (BOB, "forged") not in ids
    assert len([by for by, _ in ids if by == BOB]) == 1
    # Even when the message is not archived (prefs say never), the forged id does not reach bob.
    await ask(node, bob, f"<always/><never><jid>{ALICE}</jid></never>", name="prefs", queryid=None,
              attrs=" default='always'")
    bob.take()
    await send(node, alice, BOB, "again", extra=f"<stanza-id xmlns='{SID}' id='forged' by='{BOB}'/>")
    assert bob.of("message")[0].element.find(f"{{{SID}}}stanza-id") is None


async def test_a_message_routed_again_is_archived_once(node: FakeNode):
    await start(node)
    alice, carol = node.bind(f"{ALICE}/phone"), node.bind(f"{CAROL}/pc")
    pc, tablet = node.bind(f"{BOB}/pc", available=True, priority=5), node.bind(f"{BOB}/tablet", available=True)
    await send(node, alice, BOB, "once")
    first = pc.take()
    assert len(first) == 1 and tablet.take() == []
    sid = first[0].element.find(f"{{{SID}}}stanza-id").get("id")  # type: ignore[union-attr]
    # pc's stream was closing: the router takes the message again, to the other resource.
    node.sessions.undeliverable(pc, first[0])  # type: ignore[arg-type]
    await node.settle()
    again = tablet.take()
    assert [m.element.find(f"{{{SID}}}stanza-id").get("id") for m in again] == [sid]  # type: ignore[union-attr]
    results, _ = await ask(node, tablet)
    assert result_bodies(results) == ["once"] and result_ids(results) == [int(sid or 0)]
    # Someone else claiming that id is a forger: stripped, archived under an id of its own.
    await send(node, carol, BOB, "me too", extra=f"<stanza-id xmlns='{SID}' id='{sid}' by='{BOB}'/>")
    got = tablet.of("message")[-1].element.findall(f"{{{SID}}}stanza-id")
    assert len(got) == 1 and got[0].get("id") != sid
    assert result_bodies((await ask(node, tablet))[0]) == ["once", "me too"]


async def test_offline_messages_are_archived_with_their_id(node: FakeNode):
    await start(node)
    await node.start(Offline)
    alice = node.bind(f"{ALICE}/phone")
    await send(node, alice, BOB, "while you were out")
    stored = await node.storage.fetch_offline(DOMAIN, "bob")
    assert len(stored) == 1 and b"urn:xmpp:sid:0" in stored[0][1]
    bob = node.bind(f"{BOB}/pc")
    results, _ = await ask(node, bob)
    assert result_bodies(results) == ["while you were out"]
    assert str(result_ids(results)[0]).encode() in stored[0][1]


async def test_someone_elses_archive_is_forbidden(node: FakeNode):
    await start(node)
    alice, bob = node.bind(f"{ALICE}/phone"), node.bind(f"{BOB}/pc", available=True)
    await send(node, alice, BOB, "private")
    for name in ("query", "prefs", "metadata"):
        results, reply = await ask(node, alice, to=BOB, name=name, type_="get" if name != "query" else "set")
        assert results == [] and error_condition(reply) == "forbidden"
    results, reply = await ask(node, bob, to=BOB)  # to one's own bare JID is fine
    assert len(results) == 1 and reply.type == "result"


async def fill(node: FakeNode, alice: FakeSession, n: int, to: str = BOB, start_at: int = 0) -> None:
    for i in range(start_at, start_at + n):
        await send(node, alice, to, f"m{i}")


async def test_paging_forward_and_backward_with_rsm(node: FakeNode):
    await start(node)
    alice = node.bind(f"{ALICE}/phone")
    await fill(node, alice, 12)
    everything, reply = await ask(node, alice)
    ids = result_ids(everything)
    assert ids == sorted(ids) and result_bodies(everything) == [f"m{i}" for i in range(12)]
    pages = []
    after = None
    while True:
        results, reply = await ask(node, alice, rsm(5, after=after))
        complete, first, last, count = fin_of(reply)
        pages.append(result_ids(results))
        assert count == "12"
        if complete == "true":
            break
        assert last == str(pages[-1][-1]) and first == str(pages[-1][0])
        after = last
    assert [len(p) for p in pages] == [5, 5, 2] and sum(pages, []) == ids
    # Backward from the end: chronological within each page.
    results, reply = await ask(node, alice, rsm(5, before=""))
    assert result_ids(results) == ids[7:] and fin_of(reply)[:3] == ("false", str(ids[7]), str(ids[11]))
    results, reply = await ask(node, alice, rsm(5, before=str(ids[7])))
    assert result_ids(results) == ids[2:7] and fin_of(reply)[0] == "false"
    results, reply = await ask(node, alice, rsm(5, before=str(ids[2])))
    assert result_ids(results) == ids[:2] and fin_of(reply)[0] == "true"
    # max 0: only the count.
    results, reply = await ask(node, alice, rsm(0))
    assert results == [] and fin_of(reply) == ("false", None, None, "12")


async def test_flip_page_reverses_the_order_not_the_page(node: FakeNode):
    await start(node)
    alice = node.bind(f"{ALICE}/phone")
    await fill(node, alice, 6)
    ids = result_ids((await ask(node, alice))[0])
    results, reply = await ask(node, alice, rsm(3, before="") + f"<flip-page xmlns='{MAM}'/>")
    assert result_ids(results) == list(reversed(ids[3:]))
    assert fin_of(reply)[:3] == ("false", str(ids[3]), str(ids[5]))


async def test_with_start_end_and_id_filters(node: FakeNode):
    await start(node)
    alice = node.bind(f"{ALICE}/phone")
    bob = node.bind(f"{BOB}/pc", available=True)
    node.bind(f"{BOB}/work", available=True)
    await fill(node, alice, 2, to=f"{BOB}/pc")
    await fill(node, alice, 2, to=CAROL, start_at=2)
    await fill(node, alice, 1, to=f"{BOB}/work", start_at=4)
    await send(node, bob, f"{ALICE}/phone", "from bob")
    everything, _ = await ask(node, alice)
    ids = result_ids(everything)
    assert len(ids) == 6
    assert result_bodies((await ask(node, alice, form(**{"with": BOB})))[0]) == ["m0", "m1", "m4", "from bob"]
    assert result_bodies((await ask(node, alice, form(**{"with": f"{BOB}/work"})))[0]) == ["m4"]
    assert result_bodies((await ask(node, alice, form(**{"with": CAROL})))[0]) == ["m2", "m3"]
    # start/end: inclusive, by archiving time.
    t = [q.id_time(i) for i in ids]
    results, _ = await ask(node, alice, form(start=q.format_stamp(t[1]), end=q.format_stamp(t[3])))
    assert result_ids(results) == ids[1:4]
    results, _ = await ask(node, alice, form(start=q.format_stamp(t[5] + 1)))
    assert results == []
    # after-id / before-id (exclusive), ids (#extended).
    results, _ = await ask(node, alice, form(after_id=str(ids[0]), before_id=str(ids[4])))
    assert result_ids(results) == ids[1:4]
    results, _ = await ask(node, alice, form(ids=[str(ids[5]), str(ids[2])]))
    assert result_ids(results) == [ids[2], ids[5]]
    results, reply = await ask(node, alice, form(**{"with": BOB}) + rsm(2))
    assert result_bodies(results) == ["m0", "m1"] and fin_of(reply)[0] == "false" and fin_of(reply)[3] == "4"


async def test_unknown_and_malformed_ids_and_dates(node: FakeNode):
    await start(node)
    alice, bob = node.bind(f"{ALICE}/phone"), node.bind(f"{BOB}/pc", available=True)
    await fill(node, alice, 2)
    ids = result_ids((await ask(node, alice))[0])
    bobs = result_ids((await ask(node, bob))[0])
    missing = str(ids[0] + 1) if ids[0] + 1 not in ids else str(ids[0] - 1)
    for inner in (rsm(5, after=missing), rsm(5, before=missing), form(after_id=missing),
                  form(before_id=missing), form(ids=[str(ids[0]), missing]),
                  rsm(5, after=str(bobs[0]))):  # an id of someone else's archive is not in ours
        results, reply = await ask(node, alice, inner)
        assert results == [] and error_condition(reply) == "item-not-found", inner
    for inner in (rsm(5, after="not-an-id"), form(start="never"), form(**{"with": "@"}), rsm("many"),
                  form(**{"x-unknown": "1"}), f"<set xmlns='{RSM}'><index>3</index></set>"):
        results, reply = await ask(node, alice, inner)
        assert results == [] and error_condition(reply) in ("bad-request", "feature-not-implemented"), inner
    results, reply = await ask(node, alice)  # the node is still up
    assert result_ids(results) == ids and reply.type == "result"


async def test_a_large_max_is_clamped(node: FakeNode):
    await start(node, max_page=5, default_page=3)
    alice = node.bind(f"{ALICE}/phone")
    await fill(node, alice, 7)
    results, reply = await ask(node, alice, rsm(1000000000))
    assert len(results) == 5 and fin_of(reply)[0] == "false" and fin_of(reply)[3] == "7"
    results, _ = await ask(node, alice)
    assert len(results) == 3  # default page


async def test_counting_is_bounded(node: FakeNode):
    mam = await start(node, count_limit=5)
    alice = node.bind(f"{ALICE}/phone")
    await fill(node, alice, 7)
    _, reply = await ask(node, alice, rsm(2))
    assert fin_of(reply)[0] == "false" and fin_of(reply)[3] is None  # more than count_limit: no count
    _, reply = await ask(node, alice, form(**{"with": BOB}) + rsm(0))
    assert fin_of(reply) == ("false", None, None, None)
    ids = result_ids((await ask(node, alice, rsm(10)))[0])
    _, reply = await ask(node, alice, rsm(2, after=str(ids[2])))
    assert fin_of(reply)[3] is None
    _, reply = await ask(node, alice, form(after_id=str(ids[2])) + rsm(2))
    assert fin_of(reply)[3] == "4"  # 4 match: counted
    _, reply = await ask(node, alice, rsm(10))
    assert fin_of(reply) == ("true", str(ids[0]), str(ids[-1]), "7")  # the whole result in one page
    mam.cfg.count_limit = 0
    _, reply = await ask(node, alice, form(after_id=str(ids[2])) + rsm(2))
    assert fin_of(reply)[3] is None


async def test_prefs_are_stored_and_applied(node: FakeNode):
    await start(node)
    alice, bob = node.bind(f"{ALICE}/phone"), node.bind(f"{BOB}/pc", available=True)
    carol = node.bind(f"{CAROL}/pc", available=True)
    _, reply = await ask(node, alice, name="prefs", type_="get", queryid=None)
    prefs = reply.element.find(f"{{{MAM}}}prefs")
    assert prefs is not None and prefs.get("default") == "always" and len(prefs) == 2
    _, reply = await ask(node, alice, f"<always/><never><jid>{CAROL}</jid></never>", name="prefs", queryid=None,
                         attrs=" default='always'")
    assert reply.type == "result"
    await send(node, alice, BOB, "to bob")
    await send(node, alice, CAROL, "to carol")
    await send(node, carol, ALICE, "from carol")
    assert result_bodies((await ask(node, alice))[0]) == ["to bob"]
    assert result_bodies((await ask(node, carol))[0]) == ["to carol", "from carol"]  # carol's own prefs
    # default 'roster': only contacts in the roster, unless listed 'always'.
    _, reply = await ask(node, alice, f"<always><jid>{CAROL}</jid></always>", name="prefs", queryid=None)
    assert error_condition(reply) == "bad-request"  # no default
    _, reply = await ask(node, alice, f"<always><jid>{CAROL}</jid></always>", name="prefs", queryid=None,
                         attrs=" default='roster'")
    assert reply.element.find(f"{{{MAM}}}prefs").get("default") == "roster"  # type: ignore[union-attr]
    await node.storage.put_roster_item(DOMAIN, "alice", RosterItem(BOB, subscription="both"))
    await send(node, alice, BOB, "bob is a contact")
    await send(node, alice, CAROL, "carol is listed")
    await send(node, alice, "dave@example.com", "dave is neither")
    await send(node, bob, ALICE, "bob writes")
    assert result_bodies((await ask(node, alice))[0]) == ["to bob", "bob is a contact", "carol is listed",
                                                          "bob writes"]
    _, reply = await ask(node, alice, name="prefs", type_="get", queryid=None)
    prefs = reply.element.find(f"{{{MAM}}}prefs")
    assert prefs is not None and prefs.get("default") == "roster"
    assert [j.text for j in prefs.iter(f"{{{MAM}}}jid")] == [CAROL]


async def test_status_and_metrics(node: FakeNode):
    mam = await start(node)
    alice = node.bind(f"{ALICE}/phone")
    await fill(node, alice, 2)
    await ask(node, alice)
    status = node.services.queries[("mam", "status")]()
    assert (status["archived"], status["queries"], status["failed"]) == (4, 1, 0)  # 2 sent + 2 received
    samples = {s.labels["event"]: s.value for m in node.services.collectors[-1].collect() for s in m.samples
               if s.name.endswith("_total")}
    assert samples["archived"] == 4 and samples["queries"] == 1
    assert mam.status()["maxPage"] == 250


async def test_an_id_taken_by_another_writer_is_retried(node: FakeNode):
    """Two members may draw the same id for one archive (same µs, same random bits): the primary key
    refuses the second, which draws again."""
    mam = await start(node)
    taken = q.make_id(NOW, 7)
    assert await ArchiveStore(node.storage).insert(DOMAIN, "alice", taken, NOW, CAROL, "", "in", b"<message/>")

    class Replay(q.IdGenerator):
        def __init__(self) -> None:
            super().__init__()
            self.queue = [(taken, NOW)]

        def next(self, now_us: int, rand: int) -> tuple[int, int]:
            return self.queue.pop(0) if self.queue else super().next(now_us, rand)

    mam.ids = Replay()
    alice = node.bind(f"{ALICE}/phone")
    await send(node, alice, BOB, "drawn twice")
    ids = result_ids((await ask(node, alice))[0])
    assert len(ids) == 2 and ids[0] == taken and ids[1] != taken
    assert mam.status()["archived"] == 2  # alice's (retried) and bob's


async def test_default_mode_setting(node: FakeNode):
    await start(node, default_mode="never")
    alice = node.bind(f"{ALICE}/phone")
    await send(node, alice, BOB, "not kept")
    assert (await ask(node, alice))[0] == []


async def test_form_metadata_and_disco(node: FakeNode):
    await start(node)
    await node.start(Disco)
    alice = node.bind(f"{ALICE}/phone")
    _, reply = await ask(node, alice, type_="get")
    assert reply.element.find(f"{{{MAM}}}query/{{{X}}}x/{{{X}}}field[@var='with']") is not None
    _, reply = await ask(node, alice, name="metadata", type_="get", queryid=None)
    meta = reply.element.find(f"{{{MAM}}}metadata")
    assert meta is not None and len(meta) == 0  # empty archive
    await fill(node, alice, 3)
    ids = result_ids((await ask(node, alice))[0])
    _, reply = await ask(node, alice, name="metadata", type_="get", queryid=None)
    start_el, end_el = reply.element.find(f".//{{{MAM}}}start"), reply.element.find(f".//{{{MAM}}}end")
    assert start_el is not None and end_el is not None
    assert (start_el.get("id"), end_el.get("id")) == (str(ids[0]), str(ids[-1]))
    assert q.parse_stamp(end_el.get("timestamp")) == q.id_time(ids[-1])
    _, reply = await ask(node, alice, name="metadata", type_="set", queryid=None)
    assert error_condition(reply) == "bad-request"
    alice.take()
    await node.route(stanza(f"<iq from='{ALICE}/phone' to='{DOMAIN}' type='get' id='d1'>"
                            f"<query xmlns='{ns.DISCO_INFO}'/></iq>"))
    features = {f.get("var") for f in alice.take()[0].element.iter(f"{{{ns.DISCO_INFO}}}feature")}
    assert {MAM, q.MAM_EXTENDED} <= features


async def test_results_reach_a_session_on_another_member(node: FakeNode):
    """The querying resource is on another member: results go over the cluster (deliver_to_member),
    before the iq result."""
    await start(node)
    alice = node.bind(f"{ALICE}/phone")
    await fill(node, alice, 2)
    remote = node.bind_remote(f"{ALICE}/laptop", node="node2")
    sent: list[Stanza] = []
    node.hooks.add(Hook.DELIVER_TO_MEMBER, lambda record, s: sent.append(s) or True)
    await node.route(stanza(f"<iq from='{remote.jid}' type='set' id='r1'><query xmlns='{MAM}' queryid='x'/></iq>"))
    assert [s.name for s in sent] == ["message", "message", "iq"]
    assert all(s.to == str(remote.jid) for s in sent) and result_bodies(sent[:2]) == ["m0", "m1"]


async def test_retention_deletes_only_older_messages(tmp_path: Path):
    async with fake_node(tmp_path) as node:
        await node.create_account(ALICE)
        mam = await start(node, retention_days=30)
        alice = node.bind(f"{ALICE}/phone")
        store = ArchiveStore(node.storage)
        now = time.time_ns() // 1000
        old = now - 40 * 86_400_000_000  # 40 days ago
        for i in range(3):
            assert await store.insert(DOMAIN, "alice", q.make_id(old + i, 0), old + i, BOB, "", "out",
                                      f"<message to='{BOB}' type='chat'><body>old{i}</body></message>".encode())
        await fill(node, alice, 2)
        assert len((await ask(node, alice))[0]) == 5
        assert await mam.clean_up(now) == 3
        assert result_bodies((await ask(node, alice))[0]) == ["m0", "m1"]
        assert await mam.clean_up(now) == 0
        await node.settle()  # the clean-up task is the module's own: nothing of the router's left


async def test_the_archive_goes_with_the_account(node: FakeNode):
    await start(node)
    alice = node.bind(f"{ALICE}/phone")
    await fill(node, alice, 2)
    await ask(node, alice, "<always/><never/>", name="prefs", queryid=None, attrs=" default='never'")
    assert await node.storage.remove_account(DOMAIN, "alice")
    store = ArchiveStore(node.storage)
    assert await store.count(DOMAIN, "alice", q.Filters()) == 0
    assert await store.get_prefs(DOMAIN, "alice") is None
    assert await store.count(DOMAIN, "bob", q.Filters()) == 2  # bob's copies are bob's


async def test_a_query_right_after_a_send_finds_it_and_stop_writes_what_is_queued(tmp_path: Path):
    """The sender's row is written with the next group commit, not before the message goes on:
    the sender's query waits for it, and so does the module's stop."""
    async with fake_node(tmp_path) as node:
        for user in (ALICE, BOB):
            await node.create_account(user)
        mam = await start(node)
        alice = node.bind(f"{ALICE}/phone")
        node.hooks.add(Hook.ROUTE_REMOTE, lambda s, to: True)  # S2S took it: nothing else is archived
        message = stanza("<message to='romeo@montague.lit' type='chat' id='r1'><body>just sent</body></message>")
        await node.sessions.outbound(alice, message.with_attrs(from_=str(alice.record.jid)))  # no settle
        assert mam.store.pending == 1
        results, _ = await ask(node, alice)
        assert result_bodies(results) == ["just sent"]
        await node.sessions.outbound(alice, message.with_attrs(from_=str(alice.record.jid), id="r2"))
        assert mam.store.pending == 1
        await mam.stop()
        assert mam.store.pending == 0
        assert await mam.store.count(DOMAIN, "alice", q.Filters()) == 2


async def test_a_query_right_after_a_send_finds_it_when_the_user_has_preferences(tmp_path: Path):
    """A user with preferences: the queued row is refused, the write reads them and goes in
    afterwards; a query made at once still waits for it."""
    async with fake_node(tmp_path) as node:
        await node.create_account(ALICE)
        mam = await start(node)
        alice = node.bind(f"{ALICE}/phone")
        node.hooks.add(Hook.ROUTE_REMOTE, lambda s, to: True)
        await ask(node, alice, "<always/><never/>", name="prefs", queryid=None, attrs=" default='always'")
        message = stanza("<message to='romeo@montague.lit' type='chat' id='p1'><body>with prefs</body></message>")
        await node.sessions.outbound(alice, message.with_attrs(from_=str(alice.record.jid)))  # no settle
        results, _ = await ask(node, alice)
        assert result_bodies(results) == ["with prefs"]
        assert not mam._late


@pytest.mark.parametrize("poll", [2.0, 0.0])
async def test_a_received_message_goes_on_before_its_row_is_written(tmp_path: Path, poll: float):
    """Its row goes with the next group commit (the stanza-id names it once written; the
    recipient's query waits for it); with ``prefs_poll_interval = 0`` it waits for its row."""
    async with fake_node(tmp_path) as node:
        for user in (ALICE, BOB):
            await node.create_account(user)
        mam = await start(node, prefs_poll_interval=poll)
        alice, bob = node.bind(f"{ALICE}/phone"), node.bind(f"{BOB}/pc", available=True)
        message = stanza(f"<message to='{BOB}/pc' type='chat' id='q1'><body>queued</body></message>")
        await node.sessions.outbound(alice, message.with_attrs(from_=str(alice.record.jid)))  # no settle
        got = bob.take()
        assert len(got) == 1
        written = await mam.store.count(DOMAIN, "bob", q.Filters())
        assert (mam.store.pending, written) == ((2, 0) if poll else (0, 1))
        sid = int(got[0].element.find(f"{{{SID}}}stanza-id").get("id"))  # type: ignore[union-attr]
        results, _ = await ask(node, bob)
        assert result_ids(results) == [sid] and result_bodies(results) == ["queued"]


async def test_preferences_set_elsewhere_are_learned_from_a_refused_row_and_from_the_poll(node: FakeNode):
    """Preferences another region set (straight into the shared database) before this member
    polled them: the database refuses the queued row, the preferences are read and applied —
    the message was delivered with a stanza-id that now names no row, once, and counted — and
    from then on that user's received messages wait for their rows."""
    mam = await start(node, prefs_poll_interval=2.0)
    alice, carol = node.bind(f"{ALICE}/phone"), node.bind(f"{CAROL}/pc")
    bob = node.bind(f"{BOB}/pc", available=True)
    await mam.store.set_prefs(DOMAIN, "bob", q.Prefs("always", (), (ALICE,)), time.time_ns() // 1000)
    await send(node, alice, f"{BOB}/pc", "before bob's preferences were known")
    await mam._written()
    first = bob.take()
    assert first[0].element.find(f"{{{SID}}}stanza-id") is not None
    assert mam.counters["unarchived_with_id"] == 1 and ("bob", DOMAIN) in mam.with_prefs
    await send(node, alice, f"{BOB}/pc", "after")
    assert bob.take()[0].element.find(f"{{{SID}}}stanza-id") is None
    await send(node, carol, f"{BOB}/pc", "from carol")
    sid = bob.take()[0].element.find(f"{{{SID}}}stanza-id")
    results, _ = await ask(node, bob)
    assert result_bodies(results) == ["from carol"] and result_ids(results) == [int(sid.get("id"))]  # type: ignore[union-attr]
    # Preferences that keep the message: archived after all, under the id it was delivered with.
    await mam.store.set_prefs(DOMAIN, "carol", q.Prefs("always", (), (BOB,)), time.time_ns() // 1000)
    await send(node, alice, f"{CAROL}/pc", "to carol")
    await mam._written()
    sid = carol.take()[0].element.find(f"{{{SID}}}stanza-id")
    results, _ = await ask(node, carol)
    assert result_bodies(results) == ["from carol", "to carol"]  # what she sent, what she received
    assert result_ids(results)[1] == int(sid.get("id")) and mam.counters["unarchived_with_id"] == 1  # type: ignore[union-attr]
    # The poll: what was set anywhere since the last one.
    await mam.store.set_prefs(DOMAIN, "alice", q.Prefs("never"), time.time_ns() // 1000)
    assert ("alice", DOMAIN) not in mam.with_prefs
    await mam.poll_prefs()
    assert ("alice", DOMAIN) in mam.with_prefs and mam.counters["prefs_polls"] == 2  # at start, now


async def test_the_preferences_known_at_start_and_a_bad_cluster_call(node: FakeNode):
    mam = await start(node)
    await mam.store.set_prefs(DOMAIN, "alice", q.Prefs("never"), 1)  # long ago: read at start all the same
    await mam.stop()
    again = await start(node)
    assert again.with_prefs == {("alice", DOMAIN)}
    assert again._prefs_call("m2", {"user": "bob@example.com"}) and ("bob", DOMAIN) in again.with_prefs
    with pytest.raises(ValueError):
        again._prefs_call("m2", {"user": 42})


async def test_stop_cancels_the_clean_up_task(tmp_path: Path):
    async with fake_node(tmp_path) as node:
        mam = await start(node, retention_days=1, cleanup_interval=0.01)
        task = mam._cleanup
        assert task is not None and not task.done()
        await mam.stop()
        assert task.cancelled() and mam._cleanup is None


# -- the store on both backends --------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def archive(request: pytest.FixtureRequest) -> AsyncIterator[ArchiveStore]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_db_url")
    storage = open_storage(url)
    await storage.open()
    store = ArchiveStore(storage)
    await store.migrate()
    await store.migrate()  # idempotent
    yield store
    await storage.close()


async def test_store_pages_filters_and_bounds(archive: ArchiveStore):
    d, u = "example.com", "alice"
    assert await archive.bounds(d, u) is None
    ids = []
    for i in range(10):
        ts = NOW + i * 1_000_000
        archive_id = q.make_id(ts, i)
        peer = BOB if i % 2 == 0 else CAROL
        assert await archive.insert(d, u, archive_id, ts, peer, "pc" if i < 5 else "", "in" if i % 3 else "out",
                                    f"<message><body>{i}</body></message>".encode())
        ids.append(archive_id)
    assert not await archive.insert(d, u, ids[3], NOW, BOB, "", "in", b"<message/>")  # taken: retried by the caller
    assert await archive.insert(d, "bob", ids[3], NOW, ALICE, "", "in", b"<message/>")  # another archive
    everything = q.Filters()
    page = await archive.page(d, u, everything, limit=4)
    assert [r[0] for r in page] == ids[:4] and page[0][2] == b"<message><body>0</body></message>"
    assert [r[0] for r in await archive.page(d, u, everything, after=ids[3], limit=4)] == ids[4:8]
    assert [r[0] for r in await archive.page(d, u, everything, backward=True, limit=3)] == ids[9:6:-1]
    assert [r[0] for r in await archive.page(d, u, everything, before=ids[3], backward=True, limit=5)] == ids[2::-1]
    bobs = q.Filters(with_bare=BOB)
    assert [r[0] for r in await archive.page(d, u, bobs, limit=10)] == ids[0::2]
    assert [r[0] for r in await archive.page(d, u, q.Filters(with_bare=BOB, with_resource="pc"), limit=10)] == [
        ids[0], ids[2], ids[4]]
    window = q.Filters(min_id=q.make_id(NOW + 2_000_000, 0), max_id=q.make_id(NOW + 5_000_000, 2047))
    assert [r[0] for r in await archive.page(d, u, window, limit=10)] == ids[2:6]
    assert await archive.count(d, u, window) == 4 and await archive.count(d, u, everything) == 10
    assert await archive.count(d, u, everything, limit=10) == 10
    assert await archive.count(d, u, everything, limit=9) is None
    assert await archive.count(d, u, window, limit=100) == 4
    assert await archive.count(d, u, bobs) == 5
    picked = q.Filters(ids=(ids[7], ids[1]))
    assert [r[0] for r in await archive.page(d, u, picked, limit=10)] == [ids[1], ids[7]]
    assert await archive.count(d, u, q.Filters(ids=())) == 0
    assert await archive.existing(d, u, (ids[0], ids[9], 12345)) == {ids[0], ids[9]}
    assert await archive.existing(d, u, ()) == set()
    assert await archive.received(d, u, ids[1], CAROL)  # in, from carol
    assert not await archive.received(d, u, ids[1], BOB) and not await archive.received(d, u, ids[0], BOB)  # out
    assert await archive.bounds(d, u) == ((ids[0], NOW), (ids[9], NOW + 9_000_000))
    assert await archive.delete_older(NOW + 3_000_000) == 4  # alice's 3 and bob's 1 (ts NOW)
    assert await archive.count(d, u, everything) == 7


async def test_store_insert_unless_the_user_has_prefs(archive: ArchiveStore):
    d = "example.com"
    row = (NOW, BOB, "pc", "out", b"<message><body>x</body></message>")
    assert await archive.insert(d, "alice", q.make_id(NOW, 1), *row, unless_prefs=True)
    assert not await archive.insert(d, "alice", q.make_id(NOW, 1), *row, unless_prefs=True)  # id taken
    await archive.set_prefs(d, "alice", q.Prefs("always"), NOW)
    assert not await archive.insert(d, "alice", q.make_id(NOW, 2), *row, unless_prefs=True)  # has prefs
    assert await archive.insert(d, "alice", q.make_id(NOW, 2), *row)
    assert await archive.insert(d, "bob", q.make_id(NOW, 2), *row, unless_prefs=True)  # another user
    rows = await archive.page(d, "alice", q.Filters(), limit=10)
    assert [(r[0], r[1], r[2]) for r in rows] == [(q.make_id(NOW, 1), NOW, row[-1]), (q.make_id(NOW, 2), NOW, row[-1])]
    assert await archive.count(d, "alice", q.Filters(with_bare=BOB, with_resource="pc")) == 2


async def test_store_queued_rows_are_written_before_written_returns(archive: ArchiveStore):
    """A sent message is queued, not awaited: written() is what a query waits for."""
    d = "example.com"
    await archive.written()  # nothing queued: at once
    rows = [archive.queue(d, "alice", q.make_id(NOW + i, 0), NOW + i, BOB, "", "out", b"<message/>", unless_prefs=True)
            for i in range(3)]
    assert archive.pending == 3 and not any(r.done() for r in rows)
    await archive.written()
    assert archive.pending == 0 and all(r.done() and r.result() for r in rows)
    assert await archive.count(d, "alice", q.Filters()) == 3


async def test_a_group_commit_tells_each_row_how_it_went(archive: ArchiveStore):
    """Rows queued together go in one batch (on PostgreSQL one statement over arrays): each
    future says whether its row went in — refused for a taken id, for a user with preferences
    where asked, and the second of two rows with one key."""
    d, body = "example.com", b"<message/>"
    assert await archive.insert(d, "alice", 1, NOW, BOB, "", "out", body)  # id 1 taken
    await archive.set_prefs(d, "carol", q.Prefs("always"), NOW)
    rows = [archive.queue(d, "alice", 1, NOW, BOB, "", "out", body),  # taken
            archive.queue(d, "alice", 2, NOW, BOB, "pc", "in", body, unless_prefs=True),
            archive.queue(d, "carol", 3, NOW, BOB, "", "out", body, unless_prefs=True),  # has prefs
            archive.queue(d, "carol", 4, NOW, BOB, "", "out", body),  # prefs not asked
            archive.queue(d, "bob", 5, NOW, ALICE, "", "in", body),
            archive.queue(d, "bob", 5, NOW, ALICE, "", "in", body)]  # the same key again
    await archive.written()
    assert [r.result() for r in rows] == [False, True, False, True, True, False]
    assert [r[0] for r in await archive.page(d, "alice", q.Filters(), limit=10)] == [1, 2]
    assert [r[0] for r in await archive.page(d, "carol", q.Filters(), limit=10)] == [4]
    assert [r[0] for r in await archive.page(d, "bob", q.Filters(), limit=10)] == [5]
    assert await archive.count(d, "alice", q.Filters(with_bare=BOB, with_resource="pc")) == 1


async def test_write_all_is_one_transaction_rolled_back_on_an_error(archive: ArchiveStore):
    storage = archive.storage
    insert = ("INSERT INTO mam_messages (domain, username, id, ts, with_bare, with_resource, direction, stanza) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
    good = (insert, ["example.com", "alice", 1, NOW, BOB, "", "out", b"<message/>"])
    with pytest.raises(Exception):  # noqa: B017  # each backend's own error for a missing table
        await storage.write_all([good, ("INSERT INTO no_such_table VALUES (?)", [1])])
    assert await archive.count("example.com", "alice", q.Filters()) == 0  # the good row went with the bad
    assert await storage.write_all([good]) == [1]  # no transaction left open
    assert await archive.count("example.com", "alice", q.Filters()) == 1


async def test_store_prefs(archive: ArchiveStore):
    assert await archive.get_prefs("example.com", "alice") is None
    await archive.set_prefs("example.com", "alice", q.Prefs("roster", (BOB,), (CAROL, f"{BOB}/work")), NOW)
    assert await archive.get_prefs("example.com", "alice") == q.Prefs("roster", (BOB,), (CAROL, f"{BOB}/work"))
    await archive.set_prefs("example.com", "alice", q.Prefs("never"), NOW + 5)
    assert await archive.get_prefs("example.com", "alice") == q.Prefs("never")
    assert await archive.get_prefs("example.com", "bob") is None
    await archive.set_prefs("example.net", "bob", q.Prefs("always"), NOW + 9)
    assert sorted(await archive.prefs_changed(0)) == [("example.com", "alice", NOW + 5),
                                                      ("example.net", "bob", NOW + 9)]
    assert await archive.prefs_changed(NOW + 5) == [("example.net", "bob", NOW + 9)]


async def test_sqlite_plans_use_the_archive_indexes(sqlite_url: str):
    storage = open_storage(sqlite_url)
    await storage.open()
    try:
        await ArchiveStore(storage).migrate()
        plans = {}
        async with storage.transaction() as tx:
            for name, sql in (
                    ("page", "SELECT id, ts, stanza FROM mam_messages WHERE domain = ? AND username = ? AND id > ? "
                             "ORDER BY id DESC LIMIT ?"),
                    ("with", "SELECT id, ts, stanza FROM mam_messages WHERE domain = ? AND username = ? "
                             "AND with_bare = ? AND id >= ? ORDER BY id ASC LIMIT ?"),
                    ("count", "SELECT COUNT(*) FROM mam_messages WHERE domain = ? AND username = ? AND with_bare = ?"),
                    ("retention", "DELETE FROM mam_messages WHERE ts < ?")):
                args = (1,) if name == "retention" else ("d", "u", 1, 5) if name == "page" else ("d", "u", "w", 1, 5)
                rows = await tx.fetchall(f"EXPLAIN QUERY PLAN {sql}", *args[:sql.count("?")])
                plans[name] = " ".join(str(r[-1]) for r in rows)
        assert "sqlite_autoindex_mam_messages_1" in plans["page"] and "TEMP B-TREE" not in plans["page"]
        assert "mam_by_with" in plans["with"] and "TEMP B-TREE" not in plans["with"]
        assert "mam_by_with" in plans["count"]
        assert "mam_by_ts" in plans["retention"]
    finally:
        await storage.close()


def test_settings_bounds():
    from cluster_node.modules.loader import module_settings

    with pytest.raises(ValueError, match="modules.mam.max_page"):
        module_settings({"mam": {"max_page": 0}})
    with pytest.raises(ValueError, match="modules.mam.default_mode"):
        module_settings({"mam": {"default_mode": "sometimes"}})
    settings = module_settings({"mam": {"retention_days": 7}})["mam"]
    assert settings.retention_days == 7  # type: ignore[attr-defined]
