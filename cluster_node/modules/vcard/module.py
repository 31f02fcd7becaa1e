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
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
import xml.etree.ElementTree as ET
from typing import Any

from pydantic import Field

from ...core.hooks import Hook
from ...core.module import Module, ModuleHost, ModuleSettings, Xep
from ...core.router import IqRequest
from ...storage import Storage
from ...xmpp import errors
from ...xmpp.fragment import parse_stanza
from ...xmpp.jid import Jid
from ...xmpp.stanza import Stanza, serialize

__all__ = ["Vcard", "VcardSettings", "VcardStore", "photo_hash", "with_photo_hash", "VCARD", "UPDATE"]

log = logging.getLogger("meridian.vcard")

VCARD = "vcard-temp"
UPDATE = "vcard-temp:x:update"
V = f"{{{VCARD}}}"
U = f"{{{UPDATE}}}"

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
        """The stored photo hash ("" without a photo); None when the account stored no vCard."""
        async with self.storage.transaction() as tx:
            row = await tx.fetchone("SELECT photo_hash FROM vcards WHERE domain = ? AND username = ?",
                                    user.domain, user.local or "")
        return str(row[0]) if row is not None else None

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
                "presence a session broadcasts"))
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
        await self.store.put(user, vcard, photo_hash(req.payload))
        return None  # an empty result

    async def _presence(self, stanza: Stanza, session: Any) -> Stanza:
        """``presence_broadcast``: the stored photo hash, if the account stored a vCard."""
        try:
            digest = await self.store.photo_hash(session.record.jid.bare)
        except Exception as e:  # the database may be away: the presence goes out as the client sent it
            log.warning("no avatar hash for %s's presence: %s: %s", session.record.jid, e.__class__.__name__, e)
            return stanza
        return stanza if digest is None else with_photo_hash(stanza, digest)
