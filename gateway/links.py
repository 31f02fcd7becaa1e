"""The gateway's links to every other region: a :class:`LinkServer` the others dial, and one
:class:`RegionPool` per other region, whose endpoints are read from Redis every
``endpoint_refresh_interval`` (regions come and go without configuration changes here)."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from .link.errors import LinkDown, LinkError
from .link.pool import LinkServer, OutgoingStanza, RegionPool
from .link.protocol import StanzaReceived
from .mapping import MappingStore
from .relay import Relayed
from .settings import ConnectionsSettings

__all__ = ["RegionLinks"]

log = logging.getLogger("meridian.gdistrib")


class RegionLinks:
    def __init__(self, store: MappingStore, settings: ConnectionsSettings, *, region: str, gateway: str,
                 server_tls: ssl.SSLContext, client_tls: ssl.SSLContext,
                 on_stanza: Callable[[Relayed], asyncio.Future[None] | None],
                 on_undeliverable: Callable[[Relayed, LinkError], None]) -> None:
        self.store = store
        self.settings = settings
        self.region = region
        self.gateway = gateway
        self.client_tls = client_tls
        self.on_stanza = on_stanza
        self.on_undeliverable = on_undeliverable
        self.server = LinkServer(region, gateway, server_tls, self._received, endpoints=settings.endpoints,
                                 ping_interval=settings.ping_interval, ping_timeout=settings.ping_timeout)
        self.pools: dict[str, RegionPool] = {}
        self.on_acked: Callable[[list[str]], None] | None = None  # ids the other regions now hold
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for pool in self.pools.values():
            await pool.stop()
        await self.server.stop()

    @property
    def addresses(self) -> list[str]:
        return self.server.addresses

    # -- stanzas ---------------------------------------------------------------------------------

    async def send(self, region: str, relayed: Relayed) -> None:
        pool = self.pools.get(region)
        if pool is None:
            pool = await self._pool_for(region)
        if pool is None:
            raise LinkDown(f"region {region} publishes no endpoints")
        meta = json.dumps(relayed.meta, separators=(",", ":")) if relayed.meta else None
        await pool.send(relayed.id, relayed.origin, relayed.ttl, relayed.data, relayed.from_, relayed.to, meta)

    def _received(self, event: StanzaReceived) -> asyncio.Future[None] | None:
        """Hand a stanza to ``on_stanza``; what it returns says when the link may ack it."""
        meta: dict[str, Any] | None = None
        if event.meta:
            try:
                value = json.loads(event.meta)
            except ValueError:
                value = None
            meta = value if isinstance(value, dict) else None
        return self.on_stanza(Relayed(event.id, event.origin, event.ttl, event.data, event.from_, event.to, meta))

    def _undeliverable(self, stanza: OutgoingStanza, error: LinkError) -> None:
        self.on_undeliverable(Relayed(stanza.id, stanza.origin, stanza.ttl, stanza.data, stanza.from_, stanza.to),
                              error)

    # -- regions and their endpoints ------------------------------------------------------------

    async def _pool_for(self, region: str) -> RegionPool | None:
        try:
            endpoints = await self.store.endpoints(region)
        except RedisError:
            return None
        return self._ensure_pool(region, endpoints) if endpoints else None

    def _ensure_pool(self, region: str, endpoints: list[str]) -> RegionPool:
        pool = self.pools.get(region)
        if pool is None:
            c = self.settings
            pool = RegionPool(self.region, self.gateway, region, self.client_tls, endpoints=endpoints,
                              connections_per_endpoint=c.connections_per_endpoint, queue_max=c.queue_max,
                              connect_timeout=c.connect_timeout, hold=c.hold_while_down, ping_interval=c.ping_interval,
                              ping_timeout=c.ping_timeout, on_undeliverable=self._undeliverable,
                              on_acked=lambda ids: self.on_acked(ids) if self.on_acked is not None else None)
            self.pools[region] = pool
            asyncio.get_running_loop().create_task(pool.start())
            log.info("linking to region %s at %s", region, ", ".join(endpoints))
        else:
            pool.set_endpoints(endpoints)
        return pool

    async def refresh(self) -> None:
        for region in await self.store.regions():
            if region == self.region:
                continue
            endpoints = await self.store.endpoints(region)
            if endpoints:
                self._ensure_pool(region, endpoints)

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except RedisError as e:
                log.debug("endpoint refresh failed: %s", e)
            await asyncio.sleep(self.settings.endpoint_refresh_interval)

    def status(self) -> dict[str, Any]:
        """Per remote region: the outgoing pool's state and what arrived from it."""
        out: dict[str, Any] = {}
        for region, pool in self.pools.items():
            st = pool.stats()
            out[region] = {"up": st.up, "connections": st.connections_up, "wanted": st.connections_wanted,
                           "queue": st.queue_depth, "inFlight": st.in_flight, "sent": st.sent, "acked": st.acked,
                           "resent": st.resent, "queueFull": st.queue_full, "linkDownErrors": st.link_down_errors,
                           "rttMs": round(st.last_rtt * 1000, 2) if st.last_rtt is not None else None,
                           "lastError": st.last_error}
        for region, st in self.server.stats().items():
            out.setdefault(region, {})["received"] = st.received
        return out
