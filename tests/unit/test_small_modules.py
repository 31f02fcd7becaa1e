"""The small modules on a node without a network (tests/helpers/fake_host.py): vcard (XEP-0054,
XEP-0153 hashes in presence), private (XEP-0049), time (XEP-0202), last (XEP-0012),
contact_addresses (XEP-0157) and external_services (XEP-0215)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from cluster_node.core.hooks import Hook
from cluster_node.modules.contact_addresses import ContactAddresses
from cluster_node.modules.contact_addresses.module import EXTENSIONS_HOOK, FORM_TYPE, ContactSettings, serverinfo_form
from cluster_node.modules.disco import Disco
from cluster_node.modules.external_services import ExternalServices
from cluster_node.modules.external_services.module import EXTDISCO, turn_credentials
from cluster_node.modules.last import LastActivity
from cluster_node.modules.last.module import LAST, LastStore
from cluster_node.modules.loader import module_settings
from cluster_node.modules.presence import Presence
from cluster_node.modules.private import PrivateStorage
from cluster_node.modules.private.module import PRIVATE, PrivateStore
from cluster_node.modules.roster import Roster
from cluster_node.modules.time import EntityTime
from cluster_node.modules.time.module import TIME
from cluster_node.modules.vcard import Vcard
from cluster_node.modules.vcard.module import UPDATE, VCARD, VcardStore, photo_hash
from cluster_node.storage import RosterItem, Storage, open_storage
from cluster_node.xmpp import ns
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.stanza import Stanza
from tests.helpers.fake_host import DOMAIN, FakeNode, FakeSession, error_condition, fake_node, stanza

ALICE = "alice@example.com"
BOB = "bob@example.com"
V = f"{{{VCARD}}}"
U = f"{{{UPDATE}}}"
P = f"{{{PRIVATE}}}"
L = f"{{{LAST}}}"
T = f"{{{TIME}}}"
E = f"{{{EXTDISCO}}}"
X = "{jabber:x:data}"
INFO = f"{{{ns.DISCO_INFO}}}"
C = f"{{{ns.CLIENT}}}"
IMAGE = b"\x89PNG\r\n\x1a\n a tiny avatar"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as n:
        await n.create_account(ALICE)
        await n.create_account(BOB)
        yield n


def iq(from_: str, type_: str, payload: str, to: str | None = None, id_: str = "q1") -> Stanza:
    to_attr = f" to='{to}'" if to else ""
    return stanza(f"<iq xmlns='jabber:client' from='{from_}'{to_attr} type='{type_}' id='{id_}'>{payload}</iq>")


def only(items: list[Stanza]) -> Stanza:
    assert len(items) == 1, items
    return items[0]


async def ask(node: FakeNode, session: FakeSession, type_: str, payload: str, to: str | None = None) -> Stanza:
    """An IQ from ``session``'s client; the one IQ it gets back (what else arrived is dropped)."""
    await node.route(iq(str(session.record.jid), type_, payload, to))
    return only([s for s in session.take() if s.name == "iq"])


def result(reply: Stanza) -> Stanza:
    assert reply.type == "result", reply
    return reply


async def send(node: FakeNode, session: FakeSession, xml: str) -> None:
    """A stanza from the client, ``from`` stamped by the stream, through the session manager."""
    await node.sessions.outbound(session, stanza(xml).with_attrs(from_=str(session.record.jid)))
    await node.settle()


def vcard_xml(fn: str, photo: bytes | None = None, pad: int = 0) -> str:
    photo_el = ""
    if photo is not None:
        b64 = base64.b64encode(photo).decode()
        wrapped = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))  # RFC 2045 lines
        photo_el = f"<PHOTO><TYPE>image/png</TYPE><BINVAL>\n{wrapped}\n</BINVAL></PHOTO>"
    desc = f"<DESC>{'x' * pad}</DESC>" if pad else ""
    return f"<vCard xmlns='{VCARD}'><FN>{fn}</FN>{photo_el}{desc}</vCard>"


# -- vcard (XEP-0054) -------------------------------------------------------------------------------


