"""The c2s listeners: an asyncio protocol per connection that feeds bytes to :class:`C2SStream`.

This adapter owns only I/O: the transport, the TLS upgrade, timers, the shaper's pauses, and a
per-connection queue so one client's stanzas are handled in order while its socket keeps being
read (up to a high-water mark, then reading pauses).  What modules add reaches the stream through
hooks: features per stage, elements that are not stanzas, each stanza received and written.

A SASL2 authentication (XEP-0388) is finished here, in this order, once its mechanism accepted
the client: ``sasl2_authenticated`` (modules may still refuse — a replayed XEP-0484 counter —,
issue a FAST token, or resume a XEP-0198 session), then, unless a session was resumed, the Bind 2
request (XEP-0386) through the session manager exactly like an RFC 6120 bind (conflicts, the
replication wait), then ``bind2_inline`` for the ``<bound/>`` children, and ``<success/>``.  A
token mechanism's keys come from ``sasl2_token``, as an account's SCRAM keys come from storage.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import ssl
import time
from collections import deque
from contextvars import ContextVar
from typing import Any, Protocol, cast

from ..core import eager
from ..core.hooks import Hook, Hooks
from ..core.limits import ConnectionLimiter, Shaper, parser_limit
from ..core.log_throttle import OncePer
from ..core.session_manager import SessionManager, is_probe
from ..core.sessions import SessionRecord
from ..settings import NodeSettings
from ..xmpp import errors, ns
from ..xmpp.c2s import (
    Authenticated,
    AuthFailed,
    BindRequested,
    C2SConfig,
    C2SEvent,
    C2SStream,
    CredentialsNeeded,
    ElementIn,
    RegistrationIq,
    Sasl2Authenticated,
    Sasl2Request,
    SessionEstablished,
    StanzaIn,
    StartTls,
    State,
    StreamEnded,
    TokenNeeded,
)
from ..xmpp.errors import SaslFailure, StreamError
from ..xmpp.jid import InvalidJid, Jid
from ..xmpp.sasl.ht import HT_MECHANISMS
from ..xmpp.stanza import Stanza
from ..xmpp.stream import TCP, Framing
from .descriptors import connection_budget
from .transport_metrics import TransportMetrics

__all__ = ["C2SListener", "C2SConnection", "C2STransport"]

log = logging.getLogger(__name__)

# The connection whose stanza is being handled: each connection's handler task sets it in its own
# context (and tasks it spawns inherit it), so a recipient that is behind knows whom to push back.
_SENDER: ContextVar[C2SConnection | None] = ContextVar("c2s_sender", default=None)

DRAIN_POLL = 0.02  # seconds between checks of a client's output while its senders wait for it
LINGER_SECONDS = 2.0  # after a stream error: time for the peer to read it before we close
AGENT_FLAG = "agent"  # session record flag: a short hash of the SASL2 user agent id that bound it
MAX_TAG_CHARS = 64  # of a Bind 2 <tag/> taken into a resource


class C2STransport(Protocol):
    """What a connection needs of its transport: an ``asyncio.Transport`` (TCP, TLS), or the
    WebSocket adapter's (``websocket_server.WebSocketTransport``)."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def is_closing(self) -> bool: ...
    def get_write_buffer_size(self) -> int: ...
    def can_write_eof(self) -> bool: ...
    def write_eof(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


class C2SListener:
    """Both c2s listeners of a node, sharing limits and services."""

    def __init__(self, settings: NodeSettings, sessions: SessionManager, hooks: Hooks,
                 tls_context: ssl.SSLContext) -> None:
        self.settings = settings
        self.sessions = sessions
        self.hooks = hooks
        self.tls_context = tls_context
        lim = settings.limits
        self.refused = sessions.s.refused  # counts refusals by the setting whose limit was hit
        self.limiter = ConnectionLimiter(connection_budget(lim.max_connections), lim.max_connections_per_ip,
                                         lim.max_pre_auth_connections, refused=self.refused)
        self.config = C2SConfig(
            domains=settings.domains, tls_available=True, tls_required=settings.c2s.require_tls,
            allow_plain=settings.c2s.allow_plain, registration=hooks.has(Hook.C2S_PRE_AUTH_IQ),
            max_stanza_size=lim.max_stanza_size, max_depth=lim.max_depth,
            features=lambda stage, stream: hooks.fold(Hook.C2S_FEATURES, [], stage, stream),
            sasl2_inline=lambda stream: hooks.fold(Hook.SASL2_INLINE, [], stream),
            bind2_features=lambda stream: hooks.fold(Hook.BIND2_FEATURES, [], stream),
            token_mechanisms=lambda stream: tuple(HT_MECHANISMS) if hooks.has(Hook.SASL2_TOKEN) else (),
            login_cache=sessions.s.accounts.login_cache, scram_iterations=settings.scram_iterations,
        )
        self.servers: list[asyncio.Server] = []
        self.connections: set[C2SConnection] = set()
        self.counters = {"connections": 0, "logins": 0, "auth_failures": 0, "stream_errors": 0,
                         "stanza_rate_refused": 0, "pushed_back": 0, "parsers_parked": 0}
        self.transports = TransportMetrics()  # per transport: its connections count there by name
        self._parking: asyncio.Task[None] | None = None
        self._once = OncePer(60.0)  # log lines about one source: at most one a minute of each kind

    def say(self, level: int, key: tuple[str, str], msg: str, *args: object) -> None:
        """Log ``msg`` about a client address at most once a minute per ``key`` (address, what),
        with how many were held back: a flood of refusals is not a flood of log lines."""
        if not log.isEnabledFor(level) or not self._once.allow(key, time.monotonic()):
            return
        held = self._once.held()
        log.log(level, msg + (f" ({held} more like it since the last such line)" if held else ""), *args)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        c2s = self.settings.c2s
        if c2s.park_parser_after > 0:
            self._parking = loop.create_task(self._park_idle_parsers(c2s.park_parser_after))
        shared = c2s.reuse_port or None  # SO_REUSEPORT: node processes of one host share the ports
        if c2s.port:
            self.servers.append(await loop.create_server(
                lambda: C2SConnection(self, direct_tls=False), c2s.host, c2s.port, backlog=4096,
                reuse_port=shared))
        if c2s.tls_port:
            self.servers.append(await loop.create_server(
                lambda: C2SConnection(self, direct_tls=True), c2s.host, c2s.tls_port,
                ssl=self.tls_context, ssl_handshake_timeout=c2s.handshake_timeout, backlog=4096,
                reuse_port=shared))

    async def _park_idle_parsers(self, after: float) -> None:
        """Every ``after``/2 seconds, park the parser of each connection silent for ``after``: one
        sweep for all connections instead of a timer each."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(after / 2)
            now = loop.time()
            for conn in list(self.connections):
                conn.park_parser_if_idle(now, after)

    async def _until_closed(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)

    @property
    def ports(self) -> list[int]:
        return [s.sockets[0].getsockname()[1] for s in self.servers if s.sockets]

    async def stop(self) -> None:
        if self._parking is not None:
            self._parking.cancel()
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.kick("system-shutdown", reason="shutdown")
        # Each kicked client has LINGER_SECONDS to read its <system-shutdown/>; its session's
        # clean-up starts when its connection is lost (Python 3.11's wait_closed() does not wait).
        # A TLS close waits for the peer's close_notify: abort what is still open after that.
        await self._until_closed(LINGER_SECONDS)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await self._until_closed(2.0)  # connection_lost comes a few loop turns after abort()
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()


class C2SConnection(asyncio.Protocol):
    """One client connection; implements the router's ``LocalSession``.

    The session logic only needs a :class:`C2STransport`: over TCP, asyncio calls the
    ``asyncio.Protocol`` methods; the WebSocket adapter calls the same ones (``connection_made``
    with its transport, ``data_received`` once per message, ``connection_lost``) and passes its
    ``framing`` and ``config`` (no STARTTLS)."""

    transport_name = "tcp"  # whose counters in ``listener.transports`` (a subclass per transport)

    def __init__(self, listener: C2SListener, *, direct_tls: bool, framing: Framing = TCP,
                 config: C2SConfig | None = None) -> None:
        self.listener = listener
        self.core = C2SStream(config or listener.config, direct_tls=direct_tls, framing=framing)
        self.transport: C2STransport | None = None
        self.ip = "?"
        self.record: SessionRecord = None  # type: ignore[assignment]  # set at bind
        self.last_presence: Stanza | None = None
        self.directed: set[str] = set()
        self.ext: dict[str, Any] = {}  # modules' per-session state
        self.close_reason: str | None = None  # why the stream ended (StreamEnded.reason, kicked, …)
        self._hooks = listener.hooks
        self._filtered = listener.hooks.has(Hook.USER_RECEIVE_FILTER)
        self._tc = listener.transports[self.transport_name]
        lim = listener.settings.limits
        self._shaper = Shaper(lim.shaper_rate, lim.shaper_burst, lim.shaper_max_throttle)
        self._stanza_rate = Shaper(lim.stanza_rate, lim.stanza_burst, lim.shaper_max_throttle)
        # Made on a stanza's arrival, dropped once handled: an idle connection holds neither the
        # deque (its first block: ~0.6 KB) nor the finished task.
        self._queue: deque[Stanza] | None = None
        self._flush_pending = False
        self._worker: asyncio.Task[None] | None = None
        self._refusing = False  # closing for a stanza flood: nothing more is handled
        # Why reading is paused: the shaper, our own handler's queue, a TLS upgrade, a refused
        # authentication, our own output behind ("output"), a recipient's output behind ("peer").
        self._paused = {"shaper": False, "queue": False, "tls": False, "auth": False, "output": False,
                        "peer": False}
        self._behind = False  # our output is over limits.outbound_high_water
        self._waiters: set[C2SConnection] | None = None  # senders paused until our output drains
        self._waiting_on: set[C2SConnection] | None = None  # behind recipients we wait for
        self._held = False  # an authentication failure's answer waits (address throttling)
        self._limited = False
        self._pre_auth = False  # holds one of the limiter's not-yet-authenticated slots
        self._timer: asyncio.TimerHandle | None = None
        self._idle_armed = False  # the timer is the idle timeout counted from _last_input
        self._last_input = 0.0
        self._parked_for = -1.0  # the _last_input the parser was last parked after
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._draining = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else "?"
        refusal = self.listener.sessions.s.auth_refusal(self.ip) or self.listener.limiter.acquire(self.ip)
        if refusal is not None:
            self._handle(self.core.close(errors.PolicyViolation(refusal)))
            return
        self._limited = self._pre_auth = True
        self.listener.connections.add(self)
        self.listener.counters["connections"] += 1
        self._tc.opened()
        self._arm_timer(self.listener.settings.c2s.handshake_timeout)

    def data_received(self, data: bytes) -> None:
        if self._closed or self._draining:
            return
        self._tc.bytes_in += len(data)
        now = self._loop.time()
        delay = self._shaper.consume(len(data), now)
        if delay > 0:
            if self._shaper.flooding(now):
                self.listener.refused("limits.shaper_rate")
                self._handle(self.core.close(errors.PolicyViolation("sending too fast")))
                return
            self._pause("shaper")
            self._loop.call_later(delay, self._resume, "shaper")
        self._handle(self.core.receive_data(data))
        if self.core.state is State.ESTABLISHED:
            self._last_input = now
            if not self._idle_armed:  # else moved when it fires (not a new timer at every read)
                self._arm_timer(self.listener.settings.c2s.idle_timeout)
                self._idle_armed = True

    def park_parser_if_idle(self, now: float, after: float) -> None:
        """An established stream silent for ``after`` seconds gives up its XML parser until the
        next byte (see :meth:`StreamParser.park`)."""
        if (self.core.state is State.ESTABLISHED and now - self._last_input >= after
                and self._parked_for != self._last_input and self.core.parser.park()):
            self._parked_for = self._last_input
            self.listener.counters["parsers_parked"] += 1

    def eof_received(self) -> bool | None:
        if self._draining:
            return None  # the transport closes itself
        self._handle(self.core.receive_data(b""))
        return None

    def _linger(self) -> None:
        """Close so the peer can still read our last words.

        Closing a socket with unread input makes the kernel send RST, which destroys the stream
        error in flight; so stop writing, keep reading (and discarding) briefly, then close.
        """
        t = self.transport
        if t is None or t.is_closing() or self._draining:
            return
        self._draining = True
        if t.can_write_eof():
            t.write_eof()
        self._paused = dict.fromkeys(self._paused, False)
        t.resume_reading()
        self._loop.call_later(LINGER_SECONDS, t.close)
        # A peer that stopped reading (a dead network path) would keep a TLS close waiting for
        # its buffer to drain, and the session alive, forever: abort then.
        self._loop.call_later(2 * LINGER_SECONDS, t.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._limited:
            self._limited = False
            self.listener.limiter.release(self.ip, pre_auth=self._pre_auth)
            self._pre_auth = False
            self._tc.closed()
        self.listener.connections.discard(self)
        self._caught_up()  # whoever waited for our output is read again
        if self._waiting_on:
            for recipient in self._waiting_on:
                if recipient._waiters is not None:
                    recipient._waiters.discard(self)
            self._waiting_on = None
        if self.core.state is not State.CLOSED:
            self.core.receive_data(b"")
        if self.close_reason is None:
            self.close_reason = "lost"
        if self.record is not None:
            self.listener.sessions.s.router.spawn(self._finish())

    async def drained(self) -> None:
        """Wait until every stanza read from the client so far has been handled."""
        worker = self._worker
        if worker is not None and not worker.done():
            try:
                await worker
            except Exception:  # already logged by the worker
                pass

    async def _finish(self) -> None:
        if self._worker is not None:
            try:
                await self._worker
            except Exception:  # already logged by the worker
                pass
        await self.listener.sessions.closed(self, self.close_reason or "lost")

    # -- LocalSession ------------------------------------------------------------------------

    def set_record(self, record: SessionRecord) -> None:
        self.listener.sessions.s.update_record(record)

    def deliver(self, stanza: Stanza) -> None:
        if self._closed or self._draining or self.core.state is State.CLOSED:
            # The stream is ending: what still arrives for it goes where it would have gone had
            # this session already left, instead of into a closed socket.
            self.listener.sessions.undeliverable(self, stanza)
            return
        if is_probe(stanza):
            self.listener.sessions.answer_probe(self, stanza)
            return
        if self._filtered and self._hooks.first(Hook.USER_RECEIVE_FILTER, self, stanza):
            return  # held back by a module (CSI), written later through write()
        self.write(stanza)

    def write(self, stanza: Stanza) -> None:
        """Write ``stanza`` to the client now (past ``user_receive_filter``)."""
        if not self.is_open:
            self.listener.sessions.undeliverable(self, stanza)
            return
        data = self._stanza_bytes(stanza)
        self.core.send_bytes(data)
        self._tc.stanzas_out += 1
        self._hooks.run(Hook.USER_RECEIVE_PACKET, self, stanza, data)
        self._flush_soon()
        if self._behind:
            self._push_back()

    def _stanza_bytes(self, stanza: Stanza) -> bytes:
        """A stanza's bytes as the stream queues them (the WebSocket connection's are already a
        WebSocket message, so its output is not searched for elements)."""
        return stanza.to_bytes()

    def send_raw(self, data: bytes) -> None:
        """Write a non-stanza element (an ``<r/>``, ``<enabled/>``) in order with the stanzas."""
        self.core.send_bytes(data)
        self._flush_soon()

    @property
    def authenticated(self) -> Jid | None:
        """The account this stream authenticated as (bare JID), before or after bind."""
        if self.core.username is None or self.core.domain is None:
            return None
        try:
            return Jid.parse(f"{self.core.username}@{self.core.domain}")
        except InvalidJid:
            return None

    @property
    def is_open(self) -> bool:
        return not (self._closed or self._draining or self.core.state is State.CLOSED)

    def _flush_soon(self) -> None:
        """One TLS record and one send() for every stanza delivered to this client in the same
        loop turn (a burst arriving in one cluster frame batch), instead of one per stanza."""
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._deferred_flush)

    def _deferred_flush(self) -> None:
        self._flush_pending = False
        self._flush()

    def kick(self, condition: str, text: str | None = None, *, reason: str = "kicked") -> None:
        if self.close_reason is None:
            self.close_reason = reason
        cls = next((c for c in _all_stream_errors() if c.condition == condition), errors.UndefinedCondition)
        self._handle(self.core.close(cls(text)))

    # -- events from the core --------------------------------------------------------------

    def _handle(self, events: list[C2SEvent]) -> None:
        for event in events:
            if isinstance(event, StanzaIn):
                self._tc.stanzas_in += 1
                self._hooks.run(Hook.C2S_STANZA_RECEIVED, self, event.stanza)
                self._enqueue(event.stanza)
            elif isinstance(event, ElementIn):
                if event.stage == "established":
                    if not self._hooks.first(Hook.C2S_ELEMENT, self, event.element):
                        el = event.element
                        self._handle(self.core.close(errors.UnsupportedStanzaType(f"<{el.name}/> in {el.namespace}")))
                        return
                else:
                    self.listener.sessions.s.router.spawn(self._pre_bind_element(event.element))
            elif isinstance(event, StartTls):
                self._flush()
                self._pause("tls")
                self.listener.sessions.s.router.spawn(self._start_tls())
            elif isinstance(event, CredentialsNeeded):
                self.listener.sessions.s.router.spawn(self._lookup(event))
            elif isinstance(event, TokenNeeded):
                self.listener.sessions.s.router.spawn(self._token_lookup(event))
            elif isinstance(event, Sasl2Authenticated):
                self.listener.sessions.s.router.spawn(self._sasl2(event))
            elif isinstance(event, BindRequested):
                self._bind(event)
            elif isinstance(event, RegistrationIq):
                self.listener.sessions.s.router.spawn(self._register(event.stanza))
            elif isinstance(event, Authenticated):
                self.listener.counters["logins"] += 1
                self._logged_in()
            elif isinstance(event, AuthFailed):
                if self._auth_failed():
                    return
            elif isinstance(event, SessionEstablished):
                pass
            elif isinstance(event, StreamEnded):
                self._held = False
                if self.close_reason is None:
                    self.close_reason = "timeout" if isinstance(event.error, errors.ConnectionTimeout) else event.reason
                if self.record is not None:
                    self._hooks.run(Hook.C2S_STREAM_CLOSING, self, self.close_reason)
                if event.error is not None:
                    self.listener.counters["stream_errors"] += 1
                    limit = parser_limit(event.error)
                    if limit is not None:
                        self.listener.refused(limit)
                    self.listener.say(logging.INFO, (self.ip, event.error.condition), "c2s %s: stream error %s (%s)",
                                      self.ip, event.error.condition, event.error.text)
                self._flush()
                self._linger()
                return
        self._flush()

    def _logged_in(self) -> None:
        """The stream authenticated: it no longer counts against ``max_pre_auth_connections``."""
        if self._pre_auth:
            self._pre_auth = False
            self.listener.limiter.authenticated()

    def _auth_failed(self) -> bool:
        """Count a refused authentication against the address: hold the answer back (and stop
        reading) for the throttle's delay, or close the stream if it banned the address.  True
        when the stream was closed."""
        delay, ban = self.listener.sessions.s.auth_failed(self.ip)
        if ban is not None:
            log.warning("c2s %s: banned for %d s after %s", self.ip, self.listener.settings.auth_throttle.ban_seconds,
                        ban.reason)
            self._handle(self.core.close(errors.PolicyViolation("too many authentication failures")))
            return True
        if delay > 0 and not self._held:
            self._held = True
            self._pause("auth")
            self._loop.call_later(delay, self._release)
        return False

    def _release(self) -> None:
        self._held = False
        self._flush()
        self._resume("auth")

    def _flush(self) -> None:
        if self._held:
            return
        data = self._output()
        if data and self.transport is not None and not self.transport.is_closing():
            self._tc.bytes_out += len(data)
            self.transport.write(data)
            size = self.transport.get_write_buffer_size()
            if size > self.listener.settings.limits.outbound_high_water:
                if size > self.listener.settings.limits.write_buffer_limit:
                    self.listener.refused("limits.write_buffer_limit")
                    log.warning("c2s %s: client is not reading; dropping it", self.record and self.record.jid)
                    self.transport.abort()
                elif not self._behind:
                    self._fell_behind()

    def _output(self) -> bytes:
        """What the stream has for the client now (the WebSocket connection's knows its elements)."""
        return self.core.data_to_send()

    async def _start_tls(self) -> None:
        # STARTTLS is only offered over TCP: an asyncio transport, or uvloop's (not a subclass)
        transport = cast(asyncio.WriteTransport, self.transport)
        try:
            new = await self._loop.start_tls(transport, self, self.listener.tls_context, server_side=True,
                                             ssl_handshake_timeout=self.listener.settings.c2s.handshake_timeout)
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as e:
            log.info("c2s %s: TLS handshake failed: %s", self.ip, e)
            if self.transport is not None:
                self.transport.abort()
            return
        if new is None:
            return
        self.transport = new
        self._handle(self.core.tls_started())
        self._resume("tls")

    async def _lookup(self, event: CredentialsNeeded) -> None:
        domain = self.core.domain or ""
        try:
            creds = await self.listener.sessions.credentials(domain, event.username, event.hash_name)
        except Exception:
            log.exception("credentials lookup failed")
            self._handle(self.core.close(errors.InternalServerError()))
            return
        if self._closed:
            return
        # PLAIN's PBKDF2 (about 2 ms) runs on a worker thread: hashlib releases the GIL, so logins
        # use the other CPU instead of stalling every connection of the node.
        check = self.core.credentials_check(creds)
        checked = await asyncio.to_thread(check) if check is not None else None
        if self._closed or self.core.state is not State.WAIT_CREDENTIALS:
            return  # closed (kicked, timed out) meanwhile
        events = self.core.provide_credentials(creds, checked=checked)
        if self.core.username is None:
            self.listener.counters["auth_failures"] += 1
        self._handle(events)

    async def _token_lookup(self, event: TokenNeeded) -> None:
        """A token mechanism (XEP-0484 HT-*) needs the keys of the client's tokens: from the
        module that keeps them (``sasl2_token``)."""
        try:
            keys = await self._hooks.first_async(Hook.SASL2_TOKEN, self.core.domain or "", event.username,
                                                 event.request)
        except Exception:
            log.exception("token lookup failed")
            self._handle(self.core.close(errors.InternalServerError()))
            return
        if self._closed or self.core.state is not State.WAIT_CREDENTIALS:
            return
        events = self.core.provide_token(list(keys or ()))
        if self.core.username is None:
            self.listener.counters["auth_failures"] += 1
        self._handle(events)

    async def _sasl2(self, event: Sasl2Authenticated) -> None:
        """Finish a SASL2 authentication the mechanism accepted: modules' inline requests (a
        XEP-0198 resumption among them), else the Bind 2 request, then ``<success/>``."""
        try:
            children: list[bytes] = await self._hooks.fold_async(Hook.SASL2_AUTHENTICATED, [], self, event)
            if self._closed or self.core.state is not State.WAIT_SASL2:
                return
            jid: Jid | None = None
            if self.record is not None:  # a XEP-0198 session resumed: no bind (XEP-0386 §3.2)
                jid = self.record.jid
            elif event.request.bind is not None:
                bound = await self._bind2(event.request)
                if bound is None:
                    return  # the connection closed meanwhile
                children.append(bound)
                jid = self.record.jid
        except SaslFailure as e:
            if self._closed or self.core.state is not State.WAIT_SASL2:
                return
            self.listener.counters["auth_failures"] += 1
            log.info("c2s %s: SASL2 refused after the mechanism: %s", self.ip, e)
            self._handle(self.core.sasl2_failed(e))
            return
        except Exception:
            log.exception("c2s %s: finishing a SASL2 authentication failed", self.ip)
            self._handle(self.core.close(errors.InternalServerError()))
            return
        self._handle(self.core.sasl2_success(jid, b"".join(children)))
        self._logged_in()
        if jid is not None:
            self._arm_timer(self.listener.settings.c2s.idle_timeout)

    async def _bind2(self, request: Sasl2Request) -> bytes | None:
        """XEP-0386: bind through the session manager, wait for replication, enable the inline
        features; the ``<bound/>`` element (None: the connection closed meanwhile)."""
        assert self.core.username is not None and self.core.domain is not None and request.bind is not None
        resource, agent = self._bind2_resource(self.core.username, self.core.domain, request)
        try:
            self.listener.sessions.bind(self, self.core.username, self.core.domain, resource)
        except errors.StanzaError as e:
            raise SaslFailure("temporary-auth-failure", f"no resource could be bound ({e.condition})") from None
        if agent is not None:
            self.set_record(self.record.with_flag(AGENT_FLAG, agent))
        cluster = self.listener.sessions.s.cluster
        if cluster is not None and cluster.links:  # every member knows the session (CETS insert semantics)
            await cluster.wait_acks()
        if self._closed or self.core.state is not State.WAIT_SASL2:
            return None
        inline: list[bytes] = await self._hooks.fold_async(Hook.BIND2_INLINE, [], self, request.bind)
        return f"<bound xmlns='{ns.BIND2}'>".encode() + b"".join(inline) + b"</bound>"

    def _bind2_resource(self, username: str, domain: str, request: Sasl2Request) -> tuple[str | None, str | None]:
        """The resource for a Bind 2 request, and the short hash of its user agent id.

        The client's ``<tag/>`` (else its ``<software/>``) as it is, when no session holds it or
        the one holding it was bound by the same client (the same user agent id: an earlier
        session of this client, replaced as XEP-0386 recommends); else ``<tag>.<hash>``, where the
        hash of the user agent id keeps it the same at every login of that client, and never
        shows the id itself.  No tag: the hash alone; no user agent id either: the session
        manager's choice."""
        agent_id = request.user_agent.id
        agent = hashlib.sha256(agent_id.encode()).hexdigest()[:8] if agent_id else None
        preferred = _resourcepart(username, domain, request.tag) or _resourcepart(
            username, domain, request.user_agent.software)
        if preferred is None:
            return agent, agent
        holder = self.listener.sessions.s.table.lookup(Jid.parse(f"{username}@{domain}/{preferred}"))
        if holder is None or (agent is not None and holder.flags.get(AGENT_FLAG) == agent):
            return preferred, agent
        return f"{preferred}.{agent or secrets.token_hex(4)}", agent

    def _bind(self, event: BindRequested) -> None:
        assert self.core.username is not None and self.core.domain is not None
        try:
            self.listener.sessions.bind(self, self.core.username, self.core.domain, event.resource)
        except errors.StanzaError as e:
            self._handle(self.core.bind_failed(e))
            return
        cluster = self.listener.sessions.s.cluster
        if cluster is None or not cluster.links:
            self._handle(self.core.bind_done(self.record.jid))
        else:  # the bind result waits until every member knows the session (CETS insert semantics)
            self.listener.sessions.s.router.spawn(self._bound_when_replicated(cluster))

    async def _bound_when_replicated(self, cluster: Any) -> None:
        await cluster.wait_acks()
        if not self._closed:
            self._handle(self.core.bind_done(self.record.jid))

    async def _register(self, stanza: Stanza) -> None:
        reply = await self._hooks.first_async(Hook.C2S_PRE_AUTH_IQ, stanza, self.core.domain or "", self)
        if reply is None:
            self._handle(self.core.close(errors.NotAuthorized("authenticate first")))
            return
        self.core.send_stanza(reply)
        self._flush()

    async def _pre_bind_element(self, element: Stanza) -> None:
        """An element after SASL and before bind (XEP-0198 ``<resume/>``, ``<enable/>`` too early):
        the stream waits until its module is done with it."""
        try:
            taken = await self._hooks.first_async(Hook.C2S_PRE_BIND_ELEMENT, self, element)
        except Exception:
            log.exception("c2s %s: handling <%s/> failed", self.ip, element.name)
            self._handle(self.core.close(errors.InternalServerError()))
            return
        if self._closed or self.core.state is State.CLOSED:
            return
        if not taken:
            self._handle(self.core.close(errors.UnsupportedStanzaType(f"<{element.name}/> in {element.namespace}")))
        elif self.core.state is State.WAIT_ELEMENT:
            self._handle(self.core.element_done())

    def resumed(self, record: SessionRecord, data: bytes) -> None:
        """This connection takes over ``record``'s session (XEP-0198 resumption, the module checked
        everything): ``data`` (``<resumed/>`` and what is resent) goes out, the stream is established.
        Inside a SASL2 authentication (``sasl2_authenticated``), ``data`` is what is resent only:
        it goes out after the ``<success/>`` that carries the ``<resumed/>``."""
        self.record = record
        self.core.send_bytes(data)
        if self.core.state is State.WAIT_SASL2:
            return  # _sasl2 writes the <success/>
        self._handle(self.core.resume_done(record.jid))
        self._arm_timer(self.listener.settings.c2s.idle_timeout)

    # -- in-order handling of the client's stanzas ------------------------------------------

    def _enqueue(self, stanza: Stanza) -> None:
        if self._refusing:
            return  # the stream is closing for a flood: what came with the flood is dropped
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(stanza)
        if len(queue) >= self.listener.settings.limits.inbound_queue:
            self._pause("queue")
        if self._worker is None or self._worker.done():
            # Its first step now, in this read, rather than at the next turn (see core/eager.py).
            self._worker = eager.start(self._work(), self._loop)

    async def _work(self) -> None:
        _SENDER.set(self)  # this task's own context: what it routes is ours
        outbound = self.listener.sessions.outbound
        low = self.listener.settings.limits.inbound_queue // 2
        while self._queue:
            stanza = self._queue.popleft()
            try:
                if not self._over_rate(stanza):  # answered with an error: it counts as handled (XEP-0198)
                    await outbound(self, stanza)
            except Exception:
                log.exception("handling a stanza from %s failed", self.record.jid)
                self.listener.sessions.s.router.send_error(stanza, errors.StanzaInternalServerError())
            self._hooks.run(Hook.C2S_STANZA_HANDLED, self, stanza)
            if self._paused["queue"] and (self._queue is None or len(self._queue) <= low):
                self._resume("queue")
        self._queue = None
        self._worker = None

    def _over_rate(self, stanza: Stanza) -> bool:
        """Whether ``stanza`` is over the client's stanza rate: then it gets ``<policy-violation/>``
        instead of being handled, and a client over the rate for ``shaper_max_throttle`` seconds
        loses its stream (a flood, not a burst)."""
        now = self._loop.time()
        if self._stanza_rate.consume(1, now) <= 0:
            return False
        self.listener.counters["stanza_rate_refused"] += 1
        self.listener.refused("limits.stanza_rate")
        self.listener.say(logging.WARNING, (self.ip, "stanza rate"), "c2s %s (%s): stanzas refused over the "
                          "stanza rate", self.ip, self.record.jid if self.record is not None else "not logged in")
        if self._stanza_rate.flooding(now):
            self._queue = None
            self._refusing = True
            self._handle(self.core.close(errors.PolicyViolation("too many stanzas")))
        elif stanza.type != "error":
            slow_down = errors.StanzaPolicyViolation("too many stanzas: slow down")
            self.listener.sessions.s.router.send_error(stanza, slow_down)
        return True

    # -- flow control and timers --------------------------------------------------------------

    def _fell_behind(self) -> None:
        """More than ``outbound_high_water`` bytes wait to be written to our client: stop reading
        it, and (in :meth:`write`) every client that sends it more, until it is under
        ``outbound_low_water``: the excess stays in their sockets rather than in the node."""
        self._behind = True
        self._pause("output")
        self._loop.call_later(DRAIN_POLL, self._check_drained)

    def _check_drained(self) -> None:
        if not self._behind:
            return
        t = self.transport
        if self._closed or t is None or t.get_write_buffer_size() <= self.listener.settings.limits.outbound_low_water:
            self._caught_up()
        else:
            self._loop.call_later(DRAIN_POLL, self._check_drained)

    def resume_writing(self) -> None:
        """asyncio: the transport's buffer went under its low-water mark; check ours now."""
        self._check_drained()

    def _caught_up(self) -> None:
        if not self._behind:
            return
        self._behind = False
        self._resume("output")
        waiters, self._waiters = self._waiters, None
        for sender in waiters or ():
            sender._done_waiting(self)

    def _push_back(self) -> None:
        """A stanza was written to us while we are behind: pause the client that sent it."""
        sender = _SENDER.get()
        if sender is None or sender is self or sender._closed:
            return  # not from a client of ours (a server, a cluster link), or ours: already paused
        if self._waiters is None:
            self._waiters = set()
        if sender in self._waiters:
            return
        self._waiters.add(sender)
        if sender._waiting_on is None:
            sender._waiting_on = set()
        sender._waiting_on.add(self)
        self.listener.counters["pushed_back"] += 1
        sender._pause("peer")

    def _done_waiting(self, recipient: C2SConnection) -> None:
        if self._waiting_on is None:
            return
        self._waiting_on.discard(recipient)
        if not self._waiting_on:
            self._waiting_on = None
            self._resume("peer")

    def _pause(self, why: str) -> None:
        if not any(self._paused.values()) and self.transport is not None:
            self.transport.pause_reading()
        self._paused[why] = True

    def _resume(self, why: str) -> None:
        self._paused[why] = False
        if not any(self._paused.values()) and self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def _arm_timer(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._idle_armed = False
        self._timer = self._loop.call_later(seconds, self._timeout)

    def _timeout(self) -> None:
        if self._idle_armed:  # input came since the timer was set: wait for the rest of the idle time
            left = self._last_input + self.listener.settings.c2s.idle_timeout - self._loop.time()
            if left > 0:
                self._timer = self._loop.call_later(left, self._timeout)
                return
        self._handle(self.core.close(errors.ConnectionTimeout()))


def _resourcepart(username: str, domain: str, text: str | None) -> str | None:
    """``text`` (a Bind 2 tag, a software name) if it makes a valid resource, with room for a
    suffix; else None."""
    if not text or len(text) > MAX_TAG_CHARS:
        return None
    try:
        jid = Jid.parse(f"{username}@{domain}/{text}")
    except InvalidJid:
        return None
    return jid.resource


def _all_stream_errors() -> list[type[StreamError]]:
    return StreamError.__subclasses__()

