"""Prometheus metrics of a node, in a registry of its own (no process-global state).

Most values are read from counters the services keep anyway, at scrape time, by a collector:
nothing is added to the hot path for them.  The exceptions are stanzas by kind and the routing
latency, which nothing counts: :func:`instrument` wraps the session manager's ``outbound`` (what
clients send) and the router's ``deliver`` on their instances and sets the router's
``observe_route`` (plain integer increments per stanza, read by :class:`MessagePathMetrics`).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, metrics as _prom_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from ..core.router import Router
    from ..core.session_manager import SessionManager
    from .view import NodeView as Node

__all__ = ["new_registry", "instrument", "MessagePathMetrics", "NodeCollector", "OfflineGauge"]

KINDS = ("message", "presence", "iq")


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=False)


ROUTING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# The 'le' labels as prometheus_client writes them ('+Inf' last).
_BUCKET_LABELS = tuple(floatToGoString(b) for b in (*ROUTING_BUCKETS, float("inf")))  # type: ignore[no-untyped-call]


class MessagePathMetrics(Collector):
    """Stanzas by kind and the routing latency, counted with plain integers.

    Everything runs on the node's one event loop, so a ``+= 1`` needs no lock; prometheus_client's
    ``Counter``/``Histogram`` take a ``threading.Lock`` per increment (~5 % of the node's CPU in the
    closed loop).  Exported under the names and with the values those would have had.
    """

    def __init__(self) -> None:
        self.stanzas_in = dict.fromkeys(KINDS, 0)
        self.stanzas_out = dict.fromkeys(KINDS, 0)
        self.bucket_counts = [0] * (len(ROUTING_BUCKETS) + 1)  # per bucket, not cumulative; last: +Inf
        self.routing_sum = 0.0
        self.created = time.time()

    def observe_route(self, seconds: float) -> None:
        """One routing's duration (the router calls it: no wrapper coroutine per stanza)."""
        self.routing_sum += seconds
        self.bucket_counts[bisect_left(ROUTING_BUCKETS, seconds)] += 1

    def collect(self) -> Iterator[Metric]:
        created = self.created if _prom_metrics._use_created else None
        for name, doc, counts in (
                ("meridian_stanzas_in", "Stanzas received from clients, by kind", self.stanzas_in),
                ("meridian_stanzas_out", "Stanzas delivered to sessions held here, by kind", self.stanzas_out)):
            fam = CounterMetricFamily(name, doc, labels=["kind"])
            for kind in KINDS:
                fam.add_metric([kind], counts[kind], created=created)
            yield fam
        hist = HistogramMetricFamily("meridian_routing_seconds", "Time to route one stanza (lookup to hand-off)",
                                     labels=[])
        cumulative, buckets = 0, []
        for label, count in zip(_BUCKET_LABELS, self.bucket_counts, strict=True):
            cumulative += count
            buckets.append((label, cumulative))
        hist.add_metric([], buckets, self.routing_sum)
        if created is not None:
            hist.add_sample("meridian_routing_seconds_created", {}, created)
        yield hist


def instrument(sessions: SessionManager, router: Router, registry: CollectorRegistry) -> MessagePathMetrics:
    """Count stanzas from clients (in) and delivered to sessions (out) by kind; time each routing."""
    metrics = MessagePathMetrics()
    registry.register(metrics)
    ins, outs = metrics.stanzas_in, metrics.stanzas_out
    outbound: Callable[..., Coroutine[Any, Any, None]] = sessions.outbound
    deliver: Callable[..., None] = router.deliver

    def counted_outbound(session: Any, stanza: Any) -> Coroutine[Any, Any, None]:
        # A plain function returning the coroutine: awaited like ``outbound``, one frame less.
        kind = stanza.name
        if kind in ins:
            ins[kind] += 1
        return outbound(session, stanza)

    def counted_deliver(record: Any, stanza: Any) -> None:
        kind = stanza.name
        if kind in outs:
            outs[kind] += 1
        deliver(record, stanza)

    sessions.outbound = counted_outbound  # type: ignore[method-assign]
    router.observe_route = metrics.observe_route
    router.deliver = counted_deliver  # type: ignore[method-assign]
    return metrics


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
        yield _counter("meridian_c2s_parsers_parked", "Times an idle client stream's XML parser was parked "
                       "(c2s.park_parser_after)", c2s.counters["parsers_parked"])
        throttle = s.auth_throttle
        yield _counter("meridian_auth_throttle_delayed", "Authentication failures answered late (throttling)",
                       throttle.counters["delayed"])
        yield _counter("meridian_auth_throttle_bans", "Addresses banned after authentication failures",
                       throttle.counters["bans"])
        yield _counter("meridian_auth_throttle_refused", "Connections and requests refused from banned addresses",
                       throttle.counters["refused"])
        yield _gauge("meridian_auth_throttle_banned", "Addresses banned now", len(throttle.bans(time.monotonic())))
        refusals = CounterMetricFamily("meridian_refusals", "Refusals by the limit that was hit (the setting's name)",
                                       labels=["limit"])
        for limit, count in sorted(s.refusals.items()):
            refusals.add_metric([limit], count)
        yield refusals
        cache = s.accounts.login_cache
        if cache is not None:
            yield _counter("meridian_login_cache_hits", "SASL PLAIN logins verified without PBKDF2 (login cache)",
                           cache.counters["hits"])
            yield _gauge("meridian_login_cache_entries", "Verified PLAIN logins remembered", len(cache))
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
        kept = sum(conn.core.kept for conn in member.links.values()) if member is not None else 0
        yield _gauge("meridian_cluster_unread_kept", "Messages sent to other members, kept until they say they "
                     "read them", kept)
        rerouted = member.unread_rerouted if member is not None else 0
        yield _counter("meridian_cluster_unread_rerouted", "Messages a member went down without reading, routed "
                       "again from here", rerouted)

    def _s2s(self) -> list[dict[str, Any]]:
        query = self.node.queries.get(("s2s", "connections"))
        if query is None:
            return []
        try:
            result = query()
        except Exception:  # a broken query must not break the scrape
            return []
        return list(result) if isinstance(result, list) else []
