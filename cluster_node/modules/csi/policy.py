"""XEP-0352 buffering policy, sans-IO: what an inactive client gets now, what waits, what is dropped.

While the client says it is inactive:

* **presence updates** (available, unavailable) are held, one per full sender JID: a newer update
  from the same sender replaces the held one (an unavailable replaces an available) and takes its
  place at the end of the queue, so what is flushed is in the order the survivors arrived;
* **chat-state-only messages** (XEP-0085 notifications with no body, also inside XEP-0280
  carbons) are dropped: stale by the time anyone reads them;
* **everything else is important** and goes out at once — messages with a body, encrypted
  payloads (OMEMO, OpenPGP, EME), errors, receipts and markers, subscription presence, a MUC
  room's presence about the user itself (status 110, the end of a join), the session's own
  presence reflected back to it (RFC 6121 §4.4.2: it just sent it), IQs, anything unknown —
  preceded by what is held, so the client's view stays consistent (a contact's presence before
  the message it sent after coming online).

The queue is bounded: beyond ``max_held`` senders everything is flushed; and no update waits longer
than ``max_delay`` seconds (the caller arms a timer for :attr:`CsiPolicy.deadline` and calls
:meth:`CsiPolicy.due`).  Time is whatever clock the caller passes in.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from enum import Enum

from ...xmpp import ns
from ...xmpp.stanza import Stanza

__all__ = ["NS", "CsiPolicy", "Outcome", "Kind", "classify", "FEATURE"]

NS = "urn:xmpp:csi:0"
FEATURE = f"<csi xmlns='{NS}'/>".encode()

CHATSTATES = "http://jabber.org/protocol/chatstates"
CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
MUC_USER = "http://jabber.org/protocol/muc#user"

# Payloads we cannot read: whatever they carry may matter, so they are delivered at once.
ENCRYPTED = frozenset({
    "{eu.siacs.conversations.axolotl}encrypted",  # OMEMO (XEP-0384 0.3, what Conversations speaks)
    "{urn:xmpp:omemo:2}encrypted",  # OMEMO 0.8+
    "{jabber:x:encrypted}x",  # XEP-0027
    "{urn:xmpp:openpgp:0}openpgp",  # XEP-0373
    "{urn:xmpp:eme:0}encryption",  # XEP-0380 hint
})

# What may travel with a chat state without making the message more than a chat state: the
# thread, processing hints (XEP-0334), stanza and origin ids (XEP-0359), delay stamps (XEP-0203).
_CHAT_STATE_COMPANIONS = ("{urn:xmpp:hints}", "{urn:xmpp:sid:0}", f"{{{ns.DELAY}}}")
CHAT_STATE_PREFIX = f"{{{CHATSTATES}}}"


class Kind(Enum):
    PRESENCE = "presence"  # held, one per sender
    DROP = "drop"  # never delivered while inactive
    IMPORTANT = "important"  # delivered at once, after what is held


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do with one stanza for an inactive client: write ``write`` now, in order, then the
    stanza itself when ``deliver``."""

    write: tuple[Stanza, ...]
    deliver: bool
    reason: str


_DELIVER = Outcome((), True, "active")


def classify(stanza: Stanza) -> tuple[Kind, str]:
    """How an inactive client is served ``stanza``, and why (for logs and metrics)."""
    name, content = stanza.name, stanza.namespace
    if content not in (ns.CLIENT, ns.SERVER):  # stanzas relayed from S2S may keep jabber:server
        return Kind.IMPORTANT, "unknown"
    if name == "presence":
        ptype = stanza.type
        if ptype is None or ptype == "unavailable":
            if _muc_self_presence(stanza.element):
                return Kind.IMPORTANT, "muc-self-presence"
            return Kind.PRESENCE, "presence"
        return Kind.IMPORTANT, "subscription" if ptype != "error" else "error"
    if name == "message":
        if stanza.type == "error":
            return Kind.IMPORTANT, "error"
        return _classify_message(stanza.element, content)
    if name == "iq":
        return Kind.IMPORTANT, "iq"
    return Kind.IMPORTANT, "unknown"


