"""Roster management (RFC 6121 §2) with versioning (§2.6): get, set, remove, pushes.

Versions are the account's roster counter.  A get with a version the server can diff from
(§2.6.3) is answered with an empty result followed by one push per change since — the items as
they are now, the removals as ``subscription='remove'`` — each with its own version, oldest
first, to that resource only.  Removals are remembered (tombstones) up to ``tombstones`` per
account (and ``tombstone_max_age``); a version older than what was forgotten, one the server
never gave, or a diff no shorter than the roster gets the whole roster instead.
"""

from __future__ import annotations

import logging
import secrets
import xml.etree.ElementTree as ET
from dataclasses import replace

from pydantic import Field

from ...core.hooks import Hook
from ...core.module import Module, ModuleHost, ModuleSettings, Xep
from ...core.router import Fanout, IqRequest
from ...storage import RosterItem
from ...storage.base import RosterChange
from ...xmpp import errors, ns
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza

__all__ = ["Roster", "RosterSettings", "item_element"]

log = logging.getLogger(__name__)

Q = f"{{{ns.ROSTER}}}"


def item_element(item: RosterItem | None, jid: str | None = None) -> ET.Element:
    """``<item/>`` for a push or a get; ``None`` renders a removal (``subscription='remove'``)."""
    if item is None:
        return ET.Element(Q + "item", {"jid": jid or "", "subscription": "remove"})
    el = ET.Element(Q + "item", {"jid": item.jid, "subscription": item.subscription})
    if item.name:
        el.set("name", item.name)
    if item.ask:
        el.set("ask", "subscribe")
    for g in item.groups:
        ET.SubElement(el, Q + "group").text = g
    return el


class RosterSettings(ModuleSettings):
    tombstones: int = Field(1000, ge=0, description="removed contacts remembered per account for roster "
                            "diffs (RFC 6121 §2.6.3); a client whose version is older than the removals "
                            "forgotten gets the whole roster")
    tombstone_max_age: int = Field(0, ge=0, description="seconds a removal is remembered for diffs "
                                   "(checked at removals and versioned roster gets); 0: no age limit")


