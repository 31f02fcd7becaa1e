"""XMPP over WebSocket (RFC 7395) and BOSH against TCP: logins/s, messages/s, BOSH requests/s, RSS per idle
connection — Meridian, and ejabberd and Prosody beside it.

Four measures, printed as rows of one table with a column per server (``--servers``, default
meridian,ejabberd,prosody: those installed; the goals are Meridian's).  Each server serves the transports
at once (c2s with STARTTLS, WebSocket over TLS — ``wss://`` — and BOSH over HTTPS on the same listener), so
the only difference is the transport:

1. **Logins/s** — ``--concurrency`` connections (8) each log in again and again for ``--login-duration``
   s (closed loop), TCP and WebSocket in turn over ``--rounds`` rounds (the order swapped each round):

   * ``tcp``: TCP, stream header, STARTTLS, TLS, header, SASL1 SCRAM-SHA-256, header, bind, presence;
   * ``websocket``: TCP, TLS, HTTP upgrade (``Sec-WebSocket-Protocol: xmpp``), ``<open/>``, SASL1
     SCRAM-SHA-256, ``<open/>``, bind, presence.

   The peers log in with PLAIN (``--peer-sasl``): their passwords are stored plain (``peers.py``), so
   neither they nor Meridian (SCRAM on stored keys) run PBKDF2 per login.  ``--login-warmup`` s of
   unmeasured logins per transport first (ejabberd's first logins are slow).

   A login counts when the node echoes the initial presence; then the client ends the stream
   (``</stream:stream>``, or ``<close/>`` and the WebSocket closing handshake) and waits for the
   node's end before the next login.  Goal: WebSocket ≥ ``--goal`` % (80) of TCP's logins/s.
2. **Messages/s** — ``--pairs`` pairs of users (50) per transport, all logged in at once; one pair's
   users send chat messages to each other (full JID), ``--window`` in flight per pair, each message
   received answered with one (closed loop).  Rounds of ``--msg-duration`` s alternate the transports
   (the other set stays connected, idle).  Goal: WebSocket ≥ ``--goal`` % of TCP's messages/s.
3. **BOSH requests/s** (XEP-0124/0206, part ``bosh``) — ``--bosh-sessions`` (50) sessions at the server's
   BOSH endpoint over HTTPS (Meridian ``/http-bind`` on the ``[websocket]`` listener, ejabberd ``/bosh``,
   Prosody ``/http-bind``), ten logging in at a time (session creation, SASL, restart, bind, presence),
   then in pairs exchanging chat messages, ``--bosh-window`` (1) in flight per session, each one received
   answered (closed loop), ``--rounds`` rounds of ``--bosh-duration`` s.  The client is
   ``tests/helpers/xmpp_bosh.py``'s, on aiohttp (one ``ClientSession`` per session, keep-alive), with a
   request always held (hold 1, requests 2): a message rides a request of its own, which releases the
   held one.  HTTP requests/s, messages/s, request time p50/p99 (held requests included), server CPU per
   request.  Meridian's node lifts what would throttle one session (``limits.shaper_*``,
   ``limits.stanza_*``, connections per IP — as for every transport — and ``bosh.max_sessions``).
4. **RSS per idle connection** — four fresh nodes; on each, ``--warmup`` unmeasured connections of
   both kinds first, then ``--idle`` logged-in connections (presence sent) of one kind and as many of
   the other, VmRSS (``/proc/<pid>/status``) read once the node is idle after each set; TCP first on
   one node, WebSocket first on the other (whichever comes second costs more: the mean of both
   orders cancels that) — for ``wss://`` (TLS in the node, as TCP), and for ``ws://`` behind a
   TLS-terminating proxy (the node trusts 127.0.0.1, the client sends ``X-Forwarded-Proto: https``:
   an Ingress or load balancer in front of the nodes).  Goal: ≤ ``--rss-goal`` KB (40) per idle
   WebSocket connection.  Meridian only (``compare.py`` measures the peers' RSS over TCP).

The clients are ``benchmarks/loadgen.py``'s ``Client`` (TLS by hand over ``MemoryBIO``, byte markers, no
XML parsing); the WebSocket one adds the HTTP upgrade and RFC 6455 framing by hand (each stanza in a
text frame of its own, with ``xmlns='jabber:client'`` as RFC 7395's standalone frames want — Prosody
refuses a stanza without it —, masked with a zero key — the node unmasks every frame all the same — and
the node's pings answered).  The node runs pinned to CPU 0 with its default modules but carbons and MAM
(off, as in ``compare.py``: the transport is what is measured), the clients (this process) on the
other CPUs.

    .venv/bin/python benchmarks/websocket.py            # everything, three servers: ~7 minutes here
    .venv/bin/python benchmarks/websocket.py --quick    # smoke run, < 60 s per server
    .venv/bin/python benchmarks/websocket.py --servers meridian --parts bosh
    .venv/bin/python benchmarks/websocket.py --parts rss --idle 5000

Exit status 0 when every goal is met, 1 when one is missed (each printed as ``GOAL MISSED:``), 2
when the run failed (a node did not start, logins failed, messages were lost — Meridian's; a peer's
failure is a note, its column shows what it did).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:  # run as a script from anywhere: this checkout, and the benchmarks beside it
        sys.path.insert(0, _p)

import common  # noqa: E402
import loadgen  # noqa: E402
import mobile  # noqa: E402  (its node process, meter, report and account set-up)
import peers  # noqa: E402  (ejabberd and Prosody, as compare.py runs them)
from common import BenchmarkError, pct  # noqa: E402
from machine import free_ports, load_average  # noqa: E402
from mobile import Meter, NodeProc, _each, _med, register  # noqa: E402

from tests.helpers.node import toml_dump  # noqa: E402
from tests.helpers.xmpp_bosh import BIND as NS_BIND, SASL as NS_SASL, BoshClient, ScramSha1  # noqa: E402
from tests.helpers.xmpp_raw import local  # noqa: E402

DOMAIN = mobile.DOMAIN
PASSWORD = mobile.PASSWORD
KB = 1024
FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
WS_OPEN = f"<open xmlns='{FRAMING}' to='{DOMAIN}' version='1.0'/>".encode()
WS_CLOSE = f"<close xmlns='{FRAMING}'/>".encode()
MSG_END = b"</message>"
BODY = b"Are we still on for lunch tomorrow? I can be there at noon."
MODULES = {"carbons": {"enabled": False}, "mam": {"enabled": False}}
TRANSPORTS = ("tcp", "websocket")
SERVERS = ("meridian", "ejabberd", "prosody")


def username(i: int) -> str:
    return f"ws{i}"


# -- RFC 6455 by hand ---------------------------------------------------------------------------------


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final client frame (masked, with a zero key: the XOR leaves the payload as it is)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


CLOSE_FRAME = frame((1000).to_bytes(2, "big"), 0x8)


class Load:
    """What loadgen's ``Client`` expects of its generator, for one transport, and the counters of its
    message rounds."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int, *, sasl: str = "SCRAM-SHA-256",
                 password: Callable[[str], str] = lambda user: PASSWORD, ws_path: str = "/ws") -> None:
        self.loop = loop
        self.port = port
        self.domain = DOMAIN
        self.resource = "b"
        self.sasl = sasl  # PLAIN | SCRAM-SHA-1 | SCRAM-SHA-256
        self.password = password
        self.ws_path = ws_path
        self.ctx = loadgen.client_tls_context()
        self.header = (f"<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' xmlns='jabber:client' "
                       f"xmlns:stream='http://etherx.jabber.org/streams'>").encode()
        self.salted_cache: dict[Any, bytes] = {}
        self.lost = 0
        self.active = False
        self.reset()

    def reset(self) -> None:
        self.sent = 0
        self.received = 0
        self.errors = 0

    def on_data(self, c: Any, data: bytes) -> None:
        """Stanza bytes of a logged-in client: whole messages counted and, in the closed loop, answered."""
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
        if b"type='error'" in data or b'type="error"' in data:
            self.errors += 1
        n = data.count(MSG_END, 0, cut)
        self.received += n
        if self.active and c.peer_msg:
            c.send_stanzas(c.peer_msg, n)
            self.sent += n


