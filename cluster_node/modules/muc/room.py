"""One XEP-0045 room, sans I/O: a stanza addressed to the room (or to an occupant in it) goes in
with its real sender and the time, the stanzas the room sends come out, and the state changes are
recorded as operations (:mod:`.state`) for the other members.  A refusal is a raised
:class:`~cluster_node.xmpp.errors.StanzaError`, raised before anything changed: the caller
bounces the stanza with it.

What is here: joining (nicks, passwords, members-only, bans, the room's size, history limits),
leaving, nick changes, presence updates and their broadcast with status codes, groupchat
messages with XEP-0359 stanza ids and XEP-0421 occupant ids, the subject, private messages and
IQs between occupants (XEP-0410 self-ping answered by the room), mediated invitations and
declines, roles and affiliations (``muc#admin``), the configuration (``muc#owner``, instant and
reserved rooms), destruction with an alternate venue, and the room's disco#info and disco#items.
"""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable, Iterable

from ...xmpp import errors, ns
from ...xmpp.errors import StanzaError
from ...xmpp.fragment import parse_stanza
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza, serialize
from .archive import Archived
from .config import (
    FormError,
    RoomConfig,
    apply_form,
    config_form,
    parse_register_form,
    register_query,
    roominfo_form,
)
from .protocol import (
    AFF_RANK,
    CONFERENCE,
    DATA,
    MAM,
    MUC,
    MUC_ADMIN,
    MUC_OWNER,
    MUC_USER,
    OCCUPANT_ID,
    SELF_PING,
    SID,
    STABLE_ID,
    AdminItem,
    HistoryLimits,
    add_codes,
    delay_element,
    item_element,
    parse_admin_items,
    parse_decline,
    parse_invites,
    parse_join,
    q,
    user_x,
)
from .state import HistoryItem, Limits, Occupant, RoomState

__all__ = ["Room", "RegistrationRequired", "RoomFull", "room_features", "iq_result"]

_C = f"{{{ns.CLIENT}}}"
_GONE_ERRORS = frozenset({"gone", "item-not-found", "recipient-unavailable", "redirect", "remote-server-not-found",
                          "remote-server-timeout", "service-unavailable"})  # an occupant that is no longer there
_NOT_BROADCAST = frozenset({q(MUC, "x"), q(MUC_USER, "x"), q(OCCUPANT_ID, "occupant-id"), _C + "error"})


class RegistrationRequired(StanzaError):
    condition, type = "registration-required", "auth"


class RoomFull(errors.ServiceUnavailable):
    """The room has its ``max_users`` occupants (XEP-0045 §7.2.10): a class of its own so the
    module counts the refusal."""


def room_features(config: RoomConfig) -> list[str]:
    """The disco#info features of a room with ``config`` (XEP-0045 §6.4, §15.2)."""
    c = config
    return sorted({
        MUC, ns.DISCO_INFO, ns.DISCO_ITEMS, ns.PING, SID, OCCUPANT_ID, STABLE_ID, SELF_PING, CONFERENCE,
        "muc_persistent" if c.persistent else "muc_temporary", "muc_public" if c.public else "muc_hidden",
        "muc_membersonly" if c.members_only else "muc_open", "muc_moderated" if c.moderated else "muc_unmoderated",
        "muc_passwordprotected" if c.password_protected else "muc_unsecured",
        "muc_nonanonymous" if c.whois == "anyone" else "muc_semianonymous", ns.REGISTER,
        *((MAM,) if c.archiving else ()),
    })


def _default_role(affiliation: str, config: RoomConfig) -> str:
    if affiliation in ("owner", "admin"):
        return "moderator"
    if affiliation == "member" or not config.moderated:
        return "participant"
    return "visitor"


def iq_result(request: Stanza, from_: str, payload: ET.Element | None = None) -> Stanza:
    el = ET.Element(_C + "iq", {"type": "result", "from": from_, "to": request.from_ or ""})
    if request.id is not None:
        el.set("id", request.id)
    if payload is not None:
        el.append(payload)
    return Stanza(el)


def _shared(el: ET.Element) -> Stanza:
    """A stanza kept as bytes, so copies to many recipients rewrite only their start tag (built
    without ``to``, so that a copy's ``to`` is inserted rather than the start tag rebuilt)."""
    el.attrib.pop("to", None)
    return parse_stanza(serialize(el))