def _classify_message(message: ET.Element, content: str, carbon: bool = False) -> tuple[Kind, str]:
    if not carbon:
        for wrapper in ("sent", "received"):
            inner = message.find(f"{{{CARBONS}}}{wrapper}/{{{FORWARD}}}forwarded/{{{ns.CLIENT}}}message")
            if inner is not None:
                kind, reason = _classify_message(inner, ns.CLIENT, carbon=True)
                return kind, f"carbon-{reason}"
    body, thread = f"{{{content}}}body", f"{{{content}}}thread"
    chat_state = False
    for child in message:
        tag = child.tag
        if tag == body:
            return Kind.IMPORTANT, "body"
        if tag in ENCRYPTED:
            return Kind.IMPORTANT, "encrypted"
        if tag.startswith(CHAT_STATE_PREFIX):
            chat_state = True
        elif tag != thread and not tag.startswith(_CHAT_STATE_COMPANIONS):
            return Kind.IMPORTANT, "payload"
    return (Kind.DROP, "chat-state") if chat_state else (Kind.IMPORTANT, "payload")


def _muc_self_presence(presence: ET.Element) -> bool:
    """A room's presence about the user's own occupant (XEP-0045 status 110): the client is
    waiting for it to finish a join or a nick change."""
    for status in presence.iterfind(f"{{{MUC_USER}}}x/{{{MUC_USER}}}status"):
        if status.get("code") == "110":
            return True
    return False


class CsiPolicy:
    """One session's client state and what is held for it (``session.ext["csi"]``).

    ``stats`` counts, across sessions when a shared Counter is passed: ``held`` (presence taken
    into the queue), ``replaced`` (held presence superseded by a newer one from the same sender),
    ``dropped``, ``important`` (delivered at once while inactive), ``flushed`` (held presence
    written) and ``flush:<reason>`` (flushes by cause)."""

    __slots__ = ("max_held", "max_delay", "stats", "owner", "_inactive", "_held", "_since")

    def __init__(self, max_held: int = 100, max_delay: float = 300.0, stats: Counter[str] | None = None, *,
                 owner: str = "") -> None:
        self.owner = owner  # the session's full JID: its own presence, reflected, is not held
        self.max_held = max_held
        self.max_delay = max_delay
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._inactive = False
        self._held: dict[str, Stanza] = {}  # by sender, in the order of the latest arrival
        self._since: float | None = None  # when the queue stopped being empty

    # -- state ---------------------------------------------------------------------------------

    @property
    def inactive(self) -> bool:
        return self._inactive

    @property
    def state(self) -> str:
        return "inactive" if self._inactive else "active"

    def set_inactive(self) -> None:
        self._inactive = True

    def set_active(self) -> list[Stanza]:
        """The client is active again: everything held, to write now."""
        self._inactive = False
        return self.flush("active")

    # -- stanzas --------------------------------------------------------------------------------

    def receive(self, stanza: Stanza, now: float) -> Outcome:
        """A stanza for the client (``now`` starts the ``max_delay`` clock of an empty queue)."""
        if not self._inactive:
            return _DELIVER
        kind, reason = classify(stanza)
        if kind is Kind.PRESENCE and self.owner and stanza.from_ == self.owner:
            kind, reason = Kind.IMPORTANT, "own-presence"  # the client just sent it: its radio is on
        if kind is Kind.DROP:
            self.stats["dropped"] += 1
            return Outcome((), False, reason)
        if kind is Kind.IMPORTANT:
            self.stats["important"] += 1
            return Outcome(tuple(self.flush("important")), True, reason)
        sender = stanza.from_ or ""
        if self._held.pop(sender, None) is not None:
            self.stats["replaced"] += 1
        elif not self._held:
            self._since = now
        self._held[sender] = stanza
        self.stats["held"] += 1
        if len(self._held) > self.max_held:
            return Outcome(tuple(self.flush("overflow")), False, "overflow")
        return Outcome((), False, reason)

    def flush(self, reason: str = "flush") -> list[Stanza]:
        """Everything held, oldest first; the queue is empty afterwards."""
        if not self._held:
            return []
        out = list(self._held.values())
        self._held.clear()
        self._since = None
        self.stats["flushed"] += len(out)
        self.stats[f"flush:{reason}"] += 1
        return out

    @property
    def deadline(self) -> float | None:
        """When what is held has waited ``max_delay``: the caller's timer calls :meth:`due` then."""
        return None if self._since is None else self._since + self.max_delay

    def due(self, now: float) -> list[Stanza]:
        """What must go out by ``now`` (everything, once the oldest waited ``max_delay``)."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return []
        return self.flush("timer")

    def __len__(self) -> int:
        return len(self._held)

    @property
    def held(self) -> list[Stanza]:
        """What is held now, oldest first (not taken out)."""
        return list(self._held.values())
