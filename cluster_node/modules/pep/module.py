"""XEP-0163 Personal Eventing Protocol: a XEP-0060 pubsub service at every account's bare JID,
with XEP-0223 private nodes, XEP-0402 bookmarks (kept in step with XEP-0048's PEP node) and
XEP-0084 avatars.

* **Service.**  ``<pubsub/>`` and ``<pubsub xmlns='…#owner'/>`` IQs to an account (or with no 'to',
  to one's own) are account IQs, answered by the member that routes them from the domain
  database (:mod:`.store`), so a node written in one region is read in every other.  The account
  alone publishes, retracts, configures, deletes and purges (``forbidden`` for anyone else);
  publishing to a missing node creates it (auto-create) with the defaults, or with the
  ``publish-options``, which are preconditions for an existing node (``conflict`` +
  ``precondition-not-met`` when they differ).  Readers per access model (:func:`.protocol.may_read`):
  ``presence`` (the default) the contacts subscribed to the owner's presence, ``open`` anyone,
  ``whitelist`` (XEP-0223 private nodes, bookmarks) the owner and the members she names; an
  outcast nobody's node.  Affiliations (member, outcast) are kept in the node's configuration row,
  so each access check has them without another query.  Requests, forms and errors are parsed and
  built in :mod:`.protocol`.
* **Explicit subscriptions** (XEP-0060 §6.1, §6.2, §8.8).  Besides the implicit ones (presence +
  caps), anyone who may read a node subscribes a JID of its own to it (``pep_subscriptions``) and
  gets its events, the last item on subscribing; the owner lists and changes them.  Whether a
  subscriber may still read is checked at each event (a presence subscription ended, an outcast).
* **Limits.**  ``max_payload`` bytes per item (``not-acceptable``, payload-too-big),
  ``max_items_per_node`` items per node (also what ``max`` means), ``max_nodes_per_user`` nodes
  per account (``not-allowed``, max-nodes-exceeded).
* **Who is interested.**  A session's available presence (``presence_available``, on the member
  holding it) with XEP-0115 caps: the server asks the resource for the disco#info of its
  ``node#ver`` once per verified ``ver`` (cached per member; the answer is taken out of the
  routing in ``filter_local_packet``), and sets one flag per ``<node>+notify`` feature on the
  session's replicated record (:func:`.protocol.notify_flag`).  Every member of the region, and
  every region a fan-out reaches, selects the interested resources by those flags.  Contacts of
  other domains are learnt from their presence reaching an account (``presence_delivered``), and
  kept in ``pep_remote`` (full JIDs and nodes).
* **Notifications.**  On publish, retract, purge and delete: the owner's available resources;
  each contact with a subscription to the owner's presence (from/both) whose resources asked for
  the node and whom the access model lets read it: same-domain ones wherever they are
  (``Fanout(flag=…)``, to full JIDs), other-domain ones by their stored full JIDs through the
  routing chain (S2S); and each explicit subscription (a bare JID of ours: all its resources).
* **Last items** (XEP-0163 §4.3.2).  When a resource's interest is first known (initial presence,
  or caps announcing new ``+notify`` features), it gets the last item of each such node of its
  own account and of each account it is subscribed to (to/both) — sent by the member holding it;
  an other-domain contact gets the owner's on its presence, from the member that handled it.
* **Bookmarks** (XEP-0402 ``#compat-pep`` and ``#compat``).  A change of ``urn:xmpp:bookmarks:1``
  rewrites the single ``storage:bookmarks`` item (XEP-0048 through XEP-0223); a publish or retract
  on ``storage:bookmarks`` publishes and retracts the matching XEP-0402 items, with notifications.
  XEP-0048 through XEP-0049 private storage is the same list: the private module hands
  ``storage:bookmarks`` to PEP (hooks ``private_get``/``private_set``), a set being a publish on the
  legacy node, a get reading it.
* **Avatars** (XEP-0084).  The data and metadata nodes share their access model: a new one takes
  the other's, and configuring one's access model configures the other's.
* **Other modules** (XEP-0398 in vcard).  ``pep_items`` reads an account's item for a module,
  ``pep_publish`` publishes or retracts one on the account's behalf (limits and notifications as
  for the account's own), and ``pep_changed`` tells them a node changed and who changed it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
import xml.etree.ElementTree as ET
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from pydantic import Field

from ...core.hooks import STOP, Hook
from ...core.module import Module, ModuleHost, ModuleSettings, Xep
from ...core.router import Fanout, IqRequest
from ...core.sessions import LocalSession
from ...xmpp import errors
from ...xmpp.errors import StanzaError
from ...xmpp.fragment import parse_stanza
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza, serialize
from . import protocol as p
from .protocol import (
    AVATAR_DATA,
    AVATAR_METADATA,
    BOOKMARKS2,
    BOOKMARKS_LEGACY,
    OWNER,
    PUBSUB,
    Caps,
    FormUnsupported,
    FormValueError,
    NodeConfig,
)
from .store import PepStore, StoredItem

__all__ = ["Pep", "PepSettings", "ID_PREFIX"]

log = logging.getLogger("meridian.pep")

ID_PREFIX = "pep-caps-"  # ids of the disco#info queries the server sends for caps
_P, _O = f"{{{PUBSUB}}}", f"{{{OWNER}}}"
_AVATAR_PAIR = {AVATAR_DATA: AVATAR_METADATA, AVATAR_METADATA: AVATAR_DATA}
# XEP-0223 / XEP-0048 §3.2 and XEP-0402 §3: the configurations of the nodes the compat creates.
LEGACY_CONFIG = NodeConfig(access_model="whitelist")
BOOKMARKS2_CONFIG = NodeConfig(access_model="whitelist", max_items=None, send_last_published_item="never")


class PepSettings(ModuleSettings):
    max_items_per_node: int = Field(1000, ge=1, le=100_000, description="most items one node keeps (and what "
                                    "pubsub#max_items 'max' means)")
    max_payload: int = Field(262_144, ge=64, le=16 * 1024 * 1024, description="bytes of one item's payload (larger: "
                             "not-acceptable, payload-too-big)")
    max_nodes_per_user: int = Field(256, ge=1, description="nodes one account may have (more: not-allowed, "
                                    "max-nodes-exceeded)")
    caps_timeout: float = Field(10.0, gt=0, description="seconds to wait for a resource's disco#info answer")
    caps_cache_size: int = Field(10_000, ge=0, description="verified caps (ver → features) kept per member")
    max_affiliations: int = Field(1000, ge=0, description="members and outcasts the owner may name on one node "
                                  "(more: not-acceptable)")
    bookmarks_compat: bool = Field(True, description="keep XEP-0048's storage:bookmarks PEP node and XEP-0402's "
                                   "urn:xmpp:bookmarks:1 in step (XEP-0402 #compat-pep)")


@dataclass
class _Interest:
    """``session.ext["pep"]``: what the server knows of a local resource's interests."""

    caps: Caps | None = None
    resolved: bool = False
    seq: int = 0
    sent: frozenset[str] = frozenset()  # nodes whose last items it was sent


