"""XEP-0045 Multi-User Chat on one node with real clients and slixmpp's own plugins (``xep_0045``,
``xep_0004``, ``xep_0249``, ``xep_0410``, ``xep_0030``), raw stanzas where a plugin has no call
for it: a room created and configured, joined, chatted in with stanza and occupant ids, its
subject set, history asked for with limits, nicks changed, an occupant kicked and banned, private
messages, invitations (mediated and direct), members-only and password-protected rooms, disco of
the service and the room, self-pings, destruction with an alternate venue, a persistent room
across a restart — and bad input answered with the XEP's errors while the node stays up."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError, PresenceError

from tests.helpers.node import NodeProcess
from tests.helpers.topologies import close, one_node
from tests.helpers.xmpp_client import Client
from tests.helpers.xmpp_raw import CLIENT, RawClient, local

PASSWORD = "muc-secret"
SERVICE = "conference.localhost"
MUC_USER = "http://jabber.org/protocol/muc#user"
SID = "urn:xmpp:sid:0"
OCCUPANT_ID = "urn:xmpp:occupant-id:0"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


class MucClient(Client):
    """A client with slixmpp's MUC plugins; groupchat messages and MUC presences are queued."""

    def __init__(self, node: NodeProcess, jid: str, password: str = PASSWORD) -> None:
        super().__init__(jid, password, cert=node.cert)
        for plugin in ("xep_0004", "xep_0045", "xep_0249", "xep_0410"):
            self.register_plugin(plugin)
        self.groupchat: asyncio.Queue[Any] = asyncio.Queue()
        self.muc_presence: asyncio.Queue[Any] = asyncio.Queue()
        self.direct_invites: asyncio.Queue[Any] = asyncio.Queue()
        self.add_event_handler("groupchat_message", lambda m: self.groupchat.put_nowait(m))
        self.add_event_handler("groupchat_presence", lambda p: self.muc_presence.put_nowait(p))
        self.add_event_handler("groupchat_direct_invite", lambda m: self.direct_invites.put_nowait(m))

    @property
    def muc(self) -> Any:
        return self.plugin["xep_0045"]

    async def said(self, body: str, timeout: float = 10.0) -> Any:
        """The next groupchat message with ``body`` (earlier ones are dropped)."""
        while True:
            msg = await asyncio.wait_for(self.groupchat.get(), timeout)
            if msg["body"] == body:
                return msg

    async def presence_of(self, nick: str, *, codes: frozenset[int] = frozenset(), ptype: str | None = None,
                          timeout: float = 10.0) -> Any:
        while True:
            p = await asyncio.wait_for(self.muc_presence.get(), timeout)
            if p["from"].resource == nick and codes <= set(p["muc"]["status_codes"]) \
                    and (ptype is None or p["type"] == ptype):
                return p


def room_jid(name: str = "room") -> JID:
    return JID(f"{name}{uuid.uuid4().hex[:6]}@{SERVICE}")


async def create(client: MucClient, room: JID, nick: str, **fields: Any) -> Any:
    """Join ``room`` (new: 201), then configure it with ``fields`` (an instant room if none)."""
    pres, _subject, _occupants, _history = await client.muc.join_muc_wait(room, nick, timeout=10)
    assert 201 in pres["muc"]["status_codes"]
    form = await client.muc.get_room_config(room, timeout=10)
    for var, value in fields.items():
        form.field[var]["value"] = value
    form["type"] = "submit"
    await client.muc.set_room_config(room, form, timeout=10)
    return pres


def condition(e: PresenceError | IqError) -> str:
    return str(e.iq["error"]["condition"]) if isinstance(e, IqError) else str(e.presence["error"]["condition"])


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with one_node(tmp_path_factory.mktemp("muc-node"), "muc1", users=("alice", "bob", "carol", "dave"),
                  password=PASSWORD, settings={"modules": {"muc": {"max_nick_length": 32}}}) as n:
        yield n


