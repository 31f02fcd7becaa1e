"""XEP-0388 SASL2 and XEP-0386 Bind 2 in the sans-IO c2s stream (scripted conversations, no
sockets), and the inline handlers of stream management, carbons and CSI on a fake node."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cluster_node.core.hooks import Hook
from cluster_node.modules.carbons import Carbons
from cluster_node.modules.csi import Csi
from cluster_node.modules.stream_management import StreamManagement
from cluster_node.xmpp import errors
from cluster_node.xmpp.c2s import (
    Authenticated,
    AuthFailed,
    BindRequested,
    C2SConfig,
    C2SStream,
    CredentialsNeeded,
    Sasl2Authenticated,
    Sasl2Request,
    SessionEstablished,
    StanzaIn,
    State,
    StreamEnded,
    TokenNeeded,
    UserAgent,
)
from cluster_node.xmpp.errors import SaslFailure
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.sasl.ht import TokenKey, token_key
from cluster_node.xmpp.sasl.scram import make_credentials
from cluster_node.xmpp.stanza import Stanza
from tests.helpers.fake_host import DOMAIN, FakeNode, FakeSession, fake_node

HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams'>")
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
SASL2 = "urn:xmpp:sasl:2"
BIND2 = "urn:xmpp:bind:0"
SM = "urn:xmpp:sm:3"
CREDS = make_credentials("secret")
JID = Jid.parse("alice@localhost/phone.1a2b3c4d")


def new(**kw: Any) -> C2SStream:
    kw.setdefault("bind2_features", lambda s: [SM, "urn:xmpp:carbons:2"])
    kw.setdefault("sasl2_inline", lambda s: [f"<sm xmlns='{SM}'/>".encode()])
    return C2SStream(C2SConfig(domains=["localhost"], **kw))


def after_tls(**kw: Any) -> tuple[C2SStream, bytes]:
    c = new(**kw)
    c.receive_data(HEADER)
    c.data_to_send()
    c.receive_data(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    c.data_to_send()
    c.tls_started()
    c.receive_data(HEADER)
    return c, c.data_to_send()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def authenticate(mechanism: str, initial: bytes | None = None, inner: str = "", attrs: str = "") -> bytes:
    ir = f"<initial-response>{b64(initial)}</initial-response>" if initial is not None else ""
    return f"<authenticate xmlns='{SASL2}' mechanism='{mechanism}'{attrs}>{ir}{inner}</authenticate>".encode()


def plain(user: str = "alice", pw: str = "secret") -> bytes:
    return f"\0{user}\0{pw}".encode()


AGENT = ("<user-agent id='9f1ad1f2-7c1e-4f0a-b2b4-0c1d2e3f4a5b'><software>Phone</software><device>Pixel</device>"
         "</user-agent>")
BIND = f"<bind xmlns='{BIND2}'><tag>phone</tag><enable xmlns='{SM}'/></bind>"


def features(out: bytes) -> ET.Element:
    start = out.index(b"<stream:features>")
    end = out.index(b"</stream:features>") + len(b"</stream:features>")
    return ET.fromstring(out[start:end].replace(b"<stream:features>",
                                                b"<stream:features xmlns:stream='http://etherx.jabber.org/streams'>"))


def element(out: bytes, name: str) -> ET.Element:
    """The first top-level SASL2 element ``name`` written."""
    start = out.index(f"<{name} xmlns='{SASL2}'".encode())
    end = out.index(f"</{name}>".encode(), start) + len(f"</{name}>")
    return ET.fromstring(out[start:end])


def failure_condition(out: bytes) -> str:
    el = element(out, "failure")
    (cond,) = [c for c in el if c.tag.startswith(f"{{{SASL}}}")]
    return cond.tag.split("}")[1]


class ScramClient:
    """Just enough RFC 5802 client to talk to the server side."""

    def __init__(self, hash_name: str, user: str = "alice", password: str = "secret") -> None:
        self.h, self.user, self.password = hash_name, user, password
        self.nonce = b64(os.urandom(12))
        self.first_bare = f"n={user},r={self.nonce}"

    def first(self) -> bytes:
        return f"n,,{self.first_bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
        salted = hashlib.pbkdf2_hmac(self.h, self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", self.h).digest()
        without_proof = f"c={b64(b'n,,')},r={attrs['r']}"
        self.auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.new(hashlib.new(self.h, client_key).digest(), self.auth_message, self.h).digest()
        self.server_key = hmac.new(salted, b"Server Key", self.h).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={b64(proof)}".encode()

    def verifier(self) -> bytes:
        return b"v=" + base64.b64encode(hmac.new(self.server_key, self.auth_message, self.h).digest())


# -- the feature -----------------------------------------------------------------------------------


def test_sasl2_is_offered_after_tls_with_bind2_and_the_inline_features() -> None:
    c = new()
    c.receive_data(HEADER)
    assert b"urn:xmpp:sasl:2" not in c.data_to_send()  # not before TLS
    _, out = after_tls()
    auth = features(out).find(f"{{{SASL2}}}authentication")
    assert auth is not None
    assert [m.text for m in auth.findall(f"{{{SASL2}}}mechanism")] == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    inline = auth.find(f"{{{SASL2}}}inline")
    assert inline is not None
    bind = inline.find(f"{{{BIND2}}}bind")
    assert bind is not None
    assert [f.get("var") for f in bind.iter(f"{{{BIND2}}}feature")] == [SM, "urn:xmpp:carbons:2"]
    assert inline.find(f"{{{SM}}}sm") is not None
    # SASL1 unchanged beside it
    assert features(out).find(f"{{{SASL}}}mechanisms") is not None


def test_sasl2_can_be_switched_off() -> None:
    c, out = after_tls(sasl2=False)
    assert b"urn:xmpp:sasl:2" not in out
    events = c.receive_data(authenticate("PLAIN", plain()))
    assert isinstance(events[-1], StreamEnded) and isinstance(events[-1].error, errors.UnsupportedStanzaType)


# -- mechanisms ------------------------------------------------------------------------------------


def test_plain_with_bind2_no_restart_and_pipelined_stanzas_wait() -> None:
    c, _ = after_tls()
    events = c.receive_data(authenticate("PLAIN", plain(), AGENT + BIND)
                            + b"<message to='bob@localhost' type='chat'><body>early</body></message>")
    assert events == [CredentialsNeeded("alice", "sha256")]
    events = c.provide_credentials(CREDS["sha256"])
    assert len(events) == 1 and isinstance(events[0], Sasl2Authenticated)
    auth = events[0]
    assert auth.username == "alice" and auth.token is None
    request = auth.request
    assert request.mechanism == "PLAIN" and request.tag == "phone"
    assert request.user_agent == UserAgent("9f1ad1f2-7c1e-4f0a-b2b4-0c1d2e3f4a5b", "Phone", "Pixel")
    assert request.bind is not None and request.bind.find(f"{{{SM}}}enable") is not None
    assert c.state is State.WAIT_SASL2 and c.username == "alice" and c.stage == "post_auth"
    assert c.data_to_send() == b""  # nothing before <success/>
    c.send_bytes(b"<message from='bob@localhost' to='alice@localhost/phone.1a2b3c4d'><body>hi</body></message>")
    assert c.data_to_send() == b""  # held behind the <success/>
    events = c.sasl2_success(JID, b"<bound xmlns='urn:xmpp:bind:0'><enabled xmlns='urn:xmpp:sm:3'/></bound>")
    assert events[:2] == [Authenticated("alice"), SessionEstablished(JID)]
    assert isinstance(events[2], StanzaIn) and events[2].stanza.from_ == str(JID)  # the pipelined one, now
    out = c.data_to_send()
    assert out.startswith(b"<success xmlns='urn:xmpp:sasl:2'><authorization-identifier>"
                          b"alice@localhost/phone.1a2b3c4d</authorization-identifier><bound")
    assert b"<stream:stream" not in out  # no restart
    feats = features(out)
    assert feats.find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is None and feats.find(f"{{{SM}}}sm") is None
    assert out.index(b"</success>") < out.index(b"<stream:features>") < out.index(b"<body>hi</body>")
    assert c.state is State.ESTABLISHED and c.jid == JID and c.stage == "bound"


@pytest.mark.parametrize("mechanism, hash_name", [("SCRAM-SHA-1", "sha1"), ("SCRAM-SHA-256", "sha256")])
def test_scram_in_sasl2_puts_the_server_signature_in_additional_data(mechanism: str, hash_name: str) -> None:
    c, _ = after_tls()
    client = ScramClient(hash_name)
    assert c.receive_data(authenticate(mechanism, client.first())) == [CredentialsNeeded("alice", hash_name)]
    assert c.provide_credentials(CREDS[hash_name]) == []
    challenge = element(c.data_to_send(), "challenge")
    events = c.receive_data(f"<response xmlns='{SASL2}'>{b64(client.final(base64.b64decode(challenge.text or '')))}"
                            f"</response>".encode())
    assert len(events) == 1 and isinstance(events[0], Sasl2Authenticated)
    assert events[0].request.bind is None
    c.sasl2_success(None)
    out = c.data_to_send()
    success = element(out, "success")
    assert base64.b64decode(success.findtext(f"{{{SASL2}}}additional-data") or "") == client.verifier()
    assert success.findtext(f"{{{SASL2}}}authorization-identifier") == "alice@localhost"  # bare: nothing bound
    # authenticated, no restart: RFC 6120 bind works on the same stream
    assert features(out).find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is not None
    assert c.state is State.NEGOTIATING and c.stage == "post_auth"
    events = c.receive_data(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                            b"<resource>r</resource></bind></iq>")
    assert events == [BindRequested("r")]


def test_plain_without_initial_response_gets_an_empty_challenge() -> None:
    c, _ = after_tls()
    assert c.receive_data(authenticate("PLAIN")) == []
    assert c.data_to_send() == f"<challenge xmlns='{SASL2}'></challenge>".encode()
    assert c.receive_data(f"<response xmlns='{SASL2}'>{b64(plain())}</response>".encode()) == \
        [CredentialsNeeded("alice", "sha256")]


def test_plain_slow_check_is_handed_out_in_sasl2_too() -> None:
    c, _ = after_tls()
    c.receive_data(authenticate("PLAIN", plain(pw="wrong")))
    check = c.credentials_check(CREDS["sha256"])
    assert check is not None and check() is False
    c.provide_credentials(CREDS["sha256"], checked=False)
    assert failure_condition(c.data_to_send()) == "not-authorized"


def test_ht_sha_256_none_asks_for_tokens_and_answers_with_the_responder_hmac() -> None:
    token = "t" * 88
    c, out = after_tls(token_mechanisms=lambda s: ("HT-SHA-256-NONE",))
    proof = hmac.new(token.encode(), b"Initiator", "sha256").digest()
    events = c.receive_data(authenticate("HT-SHA-256-NONE", b"alice\0" + proof, AGENT))
    assert len(events) == 1 and isinstance(events[0], TokenNeeded) and events[0].username == "alice"
    events = c.provide_token([TokenKey("current", b"wrong" * 7), TokenKey("new", token_key(token))])
    assert len(events) == 1 and isinstance(events[0], Sasl2Authenticated) and events[0].token == "new"
    c.sasl2_success(None)
    data = element(c.data_to_send(), "success").findtext(f"{{{SASL2}}}additional-data")
    assert base64.b64decode(data or "") == hmac.new(token.encode(), b"Responder", "sha256").digest()


def test_ht_with_no_matching_token_fails_and_is_never_offered_in_sasl1() -> None:
    c, out = after_tls(token_mechanisms=lambda s: ("HT-SHA-256-NONE",))
    assert b"HT-SHA-256" not in out  # the module lists it (in <fast/>), the core does not
    c.receive_data(authenticate("HT-SHA-256-NONE", b"alice\0" + bytes(32)))
    c.provide_token([])
    assert failure_condition(c.data_to_send()) == "not-authorized"
    c.receive_data(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='HT-SHA-256-NONE'>"
                   + b64(b"alice\0" + bytes(32)).encode() + b"</auth>")
    assert b"<invalid-mechanism/>" in c.data_to_send()


def test_ht_is_refused_when_no_module_offers_tokens() -> None:
    c, _ = after_tls()
    c.receive_data(authenticate("HT-SHA-256-NONE", b"alice\0" + bytes(32)))
    assert failure_condition(c.data_to_send()) == "invalid-mechanism"


# -- failures (XEP-0388 §5.5.2): the stream stays, the client may try again ---------------------------


@pytest.mark.parametrize("data, condition", [
    (authenticate("DIGEST-MD5", b"x"), "invalid-mechanism"),
    (authenticate(""), "invalid-mechanism"),
    (f"<authenticate xmlns='{SASL2}'/>".encode(), "invalid-mechanism"),
    (authenticate("PLAIN", plain(), attrs=" upgrade='SCRAM-SHA-256'"), "invalid-mechanism"),  # no tasks offered
    (f"<authenticate xmlns='{SASL2}' mechanism='PLAIN'><initial-response>!!!</initial-response>"
     f"</authenticate>".encode(), "incorrect-encoding"),
    (authenticate("PLAIN", plain(), f"<initial-response>{b64(plain())}</initial-response>"), "malformed-request"),
    (authenticate("PLAIN", plain(), f"<bind xmlns='{BIND2}'/><bind xmlns='{BIND2}'/>"), "malformed-request"),
    (authenticate("PLAIN", plain(), f"<user-agent id='{'x' * 300}'/>"), "malformed-request"),
    (authenticate("PLAIN", b"no-nul-here"), "malformed-request"),
    (f"<abort xmlns='{SASL2}'/>".encode(), "aborted"),
    (f"<next xmlns='{SASL2}' task='TOTP'/>".encode(), "malformed-request"),  # <continue/> never sent
    (f"<response xmlns='{SASL2}'>AAAA</response>".encode(), "malformed-request"),  # no exchange
])
def test_failures_leave_the_stream_open(data: bytes, condition: str) -> None:
    c, _ = after_tls()
    assert c.receive_data(data) == []
    out = c.data_to_send()
    assert failure_condition(out) == condition, out
    assert c.state is State.NEGOTIATING and c.username is None
    # a second attempt works
    assert c.receive_data(authenticate("PLAIN", plain())) == [CredentialsNeeded("alice", "sha256")]


def test_wrong_password_then_right_one() -> None:
    c, _ = after_tls()
    c.receive_data(authenticate("PLAIN", plain(pw="nope")))
    c.provide_credentials(CREDS["sha256"])
    out = c.data_to_send()
    assert out == (f"<failure xmlns='{SASL2}'><not-authorized xmlns='{SASL}'/></failure>").encode()
    c.receive_data(authenticate("PLAIN", plain()))
    events = c.provide_credentials(CREDS["sha256"])
    assert isinstance(events[0], Sasl2Authenticated)


def test_abort_during_an_exchange() -> None:
    c, _ = after_tls()
    c.receive_data(authenticate("SCRAM-SHA-256", ScramClient("sha256").first()))
    c.provide_credentials(CREDS["sha256"])
    c.data_to_send()
    c.receive_data(f"<abort xmlns='{SASL2}'/>".encode())
    assert failure_condition(c.data_to_send()) == "aborted"
    assert c.state is State.NEGOTIATING


def test_three_failures_close_the_stream() -> None:
    c, _ = after_tls()
    events: list[Any] = []
    for _ in range(3):
        events = c.receive_data(authenticate("NOPE", b""))
    assert isinstance(events[-1], StreamEnded) and isinstance(events[-1].error, errors.PolicyViolation)


@pytest.mark.parametrize("data", [
    b"<message to='bob@localhost'><body>x</body></message>",
    b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'/>",
    authenticate("PLAIN", plain()),
    b"<enable xmlns='urn:xmpp:sm:3'/>",
])
def test_anything_but_response_or_abort_during_the_exchange_ends_the_stream(data: bytes) -> None:
    c, _ = after_tls()
    c.receive_data(authenticate("SCRAM-SHA-256", ScramClient("sha256").first()))
    c.provide_credentials(CREDS["sha256"])
    c.data_to_send()
    events = c.receive_data(data)
    assert isinstance(events[-1], StreamEnded) and isinstance(events[-1].error, errors.PolicyViolation)


def test_authenticate_after_success_is_a_stream_error() -> None:
    c, _ = after_tls()
    c.receive_data(authenticate("PLAIN", plain()))
    c.provide_credentials(CREDS["sha256"])
    c.sasl2_success(None)
    c.data_to_send()
    events = c.receive_data(authenticate("PLAIN", plain()))
    assert isinstance(events[-1], StreamEnded) and isinstance(events[-1].error, errors.PolicyViolation)


def test_sasl1_success_then_sasl2_is_a_stream_error() -> None:
    c, _ = after_tls()
    c.receive_data(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + b64(plain()).encode()
                   + b"</auth>")
    c.provide_credentials(CREDS["sha256"])
    c.receive_data(HEADER)
    out = c.data_to_send()
    assert b"urn:xmpp:sasl:2" not in out  # post-auth features: no SASL2
    events = c.receive_data(authenticate("PLAIN", plain()))
    assert isinstance(events[-1], StreamEnded)


def test_sasl2_before_tls_needs_encryption() -> None:
    c = new()
    c.receive_data(HEADER)
    c.data_to_send()
    c.receive_data(authenticate("PLAIN", plain()))
    assert failure_condition(c.data_to_send()) == "encryption-required"


def test_refused_after_the_mechanism_accepted() -> None:
    """A module refuses (a replayed FAST counter): <failure/>, not authenticated, nothing held kept."""
    c, _ = after_tls()
    c.receive_data(authenticate("PLAIN", plain(), AGENT))
    c.provide_credentials(CREDS["sha256"])
    c.send_bytes(b"<message/>")
    events = c.sasl2_failed(SaslFailure("not-authorized", "replayed"))
    assert events == [AuthFailed("not-authorized")]  # counted against the address
    out = c.data_to_send()
    assert out == (f"<failure xmlns='{SASL2}'><not-authorized xmlns='{SASL}'/><text>replayed</text></failure>"
                   .encode())
    assert c.state is State.NEGOTIATING and c.username is None and c.stage == "pre_auth"


def test_adapter_calls_out_of_state_are_refused() -> None:
    c, _ = after_tls()
    with pytest.raises(RuntimeError):
        c.sasl2_success(None)
    with pytest.raises(RuntimeError):
        c.provide_token([])


# -- inline handlers of the modules ------------------------------------------------------------------


class Conn(FakeSession):
    """A c2s connection as modules see it during SASL2."""

    def __init__(self, node: FakeNode, user: str) -> None:
        super().__init__(node.services)
        self.authenticated = Jid.parse(f"{user}@{DOMAIN}")
        self.raw: list[bytes] = []
        self.resumed_with: tuple[Any, bytes] | None = None

    def send_raw(self, data: bytes) -> None:
        self.raw.append(data)

    def resumed(self, record: Any, data: bytes) -> None:
        self.record = record
        self.resumed_with = (record, data)


def request(inner: str) -> Sasl2Request:
    el = ET.fromstring(f"<authenticate xmlns='{SASL2}' mechanism='PLAIN'>{inner}</authenticate>")
    bind = el.find(f"{{{BIND2}}}bind")
    return Sasl2Request("PLAIN", None, UserAgent("ua"), bind, None,
                        tuple(c for c in el if c.tag != f"{{{BIND2}}}bind"))


def bound_conn(node: FakeNode, full: str) -> Conn:
    """A Conn bound as ``full`` (what the session manager does at a Bind 2 bind)."""
    conn = Conn(node, Jid.parse(full).local or "")
    jid = node.sessions.bind(conn, Jid.parse(full).local or "", DOMAIN, Jid.parse(full).resource)
    assert str(jid) == full
    return conn


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as n:
        yield n


async def test_modules_list_their_bind2_features_and_sasl2_inline_elements(node: FakeNode) -> None:
    for cls in (StreamManagement, Csi, Carbons):
        await node.start(cls)
    assert node.hooks.fold(Hook.BIND2_FEATURES, [], None) == [SM, "urn:xmpp:csi:0", "urn:xmpp:carbons:2"]
    assert node.hooks.fold(Hook.SASL2_INLINE, [], None) == [b"<sm xmlns='urn:xmpp:sm:3'/>"]


async def test_bind2_inline_enables_sm_carbons_and_csi(node: FakeNode) -> None:
    for cls in (StreamManagement, Csi, Carbons):
        await node.start(cls)
    conn = bound_conn(node, f"alice@{DOMAIN}/phone")
    bind = ET.fromstring(f"<bind xmlns='{BIND2}'><tag>phone</tag><enable xmlns='{SM}' resume='true'/>"
                         f"<enable xmlns='urn:xmpp:carbons:2'/><inactive xmlns='urn:xmpp:csi:0'/></bind>")
    children = await node.hooks.fold_async(Hook.BIND2_INLINE, [], conn, bind)
    (enabled,) = children
    el = ET.fromstring(enabled)
    assert el.tag == f"{{{SM}}}enabled" and el.get("resume") == "true" and el.get("id")
    record = node.table.lookup(Jid.parse(f"alice@{DOMAIN}/phone"))
    assert record is not None
    assert record.flags == {"sm": "on", "carbons": "on", "csi": "inactive"}
    assert conn.ext["sm"].resume and conn.ext["csi"].inactive
    # stream management was enabled inline: a later <enable/> is refused
    node.hooks.first(Hook.C2S_ELEMENT, conn, Stanza(ET.fromstring(f"<enable xmlns='{SM}'/>")))
    assert b"unexpected-request" in conn.raw[-1]


async def test_bind2_without_inline_requests_enables_nothing(node: FakeNode) -> None:
    for cls in (StreamManagement, Csi, Carbons):
        await node.start(cls)
    conn = bound_conn(node, f"alice@{DOMAIN}/phone")
    bind = ET.fromstring(f"<bind xmlns='{BIND2}'><tag>phone</tag><active xmlns='urn:xmpp:csi:0'/></bind>")
    assert await node.hooks.fold_async(Hook.BIND2_INLINE, [], conn, bind) == []
    record = node.table.lookup(Jid.parse(f"alice@{DOMAIN}/phone"))
    assert record is not None and record.flags == {}


async def test_inline_resume_takes_the_detached_session_over(node: FakeNode) -> None:
    await node.start(StreamManagement)
    old = bound_conn(node, f"alice@{DOMAIN}/phone")
    (enabled,) = await node.hooks.fold_async(Hook.BIND2_INLINE, [], old,
                                             ET.fromstring(f"<bind xmlns='{BIND2}'><enable xmlns='{SM}' "
                                                           f"resume='true'/></bind>"))
    previd = ET.fromstring(enabled).get("id")
    node.router.deliver(old.record, Stanza(ET.fromstring("<message xmlns='jabber:client' type='chat' "
                                                         f"to='alice@{DOMAIN}/phone'><body>1</body></message>")))
    # what the c2s adapter does as it writes a stanza: stream management counts it
    for s in old.take():
        node.hooks.run(Hook.USER_RECEIVE_PACKET, old, s, s.to_bytes())
    await node.sessions.closed(old, "lost")  # detached, resumable
    new = Conn(node, "alice")
    auth = Sasl2Authenticated("alice", request(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>"
                                               f"<bind xmlns='{BIND2}'><tag>phone</tag></bind>"))
    children = await node.hooks.fold_async(Hook.SASL2_AUTHENTICATED, [], new, auth)
    (resumed,) = children
    el = ET.fromstring(resumed)
    assert el.tag == f"{{{SM}}}resumed" and el.get("previd") == previd and el.get("h") == "0"
    assert new.resumed_with is not None
    record, resend = new.resumed_with
    assert str(record.jid) == f"alice@{DOMAIN}/phone"
    assert b"<body>1</body>" in resend and b"<resumed" not in resend  # only what is resent
    assert node.local.get(record.sid) is new


async def test_inline_resume_of_an_unknown_session_fails_inside_success(node: FakeNode) -> None:
    await node.start(StreamManagement)
    new = Conn(node, "alice")
    auth = Sasl2Authenticated("alice", request(f"<resume xmlns='{SM}' previd='bm9wZQ' h='0'/>"))
    (failed,) = await node.hooks.fold_async(Hook.SASL2_AUTHENTICATED, [], new, auth)
    assert ET.fromstring(failed).tag == f"{{{SM}}}failed" and b"item-not-found" in failed
    assert new.resumed_with is None and new.raw == []  # nothing written outside the <success/>


async def test_no_resume_element_no_change(node: FakeNode) -> None:
    await node.start(StreamManagement)
    auth = Sasl2Authenticated("alice", request(""))
    assert await node.hooks.fold_async(Hook.SASL2_AUTHENTICATED, [], Conn(node, "alice"), auth) == []
