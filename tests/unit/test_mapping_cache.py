"""MappingCache: TTL per kind, LRU bound, negative entries, counters — time is an argument."""

from __future__ import annotations

import pytest

from gateway.mapping import MappingCache


def test_hit_then_expiry_per_kind() -> None:
    cache: MappingCache[str] = MappingCache(jid_lifetime=5.0, domain_lifetime=60.0)
    cache.put("alice@x/phone", "eu", 100.0)
    cache.put("muc.x", "us", 100.0, kind="domain")
    assert cache.get("alice@x/phone", 104.9) == (True, "eu")
    assert cache.get("alice@x/phone", 105.0) == (False, None)  # a deadline is exclusive
    assert cache.stale("alice@x/phone") == "eu"  # kept for when the store is unreachable
    assert cache.purge(105.0) == 1 and "alice@x/phone" not in cache
    assert cache.get("muc.x", 159.0) == (True, "us")
    assert cache.get("muc.x", 160.0) == (False, None)
    assert (cache.hits, cache.misses) == (2, 2)


def test_unknown_key_is_a_miss() -> None:
    cache: MappingCache[str] = MappingCache()
    assert cache.get("nobody@x", 0.0) == (False, None)
    assert cache.misses == 1 and cache.hits == 0


def test_lru_bound_evicts_least_recently_used() -> None:
    cache: MappingCache[int] = MappingCache(max_size=3)
    for i, key in enumerate("abc"):
        cache.put(key, i, 0.0)
    assert cache.get("a", 1.0) == (True, 0)  # a is now the most recently used
    cache.put("d", 3, 1.0)
    assert len(cache) == 3 and cache.evictions == 1
    assert "b" not in cache
    assert cache.get("a", 1.0)[0] and cache.get("c", 1.0)[0] and cache.get("d", 1.0)[0]
    cache.put("c", 30, 2.0)  # an update refreshes recency without growing the cache
    cache.put("e", 4, 2.0)
    assert "a" not in cache and "c" in cache and len(cache) == 3


def test_misses_not_cached_by_default() -> None:
    cache: MappingCache[str] = MappingCache()
    cache.put("bob@x", None, 0.0)
    assert cache.get("bob@x", 0.0) == (False, None)
    assert len(cache) == 0


def test_negative_entries_have_their_own_lifetime() -> None:
    cache: MappingCache[str] = MappingCache(jid_lifetime=5.0, miss_lifetime=1.0)
    cache.put("bob@x", None, 10.0)
    assert cache.get("bob@x", 10.5) == (True, None)  # "not mapped, do not ask the store"
    assert cache.get("bob@x", 11.0) == (False, None)
    cache.put("bob@x", "eu", 11.0)
    assert cache.get("bob@x", 15.5) == (True, "eu")


def test_a_miss_drops_a_stale_positive_entry_when_misses_are_not_cached() -> None:
    cache: MappingCache[str] = MappingCache()
    cache.put("bob@x/a", "eu", 0.0)
    cache.put("bob@x/a", None, 1.0)
    assert cache.get("bob@x/a", 1.0) == (False, None)


def test_invalidate_purge_clear() -> None:
    cache: MappingCache[str] = MappingCache(jid_lifetime=5.0, domain_lifetime=50.0)
    cache.put("a", "eu", 0.0)
    cache.put("b", "eu", 0.0)
    cache.put("c.x", "us", 0.0, kind="domain")
    assert cache.invalidate("a") is True
    assert cache.invalidate("a") is False
    assert cache.get("a", 0.0) == (False, None)
    assert cache.stale("a") == "eu"  # still the best guess while the store is unreachable
    assert cache.purge(10.0) == 2  # a invalidated, b expired, the domain did not
    assert len(cache) == 1 and "c.x" in cache
    cache.clear()
    assert len(cache) == 0


@pytest.mark.parametrize("kwargs", [{"max_size": 0}, {"jid_lifetime": 0}, {"domain_lifetime": -1},
                                    {"miss_lifetime": 0}])
def test_bad_settings_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MappingCache(**kwargs)  # type: ignore[arg-type]
