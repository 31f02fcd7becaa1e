"""A lean XMPP load generator: many client connections on one asyncio loop, raw TLS sockets.

slixmpp builds a full XML tree per stanza and an object graph per client: far too heavy for
10,000 connections.  Here a client is one small :class:`asyncio.Protocol` over a plain TCP
socket, with TLS done by hand (``ssl.SSLObject`` over two ``MemoryBIO``s: no asyncio SSL
transport, no 256 KiB read buffer per connection), and the login is a fixed script:

    STARTTLS (port) or direct TLS (XEP-0368, tls_port) → SASL PLAIN or SCRAM-SHA-1/-256
    → stream restart → bind (resource ``lg``) → initial presence, done when the node echoes it.

Each step waits for a marker in the bytes received (``</stream:features>``, ``<proceed``,
``<success``, ``</iq>``, ``<presence``); no XML parsing anywhere.  Once logged in, received
bytes are only scanned for ``<body>…</body>``: a message's body is its send time
(``time.monotonic_ns()``, CLOCK_MONOTONIC, shared by every process of the machine), so the
latency is taken when the receiving socket returns it.

Messages go from a sender to a fixed peer in the same process: ``paced`` offers a fixed rate
for a time (open loop: what the latency target is about), ``closed_loop`` keeps ``window``
messages in flight per sender (each delivery triggers the next one: the node's capacity).

:func:`worker_main` runs one :class:`Generator` in its own process and takes commands over a
``multiprocessing`` pipe (``benchmarks/node_load.py`` starts several).  Nothing here imports
the project: it speaks to the node over sockets only.

Loopback has about 28,000 ephemeral ports per source address (32768–60999): beyond that, give
``WorkerSpec.local_addrs`` (e.g. 127.0.0.2, 127.0.0.3, …, all loopback on Linux) and each client
binds its socket to one of them in turn (``benchmarks/idle_scale.py`` spreads its clients so).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import hmac
import os
import resource
import ssl
import time
import traceback
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["Client", "Generator", "WorkerSpec", "worker_main", "raise_nofile"]

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
STARTTLS = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
BIND = (b"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        b"<resource>%s</resource></bind></iq>")
PRESENCE = b"<presence/>"
MSG_END = b"</body></message>"
STREAM_ERROR = b"<stream:error"
STREAM_END = b"</stream:stream>"
READ_SIZE = 65536


class LoginError(Exception):
    pass


def raise_nofile(want: int) -> int:
    """Raise RLIMIT_NOFILE to ``want`` (the hard limit too when allowed: root); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        return want
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def client_tls_context() -> ssl.SSLContext:
    # The node's certificate is self-signed and made on its first start: no verification (the
    # benchmark measures the server; verifying a chain would only cost the generator).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client(asyncio.Protocol):
    """One XMPP client connection (a login script, then a byte scanner)."""

    __slots__ = ("gen", "username", "password", "jid", "transport", "sslobj", "inc", "out", "buf", "want",
                 "waiter", "hs_waiter", "hot", "rest", "msg_prefix", "feeder", "closed", "login_s",
                 "local_addr")

    def __init__(self, gen: Generator, username: str, password: str) -> None:
        self.gen = gen
        self.username = username
        self.password = password
        self.jid = f"{username}@{gen.domain}/{gen.resource}"
        self.transport: asyncio.Transport | None = None
        self.sslobj: ssl.SSLObject | None = None
        self.inc: ssl.MemoryBIO | None = None
        self.out: ssl.MemoryBIO | None = None
        self.buf = bytearray()
        self.want: tuple[bytes, ...] = ()
        self.waiter: asyncio.Future[bytes] | None = None
        self.hs_waiter: asyncio.Future[None] | None = None
        self.hot = False  # logged in: only scan for messages
        self.rest = b""  # an incomplete <body> at the end of the last read
        self.msg_prefix = b""  # "<message to='peer' type='chat'><body>" when this client sends
        self.feeder: Client | None = None  # closed loop: who sends to this client
        self.closed = False
        self.login_s = 0.0
        self.local_addr: tuple[str, int] | None = None  # (source address, 0) to bind to; None: any

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.hot:
            self.gen.lost += 1
        err = ConnectionError(f"connection lost: {exc or 'closed by the node'}")
        for fut in (self.waiter, self.hs_waiter):
            if fut is not None and not fut.done():
                fut.set_exception(err)

    def data_received(self, data: bytes) -> None:
        sslobj = self.sslobj
        if sslobj is None:
            self._plain(data)
            return
        assert self.inc is not None
        self.inc.write(data)
        if self.hs_waiter is not None and not self.hs_waiter.done():
            if not self._handshake():
                return
        read = sslobj.read
        while True:
            try:
                chunk = read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                break
            except ssl.SSLError as e:
                self._fail(LoginError(f"TLS error: {e}"))
                return
            if not chunk:
                break
            self._plain(chunk)

    def eof_received(self) -> bool | None:
        return None

    # -- TLS by hand --------------------------------------------------------------------------

    def start_tls(self) -> asyncio.Future[None]:
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.sslobj = self.gen.ctx.wrap_bio(self.inc, self.out, server_side=False, server_hostname=self.gen.domain)
        self.hs_waiter = self.gen.loop.create_future()
        self._handshake()
        return self.hs_waiter

    def _handshake(self) -> bool:
        assert self.sslobj is not None and self.hs_waiter is not None
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_tls()
            return False
        except (ssl.SSLError, OSError) as e:
            self._flush_tls()
            if not self.hs_waiter.done():
                self.hs_waiter.set_exception(LoginError(f"TLS handshake failed: {e}"))
            return False
        self._flush_tls()
        if not self.hs_waiter.done():
            self.hs_waiter.set_result(None)
        return True

    def _flush_tls(self) -> None:
        assert self.out is not None and self.transport is not None
        if self.out.pending:
            self.transport.write(self.out.read())

    def send(self, data: bytes) -> None:
        t = self.transport
        if t is None or self.closed:
            return
        sslobj = self.sslobj
        if sslobj is None:
            t.write(data)
        else:
            sslobj.write(data)
            t.write(self.out.read())  # type: ignore[union-attr]

    def send_message(self) -> None:
        """One chat message to this client's peer; the body is the send time (ns, CLOCK_MONOTONIC)."""
        self.send(self.msg_prefix + str(time.monotonic_ns()).encode() + MSG_END)
        self.gen.sent += 1

    # -- received bytes -------------------------------------------------------------------------

    def _plain(self, data: bytes) -> None:
        if self.hot:
            self.gen.on_data(self, data)
            return
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            if STREAM_ERROR in self.buf or STREAM_END in self.buf:
                self._fail(LoginError(_snippet(self.buf)))
            return
        for marker in self.want:
            if marker in self.buf:
                got = bytes(self.buf)
                self.buf.clear()
                waiter.set_result(got)
                return
        if STREAM_ERROR in self.buf or STREAM_END in self.buf:
            self._fail(LoginError(_snippet(self.buf)))

    def _fail(self, exc: Exception) -> None:
        for fut in (self.waiter, self.hs_waiter):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                return
        if self.transport is not None:
            self.transport.abort()

    def expect(self, *markers: bytes) -> asyncio.Future[bytes]:
        """A future for the received bytes (since the last marker) once one of ``markers`` is in them."""
        self.want = markers
        self.waiter = fut = self.gen.loop.create_future()
        if self.closed:
            fut.set_exception(ConnectionError("connection closed"))
        elif self.buf:
            self._plain(b"")
        return fut

    # -- the login script --------------------------------------------------------------------------

    async def login(self) -> None:
        g = self.gen
        t0 = time.perf_counter()
        await g.loop.create_connection(lambda: self, g.host, g.port, local_addr=self.local_addr)
        if g.direct_tls:
            await self.start_tls()
        else:
            self.send(g.header)
            await self.expect(b"</stream:features>")
            self.send(STARTTLS)
            got = await self.expect(b"<proceed", b"<failure")
            if b"<proceed" not in got:
                raise LoginError(f"STARTTLS refused: {_snippet(got)}")
            await self.start_tls()
        self.send(g.header)
        await self.expect(b"</stream:features>")
        if g.sasl == "PLAIN":
            token = base64.b64encode(f"\0{self.username}\0{self.password}".encode())
            self.send(b"<auth xmlns='" + NS_SASL.encode() + b"' mechanism='PLAIN'>" + token + b"</auth>")
        else:
            await self._scram()
        got = await self.expect(b"<success", b"<failure")
        if b"<success" not in got:
            raise LoginError(f"authentication failed: {_snippet(got)}")
        self.send(g.header)
        await self.expect(b"</stream:features>")
        self.send(BIND % g.resource.encode())
        got = await self.expect(b"</iq>")
        if b"type='result'" not in got and b'type="result"' not in got:
            raise LoginError(f"bind failed: {_snippet(got)}")
        self.send(PRESENCE)
        await self.expect(b"<presence")  # the node sends our own presence back: presence handled
        self.buf = bytearray()
        self.hot = True
        self.login_s = time.perf_counter() - t0

    async def _scram(self) -> None:
        g = self.gen
        hash_name = "sha1" if g.sasl == "SCRAM-SHA-1" else "sha256"
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={self.username},r={nonce}"
        self.send(b"<auth xmlns='" + NS_SASL.encode() + b"' mechanism='" + g.sasl.encode() + b"'>"
                  + base64.b64encode(f"n,,{first_bare}".encode()) + b"</auth>")
        got = await self.expect(b"</challenge>", b"<failure")
        if b"<challenge" not in got:
            raise LoginError(f"SCRAM refused: {_snippet(got)}")
        server_first = base64.b64decode(got[got.index(b">", got.index(b"<challenge")) + 1:
                                            got.index(b"</challenge>")]).decode()
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        salt, iterations = base64.b64decode(attrs["s"]), int(attrs["i"])
        key = (self.password, salt, iterations, hash_name)
        salted = g.salted_cache.get(key)
        if salted is None:
            salted = g.salted_cache[key] = hashlib.pbkdf2_hmac(hash_name, self.password.encode(), salt, iterations)
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{first_bare},{server_first},{without_proof}".encode()
        client_key = hmac.new(salted, b"Client Key", hash_name).digest()
        stored_key = hashlib.new(hash_name, client_key).digest()
        signature = hmac.new(stored_key, auth_message, hash_name).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        final = f"{without_proof},p={base64.b64encode(proof).decode()}".encode()
        self.send(b"<response xmlns='" + NS_SASL.encode() + b"'>" + base64.b64encode(final) + b"</response>")


