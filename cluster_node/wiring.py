"""Build a node's services from its settings and run them (one function per role, no globals)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from .api.http import serving_api
from .api.metrics import instrument, new_registry
from .clustering import build_member
from .core.accounts import Accounts
from .core.hooks import Hook, Hooks
from .core.module import Module
from .core.router import Router
from .core.services import Services
from .core.session_manager import SessionManager
from .core.sessions import LocalSessions, SessionTable
from .modules.loader import start_modules, stop_modules
from .net.c2s_server import C2SListener
from .net.cluster_net import ClusterMember
from .net.component_server import ComponentListener, ComponentRouting
from .net.control import control_socket, serving_control
from .net.tls import ensure_self_signed, reload_certificates, server_context
from .net.transport_metrics import CALL as TRANSPORTS_CALL, TransportCollector
from .net.websocket_server import WebSocketListener
from .settings import NodeSettings, StartError
from .storage import Storage, open_storage
from .xmpp.sasl.cache import LoginCache

__all__ = ["Node", "running_node", "run_node", "run_until_signalled", "open_accounts"]

log = logging.getLogger("meridian.node")


@dataclass
class Node:
    services: Services
    sessions: SessionManager
    c2s: C2SListener
    # What ``meridian ctl`` may ask over the control socket; roles add theirs (the gateway: gdistrib).
    queries: dict[tuple[str, str], Callable[..., Any]]
    # Served on the admin port's /metrics; roles register their collectors (the gateway: relays, links).
    metrics: CollectorRegistry = field(default_factory=new_registry)
    # /ready is 200 when all of these are true; roles add theirs (the gateway: Redis).
    ready_checks: dict[str, Callable[[], bool | Awaitable[bool]]] = field(default_factory=dict)


def without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@contextlib.asynccontextmanager
async def open_accounts(settings: NodeSettings) -> AsyncIterator[tuple[Storage, Accounts]]:
    """Storage and the account service alone (what ``meridian ctl account …`` needs)."""
    storage = open_storage(settings.storage_url)
    try:
        await storage.open()
    except Exception as e:  # refused, wrong credentials, no such database: one line that names it
        raise StartError(f"storage.url ({without_password(settings.storage_url)}): {type(e).__name__}: {e}") from None
    try:
        yield storage, Accounts(storage, settings.domains, iterations=settings.scram_iterations,
                                min_password_length=1, login_cache=LoginCache.from_settings(settings.login_cache))
    finally:
        await storage.close()


@contextlib.asynccontextmanager
async def running_node(settings: NodeSettings, *, http_routes: Sequence[web.RouteDef] = ()
                       ) -> AsyncIterator[Node]:
    """Start every service of a node; stop them in reverse order on exit.

    ``http_routes`` are mounted on the admin API (behind its credentials): the gateway's dashboard.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.tls.cert_file and settings.tls.key_file:
        cert, key = settings.tls.cert_file, settings.tls.key_file
    else:
        cert, key = ensure_self_signed(settings.data_dir / "tls", settings.domains)
    tls = server_context(cert, key)
    async with open_accounts(settings) as (storage, accounts):
        accounts.min_password_length = settings.registration.min_password_length
        table = SessionTable(settings.node_name)
        local = LocalSessions(settings.node_name)
        hooks = Hooks()

        async def account_exists(jid):  # type: ignore[no-untyped-def]
            return await storage.account_exists(jid.domain, jid.local or "")

        router = Router(settings.node_name, settings.domains, table, local, hooks, account_exists)
        services = Services(settings, storage, accounts, table, local, router, hooks)
        sessions = SessionManager(services)
        services.session_manager = sessions
        registry = new_registry()
        instrument(sessions, router, registry)
        member = await build_member(services, cert, key) if settings.cluster.enabled else None
        services.components = ComponentRouting(services)
        hooks.add(Hook.ROUTE_REMOTE, services.components, 10, owner=services.components)
        services.envelopes["component"] = services.components.arrived
        # What started is stopped on the way out, also when a later step fails (a c2s port taken):
        # the cluster member's and the modules' tasks and threads would keep the process alive.
        modules: list[Module] = []
        listeners: list[C2SListener | WebSocketListener | ComponentListener] = []
        try:
            modules = await start_modules(services, settings.modules)
            services.modules_started = True
            for collector in services.collectors:
                registry.register(collector)
            components = ComponentListener(services, services.components, tls)
            c2s = C2SListener(settings, sessions, hooks, tls)
            registry.register(TransportCollector(c2s.transports))
            # Per-transport counters for the gateways' dashboard (every member answers, gateways too).
            services.call_handlers[TRANSPORTS_CALL] = lambda caller, args: c2s.transports.snapshot()
            for listener in (c2s, WebSocketListener(settings, c2s, tls), components):
                listeners.append(listener)
                await listener.start()
            log.info("node %s serving %s; c2s on %s", settings.node_name, ", ".join(settings.domains),
                     ", ".join(map(str, c2s.ports)))
            queries = _control_queries(member) | _session_queries(services) | services.queries
            node = Node(services, sessions, c2s, queries, metrics=registry)
            node.ready_checks.update(_ready_checks(settings, storage, c2s, member))
            queries[("graphql", "admin")] = _control_graphql(node)
            async with serving_api(node, tls=tls, routes=[*http_routes, *services.http_routes]), \
                    serving_control(control_socket(settings.data_dir), queries):
                yield node
        finally:
            for listener in reversed(listeners):
                await listener.stop()
            # Session clean-ups (unavailable presence, replicated deletes) need storage and the
            # cluster links: let them finish first, for a bounded time.
            left = await router.drain(settings.shutdown_timeout)
            if left:
                log.warning("stopping with %d session clean-ups unfinished after %.0f s", left,
                            settings.shutdown_timeout)
            # Modules stop once the sessions' clean-ups have run (XEP-0198 hands its detached
            # sessions to another member, or ends them), and what they start is drained too.
            await stop_modules(services, modules)
            await router.drain(settings.shutdown_timeout)
            if member is not None:
                await member.stop()
                # A member that left while we stopped (a whole cluster stopping at once) started
                # its clean-up here (unavailable presence, which reads storage): finish it too.
                await router.drain(2.0)


