"""XEP-0357 Push Notifications with real processes: a small push app server runs as an external
component (XEP-0114, slixmpp's ComponentXMPP), records the pubsub publishes it gets and answers
them.  Shown: a push for a user who is offline on one node (and an app server's item-not-found
disabling that registration); a push for a user whose phone's session is detached (raw client with
stream management whose socket dies) on a two-node region, the sender on the other node; the
same with the phone detached in another region than the sender and the app server; and an app
server of another domain, reached over S2S.  Clients enable push with raw XML: slixmpp (1.17)
ships no XEP-0357 plugin."""

from __future__ import annotations

import asyncio
import sqlite3
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.helpers.cluster import eventually
from tests.helpers.dns import DnsServer
from tests.helpers.node import NodeProcess
from tests.helpers.ports import free_port
from tests.helpers.redis import RedisServer
from tests.helpers.regions import DOMAIN, Region
from tests.helpers.topologies import logged_in, lookup, need_redis, one_node, two_node_region, two_regions
from tests.helpers.xmpp_raw import RawClient, local
from tests.integration.test_s2s import EU, PASSWORD as S2S_PASSWORD, US, Site, World, service_site, two_sites

PUSH = "push.example.com"
PUSH_SECRET = "push-component-secret"
NS = "urn:xmpp:push:0"
PUBSUB = "http://jabber.org/protocol/pubsub"
DATA = "jabber:x:data"
PASSWORD = "push-secret"
COMPONENTS = {"secrets": {PUSH: PUSH_SECRET}}


class AppServer(slixmpp.ComponentXMPP):  # type: ignore[misc]
    """A push app server: records each publish (who, node, summary fields) and answers it — with
    ``item-not-found`` for the nodes in ``gone``."""

    def __init__(self, node: NodeProcess, gone: frozenset[str] = frozenset(), jid: str = PUSH) -> None:
        super().__init__(jid, PUSH_SECRET, "127.0.0.1", node.component_port)  # type: ignore[attr-defined]
        self.enable_direct_tls, self.enable_plaintext, self.tls_services = True, False, {"component-tls"}
        self.ssl_context = ssl.create_default_context(cafile=str(node.cert))
        self.ssl_context.check_hostname = False  # the node's self-signed certificate names example.com
        self.register_plugin("xep_0030")
        self.gone = gone
        self.publishes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.ready: asyncio.Future[bool] = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", lambda _e: self.ready.done() or self.ready.set_result(True))
        self.add_event_handler("disconnected", lambda _e: self.ready.done() or self.ready.set_result(False))
        self.register_handler(Callback("push publish", MatchXPath(f"{{{self.default_ns}}}iq/{{{PUBSUB}}}pubsub"),
                                       self._publish))

    def _publish(self, iq: Any) -> None:
        publish = iq.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish")
        form = iq.xml.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish/{{{PUBSUB}}}item/{{{NS}}}notification/{{{DATA}}}x")
        fields = {}
        if form is not None:
            for f in form.findall(f"{{{DATA}}}field"):
                fields[f.get("var")] = f.findtext(f"{{{DATA}}}value")
        node = publish.get("node") if publish is not None else None
        self.publishes.put_nowait({"from": str(iq["from"]), "type": iq["type"], "node": node, "fields": fields})
        reply = iq.reply(clear=True)
        if node in self.gone:
            reply["type"] = "error"
            reply["error"]["type"] = "cancel"
            reply["error"]["condition"] = "item-not-found"
        reply.send()

    async def start(self) -> bool:
        self.connect()
        return await asyncio.wait_for(self.ready, 15)

    async def stop(self) -> None:
        self.disconnect()
        await asyncio.sleep(0.2)

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.publishes.get(), timeout)


def with_components(node: NodeProcess, port: int) -> NodeProcess:
    node.component_port = port  # type: ignore[attr-defined]
    return node


async def client(node: NodeProcess, user: str, resource: str, *, sm: bool = False,
                 domain: str = DOMAIN, password: str = PASSWORD) -> tuple[RawClient, str | None]:
    c = RawClient(node.port, node.cert, domain=domain)
    enabled = await c.start(user, password, resource, sm=sm)
    c.send("<presence/>")
    return c, enabled.get("id") if enabled is not None else None


async def enable_push(c: RawClient, node_name: str, app: str = PUSH) -> None:
    iq_id = uuid.uuid4().hex[:8]
    c.send(f"<iq type='set' id='{iq_id}'><enable xmlns='{NS}' jid='{app}' node='{node_name}'/></iq>")
    reply = await c.next(lambda el: el.get("id") == iq_id)
    assert reply.get("type") == "result", reply.attrib


def chat(sender: RawClient, to: str, body: str) -> None:
    sender.send(f"<message to='{to}' type='chat' id='{uuid.uuid4().hex[:8]}'><body>{body}</body></message>")


