"""Incremental XML stream parser (RFC 6120 §4, §11), sans-IO, on expat.

``feed(bytes)`` returns events: the stream header, each first-level element as a
:class:`~cluster_node.xmpp.stanza.Stanza` that keeps its exact input bytes, and the stream's end.
Hostile input raises the matching :class:`~cluster_node.xmpp.errors.StreamError`: DTDs, entity
declarations and undefined entity references, comments and processing instructions are
``restricted-xml`` (RFC 6120 §11.1), invalid UTF-8 is ``unsupported-encoding`` (§11.6), unbound
prefixes ``bad-namespace-prefix``, and a stanza over the size or depth budget is
``policy-violation`` — found after at most one slice of work past the budget, before the rest of
a huge input is parsed.  After an error the parser is dead: every later ``feed`` raises again.
"""

from __future__ import annotations

import codecs
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any
from xml.parsers import expat

from . import errors, ns
from .errors import StreamError
from .stanza import Stanza

__all__ = ["StreamParser", "StreamOpened", "StanzaReceived", "StreamClosed", "Event", "TOO_LARGE", "TOO_DEEP"]

SLICE = 16 * 1024
SEP = "\x01"
# The texts of the policy-violations for max_stanza_size and max_depth: how an adapter tells
# these refusals from the others (the parser knows no settings, the adapter counts them).
TOO_LARGE = "stanza too large"
TOO_DEEP = "stanza too deep"
# expat interns every element and attribute name it reports in a dict; by default one per parser,
# which kept ~10 KB of the same few dozen names alive per idle connection.  One dict for every
# parser of the process instead, emptied when a peer inventing names has grown it past the bound
# (interning is only a saving: a cleared dict costs nothing but a few new strings).
_NAMES: dict[str, str] = {}
_NAMES_MAX = 4096
_E = expat.errors
_UNBOUND = _E.codes[_E.XML_ERROR_UNBOUND_PREFIX]
_ENTITY_CODES = {_E.codes[_E.XML_ERROR_UNDEFINED_ENTITY], _E.codes[_E.XML_ERROR_EXTERNAL_ENTITY_HANDLING],
                 _E.codes[_E.XML_ERROR_RECURSIVE_ENTITY_REF], _E.codes[_E.XML_ERROR_BINARY_ENTITY_REF]}
_DTD_MARKUP = (b"<!DOCTYPE", b"<!ENTITY", b"<!ELEMENT", b"<!ATTLIST", b"<!NOTATION")


def _refusing(what: str):  # type: ignore[no-untyped-def]
    """An expat handler refusing markup XMPP does not allow (made once, shared by every parser)."""
    def handler(*_args: object) -> None:
        raise errors.RestrictedXml(f"{what} is not allowed in XMPP")
    return handler


_REFUSE_DTD = _refusing("a DTD")
_REFUSE_ENTITY = _refusing("an entity declaration")
_REFUSE_COMMENT = _refusing("a comment")
_REFUSE_PI = _refusing("a processing instruction")
_REFUSE_EXTERNAL = _refusing("an external entity")


@dataclass(frozen=True)
class StreamOpened:
    attrs: dict[str, str]
    name: str
    default_ns: str | None


@dataclass(frozen=True)
class StanzaReceived:
    stanza: Stanza


@dataclass(frozen=True)
class StreamClosed:
    pass


Event = StreamOpened | StanzaReceived | StreamClosed


_CLARK_CACHE: dict[str, tuple[str, str | None]] = {}
_CLARK_CACHE_MAX = 4096  # distinct names remembered; a peer inventing names cannot grow it further


def _clark(name: str) -> tuple[str, str | None]:
    """expat's 'uri SEP local [SEP prefix]' → ('{uri}local', prefix).  Remembered: every stanza
    repeats the same few names, and this ran for each element and attribute."""
    got = _CLARK_CACHE.get(name)
    if got is not None:
        return got
    parts = name.split(SEP)
    if len(parts) == 1:
        got = (parts[0], None)
    elif len(parts) == 2:
        got = ("{%s}%s" % (parts[0], parts[1]), None)
    else:
        got = ("{%s}%s" % (parts[0], parts[1]), parts[2])
    if len(_CLARK_CACHE) < _CLARK_CACHE_MAX:
        _CLARK_CACHE[name] = got
    return got


