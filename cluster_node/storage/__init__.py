"""Persistent data (accounts, rosters, offline messages) behind one :class:`Storage` protocol."""

from __future__ import annotations

from pathlib import Path

from .base import Credentials, RosterItem, Storage

__all__ = ["Storage", "RosterItem", "Credentials", "open_storage"]


def open_storage(url: str) -> Storage:
    """A backend for ``url`` (not yet connected: call ``open()``).

    ``sqlite:///abs/path.db``, ``sqlite:relative.db``, a bare path, or ``postgresql://…``.
    """
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStorage

        return PostgresStorage(url)
    if url.startswith("sqlite:"):
        path = url[len("sqlite:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError(f"storage url {url!r}: no database path")
        from .sqlite import SqliteStorage

        return SqliteStorage(Path(path))
    if "://" in url or not url:
        raise ValueError(f"storage url {url!r}: use sqlite:///path.db or postgresql://user@host/db")
    from .sqlite import SqliteStorage

    return SqliteStorage(Path(url))
