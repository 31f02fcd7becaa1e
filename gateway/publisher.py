"""Keeps this region's part of the Redis mapping current (MongooseIM ``mod_global_distrib_mapping``).

Every change of the replicated session table (a login, a presence change, a logout, a member's
sessions dropped when it died) is written to Redis as it happens, coalesced per JID; everything
the region holds is re-published every ``refresh_after`` so entries outlive ``expire_after`` only
while the region is alive; and after Redis comes back from an outage the whole region is
re-published at once.  Writes are conditional (see :mod:`gateway.mapping.store`): when Redis
says a newer login of the same full JID exists in another region, our older session is closed
with ``<conflict/>`` — the cross-region form of RFC 6120 §7.7.2.2 kick-old.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from cluster_node.cluster.table import Change as RouteChange, ReplicatedTable
from cluster_node.core.sessions import Change, SessionRecord, SessionTable

from .mapping import Location, MappingStore

__all__ = ["Publisher"]

log = logging.getLogger("meridian.gdistrib")


def routed_domain(key: str) -> str | None:
    """The domain a ``routes`` record routes to this region: ``component/<domain>`` (a component
    connected here), ``service/<domain>/<member>`` (a module's service, one record per member)."""
    kind, _, rest = key.partition("/")
    if kind == "component":
        return rest
    if kind == "service":
        return rest.partition("/")[0] or None
    return None


def location(record: SessionRecord, region: str) -> Location:
    return Location(region=region, node=record.node, sid=record.sid, created=record.created,
                    priority=record.priority, available=record.available)


class Publisher:
    def __init__(self, store: MappingStore, table: SessionTable, *, region: str, refresh_after: float,
                 endpoints: list[str], status: Callable[[], dict[str, Any]],
                 announce_every: float = 5.0, on_replaced: Callable[[SessionRecord], None] = lambda record: None,
                 on_published: Callable[[list[str]], None] = lambda bares: None,
                 retry_after: float = 1.0, routes: ReplicatedTable | None = None,
                 shared: frozenset[str] | None = None) -> None:
        self.store = store
        self.table = table
        # The domains whose sessions every region may reach (``gdistrib.global_host``); None: all.
        # A session of another domain of ours is this region's alone and is never published.
        self.shared = shared
        self.region = region
        self.refresh_after = refresh_after
        self.endpoints = endpoints
        self.status = status
        self.on_replaced = on_replaced
        self.on_published = on_published  # bare JIDs whose new logins/presence Redis now holds
        self.retry_after = retry_after
        self.announce_every = announce_every
        self._pending: dict[str, tuple[str, SessionRecord]] = {}
        self._domains: dict[str, bool] = {}  # component domains to publish (True) or remove (False)
        self.routes = routes
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.healthy = False  # the last write reached Redis
        self.writes = 0
        self.errors = 0
        table.subscribe(self._changed)
        if routes is not None:
            routes.listeners.append(self._route_changed)

    def _changed(self, change: Change) -> None:
        kind, record = change
        if self.shared is not None and record.jid.domain not in self.shared:
            return
        self._pending[str(record.jid)] = (kind, record)
        self._wake.set()

    def _route_changed(self, change: RouteChange) -> None:
        kind, record = change
        domain = routed_domain(record.key)
        if domain is not None:
            self._domains[domain] = kind == "insert"
            self._wake.set()

    def region_endpoints(self) -> list[str]:
        """The endpoints of every gateway of the region (each one's ``gateway/<name>`` route carries
        its own): every gateway publishes the same list.  Each publishing only its own overwrote
        the others' every ``announce_every``, and the other regions kept closing and reopening
        their links to this one, resending what was in flight to another gateway (delivered twice)."""
        found = set(self.endpoints)
        for r in self.routes or ():
            if r.key.startswith("gateway/") and isinstance(r.value, dict) and r.value.get("region") == self.region:
                found.update(e for e in r.value.get("endpoints") or () if isinstance(e, str))
        return sorted(found)

    def component_domains(self) -> list[str]:
        """The component domains connected in this region (routable from all, as in
        https://github.com/esl/MongooseIM/pull/1700), and the service domains its members' modules
        serve for every region (MUC)."""
        if self.routes is None:
            return []
        return sorted({d for r in self.routes if (d := routed_domain(r.key)) is not None})

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._writer()), loop.create_task(self._refresher()),
                       loop.create_task(self._announcer())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, {}
            domains, self._domains = self._domains, {}
            try:
                await self._write_domains(domains)
                await self._write(batch)
            except RedisError as e:
                self._failed(e)
                for jid, change in batch.items():  # keep them, unless a newer change came meanwhile
                    self._pending.setdefault(jid, change)
                for domain, present in domains.items():
                    self._domains.setdefault(domain, present)
                await asyncio.sleep(self.retry_after)
                self._wake.set()

    async def _write_domains(self, domains: dict[str, bool]) -> None:
        live = set(self.component_domains())
        for domain, present in domains.items():
            if domain in live:  # present now, whatever the last change said
                await self.store.publish_domain(domain)
            elif not present:
                await self.store.remove_domain(domain)

    async def _write(self, batch: dict[str, tuple[str, SessionRecord]]) -> None:
        inserts = [(jid, record) for jid, (kind, record) in batch.items() if kind == "insert"]
        for jid, (kind, record) in batch.items():
            if kind == "delete":
                await self.store.remove_session(jid, record.sid)
        if inserts:
            written = await self._publish([record for _, record in inserts])
            # Logins and presence changes that make a resource available are announced; a resource
            # going away is found out by the bounce path (re-resolved where the stanza lands).
            self.on_published(sorted({str(r.jid.bare) for r in written if r.available}))
        self.writes += len(batch)
        self._recovered()

    async def _refresher(self) -> None:
        """Refresh everything before it expires; on the first success after an outage, this is the
        re-publication of the region (Redis may have restarted empty)."""
        while True:
            try:
                await self.publish_all()
                delay = self.refresh_after
            except RedisError as e:
                self._failed(e)
                delay = self.retry_after
            await asyncio.sleep(delay)

    async def _announcer(self) -> None:
        """The region record (endpoints, status for dashboards), more often than the sessions; it
        is also what notices first that Redis is back (or a replica was promoted) when no session
        changed, and then the region is re-published (what the old primary had not replicated)."""
        while True:
            await asyncio.sleep(self.announce_every)
            try:
                await self.store.publish_region(self.region_endpoints(), self.status())
            except RedisError as e:
                self._failed(e)
            else:
                self._recovered()

    async def publish_all(self) -> None:
        await self.store.publish_region(self.region_endpoints(), self.status())
        for domain in self.component_domains():
            await self.store.publish_domain(domain)
        await self._publish([r for r in self.table if self.shared is None or r.jid.domain in self.shared])
        self._recovered()

    async def _publish(self, records: list[SessionRecord]) -> list[SessionRecord]:
        """Write ``records``; return those written.  One Redis refused holds a full JID that logged in
        more recently in another region: that session of ours is stale, so it is closed."""
        results = await self.store.publish_many([(str(r.jid), location(r, self.region)) for r in records])
        written = []
        for record, ok in zip(records, results, strict=True):
            if ok:
                written.append(record)
            elif self.table.lookup(record.jid) == record:
                log.info("%s logged in more recently in another region; closing the session here", record.jid)
                self.on_replaced(record)
        return written

    def _failed(self, e: Exception) -> None:
        self.errors += 1
        if self.healthy or self.errors == 1:
            log.warning("Redis write failed (%s); retrying every %.1fs", e, self.retry_after)
        self.healthy = False

    def _recovered(self) -> None:
        if not self.healthy:
            if self.errors:
                log.info("Redis reachable again: re-publishing the region")
                self._tasks.append(asyncio.get_running_loop().create_task(self._republish()))
            self.healthy = True

    async def _republish(self) -> None:
        try:
            await self.publish_all()
        except RedisError as e:
            self._failed(e)
