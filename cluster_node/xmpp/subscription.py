"""RFC 6121 presence subscription states as pure functions (Appendix A's tables).

A user's roster item for a contact has a ``subscription`` (none/to/from/both), an ``ask`` flag
(our request is pending out) and, stored apart, a pending-in request.  Each function takes the
current state and returns the new one plus what the server must do; no I/O, so every row of the
RFC's tables is a unit test.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SubState", "Outcome", "outbound", "inbound", "SUBSCRIPTION_TYPES"]

SUBSCRIPTION_TYPES = frozenset({"subscribe", "subscribed", "unsubscribe", "unsubscribed"})


@dataclass(frozen=True, slots=True)
class SubState:
    subscription: str = "none"  # none | to | from | both
    ask: bool = False  # pending out (we asked to see their presence)
    pending_in: bool = False  # they asked to see ours, not yet answered

    @property
    def to(self) -> bool:
        return self.subscription in ("to", "both")

    @property
    def from_(self) -> bool:
        return self.subscription in ("from", "both")


def _sub(to: bool, from_: bool) -> str:
    return {(False, False): "none", (True, False): "to", (False, True): "from", (True, True): "both"}[
        (to, from_)]


@dataclass(frozen=True, slots=True)
class Outcome:
    state: SubState
    route: bool  # route (outbound) / deliver to the user's resources (inbound)
    changed: bool  # roster item changed: store and push
    auto_reply: str | None = None  # inbound: answer on the user's behalf with this type
    send_presence: bool = False  # outbound 'subscribed': send our current presence to the contact
    send_unavailable: bool = False  # send unavailable from our available resources to the contact


def outbound(state: SubState, ptype: str) -> Outcome:
    """The user sends ``ptype`` to the contact (RFC 6121 §3.1.2, §3.1.5, §3.2.2, §3.3.2)."""
    s = state
    if ptype == "subscribe":
        new = SubState(s.subscription, ask=not s.to, pending_in=s.pending_in)
        return Outcome(new, route=True, changed=new != s)
    if ptype == "subscribed":
        if s.from_:
            return Outcome(s, route=False, changed=False)
        if not s.pending_in:
            # Pre-approval (RFC 6121 §3.4) is not offered: nothing to approve.
            return Outcome(s, route=False, changed=False)
        new = SubState(_sub(s.to, True), s.ask, pending_in=False)
        return Outcome(new, route=True, changed=True, send_presence=True)
    if ptype == "unsubscribe":
        new = SubState(_sub(False, s.from_), ask=False, pending_in=s.pending_in)
        return Outcome(new, route=True, changed=new != s)
    if ptype == "unsubscribed":
        new = SubState(_sub(s.to, False), s.ask, pending_in=False)
        return Outcome(new, route=True, changed=new != s, send_unavailable=s.from_)
    raise ValueError(ptype)


def inbound(state: SubState, ptype: str) -> Outcome:
    """The contact's ``ptype`` arrives for the user (RFC 6121 §3.1.3, §3.1.6, §3.2.3, §3.3.3)."""
    s = state
    if ptype == "subscribe":
        if s.from_:
            return Outcome(s, route=False, changed=False, auto_reply="subscribed")
        new = SubState(s.subscription, s.ask, pending_in=True)
        return Outcome(new, route=True, changed=new != s)
    if ptype == "subscribed":
        if s.to or not s.ask:
            return Outcome(s, route=False, changed=False)
        new = SubState(_sub(True, s.from_), ask=False, pending_in=s.pending_in)
        return Outcome(new, route=True, changed=True)
    if ptype == "unsubscribe":
        if not s.from_ and not s.pending_in:
            return Outcome(s, route=False, changed=False)
        new = SubState(_sub(s.to, False), s.ask, pending_in=False)
        return Outcome(new, route=True, changed=True, send_unavailable=s.from_)
    if ptype == "unsubscribed":
        if not s.to and not s.ask:
            return Outcome(s, route=False, changed=False)
        new = SubState(_sub(False, s.from_), ask=False, pending_in=s.pending_in)
        return Outcome(new, route=True, changed=True)
    raise ValueError(ptype)
