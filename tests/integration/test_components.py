"""External components (XEP-0114) in a two-node cluster: a slixmpp component connected to one
node serves users connected to the other; one connection per domain in the region; a component
that leaves stops receiving (the sender gets an error); a wrong secret is refused."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import slixmpp

from tests.helpers.cluster import SECRET, eventually, table_info, wait_until
from tests.helpers.node import NodeProcess
from tests.helpers.ports import free_port
from tests.helpers.xmpp_client import Client

DOMAIN = "example.com"
SERVICE = "echo.example.com"
COMPONENT_SECRET = "component-secret-42"


class Echo(slixmpp.ComponentXMPP):  # type: ignore[misc]
    """A component that answers every chat message with ``echo: <body>`` and records what came."""

    def __init__(self, node: NodeProcess, secret: str = COMPONENT_SECRET) -> None:
        super().__init__(SERVICE, secret, "127.0.0.1", node.component_port)
        # Direct TLS, as the node's component port speaks by default (slixmpp's components
        # otherwise only connect in plain TCP).
        self.enable_direct_tls, self.enable_plaintext, self.tls_services = True, False, {"component-tls"}
        self.ssl_context = ssl.create_default_context(cafile=str(node.cert))
        self.ssl_context.check_hostname = False  # the node's self-signed certificate names example.com
        self.register_plugin("xep_0030")
        self.received: asyncio.Queue[Any] = asyncio.Queue()
        self.ready: asyncio.Future[bool] = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _e: self.ready.done() or self.ready.set_result(True))
        self.add_event_handler("disconnected", lambda _e: self.ready.done() or self.ready.set_result(False))
        self.add_event_handler("message", self._echo)
        self.stream_errors: list[str] = []  # conditions: a refusal is asserted, not any disconnect
        self.add_event_handler("stream_error", lambda e: self.stream_errors.append(e["condition"]))

    def _echo(self, msg: Any) -> None:
        self.received.put_nowait(msg)
        if msg["body"]:
            self.send_message(mto=msg["from"], mfrom=f"bot@{SERVICE}", mbody="echo: " + msg["body"], mtype="chat")

    async def start(self) -> bool:
        self.connect()
        return await asyncio.wait_for(self.ready, 15)

    async def stop(self) -> None:
        self.disconnect()
        await asyncio.sleep(0.2)


def _node(base: Path, name: str, storage_url: str) -> NodeProcess:
    port = free_port()
    node = NodeProcess(base / name, name=name, domains=[DOMAIN], storage_url=storage_url, settings={
        "cluster": {"enabled": True, "secret": SECRET, "port": free_port(), "refresh_interval": 0.3,
                    "ping_interval": 0.3, "ping_timeout": 1.5},
        "components": {"port": port, "secrets": {SERVICE: COMPONENT_SECRET}}})
    node.component_port = port  # type: ignore[attr-defined]
    return node


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    base = tmp_path_factory.mktemp("components")
    url = f"sqlite:///{base / 'shared.db'}"
    pair = [_node(base, "c1", url), _node(base, "c2", url)]
    pair[0].register("alice", "alice-password", DOMAIN)
    for n in pair:
        n.start()
    wait_until(lambda: all(len(table_info(n)["routes"]["nodes"]) == 2 for n in pair), 30, "the cluster")
    yield pair
    for n in pair:
        n.stop()


@pytest.fixture
async def alice(nodes: list[NodeProcess]) -> AsyncIterator[Client]:
    client = await Client(f"alice@{DOMAIN}/laptop", "alice-password", cert=nodes[1].cert).online(nodes[1].port)
    yield client
    await client.close()


async def test_component_on_one_node_serves_a_user_on_the_other(nodes: list[NodeProcess], alice: Client) -> None:
    echo = Echo(nodes[0])
    assert await echo.start()
    try:
        await eventually(lambda: table_info(nodes[1])["routes"]["size"] >= 1, 15, "the route on c2")
        alice.send_message(mto=f"bot@{SERVICE}", mbody="ping 1", mtype="chat")
        got = await asyncio.wait_for(echo.received.get(), 10)
        assert str(got["from"]) == f"alice@{DOMAIN}/laptop" and got["body"] == "ping 1"
        reply = await alice.next_message(timeout=10)
        assert str(reply["from"]) == f"bot@{SERVICE}" and reply["body"] == "echo: ping 1"
        # An IQ to the component domain itself round-trips too (slixmpp answers disco#info).
        info = await alice.plugin["xep_0030"].get_info(jid=SERVICE, timeout=10)
        assert info["type"] == "result"
    finally:
        await echo.stop()


async def test_second_connection_for_the_domain_is_refused(nodes: list[NodeProcess]) -> None:
    first = Echo(nodes[0])
    assert await first.start()
    try:
        await eventually(lambda: table_info(nodes[1])["routes"]["size"] >= 1, 15, "the route on c2")
        second = Echo(nodes[1])
        assert await second.start() is False
        assert second.stream_errors == ["conflict"]  # the region has it already (XEP-0114)
    finally:
        await first.stop()


async def test_gone_component_means_service_unavailable(nodes: list[NodeProcess], alice: Client) -> None:
    echo = Echo(nodes[0])
    assert await echo.start()
    await echo.stop()
    await eventually(lambda: table_info(nodes[1])["routes"]["size"] == 0, 15, "the route removed")
    alice.send_message(mto=f"bot@{SERVICE}", mbody="anyone?", mtype="chat")
    err = await alice.next_message(timeout=10, body=False)
    # No route to the domain any more: not found (a gateway, when there is one, would look further).
    assert err["type"] == "error" and err["error"]["condition"] in ("remote-server-not-found", "service-unavailable")


async def test_wrong_secret_is_refused(nodes: list[NodeProcess]) -> None:
    echo = Echo(nodes[0], secret="not-the-right-secret")
    assert await echo.start() is False
    assert echo.stream_errors == ["not-authorized"]  # the wrong handshake (XEP-0114)
    assert table_info(nodes[0])["routes"]["size"] == 0


# -- across regions: a component registered in one region is routable from all
# (https://github.com/esl/MongooseIM/pull/1700)

@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from tests.helpers.redis import RedisServer
    from tests.helpers.regions import make_region

    base = tmp_path_factory.mktemp("component-regions")
    db = f"sqlite:///{base / 'domain.db'}"
    port = free_port()
    with RedisServer() as redis:
        eu = make_region(base, "eu", storage_url=db, redis_url=redis.url, nodes=1, node_settings={
            "components": {"port": port, "secrets": {SERVICE: COMPONENT_SECRET}}})
        us = make_region(base, "us", storage_url=db, redis_url=redis.url, nodes=1)
        eu.nodes[0].component_port = port  # type: ignore[attr-defined]
        eu.nodes[0].register("bob", "bob-password", DOMAIN)
        try:
            eu.start()
            us.start()
            for region in (eu, us):
                names = sorted(p.name for p in region.processes)
                wait_until(lambda r=region, n=names: all(
                    sorted(table_info(p)["routes"]["nodes"]) == n for p in r.processes), 30, "the clusters")
            yield {"eu": eu, "us": us, "redis_url": redis.url}
        finally:
            eu.stop()
            us.stop()


async def test_component_in_one_region_serves_a_user_in_another(regions: dict[str, Any]) -> None:
    eu, us = regions["eu"], regions["us"]
    echo = Echo(eu.nodes[0])
    assert await echo.start()
    bob = await Client(f"bob@{DOMAIN}/phone", "bob-password", cert=us.nodes[0].cert).online(us.nodes[0].port)
    try:
        # Once eu's gateway has published the domain in the shared Redis, one message from us must
        # be answered: sent once (a resend loop would hide a lost message), one reply, no error.
        import redis as redis_py

        from gateway.mapping.keys import domain_key

        shared = redis_py.Redis.from_url(regions["redis_url"])
        try:
            await eventually(lambda: shared.get(domain_key(SERVICE)) == b"eu", 15, "the domain published")
        finally:
            shared.close()
        bob.send_message(mto=f"bot@{SERVICE}", mbody="over the ocean", mtype="chat")
        reply = await bob.next_message(timeout=15, body=False)
        assert str(reply["from"]) == f"bot@{SERVICE}" and reply["body"] == "echo: over the ocean", reply
        with pytest.raises(TimeoutError):
            await bob.next_message(timeout=0.5, body=False)  # one reply, not two
        got = await asyncio.wait_for(echo.received.get(), 10)
        assert str(got["from"]) == f"bob@{DOMAIN}/phone"
    finally:
        await bob.close()
        await echo.stop()


async def test_a_component_over_its_shaper_is_slowed_not_dropped(tmp_path: Path) -> None:
    """``components.shaper_rate``: a component sending faster than its rate is read more slowly
    (reading pauses after a read for what it took over the rate; logged once a minute) —
    everything arrives, in order — and is not disconnected (a component is trusted: slowed, never
    closed)."""
    port = free_port()
    node = NodeProcess(tmp_path / "shaped", name="shaped", domains=[DOMAIN], settings={
        "components": {"port": port, "secrets": {SERVICE: COMPONENT_SECRET}, "shaper_rate": 50_000,
                       "shaper_burst": 4096}})
    node.component_port = port  # type: ignore[attr-defined]
    node.register("alice", "alice-password", DOMAIN)
    node.start()
    echo = Echo(node)
    alice = await Client(f"alice@{DOMAIN}/laptop", "alice-password", cert=node.cert).online(node.port)
    try:
        assert await echo.start()
        n, pad = 125, "x" * 1500  # 125 stanzas of about 1.6 KB: 200 KB, four times the rate
        for i in range(n):
            echo.send_message(mto=f"alice@{DOMAIN}/laptop", mfrom=f"bot@{SERVICE}", mbody=f"{i} {pad}", mtype="chat")
        bodies = [(await alice.next_message(timeout=30))["body"].split()[0] for _ in range(n)]
        assert bodies == [str(i) for i in range(n)]  # all of it, in order
        assert "echo.example.com: over its shaper rate (components.shaper_rate): reading slowed" in node.log()
        assert echo.stream_errors == [] and echo.ready.result() is True  # still connected, no error
        echo.send_message(mto=f"alice@{DOMAIN}/laptop", mfrom=f"bot@{SERVICE}", mbody="after", mtype="chat")
        assert (await alice.next_message(timeout=10))["body"] == "after"
    finally:
        await alice.close()
        await echo.stop()
        node.stop()
    assert "Traceback" not in node.log(), node.log()
