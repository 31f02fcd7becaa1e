"""XMPP over BOSH (XEP-0124, XEP-0206) at ``/http-bind`` on the node's web listener.

Each BOSH session is a :class:`BoshBinding`: the sans-IO :class:`~..xmpp.bosh.BoshSession` (request
ids, holding, waiting, inactivity), a :class:`BoshConnection` — the c2s session of every other
transport (SASL, SASL2, Bind 2, stream management, CSI, every module's hooks), framed as RFC 7395
messages (``<open/>``, one element, ``<close/>``) — and the HTTP requests it holds, as futures the
aiohttp handlers wait on.  The connection writes through a :class:`BoshTransport`, whose bytes
become the payloads of the next response.

A session lives on the node that created it, and its id says which: ``<random>.<node name>``.
Behind a round-robin load balancer a request may reach another node of the region; that node
forwards the request body to the owner over the cluster (the ``bosh.request`` request/answer
call) and returns the owner's answer, so no stickiness is needed.  A session whose owner is gone
is ``item-not-found`` (a client with XEP-0198 resumes on a new session).

Requests from a browser are checked against the allowed origins (``[bosh] allowed_origins``, else
``[websocket]``'s; ``OPTIONS`` answers the CORS preflight).  Bodies over ``max_body_size`` get 413,
bodies that are not a BOSH ``<body/>`` 400, unknown sessions 404 (XEP-0124's legacy statuses, each
with a ``<body type='terminate' condition=…/>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from ..xmpp.bosh import (
    BOSH,
    TOO_DEEP,
    Action,
    Body,
    BoshError,
    BoshLimits,
    BoshSession,
    Ended,
    Feed,
    Reply,
    parse_body,
    status_for,
    terminate_body,
)
from ..xmpp.c2s import State
from .c2s_server import LINGER_SECONDS, C2SConnection, C2SListener

if TYPE_CHECKING:
    from .websocket_server import WebSocketListener

__all__ = ["BoshEndpoint", "BoshBinding", "BoshConnection", "BoshTransport", "ALT_CONNECTIONS_XBOSH", "FORWARD_CALL"]

log = logging.getLogger(__name__)

ALT_CONNECTIONS_XBOSH = "urn:xmpp:alt-connections:xbosh"
FORWARD_CALL = "bosh.request"  # {"body": request text} → {"status": int, "body": response text}
CONTENT_TYPE = "text/xml"
FORWARD_GRACE = 15.0  # seconds a forwarded request may take beyond the longest wait


Answer = tuple[int, bytes]


class BoshTransport:
    """The :class:`~.c2s_server.C2STransport` of a BOSH session: what the connection writes is
    queued in the session for the next response; pausing stops feeding it the client's input."""

    def __init__(self, binding: BoshBinding, peer: tuple[str, int]) -> None:
        self.binding = binding
        self._peer = peer
        self.paused = False
        self.closed = False

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.binding.session.send(data)
            self.binding.flush_soon()

    def close(self) -> None:
        self.binding.stream_closed()

    def abort(self) -> None:
        self.binding.abort()

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return self.binding.session.out_bytes

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        self.binding.feed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default


class BoshConnection(C2SConnection):
    """A c2s session over BOSH: the TCP session logic, the RFC 7395 framing, no STARTTLS."""

    transport_name = "bosh"

    def __init__(self, listener: C2SListener, *, secure: bool) -> None:
        config = dataclasses.replace(listener.config, tls_available=False)
        super().__init__(listener, direct_tls=secure, framing=BOSH, config=config)

    def _linger(self) -> None:
        """The session delivers what is queued with its terminate response: close at once."""
        t = self.transport
        if t is None or t.is_closing() or self._draining:
            return
        self._draining = True
        t.close()

    def keepalive(self) -> None:
        """A request came: the client is there even if it sends no stanza (its empty requests are
        BOSH's keepalives), so the c2s idle timer starts again."""
        if self.core.state is State.ESTABLISHED and not self._closed and not self._draining:
            self._arm_timer(self.listener.settings.c2s.idle_timeout)


