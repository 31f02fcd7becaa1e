"""The set-ups integration tests start again and again, as context managers that stop what they
started and then check every log for a ``Traceback``:

- :func:`one_node`: a single node, its accounts registered;
- :func:`two_node_region`: the two nodes of a region, one SQLite file (discovery and the data),
  fast discovery and pings as :func:`tests.helpers.cluster.cluster_node` sets them, until both
  have joined;
- :func:`two_regions`: regions ``eu`` and ``us`` of one domain (:func:`make_region`: one node and
  one gateway each unless told), one SQLite file, the mapping in a Redis the caller starts, until
  every member has joined its region and (unless ``links=False``) both inter-region links are up.

Also what those tests ask the gateways (:func:`link_up`, :func:`lookup`), fresh accounts for a
test of its own (:func:`fresh_users`), and small client helpers: :func:`close`, :func:`replicated`
(a flag reached the other members), :func:`logged_in` (a raw client authenticated, not bound).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from .cluster import SECRET, eventually, poll, system_info, wait_until
from .node import NodeProcess, toml_dump
from .ports import free_port
from .redis import RedisServer, redis_server_binary
from .regions import DOMAIN, Region, make_region
from .xmpp_client import Client
from .xmpp_raw import RawClient

__all__ = ["TwoRegions", "check_logs", "close", "fresh_users", "gd_status", "link_up", "logged_in", "lookup",
           "mapped", "need_redis", "one_node", "region_node", "register", "replicated", "two_node_region",
           "two_regions"]

Users = Iterable[str] | Mapping[str, str]
"""Accounts to register: names that share ``password``, or a mapping name → password."""


def register(node: NodeProcess, users: Users, password: str = "", domain: str = "localhost") -> None:
    accounts = users if isinstance(users, Mapping) else dict.fromkeys(users, password)
    for user, secret in accounts.items():
        node.register(user, secret, domain)


def secret(user: str) -> str:
    """The password :func:`fresh` gives ``user``."""
    return f"{user}-secret"


def fresh(node: NodeProcess, prefix: str, domain: str = "localhost") -> str:
    """A user of the calling test's own, registered now (password :func:`secret`): no offline
    message, FAST token, session or password change another test of a shared node left on it, so
    the test passes alone and in any order."""
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    node.register(name, secret(name), domain)
    return name


def check_logs(*processes: NodeProcess) -> None:
    for p in processes:
        assert "Traceback" not in p.log(), p.log()


def need_redis() -> None:
    """Skip the test (or fixture) when there is no ``redis-server`` to start."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")


# -- one node ----------------------------------------------------------------------------------------


@contextmanager
def one_node(workdir: Path, name: str, *, users: Users = (), password: str = "", config: str = "",
             **node: Any) -> Iterator[NodeProcess]:
    """A started node (``node``: ``NodeProcess``'s keywords: ``domains``, ``storage_url``,
    ``settings``) with ``users`` registered in its first domain; ``config``: TOML added to its file."""
    n = NodeProcess(workdir, name=name, **node)
    if config:
        n.config.write_text(n.config.read_text() + config)
    register(n, users, password, (node.get("domains") or ["localhost"])[0])
    try:
        yield n.start()
    finally:
        n.stop()
    check_logs(n)


# -- the two nodes of a region ---------------------------------------------------------------------------


def region_node(base: Path, name: str, storage_url: str, *, domains: list[str] | None = None,
                settings: dict[str, Any] | None = None) -> NodeProcess:
    """A node as :func:`tests.helpers.cluster.cluster_node` makes it, with more ``settings`` (top-level
    tables, e.g. ``{"modules": …}``) and ``domains``."""
    cluster = {"enabled": True, "secret": SECRET, "port": free_port(), "refresh_interval": 0.3,
               "ping_interval": 0.3, "ping_timeout": 1.5}
    return NodeProcess(base / name, name=name, domains=domains, storage_url=storage_url,
                       settings={"cluster": cluster, **(settings or {})})


@contextmanager
def two_node_region(base: Path, *, names: tuple[str, str] = ("r1", "r2"), users: Users = (), password: str = "",
                    domains: list[str] | None = None,
                    settings: dict[str, Any] | Callable[[str], dict[str, Any]] | None = None,
                    ) -> Iterator[list[NodeProcess]]:
    """Nodes ``names`` (sorted, as the cluster lists them) of one cluster sharing ``base/region.db``,
    ``users`` registered (in the first of ``domains``), started and joined.  ``settings``: more
    settings of every node, or of the node of a name."""
    url = f"sqlite:///{base / 'region.db'}"
    nodes = [region_node(base, name, url, domains=domains, settings=settings(name) if callable(settings) else settings)
             for name in names]
    register(nodes[0], users, password, (domains or ["localhost"])[0])
    try:
        for n in nodes:
            n.start()
        wait_until(lambda: all(system_info(n)["joinedNodes"] == list(names) for n in nodes), 20, "two joined nodes")
        yield nodes
    finally:
        for n in nodes:
            n.stop()
    check_logs(*nodes)