async def test_own_vcard_is_empty_until_set_then_read_back(node: FakeNode):
    await node.start(Vcard)
    alice = node.bind(f"{ALICE}/phone")
    reply = result(await ask(node, alice, "get", f"<vCard xmlns='{VCARD}'/>"))
    card = reply.child(VCARD, "vCard")
    assert card is not None and len(card) == 0
    assert reply.from_ == ALICE  # answered on the account's behalf
    result(await ask(node, alice, "set", vcard_xml("Alice &amp; Co &lt;3&gt;")))
    for to in (None, ALICE):
        card = result(await ask(node, alice, "get", f"<vCard xmlns='{VCARD}'/>", to=to)).child(VCARD, "vCard")
        assert card is not None and card.findtext(V + "FN") == "Alice & Co <3>"


async def test_anyone_reads_another_accounts_vcard_but_only_the_owner_writes(node: FakeNode):
    await node.start(Vcard)
    alice, bob = node.bind(f"{ALICE}/phone"), node.bind(f"{BOB}/pc")
    # Nothing stored yet, and no such account: service-unavailable alike (XEP-0054 §3.3).
    assert error_condition(await ask(node, bob, "get", f"<vCard xmlns='{VCARD}'/>", to=ALICE)) == "service-unavailable"
    assert error_condition(await ask(node, bob, "get", f"<vCard xmlns='{VCARD}'/>",
                                     to="nobody@example.com")) == "service-unavailable"
    result(await ask(node, alice, "set", vcard_xml("Alice")))
    reply = result(await ask(node, bob, "get", f"<vCard xmlns='{VCARD}'/>", to=ALICE))
    assert reply.from_ == ALICE and reply.element.findtext(f"{V}vCard/{V}FN") == "Alice"
    # bob may not overwrite it.
    assert error_condition(await ask(node, bob, "set", vcard_xml("Mallory"), to=ALICE)) == "forbidden"
    assert result(await ask(node, bob, "get", f"<vCard xmlns='{VCARD}'/>", to=ALICE)).element.findtext(
        f"{V}vCard/{V}FN") == "Alice"


async def test_oversized_vcard_is_refused_and_not_stored(node: FakeNode):
    await node.start(Vcard, max_size=1024)
    alice = node.bind(f"{ALICE}/phone")
    result(await ask(node, alice, "set", vcard_xml("Small")))
    assert error_condition(await ask(node, alice, "set", vcard_xml("Big", pad=2000))) == "not-acceptable"
    # 10 MB: refused the same way, nothing written.
    assert error_condition(await ask(node, alice, "set", vcard_xml("Huge", pad=10_000_000))) == "not-acceptable"
    card = result(await ask(node, alice, "get", f"<vCard xmlns='{VCARD}'/>")).child(VCARD, "vCard")
    assert card is not None and card.findtext(V + "FN") == "Small"


async def test_default_max_size_is_64_kib(node: FakeNode):
    module = await node.start(Vcard)
    assert module.cfg.max_size == 65_536
    alice = node.bind(f"{ALICE}/phone")
    result(await ask(node, alice, "set", vcard_xml("Fits", pad=60_000)))
    assert error_condition(await ask(node, alice, "set", vcard_xml("Too big", pad=66_000))) == "not-acceptable"


async def test_vcard_written_on_one_node_is_read_on_another_sharing_the_database(tmp_path: Path):
    async with fake_node(tmp_path) as one, fake_node(tmp_path, node_name="node2") as two:
        await one.create_account(ALICE)
        await one.start(Vcard)
        await two.start(Vcard)
        alice = one.bind(f"{ALICE}/phone")
        result(await ask(one, alice, "set", vcard_xml("Shared")))
        bob = two.bind(f"{BOB}/pc")
        reply = result(await ask(two, bob, "get", f"<vCard xmlns='{VCARD}'/>", to=ALICE))
        assert reply.element.findtext(f"{V}vCard/{V}FN") == "Shared"


async def test_vcard_goes_with_the_account(node: FakeNode):
    await node.start(Vcard)
    alice, bob = node.bind(f"{ALICE}/phone"), node.bind(f"{BOB}/pc")
    result(await ask(node, alice, "set", vcard_xml("Alice")))
    assert await node.storage.remove_account(DOMAIN, "alice")
    assert error_condition(await ask(node, bob, "get", f"<vCard xmlns='{VCARD}'/>", to=ALICE)) == "service-unavailable"


async def test_vcard_temp_is_a_server_feature(node: FakeNode):
    await node.start(Disco)
    await node.start(Vcard)
    alice = node.bind(f"{ALICE}/phone")
    reply = result(await ask(node, alice, "get", f"<query xmlns='{ns.DISCO_INFO}'/>", to=DOMAIN))
    assert VCARD in {f.get("var") for f in reply.element.iter(INFO + "feature")}


