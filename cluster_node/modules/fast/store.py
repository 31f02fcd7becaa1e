"""FAST tokens in the domain database, so a token issued on one node logs in on any node and in any
region.  The same statements on SQLite and PostgreSQL (``?`` placeholders).

One row per token.  A client (an account's user agent: the SHA-256 of its SASL2 ``<user-agent/>``
id, ``agent``) has at most two (XEP-0484 §7.1): the ``current`` one and a ``new`` one issued but
not used yet.  A token is kept only as its SHA-256 (``token_hash``), which is what the HT mechanism
needs to verify it (see :mod:`cluster_node.xmpp.sasl.ht`).  ``last_count`` is the highest replay
counter (``<fast count='…'/>``) a login with the token carried.

The table is a user table of the storage, and a credential table: emptied for an account when it is
removed and when its password changes, so a new password logs out every client that had a token.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...storage import Storage

__all__ = ["FastStore", "StoredToken", "STEPS", "NEW", "CURRENT"]

NEW, CURRENT = "new", "current"

STEPS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS fast_tokens (
               domain TEXT NOT NULL, username TEXT NOT NULL, agent TEXT NOT NULL, slot TEXT NOT NULL,
               token_hash {blob} NOT NULL, mechanism TEXT NOT NULL, issued_at {bigint} NOT NULL,
               expires_at {bigint} NOT NULL, last_count {bigint} NOT NULL DEFAULT 0,
               agent_name TEXT NOT NULL DEFAULT '',
               PRIMARY KEY (domain, username, agent, slot))""",
    ]),
]

_WHERE = "domain = ? AND username = ? AND agent = ?"


@dataclass(frozen=True)
class StoredToken:
    """What the admin sees of a token (never the token, nor its hash)."""
    agent: str
    agent_name: str
    slot: str
    mechanism: str
    issued_at: int
    expires_at: int


class FastStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def migrate(self) -> None:
        await self.storage.migrate_module("fast", STEPS, user_tables=("fast_tokens",),
                                          credential_tables=("fast_tokens",))

    async def issue(self, domain: str, username: str, agent: str, *, key: bytes, mechanism: str, now: int,
                    expires_at: int, agent_name: str = "") -> None:
        """A new token for the client, in its ``new`` slot (replacing one never used, XEP-0484
        §4.5); the client's expired tokens go."""
        async with self.storage.transaction(write=True) as tx:
            await tx.execute(f"DELETE FROM fast_tokens WHERE {_WHERE} AND (slot = ? OR expires_at <= ?)",
                             domain, username, agent, NEW, now)
            await tx.execute("INSERT INTO fast_tokens (domain, username, agent, slot, token_hash, mechanism, "
                             "issued_at, expires_at, last_count, agent_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                             domain, username, agent, NEW, key, mechanism, now, expires_at, agent_name)

    async def keys(self, domain: str, username: str, agent: str, *, mechanism: str, now: int,
                   count: int | None) -> list[tuple[str, bytes]]:
        """(slot, key) of the client's tokens that may log in now with ``mechanism`` and replay
        counter ``count`` (None: the client sent none), the new one first."""
        async with self.storage.transaction() as tx:
            rows = await tx.fetchall(f"SELECT slot, token_hash, mechanism, expires_at, last_count FROM fast_tokens "
                                     f"WHERE {_WHERE}", domain, username, agent)
        usable = [(str(r[0]), bytes(r[1])) for r in rows
                  if str(r[2]) == mechanism and int(r[3]) > now and (count is None or count > int(r[4]))]
        return sorted(usable, key=lambda t: t[0] != NEW)

    async def use(self, domain: str, username: str, agent: str, slot: str, *, count: int | None,
                  now: int) -> tuple[str, int] | None:
        """A login with the token in ``slot`` succeeded: record its counter (refused — None — when
        a login already carried one as high: a replay), and a used ``new`` token becomes the
        ``current`` one, ending the one it replaces (XEP-0484 §4.5).  (slot now, expiry)."""
        async with self.storage.transaction(write=True) as tx:
            row = await tx.fetchone(f"SELECT expires_at FROM fast_tokens WHERE {_WHERE} AND slot = ?",
                                    domain, username, agent, slot)
            if row is None or int(row[0]) <= now:
                return None  # revoked or expired since it was looked up
            if count is not None and not await tx.execute(
                    f"UPDATE fast_tokens SET last_count = ? WHERE {_WHERE} AND slot = ? AND last_count < ?",
                    count, domain, username, agent, slot, count):
                return None
            if slot == NEW:
                await tx.execute(f"DELETE FROM fast_tokens WHERE {_WHERE} AND slot = ?", domain, username, agent,
                                 CURRENT)
                await tx.execute(f"UPDATE fast_tokens SET slot = ? WHERE {_WHERE} AND slot = ?", CURRENT,
                                 domain, username, agent, NEW)
                slot = CURRENT
            return slot, int(row[0])

    async def delete(self, domain: str, username: str, agent: str | None = None, slot: str | None = None) -> int:
        """Revoke tokens: one (``slot``), a client's (``agent``), or all of the account's."""
        sql, args = "DELETE FROM fast_tokens WHERE domain = ? AND username = ?", [domain, username]
        if agent is not None:
            sql, args = sql + " AND agent = ?", [*args, agent]
        if slot is not None:
            sql, args = sql + " AND slot = ?", [*args, slot]
        async with self.storage.transaction(write=True) as tx:
            return int(await tx.execute(sql, *args))

    async def tokens(self, domain: str, username: str) -> list[StoredToken]:
        async with self.storage.transaction() as tx:
            rows = await tx.fetchall("SELECT agent, agent_name, slot, mechanism, issued_at, expires_at "
                                     "FROM fast_tokens WHERE domain = ? AND username = ? ORDER BY agent, slot",
                                     domain, username)
        return [StoredToken(str(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), int(r[5])) for r in rows]

    async def count(self) -> int:
        async with self.storage.transaction() as tx:
            row = await tx.fetchone("SELECT COUNT(*) FROM fast_tokens")
        return int(row[0]) if row else 0