class TcpClient(loadgen.Client):
    """One c2s connection: STARTTLS, SASL1 SCRAM-SHA-256, bind, presence (loadgen's script)."""

    # the stanzas' namespace, where the transport wants it written on each (RFC 7395: every frame is a
    # standalone document; Prosody refuses a stanza without it, Meridian and ejabberd default it)
    NS = b""

    def __init__(self, load: Load, user: str, resource: str = "b") -> None:
        super().__init__(load, user, load.password(user))  # type: ignore[arg-type]
        self.jid = f"{user}@{DOMAIN}/{resource}"
        self.resource = resource
        self.peer_msg = b""

    def send_stanzas(self, stanza: bytes, n: int) -> None:
        self.send(stanza * n)

    async def open(self) -> None:
        g = self.gen
        await g.loop.create_connection(lambda: self, "127.0.0.1", g.port)
        self.send(g.header)
        await self.expect(b"</stream:features>")
        self.send(loadgen.STARTTLS)
        got = await self.expect(b"<proceed", b"<failure")
        if b"<proceed" not in got:
            raise loadgen.LoginError(f"STARTTLS refused: {loadgen._snippet(got)}")
        await self.start_tls()
        self.restart()
        await self.expect(b"</stream:features>")

    def restart(self) -> None:
        self.send(self.gen.header)

    async def login_all(self) -> None:
        """Open, authenticate, bind, presence: then only messages are looked for."""
        await self.open()
        if self.gen.sasl == "PLAIN":
            token = base64.b64encode(f"\0{self.username}\0{self.password}".encode())
            self.send(b"<auth xmlns='" + loadgen.NS_SASL.encode() + b"' mechanism='PLAIN'>" + token + b"</auth>")
        else:
            await self._scram()
        got = await self.expect(b"<success", b"<failure")
        if b"<success" not in got:
            raise loadgen.LoginError(f"authentication failed: {loadgen._snippet(got)}")
        self.restart()
        await self.expect(b"</stream:features>")
        self.send(b"<iq" + self.NS + (loadgen.BIND % self.resource.encode())[3:])
        got = await self.expect(b"</iq>")
        if b"type='result'" not in got and b'type="result"' not in got:
            raise loadgen.LoginError(f"bind failed: {loadgen._snippet(got)}")
        self.send(b"<presence" + self.NS + b"/>")
        await self.expect(b"<presence")
        self.buf = bytearray()

    async def logout(self, timeout: float = 10.0) -> None:
        """End the stream, wait for the node's end, close."""
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


class WsClient(TcpClient):
    """One ``wss://`` connection: TLS, the HTTP upgrade, then each element in a text frame of its own."""

    tls = True
    extra_headers = ""
    NS = b" xmlns='jabber:client'"

    def __init__(self, load: Load, user: str, resource: str = "b") -> None:
        super().__init__(load, user, resource)
        self.path = load.ws_path
        self.upgraded: asyncio.Future[None] | None = None
        self.http_buf = b""
        self.ws_buf = bytearray()
        self.ws_closed: asyncio.Future[None] = load.loop.create_future()

    # framing out: what loadgen's script sends (one element per call) goes out one frame each
    def send(self, data: bytes) -> None:
        super().send(frame(data))

    def send_stanzas(self, stanza: bytes, n: int) -> None:
        loadgen.Client.send(self, frame(stanza) * n)

    def restart(self) -> None:
        self.send(WS_OPEN)

    async def open(self) -> None:
        g = self.gen
        await g.loop.create_connection(lambda: self, "127.0.0.1", g.port)
        if self.tls:
            await self.start_tls()
        key = base64.b64encode(os.urandom(16)).decode()
        self.upgraded = g.loop.create_future()
        loadgen.Client.send(self, (f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{g.port}\r\nUpgrade: websocket\r\n"
                                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                                   f"Sec-WebSocket-Protocol: xmpp\r\n{self.extra_headers}\r\n").encode())
        await self.upgraded
        self.restart()
        await self.expect(b"</stream:features>")

    # framing in
    def _plain(self, data: bytes) -> None:
        if self.upgraded is None or not self.upgraded.done():
            self.http_buf += data
            end = self.http_buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.http_buf[:end], self.http_buf[end + 4:]
            self.http_buf = b""
            if not head.startswith(b"HTTP/1.1 101") or b"\r\nsec-websocket-protocol:xmpp" not in (
                    head.lower().replace(b" ", b"")):
                self.upgraded.set_exception(loadgen.LoginError(f"upgrade refused: {head[:200]!r}"))  # type: ignore[union-attr]
                return
            self.upgraded.set_result(None)  # type: ignore[union-attr]
        buf = self.ws_buf
        buf += data
        payloads = []
        i, size = 0, len(buf)
        while size - i >= 2:
            opcode, n = buf[i] & 0x0F, buf[i + 1] & 0x7F
            start = i + 2
            if n == 126:
                if size - i < 4:
                    break
                n, start = int.from_bytes(buf[i + 2:i + 4], "big"), i + 4
            elif n == 127:
                if size - i < 10:
                    break
                n, start = int.from_bytes(buf[i + 2:i + 10], "big"), i + 10
            if size - start < n:
                break
            payload = bytes(buf[start:start + n])
            i = start + n
            if opcode in (0x1, 0x0):
                payloads.append(payload)
            elif opcode == 0x9:  # ping: pong with its payload
                loadgen.Client.send(self, frame(payload, 0xA))
            elif opcode == 0x8 and not self.ws_closed.done():
                self.ws_closed.set_result(None)
        del buf[:i]
        if payloads or not data:  # no data: expect() asking to look at what came before again
            loadgen.Client._plain(self, b"".join(payloads))

    async def logout(self, timeout: float = 10.0) -> None:
        """``<close/>``, the node's ``<close/>``, then the closing handshake."""
        self.hot = False
        try:
            if not self.closed:
                self.send(WS_CLOSE)
                await asyncio.wait_for(self.expect(b"<close"), timeout)
                loadgen.Client.send(self, CLOSE_FRAME)
                await asyncio.wait_for(asyncio.shield(self.ws_closed), timeout)
        except (ConnectionError, TimeoutError, loadgen.LoginError):
            pass
        finally:
            self.abort()


