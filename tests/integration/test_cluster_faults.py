"""Cluster faults with real ``meridian node`` processes: a network partition and its heal (through
a fault-injecting proxy, tests/helpers/proxy.py), contacts' presence across a partition, its heal
and a first join, a member back on a new connection while the
other still holds the dead one, ten members started at once, a duplicate node name, strangers on
the cluster port (wrong secret, other cluster, incompatible protocol version), a discovery
database that is down when the members start, and one that goes silent later.

Intervals are short (discovery refresh and pings every 0.4 s, a member is down after 2 s of
silence) so the whole file runs in about a minute.  Every wait is a poll with a deadline; the one
sleep is the length of a fault (a stalled process).  PostgreSQL tests are marked ``postgres``
and skipped without the binaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import sqlite3
import ssl
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from cluster_node.cluster.link import PROTOCOL_VERSION, Closed, ClusterLink, Joined, LinkConfig, LinkEvent
from cluster_node.net.control import control_socket, query_control
from tests.helpers.node import ADMIN_PASSWORD, ADMIN_USER, NodeProcess
from tests.helpers.ports import free_ports
from tests.helpers.postgres import PostgresServer, pg_bindir
from tests.helpers.proxy import FaultProxy
from tests.helpers.xmpp_client import Client

CLUSTER = "faults"
SECRET = "faults-cluster-secret-0123456789"
REFRESH = 0.4
PING = 0.4
PING_TIMEOUT = 2.0
USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw", "erin": "erin-pw"}

T = TypeVar("T")


# -- helpers -----------------------------------------------------------------------------------------


def cluster_settings(port: int, discovery_url: str, *, advertise: str = "", **extra: Any) -> dict[str, Any]:
    return {"cluster": {
        "enabled": True, "name": CLUSTER, "secret": SECRET, "host": "127.0.0.1", "port": port,
        "advertise": advertise or f"127.0.0.1:{port}", "discovery": "rdbms", "discovery_url": discovery_url,
        "refresh_interval": REFRESH, "ping_interval": PING, "ping_timeout": PING_TIMEOUT, **extra}}


_TAKEN: set[int] = set()  # every port handed out in this module: ports are picked free, then bound later


def fresh_ports(n: int) -> list[int]:
    """Free ports that nothing else in this module was given (a node picks its c2s ports itself,
    after we picked its cluster port: the kernel may hand out the same free port twice)."""
    out: list[int] = []
    while len(out) < n:
        for port in free_ports(n - len(out)):
            if port not in _TAKEN:
                _TAKEN.add(port)
                out.append(port)
    return out


def new_node(workdir: Path, name: str, **kw: Any) -> NodeProcess:
    while True:
        node = NodeProcess(workdir, name=name, **kw)
        if not {node.port, node.tls_port} & _TAKEN:
            _TAKEN.update((node.port, node.tls_port))
            return node


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Make NodeProcess objects (not started) that are stopped, and whose logs are checked for
    tracebacks, at the end of the test."""
    made: list[NodeProcess] = []

    def make(name: str, cluster_port: int, discovery_url: str, *, workdir: str | None = None,
             storage_url: str | None = None, **cluster: Any) -> NodeProcess:
        node = new_node(tmp_path / (workdir or name), name, storage_url=storage_url,
                        settings=cluster_settings(cluster_port, discovery_url, **cluster))
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()
    for node in made:
        if node.log_path.exists():  # not when the test ended before starting it
            assert "Traceback" not in node.log_path.read_text(errors="replace"), f"{node.name}:\n{node.log()}"


def start_all(nodes: list[NodeProcess]) -> None:
    """Start every node at the same moment (none waits for another to listen)."""
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda n: n.start(timeout=60), nodes))


async def until(fetch: Callable[[], Awaitable[T]], check: Callable[[T], bool], *, timeout: float = 20.0,
                what: str = "condition") -> T:
    """Poll ``fetch()`` until ``check`` accepts its value (None: not ready); fail with the last value
    at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if value is not None and check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout:.0f}s; last value: {value!r}")
        await asyncio.sleep(0.1)


async def live(node: NodeProcess, op: str) -> Any:
    """``systemInfo`` / ``tableInfo`` straight from the node's control socket (what ctl asks, faster);
    None while the socket is not up yet."""
    try:
        status, body = await query_control(control_socket(node.workdir / "data"), "cets", op)
    except (aiohttp.ClientError, OSError):
        return None
    assert status == 200, body
    return body["data"]["cets"][op]


async def ctl(node: NodeProcess, command: str) -> Any:
    """``meridian ctl cets system-info|table-info``, the operator's command line."""
    res = await asyncio.to_thread(node.ctl, "cets", command)
    data = json.loads(res.stdout)["data"]["cets"]
    return data["systemInfo" if command == "system-info" else "tableInfo"]


