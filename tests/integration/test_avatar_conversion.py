"""XEP-0398 (User Avatar to vCard-Based Avatars Conversion) with real processes and slixmpp's own
plugins (``xep_0084``, ``xep_0054``, ``xep_0163``, ``xep_0060``, ``xep_0115``, ``xep_0030``).

alice and bob are mutually subscribed; bob's caps carry ``urn:xmpp:avatar:metadata+notify``
(``xep_0084``).  On one node: the account advertises ``urn:xmpp:pep-vcard-conversion:0``; an avatar
alice publishes with XEP-0084 is her vCard's PHOTO for anyone reading vcard-temp, and the hash in
her next presence; a vCard PHOTO she sets reaches bob as a XEP-0084 metadata event whose data he
fetches, and a vCard without a PHOTO disables the avatar; a BINVAL that is not base64
(``bad-request``) and an image larger than a PEP item may be (``not-acceptable``) are refused with
her vCard and avatar left as they were.  The same across the two nodes of a region and across two
regions of one domain (written in eu, read in us, and the other way), and with a user of another
domain over S2S."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0054.stanza import VCardTemp
from slixmpp.plugins.xep_0084.stanza import Data, MetaData

from tests.helpers.node import NodeProcess
from tests.helpers.redis import RedisServer
from tests.helpers.regions import Region
from tests.helpers.topologies import (
    close,
    fresh_users,
    mapped,
    need_redis,
    one_node,
    replicated,
    two_node_region,
    two_regions,
)
from tests.helpers.xmpp_client import Client
from tests.integration.test_pep import befriend
from tests.integration.test_s2s import EU, PASSWORD as S2S_PASSWORD, US, Site, two_sites

PASSWORD = "avatar-secret"
CONVERSION = "urn:xmpp:pep-vcard-conversion:0"
MAX_PAYLOAD = 8192  # modules.pep.max_payload of the one-node fixture


def png(width: int, height: int, extra: bytes = b"") -> bytes:
    """A real PNG of ``width`` x ``height`` black pixels (``extra``: bytes after its end)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + b"\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"") + extra)


RED, BLUE, GREEN = png(4, 3), png(6, 5), png(2, 2)


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def card(fn: str, image: bytes | None = None, *, binval: str | None = None) -> VCardTemp:
    """A vcard-temp element with ``FN`` and a PHOTO of ``image`` (RFC 2045 lines) or of ``binval``."""
    xml = ET.Element("{vcard-temp}vCard")
    ET.SubElement(xml, "{vcard-temp}FN").text = fn
    if image is not None or binval is not None:
        photo = ET.SubElement(xml, "{vcard-temp}PHOTO")
        ET.SubElement(photo, "{vcard-temp}TYPE").text = "image/png"
        text = binval if binval is not None else base64.encodebytes(image or b"").decode()
        ET.SubElement(photo, "{vcard-temp}BINVAL").text = text
    return VCardTemp(xml=xml)


class AvatarClient(Client):
    """A client with slixmpp's XEP-0084 and vcard-temp plugins; the avatar metadata events it gets
    are queued (its caps carry ``urn:xmpp:avatar:metadata+notify``)."""

    def __init__(self, node: NodeProcess, jid: str, password: str = PASSWORD) -> None:
        super().__init__(jid, password, cert=node.cert)
        for plugin in ("xep_0004", "xep_0060", "xep_0115", "xep_0163", "xep_0084", "xep_0054"):
            self.register_plugin(plugin)
        self.avatars: asyncio.Queue[Any] = asyncio.Queue()
        self.add_event_handler("avatar_metadata_publish", lambda m: self.avatars.put_nowait(m))

    async def avatar(self, of: str, timeout: float = 10.0) -> tuple[str, list[dict[str, str]]]:
        """The item id and the infos of the next avatar metadata event of the account ``of``."""
        while True:
            msg = await asyncio.wait_for(self.avatars.get(), timeout)
            if str(msg["from"].bare) == of:
                break
        item = msg["pubsub_event"]["items"]["item"]
        infos = item.xml.findall(f"{{{MetaData.namespace}}}metadata/{{{MetaData.namespace}}}info")
        return str(item["id"]), [dict(i.attrib) for i in infos]

    async def publish_avatar(self, data: bytes) -> str:
        """What a XEP-0084 client does: the data, then the metadata."""
        xep = self.plugin["xep_0084"]
        item_id: str = xep.generate_id(data)
        await xep.publish_avatar(data, timeout=5)
        await xep.publish_avatar_metadata({"id": item_id, "type": "image/png", "bytes": len(data)}, timeout=5)
        return item_id

    async def photo_of(self, jid: str) -> tuple[str, bytes]:
        """TYPE and image of ``jid``'s vCard PHOTO, read through vcard-temp."""
        iq = await self.plugin["xep_0054"].get_vcard(jid, local=False, timeout=10)
        photo = iq.xml.find("{vcard-temp}vCard/{vcard-temp}PHOTO")
        if photo is None:
            return "", b""
        binval = "".join((photo.findtext("{vcard-temp}BINVAL") or "").split())
        return photo.findtext("{vcard-temp}TYPE") or "", base64.b64decode(binval)

    async def fn_of(self, jid: str) -> str:
        iq = await self.plugin["xep_0054"].get_vcard(jid, local=False, timeout=10)
        return iq.xml.findtext("{vcard-temp}vCard/{vcard-temp}FN") or ""

    async def avatar_data(self, jid: str, item_id: str) -> bytes:
        got = await self.plugin["xep_0084"].retrieve_avatar(jid, item_id, timeout=10)
        data = got.xml.find(f".//{{{Data.namespace}}}data")
        assert data is not None, got
        return base64.b64decode("".join((data.text or "").split()))


