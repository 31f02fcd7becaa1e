"""Self-tests of the S2S interop harness: the loopback DNS server and the Prosody launcher.

If these fail, the interop tests' failures say nothing about Meridian.
"""

from __future__ import annotations

import asyncio
import threading

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from tests.helpers.dns import DnsServer


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
