"""Two regions serving example.com through their gateways (global distribution).

Region eu: 2 nodes + 2 gateways, reading and writing the Redis primary.  Region us: 2 nodes +
1 gateway, reading a replica of it (writes go to the primary).  One SQLite database for the
domain's accounts, rosters and offline messages, as docs/architecture.md has it.  Real slixmpp users.
Some tests kill gateways and stop Redis: each test first gets the world back whole (``world``), so
that they pass in any order.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cluster import eventually, poll, system_info
from tests.helpers.node import NodeProcess
from tests.helpers.proxy import FaultProxy
from tests.helpers.redis import RedisServer, redis_server_binary
from tests.helpers.regions import DOMAIN, Region, make_region
from tests.helpers.xmpp_client import Client

PASSWORD = "secret-password"


class World:
    def __init__(self, base: Path, primary: RedisServer, replica: RedisServer) -> None:
        self.base = base
        self.primary = primary
        self.replica = replica
        db = f"sqlite:///{base / 'domain.db'}"
        self.eu = make_region(base, "eu", storage_url=db, redis_url=primary.url, gateways=2)
        self.us = make_region(base, "us", storage_url=db, redis_url=primary.url, read_url=replica.url)

    @property
    def regions(self) -> list[Region]:
        return [self.eu, self.us]

    def user(self, prefix: str) -> str:
        name = f"{prefix}{uuid.uuid4().hex[:6]}"
        self.eu.nodes[0].register(name, PASSWORD, DOMAIN)
        return name


def client(node: NodeProcess, user: str, resource: str) -> Client:
    return Client(f"{user}@{DOMAIN}/{resource}", PASSWORD, cert=node.cert)



def gd_status(gateway: NodeProcess) -> dict:
    return json.loads(gateway.ctl("gdistrib", "status").stdout)["data"]["gdistrib"]["status"]


def lookup(gateway: NodeProcess, jid: str) -> dict:
    return json.loads(gateway.ctl("gdistrib", "lookup", "--jid", jid).stdout)["data"]["gdistrib"]["lookup"]


@pytest.fixture(scope="module")
def started_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    base = tmp_path_factory.mktemp("regions")
    with RedisServer() as primary, RedisServer(replicaof=primary.address) as replica:
        replica.wait_synced()
        w = World(base, primary, replica)
        try:
            for region in w.regions:
                region.start()
            for region in w.regions:
                names = sorted(p.name for p in region.processes)
                for p in region.processes:
                    assert wait_joined(p, names)
            for gw in w.eu.gateways:  # the links are up both ways
                assert poll(lambda gw=gw: gd_status(gw)["links"].get("us", {}).get("up"), 15)
            assert poll(lambda: gd_status(w.us.gateways[0])["links"].get("eu", {}).get("up"), 15)
            yield w
        finally:
            for region in w.regions:
                region.stop()
        for p in w.eu.processes + w.us.processes:
            assert "Traceback" not in p.log(), p.log()



@pytest.fixture
def world(started_world: World) -> World:
    """The module's world, whole again: a process an earlier test killed restarted, Redis up,
    every region joined and the links up (the tests run in random order)."""
    w = started_world
    if not w.primary.running:
        w.primary.start()
        w.replica.wait_synced(20)
    restarted = False
    for p in w.eu.processes + w.us.processes:
        if not p.alive():
            p.start()
            restarted = True
    if restarted:
        for region in w.regions:
            names = sorted(p.name for p in region.processes)
            for p in region.processes:
                assert wait_joined(p, names)
    for gw in w.eu.gateways:
        assert poll(lambda gw=gw: gd_status(gw)["links"].get("us", {}).get("up"), 15)
    assert poll(lambda: gd_status(w.us.gateways[0])["links"].get("eu", {}).get("up"), 15)
    return w


def offline_count(world: World, user: str) -> int:
    """Messages stored offline for ``user`` in the domain's database."""
    with sqlite3.connect(world.base / "domain.db") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM offline_messages WHERE username = ?", (user,)).fetchone()[0])


