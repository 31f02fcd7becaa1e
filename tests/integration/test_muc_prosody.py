"""MUC interop with Debian's Prosody 0.12 over S2S (dialback over TLS, every name found through SRV
records on a loopback DNS server): a Prosody user joins a room of ``conference.eu1.example.com``,
gets its history and subject, and chats with the Meridian user who made it; that Meridian user
joins a room of Prosody's own MUC component (``conference.prosody.example.org``, Prosody's
``muc`` module) and chats there.  The Meridian gateway serves the MUC subdomain over S2S
(``s2s.service_domains``)."""

from __future__ import annotations

import asyncio
import ssl
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from slixmpp import JID

from gateway.link.tls import issue_cert, make_ca
from tests.helpers.cluster import SECRET, system_info, wait_until
from tests.helpers.dns import DnsServer
from tests.helpers.node import NodeProcess
from tests.helpers.ports import free_port
from tests.helpers.prosody import ProsodyServer, prosody_binary, unbound_available
from tests.helpers.redis import RedisServer, redis_server_binary
from tests.helpers.regions import GatewayProcess

from .test_muc import MucClient, create
from .test_s2s_prosody import MERIDIAN, PASSWORD, PROSODY, s2s_settings

SERVICE = f"conference.{MERIDIAN}"
PROSODY_MUC = f"conference.{PROSODY}"

pytestmark = pytest.mark.skipif(
    prosody_binary() is None or not unbound_available() or redis_server_binary() is None,
    reason="Debian packages prosody, lua-unbound, redis-server not installed (scripts/install-test-deps.sh)")


class World:
    def __init__(self, node: NodeProcess, gateway: GatewayProcess, prosody: ProsodyServer) -> None:
        self.node, self.gateway, self.prosody = node, gateway, prosody

    async def meridian(self) -> MucClient:
        name = f"m{uuid.uuid4().hex[:8]}"
        self.node.register(name, PASSWORD, MERIDIAN)
        c = MucClient(self.node, f"{name}@{MERIDIAN}/muc", PASSWORD)
        await c.online(self.node.port, roster=False)
        return c

    async def prosody_user(self) -> MucClient:
        name = f"p{uuid.uuid4().hex[:8]}"
        self.prosody.register(name, PASSWORD)
        c = MucClient(self.node, f"{name}@{PROSODY}/muc", PASSWORD)
        c.ssl_context = ssl.create_default_context(cafile=str(self.prosody.ca_cert))  # Prosody's CA
        await c.online(self.prosody.c2s_port, roster=False)
        return c

    def dump_logs(self) -> None:
        for name, text in (("prosody", self.prosody.log()), ("gateway", self.gateway.log()),
                           ("node", self.node.log())):
            print(f"===== {name} =====\n{text[-20000:]}", file=sys.stderr)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base: Path = tmp_path_factory.mktemp("muc-prosody")
    meridian_ca = make_ca(base / "meridian-ca", name="Meridian test CA")
    peer_ca = make_ca(base / "peer-ca", name="peer test CA")  # nobody verifies the other: dialback
    gw_cert, gw_key = issue_cert(*meridian_ca, base / "certs", MERIDIAN, [MERIDIAN, SERVICE])
    link_cert, link_key = issue_cert(*meridian_ca, base / "certs", "eu1-gw1", ["127.0.0.1"])
    s2s_port = free_port()
    with DnsServer() as dns, RedisServer() as redis_server:
        for name in (MERIDIAN, SERVICE):
            dns.add_srv(f"_xmpp-server._tcp.{name}", f"gw.{MERIDIAN}", s2s_port)
        dns.add_a(f"gw.{MERIDIAN}", "127.0.0.1")
        prosody = ProsodyServer(PROSODY, ca=peer_ca, dns=dns)
        # Prosody's MUC component, with a certificate in Prosody's directory (it runs as nobody)
        muc_cert, muc_key = issue_cert(*peer_ca, prosody.dir / "certs", PROSODY_MUC, [PROSODY_MUC])
        component = (f'Component "{PROSODY_MUC}" "muc"\n'
                     f'    ssl = {{ certificate = "{muc_cert}"; key = "{muc_key}" }}\n'
                     '    modules_enabled = { "tls"; "dialback" }\n'  # S2S to the component
                     '    restrict_room_creation = false\n')
        prosody.extra_config = component
        cluster = {"enabled": True, "secret": SECRET, "name": "eu1", "refresh_interval": 0.3,
                   "ping_interval": 0.3, "ping_timeout": 1.5}
        db = f"sqlite:///{base / 'eu1.db'}"
        node = NodeProcess(base / "n1", name="eu1-n1", domains=[MERIDIAN], storage_url=db,
                           settings={"cluster": {**cluster, "port": free_port()}})
        gd = {"local_host": "eu1",
              "connections": {"endpoints": [f"127.0.0.1:{free_port()}"], "ca_file": str(meridian_ca[0]),
                              "cert_file": str(link_cert), "key_file": str(link_key)},
              "redis": {"url": redis_server.url, "refresh_after": 5.0, "expire_after": 20.0}}
        s2s = {**s2s_settings(port=s2s_port, dns=dns, cert=gw_cert, key=gw_key, ca=meridian_ca[0], verify=False),
               "service_domains": [SERVICE]}
        gateway = GatewayProcess(base / "gw1", name="eu1-gw1", domains=[MERIDIAN], storage_url=db,
                                 settings={"cluster": {**cluster, "port": free_port()}, "gdistrib": gd, "s2s": s2s})
        try:
            with prosody:
                dns.add_srv(f"_xmpp-server._tcp.{PROSODY_MUC}", PROSODY, prosody.s2s_port)
                node.start()
                gateway.start()
                names = sorted([node.name, gateway.name])
                for p in (node, gateway):
                    wait_until(lambda p=p: system_info(p)["joinedNodes"] == names, 30, f"{p.name} joined")
                yield World(node, gateway, prosody)
        finally:
            gateway.stop()
            node.stop()
        for p in (node, gateway):
            assert "Traceback" not in p.log(), p.log()


