"""XMPP over WebSocket (RFC 7395) and XEP-0156 discovery against a real node: a raw aiohttp client,
xmpp.js over wss://, a TCP client on the other end, and /.well-known/host-meta(.json)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
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


async def test_many_messages_in_one_read_arrive_in_order_and_a_bad_one_among_them_ends_the_stream(
        node: NodeProcess, session: aiohttp.ClientSession) -> None:
    """30 stanzas written to the socket in one go all arrive, in order, and a message that is not
    one element among others of one read is still a stream error.  (That the node hands such a
    read to the session as one batch is shown by the framing unit tests and the benchmark: one
    message at a time would pass this test too.)"""
    bob = RawClient(node.port, node.cert)
    await bob.start("bob", PASSWORDS["bob"], "batch", sm=False)
    try:
        async with session.ws_connect(url(node), protocols=("xmpp",)) as ws:
            await ws_login(ws, "alice", "batch")
            await ws.send_str("<presence xmlns='jabber:client'/>")
            frames = b"".join(masked(0x1, (f"<message xmlns='jabber:client' to='bob@localhost/batch' type='chat' "
                                            f"id='b{i}'><body>{i}</body></message>").encode()) for i in range(30))
            ws._writer.transport.write(frames)  # one write: the node reads them together
            got = await bob.messages(30)
            assert [m.get("id") for m in got] == [f"b{i}" for i in range(30)]
            assert all(m.get("from") == "alice@localhost/batch" for m in got)
            ws._writer.transport.write(masked(0x1, b"<message xmlns='jabber:client' to='bob@localhost/batch'/>")
                                       + masked(0x1, b"<message xmlns='jabber:client'/><iq xmlns='jabber:client'/>"))
            assert await stream_error(ws) == "not-well-formed"
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


# -- bad input: one complete element per text message, a size limit, the node stays up ------------------


async def opened(session: aiohttp.ClientSession, node: NodeProcess) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(url(node), protocols=("xmpp",))
    await ws.send_str(OPEN)
    await recv(ws)
    await recv(ws)  # features
    return ws


async def stream_error(ws: aiohttp.ClientWebSocketResponse) -> str:
    """The condition of the stream error the node sends, after checking the ``<close/>`` and the
    closing handshake that follow it."""
    error = await recv_named(ws, "error")
    assert error.tag == "{http://etherx.jabber.org/streams}error", ET.tostring(error)
    [condition] = [local(c) for c in error if c.tag.startswith("{urn:ietf:params:xml:ns:xmpp-streams}")
                   and local(c) != "text"]
    assert (await recv(ws)).tag == f"{{{FRAMING}}}close"
    msg = await ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    return condition


async def still_serves(node: NodeProcess, session: aiohttp.ClientSession) -> None:
    async with session.ws_connect(url(node), protocols=("xmpp",)) as ws:
        assert await ws_login(ws, "bob", f"after-{uuid.uuid4().hex[:6]}")


@pytest.mark.parametrize("frame", [
    "<message xmlns='jabber:client' to='bob@localhost'><body>one</body></message>"
    "<message xmlns='jabber:client' to='bob@localhost'><body>two</body></message>",  # two stanzas
    "<message xmlns='jabber:client' to='bob@localhost'><body>half a stanza",  # the rest never comes
    "just text",
    "<presence xmlns='jabber:client'/> trailing text",
], ids=["two-stanzas", "half-a-stanza", "text", "trailing-text"])
async def test_a_message_that_is_not_one_complete_element_is_not_well_formed(
        node: NodeProcess, session: aiohttp.ClientSession, frame: str) -> None:
    bob = RawClient(node.port, node.cert)
    await bob.start("bob", PASSWORDS["bob"], f"watch-{uuid.uuid4().hex[:6]}", sm=False)
    try:
        async with session.ws_connect(url(node), protocols=("xmpp",)) as ws:
            await ws_login(ws, "alice", f"bad-{uuid.uuid4().hex[:6]}")
            await ws.send_str(frame.replace("bob@localhost", str(bob.jid)))
            assert await stream_error(ws) == "not-well-formed"
        with pytest.raises(TimeoutError):  # neither of the two stanzas was routed
            await bob.next_named("message", timeout=0.5)
    finally:
        await bob.close()
    await still_serves(node, session)


async def test_a_binary_message_is_a_stream_error(node: NodeProcess, session: aiohttp.ClientSession) -> None:
    ws = await opened(session, node)
    await ws.send_bytes(b"<presence xmlns='jabber:client'/>")
    assert await stream_error(ws) == "not-well-formed"
    await ws.close()
    await still_serves(node, session)


async def test_a_stanza_over_the_size_limit_is_a_policy_violation(
        node: NodeProcess, session: aiohttp.ClientSession) -> None:
    ws = await opened(session, node)  # max_stanza_size is 262,144 bytes (the default)
    body = "x" * 262_500
    await ws.send_str(f"<message xmlns='jabber:client' to='bob@localhost'><body>{body}</body></message>")
    assert await stream_error(ws) == "policy-violation"
    await ws.close()
    await still_serves(node, session)


async def test_a_flood_over_the_byte_shaper_is_a_policy_violation(
        node: NodeProcess, session: aiohttp.ClientSession) -> None:
    """The c2s byte shaper (``limits.shaper_rate`` 100 kB/s, burst 500 kB, ``shaper_max_throttle``
    10 s: the defaults) holds over WebSocket as over TCP: 3 MB of stanzas as fast as the socket
    takes them end the stream with <policy-violation/>, and the node serves the next client."""
    async with session.ws_connect(url(node), protocols=("xmpp",)) as ws:
        jid = await ws_login(ws, "alice", f"flood-{uuid.uuid4().hex[:6]}")
        frame = (f"<message xmlns='jabber:client' to='{jid}' type='headline'><body>{'x' * 60_000}</body>"
                 "</message>")

        async def flood() -> None:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                for _ in range(50):
                    await ws.send_str(frame)

        sender = asyncio.get_running_loop().create_task(flood())
        error = await recv_named(ws, "error")
        sender.cancel()
        assert error.find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None, ET.tostring(error)
        assert "too fast" in (error.findtext("{urn:ietf:params:xml:ns:xmpp-streams}text") or "")
    await still_serves(node, session)


async def test_a_10_mb_message_closes_the_websocket_before_it_is_read(
        node: NodeProcess, session: aiohttp.ClientSession) -> None:
    ws = await opened(session, node)
    await ws.send_str("<message xmlns='jabber:client'><body>" + "x" * (10 * 1024 * 1024) + "</body></message>")
    msg = await ws.receive(timeout=10)
    while msg.type is aiohttp.WSMsgType.TEXT:  # whatever the node sent before it saw the frame's length
        msg = await ws.receive(timeout=10)
    # aiohttp refuses the frame from its header (RFC 6455's 1009), no 10 MB buffered: nothing of the
    # stream can follow a close frame, so there is no stream error
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG, msg
    await ws.close()
    await still_serves(node, session)
    assert node.alive()


# -- a plain ws:// listener behind a proxy: origins, X-Forwarded-*, per-IP limits, keep-alive ------------

ORIGIN = "https://chat.example"
PROXY = "127.0.0.2"  # the trusted proxy: the test connects from this loopback address


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    [port] = free_ports(1)
    ws = {"host": "127.0.0.1", "port": port, "tls": False, "allowed_origins": [ORIGIN],
          "trusted_proxies": [f"{PROXY}/32"], "ping_interval": 1.0}
    with one_node(tmp_path_factory.mktemp("ws-guarded"), "ws2", users=PASSWORDS,
                  settings={"websocket": ws, "limits": {"max_connections_per_ip": 2}}) as n:
        n.ws_port = port  # type: ignore[attr-defined]
        yield n


def plain_url(node: NodeProcess) -> str:
    return f"http://127.0.0.1:{node.ws_port}/ws"  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def client_from(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client whose connections come from ``address`` (a loopback address of this machine)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0),
                                                                     force_close=True)) as s:
        yield s


async def first_features(ws: aiohttp.ClientWebSocketResponse) -> ET.Element:
    await ws.send_str(OPEN)
    assert (await recv(ws)).tag == f"{{{FRAMING}}}open"
    return await recv_named(ws, "features")


def mechanisms(features: ET.Element) -> list[str]:
    return [m.text or "" for m in features.iter("{urn:ietf:params:xml:ns:xmpp-sasl}mechanism")]


async def test_only_allowed_origins_may_connect(guarded: NodeProcess) -> None:
    async with client_from("127.0.0.1") as s:
        for headers in ({"Origin": "https://evil.example"}, {}):  # a browser always sends one
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                async with s.ws_connect(plain_url(guarded), protocols=("xmpp",), headers=headers):
                    pass
            assert info.value.status == 403, headers
        async with s.ws_connect(plain_url(guarded), protocols=("xmpp",), headers={"Origin": ORIGIN}) as ws:
            assert (await first_features(ws)).tag == "{http://etherx.jabber.org/streams}features"


async def test_forwarded_headers_count_only_from_a_trusted_proxy(guarded: NodeProcess) -> None:
    https = {"Origin": ORIGIN, "X-Forwarded-Proto": "https"}
    # Not from the proxy: X-Forwarded-Proto is ignored, ws:// is not TLS, so no SASL before TLS (and
    # STARTTLS does not exist over WebSocket).
    async with client_from("127.0.0.1") as s, \
            s.ws_connect(plain_url(guarded), protocols=("xmpp",), headers=https) as ws:
        assert mechanisms(await first_features(ws)) == []
    # From the proxy: it terminated TLS, PLAIN is offered and works.
    async with client_from(PROXY) as s, \
            s.ws_connect(plain_url(guarded), protocols=("xmpp",), headers=https) as ws:
        assert "PLAIN" in mechanisms(await first_features(ws))
        await ws.send_str("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                          + base64.b64encode(b"\0alice\0" + PASSWORDS["alice"].encode()).decode() + "</auth>")
        assert local(await recv(ws)) == "success"
    # From the proxy, saying plain http: no SASL either.
    async with client_from(PROXY) as s, \
            s.ws_connect(plain_url(guarded), protocols=("xmpp",),
                         headers={"Origin": ORIGIN, "X-Forwarded-Proto": "http"}) as ws:
        assert mechanisms(await first_features(ws)) == []


async def refused(ws: aiohttp.ClientWebSocketResponse) -> bool:
    """Whether the node refused this connection with a policy-violation stream error (sent at once,
    with the node's ``<open/>``: our own may find the connection closing already)."""
    with contextlib.suppress(aiohttp.ClientConnectionResetError):
        await ws.send_str(OPEN)
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            return False
        el = ET.fromstring(msg.data)
        if local(el) == "features":
            return False
        if local(el) == "error":
            return el.find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None


async def test_per_ip_connection_limit_counts_the_client_behind_a_trusted_proxy(guarded: NodeProcess) -> None:
    """``max_connections_per_ip`` (2) as for TCP: per client address, which behind the trusted proxy
    is the one it forwards; anyone else's X-Forwarded-For is not believed."""
    async def connect(s: aiohttp.ClientSession, forwarded_for: str) -> aiohttp.ClientWebSocketResponse:
        return await s.ws_connect(plain_url(guarded), protocols=("xmpp",),
                                  headers={"Origin": ORIGIN, "X-Forwarded-For": forwarded_for})

    async with client_from("127.0.0.1") as direct, client_from(PROXY) as proxy:
        # Direct: three "different" forwarded addresses are all 127.0.0.1; the third is refused.
        open_ = [await connect(direct, f"198.51.100.{i}") for i in (1, 2)]
        assert [await refused(ws) for ws in open_] == [False, False]
        third = await connect(direct, "198.51.100.3")
        assert await refused(third)
        # Through the proxy: each forwarded client has its own budget of two …
        behind = [await connect(proxy, f"203.0.113.{i}") for i in (1, 2, 3)]
        assert [await refused(ws) for ws in behind] == [False, False, False]
        # … and it is the last address of X-Forwarded-For (the one the proxy appended): what a client
        # put before it proves nothing.
        same = [await connect(proxy, f"10.0.0.{i}, 192.0.2.99") for i in (1, 2, 3)]
        assert [await refused(ws) for ws in same] == [False, False, True]
        for ws in [*open_, third, *behind, *same]:
            await ws.close()
    async with client_from("127.0.0.1") as s:  # the closed ones gave their places back
        ws = await connect(s, "")
        assert not await refused(ws)
        await ws.close()


async def test_ping_pong_keeps_a_live_client_and_drops_a_silent_one(guarded: NodeProcess) -> None:
    async with client_from(PROXY) as s:
        headers = {"Origin": ORIGIN, "X-Forwarded-Proto": "https"}
        # A client that answers pings stays, idle for several intervals (aiohttp answers them while
        # something reads: receive() times out with nothing but pings having come).
        async with s.ws_connect(plain_url(guarded), protocols=("xmpp",), headers=headers) as live:
            await ws_login(live, "bob", "live")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(3.5):  # receive(timeout=) restarts its clock at each ping
                    await live.receive()
            await live.send_str("<iq xmlns='jabber:client' type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
            assert (await recv_named(live, "iq")).get("type") == "result"
        # One that does not answer is pinged, then dropped once the pong is overdue (half an interval).
        async with s.ws_connect(plain_url(guarded), protocols=("xmpp",), headers=headers, autoping=False) as silent:
            await ws_login(silent, "bob", "silent")
            kinds = []
            async with asyncio.timeout(10):
                while (msg := await silent.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                                                   aiohttp.WSMsgType.ERROR):
                    kinds.append(msg.type)
            assert aiohttp.WSMsgType.PING in kinds, kinds


async def test_the_idle_timeout_counts_from_the_last_input_over_websocket_and_tcp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``c2s.idle_timeout`` (1.5 s here) after the last thing a client sent, whatever the transport:
    a client that keeps talking stays past it, a silent one gets ``connection-timeout``."""
    [port] = free_ports(1)
    with one_node(tmp_path, "ws3", users=PASSWORDS, settings={"websocket": {"host": "127.0.0.1", "port": port},
                                                                "c2s": {"idle_timeout": 1.5}}) as n:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=insecure())) as s, \
                s.ws_connect(f"https://127.0.0.1:{port}/ws", protocols=("xmpp",)) as ws:
            tcp = RawClient(n.port, n.cert)
            await tcp.start("bob", PASSWORDS["bob"], "idle", sm=False)
            await ws_login(ws, "alice", "idle")
            loop = asyncio.get_running_loop()
            started = loop.time()
            while loop.time() - started < 3.0:  # twice the timeout, talking every 0.5 s
                await ws.send_str("<presence xmlns='jabber:client'/>")
                tcp.send("<presence/>")
                silent_since = loop.time()
                await asyncio.sleep(0.5)
            assert await stream_error(ws) == "connection-timeout"
            error = await tcp.next_named("error", timeout=5)
            assert error.find("{urn:ietf:params:xml:ns:xmpp-streams}connection-timeout") is not None
            assert 1.2 < loop.time() - silent_since < 4.0
            await tcp.close()


# -- RFC 6455 framing: the node's own frame reader -------------------------------------------------------


async def test_a_ping_from_the_client_gets_a_pong_with_its_payload(guarded: NodeProcess) -> None:
    async with client_from("127.0.0.1") as s, \
            s.ws_connect(plain_url(guarded), protocols=("xmpp",), headers={"Origin": ORIGIN}, autoping=False) as ws:
        await ws.ping(b"are you there")
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.PONG and msg.data == b"are you there", msg


async def test_the_peer_closing_first_gets_its_code_echoed(guarded: NodeProcess) -> None:
    async with client_from("127.0.0.1") as s:
        ws = await s.ws_connect(plain_url(guarded), protocols=("xmpp",), headers={"Origin": ORIGIN})
        assert (await first_features(ws)).tag == "{http://etherx.jabber.org/streams}features"
        assert await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        assert ws.close_code == aiohttp.WSCloseCode.GOING_AWAY


def masked(opcode: int, payload: bytes = b"", *, fin: bool = True, key: bytes = b"\x0f\x1e\x2d\x3c") -> bytes:
    """A client's frame (RFC 6455 §5.2), for what aiohttp's client never sends: fragments."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@contextlib.asynccontextmanager
async def raw_websocket(node: NodeProcess) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A WebSocket by hand on a socket: the upgrade, then whatever bytes the test writes."""
    port = node.ws_port  # type: ignore[attr-defined]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        key = base64.b64encode(uuid.uuid4().bytes).decode()
        writer.write(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n"
                     f"Origin: {ORIGIN}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 "), head
        yield reader, writer
    finally:
        writer.close()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame from the node (opcode, payload): final and unmasked, as a server's are."""
    b0, b1 = await asyncio.wait_for(reader.readexactly(2), 5)
    assert b0 & 0x80 and not b1 & 0x80, (b0, b1)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await asyncio.wait_for(reader.readexactly(n), 5)


async def test_a_fragmented_message_with_a_ping_between_its_fragments(guarded: NodeProcess) -> None:
    """Fragments are one message (RFC 6455 §5.4); a control frame may come between them; several
    frames in one read and a frame cut across reads are all the same to the node."""
    async with raw_websocket(guarded) as (reader, writer):
        data = OPEN.encode()
        frames = (masked(0x1, data[:10], fin=False) + masked(0x9, b"mid") + masked(0x0, data[10:30], fin=False)
                  + masked(0x0, data[30:]))
        writer.write(frames[:17])  # a cut inside the second frame's header
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(frames[17:])
        got = [await read_frame(reader) for _ in range(3)]
        assert got[0] == (0xA, b"mid")  # the pong first: the message was not complete then
        assert [op for op, _ in got[1:]] == [0x1, 0x1]
        assert ET.fromstring(got[1][1]).tag == f"{{{FRAMING}}}open"
        assert local(ET.fromstring(got[2][1])) == "features"


@pytest.mark.parametrize("bad", [
    bytes([0x81, 5]) + b"<a/>x",  # unmasked
    bytes([0xC1, 0x84]) + b"\0\0\0\0<a/>",  # RSV1: no extension was negotiated
    masked(0x9, b"x", fin=False),  # a fragmented ping
    masked(0x0, b"<a/>"),  # a continuation of nothing
], ids=["unmasked", "rsv1", "fragmented-ping", "lone-continuation"])
async def test_a_broken_frame_is_closed_with_1002(guarded: NodeProcess, bad: bytes) -> None:
    async with raw_websocket(guarded) as (reader, writer):
        writer.write(bad)
        opcode, payload = await read_frame(reader)
        assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1002, payload
        # then the node drops the socket (a close frame would not be read after a broken frame)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 4) == b""
    async with client_from("127.0.0.1") as s, \
            s.ws_connect(plain_url(guarded), protocols=("xmpp",), headers={"Origin": ORIGIN}) as ws:
        assert (await first_features(ws)).tag == "{http://etherx.jabber.org/streams}features"
