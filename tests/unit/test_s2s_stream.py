"""The S2S stream cores pumped together without sockets (TLS simulated by calling tls_started),
and fed hostile input byte by byte."""

from __future__ import annotations

import itertools

import pytest

from gateway.s2s import dialback
from gateway.s2s.stream import (
    Authenticated,
    AuthFailed,
    Closed,
    IncomingStream,
    OutgoingStream,
    S2SEvent,
    StanzaIn,
    StartTls,
    VerifyNeeded,
    VerifyResult,
    cert_matches,
)

EU, US = "eu1.example.com", "us1.example.com"
SECRET_EU, SECRET_US = "eu-secret", "us-secret"


def ids(prefix: str):  # type: ignore[no-untyped-def]
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter)}"


class Pair:
    """eu's outgoing stream to us, us's incoming stream; us verifies keys by asking eu's
    incoming stream core (the authoritative server) over a second pair of cores."""

    def __init__(self, *, peer_names: tuple[str, ...] = (), external: bool = True, require_tls: bool = True,
                 one_byte: bool = False) -> None:
        self.out = OutgoingStream(EU, US, SECRET_EU, external=external, require_tls=require_tls)
        self.inc = IncomingStream([US], SECRET_US, ids("us"), require_tls=require_tls)
        self.peer_names = peer_names
        self.one_byte = one_byte
        self.out_events: list[S2SEvent] = []
        self.in_events: list[S2SEvent] = []
        # us -> eu, only for db:verify
        self.verifier_out = OutgoingStream(US, EU, SECRET_US)
        self.verifier_in = IncomingStream([EU], SECRET_EU, ids("eu"))

    def _feed(self, core: IncomingStream | OutgoingStream, data: bytes) -> list[S2SEvent]:
        if not self.one_byte:
            return core.feed(data)
        events: list[S2SEvent] = []
        for i in range(len(data)):
            events += core.feed(data[i:i + 1])
        return events

    def pump(self) -> None:
        for _ in range(50):
            moved = False
            data = self.out.data_to_send()
            if data:
                moved = True
                for ev in self._feed(self.inc, data):
                    self.in_events.append(ev)
                    if isinstance(ev, StartTls):
                        self.out_events += self._feed(self.out, self.inc.data_to_send())
                        self.inc.tls_started(self.peer_names)
                        self.out.tls_started()
                    elif isinstance(ev, VerifyNeeded):
                        self.verifier_out.verify(ev.receiving, ev.originating, ev.stream_id, ev.key)
            data = self.inc.data_to_send()
            if data:
                moved = True
                self.out_events += self._feed(self.out, data)
            moved |= self._pump_verifier()
            if not moved:
                return

    def _pump_verifier(self) -> bool:
        moved = False
        if self.verifier_out.state == "idle":
            return False
        data = self.verifier_out.data_to_send()
        if data:
            moved = True
            for ev in self.verifier_in.feed(data):
                if isinstance(ev, StartTls):
                    self.verifier_out.feed(self.verifier_in.data_to_send())
                    self.verifier_in.tls_started()
                    self.verifier_out.tls_started()
        data = self.verifier_in.data_to_send()
        if data:
            moved = True
            for ev in self.verifier_out.feed(data):
                if isinstance(ev, VerifyResult):
                    self.inc.dialback_result(ev.originating, ev.receiving, ev.valid)
        return moved


def test_dialback_key_follows_xep0185() -> None:
    # The recipe of the script that made XEP-0185's example (XMPP wiki): the hex SHA-256 of the
    # secret keys an HMAC-SHA256 over "receiving originating id".
    import hashlib
    import hmac
    hashed = hashlib.sha256(b"s3cr3tf0rd14lb4ck").hexdigest().encode()
    expected = hmac.new(hashed, b"domain2.tld domain1.tld D60000229F", hashlib.sha256).hexdigest()
    assert dialback.dialback_key("s3cr3tf0rd14lb4ck", "domain2.tld", "domain1.tld", "D60000229F") == expected
    assert dialback.dialback_key("s3cr3tf0rd14lb4ck", "domain1.tld", "domain2.tld", "D60000229F") != expected


@pytest.mark.parametrize("one_byte", [False, True])
def test_dialback_between_two_cores(one_byte: bool) -> None:
    p = Pair(one_byte=one_byte)
    p.out.start()
    p.verifier_out.start()
    p.pump()
    assert Authenticated(EU, US, "dialback") in p.out_events
    assert p.out.ready and p.out.tls and p.out.auth_method == "dialback"
    assert (EU, US) in p.inc.pairs
    p.out.send(b"<message from='a@eu1.example.com/r' to='b@us1.example.com' type='chat'><body>hi</body></message>")
    p.pump()
    stanzas = [ev.stanza for ev in p.in_events if isinstance(ev, StanzaIn)]
    assert len(stanzas) == 1 and stanzas[0].element.findtext("{jabber:server}body") == "hi"


