"""Property-based fuzzing of the XML stream parser (cluster_node/xmpp/parser.py) and of the lazy
stanza router's start-tag reading (cluster_node/xmpp/lazy.py).

Streams are generated as element trees written out with the liberties XML allows (either quote,
character and entity references, CDATA, whitespace inside tags, prefixes or default namespace
declarations, literal whitespace in attribute values); the oracle for what they mean is
``xml.etree.ElementTree`` parsing the whole document at once.

Budget and reproducibility: the ``meridian`` hypothesis profile of tests/conftest.py.
"""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from hypothesis import example, given, strategies as st

from cluster_node.xmpp import errors, ns, parser as parser_module
from cluster_node.xmpp.errors import StreamError
from cluster_node.xmpp.fragment import parse_stanza
from cluster_node.xmpp.lazy import LazyStanza, lazy_stanza
from cluster_node.xmpp.parser import Event, StanzaReceived, StreamClosed, StreamOpened, StreamParser

HEADER = (f"<stream:stream xmlns='{ns.CLIENT}' xmlns:stream='{ns.STREAM}' to='example.com' "
          f"version='1.0'>").encode()
XML_DECL = b"<?xml version='1.0'?>"
CLOSE = b"</stream:stream>"
QUOTES = "'\""
MARKER = "PWNED"  # what a declared entity would expand to: must never appear in a parsed stanza

# -- generating streams --------------------------------------------------------------------------


# Characters XML 1.0 allows in a document (§2.2), but for TAB, LF and CR (in the alphabet below):
# no controls, surrogates or unassigned code points (U+FFFE and U+FFFF are unassigned).
xml_chars = st.characters(exclude_categories=("Cc", "Cs", "Cn"))
# Text with what must be escaped, line ends, non-ASCII and the CDATA terminator in it.
texts = st.text(st.sampled_from("ab <>&'\"\t\n\r]é\u00a0\U0001f600") | xml_chars, max_size=8)
local_names = st.sampled_from(["message", "presence", "iq", "body", "x", "query", "item", "a-b", "c.d", "_e", "ü"])
namespaces = st.sampled_from([ns.CLIENT, "urn:x", "urn:y:1", "http://jabber.org/protocol/disco#info", ns.STREAM])
attr_names = st.sampled_from(["to", "from", "id", "type", "a", "b-c", ns.XML_LANG, "{urn:attr}k"])
attributes = st.dictionaries(attr_names, texts, max_size=4)


def _element(name: str, uri: str, attrs: dict[str, str], text: str,
             children: list[tuple[ET.Element, str]]) -> ET.Element:
    el = ET.Element(f"{{{uri}}}{name}" if uri else name, attrs)
    el.text = text or None
    for child, tail in children:
        child.tail = tail or None
        el.append(child)
    return el


child_elements = st.recursive(
    st.builds(_element, local_names, namespaces | st.just(""), attributes, texts, st.just([])),
    lambda inner: st.builds(_element, local_names, namespaces | st.just(""), attributes, texts,
                            st.lists(st.tuples(inner, texts), max_size=3)),
    max_leaves=5,
)
stanzas = st.builds(_element, st.sampled_from(["message", "presence", "iq"]) | local_names,
                    st.just(ns.CLIENT) | namespaces, attributes, texts,
                    st.lists(st.tuples(child_elements, texts), max_size=3))


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        uri, _, local = tag[1:].partition("}")
        return uri, local
    return "", tag


def _ref(c: str, rnd: random.Random) -> str:
    return f"&#{ord(c)};" if rnd.random() < 0.5 else f"&#x{ord(c):x};"


def _attr_value(value: str, quote: str, rnd: random.Random) -> str:
    out = []
    for c in value:
        if c == "&":
            out.append("&amp;" if rnd.random() < 0.7 else _ref(c, rnd))
        elif c == "<":
            out.append("&lt;" if rnd.random() < 0.7 else _ref(c, rnd))
        elif c == quote:
            out.append("&apos;" if c == "'" else "&quot;")
        elif c in "\t\n\r" and rnd.random() < 0.7:
            out.append(_ref(c, rnd))  # kept as is; written literally it is normalised to a space
        elif rnd.random() < 0.05:
            out.append(_ref(c, rnd))
        else:
            out.append(c)
    return quote + "".join(out) + quote


