"""Feature modules: the ``Module`` base, its settings, and the facade a module gets of its node.

A module is one XMPP feature (a XEP, or an RFC 6121 part) in a package of its own.  It declares
its name, the XEPs it implements, the modules it needs, and a pydantic model of its settings (the
``[modules.<name>]`` table of the node's TOML).  At start it receives a :class:`ModuleHost`: the
hooks, IQ handlers, routing, the session tables, storage, cluster calls, metrics, HTTP routes and
admin queries — everything it may touch, so it never imports another module or the wiring.
Modules talk to each other only through hooks (:mod:`cluster_node.core.hooks`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from .hooks import HookHandler

if TYPE_CHECKING:
    from ..settings import NodeSettings
    from ..storage import Storage
    from ..xmpp.stanza import Stanza
    from .accounts import Accounts
    from .hooks import Hooks
    from .router import Fanout, IqHandler
    from .services import Services
    from .session_manager import SessionManager
    from .sessions import LocalSessions, SessionRecord, SessionTable

__all__ = ["Module", "ModuleSettings", "ModuleHost", "Xep", "CallHandler", "domain_template"]

log = logging.getLogger(__name__)

CallHandler = Callable[[str, dict[str, Any]], Any]  # (calling member, args) -> JSON-able or awaitable


@dataclass(frozen=True, slots=True)
class Xep:
    """One specification a module implements (listed in the docs table and ``doap.xml``)."""

    number: int
    version: str
    status: str = "complete"  # complete | partial (XEP-0453's DOAP terms)
    note: str = ""

    @property
    def name(self) -> str:
        return f"XEP-{self.number:04d}"


def domain_template(value: str, example: str) -> str:
    """Check a service's domain template (``conference.{domain}``: ``{domain}`` is each served
    domain) for a settings validator; ``example`` names a good one in the error."""
    from ..xmpp.jid import Jid

    try:
        jid = Jid.parse(value.format(domain="example.com"))
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{value!r} is not a domain template like {example} ({e})") from None
    if not jid.is_domain:
        raise ValueError(f"{value!r} is not a domain")
    return value


class ModuleSettings(BaseModel):
    """Every module's table has ``enabled``; unknown keys are an error naming them."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="load this module")