def test_sasl_external_when_certificate_names_the_domain() -> None:
    p = Pair(peer_names=(EU,))
    p.out.start()
    p.pump()
    assert Authenticated(EU, US, "external") in p.out_events
    assert p.inc.methods == {EU: "external"}


def test_external_refused_for_the_wrong_name_falls_back_to_dialback() -> None:
    p = Pair(peer_names=("*.other.example",))
    p.out.start()
    p.verifier_out.start()
    p.pump()
    # Not offered (a cert naming someone else still counts as a cert): refused, then dialback.
    assert any(isinstance(ev, AuthFailed) for ev in p.in_events)
    assert Authenticated(EU, US, "dialback") in p.out_events


def test_bad_dialback_key_is_refused() -> None:
    p = Pair()
    p.out.secret = "not-the-authoritative-secret"
    p.out.start()
    p.verifier_out.start()
    p.pump()
    assert any(isinstance(ev, AuthFailed) for ev in p.out_events)
    assert not p.inc.pairs


def test_unauthenticated_from_gets_invalid_from() -> None:
    p = Pair()
    p.out.start()
    p.verifier_out.start()
    p.pump()
    p.out.send(b"<message from='mallory@evil.example' to='b@us1.example.com'><body>x</body></message>")
    p.pump()
    assert Closed("invalid-from", by_peer=False) in p.in_events
    assert Closed("invalid-from", by_peer=True) in p.out_events
    assert not any(isinstance(ev, StanzaIn) for ev in p.in_events)


def test_stanza_before_authentication_gets_invalid_from() -> None:
    inc = IncomingStream([US], SECRET_US, ids("us"), require_tls=False)
    inc.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
             b"to='us1.example.com' version='1.0'>")
    events = inc.feed(b"<message from='a@eu1.example.com' to='b@us1.example.com'/>")
    assert events == [Closed("invalid-from", by_peer=False)]
    assert b"<invalid-from" in inc.data_to_send()


def test_starttls_required_before_dialback() -> None:
    inc = IncomingStream([US], SECRET_US, ids("us"))
    inc.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
             b"xmlns:db='jabber:server:dialback' to='us1.example.com' version='1.0'>")
    assert b"<required/>" in inc.data_to_send()
    events = inc.feed(b"<db:result from='eu1.example.com' to='us1.example.com'>abc</db:result>")
    assert events == [Closed("policy-violation", by_peer=False)]


def test_unknown_host_and_garbage() -> None:
    inc = IncomingStream([US], SECRET_US, ids("us"))
    events = inc.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
                      b"to='nowhere.example' version='1.0'>")
    assert events == [Closed("host-unknown", by_peer=False)]
    out = inc.data_to_send()
    assert out.startswith(b"<?xml") and b"<host-unknown" in out and out.endswith(b"</stream:stream>")
    inc = IncomingStream([US], SECRET_US, ids("us"))
    assert inc.feed(b"\x16\x03\x01 garbage <<<") == [Closed("not-well-formed", by_peer=False)]
    assert inc.feed(b"more") == []


def test_db_verify_answered_for_our_domain_only() -> None:
    inc = IncomingStream([EU], SECRET_EU, ids("eu"), require_tls=False)
    inc.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
             b"xmlns:db='jabber:server:dialback' to='eu1.example.com' version='1.0'>")
    inc.data_to_send()
    good = dialback.dialback_key(SECRET_EU, US, EU, "S1")
    inc.feed(f"<db:verify from='{US}' to='{EU}' id='S1'>{good}</db:verify>".encode())
    assert b"type='valid'" in inc.data_to_send()
    inc.feed(f"<db:verify from='{US}' to='{EU}' id='S2'>{good}</db:verify>".encode())
    assert b"type='invalid'" in inc.data_to_send()


def test_outgoing_refuses_a_peer_without_starttls() -> None:
    out = OutgoingStream(EU, US, SECRET_EU)
    out.start()
    out.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' id='x' "
             b"from='us1.example.com' version='1.0'>")
    events = out.feed(b"<stream:features/>")
    assert events == [Closed("policy-violation", by_peer=False)]


def test_verify_requests_wait_for_tls() -> None:
    out = OutgoingStream(US, EU, SECRET_US)
    out.start()
    out.verify(US, EU, "S1", "k")
    assert b"db:verify" not in out.data_to_send()
    out.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' id='x' "
             b"version='1.0'><stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>")
    assert b"db:verify" not in out.data_to_send()
    assert out.feed(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>") == [StartTls()]
    out.tls_started()
    out.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' id='y' "
             b"version='1.0'><stream:features/>")
    assert b"<db:verify from='us1.example.com' to='eu1.example.com' id='S1'>k</db:verify>" in out.data_to_send()


def test_cert_matches() -> None:
    assert cert_matches(["eu1.example.com"], "EU1.example.com")
    assert cert_matches(["*.example.com"], "eu1.example.com")
    assert not cert_matches(["*.example.com"], "a.eu1.example.com")
    assert not cert_matches(["*.example.com"], "example.com")
    assert not cert_matches([], "eu1.example.com")


