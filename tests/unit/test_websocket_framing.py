"""RFC 7395 framing: <open/>/<close/>, one element per message, stream errors, restart after SASL."""

from __future__ import annotations

import base64
import random
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, strategies as st

from cluster_node.xmpp import errors, ns
from cluster_node.xmpp.c2s import (
    Authenticated,
    C2SConfig,
    C2SStream,
    CredentialsNeeded,
    State,
    StreamEnded,
)
from cluster_node.xmpp.lazy import lazy_stanza
from cluster_node.xmpp.parser import StanzaReceived, StreamClosed, StreamOpened, StreamParser
from cluster_node.xmpp.sasl.scram import derive_credentials
from cluster_node.xmpp.stanza import Stanza
from cluster_node.xmpp.websocket import FRAMING_NS, WEBSOCKET, Batch, WebSocketParser, _messages_expat
from tests.unit.test_fuzz_xml import stanzas, write_stanza

OPEN = f"<open xmlns='{FRAMING_NS}' to='localhost' version='1.0'/>".encode()
CLOSE = f"<close xmlns='{FRAMING_NS}'/>".encode()


def stream(*, secure: bool = True) -> C2SStream:
    cfg = C2SConfig(domains=["localhost"], tls_available=False, new_id=lambda: "sid")
    return C2SStream(cfg, direct_tls=secure, framing=WEBSOCKET)


def out(s: C2SStream) -> list[bytes]:
    return WEBSOCKET.messages(s.data_to_send())


def parser() -> WebSocketParser:
    return WebSocketParser("jabber:client", max_stanza_size=10_000, max_depth=8)


def test_open_is_the_stream_header_and_close_its_end() -> None:
    p = parser()
    [opened] = p.feed(OPEN)
    assert isinstance(opened, StreamOpened)
    assert opened.name == "{http://etherx.jabber.org/streams}stream"
    assert opened.attrs["to"] == "localhost" and opened.attrs["version"] == "1.0"
    [el] = p.feed(b"<message xmlns='jabber:client' to='a@localhost'><body>hi</body></message>")
    assert isinstance(el, StanzaReceived) and el.stanza.name == "message"
    assert el.stanza.namespace == "jabber:client"
    assert p.feed(CLOSE) == [StreamClosed()]


@pytest.mark.parametrize("message", [
    b"<message xmlns='jabber:client'/><presence xmlns='jabber:client'/>",  # two elements
    b"<message xmlns='jabber:client'><body>half",  # not complete
    b"text",
    b"<?xml version='1.0'?><message xmlns='jabber:client'/>",
])
def test_a_message_is_one_complete_element(message: bytes) -> None:
    p = parser()
    p.feed(OPEN)
    with pytest.raises(errors.StreamError):
        p.feed(message)


