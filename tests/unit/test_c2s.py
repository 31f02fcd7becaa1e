"""The c2s state machine as scripted XML conversations: no sockets, no sleeps."""

import base64

import pytest

from cluster_node.xmpp import errors
from cluster_node.xmpp.c2s import (
    Authenticated,
    BindRequested,
    C2SConfig,
    C2SStream,
    CredentialsNeeded,
    SessionEstablished,
    StanzaIn,
    StartTls,
    State,
    StreamEnded,
)
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.sasl.scram import make_credentials

HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams'>")
CREDS = make_credentials("secret")


def plain(user: str = "alice", pw: str = "secret") -> bytes:
    token = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
    return f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode()


def new(**kw) -> C2SStream:
    return C2SStream(C2SConfig(domains=["localhost"], **kw))


def feed(c: C2SStream, data: bytes, *, bytewise: bool = False):
    if not bytewise:
        return c.receive_data(data)
    events = []
    for i in range(len(data)):
        events += c.receive_data(data[i:i + 1])
    return events


def to_tls(c: C2SStream) -> None:
    feed(c, HEADER)
    out = c.data_to_send()
    assert b"<starttls" in out and b"<required/>" in out and b"<mechanisms" not in out
    assert feed(c, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>") == [StartTls()]
    assert b"<proceed" in c.data_to_send()
    c.tls_started()


def login(c: C2SStream, *, bytewise: bool = False) -> None:
    to_tls(c)
    feed(c, HEADER, bytewise=bytewise)
    out = c.data_to_send()
    assert b"SCRAM-SHA-256" in out and b"PLAIN" in out and b"<starttls" not in out
    events = feed(c, plain(), bytewise=bytewise)
    assert events == [CredentialsNeeded("alice", "sha256")]
    assert c.provide_credentials(CREDS["sha256"]) == [Authenticated("alice")]
    assert b"<success" in c.data_to_send()
    feed(c, HEADER, bytewise=bytewise)
    assert b"urn:ietf:params:xml:ns:xmpp-bind" in c.data_to_send()
    events = feed(c, b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                     b"<resource>phone</resource></bind></iq>", bytewise=bytewise)
    assert events == [BindRequested("phone")]
    jid = Jid.parse("alice@localhost/phone")
    assert c.bind_done(jid) == [SessionEstablished(jid)]
    assert b"<jid>alice@localhost/phone</jid>" in c.data_to_send()


@pytest.mark.parametrize("bytewise", [False, True])
def test_full_login_and_from_stamping(bytewise):
    c = new()
    login(c, bytewise=bytewise)
    events = feed(c, b"<message to='bob@localhost' type='chat'><body>hi &amp; bye</body></message>",
                  bytewise=bytewise)
    assert len(events) == 1 and isinstance(events[0], StanzaIn)
    stanza = events[0].stanza
    assert stanza.from_ == "alice@localhost/phone"
    assert b"<body>hi &amp; bye</body>" in stanza.to_bytes()


def test_whitespace_keepalive_is_ignored():
    c = new()
    login(c)
    assert feed(c, b"   \n ") == []
    assert c.state is State.ESTABLISHED


def test_spoofed_from_is_a_stream_error():
    c = new()
    login(c)
    events = feed(c, b"<message from='bob@localhost/x' to='alice@localhost'><body>x</body></message>")
    assert isinstance(events[-1], StreamEnded) and isinstance(events[-1].error, errors.InvalidFrom)
    assert b"<invalid-from" in c.data_to_send()


def test_bare_from_of_own_account_is_accepted():
    c = new()
    login(c)
    events = feed(c, b"<presence from='alice@localhost'/>")
    assert isinstance(events[0], StanzaIn) and events[0].stanza.from_ == "alice@localhost/phone"


def test_stanza_before_auth_is_not_authorized():
    c = new()
    to_tls(c)
    feed(c, HEADER)
    c.data_to_send()
    events = feed(c, b"<message to='bob@localhost'><body>x</body></message>")
    assert isinstance(events[-1].error, errors.NotAuthorized)
    assert b"<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in c.data_to_send()


def test_auth_before_tls_gets_encryption_required():
    c = new()
    feed(c, HEADER)
    c.data_to_send()
    assert feed(c, plain()) == []
    assert b"<encryption-required/>" in c.data_to_send()
    assert c.state is State.NEGOTIATING


def test_plain_not_offered_without_tls_when_tls_optional():
    c = new(tls_required=False)
    feed(c, HEADER)
    out = c.data_to_send()
    assert b"SCRAM-SHA-1" in out and b">PLAIN<" not in out
    feed(c, plain())
    assert b"<encryption-required/>" in c.data_to_send()


def test_data_pipelined_after_starttls_is_rejected():
    c = new()
    feed(c, HEADER)
    events = feed(c, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message/>")
    assert isinstance(events[-1], StreamEnded) and isinstance(events[-1].error, errors.PolicyViolation)
    assert b"<proceed" not in c.data_to_send()


def test_data_over_tls_before_tls_started_is_kept():
    c = new()
    feed(c, HEADER)
    assert feed(c, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>") == [StartTls()]
    assert feed(c, HEADER) == []  # the TLS layer delivered it before the adapter resumed us
    c.data_to_send()
    c.tls_started()
    assert b"<mechanisms" in c.data_to_send()


def test_wrong_password_and_too_many_failures():
    c = new()
    to_tls(c)
    feed(c, HEADER)
    c.data_to_send()
    for attempt in range(3):
        feed(c, plain(pw="wrong"))
        events = c.provide_credentials(CREDS["sha256"])
        assert b"<not-authorized/>" in c.data_to_send() or attempt == 2
    assert isinstance(events[-1], StreamEnded)


def test_unknown_host_gets_header_then_error():
    c = new()
    events = feed(c, HEADER.replace(b"to='localhost'", b"to='elsewhere.example'"))
    out = c.data_to_send()
    assert out.startswith(b"<?xml version='1.0'?><stream:stream")
    assert b"<host-unknown" in out and out.endswith(b"</stream:stream>")
    assert isinstance(events[-1].error, errors.HostUnknown)


def test_parser_errors_close_the_stream_with_their_condition():
    c = new()
    feed(c, HEADER)
    c.data_to_send()
    events = feed(c, b"<!-- hi -->")
    assert isinstance(events[-1].error, errors.RestrictedXml)
    assert b"<restricted-xml" in c.data_to_send()


def test_clean_close():
    c = new()
    login(c)
    events = feed(c, b"</stream:stream>")
    assert events == [StreamEnded(None, "closed")]
    assert c.data_to_send() == b"</stream:stream>"


@pytest.mark.parametrize("password, ok", [("secret", True), ("wrong", False)])
def test_plain_check_runs_outside_the_core_and_its_answer_decides(password: str, ok: bool) -> None:
    """The adapter runs PLAIN's PBKDF2 on a thread: the core hands it out and takes the answer back."""
    c = new()
    to_tls(c)
    feed(c, HEADER)
    c.data_to_send()
    assert feed(c, plain(pw=password)) == [CredentialsNeeded("alice", "sha256")]
    check = c.credentials_check(CREDS["sha256"])
    assert check is not None and check() is ok
    events = c.provide_credentials(CREDS["sha256"], checked=check())
    assert (events == [Authenticated("alice")]) is ok
    assert (b"<success" if ok else b"<not-authorized") in c.data_to_send()


def test_scram_has_no_slow_check_to_hand_out() -> None:
    c = new()
    to_tls(c)
    feed(c, HEADER)
    c.data_to_send()
    nonce = base64.b64encode(b"n,,n=alice,r=abc").decode()
    feed(c, f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{nonce}</auth>".encode())
    assert c.credentials_check(CREDS["sha256"]) is None


def test_legacy_session_after_bind_gets_a_result() -> None:
    """RFC 3921 clients (and Tsung) send <session/> after bind: the advertised optional no-op."""
    c = new()
    login(c)
    c.data_to_send()
    events = feed(c, b"<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
    assert events == []
    assert c.data_to_send() == b"<iq type='result' id=\"s1\"/>"


def test_sasl1_is_unchanged_beside_sasl2() -> None:
    """SASL2 is offered next to RFC 6120's <mechanisms/>; an <auth/> still ends in a stream restart."""
    c = new()
    to_tls(c)
    feed(c, HEADER)
    out = c.data_to_send()
    assert out.index(b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>") < out.index(
        b"<authentication xmlns='urn:xmpp:sasl:2'>")
    feed(c, plain())
    c.provide_credentials(CREDS["sha256"])
    assert c.data_to_send() == b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'></success>"
    assert c.state is State.WAIT_HEADER and c.stage == "post_auth"


def test_starttls_is_not_offered_after_authentication() -> None:
    """With TLS optional, a client that authenticated in clear is not offered STARTTLS any more
    (it would be refused: RFC 6120 §5.3.1 negotiates TLS before SASL)."""
    import hashlib
    import hmac

    c = new(tls_required=False)
    feed(c, HEADER)
    assert b"<starttls" in c.data_to_send()
    feed(c, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>"
            + base64.b64encode(b"n,,n=alice,r=abc") + b"</auth>")
    c.provide_credentials(CREDS["sha256"])
    out = c.data_to_send()
    server_first = base64.b64decode(out[out.index(b">") + 1:out.index(b"</challenge>")]).decode()
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", b"secret", base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    without_proof = f"c=biws,r={attrs['r']}"
    signature = hmac.new(hashlib.sha256(client_key).digest(), f"n=alice,r=abc,{server_first},{without_proof}".encode(),
                         "sha256").digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
    final = base64.b64encode(f"{without_proof},p={proof}".encode()).decode()
    assert feed(c, f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{final}</response>".encode()) \
        == [Authenticated("alice")]
    c.data_to_send()
    feed(c, HEADER)
    out = c.data_to_send()
    assert b"urn:ietf:params:xml:ns:xmpp-bind" in out and b"<starttls" not in out
