"""XMPP over WebSocket (RFC 7395) and XEP-0156 discovery: an aiohttp application on its own listener.

``GET <path>`` with the ``xmpp`` subprotocol upgrades to a WebSocket whose text messages feed a
:class:`~.c2s_server.C2SConnection` — the same session logic as TCP (features, SASL, SASL2, SM,
CSI… through the same hooks), with the WebSocket framing (:mod:`..xmpp.websocket`) and a
:class:`WebSocketTransport` in place of the socket.  STARTTLS is never offered: the stream counts as
secure (SASL PLAIN allowed) when the WebSocket is TLS (``wss://``), or when a trusted proxy says it
terminated TLS (``X-Forwarded-Proto: https``).  ``/.well-known/host-meta`` (XRD) and
``/.well-known/host-meta.json`` list the endpoint (``urn:xmpp:alt-connections:websocket``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import ipaddress
import json
import logging
import ssl
import struct
from typing import Any, cast
from xml.sax.saxutils import quoteattr

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from ..settings import NodeSettings
from ..xmpp.websocket import WEBSOCKET, WebSocketFraming
from .bosh_server import ALT_CONNECTIONS_XBOSH, BoshEndpoint
from .c2s_server import LINGER_SECONDS, C2SConnection, C2SListener
from .web_root import add_web_root

__all__ = ["WebSocketListener", "WebSocketConnection", "WebSocketTransport", "ALT_CONNECTIONS_WS"]

log = logging.getLogger(__name__)

ALT_CONNECTIONS_WS = "urn:xmpp:alt-connections:websocket"
# Text messages as the bytes they came in (aiohttp ≥ 3.14): the stream's parser checks the UTF-8,
# no str to decode and encode again.
_AS_BYTES: dict[str, Any] = (
    {"decode_text": False} if "decode_text" in inspect.signature(web.WebSocketResponse).parameters else {})
XRD_NS = "http://docs.oasis-open.org/ns/xri/xrd-1.0"


class WebSocketTransport:
    """A :class:`~.c2s_server.C2STransport` on an aiohttp WebSocket.

    What the connection writes (joined elements, once per loop turn) goes out at once as one text
    frame per element, all of them in one write to the socket — one TLS record and one ``send()``,
    as over TCP — rather than one ``send_str()`` each (a record and a system call per element); the
    frames are RFC 6455's simplest (final, unmasked, no extension: the listener negotiates none), so
    aiohttp's own frames (pings, pongs, the close) slot in between whole ones.  Closing is aiohttp's
    closing handshake, in a task of its own (:attr:`closer`)."""

    def __init__(self, ws: web.WebSocketResponse, raw: asyncio.BaseTransport | None, peer: tuple[str, int],
                 framing: WebSocketFraming = WEBSOCKET) -> None:
        self.ws = ws
        # uvloop's transports are not asyncio.WriteTransport subclasses: test what is used
        self._raw = cast(asyncio.WriteTransport, raw) if hasattr(raw, "get_write_buffer_size") else None
        self._peer = peer
        self._framing = framing
        self._closing = False
        self.closer: asyncio.Task[None] | None = None
        self.readable = asyncio.Event()  # cleared while the connection pauses reading
        self.readable.set()

    def write(self, data: bytes) -> None:
        raw = self._raw
        if self._closing or raw is None or raw.is_closing():
            return
        messages = data.messages if isinstance(data, Messages) else self._framing.messages(data)
        raw.write(b"".join([_text_frame(m) for m in messages]))

    def close(self) -> None:
        """The WebSocket closing handshake, after what was written (already on the socket)."""
        if self._closing:
            return
        self._closing = True
        self.closer = asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        try:
            await self.ws.close()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the peer went away meanwhile
            log.debug("websocket %s: close failed: %s", self._peer[0], e)
            self.abort()

    def abort(self) -> None:
        self._closing = True
        if self.closer is not None and not self.closer.done() and asyncio.current_task() is not self.closer:
            self.closer.cancel()
        if self._raw is not None:
            self._raw.abort()
        self.readable.set()

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size() if self._raw is not None else 0

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        self.readable.clear()

    def resume_reading(self) -> None:
        self.readable.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        return self._raw.get_extra_info(name, default) if self._raw is not None else default


class Messages(bytes):
    """Joined elements (what the byte counters count) that are already cut into WebSocket
    messages: :meth:`WebSocketConnection._output` cuts each piece the stream wrote on its own,
    most of them one stanza, instead of searching the joined bytes for the elements again."""

    messages: list[bytes]


def _text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame (RFC 6455 §5.2: a server never masks)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class WebSocketConnection(C2SConnection):
    """A c2s session over a WebSocket: the TCP session logic, the WebSocket framing."""

    transport_name = "websocket"

    def __init__(self, listener: C2SListener, *, secure: bool) -> None:
        config = dataclasses.replace(listener.config, tls_available=False)  # no STARTTLS over WebSocket
        super().__init__(listener, direct_tls=secure, framing=WEBSOCKET, config=config)

    def _output(self) -> bytes:
        chunks = self.core.chunks_to_send()
        if not chunks:
            return b""
        messages = [m for chunk in chunks for m in WEBSOCKET.messages(chunk)]
        out = Messages(b"".join(messages))
        out.messages = messages
        return out

    def _linger(self) -> None:
        """The WebSocket closing handshake delivers what was queued: close right away (reading
        goes on until the peer's close frame), abort if the peer never answers."""
        t = self.transport
        if t is None or t.is_closing() or self._draining:
            return
        self._draining = True
        self._paused = dict.fromkeys(self._paused, False)
        t.resume_reading()
        t.close()
        self._loop.call_later(2 * LINGER_SECONDS, t.abort)


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
        log.info("XMPP over WebSocket on %s", self.public_url)

    async def stop(self) -> None:
        if self.runner is None:
            return
        if self.site is not None:
            await self.site.stop()  # no new connections
        if self.bosh is not None:
            await self.bosh.stop()
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
        settings = self.settings.websocket
        origins = settings.allowed_origins
        if origins and request.headers.get("Origin") not in origins:
            self.c2s.refused("websocket.allowed_origins")
            return web.Response(status=403, text="origin not allowed\n")
        # No permessage-deflate: WebSocketTransport writes plain frames (and Prosody and ejabberd
        # do not compress either).
        ws = web.WebSocketResponse(protocols=("xmpp",), heartbeat=settings.ping_interval or None,
                                   max_msg_size=self.settings.limits.max_stanza_size + 1024, compress=False,
                                   **_AS_BYTES)
        ready = ws.can_prepare(request)
        if not ready.ok:
            return web.Response(status=426, headers={"Upgrade": "websocket", "Sec-WebSocket-Protocol": "xmpp"},
                                text="a WebSocket upgrade with the 'xmpp' subprotocol is required\n")
        if ready.protocol != "xmpp":
            return web.Response(status=400, text="the 'xmpp' WebSocket subprotocol is required (RFC 7395)\n")
        ip, secure = self._client(request)
        await ws.prepare(request)
        transport = WebSocketTransport(ws, request.transport, (ip, 0))
        conn = WebSocketConnection(self.c2s, secure=secure)
        self.connections.add(conn)
        try:
            conn.connection_made(transport)  # type: ignore[arg-type]  # a C2STransport
            readable = transport.readable
            while not ws.closed:
                if not readable.is_set():
                    await readable.wait()
                msg = await ws.receive()
                if msg.type is WSMsgType.TEXT:
                    data = msg.data
                    conn.data_received(data if isinstance(data, bytes) else data.encode("utf-8"))
                elif msg.type is WSMsgType.BINARY:
                    # RFC 7395 §3.2: text messages only.
                    conn.kick("not-well-formed", "XMPP over WebSocket uses text messages", reason="error")
                else:  # CLOSE, CLOSING, CLOSED, ERROR
                    if isinstance(msg.data, WebSocketError) and msg.data.code == WSCloseCode.MESSAGE_TOO_BIG:
                        self.c2s.refused("limits.max_stanza_size")  # aiohttp's max_msg_size: closed with 1009
                    break
        finally:
            transport.close()  # (if the connection has not)
            if transport.closer is not None and not transport.closer.done():
                try:
                    await asyncio.wait_for(asyncio.shield(transport.closer), LINGER_SECONDS)
                except (TimeoutError, asyncio.CancelledError, Exception):
                    transport.abort()
            conn.connection_lost(None)
            self.connections.discard(conn)
        return ws

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
