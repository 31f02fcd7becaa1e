"""A room's archive (XEP-0313 on the room's JID): the groupchat messages of rooms with archiving
on, in the domain database, queried by occupants and members with a data form and XEP-0059
paging, and read back as the history of a room loaded after a restart.

* **Ids.**  A message's archive id is the ``stanza-id`` the room gave it (XEP-0359), so what
  clients saw live is what they page from.  Rows are ordered by ``seq``: the archiving time in
  microseconds, made unique per room by the sequencer that writes them.
* **Queries** (:func:`parse_query`): ``start``, ``end``, ``with`` (an occupant JID: that nick's
  messages), ``after-id``/``before-id``; RSM ``max`` (capped by ``max_page``), ``after``,
  ``before`` (empty: the last page).  A malformed value is ``bad-request``, an unknown field
  ``feature-not-implemented``, an unknown id ``item-not-found``.
* **Who may read** (:func:`may_read`): occupants, the room's members and above, and anyone not
  banned when the room is public and open.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from ...storage import Storage
from ...xmpp import errors, ns
from ...xmpp.fragment import parse_stanza
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza
from .protocol import AFF_RANK, DATA, MAM, delay_element, parse_stamp, q, stamp
from .state import HistoryItem, RoomState

__all__ = ["Archived", "ArchiveQuery", "ArchiveStore", "parse_query", "may_read", "result_message", "fin_element",
           "query_form", "STEPS"]

RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
_C = f"{{{ns.CLIENT}}}"

STEPS: list[tuple[int, list[str]]] = [
    (2, [
        """CREATE TABLE IF NOT EXISTS muc_archive (
               service TEXT NOT NULL, name TEXT NOT NULL, seq {bigint} NOT NULL, stanza_id TEXT NOT NULL,
               nick TEXT NOT NULL, sender TEXT NOT NULL, created {bigint} NOT NULL, stanza {blob} NOT NULL,
               PRIMARY KEY (service, name, seq))""",
        "CREATE INDEX IF NOT EXISTS muc_archive_by_id ON muc_archive (service, name, stanza_id)",
    ]),
]


@dataclass(frozen=True, slots=True)
class Archived:
    """One archived message: as the room broadcast it (from ``room/nick``, no ``to``)."""

    stanza_id: str
    nick: str
    sender: str  # the real bare JID
    time: float
    data: bytes


@dataclass(frozen=True, slots=True)
class ArchiveQuery:
    queryid: str | None
    start: float | None = None
    end: float | None = None
    nick: str | None = None
    after: str | None = None
    before: str | None = None  # "": the last page
    max: int = 50


def _field_values(form: ET.Element) -> dict[str, list[str]]:
    return {f.get("var") or "": [v.text or "" for v in f.findall(q(DATA, "value"))]
            for f in form.findall(q(DATA, "field"))}


def parse_query(query: ET.Element, room: str, default_page: int, max_page: int) -> ArchiveQuery:
    """A ``<query xmlns='urn:xmpp:mam:2'/>`` to the room ``room``; raises the XEP's errors."""
    start = end = None
    nick = after = before = None
    form = query.find(q(DATA, "x"))
    if form is not None:
        for var, values in _field_values(form).items():
            value = values[0] if values else ""
            if var == "FORM_TYPE":
                if value != MAM:
                    raise errors.BadRequest(f"FORM_TYPE is {MAM}")
            elif var in ("start", "end"):
                t = parse_stamp(value)
                if t is None:
                    raise errors.BadRequest(f"{var}: {value!r} is not a date and time")
                start, end = (t, end) if var == "start" else (start, t)
            elif var == "with":
                try:
                    jid = Jid.parse(value)
                except InvalidJid:
                    raise errors.BadRequest(f"with: {value!r} is not a JID") from None
                if str(jid.bare) != room:
                    raise errors.BadRequest("with: an occupant of this room (room@service/nick)")
                nick = jid.resource
            elif var == "after-id":
                after = value
            elif var == "before-id":
                before = value
            else:
                raise errors.FeatureNotImplemented(f"the field {var!r} is not supported")
    size = default_page
    rsm = query.find(q(RSM, "set"))
    if rsm is not None:
        text = rsm.findtext(q(RSM, "max"))
        if text is not None:
            if not text.strip().isdigit() or len(text.strip()) > 9:
                raise errors.BadRequest("max is a number")
            size = int(text)
        a, b = rsm.find(q(RSM, "after")), rsm.find(q(RSM, "before"))
        if a is not None:
            after = a.text or ""
        if b is not None:
            before = b.text or ""
        if rsm.find(q(RSM, "index")) is not None:
            raise errors.FeatureNotImplemented("paging by index is not supported")
    return ArchiveQuery(query.get("queryid"), start, end, nick, after, before, min(size, max_page))


def may_read(room: RoomState, full: str) -> bool:
    bare = str(Jid.parse(full).bare)
    aff = room.affiliation(bare)
    if aff == "outcast":
        return False
    if full in room.nick_of or AFF_RANK[aff] >= AFF_RANK["member"]:
        return True
    return room.config.public and not room.config.members_only and not room.config.password_protected


