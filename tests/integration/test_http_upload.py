"""HTTP File Upload (XEP-0363) with real nodes and slixmpp's own ``xep_0363`` plugin: a file
uploaded with ``upload_file`` (disco of ``upload.localhost``, a slot, the PUT over HTTPS to the
module's listener with the node's certificate) comes back byte-identical from the GET URL; a PUT
of the wrong length and a slot over ``max_file_size`` are refused.  In a two-node region (one
database, one shared upload directory, the key derived from the cluster secret) a slot given by
one node is uploaded through the other node's listener and read back from the first.  Across
regions and to another domain over S2S, the URL in a message is all the other side needs."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0363 import http_upload as slixmpp_upload

from tests.helpers.cluster import eventually
from tests.helpers.dns import DnsServer
from tests.helpers.node import NodeProcess
from tests.helpers.ports import free_port
from tests.helpers.redis import RedisServer
from tests.helpers.regions import DOMAIN, Region
from tests.helpers.topologies import fresh_users, lookup, need_redis, one_node, two_node_region, two_regions
from tests.helpers.xmpp_client import Client
from tests.integration.test_s2s import EU, PASSWORD as S2S_PASSWORD, US, Site, World, service_site, two_sites

PASSWORD = "upload-secret"
NS = "urn:xmpp:http:upload:0"
SERVICE = "upload.localhost"
MAX = 1_000_000


class Uploader(Client):
    def __init__(self, node: NodeProcess, jid: str, password: str = PASSWORD) -> None:
        super().__init__(jid, password, cert=node.cert)
        self.register_plugin("xep_0363")


def trust(*certs: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for cert in certs:
        ctx.load_verify_locations(cafile=str(cert))
    return ctx


@pytest.fixture
def trusting_slixmpp(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make slixmpp's uploads (its own aiohttp ClientSession) trust the given certificates."""
    def install(ctx: ssl.SSLContext) -> None:
        def session(**kwargs: Any) -> aiohttp.ClientSession:
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), **kwargs)

        monkeypatch.setattr(slixmpp_upload, "ClientSession", session)

    return install


async def http(method: str, url: str, ctx: ssl.SSLContext, *, data: bytes | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session, \
            session.request(method, url, data=data, headers=headers) as resp:
        return resp.status, await resp.read()


def upload_settings(port: int, **more: Any) -> dict[str, Any]:
    return {"http_upload": {"host": "127.0.0.1", "port": port, "max_file_size": MAX, **more}}


def condition(e: IqError) -> str:
    return str(e.iq["error"]["condition"])


# -- one node -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with one_node(tmp_path_factory.mktemp("upload-node"), "up1", users=("alice",), password=PASSWORD,
                  settings={"modules": upload_settings(free_port())}) as n:
        yield n


async def test_slixmpp_uploads_a_file_and_it_comes_back(node: NodeProcess, tmp_path: Path, trusting_slixmpp: Any):
    ctx = trust(node.cert)
    trusting_slixmpp(ctx)
    content = os.urandom(300_000) + "ünïcödé".encode()
    path = tmp_path / "holiday photo.jpg"
    path.write_bytes(content)
    alice = await Uploader(node, "alice@localhost/phone").login(node.port)
    try:
        url = await alice.plugin["xep_0363"].upload_file(path, timeout=10)  # found through the server's disco#items
        assert alice.plugin["xep_0363"].max_file_size == MAX  # read from the service's disco#info form
        parts = urlsplit(url)
        assert parts.scheme == "https" and parts.hostname == "localhost"
        assert parts.path.endswith("/holiday%20photo.jpg")
        status, got = await http("GET", url, ctx)
        assert status == 200 and got == content
        # Nothing else under the upload path answers.
        token = parts.path.split("/")[2]
        assert (await http("GET", url.replace(token, token[::-1]), ctx))[0] == 404
    finally:
        await alice.close()


