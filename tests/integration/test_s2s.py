"""S2S federation between two Meridian regions with different domains.

Region eu1 serves ``eu1.example.com``, region us1 ``us1.example.com``; each is one node and one
gateway (its own SQLite, its own Redis), and the gateways find each other through SRV records
served by a DNS server on loopback (:class:`tests.helpers.dns.DnsServer`), not a static map.
Certificates come from one test CA that both gateways trust (verification on).  slixmpp users on
both sides chat, subscribe to each other's presence and send IQs.  The streams first
authenticate with dialback (``sasl_external = false``); the last tests restart both gateways
with SASL EXTERNAL allowed and check it is what they use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.link.tls import issue_cert, make_ca
from tests.helpers.cluster import SECRET, poll, system_info
from tests.helpers.dns import DnsServer
from tests.helpers.node import ADMIN_PASSWORD, ADMIN_USER, NodeProcess
from tests.helpers.ports import free_port
from tests.helpers.redis import RedisServer, redis_server_binary
from tests.helpers.regions import GatewayProcess
from tests.helpers.xmpp_client import Client

PASSWORD = "secret-password"
EU, US = "eu1.example.com", "us1.example.com"


class Site:
    """One region with its own domain: a node and a gateway speaking S2S on ``s2s_port``."""

    def __init__(self, base: Path, name: str, domain: str, redis_url: str, dns: DnsServer,
                 s2s: dict[str, Any] | None = None, more_domains: dict[str, bool] | None = None,
                 gateway_settings: dict[str, Any] | None = None, node_settings: dict[str, Any] | None = None) -> None:
        """``more_domains``: other domains the site serves, each with a certificate of its own
        (``s2s.domain_certs``) when True, else with only the default one (naming ``domain``);
        ``gateway_settings``, ``node_settings``: more sections of the gateway's and the node's settings."""
        self.name, self.domain = name, domain
        more = more_domains or {}
        domains = [domain, *more]
        ca, ca_key = make_ca(base / "ca")
        self.ca = ca
        link_cert, link_key = issue_cert(ca, ca_key, base / "ca", f"{name}-gw", ["127.0.0.1"])
        self.s2s_cert, self.s2s_key = issue_cert(ca, ca_key, base / "ca", domain, [domain])
        domain_certs = {}
        for other, own in more.items():
            if own:
                cert, key = issue_cert(ca, ca_key, base / "ca", other, [other])
                domain_certs[other] = {"cert_file": str(cert), "key_file": str(key)}
        db = f"sqlite:///{base / name / 'db.sqlite'}"
        cluster = {"enabled": True, "secret": SECRET, "name": name, "refresh_interval": 0.3,
                   "ping_interval": 0.3, "ping_timeout": 1.5}
        self.node = NodeProcess(base / name / "n1", name=f"{name}-n1", domains=domains, storage_url=db,
                                settings={"cluster": {**cluster, "port": free_port()}, **(node_settings or {})})
        self.s2s_port, self.s2s_tls_port = free_port(), free_port()
        self.s2s: dict[str, Any] = {
            "enabled": True, "host": "127.0.0.1", "port": self.s2s_port, "tls_port": self.s2s_tls_port,
            "cert_file": str(self.s2s_cert),
            "key_file": str(self.s2s_key), "ca_file": str(ca), "nameservers": ["127.0.0.1"], "dns_port": dns.port,
            "sasl_external": False, "dialback": True, "connect_timeout": 5.0, "auth_timeout": 15.0, "retries": 2,
            "idle_timeout": 600.0,
            "retry_backoff": 0.2, **({"domain_certs": domain_certs} if domain_certs else {}), **(s2s or {})}
        gd = {"local_host": name, "connections": {
            "endpoints": [f"127.0.0.1:{free_port()}"], "ca_file": str(ca), "cert_file": str(link_cert),
            "key_file": str(link_key)}, "redis": {"url": redis_url}}
        self.gateway = GatewayProcess(base / name / "gw1", name=f"{name}-gw1", domains=domains, storage_url=db,
                                      settings={"cluster": {**cluster, "port": free_port()}, "gdistrib": gd,
                                                "s2s": self.s2s, **(gateway_settings or {})})
        for served in domains:
            dns.add_srv(f"_xmpp-server._tcp.{served}", f"xmpp.{served}", self.s2s_port)
            dns.add_a(f"xmpp.{served}", "127.0.0.1")

    def start(self) -> None:
        self.node.start()
        self.gateway.start()
        names = sorted([self.node.name, self.gateway.name])
        for p in (self.node, self.gateway):
            assert poll(lambda p=p: system_info(p)["joinedNodes"] == names, 20), p.log()

    def stop(self) -> None:
        self.gateway.stop()
        self.node.stop()

    def reconfigure_gateway(self, **s2s: Any) -> None:
        """Restart the gateway with changed [s2s] settings (no restart when none changes: each test
        states the settings it needs, whatever ran before it)."""
        if all(self.s2s[key] == value for key, value in s2s.items()):
            return
        self.gateway.stop()
        conf = self.gateway.config.read_text()
        for key, value in s2s.items():
            old = f"{key} = {json.dumps(self.s2s[key])}"
            assert old in conf, (old, conf)
            conf = conf.replace(old, f"{key} = {json.dumps(value)}")
            self.s2s[key] = value
        self.gateway.config.write_text(conf)
        self.gateway.start()
        names = sorted([self.node.name, self.gateway.name])
        assert poll(lambda: system_info(self.node)["joinedNodes"] == names, 20)

    def user(self, prefix: str, domain: str | None = None) -> str:
        name = f"{prefix}{uuid.uuid4().hex[:6]}"
        self.node.register(name, PASSWORD, domain or self.domain)
        return name

    def client(self, user: str, resource: str = "r", domain: str | None = None) -> Client:
        return Client(f"{user}@{domain or self.domain}/{resource}", PASSWORD, cert=self.node.cert)

    async def connections(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await ctl_query(self.gateway, "s2s", "connections")
        return result


def service_site(base: Path, name: str, domain: str, redis_url: str, dns: DnsServer, service: str,
                 **more: Any) -> Site:
    """A :class:`Site` whose gateway also speaks S2S for the subdomain ``service`` a module or
    component serves (``s2s.service_domains``): a certificate naming it, its DNS record.  ``more``:
    the other arguments of :class:`Site` (``node_settings``…)."""
    ca, ca_key = make_ca(base / "ca")  # the sites' CA (make_ca keeps the one it finds there)
    cert, key = issue_cert(ca, ca_key, base / "ca", f"{name}-{service.split('.')[0]}", [domain, service])
    site = Site(base, name, domain, redis_url, dns,
                s2s={"cert_file": str(cert), "key_file": str(key), "service_domains": [service]}, **more)
    dns.add_srv(f"_xmpp-server._tcp.{service}", f"xmpp.{domain}", site.s2s_port)
    return site


async def ctl_query(p: NodeProcess, category: str, op: str) -> Any:
    from cluster_node.net.control import query_control

    status, body = await query_control(p.workdir / "data" / "control.sock", category, op)
    assert status == 200, body
    return body["data"][category][op] if "data" in body else body



async def apoll(check, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


class World:
    def __init__(self, eu: Site, us: Site, dns: DnsServer) -> None:
        self.eu, self.us, self.dns = eu, us, dns


MakeSite = Callable[[Path, str, str, str, DnsServer], Site]  # (base, name, domain, redis_url, dns)


@contextmanager
def two_sites(base: Path, make: MakeSite = Site, dns: DnsServer | None = None) -> Iterator[World]:
    """eu1.example.com and us1.example.com, each a node and a gateway with its own Redis, federating
    over S2S through a DNS server of the test's (given, or started here); stopped at the end, and
    their logs checked for tracebacks.  ``make`` builds a site (more S2S settings, certificates)."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    with contextlib.ExitStack() as stack:
        if dns is None:
            dns = stack.enter_context(DnsServer())
        r1, r2 = stack.enter_context(RedisServer()), stack.enter_context(RedisServer())
        # Each site's ports are picked just before it starts (fewer chances for another process
        # to take one meanwhile).
        eu = make(base, "eu1", EU, r1.url, dns)
        us: Site | None = None
        try:
            eu.start()
            us = make(base, "us1", US, r2.url, dns)
            us.start()
            yield World(eu, us, dns)
        finally:
            eu.stop()
            if us is not None:
                us.stop()
        assert us is not None
        for p in (eu.node, eu.gateway, us.node, us.gateway):
            assert "Traceback" not in p.log(), p.log()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with two_sites(tmp_path_factory.mktemp("s2s")) as w:
        yield w


