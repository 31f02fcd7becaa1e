"""Build and run a gateway: a cluster member with the node services (no client listeners), plus
the mapping publisher, the global router and the links to the other regions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

from cluster_node.core.hooks import Hook
from cluster_node.core.router import Router, add_global_routing
from cluster_node.core.sessions import SessionRecord
from cluster_node.net.tls import ensure_self_signed
from cluster_node.settings import StartError
from cluster_node.wiring import Node, run_until_signalled, running_node, without_password
from cluster_node.xmpp import errors
from cluster_node.xmpp.errors import StanzaError
from cluster_node.xmpp.jid import InvalidJid, Jid
from cluster_node.xmpp.stanza import Stanza

from .dashboard import dashboard_routes, gateway_source
from .leases import Leases
from .link.errors import LinkError
from .link.tls import client_context, server_context
from .links import RegionLinks
from .mapping import MappingCache, MappingStore, mapping_clients
from .ordering import pair
from .publisher import Publisher
from .relay import GlobalRouter, Relayed
from .s2s.service import S2SService, dialback_secret
from .settings import GatewaySettings, RedisSettings
from .transports import TransportPoll

__all__ = ["Gateway", "running_gateway", "run_gateway"]

log = logging.getLogger("meridian.gdistrib")


@dataclass
class Gateway:
    node: Node
    store: MappingStore
    router: GlobalRouter
    links: RegionLinks
    publisher: Publisher
    transports: TransportPoll | None = None  # the nodes' per-transport counters, for the dashboard
    leases: Leases | None = None  # service domains held by one region at a time (MUC re-homing)

    def status(self) -> dict[str, Any]:
        """This region as the dashboard and ``ctl gdistrib status`` show it."""
        s = self.node.services
        member = s.cluster
        return {
            "region": self.router.region,
            "gateway": s.node,
            "members": sorted([s.node, *member.links]) if member is not None else [s.node],
            "gateways": sorted(r.owner for r in s.routes if r.key.startswith("gateway/")),
            "sessions": len(s.table),
            "links": self.links.status(),
            "pairQueue": self.router.pairs.depth,
            "counters": self.router.counters.as_dict(),
            "leases": self.leases.status() if self.leases is not None else {},
            "cache": {"size": len(self.router.cache), "hits": self.router.cache.hits,
                      "misses": self.router.cache.misses},
            "redis": {"reads": self.router.redis_ok, "writes": self.publisher.healthy},
            **(self.transports.status() if self.transports is not None else {}),
            **self._cluster_and_s2s(),
        }

    def _cluster_and_s2s(self) -> dict[str, Any]:
        """The cluster's conflict view and this gateway's S2S peers, published with the status so
        every region's dashboard shows them (not only the gateway's own)."""
        out: dict[str, Any] = {}
        member = self.node.services.cluster
        if member is not None:
            info = member.system_info()
            out["cluster"] = {k: info.get(k) for k in (
                "joinedNodes", "unavailableNodes", "conflictNodes", "conflictTables", "discoveryWorks")}
        s2s = self.node.queries.get(("s2s", "connections"))  # registered when [s2s] is enabled
        if s2s is not None:
            out["s2s"] = {"peers": s2s()}
        muc = self.node.queries.get(("muc", "rooms"))  # registered when the muc module runs here
        if muc is not None:
            out["muc"] = muc()
        return out

    async def lookup(self, jid: str) -> dict[str, Any]:
        from cluster_node.xmpp.jid import Jid

        found = await self.router.locate(Jid.parse(jid).bare, fresh=True)
        return {res: {"region": loc.region, "node": loc.node, "priority": loc.priority,
                      "available": loc.available} for res, loc in sorted(found.items())}


class GatewayCollector(Collector):
    """Prometheus view of the gateway, read at scrape time from the counters it keeps anyway:
    relays per region, bounces, TTL drops, queues, link state per remote region, cache, Redis."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        g = self.gateway
        c = g.router.counters
        for name, doc, per_region in (("relayed", "Stanzas relayed to another region", c.relayed),
                                      ("received", "Stanzas received from another region", c.received)):
            fam = CounterMetricFamily(f"meridian_gd_{name}", doc, labels=["region"])
            for region, n in sorted(per_region.items()):
                fam.add_metric([region], n)
            yield fam
        for name, doc, value in (
                ("bounced", "Stanzas bounced with an error after re-resolving", c.bounced),
                ("ttl_drops", "Relayed stanzas dropped at their hop limit", c.ttl_drops),
                ("link_errors", "Relays refused by a link (down, queue full)", c.link_errors),
                ("redis_errors", "Mapping reads that failed on Redis", c.redis_errors),
                ("lookups", "Mapping lookups", c.lookups),
                ("handled_locally", "Stanzas no region held the recipient of", c.handled_locally),
                ("cache_hits", "Mapping cache hits", g.router.cache.hits),
                ("cache_misses", "Mapping cache misses", g.router.cache.misses)):
            yield CounterMetricFamily(f"meridian_gd_{name}", doc, value=value)
        asked = g.router.cache.hits + g.router.cache.misses
        yield GaugeMetricFamily("meridian_gd_cache_hit_ratio", "Mapping cache hits / lookups since start",
                                value=g.router.cache.hits / asked if asked else 0.0)
        yield GaugeMetricFamily("meridian_gd_pair_queue", "Stanzas waiting for per-pair order",
                                value=g.router.pairs.depth)
        up = GaugeMetricFamily("meridian_gd_link_up", "1 when a link to the region is up", labels=["region"])
        queue = GaugeMetricFamily("meridian_gd_link_queue", "Stanzas queued on the link", labels=["region"])
        flight = GaugeMetricFamily("meridian_gd_link_in_flight", "Stanzas sent, not acked", labels=["region"])
        for region, st in sorted(g.links.status().items()):
            up.add_metric([region], 1.0 if st.get("up") else 0.0)
            queue.add_metric([region], st.get("queue") or 0)
            flight.add_metric([region], st.get("inFlight") or 0)
        yield from (up, queue, flight)
        redis = GaugeMetricFamily("meridian_gd_redis_up", "1 when the last Redis operation worked", labels=["use"])
        redis.add_metric(["read"], 1.0 if g.router.redis_ok else 0.0)
        redis.add_metric(["write"], 1.0 if g.publisher.healthy else 0.0)
        yield redis


