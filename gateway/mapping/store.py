"""The mapping in Redis: which region serves each full JID, bare JID, routed domain; the regions.

Why it is built this way (docs/architecture.md, "Global distribution"):

* Writes go to the primary, reads to a replica in the gateway's own region, so a lookup never
  crosses an ocean.  Replication is asynchronous: a region may briefly read an old location, and
  the relay re-resolves and resends when a stanza lands in a region that no longer holds the JID.
* Session writes are conditional (a Lua script, atomic on the server): an entry is replaced only
  by a login at least as recent (``created``), so a late refresh from the region a user left never
  overwrites the newer login in another region (the race fixed by
  https://github.com/esl/MongooseIM/pull/2392), and a late logout removes only its own session
  (``sid``).
* Every entry expires unless refreshed, so a dead region's entries vanish on their own.  A user's
  hash may be kept alive by another region's refreshes, so each field also carries its own expiry:
  readers skip expired fields and every write drops them.
* Expiry uses the gateway's clock (``clock``), passed to the scripts, not Redis's: tests inject
  time, and regions are assumed to agree on time within a small part of ``expire_after`` (NTP).
* It runs on one server (with replicas) or on a Redis Cluster (``connect.redis_client``): each
  script touches one key, and the pipelines spanning several keys (``publish_many``,
  ``publish_region``, ``statuses``) are not transactions, so a cluster client splits them per
  node, one round trip to each node concerned, all in parallel.

Writes that fail on a lost connection (a primary that died, Sentinel still promoting a replica)
are retried with exponential backoff for up to ``write_retry_for`` seconds (tenacity), so a short
failover costs the caller nothing; writes are idempotent (the scripts compare ``created`` and
``sid``), so a retry after a reply was lost does no harm.  Reads are not retried: the router
answers from its cache at once instead.

Redis errors (``redis.RedisError``) propagate: the caller decides what "Redis is down" means
(keep serving from the cache, re-publish everything with :meth:`MappingStore.publish_many` once
Redis is back).  A cluster client reports an unreachable cluster or uncovered slots with
``RedisClusterException``, which is not a ``RedisError``; the store raises it as
``redis.ConnectionError`` (the original chained), what a single server's client raises.
Malformed values found in Redis are skipped, never raised.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

import redis.asyncio
from redis.asyncio.sentinel import MasterNotFoundError, SlaveNotFoundError
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    TimeoutError as RedisTimeoutError,
)
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from .keys import REGIONS_KEY, domain_key, endpoints_key, resources_key, split_full_jid, status_key

__all__ = ["Client", "Location", "MappingStore"]

# One server (with its replicas) or a Redis Cluster: see ``connect.redis_client``.
Client = redis.asyncio.Redis | redis.asyncio.RedisCluster

log = logging.getLogger(__name__)

# Shared by the session scripts.  ``decode`` accepts what Location.encode writes (numbers for
# "c" and "e"); ``tidy`` drops expired or undecodable fields and sets the key's TTL to the latest
# remaining expiry, so the key lives exactly as long as its longest-lived resource.
_LUA_PRELUDE = """
local function decode(v)
  local ok, t = pcall(cjson.decode, v)
  if not ok or type(t) ~= 'table' or type(t.c) ~= 'number' or type(t.e) ~= 'number' then
    return nil
  end
  return t
end
local function tidy(key, now)
  local all = redis.call('HGETALL', key)
  local latest = nil
  for i = 1, #all, 2 do
    local t = decode(all[i + 1])
    if t == nil or not (t.e > now) then
      redis.call('HDEL', key, all[i])
    elseif latest == nil or t.e > latest then
      latest = t.e
    end
  end
  if latest ~= nil then
    redis.call('PEXPIRE', key, string.format('%d', math.max(1, math.ceil((latest - now) * 1000))))
  end
