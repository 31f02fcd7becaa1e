"""Offline messages (XEP-0160): stored for an account with no available resource, delivered on
its next available presence with non-negative priority, stamped with XEP-0203 delay.

Delivery reads, writes to the client, and only then deletes: a crash in between delivers twice
rather than losing a message.
"""

from __future__ import annotations

import datetime
import logging
import xml.etree.ElementTree as ET

from ...core.hooks import Hook
from ...core.module import Module, ModuleHost, Xep
from ...core.sessions import SessionRecord
from ...xmpp import errors, ns
from ...xmpp.fragment import parse_stanza
from ...xmpp.jid import Jid
from ...xmpp.stanza import Stanza

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


class Offline(Module):
    name = "offline"
    description = "Offline message storage, delivered on the next available presence"
    xeps = (Xep(160, "1.0.1"), Xep(203, "2.0"))

    def start(self, host: ModuleHost) -> None:
        self.host = self.s = host
        host.hook(Hook.OFFLINE_MESSAGE, self.store, 50)
        host.hook(Hook.OFFLINE_FLUSH, self.deliver_stored)
        host.hook(Hook.PRESENCE_AVAILABLE, self._available)

    async def _available(self, session: object, initial: bool, priority: int, previous: int) -> None:
        """XEP-0160 §3: delivered on the available presence that makes the resource eligible (the
        initial one with a non-negative priority, or an update from a negative one)."""
        record = getattr(session, "record", None)
        if priority >= 0 and (initial or previous < 0) and record is not None:
            await self.deliver_stored(record)

    async def store(self, stanza: Stanza, to: Jid) -> bool:
        """Keep ``stanza`` for ``to``; True also for what is not worth keeping (dropped quietly,
        like a chat state)."""
        limit = self.s.settings.offline.max_messages
        if not worth_storing(stanza):
            return True
        if limit <= 0:
            raise errors.ServiceUnavailable()
        el = ET.Element(stanza.element.tag, dict(stanza.element.attrib))
        el.extend(list(stanza.element))
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        ET.SubElement(el, f"{{{ns.DELAY}}}delay", {"from": to.domain, "stamp": stamp}).text = "Offline storage"
        ok = await self.s.storage.store_offline(to.domain, to.local or "", Stanza(el).to_bytes(), limit=limit)
        if not ok:
            # XEP-0160 §3: storage full — the sender learns the message was not kept.
            self.host.refused("offline.max_messages")
            raise errors.ServiceUnavailable("offline storage is full for this user")
        return True

    async def deliver_stored(self, record: SessionRecord) -> None:
        user = record.jid
        # The batched read first: most logins find nothing, and take no write lock for it.
        if not await self.s.storage.fetch_offline(user.domain, user.local or ""):
            return

        def deliver(stored: list[tuple[int, bytes]]) -> list[int]:
            delivered: list[int] = []
            for msg_id, raw in stored:
                try:
                    stanza = parse_stanza(raw)
                except ValueError:
                    log.error("offline message %s of %s does not parse; kept", msg_id, user.bare)
                    continue
                self.host.deliver(record, stanza.with_attrs(to=str(user)))
                delivered.append(msg_id)
            return delivered

        await self.s.storage.take_offline(user.domain, user.local or "", deliver)
