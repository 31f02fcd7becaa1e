"""Client sessions: binding resources (RFC 6120 §7), outbound stanzas, and the end of a session.

The lifecycle is announced on hooks: ``session_opened`` at bind, ``user_send_packet`` for each
stanza from the client, ``session_detach`` when the connection is gone (a module may keep the
session alive, detached: XEP-0198), ``session_closed`` when it ends for good.
"""

from __future__ import annotations

import logging
import secrets
import time

from ..xmpp import errors, ns
from ..xmpp.jid import InvalidJid, Jid
from ..xmpp.sasl.scram import ScramCredentials
from ..xmpp.stanza import Stanza
from .hooks import Hook
from .services import Services
from .sessions import LocalSession, SessionRecord

__all__ = ["SessionManager", "ClientSession"]

log = logging.getLogger(__name__)


ClientSession = LocalSession  # a bound session, as the session manager sees it


class SessionManager:
    def __init__(self, services: Services) -> None:
        self.s = services

    async def credentials(self, domain: str, username: str, hash_name: str) -> ScramCredentials | None:
        return await self.s.accounts.scram_credentials(domain, username, hash_name)

    def bind(self, session: ClientSession, username: str, domain: str, resource: str | None) -> Jid:
        """Choose the full JID and enter it in the session table.

        A resource already in use follows ``c2s.resource_conflict`` (RFC 6120 §7.7.2.2):
        ``kick_old`` closes the older stream with ``<conflict/>``, ``refuse`` answers
        ``<conflict/>`` to the new one, ``rename`` gives the new one another resource.
        """
        if resource is None:
            resource = f"meridian-{secrets.token_hex(4)}"
        try:
            jid = Jid.parse(f"{username}@{domain}/{resource}")
        except InvalidJid as e:
            raise errors.BadRequest(f"invalid resource: {e}") from None
        existing = self.s.table.lookup(jid)
        if existing is None:
            limit = self.s.settings.limits.max_sessions_per_account
            if len(self.s.table.resources(jid.bare)) >= limit:
                # RFC 6120 §7.6.2.1: the account has reached its limit of connected resources
                self.s.refused("limits.max_sessions_per_account")
                raise errors.StanzaResourceConstraint(f"at most {limit} sessions per account")
        if existing is not None:
            policy = self.s.settings.c2s.resource_conflict
            if policy == "refuse":
                raise errors.StanzaConflict("resource in use")
            if policy == "rename":
                jid = jid.with_resource(f"{resource}-{secrets.token_hex(3)}")
            else:
                self.kick(existing, "conflict", "replaced by a new connection")
        sid = self.s.local.new_sid()
        record = SessionRecord(jid=jid, node=self.s.node, sid=sid, created=time.time())
        session.record = record
        self.s.local.add(sid, session)
        self.s.table.insert(record)
        self.s.hooks.run(Hook.SESSION_OPENED, session)
        log.info("session %s bound as %s", sid, jid)
        return jid

    def kick(self, record: SessionRecord, condition: str, text: str | None = None) -> None:
        """Close the stream of ``record``'s session with a stream error, wherever it is."""
        if record.node == self.s.node:
            session = self.s.local.get(record.sid)
            if session is not None:
                session.kick(condition, text)
        elif self.s.calls is not None:
            self.s.calls.call(record.node, "kick", {"sid": record.sid, "condition": condition, "text": text})

    async def outbound(self, session: ClientSession, stanza: Stanza) -> None:
        """A stanza from our client, ``from`` already stamped."""
        try:
            if await self.s.hooks.first_async(Hook.USER_SEND_PACKET, session, stanza):
                return
        except errors.StanzaError as e:
            self.s.router.send_error(stanza, e)
            return
        await self.s.router.route(stanza)

    async def closed(self, session: ClientSession, reason: str = "closed") -> None:
        """The connection is gone (``reason``: closed by the client, ``lost``, ``timeout``,
        ``kicked``, ``shutdown``): a module may keep the session detached, else it ends."""
        if getattr(session, "record", None) is None:
            return
        try:
            if await self.s.hooks.first_async(Hook.SESSION_DETACH, session, reason):
                return
        except Exception:
            log.exception("session_detach of %s failed; ending it", session.record.jid)
        await self.end(session)

    async def end(self, session: ClientSession) -> None:
        """End a session for good: ``session_closed`` (unavailable to whoever saw us, RFC 6121
        §4.5), then unbind."""
        record = getattr(session, "record", None)
        if record is None:
            return
        try:
            await self.s.hooks.run_async(Hook.SESSION_CLOSED, session)
        except Exception:
            log.exception("session_closed for %s failed", record.jid)
        self.s.table.delete(record.jid, record.sid)
        if self.s.local.get(record.sid) is session:
            self.s.local.remove(record.sid)
        log.info("session %s (%s) closed", record.sid, record.jid)

    def undeliverable(self, session: ClientSession, stanza: Stanza) -> None:
        """A stanza reached a session whose stream is closing.  Take the session out of the table
        now (its unavailable broadcast follows) and route a message again: to the account's other
        resources or to offline storage (RFC 6121 §8.5.3.2.1), so closing never loses one; a
        request gets its error reply rather than no answer."""
        record = getattr(session, "record", None)
        if record is None:
            return
        if self.s.hooks.first(Hook.SESSION_HOLD, session, stanza):
            return
        self.s.table.delete(record.jid, record.sid)
        kind, stype = stanza.name, stanza.type
        if (kind == "message" and stype != "error") or (kind == "iq" and stype in ("get", "set")):
            self.s.router.spawn(self.s.router.reroute(stanza))  # an iq gets service-unavailable

    def answer_probe(self, session: ClientSession, probe: Stanza) -> None:
        """A probe reached this resource (after the subscription check): answer with our presence."""
        if session.last_presence is None or not probe.from_:
            return
        self.s.router.route_nowait(session.last_presence.with_attrs(from_=str(session.record.jid),
                                                                     to=probe.from_))


def is_probe(stanza: Stanza) -> bool:
    return stanza.name == "presence" and stanza.type == "probe" and stanza.namespace == ns.CLIENT
