"""Offline messages (XEP-0160): stored for an account with no available resource, delivered on
its next available presence with non-negative priority, stamped with XEP-0203 delay.

Delivery reads, writes to the client, and only then deletes: a crash in between delivers twice
rather than losing a message.
"""

from __future__ import annotations

import datetime
import logging
import xml.etree.ElementTree as ET

from ..core.services import Services
from ..core.sessions import SessionRecord
from ..xmpp import errors, ns
from ..xmpp.fragment import parse_stanza
from ..xmpp.jid import Jid
from ..xmpp.stanza import Stanza

__all__ = ["Offline"]

log = logging.getLogger(__name__)
HINTS = "urn:xmpp:hints"  # XEP-0334


def worth_storing(stanza: Stanza) -> bool:
    """Messages with content (body/subject) or an explicit store hint; never chat states alone."""
    el = stanza.element
    if el.find(f"{{{HINTS}}}no-store") is not None:
        return False
    if el.find(f"{{{HINTS}}}store") is not None:
        return True
    return any(el.find(f"{{{ns.CLIENT}}}{name}") is not None for name in ("body", "subject"))


class Offline:
    def __init__(self, services: Services) -> None:
        self.s = services
        services.router.offline_handler = self.store

    async def store(self, stanza: Stanza, to: Jid) -> None:
        limit = self.s.settings.offline.max_messages
        if not worth_storing(stanza):
            return
        if limit <= 0:
            raise errors.ServiceUnavailable()
        el = ET.Element(stanza.element.tag, dict(stanza.element.attrib))
        el.extend(list(stanza.element))
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        ET.SubElement(el, f"{{{ns.DELAY}}}delay", {"from": to.domain, "stamp": stamp}).text = "Offline storage"
        ok = await self.s.storage.store_offline(to.domain, to.local or "", Stanza(el).to_bytes(), limit=limit)
        if not ok:
            # XEP-0160 §3: storage full — the sender learns the message was not kept.
            raise errors.ServiceUnavailable("offline storage is full for this user")

    async def deliver_stored(self, record: SessionRecord) -> None:
        user = record.jid
        stored = await self.s.storage.fetch_offline(user.domain, user.local or "")
        if not stored:
            return
        delivered: list[int] = []
        for msg_id, raw in stored:
            try:
                stanza = parse_stanza(raw)
            except ValueError:
                log.error("offline message %s of %s does not parse; kept", msg_id, user.bare)
                continue
            self.s.router.deliver(record, stanza.with_attrs(to=str(user)))
            delivered.append(msg_id)
        await self.s.storage.delete_offline(user.domain, user.local or "", delivered)
