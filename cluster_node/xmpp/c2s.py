"""The client-to-server stream as a sans-IO state machine (RFC 6120 §4–§7).

Bytes go in with :meth:`C2SStream.receive_data`, which returns events for the adapter; bytes to
write come out of :meth:`C2SStream.data_to_send`.  Steps that need the outside world (upgrading the
socket to TLS, looking an account up, choosing a resource) are events the adapter answers by
calling :meth:`tls_started`, :meth:`provide_credentials`, :meth:`bind_done` or :meth:`bind_failed`;
input that arrives meanwhile waits in order.  No sockets, no asyncio, no clock.  The stream
machinery (parser, output, header, close, restart) is the shared :class:`~.stream.XmlStream`.

What is not RFC 6120 comes from modules through the adapter: the stream features of each stage
(``C2SConfig.features``), and top-level elements that are not stanzas (``ElementIn``: XEP-0198's
``<enable/>``, ``<r/>``, ``<a/>``, ``<resume/>``…), which the adapter hands to the module that
claims them or refuses as unsupported-stanza-type.

Transitions, all in :data:`TRANSITIONS` (one state machine, one place; this table is checked
against it by the unit tests):

    state            input                               next state
    ---------------  ----------------------------------  ---------------------------------
    WAIT_HEADER      stream header                       NEGOTIATING
    NEGOTIATING      <starttls/> (no TLS yet)            WAIT_TLS        → event StartTls
    WAIT_TLS         tls_started()                       WAIT_HEADER     (stream restart)
    NEGOTIATING      <auth/> needing an account          WAIT_CREDENTIALS → event CredentialsNeeded
    WAIT_CREDENTIALS provide_credentials()               NEGOTIATING     (SASL exchange goes on)
    NEGOTIATING      SASL success                        WAIT_HEADER     (stream restart, authenticated)
    NEGOTIATING      <iq><bind/></iq> (authenticated)    WAIT_BIND       → event BindRequested
    WAIT_BIND        bind_done(jid)                      ESTABLISHED     → event SessionEstablished
    WAIT_BIND        bind_failed(error)                  NEGOTIATING
    NEGOTIATING      other element (authenticated)       WAIT_ELEMENT    → event ElementIn
    WAIT_ELEMENT     element_done()                      NEGOTIATING
    WAIT_ELEMENT     resume_done(jid)                    ESTABLISHED     (XEP-0198 resumption)
    ESTABLISHED      stanza                              ESTABLISHED     → event StanzaIn
    ESTABLISHED      other element                       ESTABLISHED     → event ElementIn
    any              </stream:stream>, EOF, stream error CLOSED          → event StreamEnded
"""

from __future__ import annotations

import base64
import binascii
import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from . import errors, ns
from .errors import SaslFailure, StanzaError, StreamError
from .jid import InvalidJid, Jid
from .parser import StreamOpened
from .sasl import Challenge, NeedCredentials, ServerMechanism, Success, offered_mechanisms, server_mechanism
from .sasl.scram import ScramCredentials
from .stanza import Stanza
from .stream import Attr, XmlStream

__all__ = [
    "C2SConfig", "C2SStream", "State", "StartTls", "CredentialsNeeded", "Authenticated",
    "BindRequested", "SessionEstablished", "StanzaIn", "ElementIn", "RegistrationIq", "StreamEnded",
    "C2SEvent", "TRANSITIONS",
]

STANZA_NAMES = frozenset({"message", "presence", "iq"})
MAX_SASL_FAILURES = 3


class State(enum.Enum):
    WAIT_HEADER = "wait-header"
    NEGOTIATING = "negotiating"
    WAIT_TLS = "wait-tls"
    WAIT_CREDENTIALS = "wait-credentials"
    WAIT_BIND = "wait-bind"
    WAIT_ELEMENT = "wait-element"
    ESTABLISHED = "established"
    CLOSED = "closed"


