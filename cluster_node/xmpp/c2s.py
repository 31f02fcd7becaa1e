"""The client-to-server stream as a sans-IO state machine (RFC 6120 §4–§7).

Bytes go in with :meth:`C2SStream.receive_data`, which returns events for the adapter; bytes to
write come out of :meth:`C2SStream.data_to_send`.  Steps that need the outside world (upgrading the
socket to TLS, looking an account or a token up, choosing a resource) are events the adapter
answers by calling :meth:`tls_started`, :meth:`provide_credentials`, :meth:`provide_token`,
:meth:`bind_done`, :meth:`bind_failed`, :meth:`sasl2_success` or :meth:`sasl2_failed`; input that
arrives meanwhile waits in order.  No sockets, no asyncio, no clock.  The stream machinery
(parser, output, header, close, restart) is the shared :class:`~.stream.XmlStream`.

Two SASL profiles share the mechanisms (SCRAM-SHA-1/256, PLAIN over TLS): RFC 6120's
``<auth/>``, ending in a stream restart, and XEP-0388's ``<authenticate/>`` (SASL2, offered after
TLS), which has none.  A SASL2 ``<authenticate/>`` also says what the stream should become:
XEP-0386 Bind 2 (``<bind xmlns='urn:xmpp:bind:0'/>``), XEP-0198 resumption, XEP-0484 token
requests… (:class:`Sasl2Request`).  Once its mechanism accepts the client, the stream waits
(``WAIT_SASL2``, event :class:`Sasl2Authenticated`) while the adapter does what was asked, then
writes ``<success/>`` with the results (:meth:`sasl2_success`: established if a resource was bound
or a session resumed, else authenticated and open to RFC 6120 bind) or refuses after all
(:meth:`sasl2_failed`).  What is written for the client meanwhile (stanzas to the session being
bound or resumed) waits behind the ``<success/>``.  XEP-0484's token mechanisms (HT-*, offered
only in SASL2, when ``C2SConfig.token_mechanisms`` names them) ask for the client's tokens with
:class:`TokenNeeded`.  No SASL2 ``<continue/>`` tasks are offered: a client asking for one (an
``upgrade``, a ``<next/>``) gets a ``<failure/>``.

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
    NEGOTIATING      <authenticate/> needing an account  WAIT_CREDENTIALS → CredentialsNeeded, TokenNeeded
    WAIT_CREDENTIALS provide_token()                     NEGOTIATING     (HT: success or failure next)
    NEGOTIATING      SASL2 mechanism success             WAIT_SASL2      → event Sasl2Authenticated
    WAIT_SASL2       sasl2_success(jid)                  ESTABLISHED     (bound inline, or resumed)
    WAIT_SASL2       sasl2_success(None)                 NEGOTIATING     (authenticated, no restart)
    WAIT_SASL2       sasl2_failed(failure)               NEGOTIATING
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
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from . import errors, ns
from .errors import SaslFailure, StanzaError, StreamError
from .jid import InvalidJid, Jid
from .parser import StreamOpened
from .sasl import Challenge, NeedCredentials, ServerMechanism, Success, offered_mechanisms, server_mechanism
from .sasl.cache import LoginCache
from .sasl.ht import HtServer, NeedToken, TokenKey
from .sasl.scram import ScramCredentials
from .stanza import Stanza
from .stream import TCP, Attr, Framing, XmlStream

__all__ = [
    "C2SConfig", "C2SStream", "State", "StartTls", "CredentialsNeeded", "TokenNeeded", "Authenticated",
    "Sasl2Authenticated", "Sasl2Request", "UserAgent", "BindRequested", "SessionEstablished", "StanzaIn",
    "ElementIn", "RegistrationIq", "StreamEnded", "AuthFailed", "C2SEvent", "TRANSITIONS",
]

STANZA_NAMES = frozenset({"message", "presence", "iq"})
MAX_SASL_FAILURES = 3
SASL_FAILURES = "too many authentication failures on this stream"  # after MAX_SASL_FAILURES
MAX_AGENT_FIELD = 256  # characters of a SASL2 <user-agent/> id, <software/>, <device/> (and a Bind2 <tag/>)


class State(enum.Enum):
    WAIT_HEADER = "wait-header"
    NEGOTIATING = "negotiating"
    WAIT_TLS = "wait-tls"
    WAIT_CREDENTIALS = "wait-credentials"
    WAIT_BIND = "wait-bind"
    WAIT_ELEMENT = "wait-element"
    WAIT_SASL2 = "wait-sasl2"
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
    (State.NEGOTIATING, "<authenticate/> needing an account", State.WAIT_CREDENTIALS),
    (State.WAIT_CREDENTIALS, "provide_token()", State.NEGOTIATING),
    (State.NEGOTIATING, "SASL2 mechanism success", State.WAIT_SASL2),
    (State.WAIT_SASL2, "sasl2_success(jid)", State.ESTABLISHED),
    (State.WAIT_SASL2, "sasl2_success(None)", State.NEGOTIATING),
    (State.WAIT_SASL2, "sasl2_failed(failure)", State.NEGOTIATING),
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
_WAITING = frozenset({State.WAIT_TLS, State.WAIT_CREDENTIALS, State.WAIT_BIND, State.WAIT_ELEMENT,
                      State.WAIT_SASL2})  # on the adapter


@dataclass(frozen=True)
class StartTls:
    """Write what is pending (``<proceed/>``), upgrade the socket, then call ``tls_started()``."""


@dataclass(frozen=True)
class CredentialsNeeded:
    """Look ``username`` up, then call ``provide_credentials(creds or None)``."""
    username: str
    hash_name: str


@dataclass(frozen=True)
class UserAgent:
    """A SASL2 ``<user-agent/>`` (XEP-0388): ``id`` is the client's stable identifier of itself (an
    installation), what XEP-0484 tokens and a stable Bind2 resource are tied to."""
    id: str | None = None
    software: str | None = None
    device: str | None = None


@dataclass(frozen=True)
class Sasl2Request:
    """What a SASL2 ``<authenticate/>`` asks for besides authentication.  ``bind``: the Bind2
    ``<bind/>`` (its ``<tag/>`` in ``tag``; its other children are the features to enable inline);
    ``inline``: the other children, in order (XEP-0198 ``<resume/>``, XEP-0484 ``<fast/>``,
    ``<request-token/>``…), for the modules that know them."""
    mechanism: str
    initial_response: bytes | None = None
    user_agent: UserAgent = UserAgent()
    bind: ET.Element | None = None
    tag: str | None = None
    inline: tuple[ET.Element, ...] = ()

    def find(self, namespace: str, name: str) -> ET.Element | None:
        """The first inline child ``{namespace}name``."""
        tag = f"{{{namespace}}}{name}"
        return next((el for el in self.inline if el.tag == tag), None)


@dataclass(frozen=True)
class TokenNeeded:
    """A token mechanism (XEP-0484 HT-*): find ``username``'s tokens for ``request.mechanism`` (and
    ``request.user_agent``), then call ``provide_token(keys)`` (an empty list: none)."""
    username: str
    request: Sasl2Request


@dataclass(frozen=True)
class Authenticated:
    username: str


@dataclass(frozen=True)
class Sasl2Authenticated:
    """The SASL2 mechanism accepted ``username``: do what ``request`` asks (resume, bind, tokens…),
    then ``sasl2_success(jid, children)`` or ``sasl2_failed(failure)``.  ``token``: the id of the
    token a token mechanism matched (:class:`~.sasl.ht.TokenKey`)."""
    username: str
    request: Sasl2Request
    token: str | None = None


@dataclass(frozen=True)
class AuthFailed:
    """A ``<failure/>`` that refused credentials (not a malformed or aborted exchange) was written:
    the connection counts it against the client's address and may hold the answer back."""
    condition: str


