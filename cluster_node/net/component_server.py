"""The external-component listener (XEP-0114): an asyncio protocol per component connection that
feeds bytes to :class:`~cluster_node.xmpp.component.ComponentStream`, plus the region-wide route
of each component domain.

A connected component's domain is a record ``component/<domain>`` in the replicated ``routes``
table, owned by the member it is connected to: every member of the region routes the domain's
stanzas to that member (:class:`ComponentRouting`), and a gateway publishes the domain to Redis
so other regions route it here too.  One connection per domain in the region: a second one gets
``<conflict/>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

from ..cluster.table import Record
from ..core.limits import Shaper, parser_limit
from ..core.log_throttle import OncePer
from ..xmpp import errors
from ..xmpp.component import ComponentEnded, ComponentEvent, ComponentStanza, ComponentStream, HandshakeDone
from ..xmpp.errors import StreamError
from ..xmpp.jid import Jid
from ..xmpp.stanza import Stanza

if TYPE_CHECKING:
    from ..core.services import Services

__all__ = ["ComponentListener", "ComponentRouting", "route_key"]

log = logging.getLogger("meridian.component")

QUEUE_LIMIT = 1000  # stanzas from one component waiting to be routed before reading pauses


def route_key(domain: str) -> str:
    return f"component/{domain}"


class ComponentRouting:
    """The router's way to component domains: the local connection, or the member holding it."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.local: dict[str, ComponentConnection] = {}

    def __call__(self, stanza: Stanza, to: Jid) -> bool | None:
        """The routing chain's first link (``route_remote``): deliver ``stanza`` if ``to`` is a
        component domain of the region; None (next link) if it is not."""
        record = self.s.routes.lookup(route_key(to.domain))
        if record is None:
            return None
        if record.owner == self.s.routes.me or self.s.calls is None:
            if not self.deliver(to.domain, stanza):
                raise errors.ServiceUnavailable(f"{to.domain} is not connected")
            return True
        if not self.s.calls.send_stanza(record.owner, "component", {"component": to.domain}, stanza.to_bytes()):
            raise errors.ServiceUnavailable(f"{to.domain} is connected to an unreachable member")
        return True

    def arrived(self, envelope: dict[str, Any], stanza: Stanza) -> None:
        """A stanza another member routed to a component connected here."""
        domain = str(envelope.get("component"))
        if not self.deliver(domain, stanza):
            self.s.router.send_error(stanza, errors.ServiceUnavailable(f"{domain} is not connected"))

    def deliver(self, domain: str, stanza: Stanza) -> bool:
        conn = self.local.get(domain)
        if conn is None:
            return False
        conn.send(stanza)
        return True

    def domains(self) -> list[str]:
        return sorted(r.key.split("/", 1)[1] for r in self.s.routes if r.key.startswith("component/"))


class ComponentListener:
    def __init__(self, services: Services, routing: ComponentRouting, tls_context: ssl.SSLContext | None) -> None:
        self.s = services
        self.routing = routing
        self.settings = services.settings.components
        self.tls_context = tls_context if self.settings.tls else None
        self.server: asyncio.Server | None = None
        self.connections: set[ComponentConnection] = set()
        self.counters = {"shaped": 0}  # times a component's reading was slowed by the shaper
        self.once = OncePer(60.0)  # log lines about one component: at most one a minute
        services.routes.on_lost = self._lost

    async def start(self) -> None:
        if not self.settings.port:
            return
        self.server = await asyncio.get_running_loop().create_server(
            lambda: ComponentConnection(self), self.settings.host, self.settings.port, ssl=self.tls_context)
        log.info("components on %s:%d (%s): %s", self.settings.host, self.port, "TLS" if self.tls_context else "TCP",
                 ", ".join(sorted(self.settings.secrets)) or "none configured")

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1]) if self.server and self.server.sockets else 0

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.shutdown()
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    def claim(self, conn: ComponentConnection, domain: str) -> bool:
        """Make ``domain`` route to ``conn`` in the whole region, unless someone holds it already."""
        key = route_key(domain)
        if self.s.routes.lookup(key) is not None or domain in self.s.settings.domains:
            return False
        op = self.s.routes.insert(key, {"node": self.s.node})
        if self.s.cluster is not None:
            self.s.cluster.broadcast(op)
        self.routing.local[domain] = conn
        log.info("component %s connected", domain)
        return True

    def _lost(self, record: Record) -> None:
        """Two members let the same component domain in at the same instant (each before the
        other's claim reached it); the routes table kept the other's claim on every member, so
        our connection for it goes, with ``<conflict/>``: the component reconnects and is told
        whether the domain is still taken."""
        if not record.key.startswith("component/"):
            return
        domain = record.key.split("/", 1)[1]
        conn = self.routing.local.pop(domain, None)
        if conn is not None:
            log.warning("component %s: another member let it in at the same time; closing ours", domain)
            conn.domain = None  # the route is the other member's now: nothing to release
            conn.kick(errors.Conflict("connected to another member of the region at the same time"))

    def release(self, conn: ComponentConnection, domain: str) -> None:
        if self.routing.local.get(domain) is not conn:
            return
        del self.routing.local[domain]
        op = self.s.routes.delete(route_key(domain))
        if op is not None and self.s.cluster is not None:
            self.s.cluster.broadcast(op)
        log.info("component %s disconnected", domain)


