"""XEP-0357 Push Notifications: an app server wakes a user's phone when a message waits for it —
stored offline, or queued for a session that stream management keeps detached — in every region.

* **Enable/disable.** ``<enable jid='push.example' node='…'>[publish-options form]</enable>`` and
  ``<disable jid [node]/>`` are account IQs from a bound resource.  Registrations live in SQL
  (:mod:`.store`): several per user (one per device), keyed by (app server, node), remembering the
  resource that enabled them.  That resource's session record gets the module flag ``push``, which
  every member and region sees.  The app server must not be one of our own domains or accounts.
* **When to notify** (which messages: :func:`.notification.summary_of`):

  - a message goes to offline storage for the user (``offline_message``, observed before the
    offline module, returning None so it is stored): every registration of the user;
  - a message is delivered to a session detached by stream management (``message_delivered``: a
    target record with ``sm`` = ``detached`` and the ``push`` flag): the registrations of that
    resource.  Records are replicated, so the member routing the message decides, wherever the
    session is held; a session detached in another region gets the message relayed there and
    routed with ``local_only``, and the same check runs on that region's gateway.

* **The notification** is a pubsub publish to the app server from the user's bare JID (§7), the
  summary form of :func:`.notification.summary_form` (count and sender; the body only with
  ``include_body``, never of an encrypted message), routed like any stanza: a component here or in
  another region, another domain over S2S.  ``min_interval`` coalesces what comes faster for one
  registration into one notification (per member) whose ``message-count`` covers them all.
* **Errors** (§8): an error reply to a notification disables the registration it was for (the
  IQ id names the node; the sender must be the registration's app server), on whichever member
  routes the reply.  Temporary errors (type ``wait``) and those of the way there (no route to the
  app server now) keep it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from ...core.hooks import STOP, Hook
from ...core.module import Module, ModuleHost, ModuleSettings, Xep
from ...core.router import Fanout, IqRequest
from ...core.sessions import LocalSession, SessionRecord
from ...xmpp import errors
from ...xmpp.jid import Jid
from ...xmpp.stanza import Stanza
from . import notification as n
from .notification import NS, Summary
from .store import PushStore, Registration

__all__ = ["Push", "PushSettings", "FLAG"]

log = logging.getLogger("meridian.push")

FLAG = "push"  # the session record flag of a resource that enabled push notifications
_ENABLE = f"{{{NS}}}enable"
MAX_SLOTS = 10_000  # rate-limit slots kept per member before idle ones are swept


class PushSettings(ModuleSettings):
    include_body: bool = Field(False, description="put the message's body in notifications "
                               "(last-message-body); off: count and sender only, app servers see no content")
    min_interval: float = Field(0.0, ge=0, description="seconds between two notifications of one registration "
                                "(per member); what comes sooner is coalesced into the next one (0: every message)")
    max_registrations: int = Field(20, ge=1, description="registrations one user keeps (devices); enabling "
                               "one more removes the oldest")


@dataclass
class _Slot:
    """One registration's rate limit: when it last notified, what waits for the next one."""

    reg: Registration
    last: float = float("-inf")
    count: int = 0
    summary: Summary | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class Push(Module):
    name = "push"
    description = "Push Notifications: app servers wake clients that are offline or detached, in every region"
    xeps = (Xep(357, "0.4.1", "complete", "notifies for messages stored offline or queued for a session detached "
                "by stream management; summary with count and sender, the body only when configured"),)
    Settings = PushSettings

    async def start(self, host: ModuleHost) -> None:
        self.host = host
        self.cfg: PushSettings = self.settings  # type: ignore[assignment]
        self.store = PushStore(host.storage)
        await self.store.migrate()
        self._slots: dict[tuple[str, str, str], _Slot] = {}
        self.counters = {"enabled": 0, "disabled": 0, "notified": 0, "coalesced": 0, "remote_disabled": 0,
                         "failed": 0}
        host.add_account_iq(NS, "enable", self._iq)
        host.add_account_iq(NS, "disable", self._iq)
        host.hook(Hook.DISCO_ACCOUNT_FEATURES, _feature)
        # Before the offline module (50): observe, return None so the message is still stored.
        host.hook(Hook.OFFLINE_MESSAGE, self._offline, 40)
        host.hook(Hook.MESSAGE_DELIVERED, self._delivered)
        host.hook(Hook.FILTER_LOCAL_PACKET, self._filter)
        host.add_query("push", "status", self.status)

    def stop(self) -> None:
        for slot in self._slots.values():
            if slot.timer is not None:
                slot.timer.cancel()
        self._slots.clear()

    def status(self) -> dict[str, Any]:
        return {"waiting": sum(1 for s in self._slots.values() if s.timer is not None), **self.counters}

    # -- enable / disable ----------------------------------------------------------------------------

    async def _iq(self, req: IqRequest) -> ET.Element | None:
        if req.stanza.type != "set":
            raise errors.BadRequest("push notifications are enabled or disabled with an iq of type set")
        if req.sender.resource is None or req.sender.bare != req.to:
            raise errors.NotAllowed("only a resource of the account can change its push notifications")
        user = req.to
        try:
            if req.payload.tag == _ENABLE:
                request = n.parse_enable(req.payload)
                self._check_app_server(request.jid)
            else:
                app_server, node = n.parse_disable(req.payload)
        except n.RequestError as e:
            raise errors.BadRequest(str(e)) from None
        resource = req.sender.resource
        session = self._session(req.sender)
        if req.payload.tag == _ENABLE:
            reg = Registration(request.jid, request.node, resource, request.options)
            evicted = await self.store.enable(user.domain, user.local or "", reg, self.cfg.max_registrations)
            for old in evicted:
                log.info("push: %s has too many registrations: dropped %s node %r", user, old.jid, old.node)
            self.counters["enabled"] += 1
            if session is not None and session.record.flags.get(FLAG) != "on":
                session.set_record(session.record.with_flag(FLAG, "on"))
            return None
        removed = await self.store.disable(user.domain, user.local or "", app_server, node)
        self.counters["disabled"] += len(removed)
        for reg in removed:
            self._forget(user, reg)
        if session is not None and session.record.flags.get(FLAG) and any(r.resource == resource for r in removed):
            if not await self.store.registrations(user.domain, user.local or "", resource):
                session.set_record(session.record.with_flag(FLAG, None))
        return None

    def _check_app_server(self, value: str) -> None:
        """Notifications go to a service, never back into this deployment's own accounts."""
        if Jid.parse(value).domain in self.host.domains:
            raise errors.NotAcceptable("the app server is a service of another domain")

    def _session(self, jid: Jid) -> LocalSession | None:
        """The connection of ``jid`` on this member (an account IQ is handled where its sender is)."""
        record = self.host.table.lookup(jid)
        if record is None or record.node != self.host.node:
            return None
        return self.host.local.get(record.sid)

    # -- when to notify ------------------------------------------------------------------------------

    def _offline(self, stanza: Stanza, to: Jid) -> None:
        """A message goes to offline storage: every registration of the account (observed only)."""
        summary = n.summary_of(stanza) if stanza.name == "message" else None
        if summary is not None and to.local is not None:
            self.host.spawn(self._notify(to.bare, None, summary))
        return None

    def _delivered(self, stanza: Stanza, to: Jid, which: Fanout | None) -> None:
        """A message was delivered: the detached sessions among its targets (any member's) notify."""
        if to.local is None or stanza.name != "message" or stanza.type in ("error", "groupchat", "headline"):
            return
        targets = [r for r in self._targets(to, which) if r.flags.get("sm") == "detached" and r.flags.get(FLAG)]
        if not targets:
            return
        summary = n.summary_of(stanza)
        if summary is None:
            return
        for record in targets:
            self.host.spawn(self._notify(to.bare, record.jid.resource, summary))

    def _targets(self, to: Jid, which: Fanout | None) -> list[SessionRecord]:
        """The records of this region a delivery went to (the same selection the router made)."""
        if which is None:
            record = self.host.table.lookup(to)
            return [record] if record is not None else []
        return [r for r in self.host.table.resources(to.bare) if which.matches(r)]

    async def _notify(self, user: Jid, resource: str | None, summary: Summary) -> None:
        try:
            regs = await self.store.registrations(user.domain, user.local or "", resource)
        except Exception:  # the database: no notification, the message itself is not affected
            log.exception("push: reading the registrations of %s failed", user)
            self.counters["failed"] += 1
            return
        for reg in regs:
            self._queue(user, reg, summary)

    # -- rate limit and sending ------------------------------------------------------------------------

    def _queue(self, user: Jid, reg: Registration, summary: Summary) -> None:
        if self.cfg.min_interval <= 0:
            self._send(user, reg, 1, summary)
            return
        key = (str(user), reg.jid, reg.node)
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= MAX_SLOTS:
                self._sweep()
            slot = self._slots[key] = _Slot(reg)
        slot.reg, slot.summary = reg, summary
        slot.count += 1
        if slot.timer is not None:
            self.counters["coalesced"] += 1
            return  # the next notification covers it
        wait = slot.last + self.cfg.min_interval - time.monotonic()
        if wait <= 0:
            self._flush(user, key)
        else:
            self.counters["coalesced"] += 1
            slot.timer = asyncio.get_running_loop().call_later(wait, self._flush, user, key)

    def _flush(self, user: Jid, key: tuple[str, str, str]) -> None:
        slot = self._slots.get(key)
        if slot is None or slot.count == 0 or slot.summary is None:
            return
        count, summary, reg = slot.count, slot.summary, slot.reg
        slot.count, slot.summary, slot.timer, slot.last = 0, None, None, time.monotonic()
        self._send(user, reg, count, summary)

    def _send(self, user: Jid, reg: Registration, count: int, summary: Summary) -> None:
        """Publish a notification covering ``count`` messages, the last one ``summary``."""
        body = summary.body if self.cfg.include_body else None
        form = n.summary_form(count, summary.sender, body)
        iq = n.publish_iq(str(user), reg.jid, reg.node, n.make_id(reg.node), form, reg.options)
        self.counters["notified"] += 1
        log.debug("push: notifying %s for %s (%d messages)", reg.jid, user, count)
        self.host.spawn(self.host.route(iq))

    def _forget(self, user: Jid, reg: Registration) -> None:
        slot = self._slots.pop((str(user), reg.jid, reg.node), None)
        if slot is not None and slot.timer is not None:
            slot.timer.cancel()

    def _sweep(self) -> None:
        """Drop the slots with nothing waiting whose interval is over (they would notify at once)."""
        now = time.monotonic()
        for key, slot in list(self._slots.items()):
            if slot.timer is None and slot.last + self.cfg.min_interval <= now:
                del self._slots[key]

    # -- errors from app servers (§8) -------------------------------------------------------------------

    def _filter(self, stanza: Stanza, sender: Jid, to: Jid) -> object:
        """An error reply to one of our notifications: disable the registration it was for."""
        if stanza.name != "iq" or stanza.type != "error":
            return None
        node = n.node_of_id(stanza.id)
        if node is None or to.local is None or to.resource is not None or to.domain not in self.host.domains:
            return None
        condition, etype = n.error_of(stanza)
        if n.disables(condition, etype):
            self.host.spawn(self._disable_remote(to, str(sender), node, condition))
        else:
            log.info("push: %s answered a notification for %s with %s (%s): kept", sender, to, condition, etype)
        return STOP  # the reply was for the server: consumed here

    async def _disable_remote(self, user: Jid, app_server: str, node: str, condition: str) -> None:
        try:
            removed = await self.store.disable(user.domain, user.local or "", app_server, node)
        except Exception:
            log.exception("push: disabling %s node %r for %s failed", app_server, node, user)
            return
        for reg in removed:
            self._forget(user, reg)
            self.counters["remote_disabled"] += 1
            log.info("push: %s answered %s: registration of %s node %r disabled", app_server, condition, user, node)


def _feature(features: set[str], _user: Jid) -> set[str]:
    return features | {NS}
