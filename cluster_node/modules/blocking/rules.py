"""XEP-0191 Blocking Command without I/O: the block list, JID matching, what happens to a stanza
that meets a block, the protocol elements, and the per-member cache of block lists.

* :class:`Blocklist` — one user's blocked JIDs and :meth:`Blocklist.matches`, the matching rules
  of XEP-0191 §3.1, which are those of XEP-0016 §2.1: an item ``user@domain/resource`` matches
  only that full JID; ``user@domain`` any resource of that bare JID; ``domain/resource`` that
  resource of any entity at the domain (``muc.example.org/nick``: that nickname in every room, as
  ejabberd and MongooseIM read it); ``domain`` the domain itself, every JID at it, and every JID
  at one of its subdomains.
* :func:`inbound` / :func:`outbound` — what the server does with a stanza from a blocked JID to
  the user (§3.3: presence dropped without an answer; messages and IQ get/set answered with
  ``<service-unavailable/>``; IQ results, errors dropped) and with one from the user to a blocked
  JID (``<not-acceptable/>`` with ``<blocked xmlns='urn:xmpp:blocking:errors'/>``; presence
  dropped, except unavailable — a blocked contact may always learn that the user is offline,
  which is what blocking shows it, §3.2; errors pass: they answer what came before).
* :func:`parse_items` — the JIDs of a ``<block/>``/``<unblock/>``, normalised (RFC 7622), checked.
* :class:`ListCache` — a bounded TTL + LRU map of block lists (time passed in).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

from ...xmpp import errors, ns
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza

__all__ = ["NS", "ERRORS_NS", "Blocklist", "EMPTY", "DROP", "ERROR", "PASS", "inbound", "outbound",
           "parse_items", "list_element", "push_element", "blocked_reply", "ListCache"]

NS = "urn:xmpp:blocking"  # XEP-0191
ERRORS_NS = "urn:xmpp:blocking:errors"

_ITEM = f"{{{NS}}}item"

DROP: Final = "drop"  # silently
ERROR: Final = "error"  # answered with an error (which one depends on the direction)
PASS: Final = "pass"  # routed as if there were no block


class Blocklist:
    """One user's block list, indexed for matching (built once per load, then only read)."""

    __slots__ = ("items", "_full", "_bare", "_domain_resource", "_domains")

    def __init__(self, items: Iterable[str] = ()) -> None:
        self.items: tuple[str, ...] = tuple(items)
        full: set[str] = set()
        bare: set[str] = set()
        domain_resource: set[tuple[str, str]] = set()
        domains: set[str] = set()
        for item in self.items:
            try:
                jid = Jid.parse(item)
            except InvalidJid:
                continue  # stored before a stricter parser: it matches nothing
            if jid.local is not None:
                (full if jid.resource is not None else bare).add(str(jid))
            elif jid.resource is not None:
                domain_resource.add((jid.domain, jid.resource))
            else:
                domains.add(jid.domain)
        self._full = frozenset(full)
        self._bare = frozenset(bare)
        self._domain_resource = frozenset(domain_resource)
        self._domains = frozenset(domains)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"Blocklist({list(self.items)!r})"

    def matches(self, jid: Jid) -> bool:
        """Whether ``jid`` is blocked by an item of this list (XEP-0191 §3.1, XEP-0016 §2.1)."""
        if not self.items:
            return False
        if jid.resource is not None:
            if self._full and jid.local is not None and str(jid) in self._full:
                return True
            if (jid.domain, jid.resource) in self._domain_resource:
                return True
        if self._bare and jid.local is not None and f"{jid.local}@{jid.domain}" in self._bare:
            return True
        return bool(self._domains) and _domain_blocked(jid.domain, self._domains)


def _domain_blocked(domain: str, blocked: frozenset[str]) -> bool:
    """``domain`` or one of its parent domains is in ``blocked`` (not for IP literals)."""
    if domain in blocked:
        return True
    if domain.startswith("[") or domain[-1:].isdigit():
        return False  # an IP address: no subdomains
    dot = domain.find(".")
    while dot >= 0:
        domain = domain[dot + 1:]
        if domain in blocked:
            return True
        dot = domain.find(".")
    return False


EMPTY: Final = Blocklist()


