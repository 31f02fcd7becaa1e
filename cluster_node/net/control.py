"""The node's local control socket: ``meridian ctl`` asks a running node about its live state.

A Unix socket in the data directory (mode 0600), so only the operator account that runs the
node can use it — the same trust model as ``ejabberdctl``/``prosodyctl``.  It answers JSON in
the shape of MongooseIM's GraphQL results; the HTTP admin API (GraphQL, TCP, credentials) will
expose the same functions to remote operators.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

__all__ = ["control_socket", "serving_control", "query_control"]

Query = Callable[..., Any]  # keyword arguments from the query string; may be a coroutine function


def control_socket(data_dir: Path) -> Path:
    return data_dir / "control.sock"


@contextlib.asynccontextmanager
async def serving_control(path: Path, queries: dict[tuple[str, str], Query]) -> AsyncIterator[None]:
    """Serve ``GET /{category}/{operation}`` on the Unix socket ``path`` while inside."""

    async def handle(request: web.Request) -> web.Response:
        key = (request.match_info["category"], request.match_info["op"])
        query = queries.get(key)
        if query is None:
            return web.json_response({"errors": [{"message": f"unknown operation {key[0]} {key[1]}"}]}, status=404)
        try:
            result = query(**request.query)
            if inspect.isawaitable(result):
                result = await result
        except TypeError as e:
            return web.json_response({"errors": [{"message": f"bad arguments: {e}", "path": list(key)}]}, status=400)
        except (LookupError, ValueError) as e:
            return web.json_response({"errors": [{"message": str(e), "path": list(key)}]}, status=400)
        return web.json_response({"data": {key[0]: {key[1]: result}}})

    app = web.Application()
    app.router.add_get("/{category}/{op}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a crashed node
    old = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(path)).start()
    finally:
        os.umask(old)
    try:
        yield
    finally:
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def query_control(path: Path, category: str, op: str, args: dict[str, str] | None = None
                        ) -> tuple[int, dict[str, Any]]:
    """``meridian ctl``'s side: (HTTP status, JSON body)."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session:
        async with session.get(f"http://node/{category}/{op}", params=args or {}) as resp:
            return resp.status, await resp.json()
