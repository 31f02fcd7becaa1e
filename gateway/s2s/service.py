"""The S2S adapters: outgoing streams (one per local/remote domain pair, reused, queued while
being set up, idle-closed, retried with backoff, then bounced), the incoming listener, and the
dialback verify requests between them.  All protocol decisions are the cores' (:mod:`.stream`);
here are sockets, TLS upgrades, timers and the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from cluster_node.core.auth_throttle import Ban
from cluster_node.core.limits import Shaper
from cluster_node.core.log_throttle import OncePer
from cluster_node.core.router import Router
from cluster_node.xmpp import errors
from cluster_node.xmpp.errors import StanzaError
from cluster_node.xmpp.fragment import parse_stanza
from cluster_node.xmpp.jid import InvalidJid, Jid
from cluster_node.xmpp.parser import TOO_DEEP, TOO_LARGE
from cluster_node.xmpp.stanza import Stanza, serialize

from ..settings import S2SSettings
from .resolver import ResolveError, S2SResolver, Target
from .stream import (
    TOO_MANY_DIALBACKS,
    Authenticated,
    AuthFailed,
    Closed,
    IncomingStream,
    OutgoingStream,
    S2SEvent,
    StanzaIn,
    StartTls,
    VerifyNeeded,
    VerifyResult,
    cert_matches,
)
from .tls import cert_names, client_context, peer_names, server_context

__all__ = ["S2SService", "dialback_secret"]

log = logging.getLogger("meridian.s2s")

READ_SIZE = 65536
WRITE_BUFFER_MAX = 4 * 1024 * 1024  # bytes unsent to a peer before its stanzas bounce
# The refusal a stream we closed was for, by its error's text (the sans-IO core knows no settings).
_CLOSED_FOR = {TOO_LARGE: "s2s.max_stanza_size", TOO_DEEP: "s2s.max_depth",
               TOO_MANY_DIALBACKS: "s2s.pending_dialback"}


def _refusal(ev: Closed) -> str | None:
    """The limit named in the admin API's refusals that made us close this stream, if one did."""
    return None if ev.by_peer else _CLOSED_FOR.get(ev.text or "")
MAX_RATED_PEERS = 10_000  # peer domains whose stanza rate is remembered


def dialback_secret(settings: S2SSettings, cluster_secret: str) -> str:
    """Every gateway of a region must make the same keys: the cluster secret is shared already."""
    return settings.dialback_secret or hashlib.sha256(b"meridian-dialback:" + cluster_secret.encode()).hexdigest()


class _Unreachable(Exception):
    """A connection attempt failed (retried); ``timeout`` picks the bounce condition."""

    def __init__(self, text: str, timeout: bool = False) -> None:
        super().__init__(text)
        self.timeout = timeout


class _Refused(Exception):
    """The peer refused us (authentication, TLS policy): not retried."""


@dataclass
class _Queued:
    stanza: Stanza
    data: bytes


