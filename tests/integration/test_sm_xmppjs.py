"""XEP-0198 with a client no one here wrote: xmpp.js (``@xmpp/client`` 0.14 on Node.js) enables
stream management, loses its socket, reconnects and resumes — on the same node, and on the other
node of its region while a user in another region keeps writing to it.  Every message sent
meanwhile arrives exactly once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.redis import RedisServer
from tests.helpers.regions import DOMAIN, Region
from tests.helpers.topologies import need_redis, one_node, two_regions
from tests.helpers.xmpp_raw import RawClient
from tests.helpers.xmppjs import js_client, node_binary

pytestmark = pytest.mark.skipif(node_binary() is None, reason="Node.js is not installed")
PASSWORD = "secret-password"


def bodies(events: list[dict]) -> list[str]:  # type: ignore[type-arg]
    return [e["body"] for e in events if e.get("body")]


async def writer(sender: RawClient, to: str, prefix: str, stop: asyncio.Event, sent: list[str]) -> None:
    """Keep writing to ``to`` every 50 ms until ``stop``."""
    i = 0
    while not stop.is_set():
        text = f"{prefix}{i}"
        sender.send(f"<message to='{to}' type='chat'><body>{text}</body></message>")
        sent.append(text)
        i += 1
        await asyncio.sleep(0.05)


async def test_xmppjs_resumes_on_one_node(tmp_path: Path) -> None:
    with one_node(tmp_path, "js1", users=("alice", "bob"), password=PASSWORD, domains=[DOMAIN]) as node:
        bob = RawClient(node.port, node.cert, domain=DOMAIN)
        await bob.start("bob", PASSWORD, "desk", sm=False)
        async with js_client(f"xmpp://127.0.0.1:{node.port}", domain=DOMAIN, username="alice",
                             password=PASSWORD, resource="js") as alice:
            enabled = await alice.wait_event("sm_enabled", timeout=20)
            assert enabled["resume"] in (True, "true")
            for i in range(3):
                bob.send(f"<message to='alice@{DOMAIN}/js' type='chat'><body>m{i}</body></message>")
            await alice.messages_until(3)
            await alice.kill_socket()
            for i in range(3, 6):
                bob.send(f"<message to='alice@{DOMAIN}/js' type='chat'><body>m{i}</body></message>")
            await alice.wait_event("sm_resumed", timeout=20)
            await alice.messages_until(6, timeout=10)
            await asyncio.sleep(0.5)  # a duplicate would arrive by now
            assert bodies(alice.messages) == [f"m{i}" for i in range(6)]
            assert len(alice.of("online")) == 1  # resumed, never bound again
        await bob.close()


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Region, Region]]:
    need_redis()
    base = tmp_path_factory.mktemp("js-regions")
    with RedisServer() as redis, two_regions(base, redis, eu={"nodes": 2}, links=False) as both:
        yield both.eu, both.us


async def test_xmppjs_resumes_on_the_other_node_while_another_region_writes(
        regions: tuple[Region, Region]) -> None:
    eu, us = regions
    eu1, eu2 = eu.nodes
    eu1.register("alice", PASSWORD, DOMAIN)
    eu1.register("bob", PASSWORD, DOMAIN)
    bob = RawClient(us.nodes[0].port, us.nodes[0].cert, domain=DOMAIN)
    await bob.start("bob", PASSWORD, "desk", sm=False)
    stop, sent = asyncio.Event(), []  # type: ignore[var-annotated]
    async with js_client(f"xmpp://127.0.0.1:{eu1.port}", domain=DOMAIN, username="alice",
                         password=PASSWORD, resource="js") as alice:
        await alice.wait_event("sm_enabled", timeout=20)
        # bob, in the other region, writes to alice's full JID every 50 ms from now on
        pump = asyncio.create_task(writer(bob, f"alice@{DOMAIN}/js", "w", stop, sent))
        await alice.messages_until(5, timeout=15)
        await alice.set_service(f"xmpp://127.0.0.1:{eu2.port}")  # the reconnection lands on eu's other node
        await alice.kill_socket()
        await alice.wait_event("sm_resumed", timeout=20)
        await asyncio.sleep(1.0)  # keep writing after the resumption too
        stop.set()
        await pump
        got = await alice.messages_until(len(sent), timeout=15)
        await asyncio.sleep(0.5)
        assert bodies(alice.messages) == sent, (len(alice.messages), len(sent))
        assert len(alice.of("online")) == 1
        state = await alice.state()
        assert str(eu2.port) in str(state.get("service"))
        assert got
    await bob.close()
