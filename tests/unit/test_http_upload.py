"""HTTP File Upload (XEP-0363) without a network of XMPP clients: the sans-IO slots (validation,
signed URLs, expiry, quota), the disk store, the service on the fake node's routing chain, and
the module's own HTTP listener (plain HTTP on loopback) with aiohttp as the client."""

from __future__ import annotations

import asyncio
import json
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest

from cluster_node.core.hooks import Hook
from cluster_node.core.module import ModuleHost
from cluster_node.modules import BUILTIN
from cluster_node.modules.http_upload import HttpUpload
from cluster_node.modules.http_upload.module import ITEMS_HOOK, KEY_FILE
from cluster_node.modules.http_upload.slots import (
    NS,
    BadSlotRequest,
    FileTooLarge,
    PutRefused,
    QuotaExceeded,
    Signer,
    Slot,
    SlotRequest,
    check_filename,
    check_put,
    derive_key,
    get_url,
    new_slot,
    parse_request,
    put_url,
    quota_retry,
    valid_token,
)
from cluster_node.modules.http_upload.store import DiskStore, FileMeta, SizeMismatch
from cluster_node.modules.loader import module_settings
from cluster_node.xmpp import ns
from cluster_node.xmpp.jid import Jid
from cluster_node.xmpp.stanza import Stanza
from tests.helpers.fake_host import DOMAIN, FakeNode, FakeSession, error_condition, fake_node
from tests.helpers.ports import free_port

ALICE = "alice@example.com"
SERVICE = "upload.example.com"
U = f"{{{NS}}}"
INFO = f"{{{ns.DISCO_INFO}}}"
ITEMS = f"{{{ns.DISCO_ITEMS}}}"
X = "{jabber:x:data}"
C = f"{{{ns.CLIENT}}}"
KEY = derive_key("a-secret-of-the-tests-0123456789")
NOW = 1_700_000_000.0


def request_el(filename: str | None = "photo.jpg", size: str | None = "1000",
               content_type: str | None = "image/jpeg") -> ET.Element:
    el = ET.Element(U + "request")
    for name, value in (("filename", filename), ("size", size), ("content-type", content_type)):
        if value is not None:
            el.set(name, value)
    return el


# -- slot requests ----------------------------------------------------------------------------------------


def test_a_valid_request():
    assert parse_request(request_el(), 10_000) == SlotRequest("photo.jpg", 1000, "image/jpeg")
    assert parse_request(request_el("Ünïcödé file 😀.txt", "0", None), 10) == SlotRequest(
        "Ünïcödé file 😀.txt", 0, "")
    assert parse_request(request_el(content_type="text/plain; charset=utf-8"), 10_000).content_type == \
        "text/plain; charset=utf-8"


@pytest.mark.parametrize("filename", [
    "", "   ", ".", "..", "../etc/passwd", "a/b", "/etc/passwd", "..\\..\\boot.ini", "a\\b", "nul\x00byte",
    "line\nbreak", "tab\tname", "x" * 256, "rtl\u202eexe.txt", "zero\u200bwidth",
])
def test_unsafe_file_names_are_refused(filename: str):
    with pytest.raises(BadSlotRequest):
        parse_request(request_el(filename=filename), 10_000)


def test_a_long_name_at_the_limit_is_fine():
    assert check_filename("x" * 255) == "x" * 255


@pytest.mark.parametrize("size", ["-1", "abc", "1e3", "+5", " 5", "5 ", "1_000", "0x10", "", "1.5", None])
def test_bad_sizes_are_bad_requests(size: str | None):
    with pytest.raises(BadSlotRequest):
        parse_request(request_el(size=size), 10_000)


@pytest.mark.parametrize("size", ["10001", "99999999999999999999", str(2**63)])
def test_too_large_sizes_name_the_maximum(size: str):
    with pytest.raises(FileTooLarge) as e:
        parse_request(request_el(size=size), 10_000)
    assert e.value.max_size == 10_000


@pytest.mark.parametrize("ctype", ["image", "text/html\r\nX-Evil: 1", "a/b/c", "text/plain; charset", "x" * 300 + "/y",
                                   "<script>/x"])