def sessions_size(table_info: list[dict[str, Any]]) -> int:
    return next(t["size"] for t in table_info if t["tableName"] == "sessions")


async def joined(nodes: list[NodeProcess], *, timeout: float = 20.0) -> None:
    names = sorted(n.name for n in nodes)
    for node in nodes:
        await until(lambda node=node: live(node, "systemInfo"), lambda i: i["joinedNodes"] == names,
                    timeout=timeout, what=f"{node.name} joined with {names}")


async def sizes(nodes: list[NodeProcess], expected: list[int], *, timeout: float = 10.0) -> None:
    for node, size in zip(nodes, expected, strict=True):
        await until(lambda node=node: live(node, "tableInfo"), lambda t, size=size: sessions_size(t) == size,
                    timeout=timeout, what=f"{node.name}: {size} sessions")


def log_lines(node: NodeProcess, pattern: str) -> list[str]:
    text = node.log_path.read_text(errors="replace") if node.log_path.exists() else ""
    return [line for line in text.splitlines() if re.search(pattern, line)]


async def log_line(node: NodeProcess, pattern: str, *, count: int = 1, timeout: float = 15.0) -> list[str]:
    async def fetch() -> list[str]:
        return log_lines(node, pattern)

    return await until(fetch, lambda lines: len(lines) >= count, timeout=timeout,
                       what=f"{count} line(s) matching {pattern!r} in {node.name}'s log")


def discovery_address(db: Path, node: str) -> str:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        row = conn.execute("SELECT address FROM discovery_nodes WHERE cluster_name = ? AND node_name = ?",
                           (CLUSTER, node)).fetchone()
    return str(row[0]) if row else ""


def client(node: NodeProcess, user: str, resource: str) -> Client:
    return Client(f"{user}@localhost/{resource}", USERS[user], cert=node.cert)


async def one_user_on_each(nodes: list[NodeProcess], users: list[tuple[str, str]], clients: list[Client]
                           ) -> list[Client]:
    """Register ``users`` (user, resource) in the nodes' shared storage, start the nodes, wait until
    they are joined, and log the users in, one on each node (added to ``clients``)."""
    await asyncio.to_thread(lambda: [nodes[0].register(u, USERS[u]) for u, _ in users])
    await asyncio.to_thread(start_all, nodes)
    await joined(nodes)
    logged = [await client(node, u, r).login(node.port) for node, (u, r) in zip(nodes, users, strict=True)]
    clients += logged
    await sizes(nodes, [len(nodes)] * len(nodes))
    return logged


async def close_all(clients: list[Client]) -> None:
    for c in clients:
        await c.close()


