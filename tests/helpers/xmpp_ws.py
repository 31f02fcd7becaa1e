"""A minimal XMPP-over-WebSocket client (RFC 7395) on aiohttp, element by element: what
:class:`tests.helpers.xmpp_raw.RawClient` is for TCP, for tests that must see and send exactly what
is in each WebSocket message (XEP-0198 counters, a connection that just dies)."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import struct
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping

import aiohttp

from .xmpp_raw import SM, local

__all__ = ["FRAMING", "WsClient", "insecure_context"]

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"


def insecure_context() -> ssl.SSLContext:
    """The nodes' certificates are the tests' own: no verification."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class WsClient:
    """One WebSocket stream to ``url`` (``ws://`` or ``wss://``): open, SASL PLAIN, bind or resume."""

    def __init__(self, url: str, *, domain: str = "localhost", headers: Mapping[str, str] | None = None,
                 local_addr: str | None = None) -> None:
        self.url = url
        self.domain = domain
        self.headers = dict(headers or {})
        self.local_addr = local_addr
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.jid: str | None = None
        self.features: ET.Element | None = None
        self.closed = False

    # -- the stream ---------------------------------------------------------------------------

    async def connect(self) -> WsClient:
        """The upgrade, ``<open/>``, and the first features."""
        connector = aiohttp.TCPConnector(ssl=insecure_context(), force_close=True,
                                         local_addr=(self.local_addr, 0) if self.local_addr else None)
        self.http = aiohttp.ClientSession(connector=connector)
        self.ws = await self.http.ws_connect(self.url, protocols=("xmpp",), headers=self.headers, autoping=True)
        await self.open()
        return self

    async def open(self) -> ET.Element:
        self.send(f"<open xmlns='{FRAMING}' to='{self.domain}' version='1.0'/>")
        opened = await self.next()
        assert opened.tag == f"{{{FRAMING}}}open", ET.tostring(opened)
        self.features = await self.next_named("features")
        return self.features

    def send(self, data: str) -> None:
        """One WebSocket message (one element), sent in order with the others."""
        assert self.ws is not None
        asyncio.get_running_loop().create_task(self.ws.send_str(data))

    async def next(self, match: Callable[[ET.Element], bool] | None = None, timeout: float = 10.0) -> ET.Element:
        """The next element (that ``match`` accepts: the others are skipped)."""
        assert self.ws is not None
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    self.closed = True
                    raise ConnectionError(f"the WebSocket ended: {msg.type.name} {msg.data!r}")
                el = ET.fromstring(msg.data)
                if match is None or match(el):
                    return el

    async def next_named(self, name: str, timeout: float = 10.0) -> ET.Element:
        return await self.next(lambda el: local(el) == name, timeout)

    async def messages(self, n: int, timeout: float = 10.0) -> list[ET.Element]:
        return [await self.next(lambda el: local(el) == "message", timeout) for _ in range(n)]

    # -- set-up ---------------------------------------------------------------------------------

    async def login(self, user: str, password: str) -> ET.Element:
        """SASL PLAIN, then the restart (a new ``<open/>``); the features after authentication."""
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        reply = await self.next()
        if local(reply) != "success":
            raise PermissionError(ET.tostring(reply).decode())
        return await self.open()

    async def bind(self, resource: str) -> str:
        self.send(f"<iq xmlns='jabber:client' type='set' id='bind1'><bind xmlns='{BIND}'>"
                  f"<resource>{resource}</resource></bind></iq>")
        reply = await self.next(lambda el: el.get("id") == "bind1")
        jid = reply.find(f".//{{{BIND}}}jid")
        assert jid is not None and jid.text, ET.tostring(reply)
        self.jid = jid.text
        return self.jid

    async def enable(self, resume: bool = True) -> ET.Element:
        self.send(f"<enable xmlns='{SM}'" + (" resume='true'" if resume else "") + "/>")
        return await self.next(lambda el: el.tag in (f"{{{SM}}}enabled", f"{{{SM}}}failed"))

    async def resume(self, previd: str, h: int) -> ET.Element:
        self.send(f"<resume xmlns='{SM}' previd='{previd}' h='{h}'/>")
        return await self.next(lambda el: el.tag in (f"{{{SM}}}resumed", f"{{{SM}}}failed"))

    async def start(self, user: str, password: str, resource: str, *, sm: bool = True) -> ET.Element | None:
        """Connect, log in, bind, and enable resumable SM; the ``<enabled/>``."""
        await self.connect()
        await self.login(user, password)
        await self.bind(resource)
        return await self.enable() if sm else None

    # -- ending ---------------------------------------------------------------------------------

    def die(self) -> None:
        """The network goes away: the TCP connection is reset, no ``<close/>``, no close frame."""
        assert self.ws is not None
        sock = self.ws.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn = self.ws._response.connection  # noqa: SLF001 — no public way to drop the socket
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
        self.closed = True

    async def close(self) -> None:
        """``<close/>``, the server's ``<close/>``, the closing handshake."""
        if self.ws is not None and not self.closed and not self.ws.closed:
            try:
                self.send(f"<close xmlns='{FRAMING}'/>")
                await self.next_named("close", timeout=3)
            except (ConnectionError, TimeoutError):
                pass
            await self.ws.close()
        self.closed = True
        if self.http is not None:
            await self.http.close()
