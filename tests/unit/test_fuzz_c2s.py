"""Property-based fuzzing of the client stream core (cluster_node/xmpp/c2s.py
``C2SStream.receive_data`` on the shared cluster_node/xmpp/stream.py machinery).

A client is a random script: a prefix of a real login (STARTTLS, SASL or SASL2, bind) followed by
random moves — stanzas with honest or forged senders, SASL elements in the wrong place, second
headers, garbage bytes, random elements from the XML fuzzer — each move fed in random pieces.  An
adapter answers the core's events the way the node's does (TLS up at once, the account looked
up, the resource bound).

Budget and reproducibility: the ``meridian`` hypothesis profile of tests/conftest.py.
"""

from __future__ import annotations

import base64
import itertools
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hypothesis import event, example, given, settings, strategies as st

from cluster_node.xmpp import errors, ns
from cluster_node.xmpp.c2s import (
    Authenticated,
    AuthFailed,
    BindRequested,
    C2SConfig,
    C2SEvent,
    C2SStream,
    CredentialsNeeded,
    ElementIn,
    RegistrationIq,
    Sasl2Authenticated,
    SessionEstablished,
    StanzaIn,
    StartTls,
    State,
    StreamEnded,
    TokenNeeded,
)
from cluster_node.xmpp.errors import StreamError
from cluster_node.xmpp.jid import InvalidJid, Jid
from cluster_node.xmpp.parser import StreamParser
from cluster_node.xmpp.sasl.ht import TokenKey, initiator
from cluster_node.xmpp.sasl.scram import make_credentials
from cluster_node.xmpp.stanza import escape_text
from tests.unit.test_fuzz_xml import cuts, pieces, stanzas, write_stanza

CREDS = make_credentials("secret", iterations=16)
TOKEN_KEY = b"k" * 32
HT = "HT-SHA-256-NONE"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def header(to: str = "localhost", version: str = "1.0", content: str = ns.CLIENT, root: str = "stream:stream",
           extra: str = "") -> bytes:
    return (f"<?xml version='1.0'?><{root} to='{to}' version='{version}' xmlns='{content}' "
            f"xmlns:stream='{ns.STREAM}'{extra}>").encode()


HEADER = header()
STARTTLS = f"<starttls xmlns='{ns.TLS}'/>".encode()
PLAIN_OK = b64(b"\0alice\0secret")


def auth(mechanism: str, payload: str = PLAIN_OK) -> bytes:
    return f"<auth xmlns='{ns.SASL}' mechanism='{mechanism}'>{payload}</auth>".encode()


def authenticate(mechanism: str, payload: str | None = PLAIN_OK, inner: str = "") -> bytes:
    initial = f"<initial-response>{payload}</initial-response>" if payload is not None else ""
    return f"<authenticate xmlns='{ns.SASL2}' mechanism='{mechanism}'>{initial}{inner}</authenticate>".encode()


def bind(resource: str | None) -> bytes:
    res = f"<resource>{escape_text(resource)}</resource>" if resource is not None else ""
    return f"<iq type='set' id='b1'><bind xmlns='{ns.BIND}'>{res}</bind></iq>".encode()


BIND2 = f"<user-agent id='ua'><software>fuzz</software></user-agent><bind xmlns='{ns.BIND2}'><tag>t</tag></bind>"
LOGINS = {
    # RFC 6120: STARTTLS, SASL PLAIN, restart, bind.
    "sasl": [HEADER, STARTTLS, HEADER, auth("PLAIN"), HEADER, bind("phone")],
    # XEP-0388 SASL2 with XEP-0386 Bind 2 inline: no restart, no bind.
    "sasl2": [HEADER, STARTTLS, HEADER, authenticate("PLAIN", inner=BIND2)],
    # XEP-0484 token (HT-SHA-256-NONE) in SASL2, then RFC 6120 bind on the same stream.
    "token": [HEADER, STARTTLS, HEADER, authenticate(HT, b64(b"alice\0" + initiator(TOKEN_KEY))), bind(None)],
}