class Room(RoomState):
    def __init__(self, jid: Jid, config: RoomConfig, limits: Limits, *, salt: str, created: float) -> None:
        super().__init__(jid, config, limits, salt=salt, created=created)
        self.fresh = False  # made for the join being handled: its first occupant creates it
        self._iqs: OrderedDict[str, tuple[str, str, str]] = OrderedDict()  # forwarded IQ id -> (sender, id, nick)
        self.to_archive: list[Archived] = []  # messages for the archive (the sequencer writes them)
        self._buckets: dict[str, tuple[float, float]] = {}  # full JID -> (tokens, when): presence floods
        self.dropped = 0  # presence dropped as floods
        # nick -> (occupant, affiliation, first real JID, {show_jid: presence}): see _seen
        self._seen_cache: dict[str, tuple[Occupant, str, str, dict[bool, Stanza]]] = {}

    def take_archive(self) -> list[Archived]:
        items, self.to_archive = self.to_archive, []
        return items

    def handle(self, stanza: Stanza, sender: Jid, to: Jid, now: float) -> list[Stanza]:
        """What the room sends for ``stanza`` (from ``sender``, to the room or ``room/nick``)."""
        out: list[Stanza] = []
        if stanza.name == "presence":
            self._presence(stanza, sender, to, now, out)
        elif stanza.name == "message":
            self._message(stanza, sender, to, now, out)
        elif stanza.name == "iq":
            self._iq(stanza, sender, to, out)
        return out

    # -- presence building -------------------------------------------------------------------------

    def _reveals_to(self, viewer: Occupant | None) -> bool:
        return self.config.whois == "anyone" or (viewer is not None and viewer.role == "moderator")

    def _presence_el(self, occ: Occupant, to_jid: str, *, show_jid: bool, codes: Iterable[int] = (),
                     unavailable: bool = False, children: Iterable[ET.Element] | None = None,
                     affiliation: str | None = None, new_nick: str | None = None, actor: str | None = None,
                     reason: str | None = None, destroy: ET.Element | None = None, real: str | None = None
                     ) -> Stanza:
        el = ET.Element(_C + "presence", {"from": f"{self.sjid}/{occ.nick}", "to": to_jid})
        if unavailable:
            el.set("type", "unavailable")
        el.extend(occ.children() if children is None else children)
        x = user_x(el)
        item_element(x, affiliation or self.affiliation(occ.bare), "none" if unavailable else occ.role,
                     jid=(real or occ.jids[0]) if show_jid else None, nick=new_nick, actor=actor, reason=reason)
        if destroy is not None:
            x.append(destroy)
        add_codes(x, codes)
        ET.SubElement(el, q(OCCUPANT_ID, "occupant-id"), {"id": occ.occupant_id})
        return Stanza(el)

    def _seen_by_others(self, occ: Occupant, **kw: object) -> Callable[[str, bool], Stanza]:
        """``occ``'s presence as the other occupants see it, to one of them: built once per variant
        (with or without the real JID) and copied with only ``to`` rewritten, so a broadcast to a
        thousand occupants builds two stanzas, not a thousand (and leaves as one run, see fanout.py)."""
        built: dict[bool, Stanza] = {}

        def to(jid: str, show_jid: bool) -> Stanza:
            shared = built.get(show_jid)
            if shared is None:
                shared = built[show_jid] = _shared(self._presence_el(occ, jid, show_jid=show_jid,
                                                                     **kw).element)  # type: ignore[arg-type]
            return shared.with_attrs(to=jid)
        return to

    def _seen(self, occ: Occupant, show_jid: bool, to_jid: str) -> Stanza:
        """``occ``'s current presence as another occupant sees it, to ``to_jid``: kept as bytes per
        occupant and variant until its presence, role, real JID or affiliation changes (an
        operation replaces the occupant), so a join into a room of a thousand copies a thousand
        stanzas instead of building and serializing each."""
        aff = self.affiliation(occ.bare)
        entry = self._seen_cache.get(occ.nick)
        if entry is None or entry[0] is not occ or entry[1] != aff or entry[2] != occ.jids[0]:
            if len(self._seen_cache) > 2 * len(self.occupants) + 16:  # forget occupants long gone
                self._seen_cache = {n: e for n, e in self._seen_cache.items() if n in self.occupants}
            entry = self._seen_cache[occ.nick] = (occ, aff, occ.jids[0], {})
        variants = entry[3]
        shared = variants.get(show_jid)
        if shared is None:
            shared = variants[show_jid] = _shared(self._presence_el(occ, to_jid, show_jid=show_jid).element)
        return shared.with_attrs(to=to_jid)

    def _broadcast_presence(self, occ: Occupant, out: list[Stanza], *, self_codes: Iterable[int] = (),
                            codes: Iterable[int] = (), skip: Iterable[str] = (), **kw: object) -> None:
        """``occ``'s presence to every occupant (its own sessions get 110 and ``self_codes``)."""
        skipped = set(skip)
        mine = set(occ.jids)
        others = self._seen_by_others(occ, codes=codes, **kw)
        for viewer in list(self.occupants.values()):
            for j in viewer.jids:
                if j in skipped:
                    continue
                if j in mine:
                    out.append(self._presence_el(occ, j, show_jid=True, codes=(110, *codes, *self_codes),
                                                 real=j, **kw))  # type: ignore[arg-type]
                else:
                    out.append(others(j, self._reveals_to(viewer)))
        for j in occ.jids:  # an occupant already out of the room still hears about itself
            if j not in skipped and j not in self.nick_of:
                out.append(self._presence_el(occ, j, show_jid=True, codes=(110, *codes, *self_codes), real=j,
                                             **kw))  # type: ignore[arg-type]

    @staticmethod
    def _kept_presence(stanza: Stanza) -> str:
        """What of a client's presence the room rebroadcasts: all but the MUC elements."""
        el = ET.Element(_C + "presence")
        el.extend(c for c in stanza.element if c.tag not in _NOT_BROADCAST)
        return serialize(el).decode() if len(el) else ""

    # -- presence in ---------------------------------------------------------------------------------

    def _presence(self, stanza: Stanza, sender: Jid, to: Jid, now: float, out: list[Stanza]) -> None:
        full = str(sender)
        nick = self.nick_of.get(full)
        ptype = stanza.type
        if ptype == "error":
            if nick is not None:
                self.remove_sessions({full}, 333, out)
            return
        if ptype == "unavailable":
            if nick is not None:
                self._leave(full, stanza, out)
            return
        if ptype is not None:
            return  # subscriptions and probes mean nothing to a room
        if not self._allow_presence(full, now):
            self.dropped += 1
            return  # a flood: dropped, as a server drops what a client sends too fast
        if to.resource is None:
            raise errors.JidMalformed("join with a nickname: room@service/nick")
        if nick is None:
            self._join(stanza, sender, to.resource, now, out)
        elif nick != to.resource:
            self._change_nick(stanza, full, nick, to.resource, out)
        elif parse_join(stanza.element).muc:
            self._join(stanza, sender, nick, now, out, rejoin=True)
        else:
            occ = self.occupants[nick]
            self.do({"op": "occupant", "occ": {**occ.to_json(), "presence": self._kept_presence(stanza)}})
            self._broadcast_presence(self.occupants[nick], out)

    def _allow_presence(self, full: str, now: float) -> bool:
        """A token bucket per session: ``presence_rate`` a second, bursts of twice that."""
        rate = self.limits.presence_rate
        if rate <= 0:
            return True
        tokens, when = self._buckets.get(full, (2 * rate, now))
        tokens = min(2 * rate, tokens + max(0.0, now - when) * rate)
        if tokens < 1:
            self._buckets[full] = (tokens, now)
            return False
        self._buckets[full] = (tokens - 1, now)
        if len(self._buckets) > 4 * max(len(self.nick_of), 64):  # forget sessions long gone
            for j in [j for j in self._buckets if j not in self.nick_of][: len(self._buckets) // 2]:
                del self._buckets[j]
        return True

    def _check_nick(self, nick: str) -> None:
        if len(nick) > self.limits.max_nick_length:
            raise errors.NotAcceptable(f"a nickname has at most {self.limits.max_nick_length} characters")
        if not nick.strip() or any(ord(c) < 0x20 for c in nick):
            raise errors.NotAcceptable("this nickname is not allowed")

    def _reserved_by(self, nick: str) -> str | None:
        for bare, a in self.affiliations.items():
            if a.nick == nick:
                return bare
        return None

    def _join(self, stanza: Stanza, sender: Jid, nick: str, now: float, out: list[Stanza], *,
              rejoin: bool = False) -> None:
        full, bare = str(sender), str(sender.bare)
        req = parse_join(stanza.element)
        aff = self.affiliation(bare)
        holder = self.occupants.get(nick)
        creating = self.fresh and not self.occupants
        if not rejoin:
            self._check_nick(nick)
        if not creating and not rejoin:
            if self.locked and aff != "owner":
                raise errors.ItemNotFound("the room is locked until its owner configures it")
            if aff == "outcast":
                raise errors.Forbidden("you are banned from this room")
            if self.config.members_only and AFF_RANK[aff] < AFF_RANK["member"]:
                raise RegistrationRequired("this room is for its members only")
            if self.config.password_protected and aff != "owner" and req.password != self.config.password:
                raise errors.StanzaNotAuthorized("this room needs a password")
            if holder is not None and holder.bare != bare:
                raise errors.StanzaConflict("this nickname is in use")
            reserved = self._reserved_by(nick)
            if reserved is not None and reserved != bare:
                raise errors.StanzaConflict("this nickname is reserved")
            if holder is None and len(self.occupants) >= self.config.max_users and AFF_RANK[aff] < AFF_RANK["admin"]:
                raise RoomFull("the room is full")
        codes: list[int] = []
        if creating:
            self.fresh = False
            self.do({"op": "aff", "jid": bare, "aff": "owner"})
            aff = "owner"
            codes.append(201)
            if self.limits.lock_new_rooms:
                self.do({"op": "locked", "value": True})
        presence = self._kept_presence(stanza)
        if holder is not None:  # another session of the same occupant, or the same one joining again
            jids = holder.jids if full in holder.jids else [*holder.jids, full]
            self.do({"op": "occupant", "occ": {**holder.to_json(), "jids": jids, "presence": presence}})
        else:
            role = _default_role(aff, self.config)
            self.do({"op": "occupant", "occ": {"nick": nick, "bare": bare, "jids": [full], "role": role,
                                               "presence": presence, "occupant_id": self.occupant_id(bare)}})
        occ = self.occupants[nick]
        show = self._reveals_to(occ)
        for other in self.occupants.values():
            if other is not occ:
                out.append(self._seen(other, show, full))
        if self.config.whois == "anyone":
            codes.append(100)
        if self.config.archiving:
            codes.append(170)
        out.append(self._presence_el(occ, full, show_jid=True, codes=(110, *codes), real=full))
        others = self._seen_by_others(occ)
        for viewer in self.occupants.values():
            for j in viewer.jids:
                if j == full:
                    continue
                if j in occ.jids:
                    out.append(self._presence_el(occ, j, show_jid=True, codes=(110,), real=j))
                else:
                    out.append(others(j, self._reveals_to(viewer)))
        for item in self._history(req.history, now):
            out.append(parse_stanza(item.data.encode()).with_attrs(to=full))
        out.append(self._subject_message(full))

    def _history(self, limits: HistoryLimits, now: float) -> list[HistoryItem]:
        """The history a joining occupant asked for (XEP-0045 §7.2.15), never more than is kept."""
        items = list(self.history)
        if limits.maxstanzas is not None:
            items = items[len(items) - min(limits.maxstanzas, len(items)):]
        if limits.seconds is not None:
            items = [i for i in items if now - i.time <= limits.seconds]
        if limits.since is not None:
            items = [i for i in items if i.time >= limits.since]
        if limits.maxchars is not None:
            kept: list[HistoryItem] = []
            total = 0
            for item in reversed(items):
                total += len(item.data)
                if total > limits.maxchars:
                    break
                kept.append(item)
            items = kept[::-1]
        return items

    def _subject_message(self, to_jid: str) -> Stanza:
        frm = f"{self.sjid}/{self.subject_by}" if self.subject_by in self.occupants else self.sjid
        el = ET.Element(_C + "message", {"type": "groupchat", "from": frm, "to": to_jid,
                                         "id": secrets.token_hex(6)})
        ET.SubElement(el, _C + "subject").text = self.subject or None
        return Stanza(el)

    def _leave(self, full: str, stanza: Stanza, out: list[Stanza]) -> None:
        nick = self.nick_of[full]
        occ = self.occupants[nick]
        status = [c for c in stanza.element if c.tag == _C + "status"]
        if len(occ.jids) > 1:  # one session of several leaves: only it hears
            gone = Occupant(occ.nick, occ.bare, [full], occ.role, occ.presence, occ.occupant_id)
            self.do({"op": "occupant", "occ": {**occ.to_json(), "jids": [j for j in occ.jids if j != full]}})
            out.append(self._presence_el(gone, full, show_jid=True, codes=(110,), unavailable=True, children=status))
            return
        self.do({"op": "gone", "nick": nick})
        self._broadcast_presence(occ, out, unavailable=True, children=status)
        self._maybe_close()

    def _maybe_close(self) -> None:
        """A temporary room goes when its last occupant does (XEP-0045 §10.1.3)."""
        if not self.occupants and not self.config.persistent and not self.destroyed:
            self.do({"op": "destroy"})

    def remove_sessions(self, jids: set[str], code: int, out: list[Stanza]) -> None:
        """Real full JIDs that are gone without leaving (their node died: 332; they answer with
        errors: 333) leave the room, and the others are told."""
        for nick in {self.nick_of[j] for j in jids if j in self.nick_of}:
            occ = self.occupants[nick]
            left = [j for j in occ.jids if j not in jids]
            if left:
                self.do({"op": "occupant", "occ": {**occ.to_json(), "jids": left}})
                continue
            self.do({"op": "gone", "nick": nick})
            self._broadcast_presence(occ, out, unavailable=True, codes=(code,), skip=jids)
        self._maybe_close()

    def _change_nick(self, stanza: Stanza, full: str, old: str, new: str, out: list[Stanza]) -> None:
        self._check_nick(new)
        occ = self.occupants[old]
        holder = self.occupants.get(new)
        if holder is not None and holder.bare != occ.bare:
            raise errors.StanzaConflict("this nickname is in use")
        if holder is not None:
            raise errors.StanzaConflict("you are already in the room under this nickname with another session")
        reserved = self._reserved_by(new)
        if reserved is not None and reserved != occ.bare:
            raise errors.StanzaConflict("this nickname is reserved")
        self._broadcast_presence(occ, out, unavailable=True, codes=(303,), new_nick=new, children=())
        self.do({"op": "gone", "nick": old})
        self.do({"op": "occupant", "occ": {**occ.to_json(), "nick": new, "presence": self._kept_presence(stanza)}})
        self._broadcast_presence(self.occupants[new], out)

    # -- messages ------------------------------------------------------------------------------------

    def _message(self, stanza: Stanza, sender: Jid, to: Jid, now: float, out: list[Stanza]) -> None:
        full = str(sender)
        nick = self.nick_of.get(full)
        mtype = stanza.type or "normal"
        if mtype == "error":
            self._message_error(stanza, full, nick, to, out)
            return
        if to.resource is not None:
            self._private(stanza, nick, to.resource, mtype, out)
            return
        if mtype == "groupchat":
            self._groupchat(stanza, sender, nick, now, out)
            return
        x = stanza.child(MUC_USER, "x")
        if x is not None and x.find(q(MUC_USER, "invite")) is not None:
            self._invite(stanza, sender, nick, x, out)
        elif x is not None and x.find(q(MUC_USER, "decline")) is not None:
            self._decline(stanza, sender, x, out)
        else:
            raise errors.BadRequest("a message to the room is a groupchat message, an invitation or a decline")

    def _message_error(self, stanza: Stanza, full: str, nick: str | None, to: Jid, out: list[Stanza]) -> None:
        if nick is None:
            return
        private = stanza.child(MUC_USER, "x") is not None and not any(
            c.get("by") == self.sjid for c in stanza.element.iter(q(SID, "stanza-id")))
        if private and to.resource is not None and to.resource != nick and to.resource in self.occupants:
            for j in self.occupants[to.resource].jids:  # the error answers a private message
                out.append(stanza.with_attrs(from_=f"{self.sjid}/{nick}", to=j))
            return
        err = stanza.element.find(_C + "error")
        conditions = {c.tag.split("}", 1)[1] for c in err} if err is not None else set()
        if conditions & _GONE_ERRORS:
            self.remove_sessions({full}, 333, out)

    def _groupchat(self, stanza: Stanza, sender: Jid, nick: str | None, now: float, out: list[Stanza]) -> None:
        if nick is None:
            raise errors.NotAcceptable("only occupants may send messages to the room")
        occ = self.occupants[nick]
        if occ.role not in ("participant", "moderator"):
            raise errors.Forbidden("visitors may not speak in this moderated room")
        subject = stanza.element.find(_C + "subject")
        body = stanza.element.find(_C + "body")
        el = ET.Element(_C + "message", {"type": "groupchat", "from": f"{self.sjid}/{nick}"})
        if stanza.id is not None:
            el.set("id", stanza.id)
        if subject is not None and body is None:
            if occ.role != "moderator" and not self.config.change_subject:
                raise errors.Forbidden("only moderators may change the subject of this room")
            self.do({"op": "subject", "subject": subject.text or "", "by": nick})
            el.extend(stanza.element)
            shared = _shared(el)
            out.extend(shared.with_attrs(to=j) for j in self.jids())
            return
        for child in stanza.element:
            if child.tag == q(SID, "stanza-id") and child.get("by") == self.sjid:
                continue  # only the room says which ids it gave
            if child.tag == q(OCCUPANT_ID, "occupant-id"):
                continue
            el.append(child)
        stanza_id = secrets.token_urlsafe(12)
        ET.SubElement(el, q(OCCUPANT_ID, "occupant-id"), {"id": occ.occupant_id})
        ET.SubElement(el, q(SID, "stanza-id"), {"id": stanza_id, "by": self.sjid})
        shared = _shared(el)
        if self.config.archiving:
            self.to_archive.append(Archived(stanza_id, nick, occ.bare, now, shared.to_bytes()))
        if self.config.history_length > 0:
            el.append(delay_element(self.sjid, now))
            item = HistoryItem(serialize(el).decode(), nick, now, stanza_id)
            self.do({"op": "history", "item": item.to_json()})
        out.extend(shared.with_attrs(to=j) for j in self.jids())

    def _private(self, stanza: Stanza, nick: str | None, target: str, mtype: str, out: list[Stanza]) -> None:
        if nick is None:
            raise errors.NotAcceptable("only occupants may send private messages")
        if mtype == "groupchat":
            raise errors.BadRequest("a groupchat message goes to the room, not to an occupant")
        occ = self.occupants.get(target)
        if occ is None:
            raise errors.ItemNotFound(f"no occupant is named {target!r}")
        role = self.occupants[nick].role
        allowed = {"anyone": True, "participants": role in ("participant", "moderator"),
                   "moderators": role == "moderator", "none": False}[self.config.allow_pm]
        if not allowed:
            raise errors.NotAllowed("private messages are not allowed here")
        el = ET.Element(_C + "message", dict(stanza.element.attrib))
        el.set("from", f"{self.sjid}/{nick}")
        el.extend(stanza.element)
        if stanza.child(MUC_USER, "x") is None:
            user_x(el)
        shared = _shared(el)
        out.extend(shared.with_attrs(to=j) for j in occ.jids)

    def _invite(self, stanza: Stanza, sender: Jid, nick: str | None, x: ET.Element, out: list[Stanza]) -> None:
        bare = str(sender.bare)
        aff = self.affiliation(bare)
        privileged = AFF_RANK[aff] >= AFF_RANK["admin"]
        if nick is None and not privileged:
            raise errors.NotAcceptable("only occupants may invite")
        role = self.occupants[nick].role if nick is not None else "none"
        if not (privileged or role == "moderator" or self.config.allow_invites):
            raise errors.Forbidden("occupants may not invite others to this room")
        invites = parse_invites(x)
        targets: list[Jid] = []
        for inv in invites:
            try:
                targets.append(Jid.parse(inv.to))
            except InvalidJid:
                raise errors.JidMalformed(f"cannot invite {inv.to!r}") from None
        for inv, target in zip(invites, targets, strict=True):
            tbare = str(target.bare)
            if self.config.members_only and self.affiliation(tbare) == "none" and (privileged or role == "moderator"):
                self._check_affiliations_room()
                self.do({"op": "aff", "jid": tbare, "aff": "member"})
            el = ET.Element(_C + "message", {"from": self.sjid, "to": str(target)})
            if stanza.id is not None:
                el.set("id", stanza.id)
            ux = user_x(el)
            invite = ET.SubElement(ux, q(MUC_USER, "invite"), {"from": str(sender)})
            if inv.reason:
                ET.SubElement(invite, q(MUC_USER, "reason")).text = inv.reason
            if inv.continue_thread is not None:
                ET.SubElement(invite, q(MUC_USER, "continue"), {"thread": inv.continue_thread})
            if self.config.password_protected:
                ET.SubElement(ux, q(MUC_USER, "password")).text = self.config.password
            ET.SubElement(el, q(CONFERENCE, "x"), {"jid": self.sjid, **({"reason": inv.reason} if inv.reason else {})})
            ET.SubElement(el, _C + "body").text = (f"{sender.bare} invites you to the room {self.sjid}"
                                                   + (f": {inv.reason}" if inv.reason else ""))
            out.append(Stanza(el))

    def _decline(self, stanza: Stanza, sender: Jid, x: ET.Element, out: list[Stanza]) -> None:
        decline = parse_decline(x)
        assert decline is not None
        try:
            target = Jid.parse(decline.to)
        except InvalidJid:
            raise errors.JidMalformed(f"cannot send a decline to {decline.to!r}") from None
        el = ET.Element(_C + "message", {"from": self.sjid, "to": str(target)})
        d = ET.SubElement(user_x(el), q(MUC_USER, "decline"), {"from": str(sender.bare)})
        if decline.reason:
            ET.SubElement(d, q(MUC_USER, "reason")).text = decline.reason
        out.append(Stanza(el))

    # -- IQs ----------------------------------------------------------------------------------------------

    def _iq(self, stanza: Stanza, sender: Jid, to: Jid, out: list[Stanza]) -> None:
        full = str(sender)
        if stanza.type in ("result", "error"):
            if to.resource is not None:
                self._iq_answer(stanza, full, to.resource, out)
            return
        payload = stanza.payload()
        if payload is None:
            raise errors.BadRequest("an IQ has one payload")
        if to.resource is not None:
            self._iq_to_occupant(stanza, full, to.resource, payload, out)
            return
        if self.locked and self.affiliation(str(sender.bare)) != "owner":
            raise errors.ItemNotFound("the room is locked until its owner configures it")
        tag, get = payload.tag, stanza.type == "get"
        if tag == q(ns.DISCO_INFO, "query") and get:
            out.append(iq_result(stanza, self.sjid, self._disco_info(payload, sender)))
        elif tag == q(ns.DISCO_ITEMS, "query") and get:
            out.append(iq_result(stanza, self.sjid, self._disco_items(full)))
        elif tag == q(ns.PING, "ping") and get:
            out.append(iq_result(stanza, self.sjid))
        elif tag == q(MUC_OWNER, "query"):
            self._owner(stanza, sender, payload, out)
        elif tag == q(MUC_ADMIN, "query"):
            self._admin(stanza, sender, payload, out)
        elif tag == q(ns.REGISTER, "query"):
            self._register(stanza, sender, payload, out)
        else:
            raise errors.ServiceUnavailable()

    def _iq_to_occupant(self, stanza: Stanza, full: str, target: str, payload: ET.Element, out: list[Stanza]) -> None:
        nick = self.nick_of.get(full)
        if nick is None:
            raise errors.NotAcceptable("you are not an occupant of this room")
        if nick == target and payload.tag == q(ns.PING, "ping"):  # XEP-0410: still joined
            out.append(iq_result(stanza, f"{self.sjid}/{nick}"))
            return
        occ = self.occupants.get(target)
        if occ is None:
            raise errors.ItemNotFound(f"no occupant is named {target!r}")
        fid = "muc-" + secrets.token_hex(8)
        self._iqs[fid] = (full, stanza.id or "", target)
        while len(self._iqs) > self.limits.max_forwarded_iqs:
            self._iqs.popitem(last=False)
        out.append(stanza.with_attrs(from_=f"{self.sjid}/{nick}", to=occ.jids[0], id=fid))

    def _iq_answer(self, stanza: Stanza, full: str, to_nick: str, out: list[Stanza]) -> None:
        pending = self._iqs.get(stanza.id or "")
        if pending is None:
            return
        asker, qid, target = pending
        occ = self.occupants.get(target)
        if occ is None or full not in occ.jids or self.nick_of.get(asker) != to_nick:
            return
        del self._iqs[stanza.id or ""]
        out.append(stanza.with_attrs(from_=f"{self.sjid}/{target}", to=asker, id=qid))

    def _disco_info(self, payload: ET.Element, sender: Jid) -> ET.Element:
        node = payload.get("node")
        query = ET.Element(q(ns.DISCO_INFO, "query"))
        if node == "x-roomuser-item":  # XEP-0045 §7.12: the nick reserved for the asker
            query.set("node", node)
            a = self.affiliations.get(str(sender.bare))
            if a is not None and a.nick:
                ET.SubElement(query, q(ns.DISCO_INFO, "identity"), {"category": "conference", "type": "text",
                                                                    "name": a.nick})
            return query
        if node:
            raise errors.ItemNotFound()
        ET.SubElement(query, q(ns.DISCO_INFO, "identity"), {"category": "conference", "type": "text",
                                                            "name": self.config.title or self.jid.local or ""})
        for feature in room_features(self.config):
            ET.SubElement(query, q(ns.DISCO_INFO, "feature"), {"var": feature})
        query.append(roominfo_form(self.config, len(self.occupants), self.subject, self.config.change_subject))
        return query

    def _disco_items(self, full: str) -> ET.Element:
        """The occupants, for occupants only (XEP-0045 §6.5 lets a room keep them private)."""
        query = ET.Element(q(ns.DISCO_ITEMS, "query"))
        if full in self.nick_of:
            for nick in sorted(self.occupants):
                ET.SubElement(query, q(ns.DISCO_ITEMS, "item"), {"jid": f"{self.sjid}/{nick}"})
        return query

    # -- nick registration (XEP-0045 §7.10) -----------------------------------------------------------

    def _register(self, stanza: Stanza, sender: Jid, payload: ET.Element, out: list[Stanza]) -> None:
        """The registration form, a registration (the nick is reserved for the user, who becomes a
        member) or its removal.  Checked before anything changes, like every refusal here."""
        bare = str(sender.bare)
        aff = self.affiliation(bare)
        current = self.affiliations.get(bare)
        if aff == "outcast":
            raise errors.Forbidden("you are banned from this room")
        if stanza.type == "get":
            out.append(iq_result(stanza, self.sjid, register_query(current.nick if current is not None else "")))
            return
        if payload.find(q(ns.REGISTER, "remove")) is not None:
            if current is None or not current.nick and aff != "member":
                raise errors.ItemNotFound("you have not registered with this room")
            out.append(iq_result(stanza, self.sjid))
            if aff == "member":  # a registration made the member: removing it ends the membership
                self.set_affiliation(bare, "none", out, nick="")
            else:
                self.do({"op": "aff", "jid": bare, "aff": aff, "nick": "", "reason": current.reason})
            return
        form = payload.find(q(DATA, "x"))
        if form is None:
            raise errors.BadRequest("a registration is a submitted muc#register form")
        if form.get("type") == "cancel":
            out.append(iq_result(stanza, self.sjid))
            return
        try:
            nick = parse_register_form(form)
        except FormError as e:
            raise errors.BadRequest(str(e)) from None
        self._check_nick(nick)
        try:
            Jid.parse(f"{self.sjid}/{nick}")
        except InvalidJid:
            raise errors.NotAcceptable("no JID can carry this nickname") from None
        reserved = self._reserved_by(nick)
        holder = self.occupants.get(nick)
        if (reserved is not None and reserved != bare) or (holder is not None and holder.bare != bare):
            raise errors.StanzaConflict("this nickname is reserved or in use")
        if aff == "none" and self.config.members_only:
            raise errors.NotAllowed("the admins of this members-only room choose its members")
        if current is None:
            self._check_affiliations_room()
        out.append(iq_result(stanza, self.sjid))
        if aff == "none":
            self.set_affiliation(bare, "member", out, nick=nick)
        else:
            self.do({"op": "aff", "jid": bare, "aff": aff, "nick": nick,
                     "reason": current.reason if current is not None else ""})

    # -- owners: configuration and destruction ------------------------------------------------------------

    def _owner(self, stanza: Stanza, sender: Jid, payload: ET.Element, out: list[Stanza]) -> None:
        if self.affiliation(str(sender.bare)) != "owner":
            raise errors.Forbidden("only owners configure the room")
        if stanza.type == "get":
            if len(payload):
                raise errors.BadRequest("a configuration request is an empty query")
            query = ET.Element(q(MUC_OWNER, "query"))
            query.append(config_form(self.config, self.limits.max_users, self.limits.max_history))
            out.append(iq_result(stanza, self.sjid, query))
            return
        destroy = payload.find(q(MUC_OWNER, "destroy"))
        form = payload.find(q(DATA, "x"))
        if destroy is not None:
            reason = destroy.find(q(MUC_OWNER, "reason"))
            password = destroy.find(q(MUC_OWNER, "password"))
            out.append(iq_result(stanza, self.sjid))
            self.destroy(out, alternate=destroy.get("jid"), reason=reason.text if reason is not None else None,
                         password=password.text if password is not None else None)
            return
        if form is None:
            raise errors.BadRequest("a data form or <destroy/> is expected")
        if form.get("type") == "cancel":
            out.append(iq_result(stanza, self.sjid))
            if self.locked:  # a reserved room whose creation was cancelled (XEP-0045 §10.1.3)
                self.destroy(out)
            return
        try:
            new = apply_form(self.config, form, self.limits.max_users, self.limits.max_history)
        except FormError as e:
            raise errors.BadRequest(str(e)) from None
        self.configure(new, out)
        out.insert(0, iq_result(stanza, self.sjid))

    def configure(self, new: RoomConfig, out: list[Stanza]) -> None:
        """Take ``new`` as the configuration: unlock, notify the changes, apply their effects."""
        old = self.config
        self.do({"op": "config", "config": new.to_json()})
        if self.locked:
            self.do({"op": "locked", "value": False})
        codes = [104]
        if new.archiving != old.archiving:
            codes.append(170 if new.archiving else 171)
        if new.whois != old.whois:
            codes.append(172 if new.whois == "anyone" else 173)
        el = ET.Element(_C + "message", {"type": "groupchat", "from": self.sjid, "id": secrets.token_hex(6)})
        add_codes(user_x(el), codes)
        shared = _shared(el)
        out.extend(shared.with_attrs(to=j) for j in self.jids())
        if new.members_only and not old.members_only:  # non-members leave (322)
            for occ in list(self.occupants.values()):
                if AFF_RANK[self.affiliation(occ.bare)] < AFF_RANK["member"]:
                    self.do({"op": "gone", "nick": occ.nick})
                    self._broadcast_presence(occ, out, unavailable=True, codes=(322,), children=())
        if new.moderated != old.moderated:  # roles follow: visitors get voice, or lose it
            for occ in list(self.occupants.values()):
                role = _default_role(self.affiliation(occ.bare), new)
                if role != occ.role and "moderator" not in (role, occ.role):
                    self.do({"op": "occupant", "occ": {**occ.to_json(), "role": role}})
                    self._broadcast_presence(self.occupants[occ.nick], out)

    def destroy(self, out: list[Stanza], *, alternate: str | None = None, reason: str | None = None,
                password: str | None = None) -> None:
        """Every occupant leaves, told why and where to go (XEP-0045 §10.9)."""
        d = ET.Element(q(MUC_USER, "destroy"))
        if alternate:
            d.set("jid", alternate)
        if reason:
            ET.SubElement(d, q(MUC_USER, "reason")).text = reason
        if password:
            ET.SubElement(d, q(MUC_USER, "password")).text = password
        for occ in list(self.occupants.values()):
            for j in occ.jids:
                out.append(self._presence_el(occ, j, show_jid=True, codes=(110,), unavailable=True, children=(),
                                             affiliation="none", destroy=d, real=j))
        self.do({"op": "destroy"})

    # -- admins: roles and affiliations -----------------------------------------------------------------

    def _admin(self, stanza: Stanza, sender: Jid, payload: ET.Element, out: list[Stanza]) -> None:
        try:
            items = parse_admin_items(payload)
        except ValueError as e:
            raise errors.BadRequest(str(e)) from None
        actor_aff = self.affiliation(str(sender.bare))
        actor = self.occupant_of(str(sender))
        if stanza.type == "get":
            out.append(iq_result(stanza, self.sjid, self._admin_list(items[0], actor_aff, actor)))
            return
        changes = [self._check_admin_item(it, actor_aff, actor) for it in items]  # all checked, then done
        owners = {j for j, a in self.affiliations.items() if a.affiliation == "owner"}
        for kind, target, value, _ in changes:
            if kind == "aff":
                if value == "owner":
                    owners.add(target)
                else:
                    owners.discard(target)
        if not owners:
            raise errors.StanzaConflict("a room keeps at least one owner")
        out.append(iq_result(stanza, self.sjid))
        by = actor.nick if actor is not None else None
        for kind, target, value, reason in changes:
            if kind == "role":
                self.set_role(target, value, out, actor=by, reason=reason)
            else:
                self.set_affiliation(target, value, out, actor=by, reason=reason)

    def _admin_list(self, item: AdminItem, actor_aff: str, actor: Occupant | None) -> ET.Element:
        query = ET.Element(q(MUC_ADMIN, "query"))
        if item.affiliation is not None:
            if AFF_RANK[actor_aff] < AFF_RANK["admin"]:
                raise errors.Forbidden("only admins and owners read affiliation lists")
            for jid, a in sorted(self.affiliations.items()):
                if a.affiliation == item.affiliation:
                    it = ET.SubElement(query, q(MUC_ADMIN, "item"), {"affiliation": a.affiliation, "jid": jid})
                    if a.nick:
                        it.set("nick", a.nick)
                    if a.reason:
                        ET.SubElement(it, q(MUC_ADMIN, "reason")).text = a.reason
            return query
        if item.role is not None:
            if actor is None or actor.role != "moderator":
                raise errors.Forbidden("only moderators read role lists")
            for occ in sorted(self.occupants.values(), key=lambda o: o.nick):
                if occ.role == item.role:
                    ET.SubElement(query, q(MUC_ADMIN, "item"), {
                        "affiliation": self.affiliation(occ.bare), "role": occ.role, "nick": occ.nick,
                        "jid": occ.jids[0]})
            return query
        raise errors.BadRequest("ask for an affiliation or a role")

    def _check_admin_item(self, it: AdminItem, actor_aff: str, actor: Occupant | None) -> tuple[str, str, str, str]:
        """("role", nick, role, reason) or ("aff", bare JID, affiliation, reason), if allowed."""
        if it.affiliation is not None:
            if it.jid is not None:
                try:
                    target = str(Jid.parse(it.jid).bare)
                except InvalidJid:
                    raise errors.JidMalformed(f"bad jid {it.jid!r}") from None
            elif it.nick is not None and it.nick in self.occupants:
                target = self.occupants[it.nick].bare
            else:
                raise errors.BadRequest("an affiliation change names a jid")
            current, new = self.affiliation(target), it.affiliation
            if actor_aff == "owner":
                pass
            elif actor_aff == "admin":
                if new in ("owner", "admin"):
                    raise errors.Forbidden("only owners grant admin and owner")
                if AFF_RANK[current] >= AFF_RANK["admin"]:
                    raise errors.NotAllowed("admins cannot change the affiliation of admins and owners")
            else:
                raise errors.Forbidden("only admins and owners change affiliations")
            if target not in self.affiliations and new != "none":
                self._check_affiliations_room()
            return "aff", target, new, it.reason
        if it.role is not None and it.nick is not None:
            occ = self.occupants.get(it.nick)
            if occ is None:
                raise errors.ItemNotFound(f"no occupant is named {it.nick!r}")
            if actor is None or actor.role != "moderator":
                raise errors.Forbidden("only moderators change roles")
            privileged = AFF_RANK[actor_aff] >= AFF_RANK["admin"]
            if (it.role == "moderator" or occ.role == "moderator") and not privileged:
                raise errors.Forbidden("only admins and owners grant or revoke moderation")
            target_aff = self.affiliation(occ.bare)
            if it.role != "moderator" and AFF_RANK[target_aff] >= AFF_RANK["admin"]:
                raise errors.NotAllowed("admins and owners keep their role")
            if it.role != "moderator" and AFF_RANK[target_aff] > AFF_RANK[actor_aff]:
                raise errors.NotAllowed("an occupant of a higher affiliation keeps its role")
            return "role", it.nick, it.role, it.reason
        raise errors.BadRequest("an item changes a role (by nick) or an affiliation (by jid)")

    def _check_affiliations_room(self) -> None:
        if len(self.affiliations) >= self.limits.max_affiliations:
            raise errors.NotAllowed(f"a room has at most {self.limits.max_affiliations} affiliations")

    def set_role(self, nick: str, role: str, out: list[Stanza], *, actor: str | None = None,
                 reason: str | None = None) -> None:
        occ = self.occupants.get(nick)
        if occ is None or occ.role == role:
            return
        if role == "none":  # kicked (307)
            self.do({"op": "gone", "nick": nick})
            self._broadcast_presence(occ, out, unavailable=True, codes=(307,), actor=actor, reason=reason or None,
                                     children=())
            self._maybe_close()
            return
        self.do({"op": "occupant", "occ": {**occ.to_json(), "role": role}})
        self._broadcast_presence(self.occupants[nick], out, actor=actor, reason=reason or None)

    def set_affiliation(self, bare: str, affiliation: str, out: list[Stanza], *, actor: str | None = None,
                        reason: str | None = None, nick: str | None = None) -> None:
        current = self.affiliations.get(bare)
        keep_nick = nick if nick is not None else (current.nick if current is not None else "")
        self.do({"op": "aff", "jid": bare, "aff": affiliation, "nick": keep_nick if affiliation != "outcast" else "",
                 "reason": reason or ""})
        for occ in [o for o in self.occupants.values() if o.bare == bare]:
            code = 301 if affiliation == "outcast" else (
                321 if self.config.members_only and affiliation == "none" else None)
            if code is not None:
                self.do({"op": "gone", "nick": occ.nick})
                self._broadcast_presence(occ, out, unavailable=True, codes=(code,), actor=actor, reason=reason or None,
                                         children=(), affiliation=affiliation)
                continue
            role = _default_role(affiliation, self.config)
            self.do({"op": "occupant", "occ": {**occ.to_json(), "role": role}})
            self._broadcast_presence(self.occupants[occ.nick], out, actor=actor, reason=reason or None)
        self._maybe_close()
