"""Presence (RFC 6121 §3–§4): subscriptions, broadcast, probes, directed presence.

Outbound handling runs for the sender's session (``user_send_packet``); inbound handling
(``presence_in``) runs wherever the stanza lands for a local account.  Session ends, members
going down and coming back, roster removals and the admin API's subscriptions reach it through
hooks too; it tells others through ``presence_available`` and ``roster_changed``.  Subscription
state changes are decided by the pure functions of :mod:`cluster_node.xmpp.subscription`; this module stores and sends.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from typing import Protocol

from ...core.hooks import Hook
from ...core.module import Module, ModuleHost
from ...core.router import Fanout
from ...core.sessions import SessionRecord
from ...storage import RosterItem
from ...xmpp import errors, ns
from ...xmpp.fragment import parse_stanza
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza
from ...xmpp.subscription import SUBSCRIPTION_TYPES, SubState, inbound, outbound

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


class Presence(Module):
    name = "presence"
    description = "Presence: subscriptions, broadcast, probes, directed presence"
    rfcs = ("RFC 6121 §3-4",)
    required = True

    def start(self, host: ModuleHost) -> None:
        self.host = host
        host.hook(Hook.USER_SEND_PACKET, self._user_send, 10)
        host.hook(Hook.PRESENCE_IN, self._presence_in)
        host.hook(Hook.SESSION_CLOSED, self.unavailable, 10)
        host.hook(Hook.ROSTER_REMOVE, self.cancel_all)
        host.hook(Hook.SUBSCRIPTION_OUT, self._subscription_out)
        host.hook(Hook.MEMBER_DOWN, self._member_down)
        host.hook(Hook.MEMBER_BACK, self._member_back)

    async def _user_send(self, session: PresenceSession, stanza: Stanza) -> bool | None:
        if stanza.name != "presence":
            return None
        await self.outbound(session, stanza)
        return True

    async def _presence_in(self, stanza: Stanza, sender: Jid, to: Jid) -> bool:
        await self.inbound(stanza, sender, to)
        return True

    async def _subscription_out(self, user: Jid, contact: Jid, ptype: str) -> bool:
        await self._outbound_subscription(user, contact, ptype)
        return True

    def _member_down(self, node: str, sessions: list[SessionRecord], leader: bool) -> None:
        if leader:  # one survivor speaks for the member's sessions, so contacts hear it once
            for record in sessions:
                self.host.spawn(self.gone(record))

    def _member_back(self, node: str, sessions: list[SessionRecord]) -> None:
        if any(r.available for r in sessions):
            self.host.spawn(self._inform(node, sessions))

    async def _inform(self, node: str, sessions: list[SessionRecord]) -> None:
        try:
            await self.returned(sessions)
        except Exception as e:  # the database may be down (roster reads): say so, without a traceback
            log.warning("presence of %s's sessions not sent to contacts here: %s: %s", node,
                        e.__class__.__name__, e)

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
        await self.host.route(stanza)

    async def _available(self, session: PresenceSession, stanza: Stanza) -> None:
        """RFC 6121 §4.2 (initial presence) and §4.4 (updates)."""
        user = session.record.jid
        if self.host.hooks.has(Hook.PRESENCE_BROADCAST):
            stanza = await self.host.hooks.fold_async(Hook.PRESENCE_BROADCAST, stanza, session)
        initial = not session.record.available
        previous = session.record.priority
        priority = priority_of(stanza)
        session.last_presence = stanza
        session.set_record(session.record.with_presence(available=True, priority=priority))
        items = await self._roster(user.bare)
        for item in items:
            if item.subscription in ("from", "both"):
                await self.host.route(stanza.with_attrs(to=item.jid))
        self.host.deliver_all(user.bare, stanza)
        if not initial:
            await self.host.hooks.run_async(Hook.PRESENCE_AVAILABLE, session, False, priority, previous)
            return
        for item in items:
            if item.subscription in ("to", "both"):
                await self.host.route(presence_stanza(user.bare, item.jid, "probe"))
        # Our own other resources' presence (RFC 6121 §4.2.3: probe self).
        self.host.deliver_all(user.bare, presence_stanza(user, user.bare, "probe"), Fanout(exclude=str(user)))
        for _jid, raw in await self.host.storage.get_subscription_requests(user.domain, user.local or ""):
            self.host.deliver(session.record, parse_stanza(raw))
        await self.host.hooks.run_async(Hook.PRESENCE_AVAILABLE, session, True, priority, previous)

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
            self.host.deliver_all(user.bare, stanza)
        for target in targets:
            await self.host.route(stanza.with_attrs(to=target))

    async def gone(self, record: SessionRecord) -> None:
        """A session vanished with its member (RFC 6121 §4.5 on its behalf): unavailable to
        subscribers and to the account's other resources."""
        if not record.available:
            return
        stanza = presence_stanza(record.jid, record.jid.bare, "unavailable")
        for item in await self._roster(record.jid.bare):
            if item.subscription in ("from", "both"):
                await self.host.route(stanza.with_attrs(to=item.jid))
        self.host.deliver_all(record.jid.bare, stanza)

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
        for connection in self.host.local:
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
                    session, current = self.host.local.get(local.sid), self.host.table.lookup(remote.jid)
                    if (session is not None and session.record.available and current is not None
                            and current.sid == remote.sid and current.available):
                        self.host.deliver(current, presence_stanza(local.jid, remote.jid, "probe"))

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
            await self.host.route(presence_stanza(user, contact, ptype))
        if out.send_presence:
            # RFC 6121 §3.1.5: the new subscriber gets our current presence, from every resource.
            self.host.deliver_all(user, presence_stanza(contact, user, "probe"))
        if out.send_unavailable:
            await self._send_unavailable(user, contact)

    async def cancel_all(self, user: Jid, contact: Jid) -> None:
        """Roster removal (RFC 6121 §2.5.2): unsubscribe and unsubscribed as needed."""
        item, state = await self._state(user, contact)
        if state.to or state.ask:
            await self.host.route(presence_stanza(user, contact, "unsubscribe"))
        if state.from_ or state.pending_in:
            await self.host.route(presence_stanza(user, contact, "unsubscribed"))
            if state.from_:
                await self._send_unavailable(user, contact)
        if state.pending_in:
            await self.host.storage.delete_subscription_request(user.domain, user.local or "", str(contact))

    # -- inbound: for one of our accounts --------------------------------------------------------

    async def inbound(self, stanza: Stanza, sender: Jid, to: Jid) -> None:
        ptype = stanza.type
        if ptype in SUBSCRIPTION_TYPES:
            await self._inbound_subscription(stanza, sender.bare, to.bare, ptype)
        elif ptype == "probe":
            await self._probe(sender, to.bare)
        else:
            # RFC 6121 §8.5.2.1.1: available/unavailable to a bare JID goes to every available resource.
            self.host.deliver_all(to.bare, stanza, Fanout(set_to=False))
            self.host.hooks.run(Hook.PRESENCE_DELIVERED, stanza, sender, to.bare)

    async def _inbound_subscription(self, stanza: Stanza, contact: Jid, user: Jid, ptype: str) -> None:
        if not await self.host.storage.account_exists(user.domain, user.local or ""):
            if ptype == "subscribe":  # RFC 6121 §3.1.3: no such user
                await self.host.route(presence_stanza(user, contact, "unsubscribed"))
            return
        item, state = await self._state(user, contact)
        out = inbound(state, ptype)
        if out.auto_reply:
            await self.host.route(presence_stanza(user, contact, out.auto_reply))
            return
        clean = stanza.with_attrs(from_=str(contact), to=str(user))
        if ptype == "subscribe" and out.state.pending_in:
            await self.host.storage.put_subscription_request(user.domain, user.local or "", str(contact),
                                                          clean.to_bytes())
        await self._save(user, contact, item, state, out.state)
        if out.route:
            self.host.deliver_all(user, clean)
        if out.send_unavailable:
            await self._send_unavailable(user, contact)

    async def _probe(self, prober: Jid, user: Jid) -> None:
        """RFC 6121 §4.3.2: only subscribers learn presence; each available resource answers."""
        if prober.bare != user:
            item = await self.host.storage.get_roster_item(user.domain, user.local or "", str(prober.bare))
            if item is None or item.subscription not in ("from", "both"):
                return
        # The router asked the other regions first when none of the user's resources here is
        # available (global distribution), so an unanswered probe here means: unavailable.
        if not self.host.deliver_all(user, presence_stanza(prober, user, "probe"), fanout=False):
            await self.host.route(presence_stanza(user, prober, "unavailable"))
            return
        self.host.hooks.first(Hook.ROUTE_FANOUT, presence_stanza(prober, user, "probe"), user, Fanout())

    # -- helpers -----------------------------------------------------------------------------

    async def _roster(self, user: Jid) -> list[RosterItem]:
        items, _ = await self.host.storage.get_roster(user.domain, user.local or "")
        return items

    async def _state(self, user: Jid, contact: Jid) -> tuple[RosterItem | None, SubState]:
        if user.domain not in self.host.domains:
            raise errors.ServiceUnavailable()
        store = self.host.storage
        item = await store.get_roster_item(user.domain, user.local or "", str(contact))
        pending = await store.has_subscription_request(user.domain, user.local or "", str(contact))
        if item is None:
            return None, SubState(pending_in=pending)
        return item, SubState(item.subscription, item.ask, pending)

    async def _save(self, user: Jid, contact: Jid, item: RosterItem | None, old: SubState,
                    new: SubState) -> None:
        if old.pending_in and not new.pending_in:
            await self.host.storage.delete_subscription_request(user.domain, user.local or "", str(contact))
        if (new.subscription, new.ask) == (old.subscription, old.ask):
            return
        if item is None:
            item = RosterItem(jid=str(contact))
        item = RosterItem(jid=item.jid, name=item.name, subscription=new.subscription, ask=new.ask,
                          groups=item.groups)
        ver = await self.host.storage.put_roster_item(user.domain, user.local or "", item)
        self.host.hooks.run(Hook.ROSTER_CHANGED, user, item, ver, None)

    async def _send_unavailable(self, user: Jid, contact: Jid) -> None:
        for record in self.host.table.resources(user):
            if record.available:
                await self.host.route(presence_stanza(record.jid, contact, "unavailable"))