class BoshBinding:
    """One BOSH session held by this node (see the module docstring)."""

    def __init__(self, endpoint: BoshEndpoint, sid: str, ip: str, secure: bool) -> None:
        self.endpoint = endpoint
        self.sid = sid
        self.session = BoshSession(sid, endpoint.limits, endpoint.settings.domains)
        self.loop = asyncio.get_running_loop()
        self.waiting: dict[Hashable, asyncio.Future[Answer]] = {}
        self.inbox: deque[bytes] = deque()
        self.transport = BoshTransport(self, (ip, 0))
        self.conn = BoshConnection(endpoint.c2s, secure=secure)
        self.ended = False
        self._lost = False
        self._keys = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._flush_pending = False
        # Set while the inbox is empty: a request waits for it while the connection has input it
        # has not read (its shaper paused it), as a TCP client's writes wait on a full socket.
        self._drained = asyncio.Event()
        self._drained.set()

    # -- requests ----------------------------------------------------------------------------------

    async def start(self, body: Body) -> Answer:
        """The session creation request; :class:`BoshError` if the session cannot start."""
        key, future = self._waiter()
        try:
            actions = self.session.open(key, body, self.loop.time())
        except BoshError:
            self.waiting.pop(key, None)
            raise
        self.endpoint.sessions[self.sid] = self
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]  # a C2STransport
        self._apply(actions)
        self.flush_soon()
        return await self._answer(key, future)

    async def request(self, body: Body) -> Answer:
        if self.inbox and not self.ended:
            # Back-pressure: the connection stopped reading (over its byte shaper, or an answer
            # held back by the auth throttle).  This request waits until what came before it has
            # been read — at most shaper_max_throttle, past which a sender still over the rate is
            # flooding and the connection ends the stream — so a fast client is slowed, and the
            # node holds at most ``requests`` bodies of its input, not all it can send.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self.endpoint.settings.limits.shaper_max_throttle)
        key, future = self._waiter()
        self.conn.keepalive()
        self._apply(self.session.receive(key, body, self.loop.time()))
        self.flush_soon()
        return await self._answer(key, future)

    def _waiter(self) -> tuple[Hashable, asyncio.Future[Answer]]:
        key = next(self._keys)
        future: asyncio.Future[Answer] = self.loop.create_future()
        self.waiting[key] = future
        return key, future

    async def _answer(self, key: Hashable, future: asyncio.Future[Answer]) -> Answer:
        try:
            return await future
        finally:
            self.waiting.pop(key, None)

    # -- the session's actions ------------------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Reply):
                future = self.waiting.get(action.request)
                if future is not None and not future.done():
                    future.set_result((action.status, action.body))
            elif isinstance(action, Feed):
                self.inbox.extend(action.messages)
                self.feed()
            elif isinstance(action, Ended):
                if action.limit:
                    self.endpoint.services.refused(f"bosh.{action.limit}")
                self.end(action.reason)
        self._schedule()

    def feed(self) -> None:
        """Hand the client's input to the connection, one message at a time, unless it paused."""
        while self.inbox and not self.transport.paused and not self._lost:
            self.conn.data_received(self.inbox.popleft())
        if self.inbox and not self._lost:
            self._drained.clear()
        else:
            self._drained.set()

    def flush_soon(self) -> None:
        """Answer on the next loop turn: whatever the connection writes meanwhile goes in one body."""
        if not self._flush_pending and not self.ended:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if not self.ended:
            self._apply(self.session.flush(self.loop.time()))

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = None if self.ended else self.session.deadline()
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._apply(self.session.tick(self.loop.time()))

    # -- the end ---------------------------------------------------------------------------------------

    def stream_closed(self) -> None:
        """The connection closed its stream: its terminate goes to the client with the next
        response; the connection is gone now, as a closed socket would be."""
        self.transport.closed = True
        self.session.close_stream()
        self.flush_soon()
        self.loop.call_soon(self._lose)

    def abort(self) -> None:
        self.transport.closed = True
        if not self.ended:
            self._apply(self.session.abort())
        self.loop.call_soon(self._lose)

    def end(self, reason: str) -> None:
        """Forget the session (its core said it is over, or the node stops) and end its connection."""
        if self.ended:
            return
        self.ended = True
        self._drained.set()  # nothing waits for input that will not be read
        if reason == "inactivity":
            log.info("bosh %s: no request for %d s; ending the session", self.conn.ip, self.session.limits.inactivity)
        if self.endpoint.sessions.get(self.sid) is self:
            del self.endpoint.sessions[self.sid]
        condition = "system-shutdown" if reason == "shutdown" else "item-not-found"
        for future in self.waiting.values():
            if not future.done():
                future.set_result((200, terminate_body(condition)))
        self.transport.closed = True
        self.loop.call_soon(self._lose)  # not from inside the connection's own call that ended it

    def _lose(self) -> None:
        if not self._lost:
            self._lost = True
            self.inbox.clear()
            self._drained.set()
            self.conn.connection_lost(None)


