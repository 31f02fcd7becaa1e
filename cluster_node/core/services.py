"""The services of one node, built once by the wiring: what the core and the module hosts share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..cluster.table import ReplicatedTable
from ..settings import NodeSettings
from ..storage import Storage
from .accounts import Accounts
from .hooks import Hooks
from .router import Router
from .sessions import LocalSessions, SessionRecord, SessionTable

if TYPE_CHECKING:
    from .session_manager import SessionManager

__all__ = ["Services", "ClusterCalls"]


class ClusterCalls(Protocol):
    """The cluster as the core and modules use it (implemented over the member's links)."""

    def members(self) -> list[str]: ...
    def call(self, node: str, name: str, args: dict[str, Any]) -> bool: ...
    async def request(self, node: str, name: str, args: dict[str, Any], timeout: float) -> Any: ...
    def send_stanza(self, node: str, kind: str, envelope: dict[str, Any], data: bytes) -> bool: ...
    async def wait_acks(self) -> None: ...


@dataclass
class Services:
    settings: NodeSettings
    storage: Storage
    accounts: Accounts
    table: SessionTable
    local: LocalSessions
    router: Router
    hooks: Hooks = field(default_factory=Hooks)
    session_manager: SessionManager = field(init=False)
    calls: ClusterCalls | None = None  # None without a cluster
    cluster: Any = None  # the ClusterMember (operations queries, gateway); modules use ``calls``
    components: Any = None  # external components (XEP-0114) of the region
    # Replicated routes: "gateway/<member>" for the region's gateways, "component/<domain>".
    routes: ReplicatedTable = field(default_factory=lambda: ReplicatedTable("routes", "local"))
    # Cluster calls by name (modules add theirs through the host) and envelope kinds of stanzas
    # arriving from other members ("session", "component", "gd", …).
    call_handlers: dict[str, Callable[[str, dict[str, Any]], Any]] = field(default_factory=dict)
    envelopes: dict[str, Callable[[dict[str, Any], Any], None]] = field(default_factory=dict)
    # What modules add to the operations surface.
    queries: dict[tuple[str, str], Callable[..., Any]] = field(default_factory=dict)
    collectors: list[Any] = field(default_factory=list)
    http_routes: list[Any] = field(default_factory=list)
    modules: dict[str, Any] = field(default_factory=dict)  # name -> started Module

    def update_record(self, record: SessionRecord) -> None:
        """Change a session's record in the table and, if it lives here, on its connection."""
        session = self.local.get(record.sid) if record.node == self.node else None
        if session is not None:
            session.record = record
        current = self.table.lookup(record.jid)
        if current is not None and current.sid == record.sid:  # never resurrect a replaced session
            self.table.insert(record)

    @property
    def node(self) -> str:
        return self.settings.node_name
