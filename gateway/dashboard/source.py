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
    """The dashboard of a running gateway: every region's status from Redis, and its own live.

    Its routes are built before the gateway exists (the admin app starts with the node services,
    the gateway after them), so ``gateway`` is set later; until then it shows nothing."""

    def __init__(self, gateway: Gateway | None = None) -> None:
        self.gateway = gateway
        self.closing = asyncio.Event()  # set when the gateway stops: open event streams end

    async def regions(self) -> dict[str, dict[str, Any]]:
        return await self.gateway.store.statuses() if self.gateway is not None else {}

    def local(self) -> dict[str, Any]:
        # The status carries the cluster's conflict view and the S2S peers (Gateway.status).
        return self.gateway.status() if self.gateway is not None else {}


def gateway_source(gateway: Gateway | None = None) -> GatewaySource:
    """A :class:`StatusSource` over ``gateway`` (or one to be set on ``.gateway`` once it runs)."""
    return GatewaySource(gateway)
