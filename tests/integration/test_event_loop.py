"""The node on each event loop (``event_loop``): uvloop's transports are not asyncio's classes, so
STARTTLS (``loop.start_tls``), direct TLS (XEP-0368) and the routing between them are run on both."""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path

import pytest

from tests.helpers.raw import read_until
from tests.helpers.topologies import one_node
from tests.helpers.xmpp_raw import RawClient, local

pytestmark = pytest.mark.asyncio

HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams'>")


@pytest.mark.parametrize("choice", ["asyncio", "uvloop"])
async def test_starttls_and_direct_tls_clients_chat(tmp_path: Path, choice: str) -> None:
    with one_node(tmp_path, "n1", users=["alice", "bob"], password="pw-123456",
                  settings={"event_loop": choice}) as node:
        alice = RawClient(node.port, node.cert)  # STARTTLS: the loop upgrades the plain transport
        await alice.connect()
        await alice.login("alice", "pw-123456")
        alice_jid = await alice.bind("starttls")
        # bob over direct TLS (XEP-0368): the listener's own TLS transport
        ctx = ssl.create_default_context(cafile=str(node.cert))
        reader, writer = await asyncio.open_connection("127.0.0.1", node.tls_port, ssl=ctx,
                                                       server_hostname="localhost")
        writer.write(HEADER)
        await read_until(reader, b"</stream:features>")
        token = base64.b64encode(b"\0bob\0pw-123456")
        writer.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + token + b"</auth>")
        assert b"<success" in await read_until(reader, b"success")
        writer.write(HEADER)
        await read_until(reader, b"</stream:features>")
        writer.write(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                     b"<resource>direct</resource></bind></iq>")
        await read_until(reader, b"</iq>")
        writer.write(f"<message to='{alice_jid}' type='chat'><body>over direct TLS</body></message>".encode())
        got = await alice.next(lambda el: local(el) == "message")
        assert got.findtext("{jabber:client}body") == "over direct TLS"
        alice.send("<message to='bob@localhost/direct' type='chat'><body>over STARTTLS</body></message>")
        assert b"over STARTTLS" in await read_until(reader, b"</message>")
        writer.close()
        await alice.close()
        assert f"event loop: {choice}" in node.log()