async def online(node: NodeProcess, port: int, jid: str) -> AvatarClient:
    return await AvatarClient(node, jid).online(port)  # type: ignore[return-value]


async def photo_hash_in_presence(c: Client, sender: str, timeout: float = 10.0) -> str:
    """The XEP-0153 hash of the next available presence from ``sender`` that carries one."""
    while True:
        p = await c.next_presence(sender=sender, timeout=timeout)
        if p["type"] not in ("available", ""):
            continue
        photo = p.xml.find("{vcard-temp:x:update}x/{vcard-temp:x:update}photo")
        if photo is not None and photo.text:
            return photo.text


async def vcard_becomes_avatar(alice: AvatarClient, bob: AvatarClient, image: bytes) -> None:
    """alice sets a vCard with a PHOTO: bob gets the XEP-0084 metadata event and fetches the data."""
    alice_jid = str(alice.boundjid.bare)
    await alice.plugin["xep_0054"].publish_vcard(card("Alice", image), timeout=10)
    item_id, infos = await bob.avatar(alice_jid, timeout=15)
    assert item_id == sha1(image)
    assert [(i["id"], i["type"], i["bytes"]) for i in infos] == [(sha1(image), "image/png", str(len(image)))]
    assert await bob.avatar_data(alice_jid, item_id) == image


async def avatar_becomes_vcard(owner: AvatarClient, reader: AvatarClient, image: bytes) -> None:
    """``owner`` publishes a XEP-0084 avatar: ``reader`` sees it as the PHOTO of the owner's vCard."""
    await owner.publish_avatar(image)
    assert await reader.photo_of(str(owner.boundjid.bare)) == ("image/png", image)


# -- one node --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with one_node(tmp_path_factory.mktemp("avatar-node"), "a1",
                  settings={"modules": {"pep": {"max_payload": MAX_PAYLOAD}}}) as n:
        yield n


async def test_one_node_avatar_becomes_vcard_photo_and_presence_hash(node: NodeProcess):
    alice_jid, bob_jid = fresh_users(node, PASSWORD, "alice", "bob", domain="localhost")
    alice = await online(node, node.port, f"{alice_jid}/phone")
    bob = await online(node, node.port, f"{bob_jid}/pc")
    try:
        info = await alice.plugin["xep_0030"].get_info(jid=alice_jid, timeout=5)
        assert CONVERSION in info["disco_info"]["features"]
        await befriend(alice, bob)
        await alice.plugin["xep_0054"].publish_vcard(card("Alice"), timeout=5)  # no photo yet
        await avatar_becomes_vcard(alice, bob, RED)
        assert await bob.fn_of(alice_jid) == "Alice"  # the rest of her vCard is kept
        # XEP-0153: her next presence carries the hash of the image, put there by the server.
        alice.send_presence(pstatus="new look")
        assert await photo_hash_in_presence(bob, alice_jid) == sha1(RED)
        # A new avatar replaces the photo; the avatar disabled (empty metadata) removes it.
        await avatar_becomes_vcard(alice, bob, BLUE)
        await alice.plugin["xep_0084"].stop(timeout=5)
        assert await bob.photo_of(alice_jid) == ("", b"")
        assert await bob.fn_of(alice_jid) == "Alice"
    finally:
        await close(alice, bob)


async def test_one_node_vcard_photo_becomes_avatar_for_contacts(node: NodeProcess):
    alice_jid, bob_jid = fresh_users(node, PASSWORD, "alice", "bob", domain="localhost")
    alice = await online(node, node.port, f"{alice_jid}/phone")
    bob = await online(node, node.port, f"{bob_jid}/pc")
    try:
        await befriend(alice, bob)
        await vcard_becomes_avatar(alice, bob, RED)
        item_id, _ = await alice.avatar(alice_jid)  # her own resource is notified too
        assert item_id == sha1(RED)
        # Only the photo matters: the same photo with another name publishes nothing…
        await alice.plugin["xep_0054"].publish_vcard(card("Alicia", RED), timeout=5)
        # …a vCard without a photo disables the avatar (XEP-0084 §4.6: metadata without info).
        await alice.plugin["xep_0054"].publish_vcard(card("Alicia"), timeout=5)
        item_id, infos = await bob.avatar(alice_jid)
        assert infos == []
        got = await bob.plugin["xep_0060"].get_items(jid=alice_jid, node=MetaData.namespace, timeout=5)
        assert [i["id"] for i in got["pubsub"]["items"]] == [item_id]
        assert await bob.fn_of(alice_jid) == "Alicia"
    finally:
        await close(alice, bob)


