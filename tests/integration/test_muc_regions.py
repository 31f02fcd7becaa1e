"""MUC across two regions of one domain (eu and us: a node and a gateway each, Redis for the
mapping), with the rooms homed in eu (``home_cluster = "eu"``): eu's members publish
``conference.example.com`` to the mapping, us's gateway relays the service's stanzas there.  alice
in eu and bob in us share a room: join, chat in one order for both, subject, kick, history; a nick
registered from us is kept in the room homed in eu."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from slixmpp import JID
from slixmpp.exceptions import PresenceError

from gateway.mapping.keys import domain_key
from tests.helpers.cluster import eventually
from tests.helpers.node import NodeProcess
from tests.helpers.redis import RedisServer
from tests.helpers.regions import DOMAIN, Region
from tests.helpers.topologies import close, fresh_users, gd_status, lookup, mapped, need_redis, two_regions
from tests.helpers.xmpp_raw import CLIENT, RawClient, local

from .test_muc import PASSWORD, MucClient, condition, create
from .test_muc_register import REGISTER, reserved_nick, submit

SERVICE = "conference.example.com"
MUC = {"modules": {"muc": {"home_cluster": "eu"}}}


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Region, Region, str]]:
    need_redis()
    with RedisServer() as redis, two_regions(tmp_path_factory.mktemp("muc-regions"), redis, node_settings=MUC,
                                             gateway_settings=MUC) as both:
        yield both.eu, both.us, redis.url


async def published(redis_url: str, domain: str) -> str | None:
    client = aioredis.from_url(redis_url)
    try:
        value = await client.get(domain_key(domain))
        return value.decode() if value is not None else None
    finally:
        await client.aclose()


async def homed_in_eu(redis_url: str) -> None:
    """Until eu's gateway has published the service of its members."""
    for _ in range(100):
        if await published(redis_url, SERVICE) == "eu":
            break
        await asyncio.sleep(0.1)
    assert await published(redis_url, SERVICE) == "eu"


async def alice_in_eu_bob_in_us(regions: tuple[Region, Region, str]) -> tuple[MucClient, MucClient]:
    """Fresh alice online in eu and bob in us, the service homed in eu, both known to both gateways."""
    eu, us, redis_url = regions
    await homed_in_eu(redis_url)
    alice_jid, bob_jid = fresh_users(eu.nodes[0], PASSWORD, "alice", "bob")
    alice = MucClient(eu.nodes[0], f"{alice_jid}/eu")
    bob = MucClient(us.nodes[0], f"{bob_jid}/us")
    await alice.online(eu.nodes[0].port, roster=False)
    await bob.online(us.nodes[0].port, roster=False)
    await mapped((eu.gateways[0], us.gateways[0]), {alice_jid: ["eu"], bob_jid: ["us"]})
    return alice, bob


async def test_one_room_across_two_regions(regions: tuple[Region, Region, str]) -> None:
    alice, bob = await alice_in_eu_bob_in_us(regions)
    room = JID(f"across@{SERVICE}")
    try:
        await create(alice, room, "Alice", **{"muc#roomconfig_roomname": "Across"})
        await bob.muc.join_muc_wait(room, "Bob", timeout=15)
        await alice.presence_of("Bob")

        alice.muc.set_subject(room, "Two regions")
        for i in range(5):  # both speak at once: one sequence, the same order for both
            alice.send_message(mto=room, mbody=f"a{i}", mtype="groupchat")
            bob.send_message(mto=room, mbody=f"b{i}", mtype="groupchat")

        async def ten(c: MucClient) -> list[str]:
            got: list[str] = []
            while len(got) < 10:
                got.append((await asyncio.wait_for(c.groupchat.get(), 15))["body"])
            return got

        seen_by_alice, seen_by_bob = await ten(alice), await ten(bob)
        assert seen_by_alice == seen_by_bob and sorted(seen_by_alice) == sorted(
            [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)])

        await alice.muc.set_role(room, "Bob", "none", reason="bye", timeout=15)
        kicked = await bob.presence_of("Bob", codes=frozenset({307}), ptype="unavailable", timeout=15)
        assert kicked["muc"]["item"]["reason"] == "bye"
        _, subject, _, history = await bob.muc.join_muc_wait(room, "Bob", maxstanzas=3, timeout=15)
        assert subject["subject"] == "Two regions"
        assert [h["body"] for h in history] == seen_by_alice[-3:]
    finally:
        await close(alice, bob)