class Outgoing:
    """Our stream from ``local`` to ``remote`` and what waits for it."""

    def __init__(self, service: S2SService, local: str, remote: str) -> None:
        self.s = service
        self.local, self.remote = local, remote
        self.queue: deque[_Queued] = deque()
        self.verifies: dict[tuple[str, str, str], asyncio.Future[bool]] = {}
        self.core: OutgoingStream | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.created = time.monotonic()
        self.last_used = self.created
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        # Dialback verify requests not answered yet: (originating, receiving, stream id) -> the
        # request.  Each connection attempt asks them again: one asked on an attempt that stalled
        # and was given up is retried with the stream, not answered "invalid".
        self._asked: dict[tuple[str, str, str], tuple[str, str, str, str]] = {}

    @property
    def ready(self) -> bool:
        return self.core is not None and self.core.ready and self.writer is not None

    def info(self) -> dict[str, Any]:
        return {"direction": "out", "peer": self.remote, "localDomain": self.local,
                "auth": self.core.auth_method if self.core is not None else None,
                "tls": bool(self.core and self.core.tls), "age": round(time.monotonic() - self.created, 1),
                "queued": len(self.queue), "ready": self.ready}

    def send(self, stanza: Stanza) -> None:
        self.last_used = time.monotonic()
        data = _server_bytes(stanza)
        if self.ready:
            assert self.core is not None and self.writer is not None
            if self.writer.transport.get_write_buffer_size() > WRITE_BUFFER_MAX:  # the peer does not read
                self.s.refused("s2s.write_buffer")
                self.s.bounce(stanza, errors.StanzaResourceConstraint(f"{self.remote} is not reading"))
                return
            self.core.send(data)
            self._flush()
            return
        if len(self.queue) >= self.s.settings.queue_max:
            self.s.refused("s2s.queue_max")
            self.s.bounce(stanza, errors.StanzaResourceConstraint(f"too many stanzas waiting for {self.remote}"))
            return
        self.queue.append(_Queued(stanza, data))

    def verify(self, receiving: str, originating: str, stream_id: str, key: str) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.verifies[(originating, receiving, stream_id)] = future
        self._asked[(originating, receiving, stream_id)] = (receiving, originating, stream_id, key)
        if self.core is not None:
            self.core.verify(receiving, originating, stream_id, key)
            self._flush()
        return future

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def _flush(self) -> None:
        if self.core is not None and self.writer is not None:
            data = self.core.data_to_send()
            if data:
                self.writer.write(data)

    async def _run(self) -> None:
        s = self.s.settings
        reader: asyncio.StreamReader | None = None
        try:
            async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(s.retries), reraise=True,
                    wait=wait_exponential_jitter(initial=s.retry_backoff, max=30, jitter=s.retry_backoff),
                    retry=retry_if_exception_type(_Unreachable)):
                with attempt:
                    reader = await self._attempt()
            self._ready()
            assert reader is not None
            await self._serve(reader)
        except (_Unreachable, _Refused, RetryError) as e:
            timeout = isinstance(e, _Unreachable) and e.timeout
            log.warning("s2s %s -> %s failed: %s; bouncing %d stanza(s)", self.local, self.remote, e, len(self.queue))
            self._give_up(errors.RemoteServerTimeout(str(e)) if timeout else errors.RemoteServerNotFound(str(e)))
        except Exception:
            log.exception("s2s %s -> %s: unexpected error", self.local, self.remote)
            self._give_up(errors.RemoteServerNotFound(f"{self.remote}: internal error"))
        finally:
            self.closed = True
            self.s.forget(self)
            if self.writer is not None:
                self.writer.close()
            for future in self.verifies.values():
                if not future.done():
                    future.set_result(False)
            if self.queue:  # arrived while the stream was closing: a new stream takes them
                pending, self.queue = list(self.queue), deque()
                for q in pending:
                    if self.s.stopping:
                        self.s.bounce(q.stanza, errors.RemoteServerTimeout("the gateway is shutting down"))
                    else:
                        self.s.send_from(self.local, self.remote, q.stanza)

    async def _attempt(self) -> asyncio.StreamReader:
        """One connection attempt within ``auth_timeout``; a handshake that times out (a peer
        that accepts and then stalls, a slow dialback) is retried like a refused connection."""
        timeout = self.s.settings.auth_timeout
        try:
            return await asyncio.wait_for(self._connect(), timeout)
        except TimeoutError:  # _try closes what the attempt left open on the next one
            raise _Unreachable(f"{self.remote}: not authenticated within {timeout} s", True) from None

    def _give_up(self, error: StanzaError) -> None:
        pending, self.queue = list(self.queue), deque()
        for q in pending:
            self.s.bounce(q.stanza, error)

    def _ready(self) -> None:
        assert self.core is not None
        log.info("s2s %s -> %s up (%s, tls=%s)", self.local, self.remote, self.core.auth_method, self.core.tls)
        while self.queue:
            self.core.send(self.queue.popleft().data)
        self._flush()

    async def _connect(self) -> asyncio.StreamReader:
        """One attempt: each resolved address in turn until one authenticates us."""
        try:
            targets = await self.s.resolver.resolve(self.remote)
        except ResolveError as e:
            raise _Unreachable(str(e)) from None
        last: Exception = _Unreachable(f"{self.remote}: no address")
        for target in targets:
            try:
                return await self._try(target)
            except (_Unreachable, OSError, ssl.SSLError) as e:
                log.info("s2s %s -> %s via %s:%d: %s", self.local, self.remote, target.host, target.port, e)
                last = e if isinstance(e, _Unreachable) else _Unreachable(f"{target.host}:{target.port}: {e}")
                if self.writer is not None:
                    self.writer.close()
                    self.writer = None
        raise last

    async def _try(self, target: Target) -> asyncio.StreamReader:
        s = self.s.settings
        tls = self.s.client_tls(self.local, target.direct_tls)
        if self.writer is not None:  # left by an attempt that timed out
            self.writer.close()
            self.writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                target.host, target.port, ssl=tls if target.direct_tls else None,
                server_hostname=self.remote if target.direct_tls else None,
                limit=READ_SIZE * 4), s.connect_timeout)
        except TimeoutError:
            raise _Unreachable(f"{target.host}:{target.port}: connect timeout", True) from None
        self.writer = writer
        core = OutgoingStream(self.local, self.remote, self.s.secret, require_tls=s.require_tls,
                              external=self.s.can_external(self.local), use_dialback=s.dialback,
                              max_stanza_size=s.max_stanza_size)
        core.tls = target.direct_tls
        self.core = core
        for request in self._asked.values():  # asked before this attempt: ask (again) on it
            core.verify(*request)
        core.start()
        self._flush()
        authenticated = False
        while not authenticated:
            data = await reader.read(READ_SIZE)
            for ev in core.feed(data):  # every event of the batch: a verify answer may follow
                if isinstance(ev, StartTls):
                    self._flush()
                    await writer.start_tls(tls, server_hostname=self.remote, ssl_handshake_timeout=s.connect_timeout)
                    core.tls_started()
                elif isinstance(ev, Authenticated):
                    authenticated = True
                elif isinstance(ev, AuthFailed):
                    self._flush()
                    if ev.temporary:  # it could not verify us yet: another attempt, after a while
                        raise _Unreachable(f"{self.remote} could not authenticate us yet: {ev.reason}", True)
                    raise _Refused(f"{self.remote} refused us: {ev.reason}")
                elif isinstance(ev, VerifyResult):
                    self._verified(ev)
                elif isinstance(ev, Closed):
                    self._flush()
                    if ev.condition in (None, "connection-lost"):
                        raise _Unreachable(f"{self.remote} closed the stream during set-up")
                    raise _Refused(f"stream closed during set-up: {ev.condition}"
                                   f"{' (by the peer)' if ev.by_peer else ''}")
            self._flush()
        return reader

    def _verified(self, ev: VerifyResult) -> None:
        # The answer's from/to are the authoritative's view: from = originating, to = receiving.
        self._asked.pop((ev.originating, ev.receiving, ev.stream_id), None)
        future = self.verifies.pop((ev.originating, ev.receiving, ev.stream_id), None)
        if future is not None and not future.done():
            future.set_result(ev.valid)

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        """Authenticated: read what the peer says (verify answers, its close) until idle or closed."""
        assert self.core is not None
        idle = self.s.settings.idle_timeout
        while True:
            wait = self.last_used + idle - time.monotonic()
            if wait <= 0 and not self.verifies:
                log.info("s2s %s -> %s idle for %.0f s: closing", self.local, self.remote, idle)
                self.core.close()
                self._flush()
                return
            try:
                data = await asyncio.wait_for(reader.read(READ_SIZE), max(wait, 1.0))
            except TimeoutError:
                continue
            except (ConnectionError, ssl.SSLError) as e:  # the peer went (a broken pipe, a reset)
                log.info("s2s %s -> %s: %s", self.local, self.remote, e)
                data = b""
            for ev in self.core.feed(data):
                if isinstance(ev, VerifyResult):
                    self._verified(ev)
                elif isinstance(ev, Closed):
                    self._flush()
                    if (limit := _refusal(ev)) is not None:
                        self.s.refused(limit)
                    if ev.condition not in (None, "connection-lost") or not ev.by_peer:
                        log.warning("s2s %s -> %s closed: %s", self.local, self.remote, ev.condition)
                    return
            self._flush()


