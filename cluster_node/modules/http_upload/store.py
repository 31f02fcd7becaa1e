"""Where uploaded files live, and the SQL log of granted slots the quota is counted on.

:class:`FileStore` is the interface the HTTP handlers use; a file is addressed by its slot's
token (the file name is metadata: it never becomes a path on disk).  :class:`DiskStore` keeps
files under a directory::

    <root>/<token[:2]>/<token>/meta.json      file name, size, content type, creation time
    <root>/<token[:2]>/<token>/data-<random>   the bytes (named by meta.json)

A file appears only once complete: its bytes go to a temporary file first, and ``meta.json`` is
*linked* into place last, so of two PUTs racing for one slot exactly one wins and readers never
see half a file.  Every node of a region that serves GETs must see the same directory (a shared
volume: NFS, CephFS…) — or the files live in an object store: with ``backend = "s3"``
(:mod:`.s3`) clients PUT and GET straight from the bucket with pre-signed URLs and no node
handles the bytes, so that backend is not a :class:`FileStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ...storage import Storage
from ...xmpp.jid import Jid
from .slots import valid_token

__all__ = ["FileMeta", "StoredFile", "FileStore", "DiskStore", "SizeMismatch", "SlotLog", "STEPS"]

log = logging.getLogger("meridian.http_upload")

PARTIAL_AGE = 86_400.0  # seconds after which an upload that never completed is swept away


class SizeMismatch(Exception):
    """The body had another length than the slot's size (nothing was stored)."""


@dataclass(frozen=True, slots=True)
class FileMeta:
    filename: str
    size: int
    content_type: str
    created: float


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A stored file as a GET serves it: from a local ``path`` (sendfile), or a ``redirect`` to
    where it can be fetched (an object store's pre-signed URL)."""

    meta: FileMeta
    path: Path | None = None
    redirect: str | None = None


class FileStore(ABC):
    """Storage of uploaded files by slot token."""

    @abstractmethod
    async def save(self, token: str, meta: FileMeta, body: AsyncIterable[bytes]) -> None:
        """Store ``body`` (exactly ``meta.size`` bytes, else :class:`SizeMismatch`); FileExistsError
        when the token already has a file.  Nothing is left behind when it fails."""

    @abstractmethod
    async def find(self, token: str) -> StoredFile | None:
        """The complete file stored under ``token``, or None."""

    @abstractmethod
    async def delete(self, token: str) -> bool:
        """Remove the file; whether there was one."""

    @abstractmethod
    async def expire(self, created_before: float) -> int:
        """Remove the files created before ``created_before`` (and abandoned partial uploads);
        how many files went."""

    async def close(self) -> None:
        return None


class DiskStore(FileStore):
    """Files in a directory (shared by the nodes of a region that serve them)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _dir(self, token: str) -> Path:
        if not valid_token(token):
            raise ValueError("not a slot token")
        return self.root / token[:2] / token

    async def save(self, token: str, meta: FileMeta, body: AsyncIterable[bytes]) -> None:
        directory = self._dir(token)
        final = directory / "meta.json"
        if final.exists():
            raise FileExistsError(token)
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        name = f"data-{secrets.token_hex(8)}"
        data, tmp_meta = directory / name, directory / f".meta-{name}"
        try:
            written = 0
            with open(directory / f".{name}.part", "wb") as f:
                async for chunk in body:
                    written += len(chunk)
                    if written > meta.size:
                        raise SizeMismatch(f"more than {meta.size} bytes")
                    await asyncio.to_thread(f.write, chunk)
            if written != meta.size:
                raise SizeMismatch(f"{written} bytes instead of {meta.size}")
            os.replace(directory / f".{name}.part", data)
            record = json.dumps({**asdict(meta), "data": name})
            tmp_meta.write_text(record)
            try:
                os.link(tmp_meta, final)  # atomic, and fails if another PUT got there first
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links: exclusive creation instead
                fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                with os.fdopen(fd, "w") as f:
                    f.write(record)
        except BaseException:
            for leftover in (directory / f".{name}.part", data):
                leftover.unlink(missing_ok=True)
            raise
        finally:
            tmp_meta.unlink(missing_ok=True)

    def _read(self, token: str) -> StoredFile | None:
        try:
            directory = self._dir(token)
            record = json.loads((directory / "meta.json").read_text())
            meta = FileMeta(str(record["filename"]), int(record["size"]), str(record["content_type"]),
                            float(record["created"]))
            data = directory / str(record["data"])
        except (ValueError, KeyError, TypeError, OSError):
            return None
        if data.parent != directory or not data.is_file():
            return None
        return StoredFile(meta, path=data)

    async def find(self, token: str) -> StoredFile | None:
        return await asyncio.to_thread(self._read, token)

    async def delete(self, token: str) -> bool:
        try:
            directory = self._dir(token)
        except ValueError:
            return False
        existed = (directory / "meta.json").exists()
        await asyncio.to_thread(shutil.rmtree, directory, True)
        return existed

    def _expire(self, created_before: float) -> int:
        removed = 0
        partial_before = time.time() - PARTIAL_AGE
        for prefix in _subdirs(self.root):
            for directory in _subdirs(prefix):
                if not valid_token(directory.name):
                    continue
                try:
                    created = float(json.loads((directory / "meta.json").read_text())["created"])
                    complete = True
                except (ValueError, KeyError, TypeError, OSError):
                    # No (readable) metadata: an upload in progress, or one that never finished.
                    try:
                        created, complete = directory.stat().st_mtime, False
                    except OSError:
                        continue  # gone meanwhile (another node sharing the directory)
                if created >= (created_before if complete else partial_before):
                    continue
                shutil.rmtree(directory, ignore_errors=True)
                removed += complete
            with contextlib.suppress(OSError):
                prefix.rmdir()  # only when empty
        return removed

    async def expire(self, created_before: float) -> int:
        return await asyncio.to_thread(self._expire, created_before)


def _subdirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


# -- the quota's log of slots ---------------------------------------------------------------------------

STEPS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS http_upload_slots (
               token TEXT NOT NULL PRIMARY KEY, domain TEXT NOT NULL, username TEXT NOT NULL,
               size {bigint} NOT NULL, created_at {bigint} NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS http_upload_slots_user ON http_upload_slots (domain, username, created_at)",
    ]),
]


class SlotLog:
    """The slots each account was given (``http_upload_slots``, emptied when the account is
    removed), in the domain database every node of the deployment shares."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def migrate(self) -> None:
        await self.storage.migrate_module("http_upload", STEPS, user_tables=("http_upload_slots",))

    async def reserve(self, user: Jid, token: str, size: int, now: float, since: float,
                      check: Callable[[list[tuple[float, int]]], None]) -> None:
        """Log a slot of ``size`` bytes for ``user`` unless ``check``, given the (time, size) of the
        slots logged for the user after ``since``, raises (one transaction)."""
        async with self.storage.transaction(write=True) as tx:
            rows = await tx.fetchall(
                "SELECT created_at, size FROM http_upload_slots WHERE domain = ? AND username = ? AND created_at > ?",
                user.domain, user.local or "", int(since))
            check([(float(r[0]), int(r[1])) for r in rows])
            await tx.execute("INSERT INTO http_upload_slots (token, domain, username, size, created_at) "
                             "VALUES (?, ?, ?, ?, ?)", token, user.domain, user.local or "", size, int(now))

    async def forget(self, before: float) -> int:
        """Drop the log older than ``before`` (out of every quota window)."""
        async with self.storage.transaction(write=True) as tx:
            return int(await tx.execute("DELETE FROM http_upload_slots WHERE created_at < ?", int(before)))