def offline_count(db: Path, user: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM offline_messages WHERE username = ?", (user,)).fetchone()[0])


def registered_nodes(db: Path, user: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT node FROM push_registrations WHERE username = ? ORDER BY node", (user,))
        return [str(r[0]) for r in rows]


# -- one node: offline ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("push-node")
    port = free_port()
    settings = {"components": {"port": port, **COMPONENTS}}
    with one_node(base, "p1", users=("alice", "bob"), password=PASSWORD, domains=[DOMAIN],
                  storage_url=f"sqlite:///{base / 'push.db'}", settings=settings) as n:
        yield with_components(n, port)


async def test_offline_user_is_pushed_and_an_app_server_error_disables(node: NodeProcess) -> None:
    app = AppServer(node, gone=frozenset({"gone-node"}))
    assert await app.start()
    try:
        alice, _ = await client(node, "alice", "phone")
        iq_id = "disco1"
        alice.send(f"<iq type='get' id='{iq_id}' to='alice@{DOMAIN}'>"
                   "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        info = await alice.next(lambda el: el.get("id") == iq_id)
        assert NS in {f.get("var") for f in info.iter("{http://jabber.org/protocol/disco#info}feature")}
        await enable_push(alice, "ok-node")
        await enable_push(alice, "gone-node")
        await alice.close()
        bob, _ = await client(node, "bob", "pc")
        await asyncio.sleep(0.3)  # alice's session is gone
        chat(bob, f"alice@{DOMAIN}", "are you there?")
        got = sorted([await app.next(), await app.next()], key=lambda p: p["node"])
        assert [p["node"] for p in got] == ["gone-node", "ok-node"]
        for p in got:
            assert p["from"] == f"alice@{DOMAIN}" and p["type"] == "set"
            assert p["fields"] == {"FORM_TYPE": "urn:xmpp:push:summary", "message-count": "1",
                                   "last-message-sender": f"bob@{DOMAIN}/pc"}  # no body by default
        # item-not-found for gone-node: that registration is disabled (XEP-0357 §8).
        db = node.workdir / "push.db"
        await eventually(lambda: registered_nodes(db, "alice") == ["ok-node"], 10, "gone-node disabled")
        chat(bob, f"alice@{DOMAIN}", "still there?")
        assert (await app.next())["node"] == "ok-node"
        await asyncio.sleep(0.3)
        assert app.publishes.empty()
        # The message itself was stored: alice gets both when she comes back.
        back, _ = await client(node, "alice", "phone")
        texts = [m.findtext("{jabber:client}body") for m in await back.messages(2)]
        assert texts == ["are you there?", "still there?"]
        await back.close()
        await bob.close()
    finally:
        await app.stop()


# -- a two-node region: the phone's session detached on one node, the sender on the other -----------------


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    base = tmp_path_factory.mktemp("push-region")
    ports = {name: free_port() for name in ("r1", "r2")}
    with two_node_region(base, users=("alice", "bob"), password=PASSWORD, domains=[DOMAIN],
                         settings=lambda name: {"components": {"port": ports[name], **COMPONENTS}}) as nodes:
        yield [with_components(n, ports[n.name]) for n in nodes]


async def test_detached_phone_in_a_two_node_region(region: list[NodeProcess]) -> None:
    r1, r2 = region
    app = AppServer(r1)
    assert await app.start()
    try:
        phone, previd = await client(r1, "alice", "phone", sm=True)
        await enable_push(phone, "phone-node")
        bob, _ = await client(r2, "bob", "pc")
        # Live: delivered, no push.
        chat(bob, f"alice@{DOMAIN}", "live")
        assert (await phone.next_named("message")).findtext("{jabber:client}body") == "live"
        phone.die()
        await asyncio.sleep(1.0)  # detached on r1, the record flagged on both members
        chat(bob, f"alice@{DOMAIN}", "wake up")  # routed by r2: r2 sees the detached record and pushes
        got = await app.next()
        assert got["node"] == "phone-node" and got["from"] == f"alice@{DOMAIN}"
        assert got["fields"]["last-message-sender"] == f"bob@{DOMAIN}/pc"
        assert "last-message-body" not in got["fields"]
        assert offline_count(r1.workdir.parent / "region.db", "alice") == 0  # queued for the session
        # The phone wakes up and resumes: the message was kept for it.
        again = await logged_in(r2, "alice", PASSWORD, domain=DOMAIN)
        assert local(await again.resume(str(previd), 0)) == "resumed"
        await again.next(lambda el: local(el) == "message" and el.findtext("{jabber:client}body") == "wake up")
        await asyncio.sleep(0.3)
        assert app.publishes.empty()  # resumed: nothing more
        await again.close()
        await bob.close()
    finally:
        await app.stop()


# -- two regions: the phone detached in one, the sender and the app server in the other ------------------


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Region, Region, Path]]:
    need_redis()
    base = tmp_path_factory.mktemp("push-regions")
    port = free_port()
    eu = {"node_settings": {"components": {"port": port, **COMPONENTS}}}
    with RedisServer() as redis, two_regions(base, redis, users=("alice", "bob"), password=PASSWORD, eu=eu,
                                             links=False) as both:
        with_components(both.eu.nodes[0], port)
        yield both.eu, both.us, both.db


async def test_detached_phone_in_another_region(regions: tuple[Region, Region, Path]) -> None:
    eu, us, db = regions
    app = AppServer(eu.nodes[0])
    assert await app.start()
    try:
        phone, _ = await client(us.nodes[0], "alice", "phone", sm=True)
        await enable_push(phone, "far-node")
        bob, _ = await client(eu.nodes[0], "bob", "pc")

        # Until us's gateway knows where the app server's domain is, a stanza may find no way yet.
        async def reachable(c: RawClient, to: str) -> bool:
            iq_id = uuid.uuid4().hex[:8]
            c.send(f"<iq type='get' id='{iq_id}' to='{to}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
            try:
                reply = await c.next(lambda el: el.get("id") == iq_id, timeout=1.5)
            except TimeoutError:
                return False
            return reply.get("type") == "result"

        async def until_reachable(c: RawClient, to: str) -> None:
            for _ in range(30):
                if await reachable(c, to):
                    return
                await asyncio.sleep(0.3)
            raise AssertionError(f"{to} never became reachable")

        await until_reachable(phone, PUSH)
        await eventually(lambda: "phone" in lookup(eu.gateways[0], f"alice@{DOMAIN}"), 10, "alice mapped to us")
        phone.die()
        await asyncio.sleep(1.0)  # detached in us; the mapping still points there
        # bob (eu) → alice: relayed to us, routed there with local_only: us's gateway sees the
        # detached record and pushes; the publish goes back to eu, where the app server is.
        chat(bob, f"alice@{DOMAIN}", "across the ocean")
        got = await app.next(timeout=15)
        assert got["node"] == "far-node" and got["from"] == f"alice@{DOMAIN}"
        assert got["fields"]["last-message-sender"] == f"bob@{DOMAIN}/pc"
        assert offline_count(db, "alice") == 0  # queued for the detached session, not stored
        await bob.close()
    finally:
        await app.stop()


# -- over S2S: the app server is a component of another domain ---------------------------------------------


def push_site(base: Path, name: str, domain: str, redis_url: str, dns: DnsServer) -> Site:
    """A :class:`Site` with a component port on its node; its gateway also speaks S2S for its app
    server's domain ``push.<domain>``."""
    service, port = f"push.{domain}", free_port()
    site = service_site(base, name, domain, redis_url, dns, service,
                        node_settings={"components": {"port": port, "secrets": {service: PUSH_SECRET}}})
    with_components(site.node, port)
    return site


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with two_sites(tmp_path_factory.mktemp("push-s2s"), push_site) as world:
        yield world


async def test_app_server_of_another_domain_over_s2s(domains: World) -> None:
    """alice of eu1 registers an app server that is a component of us1 (as a phone vendor's push
    service would be): a message for her while she is offline is pushed there over S2S, the
    summary naming the sender; the app server's item-not-found, back over S2S, disables it."""
    eu, us = domains.eu, domains.us
    service = f"push.{US}"
    app = AppServer(us.node, gone=frozenset({"gone-node"}), jid=service)
    assert await app.start()
    try:
        alice_name, bob_name = eu.user("alice"), us.user("bob")
        alice, _ = await client(eu.node, alice_name, "phone", domain=EU, password=S2S_PASSWORD)
        await enable_push(alice, "vendor-node", app=service)
        await enable_push(alice, "gone-node", app=service)
        await alice.close()
        bob, _ = await client(us.node, bob_name, "pc", domain=US, password=S2S_PASSWORD)
        await asyncio.sleep(0.3)  # alice's session is gone
        chat(bob, f"{alice_name}@{EU}", "over the federation")
        got = sorted([await app.next(timeout=30), await app.next(timeout=30)], key=lambda p: p["node"])
        assert [p["node"] for p in got] == ["gone-node", "vendor-node"]
        for p in got:
            assert p["from"] == f"{alice_name}@{EU}" and p["type"] == "set"
            assert p["fields"]["last-message-sender"] == f"{bob_name}@{US}/pc"
        db = eu.node.workdir.parent / "db.sqlite"
        await eventually(lambda: registered_nodes(db, alice_name) == ["vendor-node"], 15, "gone-node disabled")
        back, _ = await client(eu.node, alice_name, "phone", domain=EU, password=S2S_PASSWORD)
        texts = [m.findtext("{jabber:client}body") for m in await back.messages(1)]
        assert texts == ["over the federation"]  # stored as well, for her next login
        await back.close()
        await bob.close()
    finally:
        await app.stop()

