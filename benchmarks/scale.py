"""Scaling a region under load: 2 → 5 → 2 nodes while clients chat, and nothing lost or doubled.

What Kubernetes does with the nodes' Deployment and its autoscaler (``compose/k8s``), played with
real processes on this machine:

- **The region**: ``meridian node`` processes (``tests/helpers/node.py``) of one cluster, sharing one
  SQLite file (``--postgres``: a throwaway PostgreSQL) for accounts and the discovery table, one
  certificate for the domain (as behind a load balancer), discovery every ``--refresh`` s.
- **The load**: raw XMPP clients in this process (``tests/helpers/xmpp_raw.py``'s ``RawClient``:
  STARTTLS, SASL PLAIN, bind, XEP-0198 with resumption, initial presence), ``--clients-per-node``
  per node.  Each sends ``--rate`` messages/s on average to a random other client's full JID; every
  body is numbered (sender, sequence) and carries its creation time.  A client keeps what it sent
  until the server acknowledges it (``<r/>`` / ``<a h/>``), answers the server's ``<r/>`` with the
  count of stanzas it received, and on resumption resends what the server had not handled, as
  XEP-0198 §4 says a client must.
- **The load balancer**: a client connects to the ready node with the fewest clients
  (least-connections).  A node is *ready* when its ``/ready`` answers 200 — listeners open,
  storage answering, joined to every live member with their session tables merged — exactly what
  the Kubernetes readiness probe asks; a node being removed gets no new clients.
- **Scale-out**: nodes are added one at a time (``--step`` s apart); the join time is from the
  process's start to its first 200 on ``/ready``.  Once ready, ``--clients-per-node`` new clients
  log in (the balancer sends them to it): the load grows with the region.
- **Scale-in**: nodes are removed one at a time as a Deployment does: taken out of the balancer
  (the preStop hook's wait, ``--prestop`` s), then SIGTERM.  The node kicks its clients with
  ``<system-shutdown/>`` and hands their sessions to another member; each client reconnects to a
  ready node and resumes (``<resume previd h/>``).  A resumption that fails makes the client bind
  again (counted).  Default order: the newest node, the oldest, then the middle one (Kubernetes
  prefers removing newer pods, but not strictly).
- **Accounting**: after the last change the load runs ``--hold`` s more, stops, every client asks
  for an ack, and the run waits until every message is acknowledged and delivered (or
  ``--settle`` s).  Lost = sent − delivered (distinct); duplicated = deliveries beyond the first.
  Latency is creation → receipt (one clock: the same process); "during changes" covers each
  change from its start until its clients are settled, plus 2 s.

    .venv/bin/python benchmarks/scale.py                   # 100 clients per node: 200 → 500 → 500
    .venv/bin/python benchmarks/scale.py --quick           # 8 per node, short holds: about a minute
    .venv/bin/python benchmarks/scale.py --json out.json --plot docs/scale.png

Exit status 0 when nothing was lost or duplicated, 1 when something was (``GOAL MISSED:``), 2 when
the run failed (a node did not start or become ready, clients could not log in).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:  # run as a script from anywhere: machine beside it, tests.helpers and the node's code
        sys.path.insert(0, _p)

from machine import load_average, machine_busy  # noqa: E402

from tests.helpers.cluster import SECRET  # noqa: E402
from tests.helpers.node import NodeProcess  # noqa: E402
from tests.helpers.ports import free_port  # noqa: E402
from tests.helpers.xmpp_raw import CLIENT, SM, RawClient, local  # noqa: E402

DOMAIN = "localhost"
PASSWORD = "scale-test-password"
RESOURCE = "load"
STREAMS = "http://etherx.jabber.org/streams"
BODY = re.compile(r"^m:(\d+):(\d+):(\d+)$")


class RunFailed(Exception):
    """The run could not be carried out (not a goal missed)."""


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def now() -> float:
    return time.monotonic()


# -- the region's nodes, as the load balancer sees them ------------------------------------------------


@dataclass
class Member:
    proc: NodeProcess
    state: str = "starting"  # starting → ready → terminating → gone
    spawned: float = 0.0
    listening: float | None = None  # the process's listeners are up (its control socket exists)
    ready: float | None = None  # first 200 on /ready
    terminating: float | None = None  # out of the balancer (preStop)
    sigterm: float | None = None
    gone: float | None = None
    exit_code: int | None = None
    clients_at_stop: int = 0

    @property
    def name(self) -> str:
        return self.proc.name


class Balancer:
    """Least-connections over the ready members: what a Service/LoadBalancer in front of the
    region's ready pods does, as far as where a new connection goes."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.load: collections.Counter[str] = collections.Counter()

    def ready(self) -> list[Member]:
        return [m for m in self.members.values() if m.state == "ready"]

    def pick(self) -> Member:
        ready = self.ready()
        if not ready:
            raise ConnectionError("no ready node")
        return min(ready, key=lambda m: (self.load[m.name], m.name))


