"""vcard-temp (XEP-0054) and vCard-based avatar hashes in presence (XEP-0153).

* **Reading.**  Anyone may read an account's vCard (an IQ get to its bare JID, or with no 'to' for
  one's own); the server answers on the account's behalf from the domain database, so every node
  and region reads what any of them stored.  One's own missing vCard is an empty ``<vCard/>``;
  another account's missing vCard (or a missing account) is ``service-unavailable``.
* **Writing.**  Only the account itself may set its vCard (``forbidden`` otherwise); one larger
  than ``max_size`` bytes is refused with ``not-acceptable`` before anything is stored.
* **Avatar hash.**  When a vCard is stored, the SHA-1 of its ``PHOTO/BINVAL`` image (or nothing:
  no photo) is stored with it; the available presence a session broadcasts then carries
  ``<x xmlns='vcard-temp:x:update'><photo>hash</photo></x>`` (an empty ``<photo/>`` without a
  photo), replacing what the client put there (``presence_broadcast``).  Accounts without a
  stored vCard keep their client's element.
* **XEP-0398** (``pep_conversion``, where the pep module runs: its ``pep_publish`` hook is there).
  The account's disco#info has ``urn:xmpp:pep-vcard-conversion:0``.  *PEP → vCard*: when the
  account's ``urn:xmpp:avatar:metadata`` (or ``…:data``) node changes (``pep_changed``), the
  metadata's first ``<info/>`` without a url and its data item (whose SHA-1 must be its id) become
  the vCard's ``PHOTO`` (TYPE, BINVAL; an URL-only info an EXTVAL), everything else in the vCard
  kept; disabled (empty) metadata, or a retracted, purged or deleted metadata node, removes the
  PHOTO.  The avatar hash in presence follows the stored vCard.  *vCard → PEP*: a vCard set whose
  PHOTO has an image publishes it as the data item and then the metadata item (id: its SHA-1; type,
  bytes, width and height) on the account's behalf, with the notifications of the account's own
  publish; a new node gets ``avatar_access_model`` (or its sibling's); a vCard without an image
  publishes empty metadata and retracts the data item.  A BINVAL that is not base64 is refused
  (``bad-request``) and an image larger than PEP's ``max_payload`` is refused by PEP
  (``not-acceptable``), before anything is stored: the vCard and the avatar stay as they were.
  The last write wins: each side is rewritten from the other as it changes.  No loop: what this
  module publishes comes back through ``pep_changed`` with its name as the origin and is ignored,
  the vCard it writes from PEP is stored directly (not as a vCard set), and neither side is
  rewritten when it already has the same image (SHA-1).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
import xml.etree.ElementTree as ET
from typing import Any, Literal

from pydantic import Field

from ...core.hooks import Hook
from ...core.module import Module, ModuleHost, ModuleSettings, Xep
from ...core.router import IqRequest
from ...storage import Storage
from ...xmpp import errors
from ...xmpp.fragment import parse_stanza
from ...xmpp.jid import Jid
from ...xmpp.stanza import Stanza, serialize
from .avatar import (
    AVATAR_DATA,
    AVATAR_METADATA,
    CONVERSION,
    DISABLED_ID,
    AvatarInfo,
    InvalidPhoto,
    Photo,
    avatar_items,
    empty_metadata,
    external_photo_element,
    metadata_choice,
    photo_element,
    photo_from_data,
    vcard_photo,
    with_photo,
)

__all__ = ["Vcard", "VcardSettings", "VcardStore", "photo_hash", "with_photo_hash", "VCARD", "UPDATE"]

log = logging.getLogger("meridian.vcard")

VCARD = "vcard-temp"
UPDATE = "vcard-temp:x:update"
V = f"{{{VCARD}}}"
U = f"{{{UPDATE}}}"
_PHOTO_HASH = "SELECT username, photo_hash FROM vcards WHERE domain = ? AND username IN ({users})"

STEPS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS vcards (
               domain TEXT NOT NULL, username TEXT NOT NULL, vcard {blob} NOT NULL,
               photo_hash TEXT NOT NULL DEFAULT '', updated_at {bigint} NOT NULL,
               PRIMARY KEY (domain, username))""",
    ]),
]


