"""MAM while its database is away: a conversation that goes on during a PostgreSQL outage is
delivered live, and is in both archives, in its order, once the database is back — nothing
restarted on the node.  Real PostgreSQL (stopped for real, then restarted), real slixmpp clients
paging with their own xep_0313 plugin."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cluster_node.net.control import control_socket, query_control
from tests.helpers.node import NodeProcess
from tests.helpers.postgres import PostgresServer, pg_bindir
from tests.helpers.xmpp_client import Client

from .test_mam import SID, archive, bodies, mam_client

PASSWORD = "mam-secret"


async def mam_status(node: NodeProcess) -> dict[str, int]:
    """The MAM module's counters, from the node's control socket."""
    status, body = await query_control(control_socket(node.workdir / "data"), "mam", "status")
    assert status == 200, body
    return body["data"]["mam"]["status"]  # type: ignore[no-any-return]


async def test_messages_sent_while_the_database_is_away_are_archived_once_it_is_back(tmp_path: Path) -> None:
    if pg_bindir() is None:
        pytest.skip("PostgreSQL is not installed")
    with PostgresServer() as pg:
        node = NodeProcess(tmp_path / "n", name="mamout", storage_url=pg.url(),
                           settings={"modules": {"mam": {"backlog_retry": 0.5}}})
        for user in ("alice", "bob"):
            node.register(user, PASSWORD)
        await asyncio.to_thread(node.start)
        a: Client | None = None
        b: Client | None = None
        try:
            a = await mam_client(node, "alice@localhost/desk").online(node.port)
            b = await mam_client(node, "bob@localhost/phone").online(node.port)
            a.send_message(mto="bob@localhost/phone", mbody="before", mtype="chat")
            assert (await b.next_message(10))["body"] == "before"
            deadline = time.monotonic() + 10  # its rows go with a group commit after the delivery
            while (await mam_status(node))["archived"] < 2:
                assert time.monotonic() < deadline, (await mam_status(node))
                await asyncio.sleep(0.05)
            await asyncio.to_thread(pg.shut_down)  # away; what it had committed kept
            during = [f"during {i}" for i in range(3)]
            delivered_ids = []
            for text in during:
                a.send_message(mto="bob@localhost/phone", mbody=text, mtype="chat")
                msg = await b.next_message(15)
                assert msg["body"] == text  # delivered live meanwhile
                delivered_ids.append(msg.xml.find(SID).get("id"))
            deadline = time.monotonic() + 30  # the rows were queued: their commits fail a little later
            while (await mam_status(node))["backlog"] < 2 * len(during):  # alice's copies and bob's
                assert time.monotonic() < deadline, (await mam_status(node))
                await asyncio.sleep(0.2)
            assert (await mam_status(node))["backlog"] == 2 * len(during)
            await asyncio.to_thread(pg.restart)
            deadline = time.monotonic() + 30
            while (await mam_status(node))["backlog"]:
                assert time.monotonic() < deadline, (await mam_status(node))
                await asyncio.sleep(0.3)
            a.send_message(mto="bob@localhost/phone", mbody="after", mtype="chat")
            assert (await b.next_message(10))["body"] == "after"
            expected = ["before", *during, "after"]
            received = await archive(b, page=2)
            assert bodies(received) == expected
            assert [i for i, _ in received[1:-1]] == delivered_ids  # the stanza-ids bob was given name the rows
            assert bodies(await archive(a, page=2)) == expected
            status = (await mam_status(node))
            assert status["late"] == 2 * len(during) and status["dropped"] == 0, status
            assert "archived late" in node.log_path.read_text(errors="replace")
        finally:
            for c in (a, b):
                if c is not None:
                    await c.close()
            node.stop()
