"""One cluster link, node to node, as a sans-IO state machine (time is an argument).

Handshake: both sides send HELLO (cluster name, node name, incarnation, protocol version, a
nonce), then AUTH, an HMAC of the peer's nonce under the cluster secret — so a member of another
cluster, a wrong secret, a duplicate node name or an incompatible protocol version is refused
with a clear reason before anything is exchanged.  Then each side sends a DUMP of the records it
owns per table, and from there OPs (acked), STANZAs, CALLs and PINGs.

STANZA frames are counted on both sides (from 1.2): as soon as the receiver has read some, before
it hands them on, it says how many it has read in all (READ), which the adapter writes ahead of
anything those stanzas cause.  The sender keeps the stanzas it was asked to keep
(``send_stanza(keep=True)``: messages for a session there) until the peer has read them, and when
the link dies, :meth:`ClusterLink.unconfirmed` gives back those the peer never read: it cannot
have delivered them, so routing them again delivers nothing twice.

A KNOCK is a HELLO with ``knock`` set and nothing after it: a member just started, whose name
sorts after ours (so it waits for us to dial it), says it is there; we refresh discovery now
rather than at the next interval.  It proves nothing (no AUTH), so it only hastens a refresh.

    state       input                       next
    ---------   -------------------------   ---------------------------------
    HELLO       peer HELLO, acceptable      AUTH (our AUTH sent)
    HELLO       peer KNOCK, acceptable      CLOSED  → event Knocked
    AUTH        peer AUTH, valid            JOINED  → event Joined
    any         refusal / bad frame         CLOSED  → event Closed(reason)
    JOINED      no frame for ping_timeout   CLOSED  → event Closed("ping timeout")
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any

from .frames import Frame, FrameDecoder, FrameError, Kind, decode_stanza, encode, encode_stanza
from .table import Op, Record, collector_paused

__all__ = ["PROTOCOL_VERSION", "LinkConfig", "ClusterLink", "Joined", "Closed", "DumpReceived",
           "OpReceived", "Acked", "StanzaArrived", "CallReceived", "Knocked", "LinkEvent"]

PROTOCOL_VERSION = "1.2"  # major.minor: members with the same major version can join
# 1.1: a dump may come in parts ("more": true on all but the last); sent so only to a peer of 1.1 or
# later, which is told by its HELLO (a 1.0 member would take each part for the whole dump).
# 1.2: READ frames (how many STANZA frames were read); sent only to a peer of 1.2 or later (an
# older one refuses a frame kind it does not know), and only such a peer's stanzas are kept.
MAX_KEPT = 100_000  # stanzas kept for a peer that has not said it read them: the oldest go past it
DUMP_PART = 10_000  # records per DUMP frame: a part decodes and merges in tens of ms, not seconds


class State(enum.Enum):
    HELLO = "hello"
    AUTH = "auth"
    JOINED = "joined"
    CLOSED = "closed"


@dataclass(frozen=True)
class LinkConfig:
    cluster: str
    node: str
    incarnation: str
    secret: bytes
    address: str = ""
    version: str = PROTOCOL_VERSION
    ping_interval: float = 1.0
    ping_timeout: float = 5.0


@dataclass(frozen=True)
class Joined:
    node: str
    incarnation: str
    address: str
    node_num: int | None


@dataclass(frozen=True)
class Closed:
    reason: str
    refused: bool = False


@dataclass(frozen=True)
class DumpReceived:
    """One part of a member's dump of ``table`` (a whole dump is one part, first and last)."""
    table: str
    records: list[Record]
    first: bool = True
    last: bool = True


@dataclass(frozen=True)
class OpReceived:
    op: Op


@dataclass(frozen=True)
class Acked:
    seq: int


@dataclass(frozen=True)
class StanzaArrived:
    envelope: dict[str, Any]
    data: bytes


@dataclass(frozen=True)
class CallReceived:
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Knocked:
    node: str  # as it says: unauthenticated


LinkEvent = Joined | Closed | DumpReceived | OpReceived | Acked | StanzaArrived | CallReceived | Knocked


def _mac(secret: bytes, nonce: str, node: str, cluster: str) -> str:
    return hmac.new(secret, f"{nonce}|{node}|{cluster}".encode(), hashlib.sha256).hexdigest()


def _minor(version: str) -> int:
    """The minor number of a ``major.minor`` protocol version (0 when there is none)."""
    _, _, minor = version.partition(".")
    return int(minor) if minor.isdigit() else 0