async def test_a_prosody_user_joins_a_meridian_room_and_back(world: World) -> None:
    alice, pat = await world.meridian(), await world.prosody_user()
    room = JID(f"lobby{uuid.uuid4().hex[:4]}@{SERVICE}")
    try:
        await create(alice, room, "Alice", **{"muc#roomconfig_roomname": "Federated"})
        alice.muc.set_subject(room, "With Prosody")
        alice.send_message(mto=room, mbody="before pat", mtype="groupchat")
        await alice.said("before pat")
        pres, subject, _, history = await pat.muc.join_muc_wait(room, "Pat", timeout=45)
        assert 110 in pres["muc"]["status_codes"] and subject["subject"] == "With Prosody"
        assert [h["body"] for h in history] == ["before pat"]
        joined = await alice.presence_of("Pat", timeout=15)
        assert str(joined["muc"]["jid"].bare) == str(pat.boundjid.bare)  # alice owns the room: real JIDs
        pat.send_message(mto=room, mbody="hello from prosody", mtype="groupchat")
        msg = await alice.said("hello from prosody", timeout=15)
        assert msg["from"] == JID(f"{room}/Pat")
        await pat.said("hello from prosody", timeout=15)

        theirs = JID(f"hall{uuid.uuid4().hex[:4]}@{PROSODY_MUC}")
        await create(pat, theirs, "Pat")  # Prosody's own room, locked until configured
        await alice.muc.join_muc_wait(theirs, "Alice", timeout=45)
        alice.send_message(mto=theirs, mbody="visiting prosody", mtype="groupchat")
        await asyncio.gather(pat.said("visiting prosody", timeout=15), alice.said("visiting prosody", timeout=15))
    except BaseException:
        world.dump_logs()
        raise
    finally:
        await alice.close()
        await pat.close()
