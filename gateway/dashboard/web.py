"""The dashboard's HTTP routes (aiohttp): the page, a JSON snapshot, a server-sent event stream of
snapshots once a second, and the static assets shipped in this package (no build step, no CDN)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web

from .rates import RateTracker
from .source import StatusSource

__all__ = ["dashboard_routes", "Snapshots"]

log = logging.getLogger("meridian.dashboard")

ASSETS = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
# Everything the page loads comes from this origin; no inline script, so a status string an
# attacker put in Redis cannot run as code even if the page rendered it as HTML (it does not).
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


class Snapshots:
    """Builds dashboard snapshots; one tracker per consumer keeps the rates' history."""

    def __init__(self, source: StatusSource, clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.clock = clock
        self.tracker = RateTracker()

    async def take(self) -> dict[str, Any]:
        now = self.clock()
        error = None
        try:
            regions = await self.source.regions()
        except Exception as e:  # Redis down or unreachable: show what this gateway knows
            log.warning("dashboard: region statuses unavailable: %s", e)
            regions, error = {}, f"region statuses unavailable: {type(e).__name__}: {e}"
        local = self.source.local()
        here = str(local.get("region") or "")
        if here:
            # This gateway's live status stands in for its own (older) record in Redis; another
            # gateway's record of the same region is counted beside it (rates are per gateway).
            if here not in regions or regions[here].get("gateway") == local.get("gateway"):
                regions = {**regions, here: local}
            self.tracker.observe(here, local, now)
        out: dict[str, Any] = {}
        for name, status in sorted(regions.items()):
            if status is not local:
                self.tracker.observe(name, status, now)
            out[name] = {**status, "rates": self.tracker.rates(name, now)}
            if name == here:  # what only the live status has: the cluster view, this gateway's S2S peers
                for key in ("cluster", "s2s"):
                    if key in local and key not in status:
                        out[name][key] = local[key]
        return {"time": now, "local": local, "regions": out, "error": error}


def dashboard_routes(source: StatusSource, *, prefix: str = "/dashboard", interval: float = 1.0,
                     stop: asyncio.Event | None = None) -> list[web.RouteDef]:
    """Routes to mount on an admin app: ``GET {prefix}``, ``{prefix}/state``, ``{prefix}/events``
    and ``{prefix}/static/<asset>``.

    Set ``stop`` before the app shuts down: event streams never end by themselves, and aiohttp
    waits for running handlers (60 s by default) before it cancels them."""
    stop = stop if stop is not None else asyncio.Event()
    shared = Snapshots(source)
    files = resources.files(__package__).joinpath("static")
    page = files.joinpath("index.html").read_text("utf-8").replace("{{prefix}}", prefix)
    assets = {name: files.joinpath(name).read_bytes() for name in ASSETS}

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html", headers=HEADERS)

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in assets:
            raise web.HTTPNotFound()
        return web.Response(body=assets[name], content_type=ASSETS[name], headers=HEADERS)

    async def state(request: web.Request) -> web.Response:
        return web.json_response(await shared.take(), headers={"Cache-Control": "no-cache"})

    async def events(request: web.Request) -> web.StreamResponse:
        own = Snapshots(source)  # each stream has its own history: rates between its own samples
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        try:
            await resp.write(b"retry: 2000\n\n")
            while not stop.is_set():
                snap = json.dumps(await own.take(), separators=(",", ":"), default=str)
                await resp.write(f"event: snapshot\ndata: {snap}\n\n".encode())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
        return resp

    return [web.get(prefix, index), web.get(f"{prefix}/", index), web.get(f"{prefix}/state", state),
            web.get(f"{prefix}/events", events), web.get(prefix + "/static/{name}", asset)]
