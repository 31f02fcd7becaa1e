"""Rooms on the live dashboard: two real regions (eu and us, a node and a gateway each, one Redis),
each hosting a room of its own joined by real slixmpp users.  The dashboard eu's gateway serves
shows each region's rooms and occupants — eu's from its live status, us's from the status us's
gateway publishes in Redis — in its JSON state and, in headless Chromium, on the region cards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from slixmpp import JID

from tests.helpers.browser import Browser, chromium_binary
from tests.helpers.cluster import poll, system_info
from tests.helpers.redis import RedisServer, redis_server_binary
from tests.helpers.regions import DOMAIN, Region

from .test_dashboard import PASSWORD, Dashboard, World
from .test_muc import MucClient, create

SERVICE = f"conference.{DOMAIN}"
pytestmark = pytest.mark.timeout(600)  # four servers to start on a loaded 2-core machine


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    with RedisServer() as redis:
        w = World(tmp_path_factory.mktemp("muc-dashboard"), redis)
        try:
            for region in w.regions:
                region.start()
            for region in w.regions:
                names = sorted(p.name for p in region.processes)
                for p in region.processes:
                    assert poll(lambda p=p, names=names: system_info(p)["joinedNodes"] == names, 30), p.log()
            yield w
        finally:
            for region in w.regions:
                region.stop()
        for p in w.eu.processes + w.us.processes:
            assert "Traceback" not in p.log(), p.log()


async def occupant(world: World, region: Region, prefix: str) -> MucClient:
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    node = region.nodes[0]
    node.register(name, PASSWORD, DOMAIN)
    c = MucClient(node, f"{name}@{DOMAIN}/desk", PASSWORD)
    await c.online(node.port, roster=False)
    return c


def rooms_of(state: dict[str, Any], region: str) -> dict[str, int]:
    muc = state["regions"].get(region, {}).get("muc") or {}
    return {r["room"]: r["occupants"] for r in muc.get("fullest", [])}


async def test_each_regions_rooms_and_occupants_are_on_the_dashboard(world: World) -> None:
    dashboard = Dashboard(world.eu.gateways[0])
    eu_room, us_room = JID(f"eu{uuid.uuid4().hex[:6]}@{SERVICE}"), JID(f"us{uuid.uuid4().hex[:6]}@{SERVICE}")
    alice, bob = await occupant(world, world.eu, "alice"), await occupant(world, world.eu, "bob")
    carol = await occupant(world, world.us, "carol")
    try:
        await create(alice, eu_room, "Alice", **{"muc#roomconfig_roomname": "Lobby"})
        await bob.muc.join_muc_wait(eu_room, "Bob", timeout=15)
        await create(carol, us_room, "Carol")

        async with aiohttp.ClientSession() as http:
            async def state() -> dict[str, Any]:
                async with http.get(f"{dashboard.url}/dashboard/state", headers=dashboard.headers) as r:
                    assert r.status == 200
                    return await r.json()  # type: ignore[no-any-return]

            snap: dict[str, Any] = {}
            for _ in range(60):  # us's record in Redis is refreshed every few seconds
                snap = await state()
                if rooms_of(snap, "eu").get(str(eu_room)) == 2 and rooms_of(snap, "us").get(str(us_room)) == 1:
                    break
                await asyncio.sleep(0.5)
            assert rooms_of(snap, "eu").get(str(eu_room)) == 2, snap["regions"].get("eu", {}).get("muc")
            assert rooms_of(snap, "us").get(str(us_room)) == 1, snap["regions"].get("us", {}).get("muc")
            assert str(us_room) not in rooms_of(snap, "eu")  # without home_cluster, each region its own rooms
            eu = snap["regions"]["eu"]["muc"]
            assert eu["rooms"] >= 1 and eu["occupants"] >= 2
            assert [r["title"] for r in eu["fullest"] if r["room"] == str(eu_room)] == ["Lobby"]

        if chromium_binary() is None:
            pytest.skip("chromium is not installed (scripts/install-test-deps.sh)")
        async with Browser() as b:
            await b.send("Network.enable")
            await b.send("Network.setExtraHTTPHeaders", headers=dashboard.headers)
            await b.goto(f"{dashboard.url}/dashboard")
            await b.wait_for(f"!!document.querySelector('#region-eu [data-room=\"{eu_room}\"]') && "
                             f"!!document.querySelector('#region-us [data-room=\"{us_room}\"]')",
                             what="each region's room on its card")
            text = await b.evaluate(f"document.querySelector('#region-eu [data-room=\"{eu_room}\"]').textContent")
            assert text == f"{eu_room} (Lobby): 2 occupants", text
            bob.muc.leave_muc(eu_room, "Bob")
            await b.wait_for(f"document.querySelector('#region-eu [data-room=\"{eu_room}\"]')"
                             ".dataset.occupants === '1'", what="an occupant leaving, live")
    finally:
        for c in (alice, bob, carol):
            await c.close()