# (state, input, next state): every move the stream may make; _go() refuses any other.
TRANSITIONS: tuple[tuple[State, str, State], ...] = (
    (State.WAIT_HEADER, "stream header", State.NEGOTIATING),
    (State.NEGOTIATING, "<starttls/> (no TLS yet)", State.WAIT_TLS),
    (State.WAIT_TLS, "tls_started()", State.WAIT_HEADER),
    (State.NEGOTIATING, "<auth/> needing an account", State.WAIT_CREDENTIALS),
    (State.WAIT_CREDENTIALS, "provide_credentials()", State.NEGOTIATING),
    (State.NEGOTIATING, "SASL success", State.WAIT_HEADER),
    (State.NEGOTIATING, "<iq><bind/></iq> (authenticated)", State.WAIT_BIND),
    (State.WAIT_BIND, "bind_done(jid)", State.ESTABLISHED),
    (State.WAIT_BIND, "bind_failed(error)", State.NEGOTIATING),
    (State.NEGOTIATING, "other element (authenticated)", State.WAIT_ELEMENT),
    (State.WAIT_ELEMENT, "element_done()", State.NEGOTIATING),
    (State.WAIT_ELEMENT, "resume_done(jid)", State.ESTABLISHED),
    (State.ESTABLISHED, "stanza", State.ESTABLISHED),
    (State.ESTABLISHED, "other element", State.ESTABLISHED),
)
_ALLOWED = frozenset((a, b) for a, _, b in TRANSITIONS)
_WAITING = frozenset({State.WAIT_TLS, State.WAIT_CREDENTIALS, State.WAIT_BIND, State.WAIT_ELEMENT})  # on the adapter


@dataclass(frozen=True)
class StartTls:
    """Write what is pending (``<proceed/>``), upgrade the socket, then call ``tls_started()``."""


@dataclass(frozen=True)
class CredentialsNeeded:
    """Look ``username`` up, then call ``provide_credentials(creds or None)``."""
    username: str
    hash_name: str


@dataclass(frozen=True)
class Authenticated:
    username: str


@dataclass(frozen=True)
class BindRequested:
    """Pick the full JID (resource conflicts are the session manager's policy), then ``bind_done``."""
    resource: str | None


@dataclass(frozen=True)
class SessionEstablished:
    jid: Jid


@dataclass(frozen=True)
class StanzaIn:
    """A stanza from the bound client, ``from`` stamped with its full JID (RFC 6120 §8.1.2.1)."""
    stanza: Stanza


@dataclass(frozen=True)
class ElementIn:
    """A top-level element that is not a stanza, for the module that claims it.  ``stage`` is
    ``post_auth`` (before bind: the stream waits for ``element_done``/``resume_done``) or
    ``established`` (nothing waits)."""
    element: Stanza
    stage: str


@dataclass(frozen=True)
class RegistrationIq:
    """XEP-0077 in-band registration before authentication; answer with ``send_stanza``."""
    stanza: Stanza


@dataclass(frozen=True)
class StreamEnded:
    """The stream is over: write what is pending and close the connection.  ``reason``: ``closed``
    (the client sent ``</stream:stream>``), ``lost`` (the connection ended without it), ``error``
    (we sent a stream error), ``local`` (we closed cleanly)."""
    error: StreamError | None
    reason: str = "local"


C2SEvent = (StartTls | CredentialsNeeded | Authenticated | BindRequested | SessionEstablished
            | StanzaIn | ElementIn | RegistrationIq | StreamEnded)
Features = Callable[[str, "C2SStream"], list[bytes]]  # (stage, stream) -> extra feature elements


@dataclass
class C2SConfig:
    domains: list[str]
    tls_available: bool = True
    tls_required: bool = True
    allow_plain: bool = True
    registration: bool = False
    max_stanza_size: int = 262_144
    max_depth: int = 32
    sasl_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    new_id: Callable[[], str] = field(default=lambda: secrets.token_hex(8))
    features: Features | None = None  # what modules offer, per stage (pre_tls, pre_auth, post_auth)