class ProxiedWsClient(WsClient):
    """One ``ws://`` connection as a TLS-terminating proxy (an Ingress, a load balancer) passes it
    on: no TLS to the node, ``X-Forwarded-Proto: https`` from an address the node trusts."""

    tls = False
    extra_headers = "X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: https\r\n"


CLIENTS: dict[str, type[TcpClient]] = {"tcp": TcpClient, "websocket": WsClient, "ws-proxied": ProxiedWsClient}


# -- the node -----------------------------------------------------------------------------------------------


class WsNode(NodeProc):
    """mobile.py's node process with a ``[websocket]`` listener (wss, the node's certificate)."""

    def __init__(self, tmp: Path, name: str, storage_url: str, cpus: list[int], log_level: str, clients: int,
                 *, proxied: bool = False) -> None:
        super().__init__(tmp, name, storage_url, MODULES, cpus, log_level, clients)
        [self.ws_port] = free_ports(1)
        conf = tomllib.loads(self.config.read_text())
        # wss with the node's certificate, or (proxied) plain ws:// behind a trusted TLS-terminating proxy
        conf["websocket"] = {"host": "127.0.0.1", "port": self.ws_port, "tls": not proxied,
                             "trusted_proxies": ["127.0.0.1"] if proxied else []}
        # BOSH on the same listener (/http-bind): as many sessions as there are accounts; its other limits
        # (hold 1, wait ≤ 60 s, inactivity 60 s) suit a client with a request always held.  The per-client
        # limits that would throttle it — shaper_rate/burst and stanza_rate/burst (200 stanzas/s), connections
        # per IP (BOSH sessions count) — NodeProc raises for every transport.
        conf["bosh"] = {"max_sessions": clients + 1000}
        self.config.write_text(toml_dump(conf))

    def port_of(self, transport: str) -> int:
        return self.port if transport == "tcp" else self.ws_port

    def rss_kb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
        raise BenchmarkError("no VmRSS in /proc/<pid>/status")


def loads_for(node: WsNode, loop: asyncio.AbstractEventLoop) -> dict[str, Load]:
    return {t: Load(loop, node.port_of(t)) for t in CLIENTS}


class PeerNode:
    """What the parts ask of a node (CPU, time waiting for a CPU, idleness), for ejabberd or Prosody:
    their whole process tree (``beam.smp`` under ``ejabberdctl``'s shell)."""

    def __init__(self, server: peers.Server) -> None:
        self.server = server
        self.name = server.kind
        self.last_cpu = 0.0

    def cpu_s(self) -> float:
        if self.server.tree is not None:
            self.last_cpu = self.server.tree.cpu_s()
        return self.last_cpu

    def run_delay_s(self) -> float:
        """Seconds all the server's threads were runnable but waited for a CPU."""
        total = 0
        for proc in self.server.tree.procs() if self.server.tree is not None else []:
            try:
                tasks = os.listdir(f"/proc/{proc.pid}/task")
            except OSError:
                continue
            for tid in tasks:
                try:
                    total += int(Path(f"/proc/{proc.pid}/task/{tid}/schedstat").read_text().split()[1])
                except (OSError, ValueError, IndexError):
                    pass
        return total / 1e9

    def alive(self) -> bool:
        return any(p.poll() is None for p in self.server.procs)

    async def wait_idle(self, timeout: float = 20.0, below: float = 0.05) -> None:
        """Until the node uses under ``below`` of a CPU over 0.3 s (or ``timeout``)."""
        await common.wait_idle(self.alive, self.cpu_s, timeout, below)

    def problems(self) -> list[str]:
        return self.server.warnings()


PEER_NODES: list[PeerNode] = []  # for the run's CPU accounting


class Target:
    """One server under test: a load per transport, what to meter, its accounts and BOSH endpoint."""

    def __init__(self, kind: str, node: Any, loads: dict[str, Load], user: Callable[[int], str], sasl: str,
                 bosh_url: str) -> None:
        self.kind, self.node, self.loads, self.user, self.sasl, self.bosh_url = kind, node, loads, user, sasl, bosh_url

    def password(self, user: str) -> str:
        return self.loads["tcp"].password(user)


class Table(common.Report):
    """The figures of every server, a column each; goals are Meridian's (its column decides the result)."""

    def __init__(self) -> None:
        super().__init__(first="figure", indent="  ", sections_in_width=False)
        self.servers: list[str] = []
        self.keys: list[tuple[str, bool]] = []  # (row, is a section title), in first-seen order
        self.cells: dict[str, dict[str, str]] = {}
        self.goals: dict[str, tuple[str, str]] = {}

    def view(self, server: str) -> View:
        if server not in self.servers:
            self.servers.append(server)
        return View(self, server)

    def print(self) -> None:
        body = [k for k, section in self.keys if not section]
        if not body:
            return
        w0 = max(len(k) for k in body)
        ws = {s: max([len(s)] + [len(self.cells[k].get(s, "")) for k in body]) for s in self.servers}
        wg = max([4] + [len(self.goals.get(k, ("", ""))[0]) for k in body])
        print()
        heads = "  ".join(f"{s:>{ws[s]}}" for s in self.servers)
        print(f"  {self._first:<{w0}}  {heads}  {'goal':<{wg}}  result")
        print(f"  {'-' * w0}  " + "  ".join("-" * ws[s] for s in self.servers) + f"  {'-' * wg}  ------")
        for key, section in self.keys:
            if section:
                print(f"  {key}")
                continue
            goal, result = self.goals.get(key, ("", ""))
            cells = "  ".join(f"{self.cells[key].get(s, ''):>{ws[s]}}" for s in self.servers)
            print(f"  {key:<{w0}}  {cells}  {goal:<{wg}}  {result}".rstrip())
        print()


