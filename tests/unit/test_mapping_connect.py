"""``redis_client``: a plain client for ``redis://``, a Redis Cluster client for ``redis+cluster://``.

Nothing connects here (both clients connect on first use); the cluster behaviour itself is in
tests/integration/test_mapping_redis_cluster.py.
"""

from __future__ import annotations

import pytest
import redis.asyncio
from redis.cluster import LoadBalancingStrategy

from gateway.mapping import redis_client


def startup(c: redis.asyncio.RedisCluster) -> list[tuple[str, int]]:
    return [(n.host, n.port) for n in c.startup_nodes]


def test_plain_urls_are_redis_from_url() -> None:
    for url in ("redis://127.0.0.1:6379/2", "rediss://h:6380/0", "unix:///tmp/redis.sock"):
        c = redis_client(url)
        assert type(c) is redis.asyncio.Redis
    kwargs = redis_client("redis://u:p@h:7/3?socket_timeout=2").connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["username"], kwargs["password"],
            kwargs["socket_timeout"]) == ("h", 7, 3, "u", "p", 2.0)
    with pytest.raises(ValueError):
        redis_client("http://h:1/")


def test_cluster_url_lists_startup_nodes() -> None:
    c = redis_client("redis+cluster://10.0.0.1:7000,10.0.0.2:7001,redis-3/")
    assert isinstance(c, redis.asyncio.RedisCluster)
    assert startup(c) == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("redis-3", 6379)]
    assert not c.connection_kwargs.get("ssl", False)
    for url in ("redis+cluster://h:1", "redis+cluster://h:1/0", "REDIS+CLUSTER://h:1/"):
        c = redis_client(url)
        assert isinstance(c, redis.asyncio.RedisCluster) and startup(c) == [("h", 1)]


def test_cluster_url_credentials_options_tls_ipv6() -> None:
    c = redis_client("rediss+cluster://me:p%40ss@[::1]:7000,[fe80::2]:7001/?socket_timeout=1.5"
                     "&load_balancing_strategy=round_robin_replicas&require_full_coverage=no")
    assert isinstance(c, redis.asyncio.RedisCluster)
    assert startup(c) == [("::1", 7000), ("fe80::2", 7001)]
    kwargs = c.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["socket_timeout"]) == ("me", "p@ss", 1.5)
    assert kwargs["connection_class"].__name__ == "SSLConnection"
    assert c.nodes_manager.require_full_coverage is False
    assert c.load_balancing_strategy is LoadBalancingStrategy.ROUND_ROBIN_REPLICAS


@pytest.mark.parametrize("url", [
    "redis+cluster:///",  # no host
    "redis+cluster://h:1,,h:2/",  # empty host
    "redis+cluster://h:1/1",  # a cluster has database 0 only
    "redis+cluster://h:1/?db=2",
    "redis+cluster://h:x/",
    "redis+cluster://h:70000/",
    "redis+cluster://[::1/",
    "redis+cluster://h:1/?load_balancing_strategy=nearest",
    "redis+cluster://h:1/?require_full_coverage=maybe",
    "redis+cluster://h:1/?retry_on_timeout=yes",  # a Redis option RedisCluster does not take
    "redis+cluster://h:1/#frag",
])
def test_bad_cluster_urls(url: str) -> None:
    with pytest.raises(ValueError):
        redis_client(url)
