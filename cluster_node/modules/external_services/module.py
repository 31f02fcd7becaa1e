"""External Service Discovery (XEP-0215): the STUN/TURN (or other) services an operator configures,
with time-limited TURN credentials.

* ``<services/>`` (optionally ``type='turn'``) to the server lists the configured services; a
  service with credentials gets a fresh ``username``/``password``/``expires`` and
  ``restricted='true'``.
* ``<credentials><service host='…' type='…' [port='…']/></credentials>`` returns credentials for
  the matching services; ``item-not-found`` when none matches or none has credentials.
* Credentials follow the TURN REST API that coturn implements (``use-auth-secret`` with
  ``static-auth-secret`` = our ``secret``): username ``<expiry unix time>:<bare JID>``, password
  base64(HMAC-SHA1(secret, username)), valid ``ttl`` seconds.  Only accounts of the domains this
  node serves may ask (``forbidden`` for anyone else, e.g. over S2S).  No pushes of updated lists.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...core.module import Module, ModuleHost, ModuleSettings, Xep
from ...core.router import IqRequest
from ...xmpp import errors
from ...xmpp.jid import Jid

__all__ = ["ExternalServices", "ExternalServicesSettings", "ServiceSettings", "turn_credentials", "EXTDISCO"]

EXTDISCO = "urn:xmpp:extdisco:2"
E = f"{{{EXTDISCO}}}"
CREDENTIALED = ("turn", "turns")  # types given credentials by default when a secret is set


class ServiceSettings(BaseModel):
    """One ``[[modules.external_services.services]]`` entry."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9._-]*$", description="service type (stun, turn, turns…)")
    host: str = Field(min_length=1, description="host name or IP address of the service")
    port: int | None = Field(None, ge=1, le=65535, description="port of the service")
    transport: Literal["udp", "tcp"] | None = Field(None, description="transport to the service")
    name: str | None = Field(None, description="a human-readable name")
    credentials: bool | None = Field(None, description="give time-limited credentials for this service "
                                     "(default: turn and turns services, when a secret is set)")


class ExternalServicesSettings(ModuleSettings):
    services: list[ServiceSettings] = Field(default_factory=list, description="the external services offered")
    secret: str = Field("", description="secret shared with the TURN server (coturn's static-auth-secret)")
    ttl: int = Field(86_400, ge=60, le=30 * 86_400, description="seconds the credentials stay valid")

    @model_validator(mode="after")
    def _secret_for_credentials(self) -> ExternalServicesSettings:
        if not self.secret and any(s.credentials for s in self.services):
            raise ValueError("a secret is needed for services with credentials")
        return self

    def credentialed(self, service: ServiceSettings) -> bool:
        if service.credentials is not None:
            return service.credentials
        return bool(self.secret) and service.type in CREDENTIALED


def turn_credentials(secret: str, user: str, ttl: int, now: float) -> tuple[str, str, int]:
    """TURN REST API credentials for ``user``: (username, password, expiry unix time)."""
    expiry = int(now) + ttl
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode(), expiry


class ExternalServices(Module):
    name = "external_services"
    description = "External Service Discovery: STUN/TURN services with time-limited TURN credentials"
    xeps = (Xep(215, "1.0.0", "complete", "services and credentials requests; no pushes"),)
    Settings = ExternalServicesSettings

    def start(self, host: ModuleHost) -> None:
        self.host = host
        self.cfg: ExternalServicesSettings = self.settings  # type: ignore[assignment]
        host.add_server_iq(EXTDISCO, "services", self._services)
        host.add_server_iq(EXTDISCO, "credentials", self._credentials)

    def _check(self, req: IqRequest) -> None:
        if req.stanza.type != "get":
            raise errors.BadRequest()
        if req.sender.local is None or req.sender.domain not in self.host.domains:
            raise errors.Forbidden("external services are for this server's accounts")

    def _service(self, service: ServiceSettings, user: Jid, now: float) -> ET.Element:
        el = ET.Element(E + "service", {"type": service.type, "host": service.host})
        if service.port is not None:
            el.set("port", str(service.port))
        if service.transport is not None:
            el.set("transport", service.transport)
        if service.name is not None:
            el.set("name", service.name)
        if self.cfg.credentialed(service):
            username, password, expiry = turn_credentials(self.cfg.secret, str(user.bare), self.cfg.ttl, now)
            el.set("restricted", "true")
            el.set("username", username)
            el.set("password", password)
            el.set("expires", datetime.fromtimestamp(expiry, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        return el

    async def _services(self, req: IqRequest) -> ET.Element:
        self._check(req)
        wanted = req.payload.get("type")
        out = ET.Element(E + "services")
        if wanted:
            out.set("type", wanted)
        now = time.time()
        for service in self.cfg.services:
            if not wanted or service.type == wanted:
                out.append(self._service(service, req.sender, now))
        return out

    async def _credentials(self, req: IqRequest) -> ET.Element:
        self._check(req)
        asked = req.payload.find(E + "service")
        if asked is None or not asked.get("host") or not asked.get("type"):
            raise errors.BadRequest("a <service/> with 'host' and 'type' names the service")
        port = asked.get("port")
        out = ET.Element(E + "credentials")
        now = time.time()
        for service in self.cfg.services:
            if (service.host == asked.get("host") and service.type == asked.get("type")
                    and (port is None or str(service.port) == port) and self.cfg.credentialed(service)):
                out.append(self._service(service, req.sender, now))
        if len(out) == 0:
            raise errors.ItemNotFound("no service with credentials by that host and type")
        return out
