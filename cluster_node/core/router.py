"""The stanza router: RFC 6120 §10 server rules and RFC 6121 §8 delivery rules.

``route()`` takes any stanza with a stamped ``from`` and decides: a local session (here or on
another cluster member), the server itself (IQ handlers registered by modules), an account's bare
JID (delivery by priority, offline storage, presence handling), or somewhere else (the
``remote`` hook, which the gateway fills in; without one, ``remote-server-not-found``).
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..xmpp import errors, ns
from ..xmpp.errors import StanzaError
from ..xmpp.jid import InvalidJid, Jid
from ..xmpp.stanza import Stanza
from .sessions import LocalSessions, SessionRecord, SessionTable

__all__ = ["Router", "IqRequest", "IqHandler", "RouteCounters"]

log = logging.getLogger(__name__)

IQ_TYPES = frozenset({"get", "set", "result", "error"})


@dataclass(frozen=True, slots=True)
class IqRequest:
    stanza: Stanza
    sender: Jid
    to: Jid  # the addressed entity: a server domain or an account's bare JID
    payload: ET.Element


IqHandler = Callable[[IqRequest], Awaitable[ET.Element | None]]
PresenceHandler = Callable[[Stanza, Jid, Jid], Awaitable[None]]  # (stanza, sender, to)
OfflineHandler = Callable[[Stanza, Jid], Awaitable[None]]  # (message, bare recipient)
RemoteHandler = Callable[[Stanza, Jid], Awaitable[None]]
ClusterSend = Callable[[SessionRecord, Stanza], None]


@dataclass
class RouteCounters:
    routed: int = 0
    delivered: int = 0
    errors: int = 0


class Router:
    def __init__(self, node: str, domains: list[str], table: SessionTable, local: LocalSessions) -> None:
        self.node = node
        self.domains = frozenset(domains)
        self.table = table
        self.local = local
        self.counters = RouteCounters()
        self._server_iq: dict[tuple[str, str], IqHandler] = {}
        self._account_iq: dict[tuple[str, str], IqHandler] = {}
        self.features: set[str] = set()
        self.presence_handler: PresenceHandler | None = None
        self.offline_handler: OfflineHandler | None = None
        self.account_exists: Callable[[Jid], Awaitable[bool]] | None = None
        self.remote: RemoteHandler | None = None
        self.cluster_send: ClusterSend | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- registration by modules -------------------------------------------------------------

    def add_server_iq(self, namespace: str, name: str, handler: IqHandler, *, feature: bool = True) -> None:
        """Handle IQs in ``namespace`` addressed to a served domain (or with no 'to')."""
        self._server_iq[(namespace, name)] = handler
        if feature:
            self.features.add(namespace)

    def add_account_iq(self, namespace: str, name: str, handler: IqHandler) -> None:
        """Handle IQs in ``namespace`` addressed to an account's bare JID (on its behalf)."""
        self._account_iq[(namespace, name)] = handler

    # -- delivery -------------------------------------------------------------------------------

    def deliver(self, record: SessionRecord, stanza: Stanza) -> None:
        """Hand ``stanza`` to the connection of ``record``, on this member or another."""
        self.counters.delivered += 1
        if record.node == self.node:
            session = self.local.get(record.sid)
            if session is not None:
                session.deliver(stanza)
        elif self.cluster_send is not None:
            self.cluster_send(record, stanza)
        else:
            log.warning("no cluster link for a session of %s on %s", record.jid, record.node)

    def send_error(self, stanza: Stanza, error: StanzaError) -> None:
        """Bounce ``stanza`` to its sender; never answer an error with an error (RFC 6120 §8.3.1)."""
        if stanza.type == "error" or not stanza.from_:
            return
        self.counters.errors += 1
        reply = stanza.error_reply(error)
        self.route_nowait(reply)

    def route_nowait(self, stanza: Stanza) -> None:
        """Route a stanza whose delivery needs no I/O (replies, pushes); remote ones go async."""
        to = _jid(stanza.to)
        if to is None:
            return
        if to.domain in self.domains and to.resource is not None:
            record = self.table.lookup(to)
            if record is not None:
                self.deliver(record, stanza)
            return
        self.spawn(self.route(stanza))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference so it is not collected mid-flight."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def is_local(self, jid: Jid) -> bool:
        return jid.domain in self.domains

    # -- routing ------------------------------------------------------------------------------

    async def route(self, stanza: Stanza) -> None:
        """Route one stanza; stanza errors become error replies to its sender."""
        self.counters.routed += 1
        try:
            await self._route(stanza)
        except StanzaError as e:
            self.send_error(stanza, e)

    async def _route(self, stanza: Stanza) -> None:
        sender = _jid(stanza.from_)
        if sender is None:
            log.debug("dropping a stanza without a valid 'from': %r", stanza.from_)
            return
        kind = stanza.name
        if stanza.to is None:
            to = sender.bare if kind != "iq" else Jid(None, sender.domain, None)
            if kind == "iq" and stanza.payload() is not None:
                # RFC 6120 §10.3.3: no 'to' = handled by the server on behalf of the account.
                p = stanza.payload()
                assert p is not None
                if (_split(p.tag) in self._account_iq) and sender.domain in self.domains:
                    to = sender.bare
        else:
            try:
                to = Jid.parse(stanza.to)
            except InvalidJid:
                raise errors.JidMalformed(f"bad 'to': {stanza.to!r}") from None
        if kind == "iq":
            _check_iq(stanza)
        if to.domain not in self.domains:
            if self.remote is None:
                raise errors.RemoteServerNotFound(f"{to.domain} is not served here")
            await self.remote(stanza, to)
            return
        if to.local is None:
            await self._to_server(stanza, sender, to)
        elif to.resource is None:
            await self._to_bare(stanza, sender, to)
        else:
            await self._to_full(stanza, sender, to)

    async def _to_server(self, stanza: Stanza, sender: Jid, to: Jid) -> None:
        if stanza.name == "iq":
            await self._handle_iq(stanza, sender, to, self._server_iq)
        elif stanza.name == "presence" and self.presence_handler is not None and to.resource is None:
            # Presence to the server itself: nothing to do (RFC 6121 §4.6 directed presence to a
            # domain is allowed but there is no one to deliver it to).
            return
        elif stanza.name == "message" and stanza.type not in ("error", "groupchat", "headline"):
            raise errors.ServiceUnavailable()

    async def _to_bare(self, stanza: Stanza, sender: Jid, to: Jid) -> None:
        kind = stanza.name
        if kind == "presence":
            if self.presence_handler is not None:
                await self.presence_handler(stanza, sender, to)
            return
        if kind == "iq":
            await self._handle_iq(stanza, sender, to, self._account_iq)
            return
        await self.message_to_bare(stanza, to)

    async def message_to_bare(self, stanza: Stanza, to: Jid) -> None:
        """RFC 6121 §8.5.2: the highest non-negative priority resources, else offline storage."""
        mtype = stanza.type or "normal"
        if mtype == "error":
            return
        if mtype == "groupchat":
            raise errors.ServiceUnavailable()
        candidates = [r for r in self.table.resources(to) if r.available and r.priority >= 0]
        if candidates:
            if mtype == "headline":
                targets = candidates
            else:
                top = max(r.priority for r in candidates)
                targets = [r for r in candidates if r.priority == top]
            for record in targets:
                self.deliver(record, stanza)
            return
        if mtype == "headline":
            return
        if self.account_exists is not None and not await self.account_exists(to):
            raise errors.ServiceUnavailable()
        if self.offline_handler is not None:
            await self.offline_handler(stanza, to)
        else:
            raise errors.ServiceUnavailable()

    async def _to_full(self, stanza: Stanza, sender: Jid, to: Jid) -> None:
        record = self.table.lookup(to)
        kind = stanza.name
        if record is not None:
            if kind == "presence" and stanza.type in ("subscribe", "subscribed", "unsubscribe",
                                                       "unsubscribed", "probe"):
                # RFC 6121 §3: subscription states belong to the account, not one resource.
                if self.presence_handler is not None:
                    await self.presence_handler(stanza, sender, to)
                return
            self.deliver(record, stanza)
            return
        # RFC 6121 §8.5.3.2: no such resource.
        if kind == "message":
            mtype = stanza.type or "normal"
            if mtype in ("normal", "chat"):
                await self.message_to_bare(stanza, to.bare)
            elif mtype == "groupchat":
                raise errors.ServiceUnavailable()
            return
        if kind == "presence":
            if stanza.type in ("subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe"):
                if self.presence_handler is not None:
                    await self.presence_handler(stanza, sender, to)
            return
        if stanza.type in ("get", "set"):
            raise errors.ServiceUnavailable()

    async def _handle_iq(self, stanza: Stanza, sender: Jid, to: Jid,
                         handlers: dict[tuple[str, str], IqHandler]) -> None:
        if stanza.type in ("result", "error"):
            return  # RFC 6120 §10.5.3.1: replies to the server or an account are consumed here
        payload = stanza.payload()
        assert payload is not None
        handler = handlers.get(_split(payload.tag))
        if handler is None:
            raise errors.ServiceUnavailable()
        result = await handler(IqRequest(stanza, sender, to, payload))
        self.reply(stanza, result, to)

    def reply(self, request: Stanza, payload: ET.Element | None, from_: Jid | None = None) -> None:
        """Send ``<iq type='result'/>`` for ``request`` back to its sender."""
        el = ET.Element(f"{{{ns.CLIENT}}}iq", {"type": "result"})
        if request.id is not None:
            el.set("id", request.id)
        el.set("to", request.from_ or "")
        if from_ is not None:
            el.set("from", str(from_))
        elif request.to:
            el.set("from", request.to)
        if payload is not None:
            el.append(payload)
        self.route_nowait(Stanza(el))

    def push(self, stanza: Stanza, to: Jid) -> None:
        """Send a server-generated stanza to one full JID now (roster pushes, presence)."""
        record = self.table.lookup(to)
        if record is not None:
            self.deliver(record, stanza)


def _jid(value: str | None) -> Jid | None:
    if value is None:
        return None
    try:
        return Jid.parse(value)
    except InvalidJid:
        return None


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, _, name = tag[1:].partition("}")
        return namespace, name
    return "", tag


def _check_iq(stanza: Stanza) -> None:
    """RFC 6120 §8.2.3: an id, a known type, and exactly one child for get/set."""
    if stanza.type not in IQ_TYPES or not stanza.id:
        raise errors.BadRequest("an iq needs an 'id' and a 'type' of get, set, result or error")
    if stanza.type in ("get", "set") and len(stanza.element) != 1:
        raise errors.BadRequest("an iq get/set carries exactly one child element")