def wait_joined(p: NodeProcess, names: list[str]) -> bool:
    return bool(poll(lambda: system_info(p)["joinedNodes"] == names, 20))


async def test_chat_both_ways_to_full_and_bare_jids(world: World):
    alice, bob = world.user("alice"), world.user("bob")
    a = await client(world.eu.nodes[0], alice, "laptop").online(world.eu.nodes[0].port)
    b = await client(world.us.nodes[1], bob, "phone").online(world.us.nodes[1].port)
    try:
        await eventually(lambda: lookup(world.eu.gateways[0], f"{bob}@{DOMAIN}").get("phone"), 5, "bob mapped")
        a.send_message(mto=f"{bob}@{DOMAIN}/phone", mbody="to full", mtype="chat")
        m = await b.next_message()
        assert m["body"] == "to full" and str(m["from"]) == f"{alice}@{DOMAIN}/laptop"
        a.send_message(mto=f"{bob}@{DOMAIN}", mbody="to bare", mtype="chat")
        assert (await b.next_message())["body"] == "to bare"
        b.send_message(mto=f"{alice}@{DOMAIN}", mbody="bare back", mtype="chat")
        assert (await a.next_message())["body"] == "bare back"
        b.send_message(mto=f"{alice}@{DOMAIN}/laptop", mbody="full back", mtype="chat")
        assert (await a.next_message())["body"] == "full back"
    finally:
        await a.close()
        await b.close()


async def test_iq_round_trips_to_a_full_jid_in_another_region(world: World):
    alice, bob = world.user("alice"), world.user("bob")
    a = await client(world.eu.nodes[1], alice, "laptop").online(world.eu.nodes[1].port)
    b = await client(world.us.nodes[0], bob, "phone").online(world.us.nodes[0].port)
    try:
        await eventually(lambda: lookup(world.eu.gateways[0], f"{bob}@{DOMAIN}").get("phone"), 5, "bob mapped")
        target = f"{bob}@{DOMAIN}/phone"
        await a.plugin["xep_0199"].ping(target, timeout=5)
        version = await a.plugin["xep_0092"].get_version(target, timeout=5)
        assert version["software_version"]["name"]
        info = await a.plugin["xep_0030"].get_info(jid=target, timeout=5)
        assert "urn:xmpp:ping" in info["disco_info"]["features"]
    finally:
        await a.close()
        await b.close()


async def test_presence_subscription_and_updates_across_regions(world: World):
    alice, bob = world.user("alice"), world.user("bob")
    a = await client(world.eu.nodes[0], alice, "laptop").online(world.eu.nodes[0].port)
    b = await client(world.us.nodes[0], bob, "phone").online(world.us.nodes[0].port)
    try:
        await eventually(lambda: lookup(world.eu.gateways[0], f"{bob}@{DOMAIN}").get("phone"), 5, "bob mapped")
        a.send_presence(pto=f"{bob}@{DOMAIN}", ptype="subscribe")
        assert str((await b.next_presence("subscribe"))["from"]) == f"{alice}@{DOMAIN}"
        b.send_presence(pto=f"{alice}@{DOMAIN}", ptype="subscribed")
        # The approval and bob's presence take different paths across regions: either may come first.
        assert await presences(a, {"subscribed", "available"}, sender=bob) == {"subscribed", "available"}
        b.send_presence(pshow="away", pstatus="in another region")
        p = await a.next_presence("away", sender=f"{bob}@{DOMAIN}/phone")
        assert p["status"] == "in another region"
        await b.close()
        await a.next_presence("unavailable", sender=f"{bob}@{DOMAIN}/phone")
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("login_region", ["eu", "us"])
async def test_offline_message_is_stored_and_delivered_in_either_region(world: World, login_region: str):
    alice, bob = world.user("alice"), world.user("bob")
    a = await client(world.eu.nodes[0], alice, "laptop").online(world.eu.nodes[0].port)
    try:
        a.send_message(mto=f"{bob}@{DOMAIN}", mbody="while you were out", mtype="chat")
        await eventually(lambda: offline_count(world, bob) == 1, 10, "the message stored offline")
        node = (world.eu if login_region == "eu" else world.us).nodes[1]
        b = await client(node, bob, "phone").online(node.port)
        m = await b.next_message()
        assert m["body"] == "while you were out"
        assert m["delay"]["stamp"] is not None  # from offline storage (XEP-0203), not live
        # Removed from storage once written to the session, so just after the client has it.
        await eventually(lambda: offline_count(world, bob) == 0, 10, "the stored copy removed")
        await b.close()
    finally:
        await a.close()