async def test_one_node_bad_photos_are_refused_and_nothing_is_lost(node: NodeProcess):
    (alice_jid,) = fresh_users(node, PASSWORD, "alice", domain="localhost")
    alice = await online(node, node.port, f"{alice_jid}/phone")
    try:
        await alice.plugin["xep_0054"].publish_vcard(card("Alice", RED), timeout=5)
        with pytest.raises(IqError) as e:
            await alice.plugin["xep_0054"].publish_vcard(card("Mallory", binval="@@ not base64 @@"), timeout=5)
        assert e.value.iq["error"]["condition"] == "bad-request"
        big = png(4, 3, b"\x00" * MAX_PAYLOAD)  # its base64 is over a PEP item's limit, the vCard's is fine
        with pytest.raises(IqError) as e:
            await alice.plugin["xep_0054"].publish_vcard(card("Mallory", big), timeout=5)
        assert e.value.iq["error"]["condition"] == "not-acceptable"
        assert await alice.fn_of(alice_jid) == "Alice"
        assert await alice.photo_of(alice_jid) == ("image/png", RED)
        got = await alice.plugin["xep_0060"].get_items(jid=alice_jid, node=MetaData.namespace, timeout=5)
        assert [i["id"] for i in got["pubsub"]["items"]] == [sha1(RED)]
        assert await alice.avatar_data(alice_jid, sha1(RED)) == RED
    finally:
        await close(alice)


# -- a two-node region ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    with two_node_region(tmp_path_factory.mktemp("avatar-region"), users=("alice", "bob"),
                         password=PASSWORD) as nodes:
        yield nodes


async def test_two_nodes_of_a_region(region: list[NodeProcess]):
    """alice on r1, bob on r2: her vCard photo reaches him as an avatar, his avatar is his vCard for her."""
    r1, r2 = region
    alice = await online(r1, r1.port, "alice@localhost/phone")
    bob = await online(r2, r2.port, "bob@localhost/pc")
    try:
        await befriend(alice, bob)
        await replicated((bob, alice))  # bob's interest flag is on r1
        await vcard_becomes_avatar(alice, bob, GREEN)
        await avatar_becomes_vcard(bob, alice, BLUE)
    finally:
        await close(alice, bob)


# -- two regions -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Region, Region]]:
    need_redis()
    base = tmp_path_factory.mktemp("avatar-regions")
    with RedisServer() as redis, two_regions(base, redis) as both:
        yield both.eu, both.us


async def test_two_regions(regions: tuple[Region, Region]):
    """alice's avatar published in eu is her vCard read in us; bob's vCard photo set in us is the
    avatar alice gets in eu (event and data)."""
    eu, us = regions
    alice_jid, bob_jid = fresh_users(eu.nodes[0], PASSWORD, "alice", "bob")
    eu_node, us_node = eu.nodes[0], us.nodes[0]
    alice = await online(eu_node, eu_node.port, f"{alice_jid}/phone")
    bob = await online(us_node, us_node.port, f"{bob_jid}/pc")
    try:
        await mapped((eu.gateways[0], us.gateways[0]), {alice_jid: ["phone"], bob_jid: ["pc"]})
        await befriend(alice, bob)
        await replicated((alice, bob), (bob, alice))
        await avatar_becomes_vcard(alice, bob, RED)  # eu → us
        await vcard_becomes_avatar(bob, alice, BLUE)  # us → eu
        assert await alice.photo_of(bob_jid) == ("image/png", BLUE)
    finally:
        await close(alice, bob)


# -- another domain over S2S -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Site]]:
    with two_sites(tmp_path_factory.mktemp("avatar-s2s")) as world:
        yield world.eu, world.us


async def test_over_s2s(domains: tuple[Site, Site]):
    """bob of us1, a contact of alice of eu1: the avatar she publishes is her vCard PHOTO when
    his legacy client asks over S2S; the vCard PHOTO he sets reaches her as an avatar event and
    data from his server."""
    eu, us = domains
    alice_jid, bob_jid = f"{eu.user('alice')}@{EU}", f"{us.user('bob')}@{US}"
    alice = await AvatarClient(eu.node, f"{alice_jid}/phone", S2S_PASSWORD).online(eu.node.port)
    bob = await AvatarClient(us.node, f"{bob_jid}/pc", S2S_PASSWORD).online(us.node.port)
    try:
        await befriend(bob, alice)
        await avatar_becomes_vcard(alice, bob, GREEN)  # eu1 → us1
        await vcard_becomes_avatar(bob, alice, RED)  # us1 → eu1
    finally:
        await close(alice, bob)

