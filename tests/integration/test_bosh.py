"""XMPP over BOSH (XEP-0124, XEP-0206) against real nodes over real HTTP: SCRAM login and a chat
with a TCP client, rid retransmission, terminate, inactivity (the user goes unavailable), bad
input answered with the right status and condition, host-meta, and a session whose requests
alternate between the two nodes of a region (forwarded to the node that holds it)."""

from __future__ import annotations

import asyncio
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.helpers.node import NodeProcess
from tests.helpers.ports import free_port, free_ports
from tests.helpers.raw import HEADER, read_all, stream_error
from tests.helpers.topologies import fresh, one_node, secret, two_node_region
from tests.helpers.xmpp_bosh import HTTPBIND, SASL, BoshClient, ScramSha1, insecure_context
from tests.helpers.xmpp_raw import SM, RawClient, local

PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret", "dave": "dave-secret"}
ORIGIN = "https://chat.example.net"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    [port] = free_ports(1)
    settings = {"websocket": {"host": "127.0.0.1", "port": port},
                "bosh": {"max_wait": 10, "inactivity": 3, "max_body_size": 16_384, "max_sessions": 60}}
    # No users: each test registers its own (fresh()), none shares one with another test.
    with one_node(tmp_path_factory.mktemp("bosh-node"), "bosh1", settings=settings) as n:
        n.web_port = port  # type: ignore[attr-defined]
        yield n




def url(node: NodeProcess, path: str = "/http-bind") -> str:
    return f"https://127.0.0.1:{node.web_port}{path}"  # type: ignore[attr-defined]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=insecure_context())) as s:
        yield s


@pytest.fixture
async def bob(node: NodeProcess) -> AsyncIterator[RawClient]:
    name = fresh(node, "bob")
    client = RawClient(node.port, node.cert)
    await client.start(name, secret(name), f"desk-{uuid.uuid4().hex[:6]}", sm=False)
    yield client
    await client.close()


def terminated(data: bytes) -> str | None:
    """The condition of a terminate ``<body/>`` ('' without one); None if it is not one."""
    root = ET.fromstring(data)
    assert root.tag == f"{{{HTTPBIND}}}body", data
    return root.get("condition", "") if root.get("type") == "terminate" else None


async def test_scram_login_over_bosh_and_a_chat_with_a_tcp_client(node: NodeProcess, bob: RawClient) -> None:
    a = fresh(node, "alice")
    alice = BoshClient(url(node), wait=30, hold=5)
    try:
        jid = await alice.login(a, secret(a), "web")
        assert jid == f"{a}@localhost/web"
        session = alice.session
        assert session is not None
        # the node's limits, not the client's wishes (wait 30, hold 5)
        assert (session.get("wait"), session.get("hold"), session.get("requests")) == ("10", "1", "2")
        assert session.get("inactivity") == "3" and session.get("ver") == "1.11" and session.get("from") == "localhost"
        assert session.get("authid") and session.get("{urn:xmpp:xbosh}version") == "1.0"
        alice.send("<presence xmlns='jabber:client'/>")
        alice.send(f"<message xmlns='jabber:client' to='{bob.jid}' type='chat' id='m1'><body>hello over BOSH</body>"
                   "</message>")
        [got] = await bob.messages(1)
        assert got.get("from") == jid and got.findtext("{jabber:client}body") == "hello over BOSH"
        bob.send(f"<message to='{jid}' type='chat' id='m2'><body>hi back</body></message>")
        [reply] = await alice.messages(1)
        assert reply.get("from") == bob.jid and reply.findtext("{jabber:client}body") == "hi back"
        end = await alice.terminate("<presence xmlns='jabber:client' type='unavailable'/>")
        assert end.get("type") == "terminate" and end.get("condition") is None
        status, data = await alice.post(alice.body())  # the session is gone
        assert status == 404 and terminated(data) == "item-not-found"
    finally:
        await alice.close()


