"""The upload service's HTTP side (aiohttp): ``PUT`` and ``GET``/``HEAD`` of
``/upload/<token>/<filename>``, and CORS preflights for web clients.

* **PUT** stores the body when :func:`~.slots.check_put` accepts the signed URL and the headers
  (403 bad or expired signature, 400/413 wrong length, 400 wrong type); 201 when stored, 409 when
  the slot already has its file.
* **GET** serves a stored file only by its exact URL (404 for anything else: no listings);
  ``X-Content-Type-Options: nosniff`` and a restrictive ``Content-Security-Policy``, and anything a
  browser could run (HTML, SVG, scripts…) is sent as an attachment.
* Nothing is logged per request (the URLs are capabilities).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

from aiohttp import hdrs, web

from .slots import PutRefused, Signer, SlotRefused, check_content_type, check_put, valid_token
from .store import FileMeta, FileStore, SizeMismatch

__all__ = ["UploadServer", "INLINE_TYPES"]

log = logging.getLogger("meridian.http_upload")

CHUNK = 256 * 1024
# Shown in the browser; every other type is downloaded (Content-Disposition: attachment).
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/heic",
                          "text/plain", "application/pdf"})
INLINE_PREFIXES = ("audio/", "video/")
DEFAULT_TYPE = "application/octet-stream"
CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, HEAD, PUT, OPTIONS",
        "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "86400"}


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n")


def disposition(content_type: str, filename: str) -> str:
    base = content_type.split(";", 1)[0].strip().lower()
    kind = "inline" if base in INLINE_TYPES or base.startswith(INLINE_PREFIXES) else "attachment"
    return f"{kind}; filename*=UTF-8''{quote(filename, safe='')}"


class UploadServer:
    """The aiohttp application and its listener (one per node; any node with the key and the
    shared store serves any slot)."""

    def __init__(self, store: FileStore, signer: Signer, *, max_age: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.signer = signer
        self.max_age = max_age  # Cache-Control max-age of GETs (the files' lifetime); 0: an hour
        self.clock = clock
        self.runner: web.AppRunner | None = None
        self.counters = {"stored": 0, "refused": 0, "served": 0}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("PUT", "/upload/{token}/{name}", self.put)
        app.router.add_get("/upload/{token}/{name}", self.get)  # and HEAD
        app.router.add_route("OPTIONS", "/upload/{token}/{name}", self.options)
        app.on_response_prepare.append(self._headers)
        return app

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.runner = runner

    async def stop(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.cleanup()

    @staticmethod
    async def _headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Access-Control-Allow-Origin"] = "*"

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=CORS)

    async def put(self, request: web.Request) -> web.Response:
        token, name = request.match_info["token"], request.match_info["name"]
        try:
            slot = check_put(self.signer, token, name, request.query, self.clock(), request.content_length,
                             request.headers.get(hdrs.CONTENT_TYPE))
        except PutRefused as e:
            self.counters["refused"] += 1
            return _plain(e.status, e.reason)
        content_type = slot.content_type
        if not content_type:
            try:
                content_type = check_content_type(request.headers.get(hdrs.CONTENT_TYPE, "")) or DEFAULT_TYPE
            except SlotRefused:
                content_type = DEFAULT_TYPE
        meta = FileMeta(slot.filename, slot.size, content_type, self.clock())

        async def body() -> AsyncIterator[bytes]:
            async for chunk in request.content.iter_chunked(CHUNK):
                yield chunk

        try:
            await self.store.save(token, meta, body())
        except FileExistsError:
            self.counters["refused"] += 1
            return _plain(409, "this slot already has its file")
        except SizeMismatch as e:
            self.counters["refused"] += 1
            return _plain(400, f"the body does not match the slot: {e}")
        except OSError as e:
            log.warning("an upload could not be stored: %s: %s", e.__class__.__name__, e)
            return _plain(500, "the file could not be stored")
        except Exception as e:  # the client went away mid-body (a payload error)
            log.debug("an upload ended early: %r", e)
            self.counters["refused"] += 1
            return _plain(400, "the body ended early")
        self.counters["stored"] += 1
        return _plain(201, "created")

    async def get(self, request: web.Request) -> web.StreamResponse:
        token, name = request.match_info["token"], request.match_info["name"]
        found = await self.store.find(token) if valid_token(token) else None
        if found is None or found.meta.filename != name:
            return _plain(404, "not found")
        if found.redirect is not None:
            raise web.HTTPFound(found.redirect)
        if found.path is None:
            return _plain(404, "not found")
        meta = found.meta
        headers = {
            hdrs.CONTENT_TYPE: meta.content_type,
            hdrs.CONTENT_DISPOSITION: disposition(meta.content_type, meta.filename),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; sandbox",
            hdrs.CACHE_CONTROL: f"private, max-age={self.max_age or 3600}, immutable",
        }
        self.counters["served"] += 1
        return web.FileResponse(found.path, chunk_size=CHUNK, headers=headers)
