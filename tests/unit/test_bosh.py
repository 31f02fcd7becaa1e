"""BOSH (XEP-0124, XEP-0206), sans-IO: the request body parser, the session's rid window, hold,
wait, polling, pause, inactivity and terminate, and a real c2s stream pumped through it (login
with SASL, restart, bind, a stream error)."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from collections.abc import Hashable
from typing import Any

import pytest

from cluster_node.xmpp.bosh import (
    BOSH,
    MAX_RID,
    NS,
    XBOSH,
    Body,
    BoshError,
    BoshLimits,
    BoshSession,
    Ended,
    Feed,
    Reply,
    parse_body,
    status_for,
    terminate_body,
)
from cluster_node.xmpp.c2s import (
    BindRequested,
    C2SConfig,
    C2SStream,
    CredentialsNeeded,
    State,
)
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.sasl.scram import derive_credentials
from cluster_node.xmpp.websocket import FRAMING_NS

B = f"xmlns='{NS}'"
XMPP = f"xmlns:xmpp='{XBOSH}'"
STREAM = "http://etherx.jabber.org/streams"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"


def body(attrs: str = "", payload: str = "") -> Body:
    text = f"<body {B} {attrs}>{payload}</body>" if payload else f"<body {B} {attrs}/>"
    return parse_body(text.encode())


def create(rid: int = 100, **attrs: str) -> Body:
    """A session creation request; ``attrs`` replace the defaults (``hold='1'``, ``ver='1.6'``…)."""
    values = {"rid": str(rid), "to": "localhost", "wait": "60", "hold": "1", "ver": "1.6", "xml:lang": "en",
              "xmpp:version": "1.0", **attrs}
    return body(" ".join(f"{k}='{v}'" for k, v in values.items()) + f" {XMPP}")


def xml(data: bytes) -> ET.Element:
    return ET.fromstring(data)


# -- the body parser ----------------------------------------------------------------------------------


def test_parse_body_keeps_attributes_and_cuts_children_out_with_their_namespaces() -> None:
    b = parse_body(f"<body {B} {XMPP} xmlns:x='urn:x' rid='7' sid='s.n1' xmpp:restart='true'>"
                   "<message to='bob@localhost'><body>hi &amp; bye</body></message>"
                   "<iq xmlns='jabber:client' type='get' id='1'><x:q/></iq>"
                   "<presence/></body>".encode())
    assert b.rid == 7 and b.sid == "s.n1" and b.restart and not b.terminate
    assert b.attrs[f"{{{XBOSH}}}restart"] == "true"
    assert b.payloads == (
        b"<message to='bob@localhost'><body>hi &amp; bye</body></message>",  # jabber:client for the c2s parser
        b"<iq xmlns:x=\"urn:x\" xmlns='jabber:client' type='get' id='1'><x:q/></iq>",  # the prefix it uses, declared
        b"<presence/>",
    )


@pytest.mark.parametrize("text", [
    b"",
    b"not xml",
    b"<body xmlns='urn:other' rid='1'/>",
    f"<body {B} rid='1'><message>".encode(),
    f"<body {B} rid='1'>text<message/></body>".encode(),
    f"<!DOCTYPE body [<!ENTITY a 'b'>]><body {B} rid='1'>&a;</body>".encode(),
    f"<body {B} rid='1'><!-- hello --></body>".encode(),
    f"<body {B} rid='1'/><body {B} rid='2'/>".encode(),
    b"<body xmlns='" + NS.encode() + b"' rid='\xff'/>",
])
def test_what_is_not_a_bosh_body_is_bad_request(text: bytes) -> None:
    with pytest.raises(BoshError) as info:
        parse_body(text)
    assert info.value.condition == "bad-request"


@pytest.mark.parametrize("rid", ["", "-1", "1.5", "abc", str(MAX_RID + 1), "1" * 30, "٣"])
def test_a_rid_is_an_integer_below_2_to_the_53(rid: str) -> None:
    with pytest.raises(BoshError) as info:
        _ = body(f"rid='{rid}'").rid
    assert info.value.condition == "bad-request"


def test_depth_is_bounded() -> None:
    deep = "<a>" * 40 + "</a>" * 40
    with pytest.raises(BoshError):
        parse_body(f"<body {B} rid='1'>{deep}</body>".encode(), max_depth=32)


def test_status_is_200_for_recent_clients_and_legacy_codes_for_old_ones() -> None:
    assert status_for("item-not-found", (1, 6)) == 200
    assert status_for("item-not-found", None) == 404
    assert status_for("policy-violation", (1, 5)) == 403
    assert status_for("bad-request", None) == 400
    assert status_for("host-unknown", None) == 200
    assert xml(terminate_body("bad-request")).attrib == {"type": "terminate", "condition": "bad-request"}


# -- a session, with a stub stream ------------------------------------------------------------------------


class Harness:
    """A session and what it did: replies by request key, messages fed to the stream, its end."""

    def __init__(self, **limits: Any) -> None:
        self.s = BoshSession("abc.n1", BoshLimits(**limits), ["localhost"])
        self.now = 1000.0
        self.replies: dict[Hashable, tuple[int, bytes]] = {}
        self.fed: list[bytes] = []
        self.ended: str | None = None
        self.limit = ""  # the BoshLimits field an error ended the session for (counted by the adapter)
        self._keys = 0

    def apply(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, Reply):
                assert a.request not in self.replies, "answered twice"
                self.replies[a.request] = (a.status, a.body)
            elif isinstance(a, Feed):
                self.fed += a.messages
            elif isinstance(a, Ended):
                self.ended, self.limit = a.reason, a.limit

    def key(self) -> int:
        self._keys += 1
        return self._keys

    def open(self, b: Body | None = None) -> int:
        k = self.key()
        self.apply(self.s.open(k, b or create(), self.now))
        self.s.send(f"<open xmlns='{FRAMING_NS}' id='stream-1' from='localhost' version='1.0'/>".encode()
                    + b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></stream:features>")
        self.flush()
        return k

    def req(self, rid: int, attrs: str = "", payload: str = "") -> int:
        k = self.key()
        self.apply(self.s.receive(k, body(f"rid='{rid}' sid='abc.n1' {attrs}", payload), self.now))
        return k

    def flush(self) -> None:
        self.apply(self.s.flush(self.now))

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.apply(self.s.tick(self.now))

    def reply(self, key: int) -> ET.Element:
        status, data = self.replies[key]
        assert status == 200
        return xml(data)


def test_session_creation_response_carries_the_session_attributes_and_the_features() -> None:
    h = Harness(max_wait=30, max_hold=1, inactivity=45, max_pause=90, polling=3)
    k = h.open(create(hold="1000", wait="600", ver="1.13", ack="1"))
    assert h.fed == [f"<open xmlns='{FRAMING_NS}' to=\"localhost\" version=\"1.0\" xml:lang=\"en\"/>".encode()]
    r = h.reply(k)
    assert r.tag == f"{{{NS}}}body"
    assert {k: r.get(k) for k in ("sid", "wait", "requests", "hold", "inactivity", "polling", "maxpause", "ver",
                                  "from", "authid", "ack")} == {
        "sid": "abc.n1", "wait": "30", "requests": "2", "hold": "1", "inactivity": "45", "polling": "3",
        "maxpause": "90", "ver": "1.11", "from": "localhost", "authid": "stream-1", "ack": "100"}
    assert r.get(f"{{{XBOSH}}}version") == "1.0" and r.get(f"{{{XBOSH}}}restartlogic") == "true"
    [features] = list(r)
    assert features.tag == f"{{{STREAM}}}features"


@pytest.mark.parametrize("attrs, condition", [
    ("rid='1' wait='60' hold='1'", "improper-addressing"),
    ("rid='1' to='elsewhere.example' wait='60' hold='1'", "host-unknown"),
    ("rid='1' to='a@@b' wait='60' hold='1'", "host-unknown"),
    ("rid='1' to='localhost' wait='-5' hold='1'", "bad-request"),
    ("rid='1' to='localhost' wait='60' hold='x'", "bad-request"),
    ("to='localhost' wait='60' hold='1'", "bad-request"),
])
def test_creation_errors(attrs: str, condition: str) -> None:
    s = BoshSession("abc.n1", BoshLimits(), ["localhost"])
    with pytest.raises(BoshError) as info:
        s.open(1, body(attrs), 0.0)
    assert info.value.condition == condition


def test_a_request_is_held_until_there_is_something_to_send() -> None:
    h = Harness()
    h.open()
    k = h.req(101, payload="<presence/>")
    assert h.fed[-1] == b"<presence/>"
    h.flush()
    assert k not in h.replies  # nothing for the client yet: held
    h.s.send(b"<message to='alice@localhost'><body>hi</body></message>")
    h.flush()
    [msg] = list(h.reply(k))
    assert msg.tag == "{jabber:client}message"  # its namespace declared on it


def test_wait_expiry_answers_with_an_empty_body() -> None:
    h = Harness(max_wait=20)
    h.open()
    k = h.req(101)
    assert h.s.deadline() == h.now + 20
    h.tick(19)
    assert k not in h.replies
    h.tick(1)
    r = h.reply(k)
    assert len(r) == 0 and r.get("sid") is None  # only the first response carries the session's attributes


def test_a_new_request_beyond_hold_answers_the_oldest() -> None:
    h = Harness()
    h.open()
    k1 = h.req(101)
    k2 = h.req(102, payload="<presence/>")
    assert len(h.reply(k1)) == 0 and k2 not in h.replies


def test_a_replayed_rid_gets_the_same_response_byte_for_byte() -> None:
    h = Harness()
    h.open()
    k1 = h.req(101)
    h.s.send(b"<message><body>one</body></message>")
    h.flush()
    again = h.req(101)
    assert h.replies[again] == h.replies[k1]
    assert h.fed.count(b"<presence/>") == 0  # and nothing was fed twice


def test_a_replayed_rid_still_held_gets_the_one_response_too() -> None:
    h = Harness()
    h.open()
    k1 = h.req(101, payload="<presence/>")
    k1b = h.req(101, payload="<presence/>")  # the client thought the first connection broke
    assert h.fed.count(b"<presence/>") == 1
    h.s.send(b"<message><body>one</body></message>")
    h.flush()
    assert h.replies[k1] == h.replies[k1b] and len(h.reply(k1)) == 1


def test_a_rid_too_old_for_the_cache_ends_the_session_with_item_not_found() -> None:
    h = Harness()
    h.open()
    for rid in range(101, 106):
        h.req(rid)
        h.tick(60)  # each answered on wait expiry
    k = h.req(101)
    status, data = h.replies[k]
    assert status == 200 and xml(data).get("condition") == "item-not-found"
    assert h.ended == "error"


def test_a_rid_beyond_the_window_ends_the_session() -> None:
    h = Harness()
    h.open()
    held = h.req(101)
    k = h.req(101 + 1_000_000)
    assert xml(h.replies[k][1]).get("condition") == "item-not-found"
    assert xml(h.replies[held][1]).get("type") == "terminate"  # the held one learns it too
    assert h.ended == "error"
    late = h.req(103)
    assert xml(h.replies[late][1]).get("condition") == "item-not-found"


def test_legacy_clients_get_the_http_status() -> None:
    h = Harness()
    h.open(create(ver="1.5"))
    k = h.req(500)
    assert h.replies[k][0] == 404


def test_requests_arriving_out_of_order_are_processed_in_rid_order() -> None:
    h = Harness(max_hold=2)
    h.open(create(hold="2"))
    k3 = h.req(102, payload="<message id='second'/>")
    assert not any(b"second" in m for m in h.fed) and k3 not in h.replies
    h.req(101, payload="<message id='first'/>")
    ids = [xml(m).get("id") for m in h.fed[1:]]
    assert ids == ["first", "second"]
    assert h.s.rid == 102


def test_an_early_request_whose_predecessor_never_comes_ends_the_session() -> None:
    h = Harness(max_hold=2, max_wait=10)
    h.open(create(hold="2", wait="10"))
    k = h.req(102)
    h.tick(10)
    assert xml(h.replies[k][1]).get("condition") == "item-not-found" and h.ended == "error"
    assert h.limit == ""  # no limit: not counted as a refusal


def test_more_requests_outstanding_than_requests_is_a_policy_violation() -> None:
    h = Harness(max_hold=1)
    h.open()
    h.req(101)  # held: one outstanding
    h.req(103)  # early (102 missing): two
    k = h.req(102)  # three > requests (2)
    assert xml(h.replies[k][1]).get("condition") == "policy-violation" and h.ended == "error"
    assert h.limit == "max_hold"


def test_polling_session_empty_requests_too_close_together_are_a_policy_violation() -> None:
    h = Harness(polling=5)
    h.open(create(hold="0"))
    assert h.s.hold == 0 and h.s.requests == 1
    k1 = h.req(101)
    h.flush()
    assert len(h.reply(k1)) == 0  # a polling session's requests are answered at once
    h.tick(6)
    k2 = h.req(102)
    h.flush()
    assert k2 in h.replies and h.ended is None
    h.tick(1)
    k3 = h.req(103)
    assert xml(h.replies[k3][1]).get("condition") == "policy-violation" and h.limit == "polling"


def test_pause_answers_every_request_and_stretches_inactivity() -> None:
    h = Harness(inactivity=30, max_pause=120)
    h.open()
    k1 = h.req(101)
    k2 = h.req(102, "pause='100'")
    h.flush()
    assert k1 in h.replies and k2 in h.replies
    h.tick(60)
    assert h.ended is None  # past inactivity, within the pause
    h.tick(41)
    assert h.ended == "inactivity"


def test_pause_over_maxpause_is_a_policy_violation() -> None:
    h = Harness(max_pause=60)
    h.open()
    k = h.req(101, "pause='61'")
    assert xml(h.replies[k][1]).get("condition") == "policy-violation" and h.ended == "error"
    assert h.limit == "max_pause"


def test_inactivity_ends_a_session_with_no_request_waiting() -> None:
    h = Harness(inactivity=30, max_wait=60)
    h.open()
    assert h.s.deadline() == h.now + 30
    h.tick(29)
    assert h.ended is None
    k = h.req(101)  # a request waiting: no inactivity
    h.tick(59)
    assert h.ended is None
    h.tick(1)  # answered on wait expiry; the idle time starts now
    assert k in h.replies and h.ended is None
    h.tick(30)
    assert h.ended == "inactivity"


def test_client_terminate_closes_the_stream_after_its_payloads() -> None:
    h = Harness()
    h.open()
    held = h.req(101)
    k = h.req(102, "type='terminate'", "<presence type='unavailable'/>")
    assert h.fed[-2:] == [b"<presence type='unavailable'/>", f"<close xmlns='{FRAMING_NS}'/>".encode()]
    assert xml(h.replies[k][1]).get("type") == "terminate"
    assert h.ended == "terminate" and held in h.replies


def test_restart_is_a_new_header() -> None:
    h = Harness()
    h.open()
    h.req(101, f"xmpp:restart='true' {XMPP} to='localhost'")
    assert h.fed[-1].startswith(f"<open xmlns='{FRAMING_NS}' to=\"localhost\" version=\"1.0\"".encode())


def test_a_stream_error_is_a_remote_stream_error_terminate() -> None:
    h = Harness()
    h.open()
    k = h.req(101)
    h.s.send(b"<message><body>last</body></message><stream:error xmlns:stream='" + STREAM.encode() + b"'>"
             b"<conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
             + f"<close xmlns='{FRAMING_NS}'/>".encode())
    h.flush()
    r = h.reply(k)
    assert r.get("type") == "terminate" and r.get("condition") == "remote-stream-error"
    assert [c.tag for c in r] == ["{jabber:client}message", f"{{{STREAM}}}error"]
    assert h.ended == "closed"


def test_a_stream_closed_with_no_request_waiting_terminates_the_next_one() -> None:
    h = Harness()
    h.open()
    h.s.send(f"<close xmlns='{FRAMING_NS}'/>".encode())
    h.flush()
    assert h.ended is None
    k = h.req(101)
    assert xml(h.replies[k][1]).get("type") == "terminate" and h.ended == "closed"


def test_acks_report_the_highest_rid_when_answering_an_older_request() -> None:
    h = Harness(max_hold=2)
    h.open(create(hold="2", ack="1"))
    k1 = h.req(101)
    h.req(102)
    h.s.send(b"<message/>")
    h.flush()
    assert h.reply(k1).get("ack") == "102"


# -- a real c2s stream through the session -----------------------------------------------------------------


class Pumped(Harness):
    """The harness with :class:`C2SStream` behind it: what is fed goes to the stream, what the stream
    writes to the session, the outside world answered the way the node's adapter does."""

    def __init__(self) -> None:
        super().__init__()
        cfg = C2SConfig(domains=["localhost"], tls_available=False, new_id=lambda: "stream-1")
        self.c2s = C2SStream(cfg, direct_tls=True, framing=BOSH)
        self.creds = derive_credentials("secret", "sha256")

    def apply(self, actions: list[Any]) -> None:
        for a in actions:
            super().apply([a])
            if isinstance(a, Feed):
                for message in a.messages:
                    self.events(self.c2s.receive_data(message))
        self.s.send(self.c2s.data_to_send())
        self.apply_flush()

    def apply_flush(self) -> None:
        for a in self.s.flush(self.now):
            super().apply([a])

    def events(self, events: list[Any]) -> None:
        for e in events:
            if isinstance(e, CredentialsNeeded):
                check = self.c2s.credentials_check(self.creds)
                self.events(self.c2s.provide_credentials(self.creds, checked=check() if check else None))
            elif isinstance(e, BindRequested):
                self.events(self.c2s.bind_done(Jid.parse(f"alice@localhost/{e.resource or 'r'}")))

    def start(self) -> int:
        k = self.key()
        self.apply(self.s.open(k, create(), self.now))
        return k