def _payload(item: StoredItem) -> ET.Element:
    return parse_stanza(item.payload).element


def _msg_id() -> str:
    return "pep-" + secrets.token_hex(6)


class Pep(Module):
    name = "pep"
    description = "Personal Eventing Protocol: a pubsub service at each account, notifications by caps, in every region"
    xeps = (
        Xep(163, "1.2.2", "partial", "interest is learnt from caps in presence (a contact of another domain: "
            "from its presence reaching the account); nodes are not listed in the account's disco#items"),
        Xep(60, "1.26.0", "partial", "the PEP subset: publish with auto-create and publish-options, retract, "
            "items, create, configure, delete, purge, subscribe and unsubscribe, the owner's subscriptions and "
            "affiliations (member, outcast); no subscription options, no other publishers"),
        Xep(115, "1.6.0", "partial", "the server reads caps from presence to filter PEP notifications"),
        Xep(223, "1.1.1"),
        Xep(402, "1.2.0", "complete", "#compat-pep and #compat: kept in step with XEP-0048 through PEP and "
            "through XEP-0049 private storage"),
        Xep(48, "1.2", "complete", "through PEP (storage:bookmarks, XEP-0223) and XEP-0049 private storage, "
            "one list with XEP-0402's"),
        Xep(84, "1.1.4"),
    )
    Settings = PepSettings

    async def start(self, host: ModuleHost) -> None:
        self.host = host
        self.cfg: PepSettings = self.settings  # type: ignore[assignment]
        self.store = PepStore(host.storage)
        await self.store.migrate()
        self.counters: Counter[str] = Counter()
        self._caps: OrderedDict[tuple[str, str], frozenset[str]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Task[tuple[frozenset[str] | None, bool]]] = {}
        self._pending: dict[str, tuple[Jid, asyncio.Future[Stanza]]] = {}
        host.add_account_iq(PUBSUB, "pubsub", self._pubsub)
        host.add_account_iq(OWNER, "pubsub", self._owner)
        host.hook(Hook.DISCO_ACCOUNT_FEATURES, self._disco_features)
        host.hook(Hook.DISCO_ACCOUNT_IDENTITIES, _disco_identities)
        host.hook(Hook.PRESENCE_AVAILABLE, self._available)
        host.hook(Hook.PRESENCE_DELIVERED, self._delivered)
        host.hook(Hook.FILTER_LOCAL_PACKET, self._caps_reply, 10)  # before anything spends work on it
        host.hook(Hook.PEP_ITEMS, self._items_for)
        host.hook(Hook.PEP_PUBLISH, self._publish_for)
        if self.cfg.bookmarks_compat:
            host.hook(Hook.PRIVATE_GET, self._private_get)
            host.hook(Hook.PRIVATE_SET, self._private_set)
        host.add_query("pep", "status", self.status)

    def stop(self) -> None:
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(LookupError("the module stopped"))
        self._pending.clear()

    def status(self) -> dict[str, Any]:
        """This member's PEP activity (``pep status`` on the control socket)."""
        return {**self.counters, "cachedCaps": len(self._caps), "pendingCaps": len(self._pending)}

    # -- disco ------------------------------------------------------------------------------------------

    def _disco_features(self, features: set[str], user: Jid) -> set[str]:
        extra = set(p.FEATURES)
        if self.cfg.bookmarks_compat:
            extra.add(p.BOOKMARKS2_COMPAT_PEP)
            if self._private_enabled():
                extra.add(p.BOOKMARKS2_COMPAT)
        return features | extra

    def _private_enabled(self) -> bool:
        """Whether XEP-0049 is served here (the private module's own ``enabled``), for ``#compat``."""
        table = self.host.settings.modules.get("private") or {}
        return bool(table.get("enabled", True))

    # -- the service: <pubsub xmlns='http://jabber.org/protocol/pubsub'/> ----------------------------------

    async def _pubsub(self, req: IqRequest) -> ET.Element | None:
        owner = req.to
        if owner.local is None:
            raise errors.ServiceUnavailable()
        request = p.parse_request(req.stanza.type or "", req.payload)
        mine = req.sender.bare == owner
        if isinstance(request, p.Items):
            return await self._items(req, owner, request, mine)
        if isinstance(request, p.Subscriptions):
            # The requester's explicit subscriptions (those by presence and caps are implicit).
            out = ET.Element(_P + "pubsub")
            sub = ET.SubElement(out, _P + "subscriptions")
            if request.node:
                sub.set("node", request.node)
            for node, jid in await self.store.subscribers(owner, request.node, str(req.sender.bare)):
                ET.SubElement(sub, _P + "subscription", {"node": node, "jid": jid, "subscription": "subscribed"})
            return out
        if isinstance(request, p.Affiliations):
            out = ET.Element(_P + "pubsub")
            affs = ET.SubElement(out, _P + "affiliations")
            who = str(req.sender.bare)
            for node, config in (await self.store.nodes(owner)).items():
                aff = "owner" if mine else config.affiliation(who)
                if request.node in (None, node) and aff != "none":
                    ET.SubElement(affs, _P + "affiliation", {"node": node, "affiliation": aff})
            return out
        if isinstance(request, p.Subscribe):
            return await self._subscribe(req, owner, request, mine)
        if isinstance(request, p.Unsubscribe):
            await self._unsubscribe(req, owner, request)
            return None
        if not mine:
            raise errors.Forbidden("only the account itself changes its nodes")
        if isinstance(request, p.Publish):
            return await self._publish(req, owner, request)
        if isinstance(request, p.Retract):
            await self._retract(owner, request)
            return None
        if isinstance(request, p.Create):
            await self._create(owner, request)
            return None
        raise errors.BadRequest("not a pubsub request")

    async def _base_config(self, owner: Jid, node: str, access_model: str | None = None) -> NodeConfig:
        """A new node's configuration before options: the defaults (``access_model`` instead of
        the default one, when a module asks), and for the XEP-0084 nodes the other one's access
        model."""
        base = p.default_config(node)
        if access_model is not None:
            base = replace(base, access_model=access_model)
        sibling = _AVATAR_PAIR.get(node)
        if sibling is not None:
            other = await self.store.node(owner, sibling)
            if other is not None:
                base = replace(base, access_model=other.access_model)
        return base

    async def _publish(self, req: IqRequest, owner: Jid, request: p.Publish) -> ET.Element:
        item_id = request.item_id or uuid.uuid4().hex
        await self._put(owner, request.node, item_id, request.payload, str(req.sender),
                        await self._base_config(owner, request.node), request.options)
        out = ET.Element(_P + "pubsub")
        ET.SubElement(ET.SubElement(out, _P + "publish", {"node": request.node}), _P + "item", {"id": item_id})
        return out

    async def _put(self, owner: Jid, node: str, item_id: str, payload: ET.Element, publisher: str,
                   base: NodeConfig, options: Any = None, origin: str = "") -> None:
        """Store an item — a new node made from ``base`` and the publish-options — and tell the
        subscribers, the other bookmarks view and the modules following the node (``origin``: the
        module publishing on the account's behalf, "" for the account itself)."""
        data = serialize(payload)
        if len(data) > self.cfg.max_payload:
            self.host.refused("modules.pep.max_payload")
            raise p.PayloadTooBig(f"an item's payload has at most {self.cfg.max_payload} bytes")
        cap = self.cfg.max_items_per_node

        def decide(existing: NodeConfig | None, count: int) -> NodeConfig:
            if existing is not None:
                if options:
                    try:
                        met = p.preconditions_met(existing, options, cap)
                    except FormValueError as e:
                        raise errors.BadRequest(str(e)) from None
                    if not met:
                        raise p.PreconditionNotMet("the node's configuration differs from the publish-options")
                return existing
            if count >= self.cfg.max_nodes_per_user:
                self.host.refused("modules.pep.max_nodes_per_user")
                raise p.MaxNodesExceeded(f"an account has at most {self.cfg.max_nodes_per_user} nodes")
            if not options:
                return base
            try:
                return p.apply_fields(base, options, cap)
            except FormValueError as e:
                raise errors.BadRequest(str(e)) from None
            except FormUnsupported as e:
                raise p.PreconditionNotMet(str(e)) from None

        published = await self.store.publish(owner, node, item_id, data, publisher, decide, cap)
        self.counters["published"] += 1
        config = published.config
        await self._notify(owner, node, config, p.items_event(
            str(owner), node, [(item_id, payload if config.deliver_payloads else None)], _msg_id()))
        await self._compat(owner, node)
        await self._changed(owner, node, origin)

    async def _retract(self, owner: Jid, request: p.Retract) -> None:
        config = await self.store.node(owner, request.node)
        if config is None:
            raise errors.ItemNotFound("no such node")
        removed = await self.store.retract(owner, request.node, request.item_ids)
        if not removed:
            raise errors.ItemNotFound("no such item")
        notify = config.notify_retract if request.notify is None else request.notify
        if notify:
            await self._notify(owner, request.node, config, p.retract_event(str(owner), request.node, removed,
                                                                             _msg_id()))
        await self._compat(owner, request.node)
        await self._changed(owner, request.node)

    async def _create(self, owner: Jid, request: p.Create) -> None:
        base = await self._base_config(owner, request.node)
        cap = self.cfg.max_items_per_node
        form = request.config

        def decide(existing: NodeConfig | None, count: int) -> NodeConfig:
            if existing is not None:
                raise errors.StanzaConflict("the node exists")
            if count >= self.cfg.max_nodes_per_user:
                self.host.refused("modules.pep.max_nodes_per_user")
                raise p.MaxNodesExceeded(f"an account has at most {self.cfg.max_nodes_per_user} nodes")
            return self._configured(base, form, cap) if form else base

        await self.store.create(owner, request.node, decide)

    @staticmethod
    def _configured(config: NodeConfig, form: dict[str, list[str]], cap: int) -> NodeConfig:
        try:
            return p.apply_fields(config, form, cap)
        except FormValueError as e:
            raise errors.BadRequest(str(e)) from None
        except FormUnsupported as e:
            if "access_model" in str(e):
                raise p.UnsupportedAccessModel(str(e)) from None
            raise errors.NotAcceptable(str(e)) from None

    async def _items(self, req: IqRequest, owner: Jid, request: p.Items, mine: bool) -> ET.Element:
        config = await self.store.node(owner, request.node)
        if config is None:
            raise errors.ItemNotFound("no such node")
        if not mine:
            p.may_read(config, owner=False, subscribed=await self._subscriber(owner, req.sender),
                       affiliation=config.affiliation(str(req.sender.bare)))
        found = await self.store.items(owner, request.node, request.max_items, request.item_ids)
        if request.item_ids and not found:
            raise errors.ItemNotFound("no such item")
        out = ET.Element(_P + "pubsub")
        items = ET.SubElement(out, _P + "items", {"node": request.node})
        for item in found:
            ET.SubElement(items, _P + "item", {"id": item.item_id}).append(_payload(item))
        return out

    # -- explicit subscriptions (XEP-0060 §6.1, §6.2) ------------------------------------------------------

    def _own_jid(self, req: IqRequest, given: str) -> Jid:
        """The JID a (un)subscribe names: the requester's, bare or full (§6.1.3.1: JIDs do not match)."""
        try:
            jid = Jid.parse(given)
        except InvalidJid:
            raise p.InvalidJid("not a JID") from None
        if jid.bare != req.sender.bare:
            raise p.InvalidJid("one subscribes only the JID one speaks from")
        return jid

    async def _subscribe(self, req: IqRequest, owner: Jid, request: p.Subscribe, mine: bool) -> ET.Element:
        jid = self._own_jid(req, request.jid)
        config = await self.store.node(owner, request.node)
        if config is None:
            raise errors.ItemNotFound("no such node")
        if not mine:
            p.may_read(config, owner=False, subscribed=await self._subscriber(owner, req.sender),
                       affiliation=config.affiliation(str(jid.bare)))
        if not await self.store.subscribe(owner, request.node, jid):
            raise errors.ItemNotFound("no such node")
        self.counters["subscribed"] += 1
        if config.send_last_published_item != "never" and config.deliver_notifications:
            last = await self.store.items(owner, request.node, 1)
            if last:  # §6.1.7: the last item, once the subscription result is on its way
                payload = _payload(last[-1]) if config.deliver_payloads else None
                event = p.items_event(str(owner), request.node, [(last[-1].item_id, payload)], _msg_id(),
                                      delay=p.stamp(last[-1].created))
                self.host.spawn(self._guard(self._to_subscriber(jid, event), f"the last item to {jid}"))
        return p.subscription_element(request.node, str(jid), "subscribed")

    async def _unsubscribe(self, req: IqRequest, owner: Jid, request: p.Unsubscribe) -> None:
        jid = self._own_jid(req, request.jid)
        if await self.store.node(owner, request.node) is None:
            raise errors.ItemNotFound("no such node")
        if not await self.store.unsubscribe(owner, request.node, [str(jid)]):
            raise p.NotSubscribed()

    async def _subscriber(self, owner: Jid, who: Jid) -> bool:
        item = await self.host.storage.get_roster_item(owner.domain, owner.local or "", str(who.bare))
        return item is not None and item.subscription in ("from", "both")

    # -- the owner's use cases: <pubsub xmlns='…#owner'/> --------------------------------------------------

    async def _owner(self, req: IqRequest) -> ET.Element | None:
        owner = req.to
        if owner.local is None:
            raise errors.ServiceUnavailable()
        request = p.parse_request(req.stanza.type or "", req.payload)
        if req.sender.bare != owner:
            raise errors.Forbidden("only the account itself manages its nodes")
        cap = self.cfg.max_items_per_node
        out = ET.Element(_O + "pubsub")
        if isinstance(request, p.GetDefault):
            ET.SubElement(out, _O + "default").append(p.config_form(p.default_config(""), cap))
            return out
        node = getattr(request, "node", "")
        config = await self.store.node(owner, node)
        if config is None:
            raise errors.ItemNotFound("no such node")
        if isinstance(request, p.GetConfig):
            ET.SubElement(out, _O + "configure", {"node": node}).append(p.config_form(config, cap))
            return out
        if isinstance(request, p.SetConfig):
            if request.form is not None:
                await self._configure(owner, node, config, self._configured(config, request.form, cap))
            return None
        if isinstance(request, p.Delete):
            explicit = await self.store.subscribers(owner, node)  # before they go with the node
            if await self.store.delete(owner, node):
                self.counters["deleted"] += 1
                if config.notify_delete:
                    await self._notify(owner, node, config, p.delete_event(str(owner), node, _msg_id()), explicit)
                await self._compat(owner, node, removed=True)
                await self._changed(owner, node)
            return None
        if isinstance(request, p.Purge):
            if await self.store.purge(owner, node):
                await self._notify(owner, node, config, p.purge_event(str(owner), node, _msg_id()))
                await self._compat(owner, node, removed=True)
                await self._changed(owner, node)
            return None
        if isinstance(request, p.OwnerSubscriptions):
            if request.change:
                await self._manage_subscriptions(owner, node, request.entries)
                return None
            subs = ET.SubElement(out, _O + "subscriptions", {"node": node})
            for _, jid in await self.store.subscribers(owner, node):
                ET.SubElement(subs, _O + "subscription", {"jid": jid, "subscription": "subscribed"})
            return out
        if isinstance(request, p.OwnerAffiliations):
            if request.change:
                await self._modify_affiliations(owner, node, config, request.entries)
                return None
            affs = ET.SubElement(out, _O + "affiliations", {"node": node})
            ET.SubElement(affs, _O + "affiliation", {"jid": str(owner), "affiliation": "owner"})
            for jid, aff in config.affiliations:
                ET.SubElement(affs, _O + "affiliation", {"jid": jid, "affiliation": aff})
            return out
        raise errors.BadRequest("not a pubsub#owner request")

    async def _manage_subscriptions(self, owner: Jid, node: str, entries: tuple[tuple[str, str], ...]) -> None:
        """XEP-0060 §8.8.2: the owner subscribes others (whatever the access model) or removes them."""
        for given, state in entries:
            try:
                jid = Jid.parse(given)
            except InvalidJid:
                raise errors.JidMalformed(f"not a JID: {given!r}") from None
            if state == "subscribed":
                await self.store.subscribe(owner, node, jid)
            else:
                await self.store.unsubscribe(owner, node, [str(jid)])

    async def _modify_affiliations(self, owner: Jid, node: str, config: NodeConfig,
                                   entries: tuple[tuple[str, str], ...]) -> None:
        """XEP-0060 §8.9.2: members read a whitelist node; outcasts nothing (and lose their
        subscriptions).  The owner's own affiliation is not changed."""
        changes: dict[str, str] = {}
        for given, aff in entries:
            try:
                jid = Jid.parse(given).bare
            except InvalidJid:
                raise errors.JidMalformed(f"not a JID: {given!r}") from None
            if jid == owner:
                raise errors.NotAcceptable("the owner stays the owner")
            changes[str(jid)] = aff
        new = config.with_affiliations(changes)
        if len(new.affiliations) > self.cfg.max_affiliations:
            self.host.refused("modules.pep.max_affiliations")
            raise errors.NotAcceptable(f"a node has at most {self.cfg.max_affiliations} affiliations")
        await self.store.configure(owner, node, new, self.cfg.max_items_per_node)
        outcasts = {jid for jid, aff in changes.items() if aff == "outcast"}
        if outcasts:
            gone = [jid for _, jid in await self.store.subscribers(owner, node) if str(Jid.parse(jid).bare) in outcasts]
            await self.store.unsubscribe(owner, node, gone)

    async def _configure(self, owner: Jid, node: str, old: NodeConfig, new: NodeConfig) -> None:
        cap = self.cfg.max_items_per_node
        await self.store.configure(owner, node, new, cap)
        sibling = _AVATAR_PAIR.get(node)
        if sibling is not None and new.access_model != old.access_model:
            other = await self.store.node(owner, sibling)
            if other is not None and other.access_model != new.access_model:
                await self.store.configure(owner, sibling, replace(other, access_model=new.access_model), cap)

    # -- notifications ------------------------------------------------------------------------------------

    async def _notify(self, owner: Jid, node: str, config: NodeConfig, event: Stanza,
                      explicit: list[tuple[str, str]] | None = None) -> None:
        """``event`` to the owner's available resources; to the resources of presence subscribers
        that asked for ``node`` (here, on the other members, in the other regions and domains)
        and to the explicit subscribers — each only if the access model lets it read the node."""
        if not config.deliver_notifications:
            return
        self.counters["events"] += 1
        self.host.deliver_all(owner, event)
        if explicit is None:
            explicit = await self.store.subscribers(owner, node)
        if config.access_model == "whitelist" and not explicit and not any(
                aff == "member" for _, aff in config.affiliations):
            return  # the owner's alone (XEP-0223 private nodes, bookmarks): no roster read
        roster, _ = await self.host.storage.get_roster(owner.domain, owner.local or "")
        subscribed: set[str] = set()
        for item in roster:
            if item.subscription in ("from", "both"):
                try:
                    subscribed.add(str(Jid.parse(item.jid).bare))
                except InvalidJid:
                    continue
        everywhere = {jid for _, jid in explicit if "/" not in jid}  # bare subscriptions: every resource
        which = Fanout(flag=p.notify_flag(node))
        foreign: set[str] = set()
        for bare in subscribed:
            contact = Jid.parse(bare)
            if contact == owner or contact.local is None or bare in everywhere:
                continue
            if not p.may_receive(config, bare, subscribed=True):
                continue
            if contact.domain in self.host.domains:
                self.host.deliver_all(contact, event, which)
            else:
                foreign.add(bare)
        if foreign:
            for full, nodes in await self.store.remote_for(owner):
                if node not in nodes:
                    continue
                try:
                    jid = Jid.parse(full)
                except InvalidJid:
                    continue
                if str(jid.bare) in foreign:
                    await self.host.route(event.with_attrs(to=full))
        for _, given in explicit:
            try:
                jid = Jid.parse(given)
            except InvalidJid:
                continue
            bare = str(jid.bare)
            if jid.bare == owner or not p.may_receive(config, bare, subscribed=bare in subscribed):
                continue
            self.counters["explicit_events"] += 1
            await self._to_subscriber(jid, event)

    async def _to_subscriber(self, jid: Jid, event: Stanza) -> None:
        """An event to an explicit subscription: a bare JID of ours is each of its available
        resources (wherever they are); any other JID is routed as it is."""
        if jid.resource is None and jid.domain in self.host.domains:
            self.host.deliver_all(jid, event)
        else:
            await self.host.route(event.with_attrs(to=str(jid)))

    async def _send_last(self, to: Jid, owners: Iterable[Jid], nodes: Iterable[str]) -> None:
        """XEP-0163 §4.3.2: the last item of each of ``nodes`` of ``owners`` to the resource ``to``."""
        for last in await self.store.last_items(owners, nodes):
            config = last.config
            if config.send_last_published_item != "on_sub_and_presence" or not config.deliver_notifications:
                continue
            if last.owner != to.bare and not p.may_receive(config, str(to.bare), subscribed=True):
                continue
            payload = _payload(last.item) if config.deliver_payloads else None
            event = p.items_event(str(last.owner), last.node, [(last.item.item_id, payload)], _msg_id(),
                                  delay=p.stamp(last.item.created))
            self.counters["last_items"] += 1
            await self.host.route(event.with_attrs(to=str(to)))

    # -- interest: local resources ----------------------------------------------------------------------

    def _available(self, session: LocalSession, initial: bool, priority: int, previous: int) -> None:
        """``presence_available``: (re)learn what the resource wants from its caps, without holding
        up its stream (the answer to our disco#info comes on it)."""
        presence = session.last_presence
        caps = p.caps_of(presence) if presence is not None else None
        state = session.ext.get("pep")
        if not isinstance(state, _Interest):
            state = session.ext["pep"] = _Interest()
        if not initial and state.resolved and caps == state.caps:
            return
        state.caps, state.resolved = caps, False
        state.seq += 1
        self.host.spawn(self._guard(self._interest(session, state, caps, state.seq, initial),
                                    f"the interests of {session.record.jid}"))

    async def _interest(self, session: LocalSession, state: _Interest, caps: Caps | None, seq: int,
                        initial: bool) -> None:
        jid: Jid = session.record.jid
        features = await self._resolve(caps, jid, jid.domain) if caps is not None else frozenset()
        if features is None or state.seq != seq or self.host.local.get(session.record.sid) is not session:
            return  # unknown (the next presence asks again), outdated, or the session is gone
        state.resolved = True
        nodes = p.notify_nodes(features)
        record = session.record
        flags = p.notify_flags(record.flags, nodes)
        if flags != dict(record.flags):
            self.host.update_record(replace(record, flags=flags))
        fresh = nodes if initial else nodes - state.sent
        state.sent = nodes
        if fresh and session.record.available:
            await self._send_last(jid, await self._followed(jid.bare), fresh)

    async def _followed(self, user: Jid) -> list[Jid]:
        """The accounts of this domain whose PEP ``user`` follows: itself, and those whose presence
        it is subscribed to (to/both)."""
        roster, _ = await self.host.storage.get_roster(user.domain, user.local or "")
        owners = [user]
        for item in roster:
            if item.subscription in ("to", "both"):
                try:
                    jid = Jid.parse(item.jid).bare
                except InvalidJid:
                    continue
                if jid.local is not None and jid.domain in self.host.domains and jid != user:
                    owners.append(jid)
        return owners

    # -- interest: contacts of other domains ------------------------------------------------------------

    def _delivered(self, stanza: Stanza, sender: Jid, to: Jid) -> None:
        """``presence_delivered``: a contact of another domain came online, changed its presence,
        or left (same-domain contacts are handled where their sessions are)."""
        if sender.resource is None or sender.domain in self.host.domains or to.local is None:
            return
        if stanza.type == "unavailable":
            self.host.spawn(self._guard(self.store.remote_delete(to, sender), f"forgetting {sender}"))
        elif stanza.type is None:
            self.host.spawn(self._guard(self._remote_interest(to, sender, p.caps_of(stanza)),
                                        f"the interests of {sender}"))

    async def _remote_interest(self, owner: Jid, contact: Jid, caps: Caps | None) -> None:
        """Remember what a contact of another domain wants, if it is in the owner's roster at all:
        its presence may come before its subscription to the owner is approved (alice approves
        bob's request, her presence reaches him, then he approves hers), and no other presence of
        hers follows.  Whether it may receive an event is checked when one is sent; a stranger's
        directed presence is not remembered."""
        item = await self.host.storage.get_roster_item(owner.domain, owner.local or "", str(contact.bare))
        if item is None:
            return
        features = await self._resolve(caps, contact, owner.domain) if caps is not None else frozenset()
        if features is None:
            return
        nodes = p.notify_nodes(features)
        old = await self.store.remote_get(owner, contact)
        if old == nodes or (old is None and not nodes):
            return
        if nodes:
            await self.store.remote_put(owner, contact, nodes)
        else:
            await self.store.remote_delete(owner, contact)
        fresh = nodes - (old or frozenset())
        if fresh and item.subscription in ("from", "both"):
            await self._send_last(contact, [owner], fresh)

    # -- caps: ver → features -----------------------------------------------------------------------------

    async def _resolve(self, caps: Caps, jid: Jid, from_domain: str) -> frozenset[str] | None:
        """The disco#info features behind ``caps`` (None when the resource did not say)."""
        if caps.cacheable:
            hit = self._caps.get(caps.key)
            if hit is not None:
                self._caps.move_to_end(caps.key)
                self.counters["caps_hits"] += 1
                return hit
            shared = self._inflight.get(caps.key)
            if shared is not None:
                features, verified = await asyncio.shield(shared)
                if verified:
                    return features
        task = asyncio.get_running_loop().create_task(self._ask(caps, jid, from_domain))
        if caps.cacheable and caps.key not in self._inflight:
            key = caps.key
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._inflight.pop(key, None) if self._inflight.get(key) is t else None)
        features, _ = await asyncio.shield(task)
        return features

    async def _ask(self, caps: Caps, jid: Jid, from_domain: str) -> tuple[frozenset[str] | None, bool]:
        iq_id = ID_PREFIX + secrets.token_hex(8)
        future: asyncio.Future[Stanza] = asyncio.get_running_loop().create_future()
        self._pending[iq_id] = (jid, future)
        self.counters["caps_queries"] += 1
        try:
            await self.host.route(p.caps_query(from_domain, str(jid), caps, iq_id))
            reply = await asyncio.wait_for(future, self.cfg.caps_timeout)
        except TimeoutError:
            self.counters["caps_timeouts"] += 1
            return None, False
        except LookupError:  # stopping
            return None, False
        finally:
            self._pending.pop(iq_id, None)
        parsed = p.disco_features(reply)
        if parsed is None:
            return None, False
        query, features = parsed
        verified = p.verify_caps(caps, query)
        if verified and self.cfg.caps_cache_size:
            self._caps[caps.key] = features
            while len(self._caps) > self.cfg.caps_cache_size:
                self._caps.popitem(last=False)
        elif not verified:
            self.counters["caps_unverified"] += 1
        return features, verified

    def _caps_reply(self, stanza: Stanza, sender: Jid, to: Jid) -> object:
        """``filter_local_packet``: the answer to one of our disco#info queries is ours."""
        if stanza.name != "iq" or stanza.type not in ("result", "error"):
            return None
        iq_id = stanza.id
        if not iq_id or not iq_id.startswith(ID_PREFIX) or to.local is not None:
            return None
        pending = self._pending.get(iq_id)
        if pending is None or pending[0] != sender:
            return None
        if not pending[1].done():
            pending[1].set_result(stanza)
        return STOP

    # -- bookmarks: XEP-0402 #compat-pep -------------------------------------------------------------------

    async def _compat(self, owner: Jid, node: str, *, removed: bool = False) -> None:
        """Mirror a change of one bookmarks node onto the other.  Deleting or purging the legacy
        node is not mirrored (a client cleaning up after moving to XEP-0402 keeps its bookmarks)."""
        if not self.cfg.bookmarks_compat:
            return
        try:
            if node == BOOKMARKS2:
                await self._to_legacy(owner)
            elif node == BOOKMARKS_LEGACY and not removed:
                await self._to_bookmarks2(owner)
        except StanzaError as e:  # a limit: the other node stays as it was
            log.info("bookmarks of %s not mirrored from %s: %s", owner, node, e)

    async def _to_legacy(self, owner: Jid) -> None:
        cap = self.cfg.max_items_per_node
        items = await self.store.items(owner, BOOKMARKS2)
        before = await self.store.items(owner, BOOKMARKS_LEGACY, 1)
        previous = _payload(before[-1]) if before else None
        storage = p.bookmarks2_to_legacy([(i.item_id, _payload(i)) for i in items], previous)
        data = serialize(storage)
        if before and before[-1].payload == data:
            return
        if len(data) > self.cfg.max_payload:
            raise p.PayloadTooBig("the legacy bookmarks would be too big")
        published = await self.store.publish(owner, BOOKMARKS_LEGACY, "current", data, str(owner),
                                             lambda existing, _count: existing or LEGACY_CONFIG, cap)
        await self._notify(owner, BOOKMARKS_LEGACY, published.config,
                           p.items_event(str(owner), BOOKMARKS_LEGACY, [("current", storage)], _msg_id()))

    async def _to_bookmarks2(self, owner: Jid) -> None:
        cap = self.cfg.max_items_per_node
        last = await self.store.items(owner, BOOKMARKS_LEGACY, 1)
        storage = _payload(last[-1]) if last else None
        if storage is None or storage.tag != f"{{{BOOKMARKS_LEGACY}}}storage":
            return  # nothing (a retracted list) is not "no bookmarks"
        existing = {i.item_id: _payload(i) for i in await self.store.items(owner, BOOKMARKS2)}
        wanted = p.legacy_to_bookmarks2(storage, existing)
        for room, conference in wanted.items():
            old = existing.get(room)
            if old is not None and p.same_conference(old, conference):
                continue
            published = await self.store.publish(owner, BOOKMARKS2, room, serialize(conference), str(owner),
                                                 lambda e, _count: e or BOOKMARKS2_CONFIG, cap)
            await self._notify(owner, BOOKMARKS2, published.config,
                               p.items_event(str(owner), BOOKMARKS2, [(room, conference)], _msg_id()))
        gone = [room for room in existing if room not in wanted]
        if gone:
            removed = await self.store.retract(owner, BOOKMARKS2, gone)
            config = await self.store.node(owner, BOOKMARKS2)
            if removed and config is not None:
                await self._notify(owner, BOOKMARKS2, config,
                                   p.retract_event(str(owner), BOOKMARKS2, removed, _msg_id()))

    # -- bookmarks: XEP-0402 #compat (XEP-0048 through XEP-0049 private storage) ----------------------------

    async def _private_get(self, user: Jid, namespace: str) -> list[ET.Element] | None:
        """``private_get``: XEP-0048 bookmarks are the legacy PEP node's list (kept in step with
        XEP-0402's items), or made from the XEP-0402 items; None while PEP holds neither node."""
        if namespace != BOOKMARKS_LEGACY:
            return None
        legacy, bookmarks2 = await self.store.node(user, BOOKMARKS_LEGACY), await self.store.node(user, BOOKMARKS2)
        if legacy is None and bookmarks2 is None:
            return None
        last = await self.store.items(user, BOOKMARKS_LEGACY, 1) if legacy is not None else []
        if last:
            storage = _payload(last[-1])
            if storage.tag == f"{{{BOOKMARKS_LEGACY}}}storage":
                return [storage]
        if bookmarks2 is None:
            return []
        items = await self.store.items(user, BOOKMARKS2)
        return [p.bookmarks2_to_legacy([(i.item_id, _payload(i)) for i in items], None)]

    async def _private_set(self, user: Jid, namespace: str, elements: list[ET.Element]) -> bool | None:
        """``private_set``: a XEP-0048 client's list is published to the legacy PEP node (with
        notifications), from which the XEP-0402 items follow, as if it had published it there."""
        if namespace != BOOKMARKS_LEGACY:
            return None
        storage = next((e for e in elements if e.tag == f"{{{BOOKMARKS_LEGACY}}}storage"), None)
        if storage is None:
            return None  # not bookmarks after all: kept as private XML
        data = serialize(storage)
        if len(data) > self.cfg.max_payload:
            self.host.refused("modules.pep.max_payload")
            raise p.PayloadTooBig(f"bookmarks of at most {self.cfg.max_payload} bytes")
        cap = self.cfg.max_items_per_node

        def decide(existing: NodeConfig | None, count: int) -> NodeConfig:
            if existing is None and count >= self.cfg.max_nodes_per_user:
                self.host.refused("modules.pep.max_nodes_per_user")
                raise p.MaxNodesExceeded(f"an account has at most {self.cfg.max_nodes_per_user} nodes")
            return existing or LEGACY_CONFIG

        published = await self.store.publish(user, BOOKMARKS_LEGACY, "current", data, str(user), decide, cap)
        self.counters["published"] += 1
        await self._notify(user, BOOKMARKS_LEGACY, published.config,
                           p.items_event(str(user), BOOKMARKS_LEGACY, [("current", storage)], _msg_id()))
        await self._compat(user, BOOKMARKS_LEGACY)
        return True

    # -- other modules: on the account's behalf (XEP-0398 in vcard) -----------------------------------------

    async def _items_for(self, owner: Jid, node: str, item_id: str | None) -> list[tuple[str, ET.Element]]:
        """``pep_items``: the item ``item_id`` of the account's ``node``, or its last one."""
        if item_id is None:
            found = await self.store.items(owner, node, 1)
        else:
            found = await self.store.items(owner, node, item_ids=[item_id])
        return [(i.item_id, _payload(i)) for i in found]

    async def _publish_for(self, owner: Jid, node: str, item_id: str, payload: ET.Element | None, origin: str,
                           access_model: str) -> bool:
        """``pep_publish``: a module publishes (or retracts) on the account's behalf, with the limits
        and notifications of the account's own publish; a new node gets ``access_model`` (a XEP-0084
        node: its sibling's, as for the account's publish)."""
        if payload is None:
            config = await self.store.node(owner, node)
            removed = await self.store.retract(owner, node, [item_id]) if config is not None else []
            if config is not None and removed:
                if config.notify_retract:
                    await self._notify(owner, node, config, p.retract_event(str(owner), node, removed, _msg_id()))
                await self._changed(owner, node, origin)
            return True
        await self._put(owner, node, item_id, payload, str(owner),
                        await self._base_config(owner, node, access_model), origin=origin)
        return True

    async def _changed(self, owner: Jid, node: str, origin: str = "") -> None:
        """``pep_changed`` for the modules that follow a node; their failure is not the request's."""
        if not self.host.hooks.has(Hook.PEP_CHANGED):
            return
        try:
            await self.host.hooks.run_async(Hook.PEP_CHANGED, owner, node, origin)
        except Exception as e:
            log.warning("pep: following %s of %s failed: %s: %s", node, owner, e.__class__.__name__, e)

    # -- helpers -------------------------------------------------------------------------------------------

    async def _guard(self, work: Awaitable[None], what: str) -> None:
        """Background work: a failure (the database away, a stanza error) is logged, not raised."""
        try:
            await work
        except Exception as e:
            log.warning("pep: %s failed: %s: %s", what, e.__class__.__name__, e)


def _disco_identities(identities: list[dict[str, str]], user: Jid) -> list[dict[str, str]]:
    return [*identities, {"category": "pubsub", "type": "pep"}]