async def clients(node: NodeProcess, *names: str) -> list[MucClient]:
    out = []
    for name in names:
        c = MucClient(node, f"{name}@localhost/{uuid.uuid4().hex[:4]}")
        await c.online(node.port, roster=False)
        out.append(c)
    return out


async def test_create_join_chat_subject_history(node: NodeProcess) -> None:
    alice, bob, carol = await clients(node, "alice", "bob", "carol")
    room = room_jid()
    try:
        await create(alice, room, "Alice", **{"muc#roomconfig_roomname": "Witches", "muc#maxhistoryfetch": "5"})
        await bob.muc.join_muc_wait(room, "Bob", timeout=10)
        joined = await alice.presence_of("Bob")
        assert str(joined["muc"]["jid"]) == str(bob.boundjid)  # alice moderates: she sees real JIDs

        alice.muc.set_subject(room, "Potions")
        for i in range(4):
            alice.send_message(mto=room, mbody=f"m{i}", mtype="groupchat")
        msg = await bob.said("m3")
        assert msg["from"] == JID(f"{room}/Alice")
        sid = msg.xml.find(f"{{{SID}}}stanza-id")
        assert sid is not None and sid.get("by") == str(room)
        assert msg.xml.find(f"{{{OCCUPANT_ID}}}occupant-id") is not None
        await alice.said("m3")  # the sender gets its own message back

        pres, subject, occupants, history = await carol.muc.join_muc_wait(room, "Carol", maxstanzas=2, timeout=10)
        assert subject["subject"] == "Potions"
        assert [h["body"] for h in history] == ["m2", "m3"]
        assert {p["from"].resource for p in occupants} == {"Alice", "Bob", "Carol"}  # slixmpp counts itself
        assert not occupants[0]["muc"]["jid"]  # a participant does not see real JIDs

        await carol.muc.set_self_nick(room, "Caroline", timeout=10)
        gone = await bob.presence_of("Carol", codes=frozenset({303}), ptype="unavailable")
        assert gone["muc"]["item"]["nick"] == "Caroline"

        bob.send_message(mto=JID(f"{room}/Caroline"), mbody="psst", mtype="chat")
        pm = await carol.next_message(10)
        while pm["type"] != "chat":  # the history and the groupchat before it
            pm = await carol.next_message(10)
        assert pm["from"] == JID(f"{room}/Bob") and pm["body"] == "psst"

        pr, _, _, history = await (await clients(node, "dave"))[0].muc.join_muc_wait(room, "Dave", maxchars=0,
                                                                                     timeout=10)
        assert history == []
    finally:
        await close(alice, bob, carol)


async def test_kick_ban_and_roles(node: NodeProcess) -> None:
    alice, bob = await clients(node, "alice", "bob")
    room = room_jid()
    try:
        await create(alice, room, "Alice")
        await bob.muc.join_muc_wait(room, "Bob", timeout=10)
        with pytest.raises(IqError) as e:
            await bob.muc.set_role(room, "Alice", "none", timeout=10)
        assert condition(e.value) in ("forbidden", "not-allowed")
        await alice.muc.set_role(room, "Bob", "visitor", reason="hush", timeout=10)
        with pytest.raises(asyncio.TimeoutError):
            bob.send_message(mto=room, mbody="muted?", mtype="groupchat")
            await alice.said("muted?", timeout=1.0)
        await alice.muc.set_role(room, "Bob", "none", reason="out", timeout=10)
        kicked = await bob.presence_of("Bob", codes=frozenset({110, 307}), ptype="unavailable")
        assert kicked["muc"]["item"]["reason"] == "out"
        await bob.muc.join_muc_wait(room, "Bob", timeout=10)
        await alice.muc.set_affiliation(room, "outcast", jid=bob.boundjid.bare, reason="banned", timeout=10)
        await bob.presence_of("Bob", codes=frozenset({301}), ptype="unavailable")
        assert await alice.muc.get_affiliation_list(room, "outcast", timeout=10) == [bob.boundjid.bare]
        with pytest.raises(PresenceError) as pe:
            await bob.muc.join_muc_wait(room, "Bob", timeout=10)
        assert condition(pe.value) == "forbidden"
    finally:
        await close(alice, bob)


