"""The listening side of the inter-region link: gateways of other regions dial in and send stanzas.

Mutual TLS (:func:`gateway.link.tls.server_context`) admits only gateways with a certificate of the
inter-region CA; the HELLO names their region.  Each stanza is handed to ``on_stanza`` once: a resend
of a stanza whose ACK was lost is recognised by its id and dropped (see :mod:`gateway.link.pool` for
why that keeps per-pair order).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Collection, Iterable

from .connection import LinkConnection, LinkStats, parse_endpoint, run_timers
from .dedup import RecentIds
from .frames import MAX_FRAME
from .protocol import Acked, Closed, LinkEvent, Ready, RegionLink, StanzaReceived

__all__ = ["LinkServer", "StanzaCallback"]

log = logging.getLogger("meridian.gateway.link")

StanzaCallback = Callable[[StanzaReceived], "asyncio.Future[None] | None"]
"""Called by :class:`LinkServer` once per stanza (duplicates dropped), in arrival order; must not
block.  It returns None when it is done with the stanza, or a future that is done once the stanza
has been handed on: only then is the stanza acked to the sender, so a gateway killed in between
leaves it unacked and the sender resends it.  Per-pair order holds for whoever consumes the calls
in that order."""


class LinkServer:
    """Accepts mutual-TLS connections from the gateways of other regions and delivers their stanzas.

    Duplicates — resends of stanzas whose ACK was lost — are dropped by a window of the
    ``dedup_window`` most recent ids per peer region, kept across :meth:`stop`/:meth:`start` of the
    same server (not across processes: a restarted gateway may deliver a resent stanza twice).  The
    window must exceed what one region can have in flight: its ``connections × max_unacked``.
    ``regions``: if given, only these regions may connect.  A port of 0 listens on a free port, a
    new one at each :meth:`start`.
    """

    def __init__(self, local_region: str, gateway_name: str, server_tls: ssl.SSLContext,
                 on_stanza: StanzaCallback, *, endpoints: Iterable[str] = ("0.0.0.0:5555",),
                 regions: Collection[str] | None = None, ping_interval: float = 2.0, ping_timeout: float = 10.0,
                 dedup_window: int = 65536, max_frame: int = MAX_FRAME) -> None:
        self.local_region, self.gateway_name = local_region, gateway_name
        self.server_tls, self.on_stanza = server_tls, on_stanza
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.regions = set(regions) if regions is not None else None
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.dedup_window, self.max_frame = dedup_window, max_frame
        self.connections: set[LinkConnection] = set()
        self._peers: dict[str, set[LinkConnection]] = {}
        self._seen: dict[str, RecentIds] = {}
        self._acks_due: set[LinkConnection] = set()  # links with stanzas handed on since the last ACK
        self._stats: dict[str, LinkStats] = {}
        self._servers: list[asyncio.Server] = []
        self._timer: asyncio.Task[None] | None = None
        self._running = False

    @property
    def addresses(self) -> list[str]:
        """``host:port`` actually listened on (a port of 0 in ``endpoints`` picks a free one)."""
        out = []
        for server in self._servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return out

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._running = True
        for host, port in self.endpoints:
            self._servers.append(await loop.create_server(self._accept, host, port, ssl=self.server_tls,
                                                          ssl_handshake_timeout=self.ping_timeout))
        self._timer = loop.create_task(run_timers(min(self.ping_interval, self.ping_timeout) / 4,
                                             lambda: self.connections, lambda: None))
        log.info("inter-region link listening on %s", ", ".join(self.addresses))

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and reading, ack what is handed on within ``timeout``, then close.

        A stanza this gateway has received is handed on by it even while it stops (the caller
        drains its consumer), so its ACK must reach the sender before the connection closes: the
        sender would otherwise resend it to another gateway of this region, whose id window has
        never seen it, and the recipient would get it twice.  What is still held after
        ``timeout`` stays unacked — the sender's to resend (at least once, then)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._running = False
        for server in self._servers:
            server.close()
        conns = list(self.connections)
        for conn in conns:
            if conn.transport is not None:
                conn.transport.pause_reading()  # nothing new is taken on from here
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(c.core.held for c in conns if not c.dead) and loop.time() < deadline:
            await asyncio.sleep(0.005)
        self._acks_due.clear()  # acked just below, with every other link's
        for conn in conns:
            conn.core.send_ack()
            conn.close(graceful=True)  # the ACK is written before the TLS close
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if conns:  # connection_lost runs on a later loop turn: return once every link is really gone
            await asyncio.wait([c.done for c in conns], timeout=5.0)

    def _accept(self) -> LinkConnection:
        core = RegionLink(self.local_region, self.gateway_name, asyncio.get_running_loop().time(),
                          ping_interval=self.ping_interval, ping_timeout=self.ping_timeout, max_frame=self.max_frame,
                          deferred_acks=True)
        return LinkConnection(core, self)

    def connected(self, conn: LinkConnection) -> None:
        if not self._running:  # its TLS handshake finished after stop(): too late
            conn.close(graceful=False)
            return
        self.connections.add(conn)

    def writable(self, conn: LinkConnection) -> None:
        pass

    def stats(self) -> dict[str, LinkStats]:
        """Per peer region: connections, stanzas received and duplicates dropped, RTT, up/down events."""
        for region, stats in self._stats.items():
            conns = self._peers.get(region, set())
            stats.connections_up = len(conns)
            stats.up = bool(conns)
            rtts = [c.core.rtt for c in conns if c.core.rtt is not None]
            stats.last_rtt = sum(rtts) / len(rtts) if rtts else stats.last_rtt
        return self._stats

    def handle(self, conn: LinkConnection, events: list[LinkEvent]) -> None:
        for event in events:
            if isinstance(event, StanzaReceived):
                self._deliver(conn, event)
            elif isinstance(event, Ready):
                self._ready(conn, event)
            elif isinstance(event, Closed):
                self._closed(conn, event)
            elif isinstance(event, Acked):
                pass  # we send no stanzas on accepted links
        conn.flush()

    def _deliver(self, conn: LinkConnection, event: StanzaReceived) -> None:
        region = conn.core.peer_region
        assert region is not None
        stats = self._stats[region]
        if not self._seen[region].add(event.id):
            stats.duplicates += 1
            conn.core.release(event.seq)
            return
        stats.received += 1
        try:
            handing = self.on_stanza(event)
        except Exception:  # a bug in the consumer must not take the link (and every stanza on it) down
            log.exception("on_stanza failed for stanza %s from region %s", event.id, region)
            handing = None
        if handing is None or handing.done():
            conn.core.release(event.seq)
        else:
            seq = event.seq
            handing.add_done_callback(lambda _f: self._handed(conn, seq))

    def _handed(self, conn: LinkConnection, seq: int) -> None:
        """A stanza received on ``conn`` has been handed on: ack it (once per loop turn and link)."""
        conn.core.release(seq)
        if not self._acks_due:
            asyncio.get_running_loop().call_soon(self._send_acks)
        self._acks_due.add(conn)

    def _send_acks(self) -> None:
        due, self._acks_due = self._acks_due, set()
        for conn in due:
            conn.core.send_ack()
            conn.flush()

    def _ready(self, conn: LinkConnection, event: Ready) -> None:
        if self.regions is not None and event.peer_region not in self.regions:
            self.handle(conn, conn.core.refuse(f"region {event.peer_region!r} is not one of ours"))
            return
        stats = self._stats.setdefault(event.peer_region, LinkStats(event.peer_region))
        self._seen.setdefault(event.peer_region, RecentIds(self.dedup_window))
        peers = self._peers.setdefault(event.peer_region, set())
        if not peers:
            stats.link_up_events += 1
            stats.note("up", f"{event.peer_gateway} connected")
            log.info("region %s (%s) connected", event.peer_region, event.peer_gateway)
        peers.add(conn)

    def _closed(self, conn: LinkConnection, event: Closed) -> None:
        if conn.dead:
            return
        conn.dead = True
        self.connections.discard(conn)
        region = conn.core.peer_region
        peers = self._peers.get(region or "")
        if region is not None and peers is not None and conn in peers:
            peers.discard(conn)
            if not peers:
                stats = self._stats[region]
                stats.link_down_events += 1
                stats.last_error = event.reason
                stats.note("down", event.reason)
        (log.warning if event.refused else log.info)("inter-region link from %s closed: %s",
                                                     region or "an unknown region", event.reason)
        conn.close()
