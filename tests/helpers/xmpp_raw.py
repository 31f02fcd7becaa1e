"""A minimal XMPP client over raw sockets, element by element, for tests that must see and send
exactly what is on the wire (XEP-0198 counters, malformed elements, a socket that just dies)."""

from __future__ import annotations

import asyncio
import base64
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

__all__ = ["RawClient", "SM", "CLIENT", "local"]

SM = "urn:xmpp:sm:3"
CLIENT = "jabber:client"
STREAM = "http://etherx.jabber.org/streams"


def local(el: ET.Element) -> str:
    """The element's name without its namespace."""
    return el.tag.rsplit("}", 1)[-1]


class RawClient:
    """One stream: STARTTLS, SASL PLAIN, then bind or resume; elements in, bytes out."""

    def __init__(self, port: int, cert: Path, *, domain: str = "localhost", source: str | None = None) -> None:
        self.port = port
        self.source = source  # local address to connect from (any 127.0.0.0/8 address on Linux)
        self.cert = cert
        self.domain = domain
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.jid: str | None = None
        self.features: ET.Element | None = None
        self._parser: ET.XMLPullParser | None = None
        self._depth = 0
        self._elements: list[ET.Element] = []
        self.closed = False
        self.sm_h: int | None = None  # XEP-0198: stanzas received since <enabled/> (None: SM off)

    # -- the stream ---------------------------------------------------------------------------

    def send(self, data: bytes | str) -> None:
        assert self.writer is not None
        self.writer.write(data.encode() if isinstance(data, str) else data)

    def _restart(self) -> None:
        self._parser = ET.XMLPullParser(events=("start", "end"))
        self._depth = 0
        self.send(f"<?xml version='1.0'?><stream:stream to='{self.domain}' version='1.0' xmlns='{CLIENT}' "
                  f"xmlns:stream='{STREAM}'>")

    async def next(self, match: Callable[[ET.Element], bool] | None = None, timeout: float = 10.0) -> ET.Element:
        """The next top-level element (that ``match`` accepts: the others are skipped)."""
        assert self.reader is not None and self._parser is not None
        async with asyncio.timeout(timeout):
            while True:
                while self._elements:
                    el = self._elements.pop(0)
                    if match is None or match(el):
                        return el
                data = await self.reader.read(65536)
                if not data:
                    self.closed = True
                    raise ConnectionError("the server closed the connection")
                self._parser.feed(data)
                for event, el in self._parser.read_events():
                    if event == "start":
                        self._depth += 1
                    else:
                        self._depth -= 1
                        if self._depth == 1:
                            self._count(el)
                            self._elements.append(el)
                        elif self._depth == 0:
                            self.closed = True
                            self._elements.append(el)  # </stream:stream>

    def _count(self, el: ET.Element) -> None:
        """Count what XEP-0198's ``h`` counts, from the ``<enabled/>``/``<resumed/>`` on."""
        if el.tag == f"{{{SM}}}enabled":
            self.sm_h = 0
        elif self.sm_h is not None and el.tag.startswith(f"{{{CLIENT}}}"):
            self.sm_h += 1

    def acknowledge(self) -> None:
        """Tell the server we have everything it sent (``<a h=…/>``), as a client does before a
        clean close: what is left unacknowledged is re-routed by the server (XEP-0198 §4)."""
        assert self.sm_h is not None, "stream management is not enabled"
        self.send(f"<a xmlns='{SM}' h='{self.sm_h}'/>")

    async def next_named(self, name: str, timeout: float = 10.0) -> ET.Element:
        return await self.next(lambda el: local(el) == name, timeout)

    async def messages(self, n: int, timeout: float = 10.0) -> list[ET.Element]:
        return [await self.next(lambda el: local(el) == "message", timeout) for _ in range(n)]

    # -- set-up ---------------------------------------------------------------------------------

    async def connect(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, local_addr=(self.source, 0) if self.source else None)
        self._restart()
        await self.next_named("features")
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self.next_named("proceed")
        ctx = ssl.create_default_context(cafile=str(self.cert))
        await self.writer.start_tls(ctx, server_hostname=self.domain)
        self._restart()
        self.features = await self.next_named("features")
        return self

    async def login(self, user: str, password: str) -> ET.Element:
        """SASL PLAIN; returns the post-authentication features."""
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        reply = await self.next()
        if local(reply) != "success":
            raise PermissionError(ET.tostring(reply).decode())
        self._restart()
        self.features = await self.next_named("features")
        return self.features

    async def bind(self, resource: str) -> str:
        self.send(f"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{resource}</resource></bind></iq>")
        reply = await self.next(lambda el: el.get("id") == "bind1")
        jid = reply.find(".//{urn:ietf:params:xml:ns:xmpp-bind}jid")
        assert jid is not None and jid.text, ET.tostring(reply)
        self.jid = jid.text
        return self.jid

    async def enable(self, resume: bool = True) -> ET.Element:
        self.send(f"<enable xmlns='{SM}'" + (" resume='true'" if resume else "") + "/>")
        return await self.next(lambda el: el.tag in (f"{{{SM}}}enabled", f"{{{SM}}}failed"))

    async def resume(self, previd: str, h: int) -> ET.Element:
        self.send(f"<resume xmlns='{SM}' previd='{previd}' h='{h}'/>")
        self.sm_h = h  # the count goes on from what the old stream had received
        return await self.next(lambda el: el.tag in (f"{{{SM}}}resumed", f"{{{SM}}}failed"))

    async def start(self, user: str, password: str, resource: str, *, sm: bool = True) -> ET.Element | None:
        """Connect, log in, bind, and enable resumable SM; the ``<enabled/>``."""
        await self.connect()
        await self.login(user, password)
        await self.bind(resource)
        return await self.enable() if sm else None

    # -- ending ---------------------------------------------------------------------------------

    def die(self) -> None:
        """The network goes away: the socket is reset, no ``</stream:stream>``."""
        if self.writer is not None:
            transport = self.writer.transport
            sock = transport.get_extra_info("socket")
            if sock is not None:
                import socket
                import struct

                # SO_LINGER 0: close() sends RST, the way a dead path looks to the server eventually
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        self.closed = True

    async def close(self) -> None:
        if self.writer is not None and not self.closed:
            try:
                self.send("</stream:stream>")
                await asyncio.wait_for(self.writer.drain(), 2)
            except (ConnectionError, TimeoutError):
                pass
            self.writer.close()
        self.closed = True