# -- 1. partition and heal -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["blackhole", "drop"])
async def test_partition_heal_merges_tables_and_keeps_the_newest_duplicate(tmp_path, spawn, mode):
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    p0, p1, pp = fresh_ports(3)
    proxy = FaultProxy("127.0.0.1", p1, port=pp).start()
    clients: list[Client] = []
    try:
        # n0 < n1, so n0 connects to n1, at the address n1 advertises: the proxy's.
        n0 = spawn("n0", p0, db, storage_url=db)
        n1 = spawn("n1", p1, db, storage_url=db, advertise=proxy.address)
        await asyncio.to_thread(lambda: [n0.register(u, pw) for u, pw in USERS.items()])  # one at a time
        await asyncio.to_thread(start_all, [n0, n1])
        await joined([n0, n1])
        assert proxy.accepted >= 1, "the link does not go through the proxy"

        dave = await client(n1, "dave", "pre").login(n1.port)
        erin = await client(n0, "erin", "pre").login(n0.port)
        clients += [dave, erin]
        await sizes([n0, n1], [2, 2])

        await asyncio.to_thread(proxy.partition, mode)
        # Both sides declare the other down (after ping_timeout in a blackhole) and drop its sessions.
        await until(lambda: live(n0, "systemInfo"), lambda i: i["joinedNodes"] == ["n0"], what="n0 alone")
        await until(lambda: live(n1, "systemInfo"), lambda i: i["joinedNodes"] == ["n1"], what="n1 alone")
        await sizes([n0, n1], [1, 1])

        # While partitioned: dave and erin log out, alice logs in with the same full JID on both
        # sides (n0 first: n1's is the newer, so the winner is not also the smaller owner name, which
        # a rule other than "newest session" would pick), bob and carol log in on one side each.
        await dave.close()
        await erin.close()
        await sizes([n0, n1], [0, 0])
        alice_old = await client(n0, "alice", "dup").login(n0.port)
        alice_new = await client(n1, "alice", "dup").login(n1.port)
        bob = await client(n0, "bob", "b").login(n0.port)
        carol = await client(n1, "carol", "c").login(n1.port)
        clients += [alice_old, alice_new, bob, carol]
        await sizes([n0, n1], [2, 2])
        assert alice_old.is_connected() and alice_new.is_connected()

        await asyncio.to_thread(proxy.heal)
        await joined([n0, n1])
        # alice/dup once (the newer), bob, carol; dave and erin stay gone on both sides.
        await sizes([n0, n1], [3, 3])

        async def old_alice() -> tuple[list[str], bool]:
            return [str(e["condition"]) for e in alice_old.stream_errors], alice_old.is_connected()

        await until(old_alice, lambda s: "conflict" in s[0] and not s[1], timeout=10,
                    what="the older alice/dup gets <conflict/> and is disconnected")
        assert alice_new.is_connected() and not alice_new.stream_errors

        # Both tables hold what the sizes say: the surviving alice/dup (on n1) reachable from n0,
        # bob (n0) from n1, carol (n1) from n0 — so the third entry on each side is not dave or erin.
        bob.send_message(mto="alice@localhost/dup", mbody="after the heal", mtype="chat")
        assert (await alice_new.next_message(timeout=10))["body"] == "after the heal"
        carol.send_message(mto="bob@localhost/b", mbody="hello from n1", mtype="chat")
        assert (await bob.next_message(timeout=10))["body"] == "hello from n1"
        bob.send_message(mto="carol@localhost/c", mbody="hello from n0", mtype="chat")
        assert (await carol.next_message(timeout=10))["body"] == "hello from n0"

        infos = [await ctl(n, "system-info") for n in (n0, n1)]
        for info in infos:
            assert info["joinedNodes"] == ["n0", "n1"], info
            assert info["unavailableNodes"] == [], info
            assert "sessions" in info["conflictTables"], info
        tables = [await ctl(n, "table-info") for n in (n0, n1)]
        assert sessions_size(tables[0]) == sessions_size(tables[1]) == 3, tables
        for table in tables:
            assert next(t for t in table if t["tableName"] == "sessions")["nodes"] == ["n0", "n1"]
        assert log_lines(n0, r"lost a cluster conflict"), n0.log()
        assert not log_lines(n1, r"lost a cluster conflict"), n1.log()
    finally:
        await close_all(clients)
        proxy.stop()


async def quiet(clients: list[Client], settle: float = 0.7) -> None:
    """Wait until no presence has reached any of ``clients`` for ``settle`` s; forget what came."""
    while True:
        await asyncio.sleep(settle)
        if all(c.presences.empty() for c in clients):
            return
        for c in clients:
            while not c.presences.empty():
                c.presences.get_nowait()


async def presences(c: Client, expected: list[tuple[str, str]], *, timeout: float = 15.0,
                    settle: float = 1.0) -> None:
    """``c`` receives exactly ``expected`` ((from, type) pairs, in any order): each of them, and
    nothing else (no duplicate) in the ``settle`` s after the last one."""
    got: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    end: float | None = None  # when the settle period ends, once everything expected came
    while True:
        if end is None and all(got.count(e) >= expected.count(e) for e in expected):
            end = time.monotonic() + settle
        left = (end or deadline) - time.monotonic()
        if left <= 0:
            break
        try:
            p = await asyncio.wait_for(c.presences.get(), left)
        except TimeoutError:
            break
        got.append((str(p["from"]), str(p["type"])))
    assert sorted(got) == sorted(expected), f"{c.boundjid}: expected {sorted(expected)}, got {sorted(got)}"