async def presences(c: Client, types: set[str], *, sender: str, timeout: float = 15.0) -> set[str]:
    seen: set[str] = set()
    while seen != types:
        p = await c.next_presence(None, timeout=timeout)
        if str(p["from"].bare) == sender and p["type"] in types:
            seen.add(p["type"])
    return seen


async def test_chat_both_ways_over_dialback(world: World) -> None:
    for site in (world.eu, world.us):
        site.reconfigure_gateway(sasl_external=False)
    alice, bob = world.eu.user("alice"), world.us.user("bob")
    a = await world.eu.client(alice, "laptop").online(world.eu.node.port)
    b = await world.us.client(bob, "phone").online(world.us.node.port)
    try:
        a.send_message(mto=f"{bob}@{US}/phone", mbody="hello from eu1", mtype="chat")
        m = await b.next_message(timeout=20)
        assert m["body"] == "hello from eu1" and str(m["from"]) == f"{alice}@{EU}/laptop"
        b.send_message(mto=f"{alice}@{EU}", mbody="hello from us1", mtype="chat")
        m = await a.next_message(timeout=20)
        assert m["body"] == "hello from us1" and str(m["from"]) == f"{bob}@{US}/phone"
        for i in range(5):  # the streams are reused and keep order
            a.send_message(mto=f"{bob}@{US}/phone", mbody=f"n{i}", mtype="chat")
        assert [(await b.next_message())["body"] for _ in range(5)] == [f"n{i}" for i in range(5)]
    finally:
        await a.close()
        await b.close()
    conns = await world.eu.connections()
    out = [c for c in conns if c["direction"] == "out" and c["peer"] == US]
    inc = [c for c in conns if c["direction"] == "in" and c["peer"] == US]
    assert len(out) == 1 and out[0]["auth"] == "dialback" and out[0]["tls"] and out[0]["localDomain"] == EU
    assert inc and inc[0]["auth"] == "dialback" and inc[0]["tls"]
    assert {"direction", "peer", "localDomain", "auth", "tls", "age", "queued"} <= set(out[0])
    # The same list on the admin GraphQL API, and counted in /metrics.
    status, body = await world.eu.gateway.admin(
        "{ s2s { connections { direction peer localDomain auth tls age queued } } }")
    assert status == 200, body
    listed = body["data"]["s2s"]["connections"]
    assert {"direction": "out", "peer": US, "localDomain": EU, "auth": "dialback", "tls": True,
            "queued": 0} == {k: v for k, v in next(c for c in listed if c["direction"] == "out").items() if k != "age"}
    status, text = await world.eu.gateway.http("GET", f"{world.eu.gateway.admin_url}/metrics",
                                               auth=(ADMIN_USER, ADMIN_PASSWORD))
    assert status == 200 and 'meridian_connections{type="s2s_out"} 1.0' in text, text
    # The gateways found each other through SRV records on the test's DNS server.
    assert ("_xmpp-server._tcp.us1.example.com.", "SRV") in world.dns.queries


