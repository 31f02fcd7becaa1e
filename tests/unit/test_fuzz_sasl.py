"""Property-based fuzzing of the SASL server mechanisms (cluster_node/xmpp/sasl/): PLAIN,
SCRAM-SHA-1/256, HT-SHA-256-NONE.

Budget and reproducibility: the ``meridian`` hypothesis profile of tests/conftest.py.  Credentials
are derived with few PBKDF2 iterations so that hundreds of exchanges stay fast.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

import pytest
from hypothesis import assume, example, given, strategies as st

from cluster_node.xmpp.errors import SaslFailure
from cluster_node.xmpp.jid import InvalidJid, nodeprep
from cluster_node.xmpp.sasl import Challenge, NeedCredentials, Success
from cluster_node.xmpp.sasl.ht import HtServer, NeedToken, TokenKey, initiator, responder
from cluster_node.xmpp.sasl.plain import PlainServer
from cluster_node.xmpp.sasl.scram import MECHANISM_HASHES, ScramServer, derive_credentials, saslprep

DOMAIN = "example.com"
SECRET = b"s" * 32
ITERATIONS = 16  # RFC 7677 asks for 4096 on a real account; the algorithm is the same
SCRAM = sorted(MECHANISM_HASHES)

# -- strategies ----------------------------------------------------------------------------------

# Usernames and passwords with what SCRAM must escape (',' '='), non-ASCII, and look-alikes of escapes.
# They stay mostly within what the PRECIS profiles accept (no space or emoji in a username, no
# control character in a password), so that few examples are discarded; the arbitrary-message
# properties below send the rest.
name_alphabet = st.sampled_from("alice,=2C3DéÉßΣ\u0130")
usernames = (st.text(name_alphabet, min_size=1, max_size=12)
             | st.text(st.characters(categories=("Lu", "Ll", "Lo", "Nd")) | name_alphabet, min_size=1, max_size=12))
passwords = (st.text(name_alphabet | st.sampled_from(" \U0001f600\u00a0"), min_size=1, max_size=16)
             | st.text(st.characters(exclude_categories=("Cc", "Cs", "Cn")), min_size=1, max_size=16))

# SCRAM messages from the grammar's own pieces, so that fuzzing gets past the first comma.
scram_tokens = st.sampled_from(["n", "y", "p=tls-unique", "a=", "n=", "r=", "c=", "p=", "s=", "i=", "m=", "v=",
                                "biws", "=2C", "=3D", "=", ",", "\x00", "alice", "abc", "QUJD", "é", ""])
scram_messages = st.lists(scram_tokens, max_size=10).map("".join).map(str.encode) | st.binary(max_size=80)
client_messages = scram_messages | st.binary(max_size=80) | st.lists(
    st.sampled_from([b"\x00", b"alice", b"a@example.com", b"pw", b"\xff", b""]), max_size=5).map(b"".join)


def escape_name(name: str) -> str:
    """RFC 5802 §5.1 saslname: '=' as '=3D', ',' as '=2C'."""
    return name.replace("=", "=3D").replace(",", "=2C")


@dataclass
class ScramClient:
    """The client side of one SCRAM exchange (RFC 5802 §3), without channel binding."""

    hash_name: str
    username: str
    password: str
    nonce: str = "fyko+d2lbbFgONRv9qkxdawL"

    def first(self) -> bytes:
        self.bare = f"n={escape_name(self.username)},r={self.nonce}"
        return f"n,,{self.bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
        assert attrs["r"].startswith(self.nonce)
        h = self.hash_name
        salted = hashlib.pbkdf2_hmac(h, saslprep(self.password).encode(), base64.b64decode(attrs["s"]),
                                     int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", h).digest()
        without_proof = f"c={base64.b64encode(b'n,,').decode()},r={attrs['r']}"
        auth = f"{self.bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.new(hashlib.new(h, client_key).digest(), auth, h).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.server_signature = hmac.new(hmac.new(salted, b"Server Key", h).digest(), auth, h).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def valid_password(password: str) -> bool:
    try:
        saslprep(password)
    except ValueError:
        return False
    return True


def valid_username(name: str) -> bool:
    try:
        nodeprep(name)
    except InvalidJid:
        return False
    return True


# -- SCRAM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", SCRAM)
@given(username=usernames, password=passwords, wrong=passwords)
@example(username="a,b=c", password="p,w=d", wrong="p,w=e")
@example(username="=2C", password="é", wrong="e\u0301x")
def test_scram_round_trip(mechanism: str, username: str, password: str, wrong: str) -> None:
    """With the right password a SCRAM exchange succeeds for any username (escaped as RFC 5802
    says) and proves the server's knowledge (v=); with a wrong one it fails with not-authorized."""
    assume(valid_username(username) and valid_password(password))
    h = MECHANISM_HASHES[mechanism]
    creds = derive_credentials(password, h, salt=b"salt" * 4, iterations=ITERATIONS)
    for attempt, expect_ok in ((password, True), (wrong, False)):
        if not expect_ok and (not valid_password(wrong) or saslprep(wrong) == saslprep(password)):
            continue
        server = ScramServer(mechanism, domain=DOMAIN, secret=SECRET)
        client = ScramClient(h, username, attempt)
        need = server.start(client.first())
        assert need == NeedCredentials(nodeprep(username))
        challenge = server.provide(creds)
        assert isinstance(challenge, Challenge)
        final = client.final(challenge.data)
        if expect_ok:
            success = server.respond(final)
            assert success == Success(nodeprep(username), b"v=" + base64.b64encode(client.server_signature))
        else:
            with pytest.raises(SaslFailure) as failure:
                server.respond(final)
            assert failure.value.condition == "not-authorized"


