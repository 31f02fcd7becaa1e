"""Resolvers of the user schema: every operation acts as the authenticated user, and only as it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.accounts import AccountError
from ..xmpp.jid import Jid
from .admin import contact_view, message_stanza, route_stanza
from .schema import ApiError

if TYPE_CHECKING:
    from .view import NodeView as Node

__all__ = ["user_root"]

Info = Any


class SessionUser:
    def __init__(self, node: Node, user: Jid) -> None:
        self.node, self.user = node, user

    def listResources(self, _: Info) -> list[str]:
        return sorted(r.jid.resource or "" for r in self.node.services.table.resources(self.user))

    def countResources(self, _: Info) -> int:
        return len(self.node.services.table.resources(self.user))


class RosterUser:
    def __init__(self, node: Node, user: Jid) -> None:
        self.node, self.user = node, user

    async def listContacts(self, _: Info) -> list[dict[str, Any]]:
        items, _ver = await self.node.services.storage.get_roster(self.user.domain, self.user.local or "")
        return [contact_view(i) for i in items]


class AccountUser:
    def __init__(self, node: Node, user: Jid) -> None:
        self.node, self.user = node, user

    async def changePassword(self, _: Info, newPassword: str) -> str:
        try:
            await self.node.services.accounts.change_password(self.user.domain, self.user.local or "", newPassword)
        except AccountError as e:
            raise ApiError(str(e)) from None
        return "Password changed"


class StanzaUser:
    def __init__(self, node: Node, user: Jid) -> None:
        self.node, self.user = node, user

    async def sendMessage(self, _: Info, to: Jid, body: str, **kw: Jid | None) -> dict[str, Any]:
        sender = kw.get("from") or self.user
        if sender.bare != self.user:
            raise ApiError(f"'from' must be {self.user} or one of its full JIDs")
        return await route_stanza(self.node, message_stanza(sender, to, body))


def user_root(node: Node, user: Jid) -> dict[str, Any]:
    return {"session": SessionUser(node, user), "roster": RosterUser(node, user),
            "account": AccountUser(node, user), "stanza": StanzaUser(node, user)}