async def test_one_frame_per_region_for_each_message(regions: tuple[Region, Region, str]) -> None:
    """Five occupants in us, two in eu: each message alice sends in eu crosses the eu–us link once
    (one frame listing the five, expanded by us's gateway), and all seven see one order."""
    eu, us, _ = regions
    eu_gw, us_gw = eu.gateways[0], us.gateways[0]
    jids = fresh_users(eu.nodes[0], PASSWORD, "alice", "eve", *[f"u{i}" for i in range(5)])
    clients = [MucClient(eu.nodes[0], f"{jids[0]}/eu"), MucClient(eu.nodes[0], f"{jids[1]}/eu")]
    clients += [MucClient(us.nodes[0], f"{j}/us") for j in jids[2:]]
    alice, eve, in_us = clients[0], clients[1], clients[2:]
    for c in clients[:2]:
        await c.online(eu.nodes[0].port, roster=False)
    for c in in_us:
        await c.online(us.nodes[0].port, roster=False)
    room = JID(f"fanout@{SERVICE}")
    try:
        for j in jids[2:]:
            await eventually(lambda j=j: "us" in lookup(eu_gw, j), 10, "us occupants mapped in eu")
        await create(alice, room, "alice")
        for i, c in enumerate(in_us):
            await c.muc.join_muc_wait(room, f"u{i}", timeout=15)
        await eve.muc.join_muc_wait(room, "eve", timeout=15)
        for c in clients:  # the last join's presence reached everyone: nothing else is on its way
            await c.presence_of("eve", timeout=15)
        before_eu, before_us = gd_status(eu_gw)["counters"], gd_status(us_gw)["counters"]

        bodies = [f"m{i}" for i in range(5)]
        for body in bodies:
            alice.send_message(mto=room, mbody=body, mtype="groupchat")

        async def five(c: MucClient) -> list[str]:
            got: list[str] = []
            while len(got) < len(bodies):
                got.append((await asyncio.wait_for(c.groupchat.get(), 15))["body"])
            return got

        seen = [await five(c) for c in clients]
        assert all(s == bodies for s in seen), seen
        after_eu, after_us = gd_status(eu_gw)["counters"], gd_status(us_gw)["counters"]
        assert after_eu["relayed"].get("us", 0) - before_eu["relayed"].get("us", 0) == len(bodies)
        assert after_eu["manyCopies"].get("us", 0) - before_eu["manyCopies"].get("us", 0) == 5 * len(bodies)
        # us's gateway expanded them all (at least: a late copy of the joins before, a run of one,
        # may land in the same window — seen once in a full run; eu's frame counts above are exact)
        assert after_us["expanded"] - before_us["expanded"] >= 5 * len(bodies)
    finally:
        await close(*clients)


REHOME = {"modules": {"muc": {"home_cluster": "eu", "rehome_after": 2.0}}}
FAST_LEASE = {"gdistrib": {"redis": {"expire_after": 3.0, "refresh_after": 1.0}}}


async def test_a_nick_registered_from_the_other_region_is_kept(regions: tuple[Region, Region, str]) -> None:
    """XEP-0045 §7.10 across regions: bob, in us, registers a nick in a room homed in eu; alice, in
    eu, gets conflict joining with it; bob finds it and removes it."""
    eu = regions[0]
    alice, bob = await alice_in_eu_bob_in_us(regions)
    alice_jid = str(alice.boundjid.bare)
    room = JID(f"registry@{SERVICE}")
    try:
        await create(alice, room, "Alice")
        await submit(bob, room, "Bobby")
        assert await reserved_nick(bob, room) == "Bobby"
        other = MucClient(eu.nodes[0], f"{alice_jid}/second")
        await other.online(eu.nodes[0].port, roster=False)
        try:
            with pytest.raises(PresenceError) as pe:
                await other.muc.join_muc_wait(room, "Bobby", timeout=15)
            assert condition(pe.value) == "conflict"
        finally:
            await other.close()
        await submit(bob, room, None, extra=f"<remove xmlns='{REGISTER}'/>")
        assert await reserved_nick(bob, room) is None
    finally:
        await close(alice, bob)