class Incoming:
    """One stream a peer opened to us."""

    def __init__(self, service: S2SService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 direct_tls: bool = False) -> None:
        self.s = service
        self.direct_tls = direct_tls
        self.reader, self.writer = reader, writer
        settings = service.settings
        self.core = IncomingStream(service.domains, service.secret, lambda: secrets.token_hex(8),
                                   require_tls=settings.require_tls, use_dialback=settings.dialback,
                                   max_stanza_size=settings.max_stanza_size)
        self.created = time.monotonic()
        peer = writer.get_extra_info("peername")
        self.address = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.ip = peer[0] if peer else "?"
        self.tasks: set[asyncio.Task[None]] = set()
        # A peer over its byte budget is read more slowly (TCP pushes back on it); over its stanza
        # budget, its stanzas are answered with <policy-violation/> instead of being routed.
        self.shaper = Shaper(settings.shaper_rate, settings.shaper_burst, float("inf"))
        self.refused = 0

    def info(self) -> dict[str, Any]:
        peers = sorted({o for o, _ in self.core.pairs})
        return {"direction": "in", "peer": ",".join(peers) or self.core.peer or self.address,
                "localDomain": self.core.local, "auth": ",".join(sorted(set(self.core.methods.values()))) or None,
                "tls": self.core.tls, "age": round(time.monotonic() - self.created, 1), "queued": 0,
                "ready": bool(self.core.pairs), "refused": self.refused}

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def serve(self) -> None:
        settings = self.s.settings
        refusal = self.s.auth_refusal(self.ip)
        if refusal is not None:  # banned after authentication failures: refused before anything else
            self.core.fail(errors.PolicyViolation(refusal))
            if self.s.once.allow((self.ip, "banned"), time.monotonic()):
                held = self.s.once.held()
                log.warning("s2s in from %s: refused, %s%s", self.address, refusal,
                            f" ({held} more since the last such line)" if held else "")
        if self.direct_tls:  # XEP-0368: TLS from the first byte, the stream header comes inside it
            self.core.tls_started(peer_names(self.writer.get_extra_info("ssl_object")))
        try:
            while not self.core.closed:
                timeout = settings.auth_timeout if not self.core.pairs else None
                try:
                    data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
                except TimeoutError:
                    self._closed(self.core.fail(errors.ConnectionTimeout("not authenticated in time")))
                    break
                except (ConnectionError, ssl.SSLError) as e:
                    data = b""
                    log.info("s2s in from %s: %s", self.address, e)
                for ev in self.core.feed(data):
                    await self._event(ev)
                self._flush()
                delay = self.shaper.consume(len(data), time.monotonic())
                if delay > 0:
                    self.s.refused("s2s.shaper_rate")
                    await asyncio.sleep(delay)
            self._flush()
            with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(self.writer.drain(), 2)
        finally:
            for task in self.tasks:
                task.cancel()
            self.writer.close()
            self.s.incoming.discard(self)

    async def _event(self, ev: S2SEvent) -> None:
        if isinstance(ev, StartTls):
            self._flush()
            try:
                await self.writer.start_tls(self.s.server_tls, ssl_handshake_timeout=self.s.settings.connect_timeout)
            except (ssl.SSLError, ConnectionError, OSError) as e:
                log.warning("s2s in from %s: TLS handshake failed: %s", self.address, e)
                self.core.closed = True
                return
            self.core.tls_started(peer_names(self.writer.get_extra_info("ssl_object")))
        elif isinstance(ev, VerifyNeeded):
            task = asyncio.get_running_loop().create_task(self._verify(ev))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif isinstance(ev, StanzaIn):
            if self.s.peer_rate(ev.stanza).consume(1, time.monotonic()) > 0:
                self._over_rate(ev.stanza)
            else:
                self.s.received(ev.stanza)
        elif isinstance(ev, Authenticated):
            log.info("s2s in: %s authenticated to %s by %s (from %s%s)", ev.remote, ev.local, ev.method,
                     self.address, ", direct TLS" if self.direct_tls else "")
        elif isinstance(ev, AuthFailed):
            log.warning("s2s in from %s: %s", self.address, ev.reason)
            await self._auth_failed()
        elif isinstance(ev, Closed):
            self._closed([ev])

    def _over_rate(self, stanza: Stanza) -> None:
        """A stanza over the peer's stanza rate: an error to its sender, a warning once a minute."""
        self.refused += 1
        self.s.refused("s2s.stanza_rate")
        if self.s.once.allow((self.core.peer or self.ip, "rate"), time.monotonic()):  # once a minute per peer
            held = self.s.once.held()
            log.warning("s2s in from %s (%s): over the stanza rate (%s/s); refusing its stanzas%s",
                        self.address, self.core.peer or "?", self.s.settings.stanza_rate,
                        f" ({held} more since the last such line)" if held else "")
        if stanza.type != "error":
            self.s.bounce(stanza, errors.StanzaPolicyViolation("too many stanzas from your server: slow down"))

    def _closed(self, events: list[S2SEvent]) -> None:
        for ev in events:
            if isinstance(ev, Closed) and (limit := _refusal(ev)) is not None:
                self.s.refused(limit)
            if isinstance(ev, Closed) and ev.condition not in (None, "connection-lost"):
                log.warning("s2s in from %s (%s): stream closed with %s", self.address,
                            self.core.peer or "?", ev.condition)

    async def _auth_failed(self) -> None:
        """Count a refused authentication against the peer's address (the region's throttle, as
        for clients): wait the throttle's delay before answering, or end the stream if the address
        is now banned."""
        delay, ban = self.s.auth_failed(self.ip)
        if ban is not None:
            log.warning("s2s in from %s: address banned after %s", self.address, ban.reason)
            self._closed(self.core.fail(errors.PolicyViolation("too many authentication failures")))
            self._flush()
        elif delay > 0:
            await asyncio.sleep(delay)

    async def _verify(self, ev: VerifyNeeded) -> None:
        valid = await self.s.verify(ev.receiving, ev.originating, ev.stream_id, ev.key)
        if valid is None:
            log.warning("s2s in from %s: no answer from %s's authoritative server in time; %s -> %s "
                        "told to try again (remote-server-timeout)", self.address, ev.originating,
                        ev.originating, ev.receiving)
        elif not valid:
            log.warning("s2s in from %s: dialback key for %s -> %s did not verify", self.address,
                        ev.originating, ev.receiving)
            await self._auth_failed()
            if self.core.closed:
                return
        else:
            log.info("s2s in: %s verified by dialback for %s%s", ev.originating, ev.receiving,
                     " (direct TLS)" if self.direct_tls else "")
        self.core.dialback_result(ev.originating, ev.receiving, valid)
        self._flush()