class Roster(Module):
    """``jabber:iq:roster`` on behalf of the account; pushes to its interested resources."""

    name = "roster"
    description = "Roster management with versioning"
    rfcs = ("RFC 6121 §2",)
    xeps = (Xep(237, "1.3", note="RFC 6121 §2.6: an unchanged roster gets an empty result, an older known "
                "version the changes since as pushes, an unknown or forgotten one the whole roster"),)
    required = True
    Settings = RosterSettings

    def start(self, host: ModuleHost) -> None:
        self.host = self.s = host
        self.cfg: RosterSettings = self.settings  # type: ignore[assignment]
        host.add_account_iq(ns.ROSTER, "query", self._iq)
        host.hook(Hook.ROSTER_CHANGED, self.push)
        host.hook(Hook.C2S_FEATURES, _roster_ver_feature)

    async def _iq(self, req: IqRequest) -> ET.Element | None:
        if req.sender.bare != req.to:
            raise errors.Forbidden("a roster belongs to its account")  # RFC 6121 §2.1.5
        user = req.to
        assert user.local is not None
        if req.stanza.type == "get":
            record = self.s.table.lookup(req.sender)
            if record is not None and not record.interested:
                self.s.update_record(replace(record, interested=True))
            asked = req.payload.get("ver")
            if asked:  # '' bootstraps versioning: the whole roster
                if self.cfg.tombstone_max_age:
                    await self._prune(user)  # removals too old to diff from are forgotten first
                diff = await self.s.storage.get_roster_changes(user.domain, user.local, asked)
                if diff is not None:
                    # RFC 6121 §2.6.3: an empty result, then the changes (none: unchanged).
                    if diff[0]:
                        self.host.spawn(self._push_changes(req.sender, diff[0]))
                    return None
            items, ver = await self.s.storage.get_roster(user.domain, user.local)
            query = ET.Element(Q + "query", {"ver": ver})
            query.extend(item_element(i) for i in items)
            return query
        await self._set(user, req.payload)
        return None

    async def _set(self, user: Jid, query: ET.Element) -> None:
        """RFC 6121 §2.3: exactly one item; 'remove' also cancels subscriptions both ways (§2.5.2)."""
        items = query.findall(Q + "item")
        if len(items) != 1:
            raise errors.BadRequest("a roster set carries exactly one item")
        el = items[0]
        try:
            contact = Jid.parse(el.get("jid", ""))
        except InvalidJid:
            raise errors.JidMalformed("bad item jid") from None
        if contact.resource is not None:
            raise errors.BadRequest("roster items are bare JIDs")
        groups = tuple(g.text or "" for g in el.findall(Q + "group"))
        if any(not g for g in groups) or len(set(groups)) != len(groups):
            raise errors.BadRequest("empty or duplicate group")
        name = el.get("name")
        if name is not None and len(name) > 1023:
            raise errors.NotAcceptable("name too long")
        if el.get("subscription") == "remove":
            await self.host.hooks.run_async(Hook.ROSTER_REMOVE, user, contact)
            ver = await self.s.storage.delete_roster_item(user.domain, user.local or "", str(contact))
            if ver is None:
                raise errors.ItemNotFound()
            self.push(user, None, ver, str(contact))
            return
        old = await self.s.storage.get_roster_item(user.domain, user.local or "", str(contact))
        # Clients may not set 'subscription' or 'ask' (§2.1.2.5): keep the server's state.
        item = RosterItem(jid=str(contact), name=name or None,
                          subscription=old.subscription if old else "none",
                          ask=old.ask if old else False, groups=groups)
        ver = await self.s.storage.put_roster_item(user.domain, user.local or "", item)
        self.push(user, item, ver)

    def push(self, user: Jid, item: RosterItem | None, ver: str, jid: str | None = None) -> None:
        """RFC 6121 §2.1.6: the changed item to every resource that requested the roster."""
        self.host.deliver_all(user, _push(str(user), item, ver, jid), Fanout(interested=True))
        if item is None:  # a removal (here, the admin API, …): keep the tombstones within bounds
            self.host.spawn(self._prune(user))

    async def _push_changes(self, to: Jid, changes: list[RosterChange]) -> None:
        """The diff's pushes, after the empty result (spawned by the handler, so they run once the
        router has sent the result), to the one resource that asked, oldest first."""
        record = self.host.table.lookup(to)
        if record is None:
            return  # gone meanwhile
        for change in changes:
            self.host.deliver(record, _push(str(to), change.item, change.ver, change.jid))

    async def _prune(self, user: Jid) -> None:
        try:
            await self.s.storage.prune_roster_removals(user.domain, user.local or "", keep=self.cfg.tombstones,
                                                       max_age=self.cfg.tombstone_max_age)
        except Exception as e:  # the database may be down: the next removal prunes
            log.warning("pruning the roster removals of %s failed: %s", user, e)

    async def store(self, user: Jid, item: RosterItem) -> None:
        ver = await self.s.storage.put_roster_item(user.domain, user.local or "", item)
        self.push(user, item, ver)


def _push(to: str, item: RosterItem | None, ver: str, jid: str | None) -> Stanza:
    iq = ET.Element(f"{{{ns.CLIENT}}}iq", {"type": "set", "id": "push" + secrets.token_hex(4), "to": to})
    ET.SubElement(iq, Q + "query", {"ver": ver}).append(item_element(item, jid))
    return Stanza(iq)


def _roster_ver_feature(parts: list[bytes], stage: str, stream: object) -> list[bytes]:
    """RFC 6121 §2.6.1: versioning is announced after authentication."""
    if stage == "post_auth":
        parts.append(f"<ver xmlns='{ns.ROSTER_VER}'/>".encode())
    return parts
