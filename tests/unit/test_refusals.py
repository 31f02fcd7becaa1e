"""Refusals by a limit or an abuse rule are counted in one place, ``Services.refused``, by the name
of the setting whose limit was hit, and shown by ``/metrics`` and the admin API."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cluster_node.api.admin import ServerAdmin
from cluster_node.api.metrics import NodeCollector, OfflineGauge, new_registry
from cluster_node.api.schema import run_query
from gateway.link.errors import LinkDown, LinkError, QueueFull
from gateway.link.pool import RegionPool
from gateway.mapping import MappingCache
from gateway.relay import GlobalRouter, Relayed
from tests.helpers.fake_host import FakeNode, fake_node, stanza


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path, auth_throttle={"max_failures": 2, "delay_after": 5}) as n:
        yield n


def _view(node: FakeNode) -> Any:
    """What the metrics and the admin API read of a node (``api.view.NodeView``)."""
    c2s = SimpleNamespace(connections=set(), counters=Counter())
    return SimpleNamespace(services=node.services, c2s=c2s, queries={})


async def test_refused_counts_by_limit(node: FakeNode) -> None:
    s = node.services
    assert s.refusals == {}
    s.refused("limits.stanza_rate")
    s.refused("limits.stanza_rate", 2)
    s.refused("modules.muc.max_users")
    assert s.refusals == {"limits.stanza_rate": 3, "modules.muc.max_users": 1}


async def test_the_auth_throttle_counts_its_bans_and_refusals_once(node: FakeNode) -> None:
    s = node.services
    assert s.auth_refusal("192.0.2.1") is None
    s.auth_failed("192.0.2.1")
    assert s.refusals == {}  # a failure is not a refusal
    delay, ban = s.auth_failed("192.0.2.1")
    assert ban is not None and s.refusals == {"auth_throttle.max_failures": 1}
    assert s.auth_refusal("192.0.2.1") is not None and s.auth_refusal("192.0.2.1") is not None
    assert s.refusals == {"auth_throttle.max_failures": 1, "auth_throttle": 2}


async def test_metrics_have_one_sample_per_limit(node: FakeNode) -> None:
    registry = new_registry()
    registry.register(NodeCollector(_view(node), OfflineGauge()))
    assert "meridian_refusals_total{" not in generate_latest(registry).decode()  # nothing refused yet
    node.services.refused("limits.max_connections_per_ip", 4)
    node.services.refused("s2s.stanza_rate")
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    fam = families["meridian_refusals"]
    assert fam.type == "counter" and fam.documentation == "Refusals by the limit that was hit (the setting's name)"
    found = {s.labels["limit"]: s.value for s in fam.samples if s.name == "meridian_refusals_total"}
    assert found == {"limits.max_connections_per_ip": 4.0, "s2s.stanza_rate": 1.0}


async def test_admin_api_lists_refusals_sorted_by_limit(node: FakeNode) -> None:
    node.services.refused("registration.max_per_address")
    node.services.refused("limits.stanza_rate", 7)
    root = {"server": ServerAdmin(_view(node))}
    out = await run_query("admin", "{ server { refusals { limit count } } }", None, root)
    assert out == {"data": {"server": {"refusals": [{"limit": "limits.stanza_rate", "count": 7},
                                                    {"limit": "registration.max_per_address", "count": 1}]}}}


async def test_the_region_links_name_the_limit_that_refused_a_stanza() -> None:
    """``[gdistrib.connections]``: a full queue, an outage past ``hold_while_down``, no link after
    ``connect_timeout``; a pool that is stopping refuses by no limit."""

    def pool(**kw: Any) -> RegionPool:
        return RegionPool("here", "gw1", "there", None, endpoints=["192.0.2.1:5555"], queue_max=1,  # type: ignore[arg-type]
                          connect_timeout=0.01, **kw)

    async def limit_of(p: RegionPool) -> str:
        with pytest.raises(LinkError) as e:
            await p.send("id1", "here", 4, b"<message/>")
        return e.value.limit

    assert await limit_of(pool()) == "connect_timeout"
    held = pool(hold=60.0)
    assert await limit_of(held) == "hold_while_down"  # never up: nothing to ride out
    held._down_since = asyncio.get_running_loop().time()  # a short outage: queued, up to queue_max
    await held.send("id1", "here", 4, b"<message/>")
    assert await limit_of(held) == "queue_max"
    stopping = pool()
    stopping._stopping = True
    assert await limit_of(stopping) == ""


async def test_the_relay_counts_link_errors_by_their_limit(node: FakeNode) -> None:
    async def send(region: str, relayed: Relayed) -> None:
        raise QueueFull("full", limit="queue_max")

    router = GlobalRouter(node.services, None, MappingCache(), send, region="here")  # type: ignore[arg-type]
    message = stanza("<message xmlns='jabber:client' from='a@example.com/x' to='b@example.com' type='chat'/>")
    relayed = Relayed("id1", "here", 4, message.to_bytes(), message.from_, message.to)
    await router._relay("there", message, relayed, quiet=True)
    router.undeliverable(relayed, LinkDown("down", limit="hold_while_down"))
    router.undeliverable(relayed, LinkDown("shut down"))  # a shutdown: no limit
    assert router.counters.link_errors == 3
    assert node.services.refusals == {"gdistrib.connections.queue_max": 1, "gdistrib.connections.hold_while_down": 1}