def _text(value: str, rnd: random.Random) -> str:
    if value and "]]>" not in value and "\r" not in value and rnd.random() < 0.2:
        return f"<![CDATA[{value}]]>"
    out = []
    for c in value:
        if c == "&":
            out.append("&amp;")
        elif c == "<":
            out.append("&lt;")
        elif c == ">":
            out.append("&gt;" if rnd.random() < 0.5 else _ref(c, rnd))
        elif c == "\r":
            out.append(_ref(c, rnd))
        elif rnd.random() < 0.05:
            out.append(_ref(c, rnd))
        else:
            out.append(c)
    return "".join(out)


def _space(rnd: random.Random, at_least: int = 0) -> str:
    return "".join(rnd.choice(" \n\t\r\n") for _ in range(rnd.choice([at_least, at_least, at_least + 1, 2])))


def write(el: ET.Element, rnd: random.Random, default_ns: str, prefixes: dict[str, str]) -> str:
    """``el`` as XML inside a scope whose default namespace is ``default_ns`` and where
    ``prefixes`` (prefix → URI) are bound, with random but meaning-preserving choices."""
    uri, local = _split(el.tag)
    decls: list[str] = []
    prefixes = dict(prefixes)
    in_scope = [p for p, u in prefixes.items() if u == uri]
    if uri == default_ns and rnd.random() < 0.9:
        qname = local
    elif in_scope and rnd.random() < 0.5:
        qname = f"{rnd.choice(in_scope)}:{local}"
    elif not uri or rnd.random() < 0.6:
        decls.append(f"xmlns={_attr_value(uri, rnd.choice(QUOTES), rnd)}")
        qname, default_ns = local, uri
    else:
        prefix = f"p{len(prefixes)}"
        prefixes[prefix] = uri
        decls.append(f"xmlns:{prefix}={_attr_value(uri, rnd.choice(QUOTES), rnd)}")
        qname = f"{prefix}:{local}"
    attrs: list[str] = []
    for key, value in el.attrib.items():
        a_uri, a_local = _split(key)
        if a_uri == ns.XML:
            name = f"xml:{a_local}"
        elif a_uri:
            a_prefix = next((p for p, u in prefixes.items() if u == a_uri), None)
            if a_prefix is None:
                a_prefix = f"p{len(prefixes)}"
                prefixes[a_prefix] = a_uri
                decls.append(f"xmlns:{a_prefix}='{a_uri}'")
            name = f"{a_prefix}:{a_local}"
        else:
            name = key
        attrs.append(f"{name}{_space(rnd)}={_space(rnd)}{_attr_value(value, rnd.choice(QUOTES), rnd)}")
    parts = decls + attrs
    rnd.shuffle(parts)
    head = "<" + qname + "".join(_space(rnd, 1) + p for p in parts) + _space(rnd)
    if not len(el) and not el.text and rnd.random() < 0.6:
        return head + "/>"
    body = [_text(el.text or "", rnd)]
    for child in el:
        body.append(write(child, rnd, default_ns, prefixes))
        body.append(_text(child.tail or "", rnd))
    return head + ">" + "".join(body) + f"</{qname}{_space(rnd)}>"


def write_stanza(el: ET.Element, rnd: random.Random) -> bytes:
    """A first-level element as a client would send it on a ``jabber:client`` stream."""
    return write(el, rnd, ns.CLIENT, {"stream": ns.STREAM}).encode()


