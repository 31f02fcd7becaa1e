"""Races between the members of a region, each made to happen every time by holding the cluster
link in a fault-injecting proxy at the wrong moment (tests/helpers/proxy.py)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cluster import SECRET, system_info, wait_until
from tests.helpers.node import NodeProcess
from tests.helpers.ports import free_ports
from tests.helpers.proxy import FaultProxy
from tests.helpers.topologies import check_logs
from tests.helpers.xmpp_raw import RawClient, local

pytestmark = pytest.mark.asyncio


SERVICE, SERVICE_SECRET = "svc.localhost", "component-secret"


def node(base: Path, name: str, cluster_port: int, db: str, advertise: str) -> NodeProcess:
    cluster = {"enabled": True, "secret": SECRET, "host": "127.0.0.1", "port": cluster_port, "advertise": advertise,
               "refresh_interval": 0.3, "ping_interval": 0.3, "ping_timeout": 2.0}
    components = {"port": free_ports(1)[0], "secrets": {SERVICE: SERVICE_SECRET}}
    return NodeProcess(base / name, name=name, storage_url=db, settings={"cluster": cluster, "components": components})


@pytest.fixture
def held_region(tmp_path: Path) -> Iterator[tuple[NodeProcess, NodeProcess, FaultProxy]]:
    """Nodes r1 and r2; r1 dials r2 (names sort so) at the address r2 advertises: a proxy's."""
    db = f"sqlite:///{tmp_path / 'region.db'}"
    p1, p2, pp = free_ports(3)
    proxy = FaultProxy("127.0.0.1", p2, port=pp).start()
    r1 = node(tmp_path, "r1", p1, db, f"127.0.0.1:{p1}")
    r2 = node(tmp_path, "r2", p2, db, proxy.address)
    r1.register("alice", "alice-pw")
    r1.register("bob", "bob-pw")
    try:
        r1.start()
        r2.start()
        wait_until(lambda: all(system_info(n)["joinedNodes"] == ["r1", "r2"] for n in (r1, r2)), 20, "joined")
        assert proxy.accepted >= 1, "the cluster link does not go through the proxy"
        yield r1, r2, proxy
    finally:
        proxy.heal()
        r1.stop()
        r2.stop()
        proxy.stop()
    check_logs(r1, r2)


async def test_bare_jid_message_never_goes_offline_while_a_presence_is_on_its_way(held_region) -> None:
    """bob is bound on r2 and sends his initial presence while the link to r1 is held; alice, on
    r1, writes to his bare JID.  r1's table still says bob is unavailable: before storing the
    message offline, r1 waits until r2 has answered on the link, so the presence has arrived and
    the message goes to bob's session at once (stored offline, he would get it only at his next
    login)."""
    r1, r2, proxy = held_region
    bob = RawClient(r2.port, r2.cert)
    await bob.start("bob", "bob-pw", "phone", sm=False)
    alice = RawClient(r1.port, r1.cert)
    await alice.start("alice", "alice-pw", "desk", sm=False)
    await asyncio.to_thread(proxy.partition, "blackhole")
    try:
        bob.send("<presence/>")
        await asyncio.sleep(0.3)  # r2 has handled it; its table change waits in the held link
        alice.send("<message to='bob@localhost' type='chat' id='race1'><body>are you there?</body></message>")
        await asyncio.sleep(0.5)
    finally:
        await asyncio.to_thread(proxy.heal)
    msg = await bob.next(lambda el: local(el) == "message", timeout=10)
    assert msg.get("id") == "race1" and msg.get("type") == "chat"
    await alice.close()
    await bob.close()


class RawComponent:
    """A XEP-0114 component over direct TLS, by hand."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.data = b""

    async def connect(self) -> str:
        """Handshake; the node's answer (``<handshake/>`` or a stream error)."""
        port = int(tomllib.loads(self.node.config.read_text())["components"]["port"])
        ctx = ssl.create_default_context(cafile=str(self.node.cert))
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                                 server_hostname="localhost")
        self.writer.write(f"<stream:stream xmlns='jabber:component:accept' "
                          f"xmlns:stream='http://etherx.jabber.org/streams' to='{SERVICE}'>".encode())
        header = await self.until(rb"<stream:stream[^>]*>")
        stream_id = re.search(rb"id=['\"]([^'\"]+)", header).group(1).decode()  # type: ignore[union-attr]
        digest = hashlib.sha1((stream_id + SERVICE_SECRET).encode()).hexdigest()
        self.writer.write(f"<handshake>{digest}</handshake>".encode())
        return (await self.until(rb"<handshake/>|</stream:error>")).decode()

    async def until(self, pattern: bytes, timeout: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout):
            while not re.search(pattern, self.data):
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise ConnectionError(f"closed; got {self.data!r}")
                self.data += chunk
        m = re.search(pattern, self.data)
        assert m is not None
        out, self.data = self.data[:m.end()], self.data[m.end():]
        return out

    def close(self) -> None:
        self.writer.close()


async def test_one_component_domain_claimed_on_two_members_at_once(held_region) -> None:
    """With the link held, the component connects to both members (each lets it in: the other's
    claim has not arrived).  Once the link carries the claims, every member keeps r1's (the
    routes table's rule) and r2 closes its connection with <conflict/>; r1's stays."""
    r1, r2, proxy = held_region
    await asyncio.to_thread(proxy.partition, "blackhole")
    first, second = RawComponent(r1), RawComponent(r2)
    try:
        assert "<handshake/>" in await first.connect()
        assert "<handshake/>" in await second.connect()
    finally:
        await asyncio.to_thread(proxy.heal)
    error = await second.until(rb"</stream:error>")
    assert b"<conflict" in error, error
    with pytest.raises(TimeoutError):  # the winner's connection is left alone
        await first.until(rb"</stream:error>", timeout=1.5)
    first.close()
    second.close()
