"""Stanzas relayed as bytes, parsed only when something needs more than their start tag.

A stanza crossing the cluster or a region link is routed by its name and its ``to``/``from``/
``type``/``id`` attributes, then written to a socket as the bytes it arrived as.  Parsing it whole
at every hop (node → gateway → gateway → node) was a third of the relay's CPU.  :func:`lazy_stanza`
reads just the start tag (one regular expression, in C) and returns a :class:`LazyStanza` that
parses the rest on first use of ``element`` — a module handling it locally, an error reply.

Only plain start tags are read this way: an attribute with a character reference, a namespaced
or prefixed attribute, a tab or line break in a routing attribute (XML reads it as a space), a
prefixed element name — anything unusual — is parsed fully at once.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from . import ns
from .fragment import parse_stanza
from .stanza import Stanza

__all__ = ["LazyStanza", "lazy_stanza"]

_START = re.compile(rb"<(message|presence|iq)((?:\s+[A-Za-z_][\w:.-]*\s*=\s*(?:'[^'<&]*'|\"[^\"<&]*\"))*)\s*(/?)>")
_ATTR = re.compile(rb"([A-Za-z_][\w:.-]*)\s*=\s*(?:'([^']*)'|\"([^\"]*)\")")
_KNOWN = frozenset({"to", "from", "type", "id"})


class LazyStanza(Stanza):
    __slots__ = ("_el", "_name", "_attrs")

    def __init__(self, raw: bytes, name: str, attrs: dict[str, str]) -> None:  # noqa: D107
        # Stanza.__init__ is not called: ``element`` is a property here, filled on first use.
        self._el: ET.Element | None = None
        self._name = name
        self._attrs = attrs
        self._raw = raw
        self._bytes = raw
        self._start_end = 0
        self._nsdecls = ()

    @property  # a slot in Stanza, computed on first use here
    def element(self) -> ET.Element:  # type: ignore[override]
        if self._el is None:
            assert self._raw is not None
            full = parse_stanza(self._raw)
            self._el, self._start_end, self._nsdecls = full.element, full._start_end, full._nsdecls
        return self._el

    @property
    def name(self) -> str:
        return self._name

    @property
    def type(self) -> str | None:
        return self._attrs.get("type")

    @property
    def id(self) -> str | None:
        return self._attrs.get("id")

    @property
    def to(self) -> str | None:
        return self._attrs.get("to")

    @property
    def from_(self) -> str | None:
        return self._attrs.get("from")

    @property
    def namespace(self) -> str:
        return ns.CLIENT if self._el is None else super().namespace


def lazy_stanza(raw: bytes) -> Stanza:
    """``raw`` (one stanza as sent on a ``jabber:client`` stream) as a stanza; ``ValueError`` if
    it is not one.  The start tag is read now; the body when first needed."""
    m = _START.match(raw)
    if m is None or m.group(3) == b"/" and m.end() != len(raw):
        return parse_stanza(raw)
    name = m.group(1).decode()
    if m.group(3) != b"/" and not raw.endswith(b"</" + m.group(1) + b">"):
        return parse_stanza(raw)  # not one element closed at the end: let the parser judge
    attrs: dict[str, str] = {}
    for key, single, double in _ATTR.findall(m.group(2)):
        k = key.decode()
        if k == "xmlns" or k in attrs or (":" in k and k != "xml:lang"):
            return parse_stanza(raw)  # a namespace declaration or a namespaced attribute
        if k in _KNOWN:
            value = single or double
            if b"\t" in value or b"\n" in value or b"\r" in value:
                return parse_stanza(raw)  # XML reads these as spaces (§3.3.3): the parser says what the value is
            try:
                attrs[k] = value.decode()
            except UnicodeDecodeError:
                return parse_stanza(raw)
    if b"&" in m.group(0):
        return parse_stanza(raw)
    return LazyStanza(raw, name, attrs)
