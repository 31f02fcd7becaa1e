"""``/metrics`` (Prometheus text format, parsed with prometheus_client's parser), ``/ready`` and
the ``gdistrib`` admin category on running processes: counters move with traffic."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.cluster import eventually
from tests.helpers.node import ADMIN_PASSWORD, ADMIN_USER, NodeProcess
from tests.helpers.redis import RedisServer, redis_server_binary
from tests.helpers.regions import DOMAIN, Region, make_region
from tests.helpers.xmpp_client import Client

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(p: NodeProcess) -> Samples:
    status, text = await p.http("GET", f"{p.admin_url}/metrics", auth=(ADMIN_USER, ADMIN_PASSWORD))
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def until(check, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await check()
        if got or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path_factory.mktemp("metrics"))
    for user in ("alice", "bob", "carol"):
        n.register(user, f"{user}-secret")
    n.start()
    yield n
    n.stop()
    assert "Traceback" not in n.log(), n.log()


async def test_node_counters_move_with_traffic(node: NodeProcess) -> None:
    before = await scrape(node)
    assert value(before, "meridian_cluster_members") == 1
    alice = await Client("alice@localhost/a", "alice-secret", cert=node.cert).online(node.port)
    bob = await Client("bob@localhost/b", "bob-secret", cert=node.cert).online(node.port)
    try:
        for i in range(5):
            alice.send_message(mto="bob@localhost", mbody=f"m{i}")
        for _ in range(5):
            await bob.next_message(timeout=10)
        alice.send_message(mto="carol@localhost", mbody="stored offline")
        after = await until(lambda: _offline_grew(node, before))
        assert after, "offline store size did not grow"
        assert value(after, "meridian_logins_total") >= value(before, "meridian_logins_total") + 2
        assert value(after, "meridian_c2s_connections_total") >= value(before, "meridian_c2s_connections_total") + 2
        assert value(after, "meridian_connections", type="c2s") >= 2
        assert value(after, "meridian_sessions_local") >= 2
        moved = {kind: value(after, "meridian_stanzas_in_total", kind=kind)
                 - value(before, "meridian_stanzas_in_total", kind=kind) for kind in ("message", "presence", "iq")}
        assert moved["message"] >= 6 and moved["presence"] >= 2 and moved["iq"] >= 2, moved  # roster gets, presences
        assert (value(after, "meridian_stanzas_out_total", kind="message")
                - value(before, "meridian_stanzas_out_total", kind="message")) >= 5
        routed = value(after, "meridian_routing_seconds_count") - value(before, "meridian_routing_seconds_count")
        assert routed >= 6
        assert value(after, "meridian_routing_seconds_bucket", le="+Inf") == value(after,
                                                                                  "meridian_routing_seconds_count")
    finally:
        await alice.close()
        await bob.close()


async def _offline_grew(node: NodeProcess, before: Samples) -> Samples | None:
    now = await scrape(node)
    return now if value(now, "meridian_offline_messages") > value(before, "meridian_offline_messages") else None


async def test_health_and_ready(node: NodeProcess) -> None:
    status, body = await node.http("GET", f"{node.admin_url}/health")
    assert status == 200 and body == {"status": "ok", "node": node.name}
    status, body = await node.http("GET", f"{node.admin_url}/ready")
    assert status == 200 and body == {"ready": True, "checks": {"listeners": True, "storage": True}}


class TwoRegions:
    def __init__(self, base: Path, redis: RedisServer) -> None:
        db = f"sqlite:///{base / 'domain.db'}"
        self.eu: Region = make_region(base, "eu", storage_url=db, redis_url=redis.url, nodes=1)
        self.us: Region = make_region(base, "us", storage_url=db, redis_url=redis.url, nodes=1)


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoRegions]:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    base = tmp_path_factory.mktemp("metrics-regions")
    with RedisServer() as redis:
        w = TwoRegions(base, redis)
        try:
            for region in (w.eu, w.us):
                region.start()
            yield w
        finally:
            for region in (w.eu, w.us):
                region.stop()
        for p in w.eu.processes + w.us.processes:
            assert "Traceback" not in p.log(), p.log()


async def test_gdistrib_shows_two_regions_and_their_link(regions: TwoRegions) -> None:
    gw = regions.eu.gateways[0]

    async def linked() -> dict | None:  # type: ignore[type-arg]
        status, body = await gw.admin("{ gdistrib { region regions links { region up connections queue } } }")
        assert status == 200, body
        gd = body["data"]["gdistrib"]
        return gd if gd["links"] and gd["links"][0]["up"] else None

    gd = await until(linked, 30)
    assert gd, "the eu gateway's link to us did not come up"
    assert gd["region"] == "eu" and gd["regions"] == ["eu", "us"]
    assert [link["region"] for link in gd["links"]] == ["us"] and gd["links"][0]["connections"] >= 1
    _, body = await gw.admin("{ gdistrib { status } }")
    assert body["data"]["gdistrib"]["status"]["region"] == "eu"
    # A node is not a gateway: a clear error, not a crash.
    _, body = await regions.eu.nodes[0].admin("{ gdistrib { regions } }")
    assert "served by gateways" in body["errors"][0]["message"]
    status, body = await gw.http("GET", f"{gw.admin_url}/ready")
    assert status == 200 and body["checks"]["redis"] is True and body["checks"]["cluster"] is True


async def test_gateway_metrics_move_with_relayed_traffic(regions: TwoRegions) -> None:
    gw = regions.eu.gateways[0]
    a_name, b_name = f"a{uuid.uuid4().hex[:6]}", f"b{uuid.uuid4().hex[:6]}"
    eu_node, us_node = regions.eu.nodes[0], regions.us.nodes[0]
    for name in (a_name, b_name):
        eu_node.register(name, "secret-pw", DOMAIN)
    before = await scrape(gw)
    a = await Client(f"{a_name}@{DOMAIN}/x", "secret-pw", cert=eu_node.cert).online(eu_node.port)
    b = await Client(f"{b_name}@{DOMAIN}/y", "secret-pw", cert=us_node.cert).online(us_node.port)
    try:
        # Once eu's gateway sees b's session in the mapping, one message must cross: sent once,
        # received once (a retry loop would hide a lost message).
        def mapped() -> bool:
            out = json.loads(gw.ctl("gdistrib", "lookup", "--jid", f"{b_name}@{DOMAIN}").stdout)
            return "y" in (out["data"]["gdistrib"]["lookup"] or {})

        await eventually(mapped, 15, "b's session in the mapping")
        a.send_message(mto=f"{b_name}@{DOMAIN}/y", mbody="across")
        got = await b.next_message(timeout=10)
        assert got["body"] == "across"
        with pytest.raises(TimeoutError):
            await b.next_message(timeout=0.5)  # and only once
        after = await scrape(gw)
        assert value(after, "meridian_gd_relayed_total", region="us") > value(before, "meridian_gd_relayed_total",
                                                                             region="us")
        assert value(after, "meridian_gd_link_up", region="us") == 1
        assert value(after, "meridian_gd_link_queue", region="us") >= 0
        assert value(after, "meridian_gd_lookups_total") > value(before, "meridian_gd_lookups_total")
        assert 0 <= value(after, "meridian_gd_cache_hit_ratio") <= 1
        assert value(after, "meridian_gd_redis_up", use="read") == 1
        assert value(after, "meridian_cluster_members") == 2  # the eu node and this gateway
        assert ("meridian_gd_bounced_total", ()) in after and ("meridian_gd_ttl_drops_total", ()) in after
    finally:
        await a.close()
        await b.close()


MONITORING = Path(__file__).resolve().parents[2] / "compose" / "monitoring"
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")


def _referenced() -> dict[str, set[str]]:
    """The metric names each monitoring file's expressions use."""
    import json
    import re

    import yaml

    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    exprs = {"alerts.yml": [r["expr"] for g in rules["groups"] for r in g["rules"]]}
    for g in rules["groups"]:
        for r in g["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(r), r
            assert r["labels"]["severity"] in ("info", "warning", "critical") and r["annotations"]["summary"]
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs["grafana-dashboard.json"] = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    return {f: {m for e in es for m in re.findall(r"\bmeridian_[a-z0-9_]+", e)} for f, es in exprs.items()}


async def test_alert_rules_and_dashboard_name_only_exported_metrics(regions: TwoRegions) -> None:
    """Every metric the alert rules and the Grafana dashboard use is exported by a node or a
    gateway (a renamed metric would leave an alert that never fires)."""
    exported: set[str] = set()
    for p in (regions.eu.nodes[0], regions.eu.gateways[0]):
        status, text = await p.http("GET", f"{p.admin_url}/metrics", auth=(ADMIN_USER, ADMIN_PASSWORD))
        assert status == 200, text
        for fam in text_string_to_metric_families(text):  # families without samples yet count too
            exported |= {fam.name, *(fam.name + s for s in SUFFIXES)} if fam.type == "counter" else {fam.name}
            exported |= {s.name for s in fam.samples}
    referenced = _referenced()
    assert all(referenced.values())
    for file, names in referenced.items():
        missing = sorted(n for n in names if not any(n.removesuffix(s) + t in exported for s in SUFFIXES
                                                     for t in SUFFIXES if n.endswith(s)))
        assert not missing, f"{file} names metrics nobody exports: {missing}"