resources = st.none() | st.text(st.sampled_from("ab /@é\u200b\t<&"), max_size=6)
senders = st.sampled_from([None, "alice@localhost/phone", "alice@localhost", "alice@localhost/other",
                           "bob@localhost/x", "@@", "localhost", "ALICE@LOCALHOST/phone", "alice@localhost/"])
b64ish = st.sampled_from(["", "=", PLAIN_OK, b64(b"\0bob\0pw"), b64(b"x"), "!!", "QQ", b64(b"n,,n=alice,r=abc"),
                          b64(b"\0alice\0wrong"), b64(b"alice@localhost\0alice\0secret")])
mechanisms = st.sampled_from(["PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256", HT, "X-UNKNOWN", ""])


def message(sender: str | None) -> bytes:
    attr = f" from='{sender}'" if sender is not None else ""
    return f"<message to='bob@localhost' id='m1'{attr}><body>hi</body></message>".encode()


moves = st.one_of(
    st.sampled_from([
        HEADER, header(to="elsewhere"), header(version="2.0"), header(content="jabber:server"),
        header(root="stream:wrong"), header(extra=" xml:lang='fr'"), STARTTLS,
        f"<response xmlns='{ns.SASL}'>{b64(b'x')}</response>".encode(), f"<abort xmlns='{ns.SASL}'/>".encode(),
        f"<success xmlns='{ns.SASL}'/>".encode(), f"<response xmlns='{ns.SASL2}'>QQ==</response>".encode(),
        f"<abort xmlns='{ns.SASL2}'/>".encode(), f"<next xmlns='{ns.SASL2}' task='x'/>".encode(),
        f"<authenticate xmlns='{ns.SASL2}' mechanism='PLAIN' upgrade='x'/>".encode(),
        f"<iq type='set' id='s'><session xmlns='{ns.SESSION}'/></iq>".encode(),
        f"<iq type='set' id='r'><query xmlns='{ns.REGISTER}'><username>x</username></query></iq>".encode(),
        b"<presence/>", b"<iq type='get' id='q'/>", b"<r xmlns='urn:xmpp:sm:3'/>", b"<foo/>",
        b"<stream:features/>", b"</stream:stream>", b" ", b"\n",
    ]),
    st.builds(auth, mechanisms, b64ish),
    st.builds(authenticate, mechanisms, st.none() | b64ish, st.sampled_from(["", BIND2, BIND2 + BIND2])),
    st.builds(bind, resources),
    st.builds(message, senders),
    st.binary(max_size=16),
    st.tuples(stanzas, st.randoms(use_true_random=True)).map(lambda t: write_stanza(*t)),
)


configs = st.fixed_dictionaries({
    "tls_required": st.booleans(), "allow_plain": st.booleans(), "registration": st.booleans(),
    "sasl2": st.booleans(), "max_stanza_size": st.sampled_from([512, 262_144]),
    "tokens": st.booleans(), "direct_tls": st.booleans(),
})
NEEDS = {"sasl": {"allow_plain": True, "direct_tls": False}, "sasl2": {"allow_plain": True, "sasl2": True,
                                                                       "direct_tls": False},
         "token": {"sasl2": True, "tokens": True, "direct_tls": False}}


@st.composite
def scripts(draw: st.DrawFn) -> tuple[list[bytes], dict[str, Any]]:
    """(a prefix of one of the logins then random moves, the server's configuration): half the
    time the whole login under a configuration that lets it through, so that the established
    stream is fuzzed as much as the unauthenticated one."""
    name = draw(st.sampled_from(sorted(LOGINS)))
    login, config = LOGINS[name], draw(configs)
    if draw(st.booleans()):
        config |= NEEDS[name]
        return login + draw(st.lists(st.builds(message, senders) | moves, min_size=1, max_size=6)), config
    return login[:draw(st.integers(0, len(login)))] + draw(st.lists(moves, max_size=6)), config


# -- the adapter ---------------------------------------------------------------------------------


