"""Stamping ``from`` on what a client sent without copying or re-serializing the stanza, the
parser's caches and its ASCII fast path: the same stanzas and errors as before, fewer objects."""

from __future__ import annotations

import pytest

from cluster_node.xmpp import errors, parser as parser_module, stanza as stanza_module
from cluster_node.xmpp.fragment import parse_stanza
from cluster_node.xmpp.parser import StanzaReceived, StreamParser
from cluster_node.xmpp.stanza import Stanza, serialize

HEADER = ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
          "to='example.com' version='1.0'{lang}>")


def parsed(xml: str, lang: str | None = None) -> Stanza:
    """``xml`` as the c2s parser hands it over, on a stream with ``xml:lang`` = ``lang``."""
    p = StreamParser()
    p.feed(HEADER.format(lang=f" xml:lang='{lang}'" if lang else "").encode())
    [event] = p.feed(xml.encode())
    assert isinstance(event, StanzaReceived)
    return event.stanza


def same_as_reparsed(s: Stanza) -> None:
    """The bytes that will be written say what the element says."""
    again = parse_stanza(s.to_bytes()).element
    assert (again.tag, again.attrib, again.text) == (s.element.tag, s.element.attrib, s.element.text)
    assert [serialize(c) for c in again] == [serialize(c) for c in s.element]


def test_from_is_inserted_in_the_start_tag_and_the_rest_is_the_received_bytes() -> None:
    s = parsed("<message to=\"bob@example.com\" id='1'><body>a &amp; b</body></message>")
    stamped = s.stamp(from_="alice@example.com/a")
    assert stamped.to_bytes() == (b"<message to=\"bob@example.com\" id='1' from='alice@example.com/a'>"
                                  b"<body>a &amp; b</body></message>")
    assert stamped.from_ == "alice@example.com/a" and stamped.element is s.element  # no copy
    same_as_reparsed(stamped)


@pytest.mark.parametrize("xml", ["<presence/>", "<presence />", "<message to='b@example.com' />"])
def test_empty_element(xml: str) -> None:
    stamped = parsed(xml).stamp(from_="a@example.com/r")
    assert stamped.to_bytes().endswith(b" from='a@example.com/r'/>")
    same_as_reparsed(stamped)


def test_the_stream_language_is_written_unless_the_stanza_has_its_own() -> None:
    inherited = parsed("<message to='b@example.com'><body>x</body></message>", lang="fr").stamp(from_="a@example.com")
    assert inherited.to_bytes().startswith(b"<message to='b@example.com' from='a@example.com' xml:lang='fr'>")
    own = parsed("<message xml:lang='de' to='b@example.com'/>", lang="fr").stamp(from_="a@example.com")
    assert own.to_bytes() == b"<message xml:lang='de' to='b@example.com' from='a@example.com'/>"
    # 'xml:lang' inside another attribute's value is not the attribute.
    tricky = parsed("<message to='b@example.com' id=\" xml:lang='x'\"/>", lang="fr").stamp(from_="a@example.com")
    assert tricky.lang == "fr"
    same_as_reparsed(tricky)
    assert parse_stanza(tricky.to_bytes()).lang == "fr"


def test_values_are_escaped() -> None:
    stamped = parsed("<message to='b@example.com'/>").stamp(from_="a'\"<&@example.com")
    assert parse_stanza(stamped.to_bytes()).from_ == "a'\"<&@example.com"


def test_replacing_or_removing_an_attribute_rewrites_the_start_tag() -> None:
    s = parsed("<message from=\"alice@example.com\" to='b@example.com' id='1'><body>x</body></message>")
    stamped = s.stamp(from_="alice@example.com/a", id=None)
    assert stamped.to_bytes() == b"<message from='alice@example.com/a' to='b@example.com'><body>x</body></message>"
    same_as_reparsed(stamped)


def test_with_attrs_leaves_the_original_alone() -> None:
    s = parsed("<message to='b@example.com' id='1'><body>x</body></message>")
    before = s.to_bytes()
    copy = s.with_attrs(from_="a@example.com/r", to="c@example.com/x")
    assert s.to_bytes() == before and s.from_ is None and s.to == "b@example.com"
    assert copy.element is not s.element and copy.element[0] is s.element[0]  # shallow
    assert (copy.from_, copy.to) == ("a@example.com/r", "c@example.com/x")
    same_as_reparsed(copy)


def test_a_stanza_without_its_bytes_is_serialized() -> None:
    s = parsed("<message xmlns:x='urn:x' x:a='1' to='b@example.com'/>")  # namespaced attribute: no raw bytes kept
    stamped = s.stamp(from_="a@example.com")
    same_as_reparsed(stamped)


