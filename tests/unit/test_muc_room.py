"""XEP-0045 rooms without any I/O: stanzas in, stanzas and state operations out — joins and their
refusals, history limits, presence and status codes, messages and ids, subject, private
messages, roles and affiliations, configuration forms, destruction, invitations, disco, self-ping,
and copies of a room kept in step by its operations."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from cluster_node.modules.muc.config import FormError, RoomConfig, apply_form, config_form
from cluster_node.modules.muc.protocol import (
    MUC,
    MUC_ADMIN,
    MUC_OWNER,
    MUC_USER,
    OCCUPANT_ID,
    SID,
    parse_join,
    stamp,
)
from cluster_node.modules.muc.room import RegistrationRequired, Room
from cluster_node.modules.muc.service import sequencer
from cluster_node.modules.muc.state import Limits
from cluster_node.xmpp import errors, ns
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.stanza import Stanza
from tests.helpers.fake_host import stanza

ROOM = "coven@conference.example.com"
NOW = 1_700_000_000.0
ALICE, BOB, CAROL = "alice@example.com/phone", "bob@example.com/laptop", "carol@other.example/pc"
C = f"{{{ns.CLIENT}}}"
U = f"{{{MUC_USER}}}"
X = "{jabber:x:data}"


def make_room(*, fresh: bool = False, limits: Limits | None = None, **config: Any) -> Room:
    room = Room(Jid.parse(ROOM), RoomConfig(**config), limits or Limits(lock_new_rooms=False), salt="salt",
                created=NOW)
    room.fresh = fresh
    return room


def send(room: Room, xml: str, now: float = NOW) -> list[Stanza]:
    s = stanza(xml)
    return room.handle(s, Jid.parse(s.from_ or ""), Jid.parse(s.to or ""), now)


def join(room: Room, full: str, nick: str, extra: str = "", now: float = NOW) -> list[Stanza]:
    return send(room, f"<presence from='{full}' to='{ROOM}/{nick}'><x xmlns='{MUC}'>{extra}</x></presence>", now)


def owned(**config: Any) -> Room:
    """A room alice created (and owns), configured with ``config``."""
    room = make_room(fresh=True, **config)
    join(room, ALICE, "alice")
    room.take_ops()
    return room


def to(out: list[Stanza], jid: str) -> list[Stanza]:
    return [s for s in out if s.to == jid]


def codes(s: Stanza) -> set[int]:
    return {int(c.get("code", "0")) for c in s.element.iterfind(f"{U}x/{U}status")}


def item(s: Stanza) -> dict[str, str]:
    it = s.element.find(f"{U}x/{U}item")
    assert it is not None, s
    return dict(it.attrib)


def condition(e: pytest.ExceptionInfo[errors.StanzaError]) -> str:
    return e.value.condition


def form(**values: str) -> str:
    fields = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in values.items())
    return f"<x xmlns='jabber:x:data' type='submit'>{fields}</x>"


def owner_set(room: Room, body: str, sender: str = ALICE) -> list[Stanza]:
    return send(room, f"<iq type='set' id='c1' from='{sender}' to='{ROOM}'><query xmlns='{MUC_OWNER}'>{body}"
                      "</query></iq>")


def admin_set(room: Room, items: str, sender: str = ALICE) -> list[Stanza]:
    return send(room, f"<iq type='set' id='a1' from='{sender}' to='{ROOM}'><query xmlns='{MUC_ADMIN}'>{items}"
                      "</query></iq>")


def say(room: Room, full: str, body: str, now: float = NOW, extra: str = "") -> list[Stanza]:
    return send(room, f"<message type='groupchat' id='m-{body}' from='{full}' to='{ROOM}'><body>{body}</body>"
                      f"{extra}</message>", now)


# -- creation ---------------------------------------------------------------------------------------------


def test_the_first_occupant_creates_and_owns_the_room_which_stays_locked_until_configured() -> None:
    room = make_room(fresh=True, limits=Limits(lock_new_rooms=True))
    out = join(room, ALICE, "alice")
    self_presence = to(out, ALICE)[0]
    assert {110, 201} <= codes(self_presence)
    assert item(self_presence)["affiliation"] == "owner" and item(self_presence)["role"] == "moderator"
    assert room.locked and not room.fresh
    with pytest.raises(errors.ItemNotFound):
        join(room, BOB, "bob")
    out = owner_set(room, form())  # an instant room: the defaults
    assert out[0].type == "result" and not room.locked
    assert 104 in codes(to(out, ALICE)[1])
    join(room, BOB, "bob")
    assert set(room.occupants) == {"alice", "bob"}


def test_cancelling_the_configuration_of_a_new_room_destroys_it() -> None:
    room = make_room(fresh=True, limits=Limits(lock_new_rooms=True))
    join(room, ALICE, "alice")
    out = owner_set(room, "<x xmlns='jabber:x:data' type='cancel'/>")
    assert room.destroyed and out[0].type == "result"
    assert to(out, ALICE)[-1].type == "unavailable"


# -- joining ------------------------------------------------------------------------------------------------


def test_a_join_gets_the_occupants_then_itself_then_the_subject_and_the_others_hear_of_it() -> None:
    room = owned()
    out = join(room, BOB, "bob")
    mine = to(out, BOB)
    assert [s.name for s in mine] == ["presence", "presence", "message"]
    assert mine[0].from_ == f"{ROOM}/alice" and "jid" not in item(mine[0])  # semi-anonymous to a participant
    assert 110 in codes(mine[1]) and item(mine[1])["role"] == "participant"
    assert mine[1].element.find(f"{{{OCCUPANT_ID}}}occupant-id") is not None
    subject = mine[2].element.find(C + "subject")
    assert subject is not None and mine[2].element.find(C + "body") is None
    theirs = to(out, ALICE)
    assert len(theirs) == 1 and item(theirs[0])["jid"] == BOB  # alice moderates: she sees real JIDs


def test_a_non_anonymous_room_says_so_with_100_and_shows_everyone_real_jids() -> None:
    room = owned(whois="anyone")
    out = join(room, BOB, "bob")
    mine = to(out, BOB)
    assert item(mine[0])["jid"] == ALICE and 100 in codes(mine[1])


def test_refusals_come_before_any_change() -> None:
    room = owned(password_protected=True, password="secret", max_users=2)
    with pytest.raises(errors.StanzaNotAuthorized):
        join(room, BOB, "bob")
    with pytest.raises(errors.StanzaNotAuthorized):
        join(room, BOB, "bob", "<password>wrong</password>")
    join(room, BOB, "bob", "<password>secret</password>")
    room.take_ops()
    with pytest.raises(errors.StanzaConflict):
        join(room, CAROL, "bob", "<password>secret</password>")
    with pytest.raises(errors.ServiceUnavailable):  # full
        join(room, CAROL, "carol", "<password>secret</password>")
    assert set(room.occupants) == {"alice", "bob"} and not room.ops


def test_members_only_rooms_want_registration_and_outcasts_are_forbidden() -> None:
    room = owned(members_only=True)
    with pytest.raises(RegistrationRequired) as e:
        join(room, BOB, "bob")
    assert condition(e) == "registration-required"
    admin_set(room, "<item affiliation='member' jid='bob@example.com'/>")
    join(room, BOB, "bob")
    admin_set(room, "<item affiliation='outcast' jid='carol@other.example'><reason>spam</reason></item>")
    with pytest.raises(errors.Forbidden):
        join(room, CAROL, "carol")


def test_bad_nicknames_are_not_acceptable() -> None:
    room = owned(limits=None)
    with pytest.raises(errors.NotAcceptable):
        join(room, BOB, "b" * 65)
    with pytest.raises(errors.JidMalformed):
        send(room, f"<presence from='{BOB}' to='{ROOM}'><x xmlns='{MUC}'/></presence>")


def test_a_second_session_under_the_same_nick_shares_the_occupant() -> None:
    room = owned()
    join(room, BOB, "bob")
    out = join(room, "bob@example.com/phone", "bob")
    assert room.occupants["bob"].jids == [BOB, "bob@example.com/phone"]
    assert to(out, BOB)  # bob's other session hears of it
    out = send(room, f"<presence type='unavailable' from='bob@example.com/phone' to='{ROOM}/bob'/>")
    assert "bob" in room.occupants and [s.to for s in out] == ["bob@example.com/phone"]


# -- history --------------------------------------------------------------------------------------------


def test_history_limits_select_what_a_joining_occupant_gets() -> None:
    room = owned(history_length=3)
    for i in range(5):
        say(room, ALICE, f"m{i}", now=NOW + i)
    assert [h.nick for h in room.history] == ["alice"] * 3

    def history(extra: str, now: float = NOW + 10) -> list[str]:
        out = join(room, BOB, "bob", extra, now)
        send(room, f"<presence type='unavailable' from='{BOB}' to='{ROOM}/bob'/>")
        bodies = [s.element.findtext(C + "body") for s in to(out, BOB) if s.name == "message"]
        return [b for b in bodies if b]

    assert history("") == ["m2", "m3", "m4"]
    assert history("<history maxstanzas='1000000000'/>") == ["m2", "m3", "m4"]  # clamped to what is kept
    assert history("<history maxstanzas='2'/>") == ["m3", "m4"]
    assert history("<history maxstanzas='0'/>") == []
    assert history("<history seconds='7'/>") == ["m3", "m4"]
    assert history(f"<history since='{stamp(NOW + 4)}'/>") == ["m4"]
    assert history("<history maxchars='0'/>") == []
    assert history("<history maxstanzas='x'/>") == ["m2", "m3", "m4"]  # malformed: ignored
    out = join(room, BOB, "bob")
    delayed = [s for s in to(out, BOB) if s.name == "message" and s.element.findtext(C + "body")]
    delay = delayed[0].element.find(f"{{{ns.DELAY}}}delay")
    assert delay is not None and delay.get("from") == ROOM


def test_parse_join_reads_history_and_password() -> None:
    x = stanza(f"<presence><x xmlns='{MUC}'><password>pw</password><history maxchars='10' seconds='5'/></x></presence>")
    req = parse_join(x.element)
    assert req.muc and req.password == "pw" and req.history.maxchars == 10 and req.history.seconds == 5.0


# -- messages -------------------------------------------------------------------------------------------


def test_groupchat_goes_to_every_occupant_with_the_rooms_ids() -> None:
    room = owned()
    join(room, BOB, "bob")
    spoof = f"<stanza-id xmlns='{SID}' id='fake' by='{ROOM}'/><stanza-id xmlns='{SID}' id='theirs' by='x@y'/>"
    out = say(room, BOB, "hello", extra=spoof)
    assert sorted(s.to for s in out) == sorted([ALICE, BOB])
    msg = to(out, ALICE)[0]
    assert msg.from_ == f"{ROOM}/bob" and msg.id == "m-hello" and msg.type == "groupchat"
    ids = [(e.get("by"), e.get("id")) for e in msg.element.iter(f"{{{SID}}}stanza-id")]
    assert ("x@y", "theirs") in ids and ("fake" not in [i for b, i in ids]) and any(b == ROOM for b, _ in ids)
    assert msg.element.find(f"{{{OCCUPANT_ID}}}occupant-id").get("id") == room.occupants["bob"].occupant_id


def test_only_occupants_with_voice_speak() -> None:
    room = owned(moderated=True)
    with pytest.raises(errors.NotAcceptable):
        say(room, CAROL, "from outside")
    join(room, BOB, "bob")
    assert room.occupants["bob"].role == "visitor"
    with pytest.raises(errors.Forbidden):
        say(room, BOB, "no voice")
    out = admin_set(room, "<item nick='bob' role='participant'/>")
    assert item(to(out, BOB)[0])["role"] == "participant"
    assert say(room, BOB, "voiced")


def test_the_subject_is_changed_by_moderators_or_everyone_if_allowed() -> None:
    room = owned()
    join(room, BOB, "bob")
    subject = f"<message type='groupchat' from='{{}}' to='{ROOM}'><subject>Potions</subject></message>"
    with pytest.raises(errors.Forbidden):
        send(room, subject.format(BOB))
    out = send(room, subject.format(ALICE))
    assert len(out) == 2 and room.subject == "Potions" and room.subject_by == "alice"
    last = to(join(room, CAROL, "carol"), CAROL)[-1]
    assert last.element.findtext(C + "subject") == "Potions" and last.from_ == f"{ROOM}/alice"
    room.do({"op": "config", "config": {**room.config.to_json(), "change_subject": True}})
    send(room, subject.format(BOB))


def test_private_messages_between_occupants() -> None:
    room = owned()
    join(room, BOB, "bob")
    out = send(room, f"<message type='chat' from='{BOB}' to='{ROOM}/alice'><body>psst</body></message>")
    assert [s.to for s in out] == [ALICE] and out[0].from_ == f"{ROOM}/bob"
    assert out[0].element.find(f"{U}x") is not None
    with pytest.raises(errors.ItemNotFound):
        send(room, f"<message type='chat' from='{BOB}' to='{ROOM}/nobody'><body>?</body></message>")
    with pytest.raises(errors.BadRequest):
        send(room, f"<message type='groupchat' from='{BOB}' to='{ROOM}/alice'><body>?</body></message>")
    with pytest.raises(errors.NotAcceptable):
        send(room, f"<message type='chat' from='{CAROL}' to='{ROOM}/alice'><body>?</body></message>")
    room.do({"op": "config", "config": {**room.config.to_json(), "allow_pm": "none"}})
    with pytest.raises(errors.NotAllowed):
        send(room, f"<message type='chat' from='{BOB}' to='{ROOM}/alice'><body>psst</body></message>")


# -- presence -------------------------------------------------------------------------------------------


def test_nick_change_is_303_then_the_new_presence() -> None:
    room = owned()
    join(room, BOB, "bob")
    out = send(room, f"<presence from='{BOB}' to='{ROOM}/robert'/>")
    gone, back = to(out, ALICE)
    assert gone.type == "unavailable" and gone.from_ == f"{ROOM}/bob" and 303 in codes(gone)
    assert item(gone)["nick"] == "robert" and back.from_ == f"{ROOM}/robert"
    assert {110, 303} <= codes(to(out, BOB)[0])
    with pytest.raises(errors.StanzaConflict):
        send(room, f"<presence from='{BOB}' to='{ROOM}/alice'/>")


def test_leaving_tells_everyone_and_a_temporary_room_goes_with_its_last_occupant() -> None:
    room = owned()
    join(room, BOB, "bob")
    out = send(room, f"<presence type='unavailable' from='{BOB}' to='{ROOM}/bob'><status>bye</status></presence>")
    assert {s.to for s in out} == {ALICE, BOB}
    assert to(out, ALICE)[0].element.findtext(C + "status") == "bye" and 110 in codes(to(out, BOB)[0])
    send(room, f"<presence type='unavailable' from='{ALICE}' to='{ROOM}/alice'/>")
    assert room.destroyed
    kept = owned(persistent=True)
    send(kept, f"<presence type='unavailable' from='{ALICE}' to='{ROOM}/alice'/>")
    assert not kept.destroyed


def test_an_occupant_answering_with_errors_is_removed_with_333() -> None:
    room = owned()
    join(room, BOB, "bob")
    out = send(room, f"<message type='error' from='{BOB}' to='{ROOM}/alice'><stanza-id xmlns='{SID}' by='{ROOM}' "
                     f"id='1'/><error type='cancel'><service-unavailable xmlns='{ns.STANZAS}'/></error></message>")
    assert "bob" not in room.occupants and 333 in codes(to(out, ALICE)[0])


def test_sessions_gone_with_their_node_leave_with_332() -> None:
    room = owned()
    join(room, BOB, "bob")
    out: list[Stanza] = []
    room.remove_sessions({BOB}, 332, out)
    assert [s.to for s in out] == [ALICE] and 332 in codes(out[0]) and out[0].type == "unavailable"


# -- roles and affiliations -----------------------------------------------------------------------------


def test_kick_is_307_with_actor_and_reason_and_needs_a_moderator() -> None:
    room = owned()
    join(room, BOB, "bob")
    join(room, CAROL, "carol")
    with pytest.raises(errors.Forbidden):
        admin_set(room, "<item nick='carol' role='none'/>", sender=BOB)
    out = admin_set(room, "<item nick='carol' role='none'><reason>rude</reason></item>")
    assert out[0].type == "result"
    kicked = to(out, CAROL)[0]
    assert kicked.type == "unavailable" and {110, 307} <= codes(kicked)
    it = kicked.element.find(f"{U}x/{U}item")
    assert it.find(f"{U}actor").get("nick") == "alice" and it.findtext(f"{U}reason") == "rude"
    assert "carol" not in room.occupants


def test_affiliation_rules() -> None:
    room = owned()
    admin_set(room, "<item affiliation='admin' jid='bob@example.com'/>")
    join(room, BOB, "bob")
    assert room.occupants["bob"].role == "moderator"
    with pytest.raises(errors.Forbidden):
        admin_set(room, "<item affiliation='owner' jid='carol@other.example'/>", sender=BOB)
    with pytest.raises(errors.NotAllowed):
        admin_set(room, "<item affiliation='none' jid='alice@example.com'/>", sender=BOB)
    with pytest.raises(errors.NotAllowed):  # an admin keeps its role
        admin_set(room, "<item nick='bob' role='visitor'/>")
    with pytest.raises(errors.StanzaConflict):
        admin_set(room, "<item affiliation='member' jid='alice@example.com'/>")
    with pytest.raises(errors.BadRequest):
        admin_set(room, "<item affiliation='king' jid='bob@example.com'/>")
    out = admin_set(room, "<item affiliation='outcast' jid='bob@example.com'><reason>out</reason></item>")
    assert 301 in codes(to(out, ALICE)[1]) and "bob" not in room.occupants
    listing = send(room, f"<iq type='get' id='l' from='{ALICE}' to='{ROOM}'><query xmlns='{MUC_ADMIN}'>"
                         "<item affiliation='outcast'/></query></iq>")[0]
    assert [i.get("jid") for i in listing.element.iter(f"{{{MUC_ADMIN}}}item")] == ["bob@example.com"]


def test_losing_membership_of_a_members_only_room_is_321() -> None:
    room = owned(members_only=True)
    admin_set(room, "<item affiliation='member' jid='bob@example.com'/>")
    join(room, BOB, "bob")
    out = admin_set(room, "<item affiliation='none' jid='bob@example.com'/>")
    assert 321 in codes(to(out, BOB)[0]) and "bob" not in room.occupants


def test_too_many_affiliations_are_refused() -> None:
    room = make_room(fresh=True, limits=Limits(lock_new_rooms=False, max_affiliations=2))
    join(room, ALICE, "alice")
    admin_set(room, "<item affiliation='member' jid='a@x'/>")
    with pytest.raises(errors.NotAllowed):
        admin_set(room, "<item affiliation='member' jid='b@x'/>")


# -- configuration --------------------------------------------------------------------------------------


def test_the_configuration_form_round_trips_and_wrong_types_are_bad_requests() -> None:
    room = owned()
    join(room, BOB, "bob")
    with pytest.raises(errors.Forbidden):
        send(room, f"<iq type='get' id='g' from='{BOB}' to='{ROOM}'><query xmlns='{MUC_OWNER}'/></iq>")
    got = send(room, f"<iq type='get' id='g' from='{ALICE}' to='{ROOM}'><query xmlns='{MUC_OWNER}'/></iq>")[0]
    fields = {f.get("var") for f in got.element.iter(X + "field")}
    assert {"muc#roomconfig_persistentroom", "muc#roomconfig_membersonly", "muc#roomconfig_whois",
            "muc#roomconfig_enablearchiving", "muc#maxhistoryfetch"} <= fields
    for bad in ({"muc#roomconfig_persistentroom": "maybe"}, {"muc#roomconfig_maxusers": "lots"},
                {"muc#roomconfig_maxusers": "100000"}, {"muc#roomconfig_whois": "everyone"},
                {"muc#maxhistoryfetch": "-1"}, {"muc#roomconfig_passwordprotectedroom": "1"}):
        with pytest.raises(errors.BadRequest):
            owner_set(room, form(**bad))
    out = owner_set(room, form(**{"muc#roomconfig_membersonly": "1", "muc#roomconfig_roomname": "Coven",
                                  "muc#roomconfig_enablearchiving": "true"}))
    assert room.config.members_only and room.config.title == "Coven" and room.config.archiving
    assert {104, 170} <= codes(to(out, ALICE)[1])
    assert "bob" not in room.occupants and any(322 in codes(s) for s in to(out, BOB))


def test_config_forms_and_json_survive_a_round_trip() -> None:
    config = RoomConfig(title="T", persistent=True, max_users=50, whois="anyone", history_length=7)
    submitted = config_form(config, 200, 50)
    submitted.set("type", "submit")
    assert apply_form(RoomConfig(), submitted, 200, 50) == config
    assert RoomConfig.from_json(config.to_json()) == config
    assert RoomConfig.from_json({"max_users": "x", "public": 1, "title": 3}) == RoomConfig()
    with pytest.raises(FormError):
        apply_form(RoomConfig(), ET.fromstring(form(**{"FORM_TYPE": "other"})), 200, 50)


def test_destruction_sends_everyone_to_the_alternate_venue() -> None:
    room = owned()
    join(room, BOB, "bob")
    with pytest.raises(errors.Forbidden):
        owner_set(room, "<destroy/>", sender=BOB)
    out = owner_set(room, "<destroy jid='new@conference.example.com'><reason>moved</reason></destroy>")
    assert room.destroyed and out[0].type == "result"
    gone = to(out, BOB)[0]
    d = gone.element.find(f"{U}x/{U}destroy")
    assert gone.type == "unavailable" and d.get("jid") == "new@conference.example.com"
    assert d.findtext(f"{U}reason") == "moved"


# -- invitations ----------------------------------------------------------------------------------------


def test_mediated_invitations_and_declines() -> None:
    room = owned(members_only=True, password_protected=True, password="pw")
    out = send(room, f"<message from='{ALICE}' to='{ROOM}'><x xmlns='{MUC_USER}'><invite to='bob@example.com'>"
                     "<reason>join us</reason></invite></x></message>")
    inv = out[0]
    assert inv.to == "bob@example.com" and inv.from_ == ROOM
    assert inv.element.find(f"{U}x/{U}invite").get("from") == ALICE
    assert inv.element.findtext(f"{U}x/{U}password") == "pw"
    assert room.affiliation("bob@example.com") == "member"  # invited by an owner into a members-only room
    out = send(room, f"<message from='{BOB}' to='{ROOM}'><x xmlns='{MUC_USER}'><decline to='{ALICE}'>"
                     "<reason>busy</reason></decline></x></message>")
    assert out[0].to == ALICE and out[0].element.find(f"{U}x/{U}decline").get("from") == "bob@example.com"
    with pytest.raises(errors.NotAcceptable):
        send(room, f"<message from='{CAROL}' to='{ROOM}'><x xmlns='{MUC_USER}'><invite to='x@y'/></x></message>")


def test_occupants_invite_only_when_the_room_allows_it() -> None:
    room = owned()
    join(room, BOB, "bob")
    invite = f"<message from='{BOB}' to='{ROOM}'><x xmlns='{MUC_USER}'><invite to='carol@other.example'/></x></message>"
    with pytest.raises(errors.Forbidden):
        send(room, invite)
    room.do({"op": "config", "config": {**room.config.to_json(), "allow_invites": True}})
    assert send(room, invite)[0].to == "carol@other.example"


# -- disco, pings, IQs between occupants ----------------------------------------------------------------


def test_disco_info_and_items() -> None:
    room = owned(title="The Coven")
    join(room, BOB, "bob")
    info = send(room, f"<iq type='get' id='i' from='{CAROL}' to='{ROOM}'><query xmlns='{ns.DISCO_INFO}'/></iq>")[0]
    features = {f.get("var") for f in info.element.iter(f"{{{ns.DISCO_INFO}}}feature")}
    assert {MUC, "muc_temporary", "muc_public", "muc_open", "muc_semianonymous", SID, OCCUPANT_ID} <= features
    values = {f.get("var"): f.findtext(X + "value") for f in info.element.iter(X + "field")}
    assert values["muc#roominfo_occupants"] == "2" and values["muc#roomconfig_roomname"] == "The Coven"
    items = send(room, f"<iq type='get' id='i' from='{CAROL}' to='{ROOM}'><query xmlns='{ns.DISCO_ITEMS}'/></iq>")[0]
    assert len(items.element.find(f"{{{ns.DISCO_ITEMS}}}query")) == 0  # not an occupant: no list
    items = send(room, f"<iq type='get' id='i' from='{BOB}' to='{ROOM}'><query xmlns='{ns.DISCO_ITEMS}'/></iq>")[0]
    assert len(items.element.find(f"{{{ns.DISCO_ITEMS}}}query")) == 2


def test_self_ping_and_iqs_between_occupants() -> None:
    room = owned()
    join(room, BOB, "bob")
    pong = send(room, f"<iq type='get' id='p' from='{BOB}' to='{ROOM}/bob'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert pong[0].type == "result" and pong[0].to == BOB and pong[0].id == "p"
    with pytest.raises(errors.NotAcceptable):
        send(room, f"<iq type='get' id='p' from='{CAROL}' to='{ROOM}/bob'><ping xmlns='urn:xmpp:ping'/></iq>")
    fwd = send(room, f"<iq type='get' id='v' from='{BOB}' to='{ROOM}/alice'><vCard xmlns='vcard-temp'/></iq>")[0]
    assert fwd.to == ALICE and fwd.from_ == f"{ROOM}/bob" and fwd.id != "v"
    back = send(room, f"<iq type='result' id='{fwd.id}' from='{ALICE}' to='{ROOM}/bob'/>")[0]
    assert back.to == BOB and back.id == "v" and back.from_ == f"{ROOM}/alice"


# -- copies ---------------------------------------------------------------------------------------------


def test_a_copy_fed_the_operations_equals_the_room() -> None:
    room = make_room(fresh=True)
    copy = make_room()
    snapshots = [room.snapshot()]

    def step(out: list[Stanza]) -> None:
        for op in room.take_ops():
            copy.apply(op)

    step(join(room, ALICE, "alice"))
    step(join(room, BOB, "bob"))
    step(say(room, BOB, "hi"))
    step(send(room, f"<presence from='{BOB}' to='{ROOM}/robert'><show>away</show></presence>"))
    step(admin_set(room, "<item affiliation='member' jid='carol@other.example'/>"))
    step(owner_set(room, form(**{"muc#roomconfig_persistentroom": "1"})))
    assert copy.snapshot() == room.snapshot() != snapshots[0]
    restored = make_room()
    restored.restore(room.snapshot())
    assert restored.snapshot() == room.snapshot()
    assert restored.nick_of == room.nick_of


def test_the_sequencer_is_the_same_for_everyone_and_moves_only_its_own_rooms() -> None:
    rooms = [f"r{i}@conference.example.com" for i in range(200)]
    before = {r: sequencer(r, ["n1", "n2", "n3"]) for r in rooms}
    assert set(before.values()) == {"n1", "n2", "n3"}
    after = {r: sequencer(r, ["n1", "n3"]) for r in rooms}
    assert all(after[r] == before[r] for r in rooms if before[r] != "n2")


def test_presence_floods_are_dropped() -> None:
    room = owned(limits=None)
    join(room, BOB, "bob")
    sent = [send(room, f"<presence from='{BOB}' to='{ROOM}/bob'><status>{i}</status></presence>", NOW + 1)
            for i in range(50)]
    assert sum(1 for out in sent if out) <= 10 and room.dropped >= 40
    later = send(room, f"<presence from='{BOB}' to='{ROOM}/bob'><status>calm</status></presence>", NOW + 5)
    assert later and later[0].element.findtext(C + "status") == "calm"