class ClusterLink:
    def __init__(self, config: LinkConfig, now: float, *, node_num: int | None = None, knock: bool = False) -> None:
        """``knock``: this link only says we are here (its HELLO, then nothing; see above)."""
        self.config = config
        self.state = State.HELLO
        self.peer: str | None = None  # set once its HELLO is accepted
        self.claimed = ""  # the node name its HELLO claimed, accepted or not (for the logs)
        self.peer_incarnation = ""
        self._peer_takes_parts = False  # the peer speaks 1.1+: our dumps may go in parts
        self._peer_reads = False  # the peer speaks 1.2+: it says how many of our stanzas it read
        self._stanzas_sent = 0
        self._stanzas_read = 0
        self._read_due = False  # stanzas read since the last READ we wrote
        self._kept: deque[tuple[int, dict[str, Any], bytes]] = deque()  # (number, envelope, data)
        self.kept_dropped = 0  # past MAX_KEPT
        self._dumping: set[str] = set()  # tables whose dump from the peer has more parts to come
        self._nonce = secrets.token_hex(16)
        self._peer_nonce = ""
        self._decoder = FrameDecoder()
        self._out: list[bytes] = []
        self._last_seen = now
        self._last_ping = now
        self._seq = 0
        self.rtt: float | None = None
        self._out.append(encode(Kind.HELLO, {
            "cluster": config.cluster, "node": config.node, "incarnation": config.incarnation,
            "version": config.version, "nonce": self._nonce, "address": config.address, "node_num": node_num,
            **({"knock": True} if knock else {})}))
        if knock:
            self.state = State.CLOSED

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def last_seen(self) -> float:
        """When the peer last sent anything (its pings keep this fresh on a live link)."""
        return self._last_seen

    # -- outputs --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def send_dump(self, table: str, records: list[list[Any]]) -> None:
        """Our records of ``table``, in parts of :data:`DUMP_PART` to a peer that takes them: a
        million sessions in one frame would hold the receiver's loop for seconds (and the frame
        would outgrow :data:`MAX_FRAME`)."""
        if not self._peer_takes_parts or len(records) <= DUMP_PART:
            self._out.append(encode(Kind.DUMP, {"table": table, "records": records}))
            return
        for start in range(0, len(records), DUMP_PART):
            part: dict[str, Any] = {"table": table, "records": records[start:start + DUMP_PART]}
            if start + DUMP_PART < len(records):
                part["more"] = True
            self._out.append(encode(Kind.DUMP, part))

    def send_op(self, op: Op) -> int:
        self._seq += 1
        self._out.append(encode(Kind.OP, op.to_json(self._seq)))
        return self._seq

    def send_stanza(self, envelope: dict[str, Any], data: bytes, *, keep: bool = False) -> None:
        """Queue a STANZA frame; ``keep``: hold it until the peer says it read it (a 1.2+ peer)."""
        self._out.append(encode_stanza(envelope, data))
        self._stanzas_sent += 1
        if keep and self._peer_reads:
            self._kept.append((self._stanzas_sent, envelope, data))
            if len(self._kept) > MAX_KEPT:
                self._kept.popleft()
                self.kept_dropped += 1

    def take_read(self) -> bytes:
        """The READ frame owed for the stanzas read since the last one (b"" when none): to be
        written before they are handed on, so that a stanza the peer hears we read is one we had."""
        if not self._read_due:
            return b""
        self._read_due = False
        return encode(Kind.READ, {"n": self._stanzas_read})

    @property
    def kept(self) -> int:
        """Stanzas kept until the peer says it read them."""
        return len(self._kept)

    def unconfirmed(self) -> list[tuple[dict[str, Any], bytes]]:
        """The kept stanzas the peer has not said it read, oldest first (and forget them): on a
        dead link, never delivered by the peer."""
        items = [(envelope, data) for _, envelope, data in self._kept]
        self._kept.clear()
        return items

    def send_call(self, name: str, args: dict[str, Any]) -> None:
        self._out.append(encode(Kind.CALL, {"name": name, "args": args}))

    def refuse(self, reason: str) -> list[LinkEvent]:
        if self.state is State.CLOSED:
            return []
        self._out.append(encode(Kind.REFUSE, {"reason": reason}))
        self.state = State.CLOSED
        return [Closed(reason, refused=True)]

    # -- inputs ---------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[LinkEvent]:
        if self.state is State.CLOSED:
            return []
        if not data:
            self.state = State.CLOSED
            return [Closed("connection closed")]
        self._last_seen = now
        events: list[LinkEvent] = []
        try:
            for frame in self._decoder.feed(data):
                events += self._on_frame(frame, now)
                if self.closed:
                    break
        except (FrameError, ValueError, KeyError, TypeError, OverflowError) as e:  # a 400-digit number, Infinity
            return events + self.refuse(f"malformed frame: {e}")
        return events

    def handle_timer(self, now: float) -> list[LinkEvent]:
        if self.state is State.CLOSED:
            return []
        if now - self._last_seen > self.config.ping_timeout:
            self.state = State.CLOSED
            return [Closed(f"no traffic for {self.config.ping_timeout:.1f}s (ping timeout)")]
        if self.state is State.JOINED and now - self._last_ping >= self.config.ping_interval:
            self._last_ping = now
            self._out.append(encode(Kind.PING, {"t": now}))
        return []

    def _on_frame(self, frame: Frame, now: float) -> list[LinkEvent]:
        kind = frame.kind
        if kind is Kind.REFUSE:
            self.state = State.CLOSED
            return [Closed(f"refused by peer: {frame.json().get('reason')}", refused=True)]
        if self.state is State.HELLO:
            if kind is not Kind.HELLO:
                return self.refuse(f"expected HELLO, got {kind.name}")
            return self._on_hello(frame.json())
        if self.state is State.AUTH:
            if kind is not Kind.AUTH:
                return self.refuse(f"expected AUTH, got {kind.name}")
            return self._on_auth(frame.json())
        if kind is Kind.OP:
            body = frame.json()
            self._out.append(encode(Kind.ACK, {"seq": int(body["seq"])}))
            return [OpReceived(Op.from_json(body))]
        if kind is Kind.ACK:
            return [Acked(int(frame.json()["seq"]))]
        if kind is Kind.STANZA:
            envelope, data = decode_stanza(frame)
            self._stanzas_read += 1
            self._read_due = self._peer_reads
            return [StanzaArrived(envelope, data)]
        if kind is Kind.READ:
            n = int(frame.json()["n"])
            kept = self._kept
            while kept and kept[0][0] <= n:
                kept.popleft()
            return []
        if kind is Kind.DUMP:
            body = frame.json()
            with collector_paused():  # ten thousand records of a part: no cycles to look for
                records = [Record(str(k), v, str(o)) for k, v, o in body["records"] if isinstance(v, dict)]
            if any(r.owner != self.peer for r in records):
                return self.refuse("a dump may only carry the sender's own records")
            table = str(body["table"])
            first = table not in self._dumping
            last = body.get("more") is not True
            if last:
                self._dumping.discard(table)
            else:
                self._dumping.add(table)
            return [DumpReceived(table, records, first, last)]
        if kind is Kind.PING:
            self._out.append(encode(Kind.PONG, frame.json()))
            return []
        if kind is Kind.PONG:
            t = frame.json().get("t")
            if isinstance(t, (int, float)):
                self.rtt = now - t
            return []
        if kind is Kind.CALL:
            body = frame.json()
            args = body.get("args")
            return [CallReceived(str(body["name"]), args if isinstance(args, dict) else {})]
        return self.refuse(f"unexpected {kind.name}")

    def _on_hello(self, hello: dict[str, Any]) -> list[LinkEvent]:
        cfg = self.config
        cluster, node, version = hello.get("cluster"), hello.get("node"), str(hello.get("version", ""))
        self.claimed = node[:64] if isinstance(node, str) else ""
        if cluster != cfg.cluster:
            return self.refuse(f"cluster name mismatch: we are {cfg.cluster!r}, peer is {cluster!r}")
        if not isinstance(node, str) or not node:
            return self.refuse("no node name")
        if node == cfg.node:
            return self.refuse(f"duplicate node name {node!r}")
        if version.split(".")[0] != cfg.version.split(".")[0]:
            return self.refuse(f"incompatible protocol version {version!r} (we speak {cfg.version!r})")
        if hello.get("knock") is True:
            self.state = State.CLOSED
            return [Knocked(node)]
        self.peer = node
        self.peer_incarnation = str(hello.get("incarnation", ""))
        self._peer_takes_parts = _minor(version) >= 1
        self._peer_reads = _minor(version) >= 2
        self._peer_address = str(hello.get("address", ""))
        num = hello.get("node_num")
        self._peer_num = num if isinstance(num, int) else None
        self._peer_nonce = str(hello.get("nonce", ""))
        self._out.append(encode(Kind.AUTH, {"mac": _mac(cfg.secret, self._peer_nonce, cfg.node, cfg.cluster)}))
        self.state = State.AUTH
        return []

    def _on_auth(self, auth: dict[str, Any]) -> list[LinkEvent]:
        assert self.peer is not None
        expected = _mac(self.config.secret, self._nonce, self.peer, self.config.cluster)
        if not hmac.compare_digest(str(auth.get("mac", "")), expected):
            return self.refuse("wrong cluster secret")
        self.state = State.JOINED
        return [Joined(self.peer, self.peer_incarnation, self._peer_address, self._peer_num)]
