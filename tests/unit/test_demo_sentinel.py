"""``meridian demo --sentinel`` as data: where the Sentinels listen, what they watch, and the
settings the gateways get (accepted by the gateway's settings loader)."""

from __future__ import annotations

from pathlib import Path

import tomli_w

from cluster_node.settings import load_settings
from gateway.demo.sentinel import MASTER, add_sentinels
from gateway.demo.topology import build_topology
from gateway.settings import GatewaySettings


def test_sentinels_watch_eu_and_the_shared_domain_gateways_use_them(tmp_path: Path) -> None:
    topo = build_topology(tmp_path, 20000, secret="s" * 16, admin=("admin", "pw"))
    default = {r.name: dict(r.gateways[0].settings["gdistrib"]["redis"]) for r in topo.regions}
    sentinels = add_sentinels(topo)
    assert [s.port for s in sentinels] == [20001, 20002, 20003]  # eu's range, below its first node
    taken = {r.port for r in topo.redis} | {p for proc in topo.processes for p in proc.ports.values()}
    assert not taken & {s.port for s in sentinels}
    eu, us, other = (r.gateways[0].settings["gdistrib"]["redis"] for r in topo.regions)
    addresses = ["127.0.0.1:20001", "127.0.0.1:20002", "127.0.0.1:20003"]
    assert eu == {**default["eu"], "sentinels": addresses, "sentinel_master": MASTER}
    assert us == {**default["us"], "sentinels": addresses, "sentinel_master": MASTER, "read_url": "",
                  "read_from_replicas": True}
    assert other == default["other"]  # another domain, its own Redis
    conf = sentinels[0].conf(tmp_path)
    assert f"sentinel monitor {MASTER} 127.0.0.1 20000 2" in conf and "port 20001" in conf
    for region in topo.regions:
        gw = region.gateways[0]
        path = tmp_path / f"{gw.name}.toml"
        path.write_text(tomli_w.dumps(gw.settings))
        assert load_settings(path, GatewaySettings).gdistrib.redis.sentinels == (
            addresses if region.name != "other" else [])
