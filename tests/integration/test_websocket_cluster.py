"""XMPP over WebSocket (RFC 7395) across the nodes of a region and across regions:

* XEP-0198 resumption across transports and nodes: a session started over WebSocket on one node of
  a two-node region resumes over a new WebSocket on the other node, and one started over TCP
  resumes over WebSocket — what was never acknowledged is delivered, nothing twice;
* SASL2 with a FAST token and an inline resumption, and CSI, over WebSocket on the second node;
* xmpp.js (``@xmpp/client``, a client no one here wrote) logs in over ``ws://`` in one region and
  chats with a TCP user in the other; the region's gateway reports the WebSocket connection per
  transport for the dashboard.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.cluster import eventually, system_info
from tests.helpers.node import ADMIN_PASSWORD, ADMIN_USER, NodeProcess
from tests.helpers.ports import free_port
from tests.helpers.redis import RedisServer
from tests.helpers.regions import DOMAIN
from tests.helpers.topologies import TwoRegions, gd_status, lookup, need_redis, two_node_region, two_regions
from tests.helpers.xmpp_raw import SM, RawClient, local
from tests.helpers.xmpp_ws import WsClient
from tests.helpers.xmppjs import js_client

SM_SETTINGS = {"stream_management": {"ack_every": 2, "resume_timeout": 30}}
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}
SASL2 = "urn:xmpp:sasl:2"
BIND2 = "urn:xmpp:bind:0"
FAST = "urn:xmpp:fast:0"
CSI = "urn:xmpp:csi:0"


def bodies(els: list[ET.Element]) -> list[str]:
    return [e.findtext("{jabber:client}body") or "" for e in els]


def send_messages(sender: RawClient, to: str, texts: list[str]) -> None:
    for text in texts:
        sender.send(f"<message to='{to}' type='chat' id='{uuid.uuid4().hex[:8]}'><body>{text}</body></message>")


# -- two nodes of a region, each with a WebSocket listener -----------------------------------------------


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    ports = {"w1": free_port(), "w2": free_port()}
    with two_node_region(tmp_path_factory.mktemp("ws-region"), names=("w1", "w2"), users=PASSWORDS,
                         settings=lambda name: {"modules": SM_SETTINGS,
                                                "websocket": {"host": "127.0.0.1", "port": ports[name]}}) as nodes:
        for n in nodes:
            n.ws_url = f"wss://127.0.0.1:{ports[n.name]}/ws"  # type: ignore[attr-defined]
        yield nodes


def ws(node: NodeProcess) -> WsClient:
    return WsClient(node.ws_url)  # type: ignore[attr-defined]


async def test_a_websocket_session_resumes_over_a_new_websocket_on_the_other_node(region: list[NodeProcess]) -> None:
    w1, w2 = region
    bob = RawClient(w2.port, w2.cert)
    await bob.start("bob", PASSWORDS["bob"], "desk", sm=False)
    alice = ws(w1)
    enabled = await alice.start("alice", PASSWORDS["alice"], "roam-ws")
    assert enabled is not None and local(enabled) == "enabled", enabled
    previd = enabled.get("id")
    assert previd
    send_messages(bob, "alice@localhost/roam-ws", ["a1", "a2"])
    assert bodies(await alice.messages(2)) == ["a1", "a2"]
    alice.send(f"<a xmlns='{SM}' h='1'/>")  # a2 read but never acknowledged
    await asyncio.sleep(0.1)
    alice.die()
    await asyncio.sleep(0.3)
    send_messages(bob, "alice@localhost/roam-ws", ["a3", "a4"])  # queued by the detached session on w1
    await asyncio.sleep(0.3)
    moved = ws(w2)
    await moved.connect()
    await moved.login("alice", PASSWORDS["alice"])
    resumed = await moved.resume(previd, 1)
    assert local(resumed) == "resumed" and resumed.get("h") == "0", resumed.attrib
    assert bodies(await moved.messages(3)) == ["a2", "a3", "a4"]
    send_messages(bob, "alice@localhost/roam-ws", ["a5"])
    assert bodies(await moved.messages(1)) == ["a5"]
    for n in region:
        assert system_info(n)["conflictTables"] == []
    # routable from w1 too, where it started
    carol = RawClient(w1.port, w1.cert)
    await carol.start("carol", PASSWORDS["carol"], "w1", sm=False)
    send_messages(carol, "alice@localhost/roam-ws", ["from w1"])
    assert bodies(await moved.messages(1)) == ["from w1"]
    await moved.close()
    await bob.close()
    await carol.close()
    await alice.close()


async def test_a_tcp_session_resumes_over_websocket_on_the_other_node(region: list[NodeProcess]) -> None:
    w1, w2 = region
    bob = RawClient(w1.port, w1.cert)
    await bob.start("bob", PASSWORDS["bob"], "desk-tcp", sm=False)
    alice = RawClient(w1.port, w1.cert)
    enabled = await alice.start("alice", PASSWORDS["alice"], "tcp-then-ws")
    assert enabled is not None
    previd = enabled.get("id")
    send_messages(bob, "alice@localhost/tcp-then-ws", ["t1", "t2", "t3"])
    assert bodies(await alice.messages(3)) == ["t1", "t2", "t3"]
    alice.send(f"<a xmlns='{SM}' h='2'/>")
    await asyncio.sleep(0.1)
    alice.die()
    await asyncio.sleep(0.3)
    send_messages(bob, "alice@localhost/tcp-then-ws", ["t4"])
    await asyncio.sleep(0.3)
    browser = ws(w2)
    await browser.connect()
    await browser.login("alice", PASSWORDS["alice"])
    resumed = await browser.resume(previd, 2)
    assert local(resumed) == "resumed", resumed.attrib
    assert bodies(await browser.messages(2)) == ["t3", "t4"]
    # and the other way: what the resumed session sends reaches bob; acks go on counting
    browser.send("<message xmlns='jabber:client' to='bob@localhost/desk-tcp' type='chat'><body>via ws</body></message>")
    assert bodies(await bob.messages(1)) == ["via ws"]
    browser.send(f"<r xmlns='{SM}'/>")
    a = await browser.next_named("a")
    assert a.get("h") == "1", a.attrib  # the one message sent on the resumed stream
    await browser.close()
    await bob.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def authenticate(mechanism: str, initial: bytes, agent: str, inner: str) -> str:
    ua = f"<user-agent id='{agent}'><software>ws-test</software><device>browser</device></user-agent>"
    return (f"<authenticate xmlns='{SASL2}' mechanism='{mechanism}'><initial-response>{_b64(initial)}"
            f"</initial-response>{ua}{inner}</authenticate>")


def child(el: ET.Element | None, namespace: str, name: str) -> ET.Element | None:
    return None if el is None else el.find(f"{{{namespace}}}{name}")


async def sasl2(c: WsClient, mechanism: str, initial: bytes, agent: str, inner: str) -> ET.Element:
    await c.connect()
    assert child(c.features, SASL2, "authentication") is not None  # SASL2 is offered over WebSocket
    c.send(authenticate(mechanism, initial, agent, inner))
    return await c.next(lambda el: el.tag in (f"{{{SASL2}}}success", f"{{{SASL2}}}failure"))


async def test_sasl2_fast_inline_resume_and_csi_over_websocket_on_the_other_node(region: list[NodeProcess]) -> None:
    w1, w2 = region
    bob = RawClient(w2.port, w2.cert)
    await bob.start("bob", PASSWORDS["bob"], "desk-fast", sm=False)
    agent = str(uuid.uuid4())
    bind = f"<bind xmlns='{BIND2}'><tag>webapp</tag><enable xmlns='{SM}' resume='true'/></bind>"
    # On w1: SASL2 PLAIN with Bind 2 and SM inline, and a FAST token asked for.
    first = ws(w1)
    success = await sasl2(first, "PLAIN", b"\0alice\0" + PASSWORDS["alice"].encode(), agent,
                          f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>" + bind)
    assert local(success) == "success", ET.tostring(success)
    jid = success.findtext(f"{{{SASL2}}}authorization-identifier")
    assert jid == "alice@localhost/webapp"
    token = child(success, FAST, "token")
    enabled = child(child(success, BIND2, "bound"), SM, "enabled")
    assert token is not None and enabled is not None, ET.tostring(success)
    previd = enabled.get("id")
    send_messages(bob, jid, ["f1", "f2"])
    assert bodies(await first.messages(2)) == ["f1", "f2"]
    first.die()
    await asyncio.sleep(0.3)
    send_messages(bob, jid, ["f3"])
    await asyncio.sleep(0.3)
    # On w2: one round trip — the FAST token, the resumption acknowledging f1 and f2, Bind 2 as a fallback.
    second = ws(w2)
    ht = b"alice\0" + hmac.new((token.get("token") or "").encode(), b"Initiator", "sha256").digest()
    success = await sasl2(second, "HT-SHA-256-NONE", ht, agent,
                          f"<fast xmlns='{FAST}' count='1'/><resume xmlns='{SM}' previd='{previd}' h='2'/>" + bind)
    assert local(success) == "success", ET.tostring(success)
    resumed = child(success, SM, "resumed")
    assert resumed is not None and resumed.get("previd") == previd, ET.tostring(success)
    assert child(success, BIND2, "bound") is None
    assert bodies(await second.messages(1)) == ["f3"]
    # CSI on w2: inactive, a chat state is dropped and a message with a body still comes at once.
    second.send(f"<inactive xmlns='{CSI}'/>")
    second.send("<iq xmlns='jabber:client' type='get' id='csi-ping'><ping xmlns='urn:xmpp:ping'/></iq>")
    await second.next(lambda el: el.get("id") == "csi-ping")  # the <inactive/> before it is handled
    bob.send(f"<message to='{jid}' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    send_messages(bob, jid, ["while inactive"])
    [msg] = await second.messages(1)
    assert bodies([msg]) == ["while inactive"]
    assert msg.find("{http://jabber.org/protocol/chatstates}composing") is None
    second.send(f"<active xmlns='{CSI}'/>")
    second.send("<iq xmlns='jabber:client' type='get' id='csi-ping2'><ping xmlns='urn:xmpp:ping'/></iq>")
    await second.next(lambda el: el.get("id") == "csi-ping2")
    bob.send(f"<message to='{jid}' type='chat'><paused xmlns='http://jabber.org/protocol/chatstates'/></message>")
    [state] = await second.messages(1)  # active again: chat states pass
    assert state.find("{http://jabber.org/protocol/chatstates}paused") is not None
    await second.close()
    await bob.close()
    await first.close()


# -- two regions: xmpp.js over ws:// in eu, a TCP user in us ------------------------------------------------


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoRegions]:
    need_redis()
    port = free_port()
    # ws:// on loopback (as behind a TLS-terminating proxy, or a developer's machine): TLS is not
    # required there, so xmpp.js logs in with SCRAM over the plain WebSocket.
    eu_node = {"websocket": {"host": "127.0.0.1", "port": port, "tls": False}, "c2s": {"require_tls": False}}
    with RedisServer() as redis, two_regions(tmp_path_factory.mktemp("ws-regions"), redis, users=PASSWORDS,
                                             eu={"node_settings": eu_node}) as r:
        r.eu.nodes[0].ws_url = f"ws://127.0.0.1:{port}/ws"  # type: ignore[attr-defined]
        yield r


async def dashboard_state(gateway: NodeProcess) -> dict[str, Any]:
    status, body = await gateway.http("GET", f"{gateway.admin_url}/dashboard/state", auth=(ADMIN_USER, ADMIN_PASSWORD))
    assert status == 200, body
    return body if isinstance(body, dict) else json.loads(body)


async def test_xmppjs_over_ws_chats_with_a_tcp_user_in_the_other_region(regions: TwoRegions) -> None:
    eu, us = regions.eu.nodes[0], regions.us.nodes[0]
    eu_gw, us_gw = regions.eu.gateways[0], regions.us.gateways[0]
    bob = RawClient(us.port, us.cert, domain=DOMAIN)
    await bob.start("bob", PASSWORDS["bob"], "us-desk", sm=False)
    bob.send("<presence/>")
    try:
        async with js_client(service=eu.ws_url, domain=DOMAIN, username="alice",  # type: ignore[attr-defined]
                             password=PASSWORDS["alice"], resource="browser") as alice:
            jid = (await alice.wait_event("online", timeout=30))["jid"]
            assert jid.startswith(f"alice@{DOMAIN}/")
            resource = jid.split("/", 1)[1]
            await eventually(lambda: lookup(us_gw, f"alice@{DOMAIN}").get(resource), 20, "alice mapped to eu")
            await eventually(lambda: lookup(eu_gw, f"bob@{DOMAIN}").get("us-desk"), 20, "bob mapped to us")
            bob.send(f"<message to='{jid}' type='chat' id='x1'><body>hello from us over TCP</body></message>")
            [msg] = await alice.messages_until(1, timeout=15)
            assert msg["body"] == "hello from us over TCP" and msg["from"] == f"bob@{DOMAIN}/us-desk"
            await alice.send_message(f"bob@{DOMAIN}/us-desk", "hello from eu over ws://")
            [got] = await bob.messages(1, timeout=15)
            assert got.findtext("{jabber:client}body") == "hello from eu over ws://"
            assert got.get("from") == jid
            # eu's gateway asks its node for the per-transport counters: the dashboard shows them.
            def websocket_open(status: dict[str, Any]) -> bool:
                return (status.get("transports", {}).get("websocket", {}).get("connections", 0) >= 1
                        and status.get("nodeTransports", {}).get("eu-n1", {}).get("websocket", 0) >= 1)

            await eventually(lambda: websocket_open(gd_status(eu_gw)), 15, "eu's gateway to see the WebSocket")
            status = gd_status(eu_gw)
            assert status["transports"]["websocket"]["stanzasIn"] >= 1
            assert status["transports"]["websocket"]["stanzasOut"] >= 1
            assert set(status["transports"]) >= {"tcp", "websocket", "bosh"}
            state = await dashboard_state(eu_gw)
            assert websocket_open(state["regions"]["eu"])
            await eventually(lambda: gd_status(us_gw).get("transports", {}).get("tcp", {}).get("connections", 0) >= 1,
                             15, "us's gateway to see the TCP connection")
    finally:
        await bob.close()