# -- the parser --------------------------------------------------------------------------------


def test_utf8_checked_across_reads_with_the_ascii_fast_path() -> None:
    p = StreamParser()
    p.feed(HEADER.format(lang="").encode())
    body = "<message to='b@example.com'><body>é</body></message>".encode()
    cut = body.index(b"\xc3") + 1  # inside the two bytes of 'é'
    assert p.feed(body[:cut]) == []
    [event] = p.feed(body[cut:])
    assert isinstance(event, StanzaReceived) and event.stanza.element[0].text == "é"
    # The start of a character, then ASCII: invalid, although the second read alone is ASCII.
    q = StreamParser()
    q.feed(HEADER.format(lang="").encode() + b"<message><body>\xc3")
    with pytest.raises(errors.UnsupportedEncoding):
        q.feed(b"a</body></message>")
    r = StreamParser()
    r.feed(HEADER.format(lang="").encode())
    with pytest.raises(errors.UnsupportedEncoding):
        r.feed(b"<message><body>\xff</body></message>")


def test_name_caches_stay_bounded() -> None:
    p = StreamParser()
    p.feed(HEADER.format(lang="").encode())
    for i in range(parser_module._CLARK_CACHE_MAX + 50):
        [event] = p.feed(f"<x{i} xmlns='urn:n{i}' a{i}='v'/>".encode())
        assert isinstance(event, StanzaReceived)
        assert event.stanza.name == f"x{i}" and event.stanza.namespace == f"urn:n{i}"
        assert event.stanza.element.get(f"a{i}") == "v"
    assert len(parser_module._CLARK_CACHE) <= parser_module._CLARK_CACHE_MAX
    assert len(stanza_module._SPLIT_CACHE) <= stanza_module._SPLIT_CACHE_MAX


def test_a_child_appended_goes_before_the_end_tag_of_the_kept_bytes() -> None:
    """An archive's stanza-id added to a received message: the client's bytes stay, the child's
    are written before ``</message>`` (no serialization of the whole stanza)."""
    import xml.etree.ElementTree as ET
    s = parsed("<message to='b@example.com' id='1'><body>a &amp; b</body></message>").stamp(from_="a@example.com/r")
    sid = ET.Element("{urn:xmpp:sid:0}stanza-id", {"id": "7", "by": "b@example.com"})
    added = s.appended(sid)
    assert added.to_bytes() == (b"<message to='b@example.com' id='1' from='a@example.com/r'><body>a &amp; b</body>"
                                b"<stanza-id xmlns='urn:xmpp:sid:0' id='7' by='b@example.com'/></message>")
    assert added.kept_bytes() is not None and len(s.element) == 1 and len(added.element) == 2  # a copy
    same_as_reparsed(added)
    added.stamp(to="c@example.com")  # changing the copy in place leaves the original alone
    assert s.to == "b@example.com" and s.element.get("to") == "b@example.com"
    for tree_way in (parsed("<message to='b@example.com'/>").stamp(from_="a@example.com/r"),  # empty
                     Stanza(s.element)):  # no kept bytes
        added = tree_way.appended(sid)
        assert added.kept_bytes() is None and added.element[-1] is sid
        same_as_reparsed(added)


def test_standalone_bytes_declare_the_namespace_the_stream_implied() -> None:
    """A WebSocket message or a carbon's inner copy stands outside the stream that implied
    ``jabber:client``: it is declared once on the start tag, and nothing else of the kept bytes
    changes.  Where the bytes cannot tell, None: the caller serializes the tree."""
    tcp = parsed("<message to='b@example.com'>\n<body>hi</body></message>").stamp(from_="a@example.com/r")
    assert tcp.standalone("jabber:client") == (
        b"<message xmlns='jabber:client' to='b@example.com' from='a@example.com/r'>\n<body>hi</body></message>")
    declared = parsed("<message xmlns='jabber:client' to='b@example.com'><body>hi</body></message>")
    assert declared.standalone("jabber:client") == declared.to_bytes()
    assert parsed("<message\tto='b@example.com'/>").standalone("jabber:client") \
        == b"<message xmlns='jabber:client'\tto='b@example.com'/>"
    for unknown in (Stanza(tcp.element),  # no kept bytes
                    parsed("<message xmlns:x='urn:x' x:a='1'/>")):  # prefixes declared: read the tag instead
        assert unknown.standalone("jabber:client") is None
    again = parse_stanza(tcp.standalone("jabber:client") or b"").element
    assert again.tag == "{jabber:client}message" and again.get("from") == "a@example.com/r"
