"""XEP-0352 Client State Indication on the module host: an inactive client is sent less.

* **State.** ``<csi xmlns='urn:xmpp:csi:0'/>`` is offered after authentication; ``<inactive/>`` and
  ``<active/>`` on an established stream (``c2s_element``) set the session's state: a
  :class:`~.policy.CsiPolicy` in ``session.ext["csi"]``, and the flag ``csi: inactive`` on the
  replicated session record while inactive, so every member and region sees it.  A stream starts
  active, and a resumed one too (XEP-0352 §5.2: the state is not restored), unless its Bind 2
  request (XEP-0386) holds ``<inactive/>``: then it starts inactive.
* **Filtering.** While inactive, ``user_receive_filter`` asks the policy: presence updates wait,
  deduplicated per sender; chat states are dropped; anything important goes out at once, after
  what waits.  Bounded by ``max_held`` senders and ``max_delay`` seconds (a timer per session).
* **Flushing.** On ``<active/>``; when the client shows its radio is on — an XEP-0198 ``<r/>``
  (before stream management answers it, so the answer follows what was held), and, unless
  ``flush_on_client_traffic`` is off, any stanza or element it sends; when the stream is closing
  (the first stanza to reach the closing stream, ``session_hold``, or the connection's loss,
  ``session_detach``): what is held is written then, which on a closed stream hands it to stream
  management's queue for the detached session, in order before anything newer.  Without stream
  management a closing session's held presence is dropped with it.
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import Field

from ...core.hooks import Hook
from ...core.module import Module, ModuleHost, ModuleSettings, Xep
from ...xmpp.stanza import Stanza
from .policy import FEATURE, NS, CsiPolicy

__all__ = ["Csi", "CsiSettings", "CsiCollector"]

log = logging.getLogger("meridian.csi")

SM_NS = "urn:xmpp:sm:3"  # XEP-0198: its <r/> flushes first; its state decides whether held stanzas survive
FLAG = "csi"


class CsiSettings(ModuleSettings):
    max_held: int = Field(100, ge=1, description="presence senders held for an inactive client before all is flushed")
    max_delay: float = Field(300.0, gt=0, description="seconds a held presence update may wait at most")
    flush_on_client_traffic: bool = Field(
        True, description="flush what is held when an inactive client sends a stanza or element (its radio is on)")


class Csi(Module):
    name = "csi"
    description = "Client State Indication: presence held and deduplicated, chat states dropped while inactive"
    xeps = (Xep(352, "1.0.0"),)
    Settings = CsiSettings

    def start(self, host: ModuleHost) -> None:
        self.host = host
        self.cfg: CsiSettings = self.settings  # type: ignore[assignment]
        self.stats: Counter[str] = Counter()
        self.timers: dict[Any, asyncio.TimerHandle | None] = {}  # inactive sessions here → max_delay timer
        host.hook(Hook.C2S_FEATURES, self._features)
        host.hook(Hook.BIND2_FEATURES, _bind2_feature)
        host.hook(Hook.BIND2_INLINE, self._bind2_state)
        host.hook(Hook.C2S_ELEMENT, self._element, 10)  # before stream management's (50): <r/> flushes first
        host.hook(Hook.C2S_STANZA_RECEIVED, self._client_stanza)
        host.hook(Hook.USER_RECEIVE_FILTER, self._filter)
        host.hook(Hook.SESSION_HOLD, self._hold, 10)  # before stream management's: held ones go first
        host.hook(Hook.SESSION_DETACH, self._detach, 10)  # before stream management's (50) takes the session
        host.hook(Hook.C2S_STREAM_CLOSING, self._closing)
        host.hook(Hook.SESSION_CLOSED, self._closed, 10)
        host.add_metric(CsiCollector(self))
        host.add_query("csi", "status", self.status)

    def stop(self) -> None:
        """The node stops: inactive clients get what is held (it would be lost otherwise)."""
        for session in list(self.timers):
            policy = self._policy(session)
            if policy is not None and getattr(session, "is_open", False):
                self._write(session, policy.set_active())
            self._forget(session)

    def status(self) -> dict[str, Any]:
        held = sum(len(p) for p in map(self._policy, self.timers) if p is not None)
        return {"inactive": len(self.timers), "held": held, **dict(sorted(self.stats.items()))}

    # -- the client's state ----------------------------------------------------------------------

    @staticmethod
    def _features(parts: list[bytes], stage: str, stream: object) -> list[bytes]:
        if stage == "post_auth":
            parts.append(FEATURE)
        return parts

    def _element(self, session: Any, element: Stanza) -> bool | None:
        if element.namespace == NS:
            if element.name == "inactive":
                self._inactive(session)
            elif element.name == "active":
                self._active(session)
            else:
                return None  # unsupported-stanza-type
            return True
        policy = self._policy(session)
        if policy is not None and policy.inactive and (
                self.cfg.flush_on_client_traffic or (element.namespace == SM_NS and element.name == "r")):
            self._flush(session, policy, "client")
        return None  # stream management (or whoever) still handles it

    def _bind2_state(self, children: list[bytes], session: Any, bind: ET.Element) -> list[bytes]:
        """``<inactive/>`` (or ``<active/>``, the default) inside Bind 2's ``<bind/>``: the state the
        session starts in; nothing to answer in ``<bound/>``."""
        if bind.find(f"{{{NS}}}inactive") is not None:
            self._inactive(session)
        return children

    def _inactive(self, session: Any) -> None:
        policy = self._policy(session)
        if policy is None:
            policy = session.ext["csi"] = CsiPolicy(self.cfg.max_held, self.cfg.max_delay, self.stats,
                                                    owner=str(session.record.jid))
        if policy.inactive:
            return
        policy.set_inactive()
        self.timers.setdefault(session, None)
        self.stats["went_inactive"] += 1
        session.set_record(session.record.with_flag(FLAG, "inactive"))

    def _active(self, session: Any) -> None:
        policy = self._policy(session)
        if policy is None or not policy.inactive:
            return
        self._write(session, policy.set_active())
        self._forget(session)
        self.stats["went_active"] += 1
        session.set_record(session.record.with_flag(FLAG, None))

    # -- stanzas to the client -----------------------------------------------------------------------

    def _filter(self, session: Any, stanza: Stanza) -> bool | None:
        policy = self._policy(session)
        if policy is None or not policy.inactive:
            return None
        outcome = policy.receive(stanza, self._now())
        self._write(session, outcome.write)
        self._arm(session, policy)
        return None if outcome.deliver else True

    def _client_stanza(self, session: Any, stanza: Stanza) -> None:
        if self.cfg.flush_on_client_traffic:
            policy = self._policy(session)
            if policy is not None and policy.inactive:
                self._flush(session, policy, "client")

    def _flush(self, session: Any, policy: CsiPolicy, reason: str) -> None:
        self._write(session, policy.flush(reason))
        self._arm(session, policy)

    @staticmethod
    def _write(session: Any, stanzas: Any) -> None:
        for s in stanzas:
            session.write(s)

    # -- the max_delay timer -------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _arm(self, session: Any, policy: CsiPolicy) -> None:
        """Keep the session's timer on the policy's deadline (none when nothing is held)."""
        if session not in self.timers:
            return
        timer, deadline = self.timers[session], policy.deadline
        if timer is not None and (deadline is None or timer.when() != deadline):
            timer.cancel()
            timer = None
        if deadline is not None and timer is None:
            timer = asyncio.get_running_loop().call_at(deadline, self._due, session)
        self.timers[session] = timer

    def _due(self, session: Any) -> None:
        if session not in self.timers:
            return
        self.timers[session] = None
        policy = self._policy(session)
        if policy is not None and policy.inactive and getattr(session, "is_open", False):
            self._flush(session, policy, "timer")

    def _forget(self, session: Any) -> None:
        timer = self.timers.pop(session, None)
        if timer is not None:
            timer.cancel()

    # -- the end of the stream -----------------------------------------------------------------------

    def _hold(self, session: Any, stanza: Stanza) -> bool | None:
        """A stanza reached the closing stream: what is held goes where it will go, before it."""
        policy = self._policy(session)
        if policy is not None and len(policy):
            self._hand_over(session, policy.flush("close"))
        return None  # stream management (or the session manager) takes the stanza itself

    def _closing(self, session: Any, reason: str) -> None:
        """The stream ended (a dead socket, a kick by a resumption elsewhere): what is held goes
        where the session's stanzas go now, before anything newer."""
        policy = self._policy(session)
        if policy is not None and len(policy):
            self._hand_over(session, policy.flush("close"))

    async def _detach(self, session: Any, reason: str) -> bool | None:
        """The connection is gone: the state ends with it (a resumed stream starts active)."""
        self._forget(session)
        policy: CsiPolicy | None = session.ext.pop("csi", None)
        if policy is None:
            return None
        self._hand_over(session, policy.flush("close"))
        if session.ext.get("sm_moved"):
            self._unflag_resumed(session)
        elif policy.inactive and session.ext.get("sm") is not None:
            # Stream management may keep the session detached: its record must not say inactive
            # (a session that ends is deleted from the table anyway).
            session.set_record(session.record.with_flag(FLAG, None))
        return None

    def _hand_over(self, session: Any, held: list[Stanza]) -> None:
        """Written to a closed stream, a stanza goes to ``session_hold``: stream management keeps it
        for the detached session (or routes it to where the session resumed).  Without stream
        management a closing session's presence has nowhere to go."""
        if not held:
            return
        if session.ext.get("sm") is not None or session.ext.get("sm_moved"):
            self._write(session, held)
        else:
            self.stats["discarded"] += len(held)

    def _unflag_resumed(self, session: Any) -> None:
        """This connection's session was resumed by another on this member, which took its record,
        flag and all: the new stream starts active unless it said otherwise."""
        record = session.record
        current = self.host.table.lookup(record.jid)
        if current is None or current.sid != record.sid or FLAG not in current.flags:
            return
        live = self.host.local.get(current.sid)
        policy = self._policy(live) if live is not None else None
        if live is not session and (policy is None or not policy.inactive):
            self.host.update_record(current.with_flag(FLAG, None))

    async def _closed(self, session: Any) -> None:
        self._forget(session)
        session.ext.pop("csi", None)

    @staticmethod
    def _policy(session: Any) -> CsiPolicy | None:
        policy = session.ext.get("csi")
        return policy if isinstance(policy, CsiPolicy) else None