class VcardSettings(ModuleSettings):
    max_size: int = Field(65_536, ge=256, le=10 * 1024 * 1024,
                          description="bytes of one vCard (larger ones are refused with not-acceptable; a stanza over "
                          "c2s.max_stanza_size never gets here: its stream ends)")
    avatar_hash: bool = Field(True, description="XEP-0153: add the stored vCard's photo hash to the available "
                              "presence a session broadcasts")
    pep_conversion: bool = Field(True, description="XEP-0398: keep the vCard's PHOTO and the account's XEP-0084 "
                                 "avatar (PEP) in step, both ways, and say so in the account's disco#info; offered "
                                 "only where the pep module runs")
    avatar_access_model: Literal["presence", "open"] = Field(
        "presence", description="XEP-0398: the access model of an avatar node a vCard's photo creates (an existing "
        "node keeps its own; a new one takes its sibling's when there is one): presence (XEP-0084's default, the "
        "contacts) or open (anyone, like the vCard itself)")


def photo_hash(vcard: ET.Element) -> str:
    """XEP-0153: the hex SHA-1 of the image in ``PHOTO/BINVAL`` (whitespace ignored); "" when there
    is none (no photo, an empty or undecodable BINVAL, only an EXTVAL)."""
    binval = vcard.find(f"{V}PHOTO/{V}BINVAL")
    if binval is None or not binval.text:
        return ""
    data = "".join(binval.text.split())
    if not data:
        return ""
    try:
        image = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return ""
    return hashlib.sha1(image).hexdigest()


def with_photo_hash(stanza: Stanza, digest: str) -> Stanza:
    """A copy of ``stanza`` whose only ``vcard-temp:x:update`` child says ``digest`` ("": no photo)."""
    el = ET.Element(stanza.element.tag, dict(stanza.element.attrib))
    el.text = stanza.element.text
    el.extend(c for c in stanza.element if c.tag != f"{U}x")
    x = ET.SubElement(el, f"{U}x")
    ET.SubElement(x, f"{U}photo").text = digest or None
    return Stanza(el)