def _session_queries(services: Services) -> dict[tuple[str, str], Callable[..., Any]]:
    """The region's sessions as this member's replicated table has them (MongooseIM's ``session``)."""
    def sessions() -> list[dict[str, Any]]:
        now = time.time()
        return [{"user": str(r.jid), "node": r.node, "priority": r.priority, "available": r.available,
                 "uptime": int(now - r.created)} for r in sorted(services.table, key=lambda r: str(r.jid))]

    return {("session", "listSessions"): sessions, ("session", "countSessions"): lambda: len(services.table)}


def _control_graphql(node: Node) -> Callable[..., Any]:
    """The admin GraphQL schema over the control socket (``meridian ctl`` on the node's machine:
    the socket's file mode is the credential)."""
    async def run(query: str, variables: str = "") -> dict[str, Any]:
        from .api.admin import admin_root
        from .api.schema import run_query

        parsed = json.loads(variables) if variables else None
        if parsed is not None and not isinstance(parsed, dict):
            raise ValueError("variables must be a JSON object")
        return await run_query("admin", query, parsed, admin_root(node.services.accounts, node))

    return run


def _ready_checks(settings: NodeSettings, storage: Storage, c2s: C2SListener, member: ClusterMember | None
                  ) -> dict[str, Callable[[], bool | Awaitable[bool]]]:
    """What ``/ready`` requires before a load balancer (a Kubernetes Service) sends clients here.

    ``listeners``: the c2s listeners are open.  ``storage``: the database answers a query (logins,
    rosters and offline messages need it).  ``cluster``: discovery works and this member has
    *joined the region*: linked to every member whose discovery row is fresh, with their tables
    merged — so a client's first message finds every session of the region, not offline storage.
    After a grace period a member whose live peers stay unreachable is ready anyway (it serves
    what it can rather than nothing; the partition is in ``cets systemInfo``).  Once joined it
    stays so: a peer's death is not a reason to stop taking clients."""
    def listeners() -> bool:
        wanted = bool(settings.c2s.port or settings.c2s.tls_port)
        return bool(c2s.servers) or not wanted

    checks: dict[str, Callable[[], bool | Awaitable[bool]]] = {
        "listeners": listeners, "storage": _StorageProbe(storage, settings.domains[0])}
    if member is not None:
        started = time.monotonic()
        refresh = settings.cluster.refresh_interval
        grace = 3 * refresh + settings.cluster.ping_timeout
        fresh = max(3 * refresh, 2.0)  # as discovery judges a row live (whole seconds)

        joined = False

        def cluster() -> bool:
            nonlocal joined
            if not member.discovery_works:
                return False
            if joined:
                # Joined once: a peer dying later must not take every survivor out of the load
                # balancer until the dead peer's discovery row ages out.
                return True
            now = time.time()
            live = {p.node for p in member.discovered
                    if p.node != member.node and (p.updated is None or now - p.updated < fresh)}
            # The session table's dump is the one a router needs (the others follow it on the link).
            wanted = "sessions" if "sessions" in member.tables else None
            # A peer merged once and gone since (its row not yet aged out) is not waited for: the
            # latch below only holds once /ready has been asked, and a member may be asked first
            # after a peer died.
            merged = all(peer in member.links and (wanted in member.links[peer].tables_seen
                                                   if wanted else bool(member.links[peer].tables_seen))
                         or (peer not in member.links and peer in member.merged_peers)
                         for peer in live)
            joined = merged or time.monotonic() - started > grace
            return joined

        checks["cluster"] = cluster
    return checks


class _StorageProbe:
    """One cheap indexed query, at most one in flight and bounded in time: a database that has
    gone silent makes the check fail in ``timeout`` seconds instead of piling up probes (a driver
    may not give up a query it was asked to cancel until the server answers)."""

    def __init__(self, storage: Storage, domain: str, timeout: float = 2.0) -> None:
        self.storage, self.domain, self.timeout = storage, domain, timeout
        self._task: asyncio.Task[bool] | None = None

    async def __call__(self) -> bool:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._query())
        done, _ = await asyncio.wait({self._task}, timeout=self.timeout)
        return bool(done) and not self._task.cancelled() and self._task.exception() is None

    async def _query(self) -> bool:
        await self.storage.account_exists(self.domain, "")
        return True


def _control_queries(member: ClusterMember | None) -> dict[tuple[str, str], Callable[..., Any]]:
    def cluster() -> ClusterMember:
        if member is None:
            raise LookupError("the cluster is not enabled on this node (cluster.enabled = false)")
        return member

    return {("cets", "systemInfo"): lambda: cluster().system_info(),
            ("cets", "tableInfo"): lambda: cluster().table_info()}


async def run_until_signalled(running: contextlib.AbstractAsyncContextManager[Any], what: str) -> None:
    """Enter ``running`` (a role's services), print ``ready``, and leave on SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_certificates)  # renewed certificates, no restart
    async with running:
        gc.freeze()  # what start-up built lives as long as the process: keep it out of every collection
        print("ready", flush=True)
        await stop.wait()
    log.info("%s stopped", what)


async def run_node(settings: NodeSettings) -> None:
    """``meridian node``: run until SIGINT/SIGTERM."""
    await run_until_signalled(running_node(settings), f"node {settings.node_name}")
