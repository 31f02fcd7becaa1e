"""The PLAIN login cache: a verified password skips PBKDF2 until its credentials change, the TTL
runs out or the bound pushes it out; failures are never remembered, an unknown user costs the
same PBKDF2 as a wrong password, and SCRAM's server side does no PBKDF2 at all."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_node.core.accounts import Accounts
from cluster_node.settings import LoginCacheSettings
from cluster_node.storage.sqlite import SqliteStorage
from cluster_node.xmpp.errors import SaslFailure
from cluster_node.xmpp.sasl import NeedCredentials, Success, server_mechanism
from cluster_node.xmpp.sasl.cache import LoginCache
from cluster_node.xmpp.sasl.plain import PlainServer
from cluster_node.xmpp.sasl.scram import ScramCredentials, ScramServer, derive_credentials

CREDS = derive_credentials("right", "sha256")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pbkdf2_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the real PBKDF2 derivations (the real function still runs)."""
    calls: list[int] = []
    real = hashlib.pbkdf2_hmac

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counting)
    yield calls


def plain_login(cache: LoginCache | None, password: str, creds: ScramCredentials | None,
                user: str = "alice") -> bool:
    """One PLAIN exchange as the c2s adapter drives it: the slow check (if any) runs, then provide."""
    mech = PlainServer(domain="localhost", secret=b"s" * 32, cache=cache)
    step = mech.start(f"\0{user}\0{password}".encode())
    assert isinstance(step, NeedCredentials)
    check = mech.slow_check(creds)
    checked = check() if check is not None else None
    try:
        return isinstance(mech.provide(creds, checked), Success)
    except SaslFailure as e:
        assert e.condition == "not-authorized"
        return False


def test_a_verified_password_skips_pbkdf2_the_next_time(pbkdf2_calls: list[int]) -> None:
    cache = LoginCache()
    assert plain_login(cache, "right", CREDS)
    assert len(pbkdf2_calls) == 1 and len(cache) == 1
    assert plain_login(cache, "right", CREDS)
    assert plain_login(cache, "right", CREDS)
    assert len(pbkdf2_calls) == 1
    assert cache.counters["hits"] == 2


def test_failures_are_never_remembered(pbkdf2_calls: list[int]) -> None:
    cache = LoginCache()
    for _ in range(3):
        assert not plain_login(cache, "wrong", CREDS)
    assert len(cache) == 0 and len(pbkdf2_calls) == 3  # each wrong password pays its PBKDF2
    assert plain_login(cache, "right", CREDS)
    assert not plain_login(cache, "wrong", CREDS)  # a cached right password does not help a wrong one
    assert not plain_login(cache, "righ", CREDS)
    assert len(pbkdf2_calls) == 6


def test_an_unknown_user_costs_the_same_pbkdf2_as_a_wrong_password(pbkdf2_calls: list[int]) -> None:
    cache = LoginCache()
    assert not plain_login(cache, "anything", None, user="nobody")
    assert len(pbkdf2_calls) == 1 and len(cache) == 0
    # Also when the adapter gives no slow check's answer (the check then runs inline).
    mech = PlainServer(domain="localhost", secret=b"s" * 32, cache=cache)
    mech.start(b"\0nobody\0anything")
    with pytest.raises(SaslFailure):
        mech.provide(None)
    assert len(pbkdf2_calls) == 2 and len(cache) == 0


def test_new_credentials_never_match_an_old_entry(pbkdf2_calls: list[int]) -> None:
    """A password changed anywhere (another member, ``ctl``) draws a new salt: the cached old
    password fails at once, with no message to this cache."""
    cache = LoginCache()
    assert plain_login(cache, "right", CREDS)
    changed = derive_credentials("new", "sha256")
    assert not plain_login(cache, "right", changed)
    assert plain_login(cache, "new", changed)
    # Even the same password, set again, has a new salt: one PBKDF2, then cached again.
    again = derive_credentials("right", "sha256")
    before = len(pbkdf2_calls)
    assert plain_login(cache, "right", again) and plain_login(cache, "right", again)
    assert len(pbkdf2_calls) == before + 1


def test_forget_drops_one_account_only() -> None:
    cache = LoginCache()
    bob = derive_credentials("bobpw", "sha256")
    assert plain_login(cache, "right", CREDS) and plain_login(cache, "bobpw", bob, user="bob")
    assert cache.forget("alice@localhost") == 1
    assert not cache.verified("alice@localhost", "right", CREDS)
    assert cache.verified("bob@localhost", "bobpw", bob)
    assert cache.forget("alice@localhost") == 0


def test_the_bound_drops_the_least_recently_used() -> None:
    cache = LoginCache(max_entries=3)
    creds = {u: derive_credentials(u, "sha256", iterations=4096) for u in ("a", "b", "c", "d")}
    for u in ("a", "b", "c"):
        cache.remember(f"{u}@x", u, creds[u])
    assert cache.verified("a@x", "a", creds["a"])  # a is now the most recently used
    cache.remember("d@x", "d", creds["d"])
    assert len(cache) == 3 and cache.counters["evicted"] == 1
    assert not cache.verified("b@x", "b", creds["b"])
    assert all(cache.verified(f"{u}@x", u, creds[u]) for u in ("a", "c", "d"))
    assert cache.forget("b@x") == 0  # the index forgot the evicted entry too