async def test_wrong_length_puts_and_too_large_slots_are_refused(node: NodeProcess):
    ctx = trust(node.cert)
    alice = await Uploader(node, "alice@localhost/laptop").login(node.port)
    try:
        plugin = alice.plugin["xep_0363"]
        slot = (await plugin.request_slot(SERVICE, "notes.txt", 100, "text/plain", timeout=5))["http_upload_slot"]
        put, get = slot["put"]["url"], slot["get"]["url"]
        headers = {"Content-Type": "text/plain"}
        assert (await http("PUT", put, ctx, data=b"x" * 99, headers=headers))[0] == 400
        assert (await http("PUT", put, ctx, data=b"x" * 101, headers=headers))[0] == 413
        assert (await http("PUT", put, ctx, data=b"x" * 100, headers={"Content-Type": "text/html"}))[0] == 400
        assert (await http("PUT", put.replace("size=100", "size=99"), ctx, data=b"x" * 99, headers=headers))[0] == 403
        assert (await http("GET", get, ctx))[0] == 404
        assert (await http("PUT", put, ctx, data=b"x" * 100, headers=headers))[0] == 201
        assert (await http("GET", get, ctx)) == (200, b"x" * 100)

        with pytest.raises(IqError) as e:
            await plugin.request_slot(SERVICE, "big.iso", MAX + 1, "application/octet-stream", timeout=5)
        assert condition(e.value) == "not-acceptable"
        assert e.value.iq.xml.findtext(f"{{jabber:client}}error/{{{NS}}}file-too-large/{{{NS}}}max-file-size") \
            == str(MAX)
        with pytest.raises(IqError) as e:
            await plugin.request_slot(SERVICE, "../../etc/passwd", 10, timeout=5)
        assert condition(e.value) == "bad-request"
        with pytest.raises(IqError) as e:
            await plugin.request_slot(SERVICE, "negative.txt", -5, timeout=5)
        assert condition(e.value) == "bad-request"
        with pytest.raises(IqError) as e:
            await plugin.request_slot(SERVICE, "huge.bin", 10**30, timeout=5)
        assert condition(e.value) in ("not-acceptable", "bad-request")
    finally:
        await alice.close()
    assert node.alive()


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node with a small quota and files that expire after 2 s (removed every half second)."""
    with one_node(tmp_path_factory.mktemp("upload-tight"), "up2", users=("alice", "bob"), password=PASSWORD,
                  settings={"modules": upload_settings(free_port(), quota=150_000, quota_window=3600,
                                                       expire_after=2, cleanup_interval=0.5)}) as n:
        yield n


async def test_the_quota_refuses_a_slot_and_expired_files_are_removed(tight: NodeProcess):
    """Over the quota (bytes of slots per account per window): ``resource-constraint`` with a
    ``<retry/>`` stamp, counted as a refusal; another account is not affected.  A file older than
    ``expire_after`` is removed by the periodic task: its URL answers 404."""
    ctx = trust(tight.cert)
    alice = await Uploader(tight, "alice@localhost/phone").login(tight.port)
    bob = await Uploader(tight, "bob@localhost/phone").login(tight.port)
    try:
        plugin = alice.plugin["xep_0363"]
        slot = (await plugin.request_slot(SERVICE, "a.bin", 100_000, "application/octet-stream",
                                          timeout=5))["http_upload_slot"]
        put, get = slot["put"]["url"], slot["get"]["url"]
        binary = {"Content-Type": "application/octet-stream"}
        status, _ = await http("PUT", put, ctx, data=b"a" * 100_000, headers=binary)
        assert status == 201 and (await http("GET", get, ctx)) == (200, b"a" * 100_000)
        with pytest.raises(IqError) as e:
            await plugin.request_slot(SERVICE, "b.bin", 60_000, "application/octet-stream", timeout=5)
        assert condition(e.value) == "resource-constraint"
        assert e.value.iq.xml.find(f"{{jabber:client}}error/{{{NS}}}retry") is not None
        await plugin.request_slot(SERVICE, "c.bin", 50_000, "application/octet-stream", timeout=5)  # what is left
        await bob.plugin["xep_0363"].request_slot(SERVICE, "d.bin", 100_000, "application/octet-stream", timeout=5)
        status, body = await tight.admin("{ server { refusals { limit count } } }")
        counts = {r["limit"]: r["count"] for r in body["data"]["server"]["refusals"]}
        assert counts.get("modules.http_upload.quota") == 1, body
        for _ in range(50):  # 2 s of age, then the next removal (every 0.5 s)
            if (await http("GET", get, ctx))[0] == 404:
                break
            await asyncio.sleep(0.2)
        assert (await http("GET", get, ctx))[0] == 404
    finally:
        await asyncio.gather(alice.close(), bob.close())
    assert tight.alive()


# -- a two-node region ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[NodeProcess], list[int]]]:
    base = tmp_path_factory.mktemp("upload-region")
    ports = {name: free_port() for name in ("u1", "u2")}

    def settings(name: str) -> dict[str, Any]:
        more: dict[str, Any] = {"storage_dir": str(base / "shared-uploads")}
        if name != "u1":
            # The upload host's certificate is the same on every node (here: the one u1 makes at its start).
            tls = base / "u1" / "data" / "tls"
            more.update(cert_file=str(tls / "cert.pem"), key_file=str(tls / "key.pem"))
        return {"modules": upload_settings(ports[name], **more)}

    with two_node_region(base, names=("u1", "u2"), users=("alice", "bob"), password=PASSWORD,
                         settings=settings) as nodes:
        yield nodes, [ports[n.name] for n in nodes]


def on_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))


async def test_a_slot_of_one_node_is_uploaded_through_the_other(region: tuple[list[NodeProcess], list[int]],
                                                                 tmp_path: Path, trusting_slixmpp: Any):
    (u1, u2), (p1, p2) = region
    ctx = trust(u1.cert)
    alice = await Uploader(u1, "alice@localhost/phone").login(u1.port)
    bob = await Uploader(u2, "bob@localhost/pc").login(u2.port)
    try:
        content = os.urandom(50_000)
        slot = (await alice.plugin["xep_0363"].request_slot(SERVICE, "report.pdf", len(content), "application/pdf",
                                                            timeout=5))["http_upload_slot"]
        put, get = slot["put"]["url"], slot["get"]["url"]
        assert urlsplit(put).port == p1  # node 1 names its own listener…
        headers = {"Content-Type": "application/pdf"}
        status, _ = await http("PUT", on_port(put, p2), ctx, data=content, headers=headers)  # …node 2 takes it
        assert status == 201
        assert await http("GET", get, ctx) == (200, content)
        assert await http("GET", on_port(get, p2), ctx) == (200, content)
        # The other way round: slixmpp's whole upload through node 2, the read from node 1.
        trusting_slixmpp(ctx)
        content = b"from bob on u2\n" * 100
        path = tmp_path / "b.txt"
        path.write_bytes(content)
        url = await bob.plugin["xep_0363"].upload_file(path, domain=SERVICE, timeout=10)
        assert urlsplit(url).port == p2
        assert await http("GET", on_port(url, p1), ctx) == (200, content)
        # A slot signed by the region is refused once tampered with, on either node.
        status, _ = await http("PUT", on_port(put.replace("sig=", "sig=x"), p2), ctx, data=b"x", headers=headers)
        assert status == 403
    finally:
        await asyncio.gather(alice.close(), bob.close())


# -- two regions ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Region, Region, int]]:
    """eu and us, each node with its own listener and upload directory (plain HTTP on loopback:
    the domain's certificate does not name 127.0.0.1)."""
    need_redis()
    ports = {name: free_port() for name in ("eu", "us")}

    def settings(name: str) -> dict[str, Any]:
        return {"node_settings": {"modules": upload_settings(
            ports[name], tls=False, public_url=f"http://127.0.0.1:{ports[name]}")}}

    with RedisServer() as redis, two_regions(tmp_path_factory.mktemp("upload-regions"), redis,
                                             eu=settings("eu"), us=settings("us")) as both:
        yield both.eu, both.us, ports["eu"]


async def test_a_file_uploaded_in_eu_is_fetched_in_us(regions: tuple[Region, Region, int], tmp_path: Path):
    """alice (eu) uploads with slixmpp's plugin and sends bob (us) the URL; bob, in the other
    region, fetches it from the URL (eu's listener): the file is the same."""
    eu, us, eu_port = regions
    alice_jid, bob_jid = fresh_users(eu.nodes[0], PASSWORD, "alice", "bob", domain=DOMAIN)
    alice = await Uploader(eu.nodes[0], f"{alice_jid}/phone").online(eu.nodes[0].port)
    bob = await Uploader(us.nodes[0], f"{bob_jid}/pc").online(us.nodes[0].port)
    try:
        content = os.urandom(80_000)
        path = tmp_path / "map.png"
        path.write_bytes(content)
        url = await alice.plugin["xep_0363"].upload_file(path, domain=f"upload.{DOMAIN}", timeout=10)
        assert urlsplit(url).port == eu_port
        await eventually(lambda: "pc" in lookup(eu.gateways[0], bob_jid), 10, "bob mapped")
        alice.send_message(mto=bob_jid, mbody=url, mtype="chat")
        got = await bob.next_message(timeout=10)
        assert got["body"] == url
        async with aiohttp.ClientSession() as session, session.get(got["body"]) as resp:
            assert (resp.status, await resp.read()) == (200, content)
    finally:
        await asyncio.gather(alice.close(), bob.close())


# -- another domain over S2S ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, int]]:
    """eu1 and us1 (tests/integration/test_s2s.py), eu1's node with an upload listener (plain HTTP
    on loopback) and its gateway speaking S2S for ``upload.eu1.example.com`` too."""
    port = free_port()

    def site(base: Path, name: str, domain: str, redis_url: str, dns: DnsServer) -> Site:
        if domain != EU:
            return Site(base, name, domain, redis_url, dns)
        return service_site(base, name, domain, redis_url, dns, f"upload.{domain}", node_settings={
            "modules": upload_settings(port, tls=False, public_url=f"http://127.0.0.1:{port}")})

    with two_sites(tmp_path_factory.mktemp("upload-s2s"), site) as world:
        yield world, port


async def test_a_file_shared_with_another_domain_over_s2s(domains: tuple[World, int], tmp_path: Path):
    """alice of eu1 uploads with slixmpp's plugin and sends the URL to bob of us1 over S2S; bob
    fetches the file from the URL.  eu1's upload service gives slots to eu1's accounts only: bob,
    asking it over S2S, gets ``not-allowed`` (he uploads through his own server)."""
    (world, port) = domains
    eu, us = world.eu, world.us
    alice_jid, bob_jid = f"{eu.user('alice')}@{EU}", f"{us.user('bob')}@{US}"
    alice = Uploader(eu.node, f"{alice_jid}/phone", S2S_PASSWORD)
    bob = Uploader(us.node, f"{bob_jid}/pc", S2S_PASSWORD)
    await alice.online(eu.node.port)
    await bob.online(us.node.port)
    try:
        content = os.urandom(120_000)
        path = tmp_path / "itinerary.pdf"
        path.write_bytes(content)
        url = await alice.plugin["xep_0363"].upload_file(path, domain=f"upload.{EU}", timeout=10)
        assert urlsplit(url).port == port
        alice.send_message(mto=bob_jid, mbody=url, mtype="chat")
        got = await bob.next_message(timeout=20)
        assert got["body"] == url
        async with aiohttp.ClientSession() as session, session.get(got["body"]) as resp:
            assert (resp.status, await resp.read()) == (200, content)
        with pytest.raises(IqError) as e:
            await bob.plugin["xep_0363"].request_slot(f"upload.{EU}", "x.txt", 10, "text/plain", timeout=20)
        assert condition(e.value) == "not-allowed"
    finally:
        await asyncio.gather(alice.close(), bob.close())

