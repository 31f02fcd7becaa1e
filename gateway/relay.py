"""Global routing on the gateway: look destinations up, relay to the region that holds them,
take relayed stanzas in, bounce the ones whose user moved (MongooseIM ``mod_global_distrib``).

Three ways in:

* ``elsewhere``/``fanout`` — the gateway's own router (it is a cluster member with the node
  services) asks, exactly as a node's router asks a gateway through :class:`GatewayHandoff`.
* :meth:`GlobalRouter.handoff` — a node of the region handed a stanza over the cluster link.
* :meth:`GlobalRouter.received` — another region's gateway relayed a stanza over a region link.

A relayed stanza carries its origin region, a hop limit (``ttl``) and an id.  On arrival, if
this region has no session for it (the user moved or left), it is re-resolved and resent after
``resend_after_ms``, up to ``max_retries`` times, then handled here (offline storage, an error);
a stanza that has used up its hops is dropped with an error and counted, so loops cannot form.
Every stanza of one (from, to) pair goes through one queue (:mod:`gateway.ordering`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from cluster_node.core.hooks import Hook
from cluster_node.core.router import Fanout, copies
from cluster_node.core.services import Services
from cluster_node.xmpp import errors
from cluster_node.xmpp.fragment import parse_stanza
from cluster_node.xmpp.jid import InvalidJid, Jid
from cluster_node.xmpp.lazy import lazy_stanza
from cluster_node.xmpp.stanza import Stanza

from . import many as many_frames
from .link.errors import LinkError
from .mapping import Location, MappingCache, MappingStore
from .ordering import PairQueues, pair

__all__ = ["GlobalRouter", "Relayed", "RelayCounters", "HANDOFF_ACK"]

HANDOFF_ACK = "gd.ack"  # cluster call: a gateway confirms hand-offs to the node that made them

log = logging.getLogger("meridian.gdistrib")


@dataclass(frozen=True, slots=True)
class Relayed:
    """A stanza crossing a region link, with its routing envelope."""

    id: str
    origin: str
    ttl: int
    data: bytes
    from_: str | None
    to: str | None
    meta: dict[str, Any] | None = None  # {"fanout": {...}, "bare": jid} for deliveries to an account's resources


Send = Callable[[str, Relayed], Awaitable[None]]  # (region, stanza): raises a LinkError (LinkDown, QueueFull)


@dataclass
class RelayCounters:
    relayed: Counter[str] = field(default_factory=Counter)  # per destination region
    received: Counter[str] = field(default_factory=Counter)  # per origin region
    bounced: int = 0
    ttl_drops: int = 0
    link_errors: int = 0
    redis_errors: int = 0
    lookups: int = 0
    lookup_seconds: float = 0.0
    handled_locally: int = 0  # no region held the recipient
    many_copies: Counter[str] = field(default_factory=Counter)  # copies carried by run frames (many.py), per region
    expanded: int = 0  # copies delivered here from run frames other regions relayed

    def as_dict(self) -> dict[str, Any]:
        return {"relayed": dict(self.relayed), "received": dict(self.received), "bounced": self.bounced,
                "ttlDrops": self.ttl_drops, "linkErrors": self.link_errors, "redisErrors": self.redis_errors,
                "lookups": self.lookups, "handledLocally": self.handled_locally,
                "manyCopies": dict(self.many_copies), "expanded": self.expanded}


async def _nothing() -> None:
    pass


class GlobalRouter:
    def __init__(self, services: Services, store: MappingStore, cache: MappingCache[dict[str, Location]],
                 send: Send, *, region: str, ttl: int = 4, bounce: bool = True, resend_after: float = 0.2,
                 max_retries: int = 4, clock: Callable[[], float] = time.monotonic,
                 shared: frozenset[str] | None = None) -> None:
        self.s = services
        # ``gdistrib.global_host``: the domains whose accounts may be in any region; an account of
        # another of our domains is this region's alone, never looked up (None: every domain).
        self.shared = shared
        self.store = store
        self.cache = cache
        self.send = send
        self.region = region
        self.ttl = ttl
        self.bounce_enabled = bounce
        self.resend_after = resend_after
        self.max_retries = max_retries
        self.clock = clock
        self.counters = RelayCounters()
        # Component/service domains: they rarely move, so they live longer; misses are cached
        # briefly, so foreign domains (S2S traffic) do not cost a Redis read per stanza.
        self.domains: MappingCache[str] = MappingCache(
            10_000, jid_lifetime=cache.lifetimes["jid"], domain_lifetime=cache.lifetimes["domain"],
            miss_lifetime=cache.lifetimes["jid"])
        self.pairs = PairQueues()
        self.redis_ok = True
        self._rechecks: set[str] = set()  # bare JIDs with an offline re-check pending
        self._lookups: dict[str, asyncio.Future[dict[str, Location]]] = {}  # Redis reads in flight
        # Hand-offs from the region's nodes are confirmed (``gd.ack``) once this gateway no longer
        # needs to hold them: handled here, or relayed and acked by the other region.  Until then
        # the node keeps a copy and resends it through another gateway if this one dies.
        self._handing: set[str] = set()  # hand-off ids whose job is running
        self._in_pool: dict[str, Callable[[], None] | None] = {}  # relayed, waiting for the other region's ack
        self._acked_early: set[str] = set()
        self._confirms: dict[str, list[int]] = {}  # node -> hand-off sequence numbers to confirm
        self._confirm_scheduled = False

    # -- lookups ---------------------------------------------------------------------------------

    async def locate(self, bare: Jid, *, fresh: bool = False) -> dict[str, Location]:
        """Every resource of ``bare`` in every region (cache first; the last known answer while
        Redis is unreachable, so established conversations go on).  Nothing for an account of a
        domain that is not shared by the regions (``gdistrib.global_host``)."""
        if self.shared is not None and bare.domain not in self.shared:
            return {}
        key = str(bare)
        now = self.clock()
        if not fresh:
            hit, value = self.cache.get(key, now)
            if hit:
                return value or {}
        pending = self._lookups.get(key)
        if pending is not None:  # one Redis read per JID at a time: the others share its answer
            return await asyncio.shield(pending)
        future: asyncio.Future[dict[str, Location]] = asyncio.get_running_loop().create_future()
        self._lookups[key] = future
        try:
            found = await self._read(key, now)
            future.set_result(found)
            return found
        finally:
            del self._lookups[key]
            if not future.done():
                future.set_result(self.cache.stale(key) or {})

    async def _read(self, key: str, now: float) -> dict[str, Location]:
        self.counters.lookups += 1
        started = time.perf_counter()
        try:
            found = await self.store.lookup_bare(key)
        except RedisError as e:
            self.counters.redis_errors += 1
            if self.redis_ok:
                log.warning("Redis lookup failed (%s): routing from the cache until it is back", e)
            self.redis_ok = False
            return self.cache.stale(key) or {}
        finally:
            self.counters.lookup_seconds += time.perf_counter() - started
        self.redis_ok = True
        self.cache.put(key, found or None, now)
        return found

    async def region_for(self, stanza: Stanza, to: Jid, *, fresh: bool = False) -> str | None:
        """The other region to relay ``stanza`` to, or None when no other region holds ``to``."""
        remote = [(res, loc) for res, loc in (await self.locate(to.bare, fresh=fresh)).items()
                  if loc.region != self.region]
        if to.resource is not None:
            return next((loc.region for res, loc in remote if res == to.resource), None)
        # A bare JID: messages, probes and the account IQs a node hands us because their answer
        # depends on where the account is online (the router's ``where_online``).
        probe = stanza.name == "presence" and stanza.type == "probe"
        if not remote or not (stanza.name in ("message", "iq") or probe):
            return None
        floor = 0 if stanza.name == "message" else -128
        candidates = [loc for _, loc in remote if loc.available and loc.priority >= floor]
        if candidates:
            top = max(loc.priority for loc in candidates)  # RFC 6121 §8.5.2.1.1: the most available
            return min(loc.region for loc in candidates if loc.priority == top)
        # Resources elsewhere, none available as far as the mapping knows: it may lag behind a
        # presence just sent, so let that region decide with its own exact view (it delivers, or
        # stores offline) rather than storing here what its user may be reading already.
        return min(loc.region for _, loc in remote)

    async def region_of_domain(self, domain: str) -> str | None:
        """The region serving a component or service ``domain`` (cache, then Redis; stale while
        Redis is down), or None."""
        now = self.clock()
        hit, region = self.domains.get(domain, now)
        if hit:
            return region
        try:
            region = await self.store.lookup_domain(domain)
        except RedisError as e:
            self.counters.redis_errors += 1
            if self.redis_ok:  # once per outage, as for JIDs
                log.warning("Redis lookup of domain %s failed (%s): routing from the cache until it is back",
                            domain, e)
            self.redis_ok = False
            return self.domains.stale(domain)
        self.redis_ok = True
        self.domains.put(domain, region, now, kind="domain")
        return region

    async def to_domain(self, stanza: Stanza, to: Jid) -> bool:
        """Relay ``stanza`` to the region where the component or service ``to.domain`` is
        connected; False when no other region serves it (then it may be a foreign domain: S2S)."""
        region = await self.region_of_domain(to.domain)
        if region is None or region == self.region:
            return False
        relayed = Relayed(secrets.token_hex(8), self.region, self.ttl, b"", stanza.from_, stanza.to)
        self.pairs.submit(pair(stanza.from_, stanza.to), lambda: self._relay(region, stanza, relayed))
        return True

    # -- the router's GlobalRouting ---------------------------------------------------------------

    async def elsewhere(self, stanza: Stanza, to: Jid, id: str | None = None) -> bool:
        """Relay to the region holding ``to``; ``id``: the node's hand-off id, kept across its
        resends through another gateway so that the receiving gateway delivers it once."""
        region = await self.region_for(stanza, to)
        if region is None:
            return False
        await self._relay(region, stanza, Relayed(id or secrets.token_hex(8), self.region, self.ttl, b"",
                                                  stanza.from_, stanza.to))
        return True

    async def bounce(self, stanza: Stanza) -> bool:
        relayed = Relayed(secrets.token_hex(8), self.region, self.ttl, b"", stanza.from_, stanza.to)
        self.pairs.submit(pair(stanza.from_, stanza.to), lambda: self._deliver(relayed, [stanza]))
        return True

    async def better_elsewhere(self, stanza: Stanza, bare: Jid, local_top: int) -> bool:
        remote = [loc for loc in (await self.locate(bare)).values()
                  if loc.region != self.region and loc.available and loc.priority > local_top]
        if not remote:
            return False  # ours are the best (equal ones elsewhere get it through the fan-out)
        await self.elsewhere(stanza, bare)
        return True

    def fanout(self, stanza: Stanza, bare: Jid, which: Fanout) -> None:
        if self._only_here(bare):
            return
        self.pairs.submit(pair(stanza.from_, str(bare)), lambda: self._fanout(stanza, bare, which))

    def _only_here(self, bare: Jid) -> bool:
        """Whether the cache knows (fresh) that no other region holds a resource of ``bare``: then a
        fan-out has nothing to do (what :meth:`_fanout` would find), and skipping it saves a queued
        job per delivered message — nearly every carbon the region's members hand us, for accounts
        online in one region only."""
        if self.shared is not None and bare.domain not in self.shared:
            return True
        hit, found = self.cache.peek(str(bare), self.clock())
        return hit and not any(loc.region != self.region for loc in (found or {}).values())

    async def _fanout(self, stanza: Stanza, bare: Jid, which: Fanout) -> None:
        # Every region with a resource of the account: each applies ``which`` to its own sessions,
        # which it knows exactly (availability in the mapping may lag behind a presence change).
        regions = sorted({loc.region for loc in (await self.locate(bare)).values() if loc.region != self.region})
        meta = {"fanout": which.to_json(), "bare": str(bare)}
        for region in regions:
            await self._relay(region, stanza, Relayed(secrets.token_hex(8), self.region, self.ttl, b"",
                                                      stanza.from_, stanza.to, meta), quiet=True)

    def many(self, stanzas: list[Stanza], recipients: list[str]) -> bool:
        """A room's run (each of ``recipients``, full JIDs of our domains with no session in this
        region, to get every one of ``stanzas``, in order): one relay per region holding some (a
        few when it is long), in the room's order (one queue and one link lane per sender's bare
        JID)."""
        try:
            room = str(Jid.parse(stanzas[0].from_ or "").bare)
        except InvalidJid:
            return False
        self.pairs.submit((room, room), lambda: self._many(stanzas, recipients))
        return True

    async def _many(self, stanzas: list[Stanza], recipients: list[str]) -> None:
        regions: dict[str, list[str]] = {}
        here: list[str] = []
        for r in recipients:
            try:
                to = Jid.parse(r)
            except InvalidJid:
                continue
            loc = (await self.locate(to.bare)).get(to.resource or "")
            if loc is None:  # a login newer than the cached answer?
                loc = (await self.locate(to.bare, fresh=True)).get(to.resource or "")
            if loc is None or loc.region == self.region:
                here.append(r)
            else:
                regions.setdefault(loc.region, []).append(r)
        for region, rs in sorted(regions.items()):
            await self._relay_run(region, stanzas, rs, self.ttl)
        # No region holds them (any more): handled here (an error back to the room).
        self.counters.handled_locally += len(here) * len(stanzas)
        await self._here(copies(stanzas, here))

    async def _relay_run(self, region: str, stanzas: list[Stanza], recipients: list[str], ttl: int) -> None:
        """A run to ``region`` in as few frames as fit (:func:`gateway.many.frames`), in order, on
        the lane of its sender's bare JID (the room's)."""
        room = pair(stanzas[0].from_, None)[0]
        pieces = [s.to_bytes() for s in stanzas]
        for frame in many_frames.frames(recipients, pieces):
            data, meta = many_frames.encode(frame.recipients, frame.stanzas)
            envelope = Relayed(secrets.token_hex(8), self.region, ttl, data, room, room, meta)
            log.debug("relay to %s: %d stanzas from %s for %d recipients", region, len(frame.stanzas), room,
                      len(frame.recipients))
            try:
                await self.send(region, envelope)
            except LinkError as e:  # as for single copies: each copy's error goes to the sender
                self._link_error(e)
                log.warning("cannot relay to region %s: %s", region, e)
                for copy in copies(stanzas[frame.first:frame.first + len(frame.stanzas)], frame.recipients):
                    self.s.router.send_error(copy, e)
                continue
            self.counters.relayed[region] += 1
            self.counters.many_copies[region] += len(frame.recipients) * len(frame.stanzas)

    async def _relay(self, region: str, stanza: Stanza, envelope: Relayed, *, quiet: bool = False) -> None:
        relayed = Relayed(envelope.id, envelope.origin, envelope.ttl, stanza.to_bytes(), envelope.from_,
                          envelope.to, envelope.meta)
        log.debug("relay to %s: %s -> %s ttl=%d meta=%s", region, relayed.from_, relayed.to, relayed.ttl,
                  relayed.meta)
        try:
            await self.send(region, relayed)
        except LinkError as e:  # remote-server-timeout (no link) or resource-constraint (queue full)
            self._link_error(e)
            log.warning("cannot relay to region %s: %s", region, e)
            if not quiet:
                self.s.router.send_error(stanza, e)
            return
        self.counters.relayed[region] += 1
        if relayed.id in self._handing:
            self._in_pool[relayed.id] = None  # confirmed to the node once the other region acks it

    def undeliverable(self, relayed: Relayed, error: LinkError) -> None:
        """The link gave up on a stanza it had accepted (a long outage): tell its sender."""
        self._link_error(error)
        self.remote_acked([relayed.id])  # an error went back: the node need not resend it
        try:
            stanza = parse_stanza(relayed.data)
        except ValueError:
            return
        if not relayed.meta:  # fan-out copies have no one waiting for them
            self.s.router.send_error(stanza, error)

    def _link_error(self, error: LinkError) -> None:
        """A stanza the links refused or gave up on: counted, and by the limit that did it."""
        self.counters.link_errors += 1
        if error.limit:
            self.s.refused(f"gdistrib.connections.{error.limit}")

    # -- from the region's nodes --------------------------------------------------------------

    def handoff(self, envelope: dict[str, Any], payload: Stanza | list[Stanza]) -> None:
        """A node handed us a stanza (over the cluster link; a run's list for ``many``): it had no
        session for it."""
        run = payload if isinstance(payload, list) else [payload]
        stanza = run[0]
        kind = envelope.get("gd")
        log.debug("handoff %s: %s -> %s %s", kind, stanza.from_, stanza.to, envelope)
        hid = self.handoff_id(envelope)
        key = pair(stanza.from_, stanza.to)
        job: Callable[[], Awaitable[None]] | None = None
        if kind == "many":
            recipients = envelope.get("to")
            if isinstance(recipients, list) and recipients:
                self.many(run, [r for r in recipients if isinstance(r, str)])
            room = pair(stanza.from_, None)[0]
            key = (room, room)  # the queue :meth:`many` used
        elif kind == "fanout":
            try:
                bare = Jid.parse(str(envelope.get("bare"))).bare
            except InvalidJid:
                bare = None
            if bare is not None:
                self.fanout(stanza, bare, Fanout.from_json(envelope.get("which")))
                key = pair(stanza.from_, str(bare))
        elif kind == "elsewhere":
            job = functools.partial(self._elsewhere_or_here, stanza, hid)
        elif kind == "bounce":  # its session closed under it on a node
            relayed = Relayed(secrets.token_hex(8), self.region, self.ttl, b"", stanza.from_, stanza.to)
            job = functools.partial(self._deliver, relayed, [stanza])
        elif kind == "route":  # a node leaves the choice among regions to us
            job = functools.partial(self.s.router.route, stanza)
        if job is not None:
            self.pairs.submit(key, self.confirming(envelope, job))
        elif hid is not None:
            # Queued behind the pair (or dropped as malformed): confirmed once the jobs submitted
            # before it have run, i.e. after it.
            self.pairs.submit(key, self.confirming(envelope, _nothing))

    # -- confirming hand-offs to the nodes --------------------------------------------------------

    @staticmethod
    def handoff_id(envelope: dict[str, Any]) -> str | None:
        """The id a node gave its hand-off (node, incarnation, sequence), or None (none asked)."""
        hid = envelope.get("hid")
        return hid if isinstance(hid, str) and hid and isinstance(envelope.get("hs"), int) else None

    def confirming(self, envelope: dict[str, Any], job: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """``job``, then the hand-off's confirmation to its node (at once, or when the stanza it
        relayed is acked by the other region)."""
        hid = self.handoff_id(envelope)
        node, seq = envelope.get("hn"), envelope.get("hs")
        if hid is None or not isinstance(node, str) or not isinstance(seq, int):
            return job

        def confirm() -> None:
            self._confirm(node, seq)

        async def run() -> None:
            self._handing.add(hid)
            try:
                await job()
            finally:
                self._handing.discard(hid)
                if hid in self._in_pool and hid not in self._acked_early:
                    self._in_pool[hid] = confirm
                else:
                    self._in_pool.pop(hid, None)
                    self._acked_early.discard(hid)
                    confirm()

        return run

    def remote_acked(self, ids: list[str]) -> None:
        """The other region holds these relayed stanzas (or they were given up with an error)."""
        for id in ids:
            if id not in self._in_pool:
                continue
            confirm = self._in_pool.pop(id)
            if confirm is not None:
                confirm()
            elif id in self._handing:  # acked before its job ended
                self._in_pool[id] = None
                self._acked_early.add(id)

    def _confirm(self, node: str, seq: int) -> None:
        self._confirms.setdefault(node, []).append(seq)
        if not self._confirm_scheduled:  # one cluster call per node and loop turn
            self._confirm_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_confirms)

    def _send_confirms(self) -> None:
        self._confirm_scheduled = False
        confirms, self._confirms = self._confirms, {}
        calls = self.s.calls
        if calls is None:
            return
        for node, seqs in confirms.items():
            calls.call(node, HANDOFF_ACK, {"gw": self.s.node, "seqs": seqs})

    async def _elsewhere_or_here(self, stanza: Stanza, hid: str | None = None) -> None:
        try:
            to = Jid.parse(stanza.to or "")
        except InvalidJid:
            return
        if not await self.elsewhere(stanza, to, hid):
            self.counters.handled_locally += 1
            await self.s.router.route(stanza, local_only=True)
            if stanza.name == "message":
                self._recheck(to.bare)

    def _recheck(self, bare: Jid) -> None:
        """A message for ``bare`` was stored offline because no region held a session.  A login
        racing with it may have fetched offline storage just before: look again a little later and
        have the region now holding an available resource deliver what is stored."""
        key = str(bare)
        if key in self._rechecks:
            return
        self._rechecks.add(key)

        async def later() -> None:
            try:
                await asyncio.sleep(self.resend_after)
                regions = {loc.region for loc in (await self.locate(bare, fresh=True)).values() if loc.available}
                for region in sorted(regions):
                    if region == self.region:
                        await self._flush_offline(key)
                    else:
                        await self.send(region, Relayed(secrets.token_hex(8), self.region, 1, key.encode(), None,
                                                        None, {"flush": key}))
            except LinkError:
                pass
            finally:
                self._rechecks.discard(key)

        self.s.router.spawn(later())

    async def _flush_offline(self, bare: str) -> None:
        """Deliver ``bare``'s stored messages to its best available resource here, if any."""
        try:
            records = [r for r in self.s.table.resources(Jid.parse(bare)) if r.available and r.priority >= 0]
        except InvalidJid:
            return
        if records:
            await self.s.hooks.run_async(Hook.OFFLINE_FLUSH, max(records, key=lambda r: r.priority))

    # -- from other regions ---------------------------------------------------------------------

    def announce(self, bares: list[str], regions: list[str]) -> None:
        """Sessions of ``bares`` changed here and the mapping says so now: tell the other regions'
        gateways to drop what they cached of them, so a login or a presence change elsewhere is
        seen at once rather than after the cache lifetime."""
        for region in regions:
            if region == self.region:
                continue
            for bare in bares:
                self.pairs.submit(("", bare), functools.partial(self._announce, region, bare))

    def domain_moved(self, domain: str, holder: str | None, regions: list[str]) -> None:
        """A service domain's lease changed hands (:mod:`gateway.leases`): route it to ``holder``
        from now on, and have the other regions' gateways forget the region they cached for it."""
        self.domains.put(domain, holder, self.clock(), kind="domain")
        for region in regions:
            if region != self.region:
                self.pairs.submit(("", domain), functools.partial(self._announce_domain, region, domain))

    async def _announce_domain(self, region: str, domain: str) -> None:
        try:
            await self.send(region, Relayed(secrets.token_hex(8), self.region, 1, domain.encode(), None, None,
                                            {"domain": domain}))
        except LinkError:
            pass  # that region's cache entry expires on its own

    async def _announce(self, region: str, bare: str) -> None:
        try:
            await self.send(region, Relayed(secrets.token_hex(8), self.region, 1, bare.encode(), None, None,
                                            {"invalidate": bare}))
        except LinkError:
            pass  # that region's cache entries expire on their own

    def received(self, relayed: Relayed) -> asyncio.Future[None] | None:
        """A stanza from another region's gateway.  Returns a future done once it has been handed
        on here (to a node, to offline storage, or bounced): the link acks it only then, so this
        gateway's death before that leaves it with the sender, which resends it."""
        self.counters.received[relayed.origin] += 1
        log.debug("relayed from %s: %s -> %s ttl=%d meta=%s", relayed.origin, relayed.from_, relayed.to,
                  relayed.ttl, relayed.meta)
        if relayed.meta and "invalidate" in relayed.meta:
            self.cache.invalidate(str(relayed.meta["invalidate"]))
            return None
        if relayed.meta and "domain" in relayed.meta:  # a service domain moved to another region
            self.domains.invalidate(str(relayed.meta["domain"]))
            return None
        if relayed.meta and "flush" in relayed.meta:
            self.s.router.spawn(self._flush_offline(str(relayed.meta["flush"])))
            return None
        meta = relayed.meta or {}
        if many_frames.MANY in meta:
            try:
                recipients, pieces = many_frames.decode(meta, relayed.data)
                run = [lazy_stanza(piece) for piece in pieces]
            except ValueError as e:
                log.warning("dropping a run frame from %s: %s", relayed.origin, e)
                return None
            room = str(relayed.to)
            return self._handing_on((room, room), lambda: self._expand(relayed, run, recipients))
        try:
            stanza = lazy_stanza(relayed.data)
        except ValueError as e:
            log.warning("dropping an unparsable stanza relayed from %s: %s", relayed.origin, e)
            return None
        if "fanout" in meta:
            try:
                bare = Jid.parse(str(meta.get("bare"))).bare
            except InvalidJid:
                return None
            which = Fanout.from_json(meta.get("fanout"))
            return self._handing_on(pair(stanza.from_, str(bare)), lambda: self._deliver_fanout(bare, stanza, which))
        return self._handing_on(pair(stanza.from_, stanza.to), lambda: self._deliver(relayed, [stanza]))

    def _handing_on(self, key: tuple[str, str], job: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
        """``job`` queued behind ``key``'s earlier ones; the future is done when it has run."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            try:
                await job()
            finally:
                if not done.done():
                    done.set_result(None)

        self.pairs.submit(key, run)
        return done

    async def _expand(self, relayed: Relayed, run: list[Stanza], recipients: list[str]) -> None:
        """A run frame: the recipients with a session in this region get their copies as the
        room's own region delivers them (:meth:`Router.route_run`: one cluster frame per member
        holding some).  A recipient without one is handled as a single relayed stanza is
        (:meth:`_deliver`) when the frame was for it alone — its session may have moved to
        another region: re-resolved and the run resent there, after ``resend_after`` — else as
        a broadcast's copy: through the routing chain here at once (an error back to the room,
        which then removes the occupant)."""
        router = self.s.router
        held: list[str] = []
        gone: list[str] = []
        for r in recipients:
            try:
                to = Jid.parse(r)
            except InvalidJid:
                continue
            if to.domain not in router.domains or to.resource is None:
                continue  # only our accounts' sessions are expanded here
            (held if self.s.table.lookup(to) is not None else gone).append(r)
        self.counters.expanded += (len(held) + len(gone)) * len(run)
        for copy in router.route_run(run, held):  # (none: each has a session here)
            await router.route(copy, local_only=True)
        if len(recipients) == 1 and gone:
            await self._deliver(relayed, copies(run, gone))
            return
        for copy in copies(run, gone):
            await router.route(copy, local_only=True)

    async def _deliver_fanout(self, bare: Jid, stanza: Stanza, which: Fanout) -> None:
        self.s.router.deliver_all(bare, stanza, which, fanout=False)

    async def _deliver(self, relayed: Relayed, run: list[Stanza]) -> None:
        """Stanzas for one recipient (one; or a room's run to a joiner, as one: the first decides,
        after one wait and one lookup the run is resent whole, in order) delivered here — or, when
        this region has no session for it (its user moved or left), re-resolved after
        ``resend_after`` and resent to the region now holding it, up to ``max_retries`` times,
        then handled here."""
        stanza = run[0]
        try:
            to = Jid.parse(stanza.to or "")
        except InvalidJid:
            return
        if to.domain not in self.s.router.domains:  # a component domain: no session to bounce for
            await self._here(run)
            return
        for attempt in range(self.max_retries + 1):
            if not self.s.router.nothing_here(stanza, to):
                break
            if not self.bounce_enabled or attempt == self.max_retries:
                break
            if stanza.name == "iq" and to.resource is None:
                break  # an account IQ (last activity): answered here at once, from the shared database
            # Not here (any more): the user moved or left.  Wait, look again, resend (bounce).
            self.counters.bounced += 1
            await asyncio.sleep(self.resend_after)
            region = await self.region_for(stanza, to, fresh=True)
            if region is not None:
                if relayed.ttl <= 1:
                    self.counters.ttl_drops += len(run)
                    log.warning("dropping %d stanzas from %s to %s: hop limit reached", len(run), stanza.from_,
                                stanza.to)
                    for s in run:
                        self.s.router.send_error(s, errors.RemoteServerTimeout("hop limit reached"))
                    return
                self.cache.invalidate(str(to.bare))
                if many_frames.MANY in (relayed.meta or {}):  # as it came: a run frame
                    await self._relay_run(region, run, [str(to)], relayed.ttl - 1)
                else:
                    await self._relay(region, stanza, Relayed(relayed.id, relayed.origin, relayed.ttl - 1, b"",
                                                              relayed.from_, relayed.to))
                return
        await self._here(run)

    async def _here(self, run: list[Stanza]) -> None:
        """Handled in this region whatever happens: no other region holds the recipient."""
        for stanza in run:
            await self.s.router.route(stanza, local_only=True)