class View:
    """One server's column of the :class:`Table`, with ``common.Report``'s ``section``/``row``/``failed``."""

    def __init__(self, table: Table, server: str) -> None:
        self.table, self.server = table, server
        # Meridian's failures fail the run; a peer's are printed as notes (its column shows what it did)
        self.failed: list[str] = table.failed if server == "meridian" else []

    def section(self, title: str) -> None:
        if title not in self.table.cells:
            self.table.keys.append((title, True))
            self.table.cells[title] = {}

    def row(self, name: str, value: str, goal: str = "", ok: bool | None = None, missed: str = "") -> None:
        t = self.table
        key = t._indent + name
        if key not in t.cells:
            t.keys.append((key, False))
            t.cells[key] = {}
        t.cells[key][self.server] = value
        t.rows.append((key, value, goal, ""))
        if self.server == "meridian":
            t.goals[key] = (goal, "" if ok is None else ("met" if ok else "MISSED"))
            if ok is False and missed:
                t.missed.append(missed)


async def connect_many(load: Load, transport: str, users: list[str], concurrency: int, timeout: float,
                       resource: str = "b") -> list[TcpClient]:
    sem = asyncio.Semaphore(concurrency)

    async def one(user: str) -> TcpClient:
        async with sem:
            c = CLIENTS[transport](load, user, resource)
            async with asyncio.timeout(timeout):
                await c.login_all()
            c.hot = True
            return c

    return list(await asyncio.gather(*(one(u) for u in users)))


# -- 1. logins ----------------------------------------------------------------------------------------------


async def login_round(load: Load, node: Any, transport: str, users: list[str], duration: float,
                      timeout: float) -> dict[str, Any]:
    lat: list[float] = []
    lat_out: list[float] = []
    failures: collections.Counter[str] = collections.Counter()
    await node.wait_idle(10)
    meter = Meter(node)
    deadline = time.monotonic() + duration

    async def loop(user: str) -> None:
        while time.monotonic() < deadline:
            c = CLIENTS[transport](load, user, "login")
            try:
                t0 = time.perf_counter()
                async with asyncio.timeout(timeout):
                    await c.login_all()
                t1 = time.perf_counter()
                lat.append(t1 - t0)
                await c.logout()
                lat_out.append(time.perf_counter() - t1)
            except Exception as e:  # noqa: BLE001 — counted and reported
                failures[type(e).__name__ + (f": {str(e)[:160]}" if str(e) else "")] += 1
                await asyncio.sleep(0.05)
            finally:
                c.abort()

    await asyncio.gather(*(loop(u) for u in users))
    m = meter.done()
    return {**m, "n": len(lat), "rate": len(lat) / m["wall"], "lat": lat, "lat_out": lat_out, "failures": failures,
            "cpu_per_login": m["node_cpu_s"] / max(len(lat), 1)}


async def part_logins(args: argparse.Namespace, target: Target, report: View) -> None:
    loads, node = target.loads, target.node
    users = [target.user(i) for i in range(args.concurrency)]
    print(f"  1. logins ({target.sasl}): {args.concurrency} at a time, {args.login_duration:g} s per transport and "
          f"round, {args.rounds} round(s), after {args.login_warmup:g} s of each unmeasured", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TRANSPORTS}
    for t in TRANSPORTS:  # unmeasured: ejabberd's first logins are ~10× slower than later ones (PEERS.md)
        if args.login_warmup > 0:
            await login_round(loads[t], node, t, users, args.login_warmup, args.timeout)
    for rnd in range(args.rounds):
        for t in (TRANSPORTS if rnd % 2 == 0 else TRANSPORTS[::-1]):
            res = await login_round(loads[t], node, t, users, args.login_duration, args.timeout)
            runs[t].append(res)
            print(f"    round {rnd + 1}, {t:9}: {res['rate']:6,.0f} logins/s, p50 {pct(res['lat'], 50) * 1000:.1f} ms, "
                  f"node {res['cpu_per_login'] * 1000:.2f} ms CPU/login at {res['node_util'] * 100:.0f} % of its CPU"
                  + (f"; failures {sum(res['failures'].values())}" if res["failures"] else ""), flush=True)
    report.section(f"1. logins/s over TLS (SASL, bind, presence), closed loop, {args.concurrency} "
                   f"connections, each login then logout; median of {args.rounds} round(s)")
    report.row("SASL mechanism", target.sasl)
    for t in TRANSPORTS:
        rs = runs[t]
        lat = [x for r in rs for x in r["lat"]]
        report.row(f"{t}: logins/s", f"{_med(rs, 'rate'):,.0f}" + _each([r["rate"] for r in rs]))
        report.row(f"  {t}: login time p50 / p99 (connect → presence echoed)",
                   f"{pct(lat, 50) * 1000:.1f} / {pct(lat, 99) * 1000:.1f} ms")
        out = [x for r in rs for x in r["lat_out"]]
        report.row(f"  {t}: logout time p50 (end sent → the server's end, closed)", f"{pct(out, 50) * 1000:.1f} ms")
        report.row(f"  {t}: node CPU per login (login + logout) / node CPU use",
                   f"{_med(rs, 'cpu_per_login') * 1000:.2f} ms / {_med(rs, 'node_util') * 100:.0f} %")
    ratio = _med(runs["websocket"], "rate") / max(_med(runs["tcp"], "rate"), 1e-9)
    report.row("websocket / tcp, logins/s", f"{ratio:.2f}", f"≥ {args.goal / 100:.2f}", ratio >= args.goal / 100,
               f"WebSocket logins/s at {ratio * 100:.0f} % of TCP's (goal ≥ {args.goal:g} %)")
    failures: collections.Counter[str] = collections.Counter()
    for rs in runs.values():
        for r in rs:
            failures.update(r["failures"])
    n_fail = sum(failures.values())
    report.row("login failures", f"{n_fail:,}", "0", n_fail == 0)
    if n_fail:
        report.failed.append(f"{n_fail} logins failed: {failures.most_common(3)}")


# -- 2. messages --------------------------------------------------------------------------------------------


