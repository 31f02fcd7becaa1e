"""The region's client transports as the dashboard shows them: the per-transport counters of every
node (:mod:`cluster_node.net.transport_metrics`), asked over the cluster link every few seconds.

Nodes keep those counters in memory and never publish anything; a gateway already talks to every
member of its region, so it asks them (one small cluster request per node and interval) and puts
the sums into the status record it publishes in Redis, which every region's dashboard reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from cluster_node.core.services import Services
from cluster_node.net.transport_metrics import CALL, add_up

__all__ = ["TransportPoll"]

log = logging.getLogger("meridian.gdistrib")

INTERVAL = 2.0  # seconds between two rounds of requests
TIMEOUT = 2.0  # seconds a node has to answer


class TransportPoll:
    """Asks every node of the region for its transport counters; keeps the last answers."""

    def __init__(self, services: Services, interval: float = INTERVAL) -> None:
        self.services = services
        self.interval = interval
        self.nodes: dict[str, dict[str, Any]] = {}  # node → its last snapshot
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def status(self) -> dict[str, Any]:
        """``transports``: the region's sums per transport; ``nodeTransports``: node → transport →
        open connections."""
        return {"transports": add_up(*self.nodes.values()),
                "nodeTransports": {node: {t: c.get("connections", 0) for t, c in snap.items() if isinstance(c, dict)}
                                   for node, snap in sorted(self.nodes.items())}}

    async def poll_once(self) -> None:
        s = self.services
        calls = s.calls
        if calls is None:
            return
        gateways = {r.owner for r in s.routes if r.key.startswith("gateway/")}
        members = [m for m in calls.members() if m not in gateways]
        for gone in set(self.nodes) - set(members):
            del self.nodes[gone]

        async def ask(node: str) -> None:
            try:
                answer = await calls.request(node, CALL, {}, TIMEOUT)
            except LookupError:  # no link any more, or a node without the handler
                self.nodes.pop(node, None)
                return
            except TimeoutError:
                return  # keep its last figures
            if isinstance(answer, dict):
                self.nodes[node] = answer

        await asyncio.gather(*(ask(m) for m in members))

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:
                log.exception("asking the nodes for their transport counters failed")
            await asyncio.sleep(self.interval)