def test_bad_content_types_are_refused(ctype: str):
    with pytest.raises(BadSlotRequest):
        parse_request(request_el(content_type=ctype), 10_000)


def test_a_request_of_another_namespace_is_refused():
    with pytest.raises(BadSlotRequest):
        parse_request(ET.Element("{urn:xmpp:http:upload}request", {"filename": "a", "size": "1"}), 10)


# -- signatures and PUT checks ------------------------------------------------------------------------------


def slot(**changes: Any) -> Slot:
    base = new_slot(SlotRequest("photo.jpg", 1000, "image/jpeg"), NOW, 120)
    return Slot(**{**{f: getattr(base, f) for f in ("token", "filename", "size", "content_type", "expires")},
                   **changes})


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def test_tokens_are_long_and_random():
    tokens = {new_slot(SlotRequest("a", 1, ""), NOW, 60).token for _ in range(100)}
    assert len(tokens) == 100
    assert all(valid_token(t) and len(t) >= 24 for t in tokens)
    assert not valid_token("../../etc") and not valid_token("short")


def test_urls_carry_the_file_name_and_a_signature():
    s = slot(filename="my photo #1?.jpg")
    put, get = put_url("https://localhost:5443/", s, Signer(KEY)), get_url("https://localhost:5443", s)
    assert get == f"https://localhost:5443/upload/{s.token}/my%20photo%20%231%3F.jpg"
    assert put.startswith(get + "?")
    q = query_of(put)
    assert (q["size"], q["type"], q["expires"]) == ("1000", "image/jpeg", str(int(NOW) + 120))
    assert check_put(Signer(KEY), s.token, "my photo #1?.jpg", q, NOW + 1, 1000, "image/jpeg") == s


def test_the_key_comes_from_the_secret_or_the_cluster():
    assert derive_key("own-secret-0123456789", "cluster") == derive_key("own-secret-0123456789")
    assert derive_key("", "cluster-secret-0123456789") == derive_key("cluster-secret-0123456789")
    assert derive_key("", "cluster-secret-0123456789") != derive_key("", "another-cluster-secret-0123")
    assert derive_key("", "") == b""
    with pytest.raises(ValueError):
        Signer(b"short")


def put_check(s: Slot, *, sig_key: bytes = KEY, now: float = NOW + 1, length: int | None = 1000,
              ctype: str | None = "image/jpeg", filename: str | None = None, **query: str) -> Slot:
    q = {**query_of(put_url("https://h", s, Signer(sig_key))), **query}
    return check_put(Signer(KEY), s.token, filename or s.filename, q, now, length, ctype)


@pytest.mark.parametrize("tamper", [
    {"size": "2000"}, {"type": "text/html"}, {"expires": str(int(NOW) + 99_999)}, {"sig": "AAAA"}, {"sig": ""},
])
def test_a_changed_url_is_forbidden(tamper: dict[str, str]):
    s = slot()
    length = int(tamper.get("size", 1000))
    with pytest.raises(PutRefused) as e:
        put_check(s, length=length, ctype=tamper.get("type", "image/jpeg"), **tamper)
    assert e.value.status == 403


def test_another_file_name_or_key_is_forbidden():
    with pytest.raises(PutRefused) as e:
        put_check(slot(), filename="other.jpg")
    assert e.value.status == 403
    with pytest.raises(PutRefused) as e:
        put_check(slot(), sig_key=derive_key("another-secret-0123456789"))
    assert e.value.status == 403


def test_missing_query_fields_or_a_bad_token_are_forbidden():
    s = slot()
    q = query_of(put_url("https://h", s, Signer(KEY)))
    for missing in q:
        partial = {k: v for k, v in q.items() if k != missing}
        with pytest.raises(PutRefused) as e:
            check_put(Signer(KEY), s.token, s.filename, partial, NOW, 1000, "image/jpeg")
        assert e.value.status == 403
    with pytest.raises(PutRefused) as e:
        check_put(Signer(KEY), "..", s.filename, q, NOW, 1000, "image/jpeg")
    assert e.value.status == 403


