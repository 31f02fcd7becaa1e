"""Raw XMPP over asyncio streams, for tests that must send what no client library would."""

from __future__ import annotations

import asyncio
import ssl

from .node import NodeProcess

__all__ = ["HEADER", "raw", "read_all", "read_until", "stream_error"]

HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams'>")


async def read_all(reader: asyncio.StreamReader, timeout: float = 15.0) -> bytes:
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    except (TimeoutError, ConnectionError):
        pass
    return data


async def read_until(reader: asyncio.StreamReader, marker: bytes, timeout: float = 10.0) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        while marker not in data:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
    return data


async def raw(node: NodeProcess, payload: bytes, *, tls: bool = False, chunk: int = 1 << 20) -> bytes:
    """Open a stream (optionally through STARTTLS), send ``payload``, return all the server said."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(HEADER)
    out = await read_until(reader, b"</stream:features>")
    if tls:
        writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await read_until(reader, b"<proceed")
        ctx = ssl.create_default_context(cafile=str(node.cert))
        await writer.start_tls(ctx, server_hostname="localhost")
        writer.write(HEADER)
        out = await read_until(reader, b"</stream:features>")
    try:
        for i in range(0, len(payload), chunk):
            writer.write(payload[i:i + chunk])
            await asyncio.wait_for(writer.drain(), 20)
    except (TimeoutError, ConnectionError):
        pass
    out += await read_all(reader)
    writer.close()
    return out


def stream_error(data: bytes, condition: str) -> bool:
    return (f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>".encode() in data
            and data.rstrip().endswith(b"</stream:stream>"))
