"""A node stopped with SIGTERM while clients are online finishes every session's clean-up
(unavailable presence from each roster, which reads storage) before it closes storage."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.helpers.node import NodeProcess
from tests.helpers.xmpp_client import Client

USERS = 25


async def test_sigterm_with_clients_online_cleans_every_session_up(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n", name="stopper", domains=["localhost"])
    for i in range(USERS):
        node.register(f"u{i}", "password-123")
    node.start()
    clients = []
    try:
        clients = await asyncio.gather(*(Client(f"u{i}@localhost/r", "password-123", cert=node.cert).online(node.port)
                                         for i in range(USERS)))
        assert node.stop() == 0
    finally:
        node.stop()
        for c in clients:
            await c.close()
    log = node.log()
    assert "Traceback" not in log and " ERROR " not in log, log
    assert "clean-ups unfinished" not in log, log
    assert log.count(") closed\n") == USERS, log  # every session's clean-up ran to its end
    assert "node stopper stopped" in log
