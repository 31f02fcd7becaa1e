"""Hostile input over raw sockets: each gets its stream error, the node stays up, and two clients
chatting meanwhile are not disturbed (RFC 6120 §4.9, §11)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.helpers.node import NodeProcess
from tests.helpers.raw import HEADER, raw, read_until, stream_error
from tests.helpers.xmpp_client import Client
from tests.helpers.xmpp_raw import RawClient, local

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_STANZA = 65536
PER_IP = 40
STANZA_RATE = 50


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path_factory.mktemp("hostile"), settings={"limits": {
        "max_stanza_size": MAX_STANZA, "max_depth": 32, "shaper_rate": 20000, "shaper_burst": 40000,
        "shaper_max_throttle": 1.0, "max_connections_per_ip": PER_IP, "stanza_rate": STANZA_RATE,
        "stanza_burst": STANZA_RATE}})
    n.register("alice", "alice-pw")
    n.register("bob", "bob-pw")
    yield n.start()
    n.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chatters(node: NodeProcess) -> AsyncIterator[tuple[Client, Client]]:
    a = await Client("alice@localhost/h", "alice-pw", cert=node.cert).online(node.port)
    b = await Client("bob@localhost/h", "bob-pw", cert=node.cert).online(node.port)
    yield a, b
    await a.close()
    await b.close()


async def still_chatting(node: NodeProcess, chatters: tuple[Client, Client], tag: str) -> None:
    assert node.alive(), node.log()
    a, b = chatters
    a.send_message(mto="bob@localhost/h", mbody=f"still here after {tag}", mtype="chat")
    msg = await b.next_message(timeout=10)
    assert msg["body"] == f"still here after {tag}"


BILLION_LAUGHS = (b"<!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;'>"
                  b"<!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;&lol2;'>]><message>&lol3;</message>")


@pytest.mark.parametrize("name, payload, condition", [
    ("billion-laughs", BILLION_LAUGHS, "restricted-xml"),
    ("external-entity", b"<!DOCTYPE m [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]><message>&xxe;</message>",
     "restricted-xml"),
    ("doctype", b"<!DOCTYPE message>", "restricted-xml"),
    ("undefined-entity", b"<message><body>&nbsp;</body></message>", "restricted-xml"),
    ("comment", b"<!-- hello -->", "restricted-xml"),
    ("processing-instruction", b"<?evil please?>", "restricted-xml"),
    ("invalid-utf8", b"<message><body>\xff\xfe</body></message>", "unsupported-encoding"),
    ("overlong-utf8", b"<message><body>\xc0\xaf</body></message>", "unsupported-encoding"),
    ("unbound-prefix", b"<foo:message/>", "bad-namespace-prefix"),
    ("not-well-formed", b"<message><body></message>", "not-well-formed"),
    ("stanza-before-auth", b"<message to='bob@localhost'><body>hi</body></message>", "not-authorized"),
    ("ten-megabytes", b"<message><body>" + b"A" * (10 * 1024 * 1024) + b"</body></message>",
     "policy-violation"),
    ("ten-thousand-deep", b"<message>" + b"<x>" * 10_000 + b"</x>" * 10_000 + b"</message>",
     "policy-violation"),
])
async def test_hostile_input_gets_its_stream_error(node, chatters, name, payload, condition):
    data = await raw(node, payload)
    assert stream_error(data, condition), data[-500:]
    await still_chatting(node, chatters, name)


async def test_stanza_before_auth_over_tls(node, chatters):
    data = await raw(node, b"<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>", tls=True)
    assert stream_error(data, "not-authorized")
    await still_chatting(node, chatters, "stanza-before-auth-tls")


async def test_plain_before_tls_is_refused(node, chatters):
    token = base64.b64encode(b"\0alice\0alice-pw")
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(HEADER)
    features = await read_until(reader, b"</stream:features>")
    assert b"<mechanisms" not in features  # nothing but STARTTLS before TLS
    writer.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + token + b"</auth>")
    reply = await read_until(reader, b"</failure>")
    assert b"<encryption-required/>" in reply and b"<success" not in reply
    writer.close()
    await still_chatting(node, chatters, "plain-before-tls")


async def test_flood_over_the_shaper(node, chatters):
    # 4 MB of whitespace keepalives as fast as the socket takes them: 200 s of budget at 20 kB/s.
    data = await raw(node, b" " * (4 * 1024 * 1024), chunk=65536)
    assert stream_error(data, "policy-violation"), data[-300:]
    await still_chatting(node, chatters, "flood")


async def test_connections_per_ip_limit(node, chatters):
    conns = []
    refused = None
    try:
        for _ in range(PER_IP + 2):
            reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
            conns.append(writer)
            writer.write(HEADER)
            data = await read_until(reader, b"</stream:features>", timeout=5)
            if b"policy-violation" in data:
                refused = data
                break
        assert refused is not None and stream_error(refused, "policy-violation")
    finally:
        for w in conns:
            w.close()
    await asyncio.sleep(0.3)
    await still_chatting(node, chatters, "connection-limit")


async def test_stanza_rate(node, chatters):
    """Over the stanza rate, each stanza gets <policy-violation/> instead of being routed; a
    client that stays over it for shaper_max_throttle seconds loses its stream."""
    c = RawClient(node.port, node.cert)
    await c.start("alice", "alice-pw", "flooder", sm=False)
    burst = 3 * STANZA_RATE
    c.send("".join(f"<message to='alice@localhost/flooder' id='m{i}' type='chat'><body>{i}</body></message>"
                   for i in range(burst)))
    got = [await c.next(lambda el: local(el) == "message") for _ in range(burst)]
    refused = [m for m in got if m.get("type") == "error"]
    assert STANZA_RATE * 3 // 2 <= len(refused) < burst  # the burst went through, most of the rest did not
    assert all(m.find(".//{urn:ietf:params:xml:ns:xmpp-stanzas}policy-violation") is not None for m in refused)
    # Keep it up: the stream ends with policy-violation.
    error = None
    for i in range(200):
        c.send(f"<message to='alice@localhost/flooder' type='chat'><body>flood {i}</body></message>")
        await asyncio.sleep(0.01)
        try:
            error = await c.next(lambda el: local(el) == "error", timeout=0.01)
            break
        except TimeoutError:
            continue
        except (ConnectionError, EOFError):
            break
    assert error is not None and error.find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None
    await c.close()
    status, metrics = await node.http("GET", f"{node.admin_url}/metrics", auth=("admin", "admin-secret-for-tests"))
    assert "meridian_c2s_stanza_rate_refused_total" in metrics
    # Counted with every other refusal, by the setting whose limit it is, and in the admin API.
    assert 'meridian_refusals_total{limit="limits.stanza_rate"}' in metrics
    status, body = await node.admin("{ server { refusals { limit count } } }")
    counts = {r["limit"]: r["count"] for r in body["data"]["server"]["refusals"]}
    assert status == 200 and counts.get("limits.stanza_rate", 0) >= len(refused), body
    # Dozens of refusals, one log line (at most one a minute per address): a flood is not a log flood.
    lines = [x for x in node.log_path.read_text(errors="replace").splitlines()
             if "(alice@localhost/flooder): stanzas refused over the stanza rate" in x]
    assert len(lines) == 1, lines
    await still_chatting(node, chatters, "stanza-flood")
