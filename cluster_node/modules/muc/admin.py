"""The operator's MUC operations, with MongooseIM's names, arguments and result shapes (its admin
GraphQL ``muc`` category): listRooms, createInstantRoom, getRoomConfig, changeRoomConfiguration,
listRoomUsers, listRoomAffiliations, inviteUser, kickUser, sendMessageToRoom, setUserAffiliation,
setUserRole, deleteRoom.

Reads answer from this member's copies (every member holds every room).  Changes run on the
room's sequencer — asked over the cluster (``muc.admin``) when that is another member — as the
room's own operations, so occupants, copies and the database follow as for a client's request.
Messages and invitations are stanzas from the user named, routed like that user's own.
"""

from __future__ import annotations

import secrets
import time
import xml.etree.ElementTree as ET
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ...xmpp import ns
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza
from .config import ALLOW_PM, RoomConfig
from .protocol import AFF_RANK, MUC_USER, q
from .room import Room

if TYPE_CHECKING:
    from .module import Muc

__all__ = ["MucAdmin", "config_json", "config_changes"]

_C = f"{{{ns.CLIENT}}}"


def _jid(value: Any, what: str) -> Jid:
    try:
        return Jid.parse(str(value))
    except InvalidJid as e:
        raise ValueError(f"{what}: {e}") from None


def config_json(c: RoomConfig) -> dict[str, Any]:
    """A room's configuration as MongooseIM's ``MUCRoomConfig``."""
    return {
        "title": c.title, "description": c.description, "allowChangeSubject": c.change_subject,
        "allowQueryUsers": True, "allowPrivateMessages": c.allow_pm != "none", "allowVisitorStatus": True,
        "allowVisitorNickchange": True, "public": c.public, "publicList": c.public, "persistent": c.persistent,
        "moderated": c.moderated, "membersByDefault": True, "membersOnly": c.members_only,
        "allowUserInvites": c.allow_invites, "allowMultipleSession": True, "passwordProtected": c.password_protected,
        "password": c.password, "anonymous": c.whois != "anyone", "mayGetMemberList": False,
        "maxUsers": c.max_users, "logging": c.archiving,
    }


_BOOLS = {"allowChangeSubject": "change_subject", "public": "public", "publicList": "public",
          "persistent": "persistent", "moderated": "moderated", "membersOnly": "members_only",
          "allowUserInvites": "allow_invites", "passwordProtected": "password_protected", "logging": "archiving"}
_FIXED = {"allowQueryUsers": True, "allowVisitorStatus": True, "allowVisitorNickchange": True,
          "membersByDefault": True, "allowMultipleSession": True, "mayGetMemberList": False}


def config_changes(config: RoomConfig, changes: dict[str, Any], max_users: int) -> RoomConfig:
    """``config`` with MongooseIM's ``MUCRoomConfigInput`` fields applied; ValueError for what this
    server does not do or a value out of range."""
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None:
            continue
        if key in _BOOLS:
            if not isinstance(value, bool):
                raise ValueError(f"{key} is a boolean")
            out[_BOOLS[key]] = value
        elif key in ("title", "description", "password"):
            if not isinstance(value, str) or len(value) > 1024:
                raise ValueError(f"{key} is a string of at most 1024 characters")
            out[key] = value
        elif key == "anonymous":
            out["whois"] = "moderators" if value else "anyone"
        elif key == "allowPrivateMessages":
            out["allow_pm"] = ALLOW_PM[0] if value else "none"
        elif key == "maxUsers":
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= max_users:
                raise ValueError(f"maxUsers is within 1…{max_users}")
            out["max_users"] = value
        elif key in _FIXED:
            if value != _FIXED[key]:
                raise ValueError(f"{key} = {str(value).lower()} is not supported here")
        else:
            raise ValueError(f"unknown configuration field {key}")
    new = replace(config, **out)
    if new.password_protected and not new.password:
        raise ValueError("a password-protected room needs a password")
    return new if new.password_protected else replace(new, password="")


def _desc(room: Room) -> dict[str, Any]:
    return {"jid": room.sjid, "title": room.config.title or (room.jid.local or ""), "private": not room.config.public,
            "usersNumber": len(room.occupants)}