# -- vcard: avatar hash in presence (XEP-0153) ---------------------------------------------------------


def test_photo_hash_is_the_sha1_of_the_decoded_image():
    card = stanza(f"<iq xmlns='jabber:client'>{vcard_xml('A', IMAGE)}</iq>").element[0]
    assert photo_hash(card) == hashlib.sha1(IMAGE).hexdigest()
    assert photo_hash(stanza(f"<iq xmlns='jabber:client'>{vcard_xml('A')}</iq>").element[0]) == ""
    bad = stanza(f"<iq xmlns='jabber:client'><vCard xmlns='{VCARD}'><PHOTO><BINVAL>!!</BINVAL></PHOTO></vCard></iq>")
    assert photo_hash(bad.element[0]) == ""
    ext = stanza(f"<iq xmlns='jabber:client'><vCard xmlns='{VCARD}'><PHOTO><EXTVAL>https://x/a.png</EXTVAL>"
                 f"</PHOTO></vCard></iq>")
    assert photo_hash(ext.element[0]) == ""


def update_photo(s: Stanza) -> str | None:
    """The text of the presence's vcard-temp:x:update photo ("" when empty, None without one)."""
    xs = s.element.findall(U + "x")
    assert len(xs) <= 1, s
    if not xs:
        return None
    photo = xs[0].find(U + "photo")
    return None if photo is None else (photo.text or "")


async def test_available_presence_carries_the_stored_photo_hash(node: FakeNode):
    await node.start(Roster)
    await node.start(Presence)
    await node.start(Vcard)
    await node.storage.put_roster_item(DOMAIN, "alice", RosterItem(jid=BOB, subscription="both"))
    await node.storage.put_roster_item(DOMAIN, "bob", RosterItem(jid=ALICE, subscription="both"))
    bob = node.bind(f"{BOB}/pc", available=True)
    alice = node.bind(f"{ALICE}/phone")
    # No vCard stored: the client's element goes out as it was.
    await send(node, alice, f"<presence xmlns='jabber:client'><x xmlns='{UPDATE}'/></presence>")
    assert [update_photo(s) for s in bob.of("presence", None)] == [None]
    assert len(only(bob.of("presence", None)).element.findall(U + "x")) == 1
    bob.take()
    result(await ask(node, alice, "set", vcard_xml("Alice", IMAGE)))
    # The client's own (stale) hash is replaced by the stored one; <show/> stays.
    await send(node, alice, f"<presence xmlns='jabber:client'><show>away</show>"
                            f"<x xmlns='{UPDATE}'><photo>0000</photo></x></presence>")
    got = only(bob.of("presence", None))
    assert update_photo(got) == hashlib.sha1(IMAGE).hexdigest()
    assert got.element.findtext(C + "show") == "away"
    assert alice.last_presence is not None and update_photo(alice.last_presence) == hashlib.sha1(IMAGE).hexdigest()
    bob.take()
    # A vCard without a photo: an empty <photo/> (XEP-0153 §3.1.3).
    result(await ask(node, alice, "set", vcard_xml("Alice")))
    await send(node, alice, "<presence xmlns='jabber:client'/>")
    assert update_photo(only(bob.of("presence", None))) == ""


async def test_avatar_hash_can_be_turned_off(node: FakeNode):
    await node.start(Presence)
    await node.start(Vcard, avatar_hash=False)
    alice = node.bind(f"{ALICE}/phone")
    result(await ask(node, alice, "set", vcard_xml("Alice", IMAGE)))
    await send(node, alice, "<presence xmlns='jabber:client'/>")
    assert [update_photo(s) for s in alice.of("presence", None)] == [None]


# -- private (XEP-0049) -----------------------------------------------------------------------------


async def test_private_set_then_get(node: FakeNode):
    await node.start(PrivateStorage)
    alice = node.bind(f"{ALICE}/phone")
    prefs = "<exodus xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></exodus>"
    reply = result(await ask(node, alice, "set", f"<query xmlns='{PRIVATE}'>{prefs}</query>"))
    assert len(reply.element) == 0
    reply = result(await ask(node, alice, "get", f"<query xmlns='{PRIVATE}'><exodus xmlns='exodus:prefs'/></query>"))
    assert reply.element.findtext(f"{P}query/{{exodus:prefs}}exodus/{{exodus:prefs}}defaultnick") == "Hamlet"
    # Addressed to the own bare JID: the same.
    reply = result(await ask(node, alice, "get", f"<query xmlns='{PRIVATE}'><exodus xmlns='exodus:prefs'/></query>",
                             to=ALICE))
    assert reply.element.findtext(f"{P}query/{{exodus:prefs}}exodus/{{exodus:prefs}}defaultnick") == "Hamlet"


