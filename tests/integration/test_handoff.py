"""A node's hand-off to its region's gateways: nothing a client saw acknowledged is lost with a
gateway, and messages for online users wait for the route rather than going offline.

- A gateway killed while it holds a message (it waits for a link to the other region) loses
  nothing: the node kept the message until a gateway confirmed it, and hands it to the region's
  other gateway, which delivers it once.
- While a region has no gateway at all, its nodes hold what they would hand over, and deliver it,
  in order and live, once the gateway is back (not at the recipient's next login).
- Held longer than ``cluster.handoff_queue_timeout``, a message goes to offline storage instead.
"""

from __future__ import annotations

import asyncio
import tomllib
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cluster import poll, system_info
from tests.helpers.node import NodeProcess, toml_dump
from tests.helpers.proxy import FaultProxy
from tests.helpers.redis import RedisServer
from tests.helpers.regions import DOMAIN, Region, make_region
from tests.helpers.topologies import check_logs, link_up, lookup, need_redis, register
from tests.helpers.xmpp_raw import SM, RawClient, local

pytestmark = pytest.mark.timeout(360)

PASSWORD = "handoff-secret"
DELAY = "{urn:xmpp:delay}delay"


@dataclass
class World:
    eu: Region
    us: Region
    proxy: FaultProxy  # in front of us-gw1's inter-region listener: eu's gateways dial it


@contextmanager
def world(base: Path, redis: RedisServer, *, eu_gateways: int = 1, cluster: dict[str, Any] | None = None,
          gdistrib: dict[str, Any] | None = None) -> Iterator[World]:
    """eu (a node, ``eu_gateways`` gateways) and us (a node, a gateway behind :attr:`World.proxy`);
    ``cluster``: settings added to each node's ``[cluster]``."""
    db = f"sqlite:///{base / 'domain.db'}"
    eu = make_region(base, "eu", storage_url=db, redis_url=redis.url, nodes=1, gateways=eu_gateways,
                     gdistrib=gdistrib)
    us = make_region(base, "us", storage_url=db, redis_url=redis.url, nodes=1, gateways=1, gdistrib=gdistrib)
    for node in (*eu.nodes, *us.nodes):
        node_conf = tomllib.loads(node.config.read_text())
        node_conf["cluster"].update(cluster or {})
        node.config.write_text(toml_dump(node_conf))
    gw = us.gateways[0]
    conf = tomllib.loads(gw.config.read_text())
    listen = conf["gdistrib"]["connections"]["endpoints"][0]
    proxy = FaultProxy("127.0.0.1", int(listen.rpartition(":")[2])).start()
    conf["gdistrib"]["connections"]["advertised_endpoints"] = [proxy.address]
    gw.config.write_text(toml_dump(conf))
    register(eu.nodes[0], ["alice", "bob"], PASSWORD, DOMAIN)
    try:
        for r in (eu, us):
            r.start()
        for r in (eu, us):
            names = sorted(p.name for p in r.processes)
            for p in r.processes:
                assert poll(lambda p=p, names=names: system_info(p)["joinedNodes"] == names, 20), p.name
        for r, other in ((eu, "us"), (us, "eu")):
            for g in r.gateways:
                assert poll(lambda g=g, other=other: link_up(g, other), 15), f"{g.name} → {other}"
        yield World(eu, us, proxy)
    finally:
        for r in (eu, us):
            r.stop()
        proxy.stop()
    check_logs(*eu.processes, *us.processes)


async def online(node: NodeProcess, user: str, resource: str) -> RawClient:
    c = RawClient(node.port, node.cert, domain=DOMAIN)
    enabled = await c.start(user, PASSWORD, resource)
    assert enabled is not None and local(enabled) == "enabled", enabled
    c.send("<presence/>")
    return c


async def known(w: World, user: str, resource: str) -> None:
    """Until every eu gateway finds ``user``'s ``resource`` available in us (the mapping)."""
    def found() -> bool:
        return all(lookup(g, f"{user}@{DOMAIN}").get(resource, {}).get("available") for g in w.eu.gateways)

    assert await asyncio.to_thread(poll, found, 15), f"{user}/{resource} not in the mapping"


def message(n: int) -> str:
    return f"<message to='bob@{DOMAIN}' type='chat' id='m{n}'><body>hand-off {n}</body></message>"


async def acked(c: RawClient, h: int) -> None:
    """Until the server has acknowledged ``h`` stanzas (XEP-0198)."""
    c.send(f"<r xmlns='{SM}'/>")
    while True:
        a = await c.next(lambda el: el.tag == f"{{{SM}}}a", timeout=10)
        if int(a.get("h", "0")) >= h:
            return
        c.send(f"<r xmlns='{SM}'/>")
        await asyncio.sleep(0.05)


