"""One suite over both storage backends (real SQLite file, real PostgreSQL server)."""

from __future__ import annotations

import asyncio

import pytest

import cluster_node.storage.sql as sql_module
from cluster_node.storage import RosterItem, open_storage
from cluster_node.storage.base import RosterChange
from cluster_node.storage.migrations import MIGRATIONS

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


def changes(diff):
    """(ver, jid, name or 'removed') of a diff's changes, and its current version."""
    assert diff is not None
    entries, ver = diff
    return [(c.ver, c.jid, "removed" if c.item is None else c.item.name) for c in entries], ver


async def test_roster_changes_since_a_version(store):
    await store.create_account("d", "u", CREDS)
    for n in range(6):
        await store.put_roster_item("d", "u", RosterItem(f"c{n}@d", name=f"C{n}"))
    _, v6 = await store.get_roster("d", "u")
    assert v6 == "6"
    assert await store.get_roster_changes("d", "u", v6) == ([], v6)  # unchanged
    v7 = await store.put_roster_item("d", "u", RosterItem("c1@d", name="renamed", groups=("G",)))
    v8 = await store.delete_roster_item("d", "u", "c2@d")
    v9 = await store.put_roster_item("d", "u", RosterItem("new@d", name="New"))
    v10 = await store.put_roster_item("d", "u", RosterItem("c3@d", name="C3 again"))
    assert (v7, v8, v9, v10) == ("7", "8", "9", "10")
    diff = await store.get_roster_changes("d", "u", v6)
    assert changes(diff) == ([("7", "c1@d", "renamed"), ("8", "c2@d", "removed"), ("9", "new@d", "New"),
                              ("10", "c3@d", "C3 again")], "10")
    assert diff[0][0] == RosterChange("7", "c1@d", RosterItem("c1@d", name="renamed", groups=("G",)))
    assert changes(await store.get_roster_changes("d", "u", "8")) == ([("9", "new@d", "New"),
                                                                        ("10", "c3@d", "C3 again")], "10")
    # An item changed twice since: once, as it is now, at its last version.
    await store.put_roster_item("d", "u", RosterItem("c1@d", name="twice"))
    assert changes(await store.get_roster_changes("d", "u", "9")) == ([("10", "c3@d", "C3 again"),
                                                                        ("11", "c1@d", "twice")], "11")
    # Removed then added again: the item only; added then removed: the removal only.
    await store.delete_roster_item("d", "u", "c4@d")
    await store.put_roster_item("d", "u", RosterItem("c4@d", name="back"))
    await store.put_roster_item("d", "u", RosterItem("brief@d"))
    await store.delete_roster_item("d", "u", "brief@d")
    assert changes(await store.get_roster_changes("d", "u", "11")) == ([("13", "c4@d", "back"),
                                                                         ("15", "brief@d", "removed")], "15")


@pytest.mark.parametrize("since", ["", "16", "999", "abc", "-1", " 5", "5.0", "٣", "0x5"])
async def test_roster_changes_from_an_unknown_version_are_none(store, since):
    await store.create_account("d", "u", CREDS)
    for n in range(15):
        await store.put_roster_item("d", "u", RosterItem(f"c{n}@d"))
    assert await store.get_roster_changes("d", "u", since) is None
    assert await store.get_roster_changes("d", "nobody", "1") is None
    assert await store.get_roster_changes("d", "nobody", "0") == ([], "0")  # the version get_roster gives


async def test_roster_changes_no_fewer_than_the_items_are_none(store):
    await store.create_account("d", "u", CREDS)
    for n in range(3):
        await store.put_roster_item("d", "u", RosterItem(f"c{n}@d"))
    await store.put_roster_item("d", "u", RosterItem("c0@d", name="x"))
    assert changes(await store.get_roster_changes("d", "u", "3")) == ([("4", "c0@d", "x")], "4")
    assert changes(await store.get_roster_changes("d", "u", "2")) == ([("3", "c2@d", None),
                                                                        ("4", "c0@d", "x")], "4")
    assert await store.get_roster_changes("d", "u", "1") is None  # 3 changes, 3 items: the roster
    for n in range(3):
        await store.delete_roster_item("d", "u", f"c{n}@d")
    assert await store.get_roster_changes("d", "u", "6") is None  # an empty roster: nothing smaller
    assert await store.get_roster_changes("d", "u", "7") == ([], "7")