def test_a_c2s_stream_logs_in_restarts_and_binds_through_bosh() -> None:
    h = Pumped()
    k = h.start()
    r = h.reply(k)
    assert r.get("authid") == "stream-1"
    [features] = list(r)
    assert "PLAIN" in [m.text for m in features.iter(f"{{{SASL}}}mechanism")]
    token = base64.b64encode(b"\0alice\0secret").decode()
    k = h.req(101, payload=f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
    [success] = list(h.reply(k))
    assert success.tag == f"{{{SASL}}}success"
    k = h.req(102, f"xmpp:restart='true' {XMPP} to='localhost'")
    [features] = list(h.reply(k))
    assert features.find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is not None
    k = h.req(103, payload="<iq xmlns='jabber:client' type='set' id='b'><bind "
                           "xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq>")
    [iq] = list(h.reply(k))
    assert iq.findtext(".//{urn:ietf:params:xml:ns:xmpp-bind}jid") == "alice@localhost/web"
    assert h.c2s.state is State.ESTABLISHED
    k = h.req(104, "type='terminate'", "<presence xmlns='jabber:client' type='unavailable'/>")
    assert xml(h.replies[k][1]).get("type") == "terminate"
    assert h.c2s.state is State.CLOSED and h.ended == "terminate"


def test_a_malformed_payload_ends_the_stream_with_remote_stream_error() -> None:
    h = Pumped()
    h.start()
    k = h.req(101, payload="<message xmlns='urn:unknown:ns'/>")
    r = h.reply(k)
    assert r.get("type") == "terminate" and r.get("condition") == "remote-stream-error"
    assert r.find(f"{{{STREAM}}}error") is not None
    assert h.c2s.state is State.CLOSED and h.ended == "closed"
