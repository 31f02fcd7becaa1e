"""The live dashboard over two real regions: eu and us, one node and one gateway each,
sharing example.com, publishing their status to a real Redis.  The dashboard is the one eu's gateway
serves on its admin port; it shows both regions (read from Redis).  Real slixmpp users make the
relayed counters move; headless Chromium (Debian's) watches the page update live."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers.browser import Browser, chromium_binary
from tests.helpers.cluster import eventually, poll, system_info
from tests.helpers.node import ADMIN_PASSWORD, ADMIN_USER, NodeProcess
from tests.helpers.redis import RedisServer, redis_server_binary
from tests.helpers.regions import DOMAIN, Region, make_region
from tests.helpers.xmpp_client import Client

PASSWORD = "secret-password"
REPO = Path(__file__).resolve().parents[2]


class Dashboard:
    """The dashboard as a gateway serves it on its admin port (``/dashboard``, admin credentials)."""

    def __init__(self, gateway: NodeProcess) -> None:
        self.gateway = gateway
        self.url = gateway.admin_url
        token = base64.b64encode(f"{ADMIN_USER}:{ADMIN_PASSWORD}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}


class World:
    def __init__(self, base: Path, redis: RedisServer) -> None:
        db = f"sqlite:///{base / 'domain.db'}"
        self.eu = make_region(base, "eu", storage_url=db, redis_url=redis.url, nodes=1)
        self.us = make_region(base, "us", storage_url=db, redis_url=redis.url, nodes=1)

    @property
    def regions(self) -> list[Region]:
        return [self.eu, self.us]

    def user(self, prefix: str) -> str:
        name = f"{prefix}{uuid.uuid4().hex[:6]}"
        self.eu.nodes[0].register(name, PASSWORD, DOMAIN)
        return name




def gd_status(gateway: NodeProcess) -> dict[str, Any]:
    return json.loads(gateway.ctl("gdistrib", "status").stdout)["data"]["gdistrib"]["status"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    base = tmp_path_factory.mktemp("dashboard")
    with RedisServer() as redis:
        w = World(base, redis)
        try:
            for region in w.regions:
                region.start()
            for region in w.regions:
                names = sorted(p.name for p in region.processes)
                for p in region.processes:
                    assert poll(lambda p=p, names=names: system_info(p)["joinedNodes"] == names, 20), p.log()
            for region, other in ((w.eu, "us"), (w.us, "eu")):
                gw = region.gateways[0]
                assert poll(lambda gw=gw, other=other: gd_status(gw)["links"].get(other, {}).get("up"), 30)
            yield w
        finally:
            for region in w.regions:
                region.stop()
        for p in w.eu.processes + w.us.processes:
            assert "Traceback" not in p.log(), p.log()


@pytest.fixture(scope="module")
def dashboard(world: World) -> Dashboard:
    return Dashboard(world.eu.gateways[0])


async def get_state(http: aiohttp.ClientSession, dashboard: Dashboard) -> dict[str, Any]:
    async with http.get(f"{dashboard.url}/dashboard/state", headers=dashboard.headers) as r:
        assert r.status == 200 and r.content_type == "application/json"
        return await r.json()  # type: ignore[no-any-return]


def relayed_total(state: dict[str, Any], region: str) -> int:
    return sum(state["regions"].get(region, {}).get("counters", {}).get("relayed", {}).values())


async def user_online(world: World, region: Region) -> Client:
    name = world.user("carol")
    node = region.nodes[0]
    return await Client(f"{name}@{DOMAIN}/desk", PASSWORD, cert=node.cert).online(node.port)  # type: ignore[no-any-return]


async def chat(world: World, count: int) -> None:
    """``count`` messages from a user in eu to a user in us and back (relayed by the gateways)."""
    alice, bob = world.user("alice"), world.user("bob")
    eu, us = world.eu.nodes[0], world.us.nodes[0]
    a = await Client(f"{alice}@{DOMAIN}/laptop", PASSWORD, cert=eu.cert).online(eu.port)
    b = await Client(f"{bob}@{DOMAIN}/phone", PASSWORD, cert=us.cert).online(us.port)
    try:
        gw = world.eu.gateways[0]
        await eventually(lambda: json.loads(gw.ctl("gdistrib", "lookup", "--jid", f"{bob}@{DOMAIN}").stdout)
                         ["data"]["gdistrib"]["lookup"].get("phone"), 15, "bob mapped to us")
        for i in range(count):
            a.send_message(mto=f"{bob}@{DOMAIN}/phone", mbody=f"to us {i}", mtype="chat")
            assert (await b.next_message(15))["body"] == f"to us {i}"
            b.send_message(mto=f"{alice}@{DOMAIN}/laptop", mbody=f"to eu {i}", mtype="chat")
            assert (await a.next_message(15))["body"] == f"to eu {i}"
    finally:
        await a.close()
        await b.close()


async def test_state_shows_both_regions_members_and_the_link(dashboard: Dashboard) -> None:
    async with aiohttp.ClientSession() as http:
        async def ready() -> dict[str, Any] | None:
            state = await get_state(http, dashboard)
            regions = state["regions"]
            ok = all(regions.get(a, {}).get("links", {}).get(b, {}).get("rttMs") is not None
                     for a, b in (("eu", "us"), ("us", "eu")))
            return state if ok else None

        deadline = time.monotonic() + 30
        while (state := await ready()) is None:
            assert time.monotonic() < deadline, await get_state(http, dashboard)
            await asyncio.sleep(0.3)
    assert sorted(state["regions"]) == ["eu", "us"]
    assert state["error"] is None
    local = state["local"]  # the serving gateway's live status, with its cluster's conflict view
    assert local["region"] == "eu" and local["gateway"] == "eu-gw1"
    assert local["cluster"]["joinedNodes"] == ["eu-gw1", "eu-n1"] and local["cluster"]["conflictNodes"] == []
    for name in ("eu", "us"):
        region = state["regions"][name]
        assert region["region"] == name
        assert region["members"] == [f"{name}-gw1", f"{name}-n1"]
        assert region["gateways"] == [f"{name}-gw1"]
        assert set(region["rates"]) == {"relayedPerSec", "receivedPerSec", "bouncedPerSec"}
        link = region["links"]["us" if name == "eu" else "eu"]
        assert link["up"] is True and link["rttMs"] >= 0


async def test_events_stream_one_snapshot_a_second(dashboard: Dashboard) -> None:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(f"{dashboard.url}/dashboard/events",
                                                                            headers=dashboard.headers) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        snapshots: list[dict[str, Any]] = []
        event = None
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "snapshot":
                snapshots.append(json.loads(line[6:]))
                if len(snapshots) == 3:
                    break
    assert all(sorted(s["regions"]) == ["eu", "us"] for s in snapshots)
    gaps = [b["time"] - a["time"] for a, b in zip(snapshots, snapshots[1:], strict=False)]
    assert all(0.8 < g < 10 for g in gaps), gaps


async def test_page_and_assets_are_served_without_a_cdn(dashboard: Dashboard) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/dashboard", "/dashboard/state", "/dashboard/events", "/dashboard/static/dashboard.js"):
            async with http.get(f"{dashboard.url}{path}") as r:  # the admin port's credentials guard it
                assert r.status == 401, path
    async with aiohttp.ClientSession(headers=dashboard.headers) as http:
        async with http.get(f"{dashboard.url}/dashboard") as r:
            assert r.status == 200 and r.content_type == "text/html"
            page = await r.text()
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert 'src="/dashboard/static/dashboard.js"' in page and 'aria-live="polite"' in page
        assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page
        for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            async with http.get(f"{dashboard.url}/dashboard/static/{name}") as r:
                assert r.status == 200 and r.content_type == kind
                assert "https://" not in await r.text()
        for bad in ("index.html", "..%2F__init__.py", "nope.js"):
            async with http.get(f"{dashboard.url}/dashboard/static/{bad}") as r:
                assert r.status == 404, bad


async def test_relayed_counter_and_rate_move_with_traffic(world: World, dashboard: Dashboard) -> None:
    async with aiohttp.ClientSession() as http:
        before = await get_state(http, dashboard)
        await chat(world, 10)
        deadline = time.monotonic() + 30
        while True:
            state = await get_state(http, dashboard)
            moved = all(relayed_total(state, r) >= relayed_total(before, r) + 10 for r in ("eu", "us"))
            if moved and state["regions"]["eu"]["rates"]["relayedPerSec"] > 0:
                break
            assert time.monotonic() < deadline, (before, state)
            await asyncio.sleep(0.3)
    assert state["regions"]["us"]["counters"]["received"].get("eu", 0) >= 10


async def test_browser_sees_regions_link_and_live_relayed_counter(
        world: World, dashboard: Dashboard, tmp_path: Path) -> None:
    if chromium_binary() is None:
        pytest.skip("chromium is not installed (scripts/install-test-deps.sh)")
    async with Browser() as b:
        await b.send("Network.enable")
        await b.send("Network.setExtraHTTPHeaders", headers=dashboard.headers)
        await b.goto(f"{dashboard.url}/dashboard")
        await b.wait_for("!!(document.querySelector('#region-eu') && document.querySelector('#region-us'))",
                         what="both region cards")
        await b.wait_for("!!(document.querySelector('#map a[data-region=eu]') && "
                         "document.querySelector('#map a[data-region=us]'))", what="both regions on the map")
        await b.wait_for("!!document.querySelector('#map .link-line.up')", what="the eu-us link drawn up")
        await b.wait_for("document.getElementById('connection').dataset.state === 'live'", what="live updates")
        link = await b.evaluate("document.querySelector('#map .link-label').textContent")
        assert link.startswith("up") and "ms" in link, link
        assert await b.evaluate("document.querySelectorAll('#links tbody tr[data-link]').length") == 2
        # A marker that a reload would lose: the counter must move in this same page.
        await b.evaluate("window.__noReload = true")
        read = "document.querySelector('#region-eu [data-metric=relayed]').textContent"
        before = await b.evaluate(read)
        await chat(world, 5)
        after = await b.wait_for(f"(() => {{ const t = {read}; return t !== {json.dumps(before)} && t; }})()",
                                 what="the relayed counter to change")
        assert await b.evaluate("window.__noReload") is True
        total = lambda text: int(text.split("total ")[1].rstrip(")").replace(",", ""))  # noqa: E731
        assert total(after) > total(before), (before, after)
        await b.wait_for("/[1-9]/.test(document.querySelector('#region-eu [data-metric=relayed]').textContent"
                         ".split('/s')[0])", what="a non-zero relayed rate")
        # Keyboard: the first Tab reaches the skip link, further Tabs the pause button and the map's regions.
        await b.press("Tab", "Tab", 9)
        assert await b.evaluate("document.activeElement.className") == "skip"
        reached = set()
        for _ in range(8):
            await b.press("Tab", "Tab", 9)
            reached.add(await b.evaluate("document.activeElement.id || document.activeElement.getAttribute"
                                         "('data-region') || document.activeElement.tagName"))
        assert {"pause", "eu", "us"} <= reached, reached
        await b.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
        # For the picture: a user online in each region, sessions counted live on the page.
        online = [await user_online(world, region) for region in (world.eu, world.us)]
        try:
            await b.wait_for("['eu', 'us'].every(r => Number(document.querySelector(`#region-${r} "
                             "[data-metric=sessions]`).textContent) >= 1)", what="a session in each region")
            shot = await b.screenshot(tmp_path / "dashboard.png")
        finally:
            for c in online:
                await c.close()
        assert shot.stat().st_size > 10_000
        if os.environ.get("MERIDIAN_UPDATE_SCREENSHOT"):  # refresh the README's picture on purpose only
            (REPO / "docs").mkdir(exist_ok=True)
            shutil.copyfile(shot, REPO / "docs" / "dashboard.png")
        # Enter on the focused pause button stops live updates; then the page renders a snapshot
        # with what two regions on one machine do not show: a third region, a link down, S2S peers,
        # cluster conflicts.
        await b.evaluate("document.getElementById('pause').focus()")
        await b.press("Enter", "Enter", 13, text="\r")
        assert await b.evaluate("document.getElementById('pause').getAttribute('aria-pressed')") == "true"
        await b.evaluate("render(" + json.dumps(SYNTHETIC) + ")")
        await asyncio.sleep(2.5)  # live snapshots keep arriving: paused, they must not replace it
        assert await b.evaluate("document.querySelectorAll('#map a[data-region]').length") == 3
        assert await b.evaluate("!!document.querySelector('#map .link-line.down')")
        assert await b.evaluate("document.querySelector('#region-ap [data-s2s-peer=\"other.example\"]')"
                                ".textContent") == "other.example — state up, direction out"
        assert "nodes: ap-n2" in await b.evaluate("document.querySelector('#region-ap .warn').textContent")
        assert "ap to eu down" in await b.evaluate("document.getElementById('announce').textContent")
        # client transports: the region's sums per transport, and per node what is open
        assert await b.evaluate("document.querySelector('#region-ap [data-transport=websocket] "
                                "[data-field=connections]').textContent") == "2"
        assert await b.evaluate("document.querySelector('#region-ap [data-node=\"ap-n1\"]').textContent") \
            == "ap-n1: tcp 1, websocket 2, bosh 0 open"
        await b.screenshot(tmp_path / "dashboard-synthetic.png")
        assert not [m for m in b.console if m.startswith("exception")], b.console


def _region(name: str, links: dict[str, bool], **extra: Any) -> dict[str, Any]:
    return {"region": name, "gateway": f"{name}-gw1", "members": [f"{name}-gw1", f"{name}-n1", f"{name}-n2"],
            "gateways": [f"{name}-gw1"], "sessions": 3,
            "links": {to: {"up": up, "rttMs": 80.5 if up else None, "queue": 0 if up else 12}
                      for to, up in links.items()},
            "pairQueue": 0, "counters": {"relayed": {}, "received": {}, "bounced": 2}, "rates": {}, **extra}


SYNTHETIC = {"time": 1_700_000_000, "local": {}, "error": None, "regions": {
    "eu": _region("eu", {"us": True, "ap": False}),
    "us": _region("us", {"eu": True, "ap": True}),
    "ap": _region("ap", {"eu": False, "us": True},
                  s2s={"peers": [{"domain": "other.example", "state": "up", "direction": "out"}]},
                  cluster={"conflictNodes": ["ap-n2"], "conflictTables": [], "unavailableNodes": []},
                  transports={"tcp": {"connections": 1, "accepted": 9, "bytesIn": 4096, "bytesOut": 81920,
                                      "stanzasIn": 12, "stanzasOut": 30},
                              "websocket": {"connections": 2, "accepted": 2, "bytesIn": 900, "bytesOut": 2048,
                                            "stanzasIn": 4, "stanzasOut": 7},
                              "bosh": {"connections": 0, "accepted": 0, "bytesIn": 0, "bytesOut": 0,
                                       "stanzasIn": 0, "stanzasOut": 0}},
                  nodeTransports={"ap-n1": {"tcp": 1, "websocket": 2, "bosh": 0}}),
}}


async def test_an_open_event_stream_does_not_hold_up_the_gateway_stopping(world: World, dashboard: Dashboard) -> None:
    """It stops eu's gateway, then starts it again and waits for its link, so that the tests after
    it (in any order) find the dashboard as before.  aiohttp waits up to 60 s for running handlers
    at shutdown, and an event stream never ends by itself: the gateway must end it."""
    timeout = aiohttp.ClientTimeout(total=60)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http, \
                http.get(f"{dashboard.url}/dashboard/events", headers=dashboard.headers) as r:
            assert (await r.content.readuntil(b"event: snapshot")).endswith(b"snapshot")
            started = time.monotonic()
            code = await asyncio.to_thread(dashboard.gateway.stop, timeout=20)
            took = time.monotonic() - started
            assert code == 0 and took < 15, (code, took)
            with contextlib.suppress(aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
                await asyncio.wait_for(r.content.read(), 10)  # the stream ended
    finally:
        gw = dashboard.gateway
        if not gw.alive():
            await asyncio.to_thread(gw.start)
        names = sorted(p.name for p in world.eu.processes)
        await eventually(lambda: system_info(gw)["joinedNodes"] == names, 20, "eu's gateway joined again")
        await eventually(lambda: gd_status(gw)["links"].get("us", {}).get("up"), 30, "eu → us link up again")
