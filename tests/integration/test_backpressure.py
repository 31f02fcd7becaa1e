"""Backpressure over real sockets: a client that stops reading makes the node stop reading the
client that floods it (``limits.outbound_high_water``), then everything arrives once it reads again.

Without it the node would read the sender as fast as it writes and hold the whole excess in its
memory for the slow reader (up to ``limits.write_buffer_limit``, then drop it).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.helpers.topologies import one_node
from tests.helpers.xmpp_raw import RawClient, local

pytestmark = pytest.mark.asyncio

BODY = "x" * 4000
MESSAGES = 6000  # 24 MB: more than the sockets between the clients and the node hold
LIMITS = {
    "outbound_high_water": 16_384, "outbound_low_water": 4096, "write_buffer_limit": 256 * 1024 * 1024,
    "shaper_rate": 1_000_000_000, "shaper_burst": 1_000_000_000, "stanza_rate": 1_000_000.0,
    "stanza_burst": 1_000_000,
}


def _socket_buffer(client: RawClient, option: int, size: int) -> None:
    """Size the client's socket buffer: small, what waits is in the node (or pushed back to us)."""
    assert client.writer is not None
    sock = client.writer.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, option, size)


@pytest.mark.parametrize("event_loop_choice", ["asyncio", "uvloop"])
async def test_flood_to_a_reader_that_stopped_is_pushed_back(tmp_path: Path, event_loop_choice: str) -> None:
    settings = {"limits": LIMITS, "event_loop": event_loop_choice}
    with one_node(tmp_path, "n1", users=["alice", "bob"], password="pw-123456", settings=settings) as node:
        bob = RawClient(node.port, node.cert)
        await bob.connect()
        await bob.login("bob", "pw-123456")
        bob_jid = await bob.bind("slow")
        # A fixed receive buffer, big enough to read at full speed later and small beside the
        # 24 MB sent.  Not a tiny one raised afterwards: Linux then keeps bob's window at ~16 KB,
        # under loopback's segment size, and every window waits for a delayed ACK (~80 KB/s):
        # the test would wait minutes for TCP, whatever the node does.
        _socket_buffer(bob, socket.SO_RCVBUF, 256 * 1024)
        alice = RawClient(node.port, node.cert)
        await alice.connect()
        await alice.login("alice", "pw-123456")
        await alice.bind("fast")
        _socket_buffer(alice, socket.SO_SNDBUF, 8192)
        assert alice.writer is not None
        # bob reads nothing now: alice writes until the node stops reading her.
        sent, stalled = 0, False
        while sent < MESSAGES:
            alice.send(f"<message to='{bob_jid}' type='chat' id='m{sent}'><body>{sent} {BODY}</body></message>")
            sent += 1
            if sent % 50 == 0:
                try:
                    await asyncio.wait_for(alice.writer.drain(), 3.0)
                except TimeoutError:
                    stalled = True
                    break
        assert stalled, f"the node read all {sent} messages (~{sent * 4 // 1000} MB) for a client that reads nothing"
        assert node.alive()
        # bob reads again: alice is read again, and every message arrives, in order.
        received = 0

        async def read_all() -> None:
            nonlocal received
            while received < MESSAGES:
                el = await bob.next(lambda e: local(e) == "message", timeout=30)
                assert el.get("id") == f"m{received}", el.get("id")
                received += 1

        reader = asyncio.create_task(read_all())
        while sent < MESSAGES:
            alice.send(f"<message to='{bob_jid}' type='chat' id='m{sent}'><body>{sent} {BODY}</body></message>")
            sent += 1
            if sent % 50 == 0:
                await asyncio.wait_for(alice.writer.drain(), 30)
        await asyncio.wait_for(reader, 60)
        assert received == MESSAGES
        await alice.close()
        await bob.close()
