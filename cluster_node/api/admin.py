"""Resolvers of the admin schema: one object per category, its methods the operations.

Account operations need only the account service, so ``meridian ctl account …`` runs them in
process against storage when no node is running; the rest need the running :class:`Node`.
"""

from __future__ import annotations

import inspect
import secrets
import time
import xml.etree.ElementTree as ET
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from ..core.accounts import AccountError, Accounts
from ..core.hooks import Hook
from ..net.tls import reload_certificates
from ..xmpp import ns
from ..xmpp.jid import InvalidJid, Jid
from ..xmpp.stanza import Stanza
from .schema import ApiError

if TYPE_CHECKING:
    from .view import NodeView as Node

__all__ = ["admin_root", "contact_view", "message_stanza", "route_stanza"]

Info = Any  # graphql.GraphQLResolveInfo; unused by the resolvers


def _need(node: Node | None, what: str) -> Node:
    if node is None:
        raise ApiError(f"{what} needs a running node (start it with `meridian node`, or use its API)")
    return node


def _user(jid: Jid, accounts: Accounts) -> tuple[str, str]:
    if jid.local is None:
        raise ApiError(f"{jid} is not a user JID (user@domain)")
    try:
        return accounts.normalise(jid.domain, jid.local)
    except AccountError as e:
        raise ApiError(str(e)) from None


class AccountAdmin:
    """MongooseIM ``account``: registerUser, removeUser, listUsers, countUsers, checkUser, …"""

    def __init__(self, accounts: Accounts, node: Node | None) -> None:
        self.accounts = accounts
        self.node = node

    async def registerUser(self, _: Info, domain: str, password: str, username: str | None = None
                           ) -> dict[str, str]:
        try:
            jid = await self.accounts.register(domain, username or secrets.token_hex(8), password)
        except AccountError as e:
            raise ApiError(str(e)) from None
        return {"jid": jid, "message": f"User {jid} successfully registered"}

    async def removeUser(self, _: Info, user: Jid) -> dict[str, str]:
        domain, local = _user(user, self.accounts)
        try:
            await self.accounts.remove(domain, local)
        except AccountError as e:
            raise ApiError(str(e)) from None
        jid = f"{local}@{domain}"
        if self.node is not None:  # the account is gone: so are its sessions
            for record in self.node.services.table.resources(Jid(local, domain, None)):
                self.node.sessions.kick(record, "not-authorized", "account removed")
        return {"jid": jid, "message": f"User {jid} successfully unregistered"}

    async def changeUserPassword(self, _: Info, user: Jid, newPassword: str) -> dict[str, str]:
        domain, local = _user(user, self.accounts)
        try:
            await self.accounts.change_password(domain, local, newPassword)
        except AccountError as e:
            raise ApiError(str(e)) from None
        return {"jid": f"{local}@{domain}", "message": "Password changed"}

    async def listUsers(self, _: Info, domain: str) -> list[str]:
        domain = self._domain(domain)
        return [f"{u}@{domain}" for u in await self.accounts.storage.list_accounts(domain)]

    async def countUsers(self, _: Info, domain: str) -> int:
        return await self.accounts.storage.count_accounts(self._domain(domain))

    async def checkUser(self, _: Info, user: Jid) -> dict[str, Any]:
        domain, local = _user(user, self.accounts)
        exists = await self.accounts.storage.account_exists(domain, local)
        return {"exist": exists, "message": f"User {local}@{domain} {'exists' if exists else 'does not exist'}"}

    async def checkPassword(self, _: Info, user: Jid, password: str) -> dict[str, Any]:
        from .auth import check_password

        domain, local = _user(user, self.accounts)
        if not await self.accounts.storage.account_exists(domain, local):
            raise ApiError(f"user {local}@{domain} does not exist")
        correct = await check_password(self.accounts, domain, local, password)
        return {"correct": correct, "message": "Password is correct" if correct else "Password is not correct"}

    def _domain(self, domain: str) -> str:
        domain = domain.lower().rstrip(".")
        if domain not in self.accounts.domains:
            raise ApiError(f"domain {domain!r} is not served here (served: {', '.join(self.accounts.domains)})")
        return domain


def _session_view(record: Any, now: float) -> dict[str, Any]:
    return {"user": record.jid, "connection": "c2s", "priority": record.priority, "node": record.node,
            "uptime": int(now - record.created), "available": record.available}