def test_an_expired_slot_is_forbidden():
    s = slot()
    assert put_check(s, now=s.expires) == s
    with pytest.raises(PutRefused) as e:
        put_check(s, now=s.expires + 1)
    assert (e.value.status, e.value.reason) == (403, "the upload slot expired")


@pytest.mark.parametrize(("length", "status"), [(999, 400), (1001, 413), (None, 400), (0, 400)])
def test_a_wrong_length_is_refused(length: int | None, status: int):
    with pytest.raises(PutRefused) as e:
        put_check(slot(), length=length)
    assert e.value.status == status


def test_the_content_type_must_match_when_requested():
    with pytest.raises(PutRefused) as e:
        put_check(slot(), ctype="text/html")
    assert e.value.status == 400
    with pytest.raises(PutRefused):
        put_check(slot(), ctype=None)
    assert put_check(slot(), ctype="IMAGE/JPEG")  # MIME types are case-insensitive
    untyped = slot(content_type="")
    assert put_check(untyped, ctype="whatever/else") == untyped
    assert put_check(untyped, ctype=None) == untyped


# -- quota ---------------------------------------------------------------------------------------------------


def test_quota_within_and_over():
    quota_retry([], 100, 100, 3600, NOW)
    quota_retry([(NOW - 10, 50)], 50, 100, 3600, NOW)
    quota_retry([(NOW - 10, 50)], 10**9, 0, 3600, NOW)  # 0: no quota
    with pytest.raises(QuotaExceeded) as e:
        quota_retry([(NOW - 100, 30), (NOW - 10, 50)], 50, 100, 3600, NOW)
    assert e.value.retry_at == NOW - 100 + 3600  # once the oldest slot leaves the window
    with pytest.raises(QuotaExceeded) as e:
        quota_retry([(NOW - 100, 30), (NOW - 10, 50)], 90, 100, 3600, NOW)
    assert e.value.retry_at == NOW - 10 + 3600  # both must leave
    quota_retry([(NOW - 4000, 100)], 100, 100, 3600, NOW)  # out of the window


def test_a_file_larger_than_the_quota_never_fits():
    with pytest.raises(QuotaExceeded) as e:
        quota_retry([], 101, 100, 3600, NOW)
    assert e.value.retry_at is None


# -- the disk store -------------------------------------------------------------------------------------------


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


def meta(size: int, created: float = NOW) -> FileMeta:
    return FileMeta("a file.txt", size, "text/plain", created)


async def test_disk_store_saves_finds_and_deletes(tmp_path: Path):
    store = DiskStore(tmp_path / "files")
    token = new_slot(SlotRequest("a", 1, ""), NOW, 60).token
    assert await store.find(token) is None
    await store.save(token, meta(11), chunks(b"hello ", b"world"))
    found = await store.find(token)
    assert found is not None and found.meta == meta(11) and found.path is not None
    assert found.path.read_bytes() == b"hello world"
    assert found.path.is_relative_to(tmp_path / "files" / token[:2] / token)
    with pytest.raises(FileExistsError):
        await store.save(token, meta(3), chunks(b"new"))
    assert found.path.read_bytes() == b"hello world"
    assert await store.delete(token) is True
    assert await store.find(token) is None
    assert await store.delete(token) is False
    assert await store.find("../../etc") is None


