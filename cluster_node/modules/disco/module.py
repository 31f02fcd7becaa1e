"""Service discovery (XEP-0030) for the server and for accounts (XEP-0030 §3: account identity)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ...core.hooks import Hook
from ...core.module import Module, ModuleHost, Xep
from ...core.router import IqRequest
from ...xmpp import errors, ns

__all__ = ["Disco"]

INFO = f"{{{ns.DISCO_INFO}}}"
ITEMS = f"{{{ns.DISCO_ITEMS}}}"


class Disco(Module):
    """Server features are the IQ namespaces modules registered plus the ``disco_server_features``
    fold (features without an IQ: stream-level ones, e.g. XEP-0198 is in stream features)."""

    name = "disco"
    description = "Service Discovery of the server and of accounts"
    xeps = (Xep(30, "2.5rc3"),)
    required = True

    def start(self, host: ModuleHost) -> None:
        self.host = self.s = host
        r = host
        r.add_server_iq(ns.DISCO_INFO, "query", self._server_info)
        r.add_server_iq(ns.DISCO_ITEMS, "query", self._server_items)
        r.add_account_iq(ns.DISCO_INFO, "query", self._account_info)
        r.add_account_iq(ns.DISCO_ITEMS, "query", self._account_items)

    async def _server_info(self, req: IqRequest) -> ET.Element:
        if req.stanza.type != "get":
            raise errors.BadRequest()
        if req.payload.get("node"):
            raise errors.ItemNotFound()
        q = ET.Element(INFO + "query")
        identities = self.host.hooks.fold(Hook.DISCO_SERVER_IDENTITIES,
                                          [{"category": "server", "type": "im", "name": "Meridian"}])
        for identity in identities:
            ET.SubElement(q, INFO + "identity", identity)
        features = self.host.hooks.fold(Hook.DISCO_SERVER_FEATURES, set(self.host.server_features))
        for feature in sorted(features | {ns.DISCO_INFO, ns.DISCO_ITEMS}):
            ET.SubElement(q, INFO + "feature", {"var": feature})
        for extension in self.host.hooks.fold(Hook.DISCO_SERVER_EXTENSIONS, []):
            q.append(extension)
        return q

    async def _server_items(self, req: IqRequest) -> ET.Element:
        if req.stanza.type != "get":
            raise errors.BadRequest()
        q = ET.Element(ITEMS + "query")
        if req.payload.get("node"):
            return q
        for item in self.host.hooks.fold(Hook.DISCO_SERVER_ITEMS, [], req.to):
            ET.SubElement(q, ITEMS + "item", {k: v for k, v in item.items() if v})
        return q

    async def _account_info(self, req: IqRequest) -> ET.Element:
        if req.stanza.type != "get":
            raise errors.BadRequest()
        user = req.to
        if not await self.s.accounts.exists(user.domain, user.local or ""):
            raise errors.ServiceUnavailable()
        if req.sender.bare != user and not await self._subscribed(req):
            raise errors.ServiceUnavailable()  # RFC 6121 §8.5.2.1.3: don't reveal the account
        q = ET.Element(INFO + "query")
        identities = self.host.hooks.fold(Hook.DISCO_ACCOUNT_IDENTITIES,
                                          [{"category": "account", "type": "registered"}], user)
        for identity in identities:
            ET.SubElement(q, INFO + "identity", identity)
        for feature in sorted(self.host.hooks.fold(Hook.DISCO_ACCOUNT_FEATURES, {ns.DISCO_INFO}, user)):
            ET.SubElement(q, INFO + "feature", {"var": feature})
        return q

    async def _account_items(self, req: IqRequest) -> ET.Element:
        if req.stanza.type != "get":
            raise errors.BadRequest()
        user = req.to
        if req.sender.bare != user and not await self._subscribed(req):
            raise errors.ServiceUnavailable()
        q = ET.Element(ITEMS + "query")
        for record in self.s.table.resources(user):  # XEP-0030 §4.3: available resources
            ET.SubElement(q, ITEMS + "item", {"jid": str(record.jid)})
        return q

    async def _subscribed(self, req: IqRequest) -> bool:
        item = await self.s.storage.get_roster_item(req.to.domain, req.to.local or "", str(req.sender.bare))
        return item is not None and item.subscription in ("from", "both")