@contextlib.asynccontextmanager
async def running_gateway(settings: GatewaySettings, *, http_routes: Sequence[web.RouteDef] = ()
                          ) -> AsyncIterator[Gateway]:
    """Run the node services plus global distribution; ``http_routes`` go on the admin port, after
    the dashboard's (``/dashboard``: every region's status, read from Redis)."""
    gd = settings.gdistrib
    conns = gd.connections
    assert conns.ca_file and conns.cert_file and conns.key_file  # checked by the settings
    dashboard = gateway_source()
    routes = [*dashboard_routes(dashboard, stop=dashboard.closing), *http_routes]
    r = gd.redis
    clients = mapping_clients(r.url, r.read_url, sentinels=r.sentinels, sentinel_master=r.sentinel_master,
                              sentinel_password=r.sentinel_password, sentinel_tls=r.sentinel_tls,
                              read_from_replicas=r.read_from_replicas)
    try:
        await _reach_redis(clients.write, r)
    except StartError:
        await clients.aclose()
        raise
    async with running_node(settings, http_routes=routes) as node, contextlib.aclosing(clients):
        services = node.services
        member = services.cluster
        assert member is not None  # a gateway is a cluster member (checked by the settings)
        store = MappingStore(clients.write, clients.read, region=gd.local_host, expire_after=gd.redis.expire_after)
        cache: MappingCache[Any] = MappingCache(
            gd.cache.max_size, jid_lifetime=gd.cache.jid_lifetime or 0.001,
            domain_lifetime=gd.cache.domain_lifetime or 0.001,
            miss_lifetime=(gd.cache.jid_lifetime or None) if gd.cache.cache_missed else None)
        router: GlobalRouter | None = None

        def received(relayed: Relayed) -> asyncio.Future[None] | None:
            assert router is not None
            return router.received(relayed)

        def undeliverable(relayed: Relayed, error: LinkError) -> None:
            assert router is not None
            router.undeliverable(relayed, error)

        links = RegionLinks(store, conns, region=gd.local_host, gateway=settings.node_name,
                            server_tls=server_context(conns.cert_file, conns.key_file, conns.ca_file),
                            client_tls=client_context(conns.cert_file, conns.key_file, conns.ca_file),
                            on_stanza=received, on_undeliverable=undeliverable)
        router = GlobalRouter(services, store, cache, links.send, region=gd.local_host, ttl=gd.message_ttl,
                              bounce=gd.bounce.enabled, resend_after=gd.bounce.resend_after_ms / 1000,
                              max_retries=gd.bounce.max_retries, shared=frozenset(settings.shared_domains))
        # The gateway's own router answers for the other regions before the node's hand-off would
        # (priority 40 < 50); nodes hand it stanzas in "gd" envelopes.
        add_global_routing(services.hooks, router, priority=40, owner=router)
        services.other_regions = lambda: True
        services.envelopes["gd"] = router.handoff
        links.on_acked = router.remote_acked  # hand-offs confirmed to their nodes once relayed
        s2s = await _start_s2s(settings, node, router)
        gateway: Gateway | None = None

        def replaced(record: SessionRecord) -> None:
            node.sessions.kick(record, "conflict", "replaced by a newer login in another region")

        publisher = Publisher(store, services.table, region=gd.local_host, refresh_after=gd.redis.refresh_after,
                              endpoints=conns.advertised_endpoints or conns.endpoints,
                              status=lambda: gateway.status() if gateway is not None else {},
                              announce_every=conns.endpoint_refresh_interval, on_replaced=replaced,
                              on_published=lambda bares: router.announce(bares, list(links.pools)),
                              routes=services.routes, shared=frozenset(settings.shared_domains))
        transports = TransportPoll(services)
        expire = gd.redis.expire_after
        leases = Leases(store, services.routes, member.broadcast, node=settings.node_name, region=gd.local_host,
                        expire_after=expire, every=min(gd.redis.refresh_after, expire / 3),
                        on_change=lambda domain, holder: router.domain_moved(domain, holder, list(links.pools)))
        gateway = Gateway(node, store, router, links, publisher, transports, leases)
        dashboard.gateway = gateway
        await links.start()
        transports.start()
        await publisher.start()
        await leases.start()
        # Tell the region's nodes that stanzas for other regions may be handed to us.
        member.broadcast(services.routes.insert(f"gateway/{settings.node_name}", {
            "region": gd.local_host, "endpoints": list(conns.advertised_endpoints or conns.endpoints)}))
        node.queries[("gdistrib", "status")] = gateway.status
        node.queries[("gdistrib", "lookup")] = gateway.lookup
        node.metrics.register(GatewayCollector(gateway))
        node.ready_checks["redis"] = lambda: router.redis_ok and publisher.healthy
        log.info("gateway %s of region %s: links on %s, Redis %s", settings.node_name, gd.local_host,
                 ", ".join(links.addresses), clients.description)
        try:
            yield gateway
        finally:
            dashboard.closing.set()
            await transports.stop()
            if s2s is not None:
                await s2s.stop()
            op = services.routes.delete(f"gateway/{settings.node_name}")
            if op is not None:
                member.broadcast(op)
            await leases.stop()
            await publisher.stop()
            # What the members handed us before they learnt we are going (their stanzas arrive
            # before their acks), and what other regions relayed to us (acked once handed on),
            # goes on its way and is acked before the links close; other regions resend the rest.
            await links.server.stop(settings.shutdown_timeout)
            await member.wait_acks(settings.shutdown_timeout)
            await router.pairs.drain(settings.shutdown_timeout)
            await links.stop()
            await router.pairs.close()


