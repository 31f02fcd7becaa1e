"""Per-transport counters of a node's client connections (TCP, WebSocket, BOSH).

Every client transport counts into the :class:`TransportCounters` of its name: connections open now
and accepted since start, bytes and stanzas in each direction.  They are plain ``int`` attributes
incremented in place — no lock (one event loop), no call on the per-stanza path — and read at
scrape time by :class:`TransportCollector` (Prometheus) and by the cluster call the gateways use
for the dashboard (:func:`snapshot`).

A connection built on :class:`~.c2s_server.C2SConnection` is counted by it (its class's
``transport`` names the counters); a transport that is not one calls :meth:`TransportCounters.opened`,
:meth:`~TransportCounters.closed`, :meth:`~TransportCounters.received` and
:meth:`~TransportCounters.sent` itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["TRANSPORTS", "CALL", "TransportCounters", "TransportMetrics", "TransportCollector", "add_up", "snapshot"]

TRANSPORTS = ("tcp", "websocket", "bosh")
CALL = "transports.snapshot"  # the cluster request a gateway sends each member for the dashboard


class TransportCounters:
    """The counters of one transport (see the module docstring)."""

    __slots__ = ("name", "connections", "accepted", "bytes_in", "bytes_out", "stanzas_in", "stanzas_out")

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections = 0  # open now
        self.accepted = 0  # since start
        self.bytes_in = 0  # payload: after TLS, without WebSocket/HTTP framing
        self.bytes_out = 0
        self.stanzas_in = 0  # message, presence, iq from clients
        self.stanzas_out = 0  # written to clients

    def opened(self) -> None:
        self.connections += 1
        self.accepted += 1

    def closed(self) -> None:
        self.connections -= 1

    def received(self, nbytes: int, stanzas: int = 0) -> None:
        self.bytes_in += nbytes
        self.stanzas_in += stanzas

    def sent(self, nbytes: int, stanzas: int = 0) -> None:
        self.bytes_out += nbytes
        self.stanzas_out += stanzas

    def as_dict(self) -> dict[str, int]:
        return {"connections": self.connections, "accepted": self.accepted, "bytesIn": self.bytes_in,
                "bytesOut": self.bytes_out, "stanzasIn": self.stanzas_in, "stanzasOut": self.stanzas_out}


class TransportMetrics:
    """One :class:`TransportCounters` per transport name (:data:`TRANSPORTS`, reported even at 0)."""

    def __init__(self) -> None:
        self.by_name = {name: TransportCounters(name) for name in TRANSPORTS}

    def __getitem__(self, name: str) -> TransportCounters:
        counters = self.by_name.get(name)
        if counters is None:  # a transport added later still gets counted
            counters = self.by_name[name] = TransportCounters(name)
        return counters

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {name: c.as_dict() for name, c in self.by_name.items()}


def snapshot(metrics: TransportMetrics) -> dict[str, dict[str, int]]:
    """What a member answers :data:`CALL` with (JSON: transport → counters)."""
    return metrics.snapshot()


def add_up(*snapshots: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The sum of several members' snapshots (what a region shows); malformed parts are skipped."""
    out: dict[str, dict[str, int]] = {}
    for snap in snapshots:
        if not isinstance(snap, dict):
            continue
        for name, counters in snap.items():
            if not isinstance(counters, dict):
                continue
            into = out.setdefault(str(name), {})
            for key, value in counters.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    into[key] = into.get(key, 0) + value
    return out


class TransportCollector(Collector):
    """Prometheus: ``meridian_transport_connections`` (open now), ``…_accepted_total``,
    ``…_bytes_total`` and ``…_stanzas_total`` (``direction`` in/out), each by ``transport``."""

    def __init__(self, metrics: TransportMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        open_now = GaugeMetricFamily("meridian_transport_connections", "Open client connections, by transport",
                                     labels=["transport"])
        accepted = CounterMetricFamily("meridian_transport_accepted", "Client connections accepted, by transport",
                                       labels=["transport"])
        nbytes = CounterMetricFamily("meridian_transport_bytes", "Client payload bytes (after TLS, without "
                                     "WebSocket or HTTP framing), by transport and direction",
                                     labels=["transport", "direction"])
        stanzas = CounterMetricFamily("meridian_transport_stanzas", "Stanzas from and to clients, by transport "
                                      "and direction", labels=["transport", "direction"])
        for name, c in self.metrics.by_name.items():
            open_now.add_metric([name], c.connections)
            accepted.add_metric([name], c.accepted)
            nbytes.add_metric([name, "in"], c.bytes_in)
            nbytes.add_metric([name, "out"], c.bytes_out)
            stanzas.add_metric([name, "in"], c.stanzas_in)
            stanzas.add_metric([name, "out"], c.stanzas_out)
        yield from (open_now, accepted, nbytes, stanzas)