async def test_members_only_password_and_invitations(node: NodeProcess) -> None:
    alice, bob, carol = await clients(node, "alice", "bob", "carol")
    room, locked = room_jid("members"), room_jid("secret")
    try:
        await create(alice, room, "Alice", **{"muc#roomconfig_membersonly": True})
        with pytest.raises(PresenceError) as pe:
            await bob.muc.join_muc_wait(room, "Bob", timeout=10)
        assert condition(pe.value) == "registration-required"
        alice.muc.invite(room, bob.boundjid.bare, reason="come in")  # an owner's invitation makes bob a member
        invite = await bob.next_message(10, body=False)
        assert invite["from"] == room and invite["muc"]["invite"]["reason"] == "come in"
        await bob.muc.join_muc_wait(room, "Bob", timeout=10)

        carol.plugin["xep_0249"].send_invitation(alice.boundjid, room, reason="direct")
        direct = await asyncio.wait_for(alice.direct_invites.get(), 10)
        assert direct["groupchat_invite"]["jid"] == room

        await create(alice, locked, "Alice", **{"muc#roomconfig_passwordprotectedroom": True,
                                                 "muc#roomconfig_roomsecret": "open sesame"})
        with pytest.raises(PresenceError) as pe:
            await carol.muc.join_muc_wait(locked, "Carol", timeout=10)
        assert condition(pe.value) == "not-authorized"
        await carol.muc.join_muc_wait(locked, "Carol", password="open sesame", timeout=10)
    finally:
        await close(alice, bob, carol)


async def test_disco_self_ping_and_destruction(node: NodeProcess) -> None:
    alice, bob = await clients(node, "alice", "bob")
    room = room_jid("lobby")
    try:
        await create(alice, room, "Alice", **{"muc#roomconfig_roomname": "Lobby"})
        items = await alice.plugin["xep_0030"].get_items(jid="localhost", timeout=10)
        assert SERVICE in {str(i[0]) for i in items["disco_items"]["items"]}
        info = await alice.plugin["xep_0030"].get_info(jid=SERVICE, timeout=10)
        assert "http://jabber.org/protocol/muc" in info["disco_info"]["features"]
        listed = await alice.plugin["xep_0030"].get_items(jid=SERVICE, timeout=10)
        assert (str(room), None, "Lobby") in [(str(j), n, name) for j, n, name in listed["disco_items"]["items"]]
        info = await bob.plugin["xep_0030"].get_info(jid=room, timeout=10)
        features = info["disco_info"]["features"]
        assert {"muc_temporary", "muc_public", OCCUPANT_ID, SID} <= set(features)
        await bob.muc.join_muc_wait(room, "Bob", timeout=10)
        ping = bob.plugin["xep_0410"]
        assert (await ping.send_self_ping(JID(f"{room}/Bob"), timeout=10)).name == "JOINED"
        with pytest.raises(IqError) as e:
            await bob.plugin["xep_0199"].send_ping(JID(f"{room}/Nobody"), timeout=10)
        assert condition(e.value) == "item-not-found"
        await alice.muc.destroy(room, reason="moving", altroom=f"new@{SERVICE}", timeout=10)
        gone = await bob.presence_of("Bob", ptype="unavailable")
        destroy = gone.xml.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}destroy")
        assert destroy is not None and destroy.get("jid") == f"new@{SERVICE}"
        assert (await ping.send_self_ping(JID(f"{room}/Bob"), timeout=10)).name == "DISCONNECTED"
    finally:
        await close(alice, bob)


