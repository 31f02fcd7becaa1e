"""The services of one node, built once by the wiring and handed to every module."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..cluster.table import ReplicatedTable
from ..settings import NodeSettings
from ..storage import Storage
from ..xmpp.stanza import Stanza
from .accounts import Accounts
from .router import Router
from .sessions import LocalSessions, SessionRecord, SessionTable

if TYPE_CHECKING:
    from ..modules.offline import Offline
    from ..modules.presence import Presence
    from ..modules.roster import Roster
    from ..net.cluster_net import ClusterMember
    from ..net.component_server import ComponentRouting

__all__ = ["Services"]


@dataclass
class Services:
    settings: NodeSettings
    storage: Storage
    accounts: Accounts
    table: SessionTable
    local: LocalSessions
    router: Router
    roster: Roster = field(init=False)
    presence: Presence = field(init=False)
    offline: Offline = field(init=False)
    cluster: ClusterMember | None = None
    components: ComponentRouting | None = None  # external components (XEP-0114) of the region
    # Replicated routes: "gateway/<member>" for the region's gateways (later: component domains).
    routes: ReplicatedTable = field(default_factory=lambda: ReplicatedTable("routes", "local"))
    # A stanza a node handed to this member for global routing (set on gateways only).
    handoff: Callable[[dict[str, Any], Stanza], None] | None = None

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
