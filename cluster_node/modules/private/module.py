"""Private XML Storage (XEP-0049): an account keeps namespaced XML on the server for itself.

The ``<query xmlns='jabber:iq:private'/>`` of an IQ from the account (no 'to', or its own bare
JID) names namespaces by its children: a get returns what is stored under each one (or the
requested element, empty, when nothing is), a set replaces what is stored under each namespace
it carries (several elements of one namespace are stored together).  Rules of the XEP:

* only the account itself: anyone else gets ``forbidden``;
* a query without a child is a ``bad-request`` (the XEP's "Bad Format");
* a child without a namespace of its own (none, or ``jabber:iq:private`` inherited from the
  query) and the reserved namespaces (``jabber:…``, ``http://jabber.org/…``, ``vcard-temp``)
  are ``not-acceptable``;
* what one namespace stores is at most ``max_size`` bytes, and an account stores at most
  ``max_namespaces`` namespaces (``not-acceptable`` beyond; nothing of the set is stored).

Rows live in the domain database (``private_storage``), shared by every node and region, and are
deleted with the account.

A namespace another module keeps itself is handed to it (hooks ``private_get``/``private_set``):
with the pep module, ``storage:bookmarks`` (XEP-0048) is read from and written to PEP, so a client
on XEP-0049 and one on XEP-0402 see the same bookmarks (XEP-0402 §5.3).  A row stored here before
such a module took the namespace is served until the module holds something, and handed to it on
that first get (so it is moved, not lost).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET

from pydantic import Field

from ...core.hooks import Hook
from ...core.module import Module, ModuleHost, ModuleSettings, Xep
from ...core.router import IqRequest
from ...storage import Storage
from ...xmpp import errors
from ...xmpp.fragment import parse_stanza
from ...xmpp.jid import Jid
from ...xmpp.stanza import serialize

__all__ = ["PrivateStorage", "PrivateSettings", "PrivateStore", "PRIVATE", "reserved"]

PRIVATE = "jabber:iq:private"
Q = f"{{{PRIVATE}}}"

log = logging.getLogger("meridian.private")

STEPS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE IF NOT EXISTS private_storage (
               domain TEXT NOT NULL, username TEXT NOT NULL, namespace TEXT NOT NULL, data {blob} NOT NULL,
               PRIMARY KEY (domain, username, namespace))""",
    ]),
]


class PrivateSettings(ModuleSettings):
    max_size: int = Field(65_536, ge=64, le=10 * 1024 * 1024,
                          description="bytes stored under one namespace (larger sets are refused with not-acceptable)")
    max_namespaces: int = Field(100, ge=1, description="namespaces one account may store under")


def reserved(namespace: str) -> bool:
    """XEP-0049 §2.3: namespaces beginning with 'jabber:' or 'http://jabber.org/', and 'vcard-temp'."""
    return namespace.startswith(("jabber:", "http://jabber.org/")) or namespace == "vcard-temp"


_WRAPPER = len(f"<query xmlns='{PRIVATE}'></query>")  # around what one namespace stores


def _namespace(tag: str) -> str:
    return tag[1:].partition("}")[0] if tag.startswith("{") else ""


class PrivateStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def migrate(self) -> None:
        await self.storage.migrate_module("private", STEPS, user_tables=("private_storage",))

    async def get(self, user: Jid, namespaces: list[str]) -> dict[str, bytes]:
        marks = ", ".join("?" * len(namespaces))
        async with self.storage.transaction() as tx:
            rows = await tx.fetchall(f"SELECT namespace, data FROM private_storage WHERE domain = ? AND username = ? "
                                     f"AND namespace IN ({marks})", user.domain, user.local or "", *namespaces)
        return {str(r[0]): bytes(r[1]) for r in rows}

    async def delete(self, user: Jid, namespaces: list[str]) -> None:
        marks = ", ".join("?" * len(namespaces))
        async with self.storage.transaction(write=True) as tx:
            await tx.execute(f"DELETE FROM private_storage WHERE domain = ? AND username = ? "
                             f"AND namespace IN ({marks})", user.domain, user.local or "", *namespaces)

    async def put(self, user: Jid, entries: dict[str, bytes], max_namespaces: int) -> bool:
        """Store every entry, or none (False) when the account would hold more than ``max_namespaces``."""
        domain, username = user.domain, user.local or ""
        async with self.storage.transaction(write=True) as tx:
            marks = ", ".join("?" * len(entries))
            row = await tx.fetchone(f"SELECT COUNT(*) FROM private_storage WHERE domain = ? AND username = ? "
                                    f"AND namespace NOT IN ({marks})", domain, username, *entries)
            if (int(row[0]) if row else 0) + len(entries) > max_namespaces:
                return False
            for namespace, data in entries.items():
                await tx.execute(
                    "INSERT INTO private_storage (domain, username, namespace, data) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (domain, username, namespace) DO UPDATE SET data = excluded.data",
                    domain, username, namespace, data)
        return True