end
"""

# KEYS[1] = resources hash; ARGV = resource, encoded location, its created, now.
# Written when the field is absent, undecodable, expired, or not newer than ours.
_PUBLISH_LUA = _LUA_PRELUDE + """
local key, field = KEYS[1], ARGV[1]
local created, now = tonumber(ARGV[3]), tonumber(ARGV[4])
local written = 0
local old = redis.call('HGET', key, field)
local t = old and decode(old)
if not t or not (t.e > now) or t.c <= created then
  redis.call('HSET', key, field, ARGV[2])
  written = 1
end
tidy(key, now)
return written
"""

# KEYS[1] = resources hash; ARGV = resource, sid, now.  Deletes only our own session.
_REMOVE_LUA = _LUA_PRELUDE + """
local key, field = KEYS[1], ARGV[1]
local removed = 0
local old = redis.call('HGET', key, field)
local t = old and decode(old)
if t and t.s == ARGV[2] then
  redis.call('HDEL', key, field)
  removed = 1
end
tidy(key, tonumber(ARGV[3]))
return removed
"""

# KEYS[1] = domain key; ARGV[1] = our region.  Another region's registration is left alone.
_REMOVE_DOMAIN_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] = domain key; ARGV[1] = our region, ARGV[2] = expiry (ms), ARGV[3] = '1' when we may take
# it if nobody holds it.  The lease of a service domain: renewed only by its holder, taken only
# when free.  Returns the holder afterwards (nil: nobody).
_CLAIM_DOMAIN_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return holder
end
if not holder and ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return holder
"""


