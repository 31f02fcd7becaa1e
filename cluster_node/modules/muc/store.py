"""Persistent rooms in the domain database, so a room outlives every node that held it and every
region reads the same: the same statements on SQLite and PostgreSQL (``?`` placeholders).

* ``muc_rooms`` — one row per persistent room: configuration (JSON), subject, the salt of its
  occupant ids (XEP-0421 ids stay the same across restarts), creation time.
* ``muc_affiliations`` — one row per (room, JID) with an affiliation: written one at a time as
  they change, so a room with many members costs one row per change, not a rewrite.

A room that stops being persistent, or is destroyed, loses both.  Occupants, history and locks
are not here: they live in the members' memory (history also in the room's archive when it has
one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ...storage import Storage
from .archive import STEPS as ARCHIVE_STEPS
from .config import RoomConfig
from .state import Affiliation, RoomState

__all__ = ["MucStore", "StoredRoom", "STEPS"]

STEPS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS muc_rooms (
               service TEXT NOT NULL, name TEXT NOT NULL, config TEXT NOT NULL, subject TEXT NOT NULL,
               subject_by TEXT NOT NULL, salt TEXT NOT NULL, created {bigint} NOT NULL,
               PRIMARY KEY (service, name))""",
        """CREATE TABLE IF NOT EXISTS muc_affiliations (
               service TEXT NOT NULL, name TEXT NOT NULL, jid TEXT NOT NULL, affiliation TEXT NOT NULL,
               nick TEXT NOT NULL, reason TEXT NOT NULL,
               PRIMARY KEY (service, name, jid))""",
    ]),
]


@dataclass(frozen=True, slots=True)
class StoredRoom:
    config: RoomConfig
    subject: str
    subject_by: str
    salt: str
    created: float
    affiliations: dict[str, Affiliation]


def _config(raw: object) -> RoomConfig:
    try:
        return RoomConfig.from_json(json.loads(str(raw)))
    except ValueError:
        return RoomConfig()


class MucStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def migrate(self) -> None:
        await self.storage.migrate_module("muc", [*STEPS, *ARCHIVE_STEPS])

    async def load(self, service: str, name: str) -> StoredRoom | None:
        async with self.storage.transaction() as tx:
            row = await tx.fetchone("SELECT config, subject, subject_by, salt, created FROM muc_rooms "
                                    "WHERE service = ? AND name = ?", service, name)
            if row is None:
                return None
            rows = await tx.fetchall("SELECT jid, affiliation, nick, reason FROM muc_affiliations "
                                     "WHERE service = ? AND name = ?", service, name)
        affs = {str(r[0]): Affiliation(str(r[1]), str(r[2]), str(r[3])) for r in rows
                if r[1] in ("owner", "admin", "member", "outcast")}
        return StoredRoom(_config(row[0]), str(row[1]), str(row[2]), str(row[3]), float(row[4]) / 1000, affs)

    async def save(self, room: RoomState, *, affiliations: bool = False) -> None:
        """Write the room's row (and, with ``affiliations``, every affiliation: it just became
        persistent)."""
        service, name = room.jid.domain, room.jid.local or ""
        async with self.storage.transaction(write=True) as tx:
            await tx.execute(
                "INSERT INTO muc_rooms (service, name, config, subject, subject_by, salt, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (service, name) DO UPDATE SET config = excluded.config, "
                "subject = excluded.subject, subject_by = excluded.subject_by",
                service, name, json.dumps(room.config.to_json()), room.subject, room.subject_by, room.salt,
                int(room.created * 1000))
            if affiliations:
                await tx.execute("DELETE FROM muc_affiliations WHERE service = ? AND name = ?", service, name)
                for jid, a in room.affiliations.items():
                    await tx.execute("INSERT INTO muc_affiliations (service, name, jid, affiliation, nick, reason) "
                                     "VALUES (?, ?, ?, ?, ?, ?)", service, name, jid, a.affiliation, a.nick, a.reason)

    async def set_affiliation(self, room: RoomState, jid: str) -> None:
        service, name = room.jid.domain, room.jid.local or ""
        a = room.affiliations.get(jid)
        async with self.storage.transaction(write=True) as tx:
            if a is None:
                await tx.execute("DELETE FROM muc_affiliations WHERE service = ? AND name = ? AND jid = ?",
                                 service, name, jid)
            else:
                await tx.execute(
                    "INSERT INTO muc_affiliations (service, name, jid, affiliation, nick, reason) "
                    "VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (service, name, jid) DO UPDATE SET affiliation = excluded.affiliation, "
                    "nick = excluded.nick, reason = excluded.reason",
                    service, name, jid, a.affiliation, a.nick, a.reason)

    async def delete(self, service: str, name: str) -> None:
        async with self.storage.transaction(write=True) as tx:
            await tx.execute("DELETE FROM muc_affiliations WHERE service = ? AND name = ?", service, name)
            await tx.execute("DELETE FROM muc_rooms WHERE service = ? AND name = ?", service, name)

    async def rooms(self, service: str, limit: int) -> list[tuple[str, RoomConfig]]:
        """Persistent rooms of ``service`` (name, configuration), by name."""
        async with self.storage.transaction() as tx:
            rows = await tx.fetchall("SELECT name, config FROM muc_rooms WHERE service = ? ORDER BY name LIMIT ?",
                                     service, limit)
        return [(str(r[0]), _config(r[1])) for r in rows]
