"""Mobile modules: SASL2, Bind 2 and FAST logins; carbons and MAM on the message path; MAM queries.

Three measures, each printed as rows of one table:

1. **Logins/s over TLS** — one node with its default modules.  ``--concurrency`` connections (4)
   each log in again and again for ``--login-duration`` s (closed loop): TCP, STARTTLS, then

   * ``legacy``: SASL1 SCRAM-SHA-256, stream restart, RFC 6120 bind (8 round trips after TCP);
   * ``sasl2``: XEP-0388 SASL2 SCRAM-SHA-256 with a XEP-0386 Bind 2 request inline (6);
   * ``fast``: SASL2 with XEP-0484 FAST, HT-SHA-256-NONE (username NUL HMAC-SHA-256(token,
     "Initiator")) with an increasing ``<fast count/>``, Bind 2 inline (5); each connection got its
     token first with a SCRAM login carrying ``<request-token/>`` and a ``<user-agent/>`` of its own.

   A login counts when the client is bound (bind result, or SASL2 ``<success/>`` with ``<bound/>``);
   the client then ends the stream and waits for the node's ``</stream:stream>`` before the next
   login, so the same-resource session is gone each time.  The three modes run in turn, in
   ``--rounds`` rounds, the order rotated each round.  The client's SCRAM (RFC 5802, hashlib and
   hmac) caches the salted password, as real clients do.
2. **Messages/s with carbons and MAM** — the same node (carbons and MAM on, their defaults) and a
   second one with ``[modules.carbons] enabled = false`` and ``[modules.mam] enabled = false``,
   both running, both pinned to the same CPU.  ``--pairs`` pairs of users, each user with two
   resources (SASL2 + Bind 2, initial presence, carbons enabled with the XEP-0280 IQ on both — the
   node without carbons answers it with an error): resource 1 of each user of a pair sends chat
   messages to resource 1 of the other (full JID), ``--window`` in flight per pair, each message
   received answered with one (closed loop); resource 2 of each user only reads (with carbons
   on, one ``<sent/>`` and one ``<received/>`` copy per message reach the two resources 2).
   Rounds of ``--msg-duration`` s alternate the nodes.  Without ``--quick`` two more nodes take
   part: carbons only and MAM only, to tell the two costs apart.
   Goal: with carbons and MAM at most ``--msg-goal`` % (15) fewer messages/s than without.
3. **MAM writes and query latency** — ``--commit-rows`` rows (20,000) written per backend the
   way a busy node writes them (``ArchiveStore.queue`` in bursts of 50, each burst one group
   commit), reported as rows/s and CPU per row.  Then ``--archive`` messages (1,000,000) written
   straight into one user's archive with the MAM module's own schema (``ArchiveStore.migrate``) and INSERT (SQLite,
   ``executemany`` in transactions of 50,000) or COPY (PostgreSQL, the same columns), ids and
   times as the module makes them (one message a second, ending now), 20 correspondents.  Then a
   node on SQLite and a node on PostgreSQL (a database ``meridian_bench_<random>`` made on
   ``--pg-url``'s server, dropped at the end) answer, through XMPP (one raw client each, bound),
   ``--queries`` queries of each kind, the two nodes and the two kinds interleaved, one at a time:

   * ``last 50``: RSM ``<max>50</max><before/>`` (the newest page);
   * ``middle``: form field ``after-id`` = a random message of the archive's middle half, max 50.

   The latency runs from writing the ``<iq/>`` to reading the ``</iq>`` that follows the 50
   results.  Goal: p99 at most ``--p99-goal`` ms (20).

The node(s) run pinned to CPU 0, this process (the clients: ``benchmarks/loadgen.py``'s ``Client``,
TLS by hand over ``MemoryBIO``, byte markers, no XML parsing) to the other CPUs.  PostgreSQL is the
machine's server, not pinned.

    .venv/bin/python benchmarks/mobile.py            # everything: ~3 minutes here, a million messages
    .venv/bin/python benchmarks/mobile.py --quick    # smoke run, < 45 s (20,000 messages; PostgreSQL if reachable)
    .venv/bin/python benchmarks/mobile.py --parts mam --archive 200000

Exit status 0 when every goal is met, 1 when one is missed (each printed as ``GOAL MISSED:``), 2
when the run failed (a node did not start, logins failed, messages were lost, PostgreSQL was not
reachable outside ``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import os
import platform
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:  # run as a script from anywhere: this checkout, and loadgen beside it
        sys.path.insert(0, _p)

import common  # noqa: E402
import loadgen  # noqa: E402
from common import BenchmarkError, pct, self_cpu_s  # noqa: E402
from machine import free_ports, load_average, machine_busy  # noqa: E402

from tests.helpers.node import toml_dump  # noqa: E402

DOMAIN = "localhost"
PASSWORD = "bench-password"
KB = 1024

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
SASL2 = "urn:xmpp:sasl:2"
BIND2 = "urn:xmpp:bind:0"
FAST = "urn:xmpp:fast:0"
CARBONS = "urn:xmpp:carbons:2"
MAM = "urn:xmpp:mam:2"
RSM = "http://jabber.org/protocol/rsm"
HT = "HT-SHA-256-NONE"
MSG_END = b"</message>"

MODES = [
    ("legacy", "SASL1 SCRAM-SHA-256 + bind (legacy)"),
    ("sasl2", "SASL2 SCRAM-SHA-256 + Bind 2 inline"),
    ("fast", "SASL2 FAST HT-SHA-256-NONE + Bind 2"),
]
ROUND_TRIPS = {"legacy": 8, "sasl2": 6, "fast": 5}  # after TCP: header, STARTTLS, TLS 1.3, header, …

ALL_ON: dict[str, Any] = {}
ALL_OFF = {"carbons": {"enabled": False}, "mam": {"enabled": False}}
CONFIGS_FULL = [("on", "carbons + MAM on", ALL_ON), ("off", "carbons + MAM off", ALL_OFF),
                ("carbons", "carbons only", {"mam": {"enabled": False}}),
                ("mam", "MAM only", {"carbons": {"enabled": False}})]


def username(i: int) -> str:
    return f"mob{i}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _between(data: bytes, start: bytes, end: bytes) -> bytes:
    i = data.index(start)
    return data[data.index(b">", i) + 1:data.index(end, i)]


# -- SASL, client side -------------------------------------------------------------------------------

_SALTED: dict[tuple[str, bytes, int], bytes] = {}  # (password, salt, iterations): a client keeps it


class Scram:
    """The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677), no channel binding (gs2 ``n,,``)."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.first_bare = f"n={user},r={b64(os.urandom(18))}"

    def first(self) -> bytes:
        return f"n,,{self.first_bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attrs = dict(part.split("=", 1) for part in text.split(","))
        if not attrs.get("r", "").startswith(self.first_bare.split("r=", 1)[1]):
            raise loadgen.LoginError("SCRAM: the server's nonce does not extend ours")
        salt, iterations = base64.b64decode(attrs["s"]), int(attrs["i"])
        key = (self.password, salt, iterations)
        salted = _SALTED.get(key)
        if salted is None:
            salted = _SALTED[key] = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iterations)
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{self.first_bare},{text},{without_proof}".encode()
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={b64(proof)}".encode()