async def message_round(load: Load, pairs: list[tuple[TcpClient, TcpClient]], window: int, duration: float,
                        node: Any) -> dict[str, float]:
    for x, y in pairs:
        rest = b"' type='chat'><body>" + BODY + b"</body></message>"
        x.peer_msg = b"<message" + x.NS + b" to='" + y.jid.encode() + rest
        y.peer_msg = b"<message" + y.NS + b" to='" + x.jid.encode() + rest
    await node.wait_idle(20)
    load.reset()
    load.active = True
    meter = Meter(node)
    for x, _ in pairs:
        x.send_stanzas(x.peer_msg, window)
    load.sent += window * len(pairs)
    await asyncio.sleep(duration)
    received = load.received
    m = meter.done()
    load.active = False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and load.received < load.sent:
        await asyncio.sleep(0.02)
    for x, y in pairs:
        x.peer_msg = y.peer_msg = b""
    return {**m, "rate": received / m["wall"], "us_per_msg": m["node_cpu_s"] / max(received, 1) * 1e6,
            "lost": load.sent - load.received, "errors": load.errors}


async def part_messages(args: argparse.Namespace, target: Target, report: View, notes: list[str]) -> None:
    loads, node = target.loads, target.node
    print(f"  2. messages: {args.pairs} pairs per transport, {args.window} in flight per pair, "
          f"{args.msg_duration:g} s rounds, {args.rounds} round(s)", flush=True)
    sets: dict[str, list[tuple[TcpClient, TcpClient]]] = {}
    everyone: list[TcpClient] = []
    first = args.concurrency
    try:
        for k, t in enumerate(TRANSPORTS):
            users = [target.user(first + k * 2 * args.pairs + i) for i in range(2 * args.pairs)]
            clients = await connect_many(loads[t], t, users, 20, args.timeout)
            everyone += clients
            sets[t] = list(zip(clients[0::2], clients[1::2], strict=True))
        runs: dict[str, list[dict[str, float]]] = {t: [] for t in TRANSPORTS}
        for rnd in range(args.rounds):
            for t in (TRANSPORTS if rnd % 2 == 0 else TRANSPORTS[::-1]):
                res = await message_round(loads[t], sets[t], args.window, args.msg_duration, node)
                runs[t].append(res)
                print(f"    round {rnd + 1}, {t:9}: {res['rate']:7,.0f} msg/s, node {res['us_per_msg']:5.0f} µs/msg at "
                      f"{res['node_util'] * 100:.0f} % of its CPU (waiting {res['waited'] * 100:.0f} %), load "
                      f"{res['load_util'] * 100:.0f} %, other work {res['others']:.2f} CPUs", flush=True)
    finally:
        for c in everyone:
            c.abort()
    report.section(f"2. messages/s, closed loop, {args.pairs} pairs per transport, {args.window} in flight per pair; "
                   f"median of {args.rounds} round(s)")
    for t in TRANSPORTS:
        rs = runs[t]
        report.row(f"{t}: messages/s", f"{_med(rs, 'rate'):,.0f}" + _each([r["rate"] for r in rs]))
        report.row(f"  {t}: node CPU per message / node CPU use",
                   f"{_med(rs, 'us_per_msg'):.0f} µs / {_med(rs, 'node_util') * 100:.0f} %")
    ratio = _med(runs["websocket"], "rate") / max(_med(runs["tcp"], "rate"), 1e-9)
    report.row("websocket / tcp, messages/s", f"{ratio:.2f}", f"≥ {args.goal / 100:.2f}", ratio >= args.goal / 100,
               f"WebSocket messages/s at {ratio * 100:.0f} % of TCP's (goal ≥ {args.goal:g} %)")
    cpu = _med(runs["websocket"], "us_per_msg") / max(_med(runs["tcp"], "us_per_msg"), 1e-9)
    report.row("  node CPU per message, websocket / tcp", f"{cpu:.2f}")
    lost = sum(r["lost"] for rs in runs.values() for r in rs)
    errs = sum(r["errors"] for rs in runs.values() for r in rs)
    report.row("messages lost / error replies or stream errors", f"{lost:,} / {errs:,}", "0 / 0",
               lost == 0 and errs == 0)
    if lost or errs:
        report.failed.append(f"{lost} messages lost, {errs} errors in the message rounds")
    if max(r["node_util"] for rs in runs.values() for r in rs) < 0.85:
        notes.append(f"{target.kind}: the server used under 85 % of its CPU in a message round: the clients (or the "
                     "machine) limited the rate there; compare CPU per message")


# -- 3. BOSH -----------------------------------------------------------------------------------------------


class ScramSha256(ScramSha1):
    name, h = "SCRAM-SHA-256", "sha256"


class BenchBosh(BoshClient):
    """``tests/helpers/xmpp_bosh.py``'s client — aiohttp, one ``ClientSession`` (keep-alive connections)
    per BOSH session, a request always held (hold 1, requests 2), what is queued sent in the next
    request — logging in with the server's mechanism, and timing its requests."""

    def __init__(self, url: str, wait: int) -> None:
        super().__init__(url, domain=DOMAIN, hold=1, wait=wait)
        self.times: list[float] | None = None
        self.peer_msg = ""

    async def post(self, data: str | bytes, headers: Any = None) -> tuple[int, bytes]:
        t0 = time.perf_counter()
        got = await super().post(data, headers)
        if self.times is not None:
            self.times.append(time.perf_counter() - t0)
        return got

    async def login_as(self, user: str, password: str, sasl: str, resource: str) -> None:
        """Session creation, SASL, restart, bind, initial presence (echoed)."""
        await self.create()
        self.start()
        features = await self.next_named("features", 30)
        mechanisms = [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]
        if sasl not in mechanisms:
            raise loadgen.LoginError(f"{sasl} not offered over BOSH: {mechanisms}")
        if sasl == "PLAIN":
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
        else:
            scram = (ScramSha256 if sasl == "SCRAM-SHA-256" else ScramSha1)(user, password)
            self.send(f"<auth xmlns='{NS_SASL}' mechanism='{sasl}'>{scram.first()}</auth>")
            challenge = await self.next(timeout=30)
            if local(challenge) != "challenge":
                raise loadgen.LoginError(f"SCRAM refused: {local(challenge)}")
            self.send(f"<response xmlns='{NS_SASL}'>{scram.final(challenge.text or '')}</response>")
        success = await self.next(timeout=30)
        if local(success) != "success":
            raise loadgen.LoginError(f"authentication failed: {local(success)}")
        await self.restart()
        self.send(f"<iq xmlns='jabber:client' type='set' id='bind1'><bind xmlns='{NS_BIND}'>"
                  f"<resource>{resource}</resource></bind></iq>")
        reply = await self.next(lambda el: el.get("id") == "bind1", 30)
        jid = reply.find(f".//{{{NS_BIND}}}jid")
        if jid is None or not jid.text:
            raise loadgen.LoginError("bind failed")
        self.jid = jid.text
        self.send("<presence xmlns='jabber:client'/>")
        await self.next(lambda el: local(el) == "presence", 30)


def _is_message(el: Any) -> bool:
    return local(el) == "message"