async def _reach_redis(client: Any, settings: RedisSettings) -> None:
    """Redis answers within ``start_timeout``, or the gateway does not start: one line naming the
    setting and the endpoint (a gateway that started without the mapping would route nothing to
    other regions).  Once running, an outage is ridden out from the cache instead."""
    where = (f"gdistrib.redis.sentinels ({', '.join(settings.sentinels)}, primary {settings.sentinel_master!r})"
             if settings.sentinels else f"gdistrib.redis.url ({without_password(settings.url)})")
    try:
        async for attempt in AsyncRetrying(stop=stop_after_delay(settings.start_timeout), wait=wait_fixed(0.5),
                                           retry=retry_if_exception_type((RedisError, OSError)), reraise=True):
            with attempt:
                await client.ping()
    except (RedisError, OSError) as e:
        raise StartError(f"{where}: no answer in {settings.start_timeout:g} s "
                         f"(gdistrib.redis.start_timeout): {type(e).__name__}: {e}") from None


async def _start_s2s(settings: GatewaySettings, node: Node, router: GlobalRouter) -> S2SService | None:
    """Federation: the router's way to every domain no region of ours serves — a
    component or service domain connected in another region first, else S2S (when enabled);
    nodes hand such stanzas to a gateway with ``{"gd": "s2s"}``."""
    services = node.services
    s2s: S2SService | None = None
    if settings.s2s.enabled:
        if settings.tls.cert_file and settings.tls.key_file:
            default_cert = (settings.tls.cert_file, settings.tls.key_file)
        else:
            default_cert = ensure_self_signed(settings.data_dir / "tls", settings.domains)
        s2s = S2SService(settings.s2s, [*settings.domains, *settings.s2s.service_domains],
                         dialback_secret(settings.s2s, settings.cluster.secret), services.router, default_cert,
                         submit=lambda stanza: router.pairs.submit(pair(stanza.from_, stanza.to),
                                                                   lambda: services.router.route(stanza)),
                         auth_failed=services.auth_failed, auth_refusal=services.auth_refusal,
                         refused=services.refused)

    async def remote(stanza: Stanza, to: Jid) -> bool:
        """The routing chain after the region's components: another region's component or
        service domain, else S2S."""
        if await router.to_domain(stanza, to):
            return True
        if s2s is None:
            raise errors.RemoteServerNotFound(f"{to.domain} is not served here (S2S is disabled)")
        await s2s.remote(stanza, to)
        return True

    def handoff(envelope: dict[str, Any], stanza: Any, relay: Any = services.envelopes["gd"]) -> None:
        if envelope.get("gd") != "s2s":
            relay(envelope, stanza)  # (a run's list for "many")
            return
        try:
            to = Jid.parse(stanza.to or "")
        except InvalidJid:
            router.pairs.submit(pair(stanza.from_, stanza.to), router.confirming(envelope, _nothing))
            return
        # One queue per pair of accounts, as for relayed stanzas: a conversation keeps its order.
        router.pairs.submit(pair(stanza.from_, stanza.to), router.confirming(
            envelope, lambda: _remote_or_error(services.router, remote, stanza, to)))

    services.hooks.add(Hook.ROUTE_REMOTE, remote, 40, owner=router)
    services.envelopes["gd"] = handoff
    if s2s is not None:
        await s2s.start()
        node.queries[("s2s", "connections")] = s2s.connections
    return s2s


async def _nothing() -> None:
    pass


async def _remote_or_error(router: Router, remote: Any, stanza: Stanza, to: Jid) -> None:
    try:
        await remote(stanza, to)
    except StanzaError as e:
        router.send_error(stanza, e)


async def run_gateway(settings: GatewaySettings) -> None:
    """``meridian gateway``: run until SIGINT/SIGTERM."""
    await run_until_signalled(running_gateway(settings), f"gateway {settings.node_name}")