def ht_initial(user: str, token: str) -> bytes:
    """HT-SHA-256-NONE's initial response (XEP-0484 / draft-schmaus-kitten-sasl-ht)."""
    return user.encode() + b"\0" + hmac.new(token.encode(), b"Initiator", "sha256").digest()


def authenticate(mechanism: str, initial: bytes, agent: str | None, inner: str = "") -> bytes:
    ua = (f"<user-agent id='{agent}'><software>meridian-bench</software><device>phone</device></user-agent>"
          if agent else "")
    return (f"<authenticate xmlns='{SASL2}' mechanism='{mechanism}'><initial-response>{b64(initial)}"
            f"</initial-response>{ua}{inner}</authenticate>").encode()


def bind2(tag: str) -> str:
    return f"<bind xmlns='{BIND2}'><tag>{tag}</tag></bind>"


_TOKEN = re.compile(rb"<token [^>]*?token=(['\"])([^'\"]+)\1")
_AUTHZ = re.compile(rb"<authorization-identifier>([^<]+)</authorization-identifier>")


# -- the clients -------------------------------------------------------------------------------------


class Load:
    """What loadgen's ``Client`` expects of its generator, and the counters of the message rounds."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.domain = DOMAIN
        self.resource = "mobile"
        self.ctx = loadgen.client_tls_context()
        self.header = (f"<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' xmlns='jabber:client' "
                       f"xmlns:stream='http://etherx.jabber.org/streams'>").encode()
        self.salted_cache: dict[Any, bytes] = {}
        self.lost = 0
        self.active = False  # closed loop running: answer every message received
        self.reset()

    def reset(self) -> None:
        self.sent = 0
        self.received = 0
        self.carbons = 0
        self.errors = 0

    def on_data(self, c: Any, data: bytes) -> None:
        """Bytes of a logged-in client: whole messages counted (and answered in the closed loop) by
        resource 1, carbon copies (``<forwarded``) by resource 2; a cut element waits for the next read."""
        if c.rest:
            data = c.rest + data
            c.rest = b""
        if b"stream:error" in data or b"</stream:stream>" in data:
            self.errors += 1
        cut = data.rfind(MSG_END)
        if cut < 0:
            c.rest = data if len(data) < 1 << 20 else b""
            return
        cut += len(MSG_END)
        if cut < len(data):
            c.rest = data[cut:]
        if b"error" in data:
            self.errors += data.count(b"type='error'", 0, cut) + data.count(b'type="error"', 0, cut)
        if not c.peer_msg:  # resource 2: carbons only
            self.carbons += data.count(b"<forwarded", 0, cut)
            return
        n = data.count(MSG_END, 0, cut)
        self.received += n
        if self.active:
            c.send(c.peer_msg * n)
            self.sent += n


class MClient(loadgen.Client):
    """One connection: STARTTLS, then a SASL1 or SASL2 login — loadgen's TLS by hand and byte markers."""

    def __init__(self, load: Load, user: str, port: int) -> None:
        super().__init__(load, user, PASSWORD)  # type: ignore[arg-type]
        self.port = port
        self.peer_msg = b""

    async def open_tls(self) -> bytes:
        """TCP, stream, STARTTLS, TLS, stream again: the features after TLS."""
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
        return await self.expect(b"</stream:features>")

    async def legacy(self, resource_: str) -> None:
        """SASL1 SCRAM-SHA-256, stream restart, RFC 6120 bind."""
        scram = Scram(self.username, self.password)
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{b64(scram.first())}</auth>".encode())
        got = await self.expect(b"</challenge>", b"<failure")
        if b"</challenge>" not in got:
            raise loadgen.LoginError(f"SCRAM refused: {loadgen._snippet(got)}")
        final = scram.final(base64.b64decode(_between(got, b"<challenge", b"</challenge>")))
        self.send(f"<response xmlns='{NS_SASL}'>{b64(final)}</response>".encode())
        got = await self.expect(b"<success", b"<failure")
        if b"<success" not in got:
            raise loadgen.LoginError(f"authentication failed: {loadgen._snippet(got)}")
        self.send(self.gen.header)
        await self.expect(b"</stream:features>")
        self.send(loadgen.BIND % resource_.encode())
        got = await self.expect(b"</iq>")
        if b"type='result'" not in got and b'type="result"' not in got:
            raise loadgen.LoginError(f"bind failed: {loadgen._snippet(got)}")
        self.jid = f"{self.username}@{DOMAIN}/{resource_}"

    async def sasl2_scram(self, agent: str | None, inner: str = "") -> bytes:
        """SASL2 SCRAM-SHA-256 with ``inner`` (Bind 2, a token request) inline: the ``<success/>``."""
        scram = Scram(self.username, self.password)
        self.send(authenticate("SCRAM-SHA-256", scram.first(), agent, inner))
        got = await self.expect(b"</challenge>", b"</failure>", b"</success>")
        if b"</challenge>" not in got:
            raise loadgen.LoginError(f"SASL2 SCRAM refused: {loadgen._snippet(got)}")
        final = scram.final(base64.b64decode(_between(got, b"<challenge", b"</challenge>")))
        self.send(f"<response xmlns='{SASL2}'>{b64(final)}</response>".encode())
        return self._success(await self.expect(b"</success>", b"</failure>"))

    async def sasl2_fast(self, token: str, agent: str, count: int, inner: str = "") -> bytes:
        """SASL2 HT-SHA-256-NONE with the token: one round trip."""
        self.send(authenticate(HT, ht_initial(self.username, token), agent,
                               f"<fast xmlns='{FAST}' count='{count}'/>" + inner))
        return self._success(await self.expect(b"</success>", b"</failure>"))

    def _success(self, got: bytes) -> bytes:
        if b"</success>" not in got:
            raise loadgen.LoginError(f"SASL2 failed: {loadgen._snippet(got)}")
        m = _AUTHZ.search(got)
        if m is not None:
            self.jid = m.group(1).decode()
        return got

    async def presence(self) -> None:
        self.send(loadgen.PRESENCE)
        await self.expect(b"<presence")

    async def enable_carbons(self) -> bool:
        """The XEP-0280 IQ; whether the node said yes."""
        self.send(f"<iq type='set' id='carbons1'><enable xmlns='{CARBONS}'/></iq>".encode())
        got = await self.expect(b"carbons1'", b'carbons1"')
        return b"type='error'" not in got and b'type="error"' not in got

    async def logout(self, timeout: float = 10.0) -> None:
        """``</stream:stream>``, then the node's, then close."""
        self.hot = False
        try:
            if not self.closed:
                self.send(loadgen.STREAM_END)
                await asyncio.wait_for(self.expect(loadgen.STREAM_END), timeout)
        except (ConnectionError, TimeoutError, loadgen.LoginError):
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        self.hot = False
        if self.transport is not None and not self.closed:
            self.transport.abort()


