"""XEP-0313 Message Archive Management on the module host: every user's messages, sent and
received, in one archive that every node and region of the deployment shares (the domain
database), queried with XEP-0059 paging.

* **Archiving.**  Outgoing messages are archived in the sender's archive as the sender's node
  handles them (``user_send_packet``, whoever the recipient is: a local account, another region,
  another domain over S2S); incoming ones in the recipient's archive where the router delivers or
  stores them (``message_to_account``: once in the whole deployment), which also adds the
  XEP-0359 ``<stanza-id by='user@domain'/>`` and strips one a sender forged (a message routed
  again — a closing session's, XEP-0198's unacked ones at the resume timeout — keeps the one it
  was archived with and is not archived twice).  Rows go with the next group commit while the
  message is routed on, as MongooseIM's asynchronous archive writer does: the querying user's
  node waits for what it queued, a stop writes what is queued, and a write the database refuses
  waits in the backlog (with the id the recipient was given) like any other.  Only a crash of
  the node within that commit (milliseconds) loses a row.
  What is archived: :func:`~.query.archivable`; the user's preferences (XEP-0441) decide for
  each correspondent.  A received message's stanza-id must name a row those preferences allow,
  so the few users who set preferences have their received messages archived *before* delivery;
  which users those are, every member knows without reading the database per message: it reads
  them at start, hears of a change on another member of its region at once (a cluster request)
  and of one in another region from a poll of the changed rows (``prefs_poll_interval``).  A
  change it has not heard of yet still cannot archive what the preferences refuse (the insert
  checks them in the database): the row is refused, the preferences are read, and at worst one
  message carries a stanza-id no row has (counted as ``unarchived_with_id``).
* **Queries** (``<query/>`` to the account's own bare JID) are answered on the member holding the
  querying session, from the shared database: results go to that session with the host's
  delivery (over the cluster link when needed), then the ``<fin/>``.  Protocol details live in
  the sans-IO :mod:`.query`, SQL in :mod:`.store`.
* **Retention.**  With ``retention_days`` set, a clean-up task deletes older messages every
  ``cleanup_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Coroutine, Iterator
from typing import Any, Literal, NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import Field

from ...core.change_watch import ChangeWatch, Key, poll_changes
from ...core.hooks import Hook
from ...core.log_throttle import OncePer
from ...core.module import Module, ModuleHost, ModuleSettings, Xep
from ...core.router import IqRequest
from ...xmpp import errors
from ...xmpp.fragment import parse_stanza
from ...xmpp.jid import Jid
from ...xmpp.stanza import Stanza
from .query import (
    MAM,
    MAM_EXTENDED,
    RANDOM_BITS,
    IdGenerator,
    Page,
    Prefs,
    Query,
    archivable,
    claimed_id,
    client_stanza,
    decide,
    fin_element,
    make_id,
    metadata_element,
    parse_prefs,
    parse_query,
    peer_of,
    prefs_element,
    query_form,
    result_message,
    with_stanza_id,
    without_forged_ids,
)
from .store import ArchiveStore, Row

__all__ = ["Mam", "MamSettings"]

log = logging.getLogger("meridian.mam")

# The random low bits of an archive id only keep apart ids made in the same microsecond (on this
# or another node): 11 bits are no secret, so they come from a seeded PRNG, not the system's
# (``secrets`` read the kernel's random device for every archived message).
_ID_RANDOM = random.Random(secrets.randbits(64))

DAY_US = 86_400 * 1_000_000
ID_ATTEMPTS = 5  # fresh ids tried when one is taken in the archive (same µs, same random bits)
PREFS_CALL = "mam.prefs"  # cluster request: args["user"] has set preferences
MEMBER_TIMEOUT = 2.0  # seconds a prefs command waits for each other member to hear of it


class Write(NamedTuple):
    """An archive write made after its message went on: once the user's preferences are read,
    or from the backlog once the database answers again."""

    owner: Jid
    peer: Jid
    direction: str
    stanza: Stanza
    at_us: int  # the message's time
    archive_id: int | None = None  # the id a received message was delivered with


class MamSettings(ModuleSettings):
    max_page: int = Field(250, ge=1, le=10_000, description="most messages one query returns (a larger RSM max is "
                          "clamped to it)")
    default_page: int = Field(50, ge=1, description="messages a query returns without an RSM max (at most max_page)")
    count_limit: int = Field(10_000, ge=0, description="largest result counted for RSM <count/> (a query matching "
                             "more gets none: counting a million messages takes a few hundred ms; 0: never)")
    retention_days: int = Field(0, ge=0, description="days messages are kept (0: forever)")
    cleanup_interval: float = Field(3600.0, gt=0, description="seconds between retention clean-ups")
    default_mode: Literal["always", "never", "roster"] = Field(
        "always", description="what is archived for users who set no preferences (XEP-0441)")
    outage_backlog: int = Field(10_000, ge=0, description="archive writes kept in memory while the database is "
                                "away, written (with their own times) once it is back; beyond, the oldest are "
                                "dropped and counted (0: none kept)")
    backlog_retry: float = Field(2.0, gt=0, description="seconds between attempts to write the backlog")
    prefs_poll_interval: float = Field(2.0, ge=0, description="seconds between two reads of the preferences "
                                       "changed by any member or region; a received message's row goes with "
                                       "the next group commit unless its user has preferences (those wait for "
                                       "their rows); 0: no poll, and every received message waits for its row")
    prefs_poll_window: float = Field(30.0, gt=0, description="seconds a poll looks back before the newest "
                                     "change seen (a change committed late or stamped by a clock a little "
                                     "behind)")


def _features(features: set[str]) -> set[str]:
    return features | {MAM, MAM_EXTENDED}


def _now_us() -> int:
    return time.time_ns() // 1000


class Mam(Module):
    name = "mam"
    description = "Message Archive Management: one archive per user, the same from every node and region"
    xeps = (Xep(313, "1.1.3"),
            Xep(59, "1.0.0", "partial", "in archive queries: after/before paging, a bounded count, no index"),
            Xep(297, "1.0", "complete", "archive results"),
            Xep(334, "0.3.0", "partial", "store, no-store and no-permanent-store decide what is archived"),
            Xep(359, "0.7.0", "complete", "stanza-id by the archive on received messages; origin-id kept"),
            Xep(441, "0.2.0"))
    Settings = MamSettings

    async def start(self, host: ModuleHost) -> None:
        self.host = host
        self.cfg: MamSettings = self.settings  # type: ignore[assignment]
        self.store = ArchiveStore(host.storage)
        await self.store.migrate()
        self.ids = IdGenerator()
        self.counters = {"archived": 0, "failed": 0, "queries": 0, "cleaned": 0, "late": 0, "dropped": 0,
                         "unarchived_with_id": 0, "prefs_polls": 0, "prefs_poll_failures": 0}
        # Writes that failed while the database was away, oldest first; written by _write_backlog
        # once it answers again.
        self.backlog: deque[Write] = deque()
        # The users who have set preferences (any member, any region, as far as this one knows):
        # their received messages wait for their rows.  Read at start, then from the polls.
        self.with_prefs: set[Key] = set()
        self._prefs_watch = ChangeWatch(0, int(self.cfg.prefs_poll_window * 1_000_000))
        self._queue_received = self.cfg.default_mode == "always" and self.cfg.prefs_poll_interval > 0
        await self.poll_prefs()
        self._once = OncePer(60.0)  # "archive storage unavailable": at most once a minute
        self._cleanup: asyncio.Task[None] | None = None
        self._retry: asyncio.Task[None] | None = None
        self._late: set[asyncio.Task[None]] = set()  # sent messages' writes that read preferences first
        # Late: modules that take a message (and so never deliver it) answer first; before carbons
        # (90), which marks the stanza it hands on.
        host.hook(Hook.USER_SEND_PACKET, self._outgoing, 80)
        host.hook(Hook.MESSAGE_TO_ACCOUNT, self._incoming, 80)
        host.hook(Hook.DISCO_SERVER_FEATURES, _features)
        host.hook(Hook.DISCO_ACCOUNT_FEATURES, lambda features, _user: _features(features))  # XEP-0313 §7
        host.add_account_iq(MAM, "query", self._query)
        host.add_account_iq(MAM, "prefs", self._prefs)
        host.add_account_iq(MAM, "metadata", self._metadata)
        host.on_call(PREFS_CALL, self._prefs_call)
        host.add_metric(MamCollector(self))
        host.add_query("mam", "status", self.status)
        if self.cfg.retention_days > 0:
            self._cleanup = host.every(self.cfg.cleanup_interval, self.clean_up, "MAM retention clean-up")
        self._retry = host.every(self.cfg.backlog_retry, self._write_backlog, "MAM backlog")
        self._poll: asyncio.Task[None] | None = None
        if self.cfg.prefs_poll_interval > 0:
            self._poll = host.every(self.cfg.prefs_poll_interval, self.poll_prefs, "MAM preferences changed")

    async def stop(self) -> None:
        try:  # the sent messages' rows still queued go in before the storage closes
            await asyncio.wait_for(self._written(), 10.0)
        except TimeoutError:
            log.warning("archive writes still queued at stop after 10 s: %d rows may be lost",
                        len(self._late) + self.store.pending)
        tasks, self._cleanup = [self._cleanup, self._retry, self._poll], None
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.backlog:
            log.warning("%d archive writes still waiting for the database are lost with this stop", len(self.backlog))

    def status(self) -> dict[str, Any]:
        """This member's archive activity (``mam status`` on the control socket)."""
        return {**self.counters, "backlog": len(self.backlog), "retentionDays": self.cfg.retention_days,
                "maxPage": self.cfg.max_page}

    # -- archiving ------------------------------------------------------------------------------------

    async def _outgoing(self, session: Any, stanza: Stanza) -> None:
        """A message from a client: into the sender's archive (whoever it is for)."""
        if stanza.name != "message" or not archivable(stanza):
            return None
        record = getattr(session, "record", None)
        sender = record.jid if record is not None else peer_of(stanza.from_)
        to = peer_of(stanza.to)
        if sender is None or sender.local is None or to is None:
            return None  # no 'to': for the account itself, archived once as received
        owner = sender.bare
        if to.bare == owner or owner.domain not in self.host.domains:
            return None  # to another resource of the account: archived once, as received
        if to.local is None and to.domain in self.host.domains:
            return None  # to the server itself: not a conversation
        if self.cfg.default_mode != "always" or self._has_prefs(owner):
            self._later(self._archive_late(Write(owner, to, "out", stanza, _now_us())))
        else:
            self._archive_soon(owner, to, "out", stanza)
        return None

    def _archive_soon(self, owner: Jid, peer: Jid, direction: str, stanza: Stanza) -> int:
        """A message into ``owner``'s archive without holding it for the commit: its row goes
        with the next group commit while the message is routed on; the archive id it will have.
        For a user without preferences (XEP-0441: everything is archived), as far as this member
        knows; the insert checks it in the database, and a refused row reads the preferences and
        goes in afterwards if they allow it, with that id (:meth:`_queued_done`).  A failure goes
        where an awaited write's would (the backlog); stop() and queries wait for what is queued
        (:meth:`_written`)."""
        archive_id, ts = self.ids.next(_now_us(), _ID_RANDOM.getrandbits(RANDOM_BITS))
        row = self.store.queue(owner.domain, owner.local or "", archive_id, ts, str(peer.bare), peer.resource or "",
                               direction, client_stanza(stanza).to_bytes(), unless_prefs=True)
        write = Write(owner, peer, direction, stanza, ts, archive_id if direction == "in" else None)
        row.add_done_callback(lambda f: self._queued_done(f, write))
        return archive_id

    def _queued_done(self, row: asyncio.Future[bool], write: Write) -> None:
        if row.cancelled():  # the writer was cancelled: the node is going down without a stop()
            return
        error = row.exception()
        if error is not None:
            self._failed(error, _what(write), write)
        elif row.result():
            self.counters["archived"] += 1
        else:  # the user has preferences (or, once in ages, the id was taken): ask them
            self.with_prefs.add(_key(write.owner))
            self._later(self._archive_late(write))

    async def _archive_late(self, write: Write) -> None:
        """``write`` once the user's preferences are read (a user with preferences)."""
        try:
            archive_id = await self._archive(*write, check_prefs=True)
        except Exception as e:
            self._failed(e, _what(write), write)
            return
        if write.archive_id is not None and archive_id != write.archive_id:
            # Delivered with that id before this member knew of the preferences that refused it
            # (or, once in ages, with an id another member took in the same µs).
            self.counters["unarchived_with_id"] += 1
            log.info("a message for %s was delivered with stanza-id %d, which names no row: %s", write.owner,
                     write.archive_id, "its preferences, changed elsewhere, refused it" if archive_id is None
                     else f"archived as {archive_id}")

    def _later(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    async def _written(self) -> None:
        """Every sent message this node has taken is archived (or has failed to be): the rows
        queued before, then the writes that had to read preferences first — a refused row's
        callback starts its task before the barrier's waiter resumes, so it is among them."""
        await self.store.written()
        if self._late:
            await asyncio.wait(list(self._late))

    async def _incoming(self, stanza: Stanza, to: Jid) -> Stanza:
        """A message about to be delivered to (or stored for) ``to``: into its archive, with the
        stanza-id that tells the recipient where."""
        if stanza.name != "message" or to.local is None:
            return stanza
        owner = to.bare
        peer = peer_of(stanza.from_)
        claimed = claimed_id(stanza, owner) if peer is not None else None
        if claimed is not None and peer is not None:
            # Routed again (a session closed under it, XEP-0198's resume timeout): archived once.
            try:
                await self.store.written()  # its row may be in this member's group commit still
                if await self.store.received(owner.domain, owner.local or "", claimed, str(peer.bare)):
                    return stanza
            except Exception:
                log.exception("checking the stanza-id of a message for %s failed", owner)
        stanza = without_forged_ids(stanza, owner)
        if peer is None or not archivable(stanza):
            return stanza
        if self._queue_received and not self._has_prefs(owner):
            return with_stanza_id(stanza, owner, self._archive_soon(owner, peer, "in", stanza))
        try:
            archive_id = await self._archive(owner, peer, "in", stanza)
        except Exception as e:
            self._failed(e, f"a message for {owner}", Write(owner, peer, "in", stanza, _now_us()))
            return stanza
        return stanza if archive_id is None else with_stanza_id(stanza, owner, archive_id)

    def _failed(self, error: BaseException, what: str, write: Write | None = None) -> None:
        """An archive write failed; the message is delivered meanwhile.  The database being away
        (restarting, unreachable) is one warning a minute with the count, not a traceback per
        message, and the write waits in the backlog for the database to be back; anything else is
        a bug, keeps its traceback, and the message stays unarchived."""
        self.counters["failed"] += 1
        if not _storage_unavailable(error):
            log.error("archiving %s failed; it is delivered unarchived", what, exc_info=error)
            return
        if write is not None and self.cfg.outage_backlog > 0:
            if len(self.backlog) >= self.cfg.outage_backlog:
                self.backlog.popleft()
                self.counters["dropped"] += 1
            self.backlog.append(write)
        if self._once.allow("unavailable", time.monotonic()):
            log.warning("archive storage unavailable (%s: %s): messages are delivered and kept to be archived "
                        "once it is back (%d waiting, at most %d; %d dropped)", type(error).__name__, error,
                        len(self.backlog), self.cfg.outage_backlog, self.counters["dropped"])

    async def _write_backlog(self) -> None:
        """The writes the database missed, oldest first, each with the time it was made (so the
        archive keeps the order of the conversation); stops at the first that still fails."""
        written = 0
        while self.backlog:
            write = self.backlog[0]
            try:
                await self._archive(*write)
            except Exception as e:
                if _storage_unavailable(e):
                    break
                log.exception("archiving a message for %s late failed; it stays unarchived", write.owner)
            else:
                written += 1
                self.counters["late"] += 1
            self.backlog.popleft()
        if written:
            log.info("archive storage answers again: %d messages archived late, %d still waiting",
                     written, len(self.backlog))

    async def _wanted(self, owner: Jid, peer: Jid) -> bool:
        """The user's preferences (XEP-0441) for messages with ``peer``."""
        prefs = await self.store.get_prefs(owner.domain, owner.local or "") or Prefs(self.cfg.default_mode)
        verdict = decide(prefs, peer)
        if verdict is None:  # default 'roster', peer in neither list
            if peer.bare == owner:
                return True
            item = await self.host.storage.get_roster_item(owner.domain, owner.local or "", str(peer.bare))
            verdict = item is not None
        return verdict

    async def _archive(self, owner: Jid, peer: Jid, direction: str, stanza: Stanza,
                       at_us: int | None = None, archive_id: int | None = None, *,
                       check_prefs: bool = False) -> int | None:
        """Into ``owner``'s archive if its preferences want it: the archive id, or None.  ``at_us``:
        the message's time when it is archived late (the backlog), else now; ``archive_id``: the id
        the message was delivered with (tried first); ``check_prefs``: the preferences are read
        first (a write without them was refused)."""
        data = client_stanza(stanza).to_bytes()
        user, with_bare, with_resource = owner.local or "", str(peer.bare), peer.resource or ""
        given = archive_id if at_us is not None else None

        def new_id(attempt: int) -> tuple[int, int]:
            if at_us is None:
                return self.ids.next(_now_us(), _ID_RANDOM.getrandbits(RANDOM_BITS))
            if attempt == 0 and given is not None:
                return given, at_us
            return make_id(at_us, _ID_RANDOM.getrandbits(RANDOM_BITS)), at_us

        if self.cfg.default_mode == "always" and not check_prefs:
            # Most users set no preferences: archived at once unless they did.
            new, ts = new_id(0)
            if await self.store.insert(owner.domain, user, new, ts, with_bare, with_resource, direction,
                                       data, unless_prefs=True):
                self.counters["archived"] += 1
                return new
        if not await self._wanted(owner, peer):
            return None
        for attempt in range(ID_ATTEMPTS):
            new, ts = new_id(attempt)
            if await self.store.insert(owner.domain, user, new, ts, with_bare, with_resource, direction, data):
                self.counters["archived"] += 1
                return new
        raise RuntimeError(f"no free archive id for {owner} after {ID_ATTEMPTS} attempts")

    # -- queries --------------------------------------------------------------------------------------

    @staticmethod
    def _own(req: IqRequest) -> Jid:
        """The archive is the account's own: anyone else asking is refused."""
        if req.to.local is None or req.sender.bare != req.to:
            raise errors.Forbidden("an archive is only open to its own account")
        return req.to

    async def _query(self, req: IqRequest) -> ET.Element:
        owner = self._own(req)
        if req.stanza.type == "get":
            return query_form()
        max_page = self.cfg.max_page
        query = parse_query(req.payload, default_page=min(self.cfg.default_page, max_page), max_page=max_page)
        domain, user = owner.domain, owner.local or ""
        await self._written()  # what this node took before the query is in its result
        if query.referenced:
            found = await self.store.existing(domain, user, query.referenced)
            if len(found) < len(query.referenced):
                missing = sorted(set(query.referenced) - found)
                raise errors.ItemNotFound(f"not in the archive: {', '.join(map(str, missing[:5]))}")
        self.counters["queries"] += 1
        page = await self._page(domain, user, query)
        self._send_results(owner, req.sender, query, page)
        return fin_element(page)

    async def _page(self, domain: str, user: str, q: Query) -> Page:
        # One more than the page: whether the query is complete (max 0: whether anything matches).
        rows: list[Row] = await self.store.page(domain, user, q.filters, after=q.after, before=q.before,
                                                backward=q.backward, limit=q.max + 1)
        more = len(rows) > q.max
        rows = rows[:q.max]
        if q.backward:
            rows.reverse()
        if not more and q.after is None and q.before is None:
            count: int | None = len(rows)  # the page is the whole result
        elif self.cfg.count_limit > 0:
            count = await self.store.count(domain, user, q.filters, limit=self.cfg.count_limit)
        else:
            count = None
        return Page(rows, complete=not more, count=count)

    def _send_results(self, owner: Jid, to: Jid, q: Query, page: Page) -> None:
        """The page's messages to the querying resource, wherever in the region it is, before the
        iq result (same route, so they arrive first)."""
        record = self.host.table.lookup(to)
        if record is None:
            return  # the session is gone: nobody to send them to
        prefix = secrets.token_hex(4)
        for archive_id, ts, raw in (reversed(page.rows) if q.flip else page.rows):
            try:
                original = parse_stanza(raw).element
            except ValueError:
                log.error("archived message %s of %s does not parse; skipped", archive_id, owner)
                continue
            self.host.deliver(record, result_message(str(owner), str(to), q.queryid, archive_id, ts, original,
                                                     msg_id=f"{prefix}-{archive_id}"))

    async def _metadata(self, req: IqRequest) -> ET.Element:
        owner = self._own(req)
        if req.stanza.type != "get":
            raise errors.BadRequest("archive metadata is read with an iq of type get")
        await self._written()
        bounds = await self.store.bounds(owner.domain, owner.local or "")
        return metadata_element(*(bounds or (None, None)))

    async def _prefs(self, req: IqRequest) -> ET.Element:
        owner = self._own(req)
        domain, user = owner.domain, owner.local or ""
        if req.stanza.type == "get":
            return prefs_element(await self.store.get_prefs(domain, user) or Prefs(self.cfg.default_mode))
        prefs = parse_prefs(req.payload)
        await self.store.set_prefs(domain, user, prefs, _now_us())
        self.with_prefs.add((user, domain))
        await self._tell_members(f"{user}@{domain}")
        return prefs_element(prefs)

    async def _tell_members(self, user: str) -> None:
        """Have every other member of the region know that ``user`` has preferences, and wait for
        them (so the command's result means: applied to what any member of this region receives
        next); other regions learn it from their polls."""
        for member, e in (await self.host.request_members(PREFS_CALL, {"user": user}, MEMBER_TIMEOUT)).items():
            log.info("member %s did not confirm hearing of the archive preferences of %s: %s", member, user, e)

    def _prefs_call(self, _caller: str, args: dict[str, Any]) -> bool:
        user = args.get("user")
        if not isinstance(user, str) or len(user) > 3100 or "@" not in user:
            raise ValueError(f"{PREFS_CALL} needs a 'user'")
        local, _, domain = user.rpartition("@")
        self.with_prefs.add((local, domain))
        return True

    def _has_prefs(self, owner: Jid) -> bool:
        """Whether ``owner`` (bare) set archive preferences: its rows wait for the database."""
        return _key(owner) in self.with_prefs

    async def poll_prefs(self) -> None:
        """Learn the users who set preferences since the last poll, on any member of any region."""
        changed = await poll_changes(self._prefs_watch, self.store.prefs_changed, "archive preferences",
                                     self.counters, "prefs_")
        self.with_prefs.update(changed or ())

    # -- retention ------------------------------------------------------------------------------------

    async def clean_up(self, now_us: int | None = None) -> int:
        """Delete what is older than ``retention_days`` from every archive; how many went."""
        if self.cfg.retention_days <= 0:
            return 0
        cutoff = (now_us if now_us is not None else _now_us()) - self.cfg.retention_days * DAY_US
        deleted = await self.store.delete_older(cutoff)
        self.counters["cleaned"] += deleted
        if deleted:
            log.info("retention: %d archived messages older than %d days deleted", deleted, self.cfg.retention_days)
        return deleted

class MamCollector(Collector):
    """Prometheus view of the archive's activity on this member, read at scrape time."""

    def __init__(self, module: Mam) -> None:
        self.module = module

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily("meridian_mam_events", "Archive events on this member: messages archived, "
                                     "archiving failures (delivered, kept to be archived later when the database "
                                     "was away), queries answered, messages deleted by retention, messages "
                                     "archived late, writes dropped from a full backlog", labels=["event"])
        for event, value in self.module.counters.items():
            events.add_metric([event], value)
        yield events
        yield GaugeMetricFamily("meridian_mam_backlog", "Archive writes waiting for the database to answer again",
                                value=len(self.module.backlog))


def _what(write: Write) -> str:
    return f"a message {'sent by' if write.direction == 'out' else 'for'} {write.owner}"


def _storage_unavailable(error: BaseException) -> bool:
    """The database is not answering (refused, reset, restarting, timed out): not a bug here."""
    if isinstance(error, (OSError, TimeoutError, ConnectionError)):
        return True
    return type(error).__module__.split(".")[0] in ("asyncpg", "sqlite3", "aiosqlite")


def _key(owner: Jid) -> Key:
    return owner.local or "", owner.domain
