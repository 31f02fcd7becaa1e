"""XMPP over WebSocket (RFC 7395) and XEP-0156 discovery: an aiohttp application on its own listener.

``GET <path>`` with the ``xmpp`` subprotocol upgrades to a WebSocket whose text messages feed a
:class:`~.c2s_server.C2SConnection` — the same session logic as TCP (features, SASL, SASL2, SM,
CSI… through the same hooks), with the WebSocket framing (:mod:`..xmpp.websocket`) and a
:class:`WebSocketTransport` in place of the socket.  STARTTLS is never offered: the stream counts as
secure (SASL PLAIN allowed) when the WebSocket is TLS (``wss://``), or when a trusted proxy says it
terminated TLS (``X-Forwarded-Proto: https``).  ``/.well-known/host-meta`` (XRD) and
``/.well-known/host-meta.json`` list the endpoint (``urn:xmpp:alt-connections:websocket``).

aiohttp does the HTTP upgrade only: then the socket is handed to our own protocol
(:class:`WebSocketTransport`, ``transport.set_protocol``) and aiohttp's handler returns, so its request,
response, tasks and parsers are freed (~7 KB per idle connection).  The reads go to our RFC 6455
frame reader (:mod:`..xmpp.ws_frames`), which hands each text message to the session
synchronously; pings, the keep-alive and the closing handshake are ours too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import ssl
import struct
from typing import Any, cast
from xml.sax.saxutils import quoteattr

from aiohttp import web
from aiohttp.http import WebSocketWriter

from ..settings import NodeSettings
from ..xmpp import ws_frames
from ..xmpp.c2s import State
from ..xmpp.stanza import Stanza
from ..xmpp.websocket import WEBSOCKET, Batch, OneMessage
from ..xmpp.ws_frames import (
    MESSAGE_TOO_BIG,
    NO_STATUS,
    NORMAL_CLOSURE,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    Binary,
    Close,
    Event,
    FrameParser,
    Ping,
    Pong,
    ProtocolError,
    Text,
)
from .bosh_server import ALT_CONNECTIONS_XBOSH, BoshEndpoint
from .c2s_server import LINGER_SECONDS, C2SConnection, C2SListener
from .web_root import add_web_root

__all__ = ["WebSocketListener", "WebSocketConnection", "WebSocketTransport", "ALT_CONNECTIONS_WS"]

log = logging.getLogger(__name__)

ALT_CONNECTIONS_WS = "urn:xmpp:alt-connections:websocket"
XRD_NS = "http://docs.oasis-open.org/ns/xri/xrd-1.0"

try:  # aiohttp's C helper (masks a bytearray in place): a few times faster than the big-int XOR
    from aiohttp._websocket.mask import _websocket_mask_cython as _mask_in_place
except ImportError:  # pragma: no cover - aiohttp without its C extensions
    _mask_in_place = None


def _unmask_c(mask: bytes, data: bytes) -> bytes:
    buf = bytearray(data)
    _mask_in_place(mask, buf)
    return bytes(buf)


UNMASK = _unmask_c if _mask_in_place is not None else ws_frames.unmask
ESTABLISHED = State.ESTABLISHED


class WebSocketTransport(asyncio.Protocol):
    """A :class:`~.c2s_server.C2STransport` on a WebSocket, and the socket's protocol.

    After aiohttp's handshake the socket's reads come here (``set_protocol``; aiohttp's handler is
    gone): the frames go through :class:`~..xmpp.ws_frames.FrameParser` and each text message
    straight to the session's ``data_received`` — no queue, future or task wake-up per message.
    Pausing reading pauses the socket; events already read wait in :attr:`_held`.

    What the connection writes (its text frames, one per element, made by
    :meth:`WebSocketConnection._output` once per loop turn) goes out in one write to the socket —
    one TLS record and one ``send()``, as over TCP.  Pings are answered here; the listener's
    keep-alive sweep calls :meth:`keepalive`.  Closing is the RFC 6455 closing handshake: our close
    frame, then the peer's (at most ``LINGER_SECONDS``), then the socket closes.  :attr:`ended` is
    done once the socket is done with."""

    __slots__ = ("_raw", "_peer", "_frames", "_listener", "_conn", "_closing", "_paused", "_held",
                 "_timer", "ended", "heard", "pinged")

    def __init__(self, raw: asyncio.BaseTransport | None, peer: tuple[str, int], listener: WebSocketListener) -> None:
        # uvloop's transports are not asyncio.WriteTransport subclasses: test what is used
        self._raw = cast(asyncio.Transport, raw) if hasattr(raw, "get_write_buffer_size") else None
        self._peer = peer
        self._listener = listener
        # the same limit as aiohttp's max_msg_size had: a stanza at the limit plus framing slack
        self._frames = FrameParser(listener.settings.limits.max_stanza_size + 1024, unmask=UNMASK)
        self._conn: WebSocketConnection | None = None  # None before start() and once the session ended
        self._closing = False  # our close frame went out (or the socket is going): nothing more is written
        self._paused = False
        self._held: list[Event] | None = []  # events read before start(), or while paused
        self._timer: asyncio.TimerHandle | None = None  # the closing handshake's deadline
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.heard = True  # bytes came since the last keep-alive sweep
        self.pinged = False  # the last sweep sent a ping that nothing answered yet

    def start(self, conn: WebSocketConnection) -> None:
        """The session begins: what came with the handshake is its first input."""
        self._conn = conn
        conn.connection_made(self)  # type: ignore[arg-type]  # a C2STransport
        self._release()

    # -- the socket's protocol -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.heard = True
        events = self._frames.feed(data)
        if events:
            if self._held is not None:  # not started, or paused with events held: after those
                self._held += events
            elif self._paused:
                self._held = events
            else:
                self._deliver(events)

    def eof_received(self) -> bool | None:
        return None  # the peer is done sending: close (what follows a TCP FIN is the socket's end)

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is closed."""
        self._closing = True
        self._finish()

    def pause_writing(self) -> None:
        pass  # the session watches the write buffer itself (``get_write_buffer_size``)

    def resume_writing(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.resume_writing()

    def _deliver(self, events: list[Event]) -> None:
        """Text messages to the session, control frames here, in order.  An established session
        gets the text messages of one read together (a :class:`~..xmpp.websocket.Batch`: one
        call, as a TCP read of several stanzas is); before that one at a time, so a pause (a
        credentials lookup, a stream restart) holds the messages after it unparsed."""
        n = len(events)
        i = 0
        while i < n:
            event = events[i]
            i += 1
            if type(event) is Text:
                conn = self._conn
                if conn is not None and not self._closing:
                    if i < n and type(events[i]) is Text and conn.core.state is ESTABLISHED:
                        j = i + 1
                        while j < n and type(events[j]) is Text:
                            j += 1
                        conn.data_received(Batch.of([cast(Text, e).data for e in events[i - 1:j]]))
                        i = j
                    else:
                        conn.data_received(event.data)
            else:
                self._control(event)
            if self._paused and i < n:
                self._held = events[i:]
                return

    def _control(self, event: Event) -> None:
        kind = type(event)
        if kind is Ping:
            if not self._closing:
                self._send(ws_frames.frame(OP_PONG, cast(Ping, event).payload))
        elif kind is Pong:
            pass  # any input counts for the keep-alive (heard)
        elif kind is Binary:
            if self._conn is not None and not self._closing:  # RFC 7395 §3.2: text messages only
                self._conn.kick("not-well-formed", "XMPP over WebSocket uses text messages", reason="error")
        elif kind is Close:
            close = cast(Close, event)
            if not self._closing:  # the peer began the closing handshake: echo its code
                self._closing = True
                code = close.code if close.code != NO_STATUS else NORMAL_CLOSURE
                self._send(ws_frames.frame(OP_CLOSE, ws_frames.close_payload(code)))
            if self._raw is not None:
                self._raw.close()  # after our close frame; RFC 6455 §7.1.1: the server closes TCP first
            self._finish()
        else:
            error = cast(ProtocolError, event)
            log.debug("websocket %s: closing with %d: %s", self._peer[0], error.code, error.why)
            if error.code == MESSAGE_TOO_BIG:
                self._listener.c2s.refused("limits.max_stanza_size")  # closed with 1009, as aiohttp did
            self._end_session()  # the stream is lost; the socket waits for the peer's close frame
            self._begin_close(error.code, error.why)

    def _release(self) -> None:
        """Deliver what was held, unless paused again meanwhile."""
        held = self._held
        if held is not None and not self._paused:
            self._held = None
            if held:
                self._deliver(held)

    # -- C2STransport -----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        raw = self._raw
        if self._closing or raw is None or raw.is_closing():
            return
        raw.write(data)  # already text frames: WebSocketConnection._output makes them

    def _send(self, frame: bytes) -> None:
        raw = self._raw
        if raw is not None and not raw.is_closing():
            raw.write(frame)

    def close(self) -> None:
        """The WebSocket closing handshake, after what was written (already on the socket)."""
        self._begin_close(NORMAL_CLOSURE)

    def _begin_close(self, code: int, reason: str = "") -> None:
        if self._closing:
            return
        self._closing = True
        self._send(ws_frames.frame(OP_CLOSE, ws_frames.close_payload(code, reason)))
        # Reading goes on (what comes is dropped) until the peer's close frame: closing a socket with
        # unread input sends RST, which can destroy our close frame in flight.
        self._resume()
        self._timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, self.abort)

    def abort(self) -> None:
        self._closing = True
        if self._raw is not None:
            self._raw.abort()
        if not self.ended.done():  # as asyncio calls connection_lost: soon, not inside the caller
            asyncio.get_running_loop().call_soon(self._finish)

    def _finish(self) -> None:
        """The socket is done with: end the session, release the handler."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._end_session()
        if not self.ended.done():
            self.ended.set_result(None)

    def _end_session(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.connection_lost(None)

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size() if self._raw is not None else 0

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            if self._raw is not None and not self._raw.is_closing():
                self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._resume()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            if self._raw is not None and not self._raw.is_closing():
                self._raw.resume_reading()
            if self._held is not None:  # as a socket's next read: on a later loop turn
                asyncio.get_running_loop().call_soon(self._release)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        return self._raw.get_extra_info(name, default) if self._raw is not None else default

    # -- keep-alive ---------------------------------------------------------------------------------

    def keepalive(self) -> None:
        """The listener's sweep, every ``ping_interval``: a connection silent since the last sweep is
        pinged; one still silent at the next is dropped (what aiohttp's heartbeat did).  While we
        do not read (paused), its silence is ours: it does not count."""
        if self._closing:
            return
        if self.heard or self._paused:
            self.heard = False
            self.pinged = False
        elif not self.pinged:
            self.pinged = True
            self._send(ws_frames.frame(OP_PING))
        else:
            log.debug("websocket %s: no answer to a ping; dropped", self._peer[0])
            self.abort()


_SHORT_HEADS = [bytes((0x81, n)) for n in range(126)]


def _text_head(n: int) -> bytes:
    """The header of a final, unmasked text frame of ``n`` bytes (RFC 6455 §5.2: a server never
    masks)."""
    if n < 126:
        return _SHORT_HEADS[n]
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n)
    return struct.pack("!BBQ", 0x81, 127, n)


class _Upgrade(web.WebSocketResponse):
    """aiohttp's WebSocket handshake (the ``xmpp`` subprotocol, the accept key, the 101), then the
    socket is ``frames``'s: :meth:`_post_start` (aiohttp's hook after the 101) makes it the socket's
    protocol and takes the socket from aiohttp's handler, so aiohttp's ``WebSocketReader``, data
    queue and heartbeat timers are never made, and the handler — with its request, headers, tasks
    and this response — is freed once it returns.  The closing handshake is the transport's, so
    :meth:`close` and :meth:`write_eof` (what aiohttp calls when the handler returns) do nothing."""

    def __init__(self, frames: WebSocketTransport) -> None:
        # No permessage-deflate: WebSocketTransport writes plain frames (and Prosody and ejabberd
        # do not compress either).
        super().__init__(protocols=("xmpp",), compress=False)
        self._frames = frames

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: WebSocketWriter) -> None:
        self._ws_protocol = protocol
        handler = request.protocol
        handler.keep_alive(False)
        raw = handler.transport
        assert raw is not None  # prepare() has just written the 101 to it
        tail, handler._message_tail = handler._message_tail, b""  # what the client sent after its request
        raw.set_protocol(self._frames)
        # The socket is no longer aiohttp's: its handler closes nothing when it returns, and the
        # server stops counting it (runner.cleanup() would close it; the listener's stop() does).
        handler.transport = None
        if handler._manager is not None:
            handler._manager.connection_lost(handler, None)
        if tail:
            self._frames.data_received(tail)

    async def close(self, *, code: int = NORMAL_CLOSURE, message: bytes = b"", drain: bool = True) -> bool:
        return False

    async def write_eof(self) -> None:  # type: ignore[override]
        return None


class WebSocketConnection(C2SConnection):
    """A c2s session over a WebSocket: the TCP session logic, the WebSocket framing."""

    transport_name = "websocket"

    def __init__(self, listener: C2SListener, *, secure: bool) -> None:
        config = dataclasses.replace(listener.config, tls_available=False)  # no STARTTLS over WebSocket
        super().__init__(listener, direct_tls=secure, framing=WEBSOCKET, config=config)

    def _output(self) -> bytes:
        """What the stream wrote, as text frames (one per element) joined for one write: each piece
        it wrote is cut on its own (most are one stanza, a message already: :meth:`_stanza_bytes`)
        rather than the joined bytes searched for their elements.  The byte counters count frames."""
        chunks = self.core.chunks_to_send()
        if not chunks:
            return b""
        parts: list[bytes] = []
        for chunk in chunks:
            if type(chunk) is OneMessage:  # a stanza (see _stanza_bytes)
                parts += (_text_head(len(chunk)), chunk)
            else:
                for message in WEBSOCKET.messages(chunk):
                    parts += (_text_head(len(message)), message)
        return b"".join(parts)

    def _stanza_bytes(self, stanza: Stanza) -> bytes:
        return WEBSOCKET.stanza_message(stanza)

    def _linger(self) -> None:
        """The WebSocket closing handshake delivers what was queued: close right away (reading
        goes on until the peer's close frame; the transport aborts if it never comes)."""
        t = self.transport
        if t is None or t.is_closing() or self._draining:
            return
        self._draining = True
        self._paused = dict.fromkeys(self._paused, False)
        t.close()


class WebSocketListener:
    """The ``[websocket]`` listener; its sessions are the c2s listener's (limits, counters, hooks)."""

    def __init__(self, settings: NodeSettings, c2s: C2SListener, tls_context: ssl.SSLContext) -> None:
        self.settings = settings
        self.c2s = c2s
        self.tls_context = tls_context
        ws = settings.websocket
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in ws.trusted_proxies]
        self.connections: set[WebSocketConnection] = set()
        self.runner: web.AppRunner | None = None
        self.site: web.TCPSite | None = None
        self._sweeper: asyncio.Task[None] | None = None
        app = web.Application()
        app.router.add_get(ws.path, self._websocket)
        app.router.add_get("/.well-known/host-meta", self._host_meta)
        app.router.add_get("/.well-known/host-meta.json", self._host_meta_json)
        if ws.web_root:
            add_web_root(app, ws.web_root)
        self.bosh = BoshEndpoint(self) if settings.bosh.enabled else None  # XEP-0206 on the same listener
        if self.bosh is not None:
            self.bosh.add_routes(app)
        self.app = app

    @property
    def public_url(self) -> str:
        ws = self.settings.websocket
        if ws.public_url:
            return ws.public_url
        host = ws.host if ws.host not in ("0.0.0.0", "::", "") else self.settings.domains[0]
        if ":" in host:
            host = f"[{host}]"
        port = self.port or ws.port
        return f"{'wss' if ws.tls else 'ws'}://{host}:{port}{ws.path}"

    @property
    def port(self) -> int:
        if self.runner is None:
            return 0
        for addr in self.runner.addresses:
            return int(addr[1])
        return 0

    async def start(self) -> None:
        ws = self.settings.websocket
        if not ws.port:
            return
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, ws.host, ws.port, ssl_context=self.tls_context if ws.tls else None)
        await self.site.start()
        if ws.ping_interval:
            self._sweeper = asyncio.get_running_loop().create_task(self._keepalive(ws.ping_interval))
        log.info("XMPP over WebSocket on %s", self.public_url)

    async def stop(self) -> None:
        if self.runner is None:
            return
        if self.site is not None:
            await self.site.stop()  # no new connections
        if self.bosh is not None:
            await self.bosh.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            conn.kick("system-shutdown", reason="shutdown")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_SECONDS
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await self.runner.cleanup()
        self.runner = None

    # -- the WebSocket endpoint ---------------------------------------------------------------

    def _client(self, request: web.Request) -> tuple[str, bool]:
        """The client's address and whether its connection is TLS; a trusted proxy's
        X-Forwarded-For (the address it appended) and X-Forwarded-Proto are believed."""
        ip = request.remote or "?"
        secure = request.transport is not None and request.transport.get_extra_info("sslcontext") is not None
        try:
            trusted = any(ipaddress.ip_address(ip) in net for net in self._proxies)
        except ValueError:
            trusted = False
        if trusted:
            forwarded = request.headers.get("X-Forwarded-For", "")
            if forwarded:
                ip = forwarded.split(",")[-1].strip() or ip
            proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
            if proto:
                secure = proto in ("https", "wss")
        return ip, secure

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        origins = self.settings.websocket.allowed_origins
        if origins and request.headers.get("Origin") not in origins:
            self.c2s.refused("websocket.allowed_origins")
            return web.Response(status=403, text="origin not allowed\n")
        ip, secure = self._client(request)
        transport = WebSocketTransport(request.transport, (ip, 0), self)
        ws = _Upgrade(transport)
        ready = ws.can_prepare(request)
        if not ready.ok:
            return web.Response(status=426, headers={"Upgrade": "websocket", "Sec-WebSocket-Protocol": "xmpp"},
                                text="a WebSocket upgrade with the 'xmpp' subprotocol is required\n")
        if ready.protocol != "xmpp":
            return web.Response(status=400, text="the 'xmpp' WebSocket subprotocol is required (RFC 7395)\n")
        await ws.prepare(request)  # the 101; from now on the socket is the transport's
        conn = WebSocketConnection(self.c2s, secure=secure)
        self.connections.add(conn)
        transport.ended.add_done_callback(lambda _f: self.connections.discard(conn))
        transport.start(conn)
        return ws  # aiohttp's handler ends here; the session lives on in the transport

    async def _keepalive(self, interval: float) -> None:
        """One sweep of every WebSocket each ``interval`` (no timer per connection): see
        :meth:`WebSocketTransport.keepalive`."""
        while True:
            await asyncio.sleep(interval)
            for conn in list(self.connections):
                t = conn.transport
                if isinstance(t, WebSocketTransport):
                    try:
                        t.keepalive()
                    except Exception:
                        log.exception("websocket %s: keep-alive failed", conn.ip)

    # -- XEP-0156 -----------------------------------------------------------------------------

    def _links(self) -> list[tuple[str, str]]:
        bosh = [(ALT_CONNECTIONS_XBOSH, self.bosh.public_url)] if self.bosh is not None else []
        return [(ALT_CONNECTIONS_WS, self.public_url), *bosh]

    async def _host_meta(self, request: web.Request) -> web.Response:
        links = "".join(f"  <Link rel='{rel}' href={quoteattr(href)}/>\n" for rel, href in self._links())
        xrd = f"<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='{XRD_NS}'>\n{links}</XRD>\n"
        return web.Response(text=xrd, content_type="application/xrd+xml",
                            headers={"Access-Control-Allow-Origin": "*"})

    async def _host_meta_json(self, request: web.Request) -> web.Response:
        body = {"links": [{"rel": rel, "href": href} for rel, href in self._links()]}
        return web.Response(text=json.dumps(body), content_type="application/json",
                            headers={"Access-Control-Allow-Origin": "*"})