async def test_roster_removals_pruned_to_the_last_n(store):
    await store.create_account("d", "u", CREDS)
    for n in range(10):
        await store.put_roster_item("d", "u", RosterItem(f"c{n}@d"))
    for n in range(4):  # removals at versions 11..14
        await store.delete_roster_item("d", "u", f"c{n}@d")
    assert await store.prune_roster_removals("d", "u", keep=10, max_age=0) == 0
    assert changes(await store.get_roster_changes("d", "u", "10"))[0] == [
        (str(11 + n), f"c{n}@d", "removed") for n in range(4)]
    assert await store.prune_roster_removals("d", "u", keep=2, max_age=0) == 2  # 11 and 12 forgotten
    assert await store.get_roster_changes("d", "u", "10") is None
    assert await store.get_roster_changes("d", "u", "11") is None
    assert changes(await store.get_roster_changes("d", "u", "12")) == ([("13", "c2@d", "removed"),
                                                                         ("14", "c3@d", "removed")], "14")
    assert await store.prune_roster_removals("d", "u", keep=2, max_age=0) == 0
    assert await store.prune_roster_removals("d", "u", keep=0, max_age=0) == 2
    assert await store.get_roster_changes("d", "u", "13") is None
    assert await store.get_roster_changes("d", "u", "14") == ([], "14")
    await store.put_roster_item("d", "u", RosterItem("c9@d", name="n"))  # items need no tombstones
    assert changes(await store.get_roster_changes("d", "u", "14")) == ([("15", "c9@d", "n")], "15")


async def test_roster_removals_pruned_by_age(store):
    await store.create_account("d", "u", CREDS)
    for n in range(10):
        await store.put_roster_item("d", "u", RosterItem(f"c{n}@d"))
    await store.delete_roster_item("d", "u", "c0@d")
    await store.delete_roster_item("d", "u", "c1@d")
    async with store.transaction(write=True) as tx:  # the first removal, a day ago
        await tx.execute("UPDATE roster_tombstones SET removed_at = removed_at - 86400 WHERE jid = ?", "c0@d")
    assert await store.prune_roster_removals("d", "u", keep=100, max_age=90000) == 0
    assert await store.prune_roster_removals("d", "u", keep=100, max_age=3600) == 1
    assert await store.get_roster_changes("d", "u", "10") is None
    assert changes(await store.get_roster_changes("d", "u", "11")) == ([("12", "c1@d", "removed")], "12")


async def test_roster_removals_go_with_the_account(store):
    await store.create_account("d", "u", CREDS)
    await store.put_roster_item("d", "u", RosterItem("c@d"))
    await store.delete_roster_item("d", "u", "c@d")
    assert await store.remove_account("d", "u")
    async with store.transaction() as tx:
        assert (await tx.fetchone("SELECT COUNT(*) FROM roster_tombstones WHERE username = ?", "u"))[0] == 0


async def test_roster_versions_upgrade_in_place(url, monkeypatch):
    """A database from before roster diffs: items get version 0, only the current version diffs."""
    monkeypatch.setattr(sql_module, "MIGRATIONS", [m for m in MIGRATIONS if m[0] <= 2])
    old = open_storage(url)
    await old.open()
    await old.create_account("d", "u", CREDS)
    async with old.transaction(write=True) as tx:  # what the version-2 code wrote
        for n in range(4):
            await tx.execute("INSERT INTO roster_items (domain, username, jid, name, subscription, ask, "
                             "groups_json) VALUES (?, ?, ?, ?, 'both', 0, '[\"G\"]')", "d", "u", f"c{n}@d", f"C{n}")
        await tx.execute("UPDATE accounts SET roster_version = 7 WHERE username = ?", "u")
    await old.close()
    monkeypatch.undo()
    new = open_storage(url)
    await new.open()
    try:
        items, ver = await new.get_roster("d", "u")
        assert ver == "7" and [i.jid for i in items] == [f"c{n}@d" for n in range(4)]
        assert items[0] == RosterItem("c0@d", name="C0", subscription="both", groups=("G",))
        assert await new.get_roster_changes("d", "u", "7") == ([], "7")
        assert await new.get_roster_changes("d", "u", "6") is None  # before the upgrade: unknown history
        async with new.transaction() as tx:
            assert (await tx.fetchone("SELECT MAX(version) FROM roster_items WHERE username = ?", "u"))[0] == 0
        await new.delete_roster_item("d", "u", "c0@d")
        await new.put_roster_item("d", "u", RosterItem("c1@d", name="x"))
        assert changes(await new.get_roster_changes("d", "u", "7")) == ([("8", "c0@d", "removed"),
                                                                          ("9", "c1@d", "x")], "9")
    finally:
        await new.close()


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