async def test_contacts_see_each_other_again_after_a_heal_and_a_first_join(tmp_path, spawn):
    """alice (two resources, a1 and a2, on n0) and bob (b on n1, b0 on n0) are mutually subscribed.
    A partition drops each side's sessions on the other, and each side's member-down cleanup tells
    its contacts (and the account's other resources) the other left.  On the heal the members merge
    each other's sessions back, and each learns the other is available again: once per pair of
    resources, and nothing from b0, which never left (a probe to or from a bare JID would be
    answered by every resource, or answered to every resource: duplicates).  Then n2, behind a second
    proxy that is partitioned from the start, has carol (subscribed with alice) online before it
    ever joins: when it first joins, carol and alice's resources see each other, and bob, who has
    no subscription with carol, sees nothing."""
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    p0, p1, p2, pp1, pp2 = fresh_ports(5)
    proxy1 = FaultProxy("127.0.0.1", p1, port=pp1).start()
    proxy2 = FaultProxy("127.0.0.1", p2, port=pp2).start()
    clients: list[Client] = []
    try:
        n0 = spawn("n0", p0, db, storage_url=db)
        n1 = spawn("n1", p1, db, storage_url=db, advertise=proxy1.address)
        n2 = spawn("n2", p2, db, storage_url=db, advertise=proxy2.address)
        await asyncio.to_thread(lambda: [n0.register(u, USERS[u]) for u in ("alice", "bob", "carol")])
        await asyncio.to_thread(start_all, [n0, n1])
        await joined([n0, n1])

        a1 = await client(n0, "alice", "a1").online(n0.port)
        a2 = await client(n0, "alice", "a2").online(n0.port)
        bob = await client(n1, "bob", "b").online(n1.port)
        b0 = await client(n0, "bob", "b0").online(n0.port)
        carol = await client(n0, "carol", "c").online(n0.port)
        clients += [a1, a2, bob, b0, carol]
        await sizes([n0, n1], [5, 5])
        for name, contact in (("bob", bob), ("carol", carol)):
            a1.send_presence(pto=f"{name}@localhost", ptype="subscribe")
            await contact.next_presence("subscribe", sender="alice@localhost")
            contact.send_presence(pto="alice@localhost", ptype="subscribed")
            contact.send_presence(pto="alice@localhost", ptype="subscribe")
            await a1.next_presence("subscribe", sender=f"{name}@localhost")
            a1.send_presence(pto=f"{name}@localhost", ptype="subscribed")
        await bob.next_presence("available", sender="alice@localhost/a2")
        await carol.close()  # back later, on n2
        await a2.next_presence("unavailable", sender="carol@localhost/c")
        await quiet([a1, a2, bob, b0])

        a1_, a2_, carol_ = "alice@localhost/a1", "alice@localhost/a2", "carol@localhost/c"
        bob_, b0_ = "bob@localhost/b", "bob@localhost/b0"
        await asyncio.to_thread(proxy1.partition, "drop")
        await asyncio.gather(presences(a1, [(bob_, "unavailable")]), presences(a2, [(bob_, "unavailable")]),
                             presences(bob, [(a1_, "unavailable"), (a2_, "unavailable"), (b0_, "unavailable")]),
                             presences(b0, [(bob_, "unavailable")]))

        await asyncio.to_thread(proxy1.heal)
        await joined([n0, n1])
        await asyncio.gather(presences(a1, [(bob_, "available")]), presences(a2, [(bob_, "available")]),
                             presences(bob, [(a1_, "available"), (a2_, "available"), (b0_, "available")]),
                             presences(b0, [(bob_, "available")]))

        # A first join: carol online on n2 before n2 ever reached n0 or n1.
        await asyncio.to_thread(proxy2.partition, "drop")
        await asyncio.to_thread(n2.start, 60)
        carol = await client(n2, "carol", "c").online(n2.port)
        clients.append(carol)
        await carol.next_presence("unavailable", sender="alice@localhost")  # no alice in n2's table yet
        await quiet([a1, a2, bob, b0, carol])
        await asyncio.to_thread(proxy2.heal)
        await joined([n0, n1, n2])
        await asyncio.gather(presences(a1, [(carol_, "available")]), presences(a2, [(carol_, "available")]),
                             presences(carol, [(a1_, "available"), (a2_, "available")]),
                             presences(bob, []), presences(b0, []))
    finally:
        await close_all(clients)
        proxy1.stop()
        proxy2.stop()


