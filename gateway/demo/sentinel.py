"""``meridian demo --sentinel``: three Redis Sentinels watch eu's Redis primary, and the eu and us
gateways find the primary through them, so killing it (``kill -9``) shows a failover: us's
replica is promoted and the gateways write to it without a restart.

Sentinel *i* (1…3) listens on ``B+i``, in eu's port range below its first node.  Each gets a
fresh ``sentinel.conf`` at every start (a Sentinel rewrites its file, and the demo's Redis
servers restart empty with eu as the primary again).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio

from .topology import HOST, DemoRedis, Topology

__all__ = ["MASTER", "DemoSentinel", "add_sentinels", "wait_sentinels"]

MASTER = "meridian"
DOWN_AFTER_MS = 2000  # the primary is down for a Sentinel after this long without an answer
FAILOVER_TIMEOUT_MS = 10_000


@dataclass
class DemoSentinel:
    name: str
    port: int
    primary: DemoRedis
    quorum: int

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def conf(self, workdir: Path) -> str:
        """Its ``sentinel.conf``: it logs to stdout, which the demo keeps in ``<name>/redis.log``."""
        return "\n".join([
            f"port {self.port}", f"bind {HOST}", "daemonize no", f"dir {workdir}",
            f"sentinel monitor {MASTER} {HOST} {self.primary.port} {self.quorum}",
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER} 1", ""])


def add_sentinels(topo: Topology, count: int = 3) -> list[DemoSentinel]:
    """The Sentinels of eu's primary, and every gateway of a region sharing it configured to find
    it through them (a region that read a replica reads one through Sentinel now)."""
    primary = topo.region("eu").redis
    sentinels = [DemoSentinel(f"redis-sentinel{i}", topo.base_port + i, primary, count // 2 + 1)
                 for i in range(1, count + 1)]
    for region in topo.regions:
        if region.redis is not primary and region.redis.replicaof != primary.port:
            continue  # another domain's own Redis
        for gw in region.gateways:
            settings: dict[str, Any] = gw.settings["gdistrib"]["redis"]
            settings.update(sentinels=[s.address for s in sentinels], sentinel_master=MASTER)
            if settings.get("read_url"):
                settings.update(read_url="", read_from_replicas=True)
    return sentinels


async def wait_sentinels(sentinels: list[DemoSentinel], replicas: list[DemoRedis], timeout: float = 30.0,
                         alive: Any = lambda: None) -> None:
    """Until every Sentinel knows the primary's replicas and the other Sentinels, so a failover
    can start at once and the us gateway's lookups go to its replica.  ``alive()`` raises when
    a process died meanwhile."""
    deadline = time.monotonic() + timeout
    for s in sentinels:
        while True:
            alive()
            try:
                async with redis.asyncio.Redis(host=HOST, port=s.port, socket_timeout=2,
                                               decode_responses=True) as c:
                    state = await c.sentinel_master(MASTER)
                if (isinstance(state, dict) and int(state.get("num-slaves", 0)) >= len(replicas)
                        and int(state.get("num-other-sentinels", 0)) == len(sentinels) - 1):
                    break
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{s.name} on port {s.port} did not find the replicas and its peers")
            await asyncio.sleep(0.2)


async def wait_synced(replicas: list[DemoRedis], timeout: float = 20.0) -> None:
    """Until each replica's link to the primary is up: Sentinels started after that list it at once."""
    deadline = time.monotonic() + timeout
    for r in replicas:
        while True:
            try:
                async with redis.asyncio.Redis(host=HOST, port=r.port, socket_timeout=2,
                                               decode_responses=True) as c:
                    if (await c.info("replication")).get("master_link_status") == "up":
                        break
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-{r.region} did not sync with its primary")
            await asyncio.sleep(0.1)
