"""XEP-0198 Stream Management on the module host: acks, detached sessions, resumption on any node.

* **Acks.** ``<enable/>`` after bind starts an :class:`SmSession` in the session's ``ext``; every
  stanza from the client counts toward ``h`` once handled (``c2s_stanza_handled``: routed, stored,
  archived — so what the client sees acknowledged is never lost), every
  stanza written to it is queued until acknowledged (``user_receive_packet``), and ``<r/>`` goes out
  after ``ack_every`` stanzas or ``ack_after`` seconds.
* **Detached sessions.** A resumable session whose connection is lost (or timed out, or closed by
  a node shutdown) is kept (``session_detach``): a :class:`Detached` object takes the connection's
  place in the local sessions, so the record stays in the replicated table, routable from every
  member and region, and what arrives is queued as sent-but-unacked.  After the resume timeout the
  session ends: unacked and queued messages are routed again — to the account's other resources
  or to offline storage — and unavailable presence goes out.
* **Resumption anywhere in the region.** The resume id is the full JID plus a secret token, so the
  node a client reconnects to finds the session in the replicated table; if another member holds
  it, a ``sm.takeover`` cluster request moves its state here (the holder forwards what still
  reaches it), and the new record names the one it replaces (a hand-over, not a conflict).  The
  stream must have authenticated as the session's account.
* **Shutdown.** A node that stops hands its detached sessions to another member (``sm.adopt``),
  so their clients resume there.
* **Inline, in SASL2** (XEP-0198 §5 with XEP-0388/XEP-0386): ``<sm/>`` is offered inside SASL2's
  ``<inline/>``; a ``<resume/>`` inside ``<authenticate/>`` is answered ``<resumed/>`` (or
  ``<failed/>``, and the Bind 2 request is done instead) inside ``<success/>``; an ``<enable/>``
  inside Bind 2's ``<bind/>`` is answered ``<enabled/>`` inside ``<bound/>``.

Races, decided the same way everywhere: a new bind of the same resource replaces a detached
session (RFC 6120 §7.7.2.2 kick-old: its unacked stanzas are routed to the new session) and a
later ``<resume/>`` of it fails with ``item-not-found``; of two resumes, the first to reach the
holder wins.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import secrets
import time
import xml.etree.ElementTree as ET
from typing import Any

from pydantic import Field

from ...core.hooks import Hook
from ...core.module import Module, ModuleHost, ModuleSettings, Xep
from ...core.session_manager import is_probe
from ...core.sessions import SessionRecord
from ...xmpp import errors
from ...xmpp.fragment import parse_stanza
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza
from . import protocol as sm
from .protocol import NS, SmError, SmSession

__all__ = ["StreamManagement", "SmSettings", "Detached"]

log = logging.getLogger("meridian.sm")

CARBONS = "urn:xmpp:carbons:2"
DETACH_REASONS = frozenset({"lost", "timeout", "shutdown"})
FORWARD_SECONDS = 30.0  # how long a session that moved keeps forwarding what still reaches it


class SmSettings(ModuleSettings):
    resume_timeout: int = Field(300, ge=1, description="seconds a detached session waits for its client")
    max_resume_timeout: int = Field(900, ge=1, description="cap on the 'max' a client may ask for")
    ack_every: int = Field(5, ge=1, description="stanzas sent before the server asks for an ack")
    ack_after: float = Field(30.0, gt=0, description="seconds an unacked stanza waits before the server asks")
    max_unacked: int = Field(1000, ge=1, description="unacked stanzas before the stream is closed")
    takeover_timeout: float = Field(5.0, gt=0, description="seconds to fetch a session from another member")


class SessionMoved(Exception):
    """The member asked for a session had handed it to another one (it is stopping)."""


class Detached:
    """A session without a connection: routable, queueing what arrives until resumed or expired."""

    def __init__(self, record: SessionRecord, state: SmSession, token: str, *, last_presence: Stanza | None,
                 directed: set[str], ext: dict[str, Any], pending: list[bytes] | None = None) -> None:
        self.record = record
        self.sm = state
        self.token = token
        self.last_presence = last_presence
        self.directed = directed
        self.ext = ext
        self.pending = pending or []  # stanzas that reached the closing connection, never written
        self.expiry: asyncio.TimerHandle | None = None
        self.ended = False
        self.on_kick: Any = None
        self.on_probe: Any = None
        self.old: Any = None  # the live connection it was taken from (still handling what it read)

    @property
    def is_open(self) -> bool:
        return False

    async def settled(self) -> None:
        """The stanzas the old connection read are handled: ``h`` is final."""
        drained = getattr(self.old, "drained", None)
        if drained is not None:
            await drained()

    def set_record(self, record: SessionRecord) -> None:
        self.record = record

    def deliver(self, stanza: Stanza) -> None:
        if is_probe(stanza):  # the server's business, never the client's: answered for it
            if self.on_probe is not None:
                self.on_probe(self, stanza)
            return
        self.pending.append(stanza.to_bytes())

    def send_raw(self, data: bytes) -> None:
        pass

    def kick(self, condition: str, text: str | None = None, *, reason: str = "kicked") -> None:
        """Replaced by a new bind, or the account removed: the session ends now."""
        if self.on_kick is not None:
            self.on_kick(self, condition)


class Forwarder:
    """Left behind by a session that resumed on another member, for what still reaches it here."""

    def __init__(self, host: ModuleHost, record: SessionRecord, to: SessionRecord) -> None:
        self.host = host
        self.record = record
        self.to = to
        self.last_presence: Stanza | None = None
        self.directed: set[str] = set()
        self.ext: dict[str, Any] = {}

    def set_record(self, record: SessionRecord) -> None:
        pass

    def deliver(self, stanza: Stanza) -> None:
        self.host.deliver(self.to, stanza)

    def kick(self, condition: str, text: str | None = None, **_: Any) -> None:
        pass


class StreamManagement(Module):
    name = "stream_management"
    description = "Stream Management: acks, resumption on any node of the region"
    xeps = (Xep(198, "1.6.1"),)
    Settings = SmSettings

    def start(self, host: ModuleHost) -> None:
        self.host = host
        self.cfg: SmSettings = self.settings  # type: ignore[assignment]
        self.detached: dict[str, Detached] = {}  # by sid
        self.counters = {"enabled": 0, "resumed": 0, "resumed_remote": 0, "failed": 0, "expired": 0,
                         "adopted": 0}
        host.hook(Hook.C2S_FEATURES, self._features)
        host.hook(Hook.C2S_ELEMENT, self._element)
        host.hook(Hook.C2S_PRE_BIND_ELEMENT, self._pre_bind_element)
        host.hook(Hook.SASL2_INLINE, _sasl2_inline)
        host.hook(Hook.BIND2_FEATURES, _bind2_feature)
        host.hook(Hook.SASL2_AUTHENTICATED, self._sasl2_resume)
        host.hook(Hook.BIND2_INLINE, self._bind2_enable)
        host.hook(Hook.C2S_STANZA_HANDLED, self._received)
        host.hook(Hook.USER_RECEIVE_PACKET, self._sent)
        host.hook(Hook.SESSION_DETACH, self._detach)
        host.hook(Hook.SESSION_HOLD, self._hold)
        host.hook(Hook.SESSION_CLOSED, self._closed, 90)  # after presence: its stanzas are rerouted last
        host.on_call("sm.takeover", self._takeover)
        host.on_call("sm.adopt", self._adopt)
        host.add_query("sm", "status", self.status)

    async def stop(self) -> None:
        """Hand the sessions still detached here to another member (the node is stopping)."""
        for det in list(self.detached.values()):
            if det.ended or self.detached.get(det.record.sid) is not det:
                continue  # resumed elsewhere while the ones before it were handed over
            if det.expiry is not None:
                det.expiry.cancel()
            if not await self._hand_over(det):
                await self._end(det)

    def status(self) -> dict[str, Any]:
        return {"detached": len(self.detached), **self.counters}

    # -- features and elements ----------------------------------------------------------------------

    @staticmethod
    def _features(parts: list[bytes], stage: str, stream: object) -> list[bytes]:
        if stage == "post_auth":
            parts.append(sm.FEATURE)
        return parts

    def _element(self, session: Any, element: Stanza) -> bool | None:
        if element.namespace != NS:
            return None
        name, state = element.name, session.ext.get("sm")
        if name == "r":
            if state is None:
                session.send_raw(sm.failed("unexpected-request", text="stream management is not enabled"))
            else:
                self.host.spawn(self._answer_request(session, state))
        elif name == "a":
            if state is None:
                session.send_raw(sm.failed("unexpected-request", text="stream management is not enabled"))
                return True
            try:
                state.acked(sm.parse_ack(element.element))
            except SmError as e:
                if e.condition == "bad-request":
                    session.kick("bad-format", "malformed <a/>")
                else:  # XEP-0198 §4: an h above what was sent is a stream error
                    session.kick("undefined-condition", f"acknowledged {e.client_h} stanzas; {e.send_count} were sent")
        elif name == "enable":
            self._enable(session, element)
        elif name == "resume":
            session.send_raw(sm.failed("unexpected-request", text="the session is already bound"))
        else:
            return None
        return True

    @staticmethod
    async def _answer_request(session: Any, state: SmSession) -> None:
        """``<r/>``: answered once the stanzas read before it are handled, so ``h`` covers them."""
        drained = getattr(session, "drained", None)
        if drained is not None:
            await drained()
        session.send_raw(state.ack_reply())

    def _enable(self, session: Any, element: Stanza) -> None:
        session.send_raw(self._enable_reply(session, element.element))

    def _enable_reply(self, session: Any, element: ET.Element) -> bytes:
        """Enable stream management on a bound session: ``<enabled/>`` or ``<failed/>``."""
        if session.ext.get("sm") is not None:
            return sm.failed("unexpected-request", text="already enabled")
        try:
            request = sm.parse_enable(element)
        except SmError as e:
            return e.to_failed()
        token = secrets.token_urlsafe(18)
        resume_id: str | None = None
        if request.resume:
            try:
                resume_id = sm.make_resume_id(str(session.record.jid), token)
            except ValueError:
                resume_id = None  # a JID too long for an id: acks without resumption
        timeout = sm.effective_max(request.max, self.cfg.resume_timeout, self.cfg.max_resume_timeout)
        state = SmSession(id=resume_id, resume=resume_id is not None, max=timeout if resume_id else None,
                          ack_every=self.cfg.ack_every, ack_after=self.cfg.ack_after,
                          max_queue=self.cfg.max_unacked)
        session.ext["sm"] = state
        session.ext["sm_token"] = token
        self.counters["enabled"] += 1
        session.set_record(session.record.with_flag("sm", "on"))
        return sm.enabled(resume_id, state.resume, state.max)

    # -- inline in SASL2 and Bind 2 ------------------------------------------------------------------

    async def _sasl2_resume(self, children: list[bytes], session: Any, auth: Any) -> list[bytes]:
        """A ``<resume/>`` inside the SASL2 ``<authenticate/>``: ``<resumed/>`` into the
        ``<success/>`` (the session is taken over, nothing is bound), or ``<failed/>`` (a new
        session is bound instead, if the client asked for one)."""
        element = auth.request.find(NS, "resume")
        if element is None:
            return children
        outcome = await self._take_over(session, element)
        if isinstance(outcome, bytes):
            return [*children, outcome]
        record, resumed, resend = outcome
        session.resumed(record, resend)
        return [*children, resumed]

    async def _bind2_enable(self, children: list[bytes], session: Any, bind: ET.Element) -> list[bytes]:
        """An ``<enable/>`` inside Bind 2's ``<bind/>``: its answer goes into ``<bound/>``."""
        element = bind.find(f"{{{NS}}}enable")
        if element is None:
            return children
        return [*children, self._enable_reply(session, element)]

    async def _pre_bind_element(self, session: Any, element: Stanza) -> bool | None:
        if element.namespace != NS:
            return None
        if element.name == "resume":
            await self._resume(session, element)
        elif element.name in ("enable", "r", "a"):
            session.send_raw(sm.failed("unexpected-request", text="bind a resource first"))
        else:
            return None
        return True

    # -- counting ------------------------------------------------------------------------------------

    @staticmethod
    def _received(session: Any, stanza: Stanza) -> None:
        state = session.ext.get("sm")
        if state is not None:
            state.received()

    def _sent(self, session: Any, stanza: Stanza, data: bytes) -> None:
        state: SmSession | None = session.ext.get("sm")
        if state is None:
            return
        if state.sent(data, time.monotonic()):
            session.send_raw(sm.request())
        elif session.ext.get("sm_timer") is None:  # ask after ack_after even if nothing else is sent
            session.ext["sm_timer"] = asyncio.get_running_loop().call_later(
                self.cfg.ack_after, self._ack_due, session)
        if state.overflow:
            self.host.refused("modules.stream_management.max_unacked")
            log.info("sm: %s acknowledges nothing (%d unacked): closing", session.record.jid, len(state))
            session.kick("policy-violation", "too many unacknowledged stanzas")

    def _ack_due(self, session: Any) -> None:
        """``ack_after`` passed since a stanza went out unrequested: ask now, on an idle stream too."""
        session.ext.pop("sm_timer", None)
        state: SmSession | None = session.ext.get("sm")
        if state is None or not getattr(session, "is_open", False) or not len(state):
            return
        if state.request_due(time.monotonic()):
            session.send_raw(sm.request())
        elif not state.request_pending:  # not old enough yet: look again when it will be
            session.ext["sm_timer"] = asyncio.get_running_loop().call_later(
                self.cfg.ack_after / 2, self._ack_due, session)

    # -- detaching and ending ----------------------------------------------------------------------

    def _hold(self, session: Any, stanza: Stanza) -> bool | None:
        """A stanza for a connection that is closing: keep it behind the unacked ones, for the
        detached session to come or for rerouting when the session ends."""
        if session.ext.get("sm_moved"):
            self.host.route_nowait(stanza)  # it resumed elsewhere: the table leads there now
            return True
        if session.ext.get("sm") is None:
            return None
        # Detached later, or ended: either way it follows the unacked ones, in order.
        session.ext.setdefault("sm_pending", []).append(stanza.to_bytes())
        return True

    async def _detach(self, session: Any, reason: str) -> bool | None:
        if session.ext.get("sm_moved"):
            return True  # taken over by a resumption: nothing to end here
        state: SmSession | None = session.ext.get("sm")
        if state is None or not state.resume or reason not in DETACH_REASONS:
            return None
        det = Detached(session.record, state, session.ext["sm_token"], last_presence=session.last_presence,
                       directed=session.directed, ext=session.ext, pending=session.ext.pop("sm_pending", []))
        if reason == "shutdown" and await self._hand_over(det):
            return True
        self._keep(det)
        self.host.update_record(det.record.with_flag("sm", "detached"))
        log.info("sm: %s detached (%s), resumable for %d s", det.record.jid, reason, state.max or 0)
        return True

    def _keep(self, det: Detached) -> None:
        det.on_kick = self._kicked
        det.on_probe = self.host.sessions.answer_probe
        self.host.local.add(det.record.sid, det)
        self.detached[det.record.sid] = det
        loop = asyncio.get_running_loop()
        det.expiry = loop.call_later(det.sm.max or self.cfg.resume_timeout,
                                     lambda: self.host.spawn(self._expire(det)))

    def _kicked(self, det: Detached, condition: str) -> None:
        self.host.spawn(self._end(det))

    async def _expire(self, det: Detached) -> None:
        if det.ended:
            return
        self.counters["expired"] += 1
        log.info("sm: %s not resumed in time: ending it", det.record.jid)
        await self._end(det)

    async def _end(self, det: Detached) -> None:
        if det.ended:
            return
        det.ended = True
        if det.expiry is not None:
            det.expiry.cancel()
        self.detached.pop(det.record.sid, None)
        await self.host.sessions.end(det)

    async def _closed(self, session: Any) -> None:
        """The session ends for good: what the client never acknowledged is routed again (to its
        other resources or offline storage), so nothing acked-less is lost."""
        state: SmSession | None = session.ext.get("sm")
        if state is None or session.ext.get("sm_moved"):
            return
        leftovers = [*state.unacked(), *getattr(session, "pending", ()), *session.ext.pop("sm_pending", [])]
        session.ext.pop("sm", None)
        if leftovers:
            self.host.spawn(self._reroute(leftovers))

    async def _reroute(self, leftovers: list[bytes]) -> None:
        for data in leftovers:
            try:
                stanza = parse_stanza(data)
            except ValueError:
                continue
            kind, stype = stanza.name, stanza.type
            if kind == "message" and _is_copy(stanza):
                continue  # a carbon: the original went its own way, a second copy would be a duplicate
            if kind == "message" and stype not in ("error", "groupchat", "headline"):
                await self.host.route(_unstamped(stanza))
            elif kind == "iq" and stype in ("get", "set") and stanza.from_:
                self.host.send_error(stanza, errors.ServiceUnavailable("the recipient's session ended"))

    # -- resumption ----------------------------------------------------------------------------------

    async def _resume(self, session: Any, element: Stanza) -> None:
        outcome = await self._take_over(session, element.element)
        if isinstance(outcome, bytes):
            session.send_raw(outcome)
            return
        record, resumed, resend = outcome
        session.resumed(record, resumed + resend)

    async def _take_over(self, session: Any, element: ET.Element) -> tuple[SessionRecord, bytes, bytes] | bytes:
        """Resume the session ``<resume/>`` names on ``session``'s connection: (its record, the
        ``<resumed/>``, what is resent after it), or the ``<failed/>`` to answer."""
        try:
            request = sm.parse_resume(element)
        except SmError as e:
            return e.to_failed()
        parts = sm.split_resume_id(request.previd)
        user = session.authenticated
        try:
            jid = Jid.parse(parts[0]) if parts is not None else None
        except InvalidJid:
            jid = None
        record = self.host.table.lookup(jid) if jid is not None else None
        if parts is None or jid is None or user is None or jid.bare != user or record is None:
            return self._fail("item-not-found", "no such session to resume")
        token = parts[1]
        holder = await self._holder(jid, record, token)
        if holder is None:
            return self._fail("item-not-found", "no such session to resume")
        await holder.settled()
        state = holder.sm
        try:
            resend = state.resume_from(request.h, time.monotonic())
        except SmError as e:
            log.info("sm: resume of %s refused: %s", jid, e)
            self._keep(holder)  # still resumable with the right h
            if holder.record.prev and holder.record.node == self.host.node:
                self.host.table.insert(holder.record)  # its state moved here
            return self._fail("undefined-condition", "the acknowledged count is higher than what was sent")
        now = time.monotonic()
        pending, holder.pending = holder.pending, []
        for data in pending:  # queued while detached: they go out now, counted as sent
            state.sent(data, now)
            resend.append(data)
        record = holder.record.with_flag("sm", "on")
        session.last_presence, session.directed = holder.last_presence, holder.directed
        session.ext["sm"] = state
        session.ext["sm_token"] = token
        self.host.local.add(record.sid, session)
        self.host.table.insert(record)  # flagged on again; taken from another member: it now points here
        self.counters["resumed"] += 1
        log.info("sm: %s resumed on %s (%d resent)", record.jid, self.host.node, len(resend))
        return record, sm.resumed(request.previd, state.handled_in), b"".join(resend)

    async def _holder(self, jid: Jid, record: SessionRecord, token: str) -> Detached | None:
        """The session's state, taken from this member or the one holding it.  A holder that is
        stopping hands its detached sessions to another member: a session that moved meanwhile is
        followed there (the new holder's record reaches our table right after it answered)."""
        deadline = time.monotonic() + self.cfg.takeover_timeout
        while True:
            if record.node == self.host.node:
                return self._take_local(record, token)
            try:
                return await self._take_remote(record, token)
            except SessionMoved:
                pass
            while True:
                await asyncio.sleep(0.02)
                newer = self.host.table.lookup(jid)
                if newer is None or time.monotonic() > deadline:
                    return None
                if newer.sid != record.sid:
                    record = newer
                    break

    def _fail(self, condition: str, text: str) -> bytes:
        self.counters["failed"] += 1
        return sm.failed(condition, text=text)

    def _take_local(self, record: SessionRecord, token: str) -> Detached | None:
        """The session is held here: a detached one, or a live connection whose client has not
        noticed it died (the client is faster than the server to see a dead network).  What
        arrives for it from now on waits in the returned holder's ``pending``."""
        held = self.host.local.get(record.sid)
        if held is None or not _token_ok(held.ext.get("sm_token"), token):
            return None
        if isinstance(held, Detached):
            if held.ended:
                return None
            if held.expiry is not None:
                held.expiry.cancel()
            self.detached.pop(record.sid, None)
            return held
        state = held.ext.get("sm")
        if state is None:
            return None
        holder = Detached(record, state, token, last_presence=held.last_presence, directed=held.directed,
                          ext=held.ext, pending=list(held.ext.pop("sm_pending", [])))
        holder.old = held
        held.ext["sm_moved"] = True
        self.host.local.add(record.sid, holder)
        held.kick("conflict", "the session was resumed by a new connection", reason="resumed")
        return holder

    async def _take_remote(self, record: SessionRecord, token: str) -> Detached | None:
        new_sid = self.host.local.new_sid()
        mine = SessionRecord(record.jid, self.host.node, new_sid, time.time(), record.priority, record.available,
                             record.interested, prev=record.sid, flags=dict(record.flags))  # carbons, PEP…
        # What the holder forwards while the state travels lands here, in order, until resumed.
        buffer = Detached(mine, SmSession(), token, last_presence=None, directed=set(), ext={})
        self.host.local.add(new_sid, buffer)
        try:
            answer = await self.host.request(record.node, "sm.takeover",
                                             {"sid": record.sid, "token": token, "new_sid": new_sid},
                                             timeout=self.cfg.takeover_timeout)
            if answer.get("moved"):
                self.host.local.remove(new_sid)
                raise SessionMoved(str(answer["moved"]))
            state = SmSession.from_state(answer["sm"], ack_every=self.cfg.ack_every, ack_after=self.cfg.ack_after,
                                         max_queue=self.cfg.max_unacked)
            pending = [base64.b64decode(p) for p in answer.get("pending", [])]
            presence = answer.get("presence")
            directed = answer.get("directed", [])
        except (LookupError, TimeoutError, ValueError, KeyError, TypeError) as e:
            log.info("sm: taking %s over from %s failed: %s", record.jid, record.node, e)
            self.host.local.remove(new_sid)
            return None
        # The buffer becomes the holder: the state, then what was forwarded meanwhile.
        buffer.sm = state
        buffer.pending[:0] = pending
        buffer.last_presence = parse_stanza(base64.b64decode(presence)) if presence else None
        buffer.directed = {str(d) for d in directed if isinstance(d, str)}
        self.counters["resumed_remote"] += 1
        return buffer

    async def _takeover(self, caller: str, args: dict[str, Any]) -> dict[str, Any]:
        """``sm.takeover`` from the member a client resumed on: give the session's state, forward
        what still arrives here."""
        sid, token, new_sid = args.get("sid"), args.get("token"), args.get("new_sid")
        if not (isinstance(sid, str) and isinstance(token, str) and isinstance(new_sid, str)) or not caller:
            raise ValueError("bad takeover request")
        held = self.host.local.get(sid)
        moving = held.ext.get("sm_moving") if held is not None else None
        if moving is not None:  # being handed over right now: wait for where it ends up
            await asyncio.shield(moving)
            held = self.host.local.get(sid)
        if isinstance(held, Forwarder):  # handed over (this member is stopping) or resumed elsewhere
            return {"moved": held.to.node}
        if held is None or not _token_ok(held.ext.get("sm_token"), token):
            raise LookupError("no such session")
        record = held.record
        holder = self._take_local(record, token)
        if holder is None:
            raise LookupError("no such session")
        holder.ended = True
        to = SessionRecord(record.jid, caller, new_sid, time.time())
        self.host.local.add(sid, Forwarder(self.host, record, to))
        asyncio.get_running_loop().call_later(FORWARD_SECONDS, self._forget, sid)
        await holder.settled()
        presence = holder.last_presence
        return {"sm": holder.sm.to_state(), "pending": [base64.b64encode(p).decode() for p in holder.pending],
                "presence": base64.b64encode(presence.to_bytes()).decode() if presence is not None else None,
                "directed": sorted(holder.directed)}

    def _forget(self, sid: str) -> None:
        if isinstance(self.host.local.get(sid), Forwarder):
            self.host.local.remove(sid)

    # -- hand-over at shutdown -------------------------------------------------------------------------

    async def _hand_over(self, det: Detached) -> bool:
        """Give a detached session to another member (this one is stopping).  A takeover asked
        meanwhile waits for the outcome (two members must never both hold the session), and what
        reaches the session here after its state was copied follows it to the new member."""
        moving: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        det.ext["sm_moving"] = moving
        try:
            return await self._adopted_by_another(det, moving)
        finally:
            if not moving.done():
                moving.set_result(False)
            det.ext.pop("sm_moving", None)

    async def _adopted_by_another(self, det: Detached, moving: asyncio.Future[bool]) -> bool:
        for member in self.host.cluster_members:
            copied = len(det.pending)
            try:
                answer = await self.host.request(member, "sm.adopt", {
                    "jid": str(det.record.jid), "sid": det.record.sid, "token": det.token,
                    "sm": det.sm.to_state(), "pending": [base64.b64encode(p).decode() for p in det.pending],
                    "presence": (base64.b64encode(det.last_presence.to_bytes()).decode()
                                 if det.last_presence is not None else None),
                    "directed": sorted(det.directed),
                    "record": {"priority": det.record.priority, "available": det.record.available,
                               "flags": dict(det.record.flags),
                               "interested": det.record.interested},
                }, timeout=self.cfg.takeover_timeout)
            except (LookupError, TimeoutError) as e:
                log.info("sm: %s refused %s: %s", member, det.record.jid, e)
                continue
            det.ended = True
            self.detached.pop(det.record.sid, None)
            to = SessionRecord(det.record.jid, member, str(answer.get("sid", "")), time.time())
            det.ext["sm_moved"] = True  # a closing connection routes what it still gets (``_hold``)
            self.host.local.add(det.record.sid, Forwarder(self.host, det.record, to))
            asyncio.get_running_loop().call_later(FORWARD_SECONDS, self._forget, det.record.sid)
            for data in [*det.pending[copied:], *det.ext.pop("sm_pending", [])]:
                with contextlib.suppress(ValueError):
                    self.host.deliver(to, parse_stanza(data))
            moving.set_result(True)
            log.info("sm: %s handed over to %s", det.record.jid, member)
            return True
        return False

    def _adopt(self, caller: str, args: dict[str, Any]) -> dict[str, Any]:
        """``sm.adopt``: a stopping member gives us one of its detached sessions."""
        try:
            jid = Jid.parse(str(args["jid"]))
            old_sid, token = str(args["sid"]), str(args["token"])
            state = SmSession.from_state(args["sm"], ack_every=self.cfg.ack_every, ack_after=self.cfg.ack_after,
                                         max_queue=self.cfg.max_unacked)
            pending = [base64.b64decode(p) for p in args.get("pending") or []]
            presence = args.get("presence")
            last = parse_stanza(base64.b64decode(presence)) if presence else None
            rec = args.get("record") or {}
        except (KeyError, ValueError, TypeError, InvalidJid) as e:
            raise ValueError(f"bad adopt request: {e}") from None
        record = SessionRecord(jid, self.host.node, self.host.local.new_sid(), time.time(),
                               int(rec.get("priority", 0)), bool(rec.get("available")), bool(rec.get("interested")),
                               prev=old_sid, flags={**_flags(rec.get("flags")), "sm": "detached"})
        det = Detached(record, state, token, last_presence=last, ext={"sm": state, "sm_token": token},
                       directed={str(d) for d in args.get("directed") or []}, pending=pending)
        self._keep(det)
        self.host.table.insert(record)
        self.counters["adopted"] += 1
        return {"sid": record.sid}


def _sasl2_inline(parts: list[bytes], stream: object) -> list[bytes]:
    return [*parts, sm.FEATURE]  # resumption inside SASL2's <authenticate/>


def _bind2_feature(variables: list[str], stream: object) -> list[str]:
    return [*variables, NS]  # <enable/> inside Bind 2's <bind/>


def _token_ok(held: object, given: str) -> bool:
    return isinstance(held, str) and hmac.compare_digest(held.encode(), given.encode())


def _unstamped(stanza: Stanza) -> Stanza:
    """A queued copy addressed to the session's full JID: route it to the account instead, so the
    router picks another resource or offline storage (RFC 6121 §8.5.3.2.1)."""
    try:
        to = Jid.parse(stanza.to or "")
    except InvalidJid:
        return stanza
    return stanza.with_attrs(to=str(to.bare)) if to.resource is not None else stanza


def _is_copy(stanza: Stanza) -> bool:
    """A XEP-0280 carbon (``<sent/>``/``<received/>``) of a message that has its own delivery."""
    return any(child.tag in (f"{{{CARBONS}}}sent", f"{{{CARBONS}}}received") for child in stanza.element)


def _flags(value: object) -> dict[str, str]:
    """Module flags from another member (checked: they came over a link)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