def _bind2_feature(variables: list[str], stream: object) -> list[str]:
    return [*variables, NS]


class CsiCollector(Collector):
    """Prometheus view of CSI on this node, read at scrape time from the module's counters."""

    def __init__(self, module: Csi) -> None:
        self.module = module

    def collect(self) -> Iterator[Metric]:
        m = self.module
        stats = m.stats
        yield GaugeMetricFamily("meridian_csi_inactive_sessions", "Sessions here whose client is inactive",
                                value=len(m.timers))
        yield GaugeMetricFamily("meridian_csi_held", "Presence updates held for inactive clients now",
                                value=sum(len(p) for p in map(m._policy, m.timers) if p is not None))
        stanzas = CounterMetricFamily("meridian_csi_stanzas", "Stanzas for inactive clients, by what was done",
                                      labels=["action"])
        for action in ("held", "replaced", "dropped", "important", "flushed", "discarded"):
            stanzas.add_metric([action], stats[action])
        yield stanzas
        flushes = CounterMetricFamily("meridian_csi_flushes", "Flushes of held presence, by cause",
                                      labels=["reason"])
        for reason in ("active", "important", "overflow", "timer", "client", "close"):
            flushes.add_metric([reason], stats[f"flush:{reason}"])
        yield flushes
        states = CounterMetricFamily("meridian_csi_state_changes", "Clients turning inactive or active",
                                     labels=["state"])
        for state in ("inactive", "active"):
            states.add_metric([state], stats[f"went_{state}"])
        yield states
