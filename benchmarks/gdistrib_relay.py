"""Global-distribution relay benchmark: messages/s between two regions, and the latency the relay adds.

Real processes, as ``tests/helpers/regions.py`` starts them for the integration tests: regions
``eu`` and ``us`` serving ``example.com``, each one ``meridian node`` and one ``meridian gateway``
(joined in the region's cluster), one SQLite database for the domain, a throwaway ``redis-server``
for the mapping, mutual-TLS links between the gateways.  With ``--link-delay-ms`` every link
between the gateways goes through a proxy process that holds each chunk that long in each
direction (the advertised endpoint of each gateway is the proxy: a WAN between regions).

The clients are a load generator of this script's own rather than slixmpp (whose per-stanza
objects and handlers would compete with the servers for the CPUs): raw XMPP over TLS sockets, one
asyncio loop — STARTTLS, SASL PLAIN, bind, initial presence, then messages written as bytes and
received messages counted by a regular expression over what the socket returns.  Its CPU time is
printed with the servers', so a saturated generator shows.

Every message's body carries its send time (CLOCK_MONOTONIC, shared by the processes); it is
timed when the receiving socket returns it.  Path of a relayed message: client → eu-n1 (c2s) →
cluster link → eu-gw1 (lookup, relay) → region link → us-gw1 → cluster link → us-n1 → client.

0. Idle: ``--idle`` seconds without traffic, CPU of each process measured.
1. Throughput: ``--messages`` from ``--pairs`` senders on eu-n1 to as many recipients on us-n1,
   at most ``--window`` on their way at once (the generator keeps the pipe full without
   overflowing the gateways' queues): delivered messages/s, counted at the recipients.  Then
   ``--direct-messages`` the same way between two users of eu-n1, for comparison.
2. Latency: ``--paced`` messages at ``--rate``/s, alternating eu→us (relayed) and eu→eu (direct:
   same node; with ``--other-node`` a second eu node too), so both see the same load: p50/p99 of
   send → receive, and what the relay adds (relayed − direct) beyond the link's own delay.

Also printed: CPU per process and phase (psutil), wake-ups per message, the gateways' counters,
warnings the servers logged meanwhile, and every GC pass of 1 ms or more in the servers, recorded
by a ``sitecustomize`` hook put first on their ``PYTHONPATH`` (the same hook runs cProfile with
``--profile``), next to the bursts of slow relayed messages they overlap.

    .venv/bin/python benchmarks/gdistrib_relay.py
    .venv/bin/python benchmarks/gdistrib_relay.py --link-delay-ms 20
    .venv/bin/python benchmarks/gdistrib_relay.py --profile /tmp/prof   # cProfile of the 4 servers, phase 1

Exit status 0 when both targets are met, 1 when one is missed (each printed as ``TARGET MISSED:``),
2 when the run itself failed (a process did not come up, messages lost, error replies, duplicates).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import multiprocessing
import os
import platform
import pstats
import re
import resource
import shutil
import signal
import ssl
import sys
import tempfile
import time
import tomllib
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the project from this checkout
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import redis.asyncio  # noqa: E402
from machine import load_average, machine_busy  # noqa: E402

from cluster_node.net.control import query_control  # noqa: E402
from cluster_node.storage import open_storage  # noqa: E402
from cluster_node.xmpp.sasl.scram import make_credentials  # noqa: E402
from gateway.mapping import MappingStore  # noqa: E402
from tests.helpers.node import NodeProcess  # noqa: E402
from tests.helpers.ports import free_port  # noqa: E402
from tests.helpers.redis import RedisServer, redis_server_binary  # noqa: E402
from tests.helpers.regions import DOMAIN, Region, make_region  # noqa: E402

__all__ = ["main"]

PASSWORD = "bench-password"


class BenchmarkError(Exception):
    pass


# -- the WAN between the gateways (child process) -------------------------------------------------


class _Delayed:
    """Writes chunks to a transport ``delay`` seconds after they were read, in order."""

    late: list[float] = []  # seconds each chunk was written after its due time (the timer's lateness)

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.peer: asyncio.Transport | None = None
        self.queue: deque[tuple[float, bytes]] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def push(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.queue.append((loop.time() + self.delay, data))
        if self.timer is None:
            self.timer = loop.call_at(self.queue[0][0], self.flush)

    def flush(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = None
        if self.peer is None:  # the upstream connection is not up yet: hold everything
            self.timer = loop.call_later(0.001, self.flush)
            return
        now = loop.time()
        out = []
        while self.queue and self.queue[0][0] <= now:
            due, data = self.queue.popleft()
            out.append(data)
            self.late.append(now - due)
        if out and not self.peer.is_closing():
            self.peer.write(b"".join(out))
        if self.queue:
            self.timer = loop.call_at(self.queue[0][0], self.flush)


class _Side(asyncio.Protocol):
    def __init__(self, out: _Delayed, back: _Delayed) -> None:
        self.out, self.back = out, back  # out: what we read goes there; back: writes to our transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.back.peer = transport

    def data_received(self, data: bytes) -> None:
        self.out.push(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.out.peer is not None:
            asyncio.get_running_loop().call_later(self.out.delay, self.out.peer.close)


def proxy_main(routes: list[tuple[int, int]], delay: float, conn: Connection) -> None:
    """Listen on each ``routes[i][0]`` and relay to 127.0.0.1:``routes[i][1]``, ``delay`` s each way."""
    asyncio.run(_proxy(routes, delay, conn))


async def _proxy(routes: list[tuple[int, int]], delay: float, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for listen, upstream in routes:

        def factory(upstream: int = upstream) -> asyncio.Protocol:
            to_server, to_client = _Delayed(delay), _Delayed(delay)

            async def connect() -> None:
                try:
                    await loop.create_connection(lambda: _Side(to_client, to_server), "127.0.0.1", upstream)
                except OSError:
                    if to_client.peer is not None:
                        to_client.peer.close()

            loop.create_task(connect())
            return _Side(to_server, to_client)

        servers.append(await loop.create_server(factory, "127.0.0.1", listen))
    conn.send("ready")
    while (cmd := await loop.run_in_executor(None, conn.recv)) != "stop":
        if cmd == "stats":  # lateness of the chunks written since the last "stats": p50, p99, max
            late = sorted(_Delayed.late) or [0.0]
            conn.send([late[len(late) // 2], late[min(len(late) - 1, int(len(late) * 0.99))], late[-1]])
            _Delayed.late.clear()
    for server in servers:
        server.close()


# -- watching the servers from inside: GC passes, and cProfile with --profile ---------------------

# sitecustomize.py in a directory put first on each server's PYTHONPATH.  It records every GC pass of
# 1 ms or more (monotonic start, seconds, CPU seconds, generation) as a line of $BENCH_GC_OUT; with
# $BENCH_PROFILE_OUT, SIGUSR1 starts cProfile and SIGUSR2 stops it and writes the stats there, so
# only the measured phase is profiled.  Any other sitecustomize on the path is still run.
_HOOK = '''\
import gc, importlib.machinery, importlib.util, os, signal, sys, time

def _watch_gc(path):
    log = open(path, "a", buffering=1)
    started = [0.0, 0.0]
    def callback(phase, info):
        if phase == "start":
            started[:] = time.monotonic(), time.thread_time()
        elif time.monotonic() - started[0] >= 0.001:
            log.write(f"{started[0]} {time.monotonic() - started[0]} {time.thread_time() - started[1]} "
                      f"{info['generation']}\\n")
    gc.callbacks.append(callback)

def _profile(path):
    import cProfile
    prof = cProfile.Profile()
    def stop(signum, frame):
        prof.disable()
        prof.dump_stats(path)
    signal.signal(signal.SIGUSR1, lambda signum, frame: prof.enable())
    signal.signal(signal.SIGUSR2, stop)

if os.environ.get("BENCH_GC_OUT"):
    _watch_gc(os.environ["BENCH_GC_OUT"])
if os.environ.get("BENCH_PROFILE_OUT"):
    _profile(os.environ["BENCH_PROFILE_OUT"])
_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here])
if _spec is not None and _spec.loader is not None:
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
'''


def watched(proc: NodeProcess, hook_dir: Path, gc_log: Path, profile: Path | None) -> None:
    """Start ``proc`` with the hook (its ``_env`` is wrapped; nothing else changes)."""
    plain = proc._env

    def env() -> dict[str, str]:
        e = plain()
        e["PYTHONPATH"] = f"{hook_dir}{os.pathsep}{e.get('PYTHONPATH', '')}"
        e["BENCH_GC_OUT"] = str(gc_log)
        if profile is not None:
            e["BENCH_PROFILE_OUT"] = str(profile)
        return e

    setattr(proc, "_env", env)  # noqa: B010


def gc_passes(path: Path) -> list[tuple[float, float, float, int]]:
    """(monotonic start, seconds, CPU seconds, generation) of the GC passes of 1 ms or more a server logged."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                start, seconds, cpu_seconds, gen = line.split()
                out.append((float(start), float(seconds), float(cpu_seconds), int(gen)))
    return out