# -- the clients ---------------------------------------------------------------------------------------


@dataclass
class Stats:
    sent: int = 0  # messages created by the load (each one is eventually written)
    written: int = 0  # writes, resends after a resumption included
    acked: int = 0  # messages the server acknowledged (XEP-0198 h)
    receipts: collections.Counter[tuple[int, int]] = field(default_factory=collections.Counter)
    created: dict[tuple[int, int], float] = field(default_factory=dict)
    target: dict[tuple[int, int], int] = field(default_factory=dict)
    delivered: list[tuple[float, float]] = field(default_factory=list)  # (created, latency s), first receipts
    delayed: int = 0  # arrived with a <delay/> (from offline storage)
    errors: int = 0  # message errors bounced to a sender
    stream_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    resumed_same: int = 0
    resumed_moved: int = 0  # resumed on another node than the one that dropped it
    resume_failed: int = 0  # <failed/>: bound again
    reconnects: list[float] = field(default_factory=list)  # drop → resumed (s)
    connect_errors: int = 0
    client_failures: list[str] = field(default_factory=list)


class LoadClient:
    """One account, one resource, one XEP-0198 session that follows the balancer."""

    def __init__(self, bench: Bench, idx: int) -> None:
        self.bench = bench
        self.idx = idx
        self.user = f"scale{idx}"
        self.jid = f"{self.user}@{DOMAIN}/{RESOURCE}"
        self.conn: RawClient | None = None
        self.member: Member | None = None
        self.previd = ""
        self.h_in = 0  # stanzas received on the session (what we acknowledge)
        self.base = 0  # our stanzas the server has acknowledged
        self.queue: collections.deque[tuple[str, bytes, tuple[int, int] | None]] = collections.deque()
        self.seq = 0
        self.connected = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.dropped_at: float | None = None
        self.history: list[tuple[float, str]] = []  # (t, node) each time the session lands somewhere

    # -- sending ---------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.send(data)
        self.bench.stats.written += 1

    def send_message(self, to: LoadClient) -> None:
        self.seq += 1
        key = (self.idx, self.seq)
        t = now()
        self.bench.stats.created[key] = t
        self.bench.stats.target[key] = to.idx
        self.bench.stats.sent += 1
        body = f"m:{self.idx}:{self.seq}:{time.monotonic_ns()}"
        data = f"<message to='{to.jid}' type='chat' id='{self.idx}-{self.seq}'><body>{body}</body></message>".encode()
        self.queue.append(("message", data, key))
        if self.connected.is_set():
            self._write(data)

    def request_ack(self) -> None:
        if self.connected.is_set() and self.queue and self.conn is not None:
            self.conn.send(f"<r xmlns='{SM}'/>")

    def _acked(self, h: int) -> None:
        for _ in range(max(0, h - self.base)):
            if not self.queue:
                break
            kind, _, _ = self.queue.popleft()
            if kind == "message":
                self.bench.stats.acked += 1
        self.base = max(self.base, h)

    # -- the session -----------------------------------------------------------------------------

    async def _open(self, member: Member) -> RawClient:
        conn = RawClient(member.proc.port, self.bench.cert, domain=DOMAIN)
        await conn.connect()
        await conn.login(self.user, PASSWORD)
        return conn

    async def _fresh(self, conn: RawClient) -> None:
        """Bind and enable resumable stream management; the initial presence is our first stanza."""
        await conn.bind(RESOURCE)
        enabled = await conn.enable()
        if local(enabled) != "enabled" or not enabled.get("id"):
            raise RunFailed(f"{self.jid}: stream management not enabled: {ET.tostring(enabled)!r}")
        self.previd = str(enabled.get("id"))
        self.h_in = 0
        self.base = 0
        # What was never acknowledged goes again on the new session (XEP-0198 §4: a client may
        # resend after a failed resumption — the one case that can duplicate).
        kept = [q for q in self.queue if q[0] == "message"]
        self.queue = collections.deque([("presence", b"<presence/>", None), *kept])
        self.conn = conn
        for _, data, _ in self.queue:
            self._write(data)

    async def start(self) -> None:
        member = self.bench.balancer.pick()
        self.bench.balancer.load[member.name] += 1
        self.member = member
        self.history.append((round(now() - self.bench.t0, 3), member.name))
        try:
            conn = await self._open(member)
            await self._fresh(conn)
        except BaseException:
            self.bench.balancer.load[member.name] -= 1
            raise
        self.connected.set()
        self.task = asyncio.create_task(self._reader(), name=f"reader-{self.idx}")

    async def _resume(self) -> None:
        """Connect where the balancer says and resume; bind again if the session is gone."""
        stats = self.bench.stats
        old = self.member.name if self.member is not None else ""
        delay = 0.05
        while True:
            try:
                member = self.bench.balancer.pick()
            except ConnectionError:
                await asyncio.sleep(0.1)
                continue
            self.bench.balancer.load[member.name] += 1
            self.member = member
            try:
                conn = await self._open(member)
                answer = await conn.resume(self.previd, self.h_in)
                if local(answer) == "resumed":
                    self.conn = conn
                    self._acked(int(answer.get("h", "0")))
                    for _, data, _ in self.queue:  # what the server had not handled, in order
                        self._write(data)
                    self.history.append((round(now() - self.bench.t0, 3), member.name))
                    if member.name == old:
                        stats.resumed_same += 1
                    else:
                        stats.resumed_moved += 1
                else:
                    stats.resume_failed += 1
                    self.bench.log(f"{self.jid}: resumption on {member.name} failed: "
                                   f"{ET.tostring(answer).decode()[:200]}; binding again")
                    await self._fresh(conn)
                break
            except (OSError, ConnectionError, TimeoutError, PermissionError, ET.ParseError, AssertionError) as e:
                stats.connect_errors += 1
                self.bench.balancer.load[member.name] -= 1
                self.bench.log(f"{self.jid}: reconnecting to {member.name} failed ({type(e).__name__}: {e})")
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
        if self.dropped_at is not None:
            stats.reconnects.append(now() - self.dropped_at)
            self.dropped_at = None
        self.connected.set()

    def _drop(self, why: str) -> None:
        """The stream is gone (a stream error, a close): stop writing, leave the balancer's count,
        and let the reader reconnect — what a client does on ``<system-shutdown/>``."""
        self.bench.log(f"{self.jid}: dropped by {self.member.name if self.member else '?'} ({why})")
        self.connected.clear()
        self.dropped_at = now()
        if self.member is not None:
            self.bench.balancer.load[self.member.name] -= 1
        conn, self.conn = self.conn, None
        if conn is not None and conn.writer is not None:
            conn.writer.transport.abort()

    async def _reader(self) -> None:
        try:
            await self._read()
        except Exception as e:  # a client that breaks is counted and reported, not silently gone
            self.bench.stats.client_failures.append(f"{self.jid}: {type(e).__name__}: {e}")
            self.bench.log(f"{self.jid}: client failed: {type(e).__name__}: {e}")

    async def _read(self) -> None:
        stats = self.bench.stats
        while not self.bench.stopping:
            conn = self.conn
            if conn is None:
                await self._resume()
                continue
            try:
                el = await conn.next(timeout=3600)
            except (OSError, ConnectionError, TimeoutError, ET.ParseError) as e:
                if not self.bench.stopping:
                    stats.stream_errors[f"connection lost ({type(e).__name__})"] += 1
                    self._drop("lost")
                continue
            if self.bench.stopping:
                return
            name = local(el)
            if el.tag == f"{{{STREAMS}}}error":
                condition = next((local(c) for c in el if not local(c) == "text"), "?")
                stats.stream_errors[condition] += 1
                self._drop(condition)
                continue
            if name == "stream":  # </stream:stream>
                stats.stream_errors["stream closed"] += 1
                self._drop("closed")
                continue
            if el.tag == f"{{{SM}}}r":
                conn.send(f"<a xmlns='{SM}' h='{self.h_in}'/>")
                continue
            if el.tag == f"{{{SM}}}a":
                self._acked(int(el.get("h", "0")))
                continue
            if el.tag.startswith(f"{{{CLIENT}}}"):
                self.h_in += 1
                if name == "message":
                    self.bench.received(el)