AUTH_FAILURES = frozenset({"not-authorized", "credentials-expired", "account-disabled"})


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


C2SEvent = (StartTls | CredentialsNeeded | TokenNeeded | Authenticated | Sasl2Authenticated | AuthFailed
            | BindRequested | SessionEstablished | StanzaIn | ElementIn | RegistrationIq | StreamEnded)
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
    features: Features | None = None  # what modules offer, per stage (pre_tls, pre_auth, post_auth, bound)
    sasl2: bool = True  # offer XEP-0388 SASL2 (with XEP-0386 Bind 2) beside RFC 6120 SASL
    sasl2_inline: Callable[[C2SStream], list[bytes]] | None = None  # children of SASL2's <inline/>
    bind2_features: Callable[[C2SStream], list[str]] | None = None  # 'var's of Bind 2's <inline/>
    token_mechanisms: Callable[[C2SStream], Collection[str]] | None = None  # HT-* accepted in SASL2
    login_cache: LoginCache | None = None  # PLAIN passwords verified recently (no PBKDF2 for those)
    scram_iterations: int = 4096  # PBKDF2 rounds of new passwords: what an unknown user is answered with


class C2SStream(XmlStream[C2SEvent]):
    """One client connection's XMPP stream, from the first byte to ``</stream:stream>``."""

    def __init__(self, config: C2SConfig, *, direct_tls: bool = False, framing: Framing = TCP) -> None:
        """``direct_tls``: the transport is already secure (TLS, or a WebSocket over TLS);
        ``framing``: TCP's (RFC 6120) or WebSocket's (RFC 7395, :mod:`.websocket`)."""
        super().__init__(ns.CLIENT, framing=framing, max_stanza_size=config.max_stanza_size,
                         max_depth=config.max_depth)
        self.config = config
        self.state = State.WAIT_HEADER
        self.tls = direct_tls
        self.domain: str | None = None
        self.username: str | None = None
        self.jid: Jid | None = None
        self.stream_id = ""
        self.lang = "en"
        self._sasl: ServerMechanism | HtServer | None = None
        self._sasl_failures = 0
        self._sasl2: Sasl2Request | None = None  # the SASL2 exchange under way (or waiting in WAIT_SASL2)
        self._sasl2_data = b""  # the mechanism's success data: <additional-data/>
        self._held: list[bytes] = []  # written for the client in WAIT_SASL2: goes out after <success/>
        self._bind_iq_id: str | None = None
        self._early = b""
        self._full_of: Jid | None = None  # the JID that ``_full`` is the string of
        self._full = ""

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
        assert self._sasl is not None and not isinstance(self._sasl, HtServer)
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

    def provide_token(self, keys: Sequence[TokenKey]) -> list[C2SEvent]:
        """The keys of the tokens :class:`TokenNeeded` asked for (none: an empty list)."""
        self._expect(State.WAIT_CREDENTIALS)
        assert isinstance(self._sasl, HtServer)
        self._go(State.NEGOTIATING)
        try:
            self._sasl_result(self._sasl.provide_token(keys))
        except SaslFailure as e:
            self._sasl_failed(e)
        self._process()
        return self._take_events()

    def sasl2_success(self, jid: Jid | None, children: bytes = b"") -> list[C2SEvent]:
        """Finish a SASL2 authentication: ``<success/>`` with ``children`` (``<bound/>``,
        ``<resumed/>``, ``<token/>``…), then the stream features of the new stage (no restart).
        ``jid``: the full JID of a resource bound inline or a session resumed (the stream is
        established), or None (authenticated: RFC 6120 bind follows)."""
        self._expect(State.WAIT_SASL2)
        assert self.username is not None
        self._sasl2 = None
        data, self._sasl2_data = self._sasl2_data, b""
        identity = str(jid) if jid is not None else f"{self.username}@{self.domain}"
        extra = f"<additional-data>{_b64(data)}</additional-data>" if data else ""
        self._write(f"<success xmlns='{ns.SASL2}'>{extra}<authorization-identifier>{escape(identity)}"
                    f"</authorization-identifier>".encode() + children + b"</success>")
        self._events.append(Authenticated(self.username))
        if jid is not None:
            self.jid = jid
            self._go(State.ESTABLISHED)
            self._events.append(SessionEstablished(jid))
        else:
            self._go(State.NEGOTIATING)
        self._write(self._features())
        held, self._held = self._held, []
        for data in held:
            self._write(data)
        self._process()
        return self._take_events()

    def sasl2_failed(self, failure: SaslFailure) -> list[C2SEvent]:
        """Refuse a SASL2 authentication its mechanism had accepted (a replayed XEP-0484 token
        counter, a resource that cannot be bound): ``<failure/>``, and the stream is as before."""
        self._expect(State.WAIT_SASL2)
        self.username = None
        self._held.clear()
        self._sasl2_data = b""
        self._go(State.NEGOTIATING)
        self._sasl_failed(failure)
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
            self.send_bytes(stanza.to_bytes())

    def send_bytes(self, data: bytes) -> None:
        """Queue an already-serialized stanza (relayed bytes are never re-serialized; a no-op
        once the stream is closed).  While SASL2 waits for the adapter it goes out after the
        ``<success/>``."""
        if self.state is State.WAIT_SASL2:
            self._held.append(data)
        else:
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
        """Which features apply now: ``pre_tls`` (no SASL offered yet), ``pre_auth``, ``post_auth``,
        ``bound`` (a SASL2 authentication bound a resource or resumed a session inline)."""
        if self.jid is not None:
            return "bound"
        if self.username is not None:
            return "post_auth"
        return "pre_auth" if self.tls or not self.config.tls_required else "pre_tls"

    def _features(self) -> bytes:
        cfg = self.config
        parts: list[bytes] = []
        if not self.tls and cfg.tls_available and self.username is None:
            req = "<required/>" if cfg.tls_required else ""
            parts.append(f"<starttls xmlns='{ns.TLS}'>{req}</starttls>".encode())
        stage = self.stage
        if stage == "pre_auth":
            mechs = "".join(f"<mechanism>{m}</mechanism>" for m in offered_mechanisms(self.tls, cfg.allow_plain))
            parts.append(f"<mechanisms xmlns='{ns.SASL}'>{mechs}</mechanisms>".encode())
            if cfg.sasl2:
                parts.append(self._sasl2_feature(mechs))
        elif stage == "post_auth":
            parts.append(f"<bind xmlns='{ns.BIND}'/><session xmlns='{ns.SESSION}'><optional/></session>".encode())
        if cfg.features is not None:
            parts.extend(cfg.features(stage, self))
        parts.append(f"<limits xmlns='{ns.LIMITS}'><max-bytes>{cfg.max_stanza_size}</max-bytes></limits>".encode())
        return b"<stream:features>" + b"".join(parts) + b"</stream:features>"

    def _sasl2_feature(self, mechs: str) -> bytes:
        """XEP-0388's ``<authentication/>``: the same mechanisms, and what may be asked inline —
        Bind 2 with the features modules enable in it, and what modules add (XEP-0198 ``<sm/>``,
        XEP-0484 ``<fast/>``)."""
        cfg = self.config
        variables = cfg.bind2_features(self) if cfg.bind2_features is not None else []
        listed = "".join(f"<feature var={quoteattr(v)}/>" for v in variables)
        inline = [f"<bind xmlns='{ns.BIND2}'>{f'<inline>{listed}</inline>' if listed else ''}</bind>".encode()]
        if cfg.sasl2_inline is not None:
            inline.extend(cfg.sasl2_inline(self))
        return (f"<authentication xmlns='{ns.SASL2}'>{mechs}<inline>".encode() + b"".join(inline)
                + b"</inline></authentication>")

    def _token_mechanisms(self) -> Collection[str]:
        return self.config.token_mechanisms(self) if self.config.token_mechanisms is not None else ()

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
        if self._sasl2 is not None and namespace != ns.SASL2:
            # XEP-0388: during the exchange only <response/> and <abort/>; anything else ends it.
            raise errors.PolicyViolation(f"<{name}/> during a SASL2 authentication")
        if namespace == ns.TLS and name == "starttls":
            self._on_starttls()
        elif namespace == ns.SASL:
            self._on_sasl(stanza)
        elif namespace == ns.SASL2 and self.config.sasl2:
            self._on_sasl2(stanza)
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
                                              tls=self.tls, login_cache=self.config.login_cache,
                                              decoy_iterations=self.config.scram_iterations)
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

    def _sasl_result(self, step: Challenge | Success | NeedCredentials | NeedToken) -> None:
        sasl2 = self._sasl2
        if isinstance(step, Challenge):
            namespace = ns.SASL2 if sasl2 is not None else ns.SASL
            self._write(f"<challenge xmlns='{namespace}'>{_b64(step.data)}</challenge>".encode())
        elif isinstance(step, NeedToken):
            assert sasl2 is not None
            self._go(State.WAIT_CREDENTIALS)
            self._events.append(TokenNeeded(step.username, sasl2))
        elif isinstance(step, NeedCredentials):
            self._go(State.WAIT_CREDENTIALS)
            hash_name = "sha1" if self._sasl is not None and self._sasl.name == "SCRAM-SHA-1" else "sha256"
            self._events.append(CredentialsNeeded(step.username, hash_name))
        elif sasl2 is not None:
            self.username = step.username
            self._sasl = None
            self._sasl2_data = step.data
            self._go(State.WAIT_SASL2)
            self._events.append(Sasl2Authenticated(step.username, sasl2, step.token))
        else:
            self.username = step.username
            self._sasl = None
            self._write(f"<success xmlns='{ns.SASL}'>{_b64(step.data) if step.data else ''}</success>"
                        .encode())
            self._events.append(Authenticated(step.username))
            self._go(State.WAIT_HEADER)
            self._restart()

    def _sasl_failed(self, failure: SaslFailure, *, sasl2: bool | None = None) -> None:
        if sasl2 is None:
            sasl2 = self._sasl2 is not None
        self._sasl = None
        self._sasl2 = None
        self._sasl_failures += 1
        if sasl2:
            # XEP-0388: the RFC 6120 §6.5 condition, in the SASL namespace, inside SASL2's <failure/>.
            text = f"<text>{escape(failure.text)}</text>" if failure.text else ""
            self._write(f"<failure xmlns='{ns.SASL2}'><{failure.condition} xmlns='{ns.SASL}'/>{text}</failure>"
                        .encode())
        else:
            self._write(failure.to_xml())
        if failure.condition in AUTH_FAILURES:
            self._events.append(AuthFailed(failure.condition))
        if self._sasl_failures >= MAX_SASL_FAILURES:
            self._fail(errors.PolicyViolation(SASL_FAILURES))

    # -- SASL2 (XEP-0388) ---------------------------------------------------------------------

    def _on_sasl2(self, stanza: Stanza) -> None:
        name = stanza.name
        if self.username is not None:
            # XEP-0388 §5.5: after <success/>, another <authenticate/> is a stream error.
            raise errors.PolicyViolation("already authenticated")
        try:
            if name == "authenticate":
                if self._sasl2 is not None:
                    raise errors.PolicyViolation("<authenticate/> during a SASL2 authentication")
                if not self.tls and self.config.tls_required:
                    raise SaslFailure("encryption-required", "negotiate TLS first")
                self._sasl = None  # an RFC 6120 exchange left half-way ends here
                request = _parse_authenticate(stanza.element)
                if stanza.element.get("upgrade") is not None:
                    raise SaslFailure("invalid-mechanism", "no upgrade task is offered")
                self._sasl = self._sasl2_mechanism(request.mechanism)
                self._sasl2 = request
                self._sasl_result(self._sasl.start(request.initial_response))
            elif name == "response":
                if self._sasl2 is None or self._sasl is None:
                    raise SaslFailure("malformed-request", "no authentication in progress")
                self._sasl_result(self._sasl.respond(_b64_text(stanza.element.text) or b""))
            elif name == "abort":
                raise SaslFailure("aborted")
            elif name == "next":
                raise SaslFailure("malformed-request", "no task was offered")
            else:
                raise errors.UnsupportedStanzaType(f"<{name}/> in {ns.SASL2}")
        except SaslFailure as e:
            self._sasl_failed(e, sasl2=True)

    def _sasl2_mechanism(self, name: str) -> ServerMechanism | HtServer:
        if name in self._token_mechanisms():
            if not self.tls:
                raise SaslFailure("encryption-required")  # XEP-0484 §6: tokens only over TLS
            return HtServer(name)
        if name not in offered_mechanisms(self.tls, self.config.allow_plain):
            raise SaslFailure("invalid-mechanism")
        return server_mechanism(name, domain=self.domain or "", secret=self.config.sasl_secret, tls=self.tls,
                                login_cache=self.config.login_cache, decoy_iterations=self.config.scram_iterations)

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
        if self.jid is not self._full_of:  # str(Jid) per stanza was measurable: once per bound JID
            self._full_of, self._full = self.jid, str(self.jid)
        full = self._full
        sender = stanza.from_
        if sender is not None and sender != full:
            try:
                claimed = Jid.parse(sender)
            except InvalidJid:
                raise errors.InvalidFrom(f"'from' {sender!r} is not a valid JID") from None
            if claimed != self.jid and claimed != self.jid.bare:
                raise errors.InvalidFrom(f"'from' {sender!r} is not this stream's JID")
        if sender != full:
            stanza = stanza.stamp(from_=full)  # the parsed original is dropped: no copy
        self._events.append(StanzaIn(stanza))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64_text(text: str | None) -> bytes | None:
    """XEP-0388's encoding: base64, whitespace ignored; an empty element is empty data (no "=")."""
    compact = "".join((text or "").split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise SaslFailure("incorrect-encoding") from None


def _agent_text(el: ET.Element | None) -> str | None:
    if el is None:
        return None
    text = (el.text or "").strip()
    if len(text) > MAX_AGENT_FIELD:
        raise SaslFailure("malformed-request", f"<{el.tag.rsplit('}', 1)[-1]}/> is too long")
    return text or None


def _parse_authenticate(el: ET.Element) -> Sasl2Request:
    """A SASL2 ``<authenticate/>`` (XEP-0388 §5.3), checked for shape; SaslFailure when it is not
    one (no mechanism, two initial responses or binds, an oversized user agent)."""
    mechanism = (el.get("mechanism") or "").strip()
    if not mechanism:
        raise SaslFailure("invalid-mechanism", "no mechanism named")
    initial: bytes | None = None
    seen_initial = False
    agent = UserAgent()
    bind: ET.Element | None = None
    inline: list[ET.Element] = []
    for child in el:
        if child.tag == f"{{{ns.SASL2}}}initial-response":
            if seen_initial:
                raise SaslFailure("malformed-request", "two initial responses")
            seen_initial = True
            initial = _b64_text(child.text)
        elif child.tag == f"{{{ns.SASL2}}}user-agent":
            agent_id = (child.get("id") or "").strip()
            if len(agent_id) > MAX_AGENT_FIELD:
                raise SaslFailure("malformed-request", "the user agent id is too long")
            agent = UserAgent(agent_id or None, _agent_text(child.find(f"{{{ns.SASL2}}}software")),
                              _agent_text(child.find(f"{{{ns.SASL2}}}device")))
        elif child.tag == f"{{{ns.BIND2}}}bind":
            if bind is not None:
                raise SaslFailure("malformed-request", "two bind requests")
            bind = child
        elif child.tag.startswith(f"{{{ns.SASL2}}}"):
            continue  # <supported/> (informational) and what a later version may add
        else:
            inline.append(child)
    tag = _agent_text(bind.find(f"{{{ns.BIND2}}}tag")) if bind is not None else None
    return Sasl2Request(mechanism, initial, agent, bind, tag, tuple(inline))


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