@pytest.mark.parametrize("mechanism", SCRAM)
@given(username=usernames, password=passwords)
def test_scram_unknown_user_fails_like_a_wrong_password(mechanism: str, username: str, password: str) -> None:
    """An unknown account still gets a challenge (a fake salt, stable per username) and then
    not-authorized: nothing in the exchange tells it from a wrong password."""
    assume(valid_username(username) and valid_password(password))
    h = MECHANISM_HASHES[mechanism]
    challenges = []
    for _ in range(2):
        server = ScramServer(mechanism, domain=DOMAIN, secret=SECRET)
        client = ScramClient(h, username, password)
        server.start(client.first())
        challenge = server.provide(None)
        assert isinstance(challenge, Challenge)
        nonce, salt_and_iterations = challenge.data.split(b",", 1)
        challenges.append(salt_and_iterations)
        proof = base64.b64encode(bytes(hashlib.new(h).digest_size)).decode()  # well-formed, and wrong
        with pytest.raises(SaslFailure) as failure:
            server.respond(f"c=biws,{nonce.decode()},p={proof}".encode())
        assert failure.value.condition == "not-authorized"
    assert challenges[0] == challenges[1]


@pytest.mark.parametrize("mechanism", SCRAM)
@given(messages=st.lists(client_messages, min_size=1, max_size=4), known=st.booleans(), initial=st.booleans())
def test_scram_arbitrary_client_messages_only_fail(mechanism: str, messages: list[bytes], known: bool,
                                                   initial: bool) -> None:
    """Whatever the client sends, in whatever order, the server answers with a step or raises
    SaslFailure — never another exception, never success without a proof."""
    creds = derive_credentials("secret", MECHANISM_HASHES[mechanism], iterations=ITERATIONS)
    server = ScramServer(mechanism, domain=DOMAIN, secret=SECRET)
    try:
        step: Challenge | NeedCredentials | Success = server.start(messages[0] if initial else None)
        for message in messages[int(initial):]:
            if isinstance(step, NeedCredentials):
                step = server.provide(creds if known else None)
            step = server.respond(message)
            assert not isinstance(step, Success), "authenticated without the password"
    except SaslFailure:
        pass


@given(st.lists(st.sampled_from(["=", "=2C", "=3D", "2C", "3D", "2", "a", "C", "D", "é"]), min_size=1,
                max_size=6).map("".join))
@example("==2C3D")  # '=' followed by '=2C' then '3D': slipped through the old check, unescaped to "=,3D"
def test_scram_username_escaping_is_strict(escaped: str) -> None:
    """RFC 5802 §5.1: a username with '=' not followed by '2C' or '3D' MUST fail the exchange;
    a well-escaped one is unescaped to exactly the name that was escaped."""
    server = ScramServer("SCRAM-SHA-256", domain=DOMAIN, secret=SECRET)
    well_formed = all(part[:2] in ("2C", "3D") for part in escaped.split("=")[1:])
    try:
        step = server.start(f"n,,n={escaped},r=abc".encode())
    except SaslFailure as e:
        assert not well_formed or e.condition == "not-authorized", e  # (nodeprep may refuse the name)
        return
    assert well_formed
    assert isinstance(step, NeedCredentials)
    assert step.username == nodeprep(re.sub("=(2C|3D)", lambda m: {"2C": ",", "3D": "="}[m[1]], escaped))


# -- PLAIN ---------------------------------------------------------------------------------------


@given(username=usernames, password=passwords, wrong=passwords, authzid=st.booleans())
def test_plain_round_trip(username: str, password: str, wrong: str, authzid: bool) -> None:
    """PLAIN accepts the right password (with or without the matching authzid) and refuses a
    wrong one with not-authorized."""
    assume("\0" not in username + password + wrong)
    assume(valid_username(username) and valid_password(password))
    creds = derive_credentials(password, "sha256", iterations=ITERATIONS)
    user = nodeprep(username)
    prefix = f"{user}@{DOMAIN}" if authzid else ""
    for attempt in (password, wrong):
        server = PlainServer(domain=DOMAIN)
        assert server.start(f"{prefix}\0{username}\0{attempt}".encode()) == NeedCredentials(user)
        if valid_password(attempt) and saslprep(attempt) == saslprep(password):
            assert server.provide(creds) == Success(user)
        else:
            with pytest.raises(SaslFailure) as failure:
                server.provide(creds)
            assert failure.value.condition == "not-authorized"


