"""One node process per core: two members of one cluster on one host share the c2s port
(``c2s.reuse_port``, SO_REUSEPORT); the kernel spreads the connections between them, and the users
(slixmpp clients) talk to each other as on one server (half the messages cross the cluster link)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.ports import free_ports
from tests.helpers.topologies import two_node_region
from tests.helpers.xmpp_client import Client

pytestmark = pytest.mark.asyncio

USERS = [f"u{i}" for i in range(20)]
PASSWORD = "pw-reuse-123"


async def test_two_processes_share_the_c2s_port_and_route_between_them(tmp_path: Path) -> None:
    port, tls_port = free_ports(2)
    first_tls = tmp_path / "p1" / "data" / "tls"

    def settings(name: str) -> dict[str, Any]:
        conf: dict[str, Any] = {"c2s": {"port": port, "tls_port": tls_port, "reuse_port": True}}
        if name == "p2":  # one certificate for the port, whichever process answers: the first's
            conf["tls"] = {"cert_file": str(first_tls / "cert.pem"), "key_file": str(first_tls / "key.pem")}
        return conf

    with two_node_region(tmp_path, names=("p1", "p2"), users=USERS, password=PASSWORD, settings=settings) as nodes:
        clients = [await Client(f"{user}@localhost/r", PASSWORD, cert=nodes[0].cert).login(port) for user in USERS]
        _, body = await nodes[0].admin("{ session { listSessions { user node } } }")
        where = {s["user"].split("@")[0]: s["node"] for s in body["data"]["session"]["listSessions"]}
        assert set(where) == set(USERS)
        assert set(where.values()) == {"p1", "p2"}, f"the kernel gave every connection to one process: {where}"

        # Each user writes to the next: every message arrives, on whichever process it is.
        for i, c in enumerate(clients):
            to = USERS[(i + 1) % len(USERS)]
            c.send_message(mto=f"{to}@localhost/r", mbody=f"from {USERS[i]}", mtype="chat")
        got = await asyncio.gather(*(c.next_message(timeout=15) for c in clients))
        for i, msg in enumerate(got):
            sender = USERS[i - 1]
            assert str(msg["from"]).startswith(f"{sender}@localhost/"), msg["from"]
            assert msg["body"] == f"from {sender}"
        crossing = sum(where[USERS[i]] != where[USERS[(i + 1) % len(USERS)]] for i in range(len(USERS)))
        assert crossing > 0  # some went over the cluster link (the kernel's spread makes it likely)
        for c in clients:
            await c.close()


async def test_without_reuse_port_a_second_process_cannot_take_the_port(tmp_path: Path) -> None:
    port, tls_port = free_ports(2)
    settings = {"c2s": {"port": port, "tls_port": tls_port}}
    with pytest.raises(RuntimeError) as refused:
        with two_node_region(tmp_path, names=("p1", "p2"), settings=settings):
            pass
    assert "address already in use" in str(refused.value).lower()
    assert "Traceback" not in str(refused.value)