class SessionAdmin:
    """MongooseIM ``session``: the region's sessions as this member's replicated table has them."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _records(self, domain: str | None) -> list[Any]:
        table = self.node.services.table
        records = [r for r in table if domain is None or r.jid.domain == domain.lower()]
        return sorted(records, key=lambda r: str(r.jid))

    def listSessions(self, _: Info, domain: str | None = None) -> list[dict[str, Any]]:
        now = time.time()
        return [_session_view(r, now) for r in self._records(domain)]

    def countSessions(self, _: Info, domain: str | None = None) -> int:
        return len(self.node.services.table) if domain is None else len(self._records(domain))

    def listUserSessions(self, _: Info, user: Jid) -> list[dict[str, Any]]:
        now = time.time()
        return [_session_view(r, now) for r in self.node.services.table.resources(user.bare)]

    def countUserResources(self, _: Info, user: Jid) -> int:
        return len(self.node.services.table.resources(user.bare))

    def kickUser(self, _: Info, user: Jid, reason: str) -> dict[str, str]:
        if user.resource is None:
            raise ApiError(f"{user} is a bare JID: kickUser needs a full JID (user@domain/resource)")
        record = self.node.services.table.lookup(user)
        if record is None:
            raise ApiError(f"no active session for {user}")
        self.node.sessions.kick(record, "policy-violation", reason or None)
        return {"jid": str(user), "message": "Session kicked"}


def message_stanza(from_: Jid, to: Jid, body: str | None, *, kind: str = "chat",
                   subject: str | None = None) -> Stanza:
    """A ``<message/>`` built by the server on behalf of ``from_`` (RFC 6121 §5.2)."""
    el = ET.Element(f"{{{ns.CLIENT}}}message",
                    {"from": str(from_), "to": str(to), "type": kind, "id": secrets.token_hex(8)})
    if subject is not None:
        ET.SubElement(el, f"{{{ns.CLIENT}}}subject").text = subject
    if body is not None:
        ET.SubElement(el, f"{{{ns.CLIENT}}}body").text = body
    return Stanza(el)


async def route_stanza(node: Node, stanza: Stanza) -> dict[str, Any]:
    await node.services.router.route(stanza)
    return {"id": stanza.id}


async def _check_sender(node: Node, sender: Jid) -> None:
    if sender.local is None or sender.domain not in node.services.settings.domains:
        raise ApiError(f"{sender} is not a user of a domain served here")
    if not await node.services.storage.account_exists(sender.domain, sender.local):
        raise ApiError(f"user {sender.bare} does not exist")


class StanzaAdmin:
    """MongooseIM ``stanza``: messages and raw stanzas sent on a local user's behalf."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def sendMessage(self, _: Info, to: Jid, body: str, **kw: Jid) -> dict[str, Any]:
        sender = kw["from"]
        await _check_sender(self.node, sender)
        return await route_stanza(self.node, message_stanza(sender, to, body))

    async def sendMessageHeadLine(self, _: Info, to: Jid, subject: str | None = None, body: str | None = None,
                                  **kw: Jid) -> dict[str, Any]:
        sender = kw["from"]
        await _check_sender(self.node, sender)
        return await route_stanza(self.node, message_stanza(sender, to, body, kind="headline", subject=subject))

    async def sendStanza(self, _: Info, stanza: str | None = None) -> dict[str, Any]:
        if not stanza:
            raise ApiError("stanza: an XML element is required")
        limit = self.node.services.settings.limits.max_stanza_size
        if len(stanza.encode()) > limit:
            raise ApiError(f"stanza: larger than {limit} bytes")
        if "<!" in stanza or "<?" in stanza:
            raise ApiError("stanza: DTDs, comments and processing instructions are not allowed")
        try:
            wrapper = ET.fromstring(f'<w xmlns="{ns.CLIENT}">{stanza}</w>')
        except ET.ParseError as e:
            raise ApiError(f"stanza: not well-formed XML ({e})") from None
        children = list(wrapper)
        if len(children) != 1 or (wrapper.text or "").strip() or (children[0].tail or "").strip():
            raise ApiError("stanza: exactly one element is required")
        el = children[0]
        if el.tag not in (f"{{{ns.CLIENT}}}{k}" for k in ("message", "presence", "iq")):
            raise ApiError("stanza: must be a message, presence or iq in jabber:client")
        try:
            sender = Jid.parse(el.get("from", ""))
            Jid.parse(el.get("to", ""))
        except InvalidJid as e:
            raise ApiError(f"stanza: 'from' and 'to' must be valid JIDs ({e})") from None
        if sender.domain not in self.node.services.settings.domains:
            raise ApiError(f"stanza: 'from' {sender} is not of a domain served here")
        if el.get("id") is None:
            el.set("id", secrets.token_hex(8))
        return await route_stanza(self.node, Stanza(el))


_ASK = {True: "OUT", False: "NONE"}


def contact_view(item: Any) -> dict[str, Any]:
    return {"jid": item.jid, "name": item.name, "groups": list(item.groups),
            "subscription": item.subscription.upper(), "ask": _ASK[bool(item.ask)]}


