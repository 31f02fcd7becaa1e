"""XMPP over WebSocket (RFC 7395) and XEP-0156 discovery against a real node: a raw aiohttp client,
xmpp.js over wss://, a TCP client on the other end, and /.well-known/host-meta(.json)."""

from __future__ import annotations

import base64
import ssl
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.helpers.node import NodeProcess
from tests.helpers.ports import free_ports
from tests.helpers.topologies import one_node
from tests.helpers.xmpp_raw import RawClient, local
from tests.helpers.xmppjs import js_client

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
OPEN = f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>"
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    [port] = free_ports(1)
    with one_node(tmp_path_factory.mktemp("ws-node"), "ws1", users=PASSWORDS,
                  settings={"websocket": {"host": "127.0.0.1", "port": port, "ping_interval": 5.0}}) as n:
        n.ws_port = port  # type: ignore[attr-defined]
        yield n


def url(node: NodeProcess, path: str = "/ws") -> str:
    return f"https://127.0.0.1:{node.ws_port}{path}"  # type: ignore[attr-defined]


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=insecure())) as s:
        yield s


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> ET.Element:
    msg = await ws.receive(timeout=timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return ET.fromstring(msg.data)  # each message parses on its own: namespaces declared on it


async def recv_named(ws: aiohttp.ClientWebSocketResponse, name: str) -> ET.Element:
    while True:
        el = await recv(ws)
        if local(el) == name:
            return el


async def ws_login(ws: aiohttp.ClientWebSocketResponse, user: str, resource: str) -> str:
    await ws.send_str(OPEN)
    opened = await recv(ws)
    assert opened.tag == f"{{{FRAMING}}}open" and opened.get("version") == "1.0" and opened.get("id")
    features = await recv(ws)
    assert features.tag == "{http://etherx.jabber.org/streams}features"
    assert features.find("{urn:ietf:params:xml:ns:xmpp-tls}starttls") is None  # never over WebSocket
    mechs = [m.text for m in features.iter("{urn:ietf:params:xml:ns:xmpp-sasl}mechanism")]
    assert "PLAIN" in mechs  # wss: TLS is the transport's
    token = base64.b64encode(f"\0{user}\0{PASSWORDS[user]}".encode()).decode()
    await ws.send_str(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    assert local(await recv(ws)) == "success"
    await ws.send_str(OPEN)  # the restart is a new <open/>
    assert (await recv(ws)).tag == f"{{{FRAMING}}}open"
    features = await recv(ws)
    assert features.find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is not None
    await ws.send_str(f"<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                      f"<resource>{resource}</resource></bind></iq>")
    reply = await recv(ws)
    assert reply.tag == "{jabber:client}iq" and reply.get("type") == "result", ET.tostring(reply)
    jid = reply.find(".//{urn:ietf:params:xml:ns:xmpp-bind}jid")
    assert jid is not None and jid.text
    return jid.text


async def test_raw_websocket_client_logs_in_and_chats_with_a_tcp_client(
        node: NodeProcess, session: aiohttp.ClientSession) -> None:
    bob = RawClient(node.port, node.cert)
    await bob.start("bob", PASSWORDS["bob"], "desk", sm=False)
    try:
        async with session.ws_connect(url(node), protocols=("xmpp",)) as ws:
            assert ws.protocol == "xmpp"
            jid = await ws_login(ws, "alice", "web")
            assert jid == "alice@localhost/web"
            await ws.send_str("<presence xmlns='jabber:client'/>")
            await ws.send_str("<message xmlns='jabber:client' to='bob@localhost/desk' type='chat' id='m1'>"
                              "<body>hello from the web</body></message>")
            [got] = await bob.messages(1)
            assert got.get("from") == "alice@localhost/web"
            assert got.findtext("{jabber:client}body") == "hello from the web"
            bob.send("<message to='alice@localhost/web' type='chat' id='m2'><body>hi back</body></message>")
            reply = await recv_named(ws, "message")
            assert reply.tag == "{jabber:client}message" and reply.findtext("{jabber:client}body") == "hi back"
            assert reply.get("from") == "bob@localhost/desk"
            await ws.send_str(f"<close xmlns='{FRAMING}'/>")
            close = await recv_named(ws, "close")
            assert close.tag == f"{{{FRAMING}}}close"
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    finally:
        await bob.close()


async def test_the_xmpp_subprotocol_is_required(node: NodeProcess, session: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with session.ws_connect(url(node), protocols=("chat",)):
            pass
    assert info.value.status == 400
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with session.ws_connect(url(node)):
            pass
    assert info.value.status == 400
    async with session.get(url(node)) as resp:  # not an upgrade at all
        assert resp.status == 426


async def test_a_malformed_message_is_a_stream_error_then_close(
        node: NodeProcess, session: aiohttp.ClientSession) -> None:
    async with session.ws_connect(url(node), protocols=("xmpp",)) as ws:
        await ws.send_str(OPEN)
        await recv(ws)
        await recv(ws)  # features
        await ws.send_str("<message xmlns='jabber:client'><body>unclosed</message>")
        error = await recv(ws)
        assert error.tag == "{http://etherx.jabber.org/streams}error"
        assert error.find("{urn:ietf:params:xml:ns:xmpp-streams}not-well-formed") is not None
        close = await recv(ws)
        assert close.tag == f"{{{FRAMING}}}close"
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_xmppjs_over_wss_logs_in_and_receives_a_message(node: NodeProcess) -> None:
    bob = RawClient(node.port, node.cert)
    await bob.start("bob", PASSWORDS["bob"], f"js-{uuid.uuid4().hex[:6]}", sm=False)
    try:
        async with js_client(service=f"wss://127.0.0.1:{node.ws_port}/ws",  # type: ignore[attr-defined]
                             domain="localhost", username="carol", password=PASSWORDS["carol"],
                             resource="browser") as c:
            online = await c.wait_event("online", timeout=20)
            jid = online["jid"]
            assert jid.startswith("carol@localhost/")
            bob.send(f"<message to='{jid}' type='chat' id='w1'><body>over websocket</body></message>")
            [msg] = await c.messages_until(1, timeout=10)
            assert msg["body"] == "over websocket" and msg["from"].startswith("bob@localhost/")
            await c.send_message(str(bob.jid), "from xmpp.js")
            [got] = await bob.messages(1)
            assert got.findtext("{jabber:client}body") == "from xmpp.js"
    finally:
        await bob.close()


async def test_host_meta_lists_the_websocket_endpoint(node: NodeProcess, session: aiohttp.ClientSession) -> None:
    endpoint = f"wss://127.0.0.1:{node.ws_port}/ws"  # type: ignore[attr-defined]
    async with session.get(url(node, "/.well-known/host-meta")) as resp:
        assert resp.status == 200
        xrd = ET.fromstring(await resp.text())
    links = [(link.get("rel"), link.get("href")) for link in xrd.iter("{http://docs.oasis-open.org/ns/xri/xrd-1.0}Link")]
    assert ("urn:xmpp:alt-connections:websocket", endpoint) in links
    async with session.get(url(node, "/.well-known/host-meta.json")) as resp:
        assert resp.status == 200
        assert resp.headers.get("Access-Control-Allow-Origin") == "*"
        body = await resp.json()
    assert {"rel": "urn:xmpp:alt-connections:websocket", "href": endpoint} in body["links"]