async def test_user_online_in_both_regions_at_once(world: World):
    alice, bob = world.user("alice"), world.user("bob")
    a = await client(world.eu.nodes[0], alice, "laptop").online(world.eu.nodes[0].port)
    phone = await client(world.us.nodes[0], bob, "phone").online(world.us.nodes[0].port, priority=5)
    laptop = await client(world.eu.nodes[1], bob, "laptop").online(world.eu.nodes[1].port, priority=1)
    try:
        await eventually(lambda: len(lookup(world.eu.gateways[0], f"{bob}@{DOMAIN}")) == 2, 5, "both mapped")
        # Bare JID: the most available resource (priority 5, in us), not the local laptop.
        a.send_message(mto=f"{bob}@{DOMAIN}", mbody="to the best resource", mtype="chat")
        assert (await phone.next_message())["body"] == "to the best resource"
        with pytest.raises(asyncio.TimeoutError):
            await laptop.next_message(timeout=1.0)
        # Each resource sees the other's presence across regions (RFC 6121 §4.2.2, own resources).
        phone.send_presence(pshow="dnd", ppriority=5)
        assert (await laptop.next_presence("dnd", sender=f"{bob}@{DOMAIN}/phone"))["show"] == "dnd"
        # A subscriber sees both resources.
        a.send_presence(pto=f"{bob}@{DOMAIN}", ptype="subscribe")
        await phone.next_presence("subscribe")
        await laptop.next_presence("subscribe")
        laptop.send_presence(pto=f"{alice}@{DOMAIN}", ptype="subscribed")
        seen: dict[str, str] = {}
        while len(seen) < 2:  # in whatever order they arrive
            p = await a.next_presence(None)
            if p["from"].bare == f"{bob}@{DOMAIN}" and p["type"] in ("available", "away", "chat", "dnd", "xa"):
                seen[p["from"].resource] = p["show"]
        assert seen == {"phone": "dnd", "laptop": ""}
        # One resource logging out leaves the other's mapping alone.
        await laptop.close()
        await eventually(lambda: list(lookup(world.us.gateways[0], f"{bob}@{DOMAIN}")) == ["phone"], 5,
                         "only the phone mapped")
        a.send_message(mto=f"{bob}@{DOMAIN}", mbody="still here?", mtype="chat")
        assert (await phone.next_message())["body"] == "still here?"
    finally:
        for c in (a, phone, laptop):
            await c.close()


