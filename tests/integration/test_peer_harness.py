"""Self-tests of the S2S interop harness: the loopback DNS server and the Prosody launcher.

If these fail, the interop tests' failures say nothing about Meridian.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from gateway.link.tls import make_ca
from tests.helpers.dns import DnsServer
from tests.helpers.ejabberd import EjabberdServer, ejabberdctl_binary
from tests.helpers.prosody import ProsodyServer, prosody_binary, unbound_available
from tests.helpers.xmpp_client import AuthFailed, Client


@pytest.fixture
def dns_server() -> DnsServer:
    with DnsServer() as server:
        yield server  # type: ignore[misc]


async def test_dns_srv_a_aaaa(dns_server: DnsServer) -> None:
    dns_server.add_srv("_xmpp-server._tcp.a.test", "xmpp.a.test", 5270, priority=10, weight=5)
    dns_server.add_srv("_xmpp-server._tcp.a.test", "backup.a.test", 5271, priority=20)
    dns_server.add_a("xmpp.a.test", "127.0.0.2")
    dns_server.add_aaaa("xmpp.a.test", "::1")
    r = dns_server.resolver()

    srv = await r.resolve("_xmpp-server._tcp.a.test", "SRV")
    got = sorted((x.priority, x.weight, x.port, x.target.to_text()) for x in srv)
    assert got == [(10, 5, 5270, "xmpp.a.test."), (20, 0, 5271, "backup.a.test.")]
    # glue for the target we know the address of
    glue = {rrset.name.to_text(): rrset.rdtype for rrset in srv.response.additional}
    assert glue.get("xmpp.a.test.") in (dns.rdatatype.A, dns.rdatatype.AAAA)

    assert [x.address for x in await r.resolve("xmpp.a.test", "A")] == ["127.0.0.2"]
    assert [x.address for x in await r.resolve("XMPP.A.Test.", "AAAA")] == ["::1"]
    assert ("_xmpp-server._tcp.a.test.", "SRV") in dns_server.queries


async def test_dns_nxdomain_and_nodata(dns_server: DnsServer) -> None:
    dns_server.add_a("only-a.test", "127.0.0.3")
    r = dns_server.resolver()
    with pytest.raises(dns.resolver.NXDOMAIN):
        await r.resolve("_xmpp-server._tcp.unknown.test", "SRV")
    with pytest.raises(dns.resolver.NoAnswer):
        await r.resolve("only-a.test", "AAAA")
    dns_server.remove("only-a.test")
    with pytest.raises(dns.resolver.NXDOMAIN):
        await r.resolve("only-a.test", "A")


async def test_dns_tcp_and_adds_while_running(dns_server: DnsServer) -> None:
    """TCP answers too (resolvers fall back to it on truncation); adds from other threads are safe."""
    def add(i: int) -> None:
        for j in range(50):
            dns_server.add_a(f"h{i}-{j}.test", f"127.0.{i}.{j + 1}")

    threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    r = dns_server.resolver()
    # queries while the adds run: each name is either not there yet or complete
    for _ in range(20):
        try:
            await r.resolve("h0-0.test", "A")
        except dns.resolver.NXDOMAIN:
            pass
    for t in threads:
        t.join()
    for i in range(4):
        assert [x.address for x in await r.resolve(f"h{i}-49.test", "A")] == [f"127.0.{i}.50"]

    answer = await r.resolve("h3-7.test", "A", tcp=True)
    assert [x.address for x in answer] == ["127.0.3.8"]
    query = dns.message.make_query("_xmpp-server._tcp.nowhere.test", "SRV")
    reply = await asyncio.to_thread(dns.query.tcp, query, dns_server.host, port=dns_server.port, timeout=5)
    assert reply.rcode() == dns.rcode.NXDOMAIN


# --- Prosody ------------------------------------------------------------------------------------

needs_prosody = pytest.mark.skipif(
    prosody_binary() is None or not unbound_available(),
    reason="Debian packages prosody and lua-unbound not installed (scripts/install-test-deps.sh)")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_ca(tmp_path_factory.mktemp("peer-ca"), name="Peer harness CA")


@needs_prosody
async def test_prosody_client_login(ca: tuple[Path, Path]) -> None:
    """A slixmpp client logs in over STARTTLS, trusting the test CA; a wrong password is refused."""
    with DnsServer() as dns_server, \
            ProsodyServer("solo.example.org", ca=ca, dns=dns_server, users={"alice": "alice-pw"}) as p:
        alice = await Client(p.jid("alice"), "alice-pw", cert=ca[0]).login(p.c2s_port)
        try:
            # a message to herself comes back: the session really works
            alice.send_message(mto=alice.boundjid.full, mbody="hello me", mtype="chat")
            assert (await alice.next_message(15))["body"] == "hello me"
        finally:
            await alice.close()
        with pytest.raises(AuthFailed) as refused:
            await Client(p.jid("alice"), "wrong", cert=ca[0]).login(p.c2s_port)
        assert refused.value.sasl == "not-authorized", refused.value


@needs_prosody
@pytest.mark.parametrize("secure", [False, True], ids=["dialback", "sasl-external"])
async def test_two_prosodys_federate_through_dns(ca: tuple[Path, Path], secure: bool) -> None:
    """Two Prosody hosts find each other only through the DnsServer's SRV records and exchange
    messages both ways.  Dialback: each has its own CA and does not trust the other's, so
    SASL EXTERNAL is not offered and dialback authenticates.  SASL EXTERNAL: one shared CA,
    ``s2s_secure_auth`` and no mod_dialback, so EXTERNAL is the only way in."""
    shared = ca if secure else None
    with DnsServer() as dns_server, \
            ProsodyServer("one.example.org", ca=shared, dns=dns_server, users={"alice": "a-pw"},
                          dialback=not secure, secure_auth=secure) as one, \
            ProsodyServer("two.example.net", ca=shared, dns=dns_server, users={"bob": "b-pw"},
                          dialback=not secure, secure_auth=secure) as two:
        alice = await Client(one.jid("alice"), "a-pw", cert=one.ca_cert).online(one.c2s_port)
        bob = await Client(two.jid("bob"), "b-pw", cert=two.ca_cert).online(two.c2s_port)
        try:
            alice.send_message(mto=two.jid("bob"), mbody="hi bob", mtype="chat")
            msg = await bob.next_message(30)
            assert (msg["body"], str(msg["from"].bare)) == ("hi bob", one.jid("alice"))
            bob.send_message(mto=one.jid("alice"), mbody="hi alice", mtype="chat")
            msg = await alice.next_message(30)
            assert (msg["body"], str(msg["from"].bare)) == ("hi alice", two.jid("bob"))
        finally:
            await alice.close()
            await bob.close()
        assert ("_xmpp-server._tcp.two.example.net.", "SRV") in dns_server.queries
        assert ("_xmpp-server._tcp.one.example.org.", "SRV") in dns_server.queries
        logs = one.log_path.read_text() + two.log_path.read_text()
        if secure:
            assert "Accepting SASL EXTERNAL identity from" in logs
        else:
            assert "SASL EXTERNAL identity" not in logs
            assert "verified dialback key... it is valid" in logs, logs[-5000:]


# --- ejabberd -----------------------------------------------------------------------------------

needs_ejabberd = pytest.mark.skipif(
    ejabberdctl_binary() is None or os.geteuid() != 0,
    reason="Debian package ejabberd not installed, or not root (Debian's ejabberdctl needs root or ejabberd)")


@needs_prosody
@needs_ejabberd
@pytest.mark.parametrize("secure", [False, True], ids=["dialback", "sasl-external"])
async def test_ejabberd_federates_with_prosody_through_dns(ca: tuple[Path, Path], secure: bool) -> None:
    """ejabberd finds Prosody (and back) through the DnsServer's SRV records (its inetrc names the
    server; the SRV target ``localhost`` is what ejabberd's libc lookup of targets can resolve), and
    a user of each exchanges messages; dialback with unrelated CAs, SASL EXTERNAL with one CA."""
    shared = ca if secure else None
    with DnsServer() as dns_server, \
            ProsodyServer("pro.example.org", ca=shared, dns=dns_server, users={"alice": "a-pw"},
                          dialback=not secure, secure_auth=secure, srv_target="localhost") as pro, \
            EjabberdServer("ej.example.net", ca=shared, dns=dns_server, users={"bob": "b-pw"},
                           dialback=not secure, secure_auth=secure) as ej:
        alice = await Client(pro.jid("alice"), "a-pw", cert=pro.ca_cert).online(pro.c2s_port)
        bob = await Client(ej.jid("bob"), "b-pw", cert=ej.ca_cert).online(ej.c2s_port)
        try:
            bob.send_message(mto=pro.jid("alice"), mbody="hi alice", mtype="chat")
            msg = await alice.next_message(30)
            assert (msg["body"], str(msg["from"].bare)) == ("hi alice", ej.jid("bob"))
            alice.send_message(mto=ej.jid("bob"), mbody="hi bob", mtype="chat")
            msg = await bob.next_message(30)
            assert (msg["body"], str(msg["from"].bare)) == ("hi bob", pro.jid("alice"))
        finally:
            await alice.close()
            await bob.close()
        assert ("_xmpp-server._tcp.pro.example.org.", "SRV") in dns_server.queries
        assert ("_xmpp-server._tcp.ej.example.net.", "SRV") in dns_server.queries
        log = pro.log_path.read_text()
        if secure:
            assert "Accepting SASL EXTERNAL identity from ej.example.net" in log
            assert "SASL EXTERNAL with ej.example.net succeeded" in log
        else:
            assert "asking ej.example.net if key" in log and "verified dialback key... it is valid" in log
