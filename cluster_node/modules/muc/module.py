"""XEP-0045 Multi-User Chat: a service at ``conference.<domain>`` whose rooms every member of a
region serves and none of them owns alone.

* **The service.**  Stanzas to ``service_domain`` (``conference.{domain}`` for each served domain)
  are taken on the routing chain (``route_remote`` at priority 20, like HTTP upload's service) by
  whichever member routes them.  The service's own disco#info, disco#items (public rooms),
  pings and unique names are answered there (:mod:`.service`).
* **One sequencer per room.**  A room's stanzas are handled by one member, its *sequencer*:
  the member that created or loaded it, recorded with the room; for a room nobody knows, the
  member chosen by rendezvous hashing of the room's JID over the members running this module.
  Other members forward what they receive (cluster call ``muc.in``).  The sequencer runs the
  sans-IO room (:mod:`.room`), routes what it sends (occupants on any member, region or domain
  receive through the normal routing), and sends the room's state changes to every other member
  (``muc.ops``: operations, or a snapshot for a room new to them).  So every member holds a copy
  of every room, and the sequence of each room is one.
* **A member dies** (``member_down``): the rooms it sequenced move to the member rendezvous
  hashing picks among the survivors — the same on every survivor, without talking — which goes
  on from its copy.  Occupants whose sessions were on the dead member leave with status 332; the
  others stay.  A member that joins (``member_back``) gets snapshots of every room.
* **Persistence.**  Persistent rooms (configuration, subject, affiliations) are in SQL
  (:mod:`.store`), written by the sequencer, and loaded by the member that sequences a room
  no member holds (after the whole region restarted).
* **Regions.**  With several regions of a domain, ``home_cluster`` names the one that hosts the
  rooms: its members publish the service's domain (``host.publish_domain``: gateways write it to
  the mapping like a component's), and in the other regions the module leaves the service's
  stanzas to the gateways, which relay them there.  With ``rehome_after`` the members claim the
  service instead (``host.claim_domain``) and the region holding its lease in the mapping serves
  it, so another region takes the rooms over when the home region is gone (``gateway/leases.py``).
  Users of other domains arrive over S2S (the gateways' ``s2s.service_domains``).
* **Archive.**  Rooms with archiving on keep their groupchat messages in SQL (:mod:`.archive`),
  written by the sequencer, queried with XEP-0313 on the room's JID, and read back as the history
  of a room loaded after the region restarted.
* **Limits.**  ``max_users`` (the cap on a room's size), ``max_history``, ``max_nick_length``,
  ``max_room_name_length``, ``max_affiliations`` per room, ``max_rooms`` per member; who may
  create rooms (``create_rooms``); ``admins`` are owners of every room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field, field_validator

from ...core.hooks import Hook
from ...core.module import Module, ModuleHost, ModuleSettings, Xep, domain_template
from ...core.sessions import SessionRecord
from ...xmpp import errors
from ...xmpp.errors import StanzaError
from ...xmpp.fragment import parse_stanza
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza
from .admin import MucAdmin
from .archive import ArchiveStore, fin_element, history_items, may_read, parse_query, query_form, result_message
from .config import RoomConfig
from .fanout import runs
from .protocol import MAM, q
from .room import Room, RoomFull, iq_result as _iq_result
from .service import sequencer, service_iq
from .state import BadOperation, Limits
from .store import MucStore

__all__ = ["Muc", "MucSettings", "ROUTE_PRIORITY"]

log = logging.getLogger("meridian.muc")

ROUTE_PRIORITY = 20  # route_remote: after components (10), before the gateway (40) and the hand-off (50)
MAX_HOPS = 2  # forwards of one stanza between members before the member holding it handles it


class MucSettings(ModuleSettings):
    service_domain: str = Field("conference.{domain}", description="the MUC service's JID ({domain}: each domain "
                                "the node serves)")
    service_name: str = Field("Chatrooms", description="the service's name in disco#info")
    home_cluster: str = Field("", description="with several regions of a domain: the cluster (region) whose "
                              "members host the rooms, which the others reach through their gateways; empty: "
                              "this region hosts rooms of its own")
    rehome_after: float = Field(0.0, ge=0, description="with home_cluster, the same in every region: seconds "
                                "the service may go unserved (its home region's lease on it in the mapping "
                                "lapsed) before another region takes it over; 0: the rooms stay in home_cluster")
    create_rooms: Literal["anyone", "local", "admins"] = Field(
        "anyone", description="who may create rooms: anyone, accounts of the served domains, or the admins")
    admins: list[str] = Field(default_factory=list, description="bare JIDs that are owners of every room")
    lock_new_rooms: bool = Field(True, description="a new room is locked until its owner configures it (XEP-0045 "
                                 "§10.1: an instant room is one configured with an empty form)")
    max_users: int = Field(200, ge=1, le=100_000, description="most occupants of a room (and the default)")
    history_length: int = Field(20, ge=0, description="messages a new room keeps for joining occupants")
    max_history: int = Field(100, ge=0, le=10_000, description="most messages a room may keep")
    presence_rate: float = Field(5.0, ge=0, description="presence a session may send to one room per second "
                                 "(bursts of twice that; more is dropped; 0: no limit)")
    max_nick_length: int = Field(64, ge=1, le=1023, description="characters of a nickname")
    max_room_name_length: int = Field(128, ge=1, le=1023, description="characters of a room's name")
    max_affiliations: int = Field(10_000, ge=1, description="affiliations of one room")
    max_rooms: int = Field(100_000, ge=1, description="rooms held in memory by one member (new ones: "
                           "resource-constraint)")
    max_rooms_listed: int = Field(1000, ge=0, description="rooms listed in the service's disco#items")
    default_public: bool = Field(True, description="new rooms are listed in disco#items")
    default_persistent: bool = Field(False, description="new rooms outlive their last occupant")
    default_whois: Literal["moderators", "anyone"] = Field("moderators", description="who sees real JIDs in new rooms")
    default_archiving: bool = Field(False, description="new rooms are archived (XEP-0313)")
    archive_page: int = Field(50, ge=1, description="archived messages per page when a query gives no max")
    max_archive_page: int = Field(250, ge=1, le=10_000, description="most archived messages in one page")

    @field_validator("service_domain")
    @classmethod
    def _service_domain(cls, value: str) -> str:
        return domain_template(value, "conference.{domain}")

    @field_validator("admins")
    @classmethod
    def _admins(cls, value: list[str]) -> list[str]:
        out = []
        for v in value:
            try:
                out.append(str(Jid.parse(v).bare))
            except InvalidJid as e:
                raise ValueError(f"{v!r}: {e}") from None
        return out


def _is_join(stanza: Stanza, to: Jid) -> bool:
    return stanza.name == "presence" and stanza.type is None and to.resource is not None


class Muc(Module):
    name = "muc"
    description = ("Multi-User Chat: rooms served by every node of a region, surviving any node's death, one room "
                   "for every region of a domain and for other domains over S2S")
    xeps = (
        Xep(45, "1.35.1", "partial", "no voice requests; nick registration makes a member (no approval flow); "
            "rooms are sequenced by one member of the region and copied to the others"),
        Xep(249, "1.2", "complete", "direct invitations are routed; rooms advertise jabber:x:conference"),
        Xep(410, "1.1.0", "complete", "self-pings answered by the room"),
        Xep(421, "0.2.0", "complete", "occupant ids in presence and messages"),
        Xep(359, "0.7.0", "partial", "stanza-id by the room on groupchat messages"),
        Xep(313, "1.1.3", "partial", "the room's archive: queries by time, occupant and id with RSM paging; its "
            "last messages are the history of a room loaded after a restart"),
    )
    Settings = MucSettings

    async def start(self, host: ModuleHost) -> None:
        self.host = host
        self.cfg: MucSettings = self.settings  # type: ignore[assignment]
        cfg = self.cfg
        self.services: dict[str, str] = {}
        for domain in sorted(host.domains):
            service = Jid.parse(cfg.service_domain.format(domain=domain)).domain
            if service in host.domains or service in self.services:
                raise ValueError(f"modules.muc.service_domain: {service} is already a served domain or another "
                                 "domain's MUC service")
            self.services[service] = domain
        self.limits = Limits(max_users=cfg.max_users, max_history=cfg.max_history, max_nick_length=cfg.max_nick_length,
                             max_affiliations=cfg.max_affiliations, lock_new_rooms=cfg.lock_new_rooms,
                             admins=frozenset(cfg.admins), presence_rate=cfg.presence_rate)
        self.defaults = RoomConfig(public=cfg.default_public, persistent=cfg.default_persistent,
                                   whois=cfg.default_whois, archiving=cfg.default_archiving, max_users=cfg.max_users,
                                   history_length=min(cfg.history_length, cfg.max_history))
        # Several regions of a domain serve the rooms from one of them (``home_cluster``): its
        # members take the service's stanzas and publish its domain; the others leave the stanzas
        # to their gateways, which relay them there.
        # With rehome_after, the region holding the service's lease serves it (gateway/leases.py).
        self.serving = not cfg.home_cluster or cfg.home_cluster == host.settings.cluster.name
        self.leased = bool(cfg.home_cluster) and cfg.rehome_after > 0
        self.holders: dict[str, str | None] = {}  # service -> the region holding its lease, as last told
        self.store = MucStore(host.storage)
        await self.store.migrate()
        self.archive = ArchiveStore(host.storage)
        self.rooms: dict[str, Room] = {}  # every room this member holds: sequenced here or a copy
        self.home: dict[str, str] = {}  # room -> the member sequencing it
        self.peers: set[str] = set()  # other members running this module
        self._locks: dict[str, asyncio.Lock] = {}
        self.counters: Counter[str] = Counter()
        self._outbox: asyncio.Queue[Stanza] = asyncio.Queue()
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())
        host.hook(Hook.ROUTE_REMOTE, self._route, ROUTE_PRIORITY)
        host.hook(Hook.DISCO_SERVER_ITEMS, self._items)
        host.hook(Hook.MEMBER_DOWN, self._member_down)
        host.hook(Hook.MEMBER_BACK, self._member_back)
        host.on_call("muc.in", self._forwarded)
        host.on_call("muc.ops", self._ops)
        host.on_call("muc.hello", self._hello)
        host.add_query("muc", "status", self.status)
        host.add_query("muc", "room", self.describe)
        host.add_query("muc", "rooms", self.rooms_summary)
        MucAdmin(self).register()
        for member in host.cluster_members:  # members joined before we started
            self._say_hello(member, reply=True)
        if self.leased:
            for service in self.services:
                host.claim_domain(service, home=cfg.home_cluster == host.settings.cluster.name,
                                  after=cfg.rehome_after)
        elif cfg.home_cluster and self.serving:
            for service in self.services:
                host.publish_domain(service)

    async def stop(self) -> None:
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender

    def status(self) -> dict[str, Any]:
        """This member's rooms (``muc status`` on the control socket)."""
        here = [k for k, h in self.home.items() if h == self.host.node]
        return {**self.counters, "rooms": len(self.rooms), "sequencedHere": len(here),
                "occupants": sum(len(r.occupants) for r in self.rooms.values()), "peers": sorted(self.peers),
                "presenceDropped": sum(r.dropped for r in self.rooms.values())}

    def rooms_summary(self, limit: int = 10) -> dict[str, Any]:
        """The rooms this member holds, in short (the gateways publish it with their region's
        status, for the dashboard): counts, and the ``limit`` fullest rooms."""
        live = [r for r in self.rooms.values() if not r.destroyed]
        fullest = sorted(live, key=lambda r: (-len(r.occupants), r.sjid))[:max(0, limit)]
        return {"rooms": len(live), "occupants": sum(len(r.occupants) for r in live),
                "sequencedHere": sum(1 for k, h in self.home.items() if h == self.host.node and k in self.rooms),
                "fullest": [{"room": r.sjid, "occupants": len(r.occupants), "title": r.config.title} for r in fullest]}

    def describe(self, room: str) -> dict[str, Any]:
        """One room as this member holds it (``muc room`` on the control socket): the same on every member."""
        held = self.rooms.get(room)
        if held is None:
            raise LookupError(f"no room {room} on {self.host.node}")
        occupants = [{"nick": o.nick, "role": o.role, "affiliation": held.affiliation(o.bare), "jids": o.jids}
                     for o in sorted(held.occupants.values(), key=lambda o: o.nick)]
        return {"room": room, "sequencer": self.home.get(room), "locked": held.locked, "subject": held.subject,
                "config": held.config.to_json(), "occupants": occupants, "history": len(held.history),
                "affiliations": {j: a.affiliation for j, a in sorted(held.affiliations.items())}}

    # -- routing ---------------------------------------------------------------------------------------

    def _items(self, items: list[dict[str, str]], to: Any) -> list[dict[str, str]]:
        """``disco_server_items``: our service among the server's items."""
        domain = str(to)
        return items + [{"jid": s, "name": self.cfg.service_name} for s, d in self.services.items() if d == domain]

    async def _route(self, stanza: Stanza, to: Jid) -> bool | None:
        """``route_remote``: take what is addressed to one of our services."""
        if to.domain not in self.services or not self.serves(to.domain):
            return None
        if to.local is None:
            await self._service(stanza, to)
            return True
        if len(to.local) > self.cfg.max_room_name_length:
            raise errors.NotAcceptable(f"a room's name has at most {self.cfg.max_room_name_length} characters")
        await self.dispatch(stanza, 0)
        return True

    def serves(self, service: str) -> bool:
        """Whether this region serves ``service`` now: always or never without re-homing; with it,
        while it holds the lease (as its gateways last said: a region whose gateways are all down
        goes on with the last answer)."""
        if not self.leased:
            return self.serving
        holder = self.host.domain_holder(service)
        if holder is None:
            holder = self.holders.get(service)
        elif holder != self.holders.get(service):
            self._moved(service, holder)
        return holder == self.host.settings.cluster.name

    def _moved(self, service: str, holder: str) -> None:
        """The lease on ``service`` changed hands: a region that lost it drops its copies of the
        rooms (the new holder loads persistent rooms from the database, their history from the
        archive); its occupants find out with their next stanza or XEP-0410 self-ping."""
        mine = self.host.settings.cluster.name
        if self.holders.get(service) == mine and holder != mine:
            gone = [k for k, r in self.rooms.items() if r.jid.domain == service]
            for key in gone:
                self._forget(key)
            log.warning("muc: %s is served by region %s now; %d rooms dropped here", service, holder or "(none)",
                        len(gone))
        elif holder == mine:
            log.info("muc: this region serves %s now", service)
        self.holders[service] = holder

    async def _service(self, stanza: Stanza, to: Jid) -> None:
        if to.resource is not None:
            if stanza.type in ("get", "set") or (stanza.name == "message" and stanza.type != "error"):
                raise errors.ServiceUnavailable()
            return
        if stanza.name == "iq":
            rooms = await self.public_rooms(to.domain)
            reply = service_iq(stanza, to.domain, rooms, self.cfg.service_name)
            if reply is not None:
                self.host.route_nowait(reply)
        elif stanza.name == "message" and stanza.type not in ("error", "groupchat", "headline"):
            raise errors.ServiceUnavailable()

    async def public_rooms(self, service: str) -> list[tuple[str, str]]:
        """Public, unlocked rooms of ``service`` (held in memory or stored), by JID."""
        found: dict[str, str] = {}
        for key, room in self.rooms.items():
            if room.jid.domain == service and room.config.public and not room.locked:
                found[key] = room.config.title or (room.jid.local or "")
        for name, config in await self.store.rooms(service, self.cfg.max_rooms_listed):
            key = f"{name}@{service}"
            if config.public and key not in found and key not in self.rooms:
                found[key] = config.title or name
        return sorted(found.items())[: self.cfg.max_rooms_listed]

    def _members(self) -> list[str]:
        """Who may sequence rooms: the members running this module, gateways left out while any
        node runs it (a room sequenced by a gateway competes with its relaying: 2.5× slower)."""
        alive = set(self.host.cluster_members)
        members = {self.host.node} | (self.peers & alive)
        nodes = members - self.host.gateway_members
        return sorted(nodes or members)

    def sequencer_of(self, room: str) -> str:
        home = self.home.get(room)
        if home is not None and (home == self.host.node or home in self.host.cluster_members):
            return home
        return sequencer(room, self._members())

    async def dispatch(self, stanza: Stanza, hops: int) -> None:
        """Hand a room's stanza to its sequencer, or handle it when that is us."""
        room = str(Jid.parse(stanza.to or "").bare)
        home = self.sequencer_of(room)
        if home != self.host.node and hops < MAX_HOPS:
            if self.host.call(home, "muc.in", {"s": stanza.to_bytes().decode(), "hops": hops + 1}):
                self.counters["forwarded"] += 1
                return
        try:
            await self.handle(stanza)
        except StanzaError as e:
            self.host.send_error(stanza, e)
        except Exception:  # the database is down, or a bug: the sender hears so, the node goes on
            log.exception("muc: a %s for %s failed", stanza.name, stanza.to)
            self.host.send_error(stanza, errors.StanzaInternalServerError("the room could not handle this"))

    async def _forwarded(self, _caller: str, args: dict[str, Any]) -> None:
        """``muc.in``: another member routed a stanza for a room it thinks we sequence."""
        data, hops = args.get("s"), args.get("hops")
        if not isinstance(data, str) or not isinstance(hops, int):
            return
        try:
            stanza = parse_stanza(data.encode())
        except ValueError as e:
            log.warning("muc: dropping a forwarded stanza that does not parse: %s", e)
            return
        await self.dispatch(stanza, hops)

    # -- handling a room's stanza (on its sequencer) ----------------------------------------------------

    def _lock(self, room: str) -> asyncio.Lock:
        lock = self._locks.get(room)
        if lock is None:
            lock = self._locks[room] = asyncio.Lock()
        return lock

    async def handle(self, stanza: Stanza) -> None:
        """Run ``stanza`` through its room, here; raises a StanzaError to bounce it."""
        to = Jid.parse(stanza.to or "")
        sender = Jid.parse(stanza.from_ or "")
        key = str(to.bare)
        async with self._lock(key):
            room = self.rooms.get(key)
            known = room is not None
            if room is None:
                room = await self._load(to.bare)
            if room is None:
                if not _is_join(stanza, to):
                    if stanza.type in ("error", "result") or stanza.name == "presence":
                        return
                    if stanza.name == "iq" and to.resource is not None:  # XEP-0410: not joined
                        raise errors.NotAcceptable(f"there is no room {key}")
                    raise errors.ItemNotFound(f"there is no room {key}")
                room = self._create(to.bare, sender)
            was_persistent = room.config.persistent and (known or not room.fresh)
            payload = stanza.payload() if stanza.name == "iq" and to.resource is None else None
            if payload is not None and payload.tag == q(MAM, "query") and stanza.type in ("get", "set"):
                await self._archive_query(room, stanza, sender)
                return
            dropped = room.dropped
            try:
                out = room.handle(stanza, sender, to, time.time())
            except RoomFull:
                self.host.refused("modules.muc.max_users")
                raise
            finally:
                ops = room.take_ops()
            if room.dropped > dropped:  # a presence flood, dropped quietly by the room
                self.host.refused("modules.muc.presence_rate")
            if room.fresh:  # a creation that failed: nothing was made
                return
            self.counters[stanza.name] += 1
            await self._commit(room, known, out, ops, was_persistent)

    async def _archive_query(self, room: Room, stanza: Stanza, sender: Jid) -> None:
        """XEP-0313 on the room's JID (the results, then the IQ's ``<fin/>``)."""
        if not room.config.archiving:
            raise errors.ServiceUnavailable("this room has no archive")
        if not may_read(room, str(sender)) or (room.locked and room.affiliation(str(sender.bare)) != "owner"):
            raise errors.Forbidden("only occupants and members read this room's archive")
        if stanza.type == "get":
            self._send([_iq_result(stanza, room.sjid, query_form())])
            return
        payload = stanza.payload()
        assert payload is not None
        query = parse_query(payload, room.sjid, self.cfg.archive_page, self.cfg.max_archive_page)
        items, complete = await self.archive.query(room.jid, query)
        self.counters["archiveQueries"] += 1
        self._send([result_message(room.sjid, str(sender), query.queryid, item) for item in items]
                   + [_iq_result(stanza, room.sjid, fin_element(items, complete))])

    async def _commit(self, room: Room, known: bool, out: list[Stanza], ops: list[dict[str, Any]],
                      was_persistent: bool) -> None:
        """After the room changed on its sequencer: copies, sending, the database, the archive."""
        archived = room.take_archive()
        if archived:
            try:
                await self.archive.append(room.jid, archived)
            except Exception as e:  # the database may be down: the room goes on
                log.warning("muc: %d messages of %s not archived: %s: %s", len(archived), room.sjid,
                            e.__class__.__name__, e)
        key = room.sjid
        if not known:
            self.rooms[key] = room
            self.home[key] = self.host.node
            self._replicate(key, snapshot=room.snapshot())
        elif ops:
            self._replicate(key, ops=ops)
        if room.destroyed:
            self._forget(key)
        self._send(out)
        await self._persist(room, ops, was_persistent)

    async def on_sequencer(self, room: str, fn: Callable[[Room, list[Stanza]], Any], *,
                           create: Callable[[], Room] | None = None) -> Any:
        """Run ``fn(room, out)`` on this member, the room's sequencer, and commit what it changed
        (``create``: how to make the room when it does not exist; else LookupError)."""
        jid = Jid.parse(room).bare
        key = str(jid)
        async with self._lock(key):
            held = self.rooms.get(key)
            known = held is not None
            if held is None:
                held = await self._load(jid)
            if held is None:
                if create is None:
                    raise LookupError(f"there is no room {key}")
                held = create()
            elif create is not None:
                raise ValueError(f"the room {key} exists")
            was_persistent = held.config.persistent and (known or create is None)
            out: list[Stanza] = []
            try:
                result = fn(held, out)
            finally:
                ops = held.take_ops()
            await self._commit(held, known, out, ops, was_persistent)
            return result

    def _create(self, jid: Jid, creator: Jid) -> Room:
        cfg = self.cfg
        bare = str(creator.bare)
        if cfg.create_rooms == "admins" and bare not in self.limits.admins:
            raise errors.NotAllowed("only the service's admins create rooms")
        if cfg.create_rooms == "local" and creator.domain not in self.host.domains:
            raise errors.NotAllowed("only local accounts create rooms")
        if len(self.rooms) >= cfg.max_rooms:
            self.host.refused("modules.muc.max_rooms")
            raise errors.StanzaResourceConstraint("too many rooms")
        room = Room(jid, self.defaults, self.limits, salt=secrets.token_hex(16), created=time.time())
        room.fresh = True
        return room

    async def _load(self, jid: Jid) -> Room | None:
        stored = await self.store.load(jid.domain, jid.local or "")
        if stored is None:
            return None
        config = replace(stored.config, max_users=min(stored.config.max_users, self.cfg.max_users),
                         history_length=min(stored.config.history_length, self.cfg.max_history))
        room = Room(jid, config, self.limits, salt=stored.salt, created=stored.created)
        room.affiliations.update(stored.affiliations)
        room.subject, room.subject_by = stored.subject, stored.subject_by
        if config.archiving and config.history_length > 0:  # the history outlives the region
            room.history.extend(history_items(room.sjid, await self.archive.last(jid, config.history_length)))
        return room

    def _forget(self, key: str) -> None:
        self.rooms.pop(key, None)
        self.home.pop(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    async def _persist(self, room: Room, ops: list[dict[str, Any]], was_persistent: bool) -> None:
        """The sequencer writes what a persistent room must keep."""
        service, name = room.jid.domain, room.jid.local or ""
        try:
            if room.destroyed or (was_persistent and not room.config.persistent):
                if was_persistent:
                    await self.store.delete(service, name)
                if room.destroyed:
                    await self.archive.delete(room.jid)
                return
            if not room.config.persistent:
                return
            kinds = {op.get("op") for op in ops}
            if not was_persistent or kinds & {"config", "subject"}:
                await self.store.save(room, affiliations=not was_persistent)
                if not was_persistent:
                    return
            for op in ops:
                if op.get("op") == "aff":
                    await self.store.set_affiliation(room, str(op.get("jid")))
        except Exception as e:  # the database may be down: the room goes on in memory
            log.warning("muc: %s not saved: %s: %s", room.sjid, e.__class__.__name__, e)

    # -- sending -------------------------------------------------------------------------------------------

    def _send(self, out: list[Stanza]) -> None:
        """Each run once to the routing, in the room's order (:func:`.fanout.runs`: a broadcast, or
        what one occupant gets in a row, a join's presences): sessions of the region get their
        copies at once (in order, one cluster frame per member), occupants in other regions one
        relayed frame per region (a few for a long run); the rest (other domains) goes through
        the routing chain, one at a time, in order."""
        for stanzas, recipients in runs(out):
            for left in self.host.route_run(stanzas, recipients):
                self._outbox.put_nowait(left)

    async def _send_loop(self) -> None:
        while True:
            stanza = await self._outbox.get()
            try:
                await self.host.route(stanza)
            except Exception:
                log.exception("muc: routing %r failed", stanza)

    # -- copies on the other members --------------------------------------------------------------------

    def _replicate(self, key: str, *, ops: list[dict[str, Any]] | None = None,
                   snapshot: dict[str, Any] | None = None) -> None:
        args: dict[str, Any] = {"room": key, "home": self.host.node}
        if snapshot is not None:
            args["snap"] = snapshot
        else:
            args["ops"] = ops
        for member in self.peers & set(self.host.cluster_members):
            self.host.call(member, "muc.ops", args)

    def _ops(self, _caller: str, args: dict[str, Any]) -> None:
        """``muc.ops``: the sequencer of a room changed it (or sent all of it)."""
        key, home = args.get("room"), args.get("home")
        if not isinstance(key, str) or not isinstance(home, str):
            return
        try:
            jid = Jid.parse(key)
        except InvalidJid:
            return
        self.peers.add(home)
        me = self.host.node
        if home != me and self.home.get(key) == me and key in self.rooms and sequencer(key, [me, home]) == me:
            return  # both sides of a healed partition sequenced it: the rendezvous winner keeps its room
        try:
            snap = args.get("snap")
            if isinstance(snap, dict):
                room = Room(jid, self.defaults, self.limits, salt="", created=0.0)
                room.restore(snap)
                self.rooms[key] = room
            else:
                room = self.rooms.get(key)  # type: ignore[assignment]
                ops = args.get("ops")
                if room is None or not isinstance(ops, list):
                    return  # a room we never got: its next snapshot brings it
                for op in ops:
                    room.apply(op)
        except BadOperation as e:
            log.warning("muc: a bad change of %s from %s: %s", key, home, e)
            return
        self.home[key] = home
        if room.destroyed:
            self._forget(key)

    def _say_hello(self, member: str, *, reply: bool) -> None:
        mine = [{"room": k, "snap": self.rooms[k].snapshot()} for k, h in self.home.items()
                if h == self.host.node and k in self.rooms]
        self.host.call(member, "muc.hello", {"from": self.host.node, "rooms": mine, "reply": reply})

    def _hello(self, _caller: str, args: dict[str, Any]) -> None:
        """``muc.hello``: a member running this module, with the rooms it sequences."""
        member = args.get("from")
        if not isinstance(member, str):
            return
        known = member in self.peers
        self.peers.add(member)
        for entry in args.get("rooms") or []:
            if isinstance(entry, dict):
                self._ops("", {"room": entry.get("room"), "home": member, "snap": entry.get("snap")})
        if args.get("reply") is True and not known:
            self._say_hello(member, reply=False)

    def _member_back(self, node: str, sessions: list[SessionRecord]) -> None:
        self._say_hello(node, reply=True)

    def _member_down(self, node: str, sessions: list[SessionRecord], leader: bool) -> None:
        """Rooms ``node`` sequenced move to a survivor; occupants it held leave (332)."""
        self.peers.discard(node)
        moved = 0
        for key, home in list(self.home.items()):
            if home == node:
                self.home[key] = sequencer(key, self._members())
                moved += self.home[key] == self.host.node
        if moved:
            log.info("muc: %d rooms of %s are sequenced here now", moved, node)
        gone = {str(r.jid) for r in sessions}
        if gone:
            for key, home in self.home.items():
                room = self.rooms.get(key)
                if home == self.host.node and room is not None and any(j in room.nick_of for j in gone):
                    self.host.spawn(self._prune(key, gone))

    async def _prune(self, key: str, gone: set[str]) -> None:
        if key in self.rooms and self.home.get(key) == self.host.node:
            with contextlib.suppress(LookupError):
                await self.on_sequencer(key, lambda room, out: room.remove_sessions(gone, 332, out))