async def test_a_retransmitted_rid_gets_the_same_response(node: NodeProcess) -> None:
    carol = fresh(node, "carol")
    c = BoshClient(url(node))
    try:
        first = c.body(to="localhost", wait="10", hold="1", ver="1.11", xmpp__version="1.0")
        status, created = await c.post(first)
        assert status == 200
        c.sid = ET.fromstring(created).get("sid")
        scram = ScramSha1(carol, secret(carol))
        auth = c.body(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{scram.first()}</auth>")
        status, challenge = await c.post(auth)
        [el] = ET.fromstring(challenge)
        assert status == 200 and local(el) == "challenge"
        assert await c.post(auth) == (200, challenge)  # not a second <auth/>: the same challenge
        # a rid older than the window of cached responses ends the session
        status, data = await c.post(c.body(rid=c.rid - 5))
        assert status == 200 and terminated(data) == "item-not-found"
    finally:
        await c.close()


async def test_inactivity_ends_the_session_and_the_user_goes_unavailable(node: NodeProcess, bob: RawClient) -> None:
    d = fresh(node, "dave")
    dave = BoshClient(url(node), wait=2)
    try:
        jid = await dave.login(d, secret(d), "tab")
        dave.send(f"<presence xmlns='jabber:client' to='{bob.jid}'/>")  # directed presence to bob
        seen = await bob.next(lambda el: local(el) == "presence" and el.get("from") == jid)
        assert seen.get("type") is None
        await dave.close()  # the browser tab is gone: no more requests
        gone = await bob.next(lambda el: local(el) == "presence" and el.get("from") == jid, timeout=20)
        assert gone.get("type") == "unavailable"
    finally:
        await dave.close()
    late = BoshClient(url(node))
    try:
        status, data = await late.post(dave.body(sid=dave.sid))
        assert status == 404 and terminated(data) == "item-not-found"
    finally:
        await late.close()


async def test_a_bosh_session_that_went_away_resumes_over_tcp(node: NodeProcess, bob: RawClient) -> None:
    """XEP-0198 across transports: enabled over BOSH, detached by inactivity, resumed over TCP."""
    a = fresh(node, "alice")
    alice = BoshClient(url(node), wait=2)
    try:
        jid = await alice.login(a, secret(a), "roaming")
        alice.send(f"<enable xmlns='{SM}' resume='true'/>")
        enabled = await alice.next(lambda el: el.tag == f"{{{SM}}}enabled")
        assert enabled.get("resume") in ("true", "1") and enabled.get("id")
    finally:
        await alice.close()  # no more requests: the session detaches after wait + inactivity
    await asyncio.sleep(2 + 3 + 1)
    bob.send(f"<message to='{jid}' type='chat' id='q1'><body>while you were away</body></message>")
    tcp = RawClient(node.port, node.cert)
    try:
        await tcp.connect()
        await tcp.login(a, secret(a))
        resumed = await tcp.resume(enabled.get("id", ""), 0)
        assert resumed.tag == f"{{{SM}}}resumed", ET.tostring(resumed)
        [msg] = await tcp.messages(1)
        assert msg.findtext("{jabber:client}body") == "while you were away"
    finally:
        await tcp.close()


async def test_bad_input_gets_the_right_status_and_condition(node: NodeProcess, http: aiohttp.ClientSession) -> None:
    async def post(data: str | bytes) -> tuple[int, bytes]:
        async with http.post(url(node), data=data, headers={"Content-Type": "text/xml"}) as resp:
            return resp.status, await resp.read()

    c_user = fresh(node, "carol")
    c = BoshClient(url(node), hold=1000)
    try:
        session = await c.create()
        assert session.get("hold") == "1" and session.get("requests") == "2"  # hold 1000 lowered to the limit
        # a rid far ahead: beyond the window, the session ends
        status, data = await c.post(c.body(rid=c.rid + 10_000_000))
        assert status == 200 and terminated(data) == "item-not-found"
    finally:
        await c.close()
    assert (await post(b"this is not XML"))[0] == 400
    status, data = await post(f"<body xmlns='{HTTPBIND}' rid='1'><message>".encode())
    assert status == 400 and terminated(data) == "bad-request"
    status, data = await post(f"<body xmlns='{HTTPBIND}' rid='1' to='localhost'><!DOCTYPE x></body>".encode())
    assert status == 400 and terminated(data) == "bad-request"
    status, data = await post(f"<body xmlns='{HTTPBIND}' rid='1' sid='nope' />")
    assert status == 404 and terminated(data) == "item-not-found"
    status, data = await post(f"<body xmlns='{HTTPBIND}' rid='1' sid='abc.no-such-node' />")
    assert status == 404 and terminated(data) == "item-not-found"
    status, data = await post(f"<body xmlns='{HTTPBIND}' rid='1' to='elsewhere.example' ver='1.11' wait='5' hold='1'/>")
    assert status == 200 and terminated(data) == "host-unknown"
    status, data = await post(f"<body xmlns='{HTTPBIND}' rid='1' wait='5' hold='1' ver='1.11'/>")
    assert status == 200 and terminated(data) == "improper-addressing"
    status, data = await post(f"<body xmlns='{HTTPBIND}' rid='1' to='localhost'><message>"
                              + "x" * 20_000 + "</message></body>")
    assert status == 413
    async with http.get(url(node)) as resp:
        assert resp.status == 405 and "POST" in resp.headers["Allow"]
    async with http.options(url(node), headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}) as resp:
        assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    # the node is still up and serving
    carol = BoshClient(url(node))
    try:
        assert await carol.login(c_user, secret(c_user), "after") == f"{c_user}@localhost/after"
    finally:
        await carol.close()


