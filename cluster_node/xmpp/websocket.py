"""XMPP over WebSocket (RFC 7395): the :class:`~.stream.Framing` of a stream carried in WebSocket
messages, sans-IO.

Each message is one complete XML element that declares its own namespaces.  Our side opens and
closes with ``<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' …/>`` and ``<close …/>`` (a stream
error is ``<stream:error xmlns:stream=…>`` then ``<close/>``); a restart after SASL is a new
``<open/>`` from the client, which the fresh parser of the restarted stream waits for.

:class:`WebSocketParser` parses the messages of one stream with one
:class:`~.parser.StreamParser`, inside a synthetic ``<stream:stream xmlns='jabber:client'>`` (so the
usual limits, hostile-XML checks and ``Stanza`` raw bytes all come from it), and checks after each
message that it was exactly one complete element: ``<open/>`` becomes the
:class:`~.parser.StreamOpened` of a ``<stream:stream>`` header, ``<close/>`` a
:class:`~.parser.StreamClosed`, anything else a :class:`~.parser.StanzaReceived` — anything but an
``<open/>`` before one is ``not-well-formed``, as is a message that is not exactly one element (the
stream then ends, so what such a message left in the parser never matters).  One parser per stream
rather than per message: making an expat parser cost more than parsing a chat message.

The protocols write joined bytes of complete elements, as over TCP; :meth:`WebSocketFraming.messages`
cuts them into one message per top-level element and declares on each what our TCP header would
have declared (``xmlns='jabber:client'`` on stanzas, ``xmlns:stream`` on ``<stream:features>``).
What the node writes is well-formed and a stanza's bytes hold no comment, PI or DTD, so the
elements are found without a parser: one element (:func:`_one`, a few byte scans: one stanza is
what is written most), else a scan of the tags (:func:`_split`); expat only for anything else
(CDATA, text between elements).  Cutting every write with expat cost a third more CPU per message
than TCP's whole path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from xml.parsers import expat

from . import errors, ns
from .errors import StreamError
from .parser import TOO_LARGE, Event, StanzaReceived, StreamClosed, StreamOpened, StreamParser, _tag_end
from .stanza import Stanza
from .stream import Attr, Parser

__all__ = ["FRAMING_NS", "Batch", "OneMessage", "WebSocketFraming", "WebSocketParser", "WEBSOCKET"]

FRAMING_NS = "urn:ietf:params:xml:ns:xmpp-framing"
_SEP = "\x01"


def _wrapper(content_ns: str) -> bytes:
    return f"<stream:stream xmlns='{content_ns}' xmlns:stream='{ns.STREAM}'>".encode()


class Batch(bytes):
    """Several WebSocket messages read at once, handed to the stream as one input (the bytes are
    what the byte counters and the shaper count); :class:`WebSocketParser` parses each message as
    one.  Made with :meth:`of`."""

    messages: list[bytes]

    @classmethod
    def of(cls, messages: list[bytes]) -> Batch:
        batch = cls(b"".join(messages))
        batch.messages = messages
        return batch


class OneMessage(bytes):
    """One element that declares its namespace: a WebSocket message as it is (a stanza the
    session writes, made by :meth:`WebSocketFraming.stanza_message`)."""


class WebSocketParser:
    """Parses one WebSocket message per :meth:`feed` (see the module docstring)."""

    def __init__(self, content_ns: str, *, max_stanza_size: int, max_depth: int) -> None:
        self.content_ns = content_ns
        self.max_stanza_size = max_stanza_size
        self.max_depth = max_depth
        self.opened = False
        self._dead: StreamError | None = None
        self._closed = False
        self._parser = StreamParser(max_stanza_size=max_stanza_size, max_depth=max_depth, content_ns=content_ns)
        self._parser.feed(_wrapper(content_ns))  # its StreamOpened is ours, not the peer's

    @property
    def bytes_buffered(self) -> int:
        return 0  # a message is parsed whole or refused

    def park(self) -> bool:
        return self._dead is None and self._parser.park()  # between messages: between stanzas

    def close(self) -> None:
        self._closed = True
        self._parser.close()

    def feed(self, data: bytes) -> list[Event]:
        """One message, or a :class:`Batch` of them (an error in one drops the batch's events, as
        TCP's parser drops a read's: the stream ends with it anyway)."""
        if self._closed:
            return []
        if self._dead is not None:
            raise type(self._dead)(self._dead.text)
        try:
            if type(data) is Batch:
                return self._parse_batch(data)
            return self._parse(data)
        except StreamError as e:
            self._dead = e
            raise

    def _parse_batch(self, batch: Batch) -> list[Event]:
        """The messages of a batch fed to the parser at once (one call, not one per message),
        each proved one element by the lengths of the stanzas parsed: as many stanzas as
        messages, each exactly its message's length, nothing left over — so each stanza's bytes
        are its message's.  A message that does not start with '<' and end with '>' (whitespace
        around it, a keepalive) makes the batch go one message at a time instead."""
        messages = batch.messages
        limit = self.max_stanza_size
        if not self.opened or any(not m or m[0] != 0x3C or m[-1] != 0x3E for m in messages):
            events: list[Event] = []
            for message in messages:
                events += self._parse(message)
            return events
        if any(len(m) > limit for m in messages):
            raise errors.PolicyViolation(TOO_LARGE)
        parser = self._parser
        lengths: list[int] = []
        parser.lengths = lengths
        try:
            events = parser.feed(batch)
        finally:
            parser.lengths = None
        if (len(events) != len(messages) or len(lengths) != len(messages) or not parser.between_stanzas
                or parser.bytes_buffered or any(len(m) != n for m, n in zip(messages, lengths, strict=True))):
            raise errors.NotWellFormed("a WebSocket message must be one complete XML element")
        for i, event in enumerate(events):
            stanza = event.stanza  # type: ignore[union-attr]  # all StanzaReceived: as many as lengths
            if stanza.namespace == FRAMING_NS:
                if stanza.name == "open":
                    raise errors.NotWellFormed("second <open/>")
                if stanza.name == "close":
                    return [*events[:i], StreamClosed()]  # nothing after it counts
                raise errors.UnsupportedStanzaType(f"<{stanza.name}/> in {FRAMING_NS}")
            if stanza.namespace == ns.STREAM and stanza.name == "stream":
                raise errors.NotWellFormed("<stream:stream> is not used over WebSocket")
        return events

    def _parse(self, data: bytes) -> list[Event]:
        if not data.strip():
            return []  # nothing (RFC 7395 has no whitespace keepalives; tolerate them)
        if len(data) > self.max_stanza_size:
            raise errors.PolicyViolation(TOO_LARGE)
        parser = self._parser
        events = parser.feed(data)
        if len(events) != 1 or not isinstance(events[0], StanzaReceived) or not parser.between_stanzas \
                or parser.bytes_buffered:
            raise errors.NotWellFormed("a WebSocket message must be one complete XML element")
        stanza = events[0].stanza
        if stanza.namespace == FRAMING_NS:
            if stanza.name == "open":
                if self.opened:
                    raise errors.NotWellFormed("second <open/>")
                self.opened = True
                attrs = {k: v for k, v in stanza.element.attrib.items()}
                return [StreamOpened(attrs, f"{{{ns.STREAM}}}stream", self.content_ns)]
            if stanza.name == "close":
                return [StreamClosed()]
            raise errors.UnsupportedStanzaType(f"<{stanza.name}/> in {FRAMING_NS}")
        if not self.opened:
            raise errors.NotWellFormed("<open/> must come first")
        if stanza.namespace == ns.STREAM and stanza.name == "stream":
            raise errors.NotWellFormed("<stream:stream> is not used over WebSocket")
        return events


class WebSocketFraming:
    """RFC 7395: one element per WebSocket message."""

    def parser(self, content_ns: str, *, max_stanza_size: int, max_depth: int) -> Parser:
        return WebSocketParser(content_ns, max_stanza_size=max_stanza_size, max_depth=max_depth)

    def opening(self, content_ns: str, attrs: Sequence[Attr], prefixes: Sequence[tuple[str, str]] = ()) -> bytes:
        rest = "".join(f" {name}={value}" for name, value in attrs)
        return f"<open xmlns='{FRAMING_NS}'{rest}/>".encode()

    def closing(self) -> bytes:
        return f"<close xmlns='{FRAMING_NS}'/>".encode()

    def error(self, error: StreamError) -> bytes:
        xml = error.to_xml()
        assert xml.startswith(b"<stream:error")
        return b"<stream:error xmlns:stream='" + ns.STREAM.encode() + b"'" + xml[len(b"<stream:error"):]

    def stanza_message(self, stanza: Stanza, content_ns: str = ns.CLIENT) -> OneMessage:
        """A stanza as one message: its kept bytes declaring ``content_ns``
        (:meth:`Stanza.standalone`: a WebSocket client's go as they are, a TCP client's get
        ``xmlns`` inserted, the tag not read); otherwise :meth:`element` reads them."""
        standalone = stanza.standalone(content_ns)
        if standalone is not None:
            return OneMessage(standalone)
        return OneMessage(self.element(stanza.to_bytes(), content_ns))

    def element(self, data: bytes, content_ns: str = ns.CLIENT) -> bytes:
        """``data``, exactly one element, as one message declaring its namespace (what
        :meth:`messages` does for one stanza, without proving it is one)."""
        m = _NAME.match(data)
        if m is None:
            return b"".join(self.messages(data, content_ns))
        name_end = m.end()
        return _declared(data, _prefixes(data[name_end:_tag_end(data, 0)]), content_ns, name_end)

    def messages(self, data: bytes, content_ns: str = ns.CLIENT) -> list[bytes]:
        """``data`` (complete top-level elements, as a protocol writes them) as WebSocket messages:
        one per element, each declaring its namespace and the ``stream:`` prefix if it uses it."""
        if not data:
            return []
        one = _one(data)
        if one is not None:
            return [_declared(data, one, content_ns)]
        split = _split(data)
        if split is not None:
            return [_declared(element, decls, content_ns) for element, decls in split]
        return _messages_expat(data, content_ns)


def _messages_expat(data: bytes, content_ns: str) -> list[bytes]:
    """:meth:`WebSocketFraming.messages` with expat: whatever well-formed XML ``data`` holds."""
    wrapper = _wrapper(content_ns)
    buf = wrapper + data
    p = expat.ParserCreate("UTF-8", _SEP)
    p.namespace_prefixes = True
    out: list[bytes] = []
    depth = 0
    start = start_end = 0
    decls: set[str] = set()
    pending: list[str] = []

    def on_decl(prefix: str | None, uri: str) -> None:
        pending.append(prefix or "")

    def on_start(name: str, attrs: dict[str, str]) -> None:
        nonlocal depth, start, start_end, decls
        depth += 1
        if depth == 2:
            start = p.CurrentByteIndex
            start_end = _tag_end(buf, start)
            decls = set(pending)
        pending.clear()

    def on_end(name: str) -> None:
        nonlocal depth
        depth -= 1
        if depth != 1:
            return
        end = start_end if buf[start_end - 2] == 0x2F else _tag_end(buf, p.CurrentByteIndex)
        out.append(_declared(buf[start:end], decls, content_ns))

    p.StartNamespaceDeclHandler = on_decl
    p.StartElementHandler = on_start
    p.EndElementHandler = on_end
    p.Parse(buf, False)
    return out


# A tag: '<', '/' for an end tag, its name, attributes (quoted values may hold '>' and '/'), '/' for
# an empty-element tag, '>'.
_TAG = re.compile(rb"""<(/?)[^\s/>'"]+((?:[^>'"/]+|/(?!>)|'[^']*'|"[^"]*")*)(/?)>""")
_QUOTED = re.compile(rb"'[^']*'|\"[^\"]*\"")
_XMLNS = re.compile(rb"\sxmlns(?::([^\s=]+))?\s*=")
_NAME = re.compile(rb"<([^\s/>'\"]+)")  # the name of the tag data starts with


def _one(data: bytes) -> set[str] | None:
    """The prefixes the start tag of ``data`` declares if a few scans prove ``data`` is exactly one
    element (one stanza: what is written most); else None.  Proof: ``data`` is well-formed
    content with only tags for markup; it starts with a start tag that is either an empty-element
    tag ending ``data``, or whose name starts no other tag while its end tag ends ``data`` — a
    second top-level element would end ``data`` with that end tag only by having the same name."""
    m = _NAME.match(data)
    if m is None or b"<!" in data or b"<?" in data:
        return None
    try:
        end = _tag_end(data, 0)
    except errors.NotWellFormed:
        return None
    if data[end - 2] == 0x2F:  # '/>'
        return _prefixes(data[m.end():end - 2]) if end == len(data) else None
    name = m.group(1)
    if not data.endswith(b"</" + name + b">"):
        return None
    if data.count(b"<" + name) != 1:  # ('<messages' would count too: then the longer way)
        return None
    return _prefixes(data[m.end():end - 1])


def _split(data: bytes) -> list[tuple[bytes, set[str]]] | None:
    """The top-level elements of ``data`` and the prefixes each one's start tag declares ("" for
    the default namespace), from its tags alone; None when ``data`` is not that simple case —
    markup other than tags (CDATA, comments, PIs), text between elements, a '<' that starts no
    tag, unbalanced tags: then expat decides.  One element (a stanza: the usual case) is found
    from the tags' kinds alone."""
    if b"<!" in data or b"<?" in data:
        return None
    tags = _TAG.findall(data)
    if not tags or len(tags) != data.count(b"<"):
        return None
    depth = 0
    last = len(tags) - 1
    for i, (end_tag, _attrs, empty) in enumerate(tags):
        if end_tag:
            depth -= 1
        elif not empty:
            depth += 1
        if depth <= 0 and i != last:
            return _split_many(data)
    element = data.strip()
    if depth or tags[0][0] or not element.startswith(b"<") or not element.endswith(b">"):
        return _split_many(data)
    return [(element, _prefixes(tags[0][1]))]


