"""Prometheus metrics of a node, in a registry of its own (no process-global state).

Most values are read from counters the services keep anyway, at scrape time, by a collector:
nothing is added to the hot path for them.  The exceptions are stanzas by kind and the routing
latency, which nothing counts: :func:`instrument` wraps the session manager's ``outbound`` (what
clients send), the router's ``route`` and ``deliver`` on their instances (a counter increment and
a histogram observation per stanza).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..core.router import Router
    from ..core.session_manager import SessionManager
    from .view import NodeView as Node

__all__ = ["new_registry", "instrument", "NodeCollector", "OfflineGauge"]

KINDS = ("message", "presence", "iq")


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=False)


def instrument(sessions: SessionManager, router: Router, registry: CollectorRegistry) -> None:
    """Count stanzas from clients (in) and delivered to sessions (out) by kind; time each routing."""
    stanzas_in = Counter("meridian_stanzas_in", "Stanzas received from clients, by kind", ["kind"],
                         registry=registry)
    stanzas_out = Counter("meridian_stanzas_out", "Stanzas delivered to sessions held here, by kind", ["kind"],
                          registry=registry)
    latency = Histogram("meridian_routing_seconds", "Time to route one stanza (lookup to hand-off)",
                        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                 0.5, 1.0, 2.5), registry=registry)
    ins = {k: stanzas_in.labels(k) for k in KINDS}
    outs = {k: stanzas_out.labels(k) for k in KINDS}
    outbound: Callable[..., Coroutine[Any, Any, None]] = sessions.outbound
    route: Callable[..., Coroutine[Any, Any, None]] = router.route
    deliver: Callable[..., None] = router.deliver

    async def counted_outbound(session: Any, stanza: Any) -> None:
        counter = ins.get(stanza.name)
        if counter is not None:
            counter.inc()
        await outbound(session, stanza)

    async def timed_route(stanza: Any, **kw: Any) -> None:
        start = time.perf_counter()
        try:
            await route(stanza, **kw)
        finally:
            latency.observe(time.perf_counter() - start)

    def counted_deliver(record: Any, stanza: Any) -> None:
        counter = outs.get(stanza.name)
        if counter is not None:
            counter.inc()
        deliver(record, stanza)

    sessions.outbound = counted_outbound  # type: ignore[method-assign]
    router.route = timed_route  # type: ignore[method-assign]
    router.deliver = counted_deliver  # type: ignore[method-assign]


class OfflineGauge:
    """The offline store's size: a storage query, so refreshed by the scrape handler (async)."""

    def __init__(self) -> None:
        self.value: float = 0.0


def _counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=list(labels or {}))
    fam.add_metric(list((labels or {}).values()), value)
    return fam


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class NodeCollector(Collector):
    """What every node and gateway reports, read from its services at scrape time."""

    def __init__(self, node: Node, offline: OfflineGauge) -> None:
        self.node = node
        self.offline = offline

    def collect(self) -> Iterator[Metric]:
        s = self.node.services
        c2s = self.node.c2s
        conns = GaugeMetricFamily("meridian_connections", "Open connections, by type", labels=["type"])
        conns.add_metric(["c2s"], len(c2s.connections))
        member = s.cluster
        conns.add_metric(["cluster"], len(member.links) if member is not None else 0)
        s2s = self._s2s()
        for direction in ("in", "out"):
            conns.add_metric([f"s2s_{direction}"], sum(1 for c in s2s if c.get("direction") == direction))
        yield conns
        yield _gauge("meridian_s2s_rate_refused", "Stanzas refused over a peer's stanza rate, on open S2S streams",
                     sum(int(c.get("refused") or 0) for c in s2s))
        yield _counter("meridian_c2s_connections", "Client connections accepted", c2s.counters["connections"])
        yield _counter("meridian_logins", "Successful client logins", c2s.counters["logins"])
        yield _counter("meridian_auth_failures", "Failed client authentications", c2s.counters["auth_failures"])
        yield _counter("meridian_c2s_stream_errors", "Client streams closed with an error",
                       c2s.counters["stream_errors"])
        yield _counter("meridian_c2s_stanza_rate_refused", "Client stanzas refused over the stanza rate",
                       c2s.counters["stanza_rate_refused"])
        throttle = s.auth_throttle
        yield _counter("meridian_auth_throttle_delayed", "Authentication failures answered late (throttling)",
                       throttle.counters["delayed"])
        yield _counter("meridian_auth_throttle_bans", "Addresses banned after authentication failures",
                       throttle.counters["bans"])
        yield _counter("meridian_auth_throttle_refused", "Connections and requests refused from banned addresses",
                       throttle.counters["refused"])
        yield _gauge("meridian_auth_throttle_banned", "Addresses banned now", len(throttle.bans(time.monotonic())))
        yield _gauge("meridian_sessions_local", "Sessions held by this process", len(s.local))
        yield _gauge("meridian_sessions_region", "Sessions in the region's replicated table", len(s.table))
        rc = s.router.counters
        yield _counter("meridian_routed", "Stanzas routed", rc.routed)
        yield _counter("meridian_delivered", "Stanzas delivered", rc.delivered)
        yield _counter("meridian_routing_errors", "Stanzas answered with an error", rc.errors)
        yield _gauge("meridian_offline_messages", "Messages in the offline store", self.offline.value)
        members = 1 + (len(member.links) if member is not None else 0)
        yield _gauge("meridian_cluster_members", "Joined cluster members, this one included", members)
        conflicts = sum(t.conflicts for t in member.tables.values()) if member is not None else 0
        yield _counter("meridian_cluster_conflicts", "Conflicting records resolved on merges", conflicts)
        refused = len(member.recent_refusals()) if member is not None else 0
        yield _gauge("meridian_cluster_conflict_nodes", "Peers refused in the last 5 minutes", refused)

    def _s2s(self) -> list[dict[str, Any]]:
        query = self.node.queries.get(("s2s", "connections"))
        if query is None:
            return []
        try:
            result = query()
        except Exception:  # a broken query must not break the scrape
            return []
        return list(result) if isinstance(result, list) else []
