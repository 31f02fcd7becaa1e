"""XMPP Ping (XEP-0199): the server answers pings to itself and to an account's bare JID."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ..core.router import IqRequest
from ..core.services import Services
from ..xmpp import errors, ns

__all__ = ["Ping"]


class Ping:
    def __init__(self, services: Services) -> None:
        services.router.add_server_iq(ns.PING, "ping", self._pong)
        services.router.add_account_iq(ns.PING, "ping", self._pong)

    async def _pong(self, req: IqRequest) -> ET.Element | None:
        if req.stanza.type != "get":
            raise errors.BadRequest()
        return None