class VcardStore:
    """One row per account in the domain database (``vcards``, emptied when the account is removed)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def migrate(self) -> None:
        await self.storage.migrate_module("vcard", STEPS, user_tables=("vcards",))

    async def get(self, user: Jid) -> bytes | None:
        async with self.storage.transaction() as tx:
            row = await tx.fetchone("SELECT vcard FROM vcards WHERE domain = ? AND username = ?",
                                    user.domain, user.local or "")
        return bytes(row[0]) if row is not None else None

    async def photo_hash(self, user: Jid) -> str | None:
        """The stored photo hash ("" without a photo); None when the account stored no vCard.
        Every login reads it (for its presence): a burst of logins reads it in one statement."""
        rows = await self.storage.user_rows(_PHOTO_HASH).rows(user.domain, user.local or "")
        return str(rows[0][0]) if rows else None

    async def put(self, user: Jid, vcard: bytes, digest: str) -> None:
        async with self.storage.transaction(write=True) as tx:
            await tx.execute(
                "INSERT INTO vcards (domain, username, vcard, photo_hash, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (domain, username) DO UPDATE SET vcard = excluded.vcard, "
                "photo_hash = excluded.photo_hash, updated_at = excluded.updated_at",
                user.domain, user.local or "", vcard, digest, int(time.time()))


def _features(features: set[str]) -> set[str]:
    return features | {VCARD}


class Vcard(Module):
    name = "vcard"
    description = "vcard-temp: each account's vCard, readable by anyone, written by its owner"
    xeps = (Xep(54, "1.3.0"),
            Xep(153, "1.1.1", "complete", "the server adds the stored vCard's photo hash to the available "
                "presence a session broadcasts"),
            Xep(398, "1.0.0", "partial", "both ways, vCard PHOTO and XEP-0084 avatar, where the pep module runs; "
                "the hash goes into the available presence a session broadcasts (replacing the client's, an "
                "empty photo element too), not into directed presence (MUC joins)"))
    Settings = VcardSettings

    async def start(self, host: ModuleHost) -> None:
        self.host = host
        self.cfg: VcardSettings = self.settings  # type: ignore[assignment]
        self.store = VcardStore(host.storage)
        await self.store.migrate()
        host.add_account_iq(VCARD, "vCard", self._vcard)
        host.hook(Hook.DISCO_SERVER_FEATURES, _features)
        if self.cfg.avatar_hash:
            host.hook(Hook.PRESENCE_BROADCAST, self._presence)
        if self.cfg.pep_conversion:
            host.hook(Hook.DISCO_ACCOUNT_FEATURES, self._account_features)
            host.hook(Hook.PEP_CHANGED, self._pep_changed)

    async def _vcard(self, req: IqRequest) -> ET.Element | None:
        user = req.to
        own = req.sender.bare == user
        if req.stanza.type == "get":
            data = await self.store.get(user)
            if data is None:
                if own:
                    return ET.Element(f"{V}vCard")  # XEP-0054 §3.1: an empty vCard
                raise errors.ServiceUnavailable()  # no vCard, or no such account (§3.3)
            return parse_stanza(data).element
        if not own:
            raise errors.Forbidden("only the account itself may set its vCard")
        vcard = serialize(req.payload)
        if len(vcard) > self.cfg.max_size:
            raise errors.NotAcceptable(f"a vCard may have at most {self.cfg.max_size} bytes")
        if self._converting():
            try:
                photo = vcard_photo(req.payload)
            except InvalidPhoto as e:
                raise errors.BadRequest(f"the vCard's PHOTO is no image: its BINVAL is {e}") from None
            await self._to_pep(user, photo)  # a refusal (too big for PEP) leaves everything as it was
        await self.store.put(user, vcard, photo_hash(req.payload))
        return None  # an empty result

    # -- XEP-0398 ------------------------------------------------------------------------------------

    def _converting(self) -> bool:
        """Whether the conversion is on: configured, and the pep module running here."""
        return self.cfg.pep_conversion and self.host.hooks.has(Hook.PEP_PUBLISH)

    def _account_features(self, features: set[str], user: Jid) -> set[str]:
        return features | {CONVERSION} if self._converting() else features

    async def _pep_avatar(self, user: Jid) -> AvatarInfo | None:
        """The info of the account's current XEP-0084 avatar (None: none, or disabled)."""
        items = await self.host.hooks.first_async(Hook.PEP_ITEMS, user, AVATAR_METADATA, None)
        return metadata_choice(items[-1][1] if items else None)

    async def _publish(self, user: Jid, node: str, item_id: str, payload: ET.Element | None) -> None:
        await self.host.hooks.first_async(Hook.PEP_PUBLISH, user, node, item_id, payload, self.name,
                                          self.cfg.avatar_access_model)

    async def _to_pep(self, user: Jid, photo: Photo | None) -> None:
        """XEP-0398 §3.2: the vCard's image as the account's avatar (data, then metadata); no image:
        the avatar disabled (empty metadata) and its data retracted."""
        current = await self._pep_avatar(user)
        if photo is not None:
            if current is not None and current.url is None and current.id == photo.id:
                return  # the same image: nothing to publish, nobody to notify
            data, metadata = avatar_items(photo)
            await self._publish(user, AVATAR_DATA, photo.id, data)
            await self._publish(user, AVATAR_METADATA, photo.id, metadata)
            log.debug("vCard photo of %s published as its avatar %s", user, photo.id)
        elif current is not None:
            await self._publish(user, AVATAR_METADATA, DISABLED_ID, empty_metadata())
            if current.url is None:
                await self._publish(user, AVATAR_DATA, current.id, None)

    async def _pep_changed(self, owner: Jid, node: str, origin: str) -> None:
        """``pep_changed``: XEP-0398 §3.1, the account's avatar into its vCard's PHOTO."""
        if origin == self.name or node not in (AVATAR_METADATA, AVATAR_DATA) or not self._converting():
            return
        info = await self._pep_avatar(owner)
        stored = await self.store.get(owner)
        card = parse_stanza(stored).element if stored is not None else None
        if info is None:
            if card is None or card.find(f"{V}PHOTO") is None:
                return
            new = with_photo(card, None)
        elif info.url is not None:
            new = with_photo(card, external_photo_element(info))
        else:
            if card is not None and photo_hash(card) == info.id.lower():
                return  # the vCard has that image already
            items = await self.host.hooks.first_async(Hook.PEP_ITEMS, owner, AVATAR_DATA, info.id)
            if not items:
                return  # no data (yet: a client publishes the data first, or the metadata points nowhere)
            try:
                photo = photo_from_data(info, items[0][1])
            except InvalidPhoto as e:
                log.info("avatar %s of %s not put in its vCard: %s", info.id, owner, e)
                return
            new = with_photo(card, photo_element(photo))
        data = serialize(new)
        if data == stored:
            return
        if len(data) > self.cfg.max_size:
            log.info("avatar of %s not put in its vCard: it would have %d bytes (modules.vcard.max_size %d)",
                     owner, len(data), self.cfg.max_size)
            return
        await self.store.put(owner, data, photo_hash(new))

    async def _presence(self, stanza: Stanza, session: Any) -> Stanza:
        """``presence_broadcast``: the stored photo hash, if the account stored a vCard."""
        try:
            digest = await self.store.photo_hash(session.record.jid.bare)
        except Exception as e:  # the database may be away: the presence goes out as the client sent it
            log.warning("no avatar hash for %s's presence: %s: %s", session.record.jid, e.__class__.__name__, e)
            return stanza
        return stanza if digest is None else with_photo_hash(stanza, digest)
