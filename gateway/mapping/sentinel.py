"""The mapping's clients through Redis Sentinel: the primary Sentinel names now, and its replicas.

Why Sentinel: with a fixed ``url`` a promoted replica is reached only after someone edits the
setting and restarts the gateway.  Here every new connection asks the Sentinels where the
primary is (``master_for``), so once they have promoted a replica the next write goes to it; a
connection still open to a demoted primary is dropped on its ``READONLY`` reply and asked again
(redis-py's ``SentinelManagedConnection``).  Reads may go to a replica Sentinel lists
(``slave_for``: round robin over the live ones, the primary when none is up), the Sentinel form
of ``read_url``.

Credentials, database and TLS for the Redis servers come from the ``url`` setting (its host and
port are not used): one place for them whichever way the servers are found.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

__all__ = ["SentinelBlockingPool", "parse_address", "sentinel_clients"]

# Sentinels are asked one after another until one knows the primary: a silent one must not
# hold the others up for long.
SENTINEL_TIMEOUT = 1.0
POOL_SIZE = 64
POOL_WAIT = 5.0


class SentinelBlockingPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel pool that, when all its connections are busy, waits for one (like the plain
    client's pool, :func:`gateway.mapping.redis_client`) instead of failing with "Too many
    connections": a burst of lookups must not turn into routing from stale data."""


class LinkedReplicasSentinel(Sentinel):
    """Reads go only to replicas whose link to the primary is up.  A killed primary that comes
    back after a failover is listed as a replica at once, but it comes back empty and stays a
    primary of its own until the Sentinels reconfigure it (about 10 s): lookups read from it
    found no session anywhere, and messages for users online in another region were stored
    offline."""

    def filter_slaves(self, slaves: Iterable[Mapping[str, Any]]) -> Sequence[tuple[Any, Any]]:
        return super().filter_slaves([s for s in slaves if s.get("master-link-status", "ok") == "ok"])


def parse_address(spec: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError saying what is wrong."""
    host, sep, port = spec.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {spec!r}")
    return host, int(port)


def server_options(url: str) -> dict[str, Any]:
    """What to connect to the servers with, from a ``redis://`` or ``rediss://`` URL (host and
    port dropped: Sentinel gives them)."""
    scheme = url.partition("://")[0].lower()
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"with Sentinel the url must be redis:// or rediss:// (credentials, database, TLS), "
                         f"got {url!r}")
    options = dict(parse_url(url))
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True  # the Sentinel pool picks its own TLS connection class from this flag
    return options


def sentinel_clients(sentinels: Sequence[str], master: str, *, url: str, password: str = "",
                     tls: bool = False, replica_reads: bool = False,
                     ) -> tuple[Sentinel, redis.asyncio.Redis, redis.asyncio.Redis | None]:
    """The Sentinel manager, a client of the primary, and (``replica_reads``) a client of its
    replicas.  Nothing is connected yet.  ``password`` and ``tls`` are for the Sentinels
    themselves (with TLS they use the url's ``ssl_*`` options too)."""
    addresses = [parse_address(s) for s in sentinels]
    options = server_options(url)
    sentinel_options: dict[str, Any] = {"socket_timeout": SENTINEL_TIMEOUT,
                                        "socket_connect_timeout": SENTINEL_TIMEOUT}
    if password:
        sentinel_options["password"] = password
    if tls:
        sentinel_options["ssl"] = True
        sentinel_options.update({k: v for k, v in options.items() if k.startswith("ssl_")})
    manager = LinkedReplicasSentinel(addresses, sentinel_kwargs=sentinel_options, **options)
    write = manager.master_for(master, connection_pool_class=SentinelBlockingPool, max_connections=POOL_SIZE,
                               timeout=POOL_WAIT)
    read = manager.slave_for(master, connection_pool_class=SentinelBlockingPool, max_connections=POOL_SIZE,
                             timeout=POOL_WAIT) if replica_reads else None
    return manager, write, read
