"""Real XMPP clients (slixmpp) for integration tests, with queues of what they receive."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import slixmpp

__all__ = ["Client", "AuthFailed"]


class AuthFailed(Exception):
    """A login that did not reach a session, with why: a test asserts the specific SASL failure
    (``sasl``, e.g. ``not-authorized``) or stream error (``stream``, e.g. ``conflict``), so that an
    unrelated disconnect cannot pass for the refusal it expects."""

    def __init__(self, why: str, sasl: list[str], stream: list[str]) -> None:
        super().__init__(f"{why}; SASL failures: {sasl}; stream errors: {stream}")
        self.sasl = sasl[-1] if sasl else None
        self.stream = stream[-1] if stream else None


class Client(slixmpp.ClientXMPP):  # type: ignore[misc]
    """A slixmpp client that trusts the node's certificate and records what arrives."""

    def __init__(self, jid: str, password: str, *, cert: Path | None, mechanism: str | None = None,
                 direct_tls: bool = False) -> None:
        super().__init__(jid, password, sasl_mech=mechanism)
        for plugin in ("xep_0030", "xep_0199", "xep_0092", "xep_0077", "xep_0203"):
            self.register_plugin(plugin)
        if cert is not None:
            self.ssl_context = ssl.create_default_context(cafile=str(cert))
        self.enable_direct_tls = direct_tls
        self.enable_starttls = not direct_tls
        self.enable_plaintext = False
        self.roster.auto_authorize = None  # None: leave subscription requests to the test
        self.roster.auto_subscribe = False
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.presences: asyncio.Queue[Any] = asyncio.Queue()
        self.roster_pushes: asyncio.Queue[Any] = asyncio.Queue()
        self._ready: asyncio.Future[bool] = asyncio.get_event_loop().create_future()
        self.add_event_handler("message", lambda m: self.messages.put_nowait(m))
        self.add_event_handler("presence", lambda p: self.presences.put_nowait(p))
        self.add_event_handler("roster_update", lambda iq: self.roster_pushes.put_nowait(iq))
        self.add_event_handler("session_start", self._on_start)
        self.add_event_handler("failed_all_auth", lambda e: self._on_failed("authentication failed"))
        self.add_event_handler("connection_failed", lambda e: self._on_failed(f"connection failed: {e}"))
        self.add_event_handler("disconnected", lambda e: self._on_failed(f"disconnected: {e}"))
        self.stream_errors: list[Any] = []
        self.add_event_handler("stream_error", lambda e: self.stream_errors.append(e))
        self.sasl_failures: list[str] = []  # the condition of each SASL <failure/>
        self.add_event_handler("failed_auth", lambda f: self.sasl_failures.append(f["condition"]))

    def _on_start(self, _event: Any) -> None:
        if not self._ready.done():
            self._ready.set_result(True)

    def _on_failed(self, why: str) -> None:
        if not self._ready.done():
            self._ready.set_exception(AuthFailed(why, self.sasl_failures,
                                                 [e["condition"] for e in self.stream_errors]))

    async def login(self, port: int, *, timeout: float = 15.0) -> Client:
        self.connect("127.0.0.1", port)
        await asyncio.wait_for(self._ready, timeout)
        return self

    async def online(self, port: int, *, priority: int | None = None, roster: bool = True) -> Client:
        """Log in, fetch the roster and send initial presence (what a stock client does)."""
        await self.login(port)
        if roster:
            await self.get_roster()
        if priority is None:
            self.send_presence()
        else:
            self.send_presence(ppriority=priority)
        return self

    async def next_message(self, timeout: float = 5.0, *, body: bool = True) -> Any:
        while True:
            msg = await asyncio.wait_for(self.messages.get(), timeout)
            if not body or msg["body"]:
                return msg

    async def next_presence(self, ptype: str | None = None, *, sender: str | None = None,
                            timeout: float = 5.0) -> Any:
        while True:
            p = await asyncio.wait_for(self.presences.get(), timeout)
            if ptype is not None and p["type"] != ptype:
                continue
            if sender is not None and str(p["from"]) != sender and str(p["from"].bare) != sender:
                continue
            return p

    async def close(self) -> None:
        if self.is_connected():
            self.disconnect()
            try:
                await asyncio.wait_for(self.disconnected, 5)
            except (TimeoutError, Exception):
                pass