async def test_the_rooms_move_to_us_when_eu_is_gone(tmp_path_factory: pytest.TempPathFactory) -> None:
    """With ``rehome_after``, eu holds the service's lease; kill -9 of all of eu lets it lapse, us
    takes the service over, and a persistent, archived room comes back there from the database:
    its subject, and its history from the archive."""
    need_redis()
    with RedisServer() as redis, two_regions(tmp_path_factory.mktemp("muc-rehome"), redis, node_settings=REHOME,
                                             gateway_settings=REHOME, eu=FAST_LEASE, us=FAST_LEASE) as both:
        eu, us = both.eu, both.us
        us_gw = us.gateways[0]
        await eventually(lambda: gd_status(us_gw)["leases"] == {SERVICE: "eu"}, 15, "eu holds the service")
        alice_jid, bob_jid = fresh_users(eu.nodes[0], PASSWORD, "alice", "bob")
        alice = MucClient(eu.nodes[0], f"{alice_jid}/eu")
        bob = MucClient(us.nodes[0], f"{bob_jid}/us")
        await alice.online(eu.nodes[0].port, roster=False)
        await bob.online(us.nodes[0].port, roster=False)
        room = JID(f"kept@{SERVICE}")
        try:
            await create(alice, room, "alice", **{"muc#roomconfig_persistentroom": True,
                                                  "muc#roomconfig_enablearchiving": True})
            alice.muc.set_subject(room, "Before the move")
            alice.send_message(mto=room, mbody="said in eu", mtype="groupchat")
            await alice.said("said in eu", timeout=15)
            await bob.muc.join_muc_wait(room, "bob", timeout=15)

            for p in (*eu.nodes, *eu.gateways):  # the whole home region dies at once
                p.stop(signal.SIGKILL)
            await eventually(lambda: gd_status(us_gw)["leases"] == {SERVICE: "us"}, 30, "us took the service")

            # bob's client notices (a self-ping would say not-acceptable) and joins again: the room
            # is loaded in us from the shared database, its history from the archive.
            _, subject, _, history = await bob.muc.join_muc_wait(room, "bob", maxstanzas=5, timeout=15)
            assert subject["subject"] == "Before the move"
            assert [h["body"] for h in history] == ["said in eu"]
            bob.send_message(mto=room, mbody="said in us", mtype="groupchat")
            assert (await bob.said("said in us", timeout=15))["from"] == JID(f"{room}/bob")
        finally:
            await close(bob)
            with contextlib.suppress(Exception):
                await alice.close()


# -- a join from the other region: its presences cross the link as one run --------------------------------

MUC_NS = "http://jabber.org/protocol/muc"
MUC_USER_NS = "http://jabber.org/protocol/muc#user"


def raw_client(node: NodeProcess) -> RawClient:
    return RawClient(node.port, node.cert, domain=DOMAIN)


async def own_presence(client: RawClient, room: str, nick: str) -> ET.Element:
    """Until the room's presence for ``nick`` with status 110 (the occupant's own) arrives."""
    return await client.next(lambda el: local(el) == "presence" and el.get("from") == f"{room}/{nick}"
                             and "110" in statuses(el), timeout=30)


def statuses(el: ET.Element) -> set[str]:
    return {s.get("code", "") for s in el.iter(f"{{{MUC_USER_NS}}}status")}


async def crowd_in_eu(eu_node: NodeProcess, room: str, n: int) -> list[RawClient]:
    """A room homed in eu with ``n`` occupants in eu (one account, a session per occupant: ``u0`` …),
    a subject and three messages of history."""
    (bare,) = fresh_users(eu_node, PASSWORD, "crowd")
    clients = [raw_client(eu_node) for _ in range(n)]
    await asyncio.gather(*(c.start(bare.split("@")[0], PASSWORD, f"r{i}", sm=False) for i, c in enumerate(clients)))
    owner = clients[0]
    owner.send(f"<presence to='{room}/u0'><x xmlns='{MUC_NS}'/></presence>")
    assert "201" in statuses(await own_presence(owner, room, "u0"))
    owner.send(f"<iq type='set' id='instant' to='{room}'><query xmlns='{MUC_NS}#owner'>"
               f"<x xmlns='jabber:x:data' type='submit'/></query></iq>")
    await owner.next(lambda el: el.get("id") == "instant", timeout=15)
    for i, c in enumerate(clients[1:], 1):  # one after another: the room's order is u0, u1, …
        c.send(f"<presence to='{room}/u{i}'><x xmlns='{MUC_NS}'/></presence>")
        await own_presence(c, room, f"u{i}")
    owner.send(f"<message to='{room}' type='groupchat'><subject>Crowded</subject></message>")
    for k in range(3):
        owner.send(f"<message to='{room}' type='groupchat'><body>h{k}</body></message>")
    await owner.next(lambda el: local(el) == "message" and el.findtext(f"{{{CLIENT}}}body") == "h2", timeout=15)
    return clients


async def join_output(client: RawClient, room: str, nick: str) -> tuple[list[ET.Element], list[ET.Element]]:
    """What ``client`` gets from joining ``room`` as ``nick`` (sent already), up to the subject:
    (presences, messages), each in order of arrival; an error anywhere fails the test."""
    presences: list[ET.Element] = []
    messages: list[ET.Element] = []
    while True:
        el = await client.next(timeout=30)
        assert el.get("type") != "error", ET.tostring(el).decode()
        if local(el) == "presence":
            presences.append(el)
        elif local(el) == "message":
            messages.append(el)
            if el.find(f"{{{CLIENT}}}subject") is not None:
                return presences, messages


