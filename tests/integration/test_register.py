"""XEP-0077 in-band registration: off by default, and when on: register, change password, cancel."""

from __future__ import annotations

import asyncio
import ssl
import xml.etree.ElementTree as ET

import pytest

from tests.helpers.node import NodeProcess
from tests.helpers.raw import HEADER, read_until
from tests.helpers.xmpp_client import AuthFailed, Client


async def tls_stream(node: NodeProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(HEADER)
    await read_until(reader, b"</stream:features>")
    writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    await read_until(reader, b"<proceed")
    await writer.start_tls(ssl.create_default_context(cafile=str(node.cert)), server_hostname="localhost")
    writer.write(HEADER)
    features = await read_until(reader, b"</stream:features>")
    return reader, writer, features


async def read_iq(reader: asyncio.StreamReader) -> bytes:
    """One IQ reply, whether self-closed (``<iq …/>``) or not."""
    data = b""
    async with asyncio.timeout(10):
        while not (b"</iq>" in data or (data.startswith(b"<iq") and data.rstrip().endswith(b"/>"))):
            chunk = await reader.read(65536)
            assert chunk, f"stream closed after {data!r}"
            data += chunk
    return data


REGISTER = (b"<iq type='set' id='reg1'><query xmlns='jabber:iq:register'>"
            b"<username>%s</username><password>%s</password></query></iq>")


async def test_registration_is_off_by_default(tmp_path):
    node = NodeProcess(tmp_path).start()
    try:
        reader, writer, features = await tls_stream(node)
        assert b"iq-register" not in features
        writer.write(REGISTER % (b"mallory", b"password-1"))
        reply = await read_until(reader, b"</stream:stream>")
        assert b"<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in reply
        writer.close()
        assert "mallory" not in node.ctl("account", "list-users", "--domain", "localhost").stdout
    finally:
        node.stop()


async def test_in_band_registration_when_enabled(tmp_path):
    node = NodeProcess(tmp_path, settings={"registration": {"allow_in_band": True, "min_password_length": 8}})
    node.start()
    try:
        reader, writer, features = await tls_stream(node)
        assert b"http://jabber.org/features/iq-register" in features
        writer.write(b"<iq type='get' id='g1'><query xmlns='jabber:iq:register'/></iq>")
        form = await read_iq(reader)
        assert b"<username" in form and b"<password" in form
        writer.write(REGISTER % (b"Newbie", b"short"))
        assert b"not-acceptable" in await read_iq(reader)
        writer.write(REGISTER % (b"newbie", b"long-enough-1"))
        assert b"type='result'" in await read_iq(reader)
        writer.write(REGISTER % (b"newbie", b"long-enough-1"))
        assert b"<conflict" in await read_iq(reader)
        writer.close()
        # The new account logs in, changes its password, then cancels its registration.
        c = await Client("newbie@localhost/r", "long-enough-1", cert=node.cert).online(node.port)
        iq = c.make_iq_set(ito="localhost")
        q = ET.SubElement(iq.xml, "{jabber:iq:register}query")
        for name, value in (("username", "newbie"), ("password", "changed-pass-2")):
            ET.SubElement(q, f"{{jabber:iq:register}}{name}").text = value
        await iq.send(timeout=5)
        await c.close()
        c = await Client("newbie@localhost/r", "changed-pass-2", cert=node.cert).online(node.port)
        iq = c.make_iq_set(ito="localhost")
        ET.SubElement(ET.SubElement(iq.xml, "{jabber:iq:register}query"), "{jabber:iq:register}remove")
        await iq.send(timeout=5)
        await c.close()
        gone = Client("newbie@localhost/r", "changed-pass-2", cert=node.cert)
        with pytest.raises(AuthFailed) as refused:
            await gone.login(node.port)
        assert refused.value.sasl == "not-authorized", refused.value
        await gone.close()
    finally:
        node.stop()
