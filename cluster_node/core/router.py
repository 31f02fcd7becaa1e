"""The stanza router: RFC 6120 §10 server rules and RFC 6121 §8 delivery rules.

``route()`` takes any stanza with a stamped ``from`` and decides: a local session (here or on
another cluster member), the server itself (IQ handlers registered by modules), an account's bare
JID (delivery by priority, offline storage, presence handling), or somewhere else.  Everything
that is not the router's own RFC logic is a hook (:class:`~cluster_node.core.hooks.Hook`), so the
routing chain reads: ``filter_local_packet`` → components and other domains (``route_remote``:
the component module first, then a gateway's global distribution and S2S; without a taker,
``remote-server-not-found``) → this region's sessions → the other regions of the domain
(``route_elsewhere``, ``route_better_elsewhere``, ``route_fanout``) → the account (presence,
account IQs, ``offline_message``).

With global distribution (the same domain served by several regions), the other regions are
asked twice: *elsewhere* when this region has no session to deliver to (another region may hold
the user; only when no region does is the stanza handled here: offline storage, an error), and
*fanout* after delivering to the resources of a bare JID here (the user may have resources in
other regions too).  Stanzas relayed in from another region are routed with ``local_only``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Protocol

from ..xmpp import errors, ns
from ..xmpp.errors import StanzaError
from ..xmpp.jid import InvalidJid, Jid
from ..xmpp.stanza import Stanza
from .hooks import Hook, Hooks
from .sessions import LocalSessions, SessionRecord, SessionTable

__all__ = ["Router", "IqRequest", "IqHandler", "RouteCounters", "Fanout", "GlobalRouting", "add_global_routing",
           "addressed", "copies"]

log = logging.getLogger(__name__)

IQ_TYPES = frozenset({"get", "set", "result", "error"})


@dataclass(frozen=True, slots=True)
class IqRequest:
    stanza: Stanza
    sender: Jid
    to: Jid  # the addressed entity: a server domain or an account's bare JID
    payload: ET.Element


IqHandler = Callable[[IqRequest], Awaitable[ET.Element | None]]
AccountExists = Callable[[Jid], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Fanout:
    """Which resources of a bare JID a broadcast is for (applied in every region alike)."""

    interested: bool = False  # resources that requested the roster (roster pushes), else available ones
    set_to: bool = True  # address each copy to the resource's full JID
    min_priority: int | None = None  # messages: only resources at least this 'available'
    exclude: str | None = None  # a full JID left out (e.g. the sender's own resource)
    flag: str | None = None  # only resources whose record has this module flag (XEP-0280: carbons)
    max_priority: int | None = None  # only those below the ones a message went to (carbons)

    def matches(self, record: SessionRecord) -> bool:
        if self.flag is not None:
            # Resources that asked for something (carbons) get it with or without presence; those
            # available above the ceiling had the original.
            if not record.flags.get(self.flag):
                return False
            if self.max_priority is not None and record.available and record.priority > self.max_priority:
                return False
            return self.exclude is None or str(record.jid) != self.exclude
        if self.interested:
            ok = record.interested
        else:
            ok = record.available and (self.min_priority is None or record.priority >= self.min_priority)
        if self.max_priority is not None and record.priority > self.max_priority:
            return False
        return ok and (self.exclude is None or str(record.jid) != self.exclude)

    def to_json(self) -> dict[str, Any]:
        return {"interested": self.interested, "set_to": self.set_to, "min_priority": self.min_priority,
                "exclude": self.exclude, "flag": self.flag, "max_priority": self.max_priority}

    @classmethod
    def from_json(cls, d: Any) -> Fanout:
        """Only the known fields, with their types checked (it came over a link)."""
        d = d if isinstance(d, dict) else {}
        mp, ex, fl, xp = d.get("min_priority"), d.get("exclude"), d.get("flag"), d.get("max_priority")
        return cls(interested=d.get("interested") is True, set_to=d.get("set_to") is not False,
                   min_priority=mp if isinstance(mp, int) else None, exclude=ex if isinstance(ex, str) else None,
                   flag=fl if isinstance(fl, str) else None, max_priority=xp if isinstance(xp, int) else None)


class GlobalRouting(Protocol):
    """The region's way to the other regions of its domains (the gateway, or a hand-off to one):
    what registers the ``route_elsewhere``/``route_fanout``/``route_bounce``/
    ``route_better_elsewhere`` hooks (see :func:`add_global_routing`)."""

    async def elsewhere(self, stanza: Stanza, to: Jid) -> bool:
        """No session for ``to`` here: relay to the region holding it; False when none does."""

    def fanout(self, stanza: Stanza, bare: Jid, which: Fanout) -> None:
        """Deliver to ``which`` resources of ``bare`` in the other regions too."""

    async def bounce(self, stanza: Stanza) -> bool:
        """``stanza`` reached a session that was closing: have it re-resolved after a while, in
        order with the rest of its conversation (its user may be logging in again, here or
        elsewhere); False when there is no one to do it."""

    async def better_elsewhere(self, stanza: Stanza, bare: Jid, local_top: int) -> bool:
        """A message to ``bare``, whose best resources here have priority ``local_top``: True when
        it was taken to a region with more available resources (RFC 6121 §8.5.2.1.1 across regions)."""

    def many(self, stanzas: list[Stanza], recipients: list[str]) -> bool:
        """A run for ``recipients`` (full JIDs of our domains, no session here), each to get a copy
        of every one of ``stanzas`` in order (see :meth:`Router.route_run`): one relay per region
        holding some (a few when it is long); False when there is no one to do it."""


def add_global_routing(hooks: Hooks, routing: GlobalRouting, priority: int, owner: object = None) -> None:
    """Register ``routing`` on the routing chain's region hooks.  Its answers are final: a
    handler of higher priority (a gateway's own router, over the node's hand-off) is the only
    one asked."""
    def fanout(stanza: Stanza, bare: Jid, which: Fanout) -> bool:
        routing.fanout(stanza, bare, which)
        return True

    hooks.add(Hook.ROUTE_ELSEWHERE, routing.elsewhere, priority, owner=owner)
    hooks.add(Hook.ROUTE_BETTER_ELSEWHERE, routing.better_elsewhere, priority, owner=owner)
    hooks.add(Hook.ROUTE_BOUNCE, routing.bounce, priority, owner=owner)
    hooks.add(Hook.ROUTE_FANOUT, fanout, priority, owner=owner)
    hooks.add(Hook.ROUTE_MANY, routing.many, priority, owner=owner)


@dataclass
class RouteCounters:
    routed: int = 0
    delivered: int = 0
    errors: int = 0


class Router:
    def __init__(self, node: str, domains: list[str], table: SessionTable, local: LocalSessions,
                 hooks: Hooks | None = None, account_exists: AccountExists | None = None) -> None:
        self.node = node
        self.domains = frozenset(domains)
        self.table = table
        self.local = local
        self.hooks = hooks if hooks is not None else Hooks()
        self.account_exists = account_exists
        self.counters = RouteCounters()
        self._server_iq: dict[tuple[str, str], IqHandler] = {}
        self._account_iq: dict[tuple[str, str], IqHandler] = {}
        self._where_online: set[tuple[str, str]] = set()  # account IQs the online region answers
        self.features: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # Told each routing's duration in seconds (the metrics' histogram); None: not timed.
        self.observe_route: Callable[[float], None] | None = None

    # -- registration by modules -------------------------------------------------------------

    def add_server_iq(self, namespace: str, name: str, handler: IqHandler, *, feature: bool = True) -> None:
        """Handle IQs in ``namespace`` addressed to a served domain (or with no 'to')."""
        self._server_iq[(namespace, name)] = handler
        if feature:
            self.features.add(namespace)

    def add_account_iq(self, namespace: str, name: str, handler: IqHandler, *, where_online: bool = False) -> None:
        """Handle IQs in ``namespace`` addressed to an account's bare JID (on its behalf).

        ``where_online``: the answer depends on the account's available resources (last activity),
        so a region where it has none lets the region that has one answer, if any does."""
        self._account_iq[(namespace, name)] = handler
        if where_online:
            self._where_online.add((namespace, name))

    def remove_iq(self, namespace: str, name: str) -> None:
        """Take out both kinds of handler for (namespace, name) (a module stopping)."""
        self._server_iq.pop((namespace, name), None)
        self._account_iq.pop((namespace, name), None)
        self._where_online.discard((namespace, name))
        if not any(ns_ == namespace for ns_, _ in self._server_iq):
            self.features.discard(namespace)

    # -- delivery -------------------------------------------------------------------------------

    def deliver(self, record: SessionRecord, stanza: Stanza) -> None:
        """Hand ``stanza`` to the connection of ``record``, on this member or another."""
        self.counters.delivered += 1
        if record.node == self.node:
            session = self.local.get(record.sid)
            if session is not None:
                session.deliver(stanza)
        elif not self.hooks.first(Hook.DELIVER_TO_MEMBER, record, stanza):
            log.warning("no cluster link for a session of %s on %s", record.jid, record.node)

    def deliver_all(self, bare: Jid, stanza: Stanza, which: Fanout = Fanout(), *, fanout: bool = True) -> int:
        """Deliver ``stanza`` to the resources of ``bare`` that ``which`` selects, here and (unless
        ``fanout`` is false: it came from another region) in the other regions; the local count."""
        count = 0
        for record in self.table.resources(bare):
            if which.matches(record):
                self.deliver(record, stanza.with_attrs(to=str(record.jid)) if which.set_to else stanza)
                count += 1
        if fanout:
            self.hooks.first(Hook.ROUTE_FANOUT, stanza, bare, which)
        return count

    def route_many(self, stanza: Stanza, recipients: list[str]) -> list[Stanza]:
        """Copies of ``stanza`` for ``recipients`` (a room's message to its occupants): the run of
        one stanza (:meth:`route_run`)."""
        return self.route_run([stanza], recipients)

    def route_run(self, stanzas: list[Stanza], recipients: list[str]) -> list[Stanza]:
        """A *run*: each of ``recipients`` (full JIDs) gets a copy of every one of ``stanzas``, in
        order, ``to`` set on each — a room's message to its occupants (one stanza, many
        recipients) or what a joiner gets (every occupant's presence, its own, the history, the
        subject: many stanzas, one recipient).  Sessions on this member get theirs at once;
        another member holding several copies gets them in one cluster frame
        (``deliver_many_to_member``); full JIDs of our domains with no session here go to the
        other regions in one hand-off (``route_many``: one relay per region, not per copy).
        Returns the copies left for the routing chain (other domains, no gateway), in order."""
        left: list[Stanza] = []
        away: list[str] = []
        members: dict[str, list[tuple[SessionRecord, str]]] = {}  # another member's sessions: one frame each
        for r in recipients:
            to = _jid(r)
            if to is None:
                continue
            if to.domain in self.domains and to.resource is not None:
                record = self.table.lookup(to)
                if record is None:
                    away.append(r)
                elif record.node == self.node:
                    for stanza in stanzas:
                        self.deliver(record, addressed(stanza, r))
                else:
                    members.setdefault(record.node, []).append((record, r))
            else:
                left.extend(copies(stanzas, [r]))
        for node, held in members.items():
            if (len(held) * len(stanzas) > 1
                    and self.hooks.first(Hook.DELIVER_MANY_TO_MEMBER, node, held, stanzas)):
                self.counters.delivered += len(held) * len(stanzas)
                continue
            for record, r in held:
                for stanza in stanzas:
                    self.deliver(record, addressed(stanza, r))
        if away and not self.hooks.first(Hook.ROUTE_MANY, stanzas, away):
            left.extend(copies(stanzas, away))
        return left

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
        # Another region's session, a bare JID, another domain: the whole routing chain.
        self.spawn(self.route(stanza))

    async def reroute(self, stanza: Stanza) -> None:
        """Route again a stanza whose session closed under it (bounced through the gateway when
        there is one, so it keeps its place among the stanzas that follow it)."""
        if not await self.hooks.first_async(Hook.ROUTE_BOUNCE, stanza):
            await self.route(stanza)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference so it is not collected mid-flight."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the background work in flight (session clean-ups after the
        listeners closed: unavailable presence, replicated deletes); return how many were left."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._tasks:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=left)
        return len(self._tasks)

    def is_local(self, jid: Jid) -> bool:
        return jid.domain in self.domains

    # -- routing ------------------------------------------------------------------------------

    async def route(self, stanza: Stanza, *, local_only: bool = False) -> None:
        """Route one stanza; stanza errors become error replies to its sender.

        ``local_only``: handle it in this region whatever happens (it was relayed here, or no
        other region holds its recipient), never hand it to another region again.
        """
        self.counters.routed += 1
        observe = self.observe_route
        start = perf_counter() if observe is not None else 0.0
        try:
            await self._route(stanza, local_only)
        except StanzaError as e:
            self.send_error(stanza, e)
        finally:
            if observe is not None:
                observe(perf_counter() - start)

    async def _route(self, stanza: Stanza, local_only: bool = False) -> None:
        sender = _jid(stanza.from_)
        if sender is None:
            log.debug("dropping a stanza without a valid 'from': %r", stanza.from_)
            return
        kind = stanza.name
        to_attr = stanza.to
        if to_attr is None:
            to = sender.bare if kind != "iq" else Jid(None, sender.domain, None)
            if kind == "iq" and stanza.payload() is not None:
                # RFC 6120 §10.3.3: no 'to' = handled by the server on behalf of the account.
                p = stanza.payload()
                assert p is not None
                if (_split(p.tag) in self._account_iq) and sender.domain in self.domains:
                    to = sender.bare
        else:
            try:
                to = Jid.parse(to_attr)
            except InvalidJid:
                raise errors.JidMalformed(f"bad 'to': {to_attr!r}") from None
        if kind == "iq":
            _check_iq(stanza)
        if self.hooks.has(Hook.FILTER_LOCAL_PACKET) and not await self.hooks.run_async(
                Hook.FILTER_LOCAL_PACKET, stanza, sender, to):
            return
        if to.domain not in self.domains:
            if not await self.hooks.first_async(Hook.ROUTE_REMOTE, stanza, to):
                raise errors.RemoteServerNotFound(f"{to.domain} is not served here")
            return
        if (not local_only and to.local is not None and self.hooks.has(Hook.ROUTE_ELSEWHERE)
                and self.nothing_here(stanza, to) and await self.hooks.first_async(Hook.ROUTE_ELSEWHERE, stanza, to)):
            return
        if to.local is None:
            await self._to_server(stanza, sender, to)
        elif to.resource is None:
            await self._to_bare(stanza, sender, to, local_only)
        else:
            await self._to_full(stanza, sender, to, local_only)

    def nothing_here(self, stanza: Stanza, to: Jid) -> bool:
        """Whether this region has no session to deliver ``stanza`` to (another region may)."""
        if to.resource is not None:
            return self.table.lookup(to) is None
        kind, stype = stanza.name, stanza.type
        if kind == "message" and stype not in ("error", "groupchat", "headline"):
            return not any(r.available and r.priority >= 0 for r in self.table.resources(to))
        if kind == "presence" and stype == "probe":
            return not any(r.available for r in self.table.resources(to))
        if kind == "iq" and self._where_online and stype == "get":
            p = stanza.payload()
            if p is not None and _split(p.tag) in self._where_online:
                return not any(r.available for r in self.table.resources(to))
        return False  # handled here; deliveries to the account's resources fan out

    async def _to_server(self, stanza: Stanza, sender: Jid, to: Jid) -> None:
        if stanza.name == "iq":
            await self._handle_iq(stanza, sender, to, self._server_iq)
        elif stanza.name == "presence" and to.resource is None:
            # Presence to the server itself: nothing to do (RFC 6121 §4.6 directed presence to a
            # domain is allowed but there is no one to deliver it to).
            return
        elif stanza.name == "message" and stanza.type not in ("error", "groupchat", "headline"):
            raise errors.ServiceUnavailable()

    async def _to_bare(self, stanza: Stanza, sender: Jid, to: Jid, local_only: bool = False) -> None:
        kind = stanza.name
        if kind == "presence":
            await self.hooks.first_async(Hook.PRESENCE_IN, stanza, sender, to)
            return
        if kind == "iq":
            await self._handle_iq(stanza, sender, to, self._account_iq)
            return
        await self.message_to_bare(stanza, to, local_only)

    async def message_to_bare(self, stanza: Stanza, to: Jid, local_only: bool = False) -> None:
        """RFC 6121 §8.5.2: the highest non-negative priority resources, else offline storage."""
        mtype = stanza.type or "normal"
        if mtype == "error":
            return
        if mtype == "groupchat":
            raise errors.ServiceUnavailable()
        candidates = [r for r in self.table.resources(to) if r.available and r.priority >= 0]
        if not candidates and mtype != "headline" and self.hooks.has(Hook.REGION_SYNC):
            # Offline storage only if no member of the region holds an available resource now:
            # a presence sent on another member just before may not have reached this table yet.
            await self.hooks.run_async(Hook.REGION_SYNC)
            candidates = [r for r in self.table.resources(to) if r.available and r.priority >= 0]
        if candidates:
            # RFC 6121 §8.5.2.1.1: the most available resources (all of them for a headline); in
            # other regions, those at least as available as ours (an allowed superset).
            top = 0 if mtype == "headline" else max(r.priority for r in candidates)
            if (mtype != "headline" and not local_only
                    and await self.hooks.first_async(Hook.ROUTE_BETTER_ELSEWHERE, stanza, to, top)):
                return
            taken = await self._for_account(stanza, to)
            if taken is None:
                return
            which = Fanout(set_to=False, min_priority=top)
            self.deliver_all(to, taken, which, fanout=not local_only)
            self.hooks.run(Hook.MESSAGE_DELIVERED, taken, to, which)
            return
        if mtype == "headline":
            return
        if self.account_exists is not None and not await self.account_exists(to):
            raise errors.ServiceUnavailable()
        taken = await self._for_account(stanza, to)
        if taken is None:
            return
        if not await self.hooks.first_async(Hook.OFFLINE_MESSAGE, taken, to):
            raise errors.ServiceUnavailable()

    async def _for_account(self, stanza: Stanza, to: Jid) -> Stanza | None:
        """``message_to_account``: the message is about to be delivered to (or stored for) a local
        account, here, once in the whole deployment (archives, stanza ids); None: a module took it."""
        current: Stanza | None = stanza
        for handler in self.hooks.handlers(Hook.MESSAGE_TO_ACCOUNT):
            result = handler(current, to)
            current = await result if inspect.isawaitable(result) else result
            if current is None:
                return None
        return current

    async def _to_full(self, stanza: Stanza, sender: Jid, to: Jid, local_only: bool = False) -> None:
        record = self.table.lookup(to)
        kind = stanza.name
        if record is not None:
            if kind == "presence" and stanza.type in ("subscribe", "subscribed", "unsubscribe",
                                                       "unsubscribed", "probe"):
                # RFC 6121 §3: subscription states belong to the account, not one resource.
                await self.hooks.first_async(Hook.PRESENCE_IN, stanza, sender, to)
                return
            if kind == "message" and stanza.type != "error":
                # (no coroutine to create and await when no module listens: the plain chat path)
                taken = (await self._for_account(stanza, to) if self.hooks.has(Hook.MESSAGE_TO_ACCOUNT)
                         else stanza)
                if taken is None:
                    return
                self.deliver(record, taken)
                self.hooks.run(Hook.MESSAGE_DELIVERED, taken, to, None)
                return
            self.deliver(record, stanza)
            return
        # RFC 6121 §8.5.3.2: no such resource.
        if kind == "message":
            mtype = stanza.type or "normal"
            if mtype in ("normal", "chat"):
                await self.message_to_bare(stanza, to.bare, local_only)
            elif mtype == "groupchat":
                raise errors.ServiceUnavailable()
            return
        if kind == "presence":
            if stanza.type in ("subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe"):
                await self.hooks.first_async(Hook.PRESENCE_IN, stanza, sender, to)
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


def addressed(stanza: Stanza, to: str) -> Stanza:
    """``stanza`` with ``to`` set: itself when it has it already (the copies of a run for one
    recipient do), so a stanza relayed as bytes is not parsed just to be copied."""
    return stanza if stanza.to == to else stanza.with_attrs(to=to)


def copies(stanzas: list[Stanza], recipients: list[str]) -> list[Stanza]:
    """A run's copies one by one (:meth:`Router.route_run`): each recipient's, in order."""
    return [addressed(s, r) for r in recipients for s in stanzas]


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