def query_form() -> ET.Element:
    """The fields a query may use (an IQ get of the query)."""
    query = ET.Element(q(MAM, "query"))
    form = ET.SubElement(query, q(DATA, "x"), {"type": "form"})
    for var, kind in (("FORM_TYPE", "hidden"), ("with", "jid-single"), ("start", "text-single"),
                      ("end", "text-single"), ("after-id", "text-single"), ("before-id", "text-single")):
        f = ET.SubElement(form, q(DATA, "field"), {"var": var, "type": kind})
        if var == "FORM_TYPE":
            ET.SubElement(f, q(DATA, "value")).text = MAM
    return query


def result_message(room: str, to: str, queryid: str | None, item: Archived) -> Stanza:
    el = ET.Element(_C + "message", {"from": room, "to": to, "id": f"mam-{item.stanza_id}"})
    result = ET.SubElement(el, q(MAM, "result"), {"id": item.stanza_id})
    if queryid is not None:
        result.set("queryid", queryid)
    forwarded = ET.SubElement(result, q(FORWARD, "forwarded"))
    forwarded.append(ET.Element(q(ns.DELAY, "delay"), {"stamp": stamp(item.time)}))
    forwarded.append(parse_stanza(item.data).element)
    return Stanza(el)


def fin_element(items: list[Archived], complete: bool, count: int | None = None) -> ET.Element:
    fin = ET.Element(q(MAM, "fin"), {"complete": "true" if complete else "false"})
    s = ET.SubElement(fin, q(RSM, "set"))
    if items:
        ET.SubElement(s, q(RSM, "first")).text = items[0].stanza_id
        ET.SubElement(s, q(RSM, "last")).text = items[-1].stanza_id
    if count is not None:
        ET.SubElement(s, q(RSM, "count")).text = str(count)
    return fin


def history_items(room: str, archived: list[Archived]) -> list[HistoryItem]:
    """Archived messages as the history a joining occupant gets (with their delays)."""
    out = []
    for a in archived:
        el = parse_stanza(a.data).element
        el.append(delay_element(room, a.time))
        out.append(HistoryItem(Stanza(el).to_bytes().decode(), a.nick, a.time, a.stanza_id))
    return out


class ArchiveStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def append(self, room: Jid, items: list[Archived]) -> None:
        service, name = room.domain, room.local or ""
        async with self.storage.transaction(write=True) as tx:
            row = await tx.fetchone("SELECT MAX(seq) FROM muc_archive WHERE service = ? AND name = ?", service, name)
            last = int(row[0]) if row and row[0] is not None else 0
            for item in items:
                seq = last = max(last + 1, int(item.time * 1_000_000))
                await tx.execute("INSERT INTO muc_archive (service, name, seq, stanza_id, nick, sender, created, "
                                 "stanza) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", service, name, seq, item.stanza_id,
                                 item.nick, item.sender, int(item.time * 1_000_000), item.data)

    async def _seq(self, tx: Any, service: str, name: str, stanza_id: str) -> int:
        row = await tx.fetchone("SELECT seq FROM muc_archive WHERE service = ? AND name = ? AND stanza_id = ?",
                                service, name, stanza_id)
        if row is None:
            raise errors.ItemNotFound(f"no archived message has the id {stanza_id!r}")
        return int(row[0])

    async def query(self, room: Jid, qr: ArchiveQuery) -> tuple[list[Archived], bool]:
        """The page ``qr`` asks for, oldest first, and whether it reaches the end of the results."""
        service, name = room.domain, room.local or ""
        where: list[str] = ["service = ?", "name = ?"]
        args: list[Any] = [service, name]
        async with self.storage.transaction() as tx:
            if qr.start is not None:
                where.append("created >= ?")
                args.append(int(qr.start * 1_000_000))
            if qr.end is not None:
                where.append("created <= ?")
                args.append(int(qr.end * 1_000_000))
            if qr.nick is not None:
                where.append("nick = ?")
                args.append(qr.nick)
            if qr.after:
                where.append("seq > ?")
                args.append(await self._seq(tx, service, name, qr.after))
            if qr.before:
                where.append("seq < ?")
                args.append(await self._seq(tx, service, name, qr.before))
            backwards = qr.before is not None
            rows = await tx.fetchall(
                f"SELECT stanza_id, nick, sender, created, stanza FROM muc_archive WHERE {' AND '.join(where)} "
                f"ORDER BY seq {'DESC' if backwards else 'ASC'} LIMIT ?", *args, qr.max + 1)
        complete = len(rows) <= qr.max
        rows = rows[: qr.max]
        if backwards:
            rows.reverse()
        return [Archived(str(r[0]), str(r[1]), str(r[2]), int(r[3]) / 1_000_000, bytes(r[4])) for r in rows], complete

    async def last(self, room: Jid, n: int) -> list[Archived]:
        if n <= 0:
            return []
        items, _ = await self.query(room, ArchiveQuery(None, before="", max=n))
        return items

    async def delete(self, room: Jid) -> None:
        async with self.storage.transaction(write=True) as tx:
            await tx.execute("DELETE FROM muc_archive WHERE service = ? AND name = ?", room.domain, room.local or "")
