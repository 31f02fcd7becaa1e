"""The services of one node, built once by the wiring: what the core and the module hosts share."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..cluster.table import ReplicatedTable
from ..settings import NodeSettings
from ..storage import Storage
from .accounts import Accounts
from .auth_throttle import AuthThrottle, Ban
from .hooks import Hooks
from .router import Router
from .sessions import LocalSessions, SessionRecord, SessionTable

if TYPE_CHECKING:
    from .session_manager import SessionManager

__all__ = ["Services", "ClusterCalls"]

AUTH_BAN_CALL = "auth.ban"  # {"address", "seconds", "reason"}: a member banned an address


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
    # The cluster links come up before the modules start: a call for a module may arrive first.
    modules_started: bool = False
    # Authentication failures per address, shared by every way in (c2s, user API) and the region.
    auth_throttle: AuthThrottle = field(init=False)
    # Whether a fan-out (``route_fanout``) may reach another region: set by the hand-off to the
    # region's gateways (the region has, or had, one) and by a gateway's own router.  Carbons ask
    # it before building a copy that no one else could get.
    other_regions: Callable[[], bool] = lambda: False
    # Refusals by the limit that was hit, named by its setting ("limits.stanza_rate"): one count
    # for every limit and abuse rule, read by /metrics and the admin API.
    refusals: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.auth_throttle = AuthThrottle.from_settings(self.settings.auth_throttle)

    def auth_failed(self, address: str) -> tuple[float, Ban | None]:
        """Count an authentication failure from ``address``: (seconds to hold the answer back, the
        ban it caused).  A ban goes to the other members too: a guesser spreading its attempts
        over the region's nodes is banned by all of them."""
        now = time.monotonic()
        delay, ban = self.auth_throttle.failed(address, now)
        if ban is not None:
            self.refused("auth_throttle.max_failures")
            if self.calls is not None:
                args = {"address": ban.address, "seconds": ban.until - now, "reason": ban.reason}
                for member in self.calls.members():
                    self.calls.call(member, AUTH_BAN_CALL, args)
        return delay, ban

    def auth_refusal(self, address: str) -> str | None:
        """The text of a refusal if ``address`` is banned (counted here: every way in asks this)."""
        refusal = self.auth_throttle.refuse(address, time.monotonic())
        if refusal is not None:
            self.refused("auth_throttle")
        return refusal

    def refused(self, limit: str, n: int = 1) -> None:
        """Count ``n`` refusals by ``limit``, the dotted name of the setting whose limit was hit."""
        self.refusals[limit] += n

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
