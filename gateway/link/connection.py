"""One inter-region TLS connection as an asyncio protocol around a :class:`RegionLink` core, and
what the listening and the dialling side share (endpoint syntax, statistics, the timer loop).

The adapter is the aioquic shape: read → feed the core → hand its events to the owner → write what
the core has to send.  Nothing here decides anything; the owner (:class:`~gateway.link.server.LinkServer`
or :class:`~gateway.link.pool.RegionPool`) does.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, cast

from .protocol import Closed, LinkEvent, RegionLink

__all__ = ["LinkConnection", "ConnectionOwner", "LinkStats", "parse_endpoint", "run_timers"]

_CLOSE_GRACE = 1.0  # seconds a closing connection may take to write its last bytes


def parse_endpoint(spec: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) → (host, port)."""
    host, sep, port = spec.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{spec!r}: expected host:port")
    return host.strip("[]"), int(port)


@dataclass
class LinkStats:
    """What the metrics and the dashboard show for one remote region."""

    region: str
    up: bool = False
    connections_up: int = 0
    connections_wanted: int = 0
    queue_depth: int = 0
    in_flight: int = 0
    sent: int = 0
    acked: int = 0
    resent: int = 0
    received: int = 0
    duplicates: int = 0
    queue_full: int = 0
    link_down_errors: int = 0
    undeliverable: int = 0
    last_rtt: float | None = None
    link_up_events: int = 0
    link_down_events: int = 0
    last_error: str | None = None
    recent: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=20))

    def note(self, what: str, reason: str) -> None:
        """Record a link up/down transition (wall clock, for humans)."""
        self.recent.append((time.time(), what, reason))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["recent"] = [list(e) for e in self.recent]
        return d


class LinkConnection(asyncio.Protocol):
    """One TLS connection: feeds the core, passes its events to the owner, writes its bytes."""

    def __init__(self, core: RegionLink, owner: ConnectionOwner, key: tuple[str, int] | None = None) -> None:
        self.core = core
        self.owner = owner
        self.key = key  # (endpoint, index) of a pool slot; None on the server side
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.dead = False
        self.lanes: deque[tuple[int, int, str]] = deque()  # (seq, lane, id) of each unacked stanza, in seq order
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[str | None] = loop.create_future()  # None: Ready; str: why not
        self.done: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.owner.connected(self)
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.owner.handle(self, self.core.receive_data(data, asyncio.get_running_loop().time()))

    def connection_lost(self, exc: Exception | None) -> None:
        events = self.core.receive_data(b"", asyncio.get_running_loop().time())
        if exc is not None:
            events = [Closed(f"connection lost: {exc}", e.refused) if isinstance(e, Closed) else e for e in events]
        self.transport = None
        self.owner.handle(self, events)
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.owner.writable(self)

    def flush(self) -> None:
        data = self.core.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self, graceful: bool = True) -> None:
        """Write what is pending (a REFUSE) and close; abort if that takes more than a moment (a
        dead peer never drains the buffer), or at once when ``graceful`` is false."""
        self.flush()
        transport = self.transport
        if transport is None:
            if not self.done.done():
                self.done.set_result(None)
        elif not graceful:
            transport.abort()
        elif not transport.is_closing():
            transport.close()
            asyncio.get_running_loop().call_later(_CLOSE_GRACE, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class ConnectionOwner(Protocol):
    """What a connection reports to: the server or a pool."""

    def connected(self, conn: LinkConnection) -> None: ...

    def handle(self, conn: LinkConnection, events: list[LinkEvent]) -> None: ...

    def writable(self, conn: LinkConnection) -> None: ...


async def run_timers(interval: float, conns: Callable[[], Iterable[LinkConnection]], after: Callable[[], None]) -> None:
    """Drive every connection's timers (pings, timeouts) from the loop clock."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        now = loop.time()
        for conn in list(conns()):
            conn.owner.handle(conn, conn.core.handle_timer(now))
        after()