class RosterAdmin:
    """MongooseIM ``roster``: a user's contacts, changed with the same pushes a client's set makes."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _user(self, user: Jid) -> Jid:
        domain, local = _user(user, self.node.services.accounts)
        return Jid(local, domain, None)

    async def listContacts(self, _: Info, user: Jid) -> list[dict[str, Any]]:
        u = self._user(user)
        items, _ver = await self.node.services.storage.get_roster(u.domain, u.local or "")
        return [contact_view(i) for i in items]

    async def getContact(self, _: Info, user: Jid, contact: Jid) -> dict[str, Any] | None:
        u = self._user(user)
        item = await self.node.services.storage.get_roster_item(u.domain, u.local or "", str(contact.bare))
        if item is None:
            raise ApiError(f"{contact.bare} is not in the roster of {u}")
        return contact_view(item)

    async def addContact(self, _: Info, user: Jid, contact: Jid, name: str | None = None,
                         groups: list[str] | None = None) -> str:
        from ..storage.base import RosterItem

        u = self._user(user)
        if contact.resource is not None:
            raise ApiError("contact: roster items are bare JIDs")
        s = self.node.services
        old = await s.storage.get_roster_item(u.domain, u.local or "", str(contact))
        item = RosterItem(jid=str(contact), name=name or None, subscription=old.subscription if old else "none",
                          ask=old.ask if old else False, groups=tuple(dict.fromkeys(groups or ())))
        ver = await s.storage.put_roster_item(u.domain, u.local or "", item)
        s.hooks.run(Hook.ROSTER_CHANGED, u, item, ver, None)
        return "Contact added successfully"

    async def deleteContact(self, _: Info, user: Jid, contact: Jid) -> str:
        u = self._user(user)
        s = self.node.services
        await s.hooks.run_async(Hook.ROSTER_REMOVE, u, contact.bare)
        ver = await s.storage.delete_roster_item(u.domain, u.local or "", str(contact.bare))
        if ver is None:
            raise ApiError(f"{contact.bare} is not in the roster of {u}")
        s.hooks.run(Hook.ROSTER_CHANGED, u, None, ver, str(contact.bare))
        return "Contact deleted successfully"

    async def subscription(self, _: Info, user: Jid, contact: Jid, action: str | None = None) -> str:
        """RFC 6121 §3: the presence subscription stanza the user's client would send."""
        ptype = {"INVITE": "subscribe", "ACCEPT": "subscribed", "DECLINE": "unsubscribed",
                 "CANCEL": "unsubscribe"}.get(action or "")
        if ptype is None:
            raise ApiError("action: one of INVITE, ACCEPT, DECLINE, CANCEL is required")
        u = self._user(user)
        await self.node.services.hooks.first_async(Hook.SUBSCRIPTION_OUT, u, contact.bare, ptype)
        return "Subscription stanza with type " + ptype + " sent successfully"


class CetsAdmin:
    """MongooseIM ``cets``: the region's replicated tables, from this member's view."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def _ask(self, op: str) -> Any:
        query = self.node.queries.get(("cets", op))
        if query is None:
            raise ApiError("the cluster is not enabled on this node")
        try:
            result = query()
            return await result if inspect.isawaitable(result) else result
        except LookupError as e:
            raise ApiError(str(e)) from None

    async def systemInfo(self, _: Info) -> dict[str, Any]:
        info = dict(await self._ask("systemInfo"))
        partial = sorted({*info.get("remoteNodesWithUnknownTables", []), *info.get("remoteNodesWithMissingTables", [])})
        info.setdefault("partiallyJoinedNodes", partial)
        info.setdefault("partiallyJoinedTables",
                        sorted({*info.get("remoteUnknownTables", []), *info.get("remoteMissingTables", [])}))
        for key in ("unavailableNodes", "availableNodes", "joinedNodes", "partiallyJoinedNodes", "discoveredNodes"):
            info[key + "Count"] = len(info.get(key) or [])
        return info

    async def tableInfo(self, _: Info) -> list[dict[str, Any]]:
        return list(await self._ask("tableInfo"))


def _version() -> str:
    try:
        return version("meridian")
    except PackageNotFoundError:
        return "unknown"


class ServerAdmin:
    def __init__(self, node: Node) -> None:
        self.node = node

    def status(self, _: Info) -> dict[str, Any]:
        return {"statusCode": "RUNNING", "message": f"The node {self.node.services.node} is running",
                "version": _version(), "commitHash": None}

    def refusals(self, _: Info) -> list[dict[str, Any]]:
        """What ``meridian_refusals_total`` reports, for an operator without Prometheus."""
        return [{"limit": limit, "count": count} for limit, count in sorted(self.node.services.refusals.items())]

    def reloadCertificates(self, _: Info) -> dict[str, Any]:
        reloaded, failed = reload_certificates()
        return {"reloaded": reloaded, "errors": failed}


async def _query(node: Node, key: tuple[str, str], **args: Any) -> Any:
    query = node.queries.get(key)
    if query is None:
        raise ApiError(f"{key[0]} is served by gateways; this process ({node.services.node}) is a node")
    try:
        result = query(**args)
        return await result if inspect.isawaitable(result) else result
    except (LookupError, ValueError) as e:
        raise ApiError(str(e)) from None


class GDistribAdmin:
    """Meridian's global distribution, from the gateway's ``gdistrib`` queries."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def status(self, _: Info) -> Any:
        return await _query(self.node, ("gdistrib", "status"))

    async def region(self, _: Info) -> str:
        return str((await _query(self.node, ("gdistrib", "status")))["region"])

    async def regions(self, _: Info) -> list[str]:
        st = await _query(self.node, ("gdistrib", "status"))
        return [st["region"], *sorted(r for r in st["links"] if r != st["region"])]

    async def links(self, _: Info) -> list[dict[str, Any]]:
        st = await _query(self.node, ("gdistrib", "status"))
        return [{"region": region, **link} for region, link in sorted(st["links"].items())]

    async def lookup(self, _: Info, jid: Jid) -> Any:
        return await _query(self.node, ("gdistrib", "lookup"), jid=str(jid))


