"""XEP-0198 Stream Management and the module host: resumption latency, what SM costs, before/after.

Three measures, each printed as rows of one table (``--compare-commit`` is a mode of its own):

1. **Resumption latency** — a two-node cluster (``cluster.enabled``, discovery through the shared
   SQLite file as ``tests/helpers/cluster.py`` does it, refresh and pings every 0.3 s).  ``--sessions``
   clients (10,000) log in on node A with SM enabled (``<enable resume='true'/>``) and send initial
   presence; then every socket is reset (SO_LINGER 0, no ``</stream:stream>``): A holds them all as
   detached sessions.  ``--sequential`` (60) of them reconnect one at a time, then a sample
   (``--sample``, 300) ``--resume-concurrency`` (8) at a time — TCP, STARTTLS, SASL PLAIN, then
   ``<resume/>`` — half on A (same node), half on B (``sm.takeover`` over the cluster link),
   interleaved.  The latency is from writing ``<resume/>`` to reading ``<resumed/>`` (client side,
   TLS included); how long each node waited for its CPU and its GC passes meanwhile are printed
   too.  Every resumed session then gets a message addressed to its full JID, to show it is
   routable where it resumed, and both session tables must agree afterwards.
   Goals: p99 < 20 ms on the same node, < 50 ms on the other node.
2. **SM on vs off** — fresh single nodes.  RSS per idle authenticated connection (VmRSS of the node
   from ``/proc/<pid>/status`` before and after ``--idle`` connections log in; with SM: enabled and
   one unacked stanza, the presence echo), after as many unmeasured ones (``--warmup``), measured
   off-then-on on one node and on-then-off on a second (whichever set comes second costs more:
   the mean of both orders cancels that).  Then on the second node, ``--pairs``
   pairs of those connections exchange messages in a closed loop (``--window`` in flight per pair,
   each message received is answered with one to the peer) for ``--duration`` s, SM off and on
   interleaved over ``--rounds`` rounds; with SM the clients answer every ``<r/>`` with ``<a h/>``.
   Goals: messages/s with SM at most 10 % below without; under 4 KB more RSS per connection.
3. ``--compare-commit REV``: whole-node messages/s before vs after the module-host redesign:
   ``benchmarks/node_load.py`` (the single-node benchmark, the same file in both trees) run
   against REV (exported with ``git archive`` to a temp dir, or ``--before-tree DIR``) and against
   this tree (or ``--tree``), same arguments, interleaved, ``--compare-rounds`` each; medians and ratios.

``--tree DIR|REV`` runs the node code of another checkout or commit (exported with ``git archive``):
the working tree of a shared repository may hold someone's unfinished module.

The node(s) run pinned to CPU 0 (``taskset -c 0``; ``sched_setaffinity`` when taskset is missing),
the load — this process, one asyncio loop of raw-socket clients (``benchmarks/loadgen.py``'s
``Client``: TLS by hand over ``MemoryBIO``) — to the other CPUs.

    .venv/bin/python benchmarks/sm_resume.py                          # 10,000 detached sessions, 300 resumed
    .venv/bin/python benchmarks/sm_resume.py --quick                  # smoke run, < 40 s
    .venv/bin/python benchmarks/sm_resume.py --compare-commit 30fca87 # node_load.py before/after
    .venv/bin/python benchmarks/sm_resume.py --tree e7159fa           # the node code of a commit

Exit status 0 when every goal is met, 1 when one is missed (each printed as ``GOAL MISSED:``), 2
when the run failed (a node did not start, logins failed, a resumption failed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import gc
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:  # run as a script from anywhere: loadgen and machine beside it (machine: tests.helpers)
        sys.path.insert(0, _p)

# Nothing of the node's code here: it comes from TREE, chosen in main() (put first on sys.path there).
import common  # noqa: E402
import loadgen  # noqa: E402
import machine  # noqa: E402
from common import BenchmarkError, pct, self_cpu_s, toml_config  # noqa: E402
from machine import load_average, machine_busy  # noqa: E402

TREE = ROOT  # the checkout whose node code runs (--tree); its cluster_node also registers the accounts
ACK_EVERY = 0  # --ack-every: the nodes' [modules.stream_management] ack_every (0: the module's default, 5)

DOMAIN = "localhost"
PASSWORD = "bench-password"
SECRET = "sm-benchmark-cluster-secret-0123"  # ≥ 16 characters
KB = 1024
SM_NS = "urn:xmpp:sm:3"
ENABLE = f"<enable xmlns='{SM_NS}' resume='true'/>".encode()
R = f"<r xmlns='{SM_NS}'/>".encode()
MSG_END = b"</message>"
BODY = b"0123456789012345678"  # as long as loadgen's timestamps
_ID = re.compile(rb"""<enabled[^>]*\sid=['"]([^'"]+)['"]""")


# -- small helpers ----------------------------------------------------------------------------------


def username(i: int) -> str:
    return f"bench{i}"


def free_ports(n: int) -> list[int]:
    """``machine.free_ports`` (tests/helpers/ports.py's), failing as the benchmark fails."""
    try:
        return machine.free_ports(n)
    except RuntimeError as e:
        raise BenchmarkError(str(e)) from e


async def register_users(config: Path, n: int) -> tuple[int, float]:
    """Accounts bench0..bench{n-1} (those missing) through ``Accounts.register`` (4096 PBKDF2 rounds),
    many at once on threads (hashlib releases the GIL) — as benchmarks/node_load.py makes them."""
    from concurrent.futures import ThreadPoolExecutor

    from cluster_node.settings import load_settings
    from cluster_node.wiring import open_accounts

    t = time.perf_counter()
    settings: Any = load_settings(config)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)))
    async with open_accounts(settings) as (storage, accounts):
        have = set(await storage.list_accounts(DOMAIN))
        missing = [i for i in range(n) if username(i) not in have]
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with sem:
                await accounts.register(DOMAIN, username(i), PASSWORD)

        await asyncio.gather(*(one(i) for i in missing))
    return len(missing), time.perf_counter() - t


# -- a node process ---------------------------------------------------------------------------------