async def test_a_member_back_on_a_new_connection_is_not_taken_for_a_duplicate(tmp_path, spawn):
    """The link's flow dies but the hosts still reach each other (a NAT that lost its state): n0
    notices first (shorter ping_timeout) and reconnects at once; n1 still holds the old, silent
    link.  The newcomer is the same process (same incarnation), so n1 takes the new link instead
    of refusing it as a duplicate node name until its own timeout."""
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    p0, p1, pp = fresh_ports(3)
    proxy = FaultProxy("127.0.0.1", p1, port=pp).start()
    clients: list[Client] = []
    try:
        n0 = spawn("n0", p0, db, storage_url=db, ping_timeout=1.5)
        n1 = spawn("n1", p1, db, storage_url=db, advertise=proxy.address, ping_timeout=6.0)
        bob, carol = await one_user_on_each([n0, n1], [("bob", "b"), ("carol", "c")], clients)

        await asyncio.to_thread(proxy.partition, "stale")
        await log_line(n0, r"cluster member n1 is down: no traffic")
        noticed = time.monotonic()
        await until(lambda: live(n0, "systemInfo"), lambda i: i["joinedNodes"] == ["n0", "n1"], timeout=10,
                    what="n0 joined with n1 again")
        # n1's old link would time out 6 s (its ping_timeout) after the partition, about 4.5 s after
        # n0 (1.5 s) noticed: rejoining before then shows the new link was taken at once.
        assert time.monotonic() - noticed < 4.0, "n0 waited for n1's old link to time out"
        assert not log_lines(n1, r"duplicate node name"), n1.log()
        assert log_lines(n1, r"n0 is back on a new link"), n1.log()
        assert not log_lines(n1, r"member n0 down"), n1.log()  # n0 never went away: no cleanup on n1
        await sizes([n0, n1], [2, 2])
        bob.send_message(mto="carol@localhost/c", mbody="on the new link", mtype="chat")
        assert (await carol.next_message(timeout=10))["body"] == "on the new link"
        carol.send_message(mto="bob@localhost/b", mbody="and back", mtype="chat")
        assert (await bob.next_message(timeout=10))["body"] == "and back"
        await asyncio.to_thread(proxy.heal)  # the old flow resumes, only to be closed
        for node in (n0, n1):
            assert (await ctl(node, "system-info"))["joinedNodes"] == ["n0", "n1"]
    finally:
        await close_all(clients)
        proxy.stop()


async def test_messages_a_member_never_read_are_routed_again_when_it_dies(tmp_path, spawn):
    """A member killed with messages for its sessions still unread on its link would lose them,
    though their senders' servers had handled them.  Here n2 is stopped (it reads nothing), alice
    (n1) sends bob (n2) three messages, and n2 is killed: n1 kept each chat message until n2 said
    it read it, so the three are routed again — to offline storage, bob having no other session —
    and bob gets them, in order, at his next login.  The message n2 did read is not sent twice."""
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    p1, p2 = fresh_ports(2)
    clients: list[Client] = []
    try:
        n1 = spawn("n1", p1, db, storage_url=db)
        n2 = spawn("n2", p2, db, storage_url=db)
        alice, bob = await one_user_on_each([n1, n2], [("alice", "a"), ("bob", "b")], clients)
        alice.send_message(mto="bob@localhost/b", mbody="read", mtype="chat")
        assert (await bob.next_message(timeout=10))["body"] == "read"

        assert n2.proc is not None
        n2.proc.send_signal(signal.SIGSTOP)
        for k in (1, 2, 3):
            alice.send_message(mto="bob@localhost/b", mbody=f"unread {k}", mtype="chat")
        await alice.get_roster()  # answered after the three were routed (one connection, in order)
        n2.proc.kill()  # kill -9 of the stopped process: what it had not read dies unread
        (line,) = await log_line(n1, r"stanzas sent to n2 were never read there: routing them again")
        assert re.search(r" 3 stanzas sent to n2", line), line  # the three messages, not "read" again
        status, metrics = await n1.http("GET", f"{n1.admin_url}/metrics", auth=(ADMIN_USER, ADMIN_PASSWORD))
        assert status == 200 and "\nmeridian_cluster_unread_rerouted_total 3.0\n" in metrics, metrics
        assert "\nmeridian_cluster_unread_kept 0.0\n" in metrics, metrics

        bob2 = await client(n1, "bob", "b2").online(n1.port)
        clients.append(bob2)
        got = [(await bob2.next_message(timeout=10)) for _ in range(3)]
        assert [m["body"] for m in got] == ["unread 1", "unread 2", "unread 3"]
        assert all(m["delay"]["stamp"] for m in got)  # from offline storage
        with contextlib.suppress(asyncio.TimeoutError):
            extra = await bob2.next_message(timeout=1.5)
            raise AssertionError(f"a message came twice: {extra['body']!r}")
    finally:
        await close_all(clients)


# -- 2. ten members at once ------------------------------------------------------------------------------


async def test_ten_members_started_at_once_converge(tmp_path, spawn):
    db = f"sqlite:///{tmp_path / 'discovery.db'}"
    names = [f"m{i:02d}" for i in range(10)]
    nodes = [spawn(name, port, db) for name, port in zip(names, fresh_ports(len(names)), strict=True)]
    await asyncio.to_thread(start_all, nodes)
    await joined(nodes, timeout=45)
    for node in nodes:
        info = await ctl(node, "system-info")
        assert info["joinedNodes"] == names and info["discoveredNodes"] == names, (node.name, info)
        assert info["discoveryWorks"] and info["unavailableNodes"] == [] and info["conflictNodes"] == [], info
        assert all(n.alive() for n in nodes)
    # Each pair has one link: a member joined to all nine others once, with no refusal or replacement.
    for node in nodes:
        assert len(log_lines(node, r"meridian.cluster: joined ")) == 9, node.log()
        assert not log_lines(node, r"refused|replacing|is down"), node.log()
        assert "Traceback" not in node.log_path.read_text(errors="replace"), node.log()