def _prefixes(attrs: bytes) -> set[str]:
    """The prefixes a start tag's attributes declare ("" for ``xmlns=``)."""
    if b"xmlns" not in attrs:
        return set()
    return {p.decode() for p in _XMLNS.findall(_QUOTED.sub(b"", attrs))}


def _split_many(data: bytes) -> list[tuple[bytes, set[str]]] | None:
    """:func:`_split` for several elements: each one's bytes from the tags' positions."""
    out: list[tuple[bytes, set[str]]] = []
    depth = 0
    start = pos = 0
    decls: set[str] = set()
    for m in _TAG.finditer(data):
        end_tag, attrs, empty = m.groups()
        if depth == 0:
            if end_tag or data[pos:m.start()].strip():
                return None
            start = m.start()
            decls = _prefixes(attrs)
            if empty:
                out.append((data[start:m.end()], decls))
                pos = m.end()
            else:
                depth = 1
        elif end_tag:
            if empty:
                return None
            depth -= 1
            if depth == 0:
                out.append((data[start:m.end()], decls))
                pos = m.end()
        elif not empty:
            depth += 1
    if depth or data[pos:].strip():
        return None
    return out


def _name_end(element: bytes) -> int:
    """Where the start tag's name of ``element`` ends."""
    i = 1
    while i < len(element) and element[i] not in b" \t\r\n/>":
        i += 1
    return i


def _declared(element: bytes, decls: set[str], content_ns: str, name_end: int | None = None) -> bytes:
    """``element`` with ``xmlns`` (or ``xmlns:stream``) declared on its start tag if it was not
    (``name_end``: where the start tag's name ends, when the caller knows it already)."""
    i = _name_end(element) if name_end is None else name_end
    qname = element[1:i]
    prefix = qname.split(b":", 1)[0].decode() if b":" in qname else ""
    if prefix in decls:
        return element
    if prefix == "stream":
        decl = f" xmlns:stream='{ns.STREAM}'"
    elif prefix == "":
        decl = f" xmlns='{content_ns}'"
    else:
        return element  # no other prefix is bound by our side's header
    return element[:i] + decl.encode() + element[i:]


WEBSOCKET = WebSocketFraming()
