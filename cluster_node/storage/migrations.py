"""The schema, as ordered versioned steps shared by both backends.

``{blob}`` and ``{serial}`` are the only dialect differences; each step runs once, in a
transaction, and its number is recorded in ``schema_version``.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "render"]

DIALECT = {
    "sqlite": {"blob": "BLOB", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "bigint": "INTEGER"},
    "postgres": {"blob": "BYTEA", "serial": "BIGSERIAL PRIMARY KEY", "bigint": "BIGINT"},
}

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS accounts (
               domain TEXT NOT NULL, username TEXT NOT NULL, credentials TEXT NOT NULL,
               roster_version {bigint} NOT NULL DEFAULT 0,
               created_at {bigint} NOT NULL DEFAULT 0,
               PRIMARY KEY (domain, username))""",
        """CREATE TABLE IF NOT EXISTS roster_items (
               domain TEXT NOT NULL, username TEXT NOT NULL, jid TEXT NOT NULL,
               name TEXT, subscription TEXT NOT NULL DEFAULT 'none', ask INTEGER NOT NULL DEFAULT 0,
               groups_json TEXT NOT NULL DEFAULT '[]',
               PRIMARY KEY (domain, username, jid))""",
        """CREATE TABLE IF NOT EXISTS subscription_requests (
               domain TEXT NOT NULL, username TEXT NOT NULL, jid TEXT NOT NULL, stanza {blob} NOT NULL,
               PRIMARY KEY (domain, username, jid))""",
        """CREATE TABLE IF NOT EXISTS offline_messages (
               id {serial}, domain TEXT NOT NULL, username TEXT NOT NULL, stanza {blob} NOT NULL,
               stored_at {bigint} NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS offline_by_user ON offline_messages (domain, username, id)",
    ]),
    (2, [
        # CETS-style discovery (MongooseIM's cets_discovery_rdbms): each member refreshes its row.
        """CREATE TABLE IF NOT EXISTS discovery_nodes (
               cluster_name TEXT NOT NULL, node_name TEXT NOT NULL, address TEXT NOT NULL,
               node_num INTEGER NOT NULL, updated_timestamp {bigint} NOT NULL,
               PRIMARY KEY (cluster_name, node_name))""",
        "CREATE UNIQUE INDEX IF NOT EXISTS discovery_num ON discovery_nodes (cluster_name, node_num)",
    ]),
    (3, [
        # Roster diffs (RFC 6121 §2.6.3): each item keeps the account's roster version of its last
        # change, each removal a tombstone with the version of the removal; removals pruned (the
        # roster module's `tombstones`) raise roster_pruned_version, and a client whose version is
        # older than that gets the whole roster.  What happened before this step is unknown: items
        # get version 0 and only the version each account has now can be diffed from.
        "ALTER TABLE roster_items ADD COLUMN version {bigint} NOT NULL DEFAULT 0",
        "ALTER TABLE accounts ADD COLUMN roster_pruned_version {bigint} NOT NULL DEFAULT 0",
        "UPDATE accounts SET roster_pruned_version = roster_version",
        """CREATE TABLE IF NOT EXISTS roster_tombstones (
               domain TEXT NOT NULL, username TEXT NOT NULL, jid TEXT NOT NULL,
               version {bigint} NOT NULL, removed_at {bigint} NOT NULL,
               PRIMARY KEY (domain, username, jid))""",
        "CREATE INDEX IF NOT EXISTS roster_tombstones_by_version ON roster_tombstones (domain, username, version)",
        "CREATE INDEX IF NOT EXISTS roster_items_by_version ON roster_items (domain, username, version)",
    ]),
]


def render(sql: str, dialect: str) -> str:
    return sql.format(**DIALECT[dialect])