class C2SStream(XmlStream[C2SEvent]):
    """One client connection's XMPP stream, from the first byte to ``</stream:stream>``."""

    def __init__(self, config: C2SConfig, *, direct_tls: bool = False) -> None:
        super().__init__(ns.CLIENT, max_stanza_size=config.max_stanza_size, max_depth=config.max_depth)
        self.config = config
        self.state = State.WAIT_HEADER
        self.tls = direct_tls
        self.domain: str | None = None
        self.username: str | None = None
        self.jid: Jid | None = None
        self.stream_id = ""
        self.lang = "en"
        self._sasl: ServerMechanism | None = None
        self._sasl_failures = 0
        self._bind_iq_id: str | None = None
        self._early = b""

    # -- inputs -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[C2SEvent]:
        """Feed bytes read from the connection (``b""`` means the peer closed it)."""
        if self.state is State.CLOSED:
            return []
        if self.state is State.WAIT_TLS and data:
            self._early += data  # already decrypted by the TLS layer, waiting for tls_started()
            return []
        if not data:
            self._end(send_close=False, reason="lost")
            return self._take_events()
        self._receive(data)
        return self._take_events()

    def tls_started(self) -> list[C2SEvent]:
        """The socket now speaks TLS; bytes that arrived over it meanwhile are parsed now."""
        self._expect(State.WAIT_TLS)
        self.tls = True
        self._go(State.WAIT_HEADER)
        self._restart()
        early, self._early = self._early, b""
        if early:
            return self.receive_data(early)
        return self._take_events()

    def credentials_check(self, creds: ScramCredentials | None) -> Callable[[], bool] | None:
        """For a mechanism whose check is slow (PLAIN: PBKDF2), that check as a self-contained
        function the adapter may run elsewhere (a thread) and hand back to :meth:`provide_credentials`
        as ``checked``; None when there is nothing slow to do."""
        slow = getattr(self._sasl, "slow_check", None)
        return slow(creds) if self.state is State.WAIT_CREDENTIALS and slow is not None else None

    def provide_credentials(self, creds: ScramCredentials | None, *, checked: bool | None = None) -> list[C2SEvent]:
        self._expect(State.WAIT_CREDENTIALS)
        assert self._sasl is not None
        self._go(State.NEGOTIATING)
        try:
            if checked is not None and hasattr(self._sasl, "slow_check"):
                self._sasl_result(self._sasl.provide(creds, checked))  # type: ignore[call-arg]
            else:
                self._sasl_result(self._sasl.provide(creds))
        except SaslFailure as e:
            self._sasl_failed(e)
        self._process()
        return self._take_events()

    def bind_done(self, jid: Jid) -> list[C2SEvent]:
        self._expect(State.WAIT_BIND)
        self.jid = jid
        self._go(State.ESTABLISHED)
        self._write(f"<iq type='result' id={quoteattr(self._bind_iq_id or '')}>"
                    f"<bind xmlns='{ns.BIND}'><jid>{escape(str(jid))}</jid></bind></iq>".encode())
        self._events.append(SessionEstablished(jid))
        self._process()
        return self._take_events()

    def bind_failed(self, error: StanzaError) -> list[C2SEvent]:
        self._expect(State.WAIT_BIND)
        self._go(State.NEGOTIATING)
        self._write(f"<iq type='error' id={quoteattr(self._bind_iq_id or '')}>".encode()
                    + error.to_xml() + b"</iq>")
        self._process()
        return self._take_events()

    def element_done(self) -> list[C2SEvent]:
        """The module finished with a pre-bind ``ElementIn`` (what it wrote is queued already)."""
        self._expect(State.WAIT_ELEMENT)
        self._go(State.NEGOTIATING)
        self._process()
        return self._take_events()

    def resume_done(self, jid: Jid) -> list[C2SEvent]:
        """A pre-bind ``ElementIn`` resumed an existing session as ``jid`` (XEP-0198 §5): the
        stream is established without a bind; the module wrote ``<resumed/>``."""
        self._expect(State.WAIT_ELEMENT)
        self.jid = jid
        self._go(State.ESTABLISHED)
        self._process()
        return self._take_events()

    def send_stanza(self, stanza: Stanza) -> None:
        """Queue a stanza for the client (a no-op once the stream is closed)."""
        if self.state is not State.CLOSED:
            self._write(stanza.to_bytes())

    def send_bytes(self, data: bytes) -> None:
        """Queue an already-serialized stanza (relayed bytes are never re-serialized; a no-op
        once the stream is closed)."""
        self._write(data)

    def close(self, error: StreamError | None = None) -> list[C2SEvent]:
        """Close from our side: with a stream error, or a clean ``</stream:stream>``."""
        if error is not None:
            self._fail(error)
        else:
            self._end()
        return self._take_events()

    # -- machinery (the stream's own is XmlStream's) --------------------------------------------

    def _expect(self, state: State) -> None:
        if self.state is not state:
            raise RuntimeError(f"C2SStream: called in state {self.state}, expected {state}")

    def _go(self, new: State) -> None:
        """Every state change but the end goes through here, checked against TRANSITIONS."""
        if (self.state, new) not in _ALLOWED:
            raise RuntimeError(f"C2SStream: no transition {self.state.name} -> {new.name}")
        self.state = new

    def _paused(self) -> bool:
        return self.state in _WAITING

    def _restart(self) -> None:
        """RFC 6120 §4.3.3: after TLS and SASL both sides start a fresh stream; what was parsed
        of the old one is dropped.  ``header_sent`` stays set (unlike S2S): our next header is the
        answer to the client's, and a stream error before that one goes without a header."""
        super()._restart()
        self._input.clear()
        self.state = State.WAIT_HEADER  # from WAIT_TLS or after SASL success (both in TRANSITIONS)

    def _fail(self, error: StreamError) -> None:
        self._end(error, reason="error")

    def _end(self, error: StreamError | None = None, *, send_close: bool = True, reason: str = "local") -> None:
        """The stream is over (with ``error``: a stream error first); once, with StreamEnded."""
        if self._close(error, send_close=send_close):
            self.state = State.CLOSED
            self._events.append(StreamEnded(error, reason))

    def _on_close(self) -> None:
        self._end(reason="closed")

    def _header_attrs(self) -> list[Attr]:
        self.stream_id = self.config.new_id()  # a new id with each header
        return [("id", f"'{self.stream_id}'"), ("from", quoteattr(self.domain or self.config.domains[0])),
                ("version", "'1.0'"), ("xml:lang", quoteattr(self.lang))]

    # -- stream header and features (RFC 6120 §4.7, §4.3.2) ---------------------------------

    def _on_header(self, header: StreamOpened) -> None:
        if self.state is not State.WAIT_HEADER:
            raise errors.NotWellFormed("second stream header")
        lang = header.attrs.get(ns.XML_LANG)
        if lang and len(lang) < 36:
            self.lang = lang
        to = header.attrs.get("to")
        domain = None
        if to:
            try:
                domain = Jid.parse(to).domain
            except InvalidJid:
                domain = None
        # RFC 6120 §4.7.2: reply from the domain asked for, but only if we serve it.
        self.domain = domain if domain in self.config.domains else None
        self._send_header()
        if header.name != f"{{{ns.STREAM}}}stream":
            raise errors.InvalidNamespace()
        if self.domain is None:
            raise errors.HostUnknown(f"this server does not serve {to!r}" if to else "no 'to' address")
        version = header.attrs.get("version", "")
        if not version.startswith("1."):
            raise errors.UnsupportedVersion("version='1.0' is required")
        self._go(State.NEGOTIATING)
        self._write(self._features())

    @property
    def stage(self) -> str:
        """Which features apply now: ``pre_tls`` (no SASL offered yet), ``pre_auth``, ``post_auth``."""
        if self.username is not None:
            return "post_auth"
        return "pre_auth" if self.tls or not self.config.tls_required else "pre_tls"

    def _features(self) -> bytes:
        cfg = self.config
        parts: list[bytes] = []
        if not self.tls and cfg.tls_available:
            req = "<required/>" if cfg.tls_required else ""
            parts.append(f"<starttls xmlns='{ns.TLS}'>{req}</starttls>".encode())
        stage = self.stage
        if stage == "pre_auth":
            mechs = "".join(f"<mechanism>{m}</mechanism>" for m in offered_mechanisms(self.tls, cfg.allow_plain))
            parts.append(f"<mechanisms xmlns='{ns.SASL}'>{mechs}</mechanisms>".encode())
        elif stage == "post_auth":
            parts.append(f"<bind xmlns='{ns.BIND}'/><session xmlns='{ns.SESSION}'><optional/></session>".encode())
        if cfg.features is not None:
            parts.extend(cfg.features(stage, self))
        parts.append(f"<limits xmlns='{ns.LIMITS}'><max-bytes>{cfg.max_stanza_size}</max-bytes></limits>".encode())
        return b"<stream:features>" + b"".join(parts) + b"</stream:features>"

    # -- first-level elements -------------------------------------------------------------------

    def _on_element(self, stanza: Stanza) -> None:
        namespace, name = stanza.namespace, stanza.name
        if self.state is State.ESTABLISHED:
            if namespace == ns.CLIENT and name in STANZA_NAMES:
                self._on_stanza(stanza)
                return
            if namespace != ns.CLIENT:
                self._events.append(ElementIn(stanza, "established"))
                return
            raise errors.UnsupportedStanzaType(f"<{name}/> in {namespace}")
        if namespace == ns.TLS and name == "starttls":
            self._on_starttls()
        elif namespace == ns.SASL:
            self._on_sasl(stanza)
        elif namespace == ns.CLIENT and name == "iq" and self.username is not None:
            self._on_pre_bind_iq(stanza)
        elif (namespace == ns.CLIENT and name == "iq" and self.username is None
              and self.config.registration and (self.tls or not self.config.tls_required)
              and stanza.child(ns.REGISTER) is not None):
            self._events.append(RegistrationIq(stanza))
        elif namespace == ns.CLIENT and name in STANZA_NAMES:
            raise errors.NotAuthorized("authenticate and bind a resource first")
        elif self.username is not None and namespace not in (ns.CLIENT, ns.STREAM):
            self._go(State.WAIT_ELEMENT)
            self._events.append(ElementIn(stanza, "post_auth"))
        else:
            raise errors.UnsupportedStanzaType(f"<{name}/> in {namespace}")

    def _on_starttls(self) -> None:
        if self.tls or not self.config.tls_available or self.username is not None:
            self._write(f"<failure xmlns='{ns.TLS}'/>".encode())
            self._end()
            return
        if self._input or self.parser.bytes_buffered:
            # RFC 6120 §5.4.3.3: nothing may follow <starttls/> in clear; pipelined data is an
            # injection attempt (CVE-2011-0411 class).
            raise errors.PolicyViolation("data after <starttls/>")
        self._write(f"<proceed xmlns='{ns.TLS}'/>".encode())
        self._go(State.WAIT_TLS)
        self._events.append(StartTls())

    # -- SASL (RFC 6120 §6) -----------------------------------------------------------------

    def _on_sasl(self, stanza: Stanza) -> None:
        name = stanza.name
        try:
            if self.username is not None:
                raise errors.NotWellFormed("already authenticated")  # RFC 6120 §6.4.6: no second SASL
            if not self.tls and self.config.tls_required:
                raise SaslFailure("encryption-required", "negotiate TLS first")
            if name == "auth":
                self._sasl = server_mechanism(stanza.element.get("mechanism", ""),
                                              domain=self.domain or "", secret=self.config.sasl_secret,
                                              tls=self.tls)
                if self._sasl.name == "PLAIN" and not self.config.allow_plain:
                    raise SaslFailure("invalid-mechanism")
                self._sasl_result(self._sasl.start(_b64_payload(stanza, initial=True)))
            elif name == "response":
                if self._sasl is None:
                    raise SaslFailure("malformed-request", "no exchange in progress")
                self._sasl_result(self._sasl.respond(_b64_payload(stanza, initial=False) or b""))
            elif name == "abort":
                self._sasl = None
                raise SaslFailure("aborted")
            else:
                raise errors.UnsupportedStanzaType(f"<{name}/> in {ns.SASL}")
        except SaslFailure as e:
            self._sasl_failed(e)

    def _sasl_result(self, step: Challenge | Success | NeedCredentials) -> None:
        if isinstance(step, Challenge):
            self._write(f"<challenge xmlns='{ns.SASL}'>{_b64(step.data)}</challenge>".encode())
        elif isinstance(step, NeedCredentials):
            self._go(State.WAIT_CREDENTIALS)
            hash_name = "sha1" if self._sasl is not None and self._sasl.name == "SCRAM-SHA-1" else "sha256"
            self._events.append(CredentialsNeeded(step.username, hash_name))
        else:
            self.username = step.username
            self._sasl = None
            self._write(f"<success xmlns='{ns.SASL}'>{_b64(step.data) if step.data else ''}</success>"
                        .encode())
            self._events.append(Authenticated(step.username))
            self._go(State.WAIT_HEADER)
            self._restart()

    def _sasl_failed(self, failure: SaslFailure) -> None:
        self._sasl = None
        self._sasl_failures += 1
        self._write(failure.to_xml())
        if self._sasl_failures >= MAX_SASL_FAILURES:
            self._fail(errors.PolicyViolation("too many authentication failures"))

    # -- resource binding (RFC 6120 §7) -----------------------------------------------------

    def _on_pre_bind_iq(self, stanza: Stanza) -> None:
        iq_id = stanza.id or ""
        bind = stanza.child(ns.BIND, "bind")
        if stanza.type == "set" and bind is not None:
            res_el = bind.find(f"{{{ns.BIND}}}resource")
            resource = (res_el.text or "").strip() if res_el is not None else ""
            self._bind_iq_id = iq_id
            self._go(State.WAIT_BIND)
            self._events.append(BindRequested(resource or None))
        elif stanza.type == "set" and stanza.child(ns.SESSION, "session") is not None:
            self._write(f"<iq type='result' id={quoteattr(iq_id)}/>".encode())  # RFC 3921 legacy no-op
        else:
            raise errors.NotAuthorized("bind a resource first")

    # -- stanzas of an established session ----------------------------------------------------

    def _on_stanza(self, stanza: Stanza) -> None:
        assert self.jid is not None
        if (stanza.name == "iq" and stanza.type == "set" and stanza.to in (None, self.jid.domain)
                and stanza.child(ns.SESSION, "session") is not None):
            # RFC 3921 session establishment, advertised as optional: clients that still send it
            # (after bind, as RFC 3921 has it) get the no-op result, not service-unavailable.
            self._write(f"<iq type='result' id={quoteattr(stanza.id or '')}/>".encode())
            return
        full = str(self.jid)
        sender = stanza.from_
        if sender is not None and sender != full:
            try:
                claimed = Jid.parse(sender)
            except InvalidJid:
                raise errors.InvalidFrom(f"'from' {sender!r} is not a valid JID") from None
            if claimed != self.jid and claimed != self.jid.bare:
                raise errors.InvalidFrom(f"'from' {sender!r} is not this stream's JID")
        if sender != full:
            stanza = stanza.with_attrs(from_=full)
        self._events.append(StanzaIn(stanza))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64_payload(stanza: Stanza, *, initial: bool) -> bytes | None:
    """RFC 6120 §6.4.2: no text = no initial response, '=' = an empty one."""
    text = (stanza.element.text or "").strip()
    if not text:
        return None if initial else b""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SaslFailure("incorrect-encoding") from None
