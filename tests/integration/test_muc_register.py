"""XEP-0045 §7.10 nick registration (``jabber:iq:register`` to a room) with real slixmpp clients:
the form, a registration (the nick is kept for its owner: others get ``conflict`` joining or
registering it, the owner finds it with ``x-roomuser-item``, and becomes a member),
``<registered/>`` on a second request, its removal, and bad forms answered with the XEP's errors
while the node stays up — on one node, and across the two nodes of a region (a nick registered
through one node is kept on the other, its removal seen there too)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError, PresenceError

from tests.helpers.node import NodeProcess
from tests.helpers.topologies import close, one_node, two_node_region

from .test_muc import PASSWORD, SERVICE, MucClient, clients, condition, create, room_jid

REGISTER = "jabber:iq:register"
DATA = "jabber:x:data"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with one_node(tmp_path_factory.mktemp("muc-register"), "mucreg1", users=("alice", "bob", "carol"),
                  password=PASSWORD, settings={"modules": {"muc": {"max_nick_length": 32}}}) as n:
        yield n


async def ask(client: MucClient, room: JID) -> ET.Element:
    iq = client.make_iq_get(queryxmlns=REGISTER, ito=room)
    result = await iq.send(timeout=10)
    query = result.xml.find(f"{{{REGISTER}}}query")
    assert query is not None
    return query


async def submit(client: MucClient, room: JID, nick: str | None, *, form_type: str = "submit",
                 extra: str = "") -> Any:
    """A ``muc#register`` form (``nick`` None: no nick field), or ``<remove/>`` with ``extra``."""
    iq = client.make_iq_set(ito=room)
    query = ET.SubElement(iq.xml, f"{{{REGISTER}}}query")
    if extra:
        query.append(ET.fromstring(extra))
    else:
        x = ET.SubElement(query, f"{{{DATA}}}x", {"type": form_type})
        for var, value in (("FORM_TYPE", "http://jabber.org/protocol/muc#register"),
                           ("muc#register_roomnick", nick)):
            if value is not None:
                field = ET.SubElement(x, f"{{{DATA}}}field", {"var": var})
                ET.SubElement(field, f"{{{DATA}}}value").text = value
    return await iq.send(timeout=10)


async def reserved_nick(client: MucClient, room: JID) -> str | None:
    info = await client.plugin["xep_0030"].get_info(jid=room, node="x-roomuser-item", timeout=10)
    names = [name for _cat, _type, _lang, name in info["disco_info"]["identities"]]
    return names[0] if names else None


async def test_a_registered_nick_is_kept_for_its_owner(node: NodeProcess) -> None:
    alice, bob, carol = await clients(node, "alice", "bob", "carol")
    room = room_jid("reg")
    try:
        await create(alice, room, "Alice", **{"muc#roomconfig_moderatedroom": True})
        info = await bob.plugin["xep_0030"].get_info(jid=room, timeout=10)
        assert REGISTER in info["disco_info"]["features"]
        query = await ask(bob, room)
        form = query.find(f"{{{DATA}}}x")
        assert form is not None and form.get("type") == "form"
        fields = {f.get("var"): f for f in form.findall(f"{{{DATA}}}field")}
        assert fields["FORM_TYPE"].findtext(f"{{{DATA}}}value") == "http://jabber.org/protocol/muc#register"
        assert fields["muc#register_roomnick"].find(f"{{{DATA}}}required") is not None

        await bob.muc.join_muc_wait(room, "Bobby", timeout=10)  # a visitor in a moderated room
        await submit(bob, room, "Bob")
        voiced = await bob.presence_of("Bobby")  # his join, then: registering made him a member, with voice
        while voiced["muc"]["affiliation"] != "member":
            voiced = await bob.presence_of("Bobby")
        assert voiced["muc"]["role"] == "participant"
        query = await ask(bob, room)
        assert query.find(f"{{{REGISTER}}}registered") is not None
        assert query.findtext(f"{{{REGISTER}}}username") == "Bob"
        assert await reserved_nick(bob, room) == "Bob"
        assert await alice.muc.get_affiliation_list(room, "member", timeout=10) == [bob.boundjid.bare]

        with pytest.raises(PresenceError) as pe:  # the nick is bob's, even while he is not using it
            await carol.muc.join_muc_wait(room, "Bob", timeout=10)
        assert condition(pe.value) == "conflict"
        for nick in ("Bob", "Bobby", "Alice"):  # reserved, in use by bob, in use by alice
            with pytest.raises(IqError) as e:
                await submit(carol, room, nick)
            assert condition(e.value) == "conflict", nick
        await submit(bob, room, "Robert")  # a new registration replaces the old one
        assert await reserved_nick(bob, room) == "Robert"
        await carol.muc.join_muc_wait(room, "Bob", timeout=10)

        await submit(alice, room, "Boss")  # an owner registers a nick and stays owner
        assert await reserved_nick(alice, room) == "Boss"
        assert alice.boundjid.bare in await alice.muc.get_affiliation_list(room, "owner", timeout=10)

        await submit(bob, room, None, extra=f"<remove xmlns='{REGISTER}'/>")
        assert await reserved_nick(bob, room) is None
        assert await alice.muc.get_affiliation_list(room, "member", timeout=10) == []
        assert (await ask(bob, room)).find(f"{{{REGISTER}}}registered") is None
        with pytest.raises(IqError) as e:
            await submit(bob, room, None, extra=f"<remove xmlns='{REGISTER}'/>")
        assert condition(e.value) == "item-not-found"
    finally:
        await close(alice, bob, carol)