# -- a node process ---------------------------------------------------------------------------------


class NodeProc:
    """``python -m gateway.cli node --config …`` of this checkout, pinned to ``cpus``."""

    started: list[NodeProc] = []  # every node of the run, for the CPU accounting

    def __init__(self, tmp: Path, name: str, storage_url: str, modules: dict[str, Any], cpus: list[int],
                 log_level: str, clients: int) -> None:
        self.workdir = tmp / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.data_dir = self.workdir / "data"
        self.port, tls_port = free_ports(2)
        conf: dict[str, Any] = {
            "node_name": name, "domains": [DOMAIN], "data_dir": str(self.data_dir), "log_level": log_level,
            "scram_iterations": 4096,
            "c2s": {"host": "127.0.0.1", "port": self.port, "tls_port": tls_port, "handshake_timeout": 120.0,
                    "idle_timeout": 3600.0},
            "limits": {"max_connections_per_ip": clients + 1000, "max_connections": clients + 1000,
                       "shaper_rate": 10_000_000, "shaper_burst": 10_000_000,
                       "stanza_rate": 10_000_000, "stanza_burst": 10_000_000},
            "storage": {"url": storage_url},
            "admin": {"port": 0}, "user_api": {"port": 0},
        }
        if modules:
            conf["modules"] = modules
        self.config = self.workdir / f"{name}.toml"
        self.config.write_text(toml_dump(conf))
        self.cpus = cpus
        self.nofile = clients + 4096
        self.log_path = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_cpu = 0.0

    def start(self, timeout: float = 60.0) -> NodeProc:
        control = self.data_dir / "control.sock"
        control.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        cpus, nofile = self.cpus, self.nofile

        def prepare() -> None:  # in the child, before exec
            loadgen.raise_nofile(nofile)
            if cpus:
                os.sched_setaffinity(0, cpus)

        NodeProc.started.append(self)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "node", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                         preexec_fn=prepare)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchmarkError(f"node {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if control.exists():  # made once every listener is up
                return self
            time.sleep(0.05)
        raise BenchmarkError(f"node {self.name} did not start within {timeout:.0f}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_s(self) -> float:
        """User + system CPU seconds, from /proc/<pid>/stat (the last value read once it exited)."""
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            self.last_cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return self.last_cpu

    def run_delay_s(self) -> float:
        """Seconds the node's event loop thread was runnable but waited for a CPU (/proc/<pid>/schedstat)."""
        try:
            return int(Path(f"/proc/{self.pid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    async def wait_idle(self, timeout: float = 20.0, below: float = 0.05) -> None:
        """Until the node uses under ``below`` of a CPU over 0.3 s (or ``timeout``)."""
        await common.wait_idle(self.alive, self.cpu_s, timeout, below)

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.cpu_s()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

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


class Meter:
    """CPU of a node, of this process and of the rest of the machine over one measured stretch."""

    def __init__(self, node: NodeProc) -> None:
        self.node = node
        self.t0, self.cpu0, self.me0 = time.perf_counter(), node.cpu_s(), self_cpu_s()
        self.busy0, self.wait0 = machine_busy(), node.run_delay_s()

    def done(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        cpu, me = self.node.cpu_s() - self.cpu0, self_cpu_s() - self.me0
        busy1 = machine_busy()
        others = (max(0.0, busy1 - self.busy0 - cpu - me) / wall
                  if self.busy0 is not None and busy1 is not None else float("nan"))
        return {"wall": wall, "node_cpu_s": cpu, "node_util": cpu / wall, "load_util": me / wall,
                "waited": (self.node.run_delay_s() - self.wait0) / wall, "others": others}


# -- the report ------------------------------------------------------------------------------------------


class Report(common.Report):
    """Rows indented under their sections, headed 'figure' (websocket.py's too)."""

    def __init__(self) -> None:
        super().__init__(first="figure", indent="  ", sections_in_width=False)


_each = common.each
_med = common.median_of


# -- accounts and archives -------------------------------------------------------------------------------


async def register(storage_url: str, names: list[str]) -> tuple[int, float]:
    """Accounts ``names`` (those missing) through ``Accounts.register`` (4096 PBKDF2 rounds), many at
    once on threads (hashlib releases the GIL) — as benchmarks/node_load.py makes them."""
    from concurrent.futures import ThreadPoolExecutor

    from cluster_node.core.accounts import Accounts
    from cluster_node.storage import open_storage

    t = time.perf_counter()
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)))
    storage = open_storage(storage_url)
    await storage.open()
    try:
        accounts = Accounts(storage, [DOMAIN], iterations=4096)
        have = set(await storage.list_accounts(DOMAIN))
        missing = [n for n in names if n not in have]
        sem = asyncio.Semaphore(32)

        async def one(name: str) -> None:
            async with sem:
                await accounts.register(DOMAIN, name, PASSWORD)

        await asyncio.gather(*(one(n) for n in missing))
    finally:
        await storage.close()
    return len(missing), time.perf_counter() - t


ARCHIVE_USER = "mam0"
PEERS = 20
COLUMNS = ["domain", "username", "id", "ts", "with_bare", "with_resource", "direction", "stanza"]
INSERT = ("INSERT INTO mam_messages (domain, username, id, ts, with_bare, with_resource, direction, stanza) "
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def archive_rows(start: int, stop: int, ts0: int, ids: array[int]) -> list[tuple[Any, ...]]:
    """Rows ``start``..``stop`` of the archive: one message a second from ``ts0`` (µs), 20 peers, in
    and out alternately; ids as the module makes them (time << 11 | random bits)."""
    from cluster_node.modules.mam.query import make_id

    rng = random.Random(start)
    owner = f"{ARCHIVE_USER}@{DOMAIN}"
    rows = []
    for i in range(start, stop):
        ts = ts0 + i * 1_000_000
        archive_id = make_id(ts, rng.getrandbits(11))
        ids.append(archive_id)
        peer = f"peer{i % PEERS}@{DOMAIN}"
        if i % 2:
            direction, frm, to = "in", f"{peer}/phone", f"{owner}/phone"
        else:
            direction, frm, to = "out", f"{owner}/phone", peer
        stanza = (f"<message from='{frm}' to='{to}' type='chat' id='m{i:07d}'><body>Message {i}: are we still "
                  f"on for lunch tomorrow? I can be there at noon.</body><origin-id xmlns='urn:xmpp:sid:0' "
                  f"id='o{i:07d}'/></message>").encode()
        rows.append((DOMAIN, ARCHIVE_USER, archive_id, ts, peer, "phone", direction, stanza))
    return rows


async def group_commits(storage_url: str, n: int, burst: int = 50) -> tuple[float, float]:
    """The node's own archive write path (``ArchiveStore.queue``, then ``written``: the group
    commit a busy node makes) for ``n`` rows in bursts of ``burst``, into another user's archive:
    (rows/s, µs of this process's CPU per row)."""
    from cluster_node.modules.mam.query import make_id
    from cluster_node.modules.mam.store import ArchiveStore
    from cluster_node.storage import open_storage

    storage: Any = open_storage(storage_url)
    await storage.open()
    try:
        store = ArchiveStore(storage)
        ts0 = time.time_ns() // 1000
        stanza = b"<message to='mam1@" + DOMAIN.encode() + b"' type='chat'><body>" + BODY + b"</body></message>"
        cpu0, t = common.self_cpu_s(), time.perf_counter()
        for start in range(0, n, burst):
            rows = [store.queue(DOMAIN, "mamw", make_id(ts0 + i, 0), ts0 + i, f"mam1@{DOMAIN}", "phone", "out",
                                stanza, unless_prefs=True) for i in range(start, min(n, start + burst))]
            await store.written()
            if not all(r.result() for r in rows):
                raise BenchmarkError("an archive row of the group-commit run was refused")
        return n / (time.perf_counter() - t), (common.self_cpu_s() - cpu0) / n * 1e6
    finally:
        await storage.close()


async def fill_archive(storage_url: str, n: int, batch: int = 50_000) -> tuple[float, array[int], str]:
    """``n`` messages into ``mam0``'s archive, straight through the module's schema and SQL:
    (seconds, the ids in order, size on disk)."""
    from cluster_node.modules.mam.store import ArchiveStore
    from cluster_node.storage import open_storage

    storage: Any = open_storage(storage_url)
    await storage.open()
    ids: array[int] = array("q")
    try:
        await ArchiveStore(storage).migrate()
        t = time.perf_counter()
        ts0 = time.time_ns() // 1000 - n * 1_000_000
        pg = storage.dialect == "postgres"
        for start in range(0, n, batch):
            rows = archive_rows(start, min(n, start + batch), ts0, ids)
            async with storage.transaction(write=True) as tx:
                if pg:
                    await tx.conn.copy_records_to_table("mam_messages", records=rows, columns=COLUMNS)
                else:
                    await tx.db.executemany(INSERT, rows)
        async with storage.transaction() as tx:  # outside a transaction block
            if pg:
                await tx.execute("VACUUM ANALYZE mam_messages")  # what autovacuum would do after a bulk load
            else:
                await tx.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        took = time.perf_counter() - t
        async with storage.transaction() as tx:
            if pg:
                row = await tx.fetchone("SELECT pg_database_size(current_database())")
                size = f"{int(row[0]) / 2**20:,.0f} MiB database"
            else:
                size = f"{Path(storage.path).stat().st_size / 2**20:,.0f} MiB file"
    finally:
        await storage.close()
    return took, ids, size


# -- 1. logins --------------------------------------------------------------------------------------------


class Slot:
    """One of the concurrent login loops: its account, its client id (user agent), its FAST token."""

    def __init__(self, index: int) -> None:
        self.user = username(index)
        self.agent = str(uuid.UUID(int=random.Random(index).getrandbits(128), version=4))
        self.token = ""
        self.count = 0


async def login_once(load: Load, port: int, slot: Slot, mode: str, timeout: float) -> float:
    """One login (bound) and logout in ``mode``: the seconds from TCP connect to bound."""
    c = MClient(load, slot.user, port)
    try:
        t0 = time.perf_counter()
        async with asyncio.timeout(timeout):
            await c.open_tls()
            if mode == "legacy":
                await c.legacy("mobile")
            elif mode == "sasl2":
                got = await c.sasl2_scram(slot.agent, bind2("mobile"))
                if b"<bound" not in got:
                    raise loadgen.LoginError(f"no <bound/>: {loadgen._snippet(got)}")
            else:
                slot.count += 1
                got = await c.sasl2_fast(slot.token, slot.agent, slot.count, bind2("mobile"))
                if b"<bound" not in got:
                    raise loadgen.LoginError(f"no <bound/>: {loadgen._snippet(got)}")
        took = time.perf_counter() - t0
        await c.logout()
        return took
    finally:
        c.abort()


async def get_token(load: Load, port: int, slot: Slot) -> None:
    c = MClient(load, slot.user, port)
    try:
        await c.open_tls()
        got = await c.sasl2_scram(slot.agent, f"<request-token xmlns='{FAST}' mechanism='{HT}'/>" + bind2("mobile"))
        m = _TOKEN.search(got)
        if m is None:
            raise BenchmarkError(f"no FAST token for {slot.user}: {loadgen._snippet(got)}")
        slot.token = m.group(2).decode()
        await c.logout()
    finally:
        c.abort()


async def login_round(load: Load, node: NodeProc, slots: list[Slot], mode: str, duration: float,
                      timeout: float) -> dict[str, Any]:
    lat: list[float] = []
    failures: collections.Counter[str] = collections.Counter()
    await node.wait_idle(10)
    meter = Meter(node)
    deadline = time.monotonic() + duration

    async def loop(slot: Slot) -> None:
        while time.monotonic() < deadline:
            try:
                lat.append(await login_once(load, node.port, slot, mode, timeout))
            except Exception as e:  # noqa: BLE001 — counted and reported
                failures[type(e).__name__ + (f": {str(e)[:160]}" if str(e) else "")] += 1
                await asyncio.sleep(0.05)

    await asyncio.gather(*(loop(s) for s in slots))
    m = meter.done()
    return {**m, "n": len(lat), "rate": len(lat) / m["wall"], "lat": lat, "failures": failures,
            "cpu_per_login": m["node_cpu_s"] / max(len(lat), 1)}


async def part_logins(args: argparse.Namespace, load: Load, node: NodeProc, report: Report, notes: list[str]) -> None:
    slots = [Slot(i) for i in range(args.concurrency)]
    for s in slots:
        await get_token(load, node.port, s)
    print(f"  1. logins: {args.concurrency} at a time, {args.login_duration:g} s per mode and round, "
          f"{args.rounds} round(s); FAST tokens fetched for {len(slots)} clients", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m, _ in MODES}
    for rnd in range(args.rounds):
        order = MODES[rnd % 3:] + MODES[:rnd % 3]
        for mode, _ in order:
            res = await login_round(load, node, slots, mode, args.login_duration, args.timeout)
            runs[mode].append(res)
            print(f"    round {rnd + 1}, {mode:6}: {res['rate']:6,.0f} logins/s, login p50 "
                  f"{pct(res['lat'], 50) * 1000:.1f} ms, node {res['cpu_per_login'] * 1000:.2f} ms CPU/login at "
                  f"{res['node_util'] * 100:.0f} % of its CPU (waiting {res['waited'] * 100:.0f} %), other work "
                  f"{res['others']:.2f} CPUs" + (f"; failures {sum(res['failures'].values())}"
                                                   if res["failures"] else ""), flush=True)
    report.section(f"1. logins/s over TLS (STARTTLS), closed loop, {args.concurrency} connections, each login "
                   f"then logout; median of {args.rounds} round(s)")
    base = _med(runs["legacy"], "rate")
    for mode, label in MODES:
        rs = runs[mode]
        rate = _med(rs, "rate")
        lat = [x for r in rs for x in r["lat"]]
        ratio = f"  ×{rate / base:.2f} legacy" if mode != "legacy" and base > 0 else ""
        report.row(f"{label}, logins/s", f"{rate:,.0f}" + _each([r["rate"] for r in rs]) + ratio)
        report.row("  login time p50 / p99 (connect → bound)",
                   f"{pct(lat, 50) * 1000:.1f} / {pct(lat, 99) * 1000:.1f} ms")
        report.row("  node CPU per login (login + logout) / node CPU use",
                   f"{_med(rs, 'cpu_per_login') * 1000:.2f} ms / {_med(rs, 'node_util') * 100:.0f} %")
    failures: collections.Counter[str] = collections.Counter()
    for rs in runs.values():
        for r in rs:
            failures.update(r["failures"])
    n_fail = sum(failures.values())
    report.row("login failures", f"{n_fail:,}", "0", n_fail == 0, f"{n_fail} logins failed: {failures.most_common(3)}")
    if n_fail:
        report.failed.append(f"{n_fail} logins failed: {failures.most_common(3)}")
    report.row("  node waiting for its CPU / other work on the machine (median of rounds)",
               f"{statistics.median(r['waited'] for rs in runs.values() for r in rs) * 100:.0f} % / "
               f"{statistics.median(r['others'] for rs in runs.values() for r in rs):.2f} CPUs")


# -- 2. messages with carbons and MAM ------------------------------------------------------------------------


async def connect_pairs(load: Load, node: NodeProc, first_user: int, pairs: int, concurrency: int,
                        timeout: float) -> tuple[list[tuple[MClient, MClient]], list[MClient], int]:
    """Two users per pair, two resources per user, logged in with SASL2 + Bind 2, available, carbons
    asked for: ([(x/r1, y/r1)], every client, how many had carbons enabled)."""
    sem = asyncio.Semaphore(concurrency)
    enabled = 0

    async def one(user: str, tag: str) -> MClient:
        nonlocal enabled
        async with sem:
            c = MClient(load, user, node.port)
            async with asyncio.timeout(timeout):
                await c.open_tls()
                await c.sasl2_scram(str(uuid.uuid4()), bind2(tag))
                if not c.jid.endswith("/" + tag):
                    raise BenchmarkError(f"Bind 2 bound {c.jid}, not …/{tag}")
                await c.presence()
                ok = await c.enable_carbons()
            enabled += ok
            c.buf = bytearray()
            c.hot = True
            return c

    users = [username(first_user + i) for i in range(2 * pairs)]
    clients = await asyncio.gather(*(one(u, tag) for u in users for tag in ("r1", "r2")))
    r1 = clients[0::2]
    return list(zip(r1[0::2], r1[1::2], strict=True)), list(clients), enabled


BODY = b"Are we still on for lunch tomorrow? I can be there at noon."


async def message_round(load: Load, pairs: list[tuple[MClient, MClient]], window: int, duration: float,
                        node: NodeProc, carbons: bool) -> dict[str, float]:
    for x, y in pairs:
        x.peer_msg = b"<message to='" + y.jid.encode() + b"' type='chat'><body>" + BODY + b"</body></message>"
        y.peer_msg = b"<message to='" + x.jid.encode() + b"' type='chat'><body>" + BODY + b"</body></message>"
    await node.wait_idle(20)
    load.reset()
    load.active = True
    meter = Meter(node)
    for x, _ in pairs:
        x.send(x.peer_msg * window)
    load.sent += window * len(pairs)
    await asyncio.sleep(duration)
    received = load.received
    m = meter.done()
    load.active = False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (load.received < load.sent or (carbons and load.carbons < 2 * load.sent)):
        await asyncio.sleep(0.02)
    for x, y in pairs:
        x.peer_msg = y.peer_msg = b""
    return {**m, "rate": received / m["wall"], "us_per_msg": m["node_cpu_s"] / max(received, 1) * 1e6,
            "lost": load.sent - load.received, "errors": load.errors,
            "carbons_per_msg": load.carbons / max(load.received, 1)}


async def part_messages(args: argparse.Namespace, load: Load, nodes: dict[str, NodeProc], configs: list[Any],
                        report: Report, notes: list[str]) -> None:
    print(f"  2. messages: {args.pairs} pairs × 2 users × 2 resources per node, {args.window} in flight per pair, "
          f"{args.msg_duration:g} s rounds, {args.rounds} round(s), configurations: "
          f"{', '.join(label for _, label, _ in configs)}", flush=True)
    sets: dict[str, list[tuple[MClient, MClient]]] = {}
    everyone: list[MClient] = []
    enabled: dict[str, int] = {}
    try:
        for key, _, _ in configs:
            pairs, clients, n = await connect_pairs(load, nodes[key], args.concurrency, args.pairs, 20, args.timeout)
            sets[key], enabled[key] = pairs, n
            everyone += clients
        runs: dict[str, list[dict[str, float]]] = {key: [] for key, _, _ in configs}
        for rnd in range(args.rounds):
            order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
            for key, label, modules in order:
                has_carbons = "carbons" not in modules
                res = await message_round(load, sets[key], args.window, args.msg_duration, nodes[key], has_carbons)
                runs[key].append(res)
                print(f"    round {rnd + 1}, {label:17}: {res['rate']:7,.0f} msg/s, node "
                      f"{res['us_per_msg']:5.0f} µs/msg at {res['node_util'] * 100:.0f} % of its CPU (waiting "
                      f"{res['waited'] * 100:.0f} %), load {res['load_util'] * 100:.0f} %, carbons/msg "
                      f"{res['carbons_per_msg']:.2f}, other work {res['others']:.2f} CPUs", flush=True)
    finally:
        for c in everyone:
            c.send(loadgen.STREAM_END)
            c.abort()
    report.section(f"2. messages/s, closed loop, {args.pairs} pairs (each user 2 resources, carbons enabled by the "
                   f"clients), {args.window} in flight per pair; median of {args.rounds} round(s)")
    for key, label, _ in configs:
        rs = runs[key]
        report.row(f"{label}: messages/s", f"{_med(rs, 'rate'):,.0f}" + _each([r["rate"] for r in rs]))
        report.row("  node CPU per message / node CPU use",
                   f"{_med(rs, 'us_per_msg'):.0f} µs / {_med(rs, 'node_util') * 100:.0f} %")
        report.row("  carbon copies per message / resources with carbons enabled",
                   f"{_med(rs, 'carbons_per_msg'):.2f} / {enabled[key]} of {4 * args.pairs}")
    on, off = _med(runs["on"], "rate"), _med(runs["off"], "rate")
    slower = (1 - on / off) * 100 if off > 0 else float("nan")
    report.row("carbons + MAM on / off", f"{on / off:.3f} ({slower:+.1f} % slower)", f"≤ {args.msg_goal:g} % slower",
               slower <= args.msg_goal, f"messages/s with carbons + MAM {slower:.1f} % below without "
               f"(goal ≤ {args.msg_goal:g} %)")
    uon, uoff = _med(runs["on"], "us_per_msg"), _med(runs["off"], "us_per_msg")
    report.row("  node CPU per message on / off", f"{uon / uoff:.2f} ({uon:.0f} vs {uoff:.0f} µs)")
    for key in ("carbons", "mam"):
        if key in runs and runs[key]:
            u = _med(runs[key], "us_per_msg")
            report.row(f"  {'carbons' if key == 'carbons' else 'MAM'} alone: messages/s / off, CPU per message added",
                       f"{_med(runs[key], 'rate') / off:.3f}, {u - uoff:+.0f} µs")
    lost = sum(r["lost"] for rs in runs.values() for r in rs)
    errs = sum(r["errors"] for rs in runs.values() for r in rs)
    report.row("messages lost / error replies or stream errors", f"{lost:,} / {errs:,}", "0 / 0",
               lost == 0 and errs == 0, f"{lost} messages lost, {errs} errors in the message rounds")
    if lost or errs:
        report.failed.append(f"{lost} messages lost, {errs} errors in the message rounds")
    expected_carbons = _med(runs["on"], "carbons_per_msg")
    if abs(expected_carbons - 2.0) > 0.05:
        notes.append(f"with carbons on, {expected_carbons:.2f} carbon copies per message arrived (2 expected)")
    report.row("  node waiting for its CPU / other work on the machine (median of rounds)",
               f"{statistics.median(r['waited'] for rs in runs.values() for r in rs) * 100:.0f} % / "
               f"{statistics.median(r['others'] for rs in runs.values() for r in rs):.2f} CPUs")
    if max(r["node_util"] for rs in runs.values() for r in rs) < 0.85:
        notes.append("a node used under 85 % of its CPU in a message round: the load generator (or the machine) "
                     "limited the rate there; compare CPU per message")


# -- 3. MAM queries ------------------------------------------------------------------------------------------


def mam_query(qid: str, after_id: int | None) -> bytes:
    """``last 50`` (``after_id`` None: RSM ``<before/>`` empty) or 50 after ``after_id`` (form field)."""
    if after_id is None:
        inner = f"<set xmlns='{RSM}'><max>50</max><before/></set>"
    else:
        inner = (f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{MAM}</value>"
                 f"</field><field var='after-id'><value>{after_id}</value></field></x>"
                 f"<set xmlns='{RSM}'><max>50</max></set>")
    return f"<iq type='set' id='{qid}'><query xmlns='{MAM}' queryid='{qid}'>{inner}</query></iq>".encode()


_FIRST = re.compile(rb"<first>(\d+)</first>")
_LAST = re.compile(rb"<last>(\d+)</last>")


async def one_query(c: MClient, qid: str, after_index: int | None, ids: array[int]) -> float:
    after_id = ids[after_index] if after_index is not None else None
    t0 = time.perf_counter()
    c.send(mam_query(qid, after_id))
    got = await asyncio.wait_for(c.expect(b"</iq>"), 30)
    took = time.perf_counter() - t0
    results = got.count(b"<result ")
    first, last = _FIRST.search(got), _LAST.search(got)
    if b"<fin" not in got or results != 50 or first is None or last is None:
        raise BenchmarkError(f"MAM query {qid}: {results} results, {loadgen._snippet(got)}")
    want_first, want_last = ((ids[-50], ids[-1]) if after_index is None
                             else (ids[after_index + 1], ids[after_index + 50]))
    if (int(first.group(1)), int(last.group(1))) != (want_first, want_last):
        raise BenchmarkError(f"MAM query {qid}: page {first.group(1)!r}..{last.group(1)!r}, expected "
                             f"{want_first}..{want_last}")
    return took


async def part_mam(args: argparse.Namespace, load: Load, targets: list[tuple[str, NodeProc, array[int]]],
                   fills: dict[str, tuple[float, str]], commits: dict[str, tuple[float, float]], report: Report,
                   notes: list[str]) -> None:
    print(f"  3. MAM: {args.queries} queries of each kind per backend ({', '.join(t[0] for t in targets)}), "
          "interleaved, one at a time", flush=True)
    clients: list[MClient] = []
    lat: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    rng = random.Random(313)
    try:
        for _, node, _ in targets:
            c = MClient(load, ARCHIVE_USER, node.port)
            clients.append(c)
            await c.open_tls()
            await c.sasl2_scram(str(uuid.uuid4()), bind2("phone"))
            await c.presence()
            c.buf = bytearray()
        n = len(targets[0][2])
        warm = min(10, args.queries)
        for i in range(-warm, args.queries):
            middle = rng.randrange(n // 4, 3 * n // 4 - 50)
            for kind, after in (("last 50", None), ("middle", middle)):
                for (label, _, ids), c in zip(targets, clients, strict=True):
                    took = await one_query(c, f"q{i + warm}{kind[0]}", after, ids)
                    if i >= 0:
                        lat[(label, kind)].append(took * 1000)
    finally:
        for c in clients:
            await c.logout(3)
    n_archive = len(targets[0][2])
    report.section(f"3. MAM query latency, {n_archive:,} messages in one archive, 50 per page, {args.queries} "
                   "queries of each kind per backend (through XMPP, client-side)")
    for label, _, _ in targets:
        took, size = fills[label]
        report.row(f"{label}: archive written (bulk, module schema)",
                   f"{took:.1f} s, {n_archive / took:,.0f} rows/s, {size}")
        rate, us = commits[label]
        report.row("  group commits of 50 rows (the node's write path): rows/s / CPU per row",
                   f"{rate:,.0f} / {us:.1f} µs")
        for kind in ("last 50", "middle"):
            v = lat[(label, kind)]
            p99 = pct(v, 99)
            what = "last 50 (RSM <before/>)" if kind == "last 50" else "middle page (after-id)"
            report.row(f"  {what}: p50 / p99 / max",
                       f"{pct(v, 50):.2f} / {p99:.2f} / {max(v):.2f} ms", f"p99 ≤ {args.p99_goal:g} ms",
                       p99 <= args.p99_goal, f"MAM {kind} on {label}: p99 {p99:.2f} ms > {args.p99_goal:g} ms")


# -- the run ---------------------------------------------------------------------------------------------------


async def pg_reachable(url: str) -> str | None:
    """None when a connection to ``url`` works; else why not."""
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=5)
    except Exception as e:  # noqa: BLE001 — reported
        return f"{type(e).__name__}: {e}"
    await conn.close()
    return None


async def pg_admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_db_url(url: str, database: str) -> str:
    base, _, rest = url.rpartition("/")
    query = rest.partition("?")[2]
    return f"{base}/{database}" + (f"?{query}" if query else "")


async def run_async(args: argparse.Namespace, tmp: Path, node_cpus: list[int], load_cpus: list[int],
                    report: Report, notes: list[str]) -> None:
    all_cpus = sorted(os.sched_getaffinity(0))
    load = Load(asyncio.get_running_loop())
    configs = CONFIGS_FULL if args.breakdown else CONFIGS_FULL[:2]
    template = tmp / "accounts.db"
    names = [username(i) for i in range(args.concurrency + 2 * args.pairs)] + [ARCHIVE_USER]
    made, took = await register(f"sqlite:///{template}", names)
    print(f"  setup: {made} accounts registered (4096 PBKDF2 rounds) in {took:.1f} s", flush=True)

    def sqlite_copy(name: str) -> str:
        db = tmp / name / "meridian.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(template, db)
        return f"sqlite:///{db}"

    if "logins" in args.parts or "messages" in args.parts:
        keys = [c for c in configs if "messages" in args.parts] or configs[:1]
        nodes = {key: NodeProc(tmp, f"msg-{key}", sqlite_copy(f"msg-{key}"), modules, node_cpus, args.log_level,
                               8 * args.pairs + args.concurrency) for key, _, modules in keys}
        try:
            for n in nodes.values():
                n.start()
            if load_cpus:
                os.sched_setaffinity(0, load_cpus)
            if "logins" in args.parts:
                await part_logins(args, load, nodes["on"], report, notes)
            if "messages" in args.parts:
                await part_messages(args, load, nodes, configs, report, notes)
        finally:
            if load_cpus:
                os.sched_setaffinity(0, all_cpus)
            await asyncio.sleep(0.3)
            for n in nodes.values():
                await asyncio.to_thread(n.stop)
                notes.extend(f"{n.name} log: {line[:240]}" for line in n.problems()[-3:])

    if "mam" not in args.parts:
        return
    dbname = f"meridian_bench_{secrets.token_hex(4)}"
    pg_url: str | None = None
    if not args.no_postgres:
        why = await pg_reachable(args.pg_url)
        if why is None:
            pg_url = pg_db_url(args.pg_url, dbname)
        elif args.quick:
            notes.append(f"PostgreSQL at {args.pg_url} not reachable ({why[:120]}): skipped")
        else:
            raise BenchmarkError(f"PostgreSQL at {args.pg_url} not reachable ({why[:200]}); --no-postgres skips it")
    fills: dict[str, tuple[float, str]] = {}
    commits: dict[str, tuple[float, float]] = {}
    targets: list[tuple[str, NodeProc, array[int]]] = []
    mam_nodes: list[NodeProc] = []
    try:
        url = sqlite_copy("mam-sqlite")
        print(f"  MAM setup: {args.archive:,} messages into SQLite …", flush=True)
        took, ids, size = await fill_archive(url, args.archive)
        fills["SQLite"] = (took, size)
        print(f"    SQLite: {took:.1f} s ({args.archive / took:,.0f} rows/s), {size}", flush=True)
        commits["SQLite"] = await group_commits(url, args.commit_rows)
        mam_nodes.append(NodeProc(tmp, "mam-sqlite", url, {}, node_cpus, args.log_level, 10))
        targets.append(("SQLite", mam_nodes[-1], ids))
        if pg_url is not None:
            await pg_admin(args.pg_url, f"CREATE DATABASE {dbname}")
            await register(pg_url, [ARCHIVE_USER])
            print(f"  MAM setup: {args.archive:,} messages into PostgreSQL (database {dbname}) …", flush=True)
            took, ids, size = await fill_archive(pg_url, args.archive)
            fills["PostgreSQL"] = (took, size)
            print(f"    PostgreSQL: {took:.1f} s ({args.archive / took:,.0f} rows/s), {size}", flush=True)
            commits["PostgreSQL"] = await group_commits(pg_url, args.commit_rows)
            mam_nodes.append(NodeProc(tmp, "mam-pg", pg_url, {}, node_cpus, args.log_level, 10))
            targets.append(("PostgreSQL", mam_nodes[-1], ids))
        for n in mam_nodes:
            n.start()
        if load_cpus:
            os.sched_setaffinity(0, load_cpus)
        await part_mam(args, load, targets, fills, commits, report, notes)
    finally:
        if load_cpus:
            os.sched_setaffinity(0, all_cpus)
        for n in mam_nodes:
            await asyncio.to_thread(n.stop)
            notes.extend(f"{n.name} log: {line[:240]}" for line in n.problems()[-3:])
        if pg_url is not None:
            with contextlib.suppress(Exception):
                await pg_admin(args.pg_url, f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="meridian-mobile-"))
    node_cpus, load_cpus = common.split_cpus(args.pin)
    loadgen.raise_nofile(16 * args.pairs + 4096)
    print(f"Meridian mobile modules benchmark{' (quick)' if args.quick else ''}: {os.cpu_count()} CPUs, "
          f"{platform.platform()}, Python {platform.python_version()}, load average {load_average()}")
    print("  " + (f"node(s) pinned to CPU {node_cpus}, the clients (this process) to CPU {load_cpus}" if node_cpus
                  else "no CPU pinning"), flush=True)
    report = Report()
    notes: list[str] = []
    return common.measured_run(lambda: run_async(args, tmp, node_cpus, load_cpus, report, notes),
                               report, notes, tmp, keep=args.keep,
                               servers_cpu=lambda: sum(n.last_cpu for n in NodeProc.started),
                               who="the nodes and the clients", others="other work (PostgreSQL included)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (< 45 s): 1.5 s per login mode, 10 pairs for 2 s, carbons+MAM on and off "
                             "only, 20,000 archived messages, 40 queries; PostgreSQL skipped if not reachable")
    parser.add_argument("--parts", default="logins,messages,mam", help="which parts run (logins,messages,mam)")
    parser.add_argument("--rounds", type=int, help="rounds of parts 1 and 2, interleaved (3; quick 1)")
    g = parser.add_argument_group("1. logins")
    g.add_argument("--concurrency", type=int, default=4, help="connections logging in at once (4)")
    g.add_argument("--login-duration", type=float, help="seconds per mode and round (5; quick 1.5)")
    g = parser.add_argument_group("2. messages")
    g.add_argument("--pairs", type=int, help="pairs of users, 4 connections each (50; quick 10)")
    g.add_argument("--window", type=int, default=4, help="messages in flight per pair (4)")
    g.add_argument("--msg-duration", type=float, help="seconds per round and configuration (5; quick 2)")
    g.add_argument("--breakdown", action=argparse.BooleanOptionalAction,
                   help="also nodes with carbons only and MAM only (on; quick off)")
    g.add_argument("--msg-goal", type=float, default=15.0, help="%% fewer messages/s allowed with carbons + MAM (15)")
    g = parser.add_argument_group("3. MAM")
    g.add_argument("--archive", type=int, help="messages in the archive (1000000; quick 20000)")
    g.add_argument("--queries", type=int, help="queries of each kind per backend (300; quick 40)")
    g.add_argument("--commit-rows", type=int, help="rows written through the node's group commit per backend "
                   "(20000; quick 2000)")
    g.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test",
                   help="a PostgreSQL database to connect to; the benchmark makes and drops its own beside it")
    g.add_argument("--no-postgres", action="store_true", help="SQLite only")
    g.add_argument("--p99-goal", type=float, default=20.0, help="ms, p99 of a MAM query (20)")
    g = parser.add_argument_group("common")
    g.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                   help="node(s) on CPU 0, the clients on the others (on)")
    g.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default="WARNING")
    g.add_argument("--timeout", type=float, default=30.0, help="seconds one login may take (30)")
    g.add_argument("--keep", action="store_true", help="keep the temp dir (configs, node logs, SQLite files)")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, full, small in (("rounds", 3, 1), ("login_duration", 5.0, 1.5), ("pairs", 50, 10),
                              ("msg_duration", 5.0, 2.0), ("breakdown", True, False),
                              ("archive", 1_000_000, 20_000), ("queries", 300, 40), ("commit_rows", 20_000, 2_000)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not args.parts or not args.parts <= {"logins", "messages", "mam"}:
        parser.error("--parts: logins, messages, mam")
    if args.concurrency < 1 or args.pairs < 1 or args.window < 1 or args.rounds < 1:
        parser.error("--concurrency, --pairs, --window and --rounds ≥ 1")
    if args.archive < 400 or args.queries < 1 or args.commit_rows < 1:
        parser.error("--archive ≥ 400, --queries ≥ 1, --commit-rows ≥ 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
