"""The presences a joining occupant receives are copies of each occupant's presence kept as bytes
(``Room._seen``): they must be what building them afresh gives, and follow every change of the
occupant (presence, role, affiliation, real JID shown or not) — a stale copy would show a joiner
an old status or role.  Also nick registration (XEP-0045 §7.10) sans-IO."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from cluster_node.modules.muc.protocol import MUC_ADMIN
from cluster_node.modules.muc.room import Room
from cluster_node.xmpp import errors, ns
from cluster_node.xmpp.stanza import Stanza, serialize

from .test_muc_room import ALICE, BOB, ROOM, U, join, owned, send

DAVE, ERIN = "dave@example.com/d", "erin@example.com/e"
REG = f"{{{ns.REGISTER}}}"


def seen_by(out: list[Stanza], joiner: str, nick: str) -> ET.Element:
    """The presence of ``nick`` a joiner got, parsed again from the bytes that would be sent."""
    for s in out:
        if s.to == joiner and s.from_ == f"{ROOM}/{nick}" and s.name == "presence":
            return ET.fromstring(s.to_bytes())
    raise AssertionError(f"no presence of {nick} to {joiner}")


def test_the_copies_follow_presence_role_and_affiliation() -> None:
    room = owned(moderated=True)
    join(room, BOB, "bob")
    first = seen_by(join(room, DAVE, "dave"), DAVE, "bob")
    assert first.get("to") == DAVE and first.find(f"{U}x/{U}item").get("role") == "visitor"  # type: ignore[union-attr]
    send(room, f"<presence from='{BOB}' to='{ROOM}/bob'><show>away</show></presence>")
    send(room, f"<iq from='{ALICE}' to='{ROOM}' type='set' id='v'><query xmlns='{MUC_ADMIN}'>"
               "<item nick='bob' role='participant'/></query></iq>")
    again = seen_by(join(room, ERIN, "erin"), ERIN, "bob")
    assert again.get("to") == ERIN and again.findtext("show") == "away"  # the stream's default namespace
    assert again.find(f"{U}x/{U}item").get("role") == "participant"  # type: ignore[union-attr]
    send(room, f"<iq from='{ALICE}' to='{ROOM}' type='set' id='m'><query xmlns='{MUC_ADMIN}'>"
               "<item jid='bob@example.com' affiliation='member'/></query></iq>")
    out = join(room, "frank@example.com/f", "frank")
    assert seen_by(out, "frank@example.com/f", "bob").find(f"{U}x/{U}item").get("affiliation") == "member"  # type: ignore[union-attr]
    # the moderator sees real JIDs, a participant does not: two variants of one occupant
    owner_view = seen_by(join(room, "alice@example.com/tablet", "alice"), "alice@example.com/tablet", "bob")
    assert owner_view.find(f"{U}x/{U}item").get("jid") == BOB  # type: ignore[union-attr]
    assert seen_by(out, "frank@example.com/f", "bob").find(f"{U}x/{U}item").get("jid") is None  # type: ignore[union-attr]


def test_a_copy_is_what_building_afresh_gives() -> None:
    room = owned()
    join(room, BOB, "bob")
    send(room, f"<presence from='{BOB}' to='{ROOM}/bob'><status>brewing &amp; stirring</status></presence>")
    cached = seen_by(join(room, DAVE, "dave"), DAVE, "bob")
    fresh = ET.fromstring(serialize(room._presence_el(room.occupants["bob"], DAVE, show_jid=False).element))
    assert ET.tostring(cached) == ET.tostring(fresh)


def _register(room: Room, full: str, body: str, type_: str = "set") -> list[Stanza]:
    return send(room, f"<iq from='{full}' to='{ROOM}' type='{type_}' id='r'><query xmlns='{ns.REGISTER}'>"
                f"{body}</query></iq>")


def _form(nick: str) -> str:
    return ("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
            "<value>http://jabber.org/protocol/muc#register</value></field>"
            f"<field var='muc#register_roomnick'><value>{nick}</value></field></x>")


def test_nick_registration_reserves_the_nick_and_copies_follow() -> None:
    room = owned()
    [form] = _register(room, BOB, "", "get")
    assert form.element.find(f"{REG}query/{{jabber:x:data}}x") is not None
    _register(room, BOB, _form("bob"))
    ops = room.take_ops()
    assert {"op": "aff", "jid": "bob@example.com", "aff": "member", "nick": "bob", "reason": ""} in ops
    copy = owned()
    for op in ops:
        copy.apply(op)
    assert copy.affiliations["bob@example.com"].nick == "bob"
    with pytest.raises(errors.StanzaConflict):
        join(room, DAVE, "bob")
    with pytest.raises(errors.StanzaConflict):
        _register(room, DAVE, _form("bob"))
    with pytest.raises(errors.BadRequest):
        _register(room, DAVE, _form(""))
    [registered] = _register(room, BOB, "", "get")
    assert registered.element.findtext(f"{REG}query/{REG}username") == "bob"
    _register(room, BOB, f"<remove xmlns='{ns.REGISTER}'/>")
    assert "bob@example.com" not in room.affiliations
    join(room, DAVE, "bob")