@st.composite
def streams(draw: st.DrawFn, *, min_stanzas: int = 0, max_stanzas: int = 3) -> tuple[bytes, list[bytes], bool]:
    """(the whole stream, each stanza's bytes, whether the stream is closed at the end)."""
    rnd = draw(st.randoms(use_true_random=True))
    elements = draw(st.lists(stanzas, min_size=min_stanzas, max_size=max_stanzas))
    raws = [write_stanza(el, rnd) for el in elements]
    keepalive = st.sampled_from([b"", b"", b" ", b"\n", b"\r\n", b"\t \n"])
    closed = draw(st.booleans())
    out = [XML_DECL if draw(st.booleans()) else b"", HEADER]
    for raw in raws:
        out += [draw(keepalive), raw]
    out += [draw(keepalive), CLOSE if closed else b""]
    return b"".join(out), raws, closed


def oracle(stream: bytes, closed: bool) -> list[ET.Element]:
    """The first-level elements of ``stream`` as ElementTree parses the whole document."""
    root = ET.fromstring(stream if closed else stream + CLOSE)
    return list(root)


def canon(el: ET.Element, drop_lang: bool = False) -> Any:
    """An element tree as comparable data (text split into pieces compares joined)."""
    attrs = {k: v for k, v in el.attrib.items() if not (drop_lang and k == ns.XML_LANG)}
    return (el.tag, sorted(attrs.items()), el.text or "",
            [(canon(c), c.tail or "") for c in el])


# -- feeding -------------------------------------------------------------------------------------


def cuts(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=16).map(sorted)


def pieces(data: bytes, at: list[int]) -> Iterator[bytes]:
    edges = [0, *at, len(data)]
    for a, b in zip(edges, edges[1:], strict=False):
        yield data[a:b]


def feed_all(parser: StreamParser, chunks: Iterator[bytes] | list[bytes]) -> tuple[list[Event], StreamError | None]:
    """Every event until the end or the first stream error (then the parser must stay dead)."""
    events: list[Event] = []
    for chunk in chunks:
        try:
            events += parser.feed(chunk)
        except StreamError as e:
            try:
                parser.feed(b" ")
            except StreamError as again:
                assert again.condition == e.condition
            else:
                raise AssertionError("the parser went on after a stream error") from None
            return events, e
    return events, None


def stanzas_of(events: list[Event]) -> list[StanzaReceived]:
    return [e for e in events if isinstance(e, StanzaReceived)]


def relay_safe(stanza_event: StanzaReceived, drop_lang: bool = False) -> None:
    """What the node forwards (``to_bytes``) parses back, on its own, to the same element."""
    stanza = stanza_event.stanza
    again = parse_stanza(stanza.to_bytes())
    assert canon(again.element, drop_lang) == canon(stanza.element, drop_lang), stanza.to_bytes()


@contextmanager
def small_slices(size: int) -> Iterator[None]:
    """The parser's work slice made small, so budgets are exercised with small stanzas."""
    with mock.patch.object(parser_module, "SLICE", size):
        yield


# -- properties of the stream parser -------------------------------------------------------------


CR_TAIL = b"<p1:message xmlns:p1='urn:x'><message/>&#13;</p1:message>"  # re-serialized: the CR came back as LF


@given(streams(), st.data())
@example((HEADER + CR_TAIL, [CR_TAIL], False), None)
def test_the_same_stanzas_come_out_however_the_stream_is_cut(stream: tuple[bytes, list[bytes], bool],
                                                             data: st.DataObject | None) -> None:
    """A valid stream gives the header, one StanzaReceived per stanza — the tree ElementTree
    sees, with the exact bytes it arrived as — and the close, whatever the chunking."""
    wire, raws, closed = stream
    expected = [canon(el) for el in oracle(wire, closed)]
    events, error = feed_all(StreamParser(), pieces(wire, data.draw(cuts(wire)) if data is not None else []))
    assert error is None
    assert isinstance(events[0], StreamOpened)
    assert isinstance(events[-1], StreamClosed) == closed
    got = stanzas_of(events)
    assert [canon(e.stanza.element) for e in got] == expected
    for event, raw in zip(got, raws, strict=True):
        assert event.stanza.to_bytes() == raw or event.stanza._raw is None  # kept, unless it needs a prefix
        relay_safe(event)


