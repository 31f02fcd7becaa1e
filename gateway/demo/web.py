"""The demo's web client: Converse.js, served by every node at ``/web/``.

``web/`` in the repository pins Converse.js (``package.json``, ``package-lock.json``; ``npm ci
--prefix web`` installs it, as ``scripts/meridian demo`` does on first use) and holds the page that
configures it (``index.html``).  The demo copies the page and Converse's ``dist/`` (without source
maps) into ``<demo dir>/web``, the ``[websocket] web_root`` of every node: the nodes then serve
only what a browser needs, nothing is fetched from outside, and a fresh ``npm ci`` does not change
files under a running demo.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

__all__ = ["REPO_WEB", "converse_version", "prepare_web_root"]

REPO_WEB = Path(__file__).resolve().parents[2] / "web"
_STAMP = ".converse-version"


def _dist(source: Path) -> Path:
    return source / "node_modules" / "converse.js" / "dist"


def converse_version(source: Path = REPO_WEB) -> str | None:
    """The installed Converse.js version, or None when ``npm ci --prefix web`` has not run."""
    try:
        version = json.loads((source / "node_modules" / "converse.js" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(version) if (_dist(source) / "converse.min.js").is_file() else None


def prepare_web_root(target: Path, source: Path = REPO_WEB) -> Path | None:
    """Fill ``target`` with index.html and Converse's dist/ (copied again only when the installed
    version changed); None, and ``target`` left alone, when Converse is not installed."""
    version = converse_version(source)
    if version is None or not (source / "index.html").is_file():
        return None
    target.mkdir(parents=True, exist_ok=True)
    stamp = target / _STAMP
    if not (stamp.is_file() and stamp.read_text() == version and (target / "dist").is_dir()):
        shutil.rmtree(target / "dist", ignore_errors=True)
        shutil.copytree(_dist(source), target / "dist", ignore=shutil.ignore_patterns("*.map"))
        stamp.write_text(version)
    shutil.copyfile(source / "index.html", target / "index.html")
    return target
