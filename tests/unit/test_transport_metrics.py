"""Per-transport counters: what a transport counts, how Prometheus shows it, how a region adds up."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cluster_node.net.transport_metrics import TRANSPORTS, TransportCollector, TransportMetrics, add_up


def samples(metrics: TransportMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TransportCollector(metrics))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_every_transport_is_reported_from_the_start() -> None:
    got = samples(TransportMetrics())
    for t in TRANSPORTS:
        assert got[("meridian_transport_connections", (("transport", t),))] == 0
        assert got[("meridian_transport_accepted_total", (("transport", t),))] == 0
        for d in ("in", "out"):
            assert got[("meridian_transport_bytes_total", (("direction", d), ("transport", t)))] == 0
            assert got[("meridian_transport_stanzas_total", (("direction", d), ("transport", t)))] == 0


def test_a_transport_counts_through_the_small_api() -> None:
    m = TransportMetrics()
    bosh = m["bosh"]
    bosh.opened()
    bosh.opened()
    bosh.closed()
    bosh.received(300, stanzas=2)
    bosh.sent(1000, stanzas=3)
    got = samples(m)
    assert got[("meridian_transport_connections", (("transport", "bosh"),))] == 1
    assert got[("meridian_transport_accepted_total", (("transport", "bosh"),))] == 2
    assert got[("meridian_transport_bytes_total", (("direction", "in"), ("transport", "bosh")))] == 300
    assert got[("meridian_transport_stanzas_total", (("direction", "out"), ("transport", "bosh")))] == 3
    assert m.snapshot()["bosh"] == {"connections": 1, "accepted": 2, "bytesIn": 300, "bytesOut": 1000,
                                    "stanzasIn": 2, "stanzasOut": 3}
    assert m["quic"].name == "quic" and "quic" in m.snapshot()  # a transport added later is counted too


def test_a_region_adds_up_its_nodes_and_skips_what_is_malformed() -> None:
    a, b = TransportMetrics(), TransportMetrics()
    a["tcp"].opened()
    b["tcp"].opened()
    b["websocket"].received(10, 1)
    total = add_up(a.snapshot(), b.snapshot(), {"tcp": {"connections": "many", "accepted": True}}, "junk")  # type: ignore[arg-type]
    assert total["tcp"]["connections"] == 2 and total["tcp"]["accepted"] == 2
    assert total["websocket"]["bytesIn"] == 10 and total["websocket"]["stanzasIn"] == 1
    assert total["bosh"]["connections"] == 0