async def test_messages_from_another_domain_a_member_never_read_are_routed_again(world: World) -> None:
    """A message arriving over S2S goes from the gateway that speaks S2S to the node holding the
    session.  That node stopped (reading nothing) and killed: the gateway kept the three messages
    until the node would say it read them, so they are routed again — to offline storage — and
    bob gets them, in order, once the node is back and he logs in."""
    alice, bob = world.eu.user("alice"), world.us.user("bob")
    node, gateway = world.us.node, world.us.gateway
    a = await world.eu.client(alice, "laptop").online(world.eu.node.port)
    b = await world.us.client(bob, "phone").online(node.port)
    clients = [a, b]
    try:
        a.send_message(mto=f"{bob}@{US}/phone", mbody="before", mtype="chat")  # the S2S streams up
        assert (await b.next_message(timeout=20))["body"] == "before"

        async def metric(name: str) -> float:
            status, text = await gateway.http("GET", f"{gateway.admin_url}/metrics", auth=(ADMIN_USER, ADMIN_PASSWORD))
            assert status == 200, text
            line = next((x for x in text.splitlines() if x.startswith(name + " ")), f"{name} 0")
            return float(line.split()[1])

        rerouted = await metric("meridian_cluster_unread_rerouted_total")
        assert node.proc is not None
        node.proc.send_signal(signal.SIGSTOP)
        try:
            for k in (1, 2, 3):
                a.send_message(mto=f"{bob}@{US}/phone", mbody=f"unread {k}", mtype="chat")
            deadline = time.monotonic() + 10
            while await metric("meridian_cluster_unread_kept") < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            node.proc.kill()  # kill -9 of the stopped node: what it had not read dies unread
            node.proc.wait()
        assert poll(lambda: system_info(gateway)["joinedNodes"] == [gateway.name], 20), gateway.log()
        deadline = time.monotonic() + 10
        while await metric("meridian_cluster_unread_rerouted_total") < rerouted + 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await metric("meridian_cluster_unread_rerouted_total") == rerouted + 3, gateway.log()

        await asyncio.to_thread(node.start)
        names = sorted([node.name, gateway.name])
        assert poll(lambda: system_info(node)["joinedNodes"] == names, 20), node.log()
        b2 = await world.us.client(bob, "tablet").online(node.port)
        clients.append(b2)
        got = [await b2.next_message(timeout=20) for _ in range(3)]
        assert [m["body"] for m in got] == ["unread 1", "unread 2", "unread 3"]
        assert all(m["delay"]["stamp"] for m in got)  # from offline storage
        assert all(str(m["from"]) == f"{alice}@{EU}/laptop" for m in got)
    finally:
        for c in clients:
            await c.close()
        if not node.alive():
            await asyncio.to_thread(node.start)