def test_an_entry_expires_ttl_after_its_pbkdf2_and_a_hit_does_not_extend_it() -> None:
    clock = Clock()
    cache = LoginCache(ttl=60, clock=clock)
    cache.remember("alice@localhost", "right", CREDS)
    clock.now += 59
    assert cache.verified("alice@localhost", "right", CREDS)
    clock.now += 1
    assert not cache.verified("alice@localhost", "right", CREDS)
    assert len(cache) == 0 and cache.counters["expired"] == 1


def test_entries_are_keyed_hashes_that_depend_on_the_process_key() -> None:
    a, b = LoginCache(), LoginCache()
    a.remember("alice@localhost", "right", CREDS)
    ((mac, _expires),) = a._entries.values()
    assert b"right" not in mac and len(mac) == 32
    b._entries.update(a._entries)  # the same entry, in a process with another key: no match
    assert not b.verified("alice@localhost", "right", CREDS)
    assert a.verified("alice@localhost", "right", CREDS)
    # Fields are length-prefixed: moving a byte from the account to the password is another MAC.
    c = LoginCache(secret=b"k" * 32)
    assert c._mac("ab", "c", CREDS) != c._mac("a", "bc", CREDS)


def test_one_entry_per_account() -> None:
    """Only one password verifies against an account's keys; an entry made against older keys
    is replaced by the next verified login (it could never match again anyway)."""
    cache = LoginCache()
    assert plain_login(cache, "right", CREDS)
    changed = derive_credentials("new", "sha256")
    assert plain_login(cache, "new", changed)
    assert len(cache) == 1 and not cache.verified("alice@localhost", "right", CREDS)


def test_settings_and_bad_arguments() -> None:
    assert not LoginCache.from_settings(LoginCacheSettings(enabled=False)).enabled
    cache = LoginCache.from_settings(LoginCacheSettings(max_entries=5, ttl=10))
    assert cache.enabled and cache.max_entries == 5 and cache.ttl == 10
    off = LoginCache(max_entries=0)
    off.remember("alice@localhost", "right", CREDS)
    assert len(off) == 0 and not off.verified("alice@localhost", "right", CREDS)
    with pytest.raises(ValueError, match="must not be negative"):
        LoginCache(max_entries=-1)
    with pytest.raises(Exception, match="greater than"):
        LoginCacheSettings(ttl=0)


def _scram_client(password: str, salt: bytes, iterations: int, nonce: str, first_bare: str,
                  server_first: str) -> str:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored = hashlib.sha256(client_key).digest()
    without_proof = f"c={base64.b64encode(b'n,,').decode()},r={nonce}"
    auth = f"{first_bare},{server_first},{without_proof}".encode()
    sig = hmac.new(stored, auth, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, sig, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}"


def test_scram_server_side_does_no_pbkdf2(monkeypatch: pytest.MonkeyPatch) -> None:
    mech = server_mechanism("SCRAM-SHA-256", domain="localhost", secret=b"s" * 32, tls=True,
                            login_cache=LoginCache())
    assert isinstance(mech, ScramServer)
    first_bare = "n=alice,r=clientnonce"
    assert isinstance(mech.start(f"n,,{first_bare}".encode()), NeedCredentials)
    server_first = mech.provide(CREDS).data.decode()
    attrs = dict(p.split("=", 1) for p in server_first.split(","))
    final = _scram_client("right", base64.b64decode(attrs["s"]), int(attrs["i"]), attrs["r"], first_bare,
                          server_first)
    calls: list[int] = []
    real = hashlib.pbkdf2_hmac

    def counting(*args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counting)
    assert isinstance(mech.respond(final.encode()), Success)
    assert calls == []


async def test_accounts_forget_on_password_change_and_removal(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "db.sqlite")
    await storage.open()
    try:
        cache = LoginCache()
        accounts = Accounts(storage, ["localhost"], login_cache=cache)
        await accounts.register("localhost", "alice", "right")
        creds = await accounts.scram_credentials("localhost", "alice", "sha256")
        assert creds is not None and plain_login(cache, "right", creds)
        assert len(cache) == 1
        await accounts.change_password("localhost", "alice", "new")
        assert len(cache) == 0
        new = await accounts.scram_credentials("localhost", "alice", "sha256")
        assert not plain_login(cache, "right", new) and plain_login(cache, "new", new)
        await accounts.remove("localhost", "alice")
        assert len(cache) == 0
        assert not plain_login(cache, "new", await accounts.scram_credentials("localhost", "alice", "sha256"))
    finally:
        await storage.close()


async def test_a_login_reads_storage_in_one_hop_per_statement(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """What a login reads (credentials; then the roster, pending subscription requests and offline
    messages for its initial presence) is one hop to SQLite's thread each, not three (execute,
    fetch, close) — and the roster with its version is one statement."""
    storage = SqliteStorage(tmp_path / "db.sqlite")
    await storage.open()
    try:
        accounts = Accounts(storage, ["localhost"])
        await accounts.register("localhost", "alice", "right")
        assert storage._db is not None
        hops: list[str] = []
        real: Any = storage._db._execute

        async def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
            hops.append(getattr(fn, "__name__", "?"))
            return await real(fn, *args, **kwargs)

        monkeypatch.setattr(storage._db, "_execute", counting)
        assert await accounts.scram_credentials("localhost", "alice", "sha256") is not None
        assert await storage.get_roster("localhost", "alice") == ([], "0")
        await storage.get_subscription_requests("localhost", "alice")
        await storage.fetch_offline("localhost", "alice")
        assert len(hops) == 4, hops
    finally:
        await storage.close()