# -- the load generator: raw XMPP clients ----------------------------------------------------------

HEADER = (f"<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' xmlns='jabber:client' "
          f"xmlns:stream='http://etherx.jabber.org/streams'>").encode()
# What the generator sends: "<tag> <seq> <monotonic ns at send>" (the server relays the body as is).
BODY = re.compile(rb"<body>([A-Z]) (\d+) (\d+)</body>")
ERROR = re.compile(rb"type=['\"]error['\"]")

TAGS = {"W": "warm-up", "T": "throughput eu→us", "D": "throughput eu→eu", "R": "eu→us relayed",
        "S": "eu→eu same node", "O": "eu→eu other node",
        # relay_regions.py's phases (N regions, every region sending to every other one)
        "A": "throughput all-to-all", "L": "paced all-to-all"}
# The paced phase: which recipients (a kind of Load.targets) each tag goes to.
PACED_KINDS = {"R": "us", "S": "eu", "O": "eu2"}


def client_tls() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the nodes' certificates are self-signed; this measures, not checks
    return ctx


@dataclass
class Tally:
    """What the receivers counted, per tag."""

    delivered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TAGS, 0))
    latencies: dict[str, list[int]] = field(default_factory=lambda: {t: [] for t in TAGS})  # ns
    sent_at: dict[str, list[int]] = field(default_factory=lambda: {t: [] for t in TAGS})  # ns, same order
    last_at: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)


