"""``[websocket] web_root``: the directory is served at /web/ with its index.html, and nothing
outside it is reachable (dot-dot paths, symlinks leading out)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cluster_node.net.web_root import add_web_root
from cluster_node.settings import ConfigError


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    root = tmp_path / "web"
    (root / "dist").mkdir(parents=True)
    (root / "index.html").write_text("<title>client</title>")
    (root / "dist" / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("not for the web")
    (root / "leak.txt").symlink_to(tmp_path / "secret.txt")
    app = web.Application()
    add_web_root(app, root)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_index_and_files_are_served(client: TestClient) -> None:
    r = await client.get("/web", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/web/"
    r = await client.get("/web/")
    assert r.status == 200 and "text/html" in r.headers["Content-Type"] and "<title>client" in await r.text()
    r = await client.get("/web/dist/app.js")
    assert r.status == 200 and "javascript" in r.headers["Content-Type"]
    assert (await client.get("/web/dist/missing.js")).status == 404


@pytest.mark.parametrize("path", ["/web/../secret.txt", "/web/%2e%2e/secret.txt", "/web/leak.txt", "/web/dist/"])
async def test_nothing_outside_the_directory_and_no_listing(client: TestClient, path: str) -> None:
    r = await client.get(path)
    assert r.status in (403, 404) and "not for the web" not in await r.text()


def test_a_missing_directory_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="websocket.web_root: .*absent is not a directory"):
        add_web_root(web.Application(), tmp_path / "absent")
