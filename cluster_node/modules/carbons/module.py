"""XEP-0280 Message Carbons: a user's resources see both sides of every chat, in every region.

* **Enable/disable.** ``<iq type='set'><enable xmlns='urn:xmpp:carbons:2'/></iq>`` (or
  ``<disable/>``) from a bound resource, with no 'to' or to its own bare JID, sets (clears) the
  module flag ``carbons`` on the session's record.  The record is replicated to every member of
  the region, and a fan-out relayed to another region is applied there against that region's
  records, so the flag is seen wherever a copy is made.
* **Sent carbons.** An eligible message a client sends (``user_send_packet``, observed) is copied,
  wrapped in ``<sent/>``, to the account's other carbons-enabled resources: here, on the other
  members and in the other regions (``Fanout(flag="carbons", exclude=<sender>)``).
* **Received carbons.** An eligible message delivered to an account (``message_delivered``) is
  copied, wrapped in ``<received/>``, to the carbons-enabled resources that did not get the
  original: all but the addressed one for a full JID; those below the priority it was delivered
  at for a bare JID.  A message between two resources of one account is copied once, as sent.
* **Inline in Bind 2** (XEP-0386): ``<enable xmlns='urn:xmpp:carbons:2'/>`` inside the SASL2
  ``<bind/>`` sets the flag as the IQ would, with nothing to answer (the feature is listed in Bind 2's
  ``<inline/>``).
* **Private messages** (``<private/>``, XEP-0280 §7) and ``<no-copy/>`` (XEP-0334) are not copied;
  the recipient gets a private message without its ``<private/>`` (``message_to_account``).

Which messages are eligible, and the wrapping, are in :mod:`.rules`.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from typing import Any

from ...core.hooks import Hook
from ...core.module import Module, ModuleHost, Xep
from ...core.router import Fanout, IqRequest
from ...core.sessions import LocalSession
from ...xmpp import errors
from ...xmpp.jid import InvalidJid, Jid
from ...xmpp.stanza import Stanza
from . import rules
from .rules import NS

__all__ = ["Carbons", "FLAG"]

log = logging.getLogger("meridian.carbons")

FLAG = "carbons"  # the session record flag of a carbons-enabled resource
_ENABLE = f"{{{NS}}}enable"


class Carbons(Module):
    name = "carbons"
    description = "Message Carbons: every resource of a user sees both sides of its chats, in every region"
    xeps = (Xep(280, "1.0.1"),
            Xep(334, "0.3.0", "partial", "the no-copy hint: such messages are not carbon-copied"))

    def start(self, host: ModuleHost) -> None:
        self.host = host
        self.counters = {"sent": 0, "received": 0}
        host.add_account_iq(NS, "enable", self._iq)
        host.add_account_iq(NS, "disable", self._iq)
        host.hook(Hook.DISCO_SERVER_FEATURES, _feature)
        # Late: modules that take an outgoing message (and so never send it) answer first.
        host.hook(Hook.USER_SEND_PACKET, self._sent, 90)
        # Late: the recipient gets the message the modules before made, without <private/>.
        host.hook(Hook.MESSAGE_TO_ACCOUNT, _unprivate, 90)
        host.hook(Hook.MESSAGE_DELIVERED, self._received)
        host.hook(Hook.BIND2_FEATURES, _bind2_feature)
        host.hook(Hook.BIND2_INLINE, _bind2_enable)

    # -- enable / disable ----------------------------------------------------------------------------

    async def _iq(self, req: IqRequest) -> ET.Element | None:
        if req.stanza.type != "set":
            raise errors.BadRequest("carbons are enabled or disabled with an iq of type set")
        if req.sender.resource is None or req.sender.bare != req.to:
            raise errors.NotAllowed("only a resource of the account can change its carbons")
        session = self._session(req.sender)
        if session is None:
            raise errors.NotAllowed("no session bound here for this resource")
        value = "on" if req.payload.tag == _ENABLE else None
        if session.record.flags.get(FLAG) != value:  # enabling (disabling) twice is fine: a result
            session.set_record(session.record.with_flag(FLAG, value))
        return None

    def _session(self, jid: Jid) -> LocalSession | None:
        """The connection of ``jid`` on this member (an account IQ is handled where its sender is)."""
        record = self.host.table.lookup(jid)
        if record is None or record.node != self.host.node:
            return None
        return self.host.local.get(record.sid)

    # -- copies --------------------------------------------------------------------------------------

    def _sent(self, session: Any, stanza: Stanza) -> None:
        """An outgoing message: a ``<sent/>`` copy to the sender's other carbons-enabled resources."""
        if stanza.name != "message":
            return None
        sender: Jid = session.record.jid
        bare = sender.bare
        if not self._anyone(bare) or not rules.eligible(stanza):  # the cheap question first
            return None
        original = stanza if stanza.to else stanza.with_attrs(to=str(bare))  # to the own account
        copy = rules.wrap("sent", original, str(bare))
        self.counters["sent"] += 1
        self.host.deliver_all(bare, copy, Fanout(flag=FLAG, exclude=str(sender), set_to=True))
        return None

    def _received(self, stanza: Stanza, to: Jid, which: Fanout | None) -> None:
        """A message was delivered to ``to`` (``which``: the resources of a bare JID it went to): a
        ``<received/>`` copy to the carbons-enabled resources that did not get it."""
        if to.local is None or stanza.name != "message" or isinstance(stanza, rules.Unprivate):
            return
        if stanza.type in ("error", "groupchat", "headline"):  # before parsing anything
            return
        bare = to.bare
        if not self._anyone(bare):  # the cheap question first: most accounts have no carbons on
            return
        if _bare_of(stanza.from_) == bare:
            return  # between two resources of the account: copied once, as sent
        if not rules.eligible(stanza):
            return
        if which is None:
            select = Fanout(flag=FLAG, exclude=str(to), set_to=True)
        elif which.min_priority is not None:
            select = Fanout(flag=FLAG, max_priority=which.min_priority - 1, set_to=True)
        else:
            return  # every available resource got it
        self.counters["received"] += 1
        self.host.deliver_all(bare, rules.wrap("received", stanza, str(bare)), select)

    def _anyone(self, bare: Jid) -> bool:
        """Whether a carbons-enabled resource of ``bare`` may exist: one in this region (the
        replicated table says), or another region to fan out to (the region has a gateway)."""
        return self.host.table.any_flagged(bare, FLAG) or self.host.reaches_other_regions()


def _feature(features: set[str]) -> set[str]:
    return features | {NS}


def _bind2_feature(variables: list[str], stream: object) -> list[str]:
    return [*variables, NS]


def _bind2_enable(children: list[bytes], session: Any, bind: ET.Element) -> list[bytes]:
    """XEP-0386: carbons enabled at bind, when asked inside ``<bind/>``; no answer in ``<bound/>``."""
    if bind.find(_ENABLE) is not None and session.record.flags.get(FLAG) != "on":
        session.set_record(session.record.with_flag(FLAG, "on"))
    return children


def _unprivate(stanza: Stanza, to: Jid) -> Stanza:
    """XEP-0280 §7: the recipient gets a private message without ``<private/>`` (and no carbons)."""
    if stanza.name == "message" and rules.is_private(stanza):
        return rules.strip_private(stanza)
    return stanza


def _bare_of(value: str | None) -> Jid | None:
    if not value:
        return None
    try:
        return Jid.parse(value).bare
    except InvalidJid:
        return None
