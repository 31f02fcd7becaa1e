"""Glue between the cluster member and the node's services: replicated session and route tables,
stanzas routed to sessions on other members, cluster calls (one-way and request/answer) by name,
member-down cleanup, and the hand-off of stanzas for other regions to a gateway member.

Stanzas crossing a cluster link carry an envelope whose ``k`` names its kind; each kind has one
handler in ``Services.envelopes`` (``session`` here, ``component`` from the component module,
``gd`` on gateways).  A frame may carry a *run* of stanzas (:meth:`Router.route_run`: a joiner's
presences, say) back to back, with their byte lengths in the envelope's ``sizes``: its handler then
gets the list (:func:`pack`, :func:`unpack`).  Calls are dispatched by name from
``Services.call_handlers``.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cluster.discovery import Discovery, FileDiscovery, RdbmsDiscovery, parse_peer
from .cluster.table import Change, Record
from .core.hooks import Hook
from .core.router import Fanout, add_global_routing, addressed
from .core.services import AUTH_BAN_CALL, Services
from .core.sessions import SessionRecord
from .net.cluster_net import ClusterMember, MemberHooks
from .net.tls import client_context, server_context
from .storage import open_storage
from .xmpp import errors, ns
from .xmpp.jid import InvalidJid, Jid
from .xmpp.lazy import lazy_stanza
from .xmpp.stanza import Stanza

__all__ = ["build_member", "GatewayHandoff", "MemberCalls", "SESSION", "pack", "split", "unpack"]

SESSION = "session"  # envelope kind: a stanza for one of the receiving member's sessions
SESSIONS = "sessions"  # envelope kind: a run (copies of stanzas) for sessions of the receiving member
SERVICE = "service"  # envelope kind: a stanza for a service domain a module serves on the receiving member
REQUEST, ANSWER = "req", "ans"  # call names of request/answer pairs
SYNC_CALL = "sync"  # a request answered at once: its answer comes after what the member sent before
HANDOFF_ACK = "gd.ack"  # a gateway confirms hand-offs (args: gw, seqs); see GatewayHandoff

log = logging.getLogger("meridian.cluster")


async def build_member(services: Services, cert: Path, key: Path) -> ClusterMember:
    """A started cluster member wired into ``services``."""
    settings = services.settings
    cs = settings.cluster
    advertise = cs.advertise or f"{cs.host}:{cs.port}"
    discovery: Discovery
    if cs.discovery == "file":
        discovery = FileDiscovery([parse_peer(p) for p in cs.nodes], settings.node_name)
    else:
        url = cs.discovery_url or settings.storage_url
        discovery = RdbmsDiscovery(lambda: open_storage(url), cs.name, settings.node_name, advertise,
                                   cs.last_seen_threshold, cs.refresh_interval)
    # Links are authenticated by the cluster secret (HMAC); TLS gives them confidentiality.
    client_tls = client_context(verify=False)
    server_tls = server_context(cert, key)
    table = services.table
    member = ClusterMember(
        cluster=cs.name, node=settings.node_name, secret=cs.secret.encode(), address=advertise,
        listen_host=cs.host, listen_port=cs.port, discovery=discovery, server_tls=server_tls,
        client_tls=client_tls, tables={"sessions": table.replicated, "routes": services.routes},
        refresh_interval=cs.refresh_interval,
        ping_interval=cs.ping_interval, ping_timeout=cs.ping_timeout)
    calls = MemberCalls(services, member)
    returns = Returns(services)
    member.hooks = MemberHooks(stanza=lambda env, data: _arrived(services, env, data),
                               call=calls.called,
                               member_down=lambda node, records, leader: _down(services, returns, node, records,
                                                                               leader),
                               merged=returns.merged,
                               unread=lambda node, stanzas: _unread(services, node, stanzas))
    table.on_local_op = member.broadcast
    table.replicated.on_lost = lambda record: _lost(services, record)
    services.cluster = member
    services.calls = calls
    services.envelopes[SESSION] = lambda env, stanza: _for_session(services, env, stanza)
    services.envelopes[SERVICE] = lambda env, stanza: _for_service(services, stanza)
    services.envelopes[SESSIONS] = lambda env, run: _for_sessions(services, env, run)
    # After the components (10) and the modules serving their domains here (20), before a
    # gateway's own routing (40) and the hand-off (50).
    services.hooks.add(Hook.ROUTE_REMOTE, lambda stanza, to: _to_service(services, calls, stanza, to), 30,
                       owner=calls)
    services.call_handlers["kick"] = lambda _node, args: _kick(services, args)
    services.call_handlers[AUTH_BAN_CALL] = lambda node, args: _banned(services, node, args)
    services.call_handlers[SYNC_CALL] = lambda _node, _args: True
    services.hooks.add(Hook.REGION_SYNC, lambda: _sync(services, calls), owner=calls)
    services.hooks.add(Hook.DELIVER_TO_MEMBER, lambda record, stanza: _send(calls, record, stanza), owner=calls)
    services.hooks.add(Hook.DELIVER_MANY_TO_MEMBER,
                       lambda node, copies, stanza: _send_many(calls, node, copies, stanza), owner=calls)
    handoff = GatewayHandoff(services, calls)
    services.call_handlers[HANDOFF_ACK] = lambda _node, args: handoff.confirmed(args)
    services.hooks.add(Hook.MEMBER_DOWN, handoff.member_down, owner=handoff)
    add_global_routing(services.hooks, handoff, priority=50, owner=handoff)
    services.other_regions = handoff.reaches_other_regions
    services.hooks.add(Hook.ROUTE_REMOTE, handoff.remote, 50, owner=handoff)  # a gateway's S2S comes first
    await member.start()
    return member


class MemberCalls:
    """The cluster as modules use it (:class:`~cluster_node.core.services.ClusterCalls`): calls by
    name, requests answered by the other member's handler, stanzas with a typed envelope."""

    def __init__(self, services: Services, member: ClusterMember) -> None:
        self.s = services
        self.member = member
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}

    def members(self) -> list[str]:
        return sorted(self.member.links)

    def call(self, node: str, name: str, args: dict[str, Any]) -> bool:
        return self.member.call(node, name, args)

    def send_stanza(self, node: str, kind: str, envelope: dict[str, Any], data: bytes, *, keep: bool = False
                    ) -> bool:
        return self.member.send_stanza(node, {**envelope, "k": kind}, data, keep=keep)

    async def wait_acks(self) -> None:
        await self.member.wait_acks()

    async def request(self, node: str, name: str, args: dict[str, Any], timeout: float = 5.0) -> Any:
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        try:
            if not self.member.call(node, REQUEST, {"rid": rid, "from": self.s.node, "name": name, "args": args}):
                raise LookupError(f"no cluster link to {node}")
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(rid, None)

    def called(self, name: str, args: dict[str, Any]) -> None:
        if name == ANSWER:
            future = self._waiting.get(args.get("rid"))  # type: ignore[arg-type]
            if future is not None and not future.done():
                if "error" in args:
                    future.set_exception(LookupError(str(args["error"])))
                else:
                    future.set_result(args.get("result"))
            return
        if name == REQUEST:
            self.s.router.spawn(self._answer(args))
            return
        handler = self.s.call_handlers.get(name)
        if handler is None:
            if self.s.modules_started:
                log.warning("cluster call %r: no handler here", name)
            else:  # a module's call at start (MUC's hello): the module says it again once it runs
                log.debug("cluster call %r before this member's modules started", name)
            return
        try:
            result = handler("", args)
            if inspect.isawaitable(result):
                self.s.router.spawn(_awaited(result))
        except Exception:
            log.exception("cluster call %r failed", name)

    async def _answer(self, args: dict[str, Any]) -> None:
        caller, rid, name = str(args.get("from", "")), args.get("rid"), str(args.get("name", ""))
        handler = self.s.call_handlers.get(name)
        reply: dict[str, Any] = {"rid": rid}
        try:
            if handler is None:
                raise LookupError(f"no handler for {name!r} on {self.s.node}")
            body = args.get("args")
            result = handler(caller, body if isinstance(body, dict) else {})
            if inspect.isawaitable(result):
                result = await result
            reply["result"] = result
        except Exception as e:
            if not isinstance(e, LookupError | ValueError):
                log.exception("cluster request %r failed", name)
            reply["error"] = f"{e.__class__.__name__}: {e}"
        self.member.call(caller, ANSWER, reply)


