"""A node's core without a network, for unit tests of the router, the hooks and the modules.

The objects are the real ones — :class:`Hooks`, :class:`SessionTable`, :class:`LocalSessions`, a
:class:`Router` whose ``account_exists`` reads the storage, :class:`Services`, a
:class:`SessionManager`, SQLite storage in a temporary directory — only the client connections are
fakes: a :class:`FakeSession` collects what is delivered to it and records kicks.

    async with fake_node(tmp_path) as node:
        await node.start(Ping)
        alice = node.bind("alice@example.com/phone")
        await node.route(iq)
        assert alice.delivered[0].type == "result"
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cluster_node.core.accounts import Accounts
from cluster_node.core.hooks import Hooks
from cluster_node.core.module import Module, ModuleHost
from cluster_node.core.router import Router
from cluster_node.core.services import Services
from cluster_node.core.session_manager import SessionManager
from cluster_node.core.sessions import LocalSessions, SessionRecord, SessionTable
from cluster_node.settings import NodeSettings
from cluster_node.storage import Storage, open_storage
from cluster_node.xmpp import ns
from cluster_node.xmpp.fragment import parse_stanza
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.stanza import Stanza

__all__ = ["FakeSession", "FakeNode", "fake_node", "stanza", "error_condition", "DOMAIN", "NODE"]

DOMAIN = "example.com"
NODE = "node1"


def stanza(xml: str) -> Stanza:
    """A stanza from its XML (``jabber:client`` is the default namespace, as on a c2s stream)."""
    return parse_stanza(xml.encode())


def error_condition(s: Stanza) -> str | None:
    """The RFC 6120 defined condition of an error stanza (``None`` when it is not one)."""
    if s.type != "error":
        return None
    err = s.element.find(f"{{{ns.CLIENT}}}error")
    if err is None:
        return None
    for child in err:
        if child.tag.startswith(f"{{{ns.STANZAS}}}") and not child.tag.endswith("}text"):
            return child.tag.split("}", 1)[1]
    return None


class FakeSession:
    """A bound client connection: what the session manager, the router and modules use of one."""

    def __init__(self, services: Services, record: SessionRecord | None = None) -> None:
        self.services = services
        self.record: SessionRecord = record  # type: ignore[assignment]
        self.last_presence: Stanza | None = None
        self.directed: set[str] = set()
        self.ext: dict[str, Any] = {}
        self.delivered: list[Stanza] = []
        self.kicked: list[tuple[str, str | None]] = []

    def set_record(self, record: SessionRecord) -> None:
        self.services.update_record(record)

    def deliver(self, stanza: Stanza) -> None:
        self.delivered.append(stanza)

    def kick(self, condition: str, text: str | None = None) -> None:
        self.kicked.append((condition, text))

    # -- reading what arrived ------------------------------------------------------------------

    def take(self) -> list[Stanza]:
        """What was delivered since the last call."""
        out, self.delivered = self.delivered, []
        return out

    def of(self, name: str, type_: str | None = "*") -> list[Stanza]:
        """Delivered stanzas named ``name`` (and of type ``type_`` unless ``"*"``)."""
        return [s for s in self.delivered if s.name == name and (type_ == "*" or s.type == type_)]


class FakeNode:
    """The services of one node, and helpers to bind sessions and start modules."""

    def __init__(self, services: Services) -> None:
        self.services = services

    @property
    def hooks(self) -> Hooks:
        return self.services.hooks

    @property
    def router(self) -> Router:
        return self.services.router

    @property
    def storage(self) -> Storage:
        return self.services.storage

    @property
    def table(self) -> SessionTable:
        return self.services.table

    @property
    def local(self) -> LocalSessions:
        return self.services.local

    @property
    def sessions(self) -> SessionManager:
        return self.services.session_manager

    # -- accounts and sessions ----------------------------------------------------------------

    async def create_account(self, bare: str) -> None:
        jid = Jid.parse(bare)
        assert await self.storage.create_account(jid.domain, jid.local or "", {}), bare

    def bind(self, full: str, *, available: bool = False, priority: int = 0,
             interested: bool = False) -> FakeSession:
        """A session of this node bound as ``full``: its record in the table, itself in the local sessions."""
        session = FakeSession(self.services)
        sid = self.local.new_sid()
        record = SessionRecord(jid=Jid.parse(full), node=self.services.node, sid=sid, created=time.time(),
                               priority=priority, available=available, interested=interested)
        session.record = record
        self.local.add(sid, session)
        self.table.insert(record)
        return session

    def bind_remote(self, full: str, node: str = "node2", *, available: bool = True,
                    priority: int = 0) -> SessionRecord:
        """A session record of another member (replicated here): no local connection."""
        record = SessionRecord(jid=Jid.parse(full), node=node, sid=f"{node}.1.{full}", created=time.time(),
                               priority=priority, available=available)
        self.table.insert(record)
        return record

    # -- modules ---------------------------------------------------------------------------------

    async def start(self, cls: type[Module], **settings: Any) -> Any:
        """Start ``cls`` (with ``settings`` for its ``[modules.<name>]`` table) on this node."""
        module = cls(cls.Settings(**settings))
        result = module.start(ModuleHost(self.services, module))
        if inspect.isawaitable(result):
            await result
        self.services.modules[cls.name] = module
        return module

    # -- routing -------------------------------------------------------------------------------

    async def route(self, s: Stanza | str, *, local_only: bool = False) -> None:
        """Route ``s`` and wait for the background work it started (replies routed later)."""
        await self.router.route(stanza(s) if isinstance(s, str) else s, local_only=local_only)
        await self.settle()

    async def settle(self) -> None:
        left = await self.router.drain(5.0)
        assert left == 0, f"{left} background tasks still running"


@contextlib.asynccontextmanager
async def fake_node(tmp_path: Path, **overrides: Any) -> AsyncIterator[FakeNode]:
    """A node named ``node1`` serving ``example.com``, with SQLite storage under ``tmp_path``."""
    overrides.setdefault("node_name", NODE)
    overrides.setdefault("domains", [DOMAIN])
    settings = NodeSettings(data_dir=tmp_path, **overrides)
    storage = open_storage(settings.storage_url)
    await storage.open()
    try:
        accounts = Accounts(storage, settings.domains, iterations=settings.scram_iterations)
        table = SessionTable(settings.node_name)
        local = LocalSessions(settings.node_name)
        hooks = Hooks()

        async def account_exists(jid: Jid) -> bool:
            return await storage.account_exists(jid.domain, jid.local or "")

        router = Router(settings.node_name, settings.domains, table, local, hooks, account_exists)
        services = Services(settings, storage, accounts, table, local, router, hooks)
        services.session_manager = SessionManager(services)
        yield FakeNode(services)
        await router.drain(5.0)
    finally:
        await storage.close()
