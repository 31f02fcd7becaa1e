"""The MUC service itself (``conference.<domain>``, no room): its disco#info and disco#items,
pings and XEP-0045 §10.1.4 unique room names — and which member of the region sequences a room.

Sans I/O: the module passes in the rooms it knows and the members alive.
"""

from __future__ import annotations

import hashlib
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from ...xmpp import errors, ns
from ...xmpp.stanza import Stanza
from .protocol import CONFERENCE, MUC, OCCUPANT_ID, SID, UNIQUE, q

__all__ = ["sequencer", "service_iq", "SERVICE_FEATURES"]

SERVICE_FEATURES = sorted({MUC, UNIQUE, ns.DISCO_INFO, ns.DISCO_ITEMS, ns.PING, CONFERENCE, OCCUPANT_ID, SID})
_C = f"{{{ns.CLIENT}}}"


def sequencer(room: str, members: Iterable[str]) -> str:
    """The member that sequences ``room`` among ``members`` (rendezvous hashing: every member
    computes the same from the same list, and a member leaving moves only its own rooms)."""
    return max(members, key=lambda m: hashlib.sha256(f"{room}\0{m}".encode()).digest())


def service_iq(stanza: Stanza, service: str, rooms: Iterable[tuple[str, str]], name: str) -> Stanza | None:
    """The answer of the service ``service`` to an IQ get or set (``rooms``: the public rooms, as
    (JID, name)); None for results and errors, which end here.  Raises a StanzaError."""
    if stanza.type not in ("get", "set"):
        return None
    payload = stanza.payload()
    if payload is None or stanza.type != "get":
        raise errors.ServiceUnavailable()
    node = payload.get("node")
    if payload.tag == q(ns.DISCO_INFO, "query"):
        if node:
            raise errors.ItemNotFound()
        result = ET.Element(q(ns.DISCO_INFO, "query"))
        ET.SubElement(result, q(ns.DISCO_INFO, "identity"), {"category": "conference", "type": "text", "name": name})
        for feature in SERVICE_FEATURES:
            ET.SubElement(result, q(ns.DISCO_INFO, "feature"), {"var": feature})
    elif payload.tag == q(ns.DISCO_ITEMS, "query"):
        if node:
            raise errors.ItemNotFound()
        result = ET.Element(q(ns.DISCO_ITEMS, "query"))
        for jid, title in rooms:
            ET.SubElement(result, q(ns.DISCO_ITEMS, "item"), {"jid": jid, "name": title})
    elif payload.tag == q(ns.PING, "ping"):
        result = None
    elif payload.tag == q(UNIQUE, "unique"):
        result = ET.Element(q(UNIQUE, "unique"))
        result.text = secrets.token_hex(10)
    else:
        raise errors.ServiceUnavailable()
    el = ET.Element(_C + "iq", {"type": "result", "from": service, "to": stanza.from_ or ""})
    if stanza.id is not None:
        el.set("id", stanza.id)
    if result is not None:
        el.append(result)
    return Stanza(el)
