"""XEP-0484 FAST: the ``fast`` module on a fake node, driven through the real sans-IO c2s stream
and HT-SHA-256-NONE mechanism — issue, verify, rotate, expiry, replay counter, wrong user or
client, invalidation (by the client, the operator, a password change, removing the account)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cluster_node.core.hooks import Hook
from cluster_node.modules.fast import Fast
from cluster_node.modules.fast.store import CURRENT, NEW
from cluster_node.xmpp.c2s import (
    Authenticated,
    C2SConfig,
    C2SStream,
    CredentialsNeeded,
    Sasl2Authenticated,
    State,
    TokenNeeded,
)
from cluster_node.xmpp.errors import SaslFailure
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.sasl.ht import HT_MECHANISMS, token_key
from tests.helpers.fake_host import DOMAIN, FakeNode, fake_node

HEADER = (f"<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams'>").encode()
SASL2 = "urn:xmpp:sasl:2"
FAST = "urn:xmpp:fast:0"
HT = "HT-SHA-256-NONE"
AGENT = "d4565fa7-4d72-4749-b3d3-740edbf87770"


class Conn:
    """What the module sees of a connection during SASL2: ``authenticated`` (before any bind)."""

    def __init__(self, user: str | None) -> None:
        self.authenticated = Jid.parse(f"{user}@{DOMAIN}") if user else None
        self.ext: dict[str, Any] = {}
        self.record = None


class Login:
    """One SASL2 login through a real C2SStream, answered like the c2s adapter does."""

    def __init__(self, stream: C2SStream, out: bytes, events: list[Any]) -> None:
        self.stream = stream
        self.out = out
        self.events = events

    @property
    def ok(self) -> bool:
        return b"<success xmlns='urn:xmpp:sasl:2'>" in self.out

    @property
    def failure(self) -> str | None:
        m = re.search(rb"<failure xmlns='urn:xmpp:sasl:2'><([a-z-]+) ", self.out)
        return m.group(1).decode() if m else None

    @property
    def token(self) -> str | None:
        m = re.search(rb"<token xmlns='urn:xmpp:fast:0' expiry=[\"']([^\"']+)[\"'] token=[\"']([^\"']+)[\"']/>",
                      self.out)
        return m.group(2).decode() if m else None

    @property
    def expiry(self) -> str | None:
        m = re.search(rb"<token xmlns='urn:xmpp:fast:0' expiry=[\"']([^\"']+)", self.out)
        return m.group(1).decode() if m else None

    @property
    def additional_data(self) -> bytes | None:
        m = re.search(rb"<additional-data>([^<]*)</additional-data>", self.out)
        return base64.b64decode(m.group(1)) if m else None


async def login(node: FakeNode, mechanism: str, initial: bytes, *, agent: str | None = AGENT,
                inner: str = "") -> Login:
    hooks = node.hooks
    stream = C2SStream(C2SConfig(domains=[DOMAIN], token_mechanisms=lambda s: tuple(HT_MECHANISMS)
                                 if hooks.has(Hook.SASL2_TOKEN) else ()), direct_tls=True)
    stream.receive_data(HEADER)
    stream.data_to_send()
    ua = f"<user-agent id='{agent}'><software>unit</software></user-agent>" if agent else ""
    ir = base64.b64encode(initial).decode()
    events = stream.receive_data(f"<authenticate xmlns='{SASL2}' mechanism='{mechanism}'>"
                                 f"<initial-response>{ir}</initial-response>{ua}{inner}</authenticate>".encode())
    seen = list(events)
    while events:
        event = events[0]
        if isinstance(event, CredentialsNeeded):
            creds = await node.sessions.credentials(DOMAIN, event.username, event.hash_name)
            events = stream.provide_credentials(creds)
        elif isinstance(event, TokenNeeded):
            keys = await hooks.first_async(Hook.SASL2_TOKEN, DOMAIN, event.username, event.request)
            events = stream.provide_token(list(keys or ()))
        elif isinstance(event, Sasl2Authenticated):
            try:
                children = await hooks.fold_async(Hook.SASL2_AUTHENTICATED, [], Conn(event.username), event)
            except SaslFailure as e:
                events = stream.sasl2_failed(e)
            else:
                events = stream.sasl2_success(None, b"".join(children))
        else:
            events = events[1:]
            continue
        seen += events
    return Login(stream, stream.data_to_send(), seen)


def plain(user: str, password: str) -> bytes:
    return f"\0{user}\0{password}".encode()


def ht(user: str, token: str) -> bytes:
    return user.encode() + b"\0" + hmac.new(token.encode(), b"Initiator", "sha256").digest()


REQUEST = f"<request-token xmlns='{FAST}' mechanism='{HT}'/>"


def fast(count: int | None = None, invalidate: bool = False) -> str:
    attrs = (f" count='{count}'" if count is not None else "") + (" invalidate='true'" if invalidate else "")
    return f"<fast xmlns='{FAST}'{attrs}/>"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as n:
        for user in ("alice", "bob"):
            await n.services.accounts.register(DOMAIN, user, f"{user}-pw")
        yield n


async def issue(node: FakeNode, user: str = "alice", agent: str = AGENT) -> str:
    first = await login(node, "PLAIN", plain(user, f"{user}-pw"), agent=agent, inner=REQUEST)
    assert first.ok and first.token is not None, first.out
    return first.token


async def rows(node: FakeNode) -> list[tuple[Any, ...]]:
    async with node.storage.transaction() as tx:
        return [tuple(r) for r in await tx.fetchall(
            "SELECT username, agent, slot, token_hash, mechanism, last_count FROM fast_tokens ORDER BY username, slot")]


# -- offer and issue ---------------------------------------------------------------------------------


async def test_fast_is_offered_in_sasl2_inline_and_enables_the_ht_mechanism(node: FakeNode) -> None:
    assert not node.hooks.has(Hook.SASL2_TOKEN)
    await node.start(Fast)
    inline = node.hooks.fold(Hook.SASL2_INLINE, [], None)
    assert inline == [b"<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-NONE</mechanism></fast>"]
    stream = C2SStream(C2SConfig(domains=[DOMAIN], sasl2_inline=lambda s: node.hooks.fold(Hook.SASL2_INLINE, [], s)),
                       direct_tls=True)
    stream.receive_data(HEADER)
    features = stream.data_to_send()
    assert b"<inline><bind xmlns='urn:xmpp:bind:0'></bind><fast xmlns='urn:xmpp:fast:0'>" in features
    # RFC 6120 SASL never offers it
    assert b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism>" \
           b"<mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>" in features


async def test_a_requested_token_is_issued_hashed_and_bound_to_the_client(node: FakeNode) -> None:
    module = await node.start(Fast)
    first = await login(node, "PLAIN", plain("alice", "alice-pw"), inner=REQUEST)
    assert first.ok and first.token is not None and len(first.token) > 64
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first.expiry or "")
    assert [e for e in first.events if isinstance(e, Authenticated)]
    (row,) = await rows(node)
    user, agent, slot, token_hash, mechanism, count = row
    assert (user, agent, slot, mechanism, count) == ("alice", hashlib.sha256(AGENT.encode()).hexdigest(), NEW, HT, 0)
    assert bytes(token_hash) == hashlib.sha256(first.token.encode()).digest()  # never the token itself
    assert module.counters["issued"] == 1
    tokens = await module.tokens(jid=f"alice@{DOMAIN}")
    assert [(t["slot"], t["name"], t["mechanism"]) for t in tokens] == [(NEW, "unit", HT)]
    assert first.token not in repr(tokens)


async def test_no_token_without_a_user_agent_id_or_for_an_unknown_mechanism(node: FakeNode) -> None:
    await node.start(Fast)
    no_agent = await login(node, "PLAIN", plain("alice", "alice-pw"), agent=None, inner=REQUEST)
    assert no_agent.ok and no_agent.token is None
    other = await login(node, "PLAIN", plain("alice", "alice-pw"),
                        inner=f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-ENDP'/>")
    assert other.ok and other.token is None
    assert await rows(node) == []


async def test_a_failed_login_issues_no_token(node: FakeNode) -> None:
    await node.start(Fast)
    bad = await login(node, "PLAIN", plain("alice", "wrong"), inner=REQUEST)
    assert bad.failure == "not-authorized" and bad.token is None
    assert await rows(node) == []


# -- log in with a token ---------------------------------------------------------------------------


async def test_a_token_logs_in_in_one_round_trip_and_the_server_proves_it_knows_it(node: FakeNode) -> None:
    module = await node.start(Fast)
    token = await issue(node)
    again = await login(node, HT, ht("alice", token), inner=fast())
    assert again.ok, again.out
    assert b"<authorization-identifier>alice@example.com</authorization-identifier>" in again.out
    assert again.additional_data == hmac.new(token.encode(), b"Responder", "sha256").digest()
    assert again.token is None  # not due for rotation, none asked for
    assert module.counters["logins"] == 1
    assert [r[2] for r in await rows(node)] == [CURRENT]  # the new token, used, is the current one


async def test_a_wrong_token_a_wrong_user_or_another_client_is_refused(node: FakeNode) -> None:
    await node.start(Fast)
    token = await issue(node)
    bob_token = await issue(node, "bob")
    assert (await login(node, HT, ht("alice", token + "x"))).failure == "not-authorized"
    assert (await login(node, HT, ht("bob", token))).failure == "not-authorized"  # alice's token, bob's name
    assert (await login(node, HT, ht("alice", bob_token))).failure == "not-authorized"
    assert (await login(node, HT, ht("alice", token), agent="another-client")).failure == "not-authorized"
    assert (await login(node, HT, ht("alice", token), agent=None)).failure == "not-authorized"
    assert (await login(node, HT, ht("alice", token))).ok


async def test_the_ht_mechanism_is_refused_when_fast_is_not_running(node: FakeNode) -> None:
    assert (await login(node, HT, ht("alice", "t" * 80))).failure == "invalid-mechanism"


async def test_an_expired_token_is_refused(node: FakeNode) -> None:
    await node.start(Fast, expiry=60)
    token = await issue(node)
    async with node.storage.transaction(write=True) as tx:
        await tx.execute("UPDATE fast_tokens SET expires_at = expires_at - 61")
    assert (await login(node, HT, ht("alice", token))).failure == "not-authorized"


async def test_the_replay_counter_must_grow(node: FakeNode) -> None:
    module = await node.start(Fast)
    token = await issue(node)
    assert (await login(node, HT, ht("alice", token), inner=fast(count=5))).ok
    assert (await login(node, HT, ht("alice", token), inner=fast(count=5))).failure == "not-authorized"
    assert (await login(node, HT, ht("alice", token), inner=fast(count=4))).failure == "not-authorized"
    assert (await login(node, HT, ht("alice", token), inner=fast(count=0))).failure == "not-authorized"
    assert (await login(node, HT, ht("alice", token), inner=fast(count=6))).ok
    assert (await login(node, HT, ht("alice", token))).ok  # no counter: none to check (no TLS 0-RTT here)
    assert [r[5] for r in await rows(node)] == [6]
    assert module.counters["logins"] == 3


async def test_the_same_counter_in_two_concurrent_logins_lets_one_in(node: FakeNode) -> None:
    """Both looked the token up before either recorded its counter: the atomic record decides."""
    module = await node.start(Fast)
    await issue(node)
    agent = hashlib.sha256(AGENT.encode()).hexdigest()
    assert await module.store.use(DOMAIN, "alice", agent, NEW, count=3, now=0) is not None
    assert await module.store.use(DOMAIN, "alice", agent, CURRENT, count=3, now=0) is None
    assert await module.store.use(DOMAIN, "alice", agent, CURRENT, count=4, now=0) is not None


# -- rotation ----------------------------------------------------------------------------------------


async def test_rotation_keeps_the_old_token_until_the_new_one_is_used(node: FakeNode) -> None:
    module = await node.start(Fast, expiry=3600, rotate_before=3600)  # every token login rotates
    old = await issue(node)
    assert (await login(node, HT, ht("alice", old))).ok  # promotes it to current …
    rotated = await login(node, HT, ht("alice", old))  # … and this one gets a new token
    assert rotated.ok and rotated.token is not None and rotated.token != old
    assert module.counters["rotated"] >= 1
    assert sorted(r[2] for r in await rows(node)) == [CURRENT, NEW]
    # the client never got the new one (a dead connection): the old one still works
    assert (await login(node, HT, ht("alice", old))).ok
    newest = await login(node, HT, ht("alice", old))
    assert newest.token is not None
    # a new token issued replaces the one never used: the rotated one is gone
    assert (await login(node, HT, ht("alice", rotated.token))).failure == "not-authorized"
    # the newest one used: the old one ends
    assert (await login(node, HT, ht("alice", newest.token))).ok
    assert (await login(node, HT, ht("alice", old))).failure == "not-authorized"


async def test_no_rotation_when_far_from_expiry(node: FakeNode) -> None:
    await node.start(Fast)  # 14 days, rotated in the last 7
    token = await issue(node)
    for _ in range(3):
        again = await login(node, HT, ht("alice", token))
        assert again.ok and again.token is None


async def test_a_token_login_may_ask_for_a_new_token(node: FakeNode) -> None:
    await node.start(Fast)
    token = await issue(node)
    refreshed = await login(node, HT, ht("alice", token), inner=fast() + REQUEST)
    assert refreshed.ok and refreshed.token not in (None, token)


# -- invalidation ------------------------------------------------------------------------------------


async def test_the_client_may_invalidate_the_token_it_logs_in_with(node: FakeNode) -> None:
    module = await node.start(Fast, rotate_before=10**9)  # would rotate, but invalidate wins
    token = await issue(node)
    out = await login(node, HT, ht("alice", token), inner=fast(invalidate=True))
    assert out.ok and out.token is None
    assert module.counters["invalidated"] == 1
    assert (await login(node, HT, ht("alice", token))).failure == "not-authorized"


async def test_a_password_change_invalidates_every_token(node: FakeNode) -> None:
    await node.start(Fast)
    token = await issue(node)
    bob_token = await issue(node, "bob")
    await node.services.accounts.change_password(DOMAIN, "alice", "new-pw")
    assert (await login(node, HT, ht("alice", token))).failure == "not-authorized"
    assert [r[0] for r in await rows(node)] == ["bob"]
    assert (await login(node, HT, ht("bob", bob_token))).ok


async def test_removing_the_account_removes_its_tokens(node: FakeNode) -> None:
    await node.start(Fast)
    await issue(node)
    await node.services.accounts.remove(DOMAIN, "alice")
    assert await rows(node) == []


async def test_the_operator_revokes_tokens(node: FakeNode) -> None:
    module = await node.start(Fast)
    token = await issue(node)
    other = await issue(node, agent="second-client")
    status = await module.status()
    assert status["tokens"] == 2 and status["issued"] == 2
    listed = await module.tokens(jid=f"alice@{DOMAIN}")
    second = next(t["agent"] for t in listed if t["agent"] == hashlib.sha256(b"second-client").hexdigest()[:8])
    assert (await module.revoke(jid=f"alice@{DOMAIN}", agent=second))["revoked"] == 1
    assert (await login(node, HT, ht("alice", other), agent="second-client")).failure == "not-authorized"
    assert (await login(node, HT, ht("alice", token))).ok
    assert (await module.revoke(jid=f"alice@{DOMAIN}/any"))["revoked"] == 1
    assert (await login(node, HT, ht("alice", token))).failure == "not-authorized"
    with pytest.raises(ValueError):
        await module.revoke(jid=DOMAIN)
    assert ("fast", "revoke") in node.services.queries


async def test_a_revoked_token_between_lookup_and_success_is_refused(node: FakeNode) -> None:
    """The token matched, then the operator revoked it before the login was recorded."""
    module = await node.start(Fast)
    token = await issue(node)
    original = module.store.use

    async def revoked_first(*args: Any, **kw: Any) -> Any:
        await module.store.delete(DOMAIN, "alice")
        return await original(*args, **kw)

    module.store.use = revoked_first  # type: ignore[method-assign]
    out = await login(node, HT, ht("alice", token))
    assert out.failure == "not-authorized" and out.stream.state is State.NEGOTIATING
    assert out.stream.username is None and module.counters["replays"] == 1


def test_token_hash_is_the_hmac_key_equivalent() -> None:
    """Why storing SHA-256(token) is enough: HMAC hashes a key longer than its block first."""
    token = "x" * 88
    assert hmac.new(token.encode(), b"Initiator", "sha256").digest() == \
        hmac.new(token_key(token), b"Initiator", "sha256").digest()
    with pytest.raises(ValueError):
        token_key("short")
