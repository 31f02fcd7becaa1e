"""Authentication throttling, live: a password guesser opening connection after connection from
one address is slowed, then banned on every member of the region (c2s and the user API); other
addresses are untouched; the admin API lists and lifts the ban."""

from __future__ import annotations

import asyncio
import base64
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import aiohttp
import pytest

from tests.helpers.node import NodeProcess
from tests.helpers.topologies import two_node_region
from tests.helpers.xmpp_raw import RawClient, local

pytestmark = pytest.mark.asyncio

THROTTLE = {"auth_throttle": {"max_failures": 6, "delay_after": 2, "failure_delay": 0.4, "max_delay": 1.0,
                              "ban_seconds": 300}}
GUESSER, BYSTANDER = "127.0.0.7", "127.0.0.8"


async def attempt(port: int, cert: Path, password: str, source: str) -> tuple[str, float, ET.Element | None]:
    """One connection, one PLAIN attempt: ("success" | "failure" | "refused", seconds the answer
    took, the stream error if the stream ended)."""
    c = RawClient(port, cert, source=source)
    try:
        try:
            await c.connect()
        except (ConnectionError, TimeoutError, ET.ParseError):
            return "refused", 0.0, None
        started = time.monotonic()
        try:
            await c.login("alice", password)
            return "success", time.monotonic() - started, None
        except PermissionError as e:
            took = time.monotonic() - started
            reply = ET.fromstring(str(e))
            if local(reply) == "error":
                return "refused", took, reply
            return "failure", took, None
    finally:
        await c.close()


async def refused_at_connect(port: int, cert: Path, source: str) -> ET.Element:
    """A banned address gets a <policy-violation/> stream error before any feature."""
    c = RawClient(port, cert, source=source)
    c.reader, c.writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    c._restart()
    try:
        return await c.next(lambda el: local(el) == "error")
    finally:
        await c.close()


async def test_a_guesser_is_slowed_then_banned_region_wide(tmp_path: Path) -> None:
    with two_node_region(tmp_path, users={"alice": "right-password"}, settings=THROTTLE) as (n1, n2):
        outcomes = [await attempt(n1.port, n1.cert, f"wrong{i}", GUESSER) for i in range(5)]
        assert [o[0] for o in outcomes] == ["failure"] * 5
        took = [round(o[1], 1) for o in outcomes]
        assert took[0] < 0.3 and took[1] < 0.3, took  # the first two at once
        assert took[2] >= 0.35 and took[3] >= 0.75 and took[4] >= 0.9, took  # then later and later

        # The sixth failure bans: its <failure/>, then the stream ends with policy-violation.
        c = await RawClient(n1.port, n1.cert, source=GUESSER).connect()
        with pytest.raises(PermissionError, match="not-authorized"):
            await c.login("alice", "wrong5")
        error = await c.next(lambda el: local(el) == "error")
        assert error.find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None
        await c.close()

        # Banned on both members, even with the right password; another address is not.
        for node in (n1, n2):
            err = await refused_at_connect(node.port, node.cert, GUESSER)
            assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None
            text = err.find("{urn:ietf:params:xml:ns:xmpp-streams}text")
            assert text is not None and "authentication failures" in (text.text or "")
        assert (await attempt(n2.port, n2.cert, "right-password", BYSTANDER))[0] == "success"

        # The admin API lists the ban and counts it; lifting it lets the address in again.
        status, body = await n1.admin("{ throttle { listBans { address seconds reason } } }")
        bans = body["data"]["throttle"]["listBans"]
        assert status == 200 and [b["address"] for b in bans] == [GUESSER] and 0 < bans[0]["seconds"] <= 300
        status, metrics = await n1.http("GET", f"{n1.admin_url}/metrics",
                                        auth=("admin", "admin-secret-for-tests"))
        assert "meridian_auth_throttle_bans_total 1.0" in metrics
        assert "meridian_auth_throttle_refused_total" in metrics
        status, body = await n1.admin("mutation { throttle { liftBan(address: \"%s\") } }" % GUESSER)
        assert body["data"]["throttle"]["liftBan"] is True
        assert (await attempt(n1.port, n1.cert, "right-password", GUESSER))[0] == "success"


