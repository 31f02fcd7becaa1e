"""``meridian demo`` as a newcomer runs it: start, wait for the state file, chat across regions,
crash it, start it again, stop it with Ctrl-C, and find no process left behind."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.node import ROOT
from tests.helpers.xmpp_client import Client

pytestmark = pytest.mark.timeout(900)


def _free_base() -> int:
    """A base port whose 300 ports are all free on loopback."""
    for _ in range(50):
        base = random.randrange(12000, 31700, 100)  # below the ephemeral range (see helpers/ports.py)
        try:
            for port in range(base, base + 300):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free range of 300 ports")


class DemoRun:
    def __init__(self, tmp: Path, base: int, *options: str) -> None:
        self.dir, self.base, self.options = tmp / "demo", base, options
        self.state_file = tmp / "state.json"
        self.log = tmp / "demo.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> dict[str, Any]:
        self.state_file.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
        env["PYTHONPATH"] = str(ROOT)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "demo", "--dir", str(self.dir), "--base-port", str(self.base),
                 "--state-file", str(self.state_file), *self.options], stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"demo exited with {self.proc.returncode}:\n{self.output()}")
            if self.state_file.exists():
                return json.loads(self.state_file.read_text())  # type: ignore[no-any-return]
            time.sleep(0.2)
        raise AssertionError(f"no state file after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGINT) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        return self.proc.wait(60)


def _pids(state: dict[str, Any]) -> list[int]:
    return [p["pid"] for r in state["regions"] for p in [*r["nodes"], *r["gateways"]]]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _wait_gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    left = pids
    while left and time.monotonic() < deadline:
        left = [p for p in left if _alive(p)]
        time.sleep(0.1)
    return left


def _user(state: dict[str, Any], local: str) -> tuple[str, str, int]:
    u = next(u for u in state["users"] if u["jid"].startswith(local + "@"))
    region = next(r for r in state["regions"] if r["name"] == u["region"])
    return u["jid"], u["password"], region["nodes"][0]["c2s_port"]


async def _mapped(state: dict[str, Any], jid: str, resource: str, timeout: float = 30) -> None:
    """Wait until the gateway of every region serving ``jid``'s domain finds ``jid/resource`` in
    the mapping (admin API): from then on one message to it must arrive."""
    import aiohttp

    token = base64.b64encode(f"{state['admin']['username']}:{state['admin']['password']}".encode()).decode()
    query = {"query": "query($j: JID!) { gdistrib { lookup(jid: $j) } }", "variables": {"j": jid}}
    domain = jid.split("@", 1)[1]
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        for region in (r for r in state["regions"] if domain in r["domains"]):
            while True:
                async with http.post(region["gateways"][0]["admin_url"], json=query,
                                     headers={"Authorization": f"Basic {token}"}) as resp:
                    body = await resp.json()
                assert not body.get("errors"), body
                if resource in (body["data"]["gdistrib"]["lookup"] or {}):
                    break
                assert time.monotonic() < deadline, f"{jid}/{resource} not in {region['name']}'s mapping: {body}"
                await asyncio.sleep(0.2)


async def _chat(state: dict[str, Any], a: str, b: str) -> None:
    ca = Path(state["ca_cert"])
    (ja, pa, porta), (jb, pb, portb) = _user(state, a), _user(state, b)
    alice = await Client(f"{ja}/demo", pa, cert=ca).online(porta)
    bob = await Client(f"{jb}/demo", pb, cert=ca).online(portb)
    try:
        # Wait until the gateways see b's login in the mapping, then send once:
        # exactly one copy must arrive (a resend loop would hide a lost message).
        await _mapped(state, jb, "demo")
        alice.send_message(mto=jb, mbody="hello from " + a, mtype="chat")
        msg = await bob.next_message(timeout=15)
        assert str(msg["from"].bare) == ja and msg["body"] == "hello from " + a
        bob.send_message(mto=f"{ja}/demo", mbody="hi " + a, mtype="chat")
        reply = await alice.next_message(timeout=15)
        assert str(reply["from"].bare) == jb and reply["body"] == "hi " + a
        with pytest.raises(TimeoutError):
            await bob.next_message(timeout=0.5)  # one copy, not two
    finally:
        await alice.close()
        await bob.close()


async def _lobby(state: dict[str, Any]) -> None:
    """The demo's persistent room (homed in eu): alice in eu and bob in us join it and chat."""
    ca, room = Path(state["ca_cert"]), "lobby@conference.example.com"
    clients: list[Client] = []
    try:
        for local in ("alice", "bob"):
            jid, password, port = _user(state, local)
            c = Client(f"{jid}/lobby", password, cert=ca)
            c.register_plugin("xep_0045")
            clients.append(await c.online(port, roster=False))
            await c.plugin["xep_0045"].join_muc_wait(room, local, timeout=30)
        said: asyncio.Queue[Any] = asyncio.Queue()
        clients[1].add_event_handler("groupchat_message", said.put_nowait)
        clients[0].send_message(mto=room, mbody="hello lobby", mtype="groupchat")
        while (msg := await asyncio.wait_for(said.get(), 30))["body"] != "hello lobby":
            pass
        assert str(msg["from"]) == f"{room}/alice"
    finally:
        for c in clients:
            await c.close()


