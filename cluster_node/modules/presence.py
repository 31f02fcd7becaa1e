"""Presence (RFC 6121 §3–§4): subscriptions, broadcast, probes, directed presence.

Outbound handling runs for the sender's session; inbound handling (the router's presence hook)
runs wherever the stanza lands for a local account.  Subscription state changes are decided by
the pure functions of :mod:`cluster_node.xmpp.subscription`; this module stores and sends.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from typing import Protocol

from ..core.router import Fanout
from ..core.services import Services
from ..core.sessions import SessionRecord
from ..storage import RosterItem
from ..xmpp import errors, ns
from ..xmpp.fragment import parse_stanza
from ..xmpp.jid import InvalidJid, Jid
from ..xmpp.stanza import Stanza
from ..xmpp.subscription import SUBSCRIPTION_TYPES, SubState, inbound, outbound

__all__ = ["Presence", "PresenceSession", "presence_stanza"]

log = logging.getLogger(__name__)
P = f"{{{ns.CLIENT}}}presence"


class PresenceSession(Protocol):
    record: SessionRecord
    last_presence: Stanza | None
    directed: set[str]

    def set_record(self, record: SessionRecord) -> None: ...


def presence_stanza(from_: Jid | str, to: Jid | str, ptype: str | None = None) -> Stanza:
    el = ET.Element(P, {"from": str(from_), "to": str(to)})
    if ptype:
        el.set("type", ptype)
    return Stanza(el)


def priority_of(stanza: Stanza) -> int:
    """RFC 6121 §4.7.2.3: an integer in -128..127, 0 when absent or invalid."""
    el = stanza.element.find(f"{{{ns.CLIENT}}}priority")
    if el is None or not el.text:
        return 0
    try:
        value = int(el.text.strip())
    except ValueError:
        return 0
    return value if -128 <= value <= 127 else 0


class Presence:
    def __init__(self, services: Services) -> None:
        self.s = services
        services.router.presence_handler = self.inbound

    # -- outbound: from one of our clients -------------------------------------------------------

    async def outbound(self, session: PresenceSession, stanza: Stanza) -> None:
        ptype = stanza.type
        user = session.record.jid
        if stanza.to is None:
            if ptype is None:
                await self._available(session, stanza)
            elif ptype == "unavailable":
                await self.unavailable(session, stanza)
            elif ptype != "error":
                raise errors.BadRequest(f"presence of type {ptype!r} needs a 'to'")
            return
        try:
            to = Jid.parse(stanza.to)
        except InvalidJid:
            raise errors.JidMalformed() from None
        if ptype in SUBSCRIPTION_TYPES:
            await self._outbound_subscription(user.bare, to.bare, ptype)
            return
        if ptype == "probe":
            return  # RFC 6121 §4.3: probes are the server's business
        if ptype is None:
            session.directed.add(str(to))
        elif ptype == "unavailable":
            session.directed.discard(str(to))
        await self.s.router.route(stanza)

    async def _available(self, session: PresenceSession, stanza: Stanza) -> None:
        """RFC 6121 §4.2 (initial presence) and §4.4 (updates)."""
        user = session.record.jid
        initial = not session.record.available
        priority = priority_of(stanza)
        session.last_presence = stanza
        session.set_record(session.record.with_presence(available=True, priority=priority))
        items = await self._roster(user.bare)
        for item in items:
            if item.subscription in ("from", "both"):
                await self.s.router.route(stanza.with_attrs(to=item.jid))
        self.s.router.deliver_all(user.bare, stanza)
        if not initial:
            return
        for item in items:
            if item.subscription in ("to", "both"):
                await self.s.router.route(presence_stanza(user.bare, item.jid, "probe"))
        # Our own other resources' presence (RFC 6121 §4.2.3: probe self).
        self.s.router.deliver_all(user.bare, presence_stanza(user, user.bare, "probe"), Fanout(exclude=str(user)))
        for _jid, raw in await self.s.storage.get_subscription_requests(user.domain, user.local or ""):
            self.s.router.deliver(session.record, parse_stanza(raw))
        if priority >= 0:
            await self.s.offline.deliver_stored(session.record)

    async def unavailable(self, session: PresenceSession, stanza: Stanza | None = None) -> None:
        """RFC 6121 §4.5: to subscribers, directed-presence recipients and our own resources."""
        user = session.record.jid
        if not session.record.available and not session.directed:
            return
        if stanza is None:
            stanza = presence_stanza(user, user.bare, "unavailable")
        was_available = session.record.available
        session.set_record(session.record.with_presence(available=False, priority=0))
        session.last_presence = None
        targets: set[str] = set(session.directed)
        session.directed.clear()
        if was_available:
            for item in await self._roster(user.bare):
                if item.subscription in ("from", "both"):
                    targets.add(item.jid)
            self.s.router.deliver_all(user.bare, stanza)
        for target in targets:
            await self.s.router.route(stanza.with_attrs(to=target))

    async def gone(self, record: SessionRecord) -> None:
        """A session vanished with its member (RFC 6121 §4.5 on its behalf): unavailable to
        subscribers and to the account's other resources."""
        if not record.available:
            return
        stanza = presence_stanza(record.jid, record.jid.bare, "unavailable")
        for item in await self._roster(record.jid.bare):
            if item.subscription in ("from", "both"):
                await self.s.router.route(stanza.with_attrs(to=item.jid))
        self.s.router.deliver_all(record.jid.bare, stanza)

    async def returned(self, records: list[SessionRecord]) -> None:
        """Sessions of another member that this member did not hold came in with its dump: it is
        back after a partition or a lost link (``gone`` told contacts they had left), or joined
        for the first time (they were online before anyone here could see them).

        Each local available session entitled to a returning session's presence (the same
        account, or a contact whose roster has the account as 'to' or 'both') sends a probe from
        its full JID straight to that session, which answers with its current presence to that
        full JID only (``SessionManager.answer_probe``).  So every (local, returning) pair gets
        one presence: not one per resource of either account (a probe from or to a bare JID
        would be answered by, or delivered to, every resource), and none from the account's
        resources that never left.  The returning member runs this for its own sessions toward
        ours, so each direction is done once, by the member holding the session to inform.

        One roster read per account on the smaller side: the contacts here (their 'to'/'both'
        items) or the accounts returning (their 'from'/'both' items, the same subscriptions seen
        from the other end, both accounts being served here).
        """
        back: dict[Jid, list[SessionRecord]] = {}
        for record in records:
            if record.available:
                back.setdefault(record.jid.bare, []).append(record)
        here: dict[Jid, list[SessionRecord]] = {}
        for connection in self.s.local:
            if connection.record.available:
                here.setdefault(connection.record.jid.bare, []).append(connection.record)
        if not back or not here:
            return
        pairs = {(bare, bare) for bare in back.keys() & here.keys()}  # (contact here, account back)
        if len(here) <= len(back):
            for contact in here:
                pairs.update((contact, user) for user in await self._subscribed(contact, ("to", "both"))
                             if user in back)
        else:
            for user in back:
                pairs.update((contact, user) for contact in await self._subscribed(user, ("from", "both"))
                             if contact in here)
        for contact, user in pairs:
            for local in here[contact]:
                for remote in back[user]:
                    # Both may have ended (or gone unavailable) during the roster reads.
                    session, current = self.s.local.get(local.sid), self.s.table.lookup(remote.jid)
                    if (session is not None and session.record.available and current is not None
                            and current.sid == remote.sid and current.available):
                        self.s.router.deliver(current, presence_stanza(local.jid, remote.jid, "probe"))

    async def _subscribed(self, user: Jid, subscriptions: tuple[str, ...]) -> set[Jid]:
        """The bare JIDs of ``user``'s roster items with one of ``subscriptions``."""
        found: set[Jid] = set()
        for item in await self._roster(user):
            if item.subscription in subscriptions:
                try:
                    found.add(Jid.parse(item.jid).bare)
                except InvalidJid:
                    continue
        return found

    async def _outbound_subscription(self, user: Jid, contact: Jid, ptype: str) -> None:
        item, state = await self._state(user, contact)
        out = outbound(state, ptype)
        await self._save(user, contact, item, state, out.state)
        if out.route:
            await self.s.router.route(presence_stanza(user, contact, ptype))
        if out.send_presence:
            # RFC 6121 §3.1.5: the new subscriber gets our current presence, from every resource.
            self.s.router.deliver_all(user, presence_stanza(contact, user, "probe"))
        if out.send_unavailable:
            await self._send_unavailable(user, contact)

    async def cancel_all(self, user: Jid, contact: Jid) -> None:
        """Roster removal (RFC 6121 §2.5.2): unsubscribe and unsubscribed as needed."""
        item, state = await self._state(user, contact)
        if state.to or state.ask:
            await self.s.router.route(presence_stanza(user, contact, "unsubscribe"))
        if state.from_ or state.pending_in:
            await self.s.router.route(presence_stanza(user, contact, "unsubscribed"))
            if state.from_:
                await self._send_unavailable(user, contact)
        if state.pending_in:
            await self.s.storage.delete_subscription_request(user.domain, user.local or "", str(contact))

    # -- inbound: for one of our accounts --------------------------------------------------------

    async def inbound(self, stanza: Stanza, sender: Jid, to: Jid) -> None:
        ptype = stanza.type
        if ptype in SUBSCRIPTION_TYPES:
            await self._inbound_subscription(stanza, sender.bare, to.bare, ptype)
        elif ptype == "probe":
            await self._probe(sender, to.bare)
        else:
            # RFC 6121 §8.5.2.1.1: available/unavailable to a bare JID goes to every available resource.
            self.s.router.deliver_all(to.bare, stanza, Fanout(set_to=False))

    async def _inbound_subscription(self, stanza: Stanza, contact: Jid, user: Jid, ptype: str) -> None:
        if not await self.s.storage.account_exists(user.domain, user.local or ""):
            if ptype == "subscribe":  # RFC 6121 §3.1.3: no such user
                await self.s.router.route(presence_stanza(user, contact, "unsubscribed"))
            return
        item, state = await self._state(user, contact)
        out = inbound(state, ptype)
        if out.auto_reply:
            await self.s.router.route(presence_stanza(user, contact, out.auto_reply))
            return
        clean = stanza.with_attrs(from_=str(contact), to=str(user))
        if ptype == "subscribe" and out.state.pending_in:
            await self.s.storage.put_subscription_request(user.domain, user.local or "", str(contact),
                                                          clean.to_bytes())
        await self._save(user, contact, item, state, out.state)
        if out.route:
            self.s.router.deliver_all(user, clean)
        if out.send_unavailable:
            await self._send_unavailable(user, contact)

    async def _probe(self, prober: Jid, user: Jid) -> None:
        """RFC 6121 §4.3.2: only subscribers learn presence; each available resource answers."""
        if prober.bare != user:
            item = await self.s.storage.get_roster_item(user.domain, user.local or "", str(prober.bare))
            if item is None or item.subscription not in ("from", "both"):
                return
        # The router asked the other regions first when none of the user's resources here is
        # available (global distribution), so an unanswered probe here means: unavailable.
        if not self.s.router.deliver_all(user, presence_stanza(prober, user, "probe"), fanout=False):
            await self.s.router.route(presence_stanza(user, prober, "unavailable"))
            return
        if self.s.router.global_routing is not None:
            self.s.router.global_routing.fanout(presence_stanza(prober, user, "probe"), user, Fanout())

    # -- helpers -----------------------------------------------------------------------------

    async def _roster(self, user: Jid) -> list[RosterItem]:
        items, _ = await self.s.storage.get_roster(user.domain, user.local or "")
        return items

    async def _state(self, user: Jid, contact: Jid) -> tuple[RosterItem | None, SubState]:
        if user.domain not in self.s.router.domains:
            raise errors.ServiceUnavailable()
        store = self.s.storage
        item = await store.get_roster_item(user.domain, user.local or "", str(contact))
        pending = await store.has_subscription_request(user.domain, user.local or "", str(contact))
        if item is None:
            return None, SubState(pending_in=pending)
        return item, SubState(item.subscription, item.ask, pending)

    async def _save(self, user: Jid, contact: Jid, item: RosterItem | None, old: SubState,
                    new: SubState) -> None:
        if old.pending_in and not new.pending_in:
            await self.s.storage.delete_subscription_request(user.domain, user.local or "", str(contact))
        if (new.subscription, new.ask) == (old.subscription, old.ask):
            return
        if item is None:
            item = RosterItem(jid=str(contact))
        item = RosterItem(jid=item.jid, name=item.name, subscription=new.subscription, ask=new.ask,
                          groups=item.groups)
        await self.s.roster.store(user, item)

    async def _send_unavailable(self, user: Jid, contact: Jid) -> None:
        for record in self.s.table.resources(user):
            if record.available:
                await self.s.router.route(presence_stanza(record.jid, contact, "unavailable"))