async def bosh_round(pairs: list[tuple[BenchBosh, BenchBosh]], window: int, duration: float,
                     node: Any) -> dict[str, Any]:
    """Each side sends its peer ``window`` messages, then answers each one received; ``duration`` s measured."""
    clients = [c for pair in pairs for c in pair]
    await node.wait_idle(20)
    count = {"sent": 0, "received": 0, "errors": 0}
    measuring = [True]
    for c in clients:
        c.times = []
    req0 = sum(c.requests_done for c in clients)
    meter = Meter(node)
    stop = time.perf_counter() + duration

    async def side(me: BenchBosh) -> None:
        for _ in range(window):
            me.send(me.peer_msg)
        count["sent"] += window
        while True:
            el = await me.next(_is_message, timeout=60)
            if el.get("type") == "error":
                count["errors"] += 1
            count["received"] += 1
            if measuring[0]:
                me.send(me.peer_msg)
                count["sent"] += 1

    tasks = [asyncio.ensure_future(side(c)) for c in clients]
    await asyncio.sleep(max(0.0, stop - time.perf_counter()))
    received, requests = count["received"], sum(c.requests_done for c in clients) - req0
    m = meter.done()
    measuring[0] = False
    times = [x for c in clients for x in (c.times or [])]
    for c in clients:
        c.times = None
    deadline = time.monotonic() + 20  # what is in flight arrives
    while time.monotonic() < deadline and count["received"] < count["sent"] and not any(t.done() for t in tasks):
        await asyncio.sleep(0.02)
    ended = sum(1 for c in clients if c.terminated is not None)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {**m, "requests": requests, "rate": requests / m["wall"], "msg_rate": received / m["wall"],
            "req_per_msg": requests / max(received, 1), "us_per_req": m["node_cpu_s"] / max(requests, 1) * 1e6,
            "times": times, "lost": count["sent"] - count["received"], "errors": count["errors"], "ended": ended}


async def part_bosh(args: argparse.Namespace, target: Target, report: View, notes: list[str]) -> None:
    n = args.bosh_sessions
    print(f"  3. BOSH: {n} sessions at {target.bosh_url} ({target.sasl}), pairs with {args.bosh_window} message(s) "
          f"in flight per session, {args.bosh_duration:g} s rounds, {args.rounds} round(s)", flush=True)
    first = args.concurrency + 4 * args.pairs
    clients = [BenchBosh(target.bosh_url, args.bosh_wait) for _ in range(n)]
    sem = asyncio.Semaphore(10)
    login_s: list[float] = []

    async def login(i: int, c: BenchBosh) -> None:
        async with sem:
            user = target.user(first + i)
            t0 = time.perf_counter()
            async with asyncio.timeout(args.timeout):
                await c.login_as(user, target.password(user), target.sasl, "bosh")
            login_s.append(time.perf_counter() - t0)

    runs: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(login(i, c) for i, c in enumerate(clients)))
        took = time.perf_counter() - t0
        pairs = list(zip(clients[0::2], clients[1::2], strict=True))
        body = f"type='chat'><body>{BODY.decode()}</body></message>"
        for x, y in pairs:
            x.peer_msg = f"<message xmlns='jabber:client' to='{y.jid}' {body}"
            y.peer_msg = f"<message xmlns='jabber:client' to='{x.jid}' {body}"
        for rnd in range(args.rounds):
            res = await bosh_round(pairs, args.bosh_window, args.bosh_duration, target.node)
            runs.append(res)
            print(f"    round {rnd + 1}: {res['rate']:6,.0f} requests/s, {res['msg_rate']:6,.0f} msg/s, "
                  f"request p50 {pct(res['times'], 50) * 1000:.1f} ms, node {res['us_per_req']:.0f} µs/request at "
                  f"{res['node_util'] * 100:.0f} % of its CPU (waiting {res['waited'] * 100:.0f} %), load "
                  f"{res['load_util'] * 100:.0f} %, other work {res['others']:.2f} CPUs", flush=True)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    report.section(f"3. BOSH over HTTPS, {n} sessions (hold 1, requests 2, keep-alive), pairs exchanging chat "
                   f"messages, {args.bosh_window} in flight per session, closed loop; median of {args.rounds} round(s)")
    report.row("bosh: logins (create, SASL, restart, bind, presence) p50 / p99",
               f"{pct(login_s, 50) * 1000:.0f} / {pct(login_s, 99) * 1000:.0f} ms")
    report.row("  sessions logged in, 10 at a time, in", f"{took:.1f} s")
    report.row("bosh: HTTP requests/s", f"{_med(runs, 'rate'):,.0f}" + _each([r["rate"] for r in runs]))
    report.row("bosh: messages/s", f"{_med(runs, 'msg_rate'):,.0f}" + _each([r["msg_rate"] for r in runs]))
    report.row("  HTTP requests per message", f"{_med(runs, 'req_per_msg'):.2f}")
    times = [x for r in runs for x in r["times"]]
    report.row("  request time p50 / p99 (held until there is something to answer)",
               f"{pct(times, 50) * 1000:.1f} / {pct(times, 99) * 1000:.1f} ms")
    report.row("  node CPU per request / node CPU use",
               f"{_med(runs, 'us_per_req'):.0f} µs / {_med(runs, 'node_util') * 100:.0f} %")
    report.row("  the clients' CPU use (aiohttp, one CPU)", f"{_med(runs, 'load_util') * 100:.0f} %")
    lost, errs, ended = (sum(r[k] for r in runs) for k in ("lost", "errors", "ended"))
    report.row("bosh: messages lost / error replies / sessions ended", f"{lost:,} / {errs:,} / {ended:,}", "0 / 0 / 0",
               lost == 0 and errs == 0 and ended == 0)
    if lost or errs or ended:
        report.failed.append(f"BOSH: {lost} messages lost, {errs} error replies, {ended} sessions ended")
    if runs and max(r["node_util"] for r in runs) < 0.85:
        notes.append(f"{target.kind}: the server used under 85 % of its CPU in the BOSH rounds: the clients (aiohttp, "
                     "one CPU) or the machine limited the rate; compare CPU per request")


# -- 4. RSS per idle connection -------------------------------------------------------------------------------


