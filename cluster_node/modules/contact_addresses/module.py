"""Contact Addresses for XMPP Services (XEP-0157): the addresses an operator configures, as a
XEP-0128 extension form (FORM_TYPE ``http://jabber.org/network/serverinfo``) of the server's
disco#info.

The disco module has no hook for extension forms yet (only ``disco_server_features`` and
``disco_server_identities``, which cannot carry a child element), so this module offers its form
on the fold hook the core would run for that — ``disco_server_extensions``, fold(list[ET.Element])
— and the form reaches disco#info once the disco module folds that hook into its answer.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from pydantic import Field, field_validator

from ...core.hooks import Hook
from ...core.module import Module, ModuleHost, ModuleSettings, Xep

__all__ = ["ContactAddresses", "ContactSettings", "serverinfo_form", "FORM_TYPE", "KINDS", "EXTENSIONS_HOOK"]

FORM_TYPE = "http://jabber.org/network/serverinfo"
DATA = "jabber:x:data"
X = f"{{{DATA}}}"
KINDS = ("abuse", "admin", "feedback", "sales", "security", "status", "support")
# The fold the disco module would run for XEP-0128 forms (not in the core yet: see the docstring).
EXTENSIONS_HOOK: str = Hook.DISCO_SERVER_EXTENSIONS
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


class ContactSettings(ModuleSettings):
    """Each list holds URIs (mailto:, xmpp:, https:…) for one kind of contact."""

    abuse: list[str] = Field(default_factory=list, description="addresses for reports of abusive traffic")
    admin: list[str] = Field(default_factory=list, description="addresses of the service administrators")
    feedback: list[str] = Field(default_factory=list, description="addresses for customer feedback")
    sales: list[str] = Field(default_factory=list, description="addresses for sales and marketing")
    security: list[str] = Field(default_factory=list, description="addresses for security concerns")
    status: list[str] = Field(default_factory=list, description="where the service's status is told (a status "
                              "page, an announcement account)")
    support: list[str] = Field(default_factory=list, description="addresses for customer support")

    @field_validator(*KINDS)
    @classmethod
    def _uris(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _URI.match(value):
                raise ValueError(f"{value!r} is not a URI (e.g. mailto:abuse@example.com, xmpp:admin@example.com)")
        return values


def serverinfo_form(cfg: ContactSettings) -> ET.Element | None:
    """The ``<x type='result'/>`` form of the configured addresses; None when none are."""
    if not any(getattr(cfg, kind) for kind in KINDS):
        return None
    x = ET.Element(X + "x", {"type": "result"})
    field = ET.SubElement(x, X + "field", {"var": "FORM_TYPE", "type": "hidden"})
    ET.SubElement(field, X + "value").text = FORM_TYPE
    for kind in KINDS:
        values = getattr(cfg, kind)
        if values:
            field = ET.SubElement(x, X + "field", {"var": f"{kind}-addresses", "type": "list-multi"})
            for value in values:
                ET.SubElement(field, X + "value").text = value
    return x


class ContactAddresses(Module):
    name = "contact_addresses"
    description = "Contact Addresses of the service in its disco#info"
    xeps = (Xep(157, "1.1.1"),)
    Settings = ContactSettings

    def start(self, host: ModuleHost) -> None:
        self.host = host
        cfg: ContactSettings = self.settings  # type: ignore[assignment]
        self.form = serverinfo_form(cfg)
        if self.form is not None:
            host.hook(EXTENSIONS_HOOK, self._extensions)

    def _extensions(self, forms: list[ET.Element]) -> list[ET.Element]:
        assert self.form is not None
        return [*forms, self.form]
