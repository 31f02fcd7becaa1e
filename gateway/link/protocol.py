"""One inter-region connection, gateway to gateway, as a sans-IO state machine (time is an argument).

Bytes in (:meth:`RegionLink.receive_data`), events out, bytes to write
(:meth:`RegionLink.data_to_send`); the clock is passed in, so tests pump two cores together and move
time by hand.  Only the asyncio adapter (:mod:`gateway.link.pool`) touches sockets.

Both sides send HELLO at once (region, gateway name, protocol version).  A peer with another major
version, a peer claiming our own region, or a region other than the one we dialled is refused with
a reason the operator can act on.  Then STANZA frames flow, each with a per-connection sequence
number; the receiver answers with cumulative ACKs (one per batch of bytes read — or, with
``deferred_acks``, only up to the stanzas its consumer released (:meth:`RegionLink.release`), so that an
ACK means "handed on", not "read": a receiver killed between reading a stanza and handing it on
leaves it unacked, and the sender resends it), and the sender keeps
every stanza it has not seen acked — bounded by ``max_unacked`` — so that when the connection is
lost the adapter can resend them over another one (:meth:`RegionLink.unacked`).  PINGs every
``ping_interval`` measure the RTT and keep the link alive through idle NATs and firewalls; no bytes
for ``ping_timeout`` close it.

Every legal (state, frame) pair is in :data:`TRANSITIONS`; any other frame is a protocol error.

    state    frame received                next
    -------  ----------------------------  -------------------------------------------------
    HELLO    HELLO, acceptable             READY   → Ready(peer_region, peer_gateway)
    HELLO    HELLO, refused                CLOSED  → Closed(reason, refused=True), REFUSE sent
    READY    STANZA (next seq)             READY   → StanzaReceived(...), ACK sent
    READY    ACK (advancing)               READY   → Acked(seq)
    READY    PING / PONG                   READY   (PONG sent / RTT measured)
    any      REFUSE                        CLOSED  → Closed("refused by peer: …", refused=True)
    any      malformed or unexpected frame CLOSED  → Closed("protocol error: …", refused=True)
    any      EOF (b"")                     CLOSED  → Closed("connection closed …")
    any      nothing for ping_timeout      CLOSED  → Closed("no traffic … (ping timeout)")
    any      close(reason) called          CLOSED  → Closed(reason)
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from dataclasses import dataclass

from .frames import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    Ack,
    Frame,
    FrameDecoder,
    Hello,
    LocalProtocolError,
    Ping,
    Pong,
    Refuse,
    RemoteProtocolError,
    StanzaFrame,
    check_stanza_fields,
    encode,
    encode_stanza,
)

__all__ = ["PROTOCOL_VERSION", "State", "TRANSITIONS", "RegionLink", "SentStanza",
           "Ready", "StanzaReceived", "Acked", "Closed", "LinkEvent"]

log = logging.getLogger("meridian.gateway.link")


class State(enum.Enum):
    HELLO = "hello"
    READY = "ready"
    CLOSED = "closed"


TRANSITIONS: dict[State, dict[type[Frame], State]] = {
    State.HELLO: {Hello: State.READY, Refuse: State.CLOSED},
    State.READY: {StanzaFrame: State.READY, Ack: State.READY, Ping: State.READY, Pong: State.READY,
                  Refuse: State.CLOSED},
    State.CLOSED: {},
}
"""The legal frames in each state and where they lead (a refused HELLO leads to CLOSED instead)."""


# -- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """The handshake succeeded: stanzas may flow."""

    peer_region: str
    peer_gateway: str


@dataclass(frozen=True, slots=True)
class StanzaReceived:
    """A stanza from the peer, its bytes as the origin gateway had them (acked already, or, with
    deferred acks, once released)."""

    id: str
    origin: str
    ttl: int
    from_: str | None
    to: str | None
    data: bytes
    seq: int
    meta: str | None = None


@dataclass(frozen=True, slots=True)
class Acked:
    """The peer received every stanza we sent on this connection up to ``seq``."""

    seq: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The link is over.  ``refused``: one side rejected the other (handshake or protocol error)."""

    reason: str
    refused: bool = False


LinkEvent = Ready | StanzaReceived | Acked | Closed


@dataclass(frozen=True, slots=True)
class SentStanza:
    """A stanza we sent and the peer has not acked yet: what the adapter resends elsewhere."""

    seq: int
    id: str
    origin: str
    ttl: int
    data: bytes
    from_: str | None
    to: str | None
    meta: str | None = None


# -- the state machine ----------------------------------------------------------------------------


def _major(version: str) -> str:
    return version.split(".", 1)[0]


