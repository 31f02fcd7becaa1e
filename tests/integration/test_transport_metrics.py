"""Per-transport metrics on a real node: a TCP client and a WebSocket client chat, and
``/metrics`` counts connections, bytes and stanzas under ``transport="tcp"`` and
``transport="websocket"`` (``bosh`` is reported at zero until a BOSH client comes)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.helpers.node import NodeProcess
from tests.helpers.ports import free_ports
from tests.helpers.topologies import one_node
from tests.helpers.xmpp_raw import RawClient
from tests.helpers.xmpp_ws import WsClient
from tests.integration.test_metrics import Samples, scrape, value

PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    [port] = free_ports(1)
    with one_node(tmp_path_factory.mktemp("transport-metrics"), "tm1", users=PASSWORDS,
                  settings={"websocket": {"host": "127.0.0.1", "port": port}}) as n:
        n.ws_port = port  # type: ignore[attr-defined]
        yield n


def moved(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_each_transport_counts_its_connections_bytes_and_stanzas(node: NodeProcess) -> None:
    before = await scrape(node)
    for transport in ("tcp", "websocket", "bosh"):  # every label is there from the start
        assert ("meridian_transport_connections", (("transport", transport),)) in before
        assert ("meridian_transport_stanzas_total", (("direction", "in"), ("transport", transport))) in before
    bob = RawClient(node.port, node.cert)
    await bob.start("bob", PASSWORDS["bob"], "desk", sm=False)
    alice = WsClient(f"wss://127.0.0.1:{node.ws_port}/ws")  # type: ignore[attr-defined]
    await alice.start("alice", PASSWORDS["alice"], "web", sm=False)
    try:
        for i in range(5):
            alice.send(f"<message xmlns='jabber:client' to='bob@localhost/desk' type='chat'><body>w{i}</body>"
                       "</message>")
        await bob.messages(5)
        for i in range(3):
            bob.send(f"<message to='alice@localhost/web' type='chat'><body>t{i}</body></message>")
        await alice.messages(3)
        during = await scrape(node)
        assert value(during, "meridian_transport_connections", transport="tcp") == 1
        assert value(during, "meridian_transport_connections", transport="websocket") == 1
        assert value(during, "meridian_transport_connections", transport="bosh") == 0
        for transport in ("tcp", "websocket"):
            assert moved(during, before, "meridian_transport_accepted_total", transport=transport) == 1
            for direction in ("in", "out"):
                assert moved(during, before, "meridian_transport_bytes_total", transport=transport,
                             direction=direction) > 200, (transport, direction)
        # alice: 5 messages in over WebSocket, 3 out; bob the other way round (the bind IQs are the
        # stream's, not stanzas routed)
        for transport, (n_in, n_out) in (("websocket", (5, 3)), ("tcp", (3, 5))):
            for direction, n in (("in", n_in), ("out", n_out)):
                assert moved(during, before, "meridian_transport_stanzas_total", transport=transport,
                             direction=direction) == n, (transport, direction)
        assert value(during, "meridian_connections", type="c2s") == 2  # both transports are c2s
    finally:
        await alice.close()
        await bob.close()
    for _ in range(50):
        after = await scrape(node)
        if value(after, "meridian_transport_connections", transport="websocket") == 0 \
                and value(after, "meridian_transport_connections", transport="tcp") == 0:
            break
        await asyncio.sleep(0.1)
    assert value(after, "meridian_transport_connections", transport="websocket") == 0
    assert value(after, "meridian_transport_connections", transport="tcp") == 0
    assert value(after, "meridian_transport_bytes_total", transport="bosh", direction="in") == 0