def _tag_end(buf: bytearray | bytes, start: int) -> int:
    """Index just past the '>' closing the tag that starts at ``start`` (quotes skipped)."""
    gt = buf.find(b">", start)
    if gt < 0:
        raise errors.NotWellFormed("unterminated tag")
    seg = buf[start:gt]
    apos, quot = seg.count(b"'"), seg.count(b'"')
    # Fast path: with one quote style in use, its parity tells whether '>' sits inside a value.
    if (apos == 0 and quot % 2 == 0) or (quot == 0 and apos % 2 == 0):
        return gt + 1
    quote = 0
    i = start
    n = len(buf)
    while i < n:
        c = buf[i]
        if quote:
            if c == quote:
                quote = 0
        elif c == 0x27 or c == 0x22:
            quote = c
        elif c == 0x3E:
            return i + 1
        i += 1
    raise errors.NotWellFormed("unterminated tag")


class StreamParser:
    def __init__(self, *, max_stanza_size: int = 262_144, max_depth: int = 32,
                 content_ns: str = ns.CLIENT) -> None:
        self.max_stanza_size = max_stanza_size
        self.max_depth = max_depth
        self.content_ns = content_ns
        # When a list: the byte length of each stanza parsed, appended in order (the WebSocket
        # framing checks that each message of a batch was exactly one stanza with it).
        self.lengths: list[int] | None = None
        self.reset()

    @property
    def bytes_buffered(self) -> int:
        return len(self._buf)

    @property
    def between_stanzas(self) -> bool:
        """Inside the stream with no stanza begun: the next input may start a new stanza."""
        return self._depth == 1 and self._stanza_start < 0 and self._dead is None

    def reset(self) -> None:
        """A new stream on the same connection (after STARTTLS or SASL, RFC 6120 §4.3.3)."""
        self._p: Any = self._new_expat()
        self._header: bytes | None = None  # the stream's opening bytes, to re-create a parked parser
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._utf8_partial = False  # the decoder holds an incomplete character
        self._events: list[Event] = []
        self._buf = bytearray()
        self._base = 0  # absolute input offset of _buf[0]
        self._fed = 0
        self._depth = 0
        self._stack: list[ET.Element] = []
        self._texts: list[str] = []
        self._pending_decls: list[tuple[str, str]] = []
        self._stanza_start = -1
        self._stanza_decls: tuple[tuple[str, str], ...] = ()
        self._stanza_prefixes: set[str] = set()
        self._raw_ok = True
        self._start_end = 0
        self._lang: str | None = None
        self._dead: StreamError | None = None
        self._closed = False

    def close(self) -> None:
        """No more input: drop the expat parser now.  It holds this object's bound methods as its
        handlers, a reference cycle only the garbage collector would free — one per stream (three
        per c2s login), and under a login storm a collector pass every second took 25–200 ms
        finding them.  Input fed afterwards is ignored."""
        self._p = None
        self._closed = True

    # -- parking an idle stream's parser --------------------------------------------------------

    @property
    def parked(self) -> bool:
        return self._p is None

    def park(self) -> bool:
        """Drop the expat parser of a stream that sits between stanzas (about 11 KB, most of an
        idle connection's parsing state); the next :meth:`feed` re-creates it by replaying the
        stream's opening tag, so nothing is lost but a few microseconds then.  False when the
        stream is not at a point where that is exact (inside a stanza, a partial tag or character
        buffered, no stream opened yet)."""
        if self._p is None:
            return True
        if (not self.between_stanzas or self._buf or self._utf8_partial or self._header is None
                or self._texts or self._events or self._pending_decls):
            return False
        self._p = None
        return True

    def _revive(self) -> None:
        header = self._header
        assert header is not None
        self._p = self._new_expat()
        self._buf = bytearray(header)
        self._base = 0
        self._fed = len(header)
        self._depth = 0
        self._p.Parse(header, False)  # the stream's start tag again: depth 1, its namespaces and xml:lang
        self._events.clear()  # its StreamOpened was reported when the stream really opened

    def _new_expat(self) -> Any:
        p = expat.ParserCreate("UTF-8", SEP, intern=_NAMES)
        p.namespace_prefixes = True
        p.buffer_text = False  # its 8 KiB buffer per connection; _text collects the pieces anyway
        p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        p.XmlDeclHandler = self._xml_decl
        p.StartDoctypeDeclHandler = _REFUSE_DTD
        p.EntityDeclHandler = _REFUSE_ENTITY
        p.CommentHandler = _REFUSE_COMMENT
        p.ProcessingInstructionHandler = _REFUSE_PI
        p.ExternalEntityRefHandler = _REFUSE_EXTERNAL
        p.StartNamespaceDeclHandler = self._ns_decl
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end
        p.CharacterDataHandler = self._text
        return p

    # -- feeding -------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Event]:
        if self._dead is not None:
            raise type(self._dead)(self._dead.text)
        if self._p is None:
            if self._closed:
                return []
            self._revive()
        try:
            # ASCII is valid UTF-8: the decoder (which builds a str of the input) only runs for
            # other bytes, or when it holds the start of a character from the previous input.
            if self._utf8_partial or not data.isascii():
                try:
                    self._decoder.decode(data)
                except UnicodeDecodeError:
                    raise errors.UnsupportedEncoding("invalid UTF-8") from None
                self._utf8_partial = bool(self._decoder.getstate()[0])
            for i in range(0, len(data), SLICE):
                chunk = data[i:i + SLICE] if len(data) > SLICE else data  # one read: no copy
                self._buf += chunk
                self._fed += len(chunk)
                try:
                    self._p.Parse(chunk, False)
                except expat.ExpatError as e:
                    raise self._expat_error(e) from None
                self._check_budget()
            if len(_NAMES) > _NAMES_MAX:
                _NAMES.clear()
        except StreamError as e:
            self._dead = e
            self._events.clear()
            raise
        events, self._events = self._events, []
        return events

    def _check_budget(self) -> None:
        if self._depth >= 2:
            pending = self._fed - self._stanza_start
        else:
            if self._depth == 1:
                # Between stanzas only whitespace or a partial tag can be buffered: keep from '<'.
                lt = self._buf.rfind(b"<")
                if lt < 0:
                    self._base += len(self._buf)
                    self._buf.clear()
                elif lt > 0:
                    del self._buf[:lt]
                    self._base += lt
            pending = self._fed - self._base
        if pending > self.max_stanza_size:
            raise errors.PolicyViolation(TOO_LARGE)

    def _expat_error(self, e: expat.ExpatError) -> StreamError:
        if e.code == _UNBOUND:
            return errors.BadNamespacePrefix("unbound prefix")
        if e.code in _ENTITY_CODES:
            return errors.RestrictedXml("entity references other than the predefined five are not allowed")
        if any(m in self._buf for m in _DTD_MARKUP):
            return errors.RestrictedXml("DTD markup is not allowed in XMPP")
        return errors.NotWellFormed(str(e))

    # -- expat handlers -----------------------------------------------------------------------

    def _xml_decl(self, version: str | None, encoding: str | None, standalone: int) -> None:
        if encoding and encoding.lower() not in ("utf-8", "utf8"):
            raise errors.UnsupportedEncoding(f"encoding {encoding!r}; XMPP is UTF-8")

    def _ns_decl(self, prefix: str | None, uri: str) -> None:
        self._pending_decls.append((prefix or "", uri))

    def _flush_text(self) -> None:
        if not self._texts or len(self._stack) == 0:
            self._texts.clear()
            return
        text = "".join(self._texts)
        self._texts.clear()
        parent = self._stack[-1]
        if len(parent):
            last = parent[-1]
            last.tail = (last.tail or "") + text
        else:
            parent.text = (parent.text or "") + text

    def _text(self, data: str) -> None:
        if self._depth >= 2:
            self._texts.append(data)
        elif self._depth == 1 and data.strip():
            raise errors.NotWellFormed("text between stanzas")

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        depth = self._depth = self._depth + 1
        decls = self._pending_decls
        if decls:
            self._pending_decls = []  # ``decls`` is kept (the stanza's own declarations)
        tag, prefix = _clark(name)
        clean: dict[str, str] = {}
        attr_prefixes: list[str] | None = None
        for key, value in attrs.items():
            k, p = _CLARK_CACHE.get(key) or _clark(key)
            clean[k] = value
            if p is not None and p != "xml":
                if attr_prefixes is None:
                    attr_prefixes = []
                attr_prefixes.append(p)
        if depth == 1:
            self._open_stream(tag, clean, decls)
            return
        if depth - 1 > self.max_depth:
            raise errors.PolicyViolation(TOO_DEEP)
        if self._texts:
            self._flush_text()
        stack = self._stack
        if depth == 2:
            start = self._p.CurrentByteIndex
            self._stanza_start = start
            self._stanza_decls = tuple(decls)
            prefixes = self._stanza_prefixes = set()
            self._raw_ok = True
            rel = start - self._base
            self._start_end = _tag_end(self._buf, rel) - rel
            if self._lang is not None and ns.XML_LANG not in clean:
                clean[ns.XML_LANG] = self._lang
            if decls:
                prefixes.update(p for p, _ in decls if p)
            if prefix is not None or attr_prefixes is not None and any(
                    p not in prefixes for p in attr_prefixes):
                self._raw_ok = False
            el = ET.Element(tag, clean)
        else:
            prefixes = self._stanza_prefixes
            if decls:
                prefixes.update(p for p, _ in decls if p)
            if (prefix is not None and prefix not in prefixes) or attr_prefixes is not None and any(
                    p not in prefixes for p in attr_prefixes):
                self._raw_ok = False
            el = ET.SubElement(stack[-1], tag, clean)
        stack.append(el)

    def _open_stream(self, tag: str, attrs: dict[str, str], decls: list[tuple[str, str]]) -> None:
        default = next((uri for p, uri in decls if p == ""), None)
        self._lang = attrs.get(ns.XML_LANG)
        rel = self._p.CurrentByteIndex - self._base
        end = _tag_end(self._buf, rel)
        if self._header is None:
            self._header = bytes(self._buf[:end])  # with the XML declaration, if one came first
        del self._buf[:end]
        self._base += end
        self._events.append(StreamOpened(attrs, tag, default))
        if tag != f"{{{ns.STREAM}}}stream":
            raise errors.InvalidNamespace("the root must be <stream:stream/>")
        if default != self.content_ns:
            raise errors.InvalidNamespace(f"the content namespace must be {self.content_ns}")

    def _end(self, name: str) -> None:
        depth = self._depth
        self._depth = depth - 1
        if depth == 1:
            self._events.append(StreamClosed())
            return
        if self._texts:
            self._flush_text()
        el = self._stack.pop()
        if depth != 2:
            return
        buf, base, start_end = self._buf, self._base, self._start_end
        rel_start = self._stanza_start - base
        if buf[rel_start + start_end - 2] == 0x2F:  # '/>': an empty-element tag
            rel_end = rel_start + start_end
        else:  # expat points at the '<' of the end tag, which has no attributes: the next '>'
            rel_end = buf.find(b">", self._p.CurrentByteIndex - base) + 1
        raw = bytes(buf[rel_start:rel_end])
        if self.lengths is not None:
            self.lengths.append(rel_end - rel_start)
        del buf[:rel_end]
        self._base = base + rel_end
        self._stanza_start = -1
        if self._raw_ok:
            stanza = Stanza(el, raw, min(start_end, len(raw)), self._stanza_decls)
        else:
            stanza = Stanza(el)
        self._events.append(StanzaReceived(stanza))