class RawClient:
    """One logged-in XMPP client over TLS, reading in the background."""

    def __init__(self, jid: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.jid = jid
        self.reader = reader
        self.writer = writer
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def login(cls, port: int, user: str, resource: str, tls: ssl.SSLContext) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def until(*markers: bytes) -> bytes:
            data = b""
            async with asyncio.timeout(30):
                while not any(m in data for m in markers):
                    chunk = await reader.read(65536)
                    if not chunk:
                        raise BenchmarkError(f"{user}: connection closed during login: {data[-300:]!r}")
                    data += chunk
            return data

        writer.write(HEADER)
        await until(b"</stream:features>")
        writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await until(b"<proceed")
        await writer.start_tls(tls, server_hostname=DOMAIN)
        writer.write(HEADER)
        await until(b"</stream:features>")
        plain = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>".encode())
        if b"<success" not in await until(b"<success", b"<failure"):
            raise BenchmarkError(f"{user}: authentication failed")
        writer.write(HEADER)
        await until(b"</stream:features>")
        writer.write(f"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                     f"<resource>{resource}</resource></bind></iq>".encode())
        answer = await until(b"</iq>", b"/>")
        if b"type='result'" not in answer and b'type="result"' not in answer:
            raise BenchmarkError(f"{user}: bind failed: {answer!r}")
        writer.write(b"<presence/>")
        return cls(f"{user}@{DOMAIN}/{resource}", reader, writer)

    def receive(self, tally: Tally, *, recipient: bool) -> None:
        """Read in the background: a recipient counts and times messages, a sender counts the
        error replies it gets (an error reply carries the message's body too)."""
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._receive(tally) if recipient else self._errors(tally))

    async def _receive(self, tally: Tally) -> None:
        buf = b""
        mono = time.monotonic_ns
        delivered, latencies, sent_at = tally.delivered, tally.latencies, tally.sent_at
        read = self.reader.read
        while True:
            try:
                data = await read(1 << 18)
            except (ConnectionError, ssl.SSLError):
                return
            if not data:
                return
            now = mono()
            buf += data
            end = 0
            for m in BODY.finditer(buf):
                tag = m.group(1).decode()
                delivered[tag] += 1
                sent = int(m.group(3))
                latencies[tag].append(now - sent)
                sent_at[tag].append(sent)
                end = m.end()
            if end:
                buf = buf[end:]
                tally.last_at[tag] = now / 1e9
                tally.progress.set()
            elif len(buf) > 65536:
                buf = buf[-4096:]

    async def _errors(self, tally: Tally) -> None:
        buf = b""
        while True:
            try:
                data = await self.reader.read(1 << 18)
            except (ConnectionError, ssl.SSLError):
                return
            if not data:
                return
            buf += data
            end = 0
            for m in ERROR.finditer(buf):
                tally.errors += 1
                end = m.end()
            buf = buf[max(end, len(buf) - 16):]  # a match cut by the chunk's end is found next time

    def send(self, to: str, tag: str, seq: int) -> None:
        self.writer.write(f"<message to='{to}' type='chat' id='{tag}{seq}'><body>{tag} {seq} "
                          f"{time.monotonic_ns()}</body></message>".encode())

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(b"</stream:stream>")
            self.writer.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class Load:
    """Senders on eu-n1, and for each kind of message (tag) a recipient per sender."""

    def __init__(self, senders: list[RawClient], targets: dict[str, list[RawClient]]) -> None:
        self.senders = senders
        self.targets = targets
        self.tally = Tally()

    async def _wait(self, tag: str, n: int, timeout: float) -> None:
        tally = self.tally
        while tally.delivered[tag] < n:
            tally.progress.clear()
            try:
                await asyncio.wait_for(tally.progress.wait(), timeout)
            except TimeoutError:
                raise BenchmarkError(f"{TAGS[tag]}: {tally.delivered[tag]:,} of {n:,} messages delivered, "
                                     f"nothing more for {timeout:g} s") from None

    async def blast(self, tag: str, kind: str, n: int, window: int, timeout: float) -> float:
        """``n`` messages, round robin over the pairs, at most ``window`` undelivered; seconds from
        the first send to the last delivery."""
        tally, senders, targets = self.tally, self.senders, [c.jid for c in self.targets[kind]]
        pairs = len(senders)
        sent = 0
        t0 = time.monotonic()
        while sent < n:
            room = window - (sent - tally.delivered[tag])
            if room < min(pairs, window // 4, n - sent):  # send in batches, not one by one
                await self._wait(tag, sent - window + min(pairs, window // 4, n - sent), timeout)
                continue
            for seq in range(sent, sent + min(room, n - sent, pairs)):
                i = seq % pairs
                senders[i].send(targets[i], tag, seq)
            sent += min(room, n - sent, pairs)
            await asyncio.sleep(0)
        await self._wait(tag, n, timeout)
        return tally.last_at[tag] - t0

    async def paced(self, plan: list[str], rate: float, timeout: float,
                    kinds: dict[str, str] = PACED_KINDS) -> float:
        """One message per entry of ``plan`` (its tag: R, S or O, sent to ``kinds[tag]``'s recipients)
        at ``rate``/s; seconds taken."""
        senders = self.senders
        pairs = len(senders)
        counts = dict.fromkeys(TAGS, 0)
        cycle = len(set(plan))
        mono = time.monotonic
        t0 = mono()
        for k, tag in enumerate(plan):
            wait = t0 + k / rate - mono()
            if wait > 0:
                await asyncio.sleep(wait)
            i = (k // cycle) % pairs
            senders[i].send(self.targets[kinds[tag]][i].jid, tag, counts[tag])
            counts[tag] += 1
        elapsed = mono() - t0
        for tag, n in counts.items():
            if n:
                await self._wait(tag, n, timeout)
        return elapsed


# -- the servers --------------------------------------------------------------------------------


class Servers(Protocol):
    """What the helpers below need of a topology: its server processes, and the delay proxy's pipe."""

    @property
    def servers(self) -> list[NodeProcess]: ...

    @property
    def proxy_conn(self) -> Connection | None: ...


@dataclass
class World:
    base: Path
    redis: RedisServer
    eu: Region
    us: Region
    proxy: multiprocessing.process.BaseProcess | None = None
    proxy_conn: Connection | None = None

    @property
    def servers(self) -> list[NodeProcess]:
        return [*self.eu.nodes, *self.eu.gateways, *self.us.gateways, *self.us.nodes]


async def proxy_lateness(world: Servers) -> list[float] | None:
    """How late the delay proxy wrote chunks (beyond the delay) since it was last asked."""
    if world.proxy_conn is None:
        return None
    world.proxy_conn.send("stats")
    conn = world.proxy_conn
    stats: list[float] = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    return stats


def link_port(gateway: NodeProcess) -> int:
    conf = tomllib.loads(gateway.config.read_text())
    return int(conf["gdistrib"]["connections"]["endpoints"][0].rpartition(":")[2])


async def query(p: NodeProcess, category: str, op: str, args: dict[str, str] | None = None) -> Any:
    status, body = await query_control(p.workdir / "data" / "control.sock", category, op, args)
    if status != 200 or "errors" in body:
        raise BenchmarkError(f"{p.name}: {category} {op}: {body}")
    return body["data"][category][op]


async def poll(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await check()
        except (OSError, BenchmarkError, LookupError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchmarkError(f"timed out ({timeout:g} s) waiting for {what}")
        await asyncio.sleep(0.1)


async def register(url: str, names: list[str]) -> None:
    """Accounts straight into the domain's database (one SCRAM derivation, shared: same password)."""
    storage = open_storage(url)
    await storage.open()
    try:
        creds = {name: c.to_dict() for name, c in make_credentials(PASSWORD).items()}
        for name in names:
            await storage.create_account(DOMAIN, name, creds)
    finally:
        await storage.close()


def gdistrib_settings(specs: list[str]) -> dict[str, Any]:
    """The ``[gdistrib]`` tables of ``--gdistrib SECTION.KEY=VALUE`` options (validated by :func:`main`)."""
    gd: dict[str, Any] = {}
    for spec in specs:
        section, _, rest = spec.partition(".")
        key, _, value = rest.partition("=")
        gd.setdefault(section, {})[key] = tomllib.loads(f"v = {value}")["v"]
    return gd


def start_proxy(mp: Any, routes: list[tuple[int, int]], delay_ms: float
                ) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    """The delay proxy process (see :func:`proxy_main`), once it listens: (process, its pipe)."""
    here, there = mp.Pipe()
    proc = mp.Process(target=proxy_main, args=(routes, delay_ms / 1e3, there), daemon=True)
    proc.start()
    if not here.poll(20) or here.recv() != "ready":
        stop_proxy(proc, None)
        raise BenchmarkError("the delay proxy did not start")
    return proc, here


def stop_proxy(proc: multiprocessing.process.BaseProcess, conn: Connection | None) -> None:
    if conn is not None:
        with contextlib.suppress(OSError):
            conn.send("stop")
    proc.join(5)
    if proc.is_alive():
        proc.kill()


def watch_servers(base: Path, servers: list[NodeProcess], profile_dir: str | None) -> None:
    """Every server started with the GC hook (and cProfile with ``profile_dir``): see :data:`_HOOK`."""
    hook = base / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_HOOK)
    for p in servers:
        profile = Path(profile_dir).resolve() / f"{p.name}.prof" if profile_dir else None
        watched(p, hook, base / f"{p.name}.gc", profile)


def build(base: Path, redis_server: RedisServer, args: argparse.Namespace, mp: Any) -> World:
    db = f"sqlite:///{base / 'domain.db'}"
    proxy_ports = {"eu": free_port(), "us": free_port()} if args.link_delay_ms > 0 else {}
    regions = {}
    for name, nodes in (("eu", 2 if args.other_node else 1), ("us", 1)):
        gd = gdistrib_settings(args.gdistrib)
        if proxy_ports:  # the other region dials the proxy, which dials us
            gd.setdefault("connections", {})["advertised_endpoints"] = [f"127.0.0.1:{proxy_ports[name]}"]
        regions[name] = make_region(base, name, storage_url=db, redis_url=redis_server.url, nodes=nodes,
                                    gateways=1, gdistrib=gd)
    world = World(base, redis_server, regions["eu"], regions["us"])
    if proxy_ports:
        routes = [(proxy_ports[name], link_port(regions[name].gateways[0])) for name in ("eu", "us")]
        world.proxy, world.proxy_conn = start_proxy(mp, routes, args.link_delay_ms)
    watch_servers(base, world.servers, args.profile)
    return world


async def regions_ready(regions: list[Region], timeout: float) -> None:
    """Every region's cluster joined (its nodes know its gateway), each gateway's links up to every
    other region."""
    for region in regions:
        names = sorted(p.name for p in region.processes)
        for p in region.processes:
            async def joined(p: NodeProcess = p, names: list[str] = names) -> bool:
                return bool((await query(p, "cets", "systemInfo"))["joinedNodes"] == names)
            await poll(joined, timeout, f"{p.name} to join {names}")
    for region in regions:
        for other in (r.name for r in regions if r is not region):
            gw = region.gateways[0]

            async def up(gw: NodeProcess = gw, other: str = other) -> bool:
                return bool((await query(gw, "gdistrib", "status"))["links"].get(other, {}).get("up"))
            await poll(up, timeout, f"{gw.name}'s link to {other}")


async def ready(world: World, timeout: float) -> None:
    """Every region's cluster joined (its nodes know its gateway), the links up both ways."""
    await regions_ready([world.eu, world.us], timeout)


async def mapped(redis_url: str, jids: list[str], timeout: float) -> None:
    """Until Redis maps every one of ``jids`` (full JIDs) to a region."""
    client = redis.asyncio.Redis.from_url(redis_url)
    store = MappingStore(client, None, region="bench", expire_after=60)
    try:
        pending = list(jids)

        async def check() -> bool:
            nonlocal pending
            still = []
            for jid in pending:
                bare, _, res = jid.partition("/")
                if res not in await store.lookup_bare(bare):
                    still.append(jid)
            pending = still
            return not pending
        await poll(check, timeout, "the recipients to be mapped in Redis")
    finally:
        await client.aclose()


# -- figures ------------------------------------------------------------------------------------


def cpu_meter(servers: list[NodeProcess], redis: RedisServer, proxy: Any) -> CpuMeter:
    """A meter of every process of a run: the servers, Redis, the delay proxy (when there is one)
    and this process, the load generator."""
    procs = {p.name: p.proc.pid for p in servers if p.proc is not None}
    if redis.proc is not None:
        procs["redis"] = redis.proc.pid
    if proxy is not None and proxy.pid is not None:
        procs["delay proxy"] = proxy.pid
    procs["load generator"] = os.getpid()
    return CpuMeter(procs)


class CpuMeter:
    """CPU seconds (user + system, and system alone) of each process of the run, and how often it slept."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in procs.items()}

    def sample(self) -> dict[str, tuple[float, float, float]]:
        """Per process: (CPU seconds, system CPU seconds, voluntary context switches: its sleeps)."""
        out = {}
        for name, p in self.procs.items():
            try:
                t = p.cpu_times()
                out[name] = (t.user + t.system, t.system, float(p.num_ctx_switches().voluntary))
            except psutil.Error:
                out[name] = (float("nan"), float("nan"), float("nan"))
        out["(whole machine)"] = (machine_busy() or float("nan"), float("nan"), float("nan"))
        return out


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 100)) - 1))
    return ordered[k]


def ms(ns: list[int]) -> list[float]:
    return [x / 1e6 for x in ns]


def bursts(sent: list[int], lat: list[int], over_ns: float, t0_ns: int, gap_ns: int = 50_000_000
           ) -> list[tuple[float, float, int, float]]:
    """Messages slower than ``over_ns``, grouped by send time (within ``gap_ns`` of each other):
    (first, last send in seconds after ``t0_ns``, how many, slowest in ms)."""
    slow = sorted((s, x) for s, x in zip(sent, lat, strict=True) if x > over_ns)
    out: list[tuple[float, float, int, float]] = []
    for s, x in slow:
        if out and s - t0_ns - out[-1][1] * 1e9 <= gap_ns:
            first, _, n, worst = out[-1]
            out[-1] = (first, (s - t0_ns) / 1e9, n + 1, max(worst, x / 1e6))
        else:
            out.append(((s - t0_ns) / 1e9, (s - t0_ns) / 1e9, 1, x / 1e6))
    return out


# -- the run ------------------------------------------------------------------------------------


async def measure(world: World, args: argparse.Namespace) -> int:
    tls = client_tls()
    eu_node, us_node = world.eu.nodes[0], world.us.nodes[0]
    pairs = args.pairs
    kinds: dict[str, tuple[str, NodeProcess]] = {"us": ("r", us_node), "eu": ("d", eu_node)}
    if args.other_node:
        kinds["eu2"] = ("o", world.eu.nodes[1])
    await register(f"sqlite:///{world.base / 'domain.db'}",
                   [f"{prefix}{i}" for prefix in ("s", *(k[0] for k in kinds.values())) for i in range(pairs)])
    t = time.monotonic()
    await ready(world, args.timeout)
    print(f"  setup: clusters joined, links up both ways in {time.monotonic() - t:.1f} s")

    t = time.monotonic()
    sem = asyncio.Semaphore(32)

    async def login(port: int, user: str, res: str) -> RawClient:
        async with sem:
            return await RawClient.login(port, user, res, tls)

    senders = await asyncio.gather(*(login(eu_node.port, f"s{i}", "load") for i in range(pairs)))
    targets = {kind: list(await asyncio.gather(*(login(node.port, f"{prefix}{i}", "inbox") for i in range(pairs))))
               for kind, (prefix, node) in kinds.items()}
    load = Load(list(senders), targets)
    for c in senders:
        c.receive(load.tally, recipient=False)
    for c in (c for cs in targets.values() for c in cs):
        c.receive(load.tally, recipient=True)
    print(f"  setup: {len(senders) * (1 + len(targets)):,} clients logged in in {time.monotonic() - t:.1f} s")
    await mapped(world.redis.url, [c.jid for c in targets["us"]], args.timeout)

    # Warm-up: every pair once, so the gateways' caches and the links are as in a running system.
    await load.blast("W", "us", pairs, args.window, args.timeout)
    load.tally.latencies["W"].clear()

    logged = log_sizes(world)
    meter = cpu_meter(world.servers, world.redis, world.proxy)
    cpu: dict[str, tuple[float, dict[str, tuple[float, float, float]], dict[str, tuple[float, float, float]]]] = {}
    # ^ phase: (wall, before, after)
    spans: dict[str, tuple[float, float]] = {}  # phase: (monotonic start, end)

    # 0. idle: what the processes use with no traffic (pings, discovery, Redis refreshes)
    before, w0 = meter.sample(), time.monotonic()
    await asyncio.sleep(args.idle)
    cpu["idle"] = (time.monotonic() - w0, before, meter.sample())
    spans["idle"] = (w0, time.monotonic())

    # 1. throughput
    if args.profile:
        for p in world.servers:
            assert p.proc is not None
            p.proc.send_signal(signal.SIGUSR1)
    before, w0 = meter.sample(), time.monotonic()
    elapsed = await load.blast("T", "us", args.messages, args.window, args.timeout)
    cpu["throughput eu→us"] = (time.monotonic() - w0, before, meter.sample())
    spans["throughput eu→us"] = (w0, time.monotonic())
    if args.profile:
        for p in world.servers:
            assert p.proc is not None
            p.proc.send_signal(signal.SIGUSR2)
    rate = args.messages / elapsed
    status = {p.name: await query(p, "gdistrib", "status") for p in (world.eu.gateways[0], world.us.gateways[0])}
    direct_rate = None
    if args.direct_messages:
        before, w0 = meter.sample(), time.monotonic()
        direct_rate = args.direct_messages / await load.blast("D", "eu", args.direct_messages, args.window,
                                                              args.timeout)
        cpu["throughput eu→eu"] = (time.monotonic() - w0, before, meter.sample())
        spans["throughput eu→eu"] = (w0, time.monotonic())

    # 2. latency, paced (after a pause: the servers catch up on what the flood left them, e.g. GC)
    await asyncio.sleep(args.settle)
    cycle = ["R", "S", *(["O"] if args.other_node else [])]
    plan = [cycle[k % len(cycle)] for k in range(args.paced)]
    before, w0 = meter.sample(), time.monotonic()
    await proxy_lateness(world)  # from here on
    paced_t0 = time.monotonic_ns()
    paced_s = await load.paced(plan, args.rate, args.timeout)
    cpu["paced"] = (time.monotonic() - w0, before, meter.sample())
    spans["paced"] = (w0, time.monotonic())

    lateness = await proxy_lateness(world)
    await asyncio.sleep(0.3)  # error replies, if any, are on their way
    tally = load.tally
    for c in [*senders, *(c for cs in targets.values() for c in cs)]:
        await c.close()

    # -- the report
    rows: list[tuple[str, str, str, str]] = []
    missed: list[str] = []

    def row(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
        rows.append((name, value, target, "" if ok is None else ("ok" if ok else "MISSED")))

    ok = rate >= args.throughput_target
    row(f"relayed eu→us: {args.messages:,} messages, {pairs:,} pairs, window {args.window:,}",
        f"{rate:,.0f} msg/s", f"≥ {args.throughput_target:,.0f}/s", ok)
    if not ok:
        missed.append(f"relayed throughput {rate:,.0f} msg/s < {args.throughput_target:,.0f} msg/s")
    loaded = ms(tally.latencies["T"])
    row("  latency under that load, p50 / p99", f"{pct(loaded, 50):.1f} / {pct(loaded, 99):.1f} ms")
    wall, a, b = cpu["throughput eu→us"]
    per_msg = {p.name: (b[p.name][0] - a[p.name][0]) / args.messages for p in world.servers}
    gws = [world.eu.gateways[0].name, world.us.gateways[0].name]
    row(f"  CPU per relayed message: {' + '.join(gws)}", " + ".join(f"{per_msg[g] * 1e6:.0f}" for g in gws) + " µs")
    row("  all the servers", f"{sum(per_msg.values()) * 1e6:.0f} µs")
    # Each gateway is one Python thread: with a CPU of its own it would relay 1 / (its CPU per message).
    ceiling = 1 / max(per_msg[g] for g in gws)
    row("  gateway pair's ceiling, each gateway with a CPU of its own", f"{ceiling:,.0f} msg/s")
    if direct_rate is not None:
        row(f"direct eu→eu (same node): {args.direct_messages:,} messages", f"{direct_rate:,.0f} msg/s")
        dl = ms(tally.latencies["D"])
        row("  latency under that load, p50 / p99", f"{pct(dl, 50):.1f} / {pct(dl, 99):.1f} ms")
    row(f"paced: {args.paced:,} messages at {args.rate:,.0f}/s, alternating", f"{paced_s:.1f} s")
    lat = {tag: ms(tally.latencies[tag]) for tag in cycle}
    for tag in cycle:
        xs = lat[tag]
        row(f"  {TAGS[tag]} (n={len(xs):,}): p50 / p99 / max",
            f"{pct(xs, 50):.2f} / {pct(xs, 99):.2f} / {max(xs):.2f} ms")
    delay = args.link_delay_ms
    added50 = pct(lat["R"], 50) - pct(lat["S"], 50)
    added99 = pct(lat["R"], 99) - pct(lat["S"], 99)
    row(f"relay adds (relayed − same node), p50{f' (link delay {delay:g} ms)' if delay else ''}",
        f"{added50:.2f} ms")
    ok = added99 - delay <= args.added_p99_target
    row("  p99", f"{added99:.2f} ms", f"≤ {delay:g} + {args.added_p99_target:g} ms", ok)
    if lateness is not None:
        row("  of which the delay proxy's timer, late by p50 / p99 / max (each way)",
            " / ".join(f"{x * 1e3:.2f}" for x in lateness) + " ms")
    if not ok:
        missed.append(f"the relay adds {added99:.2f} ms at p99 (relayed − same node), "
                      f"> {delay:g} ms link delay + {args.added_p99_target:g} ms")
    if args.other_node:
        row("  p99 over other node (relayed − other node)", f"{pct(lat['R'], 99) - pct(lat['O'], 99):.2f} ms")

    gcs = {p.name: gc_passes(world.base / f"{p.name}.gc") for p in world.servers}
    budget = pct(lat["S"], 99) + delay + args.added_p99_target
    slow = bursts(tally.sent_at["R"], tally.latencies["R"], budget * 1e6, paced_t0)
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    print()
    print(f"  {'metric':<{w[0]}}  {'value':>{w[1]}}  {'target':<{w[2]}}  result")
    print(f"  {'-' * w[0]}  {'-' * w[1]}  {'-' * w[2]}  ------")
    for name, value, target, result in rows:
        print(f"  {name:<{w[0]}}  {value:>{w[1]}}  {target:<{w[2]}}  {result}".rstrip())

    if slow:
        n_slow = sum(b[2] for b in slow)
        print(f"\n  relayed messages slower than same-node p99 + link delay + {args.added_p99_target:g} ms "
              f"({budget:.2f} ms): {n_slow:,}, sent in {len(slow)} burst(s); the largest (sent at seconds into "
              f"the paced phase):")
        t0 = paced_t0 / 1e9
        for first, last, n, worst in sorted(sorted(slow, key=lambda burst: -burst[2])[:8]):
            # GC passes of a server that overlap the time these messages were on their way
            during = [f"{name} gen{g} {d * 1e3:.0f} ms ({cpu_s * 1e3:.0f} ms CPU)" for name, passes in gcs.items()
                      for when, d, cpu_s, g in passes if when < t0 + last + worst / 1e3 and when + d > t0 + first]
            print(f"    {first:5.2f}{f'–{last:.2f}' if last > first else '     '} s: {n:4} messages, "
                  f"slowest {worst:6.1f} ms"
                  + (f"; GC passes meanwhile: {', '.join(during)}" if during else ""))
    print()
    print("  CPU per process and phase: seconds (user + system), share of one CPU, µs per message of the phase, "
          "and the system's (kernel's) part")
    counts = {"idle": 0, "throughput eu→us": args.messages, "throughput eu→eu": args.direct_messages,
              "paced": args.paced}
    print(f"    {'process':<16}" + "".join(f"  {f'{phase} ({wall:.1f} s)':<31}" for phase, (wall, _, _) in cpu.items()))
    for name in [*meter.procs, "(whole machine)"]:
        line = f"    {name:<16}"
        for phase, (wall, a, b) in cpu.items():
            used, system = b[name][0] - a[name][0], b[name][1] - a[name][1]
            cell = f"{used:6.2f} s {used / wall:5.0%}"
            if counts[phase]:
                cell += f" {used / counts[phase] * 1e6:5.0f} µs"
            if system == system and used > 0:  # not NaN
                cell += f" sys {system / used:3.0%}"
            line += f"  {cell:<31}"
        print(line.rstrip())
    for phase, (_, a, b) in cpu.items():
        if counts[phase]:  # each sleep of a process is one wake-up later: how many a message costs
            print(f"    wake-ups (voluntary context switches) per message, {phase}: "
                  + ", ".join(f"{n} {(b[n][2] - a[n][2]) / counts[phase]:.2f}" for n in meter.procs))
    cpus = os.cpu_count() or 1
    for phase, (wall, a, b) in cpu.items():
        ours = sum(b[n][0] - a[n][0] for n in meter.procs)
        other = (b["(whole machine)"][0] - a["(whole machine)"][0]) - ours
        print(f"    {phase}: {wall:.1f} s × {cpus} CPUs = {wall * cpus:.1f} CPU-s available; this run's processes "
              f"{ours:.1f} s, other work {max(0.0, other):.1f} s")
        if other > 0.25 * wall * cpus:
            print("    note: other work took over a quarter of the machine: the figures include time spent "
                  "waiting for a CPU")

    print()
    print("  GC passes of 1 ms or more in the servers (count, longest by the clock, their CPU time, generations):")
    for name, passes in gcs.items():
        parts = []
        for phase, (since, until) in spans.items():
            ps = [(d, c, g) for when, d, c, g in passes if since <= when < until]
            if ps:
                parts.append(f"{phase} {len(ps)}× ≤ {max(d for d, _, _ in ps) * 1e3:.0f} ms, "
                             f"{sum(c for _, c, _ in ps):.2f} s CPU in all "
                             f"(gen {','.join(str(g) for g in sorted({g for _, _, g in ps}))})")
        print(f"    {name}: {'; '.join(parts) or 'none'}")
    print()
    for name, st in status.items():
        links = st["links"]
        link = ", ".join(f"{r}: sent {v.get('sent', 0):,} acked {v.get('acked', 0):,} received "
                         f"{v.get('received', 0):,} queue-full {v.get('queueFull', 0)} rtt {v.get('rttMs')} ms"
                         for r, v in links.items())
        c = st["counters"]
        print(f"  {name}: relayed {c['relayed']}, received {c['received']}, bounced {c['bounced']}, "
              f"link errors {c['linkErrors']}, Redis lookups {c['lookups']:,}, cache "
              f"{st['cache']['hits']:,} hits / {st['cache']['misses']:,} misses; link {link}")
    print(f"  load average {load_average()}")

    problems = []
    if tally.errors:
        problems.append(f"{tally.errors} error stanzas came back to the senders")
    extra = sum(tally.delivered.values()) - (pairs + args.messages + args.direct_messages + args.paced)
    if extra:
        problems.append(f"{extra:+} messages delivered beyond those sent (duplicates?)")
    for warn in world_warnings(world, logged):
        print(f"  during the measurements: {warn}")
    if args.profile:
        for p in world.servers:
            path = Path(args.profile).resolve() / f"{p.name}.prof"
            for _ in range(50):
                if path.exists():
                    break
                await asyncio.sleep(0.1)
            if path.exists():
                print(f"\n  cProfile of {p.name}, throughput phase ({path}), top by own time:")
                pstats.Stats(str(path), stream=sys.stdout).sort_stats("tottime").print_stats(15)
        print("  (cProfile slows the profiled processes: the figures of a --profile run are not comparable)")
    if problems:
        for prob in problems:
            print(f"BENCHMARK FAILED: {prob}", file=sys.stderr)
        return 2
    if missed:
        for m in missed:
            print(f"TARGET MISSED: {m}")
        return 1
    print("  all targets met")
    return 0


def log_sizes(world: Servers) -> dict[str, int]:
    return {p.name: p.log_path.stat().st_size if p.log_path.exists() else 0 for p in world.servers}


def world_warnings(world: Servers, since: dict[str, int] | None = None) -> list[str]:
    """Warnings and errors the servers logged (after ``since``: their logs' sizes then)."""
    out = []
    for p in world.servers:
        try:
            with open(p.log_path, "rb") as f:
                f.seek((since or {}).get(p.name, 0))
                log = f.read().decode(errors="replace")
        except FileNotFoundError:
            continue
        lines = [line for line in log.splitlines() if (" WARNING " in line or " ERROR " in line)
                 and "self-signed TLS certificate" not in line]
        if lines or "Traceback" in log:
            out.append(f"{p.name} logged {len(lines)} warnings/errors{' and a Traceback' if 'Traceback' in log else ''}"
                       f"{', the first: ' + lines[0][:200] if lines else ''}")
    return out


def run(args: argparse.Namespace) -> int:
    print(f"Meridian global-distribution relay benchmark: {os.cpu_count()} CPUs, {platform.platform()}, "
          f"Python {platform.python_version()}")
    print(f"  regions eu ({2 if args.other_node else 1} node{'s' if args.other_node else ''} + 1 gateway) and us "
          f"(1 node + 1 gateway), real processes; link delay {args.link_delay_ms:g} ms each way; "
          f"load average {load_average()}")
    if redis_server_binary() is None:
        print("BENCHMARK FAILED: redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    mp = multiprocessing.get_context("spawn")
    base = Path(tempfile.mkdtemp(prefix="meridian-gdbench-"))
    world: World | None = None
    code = 2
    try:
        with RedisServer() as redis_server:
            world = build(base, redis_server, args, mp)
            t = time.monotonic()
            for region in (world.eu, world.us):
                region.start()
            print(f"  setup: {len(world.servers)} server processes started in {time.monotonic() - t:.1f} s")
            try:
                code = asyncio.run(measure(world, args))
            finally:
                for region in (world.eu, world.us):
                    region.stop()
    except (BenchmarkError, RuntimeError, TimeoutError) as e:
        print(f"BENCHMARK FAILED: {e}", file=sys.stderr)
        if world is not None:
            for warn in world_warnings(world):
                print(f"  {warn}", file=sys.stderr)
        code = 2
    finally:
        if world is not None and world.proxy is not None:
            stop_proxy(world.proxy, world.proxy_conn)
        if args.keep_logs:
            print(f"  logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return code


def check_gdistrib(ap: argparse.ArgumentParser, specs: list[str]) -> None:
    """``--gdistrib SECTION.KEY=VALUE`` options: each must parse (a TOML value), or the run stops here."""
    for spec in specs:
        ok = re.fullmatch(r"[a-z_]+\.[a-z_]+=.+", spec) is not None
        try:
            tomllib.loads(f"v = {spec.partition('=')[2]}")
        except tomllib.TOMLDecodeError:
            ok = False
        if not ok:
            ap.error(f"--gdistrib {spec!r}: expected SECTION.KEY=VALUE with a TOML value, e.g. cache.jid_lifetime=60")


def raise_nofile(want: int = 8192) -> None:
    """A few hundred clients in this process: raise the soft descriptor limit towards ``want``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--pairs", type=int, default=200, help="senders on eu-n1, each with its recipients (200)")
    ap.add_argument("--messages", type=int, default=100_000, help="relayed in the throughput phase (100000)")
    ap.add_argument("--window", type=int, default=2_000, help="messages on their way at most (2000)")
    ap.add_argument("--direct-messages", type=int, default=30_000,
                    help="eu→eu on one node, for comparison (30000; 0 skips it)")
    ap.add_argument("--paced", type=int, default=6_000, help="messages of the latency phase (6000)")
    ap.add_argument("--rate", type=float, default=1_000.0, help="messages/s in the latency phase, all kinds (1000)")
    ap.add_argument("--idle", type=float, default=2.0, help="seconds with no traffic, CPU measured (2)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds of pause before the paced phase (1)")
    ap.add_argument("--other-node", action="store_true", help="a second eu node: eu→eu across nodes too")
    ap.add_argument("--link-delay-ms", type=float, default=0.0,
                    help="one-way delay between the gateways, each direction (0: no proxy)")
    ap.add_argument("--throughput-target", type=float, default=10_000.0, help="relayed msg/s (10000)")
    ap.add_argument("--added-p99-target", type=float, default=2.0,
                    help="ms the relay may add at p99 over the link delay (2)")
    ap.add_argument("--gdistrib", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a gateway setting of [gdistrib] for both regions, e.g. cache.jid_lifetime=60 (repeatable)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds without progress before giving up (60)")
    ap.add_argument("--profile", metavar="DIR", help="cProfile the server processes during the throughput phase")
    ap.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (a temporary directory)")
    args = ap.parse_args(argv)
    check_gdistrib(ap, args.gdistrib)
    raise_nofile()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