async def test_presence_subscription_both_ways(world: World) -> None:
    alice, bob = world.eu.user("alice"), world.us.user("bob")
    a = await world.eu.client(alice, "laptop").online(world.eu.node.port)
    b = await world.us.client(bob, "phone").online(world.us.node.port)
    try:
        a.send_presence(pto=f"{bob}@{US}", ptype="subscribe")
        p = await b.next_presence("subscribe", timeout=20)
        assert str(p["from"].bare) == f"{alice}@{EU}"
        b.send_presence(pto=f"{alice}@{EU}", ptype="subscribed")
        assert await presences(a, {"subscribed", "available"}, sender=f"{bob}@{US}") == {"subscribed", "available"}
        b.send_presence(pto=f"{alice}@{EU}", ptype="subscribe")
        await a.next_presence("subscribe", sender=f"{bob}@{US}", timeout=20)
        a.send_presence(pto=f"{bob}@{US}", ptype="subscribed")
        assert "available" in await presences(b, {"available"}, sender=f"{alice}@{EU}")
        b.send_presence(pshow="away", pstatus="over S2S")
        p = await a.next_presence(None, sender=f"{bob}@{US}", timeout=20)
        while p["status"] != "over S2S":
            p = await a.next_presence(None, sender=f"{bob}@{US}", timeout=20)
        assert p["show"] == "away"
        roster = await a.get_roster()
        items = {str(jid): item for jid, item in roster["roster"]["items"].items()}
        assert a.client_roster[f"{bob}@{US}"]["subscription"] == "both", (items, roster)
    finally:
        await a.close()
        await b.close()


async def test_iq_both_ways(world: World) -> None:
    alice, bob = world.eu.user("alice"), world.us.user("bob")
    a = await world.eu.client(alice, "laptop").online(world.eu.node.port)
    b = await world.us.client(bob, "phone").online(world.us.node.port)
    try:
        await a.plugin["xep_0199"].ping(f"{bob}@{US}/phone", timeout=20)
        version = await b.plugin["xep_0092"].get_version(f"{alice}@{EU}/laptop", timeout=20)
        assert version["software_version"]["name"]
        info = await a.plugin["xep_0030"].get_info(jid=US, timeout=20)  # the other server itself
        assert "urn:xmpp:ping" in info["disco_info"]["features"]
    finally:
        await a.close()
        await b.close()