class ComponentConnection(asyncio.Protocol):
    def __init__(self, listener: ComponentListener) -> None:
        self.listener = listener
        lim = listener.s.settings.limits
        self.stream = ComponentStream(listener.settings.secrets, max_stanza_size=lim.max_stanza_size,
                                      max_depth=lim.max_depth)
        self.transport: asyncio.Transport | None = None
        self.domain: str | None = None
        self.queue: asyncio.Queue[Stanza] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None
        self.paused = False  # reading paused: our routing queue is full
        cs = listener.settings
        # Bytes read, like a client's shaper but slower to bite and never closing the stream.
        self._shaper = Shaper(cs.shaper_rate, cs.shaper_burst, float("inf")) if cs.shaper_rate else None
        self._shaped = False  # reading paused: over the shaper's rate, resumed by a timer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.listener.connections.add(self)
        self.worker = asyncio.get_running_loop().create_task(self._route_in_order())

    def data_received(self, data: bytes) -> None:
        if self._shaper is not None and self.transport is not None:
            delay = self._shaper.consume(len(data), time.monotonic())
            if delay > 0 and not self._shaped:
                self._shaped = True
                self.listener.counters["shaped"] += 1
                self.listener.s.refused("components.shaper_rate")
                if self.listener.once.allow((self.domain, "shaped"), time.monotonic()):  # not once per read
                    held = self.listener.once.held()
                    log.info("component %s: over its shaper rate (components.shaper_rate): reading slowed%s",
                             self.domain or "?", f" ({held} more times since the last such line)" if held else "")
                self.transport.pause_reading()
                asyncio.get_running_loop().call_later(delay, self._unshape)
        self._handle(self.stream.receive_data(data))

    def _unshape(self) -> None:
        self._shaped = False
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _handle(self, events: list[ComponentEvent]) -> None:
        for event in events:
            if isinstance(event, HandshakeDone):
                if self.listener.claim(self, event.domain):
                    self.domain = event.domain
                    self._handle(self.stream.route_taken())
                else:
                    log.warning("component %s refused: already connected in the region", event.domain)
                    self._handle(self.stream.route_refused())
            elif isinstance(event, ComponentStanza):
                self.queue.put_nowait(event.stanza)
                if self.queue.qsize() >= QUEUE_LIMIT and not self.paused and self.transport is not None:
                    self.paused = True
                    self.transport.pause_reading()
            elif isinstance(event, ComponentEnded):
                if event.error is not None:
                    log.info("component stream %s closed: %s", self.domain or "?", event.error)
                    limit = parser_limit(event.error)
                    if limit is not None:
                        self.listener.s.refused(limit)
                self._flush()
                if self.transport is not None:
                    self.transport.close()
                return
        self._flush()

    async def _route_in_order(self) -> None:
        router = self.listener.s.router
        while True:
            stanza = await self.queue.get()
            await router.route(stanza)
            if self.paused and self.queue.qsize() < QUEUE_LIMIT // 2 and self.transport is not None:
                self.paused = False
                if not self._shaped:
                    self.transport.resume_reading()

    def send(self, stanza: Stanza) -> None:
        self.stream.send_stanza(stanza)
        self._flush()

    def _flush(self) -> None:
        data = self.stream.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def kick(self, error: StreamError) -> None:
        self._handle(self.stream.close(error))

    def shutdown(self) -> None:
        self._handle(self.stream.close(errors.SystemShutdown("the server is stopping")))

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        if self.domain is not None:
            self.listener.release(self, self.domain)
        if self.worker is not None:
            self.worker.cancel()

    def eof_received(self) -> Any:
        self._handle(self.stream.close())
        return None
