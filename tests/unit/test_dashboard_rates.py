"""Dashboard rates and snapshots without sockets: time is an argument, the source is a small stub."""

from __future__ import annotations

from typing import Any

from gateway.dashboard import RateTracker, Snapshots
from gateway.dashboard.rates import totals


def status(gateway: str, relayed: int, bounced: int = 0) -> dict[str, Any]:
    return {"gateway": gateway, "counters": {"relayed": {"us": relayed}, "received": {}, "bounced": bounced}}


def test_totals_sum_per_region_counters_and_ignore_junk() -> None:
    assert totals({"counters": {"relayed": {"us": 3, "ap": 4}, "received": "x", "bounced": True}}) == \
        {"relayed": 7.0, "received": 0.0, "bounced": 0.0}
    assert totals({"counters": None}) == {}


def test_rate_over_the_window_from_one_gateway() -> None:
    t = RateTracker(window=10)
    t.observe("eu", status("gw1", 0), 100.0)
    assert t.rates("eu", 100.0)["relayedPerSec"] == 0.0
    t.observe("eu", status("gw1", 50, bounced=5), 105.0)
    assert t.rates("eu", 105.0) == {"relayedPerSec": 10.0, "receivedPerSec": 0.0, "bouncedPerSec": 1.0}


def test_two_gateways_writing_one_record_add_up_not_oscillate() -> None:
    t = RateTracker(window=10)
    for i in range(6):  # the record alternates between gw1 (10/s) and gw2 (1000 + 20/s)
        now = 100.0 + i
        t.observe("eu", status("gw1", 10 * i) if i % 2 == 0 else status("gw2", 1000 + 20 * i), now)
    assert t.rates("eu", 105.0)["relayedPerSec"] == 30.0


def test_a_restarted_gateway_starts_a_new_baseline() -> None:
    t = RateTracker(window=10)
    t.observe("eu", status("gw1", 500), 100.0)
    t.observe("eu", status("gw1", 3), 101.0)
    assert t.rates("eu", 101.0)["relayedPerSec"] == 0.0
    t.observe("eu", status("gw1", 13), 102.0)
    assert t.rates("eu", 102.0)["relayedPerSec"] == 10.0


def test_a_gateway_gone_for_long_is_forgotten() -> None:
    t = RateTracker(window=5)
    t.observe("eu", status("gw1", 0), 100.0)
    t.observe("eu", status("gw1", 10), 101.0)
    assert t.rates("eu", 200.0)["relayedPerSec"] == 0.0


class Source:
    def __init__(self, regions: dict[str, dict[str, Any]] | Exception, local: dict[str, Any]) -> None:
        self._regions, self._local = regions, local

    async def regions(self) -> dict[str, dict[str, Any]]:
        if isinstance(self._regions, Exception):
            raise self._regions
        return self._regions

    def local(self) -> dict[str, Any]:
        return self._local


async def test_snapshot_without_redis_shows_the_local_region_and_the_error() -> None:
    snaps = Snapshots(Source(ConnectionError("Redis is down"), {"region": "eu", **status("gw1", 7)}), clock=lambda: 5.0)
    snap = await snaps.take()
    assert list(snap["regions"]) == ["eu"] and snap["regions"]["eu"]["gateway"] == "gw1"
    assert "Redis is down" in snap["error"] and snap["time"] == 5.0


async def test_snapshot_lists_every_region_with_rates() -> None:
    clock = iter([10.0, 12.0])
    regions = {"us": status("us-gw1", 0), "eu": status("eu-gw1", 0)}
    snaps = Snapshots(Source(regions, {}), clock=lambda: next(clock))
    await snaps.take()
    regions["eu"] = status("eu-gw1", 8)
    snap = await snaps.take()
    assert list(snap["regions"]) == ["eu", "us"] and snap["error"] is None
    assert snap["regions"]["eu"]["rates"]["relayedPerSec"] == 4.0
    assert snap["regions"]["us"]["rates"]["relayedPerSec"] == 0.0


async def test_the_local_gateway_live_status_replaces_its_own_lagging_record() -> None:
    clock = iter([10.0, 12.0])
    local = {"region": "eu", **status("eu-gw1", 0), "cluster": {"conflictNodes": []}}
    stale = {"region": "eu", **status("eu-gw1", 0)}
    source = Source({"eu": stale}, local)
    snaps = Snapshots(source, clock=lambda: next(clock))
    await snaps.take()
    source._local = {"region": "eu", **status("eu-gw1", 20), "cluster": {"conflictNodes": []}}
    snap = await snaps.take()  # Redis still holds the old record: the live counters win, no reset
    assert snap["regions"]["eu"]["counters"]["relayed"] == {"us": 20}
    assert snap["regions"]["eu"]["rates"]["relayedPerSec"] == 10.0
    assert snap["regions"]["eu"]["cluster"] == {"conflictNodes": []}


async def test_another_gateways_record_of_the_local_region_adds_to_the_rate() -> None:
    clock = iter([10.0, 12.0])
    source = Source({"eu": status("eu-gw2", 100)}, {"region": "eu", **status("eu-gw1", 0)})
    snaps = Snapshots(source, clock=lambda: next(clock))
    await snaps.take()
    source._regions = {"eu": status("eu-gw2", 104)}
    source._local = {"region": "eu", **status("eu-gw1", 10)}
    snap = await snaps.take()
    assert snap["regions"]["eu"]["gateway"] == "eu-gw2"
    assert snap["regions"]["eu"]["rates"]["relayedPerSec"] == 7.0


def test_published_status_carries_the_cluster_view_and_s2s_peers() -> None:
    from types import SimpleNamespace

    from gateway.dashboard import gateway_source
    from gateway.wiring import Gateway

    assert gateway_source().local() == {}
    member = SimpleNamespace(system_info=lambda: {"joinedNodes": ["eu-gw1"], "conflictNodes": ["eu-n9"],
                                                  "conflictTables": [], "unavailableNodes": [], "other": 1})
    peers = [{"direction": "out", "peer": "other.example", "ready": True}]
    node = SimpleNamespace(services=SimpleNamespace(cluster=member), queries={("s2s", "connections"): lambda: peers})
    extra = Gateway._cluster_and_s2s(SimpleNamespace(node=node))  # type: ignore[arg-type]
    assert extra["cluster"]["conflictNodes"] == ["eu-n9"] and "other" not in extra["cluster"]
    assert extra["s2s"] == {"peers": peers}