async def test_unknown_domain_bounces_remote_server_not_found(world: World) -> None:
    alice = world.eu.user("alice")
    a = await world.eu.client(alice).online(world.eu.node.port)
    try:
        a.send_message(mto="nobody@nowhere.example.com", mbody="lost", mtype="chat")
        m = await a.next_message(timeout=20, body=False)
        while m["type"] != "error":
            m = await a.next_message(timeout=20, body=False)
        assert m["error"]["condition"] == "remote-server-not-found"
    finally:
        await a.close()


async def test_sasl_external_when_both_allow_it(world: World) -> None:
    for site in (world.eu, world.us):
        site.reconfigure_gateway(sasl_external=True)
    alice, bob = world.eu.user("alice"), world.us.user("bob")
    a = await world.eu.client(alice, "laptop").online(world.eu.node.port)
    b = await world.us.client(bob, "phone").online(world.us.node.port)
    try:
        a.send_message(mto=f"{bob}@{US}/phone", mbody="external eu->us", mtype="chat")
        assert (await b.next_message(timeout=20))["body"] == "external eu->us"
        b.send_message(mto=f"{alice}@{EU}/laptop", mbody="external us->eu", mtype="chat")
        assert (await a.next_message(timeout=20))["body"] == "external us->eu"
        a.send_presence(pto=f"{bob}@{US}", ptype="subscribe")
        await b.next_presence("subscribe", sender=f"{alice}@{EU}", timeout=20)
    finally:
        await a.close()
        await b.close()
    for site, peer in ((world.eu, US), (world.us, EU)):
        conns = await site.connections()
        out = [c for c in conns if c["direction"] == "out" and c["peer"] == peer]
        inc = [c for c in conns if c["direction"] == "in" and c["peer"] == peer]
        assert out and out[0]["auth"] == "external", conns
        assert inc and inc[0]["auth"] == "external", conns


async def test_dialback_off_and_no_sasl_external_means_no_stream(world: World) -> None:
    """``dialback = false`` with SASL EXTERNAL off on both sides: eu1 has no way to authenticate,
    so it opens no stream and alice's message bounces (not delivered, not silently dropped)."""
    for site in (world.eu, world.us):
        site.reconfigure_gateway(sasl_external=False)
    world.eu.reconfigure_gateway(dialback=False)
    try:
        alice, bob = world.eu.user("alice"), world.us.user("bob")
        a = await world.eu.client(alice).online(world.eu.node.port)
        b = await world.us.client(bob).online(world.us.node.port)
        try:
            a.send_message(mto=f"{bob}@{US}/r", mbody="no way across", mtype="chat")
            err = await a.next_message(timeout=30, body=False)
            assert err["type"] == "error", err
            assert err["error"]["condition"] in ("remote-server-not-found", "remote-server-timeout"), err
            with pytest.raises(TimeoutError):
                await b.next_message(timeout=1)
        finally:
            await a.close()
            await b.close()
        assert f"no authentication method in common with {US}" in world.eu.gateway.log()
        assert not [c for c in await world.eu.connections() if c["direction"] == "out" and c["peer"] == US]
    finally:
        world.eu.reconfigure_gateway(dialback=True)


async def test_idle_outgoing_stream_is_closed_and_reopened(world: World) -> None:
    world.eu.reconfigure_gateway(idle_timeout=2.0)
    alice, bob = world.eu.user("alice"), world.us.user("bob")
    a = await world.eu.client(alice).online(world.eu.node.port)
    b = await world.us.client(bob).online(world.us.node.port)
    try:
        a.send_message(mto=f"{bob}@{US}/r", mbody="first", mtype="chat")
        assert (await b.next_message(timeout=20))["body"] == "first"

        async def outgoing() -> list[dict[str, Any]]:
            return [c for c in await world.eu.connections() if c["direction"] == "out" and c["peer"] == US]

        # "first" crossed, so eu1 had an outgoing stream; it may already have idled out (2 s) on a
        # loaded machine, so it is not asserted listed here.
        deadline = time.monotonic() + 20
        while await outgoing() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert not await outgoing(), "the idle stream was not closed"
        opened = f"s2s in: {EU} "  # us1 logs each stream eu1 opens (verified by dialback / authenticated)
        before = world.us.gateway.log_path.read_text().count(opened)
        a.send_message(mto=f"{bob}@{US}/r", mbody="second", mtype="chat")
        assert (await b.next_message(timeout=20))["body"] == "second"
        # A new stream carried it (the reopened one may idle out again at once: not asserted listed).
        assert world.us.gateway.log_path.read_text().count(opened) > before
    finally:
        await a.close()
        await b.close()
    assert "idle for 2 s: closing" in world.eu.gateway.log()
    listed = json.loads(world.eu.gateway.ctl("s2s", "connections").stdout)  # meridian ctl s2s connections
    assert all({"direction", "peer", "auth"} <= set(c) for c in listed["data"]["s2s"]["connections"]), listed