def _text(raw: object) -> str | None:
    """A reply as text whether the client decodes responses or not; None for invalid UTF-8."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bytes | bytearray):
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _number(value: object) -> float | None:
    """A finite JSON number (bool is an int in Python, but not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _redis_call(method: Callable[Concatenate[MappingStore, _P], Awaitable[_T]]
                ) -> Callable[Concatenate[MappingStore, _P], Coroutine[Any, Any, _T]]:
    """Wraps each MappingStore method that talks to Redis; a no-op for a single server's client.

    A cluster client that does not know the slots yet (just made, or after the whole cluster was
    unreachable) routes a keyed command like a keyless one, to an arbitrary node, and learns the
    slot from its MOVED reply; every fifth MOVED it closes every connection, including those
    other tasks are using at that moment (redis-py 8, asyncio).  Concurrent first calls then fail
    with AttributeError.  So the slots are fetched first (``initialize()`` returns at once when
    they are known).  ``RedisClusterException`` ("cannot be connected", "slots not covered") is
    raised as ``redis.ConnectionError``, so callers handle one kind of Redis outage.
    """
    @functools.wraps(method)
    async def call(self: MappingStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            for cluster in self._clusters:
                await cluster.initialize()
            return await method(self, *args, **kwargs)
        except RedisClusterException as e:
            raise RedisConnectionError(f"Redis Cluster: {e}") from e
        except (MasterNotFoundError, SlaveNotFoundError) as e:
            # redis-py appends every Sentinel's client repr: keep the one line that says what happened
            raise type(e)(f"Sentinel: {str(e).partition(' : ')[0]}") from e
    return call


def _write_call(method: Callable[Concatenate[MappingStore, _P], Awaitable[_T]]
                ) -> Callable[Concatenate[MappingStore, _P], Coroutine[Any, Any, _T]]:
    """A write, retried while the connection fails, for up to ``write_retry_for`` seconds with
    exponential backoff (0.05 s doubling to 1 s, jittered); then the last error is raised."""
    @functools.wraps(method)
    async def call(self: MappingStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        retrying = AsyncRetrying(stop=stop_after_delay(self.write_retry_for),
                                 wait=wait_exponential(multiplier=0.05, max=1.0) + wait_random(0, 0.05),
                                 retry=retry_if_exception_type((RedisConnectionError, RedisTimeoutError)),
                                 before_sleep=self._retrying, reraise=True)
        async for attempt in retrying:
            with attempt:
                return await method(self, *args, **kwargs)
        raise AssertionError("unreachable: tenacity returns or raises")
    return call


@dataclass(frozen=True, slots=True)
class Location:
    """Where one full JID is served: the region, the node in it, and the session's incarnation.

    ``sid`` and ``created`` (the login time) identify the incarnation: the conditional write
    keeps the newest login, the conditional delete removes only its own session.  ``priority``
    and ``available`` let another region choose bare-JID recipients (RFC 6121 §8.5.2) without
    asking.  ``expires_at`` is stamped by :class:`MappingStore` on every write.
    """

    region: str
    node: str
    sid: str
    created: float
    priority: int = 0
    available: bool = False
    expires_at: float = 0.0

    def encode(self) -> str:
        """Compact JSON with one-letter names: the hash holds one per online resource."""
        return json.dumps({"r": self.region, "n": self.node, "s": self.sid, "c": float(self.created),
                           "p": self.priority, "a": self.available, "e": float(self.expires_at)},
                          separators=(",", ":"), allow_nan=False)

    @classmethod
    def decode(cls, raw: str | bytes) -> Location | None:
        """The location in ``raw``, or None when it is not one (unknown extra names are ignored)."""
        text = _text(raw)
        if text is None:
            return None
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        region, node, sid = obj.get("r"), obj.get("n"), obj.get("s")
        created, expires_at = _number(obj.get("c")), _number(obj.get("e"))
        priority, available = obj.get("p", 0), obj.get("a", False)
        if not (isinstance(region, str) and isinstance(node, str) and isinstance(sid, str)):
            return None
        if created is None or expires_at is None:
            return None
        if isinstance(priority, bool) or not isinstance(priority, int) or not isinstance(available, bool):
            return None
        return cls(region, node, sid, created, priority, available, expires_at)

    def expired(self, now: float) -> bool:
        return self.expires_at <= now


class MappingStore:
    """The mapping in Redis, as seen from one region's gateway.

    ``write`` is the primary; ``read`` (a replica in this region), when given, serves lookups.
    Either may be a :class:`redis.asyncio.RedisCluster`.
    ``expire_after`` is how long an entry outlives its last refresh: publishers refresh well
    within it (e.g. every third of it), readers ignore anything older.  ``write_retry_for``:
    seconds a write is retried on connection errors (0: not retried); ``write_retries`` counts
    the retries.
    """

    def __init__(self, write: Client, read: Client | None = None, *, region: str,
                 expire_after: float = 120.0, forget_after: float = 86400.0, write_retry_for: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        if expire_after <= 0:
            raise ValueError("expire_after must be positive")
        if write_retry_for < 0:
            raise ValueError("write_retry_for must not be negative")
        self.write_retry_for = write_retry_for
        self.write_retries = 0
        self.region = region
        self.expire_after = expire_after
        self.forget_after = max(forget_after, expire_after)  # dead regions stay listed this long
        self._write = write
        self._read = read if read is not None else write
        self._clusters = tuple({id(c): c for c in (self._write, self._read)
                                if isinstance(c, redis.asyncio.RedisCluster)}.values())
        self._clock = clock
        self._publish = write.register_script(_PUBLISH_LUA)
        self._remove = write.register_script(_REMOVE_LUA)
        self._remove_domain = write.register_script(_REMOVE_DOMAIN_LUA)
        self._claim_domain = write.register_script(_CLAIM_DOMAIN_LUA)

    def _retrying(self, state: RetryCallState) -> None:
        self.write_retries += 1
        error = state.outcome.exception() if state.outcome is not None else None
        log.debug("Redis write failed (%s); retry %d", error, state.attempt_number)

    # -- sessions ---------------------------------------------------------------------------

    def _publish_args(self, jid: str, loc: Location, now: float) -> tuple[str, list[str]]:
        bare, resource = split_full_jid(jid)
        stamped = replace(loc, expires_at=now + self.expire_after)
        return resources_key(bare), [resource, stamped.encode(), repr(float(loc.created)), repr(now)]

    @_write_call
    @_redis_call
    async def publish_session(self, jid: str, loc: Location) -> bool:
        """Map full ``jid`` to ``loc`` unless a newer login holds it; True when written."""
        now = self._clock()
        key, args = self._publish_args(jid, loc, now)
        return bool(await self._publish(keys=[key], args=args))

    async def publish_many(self, entries: Iterable[tuple[str, Location]], *, batch_size: int = 500) -> list[bool]:
        """Publish many sessions, one pipelined round trip per batch (periodic refresh, and the
        re-publish after Redis comes back empty).  Results follow the order of ``entries``."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        results: list[bool] = []
        batch: list[tuple[str, Location]] = []
        for entry in entries:
            batch.append(entry)
            if len(batch) >= batch_size:
                results.extend(await self._publish_batch(batch))
                batch = []
        if batch:
            results.extend(await self._publish_batch(batch))
        return results

    @_write_call
    @_redis_call
    async def _publish_batch(self, batch: Sequence[tuple[str, Location]]) -> list[bool]:
        now = self._clock()
        calls = [self._publish_args(jid, loc, now) for jid, loc in batch]
        replies = await self._evalsha_all(calls, range(len(calls)))
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:  # the server lost its scripts (restart, SCRIPT FLUSH, failover): load, redo those
            await self._write.script_load(_PUBLISH_LUA)
            for i, reply in zip(missing, await self._evalsha_all(calls, missing), strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [bool(r) for r in replies]

    async def _evalsha_all(self, calls: Sequence[tuple[str, list[str]]], which: Iterable[int]) -> list[Any]:
        pipe = self._write.pipeline(transaction=False)
        for i in which:
            key, args = calls[i]
            # The raw command, not pipe.evalsha(): redis-py's ClusterPipeline blocks its evalsha()
            # method (a node may lack the script) but routes a raw EVALSHA by its key like any
            # keyed command.  Each node's NOSCRIPT comes back in place and is handled above.
            pipe.execute_command("EVALSHA", self._publish.sha, 1, key, *args)
        return list(await pipe.execute(raise_on_error=False))

    @_write_call
    @_redis_call
    async def remove_session(self, jid: str, sid: str) -> bool:
        """Unmap ``jid`` if it is still session ``sid``; the user's other resources stay."""
        bare, resource = split_full_jid(jid)
        return bool(await self._remove(keys=[resources_key(bare)], args=[resource, sid, repr(self._clock())]))

    @_redis_call
    async def lookup_bare(self, bare: str) -> dict[str, Location]:
        """The live resources of ``bare`` (any region): resource -> location."""
        try:
            raw = await self._read.hgetall(resources_key(bare))
        except ResponseError as e:
            if not str(e).startswith("WRONGTYPE"):
                raise
            log.warning("mapping key of %r is not a hash; ignored", bare)
            return {}
        now = self._clock()
        found: dict[str, Location] = {}
        for field, value in raw.items():
            resource, loc = _text(field), Location.decode(value)
            if resource is not None and loc is not None and not loc.expired(now):
                found[resource] = loc
        return found

    @_redis_call
    async def lookup_full(self, jid: str) -> Location | None:
        """The live location of full ``jid``, or None."""
        bare, resource = split_full_jid(jid)
        try:
            raw = await self._read.hget(resources_key(bare), resource)
        except ResponseError as e:
            if not str(e).startswith("WRONGTYPE"):
                raise
            return None
        loc = Location.decode(raw) if raw is not None else None
        return loc if loc is not None and not loc.expired(self._clock()) else None

    # -- routed domains ---------------------------------------------------------------------

    @_write_call
    @_redis_call
    async def publish_domain(self, domain: str) -> None:
        """Route ``domain`` (a component or service registered here) to this region."""
        await self._write.set(domain_key(domain), self.region, px=_ms(self.expire_after))

    @_write_call
    @_redis_call
    async def remove_domain(self, domain: str) -> bool:
        """Stop routing ``domain`` here; a registration by another region is left alone."""
        return bool(await self._remove_domain(keys=[domain_key(domain)], args=[self.region]))

    @_write_call
    @_redis_call
    async def claim_domain(self, domain: str, take: bool) -> str | None:
        """The lease on a service ``domain`` (:mod:`gateway.leases`): renew it when this region
        holds it, take it when nobody does and ``take``; the holder afterwards, or None."""
        holder = await self._claim_domain(keys=[domain_key(domain)],
                                          args=[self.region, _ms(self.expire_after), "1" if take else "0"])
        return _text(holder) if holder is not None else None

    @_redis_call
    async def lookup_domain(self, domain: str) -> str | None:
        """The region serving ``domain``, or None."""
        try:
            return _text(await self._read.get(domain_key(domain)))
        except ResponseError as e:
            if not str(e).startswith("WRONGTYPE"):
                raise
            return None

    # -- regions ----------------------------------------------------------------------------

    @_write_call
    @_redis_call
    async def publish_region(self, endpoints: list[str], status: dict[str, Any]) -> None:
        """Announce this region: last seen now, its endpoints and status (both expiring).

        One round trip (on a cluster, one per node concerned); the two expiring keys share the
        region's hash tag.  Regions silent for ``forget_after`` are dropped from ``gd:regions``
        (until then the dashboard shows them down).
        """
        now = self._clock()
        ttl = _ms(self.expire_after)
        pipe = self._write.pipeline(transaction=False)
        pipe.zadd(REGIONS_KEY, {self.region: now})
        pipe.zremrangebyscore(REGIONS_KEY, "-inf", f"({now - self.forget_after!r}")
        pipe.set(endpoints_key(self.region), json.dumps(list(endpoints), separators=(",", ":")), px=ttl)
        pipe.set(status_key(self.region), json.dumps(status, separators=(",", ":"), default=str), px=ttl)
        await pipe.execute()

    @_redis_call
    async def last_seen(self) -> dict[str, float]:
        """Every known region (live or not yet forgotten) -> when it last announced itself."""
        pairs = await self._read.zrange(REGIONS_KEY, 0, -1, withscores=True)
        out: dict[str, float] = {}
        for pair in pairs:  # (member, score): a tuple under RESP2, a list under RESP3
            if isinstance(pair, tuple | list) and len(pair) == 2:
                name = _text(pair[0])
                if name is not None:
                    out[name] = float(pair[1])
        return out

    async def regions(self) -> list[str]:
        """Regions seen within ``expire_after``, sorted by name."""
        since = self._clock() - self.expire_after
        return sorted(r for r, seen in (await self.last_seen()).items() if seen > since)

    @_redis_call
    async def endpoints(self, region: str) -> list[str]:
        """``region``'s inter-region endpoints (``host:port``); empty when unknown or malformed."""
        text = _text(await self._read.get(endpoints_key(region)))
        try:
            value = json.loads(text) if text is not None else []
        except ValueError:
            return []
        return [e for e in value if isinstance(e, str)] if isinstance(value, list) else []

    @_redis_call
    async def statuses(self) -> dict[str, dict[str, Any]]:
        """Live region -> its last status (regions without a readable status are left out)."""
        live = await self.regions()
        if not live:
            return {}
        pipe = self._read.pipeline(transaction=False)
        for region in live:
            pipe.get(status_key(region))
        out: dict[str, dict[str, Any]] = {}
        for region, raw in zip(live, await pipe.execute(), strict=True):
            text = _text(raw)
            try:
                value = json.loads(text) if text is not None else None
            except ValueError:
                continue
            if isinstance(value, dict):
                out[region] = value
        return out