async def _admin_and_dashboard(state: dict[str, Any]) -> None:
    """The URLs of the state file answer, with the admin credentials and only with them."""
    import base64

    import aiohttp

    token = base64.b64encode(f"{state['admin']['username']}:{state['admin']['password']}".encode()).decode()
    auth = {"Authorization": f"Basic {token}"}
    eu = next(r for r in state["regions"] if r["name"] == "eu")
    query = {"query": "{ cets { systemInfo { joinedNodes } } }"}
    async with aiohttp.ClientSession() as http:
        async with http.post(eu["nodes"][0]["admin_url"], json=query, headers=auth) as resp:
            body = await resp.json()
        assert body["data"]["cets"]["systemInfo"]["joinedNodes"] == ["eu-gw1", "eu-n1", "eu-n2"], body
        async with http.post(eu["nodes"][0]["admin_url"], json=query) as resp:
            assert resp.status == 401
        async with http.get(eu["gateways"][0]["dashboard_url"], headers=auth) as resp:
            assert resp.status == 200 and "text/html" in resp.headers["content-type"]


async def _dashboard_in_a_browser(state: dict[str, Any], tmp_path: Path) -> None:
    """Headless Chromium on eu's dashboard: both regions and their link, and the relayed counter
    moving, without a reload, while alice and bob chat."""
    import base64

    from tests.helpers.browser import Browser, chromium_binary

    if chromium_binary() is None:
        pytest.skip("chromium is not installed (scripts/install-test-deps.sh)")
    token = base64.b64encode(f"{state['admin']['username']}:{state['admin']['password']}".encode()).decode()
    eu = next(r for r in state["regions"] if r["name"] == "eu")
    async with Browser() as b:
        await b.send("Network.enable")
        await b.send("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})
        await b.goto(eu["gateways"][0]["dashboard_url"])
        await b.wait_for("!!(document.querySelector('#region-eu') && document.querySelector('#region-us'))",
                         what="both region cards")
        await b.wait_for("!!document.querySelector('#map .link-line.up')", what="the eu-us link drawn up")
        await b.evaluate("window.__noReload = true")
        read = "document.querySelector('#region-eu [data-metric=relayed]').textContent"
        before = await b.evaluate(read)
        await _chat(state, "alice", "bob")
        await b.wait_for(f"(() => {{ const t = {read}; return t !== {json.dumps(before)} && t; }})()",
                         what="the relayed counter to change")
        assert await b.evaluate("window.__noReload") is True
        await b.screenshot(tmp_path / "demo-dashboard.png")


async def _rejoined(node: dict[str, Any], names: list[str], state: dict[str, Any]) -> None:
    """Wait until ``node``'s cluster lists every one of ``names`` again (admin API)."""
    import aiohttp

    token = base64.b64encode(f"{state['admin']['username']}:{state['admin']['password']}".encode()).decode()
    query = {"query": "{ cets { systemInfo { joinedNodes } } }"}
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.post(node["admin_url"], json=query, headers={"Authorization": f"Basic {token}"}) as resp:
                joined = (await resp.json())["data"]["cets"]["systemInfo"]["joinedNodes"]
            if sorted(joined) == sorted(names):
                return
            assert time.monotonic() < deadline, joined
            await asyncio.sleep(0.5)


async def test_demo_runs_chats_survives_a_crash_and_stops_cleanly(tmp_path: Path) -> None:
    demo = DemoRun(tmp_path, _free_base())
    try:
        state = demo.start()
        assert {r["name"] for r in state["regions"]} == {"eu", "us", "other"}
        assert Path(state["ca_cert"]).exists()
        assert {u["jid"] for u in state["users"]} == {"alice@example.com", "bob@example.com", "carol@other.example"}
        await _chat(state, "alice", "bob")  # eu ↔ us: one domain, through the gateways
        await _chat(state, "alice", "carol")  # example.com ↔ other.example: S2S
        await _lobby(state)
        await _admin_and_dashboard(state)
        await _dashboard_in_a_browser(state, tmp_path)

        # kill -9 of one node: the demo stays up, the region serves on, the node is restarted
        # (new pid in the state file) and rejoins its cluster.
        eu = next(r for r in state["regions"] if r["name"] == "eu")
        victim = eu["nodes"][1]
        os.kill(victim["pid"], signal.SIGKILL)
        await _chat(state, "alice", "bob")  # alice is on eu's first node
        deadline = time.monotonic() + 60
        while f"{victim['name']} restarted" not in demo.output():
            assert demo.proc is not None and demo.proc.poll() is None, demo.output()
            assert time.monotonic() < deadline, demo.output()
            await asyncio.sleep(0.3)
        assert f"{victim['name']} exited with -9; restarting it" in demo.output()
        restarted = json.loads(demo.state_file.read_text())
        new_pid = next(n["pid"] for r in restarted["regions"] for n in r["nodes"] if n["name"] == victim["name"])
        assert new_pid != victim["pid"] and _alive(new_pid)
        await _rejoined(eu["nodes"][0], [p["name"] for p in (*eu["nodes"], *eu["gateways"])], restarted)
        state = restarted

        # A crash (SIGKILL: no clean-up at all) takes the children with it, and a new start works.
        first = _pids(state)
        assert demo.proc is not None
        demo.proc.kill()
        demo.proc.wait()
        assert _wait_gone(first) == [], "children outlived the crashed demo"
        state = demo.start()
        await _chat(state, "bob", "alice")
        await _chat(state, "carol", "bob")  # other.example -> S2S -> eu's gateway -> relayed to us

        pids = _pids(state)
        assert demo.stop(signal.SIGINT) == 0, demo.output()
        assert _wait_gone(pids, 5) == [], "processes left after Ctrl-C"
        assert not demo.state_file.exists()
        assert "demo stopped" in demo.output()
    finally:
        demo.stop(signal.SIGKILL)


def test_missing_redis_server_is_one_clear_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PATH"] = str(Path(sys.executable).parent)  # no redis-server on it
    res = subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--dir", str(tmp_path / "d"),
                          "--base-port", str(_free_base())], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "redis-server not found" in lines[0] and "apt-get install redis-server" in lines[0]