async def rss_on(node: WsNode, loads: dict[str, Load], order: tuple[str, str], args: argparse.Namespace,
                 users: list[str]) -> dict[str, float]:
    """KB of RSS per idle connection of each transport on a fresh node, measured in ``order``."""
    clients: list[TcpClient] = []
    try:
        w = args.warmup
        for k, t in enumerate(order):  # unmeasured: the node's caches, pools and first allocations
            clients += await connect_many(loads[t], t, users[k * w:(k + 1) * w], 50, args.timeout)
        await node.wait_idle(20)
        await asyncio.sleep(0.5)
        before = node.rss_kb()
        out: dict[str, float] = {}
        rest = users[2 * w:]
        for k, t in enumerate(order):
            clients += await connect_many(loads[t], t, rest[k * args.idle:(k + 1) * args.idle], 50, args.timeout)
            await node.wait_idle(20)
            await asyncio.sleep(0.5)
            after = node.rss_kb()
            out[t] = (after - before) / args.idle
            before = after
        return out
    finally:
        for c in clients:
            c.abort()


RSS_KINDS = {"tcp": "tcp (STARTTLS)", "websocket": "websocket (wss://, TLS in the node)",
             "ws-proxied": "websocket behind a TLS-terminating proxy (ws://)"}


async def part_rss(args: argparse.Namespace, tmp: Path, sqlite_copy: Any, node_cpus: list[int], report: View,
                   notes: list[str]) -> None:
    print(f"  4. RSS: {args.warmup} warm-up connections of each kind, then {args.idle} idle ones of each, on four "
          "fresh nodes (wss and a proxied ws:// listener, each against TCP in both orders)", flush=True)
    users = [username(i) for i in range(2 * args.warmup + 2 * args.idle)]
    per: dict[str, list[float]] = {t: [] for t in RSS_KINDS}
    for ws_kind in ("websocket", "ws-proxied"):
        for order in (("tcp", ws_kind), (ws_kind, "tcp")):
            name = f"rss-{order[0]}-{order[1]}"
            node = WsNode(tmp, name, sqlite_copy(name), node_cpus, args.log_level, len(users),
                          proxied=ws_kind == "ws-proxied")
            try:
                node.start()
                got = await rss_on(node, loads_for(node, asyncio.get_running_loop()), order, args, users)
            finally:
                await asyncio.to_thread(node.stop)
                notes.extend(f"{node.name} log: {line[:240]}" for line in node.problems()[-3:])
            print(f"    {order[0]} then {order[1]}: " + ", ".join(f"{t} {got[t]:.1f} KB" for t in order), flush=True)
            for t in order:
                per[t].append(got[t])
    report.section(f"4. RSS per idle connection (logged in, presence sent), {args.idle} of each kind after "
                   f"{args.warmup} warm-up ones; mean of both orders")
    for t, label in RSS_KINDS.items():
        v = statistics.mean(per[t])
        goal = t != "tcp"
        report.row(f"{label}: KB per idle connection", f"{v:.1f}" + _each(per[t], ".1f"),
                   f"≤ {args.rss_goal:g} KB" if goal else "", (v <= args.rss_goal) if goal else None,
                   f"RSS per idle {label} connection {v:.1f} KB (goal ≤ {args.rss_goal:g} KB)")


# -- the run --------------------------------------------------------------------------------------------------


async def run_meridian(args: argparse.Namespace, tmp: Path, node_cpus: list[int], table: Table,
                       notes: list[str], n_users: int) -> None:
    report = table.view("meridian")
    template = tmp / "accounts.db"
    made, took = await register(f"sqlite:///{template}", [username(i) for i in range(n_users)])
    print(f"  meridian: {made} accounts registered (4096 PBKDF2 rounds) in {took:.1f} s", flush=True)

    def sqlite_copy(name: str) -> str:
        db = tmp / name / "meridian.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(template, db)
        return f"sqlite:///{db}"

    if args.parts & {"logins", "messages", "bosh"}:
        node = WsNode(tmp, "both", sqlite_copy("both"), node_cpus, args.log_level, n_users)
        try:
            node.start()
            target = Target("meridian", node, loads_for(node, asyncio.get_running_loop()), username, "SCRAM-SHA-256",
                            f"https://127.0.0.1:{node.ws_port}/http-bind")
            await run_parts(args, target, report, notes)
        finally:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(node.stop)
            notes.extend(f"{node.name} log: {line[:240]}" for line in node.problems()[-3:])
    if "rss" in args.parts:
        await part_rss(args, tmp, sqlite_copy, node_cpus, report, notes)


async def run_parts(args: argparse.Namespace, target: Target, report: View, notes: list[str]) -> None:
    if "logins" in args.parts:
        await part_logins(args, target, report)
    if "messages" in args.parts:
        await part_messages(args, target, report, notes)
    if "bosh" in args.parts:
        await part_bosh(args, target, report, notes)


def peer_password(user: str) -> str:
    return peers.password(int(user.removeprefix("user")))


async def run_peer(kind: str, args: argparse.Namespace, tmp: Path, node_cpus: list[int], table: Table,
                   notes: list[str], n_users: int) -> None:
    """ejabberd or Prosody (``benchmarks/peers.py``, with its HTTPS listener for WebSocket and BOSH): the
    same logins, messages and BOSH parts; no RSS part (``compare.py`` measures theirs over TCP)."""
    report = table.view(kind)
    server: peers.Server = (peers.Ejabberd if kind == "ejabberd" else peers.Prosody)(tmp / "peers", node_cpus,
                                                                                   web=True)
    node = PeerNode(server)
    PEER_NODES.append(node)
    try:
        await asyncio.to_thread(server.start)
        took = await asyncio.to_thread(server.prepare, n_users)
        print(f"  {kind}: started, {n_users} accounts in {took:.1f} s; WebSocket and BOSH over HTTPS on port "
              f"{server.web_port}", flush=True)  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        loads = {"tcp": Load(loop, server.endpoints[0][1], sasl=args.peer_sasl, password=peer_password),
                 "websocket": Load(loop, server.web_port, sasl=args.peer_sasl, password=peer_password,  # type: ignore[attr-defined]
                                   ws_path=server.ws_path)}  # type: ignore[attr-defined]
        target = Target(kind, node, loads, lambda i: peers.user(i + 1), args.peer_sasl,
                        f"https://127.0.0.1:{server.web_port}{server.bosh_path}")  # type: ignore[attr-defined]
        await run_parts(args, target, report, notes)
    except (peers.BenchError, BenchmarkError, loadgen.LoginError, OSError, TimeoutError, ConnectionError) as e:
        print(f"  {kind} FAILED: {type(e).__name__}: {str(e)[:600]}", flush=True)
        notes.append(f"{kind} FAILED: {type(e).__name__}: {str(e)[:300]}")
    finally:
        node.cpu_s()
        await asyncio.to_thread(server.stop)
        notes.extend(f"{kind}: {f}" for f in report.failed)
        notes.extend(f"{kind} log: {line[:240]}" for line in node.problems()[-3:])


