"""The message path's metrics are plain integers read by a collector (no lock per increment):
they must export what prometheus_client's Counter and Histogram exported, under the same names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cluster_node.api.metrics import KINDS, ROUTING_BUCKETS, MessagePathMetrics, instrument, new_registry
from tests.helpers.fake_host import FakeNode, fake_node, stanza

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def without_created(found: Samples) -> Samples:
    return {k: v for k, v in found.items() if not k[0].endswith("_created")}


def test_same_samples_as_prometheus_client_counters_and_histogram() -> None:
    reference = CollectorRegistry(auto_describe=False)
    ins = Counter("meridian_stanzas_in", "Stanzas received from clients, by kind", ["kind"], registry=reference)
    outs = Counter("meridian_stanzas_out", "Stanzas delivered to sessions held here, by kind", ["kind"],
                   registry=reference)
    latency = Histogram("meridian_routing_seconds", "Time to route one stanza (lookup to hand-off)",
                        buckets=ROUTING_BUCKETS, registry=reference)
    for k in KINDS:
        ins.labels(k)
        outs.labels(k)
    ours = MessagePathMetrics()
    registry = new_registry()
    registry.register(ours)
    # Values on the bucket bounds, between them, above the last one, and zero.
    for seconds in (0.0, 0.0001, 0.00011, 0.001, 0.0049, 2.5, 2.6, 30.0, *ROUTING_BUCKETS):
        latency.observe(seconds)
        ours.observe_route(seconds)
    for kind, n in (("message", 5), ("presence", 2), ("iq", 1)):
        ins.labels(kind).inc(n)
        ours.stanzas_in[kind] += n
    outs.labels("message").inc(3)
    ours.stanzas_out["message"] += 3

    expected, got = samples(reference), samples(registry)
    assert without_created(got) == pytest.approx(without_created(expected))
    assert {k for k in got if k[0].endswith("_created")} == {k for k in expected if k[0].endswith("_created")}
    assert got[("meridian_routing_seconds_bucket", (("le", "+Inf"),))] == len(ROUTING_BUCKETS) + 8


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as n:
        yield n


async def test_a_routed_message_is_counted_in_out_and_timed(node: FakeNode) -> None:
    registry = new_registry()
    metrics = instrument(node.sessions, node.router, registry)
    alice = node.bind("alice@example.com/a")
    bob = node.bind("bob@example.com/b")
    message = stanza("<message xmlns='jabber:client' from='alice@example.com/a' to='bob@example.com/b' "
                     "type='chat' id='1'><body>hi</body></message>")
    await node.sessions.outbound(alice, message)  # type: ignore[arg-type]
    await node.settle()
    assert [s.id for s in bob.delivered] == ["1"]
    found = samples(registry)
    assert found[("meridian_stanzas_in_total", (("kind", "message"),))] == 1
    assert found[("meridian_stanzas_in_total", (("kind", "iq"),))] == 0
    assert found[("meridian_stanzas_out_total", (("kind", "message"),))] == 1
    assert found[("meridian_routing_seconds_count", ())] == 1
    assert found[("meridian_routing_seconds_bucket", (("le", "+Inf"),))] == 1
    assert 0 < found[("meridian_routing_seconds_sum", ())] == metrics.routing_sum < 5
