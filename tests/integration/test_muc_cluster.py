"""MUC in a two-node region with real processes and slixmpp's ``xep_0045``: a room created
through one node is joined through the other; its configuration, affiliations, occupants,
subject and history are the same on both members; then the member that sequences it is killed
with SIGKILL — its occupants leave with status 332, the occupant on the survivor stays (no
unavailable presence for itself), keeps chatting, and a newcomer on the survivor gets the subject
and the history from before the kill."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from slixmpp import JID

from cluster_node.modules.muc.service import sequencer
from cluster_node.net.control import control_socket, query_control
from tests.helpers.node import NodeProcess
from tests.helpers.topologies import close, two_node_region

from .test_muc import PASSWORD, SERVICE, MucClient, create

NAMES = ("m1", "m2")


async def room_state(node: NodeProcess, room: str) -> dict[str, Any] | None:
    status, body = await query_control(control_socket(node.workdir / "data"), "muc", "room", {"room": room})
    return body["data"]["muc"]["room"] if status == 200 else None


async def until_peer(node: NodeProcess, other: str, timeout: float = 10.0) -> list[str]:
    """The members ``node``'s module knows run MUC, once ``other`` is among them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status, body = await query_control(control_socket(node.workdir / "data"), "muc", "status")
        peers: list[str] = body["data"]["muc"]["status"]["peers"] if status == 200 else []
        if other in peers or asyncio.get_running_loop().time() > deadline:
            return peers
        await asyncio.sleep(0.1)


def room_sequenced_by(member: str) -> JID:
    """A fresh room name that rendezvous hashing gives to ``member`` (so the test knows whom to kill)."""
    while True:
        room = f"room{uuid.uuid4().hex[:6]}@{SERVICE}"
        if sequencer(room, NAMES) == member:
            return JID(room)


@pytest.fixture
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    with two_node_region(tmp_path_factory.mktemp("muc-region"), names=NAMES, password=PASSWORD,
                         users=("alice", "bob", "carol", "dave", "erin")) as nodes:
        yield nodes


async def client(node: NodeProcess, name: str) -> MucClient:
    c = MucClient(node, f"{name}@localhost/{uuid.uuid4().hex[:4]}")
    await c.online(node.port, roster=False)
    return c


async def test_a_room_survives_the_kill_of_its_member(region: list[NodeProcess]) -> None:
    m1, m2 = region
    for n, other in ((m1, "m2"), (m2, "m1")):  # the modules know each other (a hello on joining)
        assert other in await until_peer(n, other)
    room = room_sequenced_by("m1")
    alice, carol = await client(m1, "alice"), await client(m1, "carol")
    bob, erin = await client(m2, "bob"), await client(m2, "erin")
    try:
        await create(alice, room, "Alice", **{"muc#roomconfig_roomname": "Resilient",
                                              "muc#roomconfig_persistentroom": True})
        await bob.muc.join_muc_wait(room, "Bob", timeout=10)
        await carol.muc.join_muc_wait(room, "Carol", timeout=10)
        await erin.muc.join_muc_wait(room, "Erin", timeout=10)
        await alice.muc.set_affiliation(room, "member", jid=JID("dave@localhost"), timeout=10)
        alice.muc.set_subject(room, "Before the storm")
        bob.send_message(mto=room, mbody="one", mtype="groupchat")
        await alice.said("one")
        await carol.said("one")
        alice.send_message(mto=room, mbody="one more", mtype="groupchat")  # m2's two: in one cluster frame
        await bob.said("one more")
        await erin.said("one more")

        states = [await room_state(n, str(room)) for n in region]
        assert states[0] == states[1] and states[0] is not None
        assert states[0]["sequencer"] == "m1" and states[0]["subject"] == "Before the storm"
        assert [o["nick"] for o in states[0]["occupants"]] == ["Alice", "Bob", "Carol", "Erin"]
        assert states[0]["affiliations"] == {"alice@localhost": "owner", "dave@localhost": "member"}

        m1.stop(signal.SIGKILL)
        left: set[str] = set()
        while left != {"Alice", "Carol"}:
            p = await asyncio.wait_for(bob.muc_presence.get(), 15)
            if p["type"] == "unavailable":
                assert 332 in p["muc"]["status_codes"] and p["from"].resource != "Bob"
                left.add(p["from"].resource)
        after = await room_state(m2, str(room))
        assert after is not None and after["sequencer"] == "m2"
        assert [o["nick"] for o in after["occupants"]] == ["Bob", "Erin"]
        assert after["config"]["title"] == "Resilient" and after["affiliations"]["dave@localhost"] == "member"

        bob.send_message(mto=room, mbody="two", mtype="groupchat")
        await bob.said("two")
        with pytest.raises(asyncio.TimeoutError):  # bob never left
            await bob.presence_of("Bob", ptype="unavailable", timeout=1.0)

        dave = await client(m2, "dave")
        try:
            pres, subject, occupants, history = await dave.muc.join_muc_wait(room, "Dave", timeout=10)
            assert pres["muc"]["affiliation"] == "member"
            assert subject["subject"] == "Before the storm"
            assert [h["body"] for h in history] == ["one", "one more", "two"]
            assert {p["from"].resource for p in occupants} == {"Bob", "Dave", "Erin"}
        finally:
            await close(dave)
    finally:
        await close(alice, bob, carol, erin)