# -- the run ---------------------------------------------------------------------------------------------


@dataclass
class Window:
    label: str
    start: float
    end: float = float("inf")
    node: str = ""


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.balancer = Balancer()
        self.clients: list[LoadClient] = []
        self.stats = Stats()
        self.stopping = False
        self.sending = False
        self.windows: list[Window] = []
        self.events: list[tuple[float, str]] = []
        self.samples: list[dict[str, Any]] = []
        self.cert = Path()
        self.key = Path()
        self.storage_url = ""
        self.t0 = now()
        self.log_lines: list[str] = []
        self.rng = random.Random(args.seed)
        self._names = 0

    def log(self, line: str) -> None:
        stamp = f"[{now() - self.t0:7.2f}s] {line}"
        self.log_lines.append(stamp)
        if self.args.verbose:
            print(stamp, flush=True)

    def event(self, what: str) -> None:
        self.events.append((now() - self.t0, what))
        print(f"  {now() - self.t0:7.2f}s  {what}", flush=True)

    def received(self, el: ET.Element) -> None:
        if el.get("type") == "error":
            self.stats.errors += 1
            return
        body = el.findtext(f"{{{CLIENT}}}body") or ""
        m = BODY.match(body)
        if m is None:
            return
        key = (int(m.group(1)), int(m.group(2)))
        self.stats.receipts[key] += 1
        if self.stats.receipts[key] == 1:
            created = self.stats.created.get(key)
            if created is not None:
                self.stats.delivered.append((created - self.t0, now() - created))
        if el.find("{urn:xmpp:delay}delay") is not None:
            self.stats.delayed += 1

    # -- nodes ---------------------------------------------------------------------------------------

    def new_member(self) -> Member:
        self._names += 1
        name = f"n{self._names}"
        cluster = {"enabled": True, "secret": SECRET, "port": free_port(), "refresh_interval": self.args.refresh,
                   "ping_interval": 0.5, "ping_timeout": 3.0}
        limits = {"max_connections_per_ip": 100_000, "max_connections": 100_000}
        proc = NodeProcess(self.workdir / name, name=name, storage_url=self.storage_url,
                           settings={"cluster": cluster, "limits": limits, "log_level": "INFO",
                                     "tls": {"cert_file": str(self.cert), "key_file": str(self.key)}})
        member = Member(proc)
        self.balancer.members[name] = member
        return member

    async def _ready(self, member: Member) -> bool:
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s, \
                    s.get(f"{member.proc.admin_url}/ready") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def add_node(self) -> Member:
        """Start a member and wait for its first 200 on ``/ready``: only then may clients go to it."""
        member = self.new_member()
        member.spawned = now()
        self.event(f"start {member.name}")
        try:
            await asyncio.to_thread(member.proc.start, 60.0)
        except (RuntimeError, TimeoutError) as e:
            raise RunFailed(str(e)) from e
        member.listening = now()
        deadline = now() + 60
        while not await self._ready(member):
            if now() > deadline or not member.proc.alive():
                raise RunFailed(f"{member.name} never became ready:\n{member.proc.log()}")
            await asyncio.sleep(0.05)
        member.ready = now()
        member.state = "ready"
        self.event(f"{member.name} ready after {member.ready - member.spawned:.2f} s "
                   f"(listening after {member.listening - member.spawned:.2f} s)")
        return member

    async def remove_node(self, member: Member) -> None:
        """What Kubernetes does to a pod it removes: out of the endpoints, preStop, SIGTERM, wait."""
        member.terminating = now()
        member.state = "terminating"
        member.clients_at_stop = self.balancer.load[member.name]
        self.event(f"{member.name}: out of the balancer ({member.clients_at_stop} clients), preStop")
        await asyncio.sleep(self.args.prestop)
        member.sigterm = now()
        self.event(f"{member.name}: SIGTERM")
        member.exit_code = await asyncio.to_thread(member.proc.stop, signal.SIGTERM, 60.0)
        member.gone = now()
        member.state = "gone"
        self.event(f"{member.name} exited ({member.exit_code}) {member.gone - member.sigterm:.2f} s after SIGTERM")

    # -- clients -------------------------------------------------------------------------------------

    async def register(self, n: int) -> None:
        """The accounts, written through the storage API (a ``meridian ctl`` per account is 0.5 s)."""
        from concurrent.futures import ThreadPoolExecutor

        from cluster_node.settings import NodeSettings
        from cluster_node.wiring import open_accounts

        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=4))
        settings = NodeSettings(domains=[DOMAIN], data_dir=self.workdir / "ctl", storage={"url": self.storage_url},
                                scram_iterations=4096)
        async with open_accounts(settings) as (_, accounts):
            sem = asyncio.Semaphore(32)

            async def one(i: int) -> None:
                async with sem:
                    await accounts.register(DOMAIN, f"scale{i}", PASSWORD)

            await asyncio.gather(*(one(i) for i in range(n)))

    async def log_in(self, n: int) -> None:
        """``n`` new clients, through the balancer, ``--login-concurrency`` at a time."""
        new = [LoadClient(self, len(self.clients) + i) for i in range(n)]
        sem = asyncio.Semaphore(self.args.login_concurrency)

        async def one(c: LoadClient) -> None:
            async with sem:
                await c.start()

        try:
            await asyncio.gather(*(one(c) for c in new))
        except (OSError, ConnectionError, TimeoutError, PermissionError) as e:
            raise RunFailed(f"login failed: {type(e).__name__}: {e}") from e
        self.clients += new

    async def sender(self) -> None:
        """Open loop: every tick, rate × clients × tick messages from random senders to random others."""
        tick = 0.02
        owed = 0.0
        last = now()
        while self.sending:
            await asyncio.sleep(tick)
            t = now()
            owed += self.args.rate * len(self.clients) * (t - last)
            last = t
            while owed >= 1 and len(self.clients) > 1:
                owed -= 1
                a, b = self.rng.sample(self.clients, 2)
                a.send_message(b)

    async def acker(self) -> None:
        """Each client asks for an ack every second it has something unacknowledged."""
        while not self.stopping:
            await asyncio.sleep(1.0)
            for c in self.clients:
                c.request_ack()

    async def sampler(self) -> None:
        """Once a second: clients per node and deliveries, for the timeline (JSON and plot)."""
        seen = 0
        while not self.stopping:
            await asyncio.sleep(1.0)
            new = self.stats.delivered[seen:]
            seen += len(new)
            lat = [x[1] * 1000 for x in new]
            self.samples.append({
                "t": round(now() - self.t0, 2),
                "clients": {m.name: self.balancer.load[m.name] for m in self.balancer.members.values()
                            if m.state in ("ready", "terminating")},
                "delivered": len(new),
                "p50_ms": round(pct(lat, 50) or 0, 2) if lat else None,
                "p99_ms": round(pct(lat, 99) or 0, 2) if lat else None,
                "max_ms": round(max(lat), 2) if lat else None,
            })

    async def settled(self, clients: list[LoadClient] | None = None, timeout: float = 30.0) -> bool:
        """Every client (of ``clients``) connected again."""
        deadline = now() + timeout
        group = clients if clients is not None else self.clients
        while now() < deadline:
            if all(c.connected.is_set() for c in group):
                return True
            await asyncio.sleep(0.05)
        return False

    async def run(self) -> dict[str, Any]:
        a = self.args
        from cluster_node.net.tls import ensure_self_signed

        self.cert, self.key = ensure_self_signed(self.workdir / "tls", [DOMAIN])
        total = a.clients_per_node * a.max_nodes
        t = now()
        await self.register(total)
        self.event(f"{total} accounts registered in {now() - t:.1f} s")
        for _ in range(a.min_nodes):
            await self.add_node()
        await self.log_in(a.clients_per_node * a.min_nodes)
        self.event(f"{len(self.clients)} clients logged in on {a.min_nodes} nodes")
        tasks = [asyncio.create_task(x) for x in (self.acker(), self.sampler())]
        self.sending = True
        sender = asyncio.create_task(self.sender())
        busy0, own0, wall0 = machine_busy(), self.own_cpu(), now()
        await asyncio.sleep(a.warmup)

        # scale-out, one node at a time
        for _ in range(a.max_nodes - a.min_nodes):
            window = Window("scale-out", now())
            self.windows.append(window)
            window.node = (await self.add_node()).name
            await self.log_in(a.clients_per_node)
            self.event(f"{a.clients_per_node} more clients ({len(self.clients)} in all)")
            window.end = now() + 2.0
            await asyncio.sleep(a.step)
        await asyncio.sleep(a.hold)

        # scale-in, one node at a time
        for member in self.victims():
            window = Window("scale-in", now(), node=member.name)
            self.windows.append(window)
            moving = [c for c in self.clients if c.member is member]
            await self.remove_node(member)
            if not await self.settled(moving, timeout=60):
                self.event(f"{sum(not c.connected.is_set() for c in moving)} clients of {member.name} "
                           f"still not reconnected after 60 s")
            window.end = now() + 2.0
            self.event(f"{member.name}'s clients settled "
                       f"({len(moving)} moved, {now() - (member.sigterm or now()):.2f} s after SIGTERM)")
            await asyncio.sleep(a.step)
        await asyncio.sleep(a.hold)

        # stop the load, then wait until everything is acknowledged and delivered
        self.sending = False
        await sender
        busy1, own1, wall1 = machine_busy(), self.own_cpu(), now()
        self.event(f"load stopped: {self.stats.sent} messages sent")
        await self.settled(timeout=30)
        deadline = now() + a.settle
        while now() < deadline:
            for c in self.clients:
                c.request_ack()
            unacked = sum(1 for c in self.clients for q in c.queue if q[0] == "message")
            if unacked == 0 and len(self.stats.receipts) >= self.stats.sent:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # late duplicates, if any, would come now
        self.event("settled")
        tables = await self.session_tables()
        self.stopping = True
        for task in tasks:
            task.cancel()
        for c in self.clients:
            if c.conn is not None:
                await c.conn.close()
            if c.task is not None:
                c.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, *(c.task for c in self.clients if c.task), return_exceptions=True)
        machine = busy1 - busy0 if busy0 is not None and busy1 is not None else None
        return self.report(tables, wall1 - wall0, machine, own1 - own0)

    def own_cpu(self) -> float:
        """CPU seconds used so far by this process and the nodes (live ones, and those stopped and reaped)."""
        import resource

        import psutil

        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            r = resource.getrusage(who)
            total += r.ru_utime + r.ru_stime
        for m in self.balancer.members.values():
            if m.proc.proc is not None and m.proc.alive():
                with contextlib.suppress(psutil.Error):
                    t = psutil.Process(m.proc.proc.pid).cpu_times()
                    total += t.user + t.system
        return total

    def victims(self) -> list[Member]:
        """Newest, oldest, then from the middle: the nodes to remove, ``max - min`` of them."""
        pool = sorted(self.balancer.ready(), key=lambda m: m.spawned)
        out: list[Member] = []
        take_newest = True
        while len(out) < self.args.max_nodes - self.args.min_nodes and pool:
            if len(out) < 2:
                out.append(pool.pop(-1 if take_newest else 0))
                take_newest = not take_newest
            else:
                out.append(pool.pop(len(pool) // 2))
        return out

    async def session_tables(self) -> dict[str, int]:
        """Each remaining member's count of the region's sessions (its replicated table)."""
        counts = {}
        for m in self.balancer.ready():
            status, body = await m.proc.admin("{ session { countSessions } }")
            counts[m.name] = int(body["data"]["session"]["countSessions"]) if status == 200 else -1
        return counts

    # -- the report ------------------------------------------------------------------------------------

    def report(self, tables: dict[str, int], load_seconds: float, machine_cpu: float | None,
               own_cpu: float) -> dict[str, Any]:
        s = self.stats
        delivered = len(s.receipts)
        lost = sum(1 for k in s.created if k not in s.receipts)
        duplicated = sum(n - 1 for n in s.receipts.values() if n > 1)
        windows = [(w.start - self.t0, w.end - self.t0, w.label) for w in self.windows]
        nodes_of = [w.node for w in self.windows]

        def in_window(t: float, label: str | None = None) -> bool:
            return any(a <= t <= b and (label is None or lbl == label) for a, b, lbl in windows)

        lat = {"all": [x[1] * 1000 for x in s.delivered],
               "steady": [x[1] * 1000 for x in s.delivered if not in_window(x[0])],
               "scale-out": [x[1] * 1000 for x in s.delivered if in_window(x[0], "scale-out")],
               "scale-in": [x[1] * 1000 for x in s.delivered if in_window(x[0], "scale-in")]}
        members = list(self.balancer.members.values())
        joins = [{"node": m.name, "listening_s": round((m.listening or 0) - m.spawned, 3),
                  "ready_s": round((m.ready or 0) - m.spawned, 3)} for m in members[self.args.min_nodes:]]
        drains = [{"node": m.name, "clients": m.clients_at_stop,
                   "exit_code": m.exit_code, "sigterm_to_exit_s": round((m.gone or 0) - (m.sigterm or 0), 3)}
                  for m in members if m.sigterm is not None]
        tracebacks = [m.name for m in members if "Traceback" in m.proc.log_path.read_text(errors="replace")]
        reconnects = [x * 1000 for x in s.reconnects]
        by_idx = {c.idx: c for c in self.clients}
        lost_examples = [{"sender": k[0], "seq": k[1], "created": round(s.created[k] - self.t0, 3),
                          "sender_nodes": by_idx[k[0]].history, "target": s.target[k],
                          "target_nodes": by_idx[s.target[k]].history}
                         for k in sorted(s.created, key=s.created.__getitem__) if k not in s.receipts][:50]
        duplicate_examples = [{"sender": k[0], "seq": k[1], "times": n, "created": round(s.created[k] - self.t0, 3),
                               "target": s.target[k], "target_nodes": by_idx[s.target[k]].history}
                              for k, n in s.receipts.items() if n > 1][:50]
        return {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average": load_average(),
                        "machine_cpu_s": round(machine_cpu, 1) if machine_cpu is not None else None,
                        "own_cpu_s": round(own_cpu, 1), "load_seconds": round(load_seconds, 1)},
            "settings": {k: v for k, v in vars(self.args).items() if k not in ("json", "plot")},
            "clients": len(self.clients),
            "nodes": {"min": self.args.min_nodes, "max": self.args.max_nodes},
            "joins": joins,
            "drains": drains,
            "sessions_moved": s.resumed_moved,
            "resumed_same_node": s.resumed_same,
            "resume_failed": s.resume_failed,
            "reconnect_ms": {"n": len(reconnects), "p50": pct(reconnects, 50), "p99": pct(reconnects, 99),
                             "max": max(reconnects, default=None)},
            "connect_errors": s.connect_errors,
            "client_failures": s.client_failures,
            "stream_errors": dict(s.stream_errors),
            "messages": {"sent": s.sent, "written": s.written, "acked": s.acked, "delivered": delivered,
                         "lost": lost, "duplicated": duplicated, "error_replies": s.errors,
                         "via_offline": s.delayed},
            "latency_ms": {k: {"n": len(v), "p50": pct(v, 50), "p99": pct(v, 99), "max": max(v, default=None)}
                           for k, v in lat.items()},
            "session_tables": tables,
            "lost_examples": lost_examples,
            "duplicate_examples": duplicate_examples,
            "tracebacks": tracebacks,
            "events": [{"t": round(t, 2), "what": w} for t, w in self.events],
            "windows": [{"label": lbl, "node": node, "start": round(a, 2), "end": round(b, 2)}
                        for (a, b, lbl), node in zip(windows, nodes_of, strict=True)],
            "timeline": self.samples,
        }


def ms(x: float | None) -> str:
    return "—" if x is None else f"{x:,.1f} ms"


def print_report(r: dict[str, Any]) -> None:
    m = r["messages"]
    rows: list[tuple[str, str]] = [
        ("nodes", f"{r['nodes']['min']} → {r['nodes']['max']} → {r['nodes']['min']}"),
        ("clients (XEP-0198, resumable)", f"{r['settings']['clients_per_node'] * r['nodes']['min']} → {r['clients']}"),
        ("load", f"{r['settings']['rate']} msg/s per client, {m['sent']:,} messages in "
                 f"{r['machine']['load_seconds']} s"),
    ]
    for j in r["joins"]:
        rows.append((f"join {j['node']}: start → /ready 200",
                     f"{j['ready_s']:.2f} s (listening {j['listening_s']:.2f} s)"))
    for d in r["drains"]:
        rows.append((f"drain {d['node']}: SIGTERM → exit ({d['clients']} clients)",
                     f"{d['sigterm_to_exit_s']:.2f} s, exit {d['exit_code']}"))
    rc = r["reconnect_ms"]
    rows += [
        ("sessions moved (resumed on another node)", f"{r['sessions_moved']}"),
        ("resumed on the same node / resumption failed", f"{r['resumed_same_node']} / {r['resume_failed']}"),
        ("drop → resumed, p50 / p99 / max", f"{ms(rc['p50'])} / {ms(rc['p99'])} / {ms(rc['max'])}"),
        ("clients that broke", str(len(r["client_failures"]))),
        ("stream errors seen by clients",
         ", ".join(f"{k} {v}" for k, v in sorted(r["stream_errors"].items())) or "none"),
        ("messages sent / acked / delivered", f"{m['sent']:,} / {m['acked']:,} / {m['delivered']:,}"),
        ("lost / duplicated", f"{m['lost']} / {m['duplicated']}"),
        ("error replies / delivered from offline storage", f"{m['error_replies']} / {m['via_offline']}"),
    ]
    for k in ("steady", "scale-out", "scale-in", "all"):
        lat = r["latency_ms"][k]
        rows.append((f"latency {k}: p50 / p99 / max (n)",
                     f"{ms(lat['p50'])} / {ms(lat['p99'])} / {ms(lat['max'])} ({lat['n']:,})"))
    rows.append(("session tables at the end", ", ".join(f"{n} {c}" for n, c in sorted(r["session_tables"].items()))))
    rows.append(("tracebacks in node logs", ", ".join(r["tracebacks"]) or "none"))
    mc = r["machine"]
    if mc["machine_cpu_s"] is not None:
        rows.append(("CPU during the load: this run's processes / other work",
                     f"{mc['own_cpu_s']:.1f} s / {max(0.0, mc['machine_cpu_s'] - mc['own_cpu_s']):.1f} s "
                     f"(of {mc['cpus'] * mc['load_seconds']:.0f} s)"))
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print()


def plot(r: dict[str, Any], path: Path) -> None:
    """Clients per node (stacked) and delivery latency per second, with the changes shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = r["timeline"]
    if not tl:
        return
    t = [s["t"] for s in tl]
    nodes = sorted({n for s in tl for n in s["clients"]}, key=lambda n: int(n[1:]))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [1, 1]})
    top.stackplot(t, [[s["clients"].get(n, 0) for s in tl] for n in nodes], labels=nodes, alpha=0.85)
    top.set_ylabel("clients per node")
    top.set_ylim(0, max(sum(s["clients"].values()) for s in tl) * 1.15)
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    m = r["messages"]
    top.set_title(f"Scaling a region {r['nodes']['min']} → {r['nodes']['max']} → {r['nodes']['min']} nodes under load: "
                  f"{m['sent']:,} messages, {m['lost']} lost, {m['duplicated']} duplicated", fontsize=10)
    p50 = [s["p50_ms"] for s in tl]
    p99 = [s["p99_ms"] for s in tl]
    mx = [s["max_ms"] for s in tl]
    bottom.plot(t, mx, color="#bbbbbb", lw=1, label="max")
    bottom.plot(t, p99, color="#d62728", lw=1.5, label="p99")
    bottom.plot(t, p50, color="#1f77b4", lw=1.5, label="p50")
    bottom.set_yscale("log")
    bottom.set_ylabel("delivery latency per second (ms)")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    for w in r["windows"]:
        for ax in (top, bottom):
            ax.axvspan(w["start"], w["end"], color="#2ca02c" if w["label"] == "scale-out" else "#ff7f0e", alpha=0.12)
        sign = "+" if w["label"] == "scale-out" else "−"
        top.annotate(f"{sign}{w['node']}", (w["start"], 1.0), xycoords=("data", "axes fraction"),
                     xytext=(2, -11), textcoords="offset points", fontsize=8)
    bottom.set_xlim(right=max((s["t"] for s in tl if s["delivered"]), default=t[-1]) + 2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small numbers and short holds (the smoke test)")
    p.add_argument("--clients-per-node", type=int, default=100)
    p.add_argument("--rate", type=float, default=1.0, help="messages/s per client (average)")
    p.add_argument("--min-nodes", type=int, default=2)
    p.add_argument("--max-nodes", type=int, default=5)
    p.add_argument("--warmup", type=float, default=10.0, help="s of load before the first change")
    p.add_argument("--step", type=float, default=10.0, help="s between changes")
    p.add_argument("--hold", type=float, default=10.0, help="s of load at the largest and at the final size")
    p.add_argument("--prestop", type=float, default=1.0, help="s out of the balancer before SIGTERM")
    p.add_argument("--settle", type=float, default=30.0, help="s to wait for the last acks and deliveries")
    p.add_argument("--refresh", type=float, default=1.0, help="cluster.refresh_interval of the nodes (s)")
    p.add_argument("--login-concurrency", type=int, default=20)
    p.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL instead of one SQLite file")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--plot", type=Path, help="write a PNG timeline here (needs matplotlib)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in (("clients_per_node", 8), ("rate", 2.0), ("warmup", 3.0), ("step", 3.0), ("hold", 3.0),
                           ("settle", 20.0)):
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    if args.min_nodes < 1 or args.max_nodes <= args.min_nodes:
        p.error("--max-nodes must be above --min-nodes (≥ 1)")
    return args


async def main_async(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], Bench]:
    bench = Bench(args, workdir)
    if args.postgres:
        from tests.helpers.postgres import PostgresServer, pg_bindir

        if pg_bindir() is None:
            raise RunFailed("--postgres: PostgreSQL is not installed")
        with PostgresServer() as pg:
            bench.storage_url = pg.create_database("scale")
            try:
                return await bench.run(), bench
            finally:
                await stop_all(bench)
    bench.storage_url = f"sqlite:///{workdir / 'region.db'}"
    try:
        return await bench.run(), bench
    finally:
        await stop_all(bench)


async def stop_all(bench: Bench) -> None:
    for m in bench.balancer.members.values():
        if m.proc.alive():
            await asyncio.to_thread(m.proc.stop, signal.SIGTERM, 30.0)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    workdir = Path(tempfile.mkdtemp(prefix="meridian-scale-"))
    print(f"scale: {args.min_nodes} → {args.max_nodes} → {args.min_nodes} nodes, {args.clients_per_node} clients "
          f"per node, {args.rate} msg/s each; work directory {workdir}", flush=True)
    bench: Bench | None = None
    try:
        result, bench = asyncio.run(main_async(args, workdir))
    except RunFailed as e:
        print(f"RUN FAILED: {e}", flush=True)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(f"results: {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"plot: {args.plot}")
    m = result["messages"]
    missed = []
    if m["lost"]:
        missed.append(f"{m['lost']} messages lost (goal 0)")
    if m["duplicated"]:
        missed.append(f"{m['duplicated']} messages duplicated (goal 0)")
    if result["client_failures"]:
        missed.append(f"{len(result['client_failures'])} clients broke: {result['client_failures'][:3]}")
    if result["tracebacks"]:
        missed.append(f"tracebacks in the logs of {', '.join(result['tracebacks'])}")
    for line in missed:
        print(f"GOAL MISSED: {line}")
    if not missed:
        print("goal met: 0 lost, 0 duplicated")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