def test_a_batch_is_its_messages_each_parsed_as_one() -> None:
    """Several messages of one read, handed over at once: each must still be one element."""
    p = parser()
    p.feed(OPEN)
    stanzas = [f"<message xmlns='jabber:client' to='b@localhost' id='m{i}'><body>{i}</body></message>".encode()
               for i in range(5)]
    events = p.feed(Batch.of([*stanzas[:2], b" ", *stanzas[2:], CLOSE]))  # one at a time (b" ")
    assert [e.stanza.id for e in events[:-1]] == [f"m{i}" for i in range(5)]  # type: ignore[union-attr]
    assert events[-1] == StreamClosed()
    p = parser()
    p.feed(OPEN)
    events = p.feed(Batch.of([*stanzas, CLOSE, stanzas[0]]))  # in one feed; nothing after <close/>
    assert [e.stanza.id for e in events[:-1]] == [f"m{i}" for i in range(5)]  # type: ignore[union-attr]
    assert events[-1] == StreamClosed()
    assert [e.stanza.id for e in p.feed(Batch.of(stanzas[3:]))] == ["m3", "m4"]  # type: ignore[union-attr]
    p = parser()
    p.feed(OPEN)
    # the second message of the batch holds the first's end tag: not one element each, although
    # their bytes joined would be
    with pytest.raises(errors.NotWellFormed):
        p.feed(Batch.of([b"<message xmlns='jabber:client'><body>a", b"</body></message>"]))
    for split in ([b"<message xmlns='jabber:client'>", b"</message>"],  # one element in two messages
                  [b"<a xmlns='jabber:client'/><b xmlns='jabber:client'/>", b"<c xmlns='jabber:client'/>"],
                  [b"<a xmlns='jabber:client'/><b xmlns='jabber:client'>", b"</b>"],  # as many, not each one
                  [stanzas[0], b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"],
                  [stanzas[0], b"</stream:stream>"]):
        p = parser()
        p.feed(OPEN)
        with pytest.raises(errors.NotWellFormed):
            p.feed(Batch.of(split))
    p = parser()
    p.feed(OPEN)
    with pytest.raises(errors.PolicyViolation):
        p.feed(Batch.of([stanzas[0], b"<message xmlns='jabber:client'>" + b"x" * 10_000 + b"</message>"]))


def test_open_comes_first_and_tcp_headers_are_refused() -> None:
    with pytest.raises(errors.NotWellFormed):
        parser().feed(b"<message xmlns='jabber:client'/>")
    with pytest.raises(errors.StreamError):
        parser().feed(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")


def test_hostile_xml_is_refused_per_message() -> None:
    p = parser()
    p.feed(OPEN)
    with pytest.raises(errors.RestrictedXml):
        p.feed(b"<!DOCTYPE x [<!ENTITY a 'b'>]><message xmlns='jabber:client'>&a;</message>")
    with pytest.raises(errors.PolicyViolation):
        parser().feed(b"<message xmlns='jabber:client'><body>" + b"x" * 20_000 + b"</body></message>")


def test_output_is_one_element_per_message_with_namespaces_declared() -> None:
    msgs = WEBSOCKET.messages(b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
                              b"<message to='a@b'><body>x</body></message><r xmlns='urn:xmpp:sm:3'/>"
                              b"<iq xmlns='jabber:client' type='result' id='1'/>")
    assert msgs == [
        b"<stream:features xmlns:stream='http://etherx.jabber.org/streams'>"
        b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>",
        b"<message xmlns='jabber:client' to='a@b'><body>x</body></message>",
        b"<r xmlns='urn:xmpp:sm:3'/>",
        b"<iq xmlns='jabber:client' type='result' id='1'/>",
    ]
    assert WEBSOCKET.messages(b"") == []


def test_stream_answers_open_with_open_and_features_without_starttls() -> None:
    s = stream(secure=False)
    s.receive_data(OPEN)
    opening, features = out(s)
    assert opening == f"<open xmlns='{FRAMING_NS}' id='sid' from=\"localhost\" version='1.0' xml:lang=\"en\"/>".encode()
    assert features.startswith(b"<stream:features xmlns:stream='http://etherx.jabber.org/streams'>")
    assert b"starttls" not in features
    assert b"PLAIN" not in features  # not secure: no SASL before TLS (tls_required)


def test_login_with_plain_restarts_with_a_new_open() -> None:
    s = stream()
    s.receive_data(OPEN)
    assert b"<mechanism>PLAIN</mechanism>" in out(s)[1]
    token = base64.b64encode(b"\0alice\0secret").decode()
    events = s.receive_data(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
                            .encode())
    assert isinstance(events[0], CredentialsNeeded)
    check = s.credentials_check(None)
    events = s.provide_credentials(None, checked=check() if check else None)
    # No stored credentials: a failure, in one message, the stream goes on.
    [failure] = out(s)
    assert failure.startswith(b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>")
    assert s.state is State.NEGOTIATING


def test_stream_error_is_an_element_then_close() -> None:
    s = stream()
    s.receive_data(OPEN)
    out(s)
    events = s.receive_data(b"<message xmlns='jabber:client'><body>broken</message>")
    assert isinstance(events[-1], StreamEnded) and isinstance(events[-1].error, errors.NotWellFormed)
    error, close = out(s)
    assert error.startswith(b"<stream:error xmlns:stream='http://etherx.jabber.org/streams'>"
                            b"<not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>")
    assert close == CLOSE


def test_error_before_open_sends_open_first() -> None:
    s = stream()
    s.receive_data(b"<message xmlns='jabber:client'/>")
    opening, error, close = out(s)
    assert opening.startswith(b"<open ") and error.startswith(b"<stream:error ") and close == CLOSE


def test_client_close_is_answered_with_close() -> None:
    s = stream()
    s.receive_data(OPEN)
    out(s)
    events = s.receive_data(CLOSE)
    assert events == [StreamEnded(None, "closed")]
    assert out(s) == [CLOSE]


def logged_in() -> C2SStream:
    s = stream()
    s.receive_data(OPEN)
    out(s)
    token = base64.b64encode(b"\0alice\0secret").decode()
    s.receive_data(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
    creds = derive_credentials("secret", "sha256")
    check = s.credentials_check(creds)
    events = s.provide_credentials(creds, checked=check() if check else None)
    assert any(isinstance(e, Authenticated) for e in events)
    assert out(s) == [b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'></success>"]
    assert s.state is State.WAIT_HEADER
    return s


def test_restart_after_sasl_is_a_new_open() -> None:
    s = logged_in()
    s.receive_data(OPEN)
    opening, features = out(s)
    assert opening.startswith(f"<open xmlns='{FRAMING_NS}'".encode())
    assert b"urn:ietf:params:xml:ns:xmpp-bind" in features
    assert s.state is State.NEGOTIATING


def test_restart_after_sasl_without_open_is_a_stream_error() -> None:
    s = logged_in()
    events = s.receive_data(b"<iq xmlns='jabber:client' type='set' id='b'>"
                            b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    assert isinstance(events[-1], StreamEnded) and isinstance(events[-1].error, errors.NotWellFormed)
    assert out(s)[-1] == CLOSE


# -- what the node writes, cut into messages: the tag scan agrees with expat ---------------------------------


@given(st.lists(stanzas, min_size=1, max_size=4), st.randoms(use_true_random=False),
       st.sampled_from(["", " ", "\n", " \r\n\t"]))
def test_the_tag_scan_cuts_messages_as_expat_does(elements: list[ET.Element], rnd: random.Random, gap: str) -> None:
    """Elements written with every liberty XML allows (either quote, '>' in values and text,
    references, CDATA, prefixes, namespace declarations): the same messages as expat's, each
    declaring what it uses."""
    data = gap.encode().join(write_stanza(el, rnd) for el in elements)
    assert WEBSOCKET.messages(data) == _messages_expat(data, ns.CLIENT), data


@pytest.mark.parametrize("data", [
    b"<message to='x' a='1>2' b=\"/>\"><body>it's > that</body></message>",  # '>' and '/>' in values
    b"<message><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'"
    b" to='a'><body>nested</body></message></forwarded></sent></message>",
    b"<message a='xmlns=\"x\"'><body/></message>",  # a declaration in a value is not one
    b"<message><body><![CDATA[<a>]]></body></message>",  # CDATA: expat decides
    b"<a></a><b></b>", b"<a><b></b></a>", b"<a/><b/>", b"  <presence/>\n ",
])
def test_the_tag_scan_on_awkward_input(data: bytes) -> None:
    assert WEBSOCKET.messages(data) == _messages_expat(data, ns.CLIENT)


@given(stanzas, st.randoms(use_true_random=False))
def test_one_known_element_is_framed_as_the_search_frames_it(element: ET.Element, rnd: random.Random) -> None:
    """A stanza the session writes (known to be one element) gets the message expat would cut."""
    data = write_stanza(element, rnd)
    assert [WEBSOCKET.element(data)] == _messages_expat(data, ns.CLIENT), data


@pytest.mark.parametrize("data", [
    b"<message to='x' a='1>2' b=\"/>\"><body>it's > that</body></message>",
    b"<message a='xmlns=\"x\"'><body/></message>",
    b"<message xmlns='jabber:client' to='b'><body>declared</body></message>",
    b"<presence/>", b"<iq type='get' id='1'/>",
])
def test_one_known_element_on_awkward_input(data: bytes) -> None:
    assert [WEBSOCKET.element(data)] == _messages_expat(data, ns.CLIENT)


def _parsed(data: bytes) -> Stanza:
    """``data`` as a TCP client's stanza, parsed as the node parses it (bytes kept)."""
    p = StreamParser(max_stanza_size=100_000, max_depth=16, content_ns=ns.CLIENT)
    p.feed(f"<stream:stream xmlns='{ns.CLIENT}' xmlns:stream='{ns.STREAM}'>".encode())
    [event] = p.feed(data)
    assert isinstance(event, StanzaReceived)
    return event.stanza


@given(stanzas, st.randoms(use_true_random=False))
def test_a_stanza_written_to_a_websocket_is_the_message_expat_cuts(element: ET.Element, rnd: random.Random) -> None:
    """A stanza the session writes, however it was made — parsed from a TCP client (no ``xmlns``
    on it) or a WebSocket one (declared), stamped, relayed as bytes, or serialized — is one
    message that declares its namespace, the one expat cuts from its bytes."""
    data = write_stanza(element, rnd)
    parsed = _parsed(data)
    made = [parsed, parsed.stamp(from_="a@localhost/r"), lazy_or_none(data), Stanza(element)]
    for stanza in [s for s in made if s is not None]:
        out = stanza.to_bytes()
        assert WEBSOCKET.stanza_message(stanza) == b"".join(_messages_expat(out, ns.CLIENT)), out


def lazy_or_none(data: bytes) -> Stanza | None:
    try:
        return lazy_stanza(data)
    except ValueError:
        return None


@pytest.mark.parametrize("data", [
    b"<message to='b@localhost'><body>tcp</body></message>",
    b"<message xmlns='jabber:client' to='b@localhost'><body>ws</body></message>",
    b"<presence/>", b"<presence xmlns='jabber:client'/>",
    b"<message id='xmlns' to='b'><body>xmlns in a value</body></message>",
    b"<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>",
])
def test_a_stanza_written_to_a_websocket_on_plain_input(data: bytes) -> None:
    for stanza in (_parsed(data), _parsed(data).stamp(from_="a@localhost/r")):
        message = WEBSOCKET.stanza_message(stanza)
        assert message == b"".join(_messages_expat(stanza.to_bytes(), ns.CLIENT))
        assert message.count(b"xmlns='jabber:client'") == 1
