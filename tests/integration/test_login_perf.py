"""The PLAIN login cache, live over real sockets: a second login with the same password is
answered without PBKDF2 (the node's ``meridian_login_cache_hits`` counts it), and once the
password changes the old one fails at once although it was cached — on the node that changed it,
and on the other member of a two-node region, which is told nothing (the cache's keys cover the
stored credentials it reads from the shared database at every login)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.node import ADMIN_PASSWORD, ADMIN_USER, NodeProcess
from tests.helpers.topologies import one_node, two_node_region
from tests.helpers.xmpp_raw import RawClient

pytestmark = pytest.mark.asyncio


async def login(node: NodeProcess, user: str, password: str) -> bool:
    c = await RawClient(node.port, node.cert).connect()
    try:
        await c.login(user, password)
        return True
    except PermissionError as e:
        assert "not-authorized" in str(e), e
        return False
    finally:
        await c.close()


async def cache_metrics(node: NodeProcess) -> dict[str, float]:
    status, text = await node.http("GET", f"{node.admin_url}/metrics", auth=(ADMIN_USER, ADMIN_PASSWORD))
    assert status == 200, text
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name.startswith("meridian_login_cache")}


async def change_password(node: NodeProcess, user: str, password: str) -> None:
    _, body = await node.admin(f'mutation {{ account {{ changeUserPassword(user: "{user}@localhost", '
                               f'newPassword: "{password}") {{ message }} }} }}')
    assert body["data"]["account"]["changeUserPassword"]["message"] == "Password changed", body


async def cached_login(node: NodeProcess, user: str, password: str) -> None:
    """Log in twice: the second is a cache hit."""
    before = (await cache_metrics(node)).get("meridian_login_cache_hits_total", 0)
    assert await login(node, user, password)
    assert await login(node, user, password)
    after = await cache_metrics(node)
    assert after["meridian_login_cache_hits_total"] == before + 1, after
    assert after["meridian_login_cache_entries"] >= 1


async def test_a_password_change_fails_the_cached_old_password_at_once(tmp_path: Path) -> None:
    with one_node(tmp_path, "n1", users={"alice": "old-secret", "bob": "bob-secret"}) as node:
        await cached_login(node, "alice", "old-secret")
        await cached_login(node, "bob", "bob-secret")
        assert not await login(node, "alice", "wrong")
        await change_password(node, "alice", "new-secret")
        assert (await cache_metrics(node))["meridian_login_cache_entries"] == 1  # alice's forgotten, bob's kept
        assert not await login(node, "alice", "old-secret")
        assert await login(node, "alice", "new-secret")
        assert await login(node, "bob", "bob-secret")
        # Unknown users fail like wrong passwords, and nothing is remembered for them.
        entries = (await cache_metrics(node))["meridian_login_cache_entries"]
        assert not await login(node, "nobody", "old-secret")
        assert (await cache_metrics(node))["meridian_login_cache_entries"] == entries


@pytest.mark.timeout(480)  # two nodes to start and join, on whatever else the machine is doing
async def test_a_password_changed_on_one_member_fails_at_once_on_the_other(tmp_path: Path) -> None:
    with two_node_region(tmp_path, users={"alice": "old-secret"}) as (n1, n2):
        await cached_login(n2, "alice", "old-secret")
        await change_password(n1, "alice", "new-secret")
        assert not await login(n2, "alice", "old-secret")  # cached on n2, which was told nothing
        assert await login(n2, "alice", "new-secret")
        assert not await login(n1, "alice", "old-secret")
        assert await login(n1, "alice", "new-secret")


def _tls_connect(port: int, cert: Path, session: ssl.SSLSession | None,
                 starttls: bool) -> tuple[bool, ssl.SSLSession | None]:
    """One connection (STARTTLS or direct TLS) offering ``session``: (was it resumed, the session
    to offer next time).  Blocking sockets: asyncio's TLS cannot offer a session."""
    ctx = _CLIENT_CTX.setdefault(str(cert), ssl.create_default_context(cafile=str(cert)))
    header = (b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams'>")
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        if starttls:
            raw.sendall(header)
            _read_until(raw, b"</stream:features>")
            raw.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            _read_until(raw, b"<proceed")
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(header)
            _read_until(tls, b"</stream:features>")  # (TLS 1.3 tickets arrive after the handshake)
            return bool(tls.session_reused), tls.session
    finally:
        raw.close()


_CLIENT_CTX: dict[str, ssl.SSLContext] = {}


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}: {data!r}")
        data += chunk
    return data


async def test_a_reconnecting_client_resumes_its_tls_session(tmp_path: Path) -> None:
    """Session tickets: the second handshake of a client that offers its session is a resumption
    (no certificate, no key exchange signature), on the STARTTLS and the direct-TLS port."""
    with one_node(tmp_path, "n1", users={"alice": "secret"}) as node:
        for port, starttls in ((node.port, True), (node.tls_port, False)):
            resumed, session = await asyncio.to_thread(_tls_connect, port, node.cert, None, starttls)
            assert not resumed and session is not None
            resumed, _ = await asyncio.to_thread(_tls_connect, port, node.cert, session, starttls)
            assert resumed
