"""Software Version (XEP-0092) of the server."""

from __future__ import annotations

import platform
import xml.etree.ElementTree as ET
from importlib.metadata import PackageNotFoundError, version

from ...core.module import Module, ModuleHost, Xep
from ...core.router import IqRequest
from ...xmpp import errors, ns

__all__ = ["Version"]

Q = f"{{{ns.VERSION}}}"


def meridian_version() -> str:
    try:
        return version("meridian")
    except PackageNotFoundError:
        return "0+unknown"


class Version(Module):
    name = "version"
    description = "Software Version of the server"
    xeps = (Xep(92, "1.1"),)

    def start(self, host: ModuleHost) -> None:
        self.host = host
        host.add_server_iq(ns.VERSION, "query", self._version)

    async def _version(self, req: IqRequest) -> ET.Element:
        if req.stanza.type != "get":
            raise errors.BadRequest()
        q = ET.Element(Q + "query")
        ET.SubElement(q, Q + "name").text = "Meridian"
        ET.SubElement(q, Q + "version").text = meridian_version()
        ET.SubElement(q, Q + "os").text = platform.system()
        return q