SLOW_REFRESH = 30.0


async def test_a_member_whose_name_sorts_last_joins_without_waiting_for_a_refresh(tmp_path, spawn):
    """Each member dials the members whose names sort after its own.  One started after the others
    with a name that sorts last waited for their next discovery refresh to be dialled: up to
    ``refresh_interval`` (30 s here) before it joined, and before it was ready.  It knocks now, and
    they look at once."""
    db = f"sqlite:///{tmp_path / 'discovery.db'}"
    ports = fresh_ports(3)
    first = [spawn(name, port, db, refresh_interval=SLOW_REFRESH)
             for name, port in zip(["a1", "b1"], ports[:2], strict=True)]
    await asyncio.to_thread(start_all, first)
    await joined(first, timeout=SLOW_REFRESH + 15)
    last = spawn("z1", ports[2], db, refresh_interval=SLOW_REFRESH)
    await asyncio.to_thread(last.start)
    started = time.monotonic()
    await joined([*first, last], timeout=SLOW_REFRESH + 15)
    took = time.monotonic() - started
    assert took < 5.0, f"z1 joined {took:.1f} s after it started (refresh_interval {SLOW_REFRESH:.0f} s)"
    for node in (*first, last):
        assert len(log_lines(node, r"meridian.cluster: joined ")) == 2, node.log()  # one link a pair
        assert not log_lines(node, r"refused|replacing|is down"), node.log()


# -- 3. duplicate node name ------------------------------------------------------------------------------


DUP_PING_TIMEOUT = 3.0
STALL = 1.6  # > 2 ping intervals + a refresh; + the silence before it (<= 0.6 s) < DUP_PING_TIMEOUT


async def test_duplicate_node_name_is_refused_and_the_original_stays(tmp_path, spawn):
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    ports = fresh_ports(4)
    nodes = [spawn(name, port, db, storage_url=db, ping_timeout=DUP_PING_TIMEOUT)
             for name, port in zip(["n0", "n1", "n2"], ports[:3], strict=True)]
    n0, n1, n2 = nodes
    for u in ("alice", "bob"):  # one at a time: two first opens of a new SQLite file can stall each other
        await asyncio.to_thread(n0.register, u, USERS[u])
    await asyncio.to_thread(start_all, nodes)
    await joined(nodes)
    alice = await client(n1, "alice", "orig").login(n1.port)
    bob = await client(n2, "bob", "b").login(n2.port)
    try:
        await sizes(nodes, [2, 2, 2])

        # A second process named n1: its own ports, the same discovery table.
        dup = spawn("n1", ports[3], db, workdir="n1-dup", storage_url=db, ping_timeout=DUP_PING_TIMEOUT)
        await asyncio.to_thread(dup.start)
        # It reaches n2 (n1 < n2), which already has a live n1: refused, clearly, every time it tries.
        # Meanwhile the discovery row of n1 keeps the original's address (the others' way to n1).
        seen: set[str] = set()

        async def refusals() -> list[str]:
            seen.add(discovery_address(tmp_path / "shared.db", "n1"))
            return log_lines(n2, r"WARNING meridian.cluster: .*refused.*duplicate node name 'n1'")

        await until(refusals, lambda lines: len(lines) >= 4, what="n2 refuses the duplicate n1 again and again")
        assert seen == {f"127.0.0.1:{ports[1]}"}, seen
        await log_line(dup, r"refused by peer: duplicate node name 'n1'")
        # The refused double never counted n2 among its members, not even for an instant: it did
        # not join it, so it did not take n2 for a member going down either (before, it reported
        # n2 joined until the refusal came, then "down", dropping n2's records with side effects).
        assert not log_lines(dup, r"meridian.cluster: joined n2"), dup.log()
        assert not log_lines(dup, r"cluster member n2 is down"), dup.log()
        assert log_lines(dup, r"WARNING meridian.cluster: node name 'n1' is registered by another live member "
                              rf"at 127.0.0.1:{ports[1]} .*duplicate node name\?"), dup.log()
        assert dup.alive()

        # The original stalls (a GC pause, a busy host) for more than two ping intervals but less
        # than ping_timeout while its double keeps knocking: a stall is not death, and the double
        # still cannot take its place.
        before = len(log_lines(n2, r"refused.*duplicate node name"))
        n1.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(STALL)  # the fault's duration, not a wait for something
        finally:
            n1.proc.send_signal(signal.SIGCONT)
        assert len(log_lines(n2, r"refused.*duplicate node name")) >= before + 3, n2.log()

        # The original never left: joined with the others, its session still replicated and reachable.
        assert n1.alive(), n1.log()
        for node in nodes:
            info = await ctl(node, "system-info")
            assert info["joinedNodes"] == ["n0", "n1", "n2"], (node.name, info)
        assert "n1" in (await ctl(n2, "system-info"))["conflictNodes"]
        await sizes(nodes, [2, 2, 2])
        bob.send_message(mto="alice@localhost/orig", mbody="still you?", mtype="chat")
        assert (await alice.next_message(timeout=10))["body"] == "still you?"
        for node in nodes:
            assert not log_lines(node, r"is down|replacing"), node.log()

        dup.stop()
        assert n1.alive()
        for node in nodes:
            assert (await ctl(node, "system-info"))["joinedNodes"] == ["n0", "n1", "n2"]
    finally:
        await close_all([alice, bob])


