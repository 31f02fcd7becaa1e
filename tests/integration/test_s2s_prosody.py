"""Interop: Meridian federates with Debian's Prosody 0.12 over standard S2S.

One Meridian region serving ``eu1.example.com`` (a node, a gateway that is its S2S edge, a Redis for
the gateway's mapping) and one Prosody serving ``prosody.example.org``.  Each finds the other only
through SRV records served by a :class:`~tests.helpers.dns.DnsServer` on loopback (not a static host
map).  A slixmpp user on each side subscribes to the other's presence and they chat, both ways.

Two set-ups, one module-scoped world each:
- ``dialback``: every server has its own CA and trusts no one else's, Meridian with its logged
  verification opt-out, so neither side can check a certificate and XEP-0220 dialback authenticates;
- ``sasl-external``: one CA for everyone, Prosody with ``s2s_secure_auth`` and without mod_dialback,
  so XEP-0178 SASL EXTERNAL is the only way in, and Meridian verifies Prosody's certificate.
Which method was used is checked on both sides (Prosody's log, Meridian's ``s2s connections``).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from cluster_node.net.control import query_control
from gateway.link.tls import issue_cert, make_ca
from tests.helpers.cluster import SECRET, system_info, wait_until
from tests.helpers.dns import DnsServer
from tests.helpers.node import NodeProcess
from tests.helpers.ports import free_port
from tests.helpers.prosody import ProsodyServer, prosody_binary, unbound_available
from tests.helpers.redis import RedisServer, redis_server_binary
from tests.helpers.regions import GatewayProcess
from tests.helpers.xmpp_client import Client

MERIDIAN = "eu1.example.com"
PROSODY = "prosody.example.org"
PASSWORD = "interop-secret"

pytestmark = pytest.mark.skipif(
    prosody_binary() is None or not unbound_available() or redis_server_binary() is None,
    reason="Debian packages prosody, lua-unbound, redis-server not installed (scripts/install-test-deps.sh)")


def s2s_settings(*, port: int, dns: DnsServer, cert: Path, key: Path, ca: Path, verify: bool) -> dict[str, Any]:
    """The gateway's ``[s2s]`` section (gateway/s2s/README.md): listener, certificate for our domain,
    resolver pointed at the test's DNS server, certificate verification on or the logged opt-out
    (which also turns SASL EXTERNAL off).  Short timeouts and few retries: a failure shows quickly."""
    return {
        "enabled": True, "host": "127.0.0.1", "port": port, "cert_file": str(cert), "key_file": str(key),
        "ca_file": str(ca), "verify": verify, "nameservers": ["127.0.0.1"], "dns_port": dns.port,
        "connect_timeout": 5.0, "auth_timeout": 20.0, "retries": 2, "retry_backoff": 0.2,
    }


class Peer(Protocol):
    """What the interop tests need of a peer server (ProsodyServer, EjabberdServer)."""

    host: str
    ca_cert: Path
    c2s_port: int

    def register(self, user: str, password: str) -> None: ...
    def log(self) -> str: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, exc_type: object, *exc: Any) -> None: ...


# (CA of the peer's certificate, DNS server, SASL EXTERNAL only?) -> a peer, not started yet
PeerFactory = Callable[[tuple[Path, Path], DnsServer, bool], Peer]


@dataclass
class World:
    method: str
    dns: DnsServer
    peer: Peer
    node: NodeProcess
    gateway: GatewayProcess

    def meridian_user(self) -> str:
        name = f"m{uuid.uuid4().hex[:8]}"
        self.node.register(name, PASSWORD, MERIDIAN)
        return name

    def peer_user(self) -> str:
        name = f"p{uuid.uuid4().hex[:8]}"
        self.peer.register(name, PASSWORD)
        return name

    async def meridian_client(self, user: str) -> Client:
        return await Client(f"{user}@{MERIDIAN}/interop", PASSWORD, cert=self.node.cert).online(self.node.port)

    async def peer_client(self, user: str) -> Client:
        return await Client(f"{user}@{self.peer.host}/interop", PASSWORD,
                            cert=self.peer.ca_cert).online(self.peer.c2s_port)

    def dump_logs(self) -> None:
        """On failure: what each server said (pytest shows captured stderr of a failed test)."""
        for name, text in (("peer", self.peer.log()), ("gateway", self.gateway.log()), ("node", self.node.log())):
            print(f"===== {name} =====\n{text[-20000:]}", file=sys.stderr)

    async def connections(self) -> list[dict[str, Any]]:
        """The gateway's S2S streams, from its control socket (what ``meridian ctl`` asks)."""
        status, body = await query_control(self.gateway.workdir / "data" / "control.sock", "s2s", "connections")
        assert status == 200, body
        return list(body["data"]["s2s"]["connections"])