def _snippet(data: bytes | bytearray) -> str:
    return bytes(data[-300:]).decode("utf-8", "replace")


@dataclass
class WorkerSpec:
    host: str
    port: int
    direct_tls: bool
    domain: str
    sasl: str  # PLAIN | SCRAM-SHA-1 | SCRAM-SHA-256
    users: list[tuple[str, str]]  # (username, password)
    login_concurrency: int = 100
    login_timeout: float = 120.0
    resource: str = "lg"
    cpus: list[int] = field(default_factory=list)  # CPU affinity ([] = any)
    nofile: int = 0
    # source addresses the clients bind to, in turn ([]: the kernel's choice): each gives its own
    # ~28,000 loopback ephemeral ports, so more clients than one address allows can connect
    local_addrs: list[str] = field(default_factory=list)


class Generator:
    """The clients of one process and their counters."""

    def __init__(self, spec: WorkerSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.host, self.port, self.domain = spec.host, spec.port, spec.domain
        self.direct_tls, self.sasl, self.resource = spec.direct_tls, spec.sasl, spec.resource
        self.header = (f"<?xml version='1.0'?><stream:stream to='{spec.domain}' version='1.0' "
                       f"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>").encode()
        self.ctx = client_tls_context()
        self.salted_cache: dict[tuple[str, bytes, int, str], bytes] = {}
        self.clients = self._new_clients()
        self.online: list[Client] = []
        self.senders: list[Client] = []
        self.closed_loop = False
        self.reset()

    def _new_clients(self) -> list[Client]:
        """One client per user, bound to the spec's source addresses in turn (if any)."""
        clients = [Client(self, u, p) for u, p in self.spec.users]
        binds = [(a, 0) for a in self.spec.local_addrs]
        if binds:
            for k, c in enumerate(clients):
                c.local_addr = binds[k % len(binds)]
        return clients

    def reset(self) -> None:
        self.sent = 0
        self.received = 0
        self.errors = 0  # error stanzas and stream errors seen after login
        self.lost = 0  # connections lost after login
        self.bad = 0  # bodies that were not a timestamp
        self.lat = array("q")  # delivery latency of each message, ns
        self.sent_at = array("q")  # its send time (CLOCK_MONOTONIC ns), same order
        self.last_recv_ns = 0

    # -- hot path ------------------------------------------------------------------------------

    def on_data(self, c: Client, data: bytes) -> None:
        if c.rest:
            data = c.rest + data
            c.rest = b""
        now = time.monotonic_ns()
        find = data.find
        append = self.lat.append
        at = self.sent_at.append
        i = n = 0
        while True:
            j = find(b"<body>", i)
            if j < 0:
                break
            k = find(b"</body>", j)
            if k < 0:
                c.rest = data[j:]
                break
            try:
                ts = int(data[j + 6:k])
                append(now - ts)
                at(ts)
                n += 1
            except ValueError:
                self.bad += 1
            i = k + 7
        if not c.rest:
            t = data.rfind(b"<", max(i, len(data) - 5))
            if t >= 0 and not data.startswith(b"</", t) and data.find(b">", t) < 0:
                c.rest = data[t:]  # '<bod' cut by the end of this read
        if b"error" in data:
            self.errors += data.count(b"type='error'") + data.count(b'type="error"') + data.count(STREAM_ERROR)
        if n:
            self.received += n
            self.last_recv_ns = now
            if self.closed_loop and c.feeder is not None:
                f = c.feeder
                for _ in range(n):
                    f.send_message()

    # -- phases ------------------------------------------------------------------------------

    async def login_all(self) -> dict[str, Any]:
        sem = asyncio.Semaphore(self.spec.login_concurrency)
        failures: dict[str, int] = {}
        gc_was = gc.isenabled()
        gc.disable()  # thousands of long-lived objects appear: no collector passes meanwhile

        async def one(c: Client) -> None:
            async with sem:
                try:
                    await asyncio.wait_for(c.login(), self.spec.login_timeout)
                    self.online.append(c)
                except Exception as e:  # noqa: BLE001 — counted and reported, never fatal
                    reason = type(e).__name__ + (f": {str(e)[:120]}" if str(e) else "")
                    failures[reason] = failures.get(reason, 0) + 1
                    if c.transport is not None:
                        c.transport.abort()

        t0 = time.monotonic()
        await asyncio.gather(*(one(c) for c in self.clients))
        t1 = time.monotonic()
        if gc_was:
            gc.enable()
        gc.collect()
        gc.freeze()
        return {"t0": t0, "t1": t1, "ok": len(self.online), "failed": sum(failures.values()),
                "failures": failures, "login_s": array("d", [c.login_s for c in self.online]).tobytes()}

    def pair(self, senders: int) -> int:
        """The first ``senders`` online clients each send to the client half the list away."""
        on = self.online
        n = len(on)
        self.senders = on[:min(senders, n)] if n >= 2 else []
        for k, c in enumerate(self.senders):
            peer = on[(k + n // 2) % n] if n > 1 else c
            if peer is c:
                peer = on[(k + 1) % n]
            c.msg_prefix = f"<message to='{peer.jid}' type='chat'><body>".encode()
            peer.feeder = c
        return len(self.senders)

    async def paced(self, rate: float, duration: float, drain: float, tick: float = 0.001,
                    hold_back: bool = False) -> dict[str, Any]:
        """Offer ``rate`` messages/s, spread over the senders, for ``duration`` seconds: what is due is
        sent every ``tick`` seconds (1 ms: about one message per sender and tick at these rates).

        ``hold_back``: a sender the server pushes back (its socket's send buffer full, so bytes
        wait in the transport) does not write; its due message is counted ``held`` instead, as a
        client would wait before sending more.  Without it every due message is written, and
        what the kernel cannot take piles up in this process."""
        self.reset()
        self.closed_loop = False
        senders, nsend = self.senders, len(self.senders)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic()
        end = start + duration
        idx = 0
        max_lag = 0
        held = 0
        while nsend:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - start) * rate) - self.sent - held
            if due > 0:
                max_lag = max(max_lag, due)
                for _ in range(due):
                    c = senders[idx]
                    t = c.transport
                    if hold_back and t is not None and t.get_write_buffer_size():
                        held += 1
                    else:
                        c.send_message()
                    idx += 1
                    if idx == nsend:
                        idx = 0
            await asyncio.sleep(tick)
        t_end = time.monotonic()
        return await self._finish(start, t_end, drain, ru0, {"max_batch": max_lag, "held": held})

    async def closed(self, window: int, duration: float, drain: float) -> dict[str, Any]:
        """Each sender keeps ``window`` messages in flight: every delivery triggers the next one."""
        self.reset()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic()
        self.closed_loop = True
        for _ in range(window):
            for c in self.senders:
                c.send_message()
        await asyncio.sleep(duration)
        self.closed_loop = False
        t_end = time.monotonic()
        in_window = self.received
        res = await self._finish(start, t_end, drain, ru0, {})
        res["received_in_window"] = in_window
        return res

    async def _finish(self, start: float, t_end: float, drain: float, ru0: Any, extra: dict[str, Any]
                      ) -> dict[str, Any]:
        deadline = time.monotonic() + drain
        while self.received + self.bad < self.sent and time.monotonic() < deadline and len(self.online) > self.lost:
            await asyncio.sleep(0.01)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        return {"start": start, "end": t_end, "sent": self.sent, "received": self.received,
                "last_recv": self.last_recv_ns / 1e9 if self.last_recv_ns else 0.0,
                "errors": self.errors, "lost": self.lost, "bad": self.bad, "lat": self.lat.tobytes(),
                "sent_at": self.sent_at.tobytes(),
                "cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime), **extra}

    async def logout(self) -> dict[str, Any]:
        """Close every connection and start over with fresh clients (a second login of the same
        users; SCRAM salted passwords stay cached, as a real client keeps them)."""
        await self.close_all()
        self.clients = self._new_clients()
        self.online = []
        self.senders = []
        return {"ok": True}

    async def close_all(self) -> None:
        for c in self.online:
            if not c.closed:
                c.send(STREAM_END)
        await asyncio.sleep(0.2)
        for c in self.clients:
            if c.transport is not None and not c.closed:
                c.transport.abort()


# -- worker process ------------------------------------------------------------------------------


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a load generator process: answer commands from ``conn`` until 'stop'."""
    if spec.cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, spec.cpus)
    if spec.nofile:
        raise_nofile(spec.nofile)
    try:
        asyncio.run(_serve(spec, conn))
    except Exception:  # noqa: BLE001 — reported to the parent
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))


async def _serve(spec: WorkerSpec, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    gen = Generator(spec, loop)
    ready = asyncio.Event()
    loop.add_reader(conn.fileno(), ready.set)
    handlers: dict[str, Callable[..., Any]] = {
        "login": gen.login_all,
        "pair": lambda senders: _value(gen.pair(senders)),
        "paced": gen.paced,
        "closed": gen.closed,
        "logout": gen.logout,
        # connections logged in and still open (a process that only holds them runs no phase
        # that would report what it lost)
        "held": lambda: _value({"online": len(gen.online), "open": sum(not c.closed for c in gen.online)}),
    }
    conn.send(("ready", {"pid": os.getpid()}))
    try:
        while True:
            await ready.wait()
            ready.clear()
            while conn.poll():
                cmd, kwargs = conn.recv()
                if cmd == "stop":
                    await gen.close_all()
                    conn.send(("stopped", {}))
                    return
                result = await handlers[cmd](**kwargs)
                conn.send((cmd, result))
    finally:
        loop.remove_reader(conn.fileno())


async def _value(v: Any) -> Any:
    return v
