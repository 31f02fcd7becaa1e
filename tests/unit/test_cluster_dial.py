"""A member's dials over real TLS sockets: one link per peer while the peer has not answered."""

from __future__ import annotations

import asyncio

from cluster_node.cluster.discovery import FileDiscovery, Peer
from cluster_node.net.cluster_net import ClusterMember
from cluster_node.net.tls import client_context, ensure_self_signed, server_context


class Silent(asyncio.Protocol):
    """A peer that accepts the TLS connection and never answers the HELLO (one still starting)."""

    accepted = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Silent.accepted += 1


async def test_a_refresh_while_a_dial_waits_for_its_answer_does_not_dial_again(tmp_path):
    """A dial is under way until the peer accepts it, not only until the socket connects: a refresh
    in between (a knock brings one forward) dialled a second link, the peer closed the first as
    replaced, and we counted the peer as down (a spurious member-down at every start)."""
    cert, key = ensure_self_signed(tmp_path, ["localhost"])
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Silent, "127.0.0.1", 0, ssl=server_context(cert, key))
    port = server.sockets[0].getsockname()[1]
    peers = [Peer("a1", "127.0.0.1:1"), Peer("b1", f"127.0.0.1:{port}")]
    member = ClusterMember(
        cluster="eu", node="a1", secret=b"s3cret", address="127.0.0.1:1", listen_host="127.0.0.1",
        listen_port=0, discovery=FileDiscovery(peers, "a1"), server_tls=server_context(cert, key),
        client_tls=client_context(verify=False), tables={}, refresh_interval=0.05, ping_timeout=30.0)
    Silent.accepted = 0
    await member.start()
    try:
        for _ in range(100):  # the first dial connects
            if Silent.accepted:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)  # twenty refreshes while b1 stays silent
        assert Silent.accepted == 1
        assert [c.outgoing for c in member.connections] == ["b1"]
        assert "b1" not in member.links  # not joined: b1 never accepted us
    finally:
        await member.stop()
        server.close()
        await server.wait_closed()