@dataclass
class Adapter:
    """Answers the core's events the way the node's adapter does, and records what happened."""

    stream: C2SStream
    events: list[C2SEvent] = field(default_factory=list)
    output: bytearray = field(default_factory=bytearray)
    jid: Jid | None = None

    def handle(self, first: list[C2SEvent]) -> None:
        c = self.stream
        queue: deque[C2SEvent] = deque(first)
        while queue:
            ev = queue.popleft()
            self.events.append(ev)
            more: list[C2SEvent] = []
            if isinstance(ev, StartTls):
                more = c.tls_started()
            elif isinstance(ev, CredentialsNeeded):
                creds = CREDS[ev.hash_name] if ev.username == "alice" else None
                check = c.credentials_check(creds)
                more = c.provide_credentials(creds, checked=check() if check is not None else None)
            elif isinstance(ev, TokenNeeded):
                more = c.provide_token([TokenKey("t1", TOKEN_KEY)] if ev.username == "alice" else [])
            elif isinstance(ev, Sasl2Authenticated):
                jid = None
                if ev.request.bind is not None:
                    jid = Jid(ev.username, c.domain or "localhost", f"fuzz.{ev.request.tag or 'x'}")
                more = c.sasl2_success(jid)
            elif isinstance(ev, BindRequested):
                assert c.username is not None
                try:
                    jid = Jid(c.username, c.domain or "localhost", None).with_resource(ev.resource or "r")
                except InvalidJid:
                    more = c.bind_failed(errors.BadRequest("bad resource"))
                else:
                    more = c.bind_done(jid)
            elif isinstance(ev, SessionEstablished):
                self.jid = ev.jid
            elif isinstance(ev, ElementIn) and ev.stage == "post_auth":
                more = c.element_done()
            queue.extend(more)
            self.output += c.data_to_send()
        self.output += c.data_to_send()


def run(script: list[bytes], config: dict[str, Any], cut: list[list[int]] | None) -> Adapter:
    """Play ``script`` into a fresh stream, each move in the given pieces (None: whole)."""
    counter = itertools.count(1)
    c = C2SStream(C2SConfig(
        domains=["localhost"], tls_required=config["tls_required"], allow_plain=config["allow_plain"],
        registration=config["registration"], sasl2=config["sasl2"], max_stanza_size=config["max_stanza_size"],
        sasl_secret=b"s" * 32, new_id=lambda: f"id{next(counter)}",
        token_mechanisms=(lambda s: (HT,)) if config["tokens"] else None,
    ), direct_tls=config["direct_tls"])
    adapter = Adapter(c)
    for i, move in enumerate(script):
        for piece in pieces(move, cut[i] if cut is not None else []):
            if not piece:
                continue  # b"" means EOF
            adapter.handle(c.receive_data(piece))
    return adapter


def summary(ev: C2SEvent) -> tuple[Any, ...]:
    """An event as comparable data (elements compare by their bytes)."""
    if isinstance(ev, StanzaIn | RegistrationIq):
        return type(ev).__name__, ev.stanza.to_bytes()
    if isinstance(ev, ElementIn):
        return type(ev).__name__, ev.element.to_bytes(), ev.stage
    if isinstance(ev, Sasl2Authenticated):
        return type(ev).__name__, ev.username, ev.token, ev.request.tag
    if isinstance(ev, TokenNeeded):
        return type(ev).__name__, ev.username
    if isinstance(ev, StreamEnded):
        return type(ev).__name__, ev.error.condition if ev.error else None, ev.reason
    return (repr(ev),)


def error_condition(adapter: Adapter) -> str | None:
    """The condition of the stream error that ended the stream, if one did."""
    return next((ev.error.condition for ev in adapter.events if isinstance(ev, StreamEnded) and ev.error), None)


def output_documents(output: bytes) -> list[bytes]:
    """What the server wrote, one XML document per stream header (a restart opens a new one)."""
    decl = b"<?xml version='1.0'?>"
    return [decl + part for part in output.split(decl) if part] if output.startswith(decl) else [output]


# -- properties ----------------------------------------------------------------------------------


@settings(max_examples=3 * settings().max_examples)  # cheap (a few ms each) and the widest property here
@given(scripts(), st.data())
@example(([HEADER, STARTTLS, HEADER, authenticate("PLAIN", inner=BIND2), message("alice@localhost/other")],
          {"tls_required": True, "allow_plain": True, "registration": False, "sasl2": True,
           "max_stanza_size": 262_144, "tokens": False, "direct_tls": False}), None)
