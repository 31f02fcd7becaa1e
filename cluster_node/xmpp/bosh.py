"""XMPP over BOSH (XEP-0124, XEP-0206): one HTTP binding session as a sans-IO state machine.

A BOSH client holds its XMPP stream open over a series of HTTP POSTs, each a ``<body/>`` with a
request id (``rid``, one more per request) carrying zero or more stanzas; the server keeps up to
``hold`` of those requests unanswered and answers one as soon as it has something for the client,
or with an empty ``<body/>`` after ``wait`` seconds.  The stream itself is the c2s stream of every
other transport: :class:`BoshSession` turns the session creation request into the stream header,
``xmpp:restart='true'`` into a new header after SASL, each payload into one element and
``type='terminate'`` into the stream's close — all as RFC 7395 messages (``<open/>``, one element,
``<close/>``), so the c2s core parses them with the WebSocket framing's parser
(:class:`BoshFraming`).  What the stream writes comes back through :meth:`BoshSession.send`: its
``<open/>`` gives the session creation response's ``authid``, its elements become payloads, a
``<stream:error/>`` a ``remote-stream-error`` terminate and its ``<close/>`` the end.

What the session enforces (XEP-0124 §§7–14): request ids in order inside a window of ``requests``
(a request that arrives early waits for the ones before it; a replayed one gets its cached response
again, byte for byte; one too old to be cached, or beyond the window, ends the session with
``item-not-found``), at most ``requests`` requests outstanding (``policy-violation``), a polling
session's empty requests no closer than ``polling`` seconds, ``pause`` up to ``maxpause``, and
the end of the session after ``inactivity`` seconds without a request waiting.  The client's
``wait`` and ``hold`` are lowered to the operator's limits (XEP-0124 lets the server choose lower
values, never higher), so ``hold='1000'`` gets ``hold='1'``.

Errors are terminal binding conditions: ``<body type='terminate' condition='…'/>``, with HTTP
200 for a client that announced ``ver`` 1.6 or later and the legacy status (400, 403, 404) for
the others (XEP-0124 §17).  No sockets, no clock: time comes in as ``now``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from xml.parsers import expat
from xml.sax.saxutils import quoteattr

from . import ns
from .jid import InvalidJid, Jid
from .parser import _tag_end
from .websocket import FRAMING_NS, WebSocketFraming

__all__ = [
    "NS", "XBOSH", "BoshError", "Body", "parse_body", "BoshLimits", "BoshSession", "BoshFraming", "BOSH",
    "Reply", "Feed", "Ended", "Action", "terminate_body", "status_for", "MAX_RID", "TOO_DEEP",
]

NS = "http://jabber.org/protocol/httpbind"
XBOSH = "urn:xmpp:xbosh"
VERSION = (1, 11)  # the XEP-0124 version implemented
MAX_RID = 2 ** 53 - 1  # XEP-0124 §14.1: rids stay below 2^53
LEGACY_STATUS = {"bad-request": 400, "policy-violation": 403, "item-not-found": 404}
_SEP = "\x01"
_RESTART = f"{{{XBOSH}}}restart"
_XMPP_VERSION = f"{{{XBOSH}}}version"
_BODY = f"{{{NS}}}body"
TOO_DEEP = "elements nested too deep"  # the text of the bad-request for max_depth (the adapter counts it)


class BoshError(Exception):
    """A terminal binding condition (XEP-0124 §17.2)."""

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text


def status_for(condition: str, ver: tuple[int, int] | None) -> int:
    """HTTP status of a terminal error: 200 for clients of XEP-0124 1.6 or later, else the legacy
    one (bad-request 400, policy-violation 403, item-not-found 404)."""
    if ver is not None and ver >= (1, 6):
        return 200
    return LEGACY_STATUS.get(condition, 200)


def terminate_body(condition: str = "", payload: bytes = b"") -> bytes:
    """A ``<body type='terminate'/>`` (with ``condition`` and ``payload`` if given)."""
    cond = f" condition={quoteattr(condition)}" if condition else ""
    head = f"<body xmlns='{NS}' xmlns:stream='{ns.STREAM}' type='terminate'{cond}"
    if not payload:
        return f"{head}/>".encode()
    return f"{head}>".encode() + payload + b"</body>"


# -- parsing a request --------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """A client's ``<body/>``: its attributes (unqualified by name, qualified in Clark notation
    such as ``{urn:xmpp:xbosh}restart``) and its children, each a self-contained element."""

    attrs: Mapping[str, str]
    payloads: tuple[bytes, ...] = ()

    @property
    def sid(self) -> str | None:
        return self.attrs.get("sid")

    @property
    def rid(self) -> int:
        """The request id; ``bad-request`` if it is missing or not an integer below 2^53."""
        return _int(self.attrs.get("rid"), "rid", high=MAX_RID, required=True)  # type: ignore[return-value]

    @property
    def ver(self) -> tuple[int, int] | None:
        """The XEP-0124 version the client announced, if it is one."""
        return _version(self.attrs.get("ver"))

    @property
    def terminate(self) -> bool:
        return self.attrs.get("type") == "terminate"

    @property
    def restart(self) -> bool:
        return self.attrs.get(_RESTART) in ("true", "1")


def _int(value: str | None, name: str, *, high: int, required: bool = False) -> int | None:
    if value is None:
        if required:
            raise BoshError("bad-request", f"'{name}' is required")
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 16 or int(value) > high:
        raise BoshError("bad-request", f"'{name}' must be an integer from 0 to {high}")
    return int(value)


def _clark(name: str) -> tuple[str, str | None]:
    parts = name.split(_SEP)
    if len(parts) == 1:
        return parts[0], None
    return "{%s}%s" % (parts[0], parts[1]), parts[2] if len(parts) > 2 else None


def _restricted(what: str):  # type: ignore[no-untyped-def]
    def handler(*_args: object) -> None:
        raise BoshError("bad-request", f"{what} is not allowed")
    return handler


class _BodyParser:
    """One request's XML: the root must be ``<body xmlns='http://jabber.org/protocol/httpbind'/>``;
    no DTD, entity, comment or processing instruction; children cut out with the namespace
    declarations they inherit from the body (a child in the body's own namespace is taken as
    ``jabber:client``, as Prosody does: stanzas without ``xmlns`` are common)."""

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.max_depth = max_depth
        self.depth = 0
        self.attrs: dict[str, str] = {}
        self.root_decls: dict[str, str] = {}
        self.children: list[bytes] = []
        self._decls: list[tuple[str, str]] = []
        self._start = 0
        self._start_end = 0
        self._child_decls: set[str] = set()
        self._child_used: set[str] = set()

    def parse(self) -> Body:
        p = expat.ParserCreate("UTF-8", _SEP)
        p.namespace_prefixes = True
        p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        p.StartDoctypeDeclHandler = _restricted("a DTD")
        p.EntityDeclHandler = _restricted("an entity declaration")
        p.CommentHandler = _restricted("a comment")
        p.ProcessingInstructionHandler = _restricted("a processing instruction")
        p.ExternalEntityRefHandler = _restricted("an external entity")
        p.StartNamespaceDeclHandler = lambda prefix, uri: self._decls.append((prefix or "", uri))
        p.StartElementHandler = self._on_start
        p.EndElementHandler = self._on_end
        p.CharacterDataHandler = self._on_text
        self._p = p
        try:
            p.Parse(self.data, True)
        except expat.ExpatError as e:
            raise BoshError("bad-request", f"not well-formed XML ({expat.errors.messages[e.code]})") from None
        return Body(self.attrs, tuple(self.children))

    def _on_start(self, name: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        decls, self._decls = self._decls, []
        tag, prefix = _clark(name)
        if self.depth == 1:
            if tag != _BODY:
                raise BoshError("bad-request", f"the root must be <body xmlns='{NS}'/>")
            self.root_decls = dict(decls)
            self.attrs = {_clark(k)[0]: v for k, v in attrs.items()}
            return
        if self.depth - 1 > self.max_depth:
            raise BoshError("bad-request", TOO_DEEP)
        if self.depth == 2:
            self._start = self._p.CurrentByteIndex
            self._start_end = _tag_end(self.data, self._start)
            self._child_decls = set()
            self._child_used = set()
        self._child_decls.update(p for p, _ in decls)
        if prefix is not None:
            self._child_used.add(prefix)
        elif "" not in self._child_decls:
            self._child_used.add("")
        for key in attrs:
            _, attr_prefix = _clark(key)
            if attr_prefix is not None and attr_prefix != "xml":
                self._child_used.add(attr_prefix)

    def _on_end(self, name: str) -> None:
        self.depth -= 1
        if self.depth != 1:
            return
        data = self.data
        if data[self._start_end - 2] == 0x2F:  # '/>'
            end = self._start_end
        else:
            end = _tag_end(data, self._p.CurrentByteIndex)
        self.children.append(self._declared(data[self._start:end]))

    def _on_text(self, text: str) -> None:
        if self.depth == 1 and text.strip():
            raise BoshError("bad-request", "text directly inside <body/>")

    def _declared(self, element: bytes) -> bytes:
        """``element`` with the body's declarations it uses added to its start tag."""
        extra = []
        for prefix in sorted(self._child_used - self._child_decls):
            uri = self.root_decls.get(prefix)
            if uri is None or (prefix == "" and uri == NS):
                continue  # unbound (the c2s parser says so), or the body's namespace: jabber:client
            extra.append(f" xmlns={quoteattr(uri)}" if prefix == "" else f" xmlns:{prefix}={quoteattr(uri)}")
        if not extra:
            return element
        i = 1
        while i < len(element) and element[i] not in b" \t\r\n/>":
            i += 1
        return element[:i] + "".join(extra).encode() + element[i:]