def available(kind: str) -> str | None:
    """Why ``kind`` cannot run here, or None (as muc.py: a missing peer is skipped, with the reason)."""
    if kind == "ejabberd":
        if not (shutil.which("ejabberdctl") or Path("/usr/sbin/ejabberdctl").exists()):
            return "ejabberdctl not found (apt-get install -y ejabberd)"
        if os.geteuid() != 0:
            return "Debian's ejabberdctl runs only as root"
    if kind == "prosody" and not (shutil.which("prosody") or Path("/usr/bin/prosody").exists()):
        return "prosody not found (apt-get install -y prosody)"
    return None


async def run_async(args: argparse.Namespace, tmp: Path, node_cpus: list[int], load_cpus: list[int],
                    table: Table, notes: list[str]) -> None:
    all_cpus = sorted(os.sched_getaffinity(0))
    n_users = max(args.concurrency + 4 * args.pairs + args.bosh_sessions,
                  2 * args.warmup + 2 * args.idle if "rss" in args.parts else 0)
    try:
        if load_cpus:
            os.sched_setaffinity(0, load_cpus)
        for kind in args.servers:
            if kind == "meridian":
                await run_meridian(args, tmp, node_cpus, table, notes, n_users)
            elif args.parts - {"rss"}:
                await run_peer(kind, args, tmp, node_cpus, table, notes, args.concurrency + 4 * args.pairs
                               + args.bosh_sessions)
    finally:
        if load_cpus:
            os.sched_setaffinity(0, all_cpus)


def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="meridian-websocket-"))
    if os.geteuid() == 0:
        tmp.chmod(0o755)  # the peers run as their own users (ejabberd, nobody) in a directory under it
    node_cpus, load_cpus = common.split_cpus(args.pin)
    loadgen.raise_nofile(8 * (args.pairs + args.idle + args.warmup) + 4096)
    print(f"Meridian WebSocket and BOSH benchmark{' (quick)' if args.quick else ''}: {os.cpu_count()} CPUs, "
          f"{platform.platform()}, Python {platform.python_version()}, load average {load_average()}")
    print("  servers: " + ", ".join(args.servers) + "; " + (
        f"server pinned to CPU {node_cpus}, the clients (this process) to CPU {load_cpus}" if node_cpus
        else "no CPU pinning"), flush=True)
    table = Table()
    notes: list[str] = []
    return common.measured_run(lambda: run_async(args, tmp, node_cpus, load_cpus, table, notes),
                               table, notes, tmp, keep=args.keep,
                               servers_cpu=lambda: (sum(n.last_cpu for n in NodeProc.started)
                                                    + sum(n.last_cpu for n in PEER_NODES)),
                               who="the servers and the clients", others="other work")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (< 60 s per server): 1.5 s per login round, 10 pairs for 2 s, 10 BOSH sessions "
                             "for 2 s, 1 round, 100 idle connections of each kind after 50 warm-up ones")
    parser.add_argument("--parts", default="logins,messages,bosh,rss",
                        help="which parts run (logins,messages,bosh,rss; rss is Meridian's only)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="meridian, ejabberd, prosody (default all; a peer not installed is skipped)")
    parser.add_argument("--rounds", type=int, help="rounds of parts 1 and 2, transports alternated (3; quick 1)")
    parser.add_argument("--goal", type=float, default=80.0, help="%% of TCP's logins/s and messages/s (80)")
    g = parser.add_argument_group("1. logins")
    g.add_argument("--concurrency", type=int, default=8, help="connections logging in at once (8)")
    g.add_argument("--login-duration", type=float, help="seconds per transport and round (5; quick 1.5)")
    g.add_argument("--login-warmup", type=float, help="unmeasured seconds of logins per transport first (2; quick 0.5)")
    g.add_argument("--peer-sasl", default="PLAIN", choices=["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256"],
                   help="the peers' mechanism (PLAIN: their passwords are stored plain, so no PBKDF2 on the server, "
                        "as Meridian's SCRAM-SHA-256 on stored keys)")
    g = parser.add_argument_group("2. messages")
    g.add_argument("--pairs", type=int, help="pairs of users per transport (50; quick 10)")
    g.add_argument("--window", type=int, default=4, help="messages in flight per pair (4)")
    g.add_argument("--msg-duration", type=float, help="seconds per round and transport (5; quick 2)")
    g = parser.add_argument_group("3. BOSH")
    g.add_argument("--bosh-sessions", type=int, help="BOSH sessions, in pairs (50; quick 10)")
    g.add_argument("--bosh-window", type=int, default=1, help="messages in flight per session (1)")
    g.add_argument("--bosh-duration", type=float, help="seconds per round (5; quick 2)")
    g.add_argument("--bosh-wait", type=int, default=30, help="the sessions' wait, seconds (30)")
    g = parser.add_argument_group("4. RSS")
    g.add_argument("--idle", type=int, help="idle connections of each kind measured (2000; quick 100)")
    g.add_argument("--warmup", type=int, help="unmeasured connections of each kind first (500; quick 50)")
    g.add_argument("--rss-goal", type=float, default=40.0, help="KB per idle WebSocket connection (40)")
    g = parser.add_argument_group("common")
    g.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                   help="node on CPU 0, the clients on the others (on)")
    g.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default="WARNING")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds one login may take (60)")
    g.add_argument("--keep", action="store_true", help="keep the temp dir (configs, node logs, SQLite files)")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, full, small in (("rounds", 3, 1), ("login_duration", 5.0, 1.5), ("login_warmup", 2.0, 0.5),
                              ("pairs", 50, 10), ("msg_duration", 5.0, 2.0), ("idle", 2000, 100), ("warmup", 500, 50),
                              ("bosh_sessions", 50, 10), ("bosh_duration", 5.0, 2.0)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not args.parts or not args.parts <= {"logins", "messages", "bosh", "rss"}:
        parser.error("--parts: logins, messages, bosh, rss")
    if min(args.concurrency, args.pairs, args.window, args.rounds, args.idle, args.bosh_window) < 1 or args.warmup < 0:
        parser.error("--concurrency, --pairs, --window, --rounds, --idle and --bosh-window ≥ 1, --warmup ≥ 0")
    if args.bosh_sessions < 2 or args.bosh_sessions % 2:
        parser.error("--bosh-sessions: an even number ≥ 2")
    servers = [k.strip() for k in args.servers.split(",") if k.strip()]
    if not servers or not set(servers) <= set(SERVERS):
        parser.error("--servers: meridian, ejabberd, prosody")
    args.servers = []
    for kind in servers:
        why = available(kind)
        if why is None:
            args.servers.append(kind)
        else:
            print(f"  {kind}: not run — {why}")
    if not args.servers:
        parser.error("no server to run")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