async def _awaited(result: Any) -> None:
    await result


@dataclass(slots=True)
class _Handed:
    """A stanza handed (or to be handed) to a gateway, kept until a gateway confirms it."""

    seq: int
    envelope: dict[str, Any]  # with its id: "hid" (node/incarnation/seq), "hs" (seq), "hn" (node)
    stanza: Stanza  # the first of a run
    key: str | None  # what picks the gateway (None: from|to)
    since: float  # when it was first handed: the hold deadline counts from here
    data: bytes  # the frame's: the stanza, or the run (:func:`pack`)


class GatewayHandoff:
    """A node's way to other regions: hand the stanza to one of the region's gateways, which
    looks the destination up and relays it — or, when no region holds it, handles it locally.

    The gateway is chosen by a hash of (from, to), so one conversation always takes the same
    gateway and keeps its order.  With no gateway in the cluster (ever) the region stands alone.

    Nothing acknowledged to a client may be lost with a gateway: each hand-off carries a sequence
    number and stays here until the gateway confirms it (``gd.ack``: handled there, or relayed and
    acked by the other region).  When a gateway goes down, what it had not confirmed is handed
    again, in order, to another gateway (or the restarted one) under the same id, so a receiving
    gateway that already has it drops the copy.  While the region has no gateway at all, hand-offs
    are held (at most ``cluster.handoff_queue_max``) and go out in order as soon as one is back;
    one held longer than ``cluster.handoff_queue_timeout`` is handled here instead (a message to a
    user no session of this region holds goes to offline storage, for the next login).
    """

    def __init__(self, services: Services, calls: MemberCalls) -> None:
        self.s = services
        self.calls = calls
        cs = services.settings.cluster
        self.queue_max = cs.handoff_queue_max
        self.queue_timeout = cs.handoff_queue_timeout
        self._seqs = itertools.count(1)
        self._prefix = f"{services.node}/{calls.member.incarnation}/"
        self.unconfirmed: dict[str, dict[int, _Handed]] = {}  # gateway -> seq -> hand-off
        self.held: deque[_Handed] = deque()  # no gateway to take them (yet)
        self.seen_gateway = False  # a region that never had one stands alone: nothing is held
        # Whether the routes name a gateway: read on every chat message (carbons), so kept up to
        # date by the table's changes rather than found by a scan per message.
        self._gateway_route = self._names_gateway()
        services.routes.listeners.append(self._route_changed)
        self.expired = 0  # held past the deadline, handled here
        self.dropped_unconfirmed = 0  # copies given up because a gateway never confirmed them
        self._flusher: asyncio.Task[None] | None = None

    def gateways(self) -> list[str]:
        links = self.calls.member.links
        names = sorted(r.owner for r in self.s.routes if r.key.startswith("gateway/") and r.owner in links)
        if names:
            self.seen_gateway = True
        return names

    def reaches_other_regions(self) -> bool:
        """Whether a hand-off may reach another region: the region has, or had, a gateway."""
        return self.seen_gateway or self._gateway_route

    def _names_gateway(self) -> bool:
        return any(r.key.startswith("gateway/") for r in self.s.routes)

    def _route_changed(self, change: Change) -> None:
        if change[1].key.startswith("gateway/"):
            self._gateway_route = self._names_gateway()

    def gateway(self, stanza: Stanza, key: str | None = None) -> str | None:
        names = self.gateways()
        if not names:
            return None
        return self._pick(names, stanza, key)

    @staticmethod
    def _pick(names: list[str], stanza: Stanza, key: str | None) -> str:
        return names[zlib.crc32((key or f"{stanza.from_}|{stanza.to}").encode()) % len(names)]

    # -- handing over ----------------------------------------------------------------------------

    def _hand(self, stanza: Stanza, envelope: dict[str, Any], key: str | None = None, data: bytes | None = None
              ) -> bool:
        """Hand ``stanza`` (``data``: a run packed behind it) to a gateway, or hold it; False when
        there is no one to take it (a region without gateways, or the hold full)."""
        names = self.gateways()
        if not names and not self.seen_gateway:
            return False
        seq = next(self._seqs)
        item = _Handed(seq, {**envelope, "hid": f"{self._prefix}{seq}", "hs": seq, "hn": self.s.node},
                       stanza, key, time.monotonic(), stanza.to_bytes() if data is None else data)
        if names and self.held:
            self._flush()  # what waited goes first
        if names and not self.held:
            return self._send(item, names)
        if len(self.held) >= self.queue_max:
            self.s.refused("cluster.handoff_queue_max")
            log.warning("no gateway: %d stanzas for other regions held already; handling one here", len(self.held))
            return False
        self.held.append(item)
        self._wake()
        return True

    def _send(self, item: _Handed, names: list[str]) -> bool:
        gateway = self._pick(names, item.stanza, item.key)
        if not self.calls.send_stanza(gateway, "gd", item.envelope, item.data):
            self.held.append(item)
            self._wake()
            return True
        self._unconfirmed(gateway, item)
        return True

    def _unconfirmed(self, gateway: str, item: _Handed) -> None:
        """Keep ``item`` until ``gateway`` confirms it; at most ``queue_max`` per gateway, so a
        gateway that never confirms (an older version during a rolling upgrade) costs bounded
        memory: past the bound the oldest copy is given up (it was handed over once)."""
        mine = self.unconfirmed.setdefault(gateway, {})
        mine[item.seq] = item
        if len(mine) > self.queue_max:
            del mine[next(iter(mine))]
            if not self.dropped_unconfirmed:
                log.warning("gateway %s confirms no hand-offs (an older version?): keeping only the last %d",
                            gateway, self.queue_max)
            self.dropped_unconfirmed += 1

    def _flush(self) -> None:
        """Hand what is held to the gateways now up, in order (expired ones are handled here)."""
        self._expire()
        while self.held:
            names = self.gateways()
            if not names:
                return
            item = self.held.popleft()
            gateway = self._pick(names, item.stanza, item.key)
            if not self.calls.send_stanza(gateway, "gd", item.envelope, item.data):
                self.held.appendleft(item)
                return
            self._unconfirmed(gateway, item)

    def _expire(self) -> None:
        deadline = time.monotonic() - self.queue_timeout
        n = 0
        while self.held and self.held[0].since <= deadline:
            self._here(self.held.popleft())
            n += 1
        if n:
            self.expired += n
            self.s.refused("cluster.handoff_queue_timeout", n)
            log.warning("no gateway for %.0f s: %d stanzas for other regions handled here", self.queue_timeout, n)

    def _here(self, item: _Handed) -> None:
        """A held hand-off past its deadline: handled as if the region stood alone."""
        stanza, kind = item.stanza, item.envelope.get("gd")
        router = self.s.router
        if kind in ("elsewhere", "route", "bounce"):
            router.spawn(router.route(stanza, local_only=True))
        elif kind == "s2s":
            router.send_error(stanza, errors.RemoteServerTimeout("no gateway to federate through"))
        # "many" and "fanout": copies for other regions' sessions, which nobody here can reach.

    def _wake(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """While stanzas are held: hand them over once a gateway is up, expire the old ones."""
        while self.held:
            await asyncio.sleep(0.05)
            self._flush()

    def confirmed(self, args: dict[str, Any]) -> None:
        """``gd.ack`` from a gateway: it no longer needs our copies of these hand-offs."""
        mine = self.unconfirmed.get(str(args.get("gw", "")))
        seqs = args.get("seqs")
        if mine is None or not isinstance(seqs, list):
            return
        for seq in seqs:
            if isinstance(seq, int):
                mine.pop(seq, None)

    def member_down(self, node: str, _sessions: Any = None, _leader: bool = False) -> None:
        """A member went down: if it was a gateway, hand what it had not confirmed to another."""
        pending = self.unconfirmed.pop(node, None)
        if not pending:
            return
        items = [pending[seq] for seq in sorted(pending)]
        now = time.monotonic()
        for item in items:  # a full hold period from now: the gateway, not the item, went away
            item.since = now
        kinds = ", ".join(sorted({str(i.envelope.get("gd")) for i in items}))
        log.warning("gateway %s down with %d hand-offs unconfirmed (%s): handing them over again", node, len(items),
                    kinds)
        self.held.extendleft(reversed(items))  # older than anything held since
        self._flush()
        if self.held:
            self._wake()

    def status(self) -> dict[str, int]:
        return {"held": len(self.held), "unconfirmed": sum(len(d) for d in self.unconfirmed.values()),
                "expired": self.expired}

    # -- the routing chain -------------------------------------------------------------------------

    async def elsewhere(self, stanza: Stanza, to: Jid) -> bool:
        return self._hand(stanza, {"gd": "elsewhere"})

    async def bounce(self, stanza: Stanza) -> bool:
        return self._hand(stanza, {"gd": "bounce"})

    async def better_elsewhere(self, stanza: Stanza, bare: Jid, local_top: int) -> bool:
        # Only the gateway sees the other regions' resources: it routes the message as a whole.
        return self._hand(stanza, {"gd": "route"})

    async def remote(self, stanza: Stanza, to: Jid) -> bool:
        """A domain no region of ours serves: a gateway federates over S2S (docs/architecture.md)."""
        if not self._hand(stanza, {"gd": "s2s"}):
            raise errors.RemoteServerNotFound(f"{to.domain} is not served here and no gateway federates")
        return True

    def many(self, stanzas: list[Stanza], recipients: list[str]) -> bool:
        # The gateway is chosen by the sender's bare JID (a room): all it sends to other regions
        # takes one gateway, so it keeps its order.  A run is one hand-off (one frame).
        try:
            key = str(Jid.parse(stanzas[0].from_ or "").bare)
        except ValueError:
            return False
        sizes, data = pack(stanzas)
        return self._hand(stanzas[0], {"gd": "many", "to": recipients, **sizes}, key, data)

    def fanout(self, stanza: Stanza, bare: Jid, which: Fanout) -> None:
        self._hand(stanza, {"gd": "fanout", "bare": str(bare), "which": which.to_json()})


def _send(calls: MemberCalls, record: SessionRecord, stanza: Stanza) -> bool:
    envelope = {"sid": record.sid, "to": str(record.jid), "hops": 1}
    # A chat message is kept until the member says it read it: if it dies first, the message is
    # routed again (:func:`_unread`) instead of lost with it.
    keep = stanza.name == "message" and stanza.type in (None, "chat", "normal")
    if calls.send_stanza(record.node, SESSION, envelope, stanza.to_bytes(), keep=keep):
        return True
    # No link: the member left (a node drained by SIGTERM) or went down after ``record`` was read
    # (routing awaits hooks, an archive write, between the lookup and here).
    _follow(calls.s, record.jid, record.node, stanza)
    return True


def _follow(services: Services, jid: Jid, node: str, stanza: Stanza) -> None:
    """``stanza`` was for the session of ``jid`` on ``node``, a member that is gone.  Its records left the
    table with its link, so the table now says where the session went — to the member it was
    handed to, or nowhere — and the stanza follows that instead of being dropped after its
    sender was told it was handled (XEP-0198 acks count routed stanzas)."""
    current = services.table.lookup(jid)
    if current is not None and current.node != node:
        services.router.deliver(current, stanza)
    elif current is None:
        services.router.spawn(services.router.route(stanza))  # other resources or offline storage
    else:
        log.warning("no link to %s for a stanza to %s", node, jid)


def _unread(services: Services, node: str, stanzas: list[tuple[dict[str, Any], bytes]]) -> None:
    """Messages a member that went down had not read: routed again, in order.  Only those with a
    body of their own — a carbon copy or an archive result for the dead session is for it alone."""
    for _envelope, data in stanzas:
        try:
            stanza = lazy_stanza(data)
            if stanza.child(ns.CLIENT, "body") is None:
                continue
            jid = Jid.parse(stanza.to or "")
        except ValueError:  # (InvalidJid is one)
            continue
        _follow(services, jid, node, stanza)


def pack(stanzas: list[Stanza]) -> tuple[dict[str, Any], bytes]:
    """The envelope keys and the data of a frame carrying ``stanzas``: one stanza's bytes as
    ever, or a run's back to back with their ``sizes``, so the receiver cuts them apart without
    parsing (and relays each as the bytes it arrived as)."""
    if len(stanzas) == 1:
        return {}, stanzas[0].to_bytes()
    pieces = [s.to_bytes() for s in stanzas]
    return {"sizes": [len(p) for p in pieces]}, b"".join(pieces)


def split(data: bytes, sizes: Any) -> list[bytes]:
    """``data`` cut into pieces of ``sizes`` bytes; ValueError unless ``sizes`` is a list of
    positive integers adding up to its length (it came over a link)."""
    if (not isinstance(sizes, list) or not sizes
            or not all(type(n) is int and n > 0 for n in sizes) or sum(sizes) != len(data)):
        raise ValueError("the run's sizes do not add up to its data")
    pieces, start = [], 0
    for n in sizes:
        pieces.append(data[start:start + n])
        start += n
    return pieces


def unpack(envelope: dict[str, Any], data: bytes) -> Stanza | list[Stanza]:
    """What :func:`pack` packed: a stanza, or a run's list; each routed by its start tag, the rest
    parsed only if needed.  ValueError when it does not parse."""
    if "sizes" not in envelope:
        return lazy_stanza(data)
    return [lazy_stanza(piece) for piece in split(data, envelope["sizes"])]


def _arrived(services: Services, envelope: dict[str, Any], data: bytes) -> None:
    """A stanza (or a run: a list) another member routed here: its envelope kind says to whom."""
    try:
        payload = unpack(envelope, data)
    except ValueError as e:
        log.warning("dropping an unparsable stanza from the cluster: %s", e)
        return
    kind = envelope.get("k")
    handler = services.envelopes.get(kind) if isinstance(kind, str) else None
    if handler is None:
        log.warning("a stanza of kind %r reached %s, which has no handler for it", kind, services.node)
        return
    handler(envelope, payload)


def _send_many(calls: MemberCalls, node: str, copies: list[tuple[SessionRecord, str]], stanzas: list[Stanza]
               ) -> bool:
    """A run for sessions of one member (a room's message to many, a joiner's presences): one
    frame with each stanza once and the list of (session, 'to'), not a frame per copy.  False
    when there is no link (the router then delivers each copy on its own, which finds where the
    sessions went)."""
    sizes, data = pack(stanzas)
    envelope = {"to": [[record.sid, to] for record, to in copies], **sizes}
    return calls.send_stanza(node, SESSIONS, envelope, data)


def _for_sessions(services: Services, envelope: dict[str, Any], run: Stanza | list[Stanza]) -> None:
    """A run for sessions here (:func:`_send_many`): each gets its copies, in order, with its
    'to'; one whose session is gone has them routed again from here, once, as
    :func:`_for_session` does."""
    stanzas = run if isinstance(run, list) else [run]
    copies = envelope.get("to")
    if not isinstance(copies, list):
        return
    for item in copies:
        if isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
            sid, to = item
            for stanza in stanzas:
                _for_session(services, {"sid": sid, "hops": 1}, addressed(stanza, to))


def _for_session(services: Services, envelope: dict[str, Any], stanza: Stanza) -> None:
    session = services.local.get(str(envelope.get("sid", "")))
    if session is not None:
        session.deliver(stanza)
        return
    # The session moved or ended meanwhile: route again from here, once.
    if int(envelope.get("hops", 1)) < 2 and stanza.to:
        services.router.spawn(services.router.route(stanza))


def _serves(services: Services, domain: str, member: str) -> bool:
    return services.routes.lookup(f"service/{domain}/{member}") is not None


def _to_service(services: Services, calls: MemberCalls, stanza: Stanza, to: Jid) -> bool | None:
    """A service domain a module serves on other members of the region but not here (a gateway
    without the upload module, say, getting a slot request over S2S): forward the stanza to one
    of them, the same one for one conversation.  None (the next link) when no member serves it."""
    links = calls.member.links
    members = sorted(m for m in links if _serves(services, to.domain, m))
    if not members or _serves(services, to.domain, services.node):
        return None
    member = members[zlib.crc32(f"{stanza.from_}|{stanza.to}".encode()) % len(members)]
    return True if calls.send_stanza(member, SERVICE, {}, stanza.to_bytes()) else None


def _for_service(services: Services, stanza: Stanza) -> None:
    """A stanza another member forwarded to a service domain of a module running here."""
    try:
        to = Jid.parse(stanza.to or "")
    except InvalidJid:
        return
    if not _serves(services, to.domain, services.node):  # the module stopped meanwhile: never forward back
        services.router.send_error(stanza, errors.ServiceUnavailable(f"{to.domain} is not served here"))
        return
    services.router.spawn(services.router.route(stanza, local_only=True))


def _kick(services: Services, args: dict[str, Any]) -> None:
    session = services.local.get(str(args.get("sid", "")))
    if session is not None:
        session.kick(str(args.get("condition", "conflict")), args.get("text"))


async def _sync(services: Services, calls: MemberCalls) -> None:
    """``region_sync``: a request to every member; each answers on its link after the table
    changes it sent us earlier, so once all have answered (or the ping timeout passed) our
    table holds what theirs held when we asked."""
    members = calls.members()
    if members:
        timeout = services.settings.cluster.ping_timeout
        await asyncio.gather(*(calls.request(m, SYNC_CALL, {}, timeout) for m in members), return_exceptions=True)


def _banned(services: Services, node: str, args: dict[str, Any]) -> None:
    """Another member banned an address after too many authentication failures: ban it here too."""
    try:
        address, seconds = str(args["address"]), float(args["seconds"])
    except (KeyError, TypeError, ValueError):
        return
    log.info("%s banned %s for %d s (%s)", node, address, seconds, args.get("reason", ""))
    services.auth_throttle.ban(address, time.monotonic(), min(seconds, 86_400.0), f"banned by {node}")


def _lost(services: Services, record: Record) -> None:
    """One of our sessions lost a conflict on merge (same full JID on two members): close it."""
    session = services.local.get(str(record.value.get("sid", "")))
    if session is not None:
        log.info("session %s lost a cluster conflict; closing it", record.key)
        session.kick("conflict", "replaced by a newer session in the cluster")


class Returns:
    """Sessions of a member that joins (again), for the ``member_back`` hook (the presence module
    tells local contacts they are back).

    Which of its merged sessions are new here?  All of them when we held none of its records
    before the dump: the first join, or a rejoin after member-down dropped them (a healed
    partition, a lost link, a restart).  None when its records stayed here: the same process
    back on a new link before our side gave the old one up (no member-down here, so nobody told
    our contacts its sessions had gone).  Records of a member reach us only over its link, dump
    first, so "not merged since its last member-down" is exactly "none of its records held
    before this dump"; no copy of the table from before the merge is needed.

    Once across the cluster: each member informs only its own (local) sessions, once per arrival
    of the other member's sessions in its table, and the other member does the same the other
    way.  The arrivals are those member-down undid here, for which ``gone`` (sent by the leader of
    our side of the partition, to our side's contacts) said ``unavailable``.
    """

    def __init__(self, services: Services) -> None:
        self.s = services
        self.held: set[str] = set()  # members whose session records we hold (merged, not dropped since)

    def merged(self, node: str, table: str, records: list[Record]) -> None:
        if table != "sessions" or node in self.held:
            return
        self.held.add(node)
        sessions = [SessionRecord.from_table(r) for r in records if r.value.get("sid")]
        self.s.hooks.run(Hook.MEMBER_BACK, node, sessions)


def _down(services: Services, returns: Returns, node: str, records: list[Record], leader: bool) -> None:
    returns.held.discard(node)
    sessions = [SessionRecord.from_table(r) for r in records if r.value.get("sid")]
    # Sessions lost with a member are worth a warning; a member without any (a gateway, a node
    # stopped after its clients left) is routine.
    log.log(logging.WARNING if sessions else logging.INFO, "member %s down: %d of its sessions dropped%s", node,
            len(sessions), "; sending their unavailable presence" if leader and sessions else "")
    services.hooks.run(Hook.MEMBER_DOWN, node, sessions, leader)


