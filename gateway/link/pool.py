"""The inter-region link over asyncio: a :class:`LinkServer` for the regions that dial us and one
:class:`RegionPool` per region we dial (MongooseIM ``mod_global_distrib``'s connection pools).

Thin adapters over :class:`~gateway.link.protocol.RegionLink`: bytes read are fed to the core, its
events handled here, its bytes written; the clock is the loop's.  Stanzas flow from the dialling
side to the listening side, so a region pair uses two pools, one each way.

Order (per sender and recipient) over several connections
---------------------------------------------------------
Each stanza goes to a *lane*, ``crc32(from NUL to) % lanes`` — a stable hash of the pair — and every
lane is a FIFO.  A lane is bound to one connection while it has stanzas in flight there (sent, not
acked), so all of a pair's in-flight stanzas share one TCP stream and its sequence numbers.  Only
when they are all acked — the receiver has already handed them over — may the lane move to another
connection (the hash picks among the live ones, so it moves when connections come or go).

When a connection dies, its unacked stanzas go back to the *front* of their lanes, in their original
order, ahead of anything the lane still holds; the lane is unbound and its next send, on another
connection, starts with them.  A stanza that had in fact arrived (its ACK was lost) is dropped by the
receiver's id window (:class:`~gateway.link.dedup.RecentIds`), so for each stanza the first arrival
counts, and first arrivals come in order: on every connection the lane's stanzas follow each other,
and a resend carries every stanza that a dead connection might still deliver late.  The id window
must exceed what a peer can have in flight (``connections × max_unacked``).

Bounded
-------
A pool holds at most ``queue_max`` stanzas waiting for a connection (:class:`QueueFull`, i.e.
resource-constraint, beyond that; resends of accepted stanzas may briefly exceed it) and
``max_unacked`` in flight per connection.  A send to a region without a live connection waits at
most ``connect_timeout`` measured from when the region went down, then gets :class:`LinkDown`
(remote-server-timeout), so callers fail fast during an outage instead of piling up.  Stanzas still
queued after ``down_timeout`` without any connection are handed to ``on_undeliverable`` to bounce.

With ``hold`` (seconds, > 0) an outage is ridden out instead: while the region has been without a
connection for less than ``hold``, sends are queued at once (still bounded by ``queue_max``) and go
out in order when a connection is back — a gateway restarting, a short partition: the recipient
online over there gets them live, not as an error to the sender.  What is still queued when the
outage reaches ``hold`` goes to ``on_undeliverable``, and sends after that get :class:`LinkDown` at
once, until a connection is up again.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential, wait_random

from .connection import LinkConnection, LinkStats, parse_endpoint, run_timers
from .errors import LinkDown, LinkError, QueueFull
from .frames import MAX_FRAME, check_stanza_fields
from .protocol import Acked, Closed, LinkEvent, Ready, RegionLink, StanzaReceived
from .server import LinkServer, StanzaCallback

__all__ = ["LinkServer", "RegionPool", "LinkStats", "OutgoingStanza", "LinkDown", "QueueFull", "LinkError",
           "StanzaCallback", "UndeliverableCallback", "AckedCallback", "lane_of", "parse_endpoint"]

log = logging.getLogger("meridian.gateway.link")


@dataclass(frozen=True, slots=True)
class OutgoingStanza:
    """A stanza accepted by :meth:`RegionPool.send` and not yet acked by the other region."""

    id: str
    origin: str
    ttl: int
    data: bytes
    from_: str | None
    to: str | None
    meta: str | None = None


UndeliverableCallback = Callable[[OutgoingStanza, LinkError], None]
"""Called for each accepted stanza the pool gives up on (outage beyond ``down_timeout``, stop)."""

AckedCallback = Callable[[list[str]], None]
"""Called with the ids of stanzas the other region acknowledged (it holds them now): a sender that
keeps a copy until then (a node's hand-off to its gateway) may let it go."""


def lane_of(from_: str | None, to: str | None, lanes: int) -> int:
    """The lane of a (sender, recipient) pair: stable across processes (unlike ``hash``)."""
    return zlib.crc32(f"{from_ or ''}\x00{to or ''}".encode()) % lanes


# -- the dialling side ------------------------------------------------------------------------------


class _Lane:
    __slots__ = ("index", "pending", "conn", "inflight")

    def __init__(self, index: int) -> None:
        self.index = index
        self.pending: deque[OutgoingStanza] = deque()
        self.conn: LinkConnection | None = None  # bound while it has stanzas in flight there
        self.inflight = 0


class _DialError(Exception):
    """One connection attempt failed (retried with backoff)."""


class RegionPool:
    """Connections to one remote region: ``connections_per_endpoint`` to each of its endpoints."""

    def __init__(self, local_region: str, gateway_name: str, region: str, client_tls: ssl.SSLContext, *,
                 endpoints: Iterable[str] = (), connections_per_endpoint: int = 2, queue_max: int = 10_000,
                 connect_timeout: float = 2.0, handshake_timeout: float = 5.0, down_timeout: float = 30.0,
                 ping_interval: float = 2.0, ping_timeout: float = 10.0, max_unacked: int = 1024,
                 backoff_initial: float = 0.1, backoff_max: float = 10.0, lanes: int = 256,
                 server_hostname: str | None = None, on_undeliverable: UndeliverableCallback | None = None,
                 max_frame: int = MAX_FRAME, on_acked: AckedCallback | None = None, hold: float = 0.0) -> None:
        self.local_region, self.gateway_name, self.region = local_region, gateway_name, region
        self.client_tls = client_tls
        self.connections_per_endpoint, self.queue_max = connections_per_endpoint, queue_max
        self.connect_timeout, self.handshake_timeout = connect_timeout, handshake_timeout
        self.down_timeout = down_timeout
        self.hold = hold  # > 0: ride out an outage this long (queue), instead of the connect_timeout wait
        self.ping_interval, self.ping_timeout, self.max_unacked = ping_interval, ping_timeout, max_unacked
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.server_hostname, self.on_undeliverable, self.max_frame = server_hostname, on_undeliverable, max_frame
        self.on_acked = on_acked
        self._endpoints: list[str] = []
        self._slots: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._conns: set[LinkConnection] = set()
        self._live: dict[tuple[str, int], LinkConnection] = {}
        self._live_list: list[LinkConnection] = []  # sorted by slot: the hash picks among these
        self._lanes = [_Lane(i) for i in range(lanes)]
        self._waiting: dict[int, None] = {}  # lanes with pending stanzas, insertion-ordered
        self._depth = 0
        self._up = asyncio.Event()
        self._down_since: float | None = None
        self._dirty: set[LinkConnection] = set()
        self._flush_scheduled = False
        self._started = self._stopping = False
        self._timer: asyncio.Task[None] | None = None
        self._stats = LinkStats(region)
        self.set_endpoints(endpoints)

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._started = True
        self._down_since = loop.time()
        for key in self._wanted_slots():
            self._start_slot(key)
        self._timer = loop.create_task(run_timers(min(self.ping_interval, self.ping_timeout) / 4,
                                             lambda: self._conns, self._check_outage))

    async def stop(self) -> None:
        """Close every connection; what is still queued or unacked goes to ``on_undeliverable``.

        Call :meth:`drain` first for a clean shutdown: an unacked stanza may have arrived (its ACK
        lost), so handing it back can bounce a delivered stanza.  A stopped pool is not restarted.
        """
        self._stopping = True
        tasks = list(self._slots.values())
        if self._timer is not None:
            tasks.append(self._timer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._slots.clear()
        for conn in list(self._conns):
            self.handle(conn, conn.core.close("shutting down"))
        self._fail_queued(LinkDown(f"link to region {self.region} shut down"))

    def set_endpoints(self, endpoints: Iterable[str]) -> None:
        """The region's advertised ``host:port`` list (from the mapping store), applied at once."""
        new = list(dict.fromkeys(endpoints))
        for spec in new:
            parse_endpoint(spec)
        self._endpoints = new
        if not self._started or self._stopping:
            return
        wanted = set(self._wanted_slots())
        for key in list(self._slots):
            if key not in wanted:
                self._slots.pop(key).cancel()
                conn = self._live.get(key)
                if conn is not None:
                    self.handle(conn, conn.core.close(f"endpoint {key[0]} no longer advertised"))
        for key in sorted(wanted - set(self._slots)):
            self._start_slot(key)
        if not self._live and new and self._down_since is not None:
            self._down_since = asyncio.get_running_loop().time()  # new endpoints: give them a chance

    def _wanted_slots(self) -> list[tuple[str, int]]:
        return [(e, i) for e in self._endpoints for i in range(self.connections_per_endpoint)]

    def _start_slot(self, key: tuple[str, int]) -> None:
        self._slots[key] = asyncio.get_running_loop().create_task(self._slot_loop(key))

    # -- sending --------------------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return bool(self._live)

    async def wait_up(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError:
            return False
        return True

    async def send(self, id: str, origin: str, ttl: int, data: bytes, from_: str | None = None,
                   to: str | None = None, meta: str | None = None) -> None:
        """Accept a stanza for the region, or raise :class:`QueueFull` / :class:`LinkDown` at once.

        Without a live connection: queued at once while the outage is shorter than ``hold``; with
        no ``hold``, waits at most ``connect_timeout`` from when the region went down.  Acceptance
        is not delivery: the stanza is sent, resent after a connection loss, or handed to
        ``on_undeliverable``.
        """
        if not self._live:
            check_stanza_fields(id, origin, ttl, data, from_, to, meta)  # a bad stanza fails before the wait
            if self._holding():
                self._enqueue(id, origin, ttl, data, from_, to, meta)
                return
            if self.hold <= 0:  # with a hold, an outage past it is refused at once
                await self._wait_for_link()
        self.send_nowait(id, origin, ttl, data, from_, to, meta)

    def _holding(self) -> bool:
        """No connection, and an outage short enough to queue for (``hold``)."""
        if self.hold <= 0 or not self._endpoints or self._stopping or self._down_since is None:
            return False
        return asyncio.get_running_loop().time() - self._down_since < self.hold

    def send_nowait(self, id: str, origin: str, ttl: int, data: bytes, from_: str | None = None,
                    to: str | None = None, meta: str | None = None) -> None:
        """:meth:`send` without the wait: :class:`LinkDown` at once when no connection is up."""
        if self._stopping or not self._live:
            self._stats.link_down_errors += 1
            # Refused past the outage ``hold`` rides out, or after the ``connect_timeout`` wait.
            limit = "hold_while_down" if self.hold > 0 else "connect_timeout"
            if self._stopping or not self._endpoints:
                limit = ""
            raise LinkDown(f"no link to region {self.region}" + (f" ({self._stats.last_error})"
                                                                   if self._stats.last_error else ""), limit=limit)
        self._enqueue(id, origin, ttl, data, from_, to, meta)

    def _enqueue(self, id: str, origin: str, ttl: int, data: bytes, from_: str | None, to: str | None,
                 meta: str | None) -> None:
        if self._depth >= self.queue_max:
            self._stats.queue_full += 1
            raise QueueFull(f"{self._depth} stanzas already queued for region {self.region}", limit="queue_max")
        check_stanza_fields(id, origin, ttl, data, from_, to, meta)
        lane = self._lanes[lane_of(from_, to, len(self._lanes))]
        lane.pending.append(OutgoingStanza(id, origin, ttl, data, from_, to, meta))
        self._depth += 1
        self._pump(lane)

    async def _wait_for_link(self) -> None:
        loop = asyncio.get_running_loop()
        since = self._down_since if self._down_since is not None else loop.time()
        remaining = self.connect_timeout - (loop.time() - since)
        if self._endpoints and remaining > 0 and not self._stopping:
            await self.wait_up(remaining)

    async def drain(self, timeout: float) -> bool:
        """Wait until everything accepted so far is acked (True) or ``timeout`` passes (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._depth or any(c.lanes for c in self._live_list):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def _pump(self, lane: _Lane) -> None:
        """Move a lane's stanzas onto its connection while the window and the transport allow."""
        pending = lane.pending
        while pending:
            conn = lane.conn
            if conn is None:
                if not self._live_list:
                    break
                conn = self._live_list[lane.index % len(self._live_list)]
            if conn.paused or conn.core.window <= 0:
                break
            s = pending.popleft()
            seq = conn.core.send_stanza(s.id, s.origin, s.ttl, s.data, s.from_, s.to, s.meta)
            conn.lanes.append((seq, lane.index, s.id))
            lane.conn = conn
            lane.inflight += 1
            self._depth -= 1
            self._stats.sent += 1
            self._dirty.add(conn)
        if pending:
            self._waiting[lane.index] = None
        else:
            self._waiting.pop(lane.index, None)
        if self._dirty and not self._flush_scheduled:
            self._flush_scheduled = True  # one write per loop turn and connection, not one per stanza
            asyncio.get_running_loop().call_soon(self._flush)

    def _pump_waiting(self) -> None:
        for index in list(self._waiting):
            self._pump(self._lanes[index])

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for conn in dirty:
            conn.flush()

    # -- connections ----------------------------------------------------------------------------------

    async def _slot_loop(self, key: tuple[str, int]) -> None:
        """Keep one connection to ``key``'s endpoint: dial with capped exponential backoff, redial."""
        endpoint = key[0]
        host, port = parse_endpoint(endpoint)
        while True:
            conn: LinkConnection | None = None
            retrying = AsyncRetrying(
                wait=wait_exponential(multiplier=self.backoff_initial, min=self.backoff_initial,
                                      max=self.backoff_max) + wait_random(0, self.backoff_initial),
                retry=retry_if_exception_type(_DialError), before_sleep=self._dial_failed, reraise=True)
            async for attempt in retrying:
                with attempt:
                    conn = await self._dial(key, host, port)
            assert conn is not None
            try:
                await conn.done
            finally:
                if not conn.core.closed:  # cancelled: the endpoint was withdrawn or the pool stops
                    self.handle(conn, conn.core.close("connection slot stopped"))
            await asyncio.sleep(self.backoff_initial)  # never redial in a tight loop

    async def _dial(self, key: tuple[str, int], host: str, port: int) -> LinkConnection:
        loop = asyncio.get_running_loop()
        core = RegionLink(self.local_region, self.gateway_name, loop.time(), expect_region=self.region,
                          ping_interval=self.ping_interval, ping_timeout=self.ping_timeout,
                          max_unacked=self.max_unacked, max_frame=self.max_frame)
        conn = LinkConnection(core, self, key)
        try:
            async with asyncio.timeout(self.handshake_timeout):
                await loop.create_connection(lambda: conn, host, port, ssl=self.client_tls,
                                             server_hostname=self.server_hostname or host,
                                             ssl_handshake_timeout=self.handshake_timeout)
                why = await conn.ready
        except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
            self.handle(conn, conn.core.close(f"dial failed: {e}"))
            raise _DialError(f"{key[0]}: {e or type(e).__name__}") from e
        except asyncio.CancelledError:
            self.handle(conn, conn.core.close("dial cancelled"))
            raise
        if why is not None:
            raise _DialError(f"{key[0]}: {why}")
        return conn

    def _dial_failed(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        self._stats.last_error = str(exc)
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        level = logging.WARNING if state.attempt_number == 1 else logging.DEBUG
        log.log(level, "region %s: %s; retrying in %.2fs (attempt %d)", self.region, exc, wait, state.attempt_number)

    def connected(self, conn: LinkConnection) -> None:
        self._conns.add(conn)
        if self._stopping:
            self.handle(conn, conn.core.close("shutting down"))

    def writable(self, conn: LinkConnection) -> None:
        self._pump_waiting()

    def handle(self, conn: LinkConnection, events: list[LinkEvent]) -> None:
        for event in events:
            if isinstance(event, Acked):
                self._acked(conn, event.seq)
            elif isinstance(event, Ready):
                self._ready(conn)
            elif isinstance(event, Closed):
                self._closed(conn, event)
            elif isinstance(event, StanzaReceived):
                self.handle(conn, conn.core.refuse("stanzas flow from the dialling gateway only"))
        conn.flush()

    def _ready(self, conn: LinkConnection) -> None:
        assert conn.key is not None
        if not conn.ready.done():
            conn.ready.set_result(None)
        if self._stopping:
            return
        if not self._live:
            self._stats.link_up_events += 1
            self._stats.last_error = None
            self._stats.note("up", f"{conn.core.peer_gateway} at {conn.key[0]}")
            log.info("link to region %s up (%s at %s)", self.region, conn.core.peer_gateway, conn.key[0])
            self._up.set()
            self._down_since = None
        self._live[conn.key] = conn
        self._live_list = [self._live[k] for k in sorted(self._live)]
        self._pump_waiting()

    def _acked(self, conn: LinkConnection, seq: int) -> None:
        lanes, pool_lanes = conn.lanes, self._lanes
        n = 0
        ids: list[str] = []
        while lanes and lanes[0][0] <= seq:
            _, index, id = lanes.popleft()
            lane = pool_lanes[index]
            lane.inflight -= 1
            if lane.inflight == 0:
                lane.conn = None  # all acked: the lane may follow the hash to another connection
            ids.append(id)
            n += 1
        self._stats.acked += n
        if ids and self.on_acked is not None:
            try:
                self.on_acked(ids)
            except Exception:
                log.exception("on_acked failed")
        if self._waiting:
            self._pump_waiting()

    def _closed(self, conn: LinkConnection, event: Closed) -> None:
        if conn.dead:
            return
        conn.dead = True
        self._conns.discard(conn)
        if not conn.ready.done():
            conn.ready.set_result(event.reason)
        if conn.key is not None and self._live.get(conn.key) is conn:
            del self._live[conn.key]
            self._live_list = [self._live[k] for k in sorted(self._live)]
            (log.warning if event.refused else log.info)("link to region %s at %s closed: %s",
                                                         self.region, conn.key[0], event.reason)
            if not self._live:
                self._stats.link_down_events += 1
                self._stats.last_error = event.reason
                self._stats.note("down", event.reason)
                (log.info if self._stopping else log.warning)("link to region %s down: %s", self.region, event.reason)
                self._up.clear()
                self._down_since = asyncio.get_running_loop().time()
        self._requeue(conn)
        self._dirty.discard(conn)
        conn.close()
        if not self._stopping:
            self._pump_waiting()

    def _requeue(self, conn: LinkConnection) -> None:
        """Put the dead connection's unacked stanzas back at the front of their lanes, in order."""
        unacked = conn.core.unacked()
        if not unacked:
            return
        by_lane: dict[int, list[OutgoingStanza]] = {}
        for s, (seq, index, _) in zip(unacked, conn.lanes, strict=True):
            assert s.seq == seq
            by_lane.setdefault(index, []).append(OutgoingStanza(s.id, s.origin, s.ttl, s.data, s.from_, s.to,
                                                                s.meta))
        conn.lanes.clear()
        for index, items in by_lane.items():
            lane = self._lanes[index]
            assert lane.conn is conn and lane.inflight == len(items)
            lane.pending.extendleft(reversed(items))
            lane.conn, lane.inflight = None, 0
            self._waiting[index] = None
        self._depth += len(unacked)
        self._stats.resent += len(unacked)
        log.info("region %s: %d unacked stanzas queued again for another connection", self.region, len(unacked))

    def _check_outage(self) -> None:
        """Give up on queued stanzas when the region has had no connection for ``down_timeout``."""
        if self._live or not self._depth or self._down_since is None:
            return
        down_for = asyncio.get_running_loop().time() - self._down_since
        if down_for >= (self.hold or self.down_timeout):
            self._fail_queued(LinkDown(f"no link to region {self.region} for {down_for:.0f}s",
                                       limit="hold_while_down" if self.hold else ""))

    def _fail_queued(self, error: LinkError) -> None:
        failed = 0
        for index in list(self._waiting):
            lane = self._lanes[index]
            while lane.pending:
                s = lane.pending.popleft()
                failed += 1
                if self.on_undeliverable is not None:
                    try:
                        self.on_undeliverable(s, error)
                    except Exception:
                        log.exception("on_undeliverable failed for stanza %s", s.id)
        self._waiting.clear()
        self._depth = 0
        if failed:
            self._stats.undeliverable += failed
            log.warning("region %s: %d queued stanzas undeliverable: %s", self.region, failed, error)

    # -- state for metrics and the dashboard ------------------------------------------------------------

    def stats(self) -> LinkStats:
        s = self._stats
        s.up = bool(self._live)
        s.connections_up = len(self._live)
        s.connections_wanted = len(self._endpoints) * self.connections_per_endpoint
        s.queue_depth = self._depth
        s.in_flight = sum(len(c.lanes) for c in self._live_list)
        rtts = [c.core.rtt for c in self._live_list if c.core.rtt is not None]
        if rtts:
            s.last_rtt = sum(rtts) / len(rtts)
        return s