async def test_private_get_of_nothing_stored_returns_the_empty_element(node: FakeNode):
    await node.start(PrivateStorage)
    alice = node.bind(f"{ALICE}/phone")
    reply = result(await ask(node, alice, "get", f"<query xmlns='{PRIVATE}'><storage xmlns='storage:bookmarks'/>"
                                                 f"</query>"))
    q = reply.child(PRIVATE, "query")
    assert q is not None and [(c.tag, len(c)) for c in q] == [("{storage:bookmarks}storage", 0)]


async def test_private_keeps_several_elements_of_a_namespace_and_replaces_them_together(node: FakeNode):
    await node.start(PrivateStorage)
    alice = node.bind(f"{ALICE}/phone")
    result(await ask(node, alice, "set", f"<query xmlns='{PRIVATE}'><a xmlns='urn:x'>1</a><b xmlns='urn:x'>2</b>"
                                         f"<c xmlns='urn:y'>3</c></query>"))
    q = result(await ask(node, alice, "get", f"<query xmlns='{PRIVATE}'><a xmlns='urn:x'/></query>")).element[0]
    assert [(c.tag, c.text) for c in q] == [("{urn:x}a", "1"), ("{urn:x}b", "2")]
    result(await ask(node, alice, "set", f"<query xmlns='{PRIVATE}'><a xmlns='urn:x'>new</a></query>"))
    q = result(await ask(node, alice, "get", f"<query xmlns='{PRIVATE}'><a xmlns='urn:x'/></query>")).element[0]
    assert [(c.tag, c.text) for c in q] == [("{urn:x}a", "new")]
    q = result(await ask(node, alice, "get", f"<query xmlns='{PRIVATE}'><c xmlns='urn:y'/></query>")).element[0]
    assert [(c.tag, c.text) for c in q] == [("{urn:y}c", "3")]


async def test_private_data_of_another_account_is_forbidden(node: FakeNode):
    await node.start(PrivateStorage)
    bob = node.bind(f"{BOB}/pc")
    for type_ in ("get", "set"):
        reply = await ask(node, bob, type_, f"<query xmlns='{PRIVATE}'><a xmlns='urn:x'/></query>", to=ALICE)
        assert error_condition(reply) == "forbidden"


@pytest.mark.parametrize("payload, condition", [
    ("", "bad-request"),  # no child (XEP-0049's Bad Format)
    ("<a/>", "not-acceptable"),  # inherits jabber:iq:private: no namespace of its own
    ("<a xmlns=''/>", "not-acceptable"),
    ("<message xmlns='jabber:client'/>", "not-acceptable"),
    ("<x xmlns='jabber:server'/>", "not-acceptable"),
    ("<vCard xmlns='vcard-temp'/>", "not-acceptable"),
    ("<q xmlns='http://jabber.org/protocol/disco#info'/>", "not-acceptable"),
])
async def test_private_refuses_what_the_xep_refuses(node: FakeNode, payload: str, condition: str):
    await node.start(PrivateStorage)
    alice = node.bind(f"{ALICE}/phone")
    for type_ in ("get", "set"):
        reply = await ask(node, alice, type_, f"<query xmlns='{PRIVATE}'>{payload}</query>")
        assert error_condition(reply) == condition


async def test_private_limits_size_and_namespaces(node: FakeNode):
    await node.start(PrivateStorage, max_size=100, max_namespaces=2)
    alice = node.bind(f"{ALICE}/phone")
    result(await ask(node, alice, "set", f"<query xmlns='{PRIVATE}'><a xmlns='urn:a'>small</a></query>"))
    big = "x" * 200
    assert error_condition(await ask(node, alice, "set", f"<query xmlns='{PRIVATE}'><a xmlns='urn:a'>{big}</a>"
                                                         f"</query>")) == "not-acceptable"
    q = result(await ask(node, alice, "get", f"<query xmlns='{PRIVATE}'><a xmlns='urn:a'/></query>")).element[0]
    assert q[0].text == "small"
    result(await ask(node, alice, "set", f"<query xmlns='{PRIVATE}'><b xmlns='urn:b'/></query>"))
    # A third namespace: refused, and nothing of that set is stored.
    assert error_condition(await ask(node, alice, "set", f"<query xmlns='{PRIVATE}'><a xmlns='urn:a'>changed</a>"
                                                         f"<c xmlns='urn:c'/></query>")) == "not-acceptable"
    q = result(await ask(node, alice, "get", f"<query xmlns='{PRIVATE}'><a xmlns='urn:a'/></query>")).element[0]
    assert q[0].text == "small"
    # Replacing a stored namespace is not a new one.
    result(await ask(node, alice, "set", f"<query xmlns='{PRIVATE}'><a xmlns='urn:a'>changed</a></query>"))


