"""XEP-0398 (User Avatar to vCard-Based Avatars Conversion): the sans-IO conversions of
``cluster_node/modules/vcard/avatar.py``, then the vcard and pep modules together on a node
without a network (tests/helpers/fake_host.py): PEP → vCard, vCard → PEP with notifications, the
avatar disabled either way, the refusals that leave everything as it was, no loop, the disco
feature only where PEP runs, and two nodes sharing the database."""

from __future__ import annotations

import base64
import hashlib
import struct
import xml.etree.ElementTree as ET
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from cluster_node.modules.disco import Disco
from cluster_node.modules.pep import Pep, protocol as p
from cluster_node.modules.pep.protocol import EVENT, PUBSUB
from cluster_node.modules.vcard import Vcard
from cluster_node.modules.vcard.avatar import (
    AVATAR_DATA,
    AVATAR_METADATA,
    CONVERSION,
    AvatarInfo,
    InvalidPhoto,
    Photo,
    avatar_items,
    empty_metadata,
    external_photo_element,
    image_size,
    image_type,
    metadata_choice,
    photo_element,
    photo_from_data,
    vcard_photo,
    with_photo,
)
from cluster_node.modules.vcard.module import UPDATE, VCARD, photo_hash
from cluster_node.storage import RosterItem
from cluster_node.xmpp import ns
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.stanza import Stanza, serialize
from tests.helpers.fake_host import DOMAIN, FakeNode, FakeSession, error_condition, fake_node

ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
V, D, M = f"{{{VCARD}}}", f"{{{AVATAR_DATA}}}", f"{{{AVATAR_METADATA}}}"
_P, _E = f"{{{PUBSUB}}}", f"{{{EVENT}}}"
INFO = f"{{{ns.DISCO_INFO}}}"