async def test_bad_registrations_get_the_xeps_errors(node: NodeProcess) -> None:
    alice, bob = await clients(node, "alice", "bob")
    room, members = room_jid("regbad"), room_jid("regmembers")
    try:
        await create(alice, room, "Alice")
        for nick, expected in (("x" * 10_240, "not-acceptable"), ("bad\u0085nick", "not-acceptable"),
                               ("   ", "not-acceptable"), (None, "bad-request")):
            with pytest.raises(IqError) as e:
                await submit(bob, room, nick)
            assert condition(e.value) == expected, repr(nick)[:20]
        with pytest.raises(IqError) as e:
            await submit(bob, room, "Bob", extra=f"<nothing xmlns='{REGISTER}'/>")
        assert condition(e.value) == "bad-request"
        await submit(bob, room, "Bob", form_type="cancel")  # a cancelled form registers nothing
        assert await reserved_nick(bob, room) is None

        await alice.muc.set_affiliation(room, "outcast", jid=bob.boundjid.bare, timeout=10)
        with pytest.raises(IqError) as e:
            await submit(bob, room, "Bob")
        assert condition(e.value) == "forbidden"

        await create(alice, members, "Alice", **{"muc#roomconfig_membersonly": True})
        with pytest.raises(IqError) as e:  # in a members-only room, the admins choose the members
            await submit(bob, members, "Bob")
        assert condition(e.value) == "not-allowed"
        with pytest.raises(IqError) as e:
            await submit(bob, JID(f"nosuchroom@{SERVICE}"), "Bob")
        assert condition(e.value) == "item-not-found"
    finally:
        await close(alice, bob)
    assert node.alive()


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    with two_node_region(tmp_path_factory.mktemp("muc-register-region"), names=("mreg1", "mreg2"),
                         users=("alice", "bob", "carol"), password=PASSWORD,
                         settings={"modules": {"muc": {"max_nick_length": 32}}}) as nodes:
        yield nodes


async def test_a_nick_registered_through_one_node_is_kept_on_the_other(region: list[NodeProcess]) -> None:
    r1, r2 = region
    alice, bob = await clients(r1, "alice", "bob")
    carol, bob_elsewhere = await clients(r2, "carol", "bob")
    room = room_jid("reg-region")
    try:
        await create(alice, room, "Alice")
        await submit(bob, room, "Bob")  # through mreg1
        assert await reserved_nick(bob_elsewhere, room) == "Bob"  # bob's session on mreg2 finds it
        with pytest.raises(PresenceError) as pe:  # carol, on mreg2, may not take it
            await carol.muc.join_muc_wait(room, "Bob", timeout=10)
        assert condition(pe.value) == "conflict"
        with pytest.raises(IqError) as e:
            await submit(carol, room, "Bob")
        assert condition(e.value) == "conflict"
        await submit(bob_elsewhere, room, None, extra=f"<remove xmlns='{REGISTER}'/>")  # through mreg2
        assert await reserved_nick(bob, room) is None  # seen through mreg1
        await carol.muc.join_muc_wait(room, "Bob", timeout=10)
    finally:
        await close(alice, bob, carol, bob_elsewhere)
