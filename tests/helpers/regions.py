"""Several regions serving one domain, as real processes: per region N nodes and gateways that
form the region's cluster, one database every region shares (accounts, rosters, offline), a
Redis (primary, or a replica of another region's) and a CA for the inter-region links."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.link.tls import issue_cert, make_ca

from .cluster import SECRET
from .node import NodeProcess
from .ports import free_port

__all__ = ["Region", "GatewayProcess", "make_region", "DOMAIN"]

DOMAIN = "example.com"


class GatewayProcess(NodeProcess):
    role = "gateway"


@dataclass
class Region:
    name: str
    nodes: list[NodeProcess]
    gateways: list[GatewayProcess]
    redis_url: str
    link_port: dict[str, int] = field(default_factory=dict)

    @property
    def processes(self) -> list[NodeProcess]:
        return [*self.nodes, *self.gateways]

    def start(self) -> Region:
        for p in self.processes:
            p.start()
        return self

    def stop(self) -> None:
        for p in self.processes:
            p.stop()


def make_region(base: Path, name: str, *, storage_url: str, redis_url: str, read_url: str = "",
                nodes: int = 2, gateways: int = 1, gdistrib: dict[str, Any] | None = None,
                node_settings: dict[str, Any] | None = None, domains: list[str] | None = None) -> Region:
    """Configure (not start) region ``name``: nodes ``<name>-n1…``, gateways ``<name>-gw1…``, serving
    ``domains`` (default: :data:`DOMAIN`)."""
    domains = domains or [DOMAIN]
    ca, ca_key = make_ca(base / "ca")
    cluster = {"enabled": True, "secret": SECRET, "name": name, "refresh_interval": 0.3,
               "ping_interval": 0.3, "ping_timeout": 1.5}
    region_nodes = [NodeProcess(base / name / f"n{i}", name=f"{name}-n{i}", domains=domains, storage_url=storage_url,
                                settings={"cluster": {**cluster, "port": free_port()}, **(node_settings or {})})
                    for i in range(1, nodes + 1)]
    region_gateways = []
    for i in range(1, gateways + 1):
        gw_name = f"{name}-gw{i}"
        cert, key = issue_cert(ca, ca_key, base / "ca", gw_name, ["127.0.0.1"])
        link = free_port()
        gd: dict[str, Any] = {"local_host": name, "connections": {
            "endpoints": [f"127.0.0.1:{link}"], "ca_file": str(ca), "cert_file": str(cert), "key_file": str(key),
            "endpoint_refresh_interval": 0.5, "connect_timeout": 2.0, "ping_interval": 0.5, "ping_timeout": 3.0},
            "redis": {"url": redis_url, "read_url": read_url, "refresh_after": 5.0, "expire_after": 20.0},
            "cache": {"jid_lifetime": 5.0},
            # A reconnect takes ~0.5 s here, more on a loaded 2-core machine: bounce for up to 2 s so
            # what lands while a user moves waits for the new session (not offline storage).
            "bounce": {"resend_after_ms": 200, "max_retries": 10}}
        for key_, value in (gdistrib or {}).items():
            if isinstance(value, dict):
                gd.setdefault(key_, {}).update(value)
            else:
                gd[key_] = value
        region_gateways.append(GatewayProcess(base / name / f"gw{i}", name=gw_name, domains=domains,
                                              storage_url=storage_url,
                                              settings={"cluster": {**cluster, "port": free_port()}, "gdistrib": gd}))
    return Region(name, region_nodes, region_gateways, redis_url)
