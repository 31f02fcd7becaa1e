"""One suite over both storage backends (real SQLite file, real PostgreSQL server)."""

from __future__ import annotations

import asyncio

import pytest

from cluster_node.storage import RosterItem, open_storage

CREDS = {"sha256": {"hash": "sha256", "salt": "c2FsdA==", "iterations": 4096, "stored_key": "a", "server_key": "b"}}


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_db_url")


@pytest.fixture
async def store(url: str):
    s = open_storage(url)
    await s.open()
    yield s
    await s.close()


async def test_accounts(store):
    assert await store.create_account("a.example", "alice", CREDS)
    assert not await store.create_account("a.example", "alice", CREDS)
    assert await store.create_account("b.example", "alice", CREDS)
    assert await store.get_credentials("a.example", "alice") == CREDS
    assert await store.get_credentials("a.example", "nobody") is None
    assert await store.set_credentials("a.example", "alice", {"sha1": {"x": 1}})
    assert not await store.set_credentials("a.example", "nobody", CREDS)
    assert await store.create_account("a.example", "bob", CREDS)
    assert await store.list_accounts("a.example") == ["alice", "bob"]
    assert await store.count_accounts("a.example") == 2
    assert await store.account_exists("b.example", "alice")
    await store.put_roster_item("a.example", "alice", RosterItem("bob@a.example"))
    await store.store_offline("a.example", "alice", b"<message/>", limit=10)
    await store.put_subscription_request("a.example", "alice", "c@x", b"<presence/>")
    assert await store.remove_account("a.example", "alice")
    assert not await store.remove_account("a.example", "alice")
    assert not await store.account_exists("a.example", "alice")
    assert (await store.get_roster("a.example", "alice"))[0] == []
    assert await store.count_offline("a.example", "alice") == 0
    assert await store.get_subscription_requests("a.example", "alice") == []
    assert await store.account_exists("b.example", "alice")


async def test_roster_versions_and_items(store):
    await store.create_account("d", "u", CREDS)
    items, v0 = await store.get_roster("d", "u")
    assert items == []
    item = RosterItem("c@d", name="Cé", subscription="to", ask=True, groups=("Zeta", "Alpha"))
    v1 = await store.put_roster_item("d", "u", item)
    assert v1 != v0
    assert await store.get_roster_item("d", "u", "c@d") == item
    v2 = await store.put_roster_item("d", "u", RosterItem("c@d", subscription="both"))
    assert int(v2) > int(v1)
    assert (await store.get_roster_item("d", "u", "c@d")).subscription == "both"
    assert await store.roster_version("d", "u") == v2
    assert await store.delete_roster_item("d", "u", "c@d") is not None
    assert await store.delete_roster_item("d", "u", "c@d") is None


async def test_subscription_requests(store):
    await store.put_subscription_request("d", "u", "x@d", b"<presence type='subscribe'/>")
    await store.put_subscription_request("d", "u", "x@d", b"<presence type='subscribe'><status>hi</status></presence>")
    assert await store.has_subscription_request("d", "u", "x@d")
    reqs = await store.get_subscription_requests("d", "u")
    assert reqs == [("x@d", b"<presence type='subscribe'><status>hi</status></presence>")]
    assert await store.delete_subscription_request("d", "u", "x@d")
    assert not await store.delete_subscription_request("d", "u", "x@d")


async def test_offline_limit_order_and_no_loss_under_concurrency(store):
    results = await asyncio.gather(*(store.store_offline("d", "u", f"<m n='{i}'/>".encode(), limit=30)
                                     for i in range(50)))
    assert sum(results) == 30
    stored = await store.fetch_offline("d", "u")
    assert len(stored) == 30 and [i for i, _ in stored] == sorted(i for i, _ in stored)
    assert await store.count_offline_total() == 30
    await store.delete_offline("d", "u", [i for i, _ in stored[:10]])
    assert await store.count_offline("d", "u") == 20


async def test_schema_is_idempotent_and_concurrent_first_open(url):
    stores = [open_storage(url) for _ in range(2)]
    await asyncio.gather(*(s.open() for s in stores))
    for s in stores:
        await s.close()
    again = open_storage(url)
    await again.open()
    assert await again.create_account("d", "z", CREDS)
    await again.close()


@pytest.mark.parametrize("bad", ["mysql://x", "", "sqlite:"])
def test_bad_urls(bad):
    with pytest.raises(ValueError):
        open_storage(bad)


STEPS = [
    (1, ["""CREATE TABLE IF NOT EXISTS notes (id {serial}, domain TEXT NOT NULL, username TEXT NOT NULL,
            body {blob} NOT NULL)"""]),
    (2, ["""CREATE TABLE IF NOT EXISTS tokens (domain TEXT NOT NULL, username TEXT NOT NULL, token TEXT NOT NULL)""",
         "CREATE INDEX IF NOT EXISTS notes_by_user ON notes (domain, username, id)"]),
]


async def test_module_migrations_run_once_and_module_rows_follow_the_account(store):
    await store.migrate_module("notes", STEPS[:1], user_tables=("notes",))
    await store.migrate_module("notes", STEPS, user_tables=("notes", "tokens"), credential_tables=("tokens",))
    await store.migrate_module("notes", STEPS, user_tables=("notes", "tokens"), credential_tables=("tokens",))
    assert await store.create_account("a.example", "alice", CREDS)
    assert await store.create_account("a.example", "bob", CREDS)
    async with store.transaction(write=True) as tx:
        for user in ("alice", "bob"):
            await tx.execute("INSERT INTO notes (domain, username, body) VALUES (?, ?, ?)", "a.example", user, b"n")
            await tx.execute("INSERT INTO tokens (domain, username, token) VALUES (?, ?, ?)", "a.example", user, "t")

    async def count(table: str, user: str) -> int:
        async with store.transaction() as tx:
            row = await tx.fetchone(f"SELECT COUNT(*) FROM {table} WHERE username = ?", user)
        return int(row[0])

    assert await store.set_credentials("a.example", "alice", CREDS)  # a password change drops the tokens
    assert (await count("tokens", "alice"), await count("notes", "alice")) == (0, 1)
    assert await store.remove_account("a.example", "alice")  # removal drops everything
    assert (await count("notes", "alice"), await count("notes", "bob"), await count("tokens", "bob")) == (0, 1, 1)


async def test_module_namespace_and_table_names_are_checked(store):
    with pytest.raises(ValueError):
        await store.migrate_module("x; DROP TABLE accounts", [])
    with pytest.raises(ValueError):
        await store.migrate_module("ok", [], user_tables=("accounts; --",))
