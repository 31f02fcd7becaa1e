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
  member keeps the lists it reads in memory for ``cache_ttl`` seconds (default 5).  A change is
  written to the database, then every other member of the region where it was made drops its copy
  (a cluster request, ``blocking.drop``, answered before the command's result is sent): in that
  region the change holds for the next stanza.  Other regions re-read the list when their copy
  expires, so there a block (or an unblock) takes effect within ``cache_ttl``.  Stanzas between
  regions pass a gateway of the recipient's region, which already has the change when the
  recipient's block was made there.  Should the database be unreadable, a member keeps using the
  last list it read (however old), else lets the stanza through (logged).
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

from ...core.hooks import STOP, Hook
from ...core.module import Module, ModuleHost, ModuleSettings, Xep
from ...core.router import Fanout, IqRequest
from ...xmpp import errors, ns
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza
from . import rules
from .rules import NS, Blocklist, ListCache
from .store import BlocklistStore, ListFull

__all__ = ["Blocking", "BlockingSettings", "FLAG", "DROP_CALL"]

log = logging.getLogger("meridian.blocking")

FLAG = "blocklist"  # the session record flag of a resource that requested the block list
DROP_CALL = "blocking.drop"  # cluster request: forget the cached list of args["user"]
MEMBER_TIMEOUT = 2.0  # seconds a command waits for each other member to drop its copy


class BlockingSettings(ModuleSettings):
    max_items: int = Field(1000, ge=1, description="most JIDs one user's block list holds (a block beyond: "
                           "not-acceptable)")
    max_request_items: int = Field(250, ge=1, description="most items one block or unblock command carries "
                                   "(more: policy-violation)")
    cache_ttl: float = Field(5.0, ge=0, description="seconds a member keeps a block list it read; the other "
                             "members of the region where a list changes drop their copy at once, other regions "
                             "see the change within this window (0: read the database for every stanza)")
    cache_size: int = Field(100_000, ge=0, description="block lists kept in memory per member (least recently "
                            "used out first)")


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
        self._loading: dict[str, asyncio.Task[Blocklist]] = {}
        self._locks: dict[str, _UserLock] = {}
        self.counters = {"blocked_in": 0, "blocked_out": 0, "commands": 0, "read_failures": 0}
        host.add_account_iq(NS, "blocklist", self._iq)
        host.add_account_iq(NS, "block", self._iq)
        host.add_account_iq(NS, "unblock", self._iq)
        host.hook(Hook.DISCO_SERVER_FEATURES, _feature)
        # Early: a blocked stanza is answered before other filters spend work on it.
        host.hook(Hook.FILTER_LOCAL_PACKET, self._filter, 20)
        host.on_call(DROP_CALL, self._drop_call)
        host.add_metric(BlockingCollector(self))
        host.add_query("blocking", "status", self.status)

    def stop(self) -> None:
        for task in self._loading.values():
            task.cancel()
        self._loading.clear()
        self.cache.clear()

    # -- the block lists, cached -------------------------------------------------------------------------

    async def blocklist(self, user: Jid) -> Blocklist:
        """The block list of the account ``user`` (a bare JID), from the cache or the database;
        concurrent reads of one list share one query."""
        key = str(user)
        found = self.cache.get(key, time.monotonic())
        if found is not None:
            return found
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(key, user))
            self._loading[key] = task
            task.add_done_callback(functools.partial(self._loaded, key))
        return await asyncio.shield(task)

    async def _load(self, key: str, user: Jid) -> Blocklist:
        try:
            items = await self.store.items(user.domain, user.local or "")
        except Exception as e:
            self.counters["read_failures"] += 1
            stale = self.cache.stale(key)
            log.warning("reading the block list of %s failed (%s: %s); using %s", user, e.__class__.__name__, e,
                        "the last one read" if stale is not None else "none")
            return stale if stale is not None else rules.EMPTY
        found = Blocklist(items)
        if self._loading.get(key) is asyncio.current_task():  # not dropped while we read
            self.cache.put(key, found, time.monotonic())
        return found

    def _loaded(self, key: str, task: asyncio.Task[Blocklist]) -> None:
        if self._loading.get(key) is task:
            del self._loading[key]
        if not task.cancelled():
            task.exception()  # retrieved: the waiters raise it

    def drop(self, key: str) -> None:
        """Forget the cached list of ``key`` (a bare JID): the next stanza reads the database."""
        self.cache.drop(key)
        self._loading.pop(key, None)  # a read in flight may predate the change: not cached

    def _drop_call(self, _caller: str, args: dict[str, Any]) -> bool:
        user = args.get("user")
        if not isinstance(user, str) or len(user) > 3100:
            raise ValueError("blocking.drop needs a 'user'")
        self.drop(user)
        return True

    async def _tell_members(self, key: str) -> None:
        """Have every other member of the region drop its copy of ``key``'s list, and wait for them
        (so the command's result means: enforced everywhere in this region)."""
        async def one(member: str) -> None:
            try:
                await self.host.request(member, DROP_CALL, {"user": key}, MEMBER_TIMEOUT)
            except (LookupError, TimeoutError) as e:
                # No link (it rejoins with an empty cache after the TTL) or no such module there.
                log.info("member %s did not confirm dropping the block list of %s: %s", member, key, e)

        members = self.host.cluster_members
        if members:
            await asyncio.gather(*(one(m) for m in members))

    # -- enforcement ---------------------------------------------------------------------------------------

    async def _filter(self, stanza: Stanza, sender: Jid, to: Jid) -> object:
        domains = self.host.domains
        if sender.domain == to.domain and sender.local == to.local:
            return None  # the account itself (its resources, its own bare JID)
        # Outgoing: from one of our accounts (a resource of it in this region, or the server on its
        # behalf), to anyone but our own server.
        if (sender.local is not None and sender.domain in domains and not (to.local is None and to.domain in domains)
                and (sender.resource is None or self.host.table.lookup(sender) is not None)):
            mine = await self.blocklist(sender.bare)
            if mine and mine.matches(to):
                action = rules.outbound(stanza.name, stanza.type)
                if action != rules.PASS:
                    self.counters["blocked_out"] += 1
                    if action == rules.ERROR and stanza.from_:
                        self.host.route_nowait(rules.blocked_reply(stanza))
                    return STOP
        # Incoming: to one of our accounts, from anyone but our own server.
        if to.local is not None and to.domain in domains and not (sender.local is None and sender.domain in domains):
            theirs = await self.blocklist(to.bare)
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
                    self.drop(key)
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
        return {**self.counters, "cached": len(self.cache), "cacheTtl": self.cfg.cache_ttl}


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
