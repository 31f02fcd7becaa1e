"""The XML stream core shared by c2s, components and S2S, on a minimal protocol of its own: header,
stream errors, closes, restart, output and events, and a framing other than TCP's."""

from __future__ import annotations

import gc
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import pytest

from cluster_node.xmpp import errors
from cluster_node.xmpp.errors import StreamError
from cluster_node.xmpp.parser import Event, StanzaReceived, StreamClosed, StreamOpened
from cluster_node.xmpp.stanza import Stanza
from cluster_node.xmpp.stream import TCP, Attr, Framing, Parser, TcpFraming, XmlStream

NS = "jabber:test"
HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:test' "
          b"xmlns:stream='http://etherx.jabber.org/streams' to='example.com'>")
OUR_HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:test' "
              b"xmlns:stream='http://etherx.jabber.org/streams' id='s1' from=\"example.com\">")
ERROR = (b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
         b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>no</text></stream:error>")


class Echo(XmlStream[str]):
    """A protocol reduced to the core: it answers the header, names each element in an event,
    fails on ``<bad/>``, and holds input while ``paused``."""

    def __init__(self, framing: Framing = TCP, *, max_stanza_size: int = 262_144, max_depth: int = 32) -> None:
        super().__init__(NS, framing=framing, max_stanza_size=max_stanza_size, max_depth=max_depth)
        self.headers = 0
        self.paused = False

    def receive(self, data: bytes) -> list[str]:
        self._receive(data)
        return self._take_events()

    def _header_attrs(self) -> Sequence[Attr]:
        self.headers += 1
        return [("id", f"'s{self.headers}'"), ("from", '"example.com"')]

    def _paused(self) -> bool:
        return self.paused

    def _on_header(self, header: StreamOpened) -> None:
        self._send_header()
        self._events.append("opened")

    def _on_element(self, stanza: Stanza) -> None:
        if stanza.name == "bad":
            raise errors.PolicyViolation("bad element")
        self._events.append(stanza.name)

    def _on_close(self) -> None:
        if self._close():
            self._events.append("closed")

    def _fail(self, error: StreamError) -> None:
        if self._close(error):
            self._events.append(f"failed:{error.condition}")


def opened(framing: Framing = TCP) -> Echo:
    s = Echo(framing)
    assert s.receive(HEADER) == ["opened"]
    assert s.data_to_send() == OUR_HEADER
    return s


def test_tcp_opening_closing_and_error_bytes() -> None:
    attrs = [("from", "'a.example'"), ("id", "'x1'"), ("version", "'1.0'")]
    assert TCP.opening("jabber:server", attrs, [("db", "jabber:server:dialback")]) == (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
        b" xmlns:db='jabber:server:dialback' from='a.example' id='x1' version='1.0'>")
    assert TCP.closing() == b"</stream:stream>"
    assert TCP.error(errors.PolicyViolation("no")) == ERROR
    assert isinstance(TCP, TcpFraming)


def test_the_header_is_written_once() -> None:
    s = opened()
    assert s.header_sent and s.headers == 1
    assert s.receive(b"<message/>") == ["message"]
    assert s._close(errors.PolicyViolation("no"))
    assert s.data_to_send() == ERROR + b"</stream:stream>"  # no second header
    assert s.headers == 1


def test_stream_error_before_the_header_opens_the_stream_first() -> None:
    s = Echo()
    assert s.receive(b"<!-- not in XMPP -->") == ["failed:restricted-xml"]
    out = s.data_to_send()
    assert out.startswith(OUR_HEADER) and out.endswith(b"</stream:error></stream:stream>")
    assert b"<restricted-xml " in out and s.closed


def test_stream_error_after_the_header() -> None:
    s = opened()
    assert s.receive(b"<message/><bad/><presence/>") == ["message", "failed:policy-violation"]
    assert s.data_to_send() == (b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                                b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>bad element</text>"
                                b"</stream:error></stream:stream>")
    assert s.receive(b"<iq/>") == []  # closed: input is no longer handled


def test_clean_close_by_the_peer() -> None:
    s = opened()
    assert s.receive(b"</stream:stream>") == ["closed"]
    assert s.data_to_send() == b"</stream:stream>"


def test_clean_close_before_the_header() -> None:
    s = Echo()
    assert s._close()
    assert s.data_to_send() == OUR_HEADER + b"</stream:stream>"
    bare = Echo()
    assert bare._close(open_first=False)
    assert bare.data_to_send() == b"</stream:stream>" and not bare.header_sent


def test_close_happens_once_and_nothing_is_written_after() -> None:
    s = opened()
    assert s._close()
    assert not s._close(errors.PolicyViolation("late"))
    s._write(b"<message/>")
    assert s.data_to_send() == b"</stream:stream>"


def test_connection_gone_writes_nothing() -> None:
    s = opened()
    assert s._close(send_close=False)
    assert s.closed and s.data_to_send() == b""


def test_restart_gives_a_fresh_parser() -> None:
    s = opened()
    old = s.parser
    assert s.receive(b"<message/>") == ["message"]
    s._restart()
    assert s.parser is not old and s.parser.bytes_buffered == 0
    assert s.receive(HEADER) == ["opened"]  # a new header is a new stream, not a second header
    assert s.data_to_send() == OUR_HEADER.replace(b"'s1'", b"'s2'")
    assert s.receive(b"<presence/>") == ["presence"]


def test_data_to_send_drains() -> None:
    s = opened()
    s._write(b"<a/>")
    s._write(b"<b/>")
    assert s.data_to_send() == b"<a/><b/>"
    assert s.data_to_send() == b""


def test_events_are_taken_once() -> None:
    s = opened()
    s._receive(b"<message/><presence/>")
    assert s._take_events() == ["message", "presence"]
    assert s._take_events() == []


def test_paused_input_waits_in_order() -> None:
    s = opened()
    s.paused = True
    assert s.receive(b"<message/><presence/>") == []
    s.paused = False
    s._process()
    assert s._take_events() == ["message", "presence"]


def test_input_waiting_is_dropped_on_close() -> None:
    s = opened()
    s.paused = True
    s.receive(b"<message/>")
    s._close()
    s.paused = False
    s._process()
    assert s._take_events() == []


def test_limits_reach_the_parser_and_survive_a_restart() -> None:
    s = Echo(max_stanza_size=64, max_depth=2)
    s._restart()
    s.receive(HEADER)
    assert s.receive(b"<a><b/></a>") == ["a"]
    assert s.receive(b"<message>" + b"x" * 200) == ["failed:policy-violation"]  # too large, unfinished
    deep = Echo(max_depth=2)
    deep._restart()
    deep.receive(HEADER)
    assert deep.receive(b"<a><b><c/></b></a>") == ["failed:policy-violation"]


class MessageParser:
    """One complete element per feed, as over WebSocket (RFC 7395): <open/>, <close/>, elements."""

    bytes_buffered = 0

    def feed(self, data: bytes) -> list[Event]:
        element = ET.fromstring(data)
        if element.tag == "open":
            return [StreamOpened(dict(element.attrib), element.tag, None)]
        if element.tag == "close":
            return [StreamClosed()]
        element.tag = f"{{{NS}}}{element.tag}"
        return [StanzaReceived(Stanza(element))]

    def close(self) -> None:
        pass


class FakeFraming:
    """Not TCP's framing: the core must take every framed byte and every parser from it."""

    def __init__(self) -> None:
        self.parsers = 0

    def parser(self, content_ns: str, *, max_stanza_size: int, max_depth: int) -> Parser:
        assert content_ns == NS
        self.parsers += 1
        return MessageParser()

    def opening(self, content_ns: str, attrs: Sequence[Attr], prefixes: Sequence[tuple[str, str]] = ()) -> bytes:
        return ("<open " + " ".join(f"{name}={value}" for name, value in attrs) + "/>").encode()

    def closing(self) -> bytes:
        return b"<close/>"

    def error(self, error: StreamError) -> bytes:
        return f"<stream-error condition='{error.condition}'/>".encode()


def test_a_custom_framing_changes_opening_and_closing() -> None:
    framing = FakeFraming()
    s = Echo(framing)
    assert framing.parsers == 1
    assert s.receive(b"<open/>") == ["opened"]
    assert s.data_to_send() == b"<open id='s1' from=\"example.com\"/>"
    assert s.receive(b"<message/>") == ["message"]
    assert s.receive(b"<close/>") == ["closed"]
    assert s.data_to_send() == b"<close/>"
    s._restart()
    assert framing.parsers == 2


@pytest.mark.parametrize("opened_first", [False, True])
def test_a_custom_framing_wraps_the_stream_error(opened_first: bool) -> None:
    s = Echo(FakeFraming())
    if opened_first:
        s.receive(b"<open/>")
        s.data_to_send()
    assert s.receive(b"<bad/>") == ["failed:policy-violation"]
    header = b"" if opened_first else b"<open id='s1' from=\"example.com\"/>"
    assert s.data_to_send() == header + b"<stream-error condition='policy-violation'/><close/>"


def test_a_restart_and_a_close_free_the_parser_without_the_collector() -> None:
    """A stream's expat parser holds its parser's bound methods: a reference cycle the collector
    had to find, three per c2s login (under a login storm a pass every second, 25–200 ms each).
    A restart drops the old parser at once, a close the last one; input after the close is
    ignored."""
    gc.disable()
    try:
        s = opened()
        first = weakref.ref(s.parser)
        s._restart()
        assert first() is None
        assert s.receive(HEADER) == ["opened"]
        last = weakref.ref(s.parser)
        assert s.receive(b"<a/></stream:stream>") == ["a", "closed"]
        assert s.receive(b"<a/>") == []
        s.parser = opened().parser  # the stream lets go of it: nothing else holds it
        assert last() is None
    finally:
        gc.enable()