class BoshEndpoint:
    """The ``/http-bind`` routes of the web listener, and the BOSH sessions this node holds."""

    def __init__(self, web_listener: WebSocketListener) -> None:
        self.web = web_listener
        self.settings = web_listener.settings
        self.c2s = web_listener.c2s
        self.services = web_listener.c2s.sessions.s
        b = self.settings.bosh
        self.limits = BoshLimits(max_wait=b.max_wait, max_hold=b.max_hold, inactivity=b.inactivity,
                                 max_pause=b.max_pause, polling=b.polling)
        self.sessions: dict[str, BoshBinding] = {}
        self._stopping = asyncio.Event()
        self.services.call_handlers[FORWARD_CALL] = self._forwarded

    def add_routes(self, app: web.Application) -> None:
        path = self.settings.bosh.path
        app.router.add_post(path, self._post)
        app.router.add_route("OPTIONS", path, self._options)
        app.router.add_get(path, self._get)

    @property
    def public_url(self) -> str:
        b = self.settings.bosh
        if b.public_url:
            return b.public_url
        ws = urlsplit(self.web.public_url)
        scheme = {"ws": "http", "wss": "https"}.get(ws.scheme, ws.scheme)
        return urlunsplit((scheme, ws.netloc, b.path, "", ""))

    async def stop(self) -> None:
        """Every session gets ``system-shutdown``; what still waits after a moment is dropped."""
        self._stopping.set()
        for binding in list(self.sessions.values()):
            binding.conn.kick("system-shutdown", reason="shutdown")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_SECONDS
        while any(b.waiting for b in self.sessions.values()) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for binding in list(self.sessions.values()):
            binding.end("shutdown")
        if self.services.call_handlers.get(FORWARD_CALL) == self._forwarded:
            del self.services.call_handlers[FORWARD_CALL]

    # -- HTTP ----------------------------------------------------------------------------------------

    def _cors(self, request: web.Request) -> dict[str, str] | None:
        """The CORS headers for this request's origin; None if the origin is not allowed (counted
        as a refusal by the setting that did not allow it)."""
        allowed = self.settings.bosh.allowed_origins or self.settings.websocket.allowed_origins
        if not allowed:
            return {"Access-Control-Allow-Origin": "*"}
        origin = request.headers.get("Origin")
        if origin in allowed:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        self.services.refused("bosh.allowed_origins" if self.settings.bosh.allowed_origins
                              else "websocket.allowed_origins")
        return None

    async def _options(self, request: web.Request) -> web.Response:
        headers = self._cors(request)
        if headers is None:
            return web.Response(status=403, text="origin not allowed\n")
        headers.update({"Access-Control-Allow-Methods": "POST, OPTIONS",
                        "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "86400"})
        return web.Response(status=200, headers=headers)

    async def _get(self, request: web.Request) -> web.Response:
        return web.Response(status=405, headers={"Allow": "POST, OPTIONS"},
                            text="XMPP over BOSH (XEP-0124, XEP-0206): POST a <body/> here.\n")

    async def _post(self, request: web.Request) -> web.Response:
        headers = self._cors(request)
        if headers is None:
            return web.Response(status=403, text="origin not allowed\n")
        data = await self._read(request)
        if data is None:
            self.services.refused("bosh.max_body_size")
            status, out = 413, terminate_body("policy-violation")
        else:
            try:
                body = parse_body(data, max_depth=self.settings.limits.max_depth)
            except BoshError as e:
                if e.text == TOO_DEEP:
                    self.services.refused("limits.max_depth")
                log.debug("bosh %s: %s", request.remote, e)
                status, out = 400, terminate_body(e.condition)
            else:
                ip, secure = self.web._client(request)
                status, out = await self.handle(data, body, ip, secure)
        return web.Response(status=status, body=out, content_type=CONTENT_TYPE, charset="utf-8", headers=headers)

    async def _read(self, request: web.Request) -> bytes | None:
        """The request body, or None if it is larger than ``max_body_size``."""
        limit = self.settings.bosh.max_body_size
        if request.content_length is not None and request.content_length > limit:
            return None
        buf = bytearray()
        async for chunk in request.content.iter_any():
            buf += chunk
            if len(buf) > limit:
                return None
        return bytes(buf)

    # -- sessions ------------------------------------------------------------------------------------

    async def handle(self, data: bytes, body: Body, ip: str, secure: bool) -> Answer:
        """One parsed request: a new session, one of ours, or one to forward to its owner."""
        sid = body.sid
        if sid is None:
            return await self._create(body, ip, secure)
        owner = _owner(sid)
        if owner and owner != self.services.node:
            return await self._forward(owner, data, body)
        binding = self.sessions.get(sid)
        if binding is None:
            return status_for("item-not-found", body.ver), terminate_body("item-not-found")
        return await binding.request(body)

    async def _create(self, body: Body, ip: str, secure: bool) -> Answer:
        if self._stopping.is_set():
            return 200, terminate_body("system-shutdown")
        if len(self.sessions) >= self.settings.bosh.max_sessions:
            self.services.refused("bosh.max_sessions")
            log.warning("bosh %s: refused a session, %d are open (bosh.max_sessions)", ip, len(self.sessions))
            return status_for("policy-violation", body.ver), terminate_body("policy-violation")
        sid = f"{secrets.token_urlsafe(18)}.{self.services.node}"
        binding = BoshBinding(self, sid, ip, secure)
        try:
            return await binding.start(body)
        except BoshError as e:
            log.debug("bosh %s: session refused: %s", ip, e)
            return status_for(e.condition, body.ver), terminate_body(e.condition)

    async def _forward(self, owner: str, data: bytes, body: Body) -> Answer:
        """A request for a session another member holds: it answers, we relay the answer."""
        calls = self.services.calls
        if calls is None:
            return status_for("item-not-found", body.ver), terminate_body("item-not-found")
        call = asyncio.ensure_future(calls.request(owner, FORWARD_CALL, {"body": data.decode("utf-8")},
                                                   timeout=self.limits.max_wait + FORWARD_GRACE))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((call, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not call.done():
            call.cancel()
            return 200, terminate_body("system-shutdown")
        try:
            result = call.result()
            status, text = result["status"], result["body"]
            if not isinstance(status, int) or not isinstance(text, str):
                raise ValueError("a malformed answer")
        except (LookupError, TimeoutError, ValueError, TypeError) as e:
            log.info("bosh: forwarding a request to %s failed: %s", owner, e)
            return status_for("item-not-found", body.ver), terminate_body("item-not-found")
        return status, text.encode("utf-8")

    async def _forwarded(self, caller: str, args: dict[str, Any]) -> dict[str, Any]:
        """A request another member received for one of our sessions."""
        text = args.get("body")
        if not isinstance(text, str):
            raise ValueError("'body' must be a string")
        data = text.encode("utf-8")
        try:
            body = parse_body(data, max_depth=self.settings.limits.max_depth)
        except BoshError as e:
            return {"status": 400, "body": terminate_body(e.condition).decode()}
        binding = self.sessions.get(body.sid or "")
        if binding is None:
            status, out = status_for("item-not-found", body.ver), terminate_body("item-not-found")
        else:
            status, out = await binding.request(body)
        return {"status": status, "body": out.decode("utf-8")}


def _owner(sid: str) -> str:
    """The member a session id names (``<random>.<node name>``); empty if it names none."""
    _, dot, node = sid.partition(".")
    return node if dot else ""
