"""PEP (XEP-0163) on a XEP-0060 subset, without I/O: requests, node configuration and its forms,
access rules, notifications, entity capabilities (XEP-0115) and the bookmarks conversions.

* :func:`parse_request` — the ``<pubsub/>`` (or ``#owner``) child of an IQ as one request object;
  malformed requests raise the XEP-0060 errors (see below).
* :class:`NodeConfig` — a node's configuration; :func:`apply_fields` reads a submitted
  ``jabber:x:data`` form (``pubsub#node_config`` or ``pubsub#publish-options``) onto one,
  :func:`config_form` writes one.  A value that cannot be read is :class:`FormValueError`
  (``bad-request``); one that is read but not offered here (an access model other than
  open/presence/whitelist, more items than the node cap, an unknown field) is
  :class:`FormUnsupported` (``precondition-not-met`` for publish-options, ``not-acceptable`` for
  a configuration).
* :func:`may_read` / :func:`may_receive` — who reads a node's items (and subscribes to it, gets
  its events): the owner always; an outcast never; ``open`` anyone; ``presence`` the contacts with
  a subscription to the owner's presence (from/both); ``whitelist`` the owner and its members.
* :func:`items_event`, :func:`retract_event`, :func:`delete_event`, :func:`purge_event` — the
  ``<message type='headline'><event xmlns='…pubsub#event'/>`` notifications, from the owner's
  bare JID, addressed later to each recipient.
* :func:`caps_of`, :func:`caps_query`, :func:`verify_caps`, :func:`notify_nodes` — XEP-0115: the
  ``<c/>`` of a presence, the disco#info query for its ``node#ver``, the check of the answer
  against ``ver`` (§5.1, §5.4), and the nodes a ``+notify`` feature asks for.
* :func:`notify_flag` — the session record flag of a resource interested in a node.
* :func:`legacy_to_bookmarks2`, :func:`bookmarks2_to_legacy` — XEP-0048 ``storage:bookmarks``
  and XEP-0402 items, both ways (XEP-0402 ``#compat-pep``).

The XEP-0060 application conditions (``precondition-not-met``, ``payload-too-big``…) are the
error classes here: each reply carries the RFC 6120 condition and the ``pubsub#errors`` element.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from ...xmpp import errors, ns
from ...xmpp.stanza import Stanza, serialize

__all__ = [
    "PUBSUB", "OWNER", "EVENT", "ERRORS", "DATA", "CAPS", "NODE_CONFIG", "PUBLISH_OPTIONS", "BOOKMARKS2",
    "BOOKMARKS_LEGACY", "AVATAR_DATA", "AVATAR_METADATA", "ACCESS_MODELS", "FEATURES", "BOOKMARKS2_COMPAT_PEP",
    "BOOKMARKS2_COMPAT",
    "NodeConfig", "FormValueError", "FormUnsupported", "apply_fields", "parse_form", "config_form",
    "preconditions_met", "default_config",
    "Publish", "Retract", "Items", "Create", "GetConfig", "SetConfig", "GetDefault", "Delete", "Purge",
    "Subscriptions", "Affiliations", "OwnerSubscriptions", "OwnerAffiliations", "Request", "parse_request",
    "PubsubError", "PreconditionNotMet", "PayloadTooBig", "MaxNodesExceeded", "NodeIdRequired", "ItemRequired",
    "InvalidPayload", "PayloadRequired", "InvalidOptions", "PresenceSubscriptionRequired", "ClosedNode",
    "UnsupportedAccessModel", "Unsupported", "InvalidJid", "NotSubscribed", "may_read", "may_receive",
    "Subscribe", "Unsubscribe", "AFFILIATIONS", "subscription_element",
    "items_event", "retract_event", "delete_event", "purge_event", "stamp",
    "Caps", "caps_of", "caps_query", "disco_features", "verify_caps", "verification_string", "notify_nodes",
    "FLAG_PREFIX", "notify_flag", "notify_flags",
    "legacy_to_bookmarks2", "bookmarks2_to_legacy", "same_conference",
    "MAX_NAME",
]

PUBSUB = "http://jabber.org/protocol/pubsub"
OWNER = PUBSUB + "#owner"
EVENT = PUBSUB + "#event"
ERRORS = PUBSUB + "#errors"
DATA = "jabber:x:data"  # XEP-0004
CAPS = "http://jabber.org/protocol/caps"  # XEP-0115
NODE_CONFIG = PUBSUB + "#node_config"
PUBLISH_OPTIONS = PUBSUB + "#publish-options"
BOOKMARKS2 = "urn:xmpp:bookmarks:1"  # XEP-0402
BOOKMARKS2_COMPAT_PEP = BOOKMARKS2 + "#compat-pep"
BOOKMARKS2_COMPAT = BOOKMARKS2 + "#compat"  # XEP-0402 §5.3: kept in step with XEP-0049's storage:bookmarks
BOOKMARKS_LEGACY = "storage:bookmarks"  # XEP-0048 (its PEP variant, XEP-0223 profile)
AVATAR_DATA = "urn:xmpp:avatar:data"  # XEP-0084
AVATAR_METADATA = "urn:xmpp:avatar:metadata"

ACCESS_MODELS = ("open", "presence", "whitelist")
AFFILIATIONS = ("member", "outcast")  # what the owner may give others (XEP-0060 §4.1; "none" removes)
SEND_LAST = ("never", "on_sub", "on_sub_and_presence")
MAX_NAME = 1024  # characters of a node name or an item id

# The account's disco#info features (XEP-0060 §10 names, as ``http://jabber.org/protocol/pubsub#…``).
FEATURES = frozenset({PUBSUB} | {f"{PUBSUB}#{f}" for f in (
    "access-open", "access-presence", "access-whitelist", "auto-create", "config-node", "create-and-configure",
    "create-nodes", "delete-items", "delete-nodes", "filtered-notifications", "item-ids", "last-published",
    "multi-items", "persistent-items", "presence-notifications", "publish", "publish-options", "purge-nodes",
    "retract-items", "retrieve-affiliations", "retrieve-default", "retrieve-items", "retrieve-subscriptions",
    "subscribe", "manage-subscriptions", "modify-affiliations", "member-affiliation", "outcast-affiliation",
)})

_P, _O, _E, _X = f"{{{PUBSUB}}}", f"{{{OWNER}}}", f"{{{EVENT}}}", f"{{{DATA}}}"
_TRUE, _FALSE = frozenset({"1", "true"}), frozenset({"0", "false"})


PUBSUB_ERRORS = "http://jabber.org/protocol/pubsub#errors"


# -- errors --------------------------------------------------------------------------------------------


class PubsubError(errors.StanzaError):
    """A XEP-0060 error: an RFC 6120 condition (the base class's) plus an application condition
    in ``pubsub#errors`` (XEP-0060 §7, the error tables)."""

    app_condition: ClassVar[str] = ""

    def __init__(self, text: str | None = None) -> None:
        super().__init__(text, app=ET.Element(f"{{{PUBSUB_ERRORS}}}{self.app_condition}"))


class PreconditionNotMet(PubsubError, errors.StanzaConflict):
    app_condition = "precondition-not-met"


class PayloadTooBig(PubsubError, errors.NotAcceptable):
    app_condition = "payload-too-big"


class MaxNodesExceeded(PubsubError, errors.NotAllowed):
    app_condition = "max-nodes-exceeded"


class NodeIdRequired(PubsubError, errors.BadRequest):
    app_condition = "nodeid-required"


class ItemRequired(PubsubError, errors.BadRequest):
    app_condition = "item-required"


class InvalidPayload(PubsubError, errors.BadRequest):
    app_condition = "invalid-payload"


class PayloadRequired(PubsubError, errors.BadRequest):
    app_condition = "payload-required"


class InvalidOptions(PubsubError, errors.BadRequest):
    app_condition = "invalid-options"


class PresenceSubscriptionRequired(PubsubError, errors.StanzaNotAuthorized):
    app_condition = "presence-subscription-required"


class ClosedNode(PubsubError, errors.NotAllowed):
    app_condition = "closed-node"


class UnsupportedAccessModel(PubsubError, errors.NotAcceptable):
    app_condition = "unsupported-access-model"


class InvalidJid(PubsubError, errors.BadRequest):
    app_condition = "invalid-jid"


class NotSubscribed(PubsubError, errors.UnexpectedRequest):
    app_condition = "not-subscribed"


class Unsupported(PubsubError, errors.FeatureNotImplemented):
    """``<unsupported feature='…'/>``: the feature is named in the text."""

    app_condition = "unsupported"


# -- node configuration ---------------------------------------------------------------------------------


class FormValueError(ValueError):
    """A submitted field whose value cannot be read (bad-request)."""


class FormUnsupported(ValueError):
    """A submitted field read correctly but not offered by this service (precondition-not-met for
    publish-options, not-acceptable for a configuration)."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """A PEP node's configuration (XEP-0060 §16.4.4 field names without ``pubsub#``)."""

    access_model: str = "presence"
    persist_items: bool = True
    max_items: int | None = 1  # None: "max", the service's cap
    send_last_published_item: str = "on_sub_and_presence"
    notify_retract: bool = True
    notify_delete: bool = True
    deliver_notifications: bool = True
    deliver_payloads: bool = True
    title: str = ""
    type: str = ""
    # The owner's XEP-0060 §8.9 affiliations of other JIDs (bare), sorted: ``member`` reads a
    # whitelist node, ``outcast`` reads nothing.  Kept with the node so every access check has them.
    affiliations: tuple[tuple[str, str], ...] = ()

    def affiliation(self, jid: str) -> str:
        """The affiliation of the bare JID ``jid`` (``none`` when the owner gave it none)."""
        for who, aff in self.affiliations:
            if who == jid:
                return aff
        return "none"

    def with_affiliations(self, changes: Mapping[str, str]) -> NodeConfig:
        """This configuration with ``changes`` (bare JID → affiliation; ``none`` removes)."""
        current = dict(self.affiliations)
        for jid, aff in changes.items():
            if aff == "none":
                current.pop(jid, None)
            else:
                current[jid] = aff
        return replace(self, affiliations=tuple(sorted(current.items())))

    def effective_max(self, cap: int) -> int:
        """How many items the node keeps (a node that does not persist keeps its last one)."""
        if not self.persist_items:
            return 1
        return cap if self.max_items is None else min(self.max_items, cap)

    def normalized(self, cap: int) -> NodeConfig:
        """The same configuration with ``max_items`` as a number (to compare two configurations)."""
        return replace(self, max_items=cap if self.max_items is None else self.max_items)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["affiliations"] = [list(a) for a in self.affiliations]
        return out

    @classmethod
    def from_json(cls, value: Any) -> NodeConfig:
        """What :meth:`to_json` wrote (unknown or mistyped keys: the defaults)."""
        if not isinstance(value, Mapping):
            return cls()
        kwargs: dict[str, Any] = {}
        defaults = cls()
        for f in fields(cls):
            v = value.get(f.name)
            d = getattr(defaults, f.name)
            if f.name == "max_items":
                if v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                    kwargs[f.name] = v
            elif f.name == "affiliations":
                if isinstance(v, list):
                    kwargs[f.name] = tuple(sorted(
                        (a[0], a[1]) for a in v if isinstance(a, list) and len(a) == 2
                        and isinstance(a[0], str) and a[1] in AFFILIATIONS))
            elif isinstance(v, type(d)):
                kwargs[f.name] = v
        return cls(**kwargs)


def default_config(node: str) -> NodeConfig:
    """The configuration a node gets when it is created without options."""
    return NodeConfig()


def _bool(var: str, values: list[str]) -> bool:
    value = values[0].strip().lower() if values else ""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise FormValueError(f"{var} is a boolean, not {value!r}")


def _single(var: str, values: list[str]) -> str:
    if len(values) > 1:
        raise FormValueError(f"{var} takes one value")
    return values[0].strip() if values else ""


def _choice(var: str, values: list[str], allowed: tuple[str, ...], known: tuple[str, ...] = ()) -> str:
    value = _single(var, values)
    if value in allowed:
        return value
    if value in known:
        raise FormUnsupported(f"{var} {value!r} is not offered here (only {', '.join(allowed)})")
    raise FormValueError(f"{var} has no value {value!r}")


def apply_fields(config: NodeConfig, form: Mapping[str, list[str]], cap: int) -> NodeConfig:
    """``config`` with the submitted ``form`` fields (``pubsub#…`` vars; ``FORM_TYPE`` ignored)."""
    changes: dict[str, Any] = {}
    for var, values in form.items():
        if var == "FORM_TYPE":
            continue
        name = var.removeprefix("pubsub#")
        if name == var:
            raise FormUnsupported(f"unknown field {var!r}")
        if name == "access_model":
            changes[name] = _choice(var, values, ACCESS_MODELS, ("roster", "authorize"))
        elif name in ("persist_items", "notify_retract", "notify_delete", "deliver_notifications",
                      "deliver_payloads"):
            changes[name] = _bool(var, values)
        elif name == "max_items":
            value = _single(var, values).lower()
            if value == "max":
                changes[name] = None
                continue
            try:
                n = int(value)
            except ValueError:
                raise FormValueError(f"{var} is a number or 'max', not {value!r}") from None
            if n < 1:
                raise FormValueError(f"{var} is at least 1")
            if n > cap:
                raise FormUnsupported(f"{var} is at most {cap} here")
            changes[name] = n
        elif name == "send_last_published_item":
            changes[name] = _choice(var, values, SEND_LAST)
        elif name in ("title", "type"):
            value = _single(var, values)
            if len(value) > MAX_NAME:
                raise FormValueError(f"{var} is too long")
            changes[name] = value
        elif name == "publish_model":
            _choice(var, values, ("publishers",), ("open", "subscribers"))  # the owner alone publishes
        else:
            raise FormUnsupported(f"unknown field {var!r}")
    return replace(config, **changes)


def preconditions_met(config: NodeConfig, options: Mapping[str, list[str]], cap: int) -> bool:
    """XEP-0060 §7.1.5: whether an existing node's ``config`` is what the publish-options ask for.
    Raises :class:`FormValueError` for an unreadable value; an option not offered is not met."""
    try:
        wanted = apply_fields(config, options, cap)
    except FormUnsupported:
        return False
    return wanted.normalized(cap) == config.normalized(cap)


def parse_form(x: ET.Element | None, form_type: str) -> dict[str, list[str]] | None:
    """The fields of a submitted form (``None`` for a cancelled one, or no form).  A ``FORM_TYPE``
    other than ``form_type`` is :class:`InvalidOptions`."""
    if x is None:
        return None
    kind = x.get("type", "submit")
    if kind == "cancel":
        return None
    if kind not in ("submit", "form"):
        raise errors.BadRequest(f"a {kind!r} form cannot be submitted")
    found: dict[str, list[str]] = {}
    for f in x.findall(_X + "field"):
        var = f.get("var")
        if not var:
            continue
        if var in found:
            raise errors.BadRequest(f"field {var!r} appears twice")
        found[var] = [v.text or "" for v in f.findall(_X + "value")]
    ftype = found.get("FORM_TYPE")
    if ftype is not None and [v.strip() for v in ftype] != [form_type]:
        raise InvalidOptions(f"the form is not {form_type}")
    return found


def config_form(config: NodeConfig, cap: int, kind: str = "form") -> ET.Element:
    """A ``pubsub#node_config`` data form with ``config``'s values."""
    x = ET.Element(_X + "x", {"type": kind})

    def add(var: str, ftype: str, value: str | None, label: str, options: Iterable[str] = ()) -> None:
        f = ET.SubElement(x, _X + "field", {"var": var, "type": ftype})
        if label:
            f.set("label", label)
        if value is not None:
            ET.SubElement(f, _X + "value").text = value
        for o in options:
            ET.SubElement(ET.SubElement(f, _X + "option", {"label": o}), _X + "value").text = o

    def yes(b: bool) -> str:
        return "1" if b else "0"

    add("FORM_TYPE", "hidden", NODE_CONFIG, "")
    add("pubsub#title", "text-single", config.title, "A friendly name for the node")
    add("pubsub#type", "text-single", config.type, "The type of node data, usually the payload's namespace")
    add("pubsub#access_model", "list-single", config.access_model, "Who may read the items", ACCESS_MODELS)
    add("pubsub#persist_items", "boolean", yes(config.persist_items), "Persist items to storage")
    add("pubsub#max_items", "text-single", "max" if config.max_items is None else str(config.max_items),
        f"Max number of items to persist (at most {cap}, or 'max')")
    add("pubsub#send_last_published_item", "list-single", config.send_last_published_item,
        "When to send the last published item", SEND_LAST)
    add("pubsub#deliver_notifications", "boolean", yes(config.deliver_notifications), "Deliver event notifications")
    add("pubsub#deliver_payloads", "boolean", yes(config.deliver_payloads), "Deliver payloads with notifications")
    add("pubsub#notify_retract", "boolean", yes(config.notify_retract), "Notify subscribers when items are removed")
    add("pubsub#notify_delete", "boolean", yes(config.notify_delete), "Notify subscribers when the node is deleted")
    add("pubsub#publish_model", "list-single", "publishers", "Who may publish", ("publishers",))
    return x


# -- requests ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    node: str
    item_id: str | None
    payload: ET.Element
    options: dict[str, list[str]] | None = None


@dataclass(frozen=True, slots=True)
class Retract:
    node: str
    item_ids: tuple[str, ...]
    notify: bool | None  # None: as the node's notify_retract says


@dataclass(frozen=True, slots=True)
class Items:
    node: str
    max_items: int | None = None
    item_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Create:
    node: str
    config: dict[str, list[str]] | None = None


@dataclass(frozen=True, slots=True)
class GetConfig:
    node: str


@dataclass(frozen=True, slots=True)
class SetConfig:
    node: str
    form: dict[str, list[str]] | None  # None: cancelled


@dataclass(frozen=True, slots=True)
class GetDefault:
    pass


@dataclass(frozen=True, slots=True)
class Delete:
    node: str


@dataclass(frozen=True, slots=True)
class Purge:
    node: str


@dataclass(frozen=True, slots=True)
class Subscriptions:
    node: str | None


@dataclass(frozen=True, slots=True)
class Affiliations:
    node: str | None


@dataclass(frozen=True, slots=True)
class Subscribe:
    node: str
    jid: str  # as given (full or bare); the requester's own, checked by the service


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    node: str
    jid: str


@dataclass(frozen=True, slots=True)
class OwnerSubscriptions:
    node: str
    change: bool = False
    entries: tuple[tuple[str, str], ...] = ()  # (jid, subscribed | none) of a set


@dataclass(frozen=True, slots=True)
class OwnerAffiliations:
    node: str
    change: bool = False
    entries: tuple[tuple[str, str], ...] = ()  # (bare jid, member | outcast | none) of a set


Request = (Publish | Retract | Items | Create | GetConfig | SetConfig | GetDefault | Delete | Purge | Subscriptions
           | Affiliations | Subscribe | Unsubscribe | OwnerSubscriptions | OwnerAffiliations)


def _node(el: ET.Element, required: bool = True) -> str:
    node = el.get("node")
    if not node:
        if required:
            raise NodeIdRequired()
        return ""
    if len(node) > MAX_NAME:
        raise errors.BadRequest(f"a node name has at most {MAX_NAME} characters")
    return node


def _item_id(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > MAX_NAME:
        raise errors.BadRequest(f"an item id has at most {MAX_NAME} characters")
    return value


def _expect(iq_type: str, wanted: str, what: str) -> None:
    if iq_type != wanted:
        raise errors.BadRequest(f"<{what}/> is an iq of type {wanted}")


def _only(children: list[ET.Element], what: str) -> ET.Element:
    if len(children) != 1:
        raise errors.BadRequest(f"a <pubsub/> carries one {what}")
    return children[0]


def _entries(el: ET.Element, tag: str, attr: str, allowed: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The (jid, value) pairs of an owner's change of subscriptions or affiliations (XEP-0060
    §8.8.2, §8.9.2): each child names a JID and one of ``allowed``."""
    out = []
    for child in el.findall(tag):
        jid, value = (child.get("jid") or "").strip(), child.get(attr) or ""
        if not jid or len(jid) > 3 * MAX_NAME:
            raise errors.BadRequest(f"each <{tag.rpartition('}')[2]}/> names a 'jid'")
        if value not in allowed:
            raise errors.NotAcceptable(f"{attr} {value!r} is not offered here (only {', '.join(allowed)})")
        out.append((jid, value))
    if not out:
        raise errors.BadRequest("the change names at least one JID")
    return tuple(out)


def parse_request(iq_type: str, pubsub: ET.Element) -> Request:
    """The request in ``pubsub`` (``<pubsub xmlns='…pubsub'/>`` or ``…#owner``) of an IQ of ``iq_type``."""
    children = list(pubsub)
    if pubsub.tag == _O + "pubsub":
        el = _only(children, "action")
        kind = el.tag
        if kind == _O + "configure":
            if iq_type == "get":
                return GetConfig(_node(el))
            return SetConfig(_node(el), parse_form(el.find(_X + "x"), NODE_CONFIG))
        if kind == _O + "default":
            _expect(iq_type, "get", "default")
            return GetDefault()
        if kind == _O + "delete":
            _expect(iq_type, "set", "delete")
            return Delete(_node(el))
        if kind == _O + "purge":
            _expect(iq_type, "set", "purge")
            return Purge(_node(el))
        if kind == _O + "subscriptions":
            change = iq_type == "set"
            entries = _entries(el, _O + "subscription", "subscription", ("subscribed", "none")) if change else ()
            return OwnerSubscriptions(_node(el), change, entries)
        if kind == _O + "affiliations":
            change = iq_type == "set"
            entries = _entries(el, _O + "affiliation", "affiliation", (*AFFILIATIONS, "none")) if change else ()
            return OwnerAffiliations(_node(el), change, entries)
        raise Unsupported(f"{kind.rpartition('}')[2]} (owner use case)")
    by_tag: dict[str, list[ET.Element]] = {}
    for c in children:
        by_tag.setdefault(c.tag, []).append(c)
    if _P + "publish" in by_tag:
        _expect(iq_type, "set", "publish")
        el = _only(by_tag[_P + "publish"], "<publish/>")
        options_el = by_tag.get(_P + "publish-options")
        extra = set(by_tag) - {_P + "publish", _P + "publish-options"}
        if extra or (options_el is not None and len(options_el) > 1):
            raise errors.BadRequest("a publish carries <publish/> and at most one <publish-options/>")
        options = None
        if options_el is not None:
            options = parse_form(options_el[0].find(_X + "x"), PUBLISH_OPTIONS)
        node = _node(el)
        items = el.findall(_P + "item")
        if not items:
            raise ItemRequired()
        if len(items) > 1 or len(el) > 1:
            raise InvalidPayload("one <item/> per publish")
        item = items[0]
        if len(item) == 0:
            raise PayloadRequired()
        if len(item) > 1:
            raise InvalidPayload("an item carries one payload element")
        return Publish(node, _item_id(item.get("id")), item[0], options)
    if _P + "create" in by_tag:
        _expect(iq_type, "set", "create")
        el = _only(by_tag[_P + "create"], "<create/>")
        conf = by_tag.get(_P + "configure")
        form = parse_form(conf[0].find(_X + "x"), NODE_CONFIG) if conf else None
        if not el.get("node"):
            raise NodeIdRequired("instant nodes are not offered")
        return Create(_node(el), form)
    el = _only(children, "action")
    kind = el.tag
    if kind == _P + "retract":
        _expect(iq_type, "set", "retract")
        ids = tuple(i for i in (_item_id(x.get("id")) for x in el.findall(_P + "item")) if i)
        if not ids:
            raise ItemRequired("which item to retract")
        notify = el.get("notify")
        flag = None if notify is None else notify.strip().lower() in _TRUE
        return Retract(_node(el), ids, flag)
    if kind == _P + "items":
        _expect(iq_type, "get", "items")
        max_items: int | None = None
        raw = el.get("max_items")
        if raw is not None:
            try:
                max_items = int(raw)
            except ValueError:
                raise errors.BadRequest("max_items is a number") from None
            if max_items < 1:
                raise errors.BadRequest("max_items is at least 1")
        ids = tuple(i for i in (_item_id(x.get("id")) for x in el.findall(_P + "item")) if i)
        return Items(_node(el), max_items, ids)
    if kind == _P + "subscriptions":
        _expect(iq_type, "get", "subscriptions")
        return Subscriptions(_node(el, False) or None)
    if kind == _P + "affiliations":
        _expect(iq_type, "get", "affiliations")
        return Affiliations(_node(el, False) or None)
    if kind in (_P + "subscribe", _P + "unsubscribe"):
        _expect(iq_type, "set", kind.rpartition("}")[2])
        jid = (el.get("jid") or "").strip()
        if not jid or len(jid) > 3 * MAX_NAME:
            raise InvalidJid("a subscription names the subscribing JID")
        return (Subscribe if kind == _P + "subscribe" else Unsubscribe)(_node(el), jid)
    name = kind.rpartition("}")[2]
    if name in ("options", "default"):
        raise Unsupported("subscription-options")
    raise errors.BadRequest(f"unknown pubsub request <{name}/>")


# -- access ------------------------------------------------------------------------------------------


def may_read(config: NodeConfig, *, owner: bool, subscribed: bool, affiliation: str = "none") -> None:
    """Raise the XEP-0060 §6.5.9 error when the requester may not read the node's items (or
    subscribe to it, §6.1.3): an outcast never (forbidden), a member of a whitelist node may."""
    if owner:
        return
    if affiliation == "outcast":
        raise errors.Forbidden("the owner keeps this node from you")
    if config.access_model == "open":
        return
    if config.access_model == "presence":
        if not subscribed:
            raise PresenceSubscriptionRequired()
        return
    if affiliation != "member":
        raise ClosedNode()


def may_receive(config: NodeConfig, jid: str, *, subscribed: bool) -> bool:
    """Whether the bare JID ``jid`` (not the owner) may get the node's notifications."""
    try:
        may_read(config, owner=False, subscribed=subscribed, affiliation=config.affiliation(jid))
    except errors.StanzaError:
        return False
    return True


def subscription_element(node: str, jid: str, state: str, owner: bool = False) -> ET.Element:
    """``<pubsub><subscription node jid subscription/></pubsub>`` (XEP-0060 §6.1.2, §6.2.2)."""
    prefix = _O if owner else _P
    out = ET.Element(prefix + "pubsub")
    ET.SubElement(out, prefix + "subscription", {"node": node, "jid": jid, "subscription": state})
    return out


# -- notifications ---------------------------------------------------------------------------------------


def stamp(created_us: int) -> str:
    """XEP-0082 date-time of a microsecond timestamp (UTC)."""
    t = dt.datetime.fromtimestamp(created_us / 1_000_000, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _message(owner: str, event: ET.Element, msg_id: str, delay: str | None = None) -> Stanza:
    el = ET.Element(f"{{{ns.CLIENT}}}message", {"from": owner, "type": "headline", "id": msg_id})
    el.append(event)
    if delay is not None:
        ET.SubElement(el, f"{{{ns.DELAY}}}delay", {"stamp": delay, "from": owner})
    raw = serialize(el)
    return Stanza(el, raw, raw.index(b">") + 1)  # copies rewrite only the start tag


def items_event(owner: str, node: str, items: Iterable[tuple[str, ET.Element | None]], msg_id: str,
                delay: str | None = None) -> Stanza:
    """``<event><items node><item id>payload</item>…`` (a payload of None: without payload)."""
    event = ET.Element(_E + "event")
    el = ET.SubElement(event, _E + "items", {"node": node})
    for item_id, payload in items:
        item = ET.SubElement(el, _E + "item", {"id": item_id})
        if payload is not None:
            item.append(payload)
    return _message(owner, event, msg_id, delay)


def retract_event(owner: str, node: str, item_ids: Iterable[str], msg_id: str) -> Stanza:
    event = ET.Element(_E + "event")
    el = ET.SubElement(event, _E + "items", {"node": node})
    for item_id in item_ids:
        ET.SubElement(el, _E + "retract", {"id": item_id})
    return _message(owner, event, msg_id)


def delete_event(owner: str, node: str, msg_id: str) -> Stanza:
    event = ET.Element(_E + "event")
    ET.SubElement(event, _E + "delete", {"node": node})
    return _message(owner, event, msg_id)


def purge_event(owner: str, node: str, msg_id: str) -> Stanza:
    event = ET.Element(_E + "event")
    ET.SubElement(event, _E + "purge", {"node": node})
    return _message(owner, event, msg_id)


# -- entity capabilities (XEP-0115) ---------------------------------------------------------------------

_HASHES = {"sha-1": "sha1", "sha-224": "sha224", "sha-256": "sha256", "sha-384": "sha384", "sha-512": "sha512"}
_C = f"{{{CAPS}}}c"
_INFO = f"{{{ns.DISCO_INFO}}}"


@dataclass(frozen=True, slots=True)
class Caps:
    """The ``<c/>`` of a presence: ``hash`` is None for the legacy form (no verification string)."""

    node: str
    ver: str
    hash: str | None

    @property
    def cacheable(self) -> bool:
        """Whether the features may be cached by ``ver`` (a hash this service can check)."""
        return self.hash in _HASHES

    @property
    def key(self) -> tuple[str, str]:
        return (self.hash or "", self.ver)

    @property
    def query_node(self) -> str:
        return f"{self.node}#{self.ver}"


def caps_of(presence: Stanza) -> Caps | None:
    c = presence.element.find(_C)
    if c is None:
        return None
    node, ver = c.get("node", ""), c.get("ver", "")
    if not node or not ver or len(node) > MAX_NAME or len(ver) > 256:
        return None
    return Caps(node, ver, c.get("hash") or None)


def caps_query(from_: str, to: str, caps: Caps, iq_id: str) -> Stanza:
    el = ET.Element(f"{{{ns.CLIENT}}}iq", {"type": "get", "from": from_, "to": to, "id": iq_id})
    ET.SubElement(el, _INFO + "query", {"node": caps.query_node})
    return Stanza(el)


def disco_features(reply: Stanza) -> tuple[ET.Element, frozenset[str]] | None:
    """The disco#info ``<query/>`` of a result and its features (None: not a disco#info result)."""
    if reply.type != "result":
        return None
    query = reply.element.find(_INFO + "query")
    if query is None:
        return None
    return query, frozenset(f.get("var", "") for f in query.findall(_INFO + "feature") if f.get("var"))


def verification_string(query: ET.Element) -> str | None:
    """XEP-0115 §5.1 S for a disco#info ``query``; None when §5.4 makes it invalid (duplicate
    identities, features or form types, a form whose FORM_TYPE is not hidden)."""
    identities = []
    for i in query.findall(_INFO + "identity"):
        identities.append("/".join((i.get("category", ""), i.get("type", ""), i.get(ns.XML_LANG, ""),
                                    i.get("name", ""))))
    features = [f.get("var", "") for f in query.findall(_INFO + "feature")]
    if len(set(identities)) != len(identities) or len(set(features)) != len(features):
        return None
    forms: dict[str, list[tuple[str, list[str]]]] = {}
    for x in query.findall(_X + "x"):
        form_type = None
        fields_: list[tuple[str, list[str]]] = []
        for f in x.findall(_X + "field"):
            values = [v.text or "" for v in f.findall(_X + "value")]
            if f.get("var") == "FORM_TYPE":
                if f.get("type") not in (None, "hidden"):
                    return None
                form_type = values[0] if values else ""
            else:
                fields_.append((f.get("var", ""), values))
        if form_type is None:
            continue  # §5.4: forms without a FORM_TYPE are ignored
        if form_type in forms:
            return None
        forms[form_type] = fields_
    s = "".join(f"{i}<" for i in sorted(identities)) + "".join(f"{f}<" for f in sorted(features))
    for form_type in sorted(forms):
        s += f"{form_type}<"
        for var, values in sorted(forms[form_type], key=lambda fv: fv[0]):
            s += f"{var}<" + "".join(f"{v}<" for v in sorted(values))
    return s


def verify_caps(caps: Caps, query: ET.Element) -> bool:
    """Whether ``query`` hashes to ``caps.ver`` (and so may be cached by it)."""
    name = _HASHES.get(caps.hash or "")
    if name is None:
        return False
    s = verification_string(query)
    if s is None:
        return False
    try:
        claimed = base64.b64decode(caps.ver, validate=True)
    except (binascii.Error, ValueError):
        return False
    return hashlib.new(name, s.encode("utf-8")).digest() == claimed


def notify_nodes(features: Iterable[str]) -> frozenset[str]:
    """The nodes of the ``<node>+notify`` features (XEP-0163 §4.3.1 filtered notifications)."""
    return frozenset(f[:-7] for f in features if f.endswith("+notify") and 0 < len(f) - 7 <= MAX_NAME)


FLAG_PREFIX = "pep:"


def notify_flag(node: str) -> str:
    """The session record flag of a resource that wants notifications of ``node`` (a short hash:
    flags travel with every record; two nodes sharing one would only mean an extra event)."""
    return FLAG_PREFIX + hashlib.sha1(node.encode("utf-8")).hexdigest()[:10]


def notify_flags(flags: Mapping[str, str], nodes: Iterable[str]) -> dict[str, str]:
    """``flags`` with the PEP flags replaced by those of ``nodes``."""
    out = {k: v for k, v in flags.items() if not k.startswith(FLAG_PREFIX)}
    out.update((notify_flag(n), "1") for n in nodes)
    return out


# -- bookmarks: XEP-0048 storage:bookmarks <-> XEP-0402 items ---------------------------------------------

_L = f"{{{BOOKMARKS_LEGACY}}}"
_B = f"{{{BOOKMARKS2}}}"


def _autojoin(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def legacy_to_bookmarks2(storage: ET.Element | None,
                         existing: Mapping[str, ET.Element]) -> dict[str, ET.Element]:
    """The XEP-0402 items (id: the room JID) for the conferences of a ``storage:bookmarks``
    ``<storage/>``; ``<extensions/>`` of an ``existing`` item is kept (XEP-0402: preserve)."""
    out: dict[str, ET.Element] = {}
    if storage is None or storage.tag != _L + "storage":
        return out
    for conf in storage.findall(_L + "conference"):
        jid = (conf.get("jid") or "").strip()
        if not jid or len(jid) > MAX_NAME or jid in out:
            continue
        el = ET.Element(_B + "conference")
        name = conf.get("name")
        if name:
            el.set("name", name)
        if _autojoin(conf.get("autojoin")):
            el.set("autojoin", "true")
        for tag in ("nick", "password"):
            sub = conf.find(_L + tag)
            if sub is not None and sub.text:
                ET.SubElement(el, _B + tag).text = sub.text
        old = existing.get(jid)
        ext = old.find(_B + "extensions") if old is not None else None
        if ext is not None:
            el.append(ext)
        out[jid] = el
    return out


def _conference_key(conf: ET.Element) -> tuple[str, bool, str, str, bytes]:
    ns_ = conf.tag.partition("}")[0] + "}"
    nick, password, ext = conf.find(ns_ + "nick"), conf.find(ns_ + "password"), conf.find(ns_ + "extensions")
    return (conf.get("name") or "", _autojoin(conf.get("autojoin")), (nick.text or "") if nick is not None else "",
            (password.text or "") if password is not None else "", serialize(ext) if ext is not None else b"")


def same_conference(a: ET.Element, b: ET.Element) -> bool:
    """Whether two XEP-0402 ``<conference/>`` elements say the same (attribute order aside)."""
    return a.tag == b.tag and _conference_key(a) == _conference_key(b)


def bookmarks2_to_legacy(items: Iterable[tuple[str, ET.Element]], previous: ET.Element | None) -> ET.Element:
    """A ``storage:bookmarks`` ``<storage/>`` with a ``<conference jid=id/>`` per XEP-0402 item
    (XEP-0402 §5.3); the ``<url/>`` bookmarks of ``previous`` are kept."""
    storage = ET.Element(_L + "storage")
    for jid, conf in items:
        if conf.tag != _B + "conference":
            continue
        el = ET.SubElement(storage, _L + "conference", {"jid": jid})
        name = conf.get("name")
        if name:
            el.set("name", name)
        el.set("autojoin", "true" if _autojoin(conf.get("autojoin")) else "false")
        for tag in ("nick", "password"):
            sub = conf.find(_B + tag)
            if sub is not None and sub.text:
                ET.SubElement(el, _L + tag).text = sub.text
    if previous is not None and previous.tag == _L + "storage":
        storage.extend(previous.findall(_L + "url"))
    return storage