async def test_sessions_left_idle_are_bounded_and_expire(node: NodeProcess, http: aiohttp.ClientSession) -> None:
    async def create() -> str | None:
        data = (f"<body xmlns='{HTTPBIND}' rid='{uuid.uuid4().int % 10**9}' to='localhost' wait='5' hold='1' "
                "ver='1.11' xmlns:xmpp='urn:xmpp:xbosh' xmpp:version='1.0'/>")
        async with http.post(url(node), data=data) as resp:
            assert resp.status == 200
            return terminated(await resp.read())

    c_user = fresh(node, "carol")
    results = await asyncio.gather(*(create() for _ in range(100)))  # created, never used again
    assert results.count(None) <= 60 and results.count("policy-violation") >= 40  # bosh.max_sessions
    assert set(results) <= {None, "policy-violation"}
    await asyncio.sleep(3 + 1)  # inactivity: every one of them ended
    assert await create() is None
    carol = BoshClient(url(node))
    try:
        assert await carol.login(c_user, secret(c_user), "after-flood") == f"{c_user}@localhost/after-flood"
    finally:
        await carol.close()


async def test_a_bad_payload_is_a_remote_stream_error(node: NodeProcess) -> None:
    c = BoshClient(url(node))
    try:
        await c.create()
        status, data = await c.post(c.body("<message xmlns='urn:not:a:stanza'/>"))
        root = ET.fromstring(data)
        assert status == 200 and root.get("type") == "terminate" and root.get("condition") == "remote-stream-error"
        assert root.find("{http://etherx.jabber.org/streams}error") is not None
    finally:
        await c.close()


async def test_host_meta_lists_the_bosh_endpoint(node: NodeProcess, http: aiohttp.ClientSession) -> None:
    endpoint = url(node)
    async with http.get(url(node, "/.well-known/host-meta")) as resp:
        xrd = ET.fromstring(await resp.text())
    links = [(link.get("rel"), link.get("href")) for link in xrd.iter("{http://docs.oasis-open.org/ns/xri/xrd-1.0}Link")]
    assert ("urn:xmpp:alt-connections:xbosh", endpoint) in links
    assert ("urn:xmpp:alt-connections:websocket", f"wss://127.0.0.1:{node.web_port}/ws") in links  # type: ignore[attr-defined]
    async with http.get(url(node, "/.well-known/host-meta.json")) as resp:
        body = await resp.json()
    assert {"rel": "urn:xmpp:alt-connections:xbosh", "href": endpoint} in body["links"]