def relayed_to_us(eu_gw: NodeProcess) -> tuple[int, int]:
    """eu's gateway's frames relayed to us and its link errors so far."""
    counters = gd_status(eu_gw)["counters"]
    return int(counters["relayed"].get("us", 0)), int(counters["linkErrors"])


async def test_a_join_from_us_crosses_the_link_in_a_handful_of_frames(regions: tuple[Region, Region, str]) -> None:
    """bob, in us, joins a room homed in eu with 30 occupants in eu: the 30 presences, his own
    (110, last of them), the history and the subject cross the eu–us link in a frame or two (a
    frame per occupant before), and reach him in the room's order."""
    eu, us, redis_url = regions
    await homed_in_eu(redis_url)
    room = f"crowd{uuid.uuid4().hex[:6]}@{SERVICE}"
    crowd = await crowd_in_eu(eu.nodes[0], room, 30)
    (bob_jid,) = fresh_users(us.nodes[0], PASSWORD, "bob")
    bob = raw_client(us.nodes[0])
    try:
        await bob.start(bob_jid.split("@")[0], PASSWORD, "us", sm=False)
        await mapped((eu.gateways[0],), {bob_jid: ["us"]})
        frames, link_errors = relayed_to_us(eu.gateways[0])
        bob.send(f"<presence to='{room}/bob'><x xmlns='{MUC_NS}'><history maxstanzas='3'/></x></presence>")
        presences, messages = await join_output(bob, room, "bob")
        assert [p.get("from") for p in presences] == [f"{room}/u{i}" for i in range(30)] + [f"{room}/bob"]
        assert ["110" in statuses(p) for p in presences] == [False] * 30 + [True]
        assert [m.findtext(f"{{{CLIENT}}}body") for m in messages[:-1]] == ["h0", "h1", "h2"]
        assert messages[-1].findtext(f"{{{CLIENT}}}subject") == "Crowded"
        frames_after, link_errors_after = relayed_to_us(eu.gateways[0])
        assert frames_after - frames <= 3, f"{frames_after - frames} frames eu → us for one join"
        assert link_errors_after == link_errors
    finally:
        await asyncio.gather(*(c.close() for c in (*crowd, bob)))


async def test_ten_joins_from_us_at_once_get_every_presence_and_no_error(regions: tuple[Region, Region, str]
                                                                         ) -> None:
    """Ten sessions in us join a room of 30 eu occupants at the same moment: each gets every eu
    occupant's presence, then its own (110), history and subject, no error (no resource-constraint
    from a full link queue), and the link carries a few frames per join (over 300 before)."""
    eu, us, redis_url = regions
    await homed_in_eu(redis_url)
    room = f"rush{uuid.uuid4().hex[:6]}@{SERVICE}"
    crowd = await crowd_in_eu(eu.nodes[0], room, 30)
    (guest,) = fresh_users(us.nodes[0], PASSWORD, "guest")
    joiners = [raw_client(us.nodes[0]) for _ in range(10)]
    try:
        await asyncio.gather(*(c.start(guest.split("@")[0], PASSWORD, f"g{i}", sm=False)
                               for i, c in enumerate(joiners)))
        await mapped((eu.gateways[0],), {guest: [f"g{i}" for i in range(10)]})
        frames, link_errors = relayed_to_us(eu.gateways[0])
        for i, c in enumerate(joiners):
            c.send(f"<presence to='{room}/g{i}'><x xmlns='{MUC_NS}'><history maxstanzas='3'/></x></presence>")
        outputs = await asyncio.gather(*(join_output(c, room, f"g{i}") for i, c in enumerate(joiners)))
        for i, (presences, messages) in enumerate(outputs):
            nicks = [p.get("from", "").rsplit("/", 1)[1] for p in presences]
            assert nicks[-1] == f"g{i}" and "110" in statuses(presences[-1])
            assert nicks[:30] == [f"u{k}" for k in range(30)]  # (then the joiners before it)
            assert [m.findtext(f"{{{CLIENT}}}body") for m in messages[:-1]] == ["h0", "h1", "h2"]
        frames_after, link_errors_after = relayed_to_us(eu.gateways[0])
        assert link_errors_after == link_errors
        assert frames_after - frames <= 30, f"{frames_after - frames} frames eu → us for ten joins"
    finally:
        await asyncio.gather(*(c.close() for c in (*crowd, *joiners)))