# -- what a block does to a stanza ------------------------------------------------------------------


def inbound(name: str, stype: str | None) -> str:
    """A stanza from a blocked JID to the user (XEP-0191 §3.3): :data:`DROP` or :data:`ERROR`
    (``<service-unavailable/>``, so the user looks offline, not blocking)."""
    if name == "message":
        return DROP if stype == "error" else ERROR
    if name == "iq":
        return ERROR if stype in ("get", "set") else DROP
    return DROP  # presence of every type: no answer, no error


def outbound(name: str, stype: str | None) -> str:
    """A stanza from the user to a blocked JID (XEP-0191 §3.3): :data:`ERROR`
    (``<not-acceptable/>`` + ``<blocked/>``), :data:`DROP` or :data:`PASS`."""
    if stype == "error":
        return PASS  # an answer to what came before (the server's own service-unavailable among them)
    if name == "presence":
        # Unavailable is what blocking shows the contact (§3.2); broadcasts, probes and
        # subscription changes to it are dropped without bothering the user with errors.
        return PASS if stype == "unavailable" else DROP
    if name == "iq":
        return ERROR if stype in ("get", "set") else DROP
    return ERROR


# -- protocol elements ---------------------------------------------------------------------------------


def parse_items(payload: ET.Element, max_items: int) -> list[str]:
    """The JIDs of a ``<block/>``/``<unblock/>`` in order, normalised and without duplicates.

    Raises ``bad-request`` (an item without 'jid'), ``jid-malformed`` and ``policy-violation``
    (more than ``max_items`` items in one command)."""
    out: list[str] = []
    seen: set[str] = set()
    items = payload.findall(_ITEM)
    if len(items) > max_items:
        raise errors.StanzaPolicyViolation(f"at most {max_items} items per command")
    for el in items:
        raw = el.get("jid")
        if raw is None:
            raise errors.BadRequest("an item needs a 'jid'")
        try:
            jid = str(Jid.parse(raw))
        except InvalidJid as e:
            raise errors.JidMalformed(f"bad item jid {raw!r}: {e}") from None
        if jid not in seen:
            seen.add(jid)
            out.append(jid)
    return out


def list_element(items: Iterable[str], name: str = "blocklist") -> ET.Element:
    """``<blocklist/>`` (or ``<block/>``/``<unblock/>``) with one ``<item/>`` per JID."""
    el = ET.Element(f"{{{NS}}}{name}")
    for jid in items:
        ET.SubElement(el, _ITEM, {"jid": jid})
    return el


def push_element(kind: str, items: Iterable[str], push_id: str) -> Stanza:
    """The push of a block or unblock to the user's resources that requested the list (§3.3, §3.4;
    no items in an unblock: everything was unblocked, §3.5).  The router addresses each copy."""
    if kind not in ("block", "unblock"):
        raise ValueError(f"a push is a block or an unblock, not {kind!r}")
    iq = ET.Element(f"{{{ns.CLIENT}}}iq", {"type": "set", "id": push_id})
    iq.append(list_element(items, kind))
    return Stanza(iq)


def blocked_reply(stanza: Stanza) -> Stanza:
    """The error a user gets for a stanza to a JID it blocked: ``<not-acceptable/>`` with the
    application condition ``<blocked xmlns='urn:xmpp:blocking:errors'/>`` (§3.3)."""
    reply = stanza.error_reply(errors.NotAcceptable())
    el = reply.element
    ET.SubElement(el[-1], f"{{{ERRORS_NS}}}blocked")  # error_reply puts <error/> last
    return Stanza(el)


# -- the cache --------------------------------------------------------------------------------------------


class ListCache:
    """Block lists by bare JID for ``ttl`` seconds, at most ``size`` of them (least recently used
    out first).  An expired entry is still at hand (:meth:`stale`) for when the database cannot
    be read."""

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[str, tuple[float, Blocklist]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> Blocklist | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def stale(self, key: str) -> Blocklist | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: str, value: Blocklist, now: float) -> None:
        if self.ttl <= 0 or self.size <= 0:
            return
        self._entries[key] = (now + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, key: str) -> bool:
        return self._entries.pop(key, None) is not None

    def clear(self) -> None:
        self._entries.clear()