class RegionLink:
    """One connection between the gateways of two regions.

    ``expect_region``: the region we dialled (the client side knows it); a peer announcing another
    one is refused, so a stale endpoint list never delivers a region's stanzas to the wrong region.
    """

    def __init__(self, local_region: str, gateway_name: str, now: float, *, expect_region: str | None = None,
                 version: str = PROTOCOL_VERSION, ping_interval: float = 5.0, ping_timeout: float = 15.0,
                 max_unacked: int = 1024, max_frame: int = MAX_FRAME, deferred_acks: bool = False) -> None:
        if max_unacked < 1:
            raise ValueError("max_unacked must be at least 1")
        self.local_region = local_region
        self.gateway_name = gateway_name
        self.expect_region = expect_region
        self.version = version
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_unacked = max_unacked
        self.state = State.HELLO
        self.peer_region: str | None = None
        self.peer_gateway: str | None = None
        self.rtt: float | None = None
        self.close_reason: str | None = None
        self._decoder = FrameDecoder(max_frame)
        self._out: list[bytes] = [encode(Hello(local_region, gateway_name, version))]
        self._last_seen = now
        self._last_ping = now
        self._sent_seq = 0  # last seq we sent
        self._acked_seq = 0  # last seq the peer acked
        self._recv_seq = 0  # last seq we received
        self._unacked: deque[SentStanza] = deque()
        self.deferred_acks = deferred_acks
        self._held: deque[int] = deque()  # deferred: seqs received, in order, not all released yet
        self._released: set[int] = set()  # deferred: released seqs still behind an unreleased one
        self._ack_sent = 0  # deferred: last seq we acked

    # -- state ------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    @property
    def last_seen(self) -> float:
        """When the peer last sent anything."""
        return self._last_seen

    @property
    def window(self) -> int:
        """How many more stanzas may be sent before the peer acks some (0: wait for an Acked)."""
        return self.max_unacked - len(self._unacked)

    @property
    def in_flight(self) -> int:
        return len(self._unacked)

    @property
    def sent_seq(self) -> int:
        return self._sent_seq

    @property
    def acked_seq(self) -> int:
        return self._acked_seq

    def unacked(self) -> list[SentStanza]:
        """Stanzas sent and not acked, in the order sent: after a loss, resend them elsewhere first."""
        return list(self._unacked)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` has something to do next (None once closed)."""
        if self.state is State.CLOSED:
            return None
        deadline = self._last_seen + self.ping_timeout
        if self.state is State.READY:
            deadline = min(deadline, self._last_ping + self.ping_interval)
        return deadline

    # -- outputs ----------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def send_stanza(self, id: str, origin: str, ttl: int, data: bytes, from_: str | None = None,
                    to: str | None = None, meta: str | None = None) -> int:
        """Queue one stanza for the peer; returns its sequence number on this connection.

        Allowed once HELLO is sent (stanzas sent before READY follow our HELLO on the wire, so the
        peer reads them in READY).  Raises :class:`LocalProtocolError` on a closed link, a full window
        (check :attr:`window`) or fields the wire cannot carry.
        """
        if self.state is State.CLOSED:
            raise LocalProtocolError(f"send on a closed link ({self.close_reason})")
        if len(self._unacked) >= self.max_unacked:
            raise LocalProtocolError(f"window full: {self.max_unacked} stanzas unacked")
        check_stanza_fields(id, origin, ttl, data, from_, to, meta)
        self._sent_seq += 1
        seq = self._sent_seq
        self._out.append(encode_stanza(seq, id, origin, ttl, data, from_, to, meta))
        self._unacked.append(SentStanza(seq, id, origin, ttl, data, from_, to, meta))
        return seq

    def refuse(self, reason: str) -> list[LinkEvent]:
        """Close with a REFUSE carrying ``reason`` (the adapter writes it, then closes the transport)."""
        if self.state is State.CLOSED:
            return []
        self._out.append(encode(Refuse(reason)))
        return self._close(reason, refused=True)

    def close(self, reason: str) -> list[LinkEvent]:
        """End a healthy link by our own choice (endpoint withdrawn, shutdown): no REFUSE, the adapter
        closes the transport after writing what is pending; the peer sees an orderly EOF."""
        if self.state is State.CLOSED:
            return []
        return self._close(reason, refused=False)

    def _close(self, reason: str, refused: bool) -> list[LinkEvent]:
        log.debug("region link %s→%s: %s → closed: %s", self.local_region, self.peer_region or "?",
                  self.state.value, reason)
        self.state = State.CLOSED
        self.close_reason = reason
        return [Closed(reason, refused)]

    # -- inputs -----------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[LinkEvent]:
        """Feed bytes read from the connection (``b""`` is EOF); returns what happened, in order."""
        if self.state is State.CLOSED:
            return []
        if not data:
            when = "by peer" if self.state is State.READY else "during handshake"
            return self._close(f"connection closed {when}", refused=False)
        self._last_seen = now
        self._decoder.feed(data)
        events: list[LinkEvent] = []
        recv_before = self._recv_seq
        try:
            while not self.closed:
                frame = self._decoder.next_frame()
                if frame is None:
                    break
                events += self._on_frame(frame, now)
        except RemoteProtocolError as e:
            self._ack(recv_before)  # what arrived intact before the bad frame is acked, not resent
            return events + self.refuse(f"protocol error: {e}")
        self._ack(recv_before)
        return events

    def _ack(self, recv_before: int) -> None:
        # One cumulative ACK per batch of bytes read: cheap on a busy link, immediate on an idle one.
        if self.deferred_acks:
            self.send_ack()
        elif self._recv_seq > recv_before and self.state is State.READY:
            self._out.append(encode(Ack(self._recv_seq)))

    def release(self, seq: int) -> None:
        """With ``deferred_acks``: the stanza ``seq`` has been handed on (or dropped on purpose);
        the next :meth:`send_ack` acks every stanza up to the first one still held."""
        held = self._held
        if not held or seq < held[0]:
            return  # not held (released twice, or not deferred)
        if seq != held[0]:
            self._released.add(seq)
            return
        held.popleft()
        released = self._released
        while held and held[0] in released:
            released.discard(held.popleft())

    def send_ack(self) -> None:
        """Ack what may be acked now (deferred acks: call once per batch of releases)."""
        upto = self._held[0] - 1 if self._held else self._recv_seq
        if upto > self._ack_sent and self.state is State.READY:
            self._ack_sent = upto
            self._out.append(encode(Ack(upto)))

    @property
    def held(self) -> int:
        """Deferred acks: stanzas received and not released yet."""
        return len(self._held)

    def handle_timer(self, now: float) -> list[LinkEvent]:
        """Call at :meth:`get_timer` (or more often): sends pings, detects a silent peer."""
        if self.state is State.CLOSED:
            return []
        if now - self._last_seen >= self.ping_timeout:
            if self.state is State.HELLO:
                return self._close(f"no HELLO within {self.ping_timeout:g}s", refused=False)
            return self._close(f"no traffic for {self.ping_timeout:g}s (ping timeout)", refused=False)
        if self.state is State.READY and now - self._last_ping >= self.ping_interval:
            self._last_ping = now
            self._out.append(encode(Ping(now)))
        return []

    def _on_frame(self, frame: Frame, now: float) -> list[LinkEvent]:
        if type(frame) not in TRANSITIONS[self.state]:
            raise RemoteProtocolError(f"unexpected {type(frame).__name__} in state {self.state.value}")
        if isinstance(frame, StanzaFrame):
            if frame.seq != self._recv_seq + 1:
                raise RemoteProtocolError(f"STANZA seq {frame.seq} out of order (expected {self._recv_seq + 1})")
            self._recv_seq = frame.seq
            if self.deferred_acks:
                self._held.append(frame.seq)
            return [StanzaReceived(frame.id, frame.origin, frame.ttl, frame.from_, frame.to, frame.data, frame.seq,
                                   frame.meta)]
        if isinstance(frame, Ack):
            return self._on_ack(frame.seq)
        if isinstance(frame, Ping):
            self._out.append(encode(Pong(frame.t)))
            return []
        if isinstance(frame, Pong):
            if frame.t <= now:
                self.rtt = now - frame.t
            return []
        if isinstance(frame, Hello):
            return self._on_hello(frame)
        assert isinstance(frame, Refuse)
        return self._close(f"refused by peer: {frame.reason}", refused=True)

    def _on_ack(self, seq: int) -> list[LinkEvent]:
        if seq > self._sent_seq:
            raise RemoteProtocolError(f"ACK {seq} for a stanza never sent (last sent {self._sent_seq})")
        if seq <= self._acked_seq:
            return []  # cumulative: an old ACK says nothing new
        self._acked_seq = seq
        unacked = self._unacked
        while unacked and unacked[0].seq <= seq:
            unacked.popleft()
        return [Acked(seq)]

    def _on_hello(self, hello: Hello) -> list[LinkEvent]:
        if _major(hello.version) != _major(self.version):
            return self.refuse(f"incompatible protocol version {hello.version!r} "
                               f"(we speak {self.version!r}; the major versions must match)")
        if hello.region == self.local_region:
            return self.refuse(f"peer gateway {hello.gateway!r} claims our own region {hello.region!r}")
        if self.expect_region is not None and hello.region != self.expect_region:
            return self.refuse(f"expected region {self.expect_region!r}, peer is region {hello.region!r}")
        self.peer_region, self.peer_gateway = hello.region, hello.gateway
        self.state = State.READY
        log.debug("region link %s→%s (%s): hello → ready", self.local_region, hello.region, hello.gateway)
        return [Ready(hello.region, hello.gateway)]