# -- two nodes behind a round-robin load balancer ----------------------------------------------------------


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    ports = {"r1": free_port(), "r2": free_port()}

    def settings(name: str) -> dict[str, object]:
        return {"websocket": {"host": "127.0.0.1", "port": ports[name]},
                "bosh": {"max_wait": 10, "allowed_origins": [ORIGIN]}}

    with two_node_region(tmp_path_factory.mktemp("bosh-region"), users=PASSWORDS, settings=settings) as nodes:
        for n in nodes:
            n.web_port = ports[n.name]  # type: ignore[attr-defined]
        yield nodes


async def test_a_session_whose_requests_alternate_between_the_nodes(region: list[NodeProcess]) -> None:
    r1, r2 = region
    bob = RawClient(r2.port, r2.cert)
    await bob.start("bob", PASSWORDS["bob"], "desk", sm=False)
    alice = BoshClient([url(r1), url(r2)], headers={"Origin": ORIGIN})  # round robin, created on r1
    try:
        jid = await alice.login("alice", PASSWORDS["alice"], "lb")
        assert alice.sid is not None and alice.sid.endswith(".r1")
        alice.send("<presence xmlns='jabber:client'/>")
        for i in range(4):  # requests reach both nodes; r2 forwards its share to r1
            alice.send(f"<message xmlns='jabber:client' to='bob@localhost/desk' type='chat' id='lb{i}'>"
                       f"<body>n{i}</body></message>")
        got = await bob.messages(4)
        assert [m.findtext("{jabber:client}body") for m in got] == ["n0", "n1", "n2", "n3"]
        assert all(m.get("from") == jid for m in got)
        bob.send(f"<message to='{jid}' type='chat'><body>to the web</body></message>")
        [msg] = await alice.messages(1)
        assert msg.findtext("{jabber:client}body") == "to the web"
        assert alice._next_url >= 6  # many requests, half of them through r2
    finally:
        await alice.close()
        await bob.close()


async def test_origins_are_checked(region: list[NodeProcess], http: aiohttp.ClientSession) -> None:
    r1, _ = region
    async with http.options(url(r1), headers={"Origin": ORIGIN}) as resp:
        assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    async with http.options(url(r1), headers={"Origin": "https://evil.example"}) as resp:
        assert resp.status == 403
    async with http.post(url(r1), data=f"<body xmlns='{HTTPBIND}' rid='1' to='localhost'/>",
                         headers={"Origin": "https://evil.example"}) as resp:
        assert resp.status == 403


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    [port] = free_ports(1)
    settings = {"websocket": {"host": "127.0.0.1", "port": port}, "limits": {"max_connections_per_ip": 2},
                "bosh": {"max_wait": 10, "inactivity": 30}}
    with one_node(tmp_path_factory.mktemp("bosh-limited"), "boshlim1", settings=settings) as n:
        n.web_port = port  # type: ignore[attr-defined]
        yield n


async def test_the_per_address_limit_counts_bosh_sessions_as_tcp_connections(limited: NodeProcess) -> None:
    """``limits.max_connections_per_ip`` (2) as for TCP: a third BOSH session from the address is
    refused with the stream error ``policy-violation`` (wrapped, XEP-0206), a TCP connection too;
    a session ended gives its place back."""
    sessions = [BoshClient(url(limited)) for _ in range(3)]
    try:
        for s in sessions[:2]:
            await s.create()
        status, data = await sessions[2].post(sessions[2].body(to="localhost", wait="5", hold="1", ver="1.11",
                                                               xmpp__version="1.0"))
        # XEP-0206 §7: the stream error, as for TCP, inside a remote-stream-error terminate.
        assert terminated(data) == "remote-stream-error", (status, data)
        error = ET.fromstring(data).find("{http://etherx.jabber.org/streams}error")
        assert error is not None and error.find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", limited.port)  # the same budget
        try:
            writer.write(HEADER)
            data = await read_all(reader)
            assert stream_error(data, "policy-violation"), data
        finally:
            writer.close()
        await sessions[0].terminate()
        fresh_one = BoshClient(url(limited))
        sessions.append(fresh_one)
        for _ in range(50):  # the place comes back once the ended session's connection is closed
            status, data = await fresh_one.post(fresh_one.body(to="localhost", wait="5", hold="1", ver="1.11",
                                                               xmpp__version="1.0"))
            if terminated(data) is None:
                break
            await asyncio.sleep(0.1)
        assert status == 200 and terminated(data) is None, data
    finally:
        for s in sessions:
            await s.close()


