"""XEP-0280 Message Carbons without I/O: which messages are copied, and the copies themselves.

* :func:`ineligible` — why a ``<message/>`` is not copied (``None``: it is).  The rules of
  XEP-0280 §6: type ``chat``; type ``normal`` with a ``<body/>`` or an IM payload (chat states,
  receipts, markers); never ``error``, ``groupchat`` or ``headline``; never a message marked
  ``<private xmlns='urn:xmpp:carbons:2'/>`` (§7) or ``<no-copy xmlns='urn:xmpp:hints'/>``
  (XEP-0334); never a carbon itself (``<sent/>``/``<received/>`` inside).
* :func:`wrap` — the copy: ``<message from='{bare}' type='…'><sent|received
  xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>{original}</forwarded>…``
  (the router addresses it to each resource).
* :func:`strip_private` — what the recipient gets of a private message (§7: the receiving server
  SHOULD remove the ``<private/>`` element).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ...xmpp import ns
from ...xmpp.stanza import Stanza, escape_attr

__all__ = ["NS", "FORWARD", "HINTS", "ineligible", "eligible", "is_private", "strip_private", "wrap",
           "Unprivate", "Carbon"]

NS = "urn:xmpp:carbons:2"  # XEP-0280
FORWARD = "urn:xmpp:forward:0"  # XEP-0297
HINTS = "urn:xmpp:hints"  # XEP-0334

_NS_BYTES = NS.encode()
_PRIVATE = f"{{{NS}}}private"
_SENT = f"{{{NS}}}sent"
_RECEIVED = f"{{{NS}}}received"
_NO_COPY = f"{{{HINTS}}}no-copy"
_BODY = f"{{{ns.CLIENT}}}body"
# Payloads of instant messaging sent as type 'normal' without a body (XEP-0280 §6).
_IM_PAYLOADS = frozenset({
    "http://jabber.org/protocol/chatstates",  # XEP-0085
    "urn:xmpp:receipts",  # XEP-0184
    "urn:xmpp:chat-markers:0",  # XEP-0333
})


def _namespace(tag: str) -> str:
    return tag[1:].partition("}")[0] if tag[:1] == "{" else ""


def ineligible(stanza: Stanza) -> str | None:
    """Why ``stanza`` gets no carbon copies, or ``None`` when it is eligible."""
    if stanza.name != "message":
        return "not a message"
    mtype = stanza.type or "normal"
    if mtype in ("error", "groupchat", "headline"):
        return f"type {mtype}"
    if mtype not in ("chat", "normal"):
        return f"unknown type {mtype!r}"
    has_body = im_payload = False
    for child in stanza.element:
        tag = child.tag
        if tag == _PRIVATE:
            return "private"
        if tag == _NO_COPY:
            return "no-copy hint"
        if tag in (_SENT, _RECEIVED):
            return "already a carbon"
        if tag == _BODY:
            has_body = True
        elif _namespace(tag) in _IM_PAYLOADS:
            im_payload = True
    if mtype == "normal" and not (has_body or im_payload):
        return "type normal without a body or an IM payload"
    return None


def eligible(stanza: Stanza) -> bool:
    return ineligible(stanza) is None


def is_private(stanza: Stanza) -> bool:
    """Whether ``stanza`` carries ``<private xmlns='urn:xmpp:carbons:2'/>`` (a stanza whose bytes
    do not name the namespace is answered without parsing it)."""
    if _NS_BYTES not in stanza.to_bytes():
        return False
    return stanza.child(NS, "private") is not None


class Unprivate(Stanza):
    """A message whose ``<private/>`` was removed for its recipient: still not to be copied."""

    __slots__ = ()


def strip_private(stanza: Stanza) -> Stanza:
    """``stanza`` without its ``<private/>`` elements, marked as :class:`Unprivate`."""
    src = stanza.element
    el = ET.Element(src.tag, dict(src.attrib))
    el.text = src.text
    el.extend(c for c in src if c.tag != _PRIVATE)
    return Unprivate(el)


class Carbon(Stanza):
    """A carbon whose bytes are made when its first copy is: none when no resource takes it.

    Whether one will is often unknown where the carbon is made — a gateway delivering a message
    from another region hands the carbon to the fan-out, which finds no other region holding the
    account, nearly always — and serializing the original again inside the wrapper was a fifth
    of a relayed message's cost there."""

    __slots__ = ()

    def with_attrs(self, **changes: str | None) -> Stanza:
        if self._raw is None:  # the first copy: the bytes, once; each copy rewrites the start tag
            raw = self.to_bytes()
            self._raw, self._start_end = raw, raw.index(b">") + 1
        return super().with_attrs(**changes)


def wrap(direction: str, original: Stanza, user: str) -> Stanza:
    """The carbon of ``original`` for ``user``'s resources (``direction`` ``sent`` or
    ``received``), from ``user`` (the bare JID), with no 'to' yet (:class:`Carbon`: serialized
    when first copied or sent)."""
    if direction not in ("sent", "received"):
        raise ValueError(f"a carbon is sent or received, not {direction!r}")
    attrs = {"from": user}
    if original.type is not None:
        attrs["type"] = original.type  # §5, §6: the wrapper keeps the original's type
    el = ET.Element(f"{{{ns.CLIENT}}}message", attrs)
    forwarded = ET.SubElement(ET.SubElement(el, f"{{{NS}}}{direction}"), f"{{{FORWARD}}}forwarded")
    forwarded.append(original.element)  # read only: shared, not copied
    # The original's bytes as received inside the wrapper's, not the whole tree serialized again
    # (a third of a carbon's cost), declaring jabber:client where a client's stream implied it
    # (inside <forwarded/> the default namespace is XEP-0297's).
    inner = original.standalone(ns.CLIENT) if original.namespace == ns.CLIENT else None
    if inner is None:
        return Carbon(el)
    head = "".join(f" {k}='{escape_attr(v)}'" for k, v in attrs.items())
    start = f"<message{head}>".encode()
    raw = (start + f"<{direction} xmlns='{NS}'><forwarded xmlns='{FORWARD}'>".encode() + inner
           + f"</forwarded></{direction}></message>".encode())
    return Carbon(el, raw, len(start))