async def test_user_moves_between_regions_while_messages_flow(world: World):
    alice, bob = world.user("alice"), world.user("bob")
    a = await client(world.eu.nodes[0], alice, "laptop").online(world.eu.nodes[0].port)
    b = await client(world.us.nodes[0], bob, "phone").online(world.us.nodes[0].port)
    before = sum(gd_status(gw)["counters"]["bounced"] for r in world.regions for gw in r.gateways)
    sent: list[str] = []
    b2: Client | None = None
    try:
        await eventually(lambda: lookup(world.eu.gateways[0], f"{bob}@{DOMAIN}").get("phone"), 5, "bob mapped")

        async def keep_sending() -> None:
            for i in range(60):
                body = f"m{i}"
                a.send_message(mto=f"{bob}@{DOMAIN}/phone", mbody=body, mtype="chat")
                sent.append(body)
                await asyncio.sleep(0.03)

        sender = asyncio.create_task(keep_sending())
        await asyncio.sleep(0.5)
        await b.close()  # logs out of us ...
        b2 = await client(world.eu.nodes[1], bob, "phone").online(world.eu.nodes[1].port)  # ... into eu
        await sender
        received = [m["body"] for m in drain(b.messages)]  # before the move, in us
        while not set(sent) <= set(received):  # then in eu, live or from offline storage
            try:
                received.append((await b2.next_message(timeout=8))["body"])
            except TimeoutError:
                break
        assert sorted(set(received)) == sorted(sent), f"lost: {sorted(set(sent) - set(received))}"
        after = sum(gd_status(gw)["counters"]["bounced"] for r in world.regions for gw in r.gateways)
        assert after > before, "the bounce path was not exercised"
    finally:
        await a.close()
        await b.close()
        if b2 is not None:
            await b2.close()


async def presences(c: Client, types: set[str], *, sender: str, timeout: float = 5.0) -> set[str]:
    """The presence types in ``types`` that ``sender`` (bare or any resource) sends ``c``, in any order."""
    seen: set[str] = set()
    while seen != types:
        p = await c.next_presence(None, timeout=timeout)
        if p["from"].bare == f"{sender}@{DOMAIN}" and p["type"] in types:
            seen.add(p["type"])
    return seen


def drain(queue: asyncio.Queue) -> list:  # type: ignore[type-arg]
    out = []
    while not queue.empty():
        msg = queue.get_nowait()
        if msg["body"]:
            out.append(msg)
    return out


async def test_messages_keep_their_order_through_links_and_bounces(world: World):
    """100 messages over several link connections; bob leaves us while eu still maps him there,
    so what lands meanwhile is bounced (re-resolved, resent) until he is back, and none overtakes
    another (MongooseIM's test_in_order_messages_on_multiple_connections_with_bounce)."""
    alice, bob = world.user("alice"), world.user("bob")
    a = await client(world.eu.nodes[0], alice, "laptop").online(world.eu.nodes[0].port)
    b = await client(world.us.nodes[0], bob, "phone").online(world.us.nodes[0].port)
    b2: Client | None = None
    before = sum(gd_status(gw)["counters"]["bounced"] for gw in world.us.gateways)
    try:
        for gw in world.eu.gateways:  # both eu gateways map bob to us (and cache it)
            await eventually(lambda gw=gw: lookup(gw, f"{bob}@{DOMAIN}").get("phone"), 5, "bob mapped")
        for i in range(40):
            a.send_message(mto=f"{bob}@{DOMAIN}/phone", mbody=str(i), mtype="chat")
        received = [int((await b.next_message())["body"]) for _ in range(40)]
        for gw in world.eu.gateways:  # fresh in both eu caches (5 s) when bob leaves: they still say us
            lookup(gw, f"{bob}@{DOMAIN}")
        await b.close()
        await eventually(lambda: not [u for u in table_sessions(world.us.nodes[0]) if u.startswith(bob)], 5,
                         "bob gone from us")
        for i in range(40, 70):  # eu still says us: these land there and bounce
            a.send_message(mto=f"{bob}@{DOMAIN}/phone", mbody=str(i), mtype="chat")
        await asyncio.sleep(0.3)
        b2 = await client(world.us.nodes[1], bob, "phone").online(world.us.nodes[1].port)
        # Once us has published the new session (a message looked up in the gap in between finds
        # nobody, is stored offline and flushed to him later: delivered, but out of order).
        for gw in world.eu.gateways:
            await eventually(lambda gw=gw: lookup(gw, f"{bob}@{DOMAIN}").get("phone"), 5, "bob mapped again")
        for i in range(70, 100):
            a.send_message(mto=f"{bob}@{DOMAIN}/phone", mbody=str(i), mtype="chat")
        while len(received) < 100:
            try:
                received.append(int((await b2.next_message(timeout=8))["body"]))
            except TimeoutError:
                break
        assert sorted(received) == list(range(100)), f"lost: {sorted(set(range(100)) - set(received))}"
        assert received == sorted(received), f"out of order: {received}"
        after = sum(gd_status(gw)["counters"]["bounced"] for gw in world.us.gateways)
        assert after > before, "no stanza went through the bounce path"
    finally:
        await a.close()
        await b.close()
        if b2 is not None:
            await b2.close()