class ParkingParser(StreamParser):
    """A parser whose expat parser is parked after every piece of input, wherever that is exact
    (as an idle connection's is): what comes out must not change."""

    parked_times = 0

    def feed(self, data: bytes) -> list[Event]:
        events = super().feed(data)
        if self.park():
            ParkingParser.parked_times += 1
            assert self.parked
        return events


@given(streams(min_stanzas=1), st.data())
@example((HEADER + CR_TAIL, [CR_TAIL], False), None)
def test_parking_the_parser_between_stanzas_changes_nothing(stream: tuple[bytes, list[bytes], bool],
                                                           data: st.DataObject | None) -> None:
    """The same events, trees and raw bytes (namespaces and xml:lang of the stream header
    included) when the parser is parked and re-created between pieces of input."""
    wire, raws, closed = stream
    at = data.draw(cuts(wire)) if data is not None else []
    plain, _ = feed_all(StreamParser(), pieces(wire, at))
    parking, error = feed_all(ParkingParser(), pieces(wire, at))
    assert error is None
    assert [type(e) for e in parking] == [type(e) for e in plain]
    got, want = stanzas_of(parking), stanzas_of(plain)
    assert [canon(e.stanza.element) for e in got] == [canon(e.stanza.element) for e in want]
    assert [e.stanza.to_bytes() for e in got] == [e.stanza.to_bytes() for e in want]


def test_parking_waits_for_a_point_where_it_is_exact() -> None:
    p = StreamParser()
    assert not p.park()  # no stream yet: nothing to replay
    p.feed(XML_DECL + HEADER.replace(b"version='1.0'", b"version='1.0' xml:lang='en' xmlns:ext='urn:x'"))
    assert p.park() and p.parked
    p.feed(b"<message to='a@b'><body>half")
    assert not p.park()  # inside a stanza
    [event] = p.feed(b"</body></message><mess")
    assert isinstance(event, StanzaReceived) and not p.park()  # a partial tag buffered
    [event] = p.feed(b"age xml:lang='fr'/>")
    assert p.park()
    [event] = p.feed("<message><body>é</body><ext:x/></message>".encode())
    assert isinstance(event, StanzaReceived) and event.stanza.element.get(f"{{{ns.XML}}}lang") == "en"
    assert event.stanza.element.find("{urn:x}x") is not None  # a prefix the stream header declared
    assert p.feed(b"</stream:stream>") == [StreamClosed()]


@given(st.binary(max_size=300), st.data(), st.booleans())
@example(b"<!DOCTYPE x [<!ENTITY e 'PWNED'>]><x>&e;</x>", None, False)
@example(b"\xef\xbb\xbf" + HEADER, None, False)  # a UTF-8 byte order mark before the header
def test_arbitrary_bytes_give_events_or_a_stream_error(junk: bytes, data: st.DataObject | None,
                                                       after_header: bool) -> None:
    """Arbitrary bytes, before or after a valid header, however cut, give events or one
    StreamError (after which the parser stays dead) — never another exception."""
    wire = (HEADER if after_header else b"") + junk
    chunks = pieces(wire, data.draw(cuts(wire))) if data is not None else [wire]
    events, _ = feed_all(StreamParser(max_stanza_size=256), chunks)
    for event in stanzas_of(events):
        relay_safe(event)


DANGEROUS = [b"<!DOCTYPE x [<!ENTITY e 'PWNED'>]>", b"<!ENTITY e 'PWNED'>", b"&e;", b"&#0;", b"&#x110000;",
             b"&amp;", b"&#65;", b"<?pi x?>", b"<!-- c -->", b"<![CDATA[", b"]]>", b"\xff", b"\xc3", b"\xed\xa0\x80",
             b"<", b">", b"/>", b"'", b'"', b"=", b" xmlns:p='urn:p'", b"p:", b" xmlns=''", b"</a>", b"<a>",
             b"\x00", b"\r", b"xml:lang='x'", b"<stream:stream>", b"</stream:stream>",
             b"<!DOCTYPE x SYSTEM 'file:///etc/passwd'>", b"&xxe;", b"&lt"]


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    """A valid stream with a few random edits: dangerous tokens inserted, bytes removed,
    replaced or duplicated."""
    wire = bytearray(draw(streams(min_stanzas=1))[0])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(wire)))
        edit = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        if edit == "insert":
            wire[at:at] = draw(st.sampled_from(DANGEROUS))
        elif edit == "delete":
            del wire[at:at + draw(st.integers(1, 8))]
        elif edit == "replace" and at < len(wire):
            wire[at] = draw(st.integers(0, 255))
        else:
            wire[at:at] = wire[at:at + draw(st.integers(1, 16))]
    return bytes(wire)