class NodeProc:
    """``python -m gateway.cli node --config …`` of this tree, pinned to ``cpus``."""

    started: list[NodeProc] = []  # every node of the run, for the CPU accounting

    def __init__(self, workdir: Path, name: str, conf: dict[str, Any], cpus: list[int], nofile: int) -> None:
        self.workdir = workdir
        self.name = name
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(conf["data_dir"])
        self.config = workdir / f"{name}.toml"
        self.config.write_text(toml_config(conf))
        self.port = int(conf["c2s"]["port"])
        self.cpus = cpus
        self.nofile = nofile
        self.log_path = workdir / f"{name}.log"
        self.gc_out = workdir / "gc.json"  # benchmarks/node_probe.py writes the collector's passes there
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_cpu = 0.0

    def start(self, timeout: float = 30.0) -> None:
        control = self.data_dir / "control.sock"
        control.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TREE), os.environ.get("PYTHONPATH", "")) if p)
        # The node, with an observer of its cyclic garbage collector (SIGUSR1 writes its passes); the
        # tree's own node_probe.py, which puts that tree first on the node's path.
        cmd = [sys.executable, str(TREE / "benchmarks" / "node_probe.py"), str(self.gc_out), "node", "--config",
               str(self.config)]
        taskset = shutil.which("taskset")
        cpus, nofile = self.cpus, self.nofile
        if cpus and taskset:
            cmd = [taskset, "-c", ",".join(map(str, cpus)), *cmd]  # taskset execs: the pid is the node's

        def prepare() -> None:  # in the child, before exec
            loadgen.raise_nofile(nofile)
            if cpus and not taskset:
                os.sched_setaffinity(0, cpus)

        NodeProc.started.append(self)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                         preexec_fn=prepare)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchmarkError(f"node {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if control.exists():  # made once every listener is up
                return
            time.sleep(0.05)
        raise BenchmarkError(f"node {self.name} did not start within {timeout:.0f}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss(self) -> int:
        """VmRSS in bytes, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KB
        raise BenchmarkError(f"no VmRSS for node {self.name}")

    def cpu_s(self) -> float:
        """User + system CPU seconds, from /proc/<pid>/stat (the last value read once it exited)."""
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            self.last_cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return self.last_cpu

    async def gc_passes(self, timeout: float = 20.0) -> list[tuple[float, float, int]]:
        """Every pass of the node's cyclic GC so far: (CLOCK_MONOTONIC start, seconds, generation)."""
        import json

        if not self.alive() or self.proc is None:
            return []
        self.gc_out.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not self.gc_out.exists():
            if time.monotonic() > deadline or not self.alive():
                return []
            await asyncio.sleep(0.05)
        data = json.loads(self.gc_out.read_text())
        return [(float(a), float(b), int(g)) for a, b, g, _ in data["passes"]]

    async def wait_idle(self, timeout: float = 30.0, below: float = 0.05) -> None:
        """Until the node uses under ``below`` of a CPU over 0.3 s (or ``timeout``)."""
        await common.wait_idle(self.alive, self.cpu_s, timeout, below)

    async def query(self, category: str, op: str) -> Any:
        """A control-socket query (what ``meridian ctl`` uses): ``data[category][op]``."""
        import aiohttp

        connector = aiohttp.UnixConnector(path=str(self.data_dir / "control.sock"))
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as s:
            async with s.get(f"http://node/{category}/{op}") as resp:
                body = await resp.json()
        if "data" not in body:
            raise BenchmarkError(f"node {self.name}: {category} {op}: {body}")
        return body["data"][category][op]

    def run_delay_s(self) -> float:
        """Seconds the node's event loop thread was runnable but waited for a CPU (/proc/<pid>/schedstat)."""
        try:
            return int(Path(f"/proc/{self.pid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    def stop(self, timeout: float = 60.0) -> float:
        """SIGTERM and wait; the seconds the graceful stop took (SIGKILL after ``timeout``)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        self.cpu_s()
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return float("inf")
        return time.monotonic() - t

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def problems(self) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines()
                if (" WARNING " in line or " ERROR " in line or "Traceback" in line) and "self-signed" not in line]


# -- the clients -----------------------------------------------------------------------------------------


class Load:
    """What loadgen's ``Client`` expects of its generator, and the counters of the message phase."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.domain = DOMAIN
        self.resource = "sm"
        self.ctx = loadgen.client_tls_context()
        self.header = (f"<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' xmlns='jabber:client' "
                       f"xmlns:stream='http://etherx.jabber.org/streams'>").encode()
        self.lost = 0
        self.active = False  # closed loop running: answer every message received
        self.reset()

    def reset(self) -> None:
        self.sent = 0
        self.received = 0
        self.errors = 0
        self.acks = 0

    def on_data(self, c: Any, data: bytes) -> None:
        """Bytes of a logged-in client: count whole messages (its ``h``), answer ``<r/>`` with one
        ``<a/>`` per read, and in the closed loop answer each message with one to the peer."""
        if c.rest:
            data = c.rest + data
            c.rest = b""
        cut = data.rfind(MSG_END)
        cut = cut + len(MSG_END) if cut >= 0 else 0
        if c.sm:
            r = data.rfind(R)
            if r >= 0 and r + len(R) > cut:
                cut = r + len(R)
        if cut < len(data):
            tail = data[cut:]
            if b"<stream:error" in tail or b"</stream:stream>" in tail:
                self.errors += 1
            elif len(tail) < 1 << 20:
                c.rest = tail  # an element cut by the end of this read
        if not cut:
            return
        n = data.count(MSG_END, 0, cut)
        out = b""
        if n:
            c.h += n
            self.received += n
            if b"type='error'" in data or b'type="error"' in data:
                self.errors += 1
        if c.sm and data.find(R, 0, cut) >= 0:
            out = b"<a xmlns='" + SM_NS.encode() + b"' h='" + str(c.h % 2**32).encode() + b"'/>"
            self.acks += 1
        if n and self.active and c.peer_msg:
            out += c.peer_msg * n
            self.sent += n
        if out:
            c.send(out)


class SmClient(loadgen.Client):
    """One client: login with or without SM, socket reset, resumption — loadgen's TLS by hand."""

    __slots__ = ("port", "sm", "previd", "h", "peer_msg", "check")

    def __init__(self, load: Load, index: int, port: int, resource_: str = "sm") -> None:
        super().__init__(load, username(index), PASSWORD)  # type: ignore[arg-type]
        self.jid = f"{username(index)}@{DOMAIN}/{resource_}"
        self.port = port
        self.sm = False
        self.previd: str | None = None
        self.h = 0  # stanzas received from the server (SM's h)
        self.peer_msg = b""
        self.check = b""

    async def open_stream(self) -> None:
        """TCP, STARTTLS, SASL PLAIN, stream restart: ready for bind or ``<resume/>``."""
        g = self.gen
        await g.loop.create_connection(lambda: self, "127.0.0.1", self.port)
        self.send(g.header)
        await self.expect(b"</stream:features>")
        self.send(loadgen.STARTTLS)
        got = await self.expect(b"<proceed", b"<failure")
        if b"<proceed" not in got:
            raise loadgen.LoginError(f"STARTTLS refused: {loadgen._snippet(got)}")
        await self.start_tls()
        self.send(g.header)
        await self.expect(b"</stream:features>")
        token = base64.b64encode(f"\0{self.username}\0{self.password}".encode())
        self.send(b"<auth xmlns='" + loadgen.NS_SASL.encode() + b"' mechanism='PLAIN'>" + token + b"</auth>")
        got = await self.expect(b"<success", b"<failure")
        if b"<success" not in got:
            raise loadgen.LoginError(f"authentication failed: {loadgen._snippet(got)}")
        self.send(g.header)
        await self.expect(b"</stream:features>")

    async def login(self, sm: bool = False) -> None:
        """Log in, bind, enable resumable SM when ``sm``, send initial presence (done at its echo)."""
        t0 = time.perf_counter()
        await self.open_stream()
        self.send(loadgen.BIND % self.jid.rsplit("/", 1)[1].encode())
        got = await self.expect(b"</iq>")
        if b"type='result'" not in got and b'type="result"' not in got:
            raise loadgen.LoginError(f"bind failed: {loadgen._snippet(got)}")
        if sm:
            self.send(ENABLE)
            got = await self.expect(b"<enabled", b"<failed")
            m = _ID.search(got)
            if m is None:
                raise loadgen.LoginError(f"SM not enabled: {loadgen._snippet(got)}")
            self.previd = m.group(1).decode()
            self.sm = True
        self.send(loadgen.PRESENCE)
        got = await self.expect(b"<presence")  # our own presence, echoed: one stanza received
        self.h = got.count(b"<presence") if sm else 0
        self.buf = bytearray()
        self.hot = True
        self.login_s = time.perf_counter() - t0

    def kill(self) -> None:
        """The network goes away: RST (SO_LINGER 0), no ``</stream:stream>``."""
        self.hot = False  # not counted as lost
        t = self.transport
        if t is None or self.closed:
            return
        sock = t.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t.abort()

    async def resume(self, previd: str, h: int) -> tuple[float, float, float]:
        """Reconnect and resume ``previd``: (CLOCK_MONOTONIC when ``<resume/>`` was written, seconds from
        it to ``<resumed/>``, seconds of the whole reconnect)."""
        t0 = time.monotonic()
        await self.open_stream()
        t1 = time.monotonic()
        self.send(f"<resume xmlns='{SM_NS}' previd='{previd}' h='{h}'/>".encode())
        got = await self.expect(b"<resumed", b"<failed")
        t2 = time.monotonic()
        if b"<resumed" not in got:
            raise loadgen.LoginError(f"resume failed: {loadgen._snippet(got)}")
        self.previd, self.sm, self.h = previd, True, h
        return t1, t2 - t1, t2 - t0

    async def routable(self, timeout: float = 10.0) -> None:
        """A message to our own full JID comes back: the resumed session is in the table, here."""
        mark = f"resumed-{self.username}".encode()
        self.send(b"<message to='" + self.jid.encode() + b"' type='chat'><body>" + mark + b"</body></message>")
        await asyncio.wait_for(self.expect(mark + b"</body>"), timeout)
        self.h += 1

    def close(self) -> None:
        """End the stream: with SM, everything received acknowledged first, so the node has nothing
        unacked to send to offline storage (which later logins of the account would receive)."""
        if self.transport is not None and not self.closed:
            self.hot = False
            with contextlib.suppress(Exception):
                ack = f"<a xmlns='{SM_NS}' h='{self.h % 2**32}'/>".encode() if self.sm else b""
                self.send(ack + loadgen.STREAM_END)
            self.transport.close()


async def login_all(clients: list[SmClient], sm: bool, concurrency: int, timeout: float
                    ) -> tuple[list[SmClient], collections.Counter[str], float]:
    """Log every client in, ``concurrency`` at a time: (logged in, failures by reason, wall seconds)."""
    sem = asyncio.Semaphore(concurrency)
    ok: list[SmClient] = []
    failures: collections.Counter[str] = collections.Counter()

    async def one(c: SmClient) -> None:
        async with sem:
            try:
                await asyncio.wait_for(c.login(sm), timeout)
                ok.append(c)
            except Exception as e:  # noqa: BLE001 — counted and reported
                failures[type(e).__name__ + (f": {str(e)[:120]}" if str(e) else "")] += 1
                if c.transport is not None:
                    c.transport.abort()

    gc.disable()  # thousands of long-lived objects appear: no collector passes meanwhile
    t = time.perf_counter()
    try:
        await asyncio.gather(*(one(c) for c in clients))
    finally:
        gc.enable()
    wall = time.perf_counter() - t
    gc.collect()
    gc.freeze()
    ok.sort(key=lambda c: int(c.username[5:]))
    return ok, failures, wall


# -- the report --------------------------------------------------------------------------------------


Report = common.Report  # headed 'metric', section titles count in the width


def ms(x: float) -> str:
    return f"{x * 1000:.2f}"


# -- 1. resumption latency ------------------------------------------------------------------------------


def node_conf(name: str, tmp: Path, db: Path, *, cluster: bool, clients: int, log_level: str) -> dict[str, Any]:
    port, tls_port = free_ports(2)
    conf: dict[str, Any] = {
        "node_name": name, "domains": [DOMAIN], "data_dir": str(tmp / name / "data"), "log_level": log_level,
        "scram_iterations": 4096,
        "c2s": {"host": "127.0.0.1", "port": port, "tls_port": tls_port, "handshake_timeout": 120.0,
                "idle_timeout": 3600.0},
        "limits": {"max_connections_per_ip": clients + 1000, "max_connections": clients + 1000,
                   "shaper_rate": 10_000_000, "shaper_burst": 10_000_000,
                   "stanza_rate": 10_000_000, "stanza_burst": 10_000_000},
        "storage": {"url": f"sqlite:///{db}"},
        "admin": {"port": 0}, "user_api": {"port": 0},
        # Resumable well past the run; acks asked every 5 stanzas (the default).
        "modules": {"stream_management": {"resume_timeout": 900, "max_resume_timeout": 900,
                                          **({"ack_every": ACK_EVERY} if ACK_EVERY else {})}},
    }
    if cluster:  # as tests/helpers/cluster.py: discovery through the shared database, fast refresh and pings
        conf["cluster"] = {"enabled": True, "secret": SECRET, "port": free_ports(1)[0], "refresh_interval": 0.3,
                           "ping_interval": 0.3, "ping_timeout": 3.0}
    return conf


async def wait_for(check: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchmarkError(f"timed out ({timeout:.0f}s) waiting for {what}: last {value!r}")
        await asyncio.sleep(every)


async def part_resume(args: argparse.Namespace, tmp: Path, db: Path, node_cpus: list[int], report: Report,
                      notes: list[str]) -> None:
    n = args.sessions
    nofile = n + args.sample + args.sequential + 4096
    nodes = [NodeProc(tmp / name, name, node_conf(name, tmp, db, cluster=True, clients=n + args.sample,
                                                    log_level=args.log_level), node_cpus, nofile)
             for name in ("sm-a", "sm-b")]
    a, b = nodes
    load = Load(asyncio.get_running_loop())
    clients: list[SmClient] = []
    resumed_clients: list[SmClient] = []
    try:
        for node in nodes:
            node.start()
        await wait_for(lambda: _joined(nodes), 30, "both nodes joined")
        await a.wait_idle()
        rss0 = a.rss()
        print(f"  1. two-node cluster up (A {a.name}, B {b.name}); logging {n:,} clients in on A with SM", flush=True)
        clients = [SmClient(load, i, a.port) for i in range(n)]
        cpu0 = a.cpu_s()
        ok, failures, wall = await login_all(clients, True, args.login_concurrency, args.timeout)
        cpu_login = a.cpu_s() - cpu0
        for reason, k in failures.most_common(3):
            print(f"    login failure ×{k}: {reason}")
        if len(ok) < n:
            raise BenchmarkError(f"{n - len(ok):,} of {n:,} logins failed: {failures.most_common(3)}")
        await asyncio.sleep(args.settle)
        await a.wait_idle()
        rss1 = a.rss()
        table_b = await b.query("session", "countSessions")
        print(f"    {n:,} logged in in {wall:.1f} s; A's RSS {rss1 / 2**20:.0f} MiB; B's table holds {table_b:,} "
              "sessions; resetting every socket", flush=True)

        # -- every connection dies: the sessions detach --------------------------------------------
        t = time.perf_counter()
        for c in ok:
            c.kill()

        async def all_detached() -> bool:
            return bool(int((await a.query("sm", "status"))["detached"]) >= n)

        await wait_for(all_detached, 120, f"{n:,} detached sessions on A", every=0.05)
        detach_s = time.perf_counter() - t
        await a.wait_idle()
        await asyncio.sleep(args.settle)
        rss2 = a.rss()
        status_a0 = await a.query("sm", "status")
        table_b = await b.query("session", "countSessions")
        print(f"    {status_a0['detached']:,} detached on A in {detach_s:.2f} s (B's table: {table_b:,}); "
              f"resuming {args.sample} of them", flush=True)

        # -- a sample resumes, half on A, half on B, interleaved --------------------------------------
        rng = random.Random(args.seed)
        picked = rng.sample(ok, min(args.sample + args.sequential, len(ok)))
        fails: collections.Counter[str] = collections.Counter()
        unroutable = 0

        async def batch(sample: list[SmClient], concurrency: int) -> dict[str, Any]:
            """Resume ``sample``, half on A, half on B, interleaved, ``concurrency`` at a time."""
            jobs = [(c, "same" if k % 2 == 0 else "other") for k, c in enumerate(sample)]
            rng.shuffle(jobs)
            lat: dict[str, list[float]] = {"same": [], "other": []}
            spans: dict[str, list[tuple[float, float]]] = {"same": [], "other": []}  # (start, seconds)
            whole: dict[str, list[float]] = {"same": [], "other": []}
            sem = asyncio.Semaphore(concurrency)

            async def resume_one(old: SmClient, where: str) -> None:
                nonlocal unroutable
                node = a if where == "same" else b
                c = SmClient(load, int(old.username[5:]), node.port)
                async with sem:
                    try:
                        assert old.previd is not None
                        at, dt, total = await asyncio.wait_for(c.resume(old.previd, old.h), args.timeout)
                    except Exception as e:  # noqa: BLE001 — counted, reported, fails the run
                        fails[f"{where}: {type(e).__name__}: {str(e)[:160]}"] += 1
                        if c.transport is not None:
                            c.transport.abort()
                        return
                    lat[where].append(dt)
                    spans[where].append((at, dt))
                    whole[where].append(total)
                    resumed_clients.append(c)
                try:
                    await c.routable()
                except Exception:  # noqa: BLE001
                    unroutable += 1

            await a.wait_idle(10)
            await b.wait_idle(10)
            cpu0, me0, busy0 = a.cpu_s() + b.cpu_s(), self_cpu_s(), machine_busy()
            wait0 = (a.run_delay_s(), b.run_delay_s())
            t0 = time.monotonic()
            await asyncio.gather(*(resume_one(c, w) for c, w in jobs))
            t1 = time.monotonic()
            wait1 = (a.run_delay_s(), b.run_delay_s())
            ours = a.cpu_s() + b.cpu_s() - cpu0 + self_cpu_s() - me0
            busy1 = machine_busy()
            return {"lat": lat, "spans": spans, "whole": whole, "t0": t0, "t1": t1,
                    "others": None if busy0 is None or busy1 is None else max(0.0, busy1 - busy0 - ours),
                    "waited": [w1 - w0 for w0, w1 in zip(wait0, wait1, strict=True)]}

        seq = await batch(picked[:args.sequential], 1) if args.sequential else None
        conc = await batch(picked[args.sequential:], args.resume_concurrency)
        gc_all = (await a.gc_passes(), await b.gc_passes())
        status_a = await a.query("sm", "status")
        status_b = await b.query("sm", "status")
        await asyncio.sleep(1.0)  # the resumed records' replication
        tables = [await node.query("session", "countSessions") for node in nodes]
        conflicts = [(await node.query("cets", "systemInfo"))["conflictTables"] for node in nodes]
        for reason, k in fails.most_common(5):
            print(f"    resume failure ×{k}: {reason}")

        # -- the rows ------------------------------------------------------------------------------------
        report.section(f"1. resumption, two-node cluster, {n:,} detached sessions held on node A")
        report.row("clients logged in on A with SM (logins/s)", f"{len(ok):,} ({len(ok) / wall:,.0f}/s)")
        report.row("  A's CPU per login (TLS + SASL + bind + enable + presence)", f"{cpu_login / n * 1000:.2f} ms")
        report.row("sockets reset → all detached on A", f"{detach_s:.2f} s")
        report.row("A's RSS: before / connected / detached", f"{rss0 / 2**20:.0f} / {rss1 / 2**20:.0f} / "
                   f"{rss2 / 2**20:.0f} MiB")
        report.row("  per session: connected / after detaching", f"{(rss1 - rss0) / n / KB:.1f} / "
                   f"{(rss2 - rss0) / n / KB:.1f} KB")
        for res, how, goals in ((conc, f"{args.resume_concurrency} at a time", True), (seq, "one at a time", False)):
            if res is None:
                continue
            gc_a = [p for p in gc_all[0] if res["t0"] <= p[0] <= res["t1"]]
            gc_b = [p for p in gc_all[1] if res["t0"] <= p[0] <= res["t1"]]
            for where, node_name, goal in (("same", "A (same node)", args.same_goal),
                                           ("other", "B (other node, sm.takeover)", args.other_goal)):
                v = res["lat"][where]
                if not v:
                    report.row(f"resume on {node_name}, {how}", "none resumed", f"p99 < {goal:g} ms", False,
                               f"no resumption succeeded on {node_name}")
                    continue
                report.row(f"resume on {node_name}, {how}: n", f"{len(v):,}")
                report.row("  <resume/> → <resumed/> p50 / p95", f"{ms(pct(v, 50))} / {ms(pct(v, 95))} ms")
                p99 = pct(v, 99) * 1000
                if goals:
                    report.row("  p99", f"{p99:.2f} ms", f"< {goal:g} ms", p99 < goal,
                               f"resumption p99 on {node_name} {p99:.2f} ms ≥ {goal:g} ms ({how})")
                else:
                    report.row("  p99", f"{p99:.2f} ms")
                report.row("  max", f"{ms(max(v))} ms")
                report.row("  whole reconnect (TCP + TLS + SASL + resume) p50 / p99",
                           f"{ms(pct(res['whole'][where], 50))} / {ms(pct(res['whole'][where], 99))} ms")
            report.row(f"  {how}: wall; A / B waited for a CPU; other work",
                       f"{res['t1'] - res['t0']:.2f} s; {res['waited'][0] * 1000:.0f} / {res['waited'][1] * 1000:.0f}"
                       f" ms; " + (f"{res['others']:.1f} CPU-s" if res["others"] is not None else "?"))
            report.row("  GC passes meanwhile, A / B: n, total, longest",
                       " / ".join(f"{len(g)}, {sum(p[1] for p in g) * 1000:.0f} ms, "
                                  f"{max((p[1] for p in g), default=0) * 1000:.0f} ms" for g in (gc_a, gc_b)))
            for where, involved, goal in (("same", gc_a, args.same_goal), ("other", gc_a + gc_b, args.other_goal)):
                slow = [(at, dt) for at, dt in res["spans"][where] if dt * 1000 >= goal / 2]
                hit = sum(1 for at, dt in slow if any(p[0] < at + dt and at < p[0] + p[1] for p in involved))
                report.row(f"  {where}-node resumes ≥ {goal / 2:g} ms / of them overlapping a GC pass",
                           f"{len(slow)} / {hit}")
        nfail = sum(fails.values())
        report.row("resumptions failed", f"{nfail:,}", "0", nfail == 0, f"{nfail:,} resumptions failed")
        report.row("resumed sessions not routable (message to own JID lost)", f"{unroutable:,}", "0",
                   unroutable == 0, f"{unroutable:,} resumed sessions did not get a message to their JID")
        report.row("  node counters A / B (resumed, resumed_remote, failed)",
                   f"{status_a['resumed']}, {status_a['resumed_remote']}, {status_a['failed']} / "
                   f"{status_b['resumed']}, {status_b['resumed_remote']}, {status_b['failed']}")
        report.row("  detached on A before / after", f"{status_a0['detached']:,} / {status_a['detached']:,}")
        same_tables = tables[0] == tables[1] == n
        report.row("session tables after: A / B (conflict tables)",
                   f"{tables[0]:,} / {tables[1]:,} ({', '.join(map(str, conflicts[0] + conflicts[1])) or 'none'})",
                   f"{n:,} each, none", same_tables and not conflicts[0] and not conflicts[1],
                   f"after the resumptions the session tables hold {tables[0]:,} (A) and {tables[1]:,} (B) "
                   f"records (conflicts: {conflicts})")
        if nfail:
            report.failed.append(f"{nfail} resumptions failed")
    finally:
        for c in resumed_clients:
            c.close()
        stop_times: list[str] = []
        for node in (b, a):  # B first: A then holds every detached session when it stops
            if node.alive():
                await node.wait_idle(10)
                took = await asyncio.get_running_loop().run_in_executor(None, node.stop, args.stop_timeout)
                stop_times.append(f"{node.name} {took:.1f} s" if took != float("inf")
                                  else f"{node.name} killed after {args.stop_timeout:.0f} s")
        if stop_times:
            report.row("graceful stop (B, then A holding the detached sessions)", ", ".join(stop_times))
        for node in nodes:
            for line in node.problems()[-3:]:
                notes.append(f"{node.name} log: {line[:240]}")


async def _joined(nodes: list[NodeProc]) -> bool:
    want = sorted(n.name for n in nodes)
    for node in nodes:
        try:
            info = await node.query("cets", "systemInfo")
        except Exception:  # noqa: BLE001 — not up yet
            return False
        if sorted(info.get("joinedNodes", [])) != want:
            return False
    return True


# -- 2. SM on vs off: RSS per idle connection, messages/s -----------------------------------------------


async def closed_loop(load: Load, pairs: list[tuple[SmClient, SmClient]], window: int, duration: float,
                      node: NodeProc) -> dict[str, float]:
    for x, y in pairs:
        x.peer_msg = b"<message to='" + y.jid.encode() + b"' type='chat'><body>" + BODY + b"</body></message>"
        y.peer_msg = b"<message to='" + x.jid.encode() + b"' type='chat'><body>" + BODY + b"</body></message>"
    await node.wait_idle(10)
    load.reset()
    load.active = True
    cpu0, me0, t0, busy0, wait0 = node.cpu_s(), self_cpu_s(), time.perf_counter(), machine_busy(), node.run_delay_s()
    for x, _ in pairs:
        x.send(x.peer_msg * window)
    load.sent += window * len(pairs)
    await asyncio.sleep(duration)
    received, t1, cpu1, me1 = load.received, time.perf_counter(), node.cpu_s(), self_cpu_s()
    busy1, wait1 = machine_busy(), node.run_delay_s()
    acks = load.acks
    load.active = False
    deadline = time.monotonic() + 10
    while load.received < load.sent and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    for x, y in pairs:
        x.peer_msg = y.peer_msg = b""
    wall = t1 - t0
    return {"rate": received / wall, "node_cpu": (cpu1 - cpu0) / wall,
            "us_per_msg": (cpu1 - cpu0) / max(received, 1) * 1e6,
            "load_cpu": (me1 - me0) / wall, "lost": load.sent - load.received, "errors": load.errors,
            "acks_per_msg": acks / max(received, 1), "waited": (wait1 - wait0) / wall,
            "others": (max(0.0, busy1 - busy0 - (cpu1 - cpu0) - (me1 - me0)) / wall
                       if busy0 is not None and busy1 is not None else float("nan"))}


async def part_cost(args: argparse.Namespace, tmp: Path, db: Path, node_cpus: list[int], report: Report,
                    notes: list[str]) -> None:
    k = args.idle
    orders = [("off", "on"), ("on", "off")][:args.rss_nodes]
    per_conn: dict[str, list[float]] = {"off": [], "on": []}
    logins: dict[str, list[float]] = {"off": [], "on": []}
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    load = Load(asyncio.get_running_loop())
    print(f"  2. SM on vs off: {k:,} idle connections each way on {len(orders)} fresh node(s)"
          f"{f' after {k:,} not measured' if args.warmup else ''}; then "
          f"{args.pairs} pairs × {args.window} in flight, {args.duration:g} s, {args.rounds} round(s)", flush=True)
    for idx, order in enumerate(orders):
        name = f"sm-cost{idx + 1}"
        node = NodeProc(tmp / name, name, node_conf(name, tmp, db, cluster=False, clients=3 * k,
                                                     log_level=args.log_level), node_cpus, 3 * k + 4096)
        sets: dict[str, list[SmClient]] = {}
        try:
            node.start()
            if args.warmup:  # one set first, not measured: what the first logins grow once (caches, arenas)
                warm = [SmClient(load, 2 * k + i, node.port) for i in range(k)]
                ok, failures, _ = await login_all(warm, False, args.login_concurrency, args.timeout)
                sets["warm-up"] = ok
                if len(ok) < k:
                    raise BenchmarkError(f"{k - len(ok):,} of {k:,} warm-up logins failed: {failures.most_common(3)}")
            await node.wait_idle()
            await asyncio.sleep(args.settle)
            prev = node.rss()
            for j, mode in enumerate(order):
                clients = [SmClient(load, j * k + i, node.port) for i in range(k)]
                ok, failures, wall = await login_all(clients, mode == "on", args.login_concurrency, args.timeout)
                if len(ok) < k:
                    raise BenchmarkError(f"{k - len(ok):,} of {k:,} logins failed (SM {mode}): "
                                         f"{failures.most_common(3)}")
                await node.wait_idle()
                await asyncio.sleep(args.settle)
                rss = node.rss()
                per_conn[mode].append((rss - prev) / k / KB)
                logins[mode].append(k / wall)
                print(f"    node {idx + 1}, SM {mode}: {k:,} logged in ({k / wall:,.0f}/s), "
                      f"+{(rss - prev) / k / KB:.1f} KB each", flush=True)
                prev = rss
                sets[mode] = ok
            if idx == len(orders) - 1:  # the message rounds, on the node holding both sets
                for rnd in range(args.rounds):
                    for mode in (("off", "on") if rnd % 2 == 0 else ("on", "off")):
                        cs = sets[mode][:2 * args.pairs]
                        res = await closed_loop(load, list(zip(cs[0::2], cs[1::2], strict=True)), args.window,
                                                args.duration, node)
                        runs[mode].append(res)
                        print(f"    round {rnd + 1}, SM {mode}: {res['rate']:,.0f} msg/s, node "
                              f"{res['us_per_msg']:.1f} µs/msg at {res['node_cpu'] * 100:.0f} % of a CPU "
                              f"(waiting for it {res['waited'] * 100:.0f} %), load {res['load_cpu'] * 100:.0f} %, "
                              f"other work {res['others']:.2f} CPUs", flush=True)
        finally:
            for cs in sets.values():
                for c in cs:
                    c.close()
            await asyncio.sleep(0.2)
            await node.wait_idle(10)
            await asyncio.get_running_loop().run_in_executor(None, node.stop, args.stop_timeout)
            for line in node.problems()[-3:]:
                notes.append(f"{node.name} log: {line[:240]}")

    report.section(f"2. SM on vs off, single node: {k:,} idle connections each way"
                   f"{' (after as many not measured)' if args.warmup else ''}, "
                   f"{args.pairs} pairs × {args.window} in flight")
    off, on = statistics.fmean(per_conn["off"]), statistics.fmean(per_conn["on"])
    report.row("RSS per idle authenticated connection, SM off (mean)", f"{off:.1f} KB" + _each(per_conn["off"], ".1f"))
    report.row("  SM on: enabled, 1 unacked stanza (mean)", f"{on:.1f} KB" + _each(per_conn["on"], ".1f"))
    report.row("  SM on − off", f"{on - off:+.1f} KB", f"< {args.rss_goal:g} KB", on - off < args.rss_goal,
               f"SM adds {on - off:.1f} KB per idle connection ≥ {args.rss_goal:g} KB")
    report.row("  logins/s SM off / on", f"{statistics.fmean(logins['off']):,.0f} / "
               f"{statistics.fmean(logins['on']):,.0f}")
    if runs["off"] and runs["on"]:
        roff = statistics.median(r["rate"] for r in runs["off"])
        ron = statistics.median(r["rate"] for r in runs["on"])
        slower = (1 - ron / roff) * 100
        report.row("messages/s, closed loop, SM off (median)", f"{roff:,.0f}" + _each([r["rate"] for r in runs["off"]]))
        report.row("  SM on, clients answering <r/> (median)", f"{ron:,.0f}" + _each([r["rate"] for r in runs["on"]]))
        report.row("  SM on / off", f"{ron / roff:.3f} ({slower:+.1f} % slower)", "< 10 % slower", slower < 10,
                   f"messages/s with SM {slower:.1f} % below without (goal < 10 %)")
        uoff = statistics.median(r["us_per_msg"] for r in runs["off"])
        uon = statistics.median(r["us_per_msg"] for r in runs["on"])
        report.row("  node CPU per message off / on", f"{uoff:.1f} / {uon:.1f} µs ({(uon / uoff - 1) * 100:+.1f} %)")
        report.row("  node CPU use off / on (of its one CPU)",
                   f"{statistics.median(r['node_cpu'] for r in runs['off']) * 100:.0f} / "
                   f"{statistics.median(r['node_cpu'] for r in runs['on']) * 100:.0f} %")
        report.row("  node waiting for its CPU off / on (share of the round)",
                   f"{statistics.median(r['waited'] for r in runs['off']) * 100:.0f} / "
                   f"{statistics.median(r['waited'] for r in runs['on']) * 100:.0f} %")
        report.row("  other work on the machine off / on (CPUs)",
                   f"{statistics.median(r['others'] for r in runs['off']):.2f} / "
                   f"{statistics.median(r['others'] for r in runs['on']):.2f}")
        report.row("  load process CPU use off / on",
                   f"{statistics.median(r['load_cpu'] for r in runs['off']) * 100:.0f} / "
                   f"{statistics.median(r['load_cpu'] for r in runs['on']) * 100:.0f} %")
        report.row("  <a/> sent per message received (SM on)",
                   f"{statistics.median(r['acks_per_msg'] for r in runs['on']):.3f}")
        lost = sum(r["lost"] for rs in runs.values() for r in rs)
        errs = sum(r["errors"] for rs in runs.values() for r in rs)
        report.row("  messages lost / error replies or stream errors", f"{lost:,} / {errs:,}", "0 / 0",
                   lost == 0 and errs == 0, f"{lost} messages lost, {errs} errors in the message rounds")
        if max(r["node_cpu"] for rs in runs.values() for r in rs) < 0.85:
            notes.append("the node used under 85 % of its CPU in the message rounds: the load generator (or the "
                         "machine) limited the rate, so msg/s understates the node; compare CPU per message")


_each = common.each


# -- 3. node_load.py before vs after --------------------------------------------------------------------

_ROWS = {
    "logins/s": re.compile(r"^\s*logins/s \(TLS \+ SASL \+ bind \+ presence\)\s+([\d,.]+)"),
    "RSS per connection (KB)": re.compile(r"^\s*node RSS per connection\s+([\d,.]+) KB"),
    "msg/s routed at the offered rate": re.compile(r"^\s*messages/s routed \(delivered\)\s+([\d,.]+) msg/s"),
    "latency p50 at the offered rate (ms)": re.compile(r"^\s*latency p50\s+([\d,.]+) ms"),
    "latency p99 at the offered rate (ms)": re.compile(r"^\s*latency p99\s+([\d,.]+) ms"),
    "node CPU per message at the offered rate (µs)": re.compile(
        r"^\s*node CPU \(of which in the kernel\) / per message\s+.* / ([\d,.]+) µs"),
    "closed loop msg/s (capacity)": re.compile(r"^\s*capacity: \d+ in flight per sender\s+([\d,.]+) msg/s"),
    "closed loop node CPU per message (µs)": re.compile(r"^\s*node CPU per message\s+([\d,.]+) µs"),
}
_HIGHER_IS_BETTER = {"logins/s", "msg/s routed at the offered rate", "closed loop msg/s (capacity)"}


def parse_node_load(out: str) -> dict[str, float]:
    got: dict[str, float] = {}
    for line in out.splitlines():
        for key, rx in _ROWS.items():
            m = rx.match(line)
            if m and key not in got:
                got[key] = float(m.group(1).replace(",", ""))
    return got


def export_tree(rev: str, dest: Path) -> Path:
    """``git archive REV`` of this repository unpacked into ``dest`` (read-only for the repository)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev], capture_output=True,
                             check=False)
    if archive.returncode != 0:
        raise BenchmarkError(f"git archive {rev} failed: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def resolve_tree(spec: str | None, tmp: Path) -> tuple[Path, str]:
    """(checkout, description) for ``--tree``: this checkout (None), a directory, or a commit to export."""
    if spec is None:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return ROOT, f"{ROOT} ({head}{' + uncommitted changes' if dirty else ''})"
    if Path(spec).is_dir():
        return Path(spec).resolve(), str(Path(spec).resolve())
    return export_tree(spec, tmp / f"tree-{re.sub(r'[^A-Za-z0-9._-]', '_', spec)}"), f"commit {spec} (git archive)"


_OTHER = re.compile(r"by the node and the generators ([\d.]+) s, by other work ([\d.]+) s, of ([\d.]+) s available")


def compare(args: argparse.Namespace, after: Path, after_name: str, tmp: Path) -> int:
    try:
        if args.before_tree:
            before, before_name = Path(args.before_tree).resolve(), f"{args.compare_commit} ({args.before_tree})"
        else:
            before, before_name = export_tree(args.compare_commit, tmp / "before"), args.compare_commit
        trees = {f"before: {before_name}": before, f"after: {after_name}": after}
        extra = shlex.split(args.node_load_args)
        print(f"node_load.py before vs after: {platform.platform()}, Python {platform.python_version()}, "
              f"load average {load_average()}")
        for label, tree in trees.items():
            print(f"  {label}: {tree}")
        print(f"  arguments: {' '.join(extra) or '(defaults)'}; {args.compare_rounds} round(s), interleaved",
              flush=True)
        results: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
        for rnd in range(args.compare_rounds):
            order = list(trees.items()) if rnd % 2 == 0 else list(reversed(trees.items()))
            for label, tree in order:
                side = label.split(":")[0]
                db = tmp / f"{side}.db"  # the accounts are made once per tree
                cmd = [sys.executable, str(tree / "benchmarks" / "node_load.py"), "--db", str(db), *extra]
                env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
                env["PYTHONPATH"] = str(tree)
                r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree,
                                   timeout=args.compare_timeout)
                got = parse_node_load(r.stdout)
                if r.returncode not in (0, 1) or "msg/s routed at the offered rate" not in got:
                    print(r.stdout[-3000:], r.stderr[-3000:], sep="\n")
                    raise BenchmarkError(f"node_load.py of {label} failed ({r.returncode})")
                if (m := _OTHER.search(r.stdout)) is not None:
                    got["other work on the machine (% of it)"] = 100 * float(m.group(2)) / float(m.group(3))
                results[label].append(got)
                print(f"  round {rnd + 1}, {side}: " + ", ".join(f"{k} {v:,.1f}" for k, v in got.items()), flush=True)
                if args.keep_output:
                    out_dir = Path(args.keep_output)
                    out_dir.mkdir(parents=True, exist_ok=True)
                    (out_dir / f"node_load-{rnd + 1}-{side}.txt").write_text(r.stdout + r.stderr)
        print_compare(results)
        return 0
    except BenchmarkError as e:
        print(f"BENCHMARK FAILED: {e}", file=sys.stderr)
        return 2


def print_compare(results: dict[str, list[dict[str, float]]]) -> None:
    (lb, rb), (la, ra) = results.items()
    keys = [k for k in [*_ROWS, "other work on the machine (% of it)"] if any(k in r for r in rb + ra)]
    rows = []
    for k in keys:
        vb = [r[k] for r in rb if k in r]
        va = [r[k] for r in ra if k in r]
        mb, ma = statistics.median(vb), statistics.median(va)
        ratio = f"{ma / mb:.3f}" if mb else "-"
        rows.append((k, f"{mb:,.1f}", " / ".join(f"{v:,.1f}" for v in vb), f"{ma:,.1f}",
                     " / ".join(f"{v:,.1f}" for v in va), ratio))
    heads = ("figure (median of rounds)", lb, "rounds", la, "rounds", "after/before")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    print()
    def line(cells: tuple[str, ...]) -> str:
        return "  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    print(line(heads))
    print("  " + "  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print()
    for k in ("closed loop msg/s (capacity)", "msg/s routed at the offered rate"):
        vb = [r[k] for r in rb if k in r]
        va = [r[k] for r in ra if k in r]
        if vb and va:
            print(f"  {k}: after / before = {statistics.median(va) / statistics.median(vb):.3f}")


# -- the run ---------------------------------------------------------------------------------------------


async def run_async(args: argparse.Namespace, tmp: Path, db: Path, node_cpus: list[int], load_cpus: list[int],
                    report: Report, notes: list[str]) -> None:
    conf_path = tmp / "accounts.toml"
    conf_path.write_text(toml_config(node_conf("accounts", tmp, db, cluster=False, clients=0, log_level="WARNING")))
    need = max(args.sessions if "resume" in args.parts else 0, 3 * args.idle if "cost" in args.parts else 0)
    made, reg_s = await register_users(conf_path, need)
    print(f"  setup: {made:,} accounts registered (of {need:,} needed) in {reg_s:.1f} s; SQLite at {db}", flush=True)
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)  # the load: after the registration, which used every CPU
    if "resume" in args.parts:
        await part_resume(args, tmp, db, node_cpus, report, notes)
    if "cost" in args.parts:
        await part_cost(args, tmp, db, node_cpus, report, notes)


def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="meridian-sm-"))
    node_cpus, load_cpus = common.split_cpus(args.pin)
    want = max(args.sessions + args.sample + args.sequential, 3 * args.idle) + 4096
    have = loadgen.raise_nofile(want)
    if have < want:
        print(f"BENCHMARK FAILED: RLIMIT_NOFILE is {have}, {want} are needed", file=sys.stderr)
        return 2
    db = Path(args.db).resolve() if args.db else tmp / "meridian.db"
    print(f"Meridian XEP-0198 benchmark{' (quick)' if args.quick else ''}: {os.cpu_count()} CPUs, "
          f"{platform.platform()}, Python {platform.python_version()}, load average {load_average()}")
    print(f"  node code: {args.tree_name}; stream_management.ack_every = {ACK_EVERY or '5 (default)'}")
    print("  " + (f"node(s) pinned to CPU {node_cpus} ({'taskset' if shutil.which('taskset') else 'sched_setaffinity'})"
                  f", load (this process) to CPU {load_cpus}" if node_cpus else "no CPU pinning"), flush=True)
    report = Report()
    notes: list[str] = []
    return common.measured_run(lambda: run_async(args, tmp, db, node_cpus, load_cpus, report, notes),
                               report, notes, tmp, keep=args.keep,
                               servers_cpu=lambda: sum(n.last_cpu for n in NodeProc.started),
                               who="the nodes and the load", others="other work")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (< 40 s): 500 sessions, 60 resumed, 200 idle connections each way on one "
                             "node, 50 pairs for 2 s, 1 round")
    parser.add_argument("--parts", default="resume,cost", help="which parts run: resume,cost (both)")
    g = parser.add_argument_group("1. resumption")
    g.add_argument("--sessions", type=int, help="detached sessions held on node A (10000; quick 500)")
    g.add_argument("--sample", type=int, help="of them resumed, half on A, half on B (300; quick 60)")
    g.add_argument("--resume-concurrency", type=int, default=8, help="resumptions in progress at once (8)")
    g.add_argument("--sequential", type=int,
                   help="more sessions resumed one at a time, first, half on each node (60; quick 10; 0 skips)")
    g.add_argument("--same-goal", type=float, default=20.0, help="ms, p99 resumption on the same node (20)")
    g.add_argument("--other-goal", type=float, default=50.0, help="ms, p99 resumption on the other node (50)")
    g.add_argument("--seed", type=int, default=198, help="which sessions are sampled (198)")
    g = parser.add_argument_group("2. SM on vs off")
    g.add_argument("--idle", type=int, help="idle connections per set, for RSS (5000; quick 200)")
    g.add_argument("--rss-nodes", type=int, choices=(1, 2), help="fresh nodes for RSS: 2 = both orders (2; quick 1)")
    g.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="log --idle connections in (SM off) before the measured sets, on each node (on)")
    g.add_argument("--pairs", type=int, help="pairs exchanging messages (500; quick 50)")
    g.add_argument("--window", type=int, default=4, help="messages in flight per pair (4)")
    g.add_argument("--duration", type=float, help="seconds per message round (10; quick 2)")
    g.add_argument("--rounds", type=int, help="rounds, each SM off and SM on, interleaved (3; quick 1)")
    g.add_argument("--rss-goal", type=float, default=4.0, help="KB more per idle connection with SM (4)")
    g.add_argument("--ack-every", type=int, default=0,
                   help="the nodes' stream_management.ack_every: stanzas between the server's <r/> (its default, 5)")
    g = parser.add_argument_group("common")
    g.add_argument("--login-concurrency", type=int, default=200, help="logins in progress at once (200)")
    g.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                   help="node(s) on CPU 0, the load on the others (on)")
    g.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default="WARNING")
    g.add_argument("--settle", type=float, help="seconds before an RSS reading (2; quick 0.5)")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds one login or resumption may take")
    g.add_argument("--stop-timeout", type=float, default=120.0, help="seconds a node may take to stop")
    g.add_argument("--db", help="SQLite file holding the accounts (reused between runs; default: temp dir)")
    g.add_argument("--keep", action="store_true", help="keep the temp dir (configs, node logs)")
    g.add_argument("--tree", metavar="DIR|REV", help="run the node code of this checkout, or of this commit "
                   "(exported with git archive); in --compare-commit mode the 'after' side (default: this checkout)")
    g = parser.add_argument_group("3. node_load.py before vs after (a mode of its own)")
    g.add_argument("--compare-commit", metavar="REV", help="run benchmarks/node_load.py against REV and this tree")
    g.add_argument("--before-tree", metavar="DIR", help="a checkout of REV to use instead of git archive")
    g.add_argument("--node-load-args", default="", help="arguments for node_load.py, both trees (its defaults)")
    g.add_argument("--compare-rounds", type=int, default=3, help="runs of each tree, interleaved (3)")
    g.add_argument("--compare-timeout", type=float, default=900.0, help="seconds one node_load.py run may take")
    g.add_argument("--keep-output", metavar="DIR", help="write each node_load.py output to DIR")
    args = parser.parse_args(argv)
    global TREE, ACK_EVERY
    ACK_EVERY = args.ack_every
    tmp = Path(tempfile.mkdtemp(prefix="meridian-sm-tree-"))
    try:
        try:
            TREE, tree_name = resolve_tree(args.tree, tmp)
        except BenchmarkError as e:
            print(f"BENCHMARK FAILED: {e}", file=sys.stderr)
            return 2
        if args.compare_commit:
            return compare(args, TREE, tree_name, tmp)
        sys.path.insert(0, str(TREE))  # its cluster_node registers the accounts
        args.tree_name = tree_name
        return setup_and_run(args, parser)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def setup_and_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    quick = args.quick
    for name, full, small in (("sessions", 10_000, 500), ("sample", 300, 60), ("sequential", 60, 10),
                              ("idle", 5000, 200),
                              ("rss_nodes", 2, 1), ("pairs", 500, 50), ("duration", 10.0, 2.0), ("rounds", 3, 1),
                              ("settle", 2.0, 0.5)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not args.parts <= {"resume", "cost"}:
        parser.error("--parts: resume, cost")
    if args.sessions < 2 or args.sample < 2 or args.sample + args.sequential > args.sessions:
        parser.error("--sessions ≥ --sample + --sequential, --sample ≥ 2")
    if args.idle < 2 * args.pairs:
        parser.error("--idle must be at least 2 × --pairs (the pairs are taken from the idle connections)")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
