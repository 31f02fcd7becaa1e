"""A room's state as data: occupants, affiliations, subject, history, configuration — and the
*operations* that change it.

Every change a room makes goes through :meth:`RoomState.do`, which applies one operation (a small
JSON object) and records it.  The member that sequences a room sends the recorded operations to the
other members of the region, which :meth:`RoomState.apply` them to their copies; a member joining
later gets :meth:`RoomState.snapshot`.  So every member holds the same room, and any of them can
take over when the sequencing member dies.  Operations carry their data (ids, times, occupant
records), so applying them needs no clock and no randomness: copies cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ...xmpp.fragment import parse_stanza
from ...xmpp.jid import Jid
from .config import RoomConfig

__all__ = ["Occupant", "Affiliation", "HistoryItem", "Limits", "RoomState", "BadOperation"]


class BadOperation(ValueError):
    """An operation or snapshot that does not have the expected shape."""


def _str(d: dict[str, Any], key: str, default: str | None = None) -> str:
    value = d.get(key, default)
    if not isinstance(value, str):
        raise BadOperation(f"{key!r} is not a string")
    return value


@dataclass(frozen=True, slots=True)
class Limits:
    """The service's bounds on every room (module settings)."""

    max_users: int = 200
    max_history: int = 50
    max_nick_length: int = 64
    max_affiliations: int = 10_000
    lock_new_rooms: bool = True
    max_forwarded_iqs: int = 256
    admins: frozenset[str] = frozenset()  # bare JIDs that are owners of every room
    presence_rate: float = 5.0  # presence updates per second one session may send to a room (burst: 2×)


@dataclass(slots=True)
class Occupant:
    nick: str
    bare: str  # the real bare JID
    jids: list[str]  # the real full JIDs joined under this nick (one per session)
    role: str
    presence: str  # the last available presence: a <presence/> holding only what is broadcast
    occupant_id: str
    _children: list[ET.Element] | None = field(default=None, repr=False, compare=False)

    def children(self) -> list[ET.Element]:
        """The elements of the stored presence (show, status, caps…), parsed once."""
        if self._children is None:
            try:
                self._children = list(parse_stanza(self.presence.encode()).element) if self.presence else []
            except ValueError:
                self._children = []
        return self._children

    def to_json(self) -> dict[str, Any]:
        return {"nick": self.nick, "bare": self.bare, "jids": list(self.jids), "role": self.role,
                "presence": self.presence, "occupant_id": self.occupant_id}

    @classmethod
    def from_json(cls, d: Any) -> Occupant:
        if not isinstance(d, dict):
            raise BadOperation("an occupant is an object")
        jids = d.get("jids")
        if not isinstance(jids, list) or not jids or not all(isinstance(j, str) for j in jids):
            raise BadOperation("an occupant has full JIDs")
        role = _str(d, "role")
        if role not in ("moderator", "participant", "visitor"):
            raise BadOperation(f"bad role {role!r}")
        return cls(_str(d, "nick"), _str(d, "bare"), list(jids), role, _str(d, "presence", ""),
                   _str(d, "occupant_id", ""))


@dataclass(frozen=True, slots=True)
class Affiliation:
    affiliation: str
    nick: str = ""  # a nick reserved for this JID (members and above)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class HistoryItem:
    data: str  # the message as broadcast (from room/nick, no 'to'), with its delay element
    nick: str
    time: float
    stanza_id: str

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data, "nick": self.nick, "time": self.time, "stanza_id": self.stanza_id}

    @classmethod
    def from_json(cls, d: Any) -> HistoryItem:
        if not isinstance(d, dict) or not isinstance(d.get("time"), int | float):
            raise BadOperation("a history item has data and a time")
        return cls(_str(d, "data"), _str(d, "nick", ""), float(d["time"]), _str(d, "stanza_id", ""))