class PrivateStorage(Module):
    name = "private"
    description = "Private XML Storage: namespaced XML an account keeps on the server for itself"
    xeps = (Xep(49, "1.2", "complete", "storage:bookmarks is the PEP bookmarks list when the pep module runs "
                "(XEP-0402 §5.3)"),)
    Settings = PrivateSettings

    async def start(self, host: ModuleHost) -> None:
        self.host = host
        self.cfg: PrivateSettings = self.settings  # type: ignore[assignment]
        self.store = PrivateStore(host.storage)
        await self.store.migrate()
        host.add_account_iq(PRIVATE, "query", self._query)

    async def _query(self, req: IqRequest) -> ET.Element | None:
        if req.sender.bare != req.to:
            raise errors.Forbidden("private XML belongs to the account alone")
        if len(req.payload) == 0:
            raise errors.BadRequest("the query holds the element (or namespace) to get or set")
        groups: dict[str, list[ET.Element]] = {}
        for child in req.payload:
            namespace = _namespace(child.tag)
            if not namespace or namespace == PRIVATE:
                raise errors.NotAcceptable("a stored element needs a namespace of its own")
            if reserved(namespace):
                raise errors.NotAcceptable(f"{namespace!r} is a reserved namespace")
            groups.setdefault(namespace, []).append(child)
        if req.stanza.type == "get":
            return await self._get(req.to, groups)
        entries: dict[str, bytes] = {}
        for namespace, elements in groups.items():
            wrapper = ET.Element(Q + "query")
            wrapper.extend(elements)
            data = serialize(wrapper)
            if len(data) - _WRAPPER > self.cfg.max_size:
                raise errors.NotAcceptable(f"at most {self.cfg.max_size} bytes are stored under one namespace")
            entries[namespace] = data
        hooks = self.host.hooks
        if hooks.has(Hook.PRIVATE_SET):
            taken = [ns_ for ns_ in groups if await hooks.first_async(Hook.PRIVATE_SET, req.to, ns_, groups[ns_])]
            if taken:
                await self.store.delete(req.to, taken)
                for namespace in taken:
                    del entries[namespace]
        if entries and not await self.store.put(req.to, entries, self.cfg.max_namespaces):
            raise errors.NotAcceptable(f"an account stores under at most {self.cfg.max_namespaces} namespaces")
        return None

    async def _get(self, user: Jid, groups: dict[str, list[ET.Element]]) -> ET.Element:
        q = ET.Element(Q + "query")
        hooks = self.host.hooks
        elsewhere: dict[str, list[ET.Element]] = {}
        if hooks.has(Hook.PRIVATE_GET):
            for namespace in groups:
                found = await hooks.first_async(Hook.PRIVATE_GET, user, namespace)
                if found is not None:
                    elsewhere[namespace] = found
        rest = [n for n in groups if n not in elsewhere]
        stored = await self.store.get(user, rest) if rest else {}
        for namespace, asked in groups.items():
            if namespace in elsewhere:
                q.extend(elsewhere[namespace] or [ET.Element(asked[0].tag)])
                continue
            data = stored.get(namespace)
            if data is None:
                q.append(ET.Element(asked[0].tag))  # nothing stored: the element asked for, empty
                continue
            elements = list(parse_stanza(data).element)
            q.extend(elements)
            if hooks.has(Hook.PRIVATE_SET):
                await self._move(user, namespace, elements)
        return q

    async def _move(self, user: Jid, namespace: str, elements: list[ET.Element]) -> None:
        """Hand a row stored here to the module that keeps its namespace now (if one does)."""
        try:
            taken = await self.host.hooks.first_async(Hook.PRIVATE_SET, user, namespace, elements)
        except errors.StanzaError as e:  # over a limit there: the row stays here, and is still served
            log.info("private XML %s of %s not moved: %s", namespace, user, e)
            return
        if taken:
            await self.store.delete(user, [namespace])
