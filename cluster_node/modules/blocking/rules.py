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
* :class:`ListCache` — a bounded map of block lists by account, each with an age after which it is
  read again (time passed in).
* :class:`ChangeWatch` — which accounts' lists changed, from the rows of the change table a member
  polls (so other regions' changes reach it without re-reading lists on the message path).

Matching and the cache sit on the path of every stanza, so they work on the ``(local, domain)``
and ``(local, domain, resource)`` tuples of the JIDs the router already parsed: no JID is turned
back into a string there.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Final

from ...core.change_watch import ChangeWatch
from ...xmpp import errors, ns
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza

__all__ = ["NS", "ERRORS_NS", "Blocklist", "EMPTY", "DROP", "ERROR", "PASS", "inbound", "outbound",
           "parse_items", "list_element", "push_element", "blocked_reply", "ListCache", "ChangeWatch", "Key",
           "key_of", "parse_key"]

NS = "urn:xmpp:blocking"  # XEP-0191
ERRORS_NS = "urn:xmpp:blocking:errors"

_ITEM = f"{{{NS}}}item"

DROP: Final = "drop"  # silently
ERROR: Final = "error"  # answered with an error (which one depends on the direction)
PASS: Final = "pass"  # routed as if there were no block


class Blocklist:
    """One user's block list, indexed for matching (built once per load, then only read)."""

    __slots__ = ("items", "_full", "_bare", "_domain_resource", "_domains", "_mentioned", "_by_domain")

    def __init__(self, items: Iterable[str] = ()) -> None:
        self.items: tuple[str, ...] = tuple(items)
        full: set[tuple[str, str, str]] = set()
        bare: set[tuple[str, str]] = set()
        domain_resource: set[tuple[str, str]] = set()
        domains: set[str] = set()
        for item in self.items:
            try:
                jid = Jid.parse(item)
            except InvalidJid:
                continue  # stored before a stricter parser: it matches nothing
            if jid.local is not None:
                if jid.resource is not None:
                    full.add((jid.local, jid.domain, jid.resource))
                else:
                    bare.add((jid.local, jid.domain))
            elif jid.resource is not None:
                domain_resource.add((jid.domain, jid.resource))
            else:
                domains.add(jid.domain)
        self._full = frozenset(full)
        self._bare = frozenset(bare)
        self._domain_resource = frozenset(domain_resource)
        self._domains = frozenset(domains)
        self._mentioned = frozenset({d for _, d, _ in full} | {d for _, d in bare} | {d for d, _ in domain_resource})
        # domain → what this list says of its JIDs (the list never changes; correspondents' domains
        # repeat): _NOTHING, _SOME (look at the JID) or _ALL (a domain item blocks the domain).
        self._by_domain: dict[str, int] = {}

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
        domain = jid.domain
        said = self._by_domain.get(domain)
        if said is None:
            said = self._about(domain)
        if said != _SOME:
            return said == _ALL
        local, resource = jid.local, jid.resource
        if resource is not None:
            if local is not None and (local, domain, resource) in self._full:
                return True
            if (domain, resource) in self._domain_resource:
                return True
        return local is not None and (local, domain) in self._bare

    def _about(self, domain: str) -> int:
        if self._domains and _domain_blocked(domain, self._domains):
            said = _ALL
        else:
            said = _SOME if domain in self._mentioned else _NOTHING
        if len(self._by_domain) < _DOMAIN_MEMO:
            self._by_domain[domain] = said
        return said


_NOTHING, _SOME, _ALL = 0, 1, 2
_DOMAIN_MEMO = 256  # domains whose answer one list remembers (correspondents' domains repeat)


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


Key = tuple[str, str]
"""An account's block list in the cache: (local, domain) of its bare JID."""


def key_of(jid: Jid) -> Key:
    return (jid.local or "", jid.domain)


def parse_key(bare: str) -> Key:
    """The key of a bare JID as the cluster calls and the change table name it."""
    local, _, domain = bare.rpartition("@")
    return (local, domain)


class ListCache:
    """Block lists by account, at most ``size`` of them (the oldest read out first).  A list
    older than ``max_age`` seconds is still returned (:meth:`get` says it is due, :meth:`due`
    lists those), for a re-read in the background: the message path never waits for the database
    once a list was read.  ``max_age`` 0 keeps nothing."""

    __slots__ = ("max_age", "size", "_entries", "entry")

    def __init__(self, max_age: float, size: int) -> None:
        self.max_age = max_age
        self.size = size
        self._entries: dict[Key, tuple[float, Blocklist]] = {}
        # (when it is due for a re-read, the list) or None: :meth:`get` for the message path,
        # the dictionary's own lookup (no call of ours, no tuple made per stanza).
        self.entry = self._entries.get

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, now: float) -> tuple[Blocklist | None, bool]:
        """(the list or None, whether it is due for a re-read)."""
        entry = self._entries.get(key)
        if entry is None:
            return None, True
        return entry[1], entry[0] <= now


    def due(self, now: float) -> list[Key]:
        """The lists due for a re-read: the oldest read first, up to the first that is not due
        (every entry lives ``max_age``, so they are due in read order; one kept for a short
        retry is found once the scan reaches it)."""
        out: list[Key] = []
        for key, (expires, _) in self._entries.items():
            if expires > now:
                break
            out.append(key)
        return out

    def stale(self, key: Key) -> Blocklist | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: Key, value: Blocklist, now: float, max_age: float | None = None) -> None:
        """Keep ``value``, due for a re-read after ``max_age`` (default: the cache's)."""
        if self.max_age <= 0 or self.size <= 0:
            return
        self._entries.pop(key, None)  # re-read: the newest again (eviction order is read order)
        self._entries[key] = (now + (self.max_age if max_age is None else max_age), value)
        while len(self._entries) > self.size:
            del self._entries[next(iter(self._entries))]

    def drop(self, key: Key) -> bool:
        return self._entries.pop(key, None) is not None

    def clear(self) -> None:
        self._entries.clear()
