"""Where the dashboard's data comes from: every region's status as the gateways publish it in
Redis (so any gateway shows all regions), plus this gateway's own live status."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.mapping.store import MappingStore
    from gateway.wiring import Gateway

__all__ = ["StatusSource", "StoreSource", "GatewaySource", "gateway_source"]


class StatusSource(Protocol):
    async def regions(self) -> dict[str, dict[str, Any]]:
        """Region name -> its last published status record (``Gateway.status()``)."""
        ...

    def local(self) -> dict[str, Any]:
        """This gateway's own status, live (empty when the dashboard runs outside a gateway)."""
        ...


class StoreSource:
    """A :class:`StatusSource` over a mapping store; ``local`` is optional."""

    def __init__(self, statuses: Callable[[], Awaitable[dict[str, dict[str, Any]]]],
                 local: Callable[[], dict[str, Any]] | None = None) -> None:
        self._statuses = statuses
        self._local = local

    @classmethod
    def of(cls, store: MappingStore, local: Callable[[], dict[str, Any]] | None = None) -> StoreSource:
        return cls(store.statuses, local)

    async def regions(self) -> dict[str, dict[str, Any]]:
        return await self._statuses()

    def local(self) -> dict[str, Any]:
        return self._local() if self._local is not None else {}


class GatewaySource:
    """The dashboard of a running gateway: Redis statuses, and its live status with what the
    published record does not carry: the cluster's conflict view (``cets systemInfo``) and, when
    S2S is enabled, its S2S connections (``ctl s2s connections``).

    Its routes are built before the gateway exists (the admin app starts with the node services,
    the gateway after them), so ``gateway`` is set later; until then it shows nothing."""

    def __init__(self, gateway: Gateway | None = None) -> None:
        self.gateway = gateway
        self.closing = asyncio.Event()  # set when the gateway stops: open event streams end

    async def regions(self) -> dict[str, dict[str, Any]]:
        return await self.gateway.store.statuses() if self.gateway is not None else {}

    def local(self) -> dict[str, Any]:
        if self.gateway is None:
            return {}
        status = self.gateway.status()
        member = self.gateway.node.services.cluster
        if member is not None and "cluster" not in status:
            info = member.system_info()
            status["cluster"] = {k: info.get(k) for k in (
                "joinedNodes", "unavailableNodes", "conflictNodes", "conflictTables", "discoveryWorks")}
        s2s = self.gateway.node.queries.get(("s2s", "connections"))  # registered when [s2s] is enabled
        if s2s is not None and "s2s" not in status:
            status["s2s"] = {"peers": s2s()}
        return status


def gateway_source(gateway: Gateway | None = None) -> GatewaySource:
    """A :class:`StatusSource` over ``gateway`` (or one to be set on ``.gateway`` once it runs)."""
    return GatewaySource(gateway)
