"""A room's configuration and its XEP-0004 forms: the ``muc#roomconfig`` form an owner gets and
submits (XEP-0045 §10.2), and the ``muc#roominfo`` extension of the room's disco#info (§6.4).

Values are checked against their field types when submitted: a boolean that is not one, a number
out of range or a choice not offered is a :class:`FormError` (the room answers ``bad-request``),
so a bad form never changes half a configuration.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ...xmpp import ns
from .protocol import DATA, REGISTER_FORM, ROOMCONFIG, ROOMINFO, q

__all__ = ["RoomConfig", "FormError", "config_form", "apply_form", "roominfo_form", "register_query",
           "parse_register_form", "WHOIS", "ALLOW_PM"]

WHOIS = ("moderators", "anyone")
ALLOW_PM = ("anyone", "participants", "moderators", "none")
_X = q(DATA, "x")
_FIELD = q(DATA, "field")
_VALUE = q(DATA, "value")


class FormError(ValueError):
    """A submitted form that does not fit its fields."""


@dataclass(frozen=True, slots=True)
class RoomConfig:
    title: str = ""
    description: str = ""
    lang: str = ""
    persistent: bool = False
    public: bool = True
    members_only: bool = False
    moderated: bool = False
    password_protected: bool = False
    password: str = ""
    max_users: int = 200
    whois: str = "moderators"  # who sees occupants' real JIDs
    allow_invites: bool = False  # occupants (not only admins) may invite
    change_subject: bool = False  # participants (not only moderators) may change the subject
    history_length: int = 20  # messages kept for joining occupants
    archiving: bool = False  # XEP-0313 archive of the room
    allow_pm: str = "anyone"  # who may send private messages

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> RoomConfig:
        """Known keys of the right type only (it came from storage or another member)."""
        if not isinstance(d, dict):
            return cls()
        kept: dict[str, Any] = {}
        for f in fields(cls):
            value = d.get(f.name)
            default = getattr(cls(), f.name)
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            else:
                ok = isinstance(value, str)
            if ok:
                kept[f.name] = value
        return replace(cls(), **kept)

    @property
    def anonymous(self) -> bool:
        return self.whois != "anyone"


# -- the configuration form ----------------------------------------------------------------------------

# field var → (attribute, type); types: bool, text, secret, int, list (choices in _CHOICES)
_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("muc#roomconfig_roomname", "title", "text-single", "Name of the room"),
    ("muc#roomconfig_roomdesc", "description", "text-single", "Description"),
    ("muc#roomconfig_lang", "lang", "text-single", "Language of the discussion"),
    ("muc#roomconfig_persistentroom", "persistent", "boolean", "Keep the room when the last occupant leaves"),
    ("muc#roomconfig_publicroom", "public", "boolean", "List the room in the service's items"),
    ("muc#roomconfig_membersonly", "members_only", "boolean", "Only members may join"),
    ("muc#roomconfig_moderatedroom", "moderated", "boolean", "Only occupants with voice may speak"),
    ("muc#roomconfig_passwordprotectedroom", "password_protected", "boolean", "A password is needed to join"),
    ("muc#roomconfig_roomsecret", "password", "text-private", "Password"),
    ("muc#roomconfig_maxusers", "max_users", "list-single", "Most occupants"),
    ("muc#roomconfig_whois", "whois", "list-single", "Who may see real JIDs"),
    ("muc#roomconfig_allowinvites", "allow_invites", "boolean", "Occupants may invite others"),
    ("muc#roomconfig_changesubject", "change_subject", "boolean", "Occupants may change the subject"),
    ("muc#maxhistoryfetch", "history_length", "text-single", "Messages sent to joining occupants"),
    ("muc#roomconfig_enablearchiving", "archiving", "boolean", "Archive the room's messages (XEP-0313)"),
    ("muc#roomconfig_allowpm", "allow_pm", "list-single", "Who may send private messages"),
)
_ALIASES = {"muc#roomconfig_enablelogging": "muc#roomconfig_enablearchiving"}
_BY_VAR = {var: (attr, kind) for var, attr, kind, _ in _FIELDS}


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true"):
        return True
    if v in ("0", "false"):
        return False
    raise FormError(f"{value!r} is not a boolean")


def _number(value: str, low: int, high: int, what: str) -> int:
    v = value.strip()
    if not v.isdigit() or len(v) > 12:
        raise FormError(f"{what}: {value!r} is not a number")
    n = int(v)
    if not low <= n <= high:
        raise FormError(f"{what}: {n} is not within {low}…{high}")
    return n


def _field(form: ET.Element, var: str, kind: str, label: str, values: list[str],
           options: list[str] | None = None) -> None:
    f = ET.SubElement(form, _FIELD, {"var": var, "type": kind, "label": label})
    for o in options or ():
        opt = ET.SubElement(f, q(DATA, "option"), {"label": o})
        ET.SubElement(opt, _VALUE).text = o
    for v in values:
        ET.SubElement(f, _VALUE).text = v


def _max_users_options(max_users: int) -> list[str]:
    return sorted({str(n) for n in (10, 20, 30, 50, 100, 200, 500, 1000) if n <= max_users} | {str(max_users)},
                  key=int)


def config_form(config: RoomConfig, max_users: int, max_history: int) -> ET.Element:
    """The ``muc#roomconfig`` form with ``config``'s values (``max_users``, ``max_history``: the
    service's caps)."""
    form = ET.Element(_X, {"type": "form"})
    ET.SubElement(form, q(DATA, "title")).text = "Configuration of the room"
    _field(form, "FORM_TYPE", "hidden", "", [ROOMCONFIG])
    for var, attr, kind, label in _FIELDS:
        value = getattr(config, attr)
        options = None
        if attr == "max_users":
            options = _max_users_options(max_users)
        elif attr == "whois":
            options = list(WHOIS)
        elif attr == "allow_pm":
            options = list(ALLOW_PM)
        if attr == "history_length":
            label = f"{label} (at most {max_history})"
        text = ("1" if value else "0") if isinstance(value, bool) else str(value)
        _field(form, var, kind, label, [text], options)
    return form


