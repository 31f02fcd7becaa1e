"""XEP-0357 Push Notifications without I/O: the account IQs, which messages notify, and the
notification published to the app server.

* :func:`parse_enable` / :func:`parse_disable` — ``<enable jid node>[publish-options form]`` and
  ``<disable jid [node]/>``: the app server's JID, the node, the form (serialized, kept as text).
* :func:`summary_of` — whether a ``<message/>`` deserves a push (type ``chat`` or ``normal`` with
  a ``<body/>`` or an end-to-end encrypted payload) and what the summary may say of it.
* :func:`summary_form` / :func:`publish_iq` — the ``urn:xmpp:push:summary`` form (§6:
  ``message-count``, ``last-message-sender``, ``last-message-body`` when allowed) and the pubsub
  publish carrying it, with the registration's publish-options.
* :func:`make_id` / :func:`node_of_id` — the publish IQ's id carries the node (base64url), so an
  error reply disables the right registration wherever in the deployment it is routed (§8).
* :func:`error_of` / :func:`disables` — which error replies end a registration: not the
  temporary ones (type ``wait``) nor those of the way there (no route to the app server now).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ...xmpp import ns
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza

__all__ = ["NS", "SUMMARY", "PUBSUB", "DATA", "PUBLISH_OPTIONS", "Enable", "Summary", "RequestError",
           "parse_enable", "parse_disable", "summary_of", "summary_form", "publish_iq", "make_id",
           "node_of_id", "error_of", "disables", "MAX_NODE", "MAX_OPTIONS", "MAX_BODY"]

NS = "urn:xmpp:push:0"  # XEP-0357
SUMMARY = "urn:xmpp:push:summary"  # §6
PUBSUB = "http://jabber.org/protocol/pubsub"  # XEP-0060
DATA = "jabber:x:data"  # XEP-0004
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"

MAX_NODE = 1024  # characters of a node name
MAX_OPTIONS = 4096  # characters of a serialized publish-options form
MAX_BODY = 512  # characters of last-message-body (when bodies are included at all)

ID_PREFIX = "push."
# End-to-end encrypted payloads: a message with one of them notifies even without a body, and its
# body (a fallback text) is never put in a notification.
ENCRYPTED = frozenset({
    "eu.siacs.conversations.axolotl",  # OMEMO (legacy, XEP-0384 0.3)
    "urn:xmpp:omemo:2",  # OMEMO 2
    "urn:xmpp:openpgp:0",  # XEP-0373
    "jabber:x:encrypted",  # XEP-0027
})
STANZA_NS = frozenset({ns.CLIENT, ns.SERVER, "jabber:component:accept"})
# Errors that say nothing of the registration: no route to the app server at the moment.
TRANSIENT = frozenset({"remote-server-not-found", "remote-server-timeout", "service-unavailable",
                       "recipient-unavailable", "resource-constraint"})


class RequestError(ValueError):
    """An enable/disable request the account IQ refuses (bad-request)."""


@dataclass(frozen=True, slots=True)
class Enable:
    jid: str  # the app server (normalized)
    node: str
    options: str  # the publish-options form, serialized ("" for none)


@dataclass(frozen=True, slots=True)
class Summary:
    """What one message contributes to a notification."""

    sender: str
    body: str | None  # None: no body, or an encrypted message (its body is only a fallback)


def _split(tag: str) -> tuple[str, str]:
    if tag[:1] == "{":
        uri, _, name = tag[1:].partition("}")
        return uri, name
    return "", tag


def _app_server(el: ET.Element) -> str:
    value = el.get("jid")
    if not value:
        raise RequestError("the app server's 'jid' is required")
    try:
        return str(Jid.parse(value))
    except InvalidJid:
        raise RequestError(f"bad app server jid {value!r}") from None


def _node(el: ET.Element, required: bool) -> str | None:
    node = el.get("node")
    if node is None or node == "":
        if required:
            raise RequestError("the 'node' is required")
        return None
    if len(node) > MAX_NODE:
        raise RequestError(f"a node name has at most {MAX_NODE} characters")
    return node


def _form_type(form: ET.Element) -> str | None:
    for field in form.findall(f"{{{DATA}}}field"):
        if field.get("var") == "FORM_TYPE":
            value = field.find(f"{{{DATA}}}value")
            return (value.text or "").strip() if value is not None else ""
    return None


def parse_enable(el: ET.Element) -> Enable:
    """``<enable xmlns='urn:xmpp:push:0' jid='…' node='…'>[<x type='submit'/>]</enable>``."""
    jid, node = _app_server(el), _node(el, required=True)
    assert node is not None
    forms = [c for c in el if c.tag == f"{{{DATA}}}x"]
    if len(forms) > 1:
        raise RequestError("at most one publish-options form")
    options = ""
    if forms:
        form = forms[0]
        if form.get("type", "submit") != "submit":
            raise RequestError("the publish-options form is of type submit")
        form_type = _form_type(form)
        if form_type is not None and form_type != PUBLISH_OPTIONS:
            raise RequestError(f"the form's FORM_TYPE is {PUBLISH_OPTIONS}")
        options = ET.tostring(form, encoding="unicode")
        if len(options) > MAX_OPTIONS:
            raise RequestError(f"the publish-options form has at most {MAX_OPTIONS} characters")
    return Enable(jid, node, options)


def parse_disable(el: ET.Element) -> tuple[str, str | None]:
    """``<disable xmlns='urn:xmpp:push:0' jid='…' [node='…']/>``: (app server, node or None: all)."""
    return _app_server(el), _node(el, required=False)


def summary_of(stanza: Stanza) -> Summary | None:
    """What ``stanza`` says in a notification, or ``None`` when it notifies nothing (not a chat
    or normal message, or one without a body or encrypted payload: chat states, receipts…)."""
    if stanza.name != "message" or (stanza.type or "normal") not in ("chat", "normal"):
        return None
    body: str | None = None
    has_body = encrypted = False
    for child in stanza.element:
        uri, name = _split(child.tag)
        if name == "body" and uri in STANZA_NS:
            if not has_body:
                body = child.text or ""
            has_body = True
        elif uri in ENCRYPTED:
            encrypted = True
    if not (has_body or encrypted):
        return None
    return Summary(stanza.from_ or "", None if encrypted else body)


def _field(form: ET.Element, var: str, value: str) -> None:
    ET.SubElement(ET.SubElement(form, f"{{{DATA}}}field", {"var": var}), f"{{{DATA}}}value").text = value


def summary_form(count: int, sender: str | None, body: str | None) -> ET.Element:
    """The ``urn:xmpp:push:summary`` form (§6); a field is left out when its value is None."""
    form = ET.Element(f"{{{DATA}}}x", {"type": "submit"})
    _field(form, "FORM_TYPE", SUMMARY)
    _field(form, "message-count", str(count))
    if sender:
        _field(form, "last-message-sender", sender)
    if body is not None:
        _field(form, "last-message-body", body[:MAX_BODY])
    return form


def publish_iq(user: str, app_server: str, node: str, iq_id: str, summary: ET.Element,
               options: str = "") -> Stanza:
    """``<iq type='set' from=user to=app_server><pubsub><publish node><item><notification>…``
    (§7), with ``<publish-options>`` when the registration has a form."""
    iq = ET.Element(f"{{{ns.CLIENT}}}iq", {"type": "set", "id": iq_id, "from": user, "to": app_server})
    pubsub = ET.SubElement(iq, f"{{{PUBSUB}}}pubsub")
    item = ET.SubElement(ET.SubElement(pubsub, f"{{{PUBSUB}}}publish", {"node": node}), f"{{{PUBSUB}}}item")
    ET.SubElement(item, f"{{{NS}}}notification").append(summary)
    if options:
        ET.SubElement(pubsub, f"{{{PUBSUB}}}publish-options").append(ET.fromstring(options))
    return Stanza(iq)


def make_id(node: str) -> str:
    """A fresh IQ id naming ``node`` (``push.<random>.<base64url(node)>``)."""
    encoded = base64.urlsafe_b64encode(node.encode()).decode().rstrip("=")
    return f"{ID_PREFIX}{secrets.token_hex(4)}.{encoded}"


def node_of_id(iq_id: str | None) -> str | None:
    """The node a publish IQ's id names, or None when the id is not one of ours."""
    if not iq_id or not iq_id.startswith(ID_PREFIX):
        return None
    parts = iq_id[len(ID_PREFIX):].split(".", 1)
    if len(parts) != 2 or not parts[1]:
        return None
    encoded = parts[1]
    try:
        node = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return node or None


def error_of(stanza: Stanza) -> tuple[str, str]:
    """(defined condition, error type) of an error stanza (``undefined-condition``/``cancel``
    when it does not say)."""
    for child in stanza.element:
        if _split(child.tag)[1] != "error":
            continue
        etype = child.get("type") or "cancel"
        for cond in child:
            uri, name = _split(cond.tag)
            if uri == ns.STANZAS and name != "text":
                return name, etype
        return "undefined-condition", etype
    return "undefined-condition", "cancel"


def disables(condition: str, etype: str) -> bool:
    """Whether an error reply to a notification ends the registration (XEP-0357 §8): yes, unless
    it is temporary (``wait``) or about the way to the app server rather than the registration."""
    return etype != "wait" and condition not in TRANSIENT
