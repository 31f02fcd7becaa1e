"""The demo's layout: distinct ports inside the documented range, settings every process accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w

from cluster_node.settings import NodeSettings, load_settings
from gateway.demo.topology import build_topology
from gateway.settings import GatewaySettings


def test_ports_are_distinct_and_inside_the_base_range(tmp_path: Path) -> None:
    topo = build_topology(tmp_path, 20000, secret="s" * 16, admin=("admin", "pw"))
    ports = [r.port for r in topo.redis] + [p for proc in topo.processes for p in proc.ports.values()]
    assert len(ports) == len(set(ports))
    assert all(20000 <= p < 20300 for p in ports)
    assert [r.name for r in topo.regions] == ["eu", "us", "other"]
    assert [len(r.nodes) for r in topo.regions] == [2, 2, 1]
    us = topo.region("us").redis
    assert us.replicaof == topo.region("eu").redis.port  # us reads a replica of eu's primary


def test_every_process_gets_settings_its_role_accepts(tmp_path: Path) -> None:
    topo = build_topology(tmp_path, 20000, secret="s" * 16, admin=("admin", "pw"),
                          has_s2s="s2s" in GatewaySettings.model_fields,
                          has_admin="admin" in NodeSettings.model_fields)
    for proc in topo.processes:
        proc.workdir.mkdir(parents=True)
        proc.config.write_text(tomli_w.dumps(proc.settings))
        cls = GatewaySettings if proc.role == "gateway" else NodeSettings
        s = load_settings(proc.config, cls)
        assert s.node_name == proc.name
    gw = topo.region("us").gateways[0].settings["gdistrib"]["redis"]
    assert gw["url"] == topo.region("eu").redis.url and gw["read_url"] == topo.region("us").redis.url


@pytest.mark.parametrize("base", [80, 65500])
def test_base_port_out_of_range_is_refused(tmp_path: Path, base: int) -> None:
    with pytest.raises(ValueError, match="--base-port"):
        build_topology(tmp_path, base, secret="s" * 16, admin=("admin", "pw"))


def test_every_node_serves_browsers_on_its_own_port(tmp_path: Path) -> None:
    web = tmp_path / "web"
    topo = build_topology(tmp_path, 20000, secret="s" * 16, admin=("admin", "pw"), web_root=web)
    for k, region in enumerate(topo.regions):
        for i, node in enumerate(region.nodes, start=1):
            ws = node.settings["websocket"]
            assert ws["port"] == node.ports["http"] == 20000 + 100 * k + 10 * i + 5
            assert ws["tls"] is True and ws["web_root"] == str(web)
    plain = build_topology(tmp_path, 20000, secret="s" * 16, admin=("admin", "pw"))
    assert all("web_root" not in n.settings["websocket"] for r in plain.regions for n in r.nodes)


def test_example_com_rooms_live_in_eu_and_are_reachable_over_s2s(tmp_path: Path) -> None:
    topo = build_topology(tmp_path, 20000, secret="s" * 16, admin=("admin", "pw"), has_s2s=True)
    for region in ("eu", "us"):
        for proc in topo.region(region).processes:
            assert proc.settings["modules"]["muc"]["home_cluster"] == "eu"
        assert topo.region(region).gateways[0].settings["s2s"]["service_domains"] == ["conference.example.com"]
    other = topo.region("other")
    assert "modules" not in other.nodes[0].settings  # other.example's own rooms, at home
    hosts = other.gateways[0].settings["s2s"]["hosts"]
    assert hosts["conference.example.com"] == hosts["example.com"] == "127.0.0.1:20055"