@given(messages=st.lists(client_messages, min_size=1, max_size=3), known=st.booleans(), initial=st.booleans())
def test_plain_arbitrary_client_messages_only_fail(messages: list[bytes], known: bool, initial: bool) -> None:
    """Whatever the client sends, PLAIN answers with a step or raises SaslFailure."""
    creds = derive_credentials("no generated message holds this one", "sha256", iterations=ITERATIONS)
    server = PlainServer(domain=DOMAIN)
    try:
        step: Challenge | NeedCredentials | Success = server.start(messages[0] if initial else None)
        for message in messages[int(initial):]:
            if isinstance(step, NeedCredentials):
                step = server.provide(creds if known else None)
                raise AssertionError("authenticated with the wrong password")
            step = server.respond(message)
    except SaslFailure:
        pass


# -- HT-SHA-256-NONE (XEP-0484) ------------------------------------------------------------------

token_keys = st.lists(st.builds(TokenKey, st.text(max_size=4), st.binary(min_size=32, max_size=32)), max_size=3)


@given(st.none() | client_messages | st.binary(min_size=33, max_size=60), token_keys, st.lists(client_messages,
                                                                                               max_size=2))
def test_ht_arbitrary_client_messages_only_fail(initial: bytes | None, keys: list[TokenKey],
                                               more: list[bytes]) -> None:
    """Any initial response and any later message give NeedToken then SaslFailure, or SaslFailure."""
    server = HtServer("HT-SHA-256-NONE")
    try:
        step = server.start(initial)
        assert isinstance(step, NeedToken)
        server.provide_token(keys)  # random keys: the proof cannot match
        raise AssertionError("authenticated with a random proof")
    except SaslFailure:
        pass
    for message in more:
        with pytest.raises(SaslFailure):
            server.respond(message)


@given(username=usernames, keys=st.lists(st.builds(TokenKey, st.text(max_size=4), st.binary(min_size=32, max_size=32)),
                                         min_size=1, max_size=3, unique_by=lambda k: k.key), which=st.integers(0, 2))
def test_ht_round_trip(username: str, keys: list[TokenKey], which: int) -> None:
    """A proof made with one of the offered keys succeeds, names that key's id and answers with
    the responder HMAC; the same proof against the other keys fails with not-authorized."""
    assume(valid_username(username) and "\0" not in username)
    used = keys[which % len(keys)]
    proof = initiator(used.key)
    server = HtServer("HT-SHA-256-NONE")
    assert server.start(username.encode() + b"\0" + proof) == NeedToken(nodeprep(username))
    assert server.provide_token(keys) == Success(nodeprep(username), responder(used.key), token=used.id)
    others = [k for k in keys if k is not used]
    server = HtServer("HT-SHA-256-NONE")
    server.start(username.encode() + b"\0" + proof)
    with pytest.raises(SaslFailure) as failure:
        server.provide_token(others)
    assert failure.value.condition == "not-authorized"


# -- an unknown user looks like a known one ------------------------------------------------------


@pytest.mark.parametrize("rounds", [4096, 12000])
def test_an_unknown_user_is_answered_with_the_servers_own_iteration_count(rounds: int) -> None:
    """With ``scram_iterations`` raised, SCRAM's fake challenge for a missing account announces
    what a real account made since has (a fixed 4096 would tell the two apart), and PLAIN spends
    that many PBKDF2 rounds on it."""
    server = ScramServer("SCRAM-SHA-256", domain=DOMAIN, secret=SECRET, decoy_iterations=rounds)
    assert isinstance(server.start(b"n,,n=nobody,r=abc"), NeedCredentials)
    challenge = server.provide(None)
    assert isinstance(challenge, Challenge) and challenge.data.decode().endswith(f",i={rounds}")
    real = derive_credentials("pw", "sha256", iterations=rounds)
    known = ScramServer("SCRAM-SHA-256", domain=DOMAIN, secret=SECRET, decoy_iterations=rounds)
    known.start(b"n,,n=somebody,r=abc")
    assert known.provide(real).data.decode().endswith(f",i={rounds}")  # type: ignore[union-attr]

    plain = PlainServer(domain=DOMAIN, secret=SECRET, decoy_iterations=rounds)
    plain.start(b"\0nobody\0guess")
    assert plain._decoy().iterations == rounds
    with pytest.raises(SaslFailure) as e:
        plain.provide(None)
    assert e.value.condition == "not-authorized"