async def bodies(c: RawClient, n: int, timeout: float = 20.0) -> list[ET.Element]:
    out = []
    for _ in range(n):
        out.append(await c.next(lambda el: local(el) == "message" and el.find("{jabber:client}body") is not None,
                                timeout=timeout))
    return out


async def nothing_more(c: RawClient, seconds: float) -> None:
    try:
        el = await c.next(lambda el: local(el) == "message", timeout=seconds)
    except TimeoutError:
        return
    raise AssertionError(f"one more message: {ET.tostring(el).decode()}")


async def test_a_gateway_killed_with_a_message_in_hand_loses_nothing(tmp_path: Path) -> None:
    """us unreachable: the gateway alice's conversation hashes to holds her message (it waits for a
    link).  It is killed, us comes back: the other gateway delivers the message, once."""
    need_redis()
    with RedisServer() as redis, world(tmp_path, redis, eu_gateways=2,
                                       gdistrib={"connections": {"connect_timeout": 6.0}}) as w:
        alice = await online(w.eu.nodes[0], "alice", "phone")
        bob = await online(w.us.nodes[0], "bob", "desk")
        await known(w, "bob", "desk")
        alice.send(message(0))
        assert [m.get("id") for m in await bodies(bob, 1)] == ["m0"]  # routes known, links up
        await acked(alice, 2)
        names = sorted(g.name for g in w.eu.gateways)
        holder = next(g for g in w.eu.gateways
                      if g.name == names[zlib.crc32(f"alice@{DOMAIN}/phone|bob@{DOMAIN}".encode()) % 2])
        await asyncio.to_thread(w.proxy.partition, "drop")  # eu's links to us reset, redials refused
        await asyncio.sleep(0.5)
        alice.send(message(1))
        await acked(alice, 3)  # the node acknowledged it: handed to ``holder``, which waits for us
        await asyncio.sleep(0.5)
        assert holder.proc is not None
        holder.proc.kill()
        await asyncio.to_thread(holder.proc.wait)
        await asyncio.to_thread(w.proxy.heal)
        got = await bodies(bob, 1)
        assert [m.get("id") for m in got] == ["m1"] and got[0].find(DELAY) is None
        await nothing_more(bob, 2.0)
        await alice.close()
        await bob.close()


async def test_messages_wait_for_the_only_gateway_and_arrive_live_in_order(tmp_path: Path) -> None:
    """eu's only gateway is down for 2 s: what alice sends meanwhile reaches bob (online in us) once
    the gateway is back, in order, live (no ``<delay/>``), and nothing is left offline."""
    need_redis()
    with RedisServer() as redis, world(tmp_path, redis) as w:
        alice = await online(w.eu.nodes[0], "alice", "phone")
        bob = await online(w.us.nodes[0], "bob", "desk")
        await known(w, "bob", "desk")
        alice.send(message(0))
        assert [m.get("id") for m in await bodies(bob, 1)] == ["m0"]
        gw = w.eu.gateways[0]
        assert gw.proc is not None
        gw.proc.kill()
        await asyncio.to_thread(gw.proc.wait)
        node = w.eu.nodes[0]
        assert poll(lambda: gw.name not in system_info(node)["joinedNodes"], 10)
        for n in range(1, 6):
            alice.send(message(n))
        await acked(alice, 7)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(gw.start)
        got = await bodies(bob, 5, timeout=30)
        assert [m.get("id") for m in got] == [f"m{n}" for n in range(1, 6)]
        assert all(m.find(DELAY) is None for m in got)
        await nothing_more(bob, 1.0)
        bob.acknowledge()  # as a client does before closing: unacknowledged stanzas are re-routed
        await bob.close()
        # Nothing was parked for bob either: a new session of his gets no offline message.
        again = await online(w.us.nodes[0], "bob", "laptop")
        await nothing_more(again, 2.0)
        await again.close()
        await alice.close()


async def test_held_past_the_deadline_goes_offline(tmp_path: Path) -> None:
    """With ``handoff_queue_timeout`` 1 s and the only gateway down for longer, alice's message is
    handled in eu: stored offline, bob gets it (delayed) at his next login."""
    need_redis()
    with RedisServer() as redis, world(tmp_path, redis, cluster={"handoff_queue_timeout": 1.0}) as w:
        alice = await online(w.eu.nodes[0], "alice", "phone")
        gw = w.eu.gateways[0]
        assert gw.proc is not None
        gw.proc.kill()
        await asyncio.to_thread(gw.proc.wait)
        node = w.eu.nodes[0]
        assert poll(lambda: gw.name not in system_info(node)["joinedNodes"], 10)
        alice.send(message(1))
        await acked(alice, 2)
        await asyncio.sleep(2.0)  # past the deadline: stored offline in eu
        bob = await online(w.eu.nodes[0], "bob", "desk")
        got = await bodies(bob, 1)
        assert got[0].get("id") == "m1" and got[0].find(DELAY) is not None
        await asyncio.to_thread(gw.start)
        await alice.close()
        await bob.close()
