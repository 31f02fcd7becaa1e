"""XEP-0191 Blocking Command: a user's block list, kept in the domain database and enforced by
every node and gateway of every region, and toward other domains over S2S.

* **Commands.**  ``<blocklist/>`` (get), ``<block/>`` and ``<unblock/>`` (set; an empty unblock
  unblocks everything) are account IQs, from the account itself only.  A resource that fetched the
  list gets the module flag ``blocklist`` on its session record; pushes of each change go to the
  resources with that flag, on every member and in every region (``Fanout(flag="blocklist")``).
  Blocking a contact sends it unavailable presence from the user's available resources in this
  region, if it is subscribed to the user's presence (§3.3: the user appears offline to it);
  unblocking has those resources answer it with their current presence (§3.4).
* **Enforcement** (``filter_local_packet``, on whichever member routes a stanza: the sender's node,
  a gateway for what comes from another region or domain).  A stanza from a blocked JID to a user
  of ours, or from a user of ours to a JID it blocked, is handled by :mod:`.rules`.  The user's own
  account and the server's own domains are never blocked.  A user's outgoing stanzas are checked
  where its session is (its region), so the error it gets is delivered straight to it.
* **Where the lists live.**  In SQL (:mod:`.store`), so all regions read the same lists.  Each
  member keeps the lists it read in memory (at most ``cache_size``, the oldest read out first) and
  forgets one when it changes:
  - in the region where a change is made, the change is written to the database, then every other
    member drops its copy (a cluster request, ``blocking.drop``, answered before the command's
    result is sent): there the change holds for the next stanza;
  - every member polls the table of changes every ``poll_interval`` seconds (one indexed query)
    and drops the lists changed elsewhere: in other regions a block (or an unblock) takes effect
    within that interval.  Stanzas between regions pass a gateway of the recipient's region, which
    already has the change when the recipient's block was made there.
  A list older than ``cache_ttl`` is read again in the background while the stanza goes on with
  the copy at hand (a safety net, for a change the poll missed): once a member has read a list,
  no stanza waits for the database.  Should the database be unreadable, a member keeps using the
  last list it read (however old), else lets the stanza through (logged).
* **The cost on the message path.**  The filter is synchronous while both lists are cached (no
  coroutine per stanza), works on the JIDs the router parsed (cache keys and matching on their
  parts, never a string made again), reads no clock (old lists are found by the periodic job),
  and looks the sender's session up only when its list matches.  The first stanzas of many users
  (all of them just logged in) read their lists together, a few queries for the whole burst:
  read one by one on a busy node, the last of them waited seconds for the database.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import Field

from ...core.batching import Batcher
from ...core.change_watch import poll_changes
from ...core.hooks import STOP, Hook
from ...core.module import Module, ModuleHost, ModuleSettings, Xep
from ...core.router import Fanout, IqRequest
from ...xmpp import errors, ns
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza
from . import rules
from .rules import NS, Blocklist, ChangeWatch, Key, ListCache, key_of, parse_key
from .store import BlocklistStore, ListFull

__all__ = ["Blocking", "BlockingSettings", "FLAG", "DROP_CALL"]

log = logging.getLogger("meridian.blocking")

FLAG = "blocklist"  # the session record flag of a resource that requested the block list
DROP_CALL = "blocking.drop"  # cluster request: forget the cached list of args["user"]
MEMBER_TIMEOUT = 2.0  # seconds a command waits for each other member to drop its copy
RETRY_AFTER = 5.0  # seconds before a list whose re-read failed is read again


class BlockingSettings(ModuleSettings):
    max_items: int = Field(1000, ge=1, description="most JIDs one user's block list holds (a block beyond: "
                           "not-acceptable)")
    max_request_items: int = Field(250, ge=1, description="most items one block or unblock command carries "
                                   "(more: policy-violation)")
    cache_ttl: float = Field(300.0, ge=0, description="seconds after which a cached block list is read again, in "
                             "the background (stanzas use the copy at hand meanwhile); changes reach the cache "
                             "sooner, see poll_interval (0: no cache, the database is read for every stanza)")
    cache_size: int = Field(100_000, ge=0, description="block lists kept in memory per member (the oldest read "
                            "out first)")
    poll_interval: float = Field(2.0, ge=0, description="seconds between two reads of the table of changed lists, "
                                 "by which lists changed in another region are forgotten (0: only cache_ttl)")
    poll_window: float = Field(60.0, gt=0, description="seconds a change stays visible to the poll: covers "
                               "transactions committing late and the members' clocks disagreeing by less")


def _feature(features: set[str]) -> set[str]:
    return features | {NS}


class Blocking(Module):
    name = "blocking"
    description = "Blocking Command: block lists in the database, enforced on every node, region and S2S link"
    xeps = (Xep(191, "1.3", "partial", "the unavailable presence a block sends comes from the user's resources "
                "in the region that handled the command"),)
    Settings = BlockingSettings

    async def start(self, host: ModuleHost) -> None:
        self.host = host
        self.cfg: BlockingSettings = self.settings  # type: ignore[assignment]
        self.store = BlocklistStore(host.storage)
        await self.store.migrate()
        self.cache = ListCache(self.cfg.cache_ttl, self.cfg.cache_size)
        self._loading: dict[Key, asyncio.Task[Blocklist]] = {}
        # A burst of first stanzas (users who just logged in) reads its lists in a few queries.
        self._reader: Batcher[Key, None, list[str]] = Batcher(self.store.items_many, [])
        self._locks: dict[str, _UserLock] = {}
        self.counters = {"blocked_in": 0, "blocked_out": 0, "commands": 0, "read_failures": 0, "reads": 0,
                         "polls": 0, "poll_failures": 0, "dropped_by_poll": 0}
        self._watch = ChangeWatch(time.time_ns() // 1000, int(self.cfg.poll_window * 1_000_000))
        host.add_account_iq(NS, "blocklist", self._iq)
        host.add_account_iq(NS, "block", self._iq)
        host.add_account_iq(NS, "unblock", self._iq)
        host.hook(Hook.DISCO_SERVER_FEATURES, _feature)
        # Early: a blocked stanza is answered before other filters spend work on it.
        host.hook(Hook.FILTER_LOCAL_PACKET, self._filter, 20)
        host.on_call(DROP_CALL, self._drop_call)
        host.add_metric(BlockingCollector(self))
        host.add_query("blocking", "status", self.status)
        self._domains = host.domains  # fixed at start (the router's)
        self._entry = self.cache.entry
        if self.cfg.cache_ttl > 0:
            every = self.cfg.poll_interval or min(max(self.cfg.cache_ttl / 2, 0.01), 60.0)
            host.every(every, self.tick, "blocking: the changed and the old block lists")

    def stop(self) -> None:
        self._reader.close()
        for task in self._loading.values():
            task.cancel()
        self._loading.clear()
        self.cache.clear()

    # -- the block lists, cached -------------------------------------------------------------------------

    async def blocklist(self, user: Jid) -> Blocklist:
        """The block list of the account ``user`` (a bare JID), from the cache or the database;
        concurrent reads of one list share one query, and lists asked while a read is in flight
        are read together by the next (:class:`~cluster_node.core.batching.Batcher`)."""
        key = key_of(user)
        found = self._entry(key)
        if found is not None:
            return found[1]
        task = self._loading.get(key) or self._start_load(key, user)
        return await asyncio.shield(task)

    def _start_load(self, key: Key, user: Jid) -> asyncio.Task[Blocklist]:
        task = asyncio.get_running_loop().create_task(self._load(key, user))
        self._loading[key] = task
        task.add_done_callback(functools.partial(self._loaded, key))
        return task

    async def _load(self, key: Key, user: Jid) -> Blocklist:
        self.counters["reads"] += 1
        try:
            items = await self._reader.submit(key)
        except Exception as e:
            self.counters["read_failures"] += 1
            stale = self.cache.stale(key)
            log.warning("reading the block list of %s failed (%s: %s); using %s", user.bare, e.__class__.__name__, e,
                        "the last one read" if stale is not None else "none")
            if stale is None:
                return rules.EMPTY
            if self._loading.get(key) is asyncio.current_task():  # tried again later, not per stanza
                self.cache.put(key, stale, time.monotonic(), RETRY_AFTER)
            return stale
        found = Blocklist(items)
        if self._loading.get(key) is asyncio.current_task():  # not dropped while we read
            self.cache.put(key, found, time.monotonic())
        return found

    def _loaded(self, key: Key, task: asyncio.Task[Blocklist]) -> None:
        if self._loading.get(key) is task:
            del self._loading[key]
        if not task.cancelled():
            task.exception()  # retrieved: the waiters raise it

    def drop(self, key: Key) -> None:
        """Forget the cached list of ``key``: the next stanza reads the database."""
        self.cache.drop(key)
        self._loading.pop(key, None)  # a read in flight may predate the change: not cached

    def _drop_call(self, _caller: str, args: dict[str, Any]) -> bool:
        user = args.get("user")
        if not isinstance(user, str) or len(user) > 3100:
            raise ValueError("blocking.drop needs a 'user'")
        self.drop(parse_key(user))
        return True

    async def tick(self) -> None:
        """The periodic job: forget the lists changed elsewhere (when polling), and read again in
        the background those older than ``cache_ttl`` (the stanzas go on with them meanwhile)."""
        if self.cfg.poll_interval > 0:
            await self.poll()
        for key in self.cache.due(time.monotonic()):
            if key not in self._loading:
                self._start_load(key, Jid(key[0] or None, key[1], None))

    async def poll(self) -> None:
        """Forget the lists changed since the last poll (by any member, in any region)."""
        for key in await poll_changes(self._watch, self.store.changes, "block lists", self.counters) or ():
            if key in self._loading or self.cache.stale(key) is not None:
                self.counters["dropped_by_poll"] += 1
            self.drop(key)

    async def _tell_members(self, key: str) -> None:
        """Have every other member of the region drop its copy of ``key``'s list, and wait for them
        (so the command's result means: enforced everywhere in this region).  A member without a
        link rejoins with an empty cache; one without the module has no copy."""
        for member, e in (await self.host.request_members(DROP_CALL, {"user": key}, MEMBER_TIMEOUT)).items():
            log.info("member %s did not confirm dropping the block list of %s: %s", member, key, e)

    # -- enforcement ---------------------------------------------------------------------------------------

    def _filter(self, stanza: Stanza, sender: Jid, to: Jid) -> object:
        """``filter_local_packet``: STOP for a stanza a block list stops.  Synchronous while the
        lists are cached (the message path: a dictionary lookup and a few set lookups per list);
        else the coroutine that reads them (the hook awaits it)."""
        s_local, s_domain, t_local, t_domain = sender.local, sender.domain, to.local, to.domain
        if s_local == t_local and s_domain == t_domain:
            return None  # the account itself (its resources, its own bare JID)
        domains, entry = self._domains, self._entry
        mine = theirs = None
        # Outgoing: from one of our accounts, to anyone but our own server.
        if s_local is not None and s_domain in domains and (t_local is not None or t_domain not in domains):
            found = entry((s_local, s_domain))
            if found is None:
                return self._filter_reading(stanza, sender, to)
            mine = found[1]
        # Incoming: to one of our accounts, from anyone but our own server.
        if t_local is not None and t_domain in domains and (s_local is not None or s_domain not in domains):
            found = entry((t_local, t_domain))
            if found is None:
                return self._filter_reading(stanza, sender, to)
            theirs = found[1]
        if (mine is not None and mine.matches(to)) or (theirs is not None and theirs.matches(sender)):
            return self._decide(stanza, sender, to, mine, theirs)
        return None

    async def _filter_reading(self, stanza: Stanza, sender: Jid, to: Jid) -> object:
        """The filter when a list is not cached yet: read it (both, as the directions need)."""
        domains = self._domains
        outgoing = sender.local is not None and sender.domain in domains and not (
            to.local is None and to.domain in domains)
        incoming = to.local is not None and to.domain in domains and not (
            sender.local is None and sender.domain in domains)
        mine = await self.blocklist(sender.bare) if outgoing else None
        theirs = await self.blocklist(to.bare) if incoming else None
        return self._decide(stanza, sender, to, mine, theirs)

    def _decide(self, stanza: Stanza, sender: Jid, to: Jid, mine: Blocklist | None,
                theirs: Blocklist | None) -> object:
        # The sender's list counts for a resource of it in this region (whose session gets the
        # error), or the server on its behalf (a bare JID).
        if (mine and mine.matches(to)
                and (sender.resource is None or self.host.table.lookup(sender) is not None)):
            action = rules.outbound(stanza.name, stanza.type)
            if action != rules.PASS:
                self.counters["blocked_out"] += 1
                if action == rules.ERROR and stanza.from_:
                    self.host.route_nowait(rules.blocked_reply(stanza))
                return STOP
        if theirs and theirs.matches(sender):
            self.counters["blocked_in"] += 1
            if rules.inbound(stanza.name, stanza.type) == rules.ERROR and stanza.from_:
                # Routed in full (not ``send_error``): the sender may be a user of ours in
                # another region, which only the routing chain reaches.
                self.host.spawn(self.host.route(stanza.error_reply(errors.ServiceUnavailable())))
            return STOP
        return None

    # -- commands --------------------------------------------------------------------------------------------

    async def _iq(self, req: IqRequest) -> ET.Element | None:
        if req.sender.bare != req.to or req.to.local is None:
            raise errors.Forbidden("a block list belongs to its account")
        user = req.to
        kind = req.payload.tag.rpartition("}")[2]
        if kind == "blocklist":
            if req.stanza.type != "get":
                raise errors.BadRequest("the block list is read with an iq of type get")
            self._requested(req.sender)
            return rules.list_element(await self.store.items(user.domain, user.local or ""))
        if req.stanza.type != "set":
            raise errors.BadRequest(f"<{kind}/> is an iq of type set")
        jids = rules.parse_items(req.payload, self.cfg.max_request_items)
        if kind == "block" and not jids:
            raise errors.BadRequest("a block carries at least one item")  # §3.3
        self.counters["commands"] += 1
        key = str(user)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = _UserLock()
        lock.users += 1
        try:
            async with lock.lock:  # one command per user at a time on this member (the limit holds)
                if kind == "block":
                    try:
                        changed = await self.store.add(user.domain, user.local or "", jids, self.cfg.max_items)
                    except ListFull as e:
                        raise errors.NotAcceptable(str(e)) from None
                else:
                    changed = await self.store.remove(user.domain, user.local or "", jids or None)
                if changed:
                    self.drop(key_of(user))
                    await self._tell_members(key)
        finally:
            lock.users -= 1
            if not lock.users:
                del self._locks[key]
        if not changed:
            return None
        # §3.3–§3.5: the change to every resource that requested the list; an unblock of
        # everything is pushed as an empty <unblock/>.
        pushed = changed if kind == "block" or jids else []
        self.host.deliver_all(user, rules.push_element(kind, pushed, "push" + secrets.token_hex(4)),
                              Fanout(flag=FLAG))
        if kind == "block":
            await self._appear_offline(user, changed)
        else:
            await self._appear_again(user, changed)
        return None

    def _requested(self, resource: Jid) -> None:
        """Pushes from now on for this resource (its record, replicated to the region)."""
        if resource.resource is None:
            return
        record = self.host.table.lookup(resource)
        if record is not None and not record.flags.get(FLAG):
            self.host.update_record(record.with_flag(FLAG, "on"))

    async def _subscribers(self, user: Jid, items: list[str]) -> list[str]:
        """Who of ``user``'s presence subscribers ('from', 'both') the ``items`` now (un)block:
        each blocked full JID whose bare JID is a subscriber, and every subscriber an item matches."""
        roster, _ = await self.host.storage.get_roster(user.domain, user.local or "")
        subscribers: list[Jid] = []
        for entry in roster:
            if entry.subscription in ("from", "both"):
                try:
                    subscribers.append(Jid.parse(entry.jid))
                except InvalidJid:
                    continue
        if not subscribers:
            return []
        matching = Blocklist(items)
        targets: dict[str, None] = {}
        bare = {str(s) for s in subscribers}
        for item in items:
            jid = Jid.parse(item)
            if jid.local is not None and jid.resource is not None and str(jid.bare) in bare:
                targets[item] = None
        for s in subscribers:
            if matching.matches(s):
                targets[str(s)] = None
        return list(targets)

    async def _appear_offline(self, user: Jid, blocked: list[str]) -> None:
        """§3.3: a newly blocked subscriber gets unavailable presence from each available resource."""
        try:
            targets = await self._subscribers(user, blocked)
        except Exception:
            log.exception("no unavailable presence for the contacts %s blocked", user)
            return
        resources = [r.jid for r in self.host.table.resources(user) if r.available]
        for target in targets:
            for resource in resources:
                await self.host.route(_presence(resource, target, "unavailable"))

    async def _appear_again(self, user: Jid, unblocked: list[str]) -> None:
        """§3.4: a subscriber no longer blocked gets the current presence of every available
        resource: each answers a probe on its behalf (in every region)."""
        try:
            targets = await self._subscribers(user, unblocked)
        except Exception:
            log.exception("no presence for the contacts %s unblocked", user)
            return
        for target in targets:
            self.host.deliver_all(user, _presence(target, user, "probe"))

    def status(self) -> dict[str, Any]:
        """This member's blocking activity (``blocking status`` on the control socket)."""
        return {**self.counters, "cached": len(self.cache), "cacheTtl": self.cfg.cache_ttl,
                "pollInterval": self.cfg.poll_interval}


class _UserLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


def _presence(from_: Jid | str, to: Jid | str, ptype: str) -> Stanza:
    return Stanza(ET.Element(f"{{{ns.CLIENT}}}presence", {"from": str(from_), "to": str(to), "type": ptype}))


class BlockingCollector(Collector):
    """Prometheus view of blocking on this member, read at scrape time."""

    def __init__(self, module: Blocking) -> None:
        self.module = module

    def collect(self) -> Iterator[Metric]:
        m = self.module
        stanzas = CounterMetricFamily("meridian_blocking_stanzas", "Stanzas stopped by a block list on this member",
                                      labels=["direction"])
        stanzas.add_metric(["in"], m.counters["blocked_in"])
        stanzas.add_metric(["out"], m.counters["blocked_out"])
        yield stanzas
        yield CounterMetricFamily("meridian_blocking_commands", "Block and unblock commands handled on this member",
                                  value=m.counters["commands"])
        yield CounterMetricFamily("meridian_blocking_read_failures", "Block lists that could not be read from "
                                  "the database", value=m.counters["read_failures"])
        yield GaugeMetricFamily("meridian_blocking_cached_lists", "Block lists cached on this member",
                                value=len(m.cache))
