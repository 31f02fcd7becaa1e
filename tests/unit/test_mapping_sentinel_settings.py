"""``[gdistrib.redis]`` with Sentinel: the settings a gateway accepts, the one-line errors it
gives when the Sentinel keys disagree, and the clients :func:`mapping_clients` makes from them.

Nothing connects here; the clients against real Sentinels are in
tests/integration/test_mapping_sentinel.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio
import tomli_w

from cluster_node.settings import ConfigError, load_settings
from gateway.mapping import mapping_clients
from gateway.mapping.sentinel import SentinelBlockingPool, parse_address
from gateway.settings import GatewaySettings

BASE = {"node_name": "gw", "cluster": {"enabled": True, "secret": "s" * 16},
        "gdistrib": {"local_host": "eu", "connections": {"ca_file": "ca.pem", "cert_file": "c.pem",
                                                          "key_file": "k.pem"}}}


def load(tmp_path: Path, **redis_settings: object) -> GatewaySettings:
    path = tmp_path / "gw.toml"
    path.write_text(tomli_w.dumps({**BASE, "gdistrib": {**BASE["gdistrib"], "redis": redis_settings}}))
    return load_settings(path, GatewaySettings)


def test_sentinel_settings_are_accepted(tmp_path: Path) -> None:
    r = load(tmp_path, url="rediss://:pw@ignored:1/2", sentinels=["10.0.0.1:26379", "[::1]:26380"],
             sentinel_master="mymaster", sentinel_password="spw", sentinel_tls=True,
             read_from_replicas=True).gdistrib.redis
    assert r.sentinels == ["10.0.0.1:26379", "[::1]:26380"] and r.sentinel_master == "mymaster"
    assert load(tmp_path).gdistrib.redis.sentinels == []  # the default: a url, as before


@pytest.mark.parametrize(("settings", "error"), [
    ({"sentinels": ["h:26379"]}, "gdistrib.redis.sentinel_master: the primary's name is required with sentinels"),
    ({"sentinel_master": "m"}, "gdistrib.redis.sentinel_master: needs sentinels"),
    ({"sentinels": ["h"], "sentinel_master": "m"}, "gdistrib.redis.sentinels: expected host:port, got 'h'"),
    ({"sentinels": ["h:99999"], "sentinel_master": "m"}, "gdistrib.redis.sentinels: expected host:port"),
    ({"read_from_replicas": True}, "gdistrib.redis.read_from_replicas: only with sentinels"),
    ({"sentinel_tls": True}, "gdistrib.redis.sentinel_tls: only with sentinels"),
    ({"sentinel_password": "secret"}, "gdistrib.redis: sentinel_password: only with sentinels"),
    ({"sentinels": ["h:1"], "sentinel_master": "m", "read_url": "redis://r:1/0", "read_from_replicas": True},
     "gdistrib.redis.read_from_replicas: give read_url or read_from_replicas, not both"),
    ({"url": "redis+cluster://h:1/", "sentinels": ["h:1"], "sentinel_master": "m"},
     "gdistrib.redis.sentinels: need a redis:// or rediss:// url"),
])
def test_inconsistent_sentinel_settings_are_one_line_naming_the_key(tmp_path: Path, settings: dict[str, object],
                                                                     error: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, **settings)
    message = str(e.value)
    assert error in message and "\n" not in message and "more)" not in message, message
    assert "secret" not in message  # a password is never echoed


def test_parse_address() -> None:
    assert parse_address("h:1") == ("h", 1) and parse_address("[::1]:26379") == ("::1", 26379)
    for bad in ("h", ":1", "h:", "h:0", "h:x"):
        with pytest.raises(ValueError):
            parse_address(bad)


async def test_mapping_clients_from_sentinel_settings() -> None:
    c = mapping_clients("rediss://u:pw@ignored:1/3?ssl_cert_reqs=none", sentinels=["h1:26379", "h2:26380"],
                        sentinel_master="m", sentinel_password="spw", sentinel_tls=True, read_from_replicas=True)
    try:
        assert c.sentinel is not None and c.read is not None and isinstance(c.write, redis.asyncio.Redis)
        for client, is_master in ((c.write, True), (c.read, False)):
            pool = client.connection_pool
            assert isinstance(pool, SentinelBlockingPool) and pool.is_master is is_master
            assert pool.service_name == "m" and pool.max_connections == 64
            kwargs = pool.connection_kwargs
            assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("u", "pw", 3)
            assert "host" not in kwargs and pool.connection_class.__name__ == "SentinelManagedSSLConnection"
        sentinel_kwargs = [s.connection_pool.connection_kwargs for s in c.sentinel.sentinels]
        assert [(k["host"], k["port"]) for k in sentinel_kwargs] == [("h1", 26379), ("h2", 26380)]
        assert all(k["password"] == "spw" and k["ssl_cert_reqs"] == "none" for k in sentinel_kwargs)
        assert c.description == "Sentinel primary 'm' via h1:26379, h2:26380"
    finally:
        await c.aclose()
    plain = mapping_clients("redis://h:1/0", "redis://r:2/0")
    assert plain.sentinel is None and plain.read is not None and plain.description == "redis://h:1/0"
    await plain.aclose()
    with pytest.raises(ValueError, match="redis:// or rediss://"):
        mapping_clients("unix:///tmp/r.sock", sentinels=["h:1"], sentinel_master="m")
