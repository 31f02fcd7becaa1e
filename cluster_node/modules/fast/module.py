"""XEP-0484 FAST on the module host: token logins in one round trip, inside SASL2.

* **Offer.** ``<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-NONE</mechanism></fast>`` inside
  SASL2's ``<inline/>`` (``sasl2_inline``).  Having a ``sasl2_token`` handler is what makes the c2s
  stream accept the HT mechanism — in SASL2 only; RFC 6120 SASL never offers it.  The channel-binding
  variants (HT-SHA-256-ENDP/EXPR) are not offered: Python's ``ssl`` gives a server no
  channel-binding data it could use (see :mod:`cluster_node.xmpp.sasl.ht`).
* **Issue.** A ``<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>`` inside a
  successful ``<authenticate/>`` (``sasl2_authenticated``, after the mechanism accepted the client)
  adds ``<token xmlns='urn:xmpp:fast:0' expiry='…' token='…'/>`` to the ``<success/>``.  The token
  is bound to the account, the client (its ``<user-agent/>`` id: none, no token) and the mechanism;
  it is valid ``expiry`` seconds and stored only as its SHA-256 (:mod:`.store`).
* **Log in.** HT-SHA-256-NONE looks the client's tokens up (``sasl2_token``): the one issued last
  and not used yet, and the current one (XEP-0484 §7.1) — unexpired, for that mechanism, and, when
  the client sends ``<fast count='N'/>``, only while N is above the highest count a login with it
  carried.  Once the mechanism matched one, the login is recorded (atomically: two logins with the
  same count, one wins); a used new token becomes the current one and ends the one before it.
* **Rotate.** A login with a token that has less than ``rotate_before`` seconds left gets a new
  one in its ``<success/>`` (the old one stays valid until the new one is used).
* **Invalidate.** ``<fast invalidate='true'/>`` ends the token it logged in with (no new one unless
  requested); a password change ends all of the account's (a credential table of the storage), so
  does removing the account; the operator ends them with the ``fast revoke`` query (control socket:
  ``GET /fast/revoke?jid=…[&agent=…]``), since the admin GraphQL schema does not take modules'
  mutations.  ``fast status`` counts logins, issues, replays; ``fast tokens?jid=…`` lists a user's
  tokens (never the tokens themselves).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import quoteattr

from pydantic import Field

from ...core.hooks import Hook
from ...core.module import Module, ModuleHost, ModuleSettings, Xep
from ...xmpp import ns
from ...xmpp.c2s import Sasl2Authenticated, Sasl2Request
from ...xmpp.errors import SaslFailure
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.sasl.ht import HT_MECHANISMS, TokenKey, token_key
from .store import FastStore

__all__ = ["Fast", "FastSettings"]

log = logging.getLogger("meridian.fast")

TOKEN_BYTES = 66  # of randomness: 88 URL-safe characters, above the 64 bytes its hash stands in for
MAX_COUNT = 2**63 - 1  # the counter column is a signed 64-bit integer


class FastSettings(ModuleSettings):
    expiry: int = Field(14 * 86400, ge=60, description="seconds a FAST token is valid from its issue")
    rotate_before: int = Field(
        7 * 86400, ge=0,
        description="a login with a token that has less than this many seconds left gets a new one (0: never)")


def _feature() -> bytes:
    mechs = "".join(f"<mechanism>{m}</mechanism>" for m in HT_MECHANISMS)
    return f"<fast xmlns='{ns.FAST}'>{mechs}</fast>".encode()


def agent_key(agent_id: str | None) -> str | None:
    """How a client is named in the table: the SHA-256 of its SASL2 user agent id."""
    return hashlib.sha256(agent_id.encode()).hexdigest() if agent_id else None


def _count(fast: Any) -> int | None:
    """``<fast count='N'/>``: None without one; -1 (never above a stored count) when malformed."""
    raw = fast.get("count") if fast is not None else None
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 18 or not 0 < int(raw) <= MAX_COUNT:
        return -1
    return int(raw)


def _true(value: str | None) -> bool:
    return (value or "").strip() in ("1", "true")


def _stamp(seconds: int) -> str:
    """XEP-0082 DateTime."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Fast(Module):
    name = "fast"
    description = "FAST: one-round-trip token logins in SASL2 (HT-SHA-256-NONE), rotated, revocable"
    xeps = (Xep(484, "0.2.0", "partial", "HT-SHA-256-NONE only: no channel-binding variants, no TLS 0-RTT"),)
    Settings = FastSettings

    async def start(self, host: ModuleHost) -> None:
        self.host = host
        self.cfg: FastSettings = self.settings  # type: ignore[assignment]
        self.store = FastStore(host.storage)
        await self.store.migrate()
        self.counters = {"issued": 0, "rotated": 0, "logins": 0, "replays": 0, "invalidated": 0, "revoked": 0}
        host.hook(Hook.SASL2_INLINE, self._inline)
        host.hook(Hook.SASL2_TOKEN, self._keys)
        # Early: a replayed counter refuses the login before anything else (a resumption) is done.
        host.hook(Hook.SASL2_AUTHENTICATED, self._authenticated, 10)
        host.add_query("fast", "status", self.status)
        host.add_query("fast", "tokens", self.tokens)
        host.add_query("fast", "revoke", self.revoke)

    # -- operations ------------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        return {"tokens": await self.store.count(), **self.counters}

    async def tokens(self, jid: str) -> list[dict[str, Any]]:
        user = _account(jid)
        return [{"agent": t.agent[:8], "name": t.agent_name, "slot": t.slot, "mechanism": t.mechanism,
                 "issued": _stamp(t.issued_at), "expiry": _stamp(t.expires_at)}
                for t in await self.store.tokens(user.domain, user.local or "")]

    async def revoke(self, jid: str, agent: str | None = None) -> dict[str, Any]:
        """End the account's tokens (``agent``: only that client's, its hash as ``fast tokens``
        shows it, or its full hash)."""
        user = _account(jid)
        local = user.local or ""
        if agent:
            matches = {t.agent for t in await self.store.tokens(user.domain, local) if t.agent.startswith(agent)}
            n = sum([await self.store.delete(user.domain, local, a) for a in sorted(matches)])
        else:
            n = await self.store.delete(user.domain, local)
        self.counters["revoked"] += n
        log.info("fast: %d token(s) of %s revoked by the operator", n, user)
        return {"jid": str(user), "revoked": n}

    # -- SASL2 -----------------------------------------------------------------------------------------

    @staticmethod
    def _inline(parts: list[bytes], stream: object) -> list[bytes]:
        return [*parts, _feature()]

    async def _keys(self, domain: str, username: str, request: Sasl2Request) -> list[TokenKey] | None:
        if request.mechanism not in HT_MECHANISMS:
            return None
        agent = agent_key(request.user_agent.id)
        if agent is None:
            return []  # tokens belong to a client: one that does not say which it is has none
        count = _count(request.find(ns.FAST, "fast"))
        if count == -1:
            return []
        rows = await self.store.keys(domain, username, agent, mechanism=request.mechanism, now=int(time.time()),
                                     count=count)
        return [TokenKey(slot, key) for slot, key in rows]

    async def _authenticated(self, children: list[bytes], session: Any, auth: Sasl2Authenticated) -> list[bytes]:
        request = auth.request
        user: Jid | None = session.authenticated
        if user is None:
            return children
        domain, local = user.domain, user.local or ""
        agent = agent_key(request.user_agent.id)
        fast = request.find(ns.FAST, "fast")
        wanted = request.find(ns.FAST, "request-token")
        now = int(time.time())
        rotate = False
        if auth.token is not None:  # logged in with a token
            used = await self.store.use(domain, local, agent or "", auth.token, count=_count(fast), now=now) \
                if agent is not None else None
            if used is None:
                self.counters["replays"] += 1
                log.info("fast: %s refused: token counter replayed, or token revoked meanwhile", user)
                raise SaslFailure("not-authorized", "the token was revoked, or its counter was already used")
            slot, expires_at = used
            self.counters["logins"] += 1
            log.info("fast: %s logged in with a token (%s)", user, request.mechanism)
            if fast is not None and _true(fast.get("invalidate")):
                await self.store.delete(domain, local, agent, slot)
                self.counters["invalidated"] += 1
            elif self.cfg.rotate_before and expires_at - now <= self.cfg.rotate_before:
                rotate = True
        if wanted is None and not rotate:
            return children
        mechanism = wanted.get("mechanism", "") if wanted is not None else request.mechanism
        if mechanism not in HT_MECHANISMS or agent is None:
            log.info("fast: no token for %s (mechanism %r, %s user agent id)", user, mechanism,
                     "a" if agent is not None else "no")
            return children
        token = secrets.token_urlsafe(TOKEN_BYTES)
        expires_at = now + self.cfg.expiry
        agent_name = " / ".join(x for x in (request.user_agent.software, request.user_agent.device) if x)
        await self.store.issue(domain, local, agent, key=token_key(token), mechanism=mechanism, now=now,
                               expires_at=expires_at, agent_name=agent_name[:200])
        self.counters["rotated" if wanted is None else "issued"] += 1
        element = (f"<token xmlns='{ns.FAST}' expiry={quoteattr(_stamp(expires_at))} "
                   f"token={quoteattr(token)}/>").encode()
        return [*children, element]


def _account(jid: str) -> Jid:
    try:
        user = Jid.parse(jid).bare
    except InvalidJid as e:
        raise ValueError(f"bad jid {jid!r}: {e}") from None
    if user.local is None:
        raise ValueError(f"{jid!r} is not an account")
    return user
