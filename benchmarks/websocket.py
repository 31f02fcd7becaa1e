"""XMPP over WebSocket (RFC 7395) against TCP on the same node: logins/s, messages/s, RSS per idle connection.

Three measures, each printed as rows of one table; the node serves both transports at once (c2s with
STARTTLS, and ``[websocket]`` over TLS: ``wss://``), so the only difference is the transport:

1. **Logins/s** — ``--concurrency`` connections (8) each log in again and again for ``--login-duration``
   s (closed loop), TCP and WebSocket in turn over ``--rounds`` rounds (the order swapped each round):

   * ``tcp``: TCP, stream header, STARTTLS, TLS, header, SASL1 SCRAM-SHA-256, header, bind, presence;
   * ``websocket``: TCP, TLS, HTTP upgrade (``Sec-WebSocket-Protocol: xmpp``), ``<open/>``, SASL1
     SCRAM-SHA-256, ``<open/>``, bind, presence.

   A login counts when the node echoes the initial presence; then the client ends the stream
   (``</stream:stream>``, or ``<close/>`` and the WebSocket closing handshake) and waits for the
   node's end before the next login.  Goal: WebSocket ≥ ``--goal`` % (80) of TCP's logins/s.
2. **Messages/s** — ``--pairs`` pairs of users (50) per transport, all logged in at once; one pair's
   users send chat messages to each other (full JID), ``--window`` in flight per pair, each message
   received answered with one (closed loop).  Rounds of ``--msg-duration`` s alternate the transports
   (the other set stays connected, idle).  Goal: WebSocket ≥ ``--goal`` % of TCP's messages/s.
3. **RSS per idle connection** — four fresh nodes; on each, ``--warmup`` unmeasured connections of
   both kinds first, then ``--idle`` logged-in connections (presence sent) of one kind and as many of
   the other, VmRSS (``/proc/<pid>/status``) read once the node is idle after each set; TCP first on
   one node, WebSocket first on the other (whichever comes second costs more: the mean of both
   orders cancels that) — for ``wss://`` (TLS in the node, as TCP), and for ``ws://`` behind a
   TLS-terminating proxy (the node trusts 127.0.0.1, the client sends ``X-Forwarded-Proto: https``:
   an Ingress or load balancer in front of the nodes).  Goal: ≤ ``--rss-goal`` KB (40) per idle
   WebSocket connection.

The clients are ``benchmarks/loadgen.py``'s ``Client`` (TLS by hand over ``MemoryBIO``, byte markers, no
XML parsing); the WebSocket one adds the HTTP upgrade and RFC 6455 framing by hand (each stanza in a
text frame of its own, masked with a zero key — the node unmasks every frame all the same — and the
node's pings answered).  The node runs pinned to CPU 0 with its default modules but carbons and MAM
(off, as in ``compare.py``: the transport is what is measured), the clients (this process) on the
other CPUs.

    .venv/bin/python benchmarks/websocket.py            # everything: ~2 minutes here
    .venv/bin/python benchmarks/websocket.py --quick    # smoke run, < 40 s
    .venv/bin/python benchmarks/websocket.py --parts rss --idle 5000

Exit status 0 when every goal is met, 1 when one is missed (each printed as ``GOAL MISSED:``), 2
when the run failed (a node did not start, logins failed, messages were lost).
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
from common import BenchmarkError, pct  # noqa: E402
from machine import free_ports, load_average  # noqa: E402
from mobile import Meter, NodeProc, Report, _each, _med, register  # noqa: E402

from tests.helpers.node import toml_dump  # noqa: E402

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

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int) -> None:
        self.loop = loop
        self.port = port
        self.domain = DOMAIN
        self.resource = "b"
        self.sasl = "SCRAM-SHA-256"
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

    def __init__(self, load: Load, user: str, resource: str = "b") -> None:
        super().__init__(load, user, PASSWORD)  # type: ignore[arg-type]
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
        await self._scram()
        got = await self.expect(b"<success", b"<failure")
        if b"<success" not in got:
            raise loadgen.LoginError(f"authentication failed: {loadgen._snippet(got)}")
        self.restart()
        await self.expect(b"</stream:features>")
        self.send(loadgen.BIND % self.resource.encode())
        got = await self.expect(b"</iq>")
        if b"type='result'" not in got and b'type="result"' not in got:
            raise loadgen.LoginError(f"bind failed: {loadgen._snippet(got)}")
        self.send(loadgen.PRESENCE)
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

    def __init__(self, load: Load, user: str, resource: str = "b", path: str = "/ws") -> None:
        super().__init__(load, user, resource)
        self.path = path
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
            if not head.startswith(b"HTTP/1.1 101") or b"sec-websocket-protocol: xmpp" not in head.lower():
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


async def login_round(load: Load, node: WsNode, transport: str, users: list[str], duration: float,
                      timeout: float) -> dict[str, Any]:
    lat: list[float] = []
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
                lat.append(time.perf_counter() - t0)
                await c.logout()
            except Exception as e:  # noqa: BLE001 — counted and reported
                failures[type(e).__name__ + (f": {str(e)[:160]}" if str(e) else "")] += 1
                await asyncio.sleep(0.05)
            finally:
                c.abort()

    await asyncio.gather(*(loop(u) for u in users))
    m = meter.done()
    return {**m, "n": len(lat), "rate": len(lat) / m["wall"], "lat": lat, "failures": failures,
            "cpu_per_login": m["node_cpu_s"] / max(len(lat), 1)}


async def part_logins(args: argparse.Namespace, loads: dict[str, Load], node: WsNode, report: Report) -> None:
    users = [username(i) for i in range(args.concurrency)]
    print(f"  1. logins: {args.concurrency} at a time, {args.login_duration:g} s per transport and round, "
          f"{args.rounds} round(s)", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TRANSPORTS}
    for rnd in range(args.rounds):
        for t in (TRANSPORTS if rnd % 2 == 0 else TRANSPORTS[::-1]):
            res = await login_round(loads[t], node, t, users, args.login_duration, args.timeout)
            runs[t].append(res)
            print(f"    round {rnd + 1}, {t:9}: {res['rate']:6,.0f} logins/s, p50 {pct(res['lat'], 50) * 1000:.1f} ms, "
                  f"node {res['cpu_per_login'] * 1000:.2f} ms CPU/login at {res['node_util'] * 100:.0f} % of its CPU"
                  + (f"; failures {sum(res['failures'].values())}" if res["failures"] else ""), flush=True)
    report.section(f"1. logins/s over TLS (SCRAM-SHA-256, bind, presence), closed loop, {args.concurrency} "
                   f"connections, each login then logout; median of {args.rounds} round(s)")
    for t in TRANSPORTS:
        rs = runs[t]
        lat = [x for r in rs for x in r["lat"]]
        report.row(f"{t}: logins/s", f"{_med(rs, 'rate'):,.0f}" + _each([r["rate"] for r in rs]))
        report.row("  login time p50 / p99 (connect → presence echoed)",
                   f"{pct(lat, 50) * 1000:.1f} / {pct(lat, 99) * 1000:.1f} ms")
        report.row("  node CPU per login (login + logout) / node CPU use",
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
                        node: WsNode) -> dict[str, float]:
    for x, y in pairs:
        x.peer_msg = b"<message to='" + y.jid.encode() + b"' type='chat'><body>" + BODY + b"</body></message>"
        y.peer_msg = b"<message to='" + x.jid.encode() + b"' type='chat'><body>" + BODY + b"</body></message>"
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


async def part_messages(args: argparse.Namespace, loads: dict[str, Load], node: WsNode, report: Report,
                        notes: list[str]) -> None:
    print(f"  2. messages: {args.pairs} pairs per transport, {args.window} in flight per pair, "
          f"{args.msg_duration:g} s rounds, {args.rounds} round(s)", flush=True)
    sets: dict[str, list[tuple[TcpClient, TcpClient]]] = {}
    everyone: list[TcpClient] = []
    first = args.concurrency
    try:
        for k, t in enumerate(TRANSPORTS):
            users = [username(first + k * 2 * args.pairs + i) for i in range(2 * args.pairs)]
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
        report.row("  node CPU per message / node CPU use",
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
        notes.append("the node used under 85 % of its CPU in a message round: the clients (or the machine) limited "
                     "the rate there; compare CPU per message")


# -- 3. RSS per idle connection -------------------------------------------------------------------------------


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


async def part_rss(args: argparse.Namespace, tmp: Path, sqlite_copy: Any, node_cpus: list[int], report: Report,
                   notes: list[str]) -> None:
    print(f"  3. RSS: {args.warmup} warm-up connections of each kind, then {args.idle} idle ones of each, on four "
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
    report.section(f"3. RSS per idle connection (logged in, presence sent), {args.idle} of each kind after "
                   f"{args.warmup} warm-up ones; mean of both orders")
    for t, label in RSS_KINDS.items():
        v = statistics.mean(per[t])
        goal = t != "tcp"
        report.row(f"{label}: KB per idle connection", f"{v:.1f}" + _each(per[t], ".1f"),
                   f"≤ {args.rss_goal:g} KB" if goal else "", (v <= args.rss_goal) if goal else None,
                   f"RSS per idle {label} connection {v:.1f} KB (goal ≤ {args.rss_goal:g} KB)")


# -- the run --------------------------------------------------------------------------------------------------


async def run_async(args: argparse.Namespace, tmp: Path, node_cpus: list[int], load_cpus: list[int],
                    report: Report, notes: list[str]) -> None:
    all_cpus = sorted(os.sched_getaffinity(0))
    template = tmp / "accounts.db"
    n_users = max(args.concurrency + 4 * args.pairs, 2 * args.warmup + 2 * args.idle if "rss" in args.parts else 0)
    made, took = await register(f"sqlite:///{template}", [username(i) for i in range(n_users)])
    print(f"  setup: {made} accounts registered (4096 PBKDF2 rounds) in {took:.1f} s", flush=True)

    def sqlite_copy(name: str) -> str:
        db = tmp / name / "meridian.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(template, db)
        return f"sqlite:///{db}"

    try:
        if load_cpus:
            os.sched_setaffinity(0, load_cpus)
        if "logins" in args.parts or "messages" in args.parts:
            node = WsNode(tmp, "both", sqlite_copy("both"), node_cpus, args.log_level, n_users)
            try:
                node.start()
                loads = loads_for(node, asyncio.get_running_loop())
                if "logins" in args.parts:
                    await part_logins(args, loads, node, report)
                if "messages" in args.parts:
                    await part_messages(args, loads, node, report, notes)
            finally:
                await asyncio.sleep(0.3)
                await asyncio.to_thread(node.stop)
                notes.extend(f"{node.name} log: {line[:240]}" for line in node.problems()[-3:])
        if "rss" in args.parts:
            await part_rss(args, tmp, sqlite_copy, node_cpus, report, notes)
    finally:
        if load_cpus:
            os.sched_setaffinity(0, all_cpus)


def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="meridian-websocket-"))
    node_cpus, load_cpus = common.split_cpus(args.pin)
    loadgen.raise_nofile(8 * (args.pairs + args.idle + args.warmup) + 4096)
    print(f"Meridian WebSocket benchmark{' (quick)' if args.quick else ''}: {os.cpu_count()} CPUs, "
          f"{platform.platform()}, Python {platform.python_version()}, load average {load_average()}")
    print("  " + (f"node pinned to CPU {node_cpus}, the clients (this process) to CPU {load_cpus}" if node_cpus
                  else "no CPU pinning"), flush=True)
    report = Report()
    notes: list[str] = []
    return common.measured_run(lambda: run_async(args, tmp, node_cpus, load_cpus, report, notes),
                               report, notes, tmp, keep=args.keep,
                               servers_cpu=lambda: sum(n.last_cpu for n in NodeProc.started),
                               who="the nodes and the clients", others="other work")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (< 40 s): 1.5 s per login round, 10 pairs for 2 s, 1 round, 100 idle "
                             "connections of each kind after 50 warm-up ones")
    parser.add_argument("--parts", default="logins,messages,rss", help="which parts run (logins,messages,rss)")
    parser.add_argument("--rounds", type=int, help="rounds of parts 1 and 2, transports alternated (3; quick 1)")
    parser.add_argument("--goal", type=float, default=80.0, help="%% of TCP's logins/s and messages/s (80)")
    g = parser.add_argument_group("1. logins")
    g.add_argument("--concurrency", type=int, default=8, help="connections logging in at once (8)")
    g.add_argument("--login-duration", type=float, help="seconds per transport and round (5; quick 1.5)")
    g = parser.add_argument_group("2. messages")
    g.add_argument("--pairs", type=int, help="pairs of users per transport (50; quick 10)")
    g.add_argument("--window", type=int, default=4, help="messages in flight per pair (4)")
    g.add_argument("--msg-duration", type=float, help="seconds per round and transport (5; quick 2)")
    g = parser.add_argument_group("3. RSS")
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
    for name, full, small in (("rounds", 3, 1), ("login_duration", 5.0, 1.5), ("pairs", 50, 10),
                              ("msg_duration", 5.0, 2.0), ("idle", 2000, 100), ("warmup", 500, 50)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not args.parts or not args.parts <= {"logins", "messages", "rss"}:
        parser.error("--parts: logins, messages, rss")
    if min(args.concurrency, args.pairs, args.window, args.rounds, args.idle) < 1 or args.warmup < 0:
        parser.error("--concurrency, --pairs, --window, --rounds and --idle ≥ 1, --warmup ≥ 0")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
