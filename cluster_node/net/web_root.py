"""Static files at ``/web/`` on the WebSocket listener (``[websocket] web_root``).

Why on that listener: a browser client served from the origin that also serves ``/ws`` (and BOSH)
needs no CORS and no second certificate, and one Ingress or proxy rule covers the page and its
XMPP endpoint.  The directory is served as it is (an ``index.html`` for ``/web/``); aiohttp's static
handler refuses paths that leave it, and symlinks are not followed out of it.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from ..settings import ConfigError

__all__ = ["add_web_root", "WEB_PREFIX"]

WEB_PREFIX = "/web"


def add_web_root(app: web.Application, directory: str | Path, prefix: str = WEB_PREFIX) -> None:
    """Serve ``directory`` under ``prefix/``; ``prefix`` redirects there, ``prefix/`` is its index.html."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise ConfigError(f"websocket.web_root: {root} is not a directory")
    index = root / "index.html"

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{prefix}/")

    async def serve_index(request: web.Request) -> web.StreamResponse:
        if not index.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

    app.router.add_get(prefix, redirect)
    app.router.add_get(f"{prefix}/", serve_index)  # before the static route: it would answer 403 here
    app.router.add_static(f"{prefix}/", root, follow_symlinks=False, show_index=False)