async def test_direct_tls_when_srv_says_xmpps(world: World) -> None:
    """XEP-0368: an _xmpps-server record of higher priority takes eu1 to us1's direct TLS port."""
    # SASL EXTERNAL on both sides; eu1's streams opened before the record must idle out.
    world.eu.reconfigure_gateway(sasl_external=True, idle_timeout=2.0)
    world.us.reconfigure_gateway(sasl_external=True)
    world.dns.add_srv(f"_xmpps-server._tcp.{US}", f"xmpp.{US}", world.us.s2s_tls_port)
    try:
        alice, bob = world.eu.user("alice"), world.us.user("bob")
        a = await world.eu.client(alice).online(world.eu.node.port)
        b = await world.us.client(bob).online(world.us.node.port)
        try:
            async def outgoing() -> list[dict[str, Any]]:
                return [c for c in await world.eu.connections() if c["direction"] == "out" and c["peer"] == US]

            assert await apoll_async(lambda: outgoing(), lambda conns: not conns, 20), "eu1 still has a stream"
            a.send_message(mto=f"{bob}@{US}/r", mbody="direct", mtype="chat")
            assert (await b.next_message(timeout=20))["body"] == "direct"
        finally:
            await a.close()
            await b.close()
        assert (await outgoing())[0]["tls"]
        assert any(f"{EU} authenticated to {US} by external" in line and "direct TLS" in line
                   for line in world.us.gateway.log().splitlines())
    finally:
        world.dns.remove(f"_xmpps-server._tcp.{US}")


