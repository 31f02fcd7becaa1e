"""What both SQL backends share: every query, written once with ``?`` placeholders.

A backend supplies a :class:`Tx` (execute / fetch inside one transaction) and the
``_tx()`` context manager; this class turns the storage API into SQL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from .base import Credentials, RosterChange, RosterItem
from .migrations import MIGRATIONS, render
from .user_rows import UserRows

__all__ = ["SqlStorage", "Tx"]


class Tx(Protocol):
    async def execute(self, sql: str, *args: Any) -> int: ...  # rows affected
    async def execute_all(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]: ...  # in one go
    async def fetchone(self, sql: str, *args: Any) -> Sequence[Any] | None: ...
    async def fetchall(self, sql: str, *args: Any) -> list[Sequence[Any]]: ...


def _item(row: Sequence[Any]) -> RosterItem:
    return RosterItem(jid=row[0], name=row[1], subscription=row[2], ask=bool(row[3]),
                      groups=tuple(json.loads(row[4])))


# What every login reads, one statement for a burst of logins (see user_rows).
_CREDENTIALS = "SELECT username, credentials FROM accounts WHERE domain = ? AND username IN ({users})"
_ROSTER = ("SELECT a.username, a.roster_version, r.jid, r.name, r.subscription, r.ask, r.groups_json "
           "FROM accounts a LEFT JOIN roster_items r ON r.domain = a.domain AND r.username = a.username "
           "WHERE a.domain = ? AND a.username IN ({users}) ORDER BY a.username, r.jid")
_SUBSCRIPTION_REQUESTS = ("SELECT username, jid, stanza FROM subscription_requests "
                          "WHERE domain = ? AND username IN ({users}) ORDER BY username, jid")
_OFFLINE = ("SELECT username, id, stanza FROM offline_messages WHERE domain = ? AND username IN ({users}) "
            "ORDER BY username, id")


class SqlStorage:
    dialect = "sqlite"

    def _tx(self, write: bool = False) -> AbstractAsyncContextManager[Tx]:
        raise NotImplementedError

    def user_rows(self, sql: str) -> UserRows:
        """The batched per-user read of ``sql`` (:class:`~.user_rows.UserRows`), one per statement."""
        readers: dict[str, UserRows] = self.__dict__.setdefault("_user_rows", {})
        reader = readers.get(sql)
        if reader is None:
            reader = readers[sql] = UserRows(self._tx, sql)
        return reader

    async def _migrate(self, tx: Tx) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
        row = await tx.fetchone("SELECT MAX(version) FROM schema_version")
        current = row[0] if row and row[0] is not None else 0
        for version, steps in MIGRATIONS:
            if version <= current:
                continue
            for step in steps:
                await tx.execute(render(step, self.dialect))
            await tx.execute("INSERT INTO schema_version (version) VALUES (?)", version)

    # -- accounts -----------------------------------------------------------------------------

    async def create_account(self, domain: str, username: str, credentials: Credentials) -> bool:
        async with self._tx(write=True) as tx:
            if await tx.fetchone("SELECT 1 FROM accounts WHERE domain = ? AND username = ?", domain, username):
                return False
            await tx.execute("INSERT INTO accounts (domain, username, credentials, created_at) VALUES (?, ?, ?, ?)",
                             domain, username, json.dumps(credentials), int(time.time()))
            return True

    async def get_credentials(self, domain: str, username: str) -> Credentials | None:
        rows = await self.user_rows(_CREDENTIALS).rows(domain, username)
        return json.loads(rows[0][0]) if rows else None

    async def set_credentials(self, domain: str, username: str, credentials: Credentials) -> bool:
        """New keys; what modules derived from the old password (login tokens) goes with them."""
        async with self._tx(write=True) as tx:
            n = await tx.execute("UPDATE accounts SET credentials = ? WHERE domain = ? AND username = ?",
                                 json.dumps(credentials), domain, username)
            for table in await self._module_tables(tx, "credential"):
                await tx.execute(f"DELETE FROM {table} WHERE domain = ? AND username = ?", domain, username)
        return n > 0

    async def remove_account(self, domain: str, username: str) -> bool:
        """The account and everything kept for it, modules' tables included (also with no node
        running: the tables are listed in the database)."""
        async with self._tx(write=True) as tx:
            n = await tx.execute("DELETE FROM accounts WHERE domain = ? AND username = ?", domain, username)
            tables = ["roster_items", "roster_tombstones", "subscription_requests", "offline_messages"]
            tables += await self._module_tables(tx, "user")
            for table in tables:
                await tx.execute(f"DELETE FROM {table} WHERE domain = ? AND username = ?", domain, username)
        return n > 0

    # -- modules' own tables ------------------------------------------------------------------------

    def transaction(self, write: bool = False) -> AbstractAsyncContextManager[Tx]:
        """A transaction for a module's own SQL (``?`` placeholders on every backend)."""
        return self._tx(write)

    async def write_all(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """``statements`` in one write transaction, as few hops to the database as the backend
        allows (a group commit's): rows affected by each."""
        async with self._tx(write=True) as tx:
            return await tx.execute_all(statements)

    async def migrate_module(self, namespace: str, steps: list[tuple[int, list[str]]], *,
                             user_tables: tuple[str, ...] = (), credential_tables: tuple[str, ...] = ()) -> None:
        """Run a module's schema steps not yet run (numbered per ``namespace``; ``{blob}``,
        ``{serial}``, ``{bigint}`` rendered for the backend).  ``user_tables`` have ``domain`` and
        ``username`` columns and are emptied for an account when it is removed;
        ``credential_tables`` also when its password changes."""
        if not namespace.replace("_", "").isalnum():
            raise ValueError(f"bad module namespace {namespace!r}")
        async with self._tx(write=True) as tx:
            await self._lock_migrations(tx)
            await tx.execute("CREATE TABLE IF NOT EXISTS module_schema (namespace TEXT NOT NULL, "
                             "version INTEGER NOT NULL, PRIMARY KEY (namespace, version))")
            await tx.execute("CREATE TABLE IF NOT EXISTS module_tables (namespace TEXT NOT NULL, "
                             "table_name TEXT NOT NULL, kind TEXT NOT NULL, PRIMARY KEY (table_name, kind))")
            row = await tx.fetchone("SELECT MAX(version) FROM module_schema WHERE namespace = ?", namespace)
            current = row[0] if row and row[0] is not None else 0
            for version, statements in steps:
                if version <= current:
                    continue
                for statement in statements:
                    await tx.execute(render(statement, self.dialect))
                await tx.execute("INSERT INTO module_schema (namespace, version) VALUES (?, ?)", namespace, version)
            for kind, tables in (("user", user_tables), ("credential", credential_tables)):
                for table in tables:
                    if not table.replace("_", "").isalnum():
                        raise ValueError(f"bad table name {table!r}")
                    if not await tx.fetchone("SELECT 1 FROM module_tables WHERE table_name = ? AND kind = ?",
                                             table, kind):
                        await tx.execute("INSERT INTO module_tables (namespace, table_name, kind) VALUES (?, ?, ?)",
                                         namespace, table, kind)

    async def _module_tables(self, tx: Tx, kind: str) -> list[str]:
        if not await self._has_table(tx, "module_tables"):
            return []
        rows = await tx.fetchall("SELECT table_name FROM module_tables WHERE kind = ? ORDER BY table_name", kind)
        return [str(r[0]) for r in rows]

    async def _has_table(self, tx: Tx, name: str) -> bool:
        if self.dialect == "postgres":
            row = await tx.fetchone("SELECT to_regclass(?) IS NOT NULL", name)
            return bool(row and row[0])
        return await tx.fetchone("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", name) is not None

    async def _lock_migrations(self, tx: Tx) -> None:
        """Concurrent first starts migrate one at a time (SQLite: the write transaction does)."""

    async def account_exists(self, domain: str, username: str) -> bool:
        async with self._tx() as tx:
            return await tx.fetchone("SELECT 1 FROM accounts WHERE domain = ? AND username = ?",
                                     domain, username) is not None

    async def list_accounts(self, domain: str) -> list[str]:
        async with self._tx() as tx:
            rows = await tx.fetchall("SELECT username FROM accounts WHERE domain = ? ORDER BY username", domain)
        return [r[0] for r in rows]

    async def count_accounts(self, domain: str) -> int:
        async with self._tx() as tx:
            row = await tx.fetchone("SELECT COUNT(*) FROM accounts WHERE domain = ?", domain)
        return int(row[0]) if row else 0

    # -- roster ---------------------------------------------------------------------------------

    async def get_roster(self, domain: str, username: str) -> tuple[list[RosterItem], str]:
        """The items and the version in one statement (one round trip: every login reads this for
        its initial presence); only an account with no row (version 0) takes a second."""
        joined = await self.user_rows(_ROSTER).rows(domain, username)
        if joined:
            return [_item(tuple(r)[1:]) for r in joined if r[1] is not None], str(joined[0][0])
        async with self._tx() as tx:
            rows = await tx.fetchall(
                "SELECT jid, name, subscription, ask, groups_json FROM roster_items "
                "WHERE domain = ? AND username = ? ORDER BY jid", domain, username)
        return [_item(r) for r in rows], "0"

    async def get_roster_item(self, domain: str, username: str, jid: str) -> RosterItem | None:
        async with self._tx() as tx:
            row = await tx.fetchone(
                "SELECT jid, name, subscription, ask, groups_json FROM roster_items "
                "WHERE domain = ? AND username = ? AND jid = ?", domain, username, jid)
        return None if row is None else _item(row)

    async def _bump(self, tx: Tx, domain: str, username: str) -> int:
        row = await tx.fetchone("UPDATE accounts SET roster_version = roster_version + 1 "
                                "WHERE domain = ? AND username = ? RETURNING roster_version", domain, username)
        return int(row[0]) if row else 0

    async def put_roster_item(self, domain: str, username: str, item: RosterItem) -> str:
        async with self._tx(write=True) as tx:
            ver = await self._bump(tx, domain, username)
            await tx.execute("DELETE FROM roster_items WHERE domain = ? AND username = ? AND jid = ?",
                             domain, username, item.jid)
            await tx.execute(
                "INSERT INTO roster_items (domain, username, jid, name, subscription, ask, groups_json, version) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", domain, username, item.jid, item.name, item.subscription,
                int(item.ask), json.dumps(list(item.groups)), ver)
            # A removal followed by this: the item's newer version tells a diff all it needs.
            await tx.execute("DELETE FROM roster_tombstones WHERE domain = ? AND username = ? AND jid = ?",
                             domain, username, item.jid)
            return str(ver)

    async def delete_roster_item(self, domain: str, username: str, jid: str) -> str | None:
        async with self._tx(write=True) as tx:
            n = await tx.execute("DELETE FROM roster_items WHERE domain = ? AND username = ? AND jid = ?",
                                 domain, username, jid)
            if n == 0:
                return None
            ver = await self._bump(tx, domain, username)
            await tx.execute("DELETE FROM roster_tombstones WHERE domain = ? AND username = ? AND jid = ?",
                             domain, username, jid)
            if ver:  # (no account row, no version: nothing to diff from)
                await tx.execute("INSERT INTO roster_tombstones (domain, username, jid, version, removed_at) "
                                 "VALUES (?, ?, ?, ?, ?)", domain, username, jid, ver, int(time.time()))
            return str(ver)

    async def roster_version(self, domain: str, username: str) -> str:
        async with self._tx() as tx:
            row = await tx.fetchone("SELECT roster_version FROM accounts WHERE domain = ? AND username = ?",
                                    domain, username)
        return str(row[0] if row else 0)

    async def get_roster_changes(self, domain: str, username: str,
                                 since: str) -> tuple[list[RosterChange], str] | None:
        """RFC 6121 §2.6.3: what changed after roster version ``since`` (items as they are now,
        removals), oldest first, and the current version; no changes when ``since`` is current.
        ``None`` when the client is better served by the whole roster: ``since`` is not a version
        of this account's roster, is older than the removals still kept, or the changes are no
        fewer than the roster's items."""
        if not (since.isascii() and since.isdigit()):
            return None
        after = int(since)
        async with self._tx() as tx:
            row = await tx.fetchone("SELECT roster_version, roster_pruned_version FROM accounts "
                                    "WHERE domain = ? AND username = ?", domain, username)
            # (no account row: version 0, as get_roster says, and nothing to diff)
            current, pruned = (int(row[0]), int(row[1])) if row is not None else (0, 0)
            if after > current or after < pruned:
                return None
            if after == current:
                return [], str(current)
            # Bounded by the version read first: a change committed meanwhile is pushed live.
            rows = await tx.fetchall(
                "SELECT jid, name, subscription, ask, groups_json, version FROM roster_items "
                "WHERE domain = ? AND username = ? AND version > ? AND version <= ?",
                domain, username, after, current)
            gone = await tx.fetchall(
                "SELECT jid, version FROM roster_tombstones "
                "WHERE domain = ? AND username = ? AND version > ? AND version <= ?",
                domain, username, after, current)
            size = await tx.fetchone("SELECT COUNT(*) FROM roster_items WHERE domain = ? AND username = ?",
                                     domain, username)
        if len(rows) + len(gone) >= (int(size[0]) if size else 0):
            return None
        changes = [(int(r[5]), RosterChange(str(r[5]), r[0], _item(r))) for r in rows]
        changes += [(int(g[1]), RosterChange(str(g[1]), g[0], None)) for g in gone]
        changes.sort(key=lambda c: c[0])
        return [c for _, c in changes], str(current)

    async def prune_roster_removals(self, domain: str, username: str, *, keep: int, max_age: int) -> int:
        """Forget all but the last ``keep`` removals (and, when ``max_age`` > 0, those older than
        ``max_age`` seconds); versions up to the newest one forgotten can no longer be diffed.
        Returns how many were forgotten."""
        async with self._tx(write=True) as tx:
            cutoff: int | None = None
            row = await tx.fetchone("SELECT version FROM roster_tombstones WHERE domain = ? AND username = ? "
                                    "ORDER BY version DESC LIMIT 1 OFFSET ?", domain, username, keep)
            if row is not None:
                cutoff = int(row[0])
            if max_age > 0:
                row = await tx.fetchone("SELECT MAX(version) FROM roster_tombstones WHERE domain = ? "
                                        "AND username = ? AND removed_at < ?",
                                        domain, username, int(time.time()) - max_age)
                if row is not None and row[0] is not None:
                    cutoff = max(cutoff or 0, int(row[0]))
            if cutoff is None:
                return 0
            n = await tx.execute("DELETE FROM roster_tombstones WHERE domain = ? AND username = ? AND version <= ?",
                                 domain, username, cutoff)
            await tx.execute("UPDATE accounts SET roster_pruned_version = ? WHERE domain = ? AND username = ? "
                             "AND roster_pruned_version < ?", cutoff, domain, username, cutoff)
            return n

    # -- pending subscription requests ------------------------------------------------------------

    async def put_subscription_request(self, domain: str, username: str, jid: str, stanza: bytes) -> None:
        async with self._tx(write=True) as tx:
            await tx.execute("DELETE FROM subscription_requests WHERE domain = ? AND username = ? AND jid = ?",
                             domain, username, jid)
            await tx.execute("INSERT INTO subscription_requests (domain, username, jid, stanza) VALUES (?, ?, ?, ?)",
                             domain, username, jid, stanza)

    async def get_subscription_requests(self, domain: str, username: str) -> list[tuple[str, bytes]]:
        rows = await self.user_rows(_SUBSCRIPTION_REQUESTS).rows(domain, username)
        return [(r[0], bytes(r[1])) for r in rows]

    async def delete_subscription_request(self, domain: str, username: str, jid: str) -> bool:
        async with self._tx(write=True) as tx:
            return await tx.execute("DELETE FROM subscription_requests WHERE domain = ? AND username = ? "
                                    "AND jid = ?", domain, username, jid) > 0

    async def has_subscription_request(self, domain: str, username: str, jid: str) -> bool:
        async with self._tx() as tx:
            return await tx.fetchone("SELECT 1 FROM subscription_requests WHERE domain = ? AND username = ? "
                                     "AND jid = ?", domain, username, jid) is not None

    # -- offline messages --------------------------------------------------------------------------

    async def store_offline(self, domain: str, username: str, stanza: bytes, *, limit: int) -> bool:
        async with self._tx(write=True) as tx:
            await self._lock_user(tx, domain, username)
            row = await tx.fetchone("SELECT COUNT(*) FROM offline_messages WHERE domain = ? AND username = ?",
                                    domain, username)
            if row is not None and row[0] >= limit:
                return False
            await tx.execute("INSERT INTO offline_messages (domain, username, stanza, stored_at) "
                             "VALUES (?, ?, ?, ?)", domain, username, stanza, int(time.time()))
            return True

    async def _lock_user(self, tx: Tx, domain: str, username: str) -> None:
        """Serialize writers of one user's rows (SQLite's write transaction already does)."""

    async def fetch_offline(self, domain: str, username: str) -> list[tuple[int, bytes]]:
        rows = await self.user_rows(_OFFLINE).rows(domain, username)
        return [(int(r[0]), bytes(r[1])) for r in rows]

    async def take_offline(self, domain: str, username: str,
                           deliver: Callable[[list[tuple[int, bytes]]], list[int]]) -> list[int]:
        """Hand ``username``'s stored messages, oldest first, to ``deliver`` (synchronous: it hands
        them to sessions) and delete the ids it returns, in one transaction that holds the user's
        lock: two flushes racing for one user — a login's and a gateway's re-check, on two
        members — cannot both deliver a message.  A crash before the commit keeps the rows: a
        message may then come twice, never not at all."""
        async with self._tx(write=True) as tx:
            await self._lock_user(tx, domain, username)
            rows = await tx.fetchall("SELECT id, stanza FROM offline_messages WHERE domain = ? AND username = ? "
                                     "ORDER BY id", domain, username)
            taken = deliver([(int(r[0]), bytes(r[1])) for r in rows])
            if taken:
                marks = ", ".join("?" * len(taken))
                await tx.execute(f"DELETE FROM offline_messages WHERE domain = ? AND username = ? AND id IN ({marks})",
                                 domain, username, *taken)
        return taken

    async def delete_offline(self, domain: str, username: str, ids: list[int]) -> None:
        if not ids:
            return
        async with self._tx(write=True) as tx:
            marks = ", ".join("?" * len(ids))
            await tx.execute(f"DELETE FROM offline_messages WHERE domain = ? AND username = ? AND id IN ({marks})",
                             domain, username, *ids)

    async def count_offline(self, domain: str, username: str) -> int:
        async with self._tx() as tx:
            row = await tx.fetchone("SELECT COUNT(*) FROM offline_messages WHERE domain = ? AND username = ?",
                                    domain, username)
        return int(row[0]) if row else 0

    async def count_offline_total(self) -> int:
        async with self._tx() as tx:
            row = await tx.fetchone("SELECT COUNT(*) FROM offline_messages")
        return int(row[0]) if row else 0

    # -- cluster discovery (the region's members find each other here) ---------------------------

    async def discovery_register(self, cluster: str, node: str, address: str, now: int) -> int:
        """Upsert our row and return our node number: kept if we had one, else the smallest free."""
        async with self._tx(write=True) as tx:
            await self._lock_discovery(tx, cluster)
            row = await tx.fetchone("SELECT node_num FROM discovery_nodes WHERE cluster_name = ? AND node_name = ?",
                                    cluster, node)
            if row is not None:
                await tx.execute("UPDATE discovery_nodes SET address = ?, updated_timestamp = ? "
                                 "WHERE cluster_name = ? AND node_name = ?", address, now, cluster, node)
                return int(row[0])
            used = {int(r[0]) for r in await tx.fetchall(
                "SELECT node_num FROM discovery_nodes WHERE cluster_name = ?", cluster)}
            num = next(n for n in range(1, len(used) + 2) if n not in used)
            await tx.execute("INSERT INTO discovery_nodes (cluster_name, node_name, address, node_num, "
                             "updated_timestamp) VALUES (?, ?, ?, ?, ?)", cluster, node, address, num, now)
            return num

    async def discovery_nodes(self, cluster: str) -> list[tuple[str, str, int, int]]:
        """(node, address, node_num, updated) of every registered member of ``cluster``."""
        async with self._tx() as tx:
            rows = await tx.fetchall("SELECT node_name, address, node_num, updated_timestamp FROM discovery_nodes "
                                     "WHERE cluster_name = ? ORDER BY node_name", cluster)
        return [(str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows]

    async def discovery_cleanup(self, cluster: str, older_than: int) -> int:
        async with self._tx(write=True) as tx:
            return await tx.execute("DELETE FROM discovery_nodes WHERE cluster_name = ? AND updated_timestamp < ?",
                                    cluster, older_than)

    async def _lock_discovery(self, tx: Tx, cluster: str) -> None:
        """Serialize node-number allocation (SQLite's write transaction already does)."""