class S2SAdmin:
    def __init__(self, node: Node) -> None:
        self.node = node

    async def connections(self, _: Info) -> list[dict[str, Any]]:
        if ("s2s", "connections") not in self.node.queries:
            return []
        return list(await _query(self.node, ("s2s", "connections")))


class FastAdmin:
    """Meridian's ``fast``: the FAST module's tokens (a node without the module says so)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def _module(self, name: str, **args: Any) -> Any:
        if ("fast", name) not in self.node.queries:
            raise ApiError("the fast module is not running on this node ([modules.fast] enabled = false)")
        return await _query(self.node, ("fast", name), **args)

    async def listTokens(self, _: Info, user: Jid) -> Any:
        return await self._module("tokens", jid=str(user.bare))

    async def revokeTokens(self, _: Info, user: Jid, agent: str | None = None) -> Any:
        return await self._module("revoke", jid=str(user.bare), agent=agent)


class MucAdmin:
    """MongooseIM's ``muc``: the MUC module's rooms (a node without the module says so)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def _module(self, name: str, **args: Any) -> Any:
        if ("muc", name) not in self.node.queries:
            raise ApiError("the muc module is not running on this node ([modules.muc] enabled = false)")
        return await _query(self.node, ("muc", name), **args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def resolve(_: Info, **args: Any) -> Any:
            args.pop("from_", None)
            if name == "listRooms":
                args.pop("from", None)  # MongooseIM filters by the asker; an admin sees every room
            return await self._module(name, **args)

        return resolve


class ThrottleAdmin:
    """Authentication throttling: addresses banned after too many failures, and lifting a ban."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def listBans(self, _: Info) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [{"address": b.address, "seconds": round(b.until - now, 1), "reason": b.reason}
                for b in self.node.services.auth_throttle.bans(now)]

    def liftBan(self, _: Info, address: str) -> bool:
        """On this member only; each member keeps its own copy of the region's bans."""
        return self.node.services.auth_throttle.lift(address)


class _Unavailable:
    """A category that needs a running node, asked of ``meridian ctl`` with none running."""

    def __init__(self, category: str) -> None:
        self.category = category

    def __getattr__(self, name: str) -> Any:
        def fail(*_: Any, **__: Any) -> None:
            _need(None, f"{self.category} {name}")
        return fail


def admin_root(accounts: Accounts, node: Node | None) -> dict[str, Any]:
    """The root value of the admin schema: one object per category."""
    # The admin is trusted like ``meridian ctl``: the in-band registration's password policy
    # ([registration] min_password_length) is for users registering themselves.
    admin_accounts = Accounts(accounts.storage, accounts.domains, iterations=accounts.iterations,
                              min_password_length=1, login_cache=accounts.login_cache)
    root: dict[str, Any] = {"account": AccountAdmin(admin_accounts, node)}
    categories = {"session": SessionAdmin, "stanza": StanzaAdmin, "roster": RosterAdmin, "cets": CetsAdmin,
                  "server": ServerAdmin, "gdistrib": GDistribAdmin, "s2s": S2SAdmin, "fast": FastAdmin,
                  "throttle": ThrottleAdmin, "muc": MucAdmin}
    for name, cls in categories.items():
        root[name] = cls(node) if node is not None else _Unavailable(name)
    return root