def _values(form: ET.Element) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in form.findall(_FIELD):
        var = f.get("var")
        if var:
            out[_ALIASES.get(var, var)] = [v.text or "" for v in f.findall(_VALUE)]
    return out


def apply_form(config: RoomConfig, form: ET.Element, max_users: int, max_history: int) -> RoomConfig:
    """``config`` changed by a submitted form; unknown fields are ignored, wrong values raise."""
    if form.tag != _X or form.get("type") != "submit":
        raise FormError("not a submitted data form")
    values = _values(form)
    form_type = values.pop("FORM_TYPE", None)
    if form_type is not None and form_type != [ROOMCONFIG]:
        raise FormError(f"FORM_TYPE {form_type!r} is not {ROOMCONFIG}")
    changes: dict[str, Any] = {}
    for var, vals in values.items():
        known = _BY_VAR.get(var)
        if known is None:
            continue
        attr, kind = known
        if len(vals) > 1:
            raise FormError(f"{var} takes one value")
        value = vals[0] if vals else ""
        if kind == "boolean":
            changes[attr] = _bool(value)
        elif attr == "max_users":
            changes[attr] = max_users if value.strip() == "none" else _number(value, 1, max_users, var)
        elif attr == "history_length":
            changes[attr] = _number(value, 0, max_history, var)
        elif attr == "whois":
            if value not in WHOIS:
                raise FormError(f"{var}: {value!r} is not one of {', '.join(WHOIS)}")
            changes[attr] = value
        elif attr == "allow_pm":
            if value not in ALLOW_PM:
                raise FormError(f"{var}: {value!r} is not one of {', '.join(ALLOW_PM)}")
            changes[attr] = value
        else:
            if len(value) > 1024:
                raise FormError(f"{var}: at most 1024 characters")
            changes[attr] = value
    new = replace(config, **changes)
    if changes.get("password") and "password_protected" not in changes:
        new = replace(new, password_protected=True)  # a secret alone protects the room
    if not new.password_protected:
        new = replace(new, password="")
    elif not new.password:
        raise FormError("a password-protected room needs muc#roomconfig_roomsecret")
    return new


def roominfo_form(config: RoomConfig, occupants: int, subject: str, subject_mod: bool) -> ET.Element:
    """XEP-0045 §6.4's extended room information (XEP-0128)."""
    form = ET.Element(_X, {"type": "result"})
    _field(form, "FORM_TYPE", "hidden", "", [ROOMINFO])
    _field(form, "muc#roomconfig_roomname", "text-single", "Name", [config.title])
    _field(form, "muc#roominfo_description", "text-single", "Description", [config.description])
    _field(form, "muc#roominfo_occupants", "text-single", "Number of occupants", [str(occupants)])
    _field(form, "muc#roominfo_subject", "text-single", "Subject", [subject])
    _field(form, "muc#roominfo_subjectmod", "boolean", "Occupants may change the subject",
           ["1" if subject_mod else "0"])
    if config.lang:
        _field(form, "muc#roominfo_lang", "text-single", "Language", [config.lang])
    _field(form, "muc#maxhistoryfetch", "text-single", "History length", [str(config.history_length)])
    return form


# -- nick registration (XEP-0045 §7.10) ------------------------------------------------------------------

_REGISTER = ns.REGISTER


def register_query(nick: str) -> ET.Element:
    """The answer to a registration request: ``<registered/>`` with the nick a user has, or the
    ``muc#register`` form asking for one."""
    query = ET.Element(q(_REGISTER, "query"))
    if nick:
        ET.SubElement(query, q(_REGISTER, "registered"))
        ET.SubElement(query, q(_REGISTER, "username")).text = nick
        return query
    ET.SubElement(query, q(_REGISTER, "instructions")).text = (
        "Register a nickname with this room: it is kept for you, and you become a member")
    form = ET.SubElement(query, _X, {"type": "form"})
    ET.SubElement(form, q(DATA, "title")).text = "Nickname registration"
    _field(form, "FORM_TYPE", "hidden", "", [REGISTER_FORM])
    f = ET.SubElement(form, _FIELD, {"var": "muc#register_roomnick", "type": "text-single", "label": "Nickname"})
    ET.SubElement(f, q(DATA, "required"))
    return query


def parse_register_form(form: ET.Element) -> str:
    """The nick of a submitted ``muc#register`` form (other fields, e.g. names, are ignored)."""
    if form.get("type") != "submit":
        raise FormError("not a submitted data form")
    values = _values(form)
    form_type = values.get("FORM_TYPE")
    if form_type is not None and form_type != [REGISTER_FORM]:
        raise FormError(f"FORM_TYPE {form_type!r} is not {REGISTER_FORM}")
    nick = values.get("muc#register_roomnick")
    if not nick or len(nick) != 1 or not nick[0]:
        raise FormError("muc#register_roomnick takes one nickname")
    return nick[0]
