"""The mapping's Redis client from a URL: one server (``redis://``) or a Redis Cluster (``redis+cluster://``).

==========================================================  ===========================================
URL                                                         client
==========================================================  ===========================================
``redis://[user:pass@]host:port/db``, ``rediss://...``,     :class:`redis.asyncio.Redis`, exactly as
``unix:///path.sock``                                       ``Redis.from_url(url)`` makes it
``redis+cluster://[user:pass@]host:port[,host:port...]/``   :class:`redis.asyncio.RedisCluster` with
``rediss+cluster://...`` (TLS)                              every listed node as a startup node
==========================================================  ===========================================

Why a scheme of its own: a cluster node answers ``redis://`` too, but a plain client sent to it
gets ``MOVED`` for most keys, and telling the two apart would take a round trip before the first
command; redis-py's own ``RedisCluster.from_url`` takes one ``redis://`` node only.  The
``+cluster`` suffix follows the ``transport+variant`` habit of URL schemes (``svn+ssh``,
``postgresql+asyncpg``; RFC 3986 §3.1 allows ``+``), and a comma-separated host list, as in
MongoDB and libpq URLs, names several startup nodes so the client still starts when one is down.
A port defaults to 6379; an IPv6 address is written in brackets (``[::1]:7000``).

The path must be empty, ``/`` or ``/0`` (a cluster has database 0 only).  Query options are the
ones redis-py accepts in a ``redis://`` URL (``socket_timeout``, ``protocol``, ...), plus
``require_full_coverage`` (yes/no) and ``load_balancing_strategy`` (``round_robin``,
``round_robin_replicas``, ``random``, ``random_replica``: whether a cluster client reads from
replicas, e.g. for the gateway's ``read_url``).  An option ``RedisCluster`` does not take
(``retry_on_timeout``, ``timeout``) is refused with ValueError rather than failing at the first
command.

:func:`mapping_clients` makes what a gateway needs from its settings: the write client, the
read client if reads go elsewhere, either from URLs or through Redis Sentinel (:mod:`.sentinel`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis.asyncio
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel
from redis.cluster import LoadBalancingStrategy

from .sentinel import sentinel_clients

__all__ = ["CLUSTER_SCHEMES", "MappingClients", "mapping_clients", "redis_client"]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

_BOOLS = {"1": True, "yes": True, "true": True, "0": False, "no": False, "false": False}


def redis_client(url: str) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    """A client for ``url``: :class:`~redis.asyncio.RedisCluster` for ``redis+cluster://`` and
    ``rediss+cluster://``, otherwise :class:`~redis.asyncio.Redis` (``Redis.from_url``).

    Nothing is connected yet: both connect on first use.  Raises ValueError for a malformed URL.
    """
    scheme = url.partition("://")[0].lower()
    if scheme not in CLUSTER_SCHEMES:
        # A blocking pool: a burst of lookups (many cache entries expiring together) waits for a
        # connection instead of failing with "Too many connections" and routing from stale data.
        pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=64, timeout=5)
        return redis.asyncio.Redis(connection_pool=pool)
    return _cluster_client(url, tls=scheme == "rediss+cluster")


@dataclass
class MappingClients:
    """The clients a gateway's :class:`~gateway.mapping.MappingStore` uses, closed together."""

    write: redis.asyncio.Redis | redis.asyncio.RedisCluster
    read: redis.asyncio.Redis | redis.asyncio.RedisCluster | None
    description: str  # for the log: where the primary is found
    sentinel: Sentinel | None = None

    async def aclose(self) -> None:
        await self.write.aclose()
        if self.read is not None:
            await self.read.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()


def mapping_clients(url: str, read_url: str = "", *, sentinels: Sequence[str] = (), sentinel_master: str = "",
                    sentinel_password: str = "", sentinel_tls: bool = False,
                    read_from_replicas: bool = False) -> MappingClients:
    """Clients for the ``[gdistrib.redis]`` settings: with ``sentinels``, the primary named
    ``sentinel_master`` wherever Sentinel says it is (``url`` gives only credentials, database and
    TLS), reads from ``read_url`` or (``read_from_replicas``) a replica Sentinel lists; without,
    ``url`` and ``read_url`` as :func:`redis_client` reads them.  Raises ValueError."""
    if not sentinels:
        return MappingClients(redis_client(url), redis_client(read_url) if read_url else None, url)
    manager, write, replicas = sentinel_clients(sentinels, sentinel_master, url=url, password=sentinel_password,
                                                tls=sentinel_tls, replica_reads=read_from_replicas)
    read = replicas if replicas is not None else redis_client(read_url) if read_url else None
    where = f"Sentinel primary {sentinel_master!r} via {', '.join(sentinels)}"
    return MappingClients(write, read, where, manager)


def _cluster_client(url: str, *, tls: bool) -> redis.asyncio.RedisCluster:
    parts = urlsplit(url)
    if parts.fragment:
        raise ValueError(f"a fragment in a Redis URL: {url!r}")
    if unquote(parts.path).strip("/") not in ("", "0"):
        raise ValueError(f"Redis Cluster has database 0 only: {url!r}")
    credentials, at, hosts = parts.netloc.rpartition("@")
    nodes = [_host_port(h, url) for h in hosts.split(",")] if hosts else []
    if not nodes:
        raise ValueError(f"no host in Redis Cluster URL: {url!r}")

    # Credentials and the connection options in the query: parsed as redis-py parses them.
    query = parse_qsl(parts.query, keep_blank_values=True)
    cluster_options = {k: v for k, v in query if k in ("require_full_coverage", "load_balancing_strategy")}
    rest = [(k, v) for k, v in query if k not in cluster_options]
    kwargs: dict[str, Any] = dict(parse_url(f"redis://{credentials}{at}localhost/?{urlencode(rest)}"))
    kwargs.pop("host", None)
    if kwargs.pop("db", 0) != 0:
        raise ValueError(f"Redis Cluster has database 0 only: {url!r}")
    if "require_full_coverage" in cluster_options:
        value = cluster_options["require_full_coverage"].lower()
        if value not in _BOOLS:
            raise ValueError(f"require_full_coverage must be yes or no: {url!r}")
        kwargs["require_full_coverage"] = _BOOLS[value]
    if "load_balancing_strategy" in cluster_options:
        value = cluster_options["load_balancing_strategy"].lower()
        try:
            kwargs["load_balancing_strategy"] = LoadBalancingStrategy(value)
        except ValueError:
            choices = ", ".join(m.value for m in LoadBalancingStrategy)
            raise ValueError(f"load_balancing_strategy must be one of {choices}: {url!r}") from None
    unknown = sorted(set(kwargs) - _cluster_parameters())
    if unknown:
        raise ValueError(f"option(s) {', '.join(unknown)} not supported by RedisCluster: {url!r}")
    if tls:
        kwargs["ssl"] = True
    return redis.asyncio.RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes], **kwargs)


@functools.cache
def _cluster_parameters() -> frozenset[str]:
    return frozenset(inspect.signature(redis.asyncio.RedisCluster.__init__).parameters) - {"self"}


def _host_port(text: str, url: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (host, port); the port defaults to 6379."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad IPv6 address in Redis URL: {url!r}")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"empty host in Redis URL: {url!r}")
    if not port_text:
        return unquote(host), 6379
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r} in Redis URL: {url!r}")
    return unquote(host), int(port_text)