def parse_body(data: bytes, *, max_depth: int = 32) -> Body:
    """Parse one request; :class:`BoshError` ``bad-request`` if it is not a BOSH ``<body/>``."""
    if not data.strip():
        raise BoshError("bad-request", "an empty request")
    return _BodyParser(data, max_depth).parse()


# -- the session ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoshLimits:
    """The operator's limits; a client's ``wait`` and ``hold`` are lowered to them."""

    max_wait: int = 60
    max_hold: int = 1
    inactivity: int = 60
    max_pause: int = 120
    polling: int = 2


@dataclass(frozen=True)
class Reply:
    """Answer the HTTP request ``request`` (the adapter's key) with ``status`` and ``body``."""

    request: Hashable
    status: int
    body: bytes


@dataclass(frozen=True)
class Feed:
    """Messages for the c2s stream (RFC 7395 framing), in order."""

    messages: tuple[bytes, ...]


@dataclass(frozen=True)
class Ended:
    """The session is over (``terminate``, ``closed`` by the server, ``inactivity``, ``error``):
    the adapter ends its c2s connection, if it has not ended already, and forgets the session.
    ``limit``: the :class:`BoshLimits` field the client broke, if that is why (the adapter counts it)."""

    reason: str
    limit: str = ""


Action = Reply | Feed | Ended