# -- 4. strangers on the cluster port ---------------------------------------------------------------------


class VerdictLink(ClusterLink):
    """A link core that introduces itself (with whatever config the test gives it) but judges nothing
    the node says back, so what closes it is the node's own verdict: Closed("refused by peer: …")."""

    def _on_hello(self, hello: dict[str, Any]) -> list[LinkEvent]:
        return super()._on_hello({**hello, "cluster": self.config.cluster, "version": self.config.version})

    def _on_auth(self, auth: dict[str, Any]) -> list[LinkEvent]:
        return []  # stay in AUTH: the node's next frame is its verdict (a DUMP would mean it let us in)


def knock(port: int, config: LinkConfig, link_cls: type[ClusterLink] = VerdictLink,
          timeout: float = 10.0) -> list[LinkEvent]:
    """Talk the cluster protocol over a raw TLS socket (no certificate check) until the link closes
    or joins; return its events."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    link = link_cls(config, time.monotonic())
    events: list[LinkEvent] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        deadline = time.monotonic() + timeout
        while not link.closed and not any(isinstance(e, Joined) for e in events):
            if out := link.data_to_send():
                with contextlib.suppress(OSError):
                    tls.sendall(out)
            if time.monotonic() > deadline:
                raise AssertionError(f"no verdict from the node in {timeout}s: {events}")
            try:
                data = tls.recv(65536)
            except (ConnectionError, ssl.SSLError):
                data = b""
            events += link.receive_data(data, time.monotonic())
        if out := link.data_to_send():
            with contextlib.suppress(OSError):
                tls.sendall(out)
    return events


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("strangers")
    db = f"sqlite:///{tmp / 'discovery.db'}"
    p0, p1 = fresh_ports(2)
    nodes = [new_node(tmp / name, name, settings=cluster_settings(port, db))
             for name, port in (("s0", p0), ("s1", p1))]
    start_all(nodes)
    asyncio.run(joined(nodes))
    yield nodes[0], nodes[1]
    for node in nodes:
        node.stop()
    for node in nodes:
        assert "Traceback" not in node.log_path.read_text(errors="replace"), node.log()


def cluster_port(node: NodeProcess) -> int:
    return int(tomllib.loads(node.config.read_text())["cluster"]["port"])


def probe_config(**kw: Any) -> LinkConfig:
    base: dict[str, Any] = {"cluster": CLUSTER, "node": "intruder", "incarnation": "1", "secret": SECRET.encode()}
    return LinkConfig(**{**base, **kw})


@pytest.mark.parametrize("config, reason", [
    (probe_config(secret=b"not-the-cluster-secret"), "wrong cluster secret"),
    (probe_config(cluster="other"), f"cluster name mismatch: we are {CLUSTER!r}, peer is 'other'"),
    (probe_config(version="2.0"), f"incompatible protocol version '2.0' (we speak '{PROTOCOL_VERSION}')"),
], ids=["wrong-secret", "other-cluster", "version-2.0"])
async def test_strangers_are_refused_with_a_clear_reason(pair, config, reason):
    s0, s1 = pair
    port = cluster_port(s0)
    before = len(log_lines(s0, "refused"))
    events = await asyncio.to_thread(knock, port, config)
    assert not any(isinstance(e, Joined) for e in events), events
    closed = [e for e in events if isinstance(e, Closed)]
    assert closed and closed[-1].refused and closed[-1].reason == f"refused by peer: {reason}", events
    # The node says so in its log, and is otherwise unmoved: still joined with s1, status answers.
    lines = await log_line(s0, r"WARNING meridian.cluster: cluster link with .* refused", count=before + 1)
    assert reason in lines[-1] and "cluster link with intruder (127.0.0.1:" in lines[-1], lines[-1]
    for node in (s0, s1):
        info = await ctl(node, "system-info")
        assert info["joinedNodes"] == ["s0", "s1"] and info["discoveryWorks"], info
        assert node.alive()


async def test_the_stranger_probe_joins_with_the_right_credentials(pair):
    """The control case: the same probe with the cluster's name, secret and version is let in."""
    s0, _ = pair
    port = cluster_port(s0)
    events = await asyncio.to_thread(knock, port, probe_config(node="visitor"), ClusterLink)
    assert [e for e in events if isinstance(e, Joined)][0].node == "s0", events
    await log_line(s0, r"joined visitor")
    await log_line(s0, r"cluster member visitor is down")
    assert (await ctl(s0, "system-info"))["joinedNodes"] == ["s0", "s1"]


