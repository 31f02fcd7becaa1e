"""The demo's web client in a real browser.  ``meridian demo`` runs as a newcomer starts it; headless
Chromium opens the Converse.js page an eu node serves at ``/web/``, logs in as alice over XMPP over
WebSocket (RFC 7395, wss with the demo's certificate), and chats with bob, who is logged in over TCP
on a us node (slixmpp): both messages cross the gateways, and the test reads them in the page's DOM.
The picture in the README is this page (``MERIDIAN_UPDATE_SCREENSHOT=1`` refreshes
``docs/web-client.png``)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.web import converse_version
from tests.helpers.browser import Browser, chromium_binary
from tests.helpers.xmpp_client import Client
from tests.integration.test_demo import DemoRun, _free_base

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[2]


def _region(state: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in state["regions"] if r["name"] == name)


def _password(state: dict[str, Any], jid: str) -> str:
    return next(u["password"] for u in state["users"] if u["jid"] == jid)  # type: ignore[no-any-return]


async def _check_urls(state: dict[str, Any]) -> None:
    """Every node publishes its browser endpoints; the page and XEP-0156 answer with the demo's
    certificate (verified against the demo CA)."""
    tls = ssl.create_default_context(cafile=state["ca_cert"])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http:
        for region in state["regions"]:
            for node in region["nodes"]:
                base = node["websocket_url"].removeprefix("wss://").removesuffix("/ws")
                assert node["bosh_url"] == f"https://{base}/http-bind"
                assert node["web_client_url"] == f"https://{base}/web/"
                async with http.get(node["web_client_url"]) as r:
                    assert r.status == 200 and "converse.min.js" in await r.text()
                async with http.get(node["web_client_url"] + "dist/converse.min.js") as r:
                    assert r.status == 200 and len(await r.read()) > 500_000
                async with http.get(f"https://{base}/.well-known/host-meta.json") as r:
                    hrefs = [link["href"] for link in (await r.json())["links"]]
                    assert node["websocket_url"] in hrefs


async def _befriend(state: dict[str, Any], a: str, b: str) -> None:
    """A mutual subscription through the admin API, so alice's roster shows bob and his presence,
    and the chat opens from the roster as a person would open it."""
    admin = state["admin"]
    token = base64.b64encode(f"{admin['username']}:{admin['password']}".encode()).decode()
    url = _region(state, "eu")["nodes"][0]["admin_url"]
    ops = [f'addContact(user: "{a}", contact: "{b}", name: "Bob")',
           f'addContact(user: "{b}", contact: "{a}", name: "Alice")',
           f'subscription(user: "{a}", contact: "{b}", action: INVITE)',
           f'subscription(user: "{b}", contact: "{a}", action: ACCEPT)',
           f'subscription(user: "{b}", contact: "{a}", action: INVITE)',
           f'subscription(user: "{a}", contact: "{b}", action: ACCEPT)']
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as http:
        for op in ops:
            async with http.post(url, json={"query": f"mutation {{ roster {{ {op} }} }}"}) as r:
                body = await r.json()
                assert r.status == 200 and "errors" not in body, (op, body)


def _text_shown(text: str) -> str:
    """JavaScript: whether a message with ``text`` is rendered in an open chat."""
    return (f"[...document.querySelectorAll('.chat-msg__text')].some(e => e.textContent.includes("
            f"{json.dumps(text)}))")


async def _login(b: Browser, url: str, jid: str, password: str) -> None:
    """Fill Converse's login form like a person: focus, type, press Enter."""
    await b.goto(url)
    await b.wait_for("!!document.querySelector('#converse-login-jid')", what="the login form")
    for field, value in (("#converse-login-jid", jid), ("#converse-login-password", password)):
        await b.evaluate(f"document.querySelector('{field}').focus()")
        await b.type_text(value)
    await b.press("Enter", "Enter", 13, text="\r")


async def test_converse_in_chromium_chats_over_websocket_with_a_tcp_user_in_another_region(
        tmp_path: Path) -> None:
    if chromium_binary() is None:
        pytest.skip("chromium is not installed (scripts/install-test-deps.sh)")
    if converse_version() is None:
        pytest.skip("Converse.js is not installed (npm ci --prefix web; scripts/install-test-deps.sh)")
    demo = DemoRun(tmp_path, _free_base())
    try:
        state = demo.start()
        await _check_urls(state)
        alice, bob = "alice@example.com", "bob@example.com"
        await _befriend(state, alice, bob)
        eu, us = _region(state, "eu")["nodes"][0], _region(state, "us")["nodes"][0]
        tcp = await Client(f"{bob}/phone", _password(state, bob), cert=Path(state["ca_cert"])).online(us["c2s_port"])
        try:
            async with Browser(ignore_certificate_errors=True) as b:  # the demo CA is not the browser's
                await b.send("Network.enable")
                await _login(b, eu["web_client_url"], alice, _password(state, alice))
                assert await b.evaluate("window.meridianWebsocketUrl") == eu["websocket_url"]
                contact = f"document.querySelector('a.open-chat[data-jid=\"{bob}\"]')"
                await b.wait_for(f"!!{contact}", what="bob in alice's roster", timeout=60)
                await b.wait_for(f"!!{contact}.querySelector('.contact-name--online')",
                                 what="bob online (his presence relayed from us)", timeout=30)
                await b.evaluate(f"{contact}.click()")
                textarea = f"document.querySelector('converse-chat[jid=\"{bob}\"] textarea.chat-textarea')"
                await b.wait_for(f"!!{textarea}", what="the chat with bob")
                await b.evaluate(f"{textarea}.focus()")
                hello = "Hello Bob, from Converse.js over WebSocket in eu"
                await b.type_text(hello)
                await b.press("Enter", "Enter", 13, text="\r")
                await b.wait_for(_text_shown(hello), what="alice's message in her chat")

                msg = await tcp.next_message(timeout=30)
                assert str(msg["from"].bare) == alice and msg["body"] == hello
                reply = "Hi Alice, this is Bob on TCP in us"
                tcp.send_message(mto=msg["from"], mbody=reply, mtype="chat")
                await b.wait_for(_text_shown(reply), what="bob's reply in alice's chat", timeout=30)
                await b.evaluate(f"{textarea}.blur()")
                shot = await b.screenshot(tmp_path / "web-client.png")
                assert not [line for line in b.console if line.startswith("exception:")], b.console
                origin = eu["web_client_url"].removesuffix("/web/").removeprefix("https://")
                urls = b.requested_urls()
                assert eu["websocket_url"] in urls
                outside = [u for u in urls if not u.startswith((f"https://{origin}/", f"wss://{origin}/", "data:"))]
                assert outside == [], f"the page loaded from elsewhere: {outside}"
        finally:
            await tcp.close()
        assert shot.stat().st_size > 10_000
        if os.environ.get("MERIDIAN_UPDATE_SCREENSHOT"):  # refresh the README's picture on purpose only
            shutil.copyfile(shot, REPO / "docs" / "web-client.png")
        assert demo.stop(signal.SIGINT) == 0, demo.output()
    finally:
        demo.stop(signal.SIGKILL)
