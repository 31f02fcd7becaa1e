"""Last Activity (XEP-0012): the server's uptime, and when an account last logged out.

* **The server** (an IQ to the domain): seconds since this node's module started.
* **An account** (an IQ to its bare JID): for the account itself and for contacts subscribed to
  its presence (roster 'from' or 'both'), 0 while it has an available resource (a region with
  none lets one that has one answer, through the gateways), else the seconds since it last
  logged out with the status of its last unavailable presence;
  anyone else gets ``forbidden`` (XEP-0012 §3), and a missing account ``service-unavailable``.
  An account that never logged out has nothing to tell: ``service-unavailable``.
* **Recording.**  The time (and status) is stored in the domain database when a session ends
  (``session_closed``) and when a session sends unavailable presence without ending (it is then
  offline for its contacts), so any node and region answers alike.  IQs to a full JID are the
  client's to answer (the router delivers them).  The logouts of a moment are written together,
  in one statement (a burst of logouts would otherwise queue three database hops each in front
  of the logins' reads).
"""

from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ET
from typing import Any

from ...core.batching import Batcher
from ...core.hooks import Hook
from ...core.module import Module, ModuleHost, Xep
from ...core.router import IqRequest
from ...storage import Storage
from ...xmpp import errors, ns
from ...xmpp.jid import Jid
from ...xmpp.stanza import Stanza

__all__ = ["LastActivity", "LastStore", "LAST"]

log = logging.getLogger("meridian.last")

LAST = "jabber:iq:last"
Q = f"{{{LAST}}}"
EXT = "last_status"  # session.ext: the status of the session's last unavailable presence

STEPS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS last_activity (
               domain TEXT NOT NULL, username TEXT NOT NULL, seen {bigint} NOT NULL,
               status TEXT NOT NULL DEFAULT '', PRIMARY KEY (domain, username))""",
    ]),
]


_UPSERT = ("INSERT INTO last_activity (domain, username, seen, status) VALUES {rows} "
           "ON CONFLICT (domain, username) DO UPDATE SET seen = excluded.seen, status = excluded.status")


class LastStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._writes: Batcher[tuple[str, str], tuple[int, str], None] = Batcher(self._put_many, None, max_batch=200)

    async def migrate(self) -> None:
        await self.storage.migrate_module("last", STEPS, user_tables=("last_activity",))

    async def get(self, user: Jid) -> tuple[int, str] | None:
        """(unix time of the last logout, its status)."""
        async with self.storage.transaction() as tx:
            row = await tx.fetchone("SELECT seen, status FROM last_activity WHERE domain = ? AND username = ?",
                                    user.domain, user.local or "")
        return (int(row[0]), str(row[1])) if row is not None else None

    async def put(self, user: Jid, seen: int, status: str) -> None:
        """Store it (with the other logouts of the moment: one statement)."""
        await self._writes.submit((user.domain, user.local or ""), (seen, status))

    async def _put_many(self, rows: dict[tuple[str, str], tuple[int, str]]) -> dict[tuple[str, str], None]:
        args = [a for (domain, username), (seen, status) in rows.items() for a in (domain, username, seen, status)]
        async with self.storage.transaction(write=True) as tx:
            await tx.execute(_UPSERT.format(rows=", ".join(["(?, ?, ?, ?)"] * len(rows))), *args)
        return {}


def _query(seconds: int, status: str = "") -> ET.Element:
    q = ET.Element(Q + "query", {"seconds": str(max(0, seconds))})
    q.text = status or None
    return q


class LastActivity(Module):
    name = "last"
    description = "Last Activity: the server's uptime, and how long ago an account logged out"
    xeps = (Xep(12, "2.0"),)

    async def start(self, host: ModuleHost) -> None:
        self.host = host
        self.started = time.monotonic()
        self.store = LastStore(host.storage)
        await self.store.migrate()
        host.add_server_iq(LAST, "query", self._uptime)
        host.add_account_iq(LAST, "query", self._account, where_online=True)
        host.hook(Hook.USER_SEND_PACKET, self._sent, 5)  # before presence (10) takes it
        host.hook(Hook.SESSION_CLOSED, self._closed)

    # -- answering ----------------------------------------------------------------------------------

    async def _uptime(self, req: IqRequest) -> ET.Element:
        if req.stanza.type != "get":
            raise errors.BadRequest()
        return _query(int(time.monotonic() - self.started))

    async def _account(self, req: IqRequest) -> ET.Element:
        if req.stanza.type != "get":
            raise errors.BadRequest()
        user = req.to
        if req.sender.bare != user:
            if not await self.host.storage.account_exists(user.domain, user.local or ""):
                raise errors.ServiceUnavailable()
            item = await self.host.storage.get_roster_item(user.domain, user.local or "", str(req.sender.bare))
            if item is None or item.subscription not in ("from", "both"):
                raise errors.Forbidden("only contacts subscribed to the account's presence may know this")
        if any(r.available for r in self.host.table.resources(user)):
            return _query(0)
        last = await self.store.get(user)
        if last is None:
            raise errors.ServiceUnavailable()
        seen, status = last
        return _query(int(time.time()) - seen, status)

    # -- recording ----------------------------------------------------------------------------------

    async def _sent(self, session: Any, stanza: Stanza) -> None:
        """Broadcast presence from a client: remember an unavailable one's status, and its time."""
        if stanza.name != "presence" or stanza.to is not None:
            return None
        if stanza.type is None:
            session.ext.pop(EXT, None)
        elif stanza.type == "unavailable":
            status = _status(stanza)
            session.ext[EXT] = status
            await self._record(session.record.jid, status)
        return None

    async def _closed(self, session: Any) -> None:
        record = getattr(session, "record", None)
        if record is not None:
            await self._record(record.jid, session.ext.get(EXT, ""))

    async def _record(self, jid: Jid, status: str) -> None:
        try:
            await self.store.put(jid.bare, int(time.time()), status)
        except Exception as e:  # the database may be away: the session still ends
            log.warning("last activity of %s not stored: %s: %s", jid.bare, e.__class__.__name__, e)


def _status(stanza: Stanza) -> str:
    el = stanza.element.find(f"{{{ns.CLIENT}}}status")
    return (el.text or "").strip() if el is not None else ""