@given(mutated_streams(), st.data())
@example(HEADER + b"<stream:message to=''>&#97;&#97;&#13;</stream:message>", None)  # CR re-serialized as LF
def test_mutated_streams_never_expand_entities_nor_break_relaying(wire: bytes, data: st.DataObject | None) -> None:
    """A valid stream with random edits gives a stream error or stanzas — never an exception of
    another kind, never a declared entity's text, and every stanza still forwardable as bytes."""
    events, _ = feed_all(StreamParser(), pieces(wire, data.draw(cuts(wire)) if data is not None else []))
    header = next((e for e in events if isinstance(e, StreamOpened)), None)
    inherited_lang = header is not None and ns.XML_LANG in header.attrs
    for event in stanzas_of(events):
        element = event.stanza.element
        texts = [t or "" for node in element.iter() for t in (node.text, node.tail, *node.attrib.values())]
        # The declaration itself may be text (inside CDATA, say): its quoted value is not an expansion.
        assert not any(MARKER in t.replace(f"'{MARKER}'", "") for t in texts), texts
        relay_safe(event, drop_lang=inherited_lang)


@given(stanzas, st.data(), st.sampled_from([b"<!DOCTYPE stream>", b"<!DOCTYPE x [<!ENTITY e 'PWNED'>]>",
                                            b"<!DOCTYPE x [<!ENTITY % p 'PWNED'> %p;]>",
                                            b"<!ENTITY e 'PWNED'>", b"<!DOCTYPE x SYSTEM 'http://x/y.dtd'>"]))
def test_dtds_and_entities_are_refused_wherever_they_appear(el: ET.Element, data: st.DataObject,
                                                            dtd: bytes) -> None:
    """DTD markup anywhere — before the header, between stanzas, inside one — is a stream error
    (restricted-xml, or not-well-formed where XML forbids it anyway); the entity it declares
    never reaches a stanza."""
    raw = write_stanza(el, data.draw(st.randoms(use_true_random=True)))
    where = data.draw(st.sampled_from(["before", "between", "inside"]))
    if where == "before":
        wire = XML_DECL + dtd + HEADER + raw
    elif where == "between":
        wire = HEADER + raw + dtd + raw
    else:
        end = raw.index(b">") + 1
        empty = raw[:end].endswith(b"/>")  # an empty element: the DTD goes right after it
        wire = HEADER + (raw + dtd if empty else raw[:end] + dtd + raw[end:])
        where = "between" if empty else where
    events, error = feed_all(StreamParser(), pieces(wire, data.draw(cuts(wire))))
    assert isinstance(error, errors.RestrictedXml | errors.NotWellFormed), (wire, error)
    assert len(stanzas_of(events)) <= (1 if where == "between" else 0)


@given(st.integers(1, 12), st.integers(1, 10), st.data())
def test_depth_budget(depth: int, max_depth: int, data: st.DataObject) -> None:
    """A stanza nested ``depth`` deep passes if and only if ``depth <= max_depth``; otherwise
    policy-violation, however the bytes are cut."""
    raw = b"<message>" + b"<x xmlns='urn:x'>" * (depth - 1) + b"</x>" * (depth - 1) + b"</message>"
    wire = HEADER + raw
    events, error = feed_all(StreamParser(max_depth=max_depth), pieces(wire, data.draw(cuts(wire))))
    if depth <= max_depth:
        assert error is None and len(stanzas_of(events)) == 1
    else:
        assert isinstance(error, errors.PolicyViolation) and not stanzas_of(events)