SHAPER_RATE, SHAPER_BURST, MAX_THROTTLE = 20_000, 40_000, 2.0  # bytes/s, bytes, seconds


@pytest.fixture(scope="module")
def shaped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    [port] = free_ports(1)
    settings = {"websocket": {"host": "127.0.0.1", "port": port}, "bosh": {"max_body_size": 16_384},
                "limits": {"shaper_rate": SHAPER_RATE, "shaper_burst": SHAPER_BURST,
                           "shaper_max_throttle": MAX_THROTTLE}}
    with one_node(tmp_path_factory.mktemp("bosh-shaped"), "bosh3", settings=settings) as n:
        n.web_port = port  # type: ignore[attr-defined]
        yield n


async def test_a_flood_over_the_byte_shaper_is_slowed_then_ended(shaped: NodeProcess) -> None:
    """The c2s byte shaper over BOSH: a client sending as fast as the node answers is slowed to
    the shaper's rate (its requests wait while the node holds input of it not yet read, as a TCP
    client's writes wait on a full socket; the node holds at most its ``requests`` bodies), and one
    that stays over the rate for ``shaper_max_throttle`` loses its session with policy-violation.
    The node serves the next client."""
    name = fresh(shaped, "flood")
    c = BoshClient(url(shaped))
    try:
        jid = await c.login(name, secret(name), "flood")
        frame = f"<message xmlns='jabber:client' to='{jid}' type='headline'><body>{'x' * 8000}</body></message>"
        loop = asyncio.get_running_loop()
        started, sent = loop.time(), 0
        while c.terminated is None and loop.time() - started < 60:
            c.send(frame)
            await c.taken()  # one frame a request: the body limit is 16 kB
            sent += len(frame)
        took = loop.time() - started
        assert c.terminated is not None, f"{sent} bytes in {took:.1f} s and still going"
        # The stream error goes to the request waiting when the session ends; one the client sent
        # just after that finds the session gone (item-not-found): either may be the last it saw.
        condition = c.terminated.get("condition")
        assert condition in ("remote-stream-error", "item-not-found"), ET.tostring(c.terminated)
        if condition == "remote-stream-error":
            error = c.terminated.find("{http://etherx.jabber.org/streams}error")
            assert error is not None and error.find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None
        # Ended by the shaper, whichever answer the client saw last: counted by its limit.
        status, body = await shaped.admin("{ server { refusals { limit count } } }")
        counts = {r["limit"]: r["count"] for r in body["data"]["server"]["refusals"]}
        assert status == 200 and counts.get("limits.shaper_rate", 0) >= 1, body
        # Slowed: no more than the burst, the rate for as long as it lasted, and the bodies in flight.
        most = SHAPER_BURST + SHAPER_RATE * took + 3 * len(frame)
        assert sent <= most, f"{sent} bytes taken in {took:.1f} s; the shaper allows {most:.0f}"
        assert took >= MAX_THROTTLE
    finally:
        await c.close()
    other = fresh(shaped, "after")
    d = BoshClient(url(shaped))
    try:
        assert await d.login(other, secret(other), "after-flood") == f"{other}@localhost/after-flood"
    finally:
        await d.close()
