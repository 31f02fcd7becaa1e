"""The live dashboard served by each gateway (``/dashboard`` on its admin port): every region's
published status, links and latency, sessions, relayed stanzas/s, bounces, queues, S2S peers,
MUC rooms and occupants, and cluster conflicts, updated once a second by server-sent events.
Plain HTML/CSS/JS, no build step."""

from .rates import RateTracker
from .source import GatewaySource, StatusSource, StoreSource, gateway_source
from .web import Snapshots, dashboard_routes

__all__ = ["dashboard_routes", "gateway_source", "StatusSource", "StoreSource", "GatewaySource", "Snapshots",
           "RateTracker"]
