"""A stanza that keeps the bytes it arrived as (docs/architecture.md: serialize once, forward bytes).

The tree (``xml.etree.ElementTree`` with Clark names) is for reading; relaying writes the
original bytes.  Stamping ``from``/``to`` rewrites only the start tag: a new start tag plus the
untouched rest, no tree serialization.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from . import ns

if TYPE_CHECKING:
    from .errors import StanzaError

__all__ = ["Stanza", "serialize", "escape_attr", "escape_text"]

_ATTR_KEYS = {"from_": "from", "to": "to", "type": "type", "id": "id"}


def escape_text(s: str) -> str:
    if "&" in s:
        s = s.replace("&", "&amp;")
    if "<" in s:
        s = s.replace("<", "&lt;")
    if ">" in s:
        s = s.replace(">", "&gt;")
    if "\r" in s:  # written as is, a parser reads it back as "\n" (XML 1.0 §2.11)
        s = s.replace("\r", "&#13;")
    return s


def escape_attr(s: str) -> str:
    s = escape_text(s)
    if "'" in s:
        s = s.replace("'", "&apos;")
    if '"' in s:
        s = s.replace('"', "&quot;")
    if "\n" in s or "\r" in s or "\t" in s:
        s = s.replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    return s


_SPLIT_CACHE: dict[str, tuple[str, str]] = {}
_SPLIT_CACHE_MAX = 4096  # distinct tags remembered; a peer inventing names cannot grow it further


def _split(tag: str) -> tuple[str, str]:
    """'{uri}local' → (uri, local).  Remembered: the same few tags are asked for on every stanza
    (``Stanza.name`` was ~5 % of the node's CPU in the closed loop)."""
    got = _SPLIT_CACHE.get(tag)
    if got is not None:
        return got
    if tag[:1] == "{":
        uri, _, local = tag[1:].partition("}")
        got = (uri, local)
    else:
        got = ("", tag)
    if len(_SPLIT_CACHE) < _SPLIT_CACHE_MAX:
        _SPLIT_CACHE[tag] = got
    return got


def _attrs(el: ET.Element, out: list[str], prefixes: dict[str, str]) -> None:
    for key, value in el.attrib.items():
        if key[:1] == "{":
            uri, local = _split(key)
            if uri == ns.XML:
                out.append(f" xml:{local}='{escape_attr(value)}'")
                continue
            prefix = prefixes.get(uri)
            if prefix is None:
                prefix = prefixes[uri] = f"a{len(prefixes)}"
                out.append(f" xmlns:{prefix}='{escape_attr(uri)}'")
            out.append(f" {prefix}:{local}='{escape_attr(value)}'")
        else:
            out.append(f" {key}='{escape_attr(value)}'")


def _write(el: ET.Element, out: list[str], default_ns: str) -> None:
    uri, local = _split(el.tag)
    out.append("<" + local)
    if uri != default_ns:
        out.append(f" xmlns='{escape_attr(uri)}'")
        default_ns = uri
    if el.attrib:
        _attrs(el, out, {})
    if len(el) or el.text:
        out.append(">")
        if el.text:
            out.append(escape_text(el.text))
        for child in el:
            _write(child, out, default_ns)
            if child.tail:
                out.append(escape_text(child.tail))
        out.append(f"</{local}>")
    else:
        out.append("/>")


def serialize(element: ET.Element, default_ns: str = ns.CLIENT) -> bytes:
    """XML for ``element``: ``default_ns`` unprefixed and undeclared, other namespaces declared
    with ``xmlns='…'`` where they change (no generated ``ns0:`` prefixes)."""
    out: list[str] = []
    _write(element, out, default_ns)
    return "".join(out).encode("utf-8")


_XML_LANG_ATTR = re.compile(rb"\sxml:lang\s*=")
_ATTR_VALUE = re.compile(rb"'[^']*'|\"[^\"]*\"")


def _has_xml_lang(start_tag: bytes) -> bool:
    """Whether a start tag (as received: well-formed) carries ``xml:lang`` itself."""
    if b"xml:lang" not in start_tag:
        return False
    return _XML_LANG_ATTR.search(_ATTR_VALUE.sub(b"''", start_tag)) is not None


_AFTER_NAME = frozenset({b" ", b"\t", b"\r", b"\n", b"/", b">"})  # what may follow a tag's name
_XMLNS_DECL = {uri: f" xmlns='{uri}'".encode() for uri in (ns.CLIENT, ns.SERVER)}


class Stanza:
    """A first-level element of a stream, with its original bytes when they are self-contained."""

    __slots__ = ("element", "_raw", "_start_end", "_nsdecls", "_bytes")

    def __init__(self, element: ET.Element, raw: bytes | None = None, start_tag_end: int = 0,
                 raw_nsdecls: tuple[tuple[str, str], ...] = ()) -> None:
        self.element = element
        self._raw = raw
        self._start_end = start_tag_end
        self._nsdecls = raw_nsdecls
        self._bytes: bytes | None = raw

    def __repr__(self) -> str:
        return f"<Stanza {self.to_bytes()[:200]!r}>"

    @property
    def name(self) -> str:
        got = _SPLIT_CACHE.get(self.element.tag)  # (asked several times per stanza: no call when known)
        return got[1] if got is not None else _split(self.element.tag)[1]

    @property
    def namespace(self) -> str:
        got = _SPLIT_CACHE.get(self.element.tag)
        return got[0] if got is not None else _split(self.element.tag)[0]

    @property
    def type(self) -> str | None:
        return self.element.get("type")

    @property
    def id(self) -> str | None:
        return self.element.get("id")

    @property
    def to(self) -> str | None:
        return self.element.get("to")

    @property
    def from_(self) -> str | None:
        return self.element.get("from")

    @property
    def lang(self) -> str | None:
        return self.element.get(ns.XML_LANG)

    def child(self, namespace: str, name: str | None = None) -> ET.Element | None:
        prefix = "{" + namespace + "}"
        for c in self.element:
            if c.tag.startswith(prefix) and (name is None or c.tag == prefix + name):
                return c
        return None

    def payload(self) -> ET.Element | None:
        for c in self.element:
            return c
        return None

    def start_tag_end(self) -> int:
        """Where the start tag ends in :meth:`to_bytes` (just past its ``>``), or 0 when that is
        not known without reading it."""
        return self._start_end if self._raw is not None else 0

    def kept_bytes(self) -> bytes | None:
        """The stanza's own bytes when they were kept from the wire (self-contained, in the
        stream's namespace), else None: what an embedding can copy as they are."""
        return self._raw

    def declares_default_namespace(self) -> bool:
        """Whether the start tag of the kept bytes is known to declare ``xmlns`` (as the parser
        saw it); False also when that is not known."""
        return any(not prefix for prefix, _ in self._nsdecls)

    def standalone(self, uri: str) -> bytes | None:
        """The kept bytes as an element standing alone in ``uri`` (a WebSocket message, the
        original inside a carbon): ``xmlns='uri'`` declared on the start tag where the stream
        only implied it.  None when the bytes cannot tell (none kept, a prefixed name, a start tag
        declaring prefixes only): serialize :attr:`element` then."""
        end = self.start_tag_end()
        if not end:
            return None
        data = self.to_bytes()
        if self.declares_default_namespace():
            return data
        name = self.name
        n = len(name) + 1
        if data[n:n + 1] not in _AFTER_NAME or not data.startswith(name.encode(), 1) \
                or data.find(b"xmlns", n, end) >= 0:
            return None
        decl = _XMLNS_DECL.get(uri) or f" xmlns='{escape_attr(uri)}'".encode()
        return data[:n] + decl + data[n:]

    def to_bytes(self) -> bytes:
        if self._bytes is None:
            self._bytes = serialize(self.element, self.namespace if self.namespace in (ns.CLIENT, ns.SERVER)
                                    else ns.CLIENT)
        return self._bytes

    def with_attrs(self, **changes: str | None) -> Stanza:
        """A copy with ``from_``/``to``/``type``/``id`` set (``None`` removes); only the start tag
        is rewritten when the original bytes are kept."""
        el = self.element.__copy__()  # shallow: the children are shared, as they were before
        el.attrib = dict(el.attrib)  # ElementTree's __copy__ shares the attribute dict
        return self._stamped(el, changes)

    def appended(self, child: ET.Element) -> Stanza:
        """A copy with ``child`` added last.  Kept bytes that end with the stanza's own end tag
        keep being used, ``child``'s bytes written before it (not the whole stanza serialized
        again, as a tree-only copy would be when it is sent)."""
        el = self.element.__copy__()  # shallow: the children are shared, the list is the copy's
        el.attrib = dict(el.attrib)  # __copy__ shares the attribute dict: a later stamp() must not reach ours
        el.append(child)
        raw = self._raw
        if raw is None:
            return Stanza(el)
        end = f"</{self.name}>".encode()
        if not raw.endswith(end) or self._start_end >= len(raw):
            return Stanza(el)  # an empty element or a prefixed end tag: the tree's way
        inner = serialize(child, self.namespace)
        cut = len(raw) - len(end)
        return Stanza(el, raw[:cut] + inner + raw[cut:], self._start_end, self._nsdecls)

    def stamp(self, **changes: str | None) -> Stanza:
        """:meth:`with_attrs` for a caller that drops this stanza (c2s stamping ``from`` on what a
        client sent): its element is changed in place instead of copied, so this stanza must not
        be used afterwards."""
        return self._stamped(self.element, changes)

    def _stamped(self, el: ET.Element, changes: dict[str, str | None]) -> Stanza:
        attrib = el.attrib
        only_added = True
        for key, value in changes.items():
            attr = _ATTR_KEYS[key]
            if value is None:
                only_added = False
                attrib.pop(attr, None)
            else:
                if attr in attrib:
                    only_added = False
                attrib[attr] = value
        raw = self._raw
        if raw is None:
            return Stanza(el)
        start_end = self._start_end
        empty = start_end >= len(raw)
        if only_added:
            # The attributes are new: insert them before the start tag's '>' (or '/>'), the rest
            # of the bytes untouched.
            old_head = raw[:start_end - 2 if empty else start_end - 1]
            added = ""
            for key, value in changes.items():
                added += f" {_ATTR_KEYS[key]}='{escape_attr(value)}'"  # type: ignore[arg-type]
            lang = attrib.get(ns.XML_LANG)
            if lang is not None and not _has_xml_lang(old_head):
                added += f" xml:lang='{escape_attr(lang)}'"  # inherited from the stream header
            head = old_head + added.encode("utf-8") + (b"/>" if empty else b">")
            return Stanza(el, head if empty else head + raw[start_end:], len(head), self._nsdecls)
        parts = ["<", _split(el.tag)[1]]
        for prefix, uri in self._nsdecls:
            parts.append(f" xmlns:{prefix}='{escape_attr(uri)}'" if prefix else f" xmlns='{escape_attr(uri)}'")
        for key, value in attrib.items():
            if key[:1] == "{":
                uri, local = _split(key)
                if uri != ns.XML:
                    return Stanza(el)  # a namespaced attribute: let the serializer declare it
                parts.append(f" xml:{local}='{escape_attr(value)}'")
            else:
                parts.append(f" {key}='{escape_attr(value)}'")
        parts.append("/>" if empty else ">")
        head = "".join(parts).encode("utf-8")
        return Stanza(el, head if empty else head + raw[start_end:], len(head), self._nsdecls)

    def error_reply(self, error: StanzaError, by: str | None = None) -> Stanza:
        """RFC 6120 §8.3.1: back to the sender, type 'error', same id; the original payload kept
        for messages and presence."""
        el = ET.Element(self.element.tag, {"type": "error"})
        if self.id is not None:
            el.set("id", self.id)
        if self.from_:
            el.set("to", self.from_)
        if self.to:
            el.set("from", self.to)
        if self.name != "iq":
            el.extend(list(self.element))
        content = self.namespace if self.namespace in (ns.CLIENT, ns.SERVER) else ns.CLIENT
        err = ET.SubElement(el, f"{{{content}}}error", {"type": error.type})
        if by:
            err.set("by", by)
        ET.SubElement(err, f"{{{ns.STANZAS}}}{error.condition}")
        if error.text:
            ET.SubElement(err, f"{{{ns.STANZAS}}}text").text = error.text
        if error.app is not None:
            err.append(error.app)
        return Stanza(el)
