"""XMPP Ping (XEP-0199): the server answers pings to itself and to an account's bare JID."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ...core.module import Module, ModuleHost, Xep
from ...core.router import IqRequest
from ...xmpp import errors, ns

__all__ = ["Ping"]


class Ping(Module):
    """The smallest module: two IQ handlers (docs/modules.md walks through it)."""

    name = "ping"
    description = "XMPP Ping: the server and accounts answer pings"
    xeps = (Xep(199, "2.0.1"),)

    def start(self, host: ModuleHost) -> None:
        self.host = host
        host.add_server_iq(ns.PING, "ping", self._pong)
        host.add_account_iq(ns.PING, "ping", self._pong)

    async def _pong(self, req: IqRequest) -> ET.Element | None:
        if req.stanza.type != "get":
            raise errors.BadRequest()
        return None
