"""XEP-0114 accept streams without sockets: handshake, route claim, stanza checks, errors."""

from __future__ import annotations

from cluster_node.xmpp.component import (
    ComponentEnded,
    ComponentStanza,
    ComponentStream,
    HandshakeDone,
    handshake_digest,
)

HEADER = (b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' "
          b"to='echo.example.com'>")


def opened(secret: str = "s3cret") -> ComponentStream:
    s = ComponentStream({"echo.example.com": "s3cret"}, new_id=lambda: "abc123")
    assert s.receive_data(HEADER) == []
    out = s.data_to_send()
    assert b"id='abc123'" in out and b'from="echo.example.com"' in out
    events = s.receive_data(f"<handshake>{handshake_digest('abc123', secret)}</handshake>".encode())
    if secret == "s3cret":
        assert events == [HandshakeDone("echo.example.com")]
    return s


def test_handshake_then_stanzas_from_the_component_domain() -> None:
    s = opened()
    s.receive_data(b"<message from='bot@echo.example.com' to='alice@example.com'><body>x</body></message>")
    assert s.data_to_send() == b""  # nothing before the route is ours: stanzas wait
    events = s.route_taken()
    assert s.data_to_send() == b"<handshake/>"
    assert len(events) == 1 and isinstance(events[0], ComponentStanza)
    assert events[0].stanza.to == "alice@example.com"


def test_wrong_secret_is_not_authorized() -> None:
    s = opened(secret="wrong")
    out = s.data_to_send()
    assert b"<not-authorized" in out and out.endswith(b"</stream:stream>")


def test_unknown_domain_is_host_unknown() -> None:
    s = ComponentStream({"echo.example.com": "s"})
    events = s.receive_data(HEADER.replace(b"echo.example.com", b"other.example.com"))
    assert isinstance(events[0], ComponentEnded) and b"<host-unknown" in s.data_to_send()


def test_client_namespace_is_refused() -> None:
    s = ComponentStream({"echo.example.com": "s"})
    s.receive_data(HEADER.replace(b"jabber:component:accept", b"jabber:client"))
    assert b"<invalid-namespace" in s.data_to_send()


def test_stanza_from_another_domain_is_invalid_from() -> None:
    s = opened()
    s.route_taken()
    s.data_to_send()
    events = s.receive_data(b"<message from='alice@example.com' to='bob@example.com'/>")
    assert isinstance(events[-1], ComponentEnded) and b"<invalid-from" in s.data_to_send()


def test_second_connection_for_a_domain_gets_conflict() -> None:
    s = opened()
    events = s.route_refused()
    assert isinstance(events[0], ComponentEnded) and b"<conflict" in s.data_to_send()


def test_doctype_is_restricted_xml() -> None:
    s = ComponentStream({"echo.example.com": "s"})
    s.receive_data(b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]>")
    assert b"<restricted-xml" in s.data_to_send()