class RoomState:
    """What a room holds; changed only through :meth:`do` (sequencer) and :meth:`apply` (copies)."""

    def __init__(self, jid: Jid, config: RoomConfig, limits: Limits, *, salt: str, created: float) -> None:
        self.jid = jid.bare
        self.sjid = str(self.jid)
        self.config = config
        self.limits = limits
        self.salt = salt
        self.created = created
        self.occupants: dict[str, Occupant] = {}
        self.nick_of: dict[str, str] = {}  # real full JID -> nick
        self.affiliations: dict[str, Affiliation] = {}
        self.subject = ""
        self.subject_by = ""
        self.history: deque[HistoryItem] = deque(maxlen=max(config.history_length, 0))
        self.locked = False
        self.destroyed = False
        self.ops: list[dict[str, Any]] = []

    # -- reading ---------------------------------------------------------------------------------------

    def affiliation(self, bare: str) -> str:
        if bare in self.limits.admins:
            return "owner"
        a = self.affiliations.get(bare)
        return a.affiliation if a is not None else "none"

    def occupant_of(self, full: str) -> Occupant | None:
        nick = self.nick_of.get(full)
        return self.occupants.get(nick) if nick is not None else None

    def occupant_id(self, bare: str) -> str:
        """XEP-0421: stable per real bare JID and room, and revealing neither."""
        mac = hmac.new(self.salt.encode(), bare.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:18]).decode()

    def jids(self) -> list[str]:
        return [j for occ in self.occupants.values() for j in occ.jids]

    # -- changing --------------------------------------------------------------------------------------

    def do(self, op: dict[str, Any]) -> None:
        """Apply ``op`` and record it for the copies."""
        self.apply(op)
        self.ops.append(op)

    def take_ops(self) -> list[dict[str, Any]]:
        ops, self.ops = self.ops, []
        return ops

    def apply(self, op: dict[str, Any]) -> None:
        """One operation (from :meth:`do` here, or from the sequencing member)."""
        if not isinstance(op, dict):
            raise BadOperation("an operation is an object")
        kind = op.get("op")
        if kind == "occupant":
            occ = Occupant.from_json(op.get("occ"))
            self._drop(occ.nick)
            for j in occ.jids:  # a full JID is under one nick only
                other = self.nick_of.get(j)
                if other is not None and other != occ.nick:
                    self._drop_jid(other, j)
            self.occupants[occ.nick] = occ
            for j in occ.jids:
                self.nick_of[j] = occ.nick
        elif kind == "gone":
            self._drop(_str(op, "nick"))
        elif kind == "aff":
            bare, aff = _str(op, "jid"), _str(op, "aff")
            if aff == "none":
                self.affiliations.pop(bare, None)
            elif aff in ("owner", "admin", "member", "outcast"):
                self.affiliations[bare] = Affiliation(aff, _str(op, "nick", ""), _str(op, "reason", ""))
            else:
                raise BadOperation(f"bad affiliation {aff!r}")
        elif kind == "config":
            self.config = RoomConfig.from_json(op.get("config"))
            self._trim_history()
        elif kind == "subject":
            self.subject, self.subject_by = _str(op, "subject"), _str(op, "by", "")
        elif kind == "history":
            if self.config.history_length > 0:
                self.history.append(HistoryItem.from_json(op.get("item")))
        elif kind == "locked":
            self.locked = op.get("value") is True
        elif kind == "destroy":
            self.destroyed = True
            self.occupants.clear()
            self.nick_of.clear()
        else:
            raise BadOperation(f"unknown operation {kind!r}")

    def _drop(self, nick: str) -> None:
        occ = self.occupants.pop(nick, None)
        if occ is not None:
            for j in occ.jids:
                if self.nick_of.get(j) == nick:
                    del self.nick_of[j]

    def _drop_jid(self, nick: str, full: str) -> None:
        occ = self.occupants.get(nick)
        if occ is None:
            return
        occ.jids = [j for j in occ.jids if j != full]
        self.nick_of.pop(full, None)
        if not occ.jids:
            del self.occupants[nick]

    def _trim_history(self) -> None:
        keep = max(self.config.history_length, 0)
        if self.history.maxlen != keep:
            self.history = deque(list(self.history)[-keep:] if keep else [], maxlen=keep)

    # -- copies ------------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "jid": self.sjid, "config": self.config.to_json(), "salt": self.salt, "created": self.created,
            "occupants": [o.to_json() for o in self.occupants.values()],
            "affiliations": {j: [a.affiliation, a.nick, a.reason] for j, a in self.affiliations.items()},
            "subject": self.subject, "subject_by": self.subject_by, "locked": self.locked,
            "history": [h.to_json() for h in self.history],
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Replace everything by ``snap`` (validated first: a bad one changes nothing)."""
        occupants = [Occupant.from_json(o) for o in snap.get("occupants") or []]
        affs = snap.get("affiliations") or {}
        if not isinstance(affs, dict):
            raise BadOperation("affiliations are an object")
        affiliations = {}
        for j, a in affs.items():
            if not (isinstance(a, list) and len(a) == 3 and all(isinstance(x, str) for x in a)
                    and a[0] in ("owner", "admin", "member", "outcast")):
                raise BadOperation("an affiliation is [affiliation, nick, reason]")
            affiliations[str(j)] = Affiliation(a[0], a[1], a[2])
        history = [HistoryItem.from_json(h) for h in snap.get("history") or []]
        self.config = RoomConfig.from_json(snap.get("config"))
        self.salt = _str(snap, "salt", self.salt)
        created = snap.get("created")
        self.created = float(created) if isinstance(created, int | float) else self.created
        self.occupants = {o.nick: o for o in occupants}
        self.nick_of = {j: o.nick for o in occupants for j in o.jids}
        self.affiliations = affiliations
        self.subject, self.subject_by = _str(snap, "subject", ""), _str(snap, "subject_by", "")
        self.locked = snap.get("locked") is True
        self.history = deque(maxlen=max(self.config.history_length, 0))
        if self.config.history_length > 0:
            self.history.extend(history)