@given(streams(min_stanzas=1), st.integers(len(XML_DECL + HEADER), 640), st.sampled_from([16, 64, 256]), st.data())
def test_size_budget(stream: tuple[bytes, list[bytes], bool], max_size: int, slice_size: int,
                     data: st.DataObject) -> None:
    """Stanzas within ``max_stanza_size`` always pass, however cut; one more than a work slice
    past it is always policy-violation; and the parser never holds more than the budget plus a
    slice, whatever it is fed.  (The stream header counts against the same budget.)"""
    wire, raws, _ = stream
    with small_slices(slice_size):
        parser = StreamParser(max_stanza_size=max_size)
        events: list[Event] = []
        error: StreamError | None = None
        for chunk in pieces(wire, data.draw(cuts(wire))):
            try:
                events += parser.feed(chunk)
            except StreamError as e:
                error = e
                break
            assert parser.bytes_buffered <= max_size + slice_size
    longest = max(len(r) for r in raws)
    if longest <= max_size:
        assert error is None and len(stanzas_of(events)) == len(raws)
    elif longest > max_size + slice_size:
        assert isinstance(error, errors.PolicyViolation)
    else:
        assert error is None or isinstance(error, errors.PolicyViolation)


# -- the lazy stanza router ----------------------------------------------------------------------

relayed_stanzas = st.builds(_element, st.sampled_from(["message", "presence", "iq"]), st.just(ns.CLIENT),
                            st.dictionaries(st.sampled_from(["to", "from", "id", "type", "a", ns.XML_LANG]),
                                            texts, max_size=5),
                            texts, st.lists(st.tuples(child_elements, texts), max_size=2))
plain_values = st.text(st.sampled_from("ab0 \t\n\r@/.:é>"), max_size=8)  # no reference needed to write them


@st.composite
def relayed_bytes(draw: st.DrawFn) -> bytes:
    """A stanza as relayed bytes (self-contained): written freely, or with a plain start tag —
    the one the lazy router reads without a parse."""
    rnd = draw(st.randoms(use_true_random=True))
    el = draw(relayed_stanzas)
    if draw(st.booleans()):
        return write(el, rnd, ns.CLIENT, {}).encode()
    name = _split(el.tag)[1]
    attrs = draw(st.dictionaries(st.sampled_from(["to", "from", "id", "type", "a", "xml:lang"]), plain_values,
                                 max_size=4))
    head = "<" + name + "".join(f"{_space(rnd, 1)}{k}{_space(rnd)}={_space(rnd)}{q}{v}{q}"
                                for k, v in attrs.items() for q in [rnd.choice(QUOTES)]) + _space(rnd)
    body = _text(el.text or "", rnd) + "".join(write(c, rnd, ns.CLIENT, {}) + _text(c.tail or "", rnd) for c in el)
    if not body and draw(st.booleans()):
        return (head + "/>").encode()
    return (head + ">" + body + f"</{name}>").encode()


@given(relayed_bytes())
@example(b"<message id='a\tb' to='x\ny' from='c\r\nd'/>")  # whitespace in a value is normalised to spaces
def test_lazy_start_tag_agrees_with_a_full_parse(raw: bytes) -> None:
    """Routing by the start tag alone sees what a full parse sees: the name and the to, from,
    type and id attributes; the element, parsed later, is the same; the bytes are kept."""
    full = parse_stanza(raw)
    lazy = lazy_stanza(raw)
    assert (lazy.name, lazy.to, lazy.from_, lazy.type, lazy.id) == (full.name, full.to, full.from_, full.type,
                                                                    full.id), raw
    assert lazy.to_bytes() == full.to_bytes()  # the bytes as they came, unless the parser had to rewrite them
    if isinstance(lazy, LazyStanza):
        assert lazy.namespace == ns.CLIENT
    assert canon(lazy.element) == canon(full.element)
    assert lazy.namespace == full.namespace
