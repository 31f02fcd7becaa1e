"""``cluster.discovery = "file"``: the members come from ``cluster.nodes`` (name@host:port), not
from a shared database.  Two nodes, each with its own SQLite file for accounts, so that only the
file list can make them a cluster: they join, replicate sessions and route a chat between them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cluster import cluster_node, eventually, system_info, table_info, wait_until
from tests.helpers.node import NodeProcess
from tests.helpers.ports import free_port
from tests.helpers.xmpp_client import Client

NAMES = ["f1", "f2"]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    ports = {name: free_port() for name in NAMES}
    members = [f"{name}@127.0.0.1:{port}" for name, port in ports.items()]
    nodes = [cluster_node(tmp_path, name, f"sqlite:///{tmp_path / (name + '.db')}", port=ports[name],
                          discovery="file", nodes=members) for name in NAMES]
    for n in nodes:
        for u in ("alice", "bob"):  # separate databases: each knows both accounts
            n.register(u, f"{u}-secret")
    try:
        for n in nodes:
            n.start()
        yield nodes
    finally:
        for n in nodes:
            n.stop()
        for n in nodes:
            assert "Traceback" not in n.log(), n.log()


async def test_file_discovery_joins_the_listed_members_and_routes_between_them(pair: list[NodeProcess]) -> None:
    f1, f2 = pair
    for n in pair:
        wait_until(lambda n=n: system_info(n)["joinedNodes"] == NAMES, 30, f"{n.name} joined by the file list")
    assert system_info(f1)["discoveredNodes"] == NAMES
    a = await Client("alice@localhost/a", "alice-secret", cert=f1.cert).online(f1.port)
    b = await Client("bob@localhost/b", "bob-secret", cert=f2.cert).online(f2.port)
    try:
        await eventually(lambda: all(table_info(n)["sessions"]["size"] == 2 for n in pair), 15, "both sessions")
        a.send_message(mto="bob@localhost/b", mbody="across the file-discovered cluster", mtype="chat")
        got = await b.next_message(timeout=15)
        assert got["body"] == "across the file-discovered cluster" and str(got["from"]) == "alice@localhost/a"
    finally:
        await a.close()
        await b.close()