async def test_bad_input_gets_the_xeps_errors(node: NodeProcess) -> None:
    alice, bob = await clients(node, "alice", "bob")
    room = room_jid()
    try:
        await create(alice, room, "Alice")
        await bob.muc.join_muc_wait(room, "Bob", timeout=10)
        raw = RawClient(node.port, node.cert)
        await raw.start("carol", PASSWORD, "raw", sm=False)
        raw.send(f"<presence to='{room}/{'x' * 10_240}'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        refused = await raw.next(lambda el: local(el) == "presence")
        assert refused.get("type") == "error"
        assert refused.find(f"{{{CLIENT}}}error/{{{STANZAS}}}jid-malformed") is not None
        await raw.close()
        for nick, expected in (("y" * 100, "not-acceptable"), ("Bob", "conflict")):
            with pytest.raises(PresenceError) as pe:
                await (await clients(node, "carol"))[0].muc.join_muc_wait(room, nick, timeout=10)
            assert condition(pe.value) == expected, nick
        alice.send_message(mto=JID(f"nosuchroom@{SERVICE}"), mbody="hello?", mtype="groupchat")
        error = await alice.next_message(10, body=False)
        while error["type"] != "error":
            error = await alice.next_message(10, body=False)
        assert error["error"]["condition"] == "item-not-found"
        dave = (await clients(node, "dave"))[0]
        dave.send_message(mto=room, mbody="not in", mtype="groupchat")
        error = await dave.next_message(10, body=False)
        assert error["type"] == "error" and error["error"]["condition"] == "not-acceptable"
        _, _, _, history = await dave.muc.join_muc_wait(room, "Dave", maxstanzas=10**9, timeout=10)
        assert history == []
        form = await alice.muc.get_room_config(room, timeout=10)
        form.field["muc#roomconfig_maxusers"]["value"] = "lots"
        form["type"] = "submit"
        with pytest.raises(IqError) as e:
            await alice.muc.set_room_config(room, form, timeout=10)
        assert condition(e.value) == "bad-request"
    finally:
        await close(alice, bob)
    assert node.alive()


async def test_a_persistent_room_outlives_a_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    with one_node(tmp_path_factory.mktemp("muc-restart"), "muc2", users=("alice", "bob"), password=PASSWORD) as n:
        alice, = await clients(n, "alice")
        room = room_jid("keep")
        try:
            await create(alice, room, "Alice", **{"muc#roomconfig_persistentroom": True,
                                                  "muc#roomconfig_roomname": "Kept"})
            await alice.muc.set_affiliation(room, "member", jid=JID("bob@localhost"), timeout=10)
            alice.muc.set_subject(room, "Still here")
            await alice.muc.set_self_nick(room, "A", timeout=10)  # a round trip: the subject was handled
        finally:
            await close(alice)
        n.stop()
        n.start()
        bob, = await clients(n, "bob")
        try:
            pres, subject, _, _ = await bob.muc.join_muc_wait(room, "Bob", timeout=10)
            assert 201 not in pres["muc"]["status_codes"] and pres["muc"]["affiliation"] == "member"
            assert subject["subject"] == "Still here"
            info = await bob.plugin["xep_0030"].get_info(jid=room, timeout=10)
            assert "muc_persistent" in info["disco_info"]["features"]
        finally:
            await close(bob)


async def test_the_admin_api_manages_rooms_with_mongooseims_operations(node: NodeProcess) -> None:
    room = room_jid("admin")

    async def gql(query: str, **variables: Any) -> Any:
        status, body = await node.admin(query, variables)
        assert status == 200 and "errors" not in body, body
        return body["data"]["muc"]

    created = await gql("mutation($room: JID!) { muc { createInstantRoom(room: $room, owner: \"alice@localhost\", "
                        "nick: \"Alice\") { jid title private usersNumber } } }", room=str(room))
    assert created["createInstantRoom"] == {"jid": str(room), "title": room.user, "private": False, "usersNumber": 0}
    bob, = await clients(node, "bob")
    try:
        await bob.muc.join_muc_wait(room, "Bob", timeout=10)  # an instant room: not locked
        listed = await gql("{ muc { listRooms(mucDomain: \"conference.localhost\") { rooms { jid usersNumber } "
                           "count } } }")
        assert {"jid": str(room), "usersNumber": 1} in listed["listRooms"]["rooms"]
        users = await gql("query($room: JID!) { muc { listRoomUsers(room: $room) { jid nick role } } }", room=str(room))
        assert users["listRoomUsers"] == [{"jid": str(bob.boundjid), "nick": "Bob", "role": "PARTICIPANT"}]
        config = await gql("mutation($room: JID!) { muc { changeRoomConfiguration(room: $room, config: {title: "
                           "\"Admin's\", moderated: true, persistent: true}) { title moderated persistent } } }",
                           room=str(room))
        assert config["changeRoomConfiguration"] == {"title": "Admin's", "moderated": True, "persistent": True}
        await gql("mutation($room: JID!) { muc { sendMessageToRoom(room: $room, from: \"alice@localhost/api\", "
                  "body: \"not an occupant\") } }", room=str(room))
        await gql("mutation($room: JID!) { muc { setUserAffiliation(room: $room, user: \"bob@localhost\", "
                  "affiliation: ADMIN) } }", room=str(room))
        promoted = await bob.presence_of("Bob", codes=frozenset({110}))
        while promoted["muc"]["affiliation"] != "admin":  # the join, then voice taken by moderation
            promoted = await bob.presence_of("Bob", codes=frozenset({110}))
        assert promoted["muc"]["role"] == "moderator"
        affs = await gql("query($room: JID!) { muc { listRoomAffiliations(room: $room) { jid affiliation } } }",
                         room=str(room))
        assert affs["listRoomAffiliations"] == [{"jid": "alice@localhost", "affiliation": "OWNER"},
                                                {"jid": "bob@localhost", "affiliation": "ADMIN"}]
        kicked = await gql("mutation($room: JID!) { muc { kickUser(room: $room, nick: \"Bob\", reason: \"api\") } }",
                           room=str(room))
        assert "errors" not in kicked
        status, body = await node.admin("mutation($room: JID!) { muc { kickUser(room: $room, nick: \"Nobody\") } }",
                                        {"room": str(room)})
        assert body["errors"][0]["message"].startswith("no occupant")
        await gql("mutation($room: JID!) { muc { deleteRoom(room: $room, reason: \"done\") } }", room=str(room))
        status, body = await node.admin("query($room: JID!) { muc { getRoomConfig(room: $room) { title } } }",
                                        {"room": str(room)})
        assert "there is no room" in body["errors"][0]["message"]
        out = node.ctl("muc", "list-rooms", "--muc-domain", SERVICE).stdout
        assert str(room) not in out and '"listRooms"' in out
    finally:
        await close(bob)


async def test_the_rooms_archive_pages_with_slixmpps_mam(node: NodeProcess) -> None:
    alice, bob = await clients(node, "alice", "bob")
    bob.register_plugin("xep_0313")
    room = room_jid("archived")
    try:
        await create(alice, room, "Alice", **{"muc#roomconfig_enablearchiving": True})
        pres, _, _, _ = await bob.muc.join_muc_wait(room, "Bob", timeout=10)
        assert 170 in pres["muc"]["status_codes"]
        info = await bob.plugin["xep_0030"].get_info(jid=room, timeout=10)
        assert "urn:xmpp:mam:2" in info["disco_info"]["features"]
        for i in range(5):
            alice.send_message(mto=room, mbody=f"a{i}", mtype="groupchat")
        live = [await bob.said(f"a{i}") for i in range(5)]
        archived = [msg async for msg in bob.plugin["xep_0313"].iterate(jid=room, rsm={"max": 2})]
        bodies = [m["mam_result"]["forwarded"]["stanza"]["body"] for m in archived]
        assert bodies == [f"a{i}" for i in range(5)]
        # the archive's ids are the stanza ids the room gave the live messages
        assert [m["mam_result"]["id"] for m in archived] == [m.xml.find(f"{{{SID}}}stanza-id").get("id") for m in live]
    finally:
        await close(alice, bob)
