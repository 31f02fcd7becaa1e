"""Glue between the cluster member and the node's services: replicated session and route tables,
stanzas routed to sessions on other members, kicks across members, member-down cleanup, and the
hand-off of stanzas for other regions to a gateway member."""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

from ..cluster.discovery import Discovery, FileDiscovery, RdbmsDiscovery, parse_peer
from ..cluster.table import Record
from ..net.cluster_net import ClusterMember, MemberHooks
from ..net.tls import client_context, server_context
from ..storage import open_storage
from ..xmpp import errors
from ..xmpp.jid import Jid
from ..xmpp.lazy import lazy_stanza
from ..xmpp.stanza import Stanza
from .router import Fanout
from .services import Services
from .sessions import SessionRecord

__all__ = ["build_member", "GatewayHandoff", "fanout_to_json", "fanout_from_json"]

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
    returns = Returns(services)
    member.hooks = MemberHooks(stanza=lambda env, data: _arrived(services, env, data),
                               call=lambda name, args: _called(services, name, args),
                               member_down=lambda node, records, leader: _down(services, returns, node, records,
                                                                               leader),
                               merged=returns.merged)
    table.on_local_op = member.broadcast
    table.replicated.on_lost = lambda record: _lost(services, record)
    services.router.cluster_send = lambda record, stanza: _send(services, member, record, stanza)
    services.cluster = member
    handoff = GatewayHandoff(services, member)
    services.router.global_routing = handoff
    services.router.remote = handoff.remote  # a gateway replaces it with its S2S service
    await member.start()
    return member


class GatewayHandoff:
    """A node's way to other regions: hand the stanza to one of the region's gateways, which
    looks the destination up and relays it — or, when no region holds it, handles it locally.

    The gateway is chosen by a hash of (from, to), so one conversation always takes the same
    gateway and keeps its order.  With no gateway in the cluster the region stands alone.
    """

    def __init__(self, services: Services, member: ClusterMember) -> None:
        self.s = services
        self.member = member

    def gateway(self, stanza: Stanza) -> str | None:
        names = sorted(r.owner for r in self.s.routes if r.key.startswith("gateway/") and r.owner in self.member.links)
        if not names:
            return None
        return names[zlib.crc32(f"{stanza.from_}|{stanza.to}".encode()) % len(names)]

    async def elsewhere(self, stanza: Stanza, to: Jid) -> bool:
        gateway = self.gateway(stanza)
        return gateway is not None and self.member.send_stanza(gateway, {"gd": "elsewhere"}, stanza.to_bytes())

    async def bounce(self, stanza: Stanza) -> bool:
        gateway = self.gateway(stanza)
        return gateway is not None and self.member.send_stanza(gateway, {"gd": "bounce"}, stanza.to_bytes())

    async def better_elsewhere(self, stanza: Stanza, bare: Jid, local_top: int) -> bool:
        # Only the gateway sees the other regions' resources: it routes the message as a whole.
        gateway = self.gateway(stanza)
        return gateway is not None and self.member.send_stanza(gateway, {"gd": "route"}, stanza.to_bytes())

    async def remote(self, stanza: Stanza, to: Jid) -> None:
        """A domain no region of ours serves: the gateway federates over S2S (ARCHITECTURE, routing 3)."""
        gateway = self.gateway(stanza)
        if gateway is None or not self.member.send_stanza(gateway, {"gd": "s2s"}, stanza.to_bytes()):
            raise errors.RemoteServerNotFound(f"{to.domain} is not served here and no gateway federates")

    def fanout(self, stanza: Stanza, bare: Jid, which: Fanout) -> None:
        gateway = self.gateway(stanza)
        if gateway is not None:
            envelope = {"gd": "fanout", "bare": str(bare), "which": fanout_to_json(which)}
            self.member.send_stanza(gateway, envelope, stanza.to_bytes())


def fanout_to_json(which: Fanout) -> dict[str, Any]:
    return {"interested": which.interested, "set_to": which.set_to, "min_priority": which.min_priority,
            "exclude": which.exclude}


def fanout_from_json(d: Any) -> Fanout:
    """Only the known fields, with their types checked (the envelope came over a link)."""
    d = d if isinstance(d, dict) else {}
    mp, ex = d.get("min_priority"), d.get("exclude")
    return Fanout(interested=d.get("interested") is True, set_to=d.get("set_to") is not False,
                  min_priority=mp if isinstance(mp, int) else None, exclude=ex if isinstance(ex, str) else None)


def _send(services: Services, member: ClusterMember, record: SessionRecord, stanza: Stanza) -> None:
    envelope = {"sid": record.sid, "to": str(record.jid), "hops": 1}
    if not member.send_stanza(record.node, envelope, stanza.to_bytes()):
        log.warning("no link to %s for a stanza to %s", record.node, record.jid)


def _arrived(services: Services, envelope: dict[str, Any], data: bytes) -> None:
    """A stanza routed to one of our sessions by another member."""
    try:
        stanza = lazy_stanza(data)  # routed by its start tag; the rest parsed only if needed
    except ValueError as e:
        log.warning("dropping an unparsable stanza from the cluster: %s", e)
        return
    if "gd" in envelope:  # handed to us, a gateway, for global routing
        if services.handoff is not None:
            services.handoff(envelope, stanza)
        else:
            log.warning("a stanza for global routing reached %s, which is not a gateway", services.node)
        return
    if "component" in envelope:  # for a component connected to us
        if services.components is None or not services.components.deliver(str(envelope["component"]), stanza):
            services.router.send_error(stanza, errors.ServiceUnavailable(f"{envelope['component']} is not connected"))
        return
    session = services.local.get(str(envelope.get("sid", "")))
    if session is not None:
        session.deliver(stanza)
        return
    # The session moved or ended meanwhile: route again from here, once.
    if int(envelope.get("hops", 1)) < 2 and stanza.to:
        services.router.spawn(services.router.route(stanza))


def _called(services: Services, name: str, args: dict[str, Any]) -> None:
    if name == "kick":
        session = services.local.get(str(args.get("sid", "")))
        if session is not None:
            session.kick(str(args.get("condition", "conflict")), args.get("text"))


def _lost(services: Services, record: Record) -> None:
    """One of our sessions lost a conflict on merge (same full JID on two members): close it."""
    session = services.local.get(str(record.value.get("sid", "")))
    if session is not None:
        log.info("session %s lost a cluster conflict; closing it", record.key)
        session.kick("conflict", "replaced by a newer session in the cluster")


class Returns:
    """Presence for the sessions of a member that joins (again): see :meth:`Presence.returned`.

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
        if any(r.available for r in sessions):
            self.s.router.spawn(self._inform(node, sessions))

    async def _inform(self, node: str, sessions: list[SessionRecord]) -> None:
        try:
            await self.s.presence.returned(sessions)
        except Exception as e:  # the database may be down (roster reads): say so, without a traceback
            log.warning("presence of %s's sessions not sent to contacts here: %s: %s", node,
                        e.__class__.__name__, e)


def _down(services: Services, returns: Returns, node: str, records: list[Record], leader: bool) -> None:
    returns.held.discard(node)
    sessions = [SessionRecord.from_table(r) for r in records if r.value.get("sid")]
    # Sessions lost with a member are worth a warning; a member without any (a gateway, a node
    # stopped after its clients left) is routine.
    log.log(logging.WARNING if sessions else logging.INFO, "member %s down: %d of its sessions dropped%s", node,
            len(sessions), "; sending their unavailable presence" if leader and sessions else "")
    if leader:
        for record in sessions:
            services.router.spawn(services.presence.gone(record))


