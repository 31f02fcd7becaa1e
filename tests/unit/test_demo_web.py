"""The demo's web root: the page and Converse's dist/ copied from web/, without source maps,
copied again only when the installed version changes."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.demo.web import REPO_WEB, converse_version, prepare_web_root


def _install(source: Path, version: str) -> None:
    dist = source / "node_modules" / "converse.js" / "dist"
    (dist / "images").mkdir(parents=True, exist_ok=True)
    (source / "node_modules" / "converse.js" / "package.json").write_text(json.dumps({"version": version}))
    (dist / "converse.min.js").write_text(f"/* {version} */")
    (dist / "converse.min.js.map").write_text("{}")
    (dist / "images" / "favicon.ico").write_bytes(b"\0")
    (source / "index.html").write_text("<title>page</title>")


def test_nothing_installed_is_none(tmp_path: Path) -> None:
    assert converse_version(tmp_path) is None
    assert prepare_web_root(tmp_path / "root", tmp_path) is None
    assert not (tmp_path / "root").exists()


def test_copies_the_page_and_dist_without_maps_and_follows_version_changes(tmp_path: Path) -> None:
    source, root = tmp_path / "web", tmp_path / "root"
    _install(source, "14.0.0")
    assert prepare_web_root(root, source) == root
    assert (root / "index.html").read_text() == "<title>page</title>"
    assert (root / "dist" / "converse.min.js").read_text() == "/* 14.0.0 */"
    assert (root / "dist" / "images" / "favicon.ico").exists()
    assert not (root / "dist" / "converse.min.js.map").exists()
    (root / "dist" / "converse.min.js").write_text("kept")  # same version: not copied again
    prepare_web_root(root, source)
    assert (root / "dist" / "converse.min.js").read_text() == "kept"
    _install(source, "14.0.1")
    prepare_web_root(root, source)
    assert (root / "dist" / "converse.min.js").read_text() == "/* 14.0.1 */"


def test_the_page_loads_converse_as_a_module_and_nothing_from_outside() -> None:
    page = (REPO_WEB / "index.html").read_text()
    assert '<script type="module" src="dist/converse.min.js">' in page
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # nothing from outside