# -- 5. the discovery database is down at start -----------------------------------------------------------


@pytest.mark.postgres
async def test_discovery_database_down_at_start_then_up(spawn):
    if pg_bindir() is None:
        pytest.skip("PostgreSQL binaries are not installed (scripts/install-test-deps.sh installs them)")
    pg = PostgresServer()  # its port is chosen now; the server starts later
    while pg.port in _TAKEN:
        pg.stop()
        pg = PostgresServer()
    _TAKEN.add(pg.port)
    nodes: list[NodeProcess] = []
    try:
        url = pg.url("discovery")
        nodes += [spawn(name, port, url) for name, port in zip(["d0", "d1"], fresh_ports(2), strict=True)]
        await asyncio.to_thread(start_all, nodes)  # storage: each its own SQLite; discovery: nowhere yet
        for node in nodes:
            line = (await log_line(node, r"WARNING meridian.cluster: discovery failed"))[0]
            assert str(pg.port) in line, line  # says what it could not reach
            info = await ctl(node, "system-info")
            assert info["discoveryWorks"] is False, info
            assert info["joinedNodes"] == info["discoveredNodes"] == [node.name], info
            assert node.alive()

        await asyncio.to_thread(pg.start)
        await asyncio.to_thread(pg.create_database, "discovery")
        await joined(nodes)
        for node in nodes:
            info = await ctl(node, "system-info")
            assert info["discoveryWorks"] is True and info["discoveredNodes"] == ["d0", "d1"], info
            assert log_lines(node, r"INFO meridian.cluster: discovery works")
    finally:
        for node in nodes:  # before the database: its going away is not this test's subject
            await asyncio.to_thread(node.stop)
        await asyncio.to_thread(pg.stop)


@pytest.mark.postgres
async def test_unreachable_discovery_database_is_reported_and_the_links_stay(spawn, postgres_db_url):
    """The discovery database stops answering (a blackhole: no error, no reset, just silence):
    the members say discovery does not work instead of hanging on it, keep their links, and
    recover when it answers again."""
    pg_address = re.search(r"@([^/]+)/", postgres_db_url)
    assert pg_address is not None
    host, _, port = pg_address.group(1).rpartition(":")
    proxy = FaultProxy(host, int(port), port=fresh_ports(1)[0]).start()
    nodes: list[NodeProcess] = []
    try:
        url = postgres_db_url.replace(pg_address.group(1), proxy.address)
        nodes += [spawn(name, p, url) for name, p in zip(["b0", "b1"], fresh_ports(2), strict=True)]
        await asyncio.to_thread(start_all, nodes)
        await joined(nodes)

        await asyncio.to_thread(proxy.partition, "blackhole")
        for node in nodes:
            await until(lambda node=node: live(node, "systemInfo"), lambda i: i["discoveryWorks"] is False,
                        timeout=15, what=f"{node.name} reports discovery down")
            await log_line(node, r"WARNING meridian.cluster: discovery failed: TimeoutError")
        for node in nodes:
            info = await ctl(node, "system-info")
            assert info["joinedNodes"] == ["b0", "b1"] and info["discoveryWorks"] is False, info

        await asyncio.to_thread(proxy.heal)
        for node in nodes:
            await until(lambda node=node: live(node, "systemInfo"), lambda i: i["discoveryWorks"] is True,
                        timeout=15, what=f"{node.name} reports discovery back")
            info = await ctl(node, "system-info")
            assert info["joinedNodes"] == info["discoveredNodes"] == ["b0", "b1"], info
            assert not log_lines(node, r"is down"), node.log()
    finally:
        for node in nodes:
            await asyncio.to_thread(node.stop)
        proxy.stop()