@dataclass
class _Held:
    """A request processed (or waiting for an earlier rid) and not answered yet."""

    rid: int
    requests: list[Hashable]
    since: float
    due: bool = False  # answer at the next flush even if empty (polling session, pause)
    body: Body | None = None  # an early request: not processed yet


class BoshFraming(WebSocketFraming):
    """The c2s stream's framing inside BOSH: the RFC 7395 one.  Its ``<open/>`` and ``<close/>``
    never reach the client: :meth:`BoshSession.send` turns them into ``<body/>`` attributes."""


BOSH = BoshFraming()


class BoshSession:
    """One BOSH session (see the module docstring).  ``request`` arguments are the adapter's keys
    for its waiting HTTP requests, returned in :class:`Reply` actions."""

    def __init__(self, sid: str, limits: BoshLimits, domains: list[str]) -> None:
        self.sid = sid
        self.limits = limits
        self.domains = domains
        self.domain = ""
        self.wait = limits.max_wait
        self.hold = limits.max_hold
        self.requests = self.hold + 1
        self.ver: tuple[int, int] | None = None
        self.lang: str | None = None
        self.acks = False
        self.first_rid = 0
        self.rid = 0  # the highest rid processed, in order
        self.stream_id = ""
        self.held: list[_Held] = []  # processed, unanswered, oldest first
        self.early: dict[int, _Held] = {}  # arrived before an earlier rid
        self.cache: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.closing: tuple[str, bytes] | None = None  # the stream ended: (condition, last payload)
        self.ended = False
        self.idle_since = 0.0
        self.pause_until: float | None = None
        self._last_empty: float | None = None  # polling: when the last empty request came
        self._sent_since_empty = True
        self._error = b""  # the stream error the stream wrote, before its <close/>

    # -- requests ----------------------------------------------------------------------------------

    def open(self, request: Hashable, body: Body, now: float) -> list[Action]:
        """The session creation request (no ``sid``): :class:`BoshError` if it cannot start."""
        rid = body.rid
        to = body.attrs.get("to", "")
        if not to:
            raise BoshError("improper-addressing", "'to' is required")
        try:
            domain = Jid.parse(to).domain
        except InvalidJid:
            raise BoshError("host-unknown", f"{to!r} is not a domain") from None
        if domain not in self.domains:
            raise BoshError("host-unknown", f"this server does not serve {to!r}")
        wait = _int(body.attrs.get("wait"), "wait", high=MAX_RID)
        hold = _int(body.attrs.get("hold"), "hold", high=MAX_RID)
        self.domain = domain
        self.ver = body.ver
        self.wait = min(wait if wait is not None else self.limits.max_wait, self.limits.max_wait)
        self.hold = min(hold if hold is not None else 1, self.limits.max_hold)
        self.requests = self.hold + 1
        self.acks = body.attrs.get("ack") == "1"
        lang = body.attrs.get(ns.XML_LANG)
        self.lang = lang if lang and len(lang) < 36 else None
        self.first_rid = self.rid = rid
        self.idle_since = now
        header = self._header(body)
        self.held.append(_Held(rid, [request], now, due=self.hold == 0))
        return [Feed((header, *body.payloads))]

    def receive(self, request: Hashable, body: Body, now: float) -> list[Action]:
        """A request of this session (``body.sid`` is ours)."""
        if self.ended:
            return [Reply(request, status_for("item-not-found", self.ver), terminate_body("item-not-found"))]
        try:
            rid = body.rid
        except BoshError as e:
            return self._fail(e.condition, request)
        if self.closing is not None:
            return self._answer_closing([request])
        if rid <= self.rid:
            return self._replayed(request, rid)
        if rid > self.rid + self.requests:
            return self._fail("item-not-found", request)  # beyond the window
        waiting = self.early.get(rid)
        if waiting is not None:  # an early request sent again
            waiting.requests = [*waiting.requests[-1:], request]
            return []
        outstanding = sum(1 for h in self.held if not h.due) + len(self.early) + 1
        if outstanding > self.requests:
            return self._fail("policy-violation", request, limit="max_hold")
        self.pause_until = None
        if rid > self.rid + 1:
            self.early[rid] = _Held(rid, [request], now, body=body)
            return []
        actions = self._process(_Held(rid, [request], now), body, now)
        while not self.ended and self.rid + 1 in self.early:
            held = self.early.pop(self.rid + 1)
            assert held.body is not None
            actions += self._process(held, held.body, now)
        return actions

    def _replayed(self, request: Hashable, rid: int) -> list[Action]:
        """XEP-0124 §14.3: a request sent again gets the response to the original."""
        cached = self.cache.get(rid)
        if cached is not None:
            return [Reply(request, *cached)]
        for held in self.held:
            if held.rid == rid:  # still waiting: both get the one response
                held.requests = [*held.requests[-1:], request]
                return []
        return self._fail("item-not-found", request)

    def _process(self, held: _Held, body: Body, now: float) -> list[Action]:
        """A request in rid order: its payloads go to the stream, the request waits."""
        self.rid = held.rid
        held.body = None
        held.since = now
        messages: list[bytes] = []
        if body.restart:
            messages.append(self._header(body))
        messages += body.payloads
        if body.terminate:
            messages.append(f"<close xmlns='{FRAMING_NS}'/>".encode())
            self.held.append(held)
            return [Feed(tuple(messages)), *self._end("terminate", terminate_body())]
        actions: list[Action] = [Feed(tuple(messages))] if messages else []
        pause = body.attrs.get("pause")
        if pause is not None:
            try:
                seconds = _int(pause, "pause", high=self.limits.max_pause)
            except BoshError:
                over = pause.isascii() and pause.isdigit()  # a number, over max_pause
                return actions + self._fail("policy-violation", *held.requests, limit="max_pause" if over else "")
            # XEP-0124 §10: every waiting request is answered now, the session sleeps.
            self.held.append(held)
            for h in self.held:
                h.due = True
            self.pause_until = now + (seconds or 0)
            return actions
        if self.hold == 0 and not messages:
            if self._last_empty is not None and now - self._last_empty < self.limits.polling \
                    and not self._sent_since_empty:
                return actions + self._fail("policy-violation", *held.requests, limit="polling")
            self._last_empty, self._sent_since_empty = now, False
        held.due = self.hold == 0
        self.held.append(held)
        while sum(1 for h in self.held if not h.due) > self.hold:
            actions += self._answer(self.held[0], now)  # XEP-0124 §12: the oldest goes back now
        return actions

    # -- what the stream writes ------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Bytes the c2s stream wrote: payloads for the client, or the stream's header and end."""
        if self.ended or self.closing is not None:
            return
        for message in BOSH.messages(data):
            if message.startswith(b"<open "):
                self.stream_id = ET.fromstring(message).get("id", "")
            elif message.startswith(b"<close "):
                self.closing = ("remote-stream-error" if self._error else "", self._error)
                return
            elif message.startswith(b"<stream:error"):
                self._error = message
            else:
                self.out.append(message)
                self.out_bytes += len(message)

    def close_stream(self) -> None:
        """The stream's adapter closed it (normally after writing its ``<close/>``)."""
        if not self.ended and self.closing is None:
            self.closing = ("", b"")

    def abort(self) -> list[Action]:
        """The adapter dropped the connection: what waits is answered with a terminate now."""
        if self.ended:
            return []
        if self.closing is None:
            self.closing = ("", b"")
        return self._answer_closing([])

    # -- time --------------------------------------------------------------------------------------

    def flush(self, now: float) -> list[Action]:
        """Answer what can be answered: the oldest waiting request when there is something to send,
        every request due, and all of them once the stream has ended."""
        if self.ended:
            return []
        if self.closing is not None:
            if self.held or self.early:
                return self._answer_closing([])
            return []
        actions: list[Action] = []
        if self.out and self.held:
            actions += self._answer(self.held[0], now)
        for held in [h for h in self.held if h.due]:
            actions += self._answer(held, now)
        return actions

    def tick(self, now: float) -> list[Action]:
        """Requests that waited ``wait`` seconds are answered; an early request whose predecessor
        never came ends the session (``item-not-found``); so does inactivity."""
        if self.ended:
            return []
        if any(now >= h.since + self.wait for h in self.early.values()):
            return self._fail("item-not-found")
        actions: list[Action] = []
        for held in [h for h in self.held if now >= h.since + self.wait]:
            actions += self._answer(held, now)
        if not self.held and not self.early and now >= self._idle_deadline():
            self.ended = True
            actions.append(Ended("inactivity"))
        return actions

    def deadline(self) -> float | None:
        """When :meth:`tick` has something to do next."""
        if self.ended:
            return None
        times = [h.since + self.wait for h in self.held] + [h.since + self.wait for h in self.early.values()]
        if not self.held and not self.early:
            times.append(self._idle_deadline())
        return min(times)

    def _idle_deadline(self) -> float:
        if self.pause_until is not None:
            return max(self.pause_until, self.idle_since + self.limits.inactivity)
        return self.idle_since + self.limits.inactivity

    # -- answers ---------------------------------------------------------------------------------------

    def _header(self, body: Body) -> bytes:
        """The RFC 7395 ``<open/>`` that starts (or restarts) the c2s stream."""
        attrs = {"to": self.domain, "version": body.attrs.get(_XMPP_VERSION, "1.0")}
        lang = body.attrs.get(ns.XML_LANG) or self.lang
        if lang and len(lang) < 36:
            attrs["xml:lang"] = lang
        text = "".join(f" {k}={quoteattr(v)}" for k, v in attrs.items())
        return f"<open xmlns='{FRAMING_NS}'{text}/>".encode()

    def _attrs(self, rid: int) -> str:
        """The ``<body/>`` attributes of the response to ``rid``: the session's on the first."""
        if rid != self.first_rid:
            return f" ack='{self.rid}'" if self.acks and self.rid != rid else ""
        ver = ""
        if self.ver is not None:
            v = min(self.ver, VERSION)
            ver = f" ver='{v[0]}.{v[1]}'"
        ack = f" ack='{rid}'" if self.acks else ""
        return (f" sid={quoteattr(self.sid)} wait='{self.wait}' requests='{self.requests}' hold='{self.hold}'"
                f" inactivity='{self.limits.inactivity}' polling='{self.limits.polling}'"
                f" maxpause='{self.limits.max_pause}'{ver} from={quoteattr(self.domain)}"
                f" authid={quoteattr(self.stream_id)}{ack} xmlns:xmpp='{XBOSH}' xmpp:version='1.0'"
                f" xmpp:restartlogic='true'")

    def _answer(self, held: _Held, now: float) -> list[Action]:
        """Answer ``held`` with everything queued for the client."""
        self.held.remove(held)
        payload = b"".join(self.out)
        self.out.clear()
        self.out_bytes = 0
        if payload:
            self._sent_since_empty = True
        head = f"<body xmlns='{NS}' xmlns:stream='{ns.STREAM}'{self._attrs(held.rid)}"
        body = (head + "/>").encode() if not payload else (head + ">").encode() + payload + b"</body>"
        self._remember(held.rid, 200, body)
        if not self.held:
            self.idle_since = now
        return [Reply(r, 200, body) for r in held.requests]

    def _remember(self, rid: int, status: int, body: bytes) -> None:
        self.cache[rid] = (status, body)
        while len(self.cache) > self.requests:
            self.cache.popitem(last=False)

    def _answer_closing(self, extra: list[Hashable]) -> list[Action]:
        """The stream ended: the oldest waiting request gets what is left and the terminate, the
        others (and ``extra``) a bare terminate; the session is over."""
        assert self.closing is not None
        condition, error = self.closing
        payload = b"".join(self.out) + error
        self.out.clear()
        self.out_bytes = 0
        return self._end("closed", terminate_body(condition, payload), extra)

    def _fail(self, condition: str, *requests: Hashable, limit: str = "") -> list[Action]:
        """A terminal binding error: every waiting request (and ``requests``) gets it."""
        body = terminate_body(condition)
        return self._end("error", body, list(requests), status=status_for(condition, self.ver),
                         condition=condition, limit=limit)

    def _end(self, reason: str, first: bytes, extra: list[Hashable] = (),  # type: ignore[assignment]
             *, status: int = 200, condition: str = "", limit: str = "") -> list[Action]:
        waiting = self.held + sorted(self.early.values(), key=lambda h: h.rid)
        self.held, self.early = [], {}
        actions: list[Action] = []
        rest = terminate_body(condition)
        for i, held in enumerate(waiting):
            actions += [Reply(r, status, first if i == 0 else rest) for r in held.requests]
        actions += [Reply(r, status, first if not waiting else rest) for r in extra]
        self.ended = True
        self.out.clear()
        self.out_bytes = 0
        actions.append(Ended(reason, limit))
        return actions


def _version(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    major, _, minor = value.partition(".")
    if not (major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()) \
            or len(major) > 4 or len(minor) > 4:
        return None
    return int(major), int(minor)

