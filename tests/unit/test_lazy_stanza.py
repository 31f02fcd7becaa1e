"""Lazy stanzas: routing fields from the start tag, the same answers as a full parse."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from cluster_node.xmpp.fragment import parse_stanza
from cluster_node.xmpp.lazy import LazyStanza, lazy_stanza

SAMPLES = [
    b"<message to='bob@example.com' from='alice@example.com/a' type='chat' id='m1'><body>hi &amp; bye</body></message>",
    b'<presence from="alice@example.com/a" xml:lang="en"><priority>5</priority></presence>',
    b"<presence from='alice@example.com/a' type='unavailable'/>",
    b"<iq type='get' id='p1' to='example.com' from='a@example.com/r'><ping xmlns='urn:xmpp:ping'/></iq>",
]


@pytest.mark.parametrize("raw", SAMPLES)
def test_lazy_answers_like_a_full_parse_and_keeps_the_bytes(raw: bytes) -> None:
    lazy, full = lazy_stanza(raw), parse_stanza(raw)
    assert isinstance(lazy, LazyStanza)
    for attr in ("name", "type", "id", "to", "from_"):
        assert getattr(lazy, attr) == getattr(full, attr), attr
    assert lazy._el is None  # nothing parsed for routing
    assert lazy.to_bytes() == raw
    assert lazy.namespace == full.namespace
    lazy_payload, full_payload = lazy.payload(), full.payload()
    assert lazy._el is not None  # asking for the payload parsed the body
    if full_payload is None:
        assert lazy_payload is None
    else:
        assert lazy_payload is not None and ET.tostring(lazy_payload) == ET.tostring(full_payload)


def test_rewriting_attributes_parses_then_keeps_the_body_bytes() -> None:
    raw = SAMPLES[0]
    changed = lazy_stanza(raw).with_attrs(to="carol@example.com")
    assert changed.to == "carol@example.com"
    assert changed.to_bytes().endswith(b"<body>hi &amp; bye</body></message>")


@pytest.mark.parametrize("raw", [
    b"<message to='a&#64;b' type='chat'><body>x</body></message>",  # a character reference
    b"<message xmlns='jabber:client' to='a@b'/>",  # a namespace declaration
    b"<foo:message xmlns:foo='jabber:client' to='a@b'/>",  # a prefixed element
    b"<message to='a@b' x:y='1' xmlns:x='urn:x'/>",  # a namespaced attribute
])
def test_unusual_start_tags_are_parsed_fully(raw: bytes) -> None:
    s = lazy_stanza(raw)
    assert not isinstance(s, LazyStanza)
    assert s.to == parse_stanza(raw).to


@pytest.mark.parametrize("raw", [b"<message to='a@b'><body>x</body>", b"not xml", b"<message/><message/>"])
def test_not_one_stanza_is_an_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        lazy_stanza(raw)
