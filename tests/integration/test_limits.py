"""Per-account and per-address limits, each hit over real sockets: sessions per account, in-band
registrations per address, connections waiting to authenticate."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers.raw import HEADER, read_until, stream_error
from tests.helpers.topologies import one_node
from tests.helpers.xmpp_raw import RawClient, local

pytestmark = pytest.mark.asyncio

STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"
REGISTER = ("<iq type='set' id='{id}'><query xmlns='jabber:iq:register'><username>{user}</username>"
            "<password>long-enough-1</password></query></iq>")


async def test_sessions_per_account(tmp_path: Path) -> None:
    settings = {"limits": {"max_sessions_per_account": 2}}
    with one_node(tmp_path, "n1", users=["alice"], password="alice-pw", settings=settings) as node:
        clients = [RawClient(node.port, node.cert) for _ in range(3)]
        for i, c in enumerate(clients[:2]):
            await c.connect()
            await c.login("alice", "alice-pw")
            await c.bind(f"r{i}")
        third = clients[2]
        await third.connect()
        await third.login("alice", "alice-pw")
        third.send("<iq type='set' id='b3'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                   "<resource>r2</resource></bind></iq>")
        reply = await third.next(lambda el: el.get("id") == "b3")
        assert reply.get("type") == "error" and reply.find(f".//{STANZAS}resource-constraint") is not None
        # Rebinding a resource in use replaces that session: not a new one, so it is allowed.
        await third.bind("r0")
        for c in clients:
            await c.close()


async def test_registrations_per_address(tmp_path: Path) -> None:
    settings = {"registration": {"allow_in_band": True, "max_per_address": 2}}
    with one_node(tmp_path, "n1", settings=settings) as node:
        c = await RawClient(node.port, node.cert).connect()
        replies = []
        for i in range(3):
            c.send(REGISTER.format(id=f"r{i}", user=f"newbie{i}"))
            replies.append(await c.next(lambda el, i=i: el.get("id") == f"r{i}"))
        assert [r.get("type") for r in replies] == ["result", "result", "error"]
        refused = replies[2].find(f".//{STANZAS}resource-constraint")
        assert refused is not None, ET.tostring(replies[2])
        text = replies[2].find(f".//{STANZAS}text")
        assert text is not None and "too many registrations" in (text.text or "")
        await c.close()
        assert "newbie2" not in node.ctl("account", "list-users", "--domain", "localhost").stdout


async def test_connections_waiting_to_authenticate(tmp_path: Path) -> None:
    settings = {"limits": {"max_pre_auth_connections": 3}}
    with one_node(tmp_path, "n1", users=["alice"], password="alice-pw", settings=settings) as node:
        idle = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
            writer.write(HEADER)
            await read_until(reader, b"</stream:features>")
            idle.append(writer)
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        writer.write(HEADER)
        data = await read_until(reader, b"</stream:stream>")
        assert stream_error(data, "policy-violation") and b"waiting to authenticate" in data
        writer.close()
        # One of the idle ones goes: a client gets in, and once it has logged in it no longer
        # counts, so another connection waiting to authenticate is accepted.
        idle.pop().close()
        await asyncio.sleep(0.3)
        c = await RawClient(node.port, node.cert).connect()
        await c.login("alice", "alice-pw")
        late = await RawClient(node.port, node.cert).connect()
        assert late.features is not None and local(late.features) == "features"
        for w in idle:
            w.close()
        await c.close()
        await late.close()


def _few_descriptors() -> None:
    """In the node's process before exec: a descriptor limit it cannot raise past 320."""
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (200, 320))


async def test_connections_past_the_descriptor_limit_are_refused_not_left_in_the_backlog(tmp_path: Path) -> None:
    """``limits.max_connections`` (100,000 by default) is held below what the process may open:
    past it ``accept()`` fails with EMFILE, the client hangs in the backlog and asyncio logs a
    traceback at every retry.  With 320 descriptors the node holds 64 client connections (320 less
    its reserve of 256), says so once at start, refuses the next with a stream error, and a client
    gets in again once one goes."""
    from cluster_node.net.descriptors import RESERVE
    from tests.helpers.node import NodeProcess
    from tests.helpers.topologies import check_logs, register
    from tests.helpers.xmpp_client import Client

    node = NodeProcess(tmp_path, name="n1")
    node.preexec = _few_descriptors
    register(node, ["alice"], "alice-pw")
    node.start()
    held = []
    try:
        assert "limits.max_connections = 100000, but this process may open 320 descriptors" in node.log()
        for _ in range(320 - RESERVE):
            reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
            writer.write(HEADER)
            await read_until(reader, b"</stream:features>")
            held.append(writer)
        refused = []
        for _ in range(20):  # each refused at once, well inside the descriptors left
            reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
            writer.write(HEADER)
            refused.append(await read_until(reader, b"</stream:stream>"))
            writer.close()
        assert all(stream_error(d, "policy-violation") and b"too many connections" in d for d in refused)
        held.pop().close()
        await asyncio.sleep(0.3)
        c = await Client("alice@localhost/back", "alice-pw", cert=node.cert).login(node.port)  # slixmpp
        await c.close()
    finally:
        for w in held:
            w.close()
        node.stop()
    assert "out of system resource" not in node.log() and "Too many open files" not in node.log()
    check_logs(node)
