"""The two S2S stream state machines (RFC 6120 §4, §5, §6, §13; XEP-0220; XEP-0178), sans-IO.

:class:`OutgoingStream` is the initiating side: header, STARTTLS, then SASL EXTERNAL when the peer
offers it and we may use it, else dialback; also the carrier of ``db:verify`` requests we send to
another domain's authoritative server.  :class:`IncomingStream` is the receiving side: it offers
STARTTLS (required by default), SASL EXTERNAL to a peer whose verified certificate names its
domain, and dialback; it answers ``db:verify`` for our own domains, and admits a stanza only when
its ``from`` domain was authenticated on this stream for its ``to`` domain (else
``<invalid-from/>``, RFC 6120 §4.9.3.9).

Both follow h11's shape: ``feed(bytes)`` returns events, ``data_to_send()`` returns the bytes to
write; the adapter upgrades the transport on :class:`StartTls` and then calls ``tls_started``.
A misbehaving peer gets one ``<stream:error/>``, written here and nowhere else, and a
:class:`Closed` event naming the condition.  The stream machinery (parser, output, header, close,
restart) is the shared :class:`cluster_node.xmpp.stream.XmlStream`.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cluster_node.xmpp import errors, ns
from cluster_node.xmpp.errors import StreamError
from cluster_node.xmpp.jid import InvalidJid, Jid
from cluster_node.xmpp.parser import StreamOpened
from cluster_node.xmpp.stanza import Stanza, escape_attr
from cluster_node.xmpp.stream import TCP, Attr, XmlStream

from . import dialback
from .dialback import dialback_key, keys_equal

__all__ = ["OutgoingStream", "IncomingStream", "StartTls", "Authenticated", "AuthFailed", "VerifyNeeded",
           "VerifyResult", "StanzaIn", "Closed", "S2SEvent", "cert_matches", "stream_header"]

log = logging.getLogger("meridian.s2s")

_FEATURES = f"{{{ns.STREAM}}}features"
_ERROR = f"{{{ns.STREAM}}}error"
_DB_RESULT = f"{{{dialback.NS}}}result"
_DB_VERIFY = f"{{{dialback.NS}}}verify"
_STANZAS = frozenset({f"{{{ns.SERVER}}}{k}" for k in ("message", "presence", "iq")})
MAX_PENDING_DIALBACK = 16  # db:result requests awaiting verification on one incoming stream
TOO_MANY_DIALBACKS = "too many dialback requests in flight"
_PREFIXES = (("db", dialback.NS),)  # declared on the stream header (XEP-0220 §2.1.1)


@dataclass(frozen=True)
class StartTls:
    """Upgrade the transport to TLS now, then call ``tls_started``."""


@dataclass(frozen=True)
class Authenticated:
    """Outgoing: we may send stanzas from ``local`` to ``remote``.  Incoming: ``remote`` (the
    peer's domain) may send to ``local``."""

    local: str
    remote: str
    method: str  # "dialback" | "external"


@dataclass(frozen=True)
class AuthFailed:
    reason: str
    temporary: bool = False  # the peer could not decide yet (dialback error of type 'wait'): try again


@dataclass(frozen=True)
class VerifyNeeded:
    """Incoming dialback: ask ``originating``'s authoritative server whether ``key`` is good."""

    originating: str
    receiving: str
    stream_id: str
    key: str


@dataclass(frozen=True)
class VerifyResult:
    """The answer to a ``db:verify`` we sent on an outgoing stream."""

    originating: str
    receiving: str
    stream_id: str
    valid: bool


@dataclass(frozen=True)
class StanzaIn:
    stanza: Stanza


@dataclass(frozen=True)
class Closed:
    condition: str | None  # the stream error, ours or the peer's; None for a clean close
    by_peer: bool
    text: str | None = field(default=None, compare=False)  # our error's text: names the limit a refusal hit


S2SEvent = StartTls | Authenticated | AuthFailed | VerifyNeeded | VerifyResult | StanzaIn | Closed


def stream_header(from_: str, to: str, stream_id: str | None = None) -> bytes:
    """RFC 6120 §4.7 with the dialback namespace declared (XEP-0220 §2.1.1)."""
    return TCP.opening(ns.SERVER, _attrs(from_, to, stream_id), _PREFIXES)


def _attrs(from_: str, to: str, stream_id: str | None) -> list[Attr]:
    attrs = [("from", f"'{escape_attr(from_)}'"), ("to", f"'{escape_attr(to)}'")]
    if stream_id:
        attrs.append(("id", f"'{escape_attr(stream_id)}'"))
    return [*attrs, ("version", "'1.0'")]


def cert_matches(names: Iterable[str], domain: str) -> bool:
    """RFC 6125 §6.4: an exact DNS name, or ``*.`` standing for exactly one leftmost label."""
    domain = domain.lower().rstrip(".")
    for name in names:
        name = name.lower().rstrip(".")
        if name == domain:
            return True
        if name.startswith("*.") and "." in domain and domain.split(".", 1)[1] == name[2:]:
            return True
    return False


def _domain(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return Jid.parse(value).domain
    except InvalidJid:
        return None


class _Core(XmlStream[S2SEvent]):
    """What both directions share on top of the XML stream core: the TLS flag, the peer's stream
    error, and the :class:`Closed` events.  A clean close of ours writes no header first (an
    incoming stream not yet answered, or restarted, ends with a bare ``</stream:stream>``)."""

    def __init__(self, max_stanza_size: int) -> None:
        super().__init__(ns.SERVER, prefixes=_PREFIXES, max_stanza_size=max_stanza_size)
        self.tls = False

    def fail(self, error: StreamError) -> list[S2SEvent]:
        """Write ``<stream:error/>`` and close: our end of a stream the peer broke."""
        return [Closed(error.condition, by_peer=False, text=error.text)] if self._close(error) else []

    def close(self) -> list[S2SEvent]:
        return [Closed(None, by_peer=False)] if self._close(open_first=False) else []

    def feed(self, data: bytes) -> list[S2SEvent]:
        """Bytes from the peer (``b""`` is the end of the connection)."""
        if self.closed:
            return []
        if not data:
            self._close(send_close=False)
            return [Closed("connection-lost", by_peer=True)]
        self._receive(data)
        return self._take_events()

    def _fail(self, error: StreamError) -> None:
        self._events += self.fail(error)

    def _on_header(self, header: StreamOpened) -> None:
        self._events += self._opened(header)

    def _on_element(self, stanza: Stanza) -> None:
        self._events += self._peer_error(stanza) if stanza.element.tag == _ERROR else self._element(stanza)

    def _on_close(self) -> None:
        self._close(open_first=False)
        self._events.append(Closed(None, by_peer=True))

    def _peer_error(self, stanza: Stanza) -> list[S2SEvent]:
        conditions = [c.tag.split("}", 1)[1] for c in stanza.element
                      if c.tag.startswith(f"{{{ns.STREAMS}}}") and not c.tag.endswith("}text")]
        condition = conditions[0] if conditions else "undefined-condition"
        self._close(open_first=False)
        return [Closed(condition, by_peer=True)]

    def _opened(self, ev: StreamOpened) -> list[S2SEvent]:
        raise NotImplementedError

    def _element(self, stanza: Stanza) -> list[S2SEvent]:
        raise NotImplementedError


class OutgoingStream(_Core):
    """Our stream to ``remote`` on behalf of ``local`` (RFC 6120 §13 initiating entity)."""

    def __init__(self, local: str, remote: str, secret: str, *, require_tls: bool = True,
                 external: bool = True, use_dialback: bool = True, max_stanza_size: int = 262_144) -> None:
        super().__init__(max_stanza_size)
        self.local, self.remote = local, remote
        self.secret = secret
        self.require_tls = require_tls
        self.external = external  # our certificate is valid for ``local``: we may try SASL EXTERNAL
        self.use_dialback = use_dialback
        self.state = "idle"
        self.stream_id: str | None = None
        self.auth_method: str | None = None
        self._sasl_done = False
        self._verifies: list[bytes] = []  # db:verify requests waiting for a secured stream
        self._secured = False  # features after TLS seen (or TLS optional and not offered)

    def _header_attrs(self) -> list[Attr]:
        return _attrs(self.local, self.remote, None)

    @property
    def ready(self) -> bool:
        return self.state == "ready" and not self.closed

    def start(self) -> None:
        self._send_header()
        self.state = "header"

    def tls_started(self) -> None:
        """The transport now speaks TLS: a new stream over it (RFC 6120 §5.4.3.3)."""
        self.tls = True
        self._restart()
        self.start()

    def send(self, data: bytes) -> None:
        if not self.ready:
            raise RuntimeError(f"stream to {self.remote} is not authenticated")
        self._write(data)

    def verify(self, receiving: str, originating: str, stream_id: str, key: str) -> None:
        """Ask this peer (``originating``'s authoritative server) about a dialback key."""
        request = dialback.verify_request(receiving, originating, stream_id, key)
        if self._secured:
            self._write(request)
        else:
            self._verifies.append(request)

    def _opened(self, ev: StreamOpened) -> list[S2SEvent]:
        self.stream_id = ev.attrs.get("id")
        self.state = "features"
        return []

    def _element(self, stanza: Stanza) -> list[S2SEvent]:
        tag = stanza.element.tag
        if tag == _FEATURES and self.state == "features":
            return self._features(stanza)
        if tag == f"{{{ns.TLS}}}proceed" and self.state == "proceed":
            self.state = "tls"
            return [StartTls()]
        if tag == f"{{{ns.TLS}}}failure":
            self._close(send_close=False)
            return [Closed("tls-failure", by_peer=True)]
        if tag == f"{{{ns.SASL}}}success" and self.state == "sasl":
            self._sasl_done = True
            self.auth_method = "external"
            self._restart()  # what the old parser had parsed is still handled (c2s drops it)
            self.start()
            return []
        if tag == f"{{{ns.SASL}}}failure" and self.state == "sasl":
            log.info("s2s %s -> %s: SASL EXTERNAL refused, trying dialback", self.local, self.remote)
            return self._dialback()
        if tag == _DB_RESULT and self.state == "dialback":
            if stanza.type == "valid":
                self.state = "ready"
                self.auth_method = "dialback"
                return [Authenticated(self.local, self.remote, "dialback")]
            # XEP-0220 §2.4: <error/> in the stream's default namespace (jabber:server).
            error = next((c for c in stanza.element if c.tag.rsplit("}", 1)[-1] == "error"), None)
            wait = stanza.type == "error" and error is not None and error.get("type") == "wait"
            return self._auth_failed(f"dialback {stanza.type or 'answer'} from {self.remote}", temporary=wait)
        if tag == _DB_VERIFY and stanza.type in ("valid", "invalid"):
            return [VerifyResult(originating=stanza.from_ or "", receiving=stanza.to or "",
                                 stream_id=stanza.id or "", valid=stanza.type == "valid")]
        log.debug("s2s %s -> %s: ignoring %s in state %s", self.local, self.remote, tag, self.state)
        return []

    def _features(self, stanza: Stanza) -> list[S2SEvent]:
        starttls = stanza.child(ns.TLS, "starttls")
        if not self.tls and starttls is not None:
            self._write(f"<starttls xmlns='{ns.TLS}'/>".encode())
            self.state = "proceed"
            return []
        if not self.tls and self.require_tls:
            raise errors.PolicyViolation(f"{self.remote} does not offer STARTTLS, which we require")
        self._secured = True
        for request in self._verifies:
            self._write(request)
        self._verifies.clear()
        if self._sasl_done:
            self.state = "ready"
            return [Authenticated(self.local, self.remote, "external")]
        mechanisms = stanza.child(ns.SASL, "mechanisms")
        offered = {(m.text or "").strip().upper() for m in mechanisms} if mechanisms is not None else set()
        if self.tls and self.external and "EXTERNAL" in offered:
            # XEP-0178 §3: the authorization identity is our domain.
            authzid = base64.b64encode(self.local.encode()).decode()
            self._write(f"<auth xmlns='{ns.SASL}' mechanism='EXTERNAL'>{authzid}</auth>".encode())
            self.state = "sasl"
            return []
        return self._dialback()

    def _dialback(self) -> list[S2SEvent]:
        if not self.use_dialback:
            return self._auth_failed(f"no authentication method in common with {self.remote}")
        if not self.stream_id:
            return self._auth_failed(f"{self.remote} gave no stream id, dialback impossible")
        key = dialback_key(self.secret, self.remote, self.local, self.stream_id)
        self._write(dialback.result_request(self.local, self.remote, key))
        self.state = "dialback"
        return []

    def _auth_failed(self, reason: str, *, temporary: bool = False) -> list[S2SEvent]:
        return [AuthFailed(reason, temporary), *self.close()]


class IncomingStream(_Core):
    """A stream from a peer server to our ``domains`` (RFC 6120 §13 receiving entity)."""

    def __init__(self, domains: Iterable[str], secret: str, new_id: Callable[[], str], *, require_tls: bool = True,
                 use_dialback: bool = True, max_stanza_size: int = 262_144) -> None:
        super().__init__(max_stanza_size)
        self.domains = frozenset(domains)
        self.secret = secret
        self.new_id = new_id
        self.require_tls = require_tls
        self.use_dialback = use_dialback
        self.stream_id = ""
        self.local = ""  # the 'to' of the peer's header
        self.peer = ""  # the 'from' of the peer's header, if any
        self.peer_names: frozenset[str] = frozenset()  # DNS names in the peer's verified certificate
        self.pairs: set[tuple[str, str]] = set()  # (peer domain, our domain) authenticated
        self.methods: dict[str, str] = {}  # peer domain -> how it authenticated
        self.pending: set[tuple[str, str]] = set()  # dialback requests being verified
        self._sasl_done = False

    def _header_attrs(self) -> list[Attr]:
        self.stream_id = self.stream_id or self.new_id()
        return _attrs(self.local or next(iter(sorted(self.domains)), ""), self.peer, self.stream_id)

    def tls_started(self, peer_names: Iterable[str] = ()) -> None:
        """The transport now speaks TLS; ``peer_names``: DNS names of the peer's certificate if it
        presented one that verified against our trust anchors."""
        self.tls = True
        self.peer_names = frozenset(peer_names)
        self._restart()

    def _restart(self) -> None:
        """A new stream from the peer: we answer its header with a header and id of our own."""
        super()._restart()
        self.header_sent = False
        self.stream_id = ""

    def _opened(self, ev: StreamOpened) -> list[S2SEvent]:
        to = ev.attrs.get("to", "")
        self.peer = ev.attrs.get("from", "") or self.peer
        if to and to not in self.domains:
            self.local = ""
            raise errors.HostUnknown(f"{to} is not served here")
        self.local = to or self.local or next(iter(sorted(self.domains)), "")
        self.stream_id = self.new_id()
        self._send_header()
        self._write(self._features())
        return []

    def _features(self) -> bytes:
        parts = ["<stream:features>"]
        if not self.tls:
            required = "<required/>" if self.require_tls else ""
            parts.append(f"<starttls xmlns='{ns.TLS}'>{required}</starttls>")
        if (self.tls or not self.require_tls) and not self._sasl_done:
            if self.tls and self.peer_names:
                parts.append(f"<mechanisms xmlns='{ns.SASL}'><mechanism>EXTERNAL</mechanism></mechanisms>")
            if self.use_dialback:
                parts.append(f"<dialback xmlns='{dialback.FEATURE}'><errors/></dialback>")
        parts.append("</stream:features>")
        return "".join(parts).encode()

    def dialback_result(self, originating: str, receiving: str, valid: bool | None) -> None:
        """The authoritative server's verdict on a pending ``db:result``: tell the peer (None: it
        gave none in time — a temporary error, XEP-0220 §2.4, so the peer tries again)."""
        if (originating, receiving) not in self.pending:
            return
        self.pending.discard((originating, receiving))
        if valid is None:
            self._write(dialback.result_error(receiving, originating))
            return
        if valid:
            self.pairs.add((originating, receiving))
            self.methods[originating] = "dialback"
        self._write(dialback.result_response(receiving, originating, valid))

    def _element(self, stanza: Stanza) -> list[S2SEvent]:
        tag = stanza.element.tag
        if tag in _STANZAS:
            return self._stanza(stanza)
        if tag == f"{{{ns.TLS}}}starttls":
            if self.tls:
                raise errors.PolicyViolation("STARTTLS twice")
            self._write(f"<proceed xmlns='{ns.TLS}'/>".encode())
            return [StartTls()]
        if tag == f"{{{ns.SASL}}}auth":
            return self._sasl(stanza)
        if tag == _DB_RESULT and stanza.type is None:
            return self._db_result(stanza)
        if tag == _DB_VERIFY and stanza.type is None:
            self._db_verify(stanza)
            return []
        raise errors.UnsupportedStanzaType(f"unexpected {tag}")

    def _secure_enough(self) -> None:
        if self.require_tls and not self.tls:
            raise errors.PolicyViolation("STARTTLS is required before authentication")

    def _sasl(self, stanza: Stanza) -> list[S2SEvent]:
        self._secure_enough()
        text = (stanza.element.text or "").strip()
        try:
            authzid = base64.b64decode(text, validate=True).decode() if text and text != "=" else self.peer
        except (binascii.Error, UnicodeDecodeError):
            authzid = ""
        if (stanza.element.get("mechanism") != "EXTERNAL" or self._sasl_done or not authzid or not self.tls
                or (self.peer and authzid != self.peer) or not cert_matches(self.peer_names, authzid)):
            self._write(errors.SaslFailure("not-authorized").to_xml())
            return [AuthFailed(f"SASL EXTERNAL as {authzid or '?'} refused")]
        self._write(f"<success xmlns='{ns.SASL}'/>".encode())
        self._sasl_done = True
        self.peer = authzid
        self.methods[authzid] = "external"
        self.pairs.update((authzid, d) for d in self.domains)
        self._restart()
        return [Authenticated(self.local, authzid, "external")]

    def _db_result(self, stanza: Stanza) -> list[S2SEvent]:
        self._secure_enough()
        originating, receiving = stanza.from_ or "", stanza.to or ""
        if not self.use_dialback:
            raise errors.PolicyViolation("dialback is disabled")
        if receiving not in self.domains:
            raise errors.HostUnknown(f"{receiving} is not served here")
        if _domain(originating) != originating or not originating:
            raise errors.InvalidFrom(f"bad originating domain {originating!r}")
        if len(self.pending) >= MAX_PENDING_DIALBACK:
            raise errors.PolicyViolation(TOO_MANY_DIALBACKS)
        self.pending.add((originating, receiving))
        return [VerifyNeeded(originating, receiving, self.stream_id, (stanza.element.text or "").strip())]

    def _db_verify(self, stanza: Stanza) -> None:
        """XEP-0220 §2.4: we are the authoritative server for ``to``; was the key ours?"""
        receiving, originating = stanza.from_ or "", stanza.to or ""
        if originating not in self.domains:
            raise errors.HostUnknown(f"{originating} is not served here")
        expected = dialback_key(self.secret, receiving, originating, stanza.id or "")
        valid = keys_equal(stanza.element.text or "", expected)
        self._write(dialback.verify_response(originating, receiving, stanza.id or "", valid))

    def _stanza(self, stanza: Stanza) -> list[S2SEvent]:
        sender, to = _domain(stanza.from_), _domain(stanza.to)
        if sender is None or (sender, to or "") not in self.pairs:
            raise errors.InvalidFrom(f"{stanza.from_!r} is not authenticated on this stream for {stanza.to!r}")
        return [StanzaIn(stanza)]
