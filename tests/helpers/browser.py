"""Headless Chromium (Debian's ``chromium``) driven over the Chrome DevTools protocol with aiohttp's
websocket client: no browser download, no Playwright.  Enough for the dashboard and web client tests:
open a page, evaluate JavaScript, wait for a condition, press keys, type text, watch requests, take
a screenshot."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["Browser", "chromium_binary", "BrowserError"]


class BrowserError(Exception):
    pass


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """``async with Browser() as b: await b.goto(url); await b.evaluate("1+1")``."""

    def __init__(self, *, width: int = 1366, height: int = 900, timeout: float = 60.0,
                 ignore_certificate_errors: bool = False) -> None:
        """``ignore_certificate_errors``: accept any TLS certificate (a test CA's), for https and wss."""
        binary = chromium_binary()
        if binary is None:
            raise BrowserError("chromium is not installed (apt-get install chromium)")
        self.binary = binary
        self.width, self.height, self.timeout = width, height, timeout
        self.ignore_certificate_errors = ignore_certificate_errors
        self._dir = Path(tempfile.mkdtemp(prefix="meridian-chromium-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self.console: list[str] = []  # console messages and uncaught exceptions of the page

    async def __aenter__(self) -> Browser:
        self._proc = subprocess.Popen(
            [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={self._dir / 'profile'}", f"--window-size={self.width},{self.height}",
             *(["--ignore-certificate-errors"] if self.ignore_certificate_errors else []), "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(self._dir / "stderr.log", "wb"))
        port_file = self._dir / "profile" / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise BrowserError(f"chromium did not start: {(self._dir / 'stderr.log').read_text()[-2000:]}")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self._http = aiohttp.ClientSession()
        targets: list[dict[str, Any]] = []
        while not targets:
            async with self._http.get(f"http://127.0.0.1:{port}/json/list") as r:
                targets = [t for t in await r.json() if t.get("type") == "page"]
            if not targets:
                if time.monotonic() > deadline:
                    raise BrowserError("chromium has no page target")
                await asyncio.sleep(0.1)
        self._ws = await self._http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                        deviceScaleFactor=1, mobile=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            else:
                self._events.append(data)
                method, params = data.get("method"), data.get("params", {})
                if method == "Runtime.consoleAPICalled":
                    self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
                elif method == "Runtime.exceptionThrown":
                    self.console.append("exception: " + json.dumps(params["exceptionDetails"])[:2000])
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(BrowserError("the DevTools connection closed"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._ws is not None
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, self.timeout)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def goto(self, url: str) -> None:
        self._events.clear()
        await self.send("Page.navigate", url=url)
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            if time.monotonic() > deadline:
                raise BrowserError(f"{url} did not load")
            await asyncio.sleep(0.05)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0, what: str = "") -> Any:
        """Poll ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or expression} (last: {value!r}); "
                                     f"console: {self.console[-5:]}")
            await asyncio.sleep(0.2)

    async def press(self, key: str, code: str, key_code: int, *, shift: bool = False, text: str = "") -> None:
        """A key press as the keyboard makes it (``text`` for keys that type, e.g. Enter = "\r")."""
        modifiers = 8 if shift else 0
        extra = {"text": text, "unmodifiedText": text} if text else {}
        for kind in ("keyDown" if text else "rawKeyDown", "keyUp"):
            await self.send("Input.dispatchKeyEvent", type=kind, key=key, code=code, modifiers=modifiers,
                            windowsVirtualKeyCode=key_code, nativeVirtualKeyCode=key_code,
                            **(extra if kind == "keyDown" else {}))

    def requested_urls(self) -> list[str]:
        """What the page fetched or opened as WebSockets since the last :meth:`goto` (needs
        ``send("Network.enable")`` first)."""
        urls = []
        for e in self._events:
            if e.get("method") == "Network.requestWillBeSent":
                urls.append(e["params"]["request"]["url"])
            elif e.get("method") == "Network.webSocketCreated":
                urls.append(e["params"]["url"])
        return urls

    async def type_text(self, text: str) -> None:
        """Text into the focused element, as an input method commits it (input events fire)."""
        await self.send("Input.insertText", text=text)

    async def screenshot(self, path: Path) -> Path:
        data = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path