def test_cores_import_no_io() -> None:
    import gateway.s2s.dialback as d
    import gateway.s2s.stream as s
    for mod in (d, s):
        source = open(mod.__file__ or "").read()
        for banned in ("import asyncio", "import socket", "import ssl"):
            assert banned not in source


def _open_incoming(inc: IncomingStream, from_: str = EU) -> None:
    inc.feed(f"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
             f"xmlns:db='jabber:server:dialback' from='{from_}' to='{US}' version='1.0'>".encode())
    inc.data_to_send()


def test_external_with_equals_sign_uses_the_header_from() -> None:
    inc = IncomingStream([US], SECRET_US, ids("us"))
    inc.tls_started([EU])
    _open_incoming(inc)
    events = inc.feed(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>")
    assert events == [Authenticated(US, EU, "external")]
    assert b"<success" in inc.data_to_send()


def test_external_for_another_domain_than_the_header_is_refused() -> None:
    inc = IncomingStream([US], SECRET_US, ids("us"))
    inc.tls_started([EU, "other.example"])
    _open_incoming(inc)
    events = inc.feed(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>"
                      b"b3RoZXIuZXhhbXBsZQ==</auth>")  # other.example, while the header said eu1
    assert isinstance(events[0], AuthFailed)
    assert b"<not-authorized/>" in inc.data_to_send()
    assert not inc.pairs


def test_dialback_for_a_domain_not_served_is_host_unknown() -> None:
    inc = IncomingStream([US], SECRET_US, ids("us"))
    inc.tls_started()
    _open_incoming(inc)
    events = inc.feed(f"<db:result from='{EU}' to='elsewhere.example'>k</db:result>".encode())
    assert events == [Closed("host-unknown", by_peer=False)]


def test_pending_dialback_requests_are_bounded() -> None:
    from gateway.s2s.stream import MAX_PENDING_DIALBACK

    inc = IncomingStream([US], SECRET_US, ids("us"))
    inc.tls_started()
    _open_incoming(inc)
    for i in range(MAX_PENDING_DIALBACK):
        assert isinstance(inc.feed(f"<db:result from='d{i}.example' to='{US}'>k</db:result>".encode())[0],
                          VerifyNeeded)
    events = inc.feed(f"<db:result from='more.example' to='{US}'>k</db:result>".encode())
    assert events == [Closed("policy-violation", by_peer=False)]


def test_outgoing_sees_the_peers_stream_error() -> None:
    out = OutgoingStream(EU, US, SECRET_EU)
    out.start()
    events = out.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
                      b"id='x' version='1.0'><stream:error><host-unknown "
                      b"xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
    assert events == [Closed("host-unknown", by_peer=True)]
    assert out.data_to_send().endswith(b"</stream:stream>")


def test_outgoing_over_direct_tls_skips_starttls() -> None:
    out = OutgoingStream(EU, US, SECRET_EU)
    out.tls = True  # XEP-0368: the transport is TLS from the start
    out.start()
    out.data_to_send()
    out.feed(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' id='S' "
             b"version='1.0'><stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
             b"<mechanism>EXTERNAL</mechanism></mechanisms></stream:features>")
    sent = out.data_to_send()
    assert b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>" in sent and b"starttls" not in sent


def test_send_before_authentication_is_our_bug() -> None:
    out = OutgoingStream(EU, US, SECRET_EU)
    with pytest.raises(RuntimeError):
        out.send(b"<message/>")


def test_no_verdict_in_time_is_a_temporary_dialback_error() -> None:
    """XEP-0220 §2.4: the receiving server got no answer from the authoritative server in time; it
    answers type='error' with <remote-server-timeout/> in an <error type='wait'/>, and the
    originating side reads it as temporary (it tries again) rather than as a refusal."""
    p = Pair()
    p.out.start()  # the verifier never starts: the authoritative server does not answer
    p.pump()
    needed = [ev for ev in p.in_events if isinstance(ev, VerifyNeeded)]
    assert len(needed) == 1
    p.inc.dialback_result(needed[0].originating, needed[0].receiving, None)
    data = p.inc.data_to_send()
    assert b"type='error'" in data and b"<error type='wait'><remote-server-timeout" in data
    events = p.out.feed(data)
    failed = [ev for ev in events if isinstance(ev, AuthFailed)]
    assert len(failed) == 1 and failed[0].temporary, events
    assert (EU, US) not in p.inc.pairs
    invalid = Pair()
    invalid.out.start()
    invalid.pump()
    needed = [ev for ev in invalid.in_events if isinstance(ev, VerifyNeeded)]
    invalid.inc.dialback_result(needed[0].originating, needed[0].receiving, False)
    failed = [ev for ev in invalid.out.feed(invalid.inc.data_to_send()) if isinstance(ev, AuthFailed)]
    assert len(failed) == 1 and not failed[0].temporary  # type='invalid': a refusal