class Module:
    """Base of feature modules: subclasses set the class attributes and override ``start``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    xeps: ClassVar[tuple[Xep, ...]] = ()
    rfcs: ClassVar[tuple[str, ...]] = ()  # e.g. "RFC 6121 §2 (roster)"
    depends: ClassVar[tuple[str, ...]] = ()
    required: ClassVar[bool] = False  # cannot be disabled (the node is not XMPP without it)
    Settings: ClassVar[type[ModuleSettings]] = ModuleSettings

    def __init__(self, settings: ModuleSettings | None = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        self.host: ModuleHost = None  # type: ignore[assignment]  # set by start

    def start(self, host: ModuleHost) -> None | Awaitable[None]:
        self.host = host
        return None

    def stop(self) -> None | Awaitable[None]:
        return None


class ModuleHost:
    """What one module may use of its node.  Everything it adds through the host (hooks, IQ
    handlers, cluster calls, queries, metrics) is taken out again by :meth:`release` at stop."""

    def __init__(self, services: Services, owner: object) -> None:
        self._s = services
        self._owner = owner
        self._iqs: set[tuple[str, str]] = set()
        self._calls: set[str] = set()
        self._queries: set[tuple[str, str]] = set()
        self._collectors: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._domains: set[str] = set()

    def release(self) -> None:
        """Undo what the module added (it stopped)."""
        for domain in list(self._domains):
            self.withdraw_domain(domain)
        self._s.hooks.remove_owner(self._owner)
        for namespace, name in self._iqs:
            self._s.router.remove_iq(namespace, name)
        for call in self._calls:
            self._s.call_handlers.pop(call, None)
        for key in self._queries:
            self._s.queries.pop(key, None)
        for collector in self._collectors:
            if collector in self._s.collectors:
                self._s.collectors.remove(collector)
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self._iqs.clear()
        self._calls.clear()
        self._queries.clear()
        self._collectors.clear()

    # -- identity and configuration -----------------------------------------------------------------

    @property
    def node(self) -> str:
        return self._s.node

    @property
    def domains(self) -> frozenset[str]:
        return self._s.router.domains

    @property
    def server_features(self) -> set[str]:
        """The namespaces of the server IQ handlers modules registered (disco#info)."""
        return self._s.router.features

    @property
    def settings(self) -> NodeSettings:
        """The node's settings (read only: c2s, limits, offline, …)."""
        return self._s.settings

    # -- state a module reads ---------------------------------------------------------------------

    @property
    def storage(self) -> Storage:
        return self._s.storage

    @property
    def accounts(self) -> Accounts:
        return self._s.accounts

    @property
    def table(self) -> SessionTable:
        """The replicated session table (:class:`~cluster_node.core.sessions.SessionTable`)."""
        return self._s.table

    @property
    def local(self) -> LocalSessions:
        """The sessions held by this member (:class:`~cluster_node.core.sessions.LocalSessions`)."""
        return self._s.local

    @property
    def sessions(self) -> SessionManager:
        """The session manager (bind, end, kick)."""
        return self._s.session_manager

    def update_record(self, record: SessionRecord) -> None:
        self._s.update_record(record)

    # -- hooks and handlers --------------------------------------------------------------------------

    @property
    def hooks(self) -> Hooks:
        return self._s.hooks

    def hook(self, name: str, handler: HookHandler, priority: int = 50) -> None:
        self._s.hooks.add(name, handler, priority, owner=self._owner)

    def add_server_iq(self, namespace: str, name: str, handler: IqHandler, *, feature: bool = True) -> None:
        self._s.router.add_server_iq(namespace, name, handler, feature=feature)
        self._iqs.add((namespace, name))

    def add_account_iq(self, namespace: str, name: str, handler: IqHandler, *, where_online: bool = False) -> None:
        self._s.router.add_account_iq(namespace, name, handler, where_online=where_online)
        self._iqs.add((namespace, name))

    # -- routing -------------------------------------------------------------------------------------

    async def route(self, stanza: Stanza, *, local_only: bool = False) -> None:
        await self._s.router.route(stanza, local_only=local_only)

    def route_nowait(self, stanza: Stanza) -> None:
        self._s.router.route_nowait(stanza)

    def deliver(self, record: SessionRecord, stanza: Stanza) -> None:
        self._s.router.deliver(record, stanza)

    def route_many(self, stanza: Stanza, recipients: list[str]) -> list[Stanza]:
        """One stanza to many full JIDs (see :meth:`Router.route_many`): the copies left for
        :meth:`route` are returned."""
        return self._s.router.route_many(stanza, recipients)

    def route_run(self, stanzas: list[Stanza], recipients: list[str]) -> list[Stanza]:
        """Every one of ``stanzas`` to each of ``recipients``, in order (see
        :meth:`Router.route_run`): the copies left for :meth:`route` are returned."""
        return self._s.router.route_run(stanzas, recipients)

    def deliver_all(self, bare: Any, stanza: Stanza, which: Fanout | None = None, *, fanout: bool = True) -> int:
        from .router import Fanout

        return self._s.router.deliver_all(bare, stanza, which or Fanout(), fanout=fanout)

    def send_error(self, stanza: Stanza, error: Any) -> None:
        self._s.router.send_error(stanza, error)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Background work the node waits for before it stops (a clean-up after a session)."""
        self._s.router.spawn(coro)

    def every(self, seconds: float, job: Callable[[], Awaitable[Any]], what: str) -> asyncio.Task[None]:
        """Run ``job`` every ``seconds`` until the module stops (retention, expiry).  The first run
        comes after a random part of the interval (at most 30 s): the members of a region start
        together and share the database.  A failing run is logged and retried next time."""
        async def loop() -> None:
            await asyncio.sleep(random.uniform(0, min(seconds, 30.0)))
            while True:
                try:
                    await job()
                except Exception:
                    log.exception("%s failed; retried in %.0f s", what, seconds)
                await asyncio.sleep(seconds)

        task = asyncio.get_running_loop().create_task(loop())
        self._tasks.append(task)
        return task

    # -- the cluster ---------------------------------------------------------------------------------

    @property
    def cluster_members(self) -> list[str]:
        """The other members joined now (empty without a cluster)."""
        calls = self._s.calls
        return calls.members() if calls is not None else []

    def reaches_other_regions(self) -> bool:
        """Whether a fan-out (:meth:`deliver_all`) may reach resources in another region: the
        region has, or had, a gateway.  False in a region standing alone, one node or many."""
        return self._s.other_regions()

    @property
    def gateway_members(self) -> frozenset[str]:
        """The members of the region that are gateways (this one too, if it is): they relay between
        regions and speak S2S, so work any node can do (sequencing a room) is better left to nodes."""
        return frozenset(r.owner for r in self._s.routes if r.key.startswith("gateway/"))

    def on_call(self, name: str, handler: CallHandler) -> None:
        """Answer cluster calls ``name`` (args are JSON from another member: check their types)."""
        self._s.call_handlers[name] = handler
        self._calls.add(name)

    def call(self, node: str, name: str, args: dict[str, Any]) -> bool:
        """One-way call to another member; False when there is no link to it."""
        calls = self._s.calls
        return calls is not None and calls.call(node, name, args)

    async def request(self, node: str, name: str, args: dict[str, Any], timeout: float = 5.0) -> Any:
        """A call answered by the other member's handler; raises LookupError (no link) or TimeoutError."""
        calls = self._s.calls
        if calls is None:
            raise LookupError("no cluster")
        return await calls.request(node, name, args, timeout)

    async def request_members(self, name: str, args: dict[str, Any], timeout: float = 5.0) -> dict[str, Exception]:
        """:meth:`request` to every other member at once, waiting for all (a command whose result
        must mean: applied everywhere in this region); the members that did not answer (no link,
        no such handler there, too slow), each with why."""
        async def one(member: str) -> Exception | None:
            try:
                await self.request(member, name, args, timeout)
            except (LookupError, TimeoutError) as e:
                return e
            return None

        members = self.cluster_members
        if not members:
            return {}
        errors = await asyncio.gather(*(one(m) for m in members))
        return {m: e for m, e in zip(members, errors, strict=True) if e is not None}

    def publish_domain(self, domain: str) -> None:
        """Have the other regions route ``domain`` to this one: a record ``service/<domain>/<node>``
        in the replicated routes, which gateways publish to the mapping like a connected component's
        domain (a service a module serves for every region of the deployment, e.g. MUC).  It goes
        with this member (member down) or the module (stop)."""
        key = f"service/{domain}/{self.node}"
        self._domains.add(domain)
        op = self._s.routes.insert(key, {})
        if self._s.cluster is not None:
            self._s.cluster.broadcast(op)

    def withdraw_domain(self, domain: str) -> None:
        self._domains.discard(domain)
        for key in (f"service/{domain}/{self.node}", f"claim/{domain}/{self.node}"):
            op = self._s.routes.delete(key)
            if op is not None and self._s.cluster is not None:
                self._s.cluster.broadcast(op)

    def claim_domain(self, domain: str, *, home: bool, after: float) -> None:
        """Ask for ``domain`` to be served by one region at a time, this one if it gets the lease
        (``gateway/leases.py``): ``home``, the region that takes it whenever it is free; any other
        takes it once it has been free for ``after`` seconds.  A record ``claim/<domain>/<node>``
        in the replicated routes, gone with this member or the module; :meth:`domain_holder` says
        which region got it."""
        self._domains.add(domain)
        op = self._s.routes.insert(f"claim/{domain}/{self.node}", {"home": home, "after": after})
        if self._s.cluster is not None:
            self._s.cluster.broadcast(op)

    def domain_holder(self, domain: str) -> str | None:
        """The region holding the lease on a claimed ``domain`` as this region's gateways last found
        it: a region's name, ``""`` for nobody, None when no gateway said (none is up yet)."""
        prefix = f"holder/{domain}/"
        found = sorted(str(r.value.get("region") or "") for r in self._s.routes
                       if r.key.startswith(prefix) and isinstance(r.value, dict))
        return found[-1] if found else None

    # -- operations surface ------------------------------------------------------------------------

    def add_query(self, category: str, name: str, fn: Callable[..., Any]) -> None:
        """An admin query (``meridian ctl category name``, control socket)."""
        self._s.queries[(category, name)] = fn
        self._queries.add((category, name))

    def refused(self, limit: str, n: int = 1) -> None:
        """Count a refusal by one of the module's limits (``modules.<name>.<key>``, or the node
        setting it enforces): ``meridian_refusals_total`` and the admin API's ``server.refusals``."""
        self._s.refused(limit, n)

    def add_metric(self, collector: Any) -> None:
        """A prometheus_client collector, read at scrape time."""
        self._s.collectors.append(collector)
        self._collectors.append(collector)

    def add_http_route(self, route: Any) -> None:
        """An aiohttp route definition mounted on the node's HTTP listener (at start: routes stay
        until the node stops)."""
        self._s.http_routes.append(route)