async def user_api_from(node: NodeProcess, source: str, password: str) -> int:
    """Status of one user API request made from the loopback address ``source``."""
    token = base64.b64encode(f"alice@localhost:{password}".encode()).decode()
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(f"{node.user_api_url}/api/graphql", json={"query": "{ __typename }"},
                             headers={"Authorization": f"Basic {token}"}) as resp:
            return resp.status


async def test_user_api_failures_ban_the_address_everywhere(tmp_path: Path) -> None:
    with two_node_region(tmp_path, users={"alice": "right-password"}, settings=THROTTLE) as (n1, n2):
        assert await user_api_from(n1, GUESSER, "right-password") == 200
        assert [await user_api_from(n1, GUESSER, "wrong") for _ in range(6)] == [401] * 6
        # Banned: the user API answers 429 even to the right password, on both members, and c2s
        # refuses the address; another address still gets in.
        for node in (n1, n2):
            assert await user_api_from(node, GUESSER, "right-password") == 429
        err = await refused_at_connect(n2.port, n2.cert, GUESSER)
        assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None
        assert await user_api_from(n1, BYSTANDER, "right-password") == 200


async def sasl2_attempt(node: NodeProcess, mechanism: str, response: bytes, source: str) -> ET.Element:
    """One connection, one XEP-0388 <authenticate/>: the reply (<failure/> or <success/>), and the
    stream error if one followed at once (then the second element of the returned <reply/>)."""
    c = await RawClient(node.port, node.cert, source=source).connect()
    try:
        mechanisms = {m.text for m in c.features.iter("{urn:xmpp:sasl:2}mechanism")}
        mechanisms |= {m.text for m in c.features.iter("{urn:xmpp:fast:0}mechanism")}  # XEP-0484, in <inline/>
        assert mechanism in mechanisms, mechanisms
        c.send(f"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='{mechanism}'>"
               f"<initial-response>{base64.b64encode(response).decode()}</initial-response>"
               "<user-agent id='d4565fa7-4d72-4749-b3d3-740edbf87770'><software>guesser</software></user-agent>"
               "</authenticate>")
        reply = ET.Element("reply")
        reply.append(await c.next(lambda el: local(el) in ("failure", "success")))
        if local(reply[0]) == "failure":
            try:
                reply.append(await c.next(lambda el: local(el) == "error", timeout=1.0))
            except (TimeoutError, ConnectionError, ET.ParseError):
                pass
        return reply
    finally:
        await c.close()


async def test_sasl2_and_fast_failures_count_like_passwords(tmp_path: Path) -> None:
    """Wrong passwords over SASL2 (XEP-0388) and made-up FAST tokens (XEP-0484, HT-SHA-256-NONE)
    from one address add up in the same throttle: the sixth failure bans the address."""
    with two_node_region(tmp_path, users={"alice": "right-password"}, settings=THROTTLE) as (n1, n2):
        bogus_token = b"alice\0" + bytes(32)  # the HMAC of a token nobody was given
        for i in range(5):
            mechanism, response = (("PLAIN", f"\0alice\0wrong{i}".encode()) if i % 2 == 0
                                   else ("HT-SHA-256-NONE", bogus_token))
            reply = await sasl2_attempt(n1, mechanism, response, GUESSER)
            assert local(reply[0]) == "failure" and len(reply) == 1, ET.tostring(reply)
            assert reply[0].find("{urn:ietf:params:xml:ns:xmpp-sasl}not-authorized") is not None
        reply = await sasl2_attempt(n1, "HT-SHA-256-NONE", bogus_token, GUESSER)
        assert local(reply[0]) == "failure" and len(reply) == 2, ET.tostring(reply)
        assert reply[1].find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None
        for node in (n1, n2):  # banned on both members, SASL2 or not
            err = await refused_at_connect(node.port, node.cert, GUESSER)
            assert err.find("{urn:ietf:params:xml:ns:xmpp-streams}policy-violation") is not None
        reply = await sasl2_attempt(n2, "PLAIN", b"\0alice\0right-password", BYSTANDER)
        assert local(reply[0]) == "success", ET.tostring(reply)