async def test_unclean_drop_then_login_in_another_region(world: World):
    """Bob's us connection goes silent (no close); he logs into eu with the same full JID.  Every
    message alice sends once his eu session exists reaches it (MongooseIM's own test expects one
    lost), and us closes its stale session once the mapping says eu holds the newer login."""
    alice, bob = world.user("alice"), world.user("bob")
    us_node = world.us.nodes[0]
    a = await client(world.eu.nodes[0], alice, "laptop").online(world.eu.nodes[0].port)
    with FaultProxy("127.0.0.1", us_node.port) as proxy:
        b = await client(us_node, bob, "phone").online(proxy.port)
        b2: Client | None = None
        try:
            await eventually(lambda: lookup(world.eu.gateways[0], f"{bob}@{DOMAIN}").get("phone"), 5, "bob in us")
            proxy.partition("blackhole")  # the phone is gone, but us does not know it
            b2 = await client(world.eu.nodes[1], bob, "phone").online(world.eu.nodes[1].port)
            for i in range(20):
                to = f"{bob}@{DOMAIN}" + ("/phone" if i % 2 else "")
                a.send_message(mto=to, mbody=f"after-login-{i}", mtype="chat")
            got = {(await b2.next_message(timeout=5))["body"] for _ in range(20)}
            assert got == {f"after-login-{i}" for i in range(20)}
            # us learns from the mapping that a newer login holds the full JID, and closes its own.
            assert poll(lambda: lookup(world.us.gateways[0], f"{bob}@{DOMAIN}")["phone"]["region"] == "eu", 10)
            await eventually(lambda: not any(r for r in table_sessions(us_node) if r.startswith(f"{bob}@")), 15,
                             "the stale us session closed")
        finally:
            await a.close()
            if b2 is not None:
                await b2.close()
            proxy.heal()
            await b.close()


def table_sessions(node: NodeProcess) -> list[str]:
    """Full JIDs in a node's replicated session table (via ``ctl session list``)."""
    res = node.ctl("session", "list-sessions")
    return [s["user"] for s in json.loads(res.stdout)["data"]["session"]["listSessions"]]


async def test_redis_down_for_10_seconds(world: World):
    """Established conversations go on from the gateways' caches; a login during the outage
    becomes visible once Redis is back (it restarts empty: every region re-publishes)."""
    alice, bob, carol = world.user("alice"), world.user("bob"), world.user("carol")
    a = await client(world.eu.nodes[0], alice, "laptop").online(world.eu.nodes[0].port)
    b = await client(world.us.nodes[0], bob, "phone").online(world.us.nodes[0].port)
    c: Client | None = None
    try:
        await eventually(lambda: lookup(world.eu.gateways[0], f"{bob}@{DOMAIN}").get("phone"), 5, "bob mapped")
        for gw in world.eu.gateways:  # both eu gateways have bob (and us has alice) in their caches
            gw.ctl("gdistrib", "lookup", "--jid", f"{bob}@{DOMAIN}")
        world.us.gateways[0].ctl("gdistrib", "lookup", "--jid", f"{alice}@{DOMAIN}")
        world.primary.stop()
        started = time.monotonic()
        for i in range(5):
            a.send_message(mto=f"{bob}@{DOMAIN}/phone", mbody=f"during-{i}", mtype="chat")
            assert (await b.next_message(timeout=5))["body"] == f"during-{i}"
            b.send_message(mto=f"{alice}@{DOMAIN}/laptop", mbody=f"reply-{i}", mtype="chat")
            assert (await a.next_message(timeout=5))["body"] == f"reply-{i}"
            await asyncio.sleep(1)
        c = await client(world.us.nodes[1], carol, "tablet").online(world.us.nodes[1].port)  # not published yet
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - started)))
        world.primary.start()
        world.replica.wait_synced(20)
        await eventually(lambda: lookup(world.eu.gateways[0], f"{carol}@{DOMAIN}").get("tablet"), 20,
                         "carol re-published")
        a.send_message(mto=f"{carol}@{DOMAIN}", mbody="welcome back", mtype="chat")
        assert (await c.next_message(timeout=5))["body"] == "welcome back"
        status = gd_status(world.eu.gateways[0])
        assert status["redis"] == {"reads": True, "writes": True}
    finally:
        if not world.primary.running:
            world.primary.start()
        for x in (a, b, c):
            if x is not None:
                await x.close()


