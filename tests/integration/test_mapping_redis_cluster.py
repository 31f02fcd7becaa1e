"""MappingStore on a Redis Cluster (three primaries), through ``redis_client("redis+cluster://...")``.

MongooseIM's mapping never ran on Redis Cluster (https://github.com/esl/MongooseIM/issues/3296).
Ours does: every script touches
one key, and the pipelines that span slots (``publish_many``, ``publish_region``, ``statuses``) are
non-transactional, which a ClusterPipeline splits per node.

One suite, two backends: the backend-independent tests of test_mapping.py run here unchanged,
with ``client`` a :class:`redis.asyncio.RedisCluster` (the fixtures below override the plain
ones).  Left to the plain suite: the replica of a single server, a single server's restart, and
the exact round-trip count; their cluster counterparts follow.  The cluster is started once for
this module (about 2 s) and emptied before each test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio

from gateway.mapping import (
    REGIONS_KEY,
    Location,
    MappingStore,
    domain_key,
    endpoints_key,
    redis_client,
    resources_key,
    status_key,
)
from tests.helpers.ports import free_port
from tests.helpers.redis import RedisClusterServer, redis_cli_binary, redis_server_binary
from tests.integration import test_mapping as plain
from tests.integration.test_mapping import Clock, StoreFactory, loc

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterServer]:
    if redis_server_binary() is None or redis_cli_binary() is None:
        pytest.skip("redis-server or redis-cli is not installed (apt-get install redis-server)")
    with RedisClusterServer() as cluster:
        yield cluster


@pytest.fixture
async def client(redis_cluster: RedisClusterServer) -> AsyncIterator[redis.asyncio.RedisCluster]:
    redis_cluster.start()  # running already, unless a test that stops it failed
    redis_cluster.flushall()
    c = redis_client(redis_cluster.url)
    assert isinstance(c, redis.asyncio.RedisCluster)
    yield c
    await c.aclose()


# the plain suite's other fixtures, resolved here against the cluster ``client``
clock = plain.clock
make_store = plain.make_store
round_trips = plain.round_trips

# -- the plain suite, unchanged ---------------------------------------------------------------

test_publish_and_lookup = plain.test_publish_and_lookup
test_stale_refresh_never_overwrites_a_newer_login = plain.test_stale_refresh_never_overwrites_a_newer_login
test_concurrent_writers_newest_created_wins = plain.test_concurrent_writers_newest_created_wins
test_same_created_refresh_extends_expiry = plain.test_same_created_refresh_extends_expiry
test_expired_entry_is_replaced_by_an_older_login = plain.test_expired_entry_is_replaced_by_an_older_login
test_remove_only_own_sid = plain.test_remove_only_own_sid
test_user_online_in_two_regions = plain.test_user_online_in_two_regions
test_expired_fields_filtered_and_dropped_injected_clock = plain.test_expired_fields_filtered_and_dropped_injected_clock
test_key_ttl_follows_the_latest_field = plain.test_key_ttl_follows_the_latest_field
test_real_ttls_expire_everything = plain.test_real_ttls_expire_everything
test_domains = plain.test_domains
test_regions_endpoints_status = plain.test_regions_endpoints_status
test_dead_regions_are_forgotten = plain.test_dead_regions_are_forgotten
test_publish_many_mixed_results_keep_order = plain.test_publish_many_mixed_results_keep_order
test_scripts_survive_script_flush = plain.test_scripts_survive_script_flush
test_malformed_values_are_ignored = plain.test_malformed_values_are_ignored
test_not_a_full_jid_is_refused = plain.test_not_a_full_jid_is_refused


# -- the cluster's own ------------------------------------------------------------------------

def node_sizes(cluster: RedisClusterServer) -> list[int]:
    sizes = []
    for port in cluster.ports:
        with cluster.node_client(port) as c:
            sizes.append(int(c.dbsize()))
    return sizes


def scripts_on_nodes(cluster: RedisClusterServer, sha: str) -> list[bool]:
    found = []
    for port in cluster.ports:
        with cluster.node_client(port) as c:
            found.append(bool(c.script_exists(sha)[0]))
    return found


def flush_scripts(cluster: RedisClusterServer, ports: list[int]) -> None:
    for port in ports:
        with cluster.node_client(port) as c:
            c.script_flush()


async def test_publish_many_across_slots(make_store: StoreFactory, client: redis.asyncio.RedisCluster,
                                         redis_cluster: RedisClusterServer, clock: Clock,
                                         round_trips: list[int]) -> None:
    eu = make_store("eu")
    await eu.publish_session("warm@x/up", loc("eu", "s", 1.0))  # slots known, script loaded
    flush_scripts(redis_cluster, redis_cluster.ports)
    entries = [(f"user{i}@x/res{i % 3}", loc("eu", f"s{i}", float(i))) for i in range(3_000)]
    round_trips[0] = 0
    assert await eu.publish_many(entries, batch_size=1_000) == [True] * 3_000
    # the first batch: one pipeline per node (NOSCRIPT everywhere), SCRIPT LOAD on each node, the
    # redo (one pipeline per node); the next two batches find the scripts
    assert round_trips[0] == 3 + 3 + 3 + 2 * 3
    sizes = node_sizes(redis_cluster)
    assert sum(sizes) == 3_001 and min(sizes) > 800  # spread over all three primaries
    round_trips[0] = 0
    assert await eu.publish_many(entries, batch_size=1_000) == [True] * 3_000
    assert round_trips[0] == 3 * 3  # one pipeline per node and batch
    for i in (0, 1234, 2999):
        assert await eu.lookup_full(f"user{i}@x/res{i % 3}") == Location(
            "eu", "n1", f"s{i}", float(i), 0, True, clock.now + 120.0)
    # stale refreshes of a few thousand entries are refused wherever their slot lives
    us = make_store("us")
    newer = [(jid, loc("us", "new", 10_000.0)) for jid, _ in entries[::2]]
    assert await us.publish_many(newer) == [True] * len(newer)
    assert await eu.publish_many(entries) == [i % 2 == 1 for i in range(3_000)]


async def test_lookup_after_script_flush_on_all_nodes(make_store: StoreFactory, redis_cluster: RedisClusterServer,
                                                      client: redis.asyncio.RedisCluster) -> None:
    eu, us = make_store("eu"), make_store("us")
    users = [f"u{i}@x" for i in range(30)]  # spread over every node
    assert await eu.publish_many([(f"{u}/r", loc("eu", "s", 1.0)) for u in users]) == [True] * 30
    assert await eu.publish_session("alice@x/phone", loc("eu", "s1", 1.0))
    await eu.publish_domain("muc.x")
    sha = eu._publish.sha
    assert scripts_on_nodes(redis_cluster, sha) == [True] * 3

    flush_scripts(redis_cluster, redis_cluster.ports)
    assert scripts_on_nodes(redis_cluster, sha) == [False] * 3
    assert set(await us.lookup_bare("alice@x")) == {"phone"}  # lookups never need a script
    assert [await us.lookup_full(f"{u}/r") is not None for u in users] == [True] * 30
    assert await us.publish_session("alice@x/laptop", loc("us", "s2", 2.0))  # reloads, everywhere
    assert scripts_on_nodes(redis_cluster, sha) == [True] * 3
    flush_scripts(redis_cluster, redis_cluster.ports)
    assert await eu.remove_session("alice@x/phone", "s1")
    assert await us.remove_session("alice@x/laptop", "s2")
    assert await eu.remove_domain("muc.x")
    assert await eu.lookup_bare("alice@x") == {} and await eu.lookup_domain("muc.x") is None

    # only one node lost its scripts (restarted, or a replica promoted): the others' replies stand
    flush_scripts(redis_cluster, redis_cluster.ports[:1])
    results = await us.publish_many([(f"{u}/r", loc("us", "t", 1.0 if i % 3 else 0.5)) for i, u in enumerate(users)])
    assert results == [i % 3 != 0 for i in range(30)]  # an older login never replaces a newer one
    for i, u in enumerate(users):
        found = await eu.lookup_full(f"{u}/r")
        assert found is not None and found.region == ("eu" if i % 3 == 0 else "us")


async def test_region_keys_in_different_slots(make_store: StoreFactory, redis_cluster: RedisClusterServer,
                                              client: redis.asyncio.RedisCluster, clock: Clock) -> None:
    names = [f"region-{i}" for i in range(12)]
    for name in names:
        await make_store(name).publish_region([f"{name}.example:5999"], {"members": len(name)})
    # the regions' keys really are on several nodes, and the zset on one of them
    nodes = {client.get_node_from_key(status_key(n)).name for n in names}
    assert len(nodes) == 3
    sizes = node_sizes(redis_cluster)
    assert sum(sizes) == 2 * len(names) + 1 and min(sizes) > 0
    reader = make_store("reader")
    assert await reader.regions() == sorted(names)
    assert await reader.statuses() == {n: {"members": len(n)} for n in names}
    assert [await reader.endpoints(n) for n in names] == [[f"{n}.example:5999"] for n in names]
    assert await client.exists(*(endpoints_key(n) for n in names), REGIONS_KEY) == len(names) + 1
    clock.now += 121
    assert await reader.regions() == [] and await reader.statuses() == {}


async def test_multi_region_users_on_every_node(make_store: StoreFactory, client: redis.asyncio.RedisCluster) -> None:
    eu, us = make_store("eu"), make_store("us")
    users = [f"u{i}@x" for i in range(40)]
    await eu.publish_many([(f"{u}/phone", loc("eu", f"e{u}", 1.0, priority=1)) for u in users])
    await us.publish_many([(f"{u}/laptop", loc("us", f"u{u}", 2.0, priority=5)) for u in users])
    assert len({client.get_node_from_key(resources_key(u)).name for u in users}) == 3
    for u in users:
        found = await eu.lookup_bare(u)
        assert {r: (v.region, v.priority) for r, v in found.items()} == {"phone": ("eu", 1), "laptop": ("us", 5)}
    for u in users[::2]:
        assert not await us.remove_session(f"{u}/phone", f"u{u}")  # not its session
        assert await eu.remove_session(f"{u}/phone", f"e{u}")
    for i, u in enumerate(users):
        assert set(await us.lookup_bare(u)) == ({"laptop"} if i % 2 == 0 else {"phone", "laptop"})


async def test_cluster_down_then_back_empty(make_store: StoreFactory, redis_cluster: RedisClusterServer) -> None:
    """The whole cluster restarts without its data: calls fail with the error a single server's
    client raises (``redis.ConnectionError``, a ``RedisError``: the gateway keeps serving from its
    cache), and once the cluster is back, the re-publish restores everything."""
    eu = make_store("eu")
    sessions = [(f"u{i}@x/r", loc("eu", f"s{i}", 1.0)) for i in range(100)]
    assert await eu.publish_many(sessions) == [True] * 100
    await eu.publish_region(["eu1:5999"], {"members": 1})
    redis_cluster.stop()
    with pytest.raises(redis.ConnectionError):
        await eu.publish_session("alice@x/r", loc("eu", "s", 1.0))
    with pytest.raises(redis.ConnectionError):
        await eu.lookup_bare("u1@x")
    with pytest.raises(redis.ConnectionError):
        await eu.publish_many(sessions)
    with pytest.raises(redis.ConnectionError):
        await eu.statuses()
    redis_cluster.start()  # same nodes, same slots, no data, no scripts
    assert await eu.lookup_bare("u1@x") == {}
    assert await eu.statuses() == {}
    assert await eu.publish_many(sessions) == [True] * 100
    assert [set(await eu.lookup_bare(f"u{i}@x")) for i in range(100)] == [{"r"}] * 100


async def test_unreachable_cluster_is_a_connection_error() -> None:
    c = redis_client(f"redis+cluster://127.0.0.1:{free_port()}/")
    try:
        eu = MappingStore(c, region="eu")
        with pytest.raises(redis.ConnectionError, match="Redis Cluster"):
            await eu.lookup_full("alice@x/r")
        with pytest.raises(redis.ConnectionError):
            await eu.publish_many([("alice@x/r", loc("eu", "s", 1.0))])
        assert await eu.publish_many([]) == []  # nothing to send, nothing asked
    finally:
        await c.aclose()


async def test_decoded_responses_cluster_client(redis_cluster: RedisClusterServer, clock: Clock) -> None:
    """A cluster client made with ``decode_responses=True`` works the same."""
    redis_cluster.flushall()
    c = redis.asyncio.RedisCluster(startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p)
                                                  for h, p in redis_cluster.addresses], decode_responses=True)
    try:
        eu = MappingStore(c, region="eu", clock=clock)
        assert await eu.publish_session("alice@x/phone", loc("eu", "s1", 1.0))
        assert await eu.publish_many([(f"u{i}@x/r", loc("eu", "s", 1.0)) for i in range(50)]) == [True] * 50
        assert set(await eu.lookup_bare("alice@x")) == {"phone"}
        await eu.publish_domain("muc.x")
        assert await eu.lookup_domain("muc.x") == "eu"
        assert await c.get(domain_key("muc.x")) == "eu"
        await eu.publish_region(["h:1"], {"a": 1})
        assert await eu.regions() == ["eu"] and await eu.statuses() == {"eu": {"a": 1}}
        assert await eu.last_seen() == {"eu": clock.now}
    finally:
        await c.aclose()