def start_world(base: Path, method: str, make_peer: PeerFactory, *,
                srv_target: str = f"gw.{MERIDIAN}") -> Iterator[World]:
    """A Meridian region for ``eu1.example.com`` and a peer, federating through a DnsServer.

    ``dialback``: the peer gets its own CA and does not trust Meridian's; Meridian uses its logged
    verification opt-out.  ``sasl-external``: one CA for both, verification on.  ``srv_target``
    names the host in Meridian's SRV record (ejabberd needs one that libc resolves)."""
    external = method == "sasl-external"
    meridian_ca = make_ca(base / "meridian-ca", name="Meridian test CA")
    peer_ca = meridian_ca if external else make_ca(base / "peer-ca", name="peer test CA")
    gw_cert, gw_key = issue_cert(*meridian_ca, base / "certs", MERIDIAN, [MERIDIAN])
    link_cert, link_key = issue_cert(*meridian_ca, base / "certs", "eu1-gw1", ["127.0.0.1"])
    s2s_port = free_port()
    with DnsServer() as dns, RedisServer() as redis_server:
        dns.add_srv(f"_xmpp-server._tcp.{MERIDIAN}", srv_target, s2s_port)
        dns.add_a(srv_target, "127.0.0.1")
        peer = make_peer(peer_ca, dns, external)
        cluster = {"enabled": True, "secret": SECRET, "name": "eu1", "refresh_interval": 0.3,
                   "ping_interval": 0.3, "ping_timeout": 1.5}
        db = f"sqlite:///{base / 'eu1.db'}"
        node = NodeProcess(base / "n1", name="eu1-n1", domains=[MERIDIAN], storage_url=db,
                           settings={"cluster": {**cluster, "port": free_port()}})
        gd = {"local_host": "eu1",
              "connections": {"endpoints": [f"127.0.0.1:{free_port()}"], "ca_file": str(meridian_ca[0]),
                              "cert_file": str(link_cert), "key_file": str(link_key)},
              "redis": {"url": redis_server.url, "refresh_after": 5.0, "expire_after": 20.0}}
        s2s = s2s_settings(port=s2s_port, dns=dns, cert=gw_cert, key=gw_key,
                           ca=meridian_ca[0], verify=external)
        gateway = GatewayProcess(base / "gw1", name="eu1-gw1", domains=[MERIDIAN], storage_url=db,
                                 settings={"cluster": {**cluster, "port": free_port()}, "gdistrib": gd, "s2s": s2s})
        try:
            with peer:
                node.start()
                gateway.start()
                names = sorted([node.name, gateway.name])
                for p in (node, gateway):
                    wait_until(lambda p=p: system_info(p)["joinedNodes"] == names, 30, f"{p.name} joined")
                yield World(method, dns, peer, node, gateway)
        finally:
            gateway.stop()
            node.stop()
        for p in (node, gateway):
            assert "Traceback" not in p.log(), p.log()


def _prosody(ca: tuple[Path, Path], dns: DnsServer, external: bool) -> ProsodyServer:
    return ProsodyServer(PROSODY, ca=ca, dns=dns, dialback=not external, secure_auth=external)


