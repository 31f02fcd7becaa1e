"""Races between the members of a region, each made to happen every time by holding the cluster
link in a fault-injecting proxy at the wrong moment (tests/helpers/proxy.py)."""

from __future__ import annotations

import asyncio
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


def node(base: Path, name: str, cluster_port: int, db: str, advertise: str) -> NodeProcess:
    cluster = {"enabled": True, "secret": SECRET, "host": "127.0.0.1", "port": cluster_port, "advertise": advertise,
               "refresh_interval": 0.3, "ping_interval": 0.3, "ping_timeout": 2.0}
    return NodeProcess(base / name, name=name, storage_url=db, settings={"cluster": cluster})


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
