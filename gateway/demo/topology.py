"""What ``meridian demo`` runs, as data: regions, processes, their settings and ports.

No I/O here, so the layout (and the settings each process gets) is checked by unit tests and
read by :mod:`gateway.demo.runner`, which only writes the files and starts the processes.

Ports, from ``--base-port B``: region *k* (``eu`` 0, ``us`` 1, ``other`` 2) owns ``B+100k …
B+100k+99``: its Redis on ``+0``; node *i* on ``+10i`` (c2s STARTTLS), ``+10i+1`` (direct TLS),
``+10i+2`` (cluster link), ``+10i+3`` (admin API), ``+10i+4`` (user API), ``+10i+5`` (HTTPS:
WebSocket at ``/ws``, BOSH at ``/http-bind``, the web client at ``/web/``); its gateway on ``+50``
(cluster link), ``+51`` (inter-region link), ``+53`` (admin API and dashboard), ``+55`` (S2S).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DemoProcess", "DemoRegion", "DemoRedis", "DemoUser", "Topology", "build_topology",
           "SHARED_DOMAIN", "OTHER_DOMAIN", "LOBBY", "MUC_SERVICE"]

SHARED_DOMAIN = "example.com"
OTHER_DOMAIN = "other.example"
MUC_SERVICE = f"conference.{SHARED_DOMAIN}"  # homed in eu for both regions, reachable over S2S
LOBBY = f"lobby@{MUC_SERVICE}"  # the persistent room the demo makes: alice owns it, bob is a member
HOST = "127.0.0.1"


@dataclass
class DemoRedis:
    region: str
    port: int
    replicaof: int | None = None  # port of the primary this one replicates

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"


@dataclass
class DemoProcess:
    name: str
    role: str  # "node" | "gateway"
    region: str
    workdir: Path
    settings: dict[str, Any]
    ports: dict[str, int]

    @property
    def config(self) -> Path:
        return self.workdir / f"{self.name}.toml"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"


@dataclass
class DemoRegion:
    name: str
    domains: list[str]
    redis: DemoRedis
    storage: Path
    services: list[str] = field(default_factory=list)  # subdomains its gateways also speak S2S for
    nodes: list[DemoProcess] = field(default_factory=list)
    gateways: list[DemoProcess] = field(default_factory=list)

    @property
    def processes(self) -> list[DemoProcess]:
        return [*self.nodes, *self.gateways]


@dataclass(frozen=True)
class DemoUser:
    jid: str
    region: str  # the region whose ports the demo prints for this user

    @property
    def local(self) -> str:
        return self.jid.split("@", 1)[0]

    @property
    def domain(self) -> str:
        return self.jid.split("@", 1)[1]


@dataclass
class Topology:
    directory: Path
    base_port: int
    regions: list[DemoRegion]
    users: list[DemoUser]
    ca_dir: Path

    @property
    def processes(self) -> list[DemoProcess]:
        return [p for r in self.regions for p in r.processes]

    @property
    def redis(self) -> list[DemoRedis]:
        return [r.redis for r in self.regions]

    def region(self, name: str) -> DemoRegion:
        return next(r for r in self.regions if r.name == name)


def build_topology(directory: Path, base_port: int, *, secret: str, admin: tuple[str, str],
                   external_redis: str | None = None, has_admin: bool = False,
                   has_s2s: bool = False, web_root: Path | None = None) -> Topology:
    """The demo's regions: ``eu`` and ``us`` (2 nodes + 1 gateway each) share ``example.com``
    and one SQLite file; ``other`` (1 node + 1 gateway) serves ``other.example``, reached over S2S.

    ``has_admin``/``has_s2s``: whether this build's settings have the ``[admin]``/``[s2s]``
    sections, so the demo configures what exists and nothing the settings would refuse.
    ``web_root``: the directory every node serves at ``/web/`` (the web client), if any.
    """
    if not 1024 <= base_port <= 65535 - 300:
        raise ValueError(f"--base-port must be between 1024 and {65535 - 300}")
    directory = directory.resolve()
    ca_dir = directory / "ca"
    shared_db = directory / "example.db"
    eu_redis = DemoRedis("eu", base_port)
    layout = [("eu", [SHARED_DOMAIN], 2, eu_redis, shared_db),
              ("us", [SHARED_DOMAIN], 2, DemoRedis("us", base_port + 100, replicaof=base_port), shared_db),
              ("other", [OTHER_DOMAIN], 1, DemoRedis("other", base_port + 200), directory / "other.db")]
    regions: list[DemoRegion] = []
    for k, (name, domains, n_nodes, redis, db) in enumerate(layout):
        base = base_port + 100 * k
        region = DemoRegion(name, domains, redis, db, [MUC_SERVICE] if SHARED_DOMAIN in domains else [])
        cluster = {"enabled": True, "name": name, "secret": secret, "host": HOST, "refresh_interval": 1.0,
                   "ping_interval": 1.0, "ping_timeout": 5.0}
        # example.com's rooms live in eu for both regions (us's members leave them to its gateway).
        muc = {"modules": {"muc": {"home_cluster": "eu"}}} if region.services else {}
        common = {"domains": domains, "log_level": "INFO", "storage": {"url": f"sqlite:///{db}"}, **muc,
                  "tls": {"cert_file": str(ca_dir / f"{name}-c2s.pem"),
                          "key_file": str(ca_dir / f"{name}-c2s-key.pem")}}
        for i in range(1, n_nodes + 1):
            p = base + 10 * i
            ports = {"c2s": p, "c2s_tls": p + 1, "cluster": p + 2, "admin": p + 3, "user_api": p + 4,
                     "http": p + 5}
            node_name = f"{name}-n{i}"
            settings: dict[str, Any] = {
                "node_name": node_name, **common, "data_dir": str(directory / node_name / "data"),
                "c2s": {"host": HOST, "port": ports["c2s"], "tls_port": ports["c2s_tls"]},
                "cluster": {**cluster, "port": ports["cluster"]},
                "websocket": {"host": HOST, "port": ports["http"], "tls": True,
                              **({"web_root": str(web_root)} if web_root is not None else {})}}
            if has_admin:
                settings["admin"] = {"host": HOST, "port": ports["admin"], "username": admin[0],
                                     "password": admin[1]}
                settings["user_api"] = {"host": HOST, "port": ports["user_api"]}
            region.nodes.append(DemoProcess(node_name, "node", name, directory / node_name, settings, ports))
        gw_ports = {"cluster": base + 50, "link": base + 51, "admin": base + 53, "s2s": base + 55}
        gw_name = f"{name}-gw1"
        read_url = "" if external_redis else (region.redis.url if redis.replicaof else "")
        write_url = external_redis or (eu_redis.url if name in ("eu", "us") else redis.url)
        gd = {"local_host": name, "global_host": domains,
              "connections": {"endpoints": [f"{HOST}:{gw_ports['link']}"], "ca_file": str(ca_dir / "ca.pem"),
                              "cert_file": str(ca_dir / f"{gw_name}.pem"),
                              "key_file": str(ca_dir / f"{gw_name}-key.pem"), "endpoint_refresh_interval": 2.0},
              "redis": {"url": write_url, "read_url": read_url}}
        gw: dict[str, Any] = {"node_name": gw_name, **common, "data_dir": str(directory / gw_name / "data"),
                              "cluster": {**cluster, "port": gw_ports["cluster"]}, "gdistrib": gd}
        if has_admin:
            gw["admin"] = {"host": HOST, "port": gw_ports["admin"], "username": admin[0], "password": admin[1]}
            gw["user_api"] = {"port": 0}
        if has_s2s:
            gw["s2s"] = _s2s_settings(base_port, name, domains, gw_ports["s2s"], ca_dir)
            if region.services:
                gw["s2s"]["service_domains"] = region.services
        region.gateways.append(DemoProcess(gw_name, "gateway", name, directory / gw_name, gw, gw_ports))
        regions.append(region)
    users = [DemoUser(f"alice@{SHARED_DOMAIN}", "eu"), DemoUser(f"bob@{SHARED_DOMAIN}", "us"),
             DemoUser(f"carol@{OTHER_DOMAIN}", "other")]
    return Topology(directory, base_port, regions, users, ca_dir)


def s2s_port(base_port: int, region_index: int) -> int:
    return base_port + 100 * region_index + 55


def _s2s_settings(base_port: int, region: str, domains: list[str], port: int,
                  ca_dir: Path) -> dict[str, Any]:
    """S2S between the demo's domains, through a static host map (no DNS on a laptop)."""
    eu = f"{HOST}:{s2s_port(base_port, 0)}"
    hosts = {SHARED_DOMAIN: eu, MUC_SERVICE: eu, OTHER_DOMAIN: f"{HOST}:{s2s_port(base_port, 2)}"}
    ours = {*domains, MUC_SERVICE} if SHARED_DOMAIN in domains else set(domains)
    return {"enabled": True, "host": HOST, "port": port, "ca_file": str(ca_dir / "ca.pem"),
            "cert_file": str(ca_dir / f"{region}-c2s.pem"), "key_file": str(ca_dir / f"{region}-c2s-key.pem"),
            "hosts": {d: h for d, h in hosts.items() if d not in ours}}
