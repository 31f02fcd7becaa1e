"""Cluster member: links to the other members of the region (asyncio adapter over ClusterLink).

Full mesh: each member connects to the discovered members whose name sorts after its own and
accepts connections from the others, so every pair has exactly one link and no join needs a
cluster-wide lock (CETS's global join lock stalled MongooseIM at seven nodes: https://github.com/esl/MongooseIM/issues/4758).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..cluster.discovery import Discovery, Peer
from ..cluster.link import (
    Acked,
    CallReceived,
    Closed,
    ClusterLink,
    DumpReceived,
    Joined,
    Knocked,
    LinkConfig,
    LinkEvent,
    OpReceived,
    StanzaArrived,
)
from ..cluster.table import Op, Record, ReplicatedTable

__all__ = ["ClusterMember", "MemberHooks"]

log = logging.getLogger("meridian.cluster")


@dataclass
class MemberHooks:
    """What the node does on cluster events (filled by the wiring)."""

    stanza: Callable[[dict[str, Any], bytes], None] = lambda env, data: None
    call: Callable[[str, dict[str, Any]], None] = lambda name, args: None
    member_down: Callable[[str, list[Record], bool], None] = lambda node, records, leader: None
    # A member's dump of one table was merged (on every join, first or after a partition): its
    # records as they now stand here.  E.g. to tell local contacts that its sessions are back,
    # after member_down told them they had gone.
    merged: Callable[[str, str, list[Record]], None] = lambda node, table, records: None
    # Stanzas sent with ``keep`` to a member that went down before it read them (oldest first),
    # after its records were dropped: nobody got them, so they may be routed again.
    unread: Callable[[str, list[tuple[dict[str, Any], bytes]]], None] = lambda node, stanzas: None


class LinkConnection(asyncio.Protocol):
    def __init__(self, member: ClusterMember, outgoing: str | None, *, knock: bool = False) -> None:
        self.member = member
        self.outgoing = outgoing
        self.knock = knock  # only say we are here, then close (see ClusterMember._knock)
        self.core = ClusterLink(member.link_config, time.monotonic(), node_num=member.node_num, knock=knock)
        self.transport: asyncio.Transport | None = None
        self.joined = False
        self.peer: str | None = None
        self.sent_seq = 0
        self.acked_seq = 0
        self.ack_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.tables_seen: set[str] = set()
        self.leaving = False  # the peer said it is stopping: its close is no failure
        # Our dial's handshake is done, but the member we dialled has not accepted us yet (it may
        # still refuse: a duplicate node name): not joined until it says so (see ClusterMember.handle).
        self.pending: Joined | None = None
        self._flush_scheduled = False
        self.remote = "?"  # host:port of the other end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and len(peername) >= 2:
            self.remote = f"{peername[0]}:{peername[1]}"
        if self.knock:
            self.flush()
            transport.close()  # after what was written: the HELLO
            return
        self.member.connections.add(self)
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.knock:
            return
        events = self.core.receive_data(data, time.monotonic())
        read = self.core.take_read()
        if read and self.transport is not None and not self.transport.is_closing():
            self.transport.write(read)  # before the stanzas are handed on (see ClusterLink)
        self.member.handle(self, events)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.knock:
            return
        self.member.connections.discard(self)
        self.member.handle(self, self.core.receive_data(b"", time.monotonic()))

    def flush(self) -> None:
        self._flush_scheduled = False
        data = self.core.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def flush_soon(self) -> None:
        """Write at the end of this loop turn: a burst of stanzas becomes one TLS write, not one each."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def acked(self, seq: int) -> None:
        """The peer has applied our ops up to ``seq``: release the writers waiting for it."""
        self.acked_seq = max(self.acked_seq, seq)
        still = []
        for waited, fut in self.ack_waiters:
            if waited > self.acked_seq:
                still.append((waited, fut))
            elif not fut.done():
                fut.set_result(None)
        self.ack_waiters = still

    def close(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.close()
        for _, fut in self.ack_waiters:
            if not fut.done():
                fut.set_result(None)
        self.ack_waiters.clear()


LEAVING = "member.leaving"  # CALL sent to every member before a graceful stop
KNOCK_INTERVAL = 1.0  # seconds: knocks bring a discovery refresh forward at most this often
WELCOME = "member.welcome"  # CALL: the member that accepted a link tells the one that dialled


@dataclass
class ClusterMember:
    cluster: str
    node: str
    secret: bytes
    address: str  # advertised host:port
    listen_host: str
    listen_port: int
    discovery: Discovery
    server_tls: ssl.SSLContext
    client_tls: ssl.SSLContext
    tables: dict[str, ReplicatedTable]
    hooks: MemberHooks = field(default_factory=MemberHooks)
    refresh_interval: float = 5.0
    ping_interval: float = 1.0
    ping_timeout: float = 5.0
    incarnation: str = field(default_factory=lambda: f"{time.time():.6f}")
    links: dict[str, LinkConnection] = field(default_factory=dict)
    connections: set[LinkConnection] = field(default_factory=set)
    discovered: list[Peer] = field(default_factory=list)
    discovery_works: bool = False
    refused: dict[str, tuple[float, str]] = field(default_factory=dict)  # peer -> (when, why)
    # Peers whose tables were merged here at least once (readiness: one that has gone since is not
    # one to wait for, although its discovery row stays fresh for a while).
    merged_peers: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._server: asyncio.Server | None = None
        self.stopping = False
        self.unread_rerouted = 0  # kept stanzas a member went down without reading
        self._tasks: list[asyncio.Task[None]] = []
        self._connecting: set[str] = set()
        self._wake = asyncio.Event()  # a knock: refresh discovery now
        self._woken_at = 0.0
        self._wake_pending = False
        for table in self.tables.values():
            table.me = self.node

    @property
    def link_config(self) -> LinkConfig:
        return LinkConfig(self.cluster, self.node, self.incarnation, self.secret, self.address,
                          ping_interval=self.ping_interval, ping_timeout=self.ping_timeout)

    @property
    def node_num(self) -> int | None:
        return self.discovery.node_num

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: LinkConnection(self, None), self.listen_host,
                                                self.listen_port, ssl=self.server_tls)
        self._tasks.append(loop.create_task(self._discovery_loop()))
        self._tasks.append(loop.create_task(self._timer_loop()))

    async def stop(self) -> None:
        self.stopping = True  # our own links closing now are not the other members going down
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # let them unwind (the discovery loop hands its refresh to discovery.close)
            await asyncio.wait(self._tasks, timeout=2.0)
        for conn in list(self.links.values()):
            conn.core.send_call(LEAVING, {})  # a member that does not know it ignores the call
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.discovery.close()

    # -- replication ----------------------------------------------------------------------------

    def broadcast(self, op: Op) -> None:
        for conn in self.links.values():
            conn.sent_seq = conn.core.send_op(op)
            conn.flush_soon()

    async def wait_acks(self, timeout: float | None = None) -> None:
        """Return when every joined member has acked what we sent so far (or is gone)."""
        loop = asyncio.get_running_loop()
        futures = []
        for conn in self.links.values():
            if conn.acked_seq < conn.sent_seq:
                fut: asyncio.Future[None] = loop.create_future()
                conn.ack_waiters.append((conn.sent_seq, fut))
                futures.append(fut)
        if futures:
            await asyncio.wait(futures, timeout=timeout or self.ping_timeout)

    def send_stanza(self, node: str, envelope: dict[str, Any], data: bytes, *, keep: bool = False) -> bool:
        """Queue a stanza for ``node``; ``keep``: routed again if the member goes down unread
        (:attr:`MemberHooks.unread`).  False when there is no link to it."""
        conn = self.links.get(node)
        if conn is None:
            return False
        conn.core.send_stanza(envelope, data, keep=keep)
        conn.flush_soon()
        return True

    def call(self, node: str, name: str, args: dict[str, Any]) -> bool:
        conn = self.links.get(node)
        if conn is None:
            return False
        conn.core.send_call(name, args)
        conn.flush_soon()
        return True

    # -- events from links ----------------------------------------------------------------------

    def handle(self, conn: LinkConnection, events: list[LinkEvent]) -> None:
        for event in events:
            if isinstance(event, Knocked):
                self._knocked(event.node)
                continue
            if conn.pending is not None and not isinstance(event, Closed):
                # The member we dialled accepted us (its WELCOME, or what it sends once it has).
                pending, conn.pending = conn.pending, None
                self._joined(conn, pending)
            if isinstance(event, Joined):
                if conn.outgoing is not None:
                    # Dialled by us: the handshake proves the peer, but the peer decides last (it may
                    # refuse us, e.g. as a duplicate of a member it has).  Until it has accepted, we
                    # are not joined: a refused newcomer never counts the peer among its members,
                    # sends it nothing and takes nothing of it for a member going down.
                    conn.pending = event
                else:
                    self._joined(conn, event)
            elif isinstance(event, Closed):
                self._closed(conn, event)
            elif not conn.joined:
                continue  # refused or replaced: nothing it sends may touch our tables
            elif isinstance(event, OpReceived):
                table = self.tables.get(event.op.table)
                if table is not None and event.op.owner == conn.peer:
                    table.apply(event.op)
            elif isinstance(event, Acked):
                conn.acked(event.seq)
            elif isinstance(event, DumpReceived):
                conn.tables_seen.add(event.table)
                table = self.tables.get(event.table)
                if table is not None and conn.peer is not None:
                    table.merge(conn.peer, event.records, first=event.first, last=event.last)
                    if event.last:
                        self.hooks.merged(conn.peer, table.name, table.owned_by(conn.peer))
                if conn.peer is not None and event.last:
                    self.merged_peers.add(conn.peer)
            elif isinstance(event, StanzaArrived):
                self.hooks.stanza(event.envelope, event.data)
            elif isinstance(event, CallReceived):
                if event.name == LEAVING:
                    conn.leaving = True
                elif event.name == WELCOME:
                    pass  # accepted (handled above)
                else:
                    self.hooks.call(event.name, event.args)
        conn.flush()

    def _joined(self, conn: LinkConnection, event: Joined) -> None:
        old = self.links.get(event.node)
        if old is not None and old is not conn:
            alive = time.monotonic() - old.core.last_seen <= self.ping_timeout
            if alive and event.incarnation != old.core.peer_incarnation:
                # The member we know under this name is alive (by the links' own rule: it has not
                # been silent for ping_timeout) and the newcomer is another process: a second one
                # started with the same node name.  Refuse it rather than let it take over.  A
                # member that merely stalled (GC pause, busy host) for a few ping intervals is still
                # alive; a restart whose old link is half-open waits at most ping_timeout for it.
                # The same process coming back (its side gave the old link up first) is let in.
                reason = (f"duplicate node name {event.node!r}: a member of that name is already joined "
                          f"(incarnation {old.core.peer_incarnation})")
                self.handle(conn, conn.core.refuse(reason))
                return
            if event.incarnation == old.core.peer_incarnation:
                # Same process, new link: it was never down, so no member-down cleanup (and none of
                # its side effects); the dump it sends now makes its records here exact again.
                log.info("%s is back on a new link (same incarnation); dropping the old one", event.node)
                old.joined = False
            else:
                log.info("%s reconnected (incarnation %s); replacing its old link", event.node, event.incarnation)
                self._down(old, "replaced by a new link")
            old.close()
        conn.joined = True
        conn.peer = event.node
        self.links[event.node] = conn
        self.refused.pop(event.node, None)
        if conn.outgoing is None:
            conn.core.send_call(WELCOME, {})  # the member that dialled us is joined from now on
        for table in self.tables.values():
            conn.core.send_dump(table.name, table.dump())
        log.info("joined %s (%s)", event.node, event.address or "incoming")

    def _closed(self, conn: LinkConnection, event: Closed) -> None:
        # A stranger refused at HELLO is named by what it claimed, else by its address.
        peer = conn.peer or conn.core.peer or conn.outgoing or conn.core.claimed or conn.remote
        if event.refused:
            self.refused[peer] = (time.monotonic(), event.reason)
            log.warning("cluster link with %s (%s) refused: %s", peer, conn.remote, event.reason)
        if conn.joined:
            if conn.leaving:
                log.info("cluster member %s left", peer)
            else:
                log.warning("cluster member %s is down: %s", peer, event.reason)
            self._down(conn, event.reason)
        conn.close()

    def _down(self, conn: LinkConnection, reason: str) -> None:
        if not conn.joined or conn.peer is None:
            return
        conn.joined = False
        peer = conn.peer
        if self.links.get(peer) is conn:
            del self.links[peer]
        # The surviving member with the smallest name does the side effects, once (not per survivor);
        # a member that is stopping survives nobody: it only forgets their records.
        leader = min([self.node, *self.links]) == self.node and not self.stopping
        records: list[Record] = []
        for table in self.tables.values():
            records += table.drop_owner(peer)
        self.hooks.member_down(peer, records, leader)
        unread = conn.core.unconfirmed()
        if unread:
            self.unread_rerouted += len(unread)
            log.warning("%d stanzas sent to %s were never read there: routing them again", len(unread), peer)
            self.hooks.unread(peer, unread)

    # -- discovery and timers -------------------------------------------------------------------

    async def _discovery_loop(self) -> None:
        failing: str | None = None  # the kind of error of the current failure, logged once
        while True:
            self._wake.clear()  # a knock from now on brings the next refresh forward
            try:
                self.discovered = await self.discovery.refresh()
                if not self.discovery_works:
                    log.info("discovery works: %d members known", len(self.discovered))
                self.discovery_works = True
                failing = None
            except Exception as e:  # the database may be down: keep the links we have, retry
                # Logged when discovery starts failing (at start too: a database down from the
                # beginning is the case the operator most needs to see) and when the error changes.
                if failing != e.__class__.__name__:
                    log.warning("discovery failed: %s: %s; keeping the links we have, retrying every %.1fs",
                                e.__class__.__name__, e, self.refresh_interval)
                failing = e.__class__.__name__
                self.discovery_works = False
            loop = asyncio.get_running_loop()
            for peer in self.discovered:
                if peer.node in self.links or self._dialling(peer.node):
                    continue
                if peer.node > self.node:
                    loop.create_task(self._connect(peer))
                elif peer.node < self.node and peer.node not in self.refused:
                    loop.create_task(self._knock(peer))  # it dials us: tell it we are here
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refresh_interval)

    def _dialling(self, node: str) -> bool:
        """A link to ``node`` is under way: connecting, or connected and not yet accepted (our dial
        waits for its WELCOME).  A refresh in that window (a knock brings one forward) must not
        dial again: the member would take the second link as ours coming back and close the
        first, which we would count as the member going down."""
        return node in self._connecting or any(
            c.outgoing == node and not c.core.closed for c in self.connections)

    def _knocked(self, node: str) -> None:
        """A member whose name sorts after ours says it has started: look for it now, not at the
        next refresh — at most once a second (a knock is not authenticated): a knock within the
        second after the last one brings the refresh forward to the end of that second."""
        if node <= self.node or node in self.links:
            return
        log.debug("%s knocked: refreshing discovery", node)
        wait = self._woken_at + KNOCK_INTERVAL - time.monotonic()
        if wait <= 0:
            self._wake_now()
        elif not self._wake_pending:
            self._wake_pending = True
            asyncio.get_running_loop().call_later(wait, self._wake_now)

    def _wake_now(self) -> None:
        self._wake_pending = False
        self._woken_at = time.monotonic()
        self._wake.set()

    async def _knock(self, peer: Peer) -> None:
        self._connecting.add(peer.node)
        try:
            host, _, port = peer.address.rpartition(":")
            await asyncio.wait_for(asyncio.get_running_loop().create_connection(
                lambda: LinkConnection(self, peer.node, knock=True), host.strip("[]"), int(port),
                ssl=self.client_tls), timeout=self.ping_timeout)
        except (TimeoutError, OSError, ValueError, ssl.SSLError) as e:
            log.debug("cannot knock at %s at %s: %s", peer.node, peer.address, e)
        finally:
            self._connecting.discard(peer.node)

    async def _connect(self, peer: Peer) -> None:
        self._connecting.add(peer.node)
        try:
            host, _, port = peer.address.rpartition(":")
            await asyncio.wait_for(asyncio.get_running_loop().create_connection(
                lambda: LinkConnection(self, peer.node), host.strip("[]"), int(port), ssl=self.client_tls),
                timeout=self.ping_timeout)
        except (TimeoutError, OSError, ValueError, ssl.SSLError) as e:
            log.debug("cannot reach %s at %s: %s", peer.node, peer.address, e)
        finally:
            self._connecting.discard(peer.node)

    async def _timer_loop(self) -> None:
        step = min(self.ping_interval, 1.0) / 2
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            for conn in list(self.connections):
                self.handle(conn, conn.core.handle_timer(now))

    # -- status (MongooseIM's cets systemInfo / tableInfo) -----------------------------------

    def system_info(self) -> dict[str, Any]:
        discovered = sorted({p.node for p in self.discovered} | {self.node})
        joined = sorted([self.node, *self.links])
        ours = set(self.tables)
        unknown = {n: sorted(c.tables_seen - ours) for n, c in self.links.items() if c.tables_seen - ours}
        missing = {n: sorted(ours - c.tables_seen) for n, c in self.links.items() if ours - c.tables_seen}
        return {
            "joinedNodes": joined,
            "discoveredNodes": discovered,
            "availableNodes": joined,
            "unavailableNodes": sorted(set(discovered) - set(joined)),
            "discoveryWorks": self.discovery_works,
            "conflictNodes": sorted(self.recent_refusals()),
            "conflictTables": sorted(t.name for t in self.tables.values() if t.conflicts),
            "remoteNodesWithoutDisco": sorted(set(self.links) - set(discovered)),
            "remoteNodesWithUnknownTables": sorted(unknown),
            "remoteNodesWithMissingTables": sorted(missing),
            "remoteUnknownTables": sorted({t for ts in unknown.values() for t in ts}),
            "remoteMissingTables": sorted({t for ts in missing.values() for t in ts}),
        }

    def recent_refusals(self, window: float = 300.0) -> dict[str, str]:
        """Peers whose link was refused (either way) in the last ``window`` seconds, with the reason."""
        now = time.monotonic()
        return {peer: why for peer, (when, why) in self.refused.items() if now - when < window}

    def table_info(self) -> list[dict[str, Any]]:
        return [{"tableName": t.name, "size": len(t), "nodes": sorted([self.node, *self.links]),
                 "memory": t.memory(), "conflicts": t.conflicts} for t in self.tables.values()]