async def test_gateway_loss(world: World):
    """eu has two gateways: kill -9 one and traffic goes on through the other.  us has one: kill
    it, and what eu users send meanwhile waits on eu's gateway (``hold_while_down``) and reaches
    the online recipient live, in order, once it is back — not an error, not offline storage."""
    alice, bob = world.user("alice"), world.user("bob")
    a = await client(world.eu.nodes[0], alice, "laptop").online(world.eu.nodes[0].port)
    b = await client(world.us.nodes[0], bob, "phone").online(world.us.nodes[0].port)
    try:
        await eventually(lambda: lookup(world.eu.gateways[0], f"{bob}@{DOMAIN}").get("phone"), 5, "bob mapped")
        gw1, gw2 = world.eu.gateways
        gw2.stop(signal.SIGKILL)
        await eventually(lambda: system_info(world.eu.nodes[0])["unavailableNodes"] == ["eu-gw2"], 10, "gw2 dropped")
        for i in range(10):
            a.send_message(mto=f"{bob}@{DOMAIN}/phone", mbody=f"one-gateway-{i}", mtype="chat")
            b.send_message(mto=f"{alice}@{DOMAIN}/laptop", mbody=f"back-{i}", mtype="chat")
        assert {(await b.next_message())["body"] for _ in range(10)} == {f"one-gateway-{i}" for i in range(10)}
        assert {(await a.next_message())["body"] for _ in range(10)} == {f"back-{i}" for i in range(10)}
        gw2.start()

        us_gw = world.us.gateways[0]
        us_gw.stop(signal.SIGKILL)
        await eventually(lambda: gd_status(gw1)["links"]["us"]["up"] is False, 15, "eu sees the us link down")
        for i in range(3):
            a.send_message(mto=f"{bob}@{DOMAIN}/phone", mbody=f"held-{i}", mtype="chat")
        await asyncio.sleep(2.5)  # longer than the link's connect_timeout (2 s): held, not refused
        us_gw.start()
        held = [await b.next_message(timeout=30) for _ in range(3)]
        assert [m["body"] for m in held] == ["held-0", "held-1", "held-2"]
        assert all(m["delay"]["stamp"] is None for m in held)  # live, not from offline storage
        assert gd_status(gw1)["links"]["us"]["up"]
        # Nothing came back to alice: no remote-server-timeout.
        with pytest.raises(TimeoutError):
            await a.next_message(timeout=1, body=False)
        # The restarted gateway has bob's session in its tables and the mapping has him in us.
        await eventually(lambda: any(u.startswith(f"{bob}@") for u in table_sessions(us_gw)), 20,
                         "the us gateway knows bob's session")
        await eventually(lambda: lookup(gw1, f"{bob}@{DOMAIN}").get("phone"), 10, "bob mapped")
        a.send_message(mto=f"{bob}@{DOMAIN}/phone", mbody="back again", mtype="chat")
        assert (await b.next_message(timeout=10))["body"] == "back again"
    finally:
        await a.close()
        await b.close()