@pytest.fixture(scope="module", params=["dialback", "sasl-external"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from start_world(tmp_path_factory.mktemp(f"s2s-prosody-{request.param}"), request.param, _prosody)


async def subscribe(asker: Client, asker_jid: str, owner: Client, owner_jid: str) -> None:
    """RFC 6121 §3.1: ``asker`` asks ``owner`` (on the other server); owner approves; asker gets
    ``subscribed`` and then owner's available presence, all over S2S."""
    asker.send_presence(pto=owner_jid, ptype="subscribe")
    request = await owner.next_presence("subscribe", sender=asker_jid, timeout=30)
    assert str(request["from"].bare) == asker_jid
    owner.send_presence(pto=asker_jid, ptype="subscribed")
    # the owner's server sends the owner's current presence right after ``subscribed`` (RFC 6121
    # §3.1.5); the asker may see the two in either order (Meridian delivers ``subscribed`` after
    # its roster update), so collect both
    seen: set[str] = set()
    while seen != {"subscribed", "available"}:
        presence = await asker.next_presence(None, sender=owner_jid, timeout=30)
        if presence["type"] in ("subscribed", "available"):
            seen.add(presence["type"])


async def chat(sender: Client, receiver: Client, receiver_jid: str, sender_jid: str, body: str) -> None:
    sender.send_message(mto=receiver_jid, mbody=body, mtype="chat")
    msg = await receiver.next_message(30)
    assert (msg["body"], str(msg["from"].bare)) == (body, sender_jid)


async def exchange_both_ways(world: World) -> list[dict[str, Any]]:
    """Chat, mutual presence subscription and a presence change, each started from both sides;
    returns Meridian's S2S streams with the peer (checked: one in, one out, TLS, the right method)."""
    peer_domain = world.peer.host
    m_user, p_user = world.meridian_user(), world.peer_user()
    m_jid, p_jid = f"{m_user}@{MERIDIAN}", f"{p_user}@{peer_domain}"
    m = await world.meridian_client(m_user)
    p = await world.peer_client(p_user)
    try:
        # Meridian → peer first: the gateway resolves the peer's SRV and dials out
        await chat(m, p, p_jid, m_jid, "hello from meridian")
        await chat(p, m, m_jid, p_jid, "hello from the peer")
        await subscribe(m, m_jid, p, p_jid)
        await subscribe(p, p_jid, m, m_jid)
        # subscribed both ways: a presence change reaches the other side
        p.send_presence(pstatus="busy", pshow="dnd")
        changed = await m.next_presence(None, sender=p_jid, timeout=30)
        while changed["show"] != "dnd":
            changed = await m.next_presence(None, sender=p_jid, timeout=30)
        m.send_presence(pstatus="away", pshow="away")
        changed = await p.next_presence(None, sender=m_jid, timeout=30)
        while changed["show"] != "away":
            changed = await p.next_presence(None, sender=m_jid, timeout=30)
    except BaseException:
        world.dump_logs()
        raise
    finally:
        await m.close()
        await p.close()

    assert (f"_xmpp-server._tcp.{peer_domain}.", "SRV") in world.dns.queries
    assert (f"_xmpp-server._tcp.{MERIDIAN}.", "SRV") in world.dns.queries
    streams = [c for c in await world.connections() if c["peer"] == peer_domain]
    assert {c["direction"] for c in streams} == {"in", "out"}, streams
    expected = "external" if world.method == "sasl-external" else "dialback"
    for c in streams:
        assert c["auth"] == expected and c["tls"] is True and c["localDomain"] == MERIDIAN, c
    return streams


async def test_messages_and_subscriptions_both_ways(world: World) -> None:
    await exchange_both_ways(world)
    assert isinstance(world.peer, ProsodyServer)
    log = world.peer.log_path.read_text()
    if world.method == "sasl-external":
        assert f"Accepting SASL EXTERNAL identity from {MERIDIAN}" in log
        assert f"SASL EXTERNAL with {MERIDIAN} succeeded" in log
    else:
        # Meridian → Prosody: Prosody asks Meridian (the authoritative server) to verify the key
        assert f"asking {MERIDIAN} if key" in log
        # Prosody → Meridian: Meridian asks Prosody to verify Prosody's key
        assert "verified dialback key... it is valid" in log
        assert "SASL EXTERNAL identity" not in log and f"SASL EXTERNAL with {MERIDIAN} succeeded" not in log
    # both directions authenticated on Prosody's side (incoming: Meridian proved itself; outgoing: we did)
    authenticated = [line for line in log.splitlines() if "is now authenticated" in line]
    assert any(f"{MERIDIAN}->{PROSODY}" in line for line in authenticated), authenticated
    assert any(f"{PROSODY}->{MERIDIAN}" in line for line in authenticated), authenticated


async def test_subscribed_arrives_before_the_presence_that_follows_it(world: World) -> None:
    """Prosody sends ``subscribed`` and then the owner's presence on one stream; the asker sees
    them in that order (RFC 6120 §10.1).  The gateway used to queue them apart (the first from the
    bare JID, the second from a full one) and the presence overtook the roster update."""
    m_user, p_user = world.meridian_user(), world.peer_user()
    m_jid, p_jid = f"{m_user}@{MERIDIAN}", f"{p_user}@{world.peer.host}"
    m = await world.meridian_client(m_user)
    p = await world.peer_client(p_user)
    try:
        m.send_presence(pto=p_jid, ptype="subscribe")
        await p.next_presence("subscribe", sender=m_jid, timeout=30)
        p.send_presence(pto=m_jid, ptype="subscribed")
        seen: list[str] = []
        while "subscribed" not in seen or "available" not in seen:
            seen.append((await m.next_presence(None, sender=p_jid, timeout=30))["type"])
        assert seen.index("subscribed") < seen.index("available"), seen
    finally:
        await m.close()
        await p.close()


async def test_a_prosody_user_reads_a_meridian_users_vcard(world: World) -> None:
    """XEP-0054 across servers: the Meridian user's vCard, asked by a Prosody user's client through
    Prosody, is answered by Meridian over S2S."""
    m_user, p_user = world.meridian_user(), world.peer_user()
    m_jid, p_jid = f"{m_user}@{MERIDIAN}", f"{p_user}@{world.peer.host}"
    m = Client(f"{m_jid}/vcard", PASSWORD, cert=world.node.cert)
    p = Client(f"{p_jid}/vcard", PASSWORD, cert=world.peer.ca_cert)
    for c in (m, p):
        c.register_plugin("xep_0054")
    try:
        await m.online(world.node.port)
        await p.online(world.peer.c2s_port)
        card = m.plugin["xep_0054"].stanza.VCardTemp()
        card["FN"] = "Meridian Person"
        await m.plugin["xep_0054"].publish_vcard(card, timeout=10)
        got = await p.plugin["xep_0054"].get_vcard(m_jid, timeout=30)
        assert got["vcard_temp"]["FN"] == "Meridian Person"
    except BaseException:
        world.dump_logs()
        raise
    finally:
        await m.close()
        await p.close()