async def test_of_two_racing_uploads_to_one_slot_exactly_one_wins(tmp_path: Path):
    store = DiskStore(tmp_path)
    token = new_slot(SlotRequest("a", 1, ""), NOW, 60).token

    async def slow(data: bytes) -> AsyncIterator[bytes]:
        await asyncio.sleep(0.01)
        yield data

    results = await asyncio.gather(store.save(token, meta(3), slow(b"one")), store.save(token, meta(3), slow(b"two")),
                                   return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["FileExistsError", "NoneType"]
    found = await store.find(token)
    assert found is not None and found.path is not None
    assert found.path.read_bytes() == (b"one" if results[0] is None else b"two")
    assert len(list((tmp_path / token[:2] / token).iterdir())) == 2  # meta.json and one data file


@pytest.mark.parametrize("parts", [(b"short",), (b"far too ", b"long for it")])
async def test_disk_store_keeps_nothing_of_a_wrong_length(tmp_path: Path, parts: tuple[bytes, ...]):
    store = DiskStore(tmp_path)
    token = new_slot(SlotRequest("a", 1, ""), NOW, 60).token
    with pytest.raises(SizeMismatch):
        await store.save(token, meta(10), chunks(*parts))
    assert await store.find(token) is None
    assert list((tmp_path / token[:2] / token).iterdir()) == []


async def test_disk_store_expires_old_files_and_abandoned_uploads(tmp_path: Path):
    store = DiskStore(tmp_path)
    old, new, partial, stale = (new_slot(SlotRequest("a", 1, ""), NOW, 60).token for _ in range(4))
    await store.save(old, meta(1, NOW - 100), chunks(b"o"))
    await store.save(new, meta(1, NOW), chunks(b"n"))
    for token in (partial, stale):
        (tmp_path / token[:2] / token).mkdir(parents=True)
        (tmp_path / token[:2] / token / ".data-x.part").write_bytes(b"half")
    os.utime(tmp_path / stale[:2] / stale, (time.time() - 2 * 86_400, time.time() - 2 * 86_400))
    assert await store.expire(NOW - 50) == 1
    assert await store.find(old) is None and await store.find(new) is not None
    assert (tmp_path / partial[:2] / partial).exists()  # an upload in progress
    assert not (tmp_path / stale[:2] / stale).exists()


# -- the service on the routing chain ------------------------------------------------------------------------


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as n:
        await n.create_account(ALICE)
        yield n


async def ask(node: FakeNode, who: FakeSession, payload: str, *, to: str = SERVICE, type_: str = "get") -> Stanza:
    await node.route(f"<iq from='{who.record.jid}' to='{to}' type='{type_}' id='q1'>{payload}</iq>")
    got = who.take()
    assert len(got) == 1, got
    assert got[0].id == "q1" and got[0].from_ == to
    return got[0]


def slot_request(filename: str = "photo.jpg", size: int | str = 1000, ctype: str = "image/jpeg") -> str:
    return f"<request xmlns='{NS}' filename='{filename}' size='{size}' content-type='{ctype}'/>"


def slot_urls(reply: Stanza) -> tuple[str, str]:
    assert reply.type == "result", reply
    put = reply.element.find(f"{U}slot/{U}put")
    get = reply.element.find(f"{U}slot/{U}get")
    assert put is not None and get is not None
    return put.get("url", ""), get.get("url", "")


SETTINGS = {"public_url": "https://files.{domain}", "secret": "a-secret-of-the-tests-0123456789"}


async def test_without_a_listener_or_url_nothing_is_offered(node: FakeNode):
    await node.start(HttpUpload)
    assert not node.hooks.has(Hook.ROUTE_REMOTE)
    alice = node.bind(ALICE + "/phone")
    await node.route(f"<iq from='{ALICE}/phone' to='{SERVICE}' type='get' id='q1'>{slot_request()}</iq>")
    assert error_condition(alice.take()[0]) == "remote-server-not-found"


async def test_disco_of_the_service(node: FakeNode):
    await node.start(HttpUpload, **SETTINGS, max_file_size=5_242_880)
    alice = node.bind(ALICE + "/phone")
    reply = await ask(node, alice, f"<query xmlns='{ns.DISCO_INFO}'/>")
    q = reply.element.find(INFO + "query")
    assert q is not None
    assert [(i.get("category"), i.get("type")) for i in q.findall(INFO + "identity")] == [("store", "file")]
    assert NS in {f.get("var") for f in q.findall(INFO + "feature")}
    fields = {f.get("var"): f.findtext(X + "value") for f in q.findall(f"{X}x/{X}field")}
    assert fields == {"FORM_TYPE": NS, "max-file-size": "5242880"}
    reply = await ask(node, alice, f"<query xmlns='{ns.DISCO_ITEMS}'/>")
    items = reply.element.find(ITEMS + "query")
    assert items is not None and len(items) == 0
    assert (await ask(node, alice, f"<ping xmlns='{ns.PING}'/>")).type == "result"
    # The server's disco#items, once the disco module folds the hook.
    assert node.hooks.fold(ITEMS_HOOK, [], Jid(None, DOMAIN, None)) == [{"jid": SERVICE, "name": "HTTP File Upload"}]
    assert node.hooks.fold(ITEMS_HOOK, [], Jid(None, "other.org", None)) == []


async def test_a_slot_is_signed_for_the_request(node: FakeNode):
    await node.start(HttpUpload, **SETTINGS)
    alice = node.bind(ALICE + "/phone")
    put, get = slot_urls(await ask(node, alice, slot_request("my file.jpg", 1234)))
    parts = urlsplit(get)
    assert (parts.scheme, parts.netloc) == ("https", "files.example.com")
    token = parts.path.split("/")[2]
    assert parts.path == f"/upload/{token}/my%20file.jpg" and valid_token(token)
    assert put.startswith(get + "?")
    q = query_of(put)
    assert abs(int(q["expires"]) - (time.time() + 120)) < 5
    signer = Signer(derive_key(SETTINGS["secret"]))
    assert check_put(signer, token, "my file.jpg", q, time.time(), 1234, "image/jpeg").size == 1234
    # Every slot is a new URL.
    again, _ = slot_urls(await ask(node, alice, slot_request("my file.jpg", 1234)))
    assert again != put


async def test_too_large_slots_say_the_maximum(node: FakeNode):
    await node.start(HttpUpload, **SETTINGS, max_file_size=20_000)
    alice = node.bind(ALICE + "/phone")
    reply = await ask(node, alice, slot_request(size=20_001))
    assert error_condition(reply) == "not-acceptable"
    err = reply.element.find(C + "error")
    assert err is not None and err.get("type") == "modify"
    assert err.findtext(f"{U}file-too-large/{U}max-file-size") == "20000"
    assert node.services.refusals == {"modules.http_upload.max_file_size": 1}


@pytest.mark.parametrize("req", [
    slot_request("../../etc/passwd"), slot_request("a/b"), slot_request(".."), slot_request(size=-5),
    slot_request(size="lots"), f"<request xmlns='{NS}' size='10'/>", f"<request xmlns='{NS}' filename='a'/>",
])
async def test_bad_slot_requests(node: FakeNode, req: str):
    await node.start(HttpUpload, **SETTINGS)
    alice = node.bind(ALICE + "/phone")
    assert error_condition(await ask(node, alice, req)) == "bad-request"


async def test_only_accounts_of_the_domain_get_slots(node: FakeNode):
    await node.start(HttpUpload, **SETTINGS)
    alice = node.bind(ALICE + "/phone")
    await node.route(f"<iq from='mallory@evil.org/x' to='{SERVICE}' type='get' id='q9'>{slot_request()}</iq>")
    # The error goes back toward evil.org (no route here): nothing reaches alice, and no slot was given.
    assert alice.take() == []
    module: HttpUpload = node.services.modules["http_upload"]
    assert module.counters["slots"] == 0
    # A server JID cannot ask either.
    await node.route(f"<iq from='{DOMAIN}' to='{SERVICE}' type='get' id='q8'>{slot_request()}</iq>")
    assert module.counters["slots"] == 0


async def test_quota_over_a_window(node: FakeNode):
    await node.start(HttpUpload, **SETTINGS, quota=2500, quota_window=3600)
    alice = node.bind(ALICE + "/phone")
    slot_urls(await ask(node, alice, slot_request(size=1000)))
    slot_urls(await ask(node, alice, slot_request(size=1000)))
    reply = await ask(node, alice, slot_request(size=1000))
    assert error_condition(reply) == "resource-constraint"
    err = reply.element.find(C + "error")
    assert err is not None and err.get("type") == "wait"
    retry = err.find(U + "retry")
    assert retry is not None and retry.get("stamp", "").endswith("Z")
    assert node.services.refusals == {"modules.http_upload.quota": 1}
    slot_urls(await ask(node, alice, slot_request(size=500)))  # what is left still fits
    # Another account has its own quota.
    await node.create_account("bob@example.com")
    bob = node.bind("bob@example.com/pc")
    slot_urls(await ask(node, bob, slot_request(size=2500)))
    # Out of the window, the log is forgotten and alice may upload again.
    module: HttpUpload = node.services.modules["http_upload"]
    await module.clean_up(now=time.time() + 3601)
    slot_urls(await ask(node, alice, slot_request(size=1000)))


async def test_the_quota_log_goes_with_the_account(node: FakeNode):
    await node.start(HttpUpload, **SETTINGS)
    alice = node.bind(ALICE + "/phone")
    slot_urls(await ask(node, alice, slot_request(size=1000)))
    async with node.storage.transaction() as tx:
        assert (await tx.fetchone("SELECT COUNT(*) FROM http_upload_slots"))[0] == 1
    await node.services.accounts.remove(DOMAIN, "alice")
    async with node.storage.transaction() as tx:
        assert (await tx.fetchone("SELECT COUNT(*) FROM http_upload_slots"))[0] == 0


async def test_other_stanzas_to_the_service(node: FakeNode):
    await node.start(HttpUpload, **SETTINGS)
    alice = node.bind(ALICE + "/phone")
    assert error_condition(await ask(node, alice, "<query xmlns='jabber:iq:version'/>")) == "service-unavailable"
    assert error_condition(await ask(node, alice, slot_request(), type_="set")) == "service-unavailable"
    assert error_condition(await ask(node, alice, slot_request(), to=f"someone@{SERVICE}")) == "service-unavailable"
    await node.route(f"<message from='{ALICE}/phone' to='{SERVICE}' id='m1'><body>hi</body></message>")
    assert error_condition(alice.take()[0]) == "service-unavailable"
    await node.route(f"<iq from='{ALICE}/phone' to='{SERVICE}' type='result' id='r1'/>")
    await node.route(f"<presence from='{ALICE}/phone' to='{SERVICE}'/>")
    assert alice.take() == []
    # Other remote domains are left to the rest of the chain.
    await node.route(f"<iq from='{ALICE}/phone' to='upload.other.org' type='get' id='q2'>{slot_request()}</iq>")
    assert error_condition(alice.take()[0]) == "remote-server-not-found"


async def test_a_service_per_domain_and_a_custom_name(tmp_path: Path):
    async with fake_node(tmp_path, domains=["example.com", "example.net"]) as node:
        await node.create_account(ALICE)
        await node.create_account("carol@example.net")
        await node.start(HttpUpload, **SETTINGS, service_domain="files.{domain}")
        alice, carol = node.bind(ALICE + "/a"), node.bind("carol@example.net/c")
        _, get = slot_urls(await ask(node, alice, slot_request(), to="files.example.com"))
        assert get.startswith("https://files.example.com/upload/")
        _, get = slot_urls(await ask(node, carol, slot_request(), to="files.example.net"))
        assert get.startswith("https://files.example.net/upload/")
        assert error_condition(await ask(node, alice, slot_request(), to="files.example.net")) == "not-allowed"


async def test_the_key_is_kept_in_the_data_dir_without_secrets(node: FakeNode, tmp_path: Path):
    first = await node.start(HttpUpload, public_url="https://{domain}")
    key = (tmp_path / KEY_FILE).read_text()
    assert oct((tmp_path / KEY_FILE).stat().st_mode & 0o777) == "0o600"
    await first.stop()
    second = HttpUpload(HttpUpload.Settings(public_url="https://{domain}"))
    await second.start(ModuleHost(node.services, second))
    assert (tmp_path / KEY_FILE).read_text() == key
    s = slot()
    assert first.signer.sign(s.token, s.filename, 1, "", 1) == second.signer.sign(s.token, s.filename, 1, "", 1)
    await second.stop()


async def test_the_cluster_secret_gives_every_member_the_same_key(tmp_path: Path):
    signatures = []
    for name in ("a", "b"):
        async with fake_node(tmp_path / name, cluster={"secret": "the-region-secret-0123456789"}) as node:
            module = await node.start(HttpUpload, public_url="https://{domain}")
            signatures.append(module.signer.sign("t" * 24, "f", 1, "", 1))
            assert not (tmp_path / name / KEY_FILE).exists()
            await module.stop()
    assert signatures[0] == signatures[1]


def test_settings_are_checked():
    assert module_settings({})["http_upload"].enabled is True
    assert BUILTIN["http_upload"] is HttpUpload
    for bad in ({"service_domain": "upload.{dom}"}, {"service_domain": "a b"}, {"public_url": "ftp://x"},
                {"public_url": "https://{host}"}, {"secret": "short"}, {"max_file_size": 0}, {"port": 70000},
                {"cert_file": "/tmp/c.pem"}, {"slot_ttl": 1}, {"bogus": 1}):
        with pytest.raises(ValueError, match="modules.http_upload"):
            module_settings({"http_upload": bad})


# -- the HTTP listener -----------------------------------------------------------------------------------------


@pytest.fixture
async def served(node: FakeNode, tmp_path: Path) -> AsyncIterator[tuple[FakeNode, HttpUpload, str]]:
    port = free_port()
    module = await node.start(HttpUpload, **{**SETTINGS, "public_url": f"http://127.0.0.1:{port}"}, port=port,
                              tls=False, host="127.0.0.1", storage_dir=str(tmp_path / "shared"))
    yield node, module, f"http://127.0.0.1:{port}"
    await module.stop()


async def new_slot_urls(node: FakeNode, size: int, ctype: str = "text/plain", name: str = "notes.txt"
                        ) -> tuple[str, str]:
    alice = node.bind(f"{ALICE}/{os.urandom(4).hex()}")
    return slot_urls(await ask(node, alice, slot_request(name, size, ctype)))


async def http(method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
               ) -> tuple[int, bytes, Any]:
    async with aiohttp.ClientSession() as session, session.request(method, url, data=data, headers=headers) as r:
        return r.status, await r.read(), r.headers


async def test_put_then_get(served: tuple[FakeNode, HttpUpload, str], tmp_path: Path):
    node, module, base = served
    body = "héllo, wörld\n".encode() * 1000
    put, get = await new_slot_urls(node, len(body), "text/plain; charset=utf-8", "ünï côdé.txt")
    assert get.startswith(base)
    status, _, headers = await http("PUT", put, body, {"Content-Type": "text/plain; charset=utf-8"})
    assert status == 201 and headers["Access-Control-Allow-Origin"] == "*"
    status, got, headers = await http("GET", get)
    assert status == 200 and got == body
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Disposition"].startswith("inline;")
    status, got, headers = await http("HEAD", get)
    assert status == 200 and got == b"" and headers["Content-Length"] == str(len(body))
    status, got, _ = await http("GET", get, headers={"Range": "bytes=0-4"})
    assert status == 206 and got == body[:5]
    # Once stored, the slot is used.
    assert (await http("PUT", put, body, {"Content-Type": "text/plain; charset=utf-8"}))[0] == 409
    # Only the exact URL serves it.
    token = urlsplit(get).path.split("/")[2]
    for url in (f"{base}/upload/{token}/other.txt", f"{base}/upload/{token}/", f"{base}/upload/{token}",
                f"{base}/upload/", f"{base}/upload/{'A' * 24}/notes.txt", f"{base}/upload/..%2F..%2Fetc/passwd"):
        assert (await http("GET", url))[0] == 404, url
    assert list((tmp_path / "shared" / token[:2] / token).glob("data-*"))
    assert module.status()["http_stored"] == 1


async def test_html_is_downloaded_not_shown(served: tuple[FakeNode, HttpUpload, str]):
    node, _, _ = served
    body = b"<script>alert(1)</script>"
    put, get = await new_slot_urls(node, len(body), "text/html", "page.html")
    assert (await http("PUT", put, body, {"Content-Type": "text/html"}))[0] == 201
    status, got, headers = await http("GET", get)
    assert status == 200 and got == body
    assert headers["Content-Disposition"].startswith("attachment;")
    assert "sandbox" in headers["Content-Security-Policy"]


async def test_puts_that_do_not_match_the_slot(served: tuple[FakeNode, HttpUpload, str]):
    node, module, _ = served
    put, get = await new_slot_urls(node, 10)
    ok = {"Content-Type": "text/plain"}
    assert (await http("PUT", put, b"x" * 9, ok))[0] == 400
    assert (await http("PUT", put, b"x" * 11, ok))[0] == 413
    assert (await http("PUT", put, b"x" * 10, {"Content-Type": "image/png"}))[0] == 400
    assert (await http("PUT", put.replace("size=10", "size=11"), b"x" * 11, ok))[0] == 403
    assert (await http("PUT", put.replace("sig=", "sig=A"), b"x" * 10, ok))[0] == 403
    assert (await http("PUT", put.split("?")[0], b"x" * 10, ok))[0] == 403
    assert (await http("PUT", put.replace("notes.txt", "other.txt"), b"x" * 10, ok))[0] == 403

    async def chunked() -> AsyncIterator[bytes]:
        yield b"x" * 10

    async with aiohttp.ClientSession() as session, session.put(put, data=chunked(), headers=ok) as r:
        assert r.status == 400  # no Content-Length
    assert (await http("GET", get))[0] == 404  # nothing was stored
    assert (await http("PUT", put, b"x" * 10, ok))[0] == 201
    assert (await http("GET", get))[1] == b"x" * 10


async def test_an_expired_put_url_is_forbidden(served: tuple[FakeNode, HttpUpload, str]):
    node, module, _ = served
    put, _ = await new_slot_urls(node, 3)
    assert module.server is not None
    module.server.clock = lambda: time.time() + 121
    assert (await http("PUT", put, b"abc", {"Content-Type": "text/plain"}))[0] == 403


async def test_cors_preflight(served: tuple[FakeNode, HttpUpload, str]):
    node, _, _ = served
    put, _ = await new_slot_urls(node, 3)
    status, _, headers = await http("OPTIONS", put, headers={"Origin": "https://web.example",
                                                            "Access-Control-Request-Method": "PUT"})
    assert status == 204 and "PUT" in headers["Access-Control-Allow-Methods"]
    assert headers["Access-Control-Allow-Origin"] == "*"


async def test_expired_files_are_removed_by_the_periodic_task(node: FakeNode, tmp_path: Path):
    port = free_port()
    module = await node.start(HttpUpload, **{**SETTINGS, "public_url": f"http://127.0.0.1:{port}"}, port=port,
                              tls=False, host="127.0.0.1", expire_after=60, cleanup_interval=0.05)
    try:
        put, get = await new_slot_urls(node, 3)
        assert (await http("PUT", put, b"abc", {"Content-Type": "text/plain"}))[0] == 201
        token = urlsplit(get).path.split("/")[2]
        meta_file = tmp_path / "upload" / token[:2] / token / "meta.json"
        assert meta_file.exists()  # the default storage_dir
        await asyncio.sleep(0.3)
        assert (await http("GET", get))[0] == 200  # not yet 60 s old
        record = json.loads(meta_file.read_text())
        meta_file.unlink()
        meta_file.write_text(json.dumps({**record, "created": time.time() - 61}))
        for _ in range(50):
            if not meta_file.exists():
                break
            await asyncio.sleep(0.05)
        assert (await http("GET", get))[0] == 404
        assert module.counters["expired"] == 1
    finally:
        await module.stop()
    # Stopped: the listener is closed.
    with pytest.raises(aiohttp.ClientConnectionError):
        await http("GET", get)


async def test_the_module_stops_clean(node: FakeNode):
    module = await node.start(HttpUpload, **SETTINGS, port=free_port(), tls=False, host="127.0.0.1")
    await module.stop()
    module.host.release()
    node.hooks.remove_owner(module)
    assert not node.hooks.has(Hook.ROUTE_REMOTE) and not node.hooks.has(ITEMS_HOOK)
    assert module.server is None
