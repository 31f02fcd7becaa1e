"""PEP's SQL: nodes and items in the domain database, so every node and region of a deployment
reads what any of them wrote; the same statements on SQLite and PostgreSQL (``?`` placeholders).

* ``pep_nodes`` — one row per (account, node): its configuration as JSON.
* ``pep_items`` — one row per item: the payload as stored XML bytes, ``created`` in µs, strictly
  increasing per node (the order of "last item" and of eviction beyond ``max_items``).
* ``pep_subscriptions`` — explicit XEP-0060 subscriptions (§6.1) to a node: the subscribed JID
  as given (full or bare) and its bare JID.
* ``pep_remote`` — contacts of another domain whose presence with caps reached the account
  (``presence_delivered``): their full JID and the nodes they asked notifications for.  Same-domain
  contacts need no row: their interest is on their replicated session records.

All four are user tables: emptied for an account when it is removed.  A publish (or a node's
creation) runs in one write transaction with the decision about the node's configuration, so
the node limit and the preconditions are checked against what is stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ...storage import Storage
from ...xmpp.jid import Jid
from .protocol import NodeConfig

__all__ = ["PepStore", "StoredItem", "Published", "LastItem", "STEPS"]

STEPS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS pep_nodes (
               domain TEXT NOT NULL, username TEXT NOT NULL, node TEXT NOT NULL, config TEXT NOT NULL,
               created {bigint} NOT NULL,
               PRIMARY KEY (domain, username, node))""",
        """CREATE TABLE IF NOT EXISTS pep_items (
               domain TEXT NOT NULL, username TEXT NOT NULL, node TEXT NOT NULL, item_id TEXT NOT NULL,
               payload {blob} NOT NULL, publisher TEXT NOT NULL, created {bigint} NOT NULL,
               PRIMARY KEY (domain, username, node, item_id))""",
        "CREATE INDEX IF NOT EXISTS pep_items_by_time ON pep_items (domain, username, node, created)",
        """CREATE TABLE IF NOT EXISTS pep_remote (
               domain TEXT NOT NULL, username TEXT NOT NULL, jid TEXT NOT NULL, nodes TEXT NOT NULL,
               updated {bigint} NOT NULL,
               PRIMARY KEY (domain, username, jid))""",
    ]),
    (2, [
        """CREATE TABLE IF NOT EXISTS pep_subscriptions (
               domain TEXT NOT NULL, username TEXT NOT NULL, node TEXT NOT NULL, jid TEXT NOT NULL,
               bare TEXT NOT NULL, created {bigint} NOT NULL,
               PRIMARY KEY (domain, username, node, jid))""",
    ]),
]

_CHUNK = 400  # usernames per IN (…) list
_DELETE_ITEMS = "DELETE FROM pep_items WHERE domain = ? AND username = ? AND node = ?"


@dataclass(frozen=True, slots=True)
class StoredItem:
    item_id: str
    payload: bytes
    created: int  # µs


@dataclass(frozen=True, slots=True)
class Published:
    config: NodeConfig
    created_node: bool
    evicted: list[str]
    item: StoredItem


@dataclass(frozen=True, slots=True)
class LastItem:
    owner: Jid
    node: str
    config: NodeConfig
    item: StoredItem


Decide = Callable[[NodeConfig | None, int], NodeConfig]
"""(the node's stored configuration or None, how many nodes the account has) → the configuration
to publish with (raises a StanzaError to refuse)."""


def _user(owner: Jid) -> tuple[str, str]:
    return owner.domain, owner.local or ""


def _config(raw: object) -> NodeConfig:
    try:
        return NodeConfig.from_json(json.loads(str(raw)))
    except ValueError:
        return NodeConfig()


class PepStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def migrate(self) -> None:
        await self.storage.migrate_module("pep", STEPS, user_tables=("pep_nodes", "pep_items", "pep_remote",
                                                                        "pep_subscriptions"))

    # -- nodes -----------------------------------------------------------------------------------------

    async def node(self, owner: Jid, node: str) -> NodeConfig | None:
        async with self.storage.transaction() as tx:
            row = await tx.fetchone("SELECT config FROM pep_nodes WHERE domain = ? AND username = ? AND node = ?",
                                    *_user(owner), node)
        return None if row is None else _config(row[0])

    async def nodes(self, owner: Jid) -> dict[str, NodeConfig]:
        async with self.storage.transaction() as tx:
            rows = await tx.fetchall("SELECT node, config FROM pep_nodes WHERE domain = ? AND username = ? "
                                     "ORDER BY node", *_user(owner))
        return {str(r[0]): _config(r[1]) for r in rows}

    async def create(self, owner: Jid, node: str, decide: Decide) -> NodeConfig:
        """Create ``node`` with what ``decide(None, count)`` returns (it raises when the node
        exists: ``decide`` gets the stored configuration then)."""
        async with self.storage.transaction(write=True) as tx:
            config, _ = await _decided(tx, owner, node, decide)
        return config

    async def configure(self, owner: Jid, node: str, config: NodeConfig, cap: int) -> list[str] | None:
        """Store ``config`` for an existing node (None: no such node); the items it evicted."""
        async with self.storage.transaction(write=True) as tx:
            n = await tx.execute("UPDATE pep_nodes SET config = ? WHERE domain = ? AND username = ? AND node = ?",
                                 json.dumps(config.to_json()), *_user(owner), node)
            if not n:
                return None
            return await self._trim(tx, owner, node, config.effective_max(cap))

    async def delete(self, owner: Jid, node: str) -> bool:
        async with self.storage.transaction(write=True) as tx:
            n = await tx.execute("DELETE FROM pep_nodes WHERE domain = ? AND username = ? AND node = ?",
                                 *_user(owner), node)
            await tx.execute(_DELETE_ITEMS, *_user(owner), node)
            await tx.execute("DELETE FROM pep_subscriptions WHERE domain = ? AND username = ? AND node = ?",
                             *_user(owner), node)
        return bool(n)

    async def purge(self, owner: Jid, node: str) -> bool:
        async with self.storage.transaction(write=True) as tx:
            if not await tx.fetchone("SELECT 1 FROM pep_nodes WHERE domain = ? AND username = ? AND node = ?",
                                     *_user(owner), node):
                return False
            await tx.execute(_DELETE_ITEMS, *_user(owner), node)
        return True

    # -- items -----------------------------------------------------------------------------------------

    async def publish(self, owner: Jid, node: str, item_id: str, payload: bytes, publisher: str,
                      decide: Decide, cap: int) -> Published:
        """Store one item (replacing one of the same id, which becomes the newest), creating the
        node when it does not exist; evict the oldest beyond the node's ``max_items``."""
        async with self.storage.transaction(write=True) as tx:
            config, created_node = await _decided(tx, owner, node, decide)
            r = await tx.fetchone("SELECT MAX(created) FROM pep_items WHERE domain = ? AND username = ? AND node = ?",
                                  *_user(owner), node)
            last = int(r[0]) if r and r[0] is not None else 0
            created = max(time.time_ns() // 1000, last + 1)
            await tx.execute(
                "INSERT INTO pep_items (domain, username, node, item_id, payload, publisher, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (domain, username, node, item_id) DO UPDATE SET "
                "payload = excluded.payload, publisher = excluded.publisher, created = excluded.created",
                *_user(owner), node, item_id, payload, publisher, created)
            evicted = await self._trim(tx, owner, node, config.effective_max(cap))
        return Published(config, created_node, evicted, StoredItem(item_id, payload, created))

    async def _trim(self, tx: Any, owner: Jid, node: str, keep: int) -> list[str]:
        r = await tx.fetchone("SELECT COUNT(*) FROM pep_items WHERE domain = ? AND username = ? AND node = ?",
                              *_user(owner), node)
        count = int(r[0]) if r else 0
        if count <= keep:
            return []
        rows = await tx.fetchall("SELECT item_id FROM pep_items WHERE domain = ? AND username = ? AND node = ? "
                                 "ORDER BY created LIMIT ?", *_user(owner), node, count - keep)
        evicted = [str(x[0]) for x in rows]
        for item_id in evicted:
            await tx.execute("DELETE FROM pep_items WHERE domain = ? AND username = ? AND node = ? AND item_id = ?",
                             *_user(owner), node, item_id)
        return evicted

    async def retract(self, owner: Jid, node: str, item_ids: Iterable[str]) -> list[str]:
        """Remove the items; the ids that were there."""
        removed = []
        async with self.storage.transaction(write=True) as tx:
            for item_id in item_ids:
                if await tx.execute("DELETE FROM pep_items WHERE domain = ? AND username = ? AND node = ? "
                                    "AND item_id = ?", *_user(owner), node, item_id):
                    removed.append(item_id)
        return removed

    async def items(self, owner: Jid, node: str, max_items: int | None = None,
                    item_ids: Iterable[str] = ()) -> list[StoredItem]:
        """Items in publication order: the ``item_ids`` that exist, else the last ``max_items``
        (all when None)."""
        ids = list(item_ids)
        async with self.storage.transaction() as tx:
            if ids:
                marks = ", ".join("?" * len(ids))
                rows = await tx.fetchall(f"SELECT item_id, payload, created FROM pep_items WHERE domain = ? "
                                         f"AND username = ? AND node = ? AND item_id IN ({marks}) ORDER BY created",
                                         *_user(owner), node, *ids)
            elif max_items is not None:
                rows = await tx.fetchall("SELECT item_id, payload, created FROM pep_items WHERE domain = ? "
                                         "AND username = ? AND node = ? ORDER BY created DESC LIMIT ?",
                                         *_user(owner), node, max_items)
                rows = list(reversed(rows))
            else:
                rows = await tx.fetchall("SELECT item_id, payload, created FROM pep_items WHERE domain = ? "
                                         "AND username = ? AND node = ? ORDER BY created", *_user(owner), node)
        return [StoredItem(str(r[0]), bytes(r[1]), int(r[2])) for r in rows]

    async def last_items(self, owners: Iterable[Jid], nodes: Iterable[str]) -> list[LastItem]:
        """The newest item of each of ``nodes`` of each of ``owners`` that has one."""
        wanted = sorted(set(nodes))
        if not wanted:
            return []
        by_domain: dict[str, list[str]] = {}
        for o in owners:
            by_domain.setdefault(o.domain, []).append(o.local or "")
        found: list[LastItem] = []
        node_marks = ", ".join("?" * len(wanted))
        async with self.storage.transaction() as tx:
            for domain, users in by_domain.items():
                users = sorted(set(users))
                for i in range(0, len(users), _CHUNK):
                    chunk = users[i:i + _CHUNK]
                    user_marks = ", ".join("?" * len(chunk))
                    rows = await tx.fetchall(
                        f"SELECT i.username, i.node, i.item_id, i.payload, i.created, n.config FROM pep_items i "
                        f"JOIN pep_nodes n ON n.domain = i.domain AND n.username = i.username AND n.node = i.node "
                        f"WHERE i.domain = ? AND i.username IN ({user_marks}) AND i.node IN ({node_marks}) "
                        f"AND i.created = (SELECT MAX(j.created) FROM pep_items j WHERE j.domain = i.domain "
                        f"AND j.username = i.username AND j.node = i.node)",
                        domain, *chunk, *wanted)
                    for r in rows:
                        found.append(LastItem(Jid(str(r[0]) or None, domain, None), str(r[1]), _config(r[5]),
                                              StoredItem(str(r[2]), bytes(r[3]), int(r[4]))))
        return found

    # -- explicit subscriptions ------------------------------------------------------------------------

    async def subscribe(self, owner: Jid, node: str, jid: Jid) -> bool:
        """Subscribe ``jid`` to an existing node (False: no such node)."""
        async with self.storage.transaction(write=True) as tx:
            if not await tx.fetchone("SELECT 1 FROM pep_nodes WHERE domain = ? AND username = ? AND node = ?",
                                     *_user(owner), node):
                return False
            await tx.execute("INSERT INTO pep_subscriptions (domain, username, node, jid, bare, created) "
                             "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (domain, username, node, jid) DO NOTHING",
                             *_user(owner), node, str(jid), str(jid.bare), time.time_ns() // 1000)
        return True

    async def unsubscribe(self, owner: Jid, node: str, jids: Iterable[str]) -> list[str]:
        """Remove the subscriptions of ``jids``; those that existed."""
        removed = []
        async with self.storage.transaction(write=True) as tx:
            for jid in jids:
                if await tx.execute("DELETE FROM pep_subscriptions WHERE domain = ? AND username = ? AND node = ? "
                                    "AND jid = ?", *_user(owner), node, jid):
                    removed.append(jid)
        return removed

    async def subscribers(self, owner: Jid, node: str | None = None,
                          bare: str | None = None) -> list[tuple[str, str]]:
        """(node, subscribed JID) of the owner's subscriptions: to ``node``, or by ``bare``, or all."""
        sql = "SELECT node, jid FROM pep_subscriptions WHERE domain = ? AND username = ?"
        args: list[Any] = [*_user(owner)]
        if node is not None:
            sql += " AND node = ?"
            args.append(node)
        if bare is not None:
            sql += " AND bare = ?"
            args.append(bare)
        async with self.storage.transaction() as tx:
            rows = await tx.fetchall(sql + " ORDER BY node, created", *args)
        return [(str(r[0]), str(r[1])) for r in rows]

    # -- contacts of other domains -----------------------------------------------------------------------

    async def remote_get(self, owner: Jid, contact: Jid) -> frozenset[str] | None:
        async with self.storage.transaction() as tx:
            row = await tx.fetchone("SELECT nodes FROM pep_remote WHERE domain = ? AND username = ? AND jid = ?",
                                    *_user(owner), str(contact))
        return None if row is None else _nodes(row[0])

    async def remote_put(self, owner: Jid, contact: Jid, nodes: Iterable[str]) -> None:
        async with self.storage.transaction(write=True) as tx:
            await tx.execute("INSERT INTO pep_remote (domain, username, jid, nodes, updated) VALUES (?, ?, ?, ?, ?) "
                             "ON CONFLICT (domain, username, jid) DO UPDATE SET nodes = excluded.nodes, "
                             "updated = excluded.updated",
                             *_user(owner), str(contact), json.dumps(sorted(nodes)), int(time.time()))

    async def remote_delete(self, owner: Jid, contact: Jid) -> None:
        async with self.storage.transaction(write=True) as tx:
            await tx.execute("DELETE FROM pep_remote WHERE domain = ? AND username = ? AND jid = ?",
                             *_user(owner), str(contact))

    async def remote_for(self, owner: Jid) -> list[tuple[str, frozenset[str]]]:
        async with self.storage.transaction() as tx:
            rows = await tx.fetchall("SELECT jid, nodes FROM pep_remote WHERE domain = ? AND username = ?",
                                     *_user(owner))
        return [(str(r[0]), _nodes(r[1])) for r in rows]


async def _decided(tx: Any, owner: Jid, node: str, decide: Decide) -> tuple[NodeConfig, bool]:
    """The node's configuration as ``decide`` has it; the node is created when it was missing."""
    row = await tx.fetchone("SELECT config FROM pep_nodes WHERE domain = ? AND username = ? AND node = ?",
                            *_user(owner), node)
    existing = None if row is None else _config(row[0])
    count = 0
    if existing is None:
        r = await tx.fetchone("SELECT COUNT(*) FROM pep_nodes WHERE domain = ? AND username = ?", *_user(owner))
        count = int(r[0]) if r else 0
    config = decide(existing, count)
    if existing is None:
        await tx.execute("INSERT INTO pep_nodes (domain, username, node, config, created) VALUES (?, ?, ?, ?, ?)",
                         *_user(owner), node, json.dumps(config.to_json()), time.time_ns() // 1000)
    return config, existing is None


def _nodes(raw: object) -> frozenset[str]:
    try:
        value = json.loads(str(raw))
    except ValueError:
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str)) if isinstance(value, list) else frozenset()