def test_any_client_gets_events_and_well_formed_output(script_and_config: tuple[list[bytes], dict[str, Any]],
                                                       data: st.DataObject | None) -> None:
    """Whatever a client sends, however it is cut: receive_data never raises; the stream ends at
    most once and stays silent after; stanzas flow only after a session is established, each
    stamped with the session's full JID; everything the server writes is well-formed XML whose
    stream error, if any, comes last; and cutting the input differently changes nothing."""
    script, config = script_and_config
    cut = [data.draw(cuts(move)) for move in script] if data is not None else None
    adapter = run(script, config, cut)
    c = adapter.stream
    event(f"final state: {c.state.name}")  # what the fuzzer reached (--hypothesis-show-statistics)
    event(f"stanzas routed: {min(sum(isinstance(ev, StanzaIn) for ev in adapter.events), 2)}")

    ended = [ev for ev in adapter.events if isinstance(ev, StreamEnded)]
    assert len(ended) <= 1
    if ended:
        assert adapter.events[-1] is ended[0] and c.state is State.CLOSED
        assert c.receive_data(b"<presence/>") == [] and c.data_to_send() == b""
    established = False
    for ev in adapter.events:
        if isinstance(ev, SessionEstablished):
            established = True
        if isinstance(ev, StanzaIn):
            assert established and adapter.jid is not None
            assert ev.stanza.from_ == str(adapter.jid)
            assert ev.stanza.name in ("message", "presence", "iq") and ev.stanza.namespace == ns.CLIENT
        if isinstance(ev, Authenticated | AuthFailed):
            assert not established

    for doc in output_documents(bytes(adapter.output)):
        try:
            StreamParser(max_stanza_size=1 << 20).feed(doc)
        except StreamError as e:
            raise AssertionError(f"the server wrote malformed XML ({e.condition}): {doc!r}") from None
    if ended and ended[0].error is not None:
        assert adapter.output.endswith(b"</stream:error></stream:stream>")
        assert ended[0].error.condition.encode() in adapter.output

    # Cut differently, a stream without errors goes exactly the same way.  (A piece holding an
    # error is dropped whole, so what came before the error in it depends on the cut; and the
    # size budget is checked per piece, so a stanza near it passes whole but not cut small.)
    whole = run(script, config, None)
    errors_seen = [error_condition(a) for a in (adapter, whole)]
    if errors_seen == [None, None]:
        assert [summary(ev) for ev in whole.events] == [summary(ev) for ev in adapter.events]
    elif None in errors_seen:
        assert "policy-violation" in errors_seen


@given(st.lists(moves, min_size=1, max_size=8), st.booleans())
def test_bytes_before_the_header_only_end_the_stream(script: list[bytes], direct_tls: bool) -> None:
    """A client that never sends a proper header gets at most a stream error, never an exception,
    and nothing of what it sent is treated as a stanza."""
    config = {"tls_required": True, "allow_plain": True, "registration": True, "sasl2": True,
              "max_stanza_size": 512, "tokens": True, "direct_tls": direct_tls}
    adapter = run([m for m in script if not m.startswith(b"<?xml")], config, None)
    assert not any(isinstance(ev, StanzaIn | SessionEstablished | Authenticated) for ev in adapter.events)


def test_the_logins_of_the_script_work() -> None:
    """The login prefixes the fuzzer builds on really establish a session (else it would only
    ever fuzz the unauthenticated stream)."""
    config = {"tls_required": True, "allow_plain": True, "registration": False, "sasl2": True,
              "max_stanza_size": 262_144, "tokens": True, "direct_tls": False}
    for name, login in LOGINS.items():
        adapter = run([*login, message(None)], config, None)
        stanza_in = [ev for ev in adapter.events if isinstance(ev, StanzaIn)]
        assert len(stanza_in) == 1, (name, adapter.events, bytes(adapter.output))
        assert adapter.jid is not None and ET.fromstring(stanza_in[0].stanza.to_bytes()).get("from") == str(adapter.jid)