# -- two regions of one domain ------------------------------------------------------------------------------


@dataclass
class TwoRegions:
    eu: Region
    us: Region
    db: Path  # the SQLite file every region shares

    @property
    def processes(self) -> list[NodeProcess]:
        return [*self.eu.processes, *self.us.processes]


def gd_status(gateway: NodeProcess) -> dict[str, Any]:
    return json.loads(gateway.ctl("gdistrib", "status").stdout)["data"]["gdistrib"]["status"]  # type: ignore[no-any-return]


def link_up(gateway: NodeProcess, region: str) -> bool:
    """Whether ``gateway``'s link to ``region`` is up."""
    return bool(gd_status(gateway)["links"].get(region, {}).get("up"))


def lookup(gateway: NodeProcess, jid: str) -> dict[str, Any]:
    """Where ``gateway`` finds the resources of ``jid``'s account: resource → location."""
    out = json.loads(gateway.ctl("gdistrib", "lookup", "--jid", jid).stdout)["data"]["gdistrib"]["lookup"]
    return out if isinstance(out, dict) else {}


async def mapped(gateways: Iterable[NodeProcess], resources: Mapping[str, Iterable[str]],
                 timeout: float = 10.0) -> None:
    """Wait until every gateway finds each account's ``resources`` (bare JID → resources) in the
    mapping: a test across regions starts once both sides know where its users are."""
    for gw in gateways:
        for jid, wanted in resources.items():
            want = set(wanted)
            await eventually(lambda gw=gw, jid=jid, want=want: want <= set(lookup(gw, jid)), timeout,
                             f"{jid} {sorted(want)} mapped")


@contextmanager
def two_regions(base: Path, redis: RedisServer, *, users: Users = (), password: str = "",
                node_settings: dict[str, Any] | None = None, gateway_settings: dict[str, Any] | None = None,
                eu: dict[str, Any] | None = None, us: dict[str, Any] | None = None,
                links: bool = True) -> Iterator[TwoRegions]:
    """Regions ``eu`` and ``us`` of :data:`DOMAIN` sharing ``base/domain.db`` and ``redis``, ``users``
    registered, started, every member joined to its region, and (``links``) each gateway's link to
    the other region up.  ``node_settings`` go to every node, ``gateway_settings`` are added to every
    gateway's file; ``eu`` and ``us``: more keywords of :func:`make_region` for that region (default
    ``nodes=1``)."""
    db = base / "domain.db"
    made = [make_region(base, name, storage_url=f"sqlite:///{db}", redis_url=redis.url,
                        **{"nodes": 1, "node_settings": node_settings, **(more or {})})
            for name, more in (("eu", eu), ("us", us))]
    if gateway_settings:
        for gw in (*made[0].gateways, *made[1].gateways):
            gw.config.write_text(gw.config.read_text() + "\n" + toml_dump(gateway_settings))
    register(made[0].nodes[0], users, password, DOMAIN)
    regions = TwoRegions(made[0], made[1], db)
    try:
        for r in made:
            r.start()
        for r in made:
            names = sorted(p.name for p in r.processes)
            for p in r.processes:
                assert poll(lambda p=p, names=names: system_info(p)["joinedNodes"] == names, 20), p.name
        if links:
            for r, other in zip(made, ("us", "eu"), strict=True):
                gw = r.gateways[0]
                assert poll(lambda gw=gw, other=other: link_up(gw, other), 15), f"{gw.name} → {other}"
        yield regions
    finally:
        for r in made:
            r.stop()
    check_logs(*regions.processes)


def fresh_users(node: NodeProcess, password: str, *names: str, domain: str = DOMAIN) -> list[str]:
    """Accounts ``<name><6 hex digits>``, new to the test, registered through ``node``: their bare JIDs."""
    users = [f"{name}{uuid.uuid4().hex[:6]}" for name in names]
    for user in users:
        node.register(user, password, domain)
    return [f"{user}@{domain}" for user in users]


# -- clients -----------------------------------------------------------------------------------------------


class _Closable(Protocol):
    async def close(self) -> None: ...


async def close(*clients: _Closable) -> None:
    for c in clients:
        await c.close()


async def replicated(*pairs: tuple[Client, Client]) -> None:
    """Each ``a`` pings ``b``: the ping follows ``a``'s session record (with the flags it carries)
    down the same cluster (and gateway) links, so once it is answered every member on the way has
    the flag."""
    for a, b in pairs:
        await a.plugin["xep_0199"].ping(str(b.boundjid), timeout=5)


async def logged_in(node: NodeProcess, user: str, password: str, *, domain: str = "localhost") -> RawClient:
    """A raw client of ``node`` past SASL, not bound: ready to ``resume`` (or ``bind``)."""
    c = RawClient(node.port, node.cert, domain=domain)
    await c.connect()
    await c.login(user, password)
    return c

