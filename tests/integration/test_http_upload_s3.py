"""HTTP File Upload (XEP-0363) with ``backend = "s3"``: a real node hands out slots whose PUT and
GET URLs are S3 pre-signed URLs of moto's S3 (``tests/helpers/s3.py``, its own process); the files
never pass through the node.

moto itself does not verify the signature of a pre-signed URL (its IAM authentication reads only
the ``Authorization`` header), so the helper puts a check in front of it that recomputes each
pre-signed request's SigV4 signature with botocore, as S3 does, and answers S3's 403
``SignatureDoesNotMatch``/``AccessDenied`` when it does not hold: the refusals below are the
server's, for URLs the node signed.

* slixmpp's own ``xep_0363`` plugin uploads a file; it comes back byte-identical from the GET
  URL (pre-signed, with the slot's type and a Content-Disposition), and the object is in the bucket
  under the configured prefix.
* A PUT of another length or another Content-Type than the slot's, or to a tampered URL, is
  refused by S3 (403) and stores nothing; the exact PUT then works.  A slot over
  ``max_file_size`` is still refused by the node (``file-too-large`` with ``max-file-size``).
* A node with a short ``expire_after`` removes the uploaded objects under its prefix once they are
  older (ListObjectsV2 + DeleteObjects) and leaves the rest of the bucket alone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import pytest
from slixmpp.exceptions import IqError

from tests.helpers.cluster import eventually
from tests.helpers.node import NodeProcess
from tests.helpers.s3 import S3Server
from tests.helpers.topologies import one_node
from tests.helpers.xmpp_client import Client

PASSWORD = "upload-secret"
NS = "urn:xmpp:http:upload:0"
SERVICE = "upload.localhost"
BUCKET = "meridian-uploads"
MAX = 1_000_000


class Uploader(Client):
    def __init__(self, node: NodeProcess, jid: str) -> None:
        super().__init__(jid, PASSWORD, cert=node.cert)
        self.register_plugin("xep_0363")


async def http(method: str, url: str, *, data: bytes | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.request(method, url, data=data, headers=headers) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


def keys(s3: S3Server, prefix: str) -> list[str]:
    answer = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [str(o["Key"]) for o in answer.get("Contents", [])]


def s3_upload(s3: S3Server, **more: Any) -> dict[str, Any]:
    return {"http_upload": {"backend": "s3", "max_file_size": MAX, "s3": s3.settings(BUCKET, **more)}}


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Iterator[NodeProcess]:
    with one_node(tmp_path_factory.mktemp("upload-s3"), "s3up", users=("alice",), password=PASSWORD,
                  settings={"modules": s3_upload(s3, prefix="up/")}) as n:
        yield n


async def test_slixmpp_uploads_to_the_bucket_and_the_file_comes_back(node: NodeProcess, s3: S3Server,
                                                                     tmp_path: Path):
    content = os.urandom(200_000) + "ünïcödé".encode()
    path = tmp_path / "holiday photo.jpg"
    path.write_bytes(content)
    alice = await Uploader(node, "alice@localhost/phone").login(node.port)
    try:
        url = await alice.plugin["xep_0363"].upload_file(path, timeout=10)  # found through disco#items
        assert alice.plugin["xep_0363"].max_file_size == MAX
    finally:
        await alice.close()
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == s3.endpoint_url  # straight from the bucket…
    assert "X-Amz-Signature=" in parts.query and "X-Amz-Expires=604800" in parts.query  # …pre-signed for 7 days
    key = unquote(parts.path.removeprefix(f"/{BUCKET}/"))
    assert key.startswith("up/") and key.endswith("/holiday photo.jpg")
    status, got, headers = await http("GET", url)
    assert status == 200 and got == content
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["Content-Disposition"] == "inline; filename*=UTF-8''holiday%20photo.jpg"
    assert key in keys(s3, "up/")
    assert "cannot be used" not in node.log()  # the bucket was checked at start
    # The GET URL is signed too: another key with the same signature is refused.
    assert (await http("GET", url.replace("/up/", "/up/x")))[0] == 403


async def test_s3_refuses_puts_of_another_length_or_type_and_the_node_too_large_slots(node: NodeProcess,
                                                                                    s3: S3Server):
    alice = await Uploader(node, "alice@localhost/laptop").login(node.port)
    try:
        plugin = alice.plugin["xep_0363"]
        slot = (await plugin.request_slot(SERVICE, "notes.txt", 100, "text/plain", timeout=5))["http_upload_slot"]
        put, get = slot["put"]["url"], slot["get"]["url"]
        assert "X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost" in put
        plain = {"Content-Type": "text/plain"}
        for data, headers in ((b"x" * 99, plain), (b"x" * 101, plain), (b"x" * 100, {"Content-Type": "text/html"}),
                              (b"x" * 100, {})):
            status, body, _ = await http("PUT", put, data=data, headers=headers)
            assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body, (len(data), headers, body)
        key = unquote(urlsplit(put).path.removeprefix(f"/{BUCKET}/"))
        tampered = put.replace("/notes.txt?", "/other.txt?")
        assert (await http("PUT", tampered, data=b"x" * 100, headers=plain))[0] == 403
        # Nothing stored (S3 answers 404, or 403 to a key without s3:ListBucket rights).
        assert key not in keys(s3, "up/") and (await http("GET", get))[0] in (403, 404)
        assert (await http("PUT", put, data=b"y" * 100, headers=plain))[0] == 200
        status, got, headers = await http("GET", get)
        assert (status, got, headers["Content-Type"]) == (200, b"y" * 100, "text/plain")

        with pytest.raises(IqError) as e:
            await plugin.request_slot(SERVICE, "big.iso", MAX + 1, "application/octet-stream", timeout=5)
        assert str(e.value.iq["error"]["condition"]) == "not-acceptable"
        assert e.value.iq.xml.findtext(f"{{jabber:client}}error/{{{NS}}}file-too-large/{{{NS}}}max-file-size") \
            == str(MAX)
    finally:
        await alice.close()
    assert node.alive()


@pytest.fixture(scope="module")
def expiring(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Iterator[NodeProcess]:
    settings = s3_upload(s3, prefix="short/")
    settings["http_upload"].update(expire_after=2, cleanup_interval=0.5)
    with one_node(tmp_path_factory.mktemp("upload-s3-expiring"), "s3exp", users=("alice",), password=PASSWORD,
                  settings={"modules": settings}) as n:
        yield n


async def test_expired_objects_are_removed_from_the_bucket(expiring: NodeProcess, s3: S3Server):
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key="elsewhere/keep.txt", Body=b"not ours")
    alice = await Uploader(expiring, "alice@localhost/phone").login(expiring.port)
    try:
        slot = (await alice.plugin["xep_0363"].request_slot(SERVICE, "soon-gone.txt", 5, "text/plain",
                                                            timeout=5))["http_upload_slot"]
    finally:
        await alice.close()
    put, get = slot["put"]["url"], slot["get"]["url"]
    assert (await http("PUT", put, data=b"hello", headers={"Content-Type": "text/plain"}))[0] == 200
    key = unquote(urlsplit(put).path.removeprefix(f"/{BUCKET}/"))
    assert key.startswith("short/") and key in keys(s3, "short/")
    await eventually(lambda: key not in keys(s3, "short/"), 20, "the expired object removed")
    assert (await http("GET", get))[0] in (403, 404)
    assert keys(s3, "elsewhere/") == ["elsewhere/keep.txt"]  # outside the prefix: not the node's
    await asyncio.sleep(0.1)
    assert expiring.alive()
