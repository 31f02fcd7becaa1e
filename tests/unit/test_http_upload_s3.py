"""HTTP File Upload's S3 backend without an S3 server: the settings and their one-line errors, the
object keys and URLs (pre-signing needs no network with static credentials), what the PUT URL
signs (checked with the S3 test server's own verifier, :func:`tests.helpers.s3.presigned_error`),
the expiry's listing and batched deletes against a fake client, and the module on the fake node:
slots answered with S3 URLs, no listener, one cleaner per region."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from aiohttp import web

from cluster_node.core.module import ModuleHost
from cluster_node.modules.http_upload import HttpUpload
from cluster_node.modules.http_upload.s3 import MAX_PUT_SIZE, S3Settings, S3Store, object_key, public_get_url
from cluster_node.modules.http_upload.slots import NS, Slot
from cluster_node.modules.loader import module_settings
from cluster_node.settings import NodeSettings
from tests.helpers.fake_host import FakeNode, error_condition, fake_node
from tests.helpers.ports import free_port
from tests.helpers.s3 import presigned_error

U = f"{{{NS}}}"
ALICE = "alice@example.com"
SERVICE = "upload.example.com"
TOKEN = "abcdefghijklmnopqrstuvwx"
KEYS = {"AKIAUNITTEST": "unit-test-secret-0123456789"}
S3 = {"bucket": "meridian-files", "endpoint_url": "http://127.0.0.1:9", "path_style": True,
      "access_key_id": "AKIAUNITTEST", "secret_access_key": KEYS["AKIAUNITTEST"]}


def settings_error(table: dict[str, Any]) -> str:
    with pytest.raises(ValueError) as e:
        module_settings({"http_upload": table})
    return str(e.value)


# -- settings -------------------------------------------------------------------------------------------------


def test_disk_is_the_default_and_s3_needs_only_a_bucket():
    cfg = module_settings({})["http_upload"]
    assert cfg.backend == "disk" and cfg.s3.bucket == ""  # type: ignore[attr-defined]
    cfg = module_settings({"http_upload": {"backend": "s3", "s3": {"bucket": "files"}}})["http_upload"]
    s3 = cfg.s3  # type: ignore[attr-defined]
    assert (s3.region, s3.prefix, s3.path_style, s3.public_url, s3.get_expiry) == ("us-east-1", "", False, "", 604_800)
    assert s3.access_key_id == "" and s3.secret_access_key.get_secret_value() == ""  # the AWS credential chain


@pytest.mark.parametrize(("table", "error"), [
    ({"backend": "s3"}, 'modules.http_upload.s3: Value error, bucket is required with backend = "s3"'),
    ({"backend": "s3", "s3": {"region": "eu-west-1"}}, "modules.http_upload.s3: Value error, bucket is required"),
    ({"backend": "s3", "port": 5443, "s3": {"bucket": "files"}}, "modules.http_upload.backend: Value error, port "),
    ({"backend": "s3", "public_url": "https://x", "s3": {"bucket": "files"}},
     "modules.http_upload.backend: Value error, public_url "),
    ({"backend": "s3", "max_file_size": MAX_PUT_SIZE + 1, "s3": {"bucket": "files"}},
     "modules.http_upload.backend: Value error, with backend = \"s3\" max_file_size is at most"),
    ({"backend": "ftp"}, "modules.http_upload.backend: Input should be 'disk' or 's3'"),
    ({"s3": {"bucket": "a"}}, "modules.http_upload.s3.bucket: Value error, a bucket name"),
    ({"s3": {"bucket": "files", "endpoint_url": "minio:9000"}}, "modules.http_upload.s3.endpoint_url: "),
    ({"s3": {"bucket": "files", "public_url": "https://{host}"}}, "modules.http_upload.s3.public_url: "),
    ({"s3": {"bucket": "files", "prefix": "/up"}}, "modules.http_upload.s3.prefix: "),
    ({"s3": {"bucket": "files", "get_expiry": 8 * 86_400}}, "modules.http_upload.s3.get_expiry: "),
    ({"s3": {"bucket": "files", "access_key_id": "AKIA"}}, "modules.http_upload.s3.secret_access_key: "
     "Value error, give both access_key_id and secret_access_key"),
    ({"s3": {"bucket": "files", "acl": "public-read"}}, "modules.http_upload.s3.acl: unknown setting"),
])
def test_bad_settings_name_the_key_on_one_line(table: dict[str, Any], error: str):
    message = settings_error(table)
    assert message.startswith(error) and "\n" not in message


def test_the_secret_is_never_shown():
    table = {"backend": "s3", "s3": {"bucket": "files", "access_key_id": "AKIA", "secret_access_key": "hush-hush"}}
    cfg = module_settings({"http_upload": table})["http_upload"]
    assert "hush-hush" not in repr(cfg) and "hush-hush" not in str(cfg)
    assert "hush-hush" not in settings_error({**table, "s3": {**table["s3"], "bucket": "x"}})


def test_the_secret_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MERIDIAN_MODULES__HTTP_UPLOAD__S3__SECRET_ACCESS_KEY", "from-the-env")
    node = NodeSettings(modules={"http_upload": {"backend": "s3", "s3": {"bucket": "files", "access_key_id": "AK"}}})
    cfg = module_settings(node.modules)["http_upload"]
    assert cfg.s3.secret_access_key.get_secret_value() == "from-the-env"  # type: ignore[attr-defined]


# -- keys and URLs --------------------------------------------------------------------------------------------


def slot(filename: str = "my file ü.txt", size: int = 1234, ctype: str = "text/plain") -> Slot:
    return Slot(TOKEN, filename, size, ctype, 0)


def test_object_keys_and_public_urls():
    assert object_key("", slot()) == f"{TOKEN}/my file ü.txt"
    assert object_key("up/", slot()) == f"up/{TOKEN}/my file ü.txt"
    assert public_get_url("https://cdn.example.com/files/", f"up/{TOKEN}/a b#?.txt") == \
        f"https://cdn.example.com/files/up/{TOKEN}/a%20b%23%3F.txt"


@pytest.fixture
async def store() -> AsyncIterator[S3Store]:
    s = await S3Store.open(S3Settings(**S3, prefix="up/"))
    yield s
    await s.close()


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def headers_for(url: str, **more: str) -> dict[str, str]:
    return {"host": urlsplit(url).netloc, **more}


def check(url: str, method: str, headers: dict[str, str], now: float | None = None) -> tuple[str, str] | None:
    parts = urlsplit(url)
    when = now if now is not None else datetime.now(UTC).timestamp()
    return presigned_error(method, parts.path, parts.query, headers, KEYS, when)


async def test_the_put_url_signs_the_length_and_the_type(store: S3Store):
    url = await store.put_url(slot(), 120)
    parts = urlsplit(url)
    assert parts.netloc == "127.0.0.1:9"  # path-style: <endpoint>/<bucket>/<key>
    assert unquote(parts.path) == f"/meridian-files/up/{TOKEN}/my file ü.txt"
    q = query(url)
    assert q["X-Amz-SignedHeaders"] == "content-length;content-type;host"
    assert q["X-Amz-Expires"] == "120" and q["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert q["X-Amz-Credential"].startswith("AKIAUNITTEST/") and "/us-east-1/s3/" in q["X-Amz-Credential"]
    assert KEYS["AKIAUNITTEST"] not in url
    good = headers_for(url, **{"content-length": "1234", "content-type": "text/plain"})
    assert check(url, "PUT", good) is None
    for changed in ({"content-length": "1233"}, {"content-length": "1235"}, {"content-type": "text/html"}):
        assert check(url, "PUT", {**good, **changed}) is not None
        assert check(url, "PUT", {**good, **changed})[0] == "SignatureDoesNotMatch"  # type: ignore[index]
    assert check(url, "PUT", {k: v for k, v in good.items() if k != "content-type"})[0] == "SignatureDoesNotMatch"  # type: ignore[index]
    assert check(url, "GET", good)[0] == "SignatureDoesNotMatch"  # type: ignore[index]
    assert check(url.replace("/up/", "/up2/"), "PUT", good)[0] == "SignatureDoesNotMatch"  # type: ignore[index]
    later = datetime.now(UTC).timestamp() + 121
    assert check(url, "PUT", good, later) == ("AccessDenied", "Request has expired")


async def test_without_a_requested_type_only_the_length_is_signed(store: S3Store):
    url = await store.put_url(slot(ctype=""), 60)
    assert query(url)["X-Amz-SignedHeaders"] == "content-length;host"
    assert check(url, "PUT", headers_for(url, **{"content-length": "1234", "content-type": "image/png"})) is None


async def test_the_get_url_is_pre_signed_with_type_and_disposition(store: S3Store):
    url = await store.get_url(slot("page.html", ctype="text/html"), "example.com")
    q = query(url)
    assert q["X-Amz-Expires"] == "604800" and q["X-Amz-SignedHeaders"] == "host"
    assert q["response-content-type"] == "text/html"
    assert q["response-content-disposition"] == "attachment; filename*=UTF-8''page.html"  # never shown inline
    assert check(url, "GET", headers_for(url)) is None
    assert check(url.replace("response-content-type=text%2Fhtml", "response-content-type=text%2Fplain"), "GET",
                 headers_for(url))[0] == "SignatureDoesNotMatch"  # type: ignore[index]
    url = await store.get_url(slot("photo.jpg", ctype="image/jpeg"), "example.com")
    assert query(url)["response-content-disposition"] == "inline; filename*=UTF-8''photo.jpg"


async def test_a_public_url_gives_plain_get_urls():
    s = await S3Store.open(S3Settings(**{**S3, "public_url": "https://files.{domain}/dl"}, prefix="up/"))
    try:
        assert await s.get_url(slot(), "example.com") == f"https://files.example.com/dl/up/{TOKEN}/my%20file%20%C3%BC.txt"
    finally:
        await s.close()


async def test_virtual_hosted_style_names_the_bucket_in_the_host():
    s = await S3Store.open(S3Settings(**{**S3, "path_style": False, "endpoint_url": "https://s3.example.net"}))
    try:
        parts = urlsplit(await s.put_url(slot(), 60))
        assert parts.netloc == "meridian-files.s3.example.net" and unquote(parts.path) == f"/{TOKEN}/my file ü.txt"
    finally:
        await s.close()


# -- expiry ---------------------------------------------------------------------------------------------------


class FakeClient:
    """list_objects_v2 pages and delete_objects, as aiobotocore answers them."""

    def __init__(self, objects: list[tuple[str, float]], page: int = 700, fail: set[str] | None = None) -> None:
        self.objects = objects
        self.page = page
        self.fail = fail or set()
        self.deletes: list[list[str]] = []
        self.listed: list[dict[str, Any]] = []

    def get_paginator(self, name: str) -> Any:
        assert name == "list_objects_v2"
        client = self

        class Paginator:
            async def paginate(self, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
                client.listed.append(kwargs)
                chosen = [(k, t) for k, t in client.objects if k.startswith(kwargs["Prefix"])]
                for i in range(0, len(chosen), client.page):
                    yield {"Contents": [{"Key": k, "LastModified": datetime.fromtimestamp(t, UTC)}
                                        for k, t in chosen[i:i + client.page]]}

        return Paginator()

    async def delete_objects(self, *, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
        assert Delete["Quiet"] is True
        keys = [o["Key"] for o in Delete["Objects"]]
        self.deletes.append(keys)
        return {"Errors": [{"Key": k, "Code": "AccessDenied", "Message": "no"} for k in keys if k in self.fail]}


async def test_expire_lists_the_prefix_and_deletes_in_batches_of_1000():
    old = [(f"up/{i:05d}/f", 1000.0) for i in range(2300)]
    client = FakeClient(old + [("up/new/f", 5000.0), ("other/old/f", 10.0)], fail={"up/00007/f"})
    store = S3Store(S3Settings(**S3, prefix="up/"), client, contextlib.AsyncExitStack())
    assert await store.expire(2000.0) == 2299
    assert client.listed == [{"Bucket": "meridian-files", "Prefix": "up/"}]
    assert [len(batch) for batch in client.deletes] == [1000, 1000, 300]
    deleted = {k for batch in client.deletes for k in batch}
    assert "up/new/f" not in deleted and "other/old/f" not in deleted and len(deleted) == 2300
    client = FakeClient([("up/a/f", 5000.0)])
    assert await S3Store(S3Settings(**S3), client, contextlib.AsyncExitStack()).expire(2000.0) == 0
    assert client.deletes == []


# -- the module on the fake node ------------------------------------------------------------------------------


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with fake_node(tmp_path) as n:
        yield n


async def test_slots_are_s3_urls_and_no_listener_runs(node: FakeNode, tmp_path: Path):
    module = await node.start(HttpUpload, backend="s3", max_file_size=10_000, s3={**S3, "prefix": "up/"})
    try:
        assert module.server is None and module.bucket is not None
        assert not (tmp_path / "upload").exists() and not (tmp_path / "http_upload.key").exists()
        alice = node.bind(ALICE + "/phone")
        await node.route(f"<iq from='{ALICE}/phone' to='{SERVICE}' type='get' id='s1'>"
                         f"<request xmlns='{NS}' filename='a b.png' size='4321' content-type='image/png'/></iq>")
        reply = alice.take()[0]
        assert reply.type == "result", reply
        put_el, get_el = reply.element.find(f"{U}slot/{U}put"), reply.element.find(f"{U}slot/{U}get")
        assert put_el is not None and get_el is not None
        put, get = put_el.get("url", ""), get_el.get("url", "")
        assert put and get and urlsplit(put).path == urlsplit(get).path
        assert unquote(urlsplit(put).path).startswith("/meridian-files/up/")
        assert unquote(urlsplit(put).path).endswith("/a b.png")
        assert check(put, "PUT", headers_for(put, **{"content-length": "4321", "content-type": "image/png"})) is None
        assert module.counters["slots"] == 1
        # Still the node's: too large.
        await node.route(f"<iq from='{ALICE}/phone' to='{SERVICE}' type='get' id='s2'>"
                         f"<request xmlns='{NS}' filename='big' size='10001'/></iq>")
        reply = alice.take()[0]
        assert error_condition(reply) == "not-acceptable"
        assert reply.element.findtext(f"{{jabber:client}}error/{U}file-too-large/{U}max-file-size") == "10000"
    finally:
        await module.stop()
    assert module.bucket is None


async def test_only_the_lowest_named_member_cleans_the_bucket(node: FakeNode, monkeypatch: pytest.MonkeyPatch):
    module = await node.start(HttpUpload, backend="s3", expire_after=60, cleanup_interval=3600, s3=S3)
    try:
        await module.bucket.close()
        client = FakeClient([("x/old", 1.0)])
        module.store = module.bucket = S3Store(S3Settings(**S3), client, contextlib.AsyncExitStack())
        members: list[str] = []
        monkeypatch.setattr(ModuleHost, "cluster_members", property(lambda self: members))
        assert module.host.node == "node1"
        members[:] = ["node0", "node2"]
        assert not module.cleans_store() and await module.clean_up() == 0 and client.deletes == []
        members[:] = ["node2", "node3"]
        assert module.cleans_store() and await module.clean_up() == 1 and client.deletes == [["x/old"]]
        assert module.counters["expired"] == 1
    finally:
        await module.stop()


async def test_a_bucket_that_cannot_be_used_is_said_at_start(node: FakeNode, caplog: pytest.LogCaptureFixture):
    """A store without the bucket (HeadBucket answers 404): a warning, and the node starts all the same."""
    heads: list[str] = []

    async def missing(request: web.Request) -> web.Response:
        heads.append(f"{request.method} {request.path}")
        return web.Response(status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", missing)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        module = await node.start(HttpUpload, backend="s3", s3={**S3, "endpoint_url": f"http://127.0.0.1:{port}"})
        try:
            assert module._check is not None
            await asyncio.wait_for(asyncio.shield(module._check), 10)
            assert heads == ["HEAD /meridian-files"]
            assert any("the bucket meridian-files cannot be used: ClientError" in r.getMessage()
                       for r in caplog.records)
        finally:
            await module.stop()
    finally:
        await runner.cleanup()