# -- time (XEP-0202) ---------------------------------------------------------------------------------


async def test_entity_time_of_the_server(node: FakeNode):
    await node.start(EntityTime)
    alice = node.bind(f"{ALICE}/phone")
    before = datetime.now(UTC).replace(microsecond=0)
    reply = result(await ask(node, alice, "get", f"<time xmlns='{TIME}'/>", to=DOMAIN))
    assert reply.from_ == DOMAIN
    tzo, utc = reply.element.findtext(f"{T}time/{T}tzo"), reply.element.findtext(f"{T}time/{T}utc")
    assert tzo is not None and len(tzo) == 6 and tzo[0] in "+-" and tzo[3] == ":"
    assert utc is not None and utc.endswith("Z")
    stamp = datetime.strptime(utc, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= stamp <= datetime.now(UTC)
    assert TIME in node.router.features
    assert error_condition(await ask(node, alice, "set", f"<time xmlns='{TIME}'/>", to=DOMAIN)) == "bad-request"


# -- last (XEP-0012) ---------------------------------------------------------------------------------


async def test_server_uptime(node: FakeNode):
    await node.start(LastActivity)
    alice = node.bind(f"{ALICE}/phone")
    reply = result(await ask(node, alice, "get", f"<query xmlns='{LAST}'/>", to=DOMAIN))
    q = reply.child(LAST, "query")
    assert q is not None and int(q.get("seconds", "-1")) >= 0 and not q.text
    assert LAST in node.router.features


async def test_last_activity_of_an_account_for_its_subscribed_contacts(node: FakeNode):
    await node.start(Presence)
    module = await node.start(LastActivity)
    await node.storage.put_roster_item(DOMAIN, "alice", RosterItem(jid=BOB, subscription="from"))
    bob = node.bind(f"{BOB}/pc")
    carol = node.bind("carol@example.com/x")
    # Never logged out: nothing to tell.
    assert error_condition(await ask(node, bob, "get", f"<query xmlns='{LAST}'/>", to=ALICE)) == "service-unavailable"
    # Online: 0.
    alice = node.bind(f"{ALICE}/phone")
    await send(node, alice, "<presence xmlns='jabber:client'/>")
    q = result(await ask(node, bob, "get", f"<query xmlns='{LAST}'/>", to=ALICE)).child(LAST, "query")
    assert q is not None and q.get("seconds") == "0"
    # Logged out with a status: the time since, and the status.
    await send(node, alice, "<presence xmlns='jabber:client' type='unavailable'><status>Heading Home</status>"
                            "</presence>")
    await node.sessions.end(alice)
    await node.settle()
    q = result(await ask(node, bob, "get", f"<query xmlns='{LAST}'/>", to=ALICE)).child(LAST, "query")
    assert q is not None and int(q.get("seconds", "-1")) in (0, 1) and q.text == "Heading Home"
    await module.store.put(Jid.parse(ALICE), int(time.time()) - 903, "Heading Home")
    q = result(await ask(node, bob, "get", f"<query xmlns='{LAST}'/>", to=ALICE)).child(LAST, "query")
    assert q is not None and int(q.get("seconds", "-1")) in (903, 904)
    # Not subscribed to alice's presence: forbidden (XEP-0012 §3); no such account: service-unavailable.
    assert error_condition(await ask(node, carol, "get", f"<query xmlns='{LAST}'/>", to=ALICE)) == "forbidden"
    assert error_condition(await ask(node, carol, "get", f"<query xmlns='{LAST}'/>",
                                     to="nobody@example.com")) == "service-unavailable"


async def test_last_activity_of_ones_own_account_and_without_status(node: FakeNode):
    await node.start(LastActivity)
    phone = node.bind(f"{ALICE}/phone", available=True)
    laptop = node.bind(f"{ALICE}/laptop")
    q = result(await ask(node, laptop, "get", f"<query xmlns='{LAST}'/>", to=ALICE)).child(LAST, "query")
    assert q is not None and q.get("seconds") == "0"  # the phone is available
    await node.sessions.end(phone)
    await node.settle()
    q = result(await ask(node, laptop, "get", f"<query xmlns='{LAST}'/>")).child(LAST, "query")
    assert q is not None and q.get("seconds") in ("0", "1") and not q.text


async def test_unavailable_presence_without_logging_out_counts_as_the_last_activity(node: FakeNode):
    await node.start(Presence)
    await node.start(LastActivity)
    await node.storage.put_roster_item(DOMAIN, "alice", RosterItem(jid=BOB, subscription="both"))
    alice = node.bind(f"{ALICE}/phone")
    bob = node.bind(f"{BOB}/pc")
    await send(node, alice, "<presence xmlns='jabber:client'/>")
    await send(node, alice, "<presence xmlns='jabber:client' type='unavailable'><status>brb</status></presence>")
    q = result(await ask(node, bob, "get", f"<query xmlns='{LAST}'/>", to=ALICE)).child(LAST, "query")
    assert q is not None and q.get("seconds") in ("0", "1") and q.text == "brb"
    # Available again, then the session ends: no stale status.
    await send(node, alice, "<presence xmlns='jabber:client'/>")
    await node.sessions.end(alice)
    await node.settle()
    q = result(await ask(node, bob, "get", f"<query xmlns='{LAST}'/>", to=ALICE)).child(LAST, "query")
    assert q is not None and not q.text


# -- contact_addresses (XEP-0157) ----------------------------------------------------------------------


def form_fields(x: object) -> dict[str, list[str]]:
    assert x is not None
    return {f.get("var", ""): [v.text or "" for v in f.findall(X + "value")]
            for f in x.findall(X + "field")}  # type: ignore[attr-defined]


def test_serverinfo_form_lists_the_configured_addresses():
    cfg = ContactSettings(abuse=["mailto:abuse@example.com", "xmpp:abuse@example.com"],
                          support=["https://example.com/support"], status=["https://status.example.com"])
    x = serverinfo_form(cfg)
    assert x is not None and x.tag == X + "x" and x.get("type") == "result"
    assert form_fields(x) == {"FORM_TYPE": [FORM_TYPE], "abuse-addresses": ["mailto:abuse@example.com",
                                                                           "xmpp:abuse@example.com"],
                              "status-addresses": ["https://status.example.com"],
                              "support-addresses": ["https://example.com/support"]}
    hidden = x.find(X + "field")
    assert hidden is not None and (hidden.get("var"), hidden.get("type")) == ("FORM_TYPE", "hidden")
    assert serverinfo_form(ContactSettings()) is None


def test_contact_addresses_must_be_uris():
    with pytest.raises(ValidationError):
        ContactSettings(admin=["admin@example.com"])
    with pytest.raises(ValueError, match=r"modules\.contact_addresses\.admin"):
        module_settings({"contact_addresses": {"admin": ["admin@example.com"]}})


async def test_contact_addresses_offer_their_form_on_the_extension_fold(node: FakeNode):
    await node.start(ContactAddresses, admin=["xmpp:admin@example.com"])
    forms = node.hooks.fold(EXTENSIONS_HOOK, [])
    assert [form_fields(f) for f in forms] == [{"FORM_TYPE": [FORM_TYPE],
                                                "admin-addresses": ["xmpp:admin@example.com"]}]


async def test_without_addresses_nothing_is_offered(node: FakeNode):
    await node.start(ContactAddresses)
    assert node.hooks.fold(EXTENSIONS_HOOK, []) == []


async def test_contact_addresses_in_server_disco_info(node: FakeNode):
    await node.start(Disco)
    await node.start(ContactAddresses, abuse=["mailto:abuse@example.com"])
    alice = node.bind(f"{ALICE}/phone")
    reply = result(await ask(node, alice, "get", f"<query xmlns='{ns.DISCO_INFO}'/>", to=DOMAIN))
    forms = reply.element.findall(f"{INFO}query/{X}x")
    assert [form_fields(f) for f in forms] == [{"FORM_TYPE": [FORM_TYPE],
                                                "abuse-addresses": ["mailto:abuse@example.com"]}]


# -- external_services (XEP-0215) ---------------------------------------------------------------------

SERVICES = [
    {"type": "stun", "host": "stun.example.com", "port": 3478, "transport": "udp"},
    {"type": "turn", "host": "turn.example.com", "port": 3478, "transport": "udp", "name": "Relay"},
    {"type": "turn", "host": "turn.example.com", "port": 3479, "transport": "tcp"},
    {"type": "turns", "host": "turn.example.com", "port": 5349, "transport": "tcp", "credentials": False},
]
SECRET = "coturn-static-auth-secret"


def check_credentials(service: object, user: str, ttl: int) -> None:
    get = service.get  # type: ignore[attr-defined]
    username, password, expires = get("username"), get("password"), get("expires")
    expiry, _, who = username.partition(":")
    assert who == user
    assert abs(int(expiry) - (time.time() + ttl)) < 5
    assert password == base64.b64encode(hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()).decode()
    assert expires == datetime.fromtimestamp(int(expiry), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert get("restricted") == "true"


async def test_external_services_list_with_turn_credentials(node: FakeNode):
    await node.start(ExternalServices, services=SERVICES, secret=SECRET, ttl=600)
    alice = node.bind(f"{ALICE}/phone")
    reply = result(await ask(node, alice, "get", f"<services xmlns='{EXTDISCO}'/>", to=DOMAIN))
    services = reply.element.findall(f"{E}services/{E}service")
    assert [(s.get("type"), s.get("host"), s.get("port"), s.get("transport")) for s in services] == [
        ("stun", "stun.example.com", "3478", "udp"), ("turn", "turn.example.com", "3478", "udp"),
        ("turn", "turn.example.com", "3479", "tcp"), ("turns", "turn.example.com", "5349", "tcp")]
    assert services[0].get("username") is None and services[0].get("restricted") is None
    assert services[1].get("name") == "Relay"
    check_credentials(services[1], ALICE, 600)
    check_credentials(services[2], ALICE, 600)
    assert services[3].get("username") is None  # credentials = false
    assert EXTDISCO in node.router.features
    # Only one type; no 'to' is the server too.
    reply = result(await ask(node, alice, "get", f"<services xmlns='{EXTDISCO}' type='stun'/>"))
    box = reply.child(EXTDISCO, "services")
    assert box is not None and box.get("type") == "stun" and [s.get("host") for s in box] == ["stun.example.com"]


async def test_external_services_credentials_request(node: FakeNode):
    await node.start(ExternalServices, services=SERVICES, secret=SECRET)
    alice = node.bind(f"{ALICE}/phone")
    asked = f"<credentials xmlns='{EXTDISCO}'><service host='turn.example.com' type='turn'/></credentials>"
    got = result(await ask(node, alice, "get", asked, to=DOMAIN)).element.findall(f"{E}credentials/{E}service")
    assert [s.get("port") for s in got] == ["3478", "3479"]
    for s in got:
        check_credentials(s, ALICE, 86_400)
    asked = f"<credentials xmlns='{EXTDISCO}'><service host='turn.example.com' type='turn' port='3479'/></credentials>"
    got = result(await ask(node, alice, "get", asked, to=DOMAIN)).element.findall(f"{E}credentials/{E}service")
    assert [s.get("port") for s in got] == ["3479"]
    for missing in ("<service host='turn.example.com' type='stun'/>", "<service host='turns.example.com' type='turn'/>",
                    "<service host='stun.example.com' type='stun'/>",  # no credentials for it
                    "<service host='turn.example.com' type='turns'/>"):
        reply = await ask(node, alice, "get", f"<credentials xmlns='{EXTDISCO}'>{missing}</credentials>", to=DOMAIN)
        assert error_condition(reply) == "item-not-found", missing
    for bad in ("", "<service host='turn.example.com'/>", "<service type='turn'/>"):
        reply = await ask(node, alice, "get", f"<credentials xmlns='{EXTDISCO}'>{bad}</credentials>", to=DOMAIN)
        assert error_condition(reply) == "bad-request", bad


async def test_external_services_are_for_local_accounts_only(node: FakeNode):
    await node.start(ExternalServices, services=SERVICES, secret=SECRET)
    alice = node.bind(f"{ALICE}/phone")
    # From another domain (over S2S): forbidden.  The error goes back where it came from.
    sent: list[Stanza] = []
    node.hooks.add(Hook.ROUTE_REMOTE, lambda s, _to: sent.append(s) or True)
    await node.route(iq("romeo@montague.lit/orchard", "get", f"<services xmlns='{EXTDISCO}'/>", to=DOMAIN))
    assert [error_condition(s) for s in sent] == ["forbidden"]
    assert error_condition(await ask(node, alice, "set", f"<services xmlns='{EXTDISCO}'/>", to=DOMAIN)) == "bad-request"


def test_turn_credentials_follow_the_turn_rest_api():
    username, password, expiry = turn_credentials("secret", "alice@example.com", 3600, 1_700_000_000.5)
    assert (username, expiry) == ("1700003600:alice@example.com", 1_700_003_600)
    assert password == base64.b64encode(hmac.new(b"secret", username.encode(), hashlib.sha1).digest()).decode()


def test_external_services_settings_are_checked():
    with pytest.raises(ValueError, match="secret"):
        module_settings({"external_services": {"services": [{"type": "turn", "host": "t", "credentials": True}]}})
    with pytest.raises(ValueError, match=r"modules\.external_services\.services\.0\.port"):
        module_settings({"external_services": {"services": [{"type": "turn", "host": "t", "port": 70000}]}})
    with pytest.raises(ValueError, match=r"modules\.external_services\.services\.0\.colour"):
        module_settings({"external_services": {"services": [{"type": "turn", "host": "t", "colour": "red"}]}})
    # Without a secret, TURN services are listed without credentials.
    module_settings({"external_services": {"services": [{"type": "turn", "host": "t"}]}})


# -- the stores on both backends ------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def storage(request: pytest.FixtureRequest) -> AsyncIterator[Storage]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_db_url")
    s = open_storage(url)
    await s.open()
    for name in ("alice", "bob"):
        assert await s.create_account(DOMAIN, name, {})
    yield s
    await s.close()


async def test_stores_on_both_backends(storage: Storage):
    alice, bob = Jid.parse(ALICE), Jid.parse(BOB)
    vcards, private, last = VcardStore(storage), PrivateStore(storage), LastStore(storage)
    for store in (vcards, private, last):
        await store.migrate()
        await store.migrate()  # idempotent
    assert await vcards.get(alice) is None and await vcards.photo_hash(alice) is None
    await vcards.put(alice, b"<vCard xmlns='vcard-temp'/>", "")
    await vcards.put(alice, b"<vCard xmlns='vcard-temp'><FN>A</FN></vCard>", "abc")
    assert await vcards.get(alice) == b"<vCard xmlns='vcard-temp'><FN>A</FN></vCard>"
    assert await vcards.photo_hash(alice) == "abc"
    assert await private.put(alice, {"urn:a": b"<a/>", "urn:b": b"<b/>"}, 3)
    assert not await private.put(alice, {"urn:c": b"<c/>", "urn:d": b"<d/>"}, 3)
    assert await private.put(alice, {"urn:a": b"<a>2</a>", "urn:c": b"<c/>"}, 3)
    assert await private.get(alice, ["urn:a", "urn:b", "urn:z"]) == {"urn:a": b"<a>2</a>", "urn:b": b"<b/>"}
    assert await private.put(bob, {"urn:a": b"<bob/>"}, 1)
    await last.put(alice, 1_700_000_000, "")
    await last.put(alice, 1_700_000_100, "away")
    assert await last.get(alice) == (1_700_000_100, "away") and await last.get(bob) is None
    # A burst of logouts: written together (the last of one account's wins), one statement each call.
    calls = last._writes.calls
    users = [Jid.parse(f"u{i}@{DOMAIN}") for i in range(250)]
    await asyncio.gather(*(last.put(u, 1_700_000_000 + i, f"s{i}") for i, u in enumerate(users)),
                         last.put(users[3], 1_700_009_999, "again"))
    assert last._writes.calls - calls <= 3
    assert await last.get(users[7]) == (1_700_000_007, "s7") and await last.get(users[3]) == (1_700_009_999, "again")
    # Removing the account empties its rows in every table (user_tables), not the others'.
    assert await storage.remove_account(DOMAIN, "alice")
    assert await vcards.get(alice) is None and await last.get(alice) is None
    assert await private.get(alice, ["urn:a", "urn:b", "urn:c"]) == {}
    assert await private.get(bob, ["urn:a"]) == {"urn:a": b"<bob/>"}