async def test_two_flushes_racing_for_one_user_deliver_each_message_once(url):
    """A login's flush and a gateway's re-check, on two members, for one user at once: each
    message goes to exactly one of them, and what a flush does not take stays stored."""
    stores = [open_storage(url) for _ in range(2)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        sent = [f"<m n='{i}'/>".encode() for i in range(20)]
        for raw in sent:
            assert await stores[0].store_offline("d", "race", raw, limit=100)
        got: list[list[bytes]] = [[], []]

        def taker(k: int):
            def take(rows: list[tuple[int, bytes]]) -> list[int]:
                got[k].extend(raw for _, raw in rows)
                return [i for i, _ in rows]
            return take

        await asyncio.gather(*(s.take_offline("d", "race", taker(k)) for k, s in enumerate(stores)))
        assert sorted(got[0] + got[1]) == sorted(sent) and not set(got[0]) & set(got[1]), got
        assert got[0] == sent or got[1] == sent  # one took them all, in order
        assert await stores[0].count_offline("d", "race") == 0
        await stores[0].store_offline("d", "race", b"<m n='kept'/>", limit=100)
        assert await stores[1].take_offline("d", "race", lambda rows: []) == []
        assert [raw for _, raw in await stores[0].fetch_offline("d", "race")] == [b"<m n='kept'/>"]
    finally:
        for s in stores:
            await s.close()


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


async def test_a_burst_of_logins_reads_in_a_few_statements(store):
    """What every login reads (credentials, roster, subscription requests, offline messages),
    asked for 300 users at once: each gets its own rows, in order, and the burst takes a few
    statements per read rather than one per user (a login storm queued on the database)."""
    users = [f"u{i}" for i in range(300)]
    for u in users:
        await store.create_account("burst.example", u, {"sha256": {"user": u}})
    await store.put_roster_item("burst.example", "u7", RosterItem("b@x", subscription="both"))
    await store.put_roster_item("burst.example", "u7", RosterItem("a@x", subscription="to"))
    await store.put_subscription_request("burst.example", "u8", "c@x", b"<presence type='subscribe'/>")
    for n in range(3):
        await store.store_offline("burst.example", "u9", f"<message id='{n}'/>".encode(), limit=10)
    readers = [store.user_rows(q) for q in (sql_module._CREDENTIALS, sql_module._ROSTER,
                                           sql_module._SUBSCRIPTION_REQUESTS, sql_module._OFFLINE)]
    before = [r.queries for r in readers]

    async def login(u: str):
        return await asyncio.gather(store.get_credentials("burst.example", u), store.get_roster("burst.example", u),
                                    store.get_subscription_requests("burst.example", u),
                                    store.fetch_offline("burst.example", u))

    got = dict(zip(users + ["nobody"], await asyncio.gather(*(login(u) for u in users + ["nobody"])), strict=True))
    assert all(got[u][0] == {"sha256": {"user": u}} for u in users) and got["nobody"][0] is None
    assert [i.jid for i in got["u7"][1][0]] == ["a@x", "b@x"] and got["u6"][1][0] == []
    assert got["u7"][1][1] != got["u6"][1][1]  # the version, read with the items
    assert got["u8"][2] == [("c@x", b"<presence type='subscribe'/>")] and got["u9"][2] == []
    assert [s for _, s in got["u9"][3]] == [f"<message id='{n}'/>".encode() for n in range(3)]
    assert got["u8"][3] == []
    statements = [r.queries - b for r, b in zip(readers, before, strict=True)]
    assert all(1 <= s <= 3 for s in statements), statements


async def test_execute_all_runs_each_statement_and_counts_its_rows(store):
    await store.create_account("all.example", "u", CREDS)
    async with store.transaction(write=True) as tx:
        counts = await tx.execute_all([
            ("UPDATE accounts SET roster_version = roster_version + 1 WHERE domain = ? AND username = ?",
             ["all.example", "u"]),
            ("UPDATE accounts SET roster_version = roster_version + 1 WHERE domain = ? AND username = ?",
             ["all.example", "nobody"]),
            ("DELETE FROM offline_messages WHERE domain = ?", ["all.example"]),
        ])
    assert counts == [1, 0, 0]
    assert (await store.get_roster("all.example", "u"))[1] == "1"


async def test_sqlite_runs_in_wal_mode_with_a_checkpoint_every_10000_pages(sqlite_url: str) -> None:
    s = open_storage(sqlite_url)
    await s.open()
    try:
        async with s.transaction() as tx:
            assert (await tx.fetchone("PRAGMA journal_mode"))[0] == "wal"  # type: ignore[index]
            assert (await tx.fetchone("PRAGMA synchronous"))[0] == 1  # type: ignore[index]  # NORMAL
            assert (await tx.fetchone("PRAGMA wal_autocheckpoint"))[0] == 10_000  # type: ignore[index]
    finally:
        await s.close()