def png(width: int, height: int, extra: bytes = b"") -> bytes:
    """A real (tiny) PNG of ``width`` x ``height`` black pixels: signature, IHDR, IDAT, IEND."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + b"\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"") + extra)


IMAGE = png(3, 2)
OTHER = png(5, 4)


def el(xml: str) -> ET.Element:
    return ET.fromstring(xml)


def vcard(fn: str = "Alice", photo: bytes | None = None, *, binval: str | None = None, kind: str | None = "image/png",
          extval: str | None = None) -> str:
    inner = ""
    if photo is not None or binval is not None or extval is not None:
        inner = "<PHOTO>" + (f"<TYPE>{kind}</TYPE>" if kind else "")
        if photo is not None or binval is not None:
            text = binval if binval is not None else base64.encodebytes(photo or b"").decode()  # 76-char lines
            inner += f"<BINVAL>{text}</BINVAL>"
        if extval is not None:
            inner += f"<EXTVAL>{extval}</EXTVAL>"
        inner += "</PHOTO>"
    return f"<vCard xmlns='{VCARD}'><FN>{fn}</FN>{inner}<NICKNAME>al</NICKNAME></vCard>"


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


# -- sans-IO: vCard PHOTO → avatar ---------------------------------------------------------------------


def test_vcard_photo_reads_the_image_and_its_type():
    photo = vcard_photo(el(vcard(photo=IMAGE)))
    assert photo == Photo(IMAGE, "image/png") and photo.id == sha1(IMAGE)
    # No TYPE: sniffed from the image; an unknown image: octet-stream.
    assert vcard_photo(el(vcard(photo=IMAGE, kind=None))) == Photo(IMAGE, "image/png")
    unknown = Photo(b"not an image", "application/octet-stream")
    assert vcard_photo(el(vcard(photo=b"not an image", kind=None))) == unknown
    # No image: no PHOTO, an empty BINVAL, only an EXTVAL.
    assert vcard_photo(el(vcard())) is None
    assert vcard_photo(el(vcard(binval="  \n "))) is None
    assert vcard_photo(el(vcard(extval="https://example.com/a.png"))) is None
    with pytest.raises(InvalidPhoto):
        vcard_photo(el(vcard(binval="!!! not base64 !!!")))
    with pytest.raises(InvalidPhoto):
        vcard_photo(el(vcard(binval="abc")))  # bad padding


def test_avatar_items_are_xep_0084_data_and_metadata():
    data, metadata = avatar_items(Photo(IMAGE, "image/png"))
    assert data.tag == D + "data" and base64.b64decode(data.text or "") == IMAGE
    (info,) = metadata.findall(M + "info")
    assert info.attrib == {"id": sha1(IMAGE), "bytes": str(len(IMAGE)), "type": "image/png", "width": "3",
                           "height": "2"}
    _, metadata = avatar_items(Photo(b"opaque", "image/x-unknown"))
    (info,) = metadata.findall(M + "info")
    assert "width" not in info.attrib and info.get("type") == "image/x-unknown"
    assert empty_metadata().tag == M + "metadata" and len(empty_metadata()) == 0


def test_image_type_and_size_from_headers():
    assert image_type(IMAGE) == "image/png" and image_size(IMAGE) == (3, 2)
    gif = b"GIF89a" + struct.pack("<HH", 7, 9) + b"\x00" * 20
    assert image_type(gif) == "image/gif" and image_size(gif) == (7, 9)
    # JPEG: SOI, an APP0 segment, then SOF0 with height 33 and width 44.
    jpeg = (b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
            + b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 33, 44, 1) + b"\x00" * 6)
    assert image_type(jpeg) == "image/jpeg" and image_size(jpeg) == (44, 33)
    assert image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert image_size(b"\xff\xd8\xff\xe0\x00") is None and image_size(b"garbage") is None


# -- sans-IO: avatar → vCard PHOTO ---------------------------------------------------------------------


def test_metadata_choice_prefers_the_info_without_url():
    assert metadata_choice(None) is None
    assert metadata_choice(empty_metadata()) is None  # disabled
    assert metadata_choice(el("<other xmlns='urn:x'/>")) is None
    md = el(f"<metadata xmlns='{AVATAR_METADATA}'>"
            f"<info id='aaa' type='image/gif' bytes='1' url='https://example.com/a.gif'/>"
            f"<info id='{sha1(IMAGE)}' type='image/png' bytes='{len(IMAGE)}'/></metadata>")
    assert metadata_choice(md) == AvatarInfo(sha1(IMAGE), "image/png")
    only_url = el(f"<metadata xmlns='{AVATAR_METADATA}'><info id='aaa' type='image/gif' bytes='1' "
                  f"url='https://example.com/a.gif'/></metadata>")
    assert metadata_choice(only_url) == AvatarInfo("aaa", "image/gif", "https://example.com/a.gif")
    photo = external_photo_element(AvatarInfo("aaa", "image/gif", "https://example.com/a.gif"))
    assert photo.findtext(V + "EXTVAL") == "https://example.com/a.gif" and photo.findtext(V + "TYPE") == "image/gif"


def test_photo_from_data_checks_the_sha1():
    data, _ = avatar_items(Photo(IMAGE, "image/png"))
    assert photo_from_data(AvatarInfo(sha1(IMAGE), "image/png"), data) == Photo(IMAGE, "image/png")
    assert photo_from_data(AvatarInfo(sha1(IMAGE).upper(), ""), data) == Photo(IMAGE, "image/png")  # sniffed
    with pytest.raises(InvalidPhoto, match="SHA-1"):
        photo_from_data(AvatarInfo(sha1(OTHER), "image/png"), data)
    with pytest.raises(InvalidPhoto):
        photo_from_data(AvatarInfo(sha1(IMAGE), "image/png"), el(f"<data xmlns='{AVATAR_DATA}'>%%%</data>"))
    with pytest.raises(InvalidPhoto):
        photo_from_data(AvatarInfo(sha1(IMAGE), "image/png"), el(f"<data xmlns='urn:other'>{data.text}</data>"))


def test_with_photo_replaces_or_removes_only_the_photo():
    card = el(vcard("Alice", IMAGE))
    new = with_photo(card, photo_element(Photo(OTHER, "image/png")))
    assert [c.tag for c in new] == [V + "FN", V + "PHOTO", V + "NICKNAME"]  # in its place
    assert photo_hash(new) == sha1(OTHER)
    removed = with_photo(el(vcard("Alice", IMAGE)), None)
    assert [c.tag for c in removed] == [V + "FN", V + "NICKNAME"] and photo_hash(removed) == ""
    added = with_photo(el(vcard("Alice")), photo_element(Photo(IMAGE, "image/png")))
    assert [c.tag for c in added] == [V + "FN", V + "NICKNAME", V + "PHOTO"]
    fresh = with_photo(None, photo_element(Photo(IMAGE, "image/png")))
    assert fresh.tag == V + "vCard" and vcard_photo(fresh) == Photo(IMAGE, "image/png")


def test_round_trip_vcard_to_avatar_to_vcard():
    photo = vcard_photo(el(vcard(photo=IMAGE)))
    assert photo is not None
    data, metadata = avatar_items(photo)
    info = metadata_choice(metadata)
    assert info is not None
    back = with_photo(None, photo_element(photo_from_data(info, data)))
    assert vcard_photo(back) == photo and photo_hash(back) == photo.id


# -- the modules together ------------------------------------------------------------------------------


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as n:
        for user in (ALICE, BOB):
            await n.create_account(user)
        await n.start(Disco)
        await n.start(Pep, max_payload=4096)
        await n.start(Vcard)
        yield n


async def mutual(node: FakeNode, a: str, b: str) -> None:
    for user, contact in ((a, b), (b, a)):
        j = Jid.parse(user)
        await node.storage.put_roster_item(j.domain, j.local or "", RosterItem(jid=contact, subscription="both"))


async def ask(node: FakeNode, session: FakeSession, type_: str, payload: str, to: str | None = None) -> Stanza:
    """An IQ from ``session``; its reply (what else was delivered stays queued)."""
    to_attr = f" to='{to}'" if to else ""
    await node.route(f"<iq xmlns='jabber:client' from='{session.record.jid}'{to_attr} type='{type_}' id='q1'>"
                     f"{payload}</iq>")
    replies = [s for s in session.delivered if s.name == "iq" and s.id == "q1"]
    session.delivered = [s for s in session.delivered if s not in replies]
    assert len(replies) == 1, replies
    return replies[0]


def ok(reply: Stanza) -> Stanza:
    assert reply.type == "result", reply
    return reply


async def publish(node: FakeNode, session: FakeSession, node_name: str, item_id: str, payload: ET.Element) -> None:
    ok(await ask(node, session, "set", f"<pubsub xmlns='{PUBSUB}'><publish node='{node_name}'>"
                 f"<item id='{item_id}'>{serialize(payload).decode()}</item></publish></pubsub>"))


async def publish_avatar(node: FakeNode, session: FakeSession, image: bytes) -> str:
    """What a XEP-0084 client does: the data, then the metadata."""
    data, metadata = avatar_items(Photo(image, "image/png"))
    await publish(node, session, AVATAR_DATA, sha1(image), data)
    await publish(node, session, AVATAR_METADATA, sha1(image), metadata)
    return sha1(image)


async def get_vcard(node: FakeNode, session: FakeSession, of: str | None = None) -> ET.Element:
    reply = ok(await ask(node, session, "get", f"<vCard xmlns='{VCARD}'/>", to=of))
    card = reply.element.find(V + "vCard")
    assert card is not None
    return card


async def pep_items(node: FakeNode, session: FakeSession, owner: str, node_name: str) -> list[ET.Element]:
    reply = await ask(node, session, "get", f"<pubsub xmlns='{PUBSUB}'><items node='{node_name}'/></pubsub>", to=owner)
    if error_condition(reply) == "item-not-found":
        return []
    return list(ok(reply).element.iterfind(f"{_P}pubsub/{_P}items/{_P}item"))


def events(session: FakeSession) -> list[tuple[str, str, str]]:
    """(node, item|retract, id) of the PEP events ``session`` got since the last call."""
    out = []
    for s in session.take():
        for items in s.element.iterfind(f"{_E}event/{_E}items"):
            out += [(items.get("node", ""), i.tag.rpartition("}")[2], i.get("id", "")) for i in items]
    return out


def pep(node: FakeNode) -> Pep:
    m: Pep = node.services.modules["pep"]
    return m


async def test_the_account_advertises_the_conversion(node: FakeNode):
    alice = node.bind(f"{ALICE}/phone")
    reply = ok(await ask(node, alice, "get", f"<query xmlns='{ns.DISCO_INFO}'/>", to=ALICE))
    assert CONVERSION in {f.get("var") for f in reply.element.iter(INFO + "feature")}


async def test_a_published_avatar_becomes_the_vcard_photo_and_the_presence_hash(node: FakeNode):
    alice, bob = node.bind(f"{ALICE}/phone", available=True), node.bind(f"{BOB}/pc", available=True)
    ok(await ask(node, alice, "set", vcard("Alice")))  # the rest of the vCard is kept
    avatar = await publish_avatar(node, alice, IMAGE)
    card = await get_vcard(node, bob, ALICE)
    assert card.findtext(V + "FN") == "Alice" and card.findtext(V + "NICKNAME") == "al"
    assert card.findtext(f"{V}PHOTO/{V}TYPE") == "image/png"
    assert vcard_photo(card) == Photo(IMAGE, "image/png")
    assert await node.services.modules["vcard"].store.photo_hash(Jid.parse(ALICE)) == avatar  # XEP-0153
    # A new avatar replaces it; an account without a vCard gets one made of the photo.
    await publish_avatar(node, alice, OTHER)
    assert photo_hash(await get_vcard(node, bob, ALICE)) == sha1(OTHER)
    await publish_avatar(node, bob, IMAGE)
    assert vcard_photo(await get_vcard(node, alice, BOB)) == Photo(IMAGE, "image/png")
    # The avatar disabled (XEP-0084 §4.6: empty metadata): the PHOTO goes, nothing else.
    await publish(node, alice, AVATAR_METADATA, "off", empty_metadata())
    card = await get_vcard(node, bob, ALICE)
    assert card.find(V + "PHOTO") is None and card.findtext(V + "FN") == "Alice"
    assert await node.services.modules["vcard"].store.photo_hash(Jid.parse(ALICE)) == ""
    # The metadata node deleted: the same.
    await publish_avatar(node, alice, IMAGE)
    ok(await ask(node, alice, "set", f"<pubsub xmlns='{p.OWNER}'><delete node='{AVATAR_METADATA}'/></pubsub>"))
    assert (await get_vcard(node, bob, ALICE)).find(V + "PHOTO") is None


async def test_metadata_whose_data_does_not_match_is_not_converted(node: FakeNode):
    alice = node.bind(f"{ALICE}/phone")
    ok(await ask(node, alice, "set", vcard("Alice", IMAGE)))
    data, _ = avatar_items(Photo(OTHER, "image/png"))
    await publish(node, alice, AVATAR_DATA, sha1(IMAGE) + "0", data)  # an id that is not its SHA-1
    _, metadata = avatar_items(Photo(OTHER, "image/png"))
    metadata[0].set("id", sha1(IMAGE) + "0")
    await publish(node, alice, AVATAR_METADATA, sha1(IMAGE) + "0", metadata)
    assert vcard_photo(await get_vcard(node, alice)) == Photo(IMAGE, "image/png")  # kept


async def test_a_vcard_photo_is_published_as_the_avatar_with_notifications(node: FakeNode):
    await mutual(node, ALICE, BOB)
    alice, bob = node.bind(f"{ALICE}/phone", available=True), node.bind(f"{BOB}/pc", available=True)
    bob.set_record(replace(bob.record, flags=p.notify_flags(bob.record.flags, [AVATAR_METADATA])))
    before = pep(node).counters["published"]
    ok(await ask(node, alice, "set", vcard("Alice", IMAGE)))
    assert pep(node).counters["published"] - before == 2  # the data, the metadata: no loop
    assert events(bob) == [(AVATAR_METADATA, "item", sha1(IMAGE))]
    assert (AVATAR_METADATA, "item", sha1(IMAGE)) in events(alice)
    (meta,) = await pep_items(node, bob, ALICE, AVATAR_METADATA)
    info = meta.find(f"{M}metadata/{M}info")
    assert info is not None and info.attrib == {"id": sha1(IMAGE), "bytes": str(len(IMAGE)), "type": "image/png",
                                                "width": "3", "height": "2"}
    (data,) = await pep_items(node, bob, ALICE, AVATAR_DATA)
    assert data.get("id") == sha1(IMAGE) and base64.b64decode(data.findtext(D + "data") or "") == IMAGE
    config = await pep(node).store.node(Jid.parse(ALICE), AVATAR_DATA)
    assert config is not None and config.access_model == "presence"
    # The same photo again (a client changing its nickname): nothing published, nobody notified.
    ok(await ask(node, alice, "set", vcard("Alicia", IMAGE)))
    assert pep(node).counters["published"] - before == 2 and events(bob) == []
    # A vCard without a photo: the avatar disabled, its data retracted.
    ok(await ask(node, alice, "set", vcard("Alicia")))
    assert events(bob) == [(AVATAR_METADATA, "item", "current")]
    (meta,) = await pep_items(node, bob, ALICE, AVATAR_METADATA)
    assert meta.find(f"{M}metadata") is not None and len(meta.find(f"{M}metadata") or []) == 0
    assert await pep_items(node, bob, ALICE, AVATAR_DATA) == []
    card = await get_vcard(node, bob, ALICE)
    assert card.findtext(V + "FN") == "Alicia" and card.find(V + "PHOTO") is None  # not rewritten from PEP


async def test_bad_photos_are_refused_and_nothing_is_lost(node: FakeNode):
    alice = node.bind(f"{ALICE}/phone")
    ok(await ask(node, alice, "set", vcard("Alice", IMAGE)))
    stored = await node.services.modules["vcard"].store.get(Jid.parse(ALICE))
    # A BINVAL that is not base64: bad-request.
    assert error_condition(await ask(node, alice, "set", vcard("Mallory", binval="@@not base64@@"))) == "bad-request"
    # An image larger than a PEP item may be (max_payload 4096 here): not-acceptable, payload-too-big.
    reply = await ask(node, alice, "set", vcard("Mallory", png(3, 2, b"x" * 4000)))
    assert error_condition(reply) == "not-acceptable"
    assert reply.element.find(f"{{jabber:client}}error/{{{p.PUBSUB_ERRORS}}}payload-too-big") is not None
    assert await node.services.modules["vcard"].store.get(Jid.parse(ALICE)) == stored
    (meta,) = await pep_items(node, alice, ALICE, AVATAR_METADATA)
    assert meta.get("id") == sha1(IMAGE)
    (data,) = await pep_items(node, alice, ALICE, AVATAR_DATA)
    assert data.get("id") == sha1(IMAGE)


async def test_no_conversion_without_pep_or_when_disabled(tmp_path: Path):
    async with fake_node(tmp_path) as n:
        await n.create_account(ALICE)
        await n.start(Disco)
        await n.start(Vcard)  # no pep module
        alice = n.bind(f"{ALICE}/phone")
        reply = ok(await ask(n, alice, "get", f"<query xmlns='{ns.DISCO_INFO}'/>", to=ALICE))
        assert CONVERSION not in {f.get("var") for f in reply.element.iter(INFO + "feature")}
        ok(await ask(n, alice, "set", vcard("Alice", binval="@@not base64@@")))  # XEP-0054 as before
    async with fake_node(tmp_path / "off") as n:
        await n.create_account(ALICE)
        await n.start(Disco)
        await n.start(Pep)
        await n.start(Vcard, pep_conversion=False)
        alice = n.bind(f"{ALICE}/phone")
        reply = ok(await ask(n, alice, "get", f"<query xmlns='{ns.DISCO_INFO}'/>", to=ALICE))
        features = {f.get("var") for f in reply.element.iter(INFO + "feature")}
        assert CONVERSION not in features and PUBSUB in features
        ok(await ask(n, alice, "set", vcard("Alice", IMAGE)))
        assert await pep_items(n, alice, ALICE, AVATAR_METADATA) == []
        await publish_avatar(n, alice, OTHER)
        assert vcard_photo(await get_vcard(n, alice)) == Photo(IMAGE, "image/png")


async def test_open_access_model_setting_and_an_existing_node_keeps_its_own(tmp_path: Path):
    async with fake_node(tmp_path) as n:
        await n.create_account(ALICE)
        await n.start(Pep)
        await n.start(Vcard, avatar_access_model="open")
        alice = n.bind(f"{ALICE}/phone")
        ok(await ask(n, alice, "set", vcard("Alice", IMAGE)))
        store = pep(n).store
        for name in (AVATAR_DATA, AVATAR_METADATA):
            config = await store.node(Jid.parse(ALICE), name)
            assert config is not None and config.access_model == "open"
        ok(await ask(n, alice, "set", f"<pubsub xmlns='{p.OWNER}'><configure node='{AVATAR_METADATA}'>"
                     f"<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>"
                     f"<value>{p.NODE_CONFIG}</value></field><field var='pubsub#access_model'>"
                     f"<value>presence</value></field></x></configure></pubsub>"))
        ok(await ask(n, alice, "set", vcard("Alice", OTHER)))
        for name in (AVATAR_DATA, AVATAR_METADATA):
            config = await store.node(Jid.parse(ALICE), name)
            assert config is not None and config.access_model == "presence"


async def test_the_hash_in_presence_follows_a_published_avatar(node: FakeNode):
    from cluster_node.modules.presence import Presence
    from cluster_node.modules.roster import Roster

    await node.start(Roster)
    await node.start(Presence)
    await mutual(node, ALICE, BOB)
    alice, bob = node.bind(f"{ALICE}/phone"), node.bind(f"{BOB}/pc", available=True)
    await publish_avatar(node, alice, IMAGE)
    await node.sessions.outbound(alice, Stanza(ET.fromstring("<presence xmlns='jabber:client'/>"))
                                 .with_attrs(from_=str(alice.record.jid)))
    await node.settle()
    got = [s for s in bob.take() if s.name == "presence" and s.type is None]
    assert len(got) == 1 and got[0].element.findtext(f"{{{UPDATE}}}x/{{{UPDATE}}}photo") == sha1(IMAGE)


async def test_converted_on_one_node_read_on_another_sharing_the_database(tmp_path: Path):
    async with fake_node(tmp_path) as one, fake_node(tmp_path, node_name="node2") as two:
        await one.create_account(ALICE)
        await one.create_account(BOB)
        for n in (one, two):
            await n.start(Pep)
            await n.start(Vcard)
        alice, bob = one.bind(f"{ALICE}/phone"), two.bind(f"{BOB}/pc")
        await publish_avatar(one, alice, IMAGE)
        assert vcard_photo(await get_vcard(two, bob, ALICE)) == Photo(IMAGE, "image/png")
        # And the other way: a vCard set on node2 is the avatar read on node1.
        laptop = two.bind(f"{ALICE}/laptop")
        ok(await ask(two, laptop, "set", vcard("Alice", OTHER)))
        (meta,) = await pep_items(one, alice, ALICE, AVATAR_METADATA)
        assert meta.get("id") == sha1(OTHER)
