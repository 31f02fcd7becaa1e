"""An external component's stream (XEP-0114, ``jabber:component:accept``) as a sans-IO machine.

A component (a MUC service, a gateway, a bot) connects, names the domain it serves in the stream
header, proves it knows that domain's shared secret with ``<handshake>`` = hex(SHA-1(stream id +
secret)), and from then on sends and receives stanzas for that domain.  Bytes in with
:meth:`ComponentStream.receive_data`, events out; bytes to write from :meth:`data_to_send`.

    state         input                                 next
    ------------  ------------------------------------  --------------------------------------
    WAIT_HEADER   header, to= a configured domain       WAIT_HANDSHAKE
    WAIT_HANDSHAKE <handshake> with the right digest    WAIT_ROUTE  → event HandshakeDone
    WAIT_ROUTE    route_taken() / route_refused()       ESTABLISHED / CLOSED (<conflict/>)
    ESTABLISHED   stanza from its own domain            ESTABLISHED → event ComponentStanza
    any           </stream:stream>, stream error        CLOSED      → event ComponentEnded
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from . import errors, ns
from .errors import StreamError
from .jid import InvalidJid, Jid
from .parser import Event, StanzaReceived, StreamClosed, StreamOpened, StreamParser
from .stanza import Stanza

__all__ = ["ComponentStream", "HandshakeDone", "ComponentStanza", "ComponentEnded", "handshake_digest", "ACCEPT"]

ACCEPT = "jabber:component:accept"
STANZAS = frozenset({"message", "presence", "iq"})


class State(enum.Enum):
    WAIT_HEADER = "wait-header"
    WAIT_HANDSHAKE = "wait-handshake"
    WAIT_ROUTE = "wait-route"
    ESTABLISHED = "established"
    CLOSED = "closed"


@dataclass(frozen=True)
class HandshakeDone:
    """The component proved its secret: the adapter claims the domain's route (or refuses)."""

    domain: str


@dataclass(frozen=True)
class ComponentStanza:
    stanza: Stanza


@dataclass(frozen=True)
class ComponentEnded:
    error: StreamError | None


ComponentEvent = HandshakeDone | ComponentStanza | ComponentEnded


def handshake_digest(stream_id: str, secret: str) -> str:
    return hashlib.sha1((stream_id + secret).encode()).hexdigest()


class ComponentStream:
    def __init__(self, secrets_by_domain: Mapping[str, str], *, max_stanza_size: int = 262_144,
                 max_depth: int = 32, new_id: Callable[[], str] = lambda: secrets.token_hex(8)) -> None:
        self.secrets = {d.lower(): s for d, s in secrets_by_domain.items()}
        self.state = State.WAIT_HEADER
        self.domain: str | None = None
        self.stream_id = ""
        self._new_id = new_id
        self._parser = StreamParser(max_stanza_size=max_stanza_size, max_depth=max_depth, content_ns=ACCEPT)
        self._out: list[bytes] = []
        self._events: list[ComponentEvent] = []
        self._queue: deque[Event] = deque()
        self._header_sent = False

    # -- the adapter's calls ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[ComponentEvent]:
        if self.state is State.CLOSED:
            return []
        try:
            self._queue.extend(self._parser.feed(data))
        except StreamError as e:
            self._fail(e)
            return self._take()
        self._process()
        return self._take()

    def route_taken(self) -> list[ComponentEvent]:
        """The domain is ours in the region: acknowledge the handshake."""
        if self.state is State.WAIT_ROUTE:
            self.state = State.ESTABLISHED
            self._out.append(b"<handshake/>")
            self._process()
        return self._take()

    def route_refused(self) -> list[ComponentEvent]:
        """Another connection already serves the domain (XEP-0114 §3.2: ``<conflict/>``)."""
        self._fail(errors.Conflict(f"{self.domain} is already connected"))
        return self._take()

    def send_stanza(self, stanza: Stanza) -> None:
        if self.state is State.ESTABLISHED:
            self._out.append(stanza.to_bytes())

    def close(self, error: StreamError | None = None) -> list[ComponentEvent]:
        if error is not None:
            self._fail(error)
        else:
            self._end(None)
        return self._take()

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    # -- machinery --------------------------------------------------------------------------------

    def _take(self) -> list[ComponentEvent]:
        ev, self._events = self._events, []
        return ev

    def _process(self) -> None:
        while self._queue and self.state not in (State.WAIT_ROUTE, State.CLOSED):
            event = self._queue.popleft()
            try:
                if isinstance(event, StreamOpened):
                    self._on_header(event)
                elif isinstance(event, StreamClosed):
                    self._end(None)
                elif isinstance(event, StanzaReceived):
                    self._on_element(event.stanza)
            except StreamError as e:
                self._fail(e)

    def _on_header(self, header: StreamOpened) -> None:
        if self.state is not State.WAIT_HEADER:
            raise errors.NotWellFormed("second stream header")
        to = header.attrs.get("to", "").lower()
        if header.name != f"{{{ns.STREAM}}}stream":
            raise errors.InvalidNamespace("expected a stream:stream header")
        if header.default_ns != ACCEPT:
            raise errors.InvalidNamespace(f"components speak {ACCEPT}")
        self.domain = to or None
        self._send_header(to)
        if to not in self.secrets:
            raise errors.HostUnknown(f"no component is configured for {to!r}")
        self.state = State.WAIT_HANDSHAKE

    def _on_element(self, stanza: Stanza) -> None:
        if self.state is State.WAIT_HANDSHAKE:
            if stanza.name != "handshake":
                raise errors.NotAuthorized("handshake first")
            given = (stanza.element.text or "").strip().lower()
            assert self.domain is not None
            if not hmac.compare_digest(given, handshake_digest(self.stream_id, self.secrets[self.domain])):
                raise errors.NotAuthorized("wrong handshake")
            self.state = State.WAIT_ROUTE
            self._events.append(HandshakeDone(self.domain))
            return
        if stanza.name not in STANZAS:
            raise errors.UnsupportedStanzaType(f"<{stanza.name}/> is not a stanza")
        try:
            sender = Jid.parse(stanza.from_ or "")
        except InvalidJid:
            raise errors.InvalidFrom("a component's stanzas need a valid 'from'") from None
        if sender.domain != self.domain:
            raise errors.InvalidFrom(f"{self.domain} may only send from its own domain")
        self._events.append(ComponentStanza(stanza))

    def _send_header(self, domain: str) -> None:
        self.stream_id = self._new_id()
        self._out.append(f"<?xml version='1.0'?><stream:stream xmlns='{ACCEPT}' xmlns:stream='{ns.STREAM}' "
                         f"id='{self.stream_id}' from={quoteattr(domain or 'invalid')}>".encode())
        self._header_sent = True

    def _fail(self, error: StreamError) -> None:
        if self.state is State.CLOSED:
            return
        if not self._header_sent:
            self._send_header(self.domain or "")
        self._out.append(error.to_xml())
        self._end(error)

    def _end(self, error: StreamError | None) -> None:
        if self.state is State.CLOSED:
            return
        if not self._header_sent:
            self._send_header(self.domain or "")
        self._out.append(b"</stream:stream>")
        self.state = State.CLOSED
        self._queue.clear()
        self._events.append(ComponentEnded(error))
