"""In-band registration (XEP-0077): off by default; when on, account creation before login,
and for logged-in users password change and account removal (§3.2, §3.3)."""

from __future__ import annotations

import asyncio
import logging
import time
import xml.etree.ElementTree as ET
from collections import deque
from typing import Any

from ...core.accounts import AccountError
from ...core.hooks import Hook
from ...core.module import Module, ModuleHost, Xep
from ...core.router import IqRequest
from ...xmpp import errors, ns
from ...xmpp.jid import Jid
from ...xmpp.stanza import Stanza

__all__ = ["Register"]

log = logging.getLogger(__name__)
Q = f"{{{ns.REGISTER}}}"


def _field(query: ET.Element, name: str) -> str | None:
    el = query.find(Q + name)
    return None if el is None else (el.text or "")


class Register(Module):
    """Logged-in users' IQs always; account creation before login (the ``<register/>`` stream
    feature and ``c2s_pre_auth_iq``) only with ``registration.allow_in_band``."""

    name = "register"
    description = "In-band registration, password change, account removal"
    xeps = (Xep(77, "2.4"),)

    def start(self, host: ModuleHost) -> None:
        self.host = self.s = host
        self._recent: dict[str, deque[float]] = {}  # address -> times of its registrations this hour
        self.refused = 0
        host.add_server_iq(ns.REGISTER, "query", self._logged_in)
        if host.settings.registration.allow_in_band:
            host.hook(Hook.C2S_FEATURES, _register_feature)
            host.hook(Hook.C2S_PRE_AUTH_IQ, self.pre_auth)

    async def pre_auth(self, stanza: Stanza, domain: str, session: Any = None) -> Stanza:
        """Answer a ``jabber:iq:register`` IQ on a not-yet-authenticated stream."""
        query = stanza.child(ns.REGISTER, "query")
        try:
            if query is None or stanza.type not in ("get", "set"):
                raise errors.BadRequest()
            if stanza.type == "get":
                return _result(stanza, _form())
            username, password = _field(query, "username"), _field(query, "password")
            if not username or not password:
                raise errors.NotAcceptable("username and password are required")
            self._rate(getattr(session, "ip", "?"))
            try:
                jid = await self.s.accounts.register(domain, username, password)
            except AccountError as e:
                if "exists" in str(e):
                    raise errors.StanzaConflict(str(e)) from None
                raise errors.NotAcceptable(str(e)) from None
            log.info("registered %s in-band", jid)
            return _result(stanza, None)
        except errors.StanzaError as e:
            return stanza.error_reply(e)

    def _rate(self, address: str) -> None:
        """``registration.max_per_address`` accounts per address per hour (like ejabberd's
        registration_timeout): beyond it, ``<resource-constraint/>`` until the hour has passed."""
        limit = self.host.settings.registration.max_per_address
        if not limit:
            return
        now = time.monotonic()
        recent = self._recent.setdefault(address, deque())
        while recent and recent[0] <= now - 3600:
            recent.popleft()
        if len(recent) >= limit:
            self.refused += 1
            self.host.refused("registration.max_per_address")
            raise errors.StanzaResourceConstraint(
                f"too many registrations from your address: try again in {int(recent[0] + 3600 - now) + 1} s")
        recent.append(now)
        if len(self._recent) > 10_000:  # bounded: forget addresses quiet for an hour
            for quiet in [a for a, times in self._recent.items() if not times or times[-1] <= now - 3600]:
                del self._recent[quiet]

    async def _logged_in(self, req: IqRequest) -> ET.Element | None:
        user = req.sender
        if req.stanza.type == "get":
            q = _form()
            ET.SubElement(q, Q + "registered")
            ET.SubElement(q, Q + "username").text = user.local
            return q
        if req.payload.find(Q + "remove") is not None:
            await self.s.accounts.remove(user.domain, user.local or "")
            log.info("%s removed its account in-band", user.bare)
            # XEP-0077 §3.2: the result first, then the account's streams close.
            asyncio.get_running_loop().call_soon(self._kick_all, user)
            return None
        username, password = _field(req.payload, "username"), _field(req.payload, "password")
        if username is None or password is None or username.lower() != (user.local or ""):
            raise errors.BadRequest("username (yours) and password are required")
        try:
            await self.s.accounts.change_password(user.domain, user.local or "", password)
        except AccountError as e:
            raise errors.NotAcceptable(str(e)) from None
        return None


    def _kick_all(self, user: Jid) -> None:
        for record in self.s.table.resources(user.bare):
            session = self.s.local.get(record.sid)
            if session is not None:
                session.kick("not-authorized", "account removed")


def _form() -> ET.Element:
    q = ET.Element(Q + "query")
    ET.SubElement(q, Q + "instructions").text = "Choose a username and password."
    ET.SubElement(q, Q + "username")
    ET.SubElement(q, Q + "password")
    return q


def _result(request: Stanza, payload: ET.Element | None) -> Stanza:
    el = ET.Element(f"{{{ns.CLIENT}}}iq", {"type": "result"})
    if request.id is not None:
        el.set("id", request.id)
    if payload is not None:
        el.append(payload)
    return Stanza(el)


def _register_feature(parts: list[bytes], stage: str, stream: object) -> list[bytes]:
    if stage == "pre_auth":
        parts.append(f"<register xmlns='{ns.REGISTER_FEATURE}'/>".encode())
    return parts