class S2SService:
    """The region's S2S edge on this gateway."""

    def __init__(self, settings: S2SSettings, domains: list[str], secret: str, router: Router,
                 default_cert: tuple[Path, Path], submit: Callable[[Stanza], None] | None = None, *,
                 auth_failed: Callable[[str], tuple[float, Ban | None]] = lambda address: (0.0, None),
                 auth_refusal: Callable[[str], str | None] = lambda address: None,
                 refused: Callable[[str], None] = lambda limit: None) -> None:
        self.settings = settings
        # The region's authentication throttle (``auth_throttle``): failed dialback keys and SASL
        # EXTERNAL attempts count against the peer's address like a client's wrong passwords.
        self.auth_failed = auth_failed
        self.auth_refusal = auth_refusal
        self.refused = refused  # counts a refusal by the setting whose limit was hit (Services.refused)
        self.once = OncePer(60.0)  # log lines about one peer address: at most one a minute of each kind
        # The stanza rate of each peer domain, over all its incoming streams (a peer opening more
        # streams gets no more rate); the least recently used forgotten past MAX_RATED_PEERS.
        self._rates: OrderedDict[str, Shaper] = OrderedDict()
        self.domains = list(domains)
        self.secret = secret
        self.router = router
        # How a received stanza is routed: in order per (from, to) when the gateway gives a queue.
        self.submit = submit or (lambda stanza: router.spawn(router.route(stanza)))
        self.resolver = S2SResolver(nameservers=settings.nameservers, port=settings.dns_port, static=settings.hosts)
        self.outgoing: dict[tuple[str, str], Outgoing] = {}
        self.incoming: set[Incoming] = set()
        self.server: asyncio.Server | None = None
        self.tls_server: asyncio.Server | None = None
        self.stopping = False
        self.certs: Mapping[str, tuple[Path, Path]] = {
            d: (c.cert_file, c.key_file) for d, c in settings.domain_certs.items()}
        default = (settings.cert_file, settings.key_file) if settings.cert_file and settings.key_file else default_cert
        self.default_cert = default
        self._names = {d: cert_names(self.cert_for(d)[0]) for d in self.domains}
        self._client_tls: dict[tuple[str, bool], ssl.SSLContext] = {}
        self.server_tls = server_context(self.certs, default, settings.ca_file, settings.verify)
        if not settings.verify:
            log.warning("s2s: certificate verification is OFF (s2s.verify = false): peers are not authenticated "
                        "by TLS; use this for test setups only")

    def peer_rate(self, stanza: Stanza) -> Shaper:
        """The stanza-rate bucket of the domain ``stanza`` comes from (authenticated on its stream)."""
        try:
            domain = Jid.parse(stanza.from_ or "").domain  # checked by the stream: one it authenticated
        except InvalidJid:
            domain = ""
        shaper = self._rates.get(domain)
        if shaper is None:
            shaper = self._rates[domain] = Shaper(self.settings.stanza_rate, self.settings.stanza_burst, float("inf"))
            while len(self._rates) > MAX_RATED_PEERS:
                self._rates.popitem(last=False)
        else:
            self._rates.move_to_end(domain)
        return shaper

    def cert_for(self, domain: str) -> tuple[Path, Path]:
        return self.certs.get(domain, self.default_cert)

    def client_tls(self, local: str, direct: bool = False) -> ssl.SSLContext:
        ctx = self._client_tls.get((local, direct))
        if ctx is None:
            ctx = self._client_tls[(local, direct)] = client_context(
                self.cert_for(local), self.settings.ca_file, self.settings.verify, direct=direct)
        return ctx

    def can_external(self, local: str) -> bool:
        """XEP-0178: only when verification is on and our certificate names our domain."""
        return self.settings.sasl_external and self.settings.verify and cert_matches(self._names.get(local, []), local)

    @property
    def address(self) -> tuple[str, int] | None:
        if self.server is None or not self.server.sockets:
            return None
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> None:
        if self.settings.port:
            self.server = await asyncio.start_server(self._accept, self.settings.host, self.settings.port,
                                                     limit=READ_SIZE * 4)
            log.info("s2s listening on %s:%d for %s", self.settings.host, self.settings.port, ", ".join(self.domains))
        if self.settings.tls_port:
            self.tls_server = await asyncio.start_server(
                lambda r, w: self._accept(r, w, direct_tls=True), self.settings.host, self.settings.tls_port,
                limit=READ_SIZE * 4, ssl=self.server_tls, ssl_handshake_timeout=self.settings.connect_timeout)
            log.info("s2s direct TLS on %s:%d", self.settings.host, self.settings.tls_port)

    async def stop(self) -> None:
        self.stopping = True
        for server in (self.server, self.tls_server):
            if server is not None:
                server.close()
        tasks = []
        for out in list(self.outgoing.values()):
            if out.core is not None and out.writer is not None:
                out.core.close()
                out._flush()
            if out.task is not None:
                out.task.cancel()
                tasks.append(out.task)
        for inc in list(self.incoming):
            inc.core.close()
            inc._flush()
            inc.writer.close()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for server in (self.server, self.tls_server):
            if server is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      direct_tls: bool = False) -> None:
        inc = Incoming(self, reader, writer, direct_tls)
        self.incoming.add(inc)
        try:
            await inc.serve()
        except Exception:
            log.exception("s2s in from %s: unexpected error", inc.address)

    # -- routing ----------------------------------------------------------------------------------

    async def remote(self, stanza: Stanza, to: Jid) -> None:
        """The router's hook for a domain nobody in our regions serves."""
        sender = Jid.parse(stanza.from_ or "")
        if sender.domain not in self.domains:
            raise errors.RemoteServerNotFound(f"no S2S route from {sender.domain}")
        self.send_from(sender.domain, to.domain, stanza)

    def send_from(self, local: str, remote: str, stanza: Stanza) -> None:
        self._stream(local, remote).send(stanza)

    def _stream(self, local: str, remote: str) -> Outgoing:
        if self.stopping:
            raise errors.RemoteServerTimeout("the gateway is shutting down")
        out = self.outgoing.get((local, remote))
        if out is None or out.closed:
            out = self.outgoing[(local, remote)] = Outgoing(self, local, remote)
            out.start()
        return out

    def forget(self, out: Outgoing) -> None:
        if self.outgoing.get((out.local, out.remote)) is out:
            del self.outgoing[(out.local, out.remote)]

    def bounce(self, stanza: Stanza, error: StanzaError) -> None:
        self.router.send_error(stanza, error)

    def received(self, stanza: Stanza) -> None:
        """A stanza from an authenticated peer: into the router as a jabber:client stanza."""
        try:
            local = parse_stanza(stanza.to_bytes())
        except ValueError as e:
            log.warning("s2s: dropping a stanza that does not re-parse: %s", e)
            return
        self.submit(local)

    async def verify(self, receiving: str, originating: str, stream_id: str, key: str) -> bool | None:
        """Ask ``originating``'s authoritative server about a key (XEP-0220 §2.1.2): its verdict,
        or None when it gave none in time (the stream to it retries its connection meanwhile)."""
        if receiving not in self.domains or self.stopping:
            return False
        future = self._stream(receiving, originating).verify(receiving, originating, stream_id, key)
        try:
            return await asyncio.wait_for(future, self.settings.auth_timeout)
        except TimeoutError:
            return None

    def connections(self) -> list[dict[str, Any]]:
        return [*(o.info() for o in self.outgoing.values()), *(i.info() for i in self.incoming)]


def _server_bytes(stanza: Stanza) -> bytes:
    """The stanza as it goes on a jabber:server stream: its bytes, unless they name jabber:client."""
    data = stanza.to_bytes()
    if b"jabber:client" in data:
        return serialize(stanza.element, stanza.namespace or "jabber:client")
    return data

