"""An external component's stream (XEP-0114, ``jabber:component:accept``) as a sans-IO machine.

A component (a MUC service, a gateway, a bot) connects, names the domain it serves in the stream
header, proves it knows that domain's shared secret with ``<handshake>`` = hex(SHA-1(stream id +
secret)), and from then on sends and receives stanzas for that domain.  Bytes in with
:meth:`ComponentStream.receive_data`, events out; bytes to write from :meth:`data_to_send`.  The
stream machinery is the shared :class:`~.stream.XmlStream`.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from . import errors, ns
from .errors import StreamError
from .jid import InvalidJid, Jid
from .parser import StreamOpened
from .stanza import Stanza
from .stream import Attr, XmlStream

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


class ComponentStream(XmlStream[ComponentEvent]):
    def __init__(self, secrets_by_domain: Mapping[str, str], *, max_stanza_size: int = 262_144,
                 max_depth: int = 32, new_id: Callable[[], str] = lambda: secrets.token_hex(8)) -> None:
        super().__init__(ACCEPT, max_stanza_size=max_stanza_size, max_depth=max_depth)
        self.secrets = {d.lower(): s for d, s in secrets_by_domain.items()}
        self.state = State.WAIT_HEADER
        self.domain: str | None = None
        self.stream_id = ""
        self._new_id = new_id

    # -- the adapter's calls ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[ComponentEvent]:
        if self.state is State.CLOSED:
            return []
        self._receive(data)
        return self._take_events()

    def route_taken(self) -> list[ComponentEvent]:
        """The domain is ours in the region: acknowledge the handshake."""
        if self.state is State.WAIT_ROUTE:
            self.state = State.ESTABLISHED
            self._write(b"<handshake/>")
            self._process()
        return self._take_events()

    def route_refused(self) -> list[ComponentEvent]:
        """Another connection already serves the domain (XEP-0114 §3.2: ``<conflict/>``)."""
        self._fail(errors.Conflict(f"{self.domain} is already connected"))
        return self._take_events()

    def send_stanza(self, stanza: Stanza) -> None:
        if self.state is State.ESTABLISHED:
            self._write(stanza.to_bytes())

    def close(self, error: StreamError | None = None) -> list[ComponentEvent]:
        self._end(error)
        return self._take_events()

    # -- machinery (the stream's own is XmlStream's) ------------------------------------------------

    def _paused(self) -> bool:
        return self.state is State.WAIT_ROUTE

    def _fail(self, error: StreamError) -> None:
        self._end(error)

    def _end(self, error: StreamError | None = None) -> None:
        """The stream is over (with ``error``: a stream error first); once, with ComponentEnded."""
        if self._close(error):
            self.state = State.CLOSED
            self._events.append(ComponentEnded(error))

    def _on_close(self) -> None:
        self._end()

    def _header_attrs(self) -> list[Attr]:
        self.stream_id = self._new_id()
        return [("id", f"'{self.stream_id}'"), ("from", quoteattr(self.domain or "invalid"))]

    def _on_header(self, header: StreamOpened) -> None:
        if self.state is not State.WAIT_HEADER:
            raise errors.NotWellFormed("second stream header")
        to = header.attrs.get("to", "").lower()
        if header.name != f"{{{ns.STREAM}}}stream":
            raise errors.InvalidNamespace("expected a stream:stream header")
        if header.default_ns != ACCEPT:
            raise errors.InvalidNamespace(f"components speak {ACCEPT}")
        self.domain = to or None
        self._send_header()
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
