"""XMPP errors as exceptions: each class carries its RFC 6120 condition (and stanza error type).

Raise a :class:`StreamError` subclass when the peer broke the stream (RFC 6120 §4.9); the adapter
turns it into ``<stream:error/>`` and closes in exactly one place.  Raise a :class:`StanzaError`
subclass when one stanza cannot be handled (RFC 6120 §8.3); the router turns it into an error reply.
Any other exception escaping a protocol core is a bug.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from . import ns

__all__ = [
    "StreamError", "StanzaError", "SaslFailure",
    "BadFormat", "BadNamespacePrefix", "Conflict", "ConnectionTimeout", "HostUnknown",
    "InternalServerError", "InvalidFrom", "InvalidNamespace", "InvalidXml", "NotAuthorized",
    "NotWellFormed", "PolicyViolation", "ResourceConstraint", "RestrictedXml", "SystemShutdown",
    "UnsupportedEncoding", "UnsupportedStanzaType", "UnsupportedVersion", "UndefinedCondition",
    "BadRequest", "FeatureNotImplemented", "Forbidden", "ItemNotFound", "JidMalformed",
    "NotAcceptable", "NotAllowed", "RecipientUnavailable", "RemoteServerNotFound",
    "RemoteServerTimeout", "ServiceUnavailable", "StanzaConflict", "StanzaNotAuthorized",
    "StanzaPolicyViolation", "StanzaResourceConstraint", "UnexpectedRequest",
    "StanzaInternalServerError", "stanza_error_class",
]


class StreamError(Exception):
    """The peer violated the stream; the stream is closed after ``<stream:error/>`` (RFC 6120 §4.9)."""

    condition = "undefined-condition"

    def __init__(self, text: str | None = None) -> None:
        super().__init__(text or self.condition)
        self.text = text

    def to_xml(self) -> bytes:
        """The ``<stream:error/>`` element, with the ``stream`` prefix bound by the stream header."""
        text = f"<text xmlns='{ns.STREAMS}'>{escape(self.text)}</text>" if self.text else ""
        return f"<stream:error><{self.condition} xmlns='{ns.STREAMS}'/>{text}</stream:error>".encode()



class BadFormat(StreamError):
    """RFC 6120 §4.9.3.1: XML that cannot be processed."""
    condition = "bad-format"


class BadNamespacePrefix(StreamError):
    """RFC 6120 §4.9.3.2: an unsupported or unbound namespace prefix."""
    condition = "bad-namespace-prefix"


class Conflict(StreamError):
    """RFC 6120 §4.9.3.3: a new stream conflicts with this one (e.g. same full JID)."""
    condition = "conflict"


class ConnectionTimeout(StreamError):
    """RFC 6120 §4.9.3.4: the peer has not generated any traffic for a while."""
    condition = "connection-timeout"


class HostUnknown(StreamError):
    """RFC 6120 §4.9.3.6: the 'to' of the stream header is not served here."""
    condition = "host-unknown"


class InternalServerError(StreamError):
    """RFC 6120 §4.9.3.8: the server hit a problem of its own."""
    condition = "internal-server-error"


class InvalidFrom(StreamError):
    """RFC 6120 §4.9.3.9: a 'from' the peer is not authorized to use."""
    condition = "invalid-from"


class InvalidNamespace(StreamError):
    """RFC 6120 §4.9.3.10: wrong stream or content namespace."""
    condition = "invalid-namespace"


class InvalidXml(StreamError):
    """RFC 6120 §4.9.3.11: invalid XML (e.g. bad schema)."""
    condition = "invalid-xml"


class NotAuthorized(StreamError):
    """RFC 6120 §4.9.3.12: stanzas before the stream is authenticated."""
    condition = "not-authorized"


class NotWellFormed(StreamError):
    """RFC 6120 §4.9.3.13: data that is not well-formed XML."""
    condition = "not-well-formed"


class PolicyViolation(StreamError):
    """RFC 6120 §4.9.3.14: a local policy (stanza size, rate, connection count) was violated."""
    condition = "policy-violation"


class ResourceConstraint(StreamError):
    """RFC 6120 §4.9.3.16: the server lacks the resources to serve the stream."""
    condition = "resource-constraint"


class RestrictedXml(StreamError):
    """RFC 6120 §4.9.3.17, §11.1: comments, PIs, DTDs or entity references other than the predefined."""
    condition = "restricted-xml"


class SystemShutdown(StreamError):
    """RFC 6120 §4.9.3.19: the server is shutting down."""
    condition = "system-shutdown"


class UndefinedCondition(StreamError):
    """RFC 6120 §4.9.3.20."""
    condition = "undefined-condition"


class UnsupportedEncoding(StreamError):
    """RFC 6120 §4.9.3.21, §11.6: not UTF-8, or invalid UTF-8."""
    condition = "unsupported-encoding"


class UnsupportedStanzaType(StreamError):
    """RFC 6120 §4.9.3.23: a first-level child the server does not know."""
    condition = "unsupported-stanza-type"


class UnsupportedVersion(StreamError):
    """RFC 6120 §4.9.3.25: a stream version we do not speak."""
    condition = "unsupported-version"


class SaslFailure(Exception):
    """A SASL failure condition (RFC 6120 §6.5); the stream stays open."""

    def __init__(self, condition: str, text: str | None = None) -> None:
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text

    def to_xml(self) -> bytes:
        text = f"<text>{escape(self.text)}</text>" if self.text else ""
        return f"<failure xmlns='{ns.SASL}'><{self.condition}/>{text}</failure>".encode()


class StanzaError(Exception):
    """One stanza could not be handled; the sender gets an error reply (RFC 6120 §8.3)."""

    condition = "undefined-condition"
    type = "cancel"

    def __init__(self, text: str | None = None, *, app: ET.Element | None = None) -> None:
        super().__init__(text or self.condition)
        self.text = text
        # An application-specific condition (RFC 6120 §8.3.3.2): XEP-0060's <precondition-not-met/>,
        # XEP-0363's <file-too-large/>, XEP-0191's <blocked/>…
        self.app = app

    def to_xml(self, by: str | None = None) -> bytes:
        """The ``<error/>`` child of an error stanza."""
        by_attr = f" by='{escape(by, {chr(39): '&apos;'})}'" if by else ""
        text = f"<text xmlns='{ns.STANZAS}'>{escape(self.text)}</text>" if self.text else ""
        app = b""
        if self.app is not None:  # in its own namespace, declared on it
            app = ET.tostring(self.app, default_namespace=self.app.tag[1:].partition("}")[0])
        return (f"<error type='{self.type}'{by_attr}><{self.condition} xmlns='{ns.STANZAS}'/>"
                f"{text}").encode() + app + b"</error>"


class BadRequest(StanzaError):
    condition, type = "bad-request", "modify"


class StanzaConflict(StanzaError):
    condition, type = "conflict", "cancel"


class FeatureNotImplemented(StanzaError):
    condition, type = "feature-not-implemented", "cancel"


class Forbidden(StanzaError):
    condition, type = "forbidden", "auth"


class StanzaInternalServerError(StanzaError):
    condition, type = "internal-server-error", "cancel"


class ItemNotFound(StanzaError):
    condition, type = "item-not-found", "cancel"


class JidMalformed(StanzaError):
    condition, type = "jid-malformed", "modify"


class NotAcceptable(StanzaError):
    condition, type = "not-acceptable", "modify"


class NotAllowed(StanzaError):
    condition, type = "not-allowed", "cancel"


class StanzaNotAuthorized(StanzaError):
    condition, type = "not-authorized", "auth"


class StanzaPolicyViolation(StanzaError):
    condition, type = "policy-violation", "modify"


class RecipientUnavailable(StanzaError):
    condition, type = "recipient-unavailable", "wait"


class RemoteServerNotFound(StanzaError):
    condition, type = "remote-server-not-found", "cancel"


class RemoteServerTimeout(StanzaError):
    condition, type = "remote-server-timeout", "wait"


class StanzaResourceConstraint(StanzaError):
    condition, type = "resource-constraint", "wait"


class ServiceUnavailable(StanzaError):
    condition, type = "service-unavailable", "cancel"


class UnexpectedRequest(StanzaError):
    condition, type = "unexpected-request", "wait"


_BY_CONDITION: dict[str, type[StanzaError]] = {
    c.condition: c for c in StanzaError.__subclasses__()
}


def stanza_error_class(condition: str) -> type[StanzaError]:
    """The class for a condition name, e.g. when relaying an error chosen by another process."""
    return _BY_CONDITION.get(condition, StanzaError)
