"""XEP-0045's vocabulary, sans I/O: namespaces, ranks of roles and affiliations, the elements a
room sends (occupant presence, status codes, delays) and what it reads (the join ``<x/>`` with its
history limits and password, ``muc#admin`` items, invitations).  Nothing here holds state.
"""

from __future__ import annotations

import datetime
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass

from ...xmpp import ns

__all__ = [
    "MUC", "MUC_USER", "MUC_ADMIN", "MUC_OWNER", "ROOMCONFIG", "ROOMINFO", "REGISTER_FORM", "DATA", "SID",
    "OCCUPANT_ID", "CONFERENCE", "SELF_PING", "STABLE_ID", "UNIQUE", "REQUEST", "MAM", "ROLES", "AFFILIATIONS",
    "AFF_RANK", "ROLE_RANK", "HistoryLimits", "JoinRequest", "AdminItem", "Invite", "parse_join",
    "parse_admin_items", "parse_invites", "parse_decline", "stamp", "parse_stamp", "user_x", "add_codes",
    "item_element", "delay_element", "q",
]

MUC = "http://jabber.org/protocol/muc"
MUC_USER = MUC + "#user"
MUC_ADMIN = MUC + "#admin"
MUC_OWNER = MUC + "#owner"
ROOMCONFIG = MUC + "#roomconfig"
ROOMINFO = MUC + "#roominfo"
REGISTER_FORM = MUC + "#register"  # XEP-0045 §7.10
REQUEST = MUC + "#request"
UNIQUE = MUC + "#unique"
SELF_PING = MUC + "#self-ping-optimization"  # XEP-0410
STABLE_ID = MUC + "#stable_id"  # the room reflects the sender's message id
DATA = "jabber:x:data"
SID = "urn:xmpp:sid:0"  # XEP-0359
OCCUPANT_ID = "urn:xmpp:occupant-id:0"  # XEP-0421
CONFERENCE = "jabber:x:conference"  # XEP-0249
MAM = "urn:xmpp:mam:2"

ROLES = ("moderator", "participant", "visitor", "none")
AFFILIATIONS = ("owner", "admin", "member", "none", "outcast")
AFF_RANK = {"outcast": -1, "none": 0, "member": 1, "admin": 2, "owner": 3}
ROLE_RANK = {"none": 0, "visitor": 1, "participant": 2, "moderator": 3}


def q(namespace: str, name: str) -> str:
    """A Clark-notation tag."""
    return f"{{{namespace}}}{name}"


# -- time ------------------------------------------------------------------------------------------

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def stamp(t: float) -> str:
    """XEP-0082 DateTime, UTC, milliseconds."""
    d = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def parse_stamp(value: str) -> float | None:
    """A XEP-0082 DateTime as seconds since the epoch, or None when it is not one."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        d = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.UTC)
    return (d - _EPOCH).total_seconds()


# -- what a client sends ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryLimits:
    """``<history/>`` of a join (XEP-0045 §7.2.15); None: not limited by that attribute."""

    maxstanzas: int | None = None
    maxchars: int | None = None
    seconds: float | None = None
    since: float | None = None


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """The ``<x xmlns='…muc'/>`` of a presence: it asks to join (a presence without it to a room
    one is not in joins too, as old clients do)."""

    muc: bool
    password: str | None
    history: HistoryLimits


def _int(value: str | None) -> int | None:
    """A non-negative integer attribute; a malformed one counts as absent (the XEP gives no error)."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 20:
        return None
    return int(value)


def parse_join(presence: ET.Element) -> JoinRequest:
    x = presence.find(q(MUC, "x"))
    if x is None:
        return JoinRequest(False, None, HistoryLimits())
    pw = x.find(q(MUC, "password"))
    h = x.find(q(MUC, "history"))
    limits = HistoryLimits()
    if h is not None:
        since = h.get("since")
        seconds = _int(h.get("seconds"))
        limits = HistoryLimits(_int(h.get("maxstanzas")), _int(h.get("maxchars")),
                               float(seconds) if seconds is not None else None,
                               parse_stamp(since) if since else None)
    return JoinRequest(True, (pw.text or "") if pw is not None else None, limits)


@dataclass(frozen=True, slots=True)
class AdminItem:
    """One ``<item/>`` of a ``muc#admin`` set: a role change by nick or an affiliation change by JID."""

    nick: str | None
    jid: str | None
    role: str | None
    affiliation: str | None
    reason: str


def parse_admin_items(query: ET.Element) -> list[AdminItem]:
    """The items of a ``muc#admin`` query; ``ValueError`` names what is malformed."""
    items = []
    for it in query.findall(q(MUC_ADMIN, "item")):
        role, aff = it.get("role"), it.get("affiliation")
        if role is not None and role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        if aff is not None and aff not in AFFILIATIONS:
            raise ValueError(f"unknown affiliation {aff!r}")
        reason = it.find(q(MUC_ADMIN, "reason"))
        items.append(AdminItem(it.get("nick"), it.get("jid"), role, aff,
                               (reason.text or "") if reason is not None else ""))
    if not items:
        raise ValueError("no item")
    return items


@dataclass(frozen=True, slots=True)
class Invite:
    to: str
    reason: str
    continue_thread: str | None = None


def parse_invites(x: ET.Element) -> list[Invite]:
    out = []
    for inv in x.findall(q(MUC_USER, "invite")):
        reason = inv.find(q(MUC_USER, "reason"))
        cont = inv.find(q(MUC_USER, "continue"))
        out.append(Invite(inv.get("to") or "", (reason.text or "") if reason is not None else "",
                          cont.get("thread") if cont is not None else None))
    return out


def parse_decline(x: ET.Element) -> Invite | None:
    dec = x.find(q(MUC_USER, "decline"))
    if dec is None:
        return None
    reason = dec.find(q(MUC_USER, "reason"))
    return Invite(dec.get("to") or "", (reason.text or "") if reason is not None else "")


# -- what a room sends -----------------------------------------------------------------------------


def user_x(parent: ET.Element | None = None) -> ET.Element:
    """An ``<x xmlns='…muc#user'/>`` (appended to ``parent`` when given)."""
    tag = q(MUC_USER, "x")
    return ET.Element(tag) if parent is None else ET.SubElement(parent, tag)


def item_element(x: ET.Element, affiliation: str, role: str, *, jid: str | None = None, nick: str | None = None,
                 actor: str | None = None, reason: str | None = None) -> ET.Element:
    item = ET.SubElement(x, q(MUC_USER, "item"), {"affiliation": affiliation, "role": role})
    if jid:
        item.set("jid", jid)
    if nick:
        item.set("nick", nick)
    if actor:
        ET.SubElement(item, q(MUC_USER, "actor"), {"nick": actor})
    if reason:
        ET.SubElement(item, q(MUC_USER, "reason")).text = reason
    return item


def add_codes(x: ET.Element, codes: Iterable[int]) -> None:
    for code in sorted(set(codes)):
        ET.SubElement(x, q(MUC_USER, "status"), {"code": str(code)})


def delay_element(room: str, t: float) -> ET.Element:
    return ET.Element(q(ns.DELAY, "delay"), {"from": room, "stamp": stamp(t)})
