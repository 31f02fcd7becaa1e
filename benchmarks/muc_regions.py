"""The two-region topology of ``muc.py --regions 2``: real processes, as ``tests/helpers/regions.py``
starts them for the integration tests (and ``gdistrib_relay.py`` for its benchmark).

Regions ``eu`` and ``us`` of :data:`DOMAIN`, each one ``meridian node`` and one ``meridian gateway``
joined in the region's cluster; one SQLite database both regions share (accounts); a throwaway
``redis-server`` on a free port for the mapping; mutual-TLS links between the gateways.  The MUC
service's rooms live in eu (``[modules.muc] home_cluster = "eu"`` on every member, as in
``tests/integration/test_muc_regions.py``), so us's members leave the service's stanzas to their
gateway, which relays them to eu's.

This module starts, watches and stops the topology; the phases are ``muc.py``'s.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import redis.asyncio
from common import register_accounts
from gdistrib_relay import BenchmarkError, poll, query

from gateway.mapping import MappingStore
from gateway.mapping.keys import domain_key
from tests.helpers.node import NodeProcess, toml_dump
from tests.helpers.redis import RedisServer, redis_server_binary
from tests.helpers.regions import DOMAIN, Region, make_region

__all__ = ["DOMAIN", "SERVICE", "PASSWORD", "REGIONS", "TopologyError", "TwoRegions", "redis_server_binary"]

SERVICE = f"conference.{DOMAIN}"
PASSWORD = "bench-password"  # every account's: one SCRAM derivation for all
REGIONS = ("eu", "us")  # eu is the rooms' home
# As benchmarks/peers.py's Meridian: no per-address or per-client limit below what the run does.
LIMITS = {"max_connections_per_ip": 100_000, "max_connections": 100_000, "shaper_rate": 10_000_000,
          "shaper_burst": 10_000_000, "stanza_rate": 10_000_000, "stanza_burst": 10_000_000}

# Settings tests/helpers/regions.py shortens for the tests, left at their defaults here.
TEST_TIMERS = {"cluster": ("refresh_interval", "ping_interval", "ping_timeout"),
               "connections": ("endpoint_refresh_interval", "connect_timeout", "ping_interval", "ping_timeout"),
               "redis": ("refresh_after", "expire_after"), "cache": ("jid_lifetime",),
               "bounce": ("resend_after_ms", "max_retries")}


TopologyError = BenchmarkError  # the topology did not come up, or a query failed: exit status 2


class TwoRegions:
    """eu and us (a node and a gateway each), Redis, one database: :meth:`start`, then :meth:`ready`."""

    def __init__(self, base: Path, max_users: int) -> None:
        self.base = base
        self.db = f"sqlite:///{base / 'domain.db'}"
        self.redis = RedisServer()
        muc = {"home_cluster": "eu", "max_users": max_users, "max_rooms": 1_000_000}
        node_settings: dict[str, Any] = {
            "log_level": "WARNING",
            "c2s": {"handshake_timeout": 120.0, "idle_timeout": 3600.0},
            "limits": LIMITS,
            # as the one-node run (and the peers): no message archive
            "modules": {"muc": muc, "mam": {"enabled": False}},
        }
        self.regions: dict[str, Region] = {
            name: make_region(base, name, storage_url=self.db, redis_url=self.redis.url, nodes=1, gateways=1,
                              node_settings=node_settings)
            for name in REGIONS}
        for region in self.regions.values():
            for p in region.processes:
                conf = tomllib.loads(p.config.read_text())
                # The tests' short timers (a member down after 1.5 s without traffic, a link after
                # 3 s) take a busy member for a dead one on a loaded machine: the defaults here.
                for key in TEST_TIMERS["cluster"]:
                    conf["cluster"].pop(key, None)
                if "gdistrib" in conf:
                    for section, keys in TEST_TIMERS.items():
                        for key in keys if section != "cluster" else ():
                            conf["gdistrib"].get(section, {}).pop(key, None)
                    conf["log_level"] = "WARNING"
                    conf["modules"] = {"muc": muc}  # the gateways run the service too (they sequence no room)
                p.config.write_text(toml_dump(conf))

    @property
    def servers(self) -> list[NodeProcess]:
        return [p for r in self.regions.values() for p in r.processes]

    def node(self, region: str) -> NodeProcess:
        return self.regions[region].nodes[0]

    def gateway(self, region: str) -> NodeProcess:
        return self.regions[region].gateways[0]

    def pids(self) -> dict[str, int]:
        """Server process name (and ``redis``) → pid."""
        out = {p.name: p.proc.pid for p in self.servers if p.proc is not None}
        if self.redis.proc is not None:
            out["redis"] = self.redis.proc.pid
        return out

    # -- life -------------------------------------------------------------------------------------

    async def register(self, names: list[str]) -> None:
        """Accounts straight into the shared database (all with :data:`PASSWORD`)."""
        await register_accounts(self.db, DOMAIN, names, PASSWORD)

    def start(self) -> None:
        self.redis.start()
        for region in self.regions.values():
            region.start()

    def stop(self) -> None:
        for region in self.regions.values():
            region.stop()
        self.redis.close()

    async def ready(self, timeout: float = 60.0) -> None:
        """Each region's cluster joined, each gateway's link to the other region up, and the service
        published to the mapping by eu (its home)."""
        for region in self.regions.values():
            names = sorted(p.name for p in region.processes)
            for p in region.processes:
                async def joined(p: NodeProcess = p, names: list[str] = names) -> bool:
                    return bool(sorted((await query(p, "cets", "systemInfo"))["joinedNodes"]) == names)
                await poll(joined, timeout, f"{p.name} to join {names}")
        for name, other in zip(REGIONS, reversed(REGIONS), strict=True):
            gw = self.gateway(name)

            async def up(gw: NodeProcess = gw, other: str = other) -> bool:
                return bool((await query(gw, "gdistrib", "status"))["links"].get(other, {}).get("up"))
            await poll(up, timeout, f"{gw.name}'s link to {other}")
        client = redis.asyncio.Redis.from_url(self.redis.url)
        try:
            async def homed() -> bool:
                return await client.get(domain_key(SERVICE)) == b"eu"
            await poll(homed, timeout, f"{SERVICE} published by eu")
        finally:
            await client.aclose()

    async def mapped(self, jids: list[str], timeout: float = 120.0) -> None:
        """Until Redis maps every one of ``jids`` (full JIDs) to a region: the room's copies for a
        recipient the mapping does not know yet would come back as errors."""
        client = redis.asyncio.Redis.from_url(self.redis.url)
        store = MappingStore(client, None, region="bench", expire_after=60)
        pending = list(jids)
        try:
            async def check() -> bool:
                nonlocal pending
                still = []
                for jid in pending:
                    bare, _, res = jid.partition("/")
                    if res not in await store.lookup_bare(bare):
                        still.append(jid)
                pending = still
                return not pending
            await poll(check, timeout, f"{len(pending)} clients to be mapped in Redis")
        finally:
            await client.aclose()

    async def counters(self) -> dict[str, dict[str, Any]]:
        """Each gateway's relay counters (``gdistrib { status }``): region → counters."""
        return {name: (await query(self.gateway(name), "gdistrib", "status"))["counters"] for name in REGIONS}

    def warnings(self) -> list[str]:
        """Warnings and errors the servers logged (the self-signed certificate notice aside)."""
        out = []
        for p in self.servers:
            try:
                log = p.log_path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            lines = [line for line in log.splitlines() if (" WARNING " in line or " ERROR " in line)
                     and "self-signed" not in line]
            if lines or "Traceback" in log:
                tb = " and a Traceback" if "Traceback" in log else ""
                out.append(f"{p.name} logged {len(lines)} warnings/errors{tb}"
                           f"{', the first: ' + lines[0][:200] if lines else ''}")
        return out