async def apoll_async(get, done, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done(await get()):
            return True
        await asyncio.sleep(0.2)
    return False


async def test_resolver_against_the_loopback_dns() -> None:
    """SRV (direct TLS and STARTTLS, by priority), the A/AAAA fallback on 5269, the static map,
    '.' for no service — through real DNS queries (no processes needed)."""
    from gateway.s2s.resolver import ResolveError, S2SResolver, Target

    with DnsServer() as dns:
        dns.add_srv("_xmpp-server._tcp.a.test", "s2.a.test", 5270, priority=20)
        dns.add_srv("_xmpps-server._tcp.a.test", "s1.a.test", 5271, priority=10)
        dns.add_a("s1.a.test", "127.0.0.11")
        dns.add_a("s2.a.test", "127.0.0.12")
        dns.add_aaaa("s2.a.test", "::1")
        dns.add_a("b.test", "127.0.0.13")
        dns.add_srv("_xmpp-server._tcp.none.test", ".", 0)
        resolver = S2SResolver(nameservers=["127.0.0.1"], port=dns.port, static={"c.test": "127.0.0.14:6000"})
        assert await resolver.resolve("a.test") == [
            Target("127.0.0.11", 5271, True, "s1.a.test"), Target("::1", 5270, False, "s2.a.test"),
            Target("127.0.0.12", 5270, False, "s2.a.test")]
        assert await resolver.resolve("b.test") == [Target("127.0.0.13", 5269, False, "b.test")]
        assert await resolver.resolve("c.test") == [Target("127.0.0.14", 6000, False, "c.test")]
        for missing in ("none.test", "nowhere.test"):
            with pytest.raises(ResolveError):
                await resolver.resolve(missing)


# -- a shared domain served by two regions, federating with a third domain ----------------------

class SharedWorld:
    def __init__(self, regions: list[Any], fed: Site, dns: DnsServer) -> None:
        self.regions, self.fed, self.dns = regions, fed, dns


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedWorld]:
    """Regions eu and us both serve example.com (one database, one Redis, inter-region links);
    its SRV record names eu's gateway only.  us1.example.com is a third, federated site."""
    from tests.helpers.node import toml_dump
    from tests.helpers.regions import DOMAIN, make_region

    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    base = tmp_path_factory.mktemp("s2s-shared")
    with DnsServer() as dns, RedisServer() as redis, RedisServer() as fed_redis:
        db = f"sqlite:///{base / 'shared.db'}"
        regions = [make_region(base, name, storage_url=db, redis_url=redis.url, nodes=1) for name in ("eu", "us")]
        ca, ca_key = make_ca(base / "ca")
        for region in regions:
            gw = region.gateways[0]
            cert, key = issue_cert(ca, ca_key, base / "ca", f"{region.name}-s2s", [DOMAIN])
            gw.s2s_port = free_port()  # type: ignore[attr-defined]
            s2s = {"enabled": True, "host": "127.0.0.1", "port": gw.s2s_port,  # type: ignore[attr-defined]
                   "cert_file": str(cert), "key_file": str(key), "ca_file": str(ca), "nameservers": ["127.0.0.1"],
                   "dns_port": dns.port, "sasl_external": False, "auth_timeout": 15.0, "retries": 2}
            gw.config.write_text(gw.config.read_text() + toml_dump({"s2s": s2s}))
        dns.add_srv(f"_xmpp-server._tcp.{DOMAIN}", f"gw.eu.{DOMAIN}", regions[0].gateways[0].s2s_port)
        dns.add_a(f"gw.eu.{DOMAIN}", "127.0.0.1")
        fed: Site | None = None
        try:
            for region in regions:
                region.start()
            for region in regions:
                names = sorted(p.name for p in region.processes)
                for p in region.processes:
                    assert poll(lambda p=p, names=names: system_info(p)["joinedNodes"] == names, 20), p.log()
            fed = Site(base, "fed", US, fed_redis.url, dns)  # its ports picked just before it starts
            fed.start()
            yield SharedWorld(regions, fed, dns)
        finally:
            if fed is not None:
                fed.stop()
            for region in regions:
                region.stop()
        assert fed is not None
        for p in [fed.node, fed.gateway, *(q for r in regions for q in r.processes)]:
            assert "Traceback" not in p.log(), p.log()


async def test_s2s_into_a_shared_domain_reaches_the_region_holding_the_user(shared: SharedWorld) -> None:
    from tests.helpers.regions import DOMAIN

    eu, us = shared.regions
    name = f"u{uuid.uuid4().hex[:6]}"
    eu.nodes[0].register(name, PASSWORD, DOMAIN)
    carol = shared.fed.user("carol")
    u = await Client(f"{name}@{DOMAIN}/r", PASSWORD, cert=us.nodes[0].cert).online(us.nodes[0].port)
    c = await shared.fed.client(carol).online(shared.fed.node.port)
    try:
        def mapped() -> bool:
            out = json.loads(eu.gateways[0].ctl("gdistrib", "lookup", "--jid", f"{name}@{DOMAIN}").stdout)
            return bool(out["data"]["gdistrib"]["lookup"].get("r"))

        assert await apoll(mapped, 15), "the user's session is not published"
        # In through eu's gateway (the SRV target), relayed to region us, where the user is.
        c.send_message(mto=f"{name}@{DOMAIN}/r", mbody="via eu", mtype="chat")
        m = await u.next_message(timeout=20)
        assert m["body"] == "via eu" and str(m["from"]) == f"{carol}@{US}/r"
        # Out through us's own gateway: dialback verified by eu's gateway (the shared secret).
        u.send_message(mto=f"{carol}@{US}/r", mbody="from us region", mtype="chat")
        assert (await c.next_message(timeout=20))["body"] == "from us region"
    finally:
        await u.close()
        await c.close()
    us_log = us.gateways[0].log()
    assert f"s2s {DOMAIN} -> {US} up (dialback" in us_log, us_log
    assert f"s2s in: {US} verified by dialback for {DOMAIN}" in eu.gateways[0].log()
