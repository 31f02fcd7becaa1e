"""What the operations API needs of a running node or gateway: a small protocol, so the API does
not depend on the wiring that builds the node."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from ..core.services import Services
from ..core.session_manager import SessionManager

__all__ = ["NodeView"]


class NodeView(Protocol):
    services: Services  # settings, storage, accounts, the session table, hooks, router
    sessions: SessionManager  # kicks
    c2s: Any  # the client listeners (connection counts)
    queries: dict[tuple[str, str], Callable[..., Any]]  # what roles and modules add (gdistrib, sm…)
    metrics: CollectorRegistry
    ready_checks: dict[str, Callable[[], bool | Awaitable[bool]]]