class MucAdmin:
    """The ``muc`` queries a node registers (``host.add_query``) for the admin API and ``meridian ctl``."""

    def __init__(self, muc: Muc) -> None:
        self.muc = muc

    def register(self) -> None:
        for name in ("listRooms", "getRoomConfig", "listRoomUsers", "listRoomAffiliations", "createInstantRoom",
                     "changeRoomConfiguration", "inviteUser", "kickUser", "sendMessageToRoom", "setUserAffiliation",
                     "setUserRole", "deleteRoom"):
            self.muc.host.add_query("muc", name, getattr(self, name))
        self.muc.host.on_call("muc.admin", self._called)

    # -- reads, from this member's copies ----------------------------------------------------------------

    def _room(self, room: Any) -> Room:
        key = str(_jid(room, "room").bare)
        held = self.muc.rooms.get(key)
        if held is None:
            raise LookupError(f"there is no room {key}")
        return held

    async def listRooms(self, mucDomain: str, limit: int | None = None, index: int | None = None,
                        **_: Any) -> dict[str, Any]:
        domain = _jid(mucDomain, "mucDomain").domain
        if domain not in self.muc.services:
            raise LookupError(f"{domain} is not a MUC service of this node")
        found = {k: _desc(r) for k, r in self.muc.rooms.items() if r.jid.domain == domain}
        for name, config in await self.muc.store.rooms(domain, 100_000):
            key = f"{name}@{domain}"
            found.setdefault(key, {"jid": key, "title": config.title or name, "private": not config.public,
                                   "usersNumber": 0})
        rooms = [found[k] for k in sorted(found)]
        start = max(int(index or 0), 0)
        page = rooms[start:start + int(limit)] if limit is not None else rooms[start:]
        return {"rooms": page, "count": len(rooms), "index": start,
                "first": page[0]["jid"] if page else None, "last": page[-1]["jid"] if page else None}

    def getRoomConfig(self, room: Any) -> dict[str, Any]:
        return config_json(self._room(room).config)

    def listRoomUsers(self, room: Any) -> list[dict[str, Any]]:
        held = self._room(room)
        return [{"jid": o.jids[0], "nick": o.nick, "role": o.role.upper()}
                for o in sorted(held.occupants.values(), key=lambda o: o.nick)]

    def listRoomAffiliations(self, room: Any, affiliation: str | None = None) -> list[dict[str, Any]]:
        held = self._room(room)
        wanted = affiliation.lower() if affiliation else None
        return [{"jid": j, "affiliation": a.affiliation.upper()} for j, a in sorted(held.affiliations.items())
                if wanted in (None, a.affiliation)]

    # -- changes, on the sequencer ---------------------------------------------------------------------------

    async def _change(self, op: str, args: dict[str, Any]) -> Any:
        room = str(_jid(args.get("room"), "room").bare)
        home = self.muc.sequencer_of(room)
        if home != self.muc.host.node:
            try:
                return await self.muc.host.request(home, "muc.admin", {"op": op, **args})
            except TimeoutError:
                pass  # the sequencer is not answering: this member goes on from its copy
        return await self.here(op, args)

    async def _called(self, _caller: str, args: dict[str, Any]) -> Any:
        return await self.here(str(args.get("op")), args)

    async def here(self, op: str, args: dict[str, Any]) -> Any:
        room = str(_jid(args.get("room"), "room").bare)
        m = self.muc
        if op == "create":
            owner = _jid(args.get("owner"), "owner")
            if _jid(room, "room").domain not in m.services:
                raise LookupError(f"{_jid(room, 'room').domain} is not a MUC service of this node")

            def make() -> Room:
                created = Room(_jid(room, "room"), m.defaults, m.limits, salt=secrets.token_hex(16),
                               created=time.time())
                created.do({"op": "aff", "jid": str(owner.bare), "aff": "owner",
                            "nick": str(args.get("nick") or "")})
                return created

            return await m.on_sequencer(room, lambda r, out: _desc(r), create=make)
        if op == "config":
            changes = args.get("config")
            if not isinstance(changes, dict):
                raise ValueError("config is an object")

            def configure(r: Room, out: list[Stanza]) -> dict[str, Any]:
                r.configure(config_changes(r.config, changes, m.cfg.max_users), out)
                return config_json(r.config)

            return await m.on_sequencer(room, configure)
        if op == "kick":
            nick, reason = str(args.get("nick")), str(args.get("reason") or "")

            def kick(r: Room, out: list[Stanza]) -> str:
                if nick not in r.occupants:
                    raise LookupError(f"no occupant is named {nick!r}")
                r.set_role(nick, "none", out, reason=reason)
                return f"{nick} was kicked from {room}"

            return await m.on_sequencer(room, kick)
        if op == "role":
            nick, role = str(args.get("nick")), str(args.get("role")).lower()
            if role not in ("visitor", "participant", "moderator", "none"):
                raise ValueError(f"unknown role {role}")

            def set_role(r: Room, out: list[Stanza]) -> str:
                occ = r.occupants.get(nick)
                if occ is None:
                    raise LookupError(f"no occupant is named {nick!r}")
                if role != "moderator" and AFF_RANK[r.affiliation(occ.bare)] >= AFF_RANK["admin"]:
                    raise ValueError("admins and owners keep their role")
                r.set_role(nick, role, out)
                return f"the role of {nick} is {role}"

            return await m.on_sequencer(room, set_role)
        if op == "affiliation":
            user = str(_jid(args.get("user"), "user").bare)
            aff = str(args.get("affiliation")).lower()
            if aff not in AFF_RANK:
                raise ValueError(f"unknown affiliation {aff}")

            def set_aff(r: Room, out: list[Stanza]) -> str:
                others = [j for j, a in r.affiliations.items() if a.affiliation == "owner" and j != user]
                if aff != "owner" and r.affiliation(user) == "owner" and not others:
                    raise ValueError("a room keeps at least one owner")
                if user not in r.affiliations and aff != "none" and len(r.affiliations) >= m.limits.max_affiliations:
                    raise ValueError(f"a room has at most {m.limits.max_affiliations} affiliations")
                r.set_affiliation(user, aff, out)
                return f"the affiliation of {user} is {aff}"

            return await m.on_sequencer(room, set_aff)
        if op == "delete":
            reason = str(args.get("reason") or "")

            def delete(r: Room, out: list[Stanza]) -> str:
                r.destroy(out, reason=reason or None)
                return f"{room} was deleted"

            return await m.on_sequencer(room, delete)
        raise ValueError(f"unknown operation {op}")

    async def createInstantRoom(self, room: Any, owner: Any, nick: str) -> dict[str, Any]:
        return await self._change("create", {"room": str(room), "owner": str(owner), "nick": nick})  # type: ignore[no-any-return]

    async def changeRoomConfiguration(self, room: Any, config: dict[str, Any]) -> dict[str, Any]:
        return await self._change("config", {"room": str(room), "config": dict(config)})  # type: ignore[no-any-return]

    async def kickUser(self, room: Any, nick: str, reason: str | None = None) -> str:
        return await self._change("kick", {"room": str(room), "nick": nick, "reason": reason})  # type: ignore[no-any-return]

    async def setUserRole(self, room: Any, nick: str, role: str) -> str:
        return await self._change("role", {"room": str(room), "nick": nick, "role": role})  # type: ignore[no-any-return]

    async def setUserAffiliation(self, room: Any, user: Any, affiliation: str) -> str:
        return await self._change("affiliation", {"room": str(room), "user": str(user),  # type: ignore[no-any-return]
                                                  "affiliation": affiliation})

    async def deleteRoom(self, room: Any, reason: str | None = None) -> str:
        return await self._change("delete", {"room": str(room), "reason": reason})  # type: ignore[no-any-return]

    # -- stanzas on a user's behalf ---------------------------------------------------------------------------

    async def sendMessageToRoom(self, room: Any, body: str, **kw: Any) -> str:
        sender = _jid(kw.get("from") or kw.get("from_"), "from")
        to = _jid(room, "room").bare
        el = ET.Element(_C + "message", {"type": "groupchat", "from": str(sender), "to": str(to),
                                         "id": secrets.token_hex(6)})
        ET.SubElement(el, _C + "body").text = body
        await self.muc.host.route(Stanza(el))
        return "message sent"

    async def inviteUser(self, room: Any, sender: Any, recipient: Any, reason: str | None = None) -> str:
        frm, to = _jid(sender, "sender"), _jid(recipient, "recipient")
        el = ET.Element(_C + "message", {"from": str(frm), "to": str(_jid(room, "room").bare)})
        invite = ET.SubElement(ET.SubElement(el, q(MUC_USER, "x")), q(MUC_USER, "invite"), {"to": str(to)})
        if reason:
            ET.SubElement(invite, q(MUC_USER, "reason")).text = reason
        await self.muc.host.route(Stanza(el))
        return f"{to} was invited to {room}"
