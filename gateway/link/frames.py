"""Inter-region link wire format (sans-IO): length-prefixed frames decoded into typed values.

A frame is ``length (4 bytes, big endian) | kind (1 byte) | body`` where ``length`` counts the kind
byte and the body.  Bodies are decoded field by field into the dataclasses below and nothing else:
no pickle, no generic object graph.  A frame that does not fit the format raises
:class:`FrameError`, and the link is closed with that reason (the peer is told in a REFUSE).

* HELLO, REFUSE, PING, PONG are rare, so their bodies are small JSON objects: readable in a capture
  and extensible (a minor version may add fields; unknown fields are ignored).
* STANZA and ACK are the hot path, so they are binary.  A STANZA carries a small header and then the
  stanza's bytes exactly as the sender had them: a relayed stanza is never parsed or re-serialized
  here (the gateway already parsed it once on the way in).

STANZA body::

    seq u64 | ttl u8 | flags u8 (bit 0: from present, bit 1: to present)
    | id | origin | [from] | [to]         each: length u16 + UTF-8
    | stanza bytes (the rest of the frame)

ACK body: ``seq u64`` (cumulative: every stanza up to ``seq`` was received).
"""

from __future__ import annotations

import enum
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PROTOCOL_VERSION", "MAX_FRAME", "MAX_TTL", "MAX_ID", "MAX_REGION", "MAX_JID",
    "Kind", "Hello", "Refuse", "StanzaFrame", "Ack", "Ping", "Pong", "Frame",
    "LinkProtocolError", "LocalProtocolError", "RemoteProtocolError", "FrameError",
    "FrameDecoder", "encode", "encode_stanza", "check_stanza_fields",
]

PROTOCOL_VERSION = "1.0"
"""``major.minor``: gateways with the same major version talk; minor versions only add optional fields."""

MAX_FRAME = 1024 * 1024 + 16 * 1024
"""Default frame bound: a stanza of 1 MiB (well above ``max_stanza_size``) plus its header."""

MAX_CONTROL = 4096  # a HELLO / REFUSE / PING body; anything bigger is not one of ours
MAX_TTL = 255  # the hop limit travels as one byte
MAX_ID = 1024  # bytes of a stanza id (UTF-8)
MAX_REGION = 255  # bytes of a region or gateway name
MAX_JID = 3071  # RFC 7622 §3.1: three parts of at most 1023 bytes each, plus separators

_HEAD = struct.Struct(">IB")
_STANZA_HEAD = struct.Struct(">QBB")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_FROM, _TO, _META = 1, 2, 4
MAX_META = 1024  # routing hints for the relay (e.g. a fan-out to an account's resources), opaque here


class LinkProtocolError(Exception):
    """Base of the protocol errors of the inter-region link."""


class LocalProtocolError(LinkProtocolError):
    """We misused the API (sent on a closed link, a TTL out of range, a full window): a bug of ours."""


class RemoteProtocolError(LinkProtocolError):
    """The peer misbehaved; the link is closed with this reason."""


class FrameError(RemoteProtocolError):
    """The peer sent bytes that are not a valid frame."""


class Kind(enum.IntEnum):
    HELLO = 1  # {region, gateway, version}
    REFUSE = 2  # {reason}
    STANZA = 3  # binary header + stanza bytes
    ACK = 4  # seq u64
    PING = 5  # {t}
    PONG = 6  # {t}: the PING's t, echoed


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of each side: who we are and which protocol we speak."""

    region: str
    gateway: str
    version: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Last frame before a close we chose, with the reason (shown in logs and on the dashboard)."""

    reason: str


@dataclass(frozen=True, slots=True)
class StanzaFrame:
    """One relayed stanza: routing header and the stanza's own bytes."""

    seq: int
    id: str
    origin: str
    ttl: int
    from_: str | None
    to: str | None
    data: bytes
    meta: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """Cumulative acknowledgement: every stanza up to ``seq`` on this connection was received."""

    seq: int


@dataclass(frozen=True, slots=True)
class Ping:
    t: float


@dataclass(frozen=True, slots=True)
class Pong:
    t: float


Frame = Hello | Refuse | StanzaFrame | Ack | Ping | Pong


# -- encoding -------------------------------------------------------------------------------------


def _frame(kind: Kind, body: bytes) -> bytes:
    return _HEAD.pack(len(body) + 1, kind) + body


def _json(kind: Kind, body: dict[str, Any]) -> bytes:
    return _frame(kind, json.dumps(body, separators=(",", ":")).encode())


def _text(value: str, what: str, limit: int) -> bytes:
    raw = value.encode()
    if len(raw) > limit:
        raise LocalProtocolError(f"{what} longer than {limit} bytes")
    return _U16.pack(len(raw)) + raw


def check_stanza_fields(id: str, origin: str, ttl: int, data: bytes, from_: str | None, to: str | None,
                        meta: str | None = None) -> None:
    """Refuse, before anything is queued, a stanza the wire format cannot carry."""
    if not id or len(id.encode()) > MAX_ID:
        raise LocalProtocolError(f"stanza id must be 1..{MAX_ID} bytes")
    if not origin or len(origin.encode()) > MAX_REGION:
        raise LocalProtocolError(f"origin region must be 1..{MAX_REGION} bytes")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        # A stanza with no hop left is bounced by the relay, never sent.
        raise LocalProtocolError(f"ttl must be an int in 1..{MAX_TTL}, got {ttl!r}")
    if not data:
        raise LocalProtocolError("empty stanza")
    for name, jid in (("from", from_), ("to", to)):
        if jid is not None and len(jid.encode()) > MAX_JID:
            raise LocalProtocolError(f"{name} longer than {MAX_JID} bytes")
    if meta is not None and len(meta.encode()) > MAX_META:
        raise LocalProtocolError(f"meta longer than {MAX_META} bytes")


def encode_stanza(seq: int, id: str, origin: str, ttl: int, data: bytes, from_: str | None, to: str | None,
                  meta: str | None = None) -> bytes:
    """A STANZA frame; the stanza bytes are appended as they are."""
    flags = (_FROM if from_ is not None else 0) | (_TO if to is not None else 0) | (_META if meta is not None else 0)
    parts = [_STANZA_HEAD.pack(seq, ttl, flags), _text(id, "id", MAX_ID), _text(origin, "origin", MAX_REGION)]
    if from_ is not None:
        parts.append(_text(from_, "from", MAX_JID))
    if to is not None:
        parts.append(_text(to, "to", MAX_JID))
    if meta is not None:
        parts.append(_text(meta, "meta", MAX_META))
    parts.append(data)
    body = b"".join(parts)
    return _HEAD.pack(len(body) + 1, Kind.STANZA) + body


def encode(frame: Frame) -> bytes:
    """The bytes of one frame."""
    if isinstance(frame, StanzaFrame):
        return encode_stanza(frame.seq, frame.id, frame.origin, frame.ttl, frame.data, frame.from_, frame.to,
                             frame.meta)
    if isinstance(frame, Ack):
        return _frame(Kind.ACK, _U64.pack(frame.seq))
    if isinstance(frame, Hello):
        return _json(Kind.HELLO, {"region": frame.region, "gateway": frame.gateway, "version": frame.version})
    if isinstance(frame, Refuse):
        return _json(Kind.REFUSE, {"reason": frame.reason[:1000]})
    if isinstance(frame, Ping):
        return _json(Kind.PING, {"t": frame.t})
    return _json(Kind.PONG, {"t": frame.t})


# -- decoding -------------------------------------------------------------------------------------


def _object(kind: Kind, body: bytes) -> dict[str, Any]:
    if len(body) > MAX_CONTROL:
        raise FrameError(f"{kind.name}: body of {len(body)} bytes (at most {MAX_CONTROL})")
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nesting too deep
        raise FrameError(f"{kind.name}: bad JSON: {e}") from None
    if not isinstance(value, dict):
        raise FrameError(f"{kind.name}: body is not an object")
    return value


def _str_field(kind: Kind, body: dict[str, Any], name: str, limit: int) -> str:
    value = body.get(name)
    if isinstance(value, str) and value:
        try:
            if len(value.encode()) <= limit:
                return value
        except UnicodeEncodeError:  # a lone surrogate escaped in the JSON ("\ud800") is not text
            pass
    raise FrameError(f"{kind.name}: {name!r} must be a non-empty string of at most {limit} bytes")


def _time_field(kind: Kind, body: dict[str, Any]) -> float:
    t = body.get("t")
    if isinstance(t, bool) or not isinstance(t, int | float):
        raise FrameError(f"{kind.name}: 't' must be a finite number")
    try:
        value = float(t)
    except OverflowError:  # an int beyond the float range (a JSON number of 400 digits)
        value = math.inf
    if not math.isfinite(value):
        raise FrameError(f"{kind.name}: 't' must be a finite number")
    return value


def _read_text(body: bytes, pos: int, what: str, limit: int) -> tuple[str, int]:
    if pos + 2 > len(body):
        raise FrameError(f"STANZA: truncated before {what}")
    (n,) = _U16.unpack_from(body, pos)
    pos += 2
    if n > limit or pos + n > len(body):
        raise FrameError(f"STANZA: {what} of {n} bytes does not fit")
    try:
        return body[pos:pos + n].decode(), pos + n
    except UnicodeDecodeError:
        raise FrameError(f"STANZA: {what} is not UTF-8") from None


def _decode_stanza(body: bytes) -> StanzaFrame:
    if len(body) < _STANZA_HEAD.size:
        raise FrameError("STANZA: truncated header")
    seq, ttl, flags = _STANZA_HEAD.unpack_from(body)
    if flags & ~(_FROM | _TO | _META):
        raise FrameError(f"STANZA: unknown flags {flags:#x}")
    if ttl < 1:
        raise FrameError("STANZA: ttl 0 (a stanza with no hop left must not be relayed)")
    pos = _STANZA_HEAD.size
    id, pos = _read_text(body, pos, "id", MAX_ID)
    origin, pos = _read_text(body, pos, "origin", MAX_REGION)
    from_ = to = None
    if flags & _FROM:
        from_, pos = _read_text(body, pos, "from", MAX_JID)
    if flags & _TO:
        to, pos = _read_text(body, pos, "to", MAX_JID)
    meta = None
    if flags & _META:
        meta, pos = _read_text(body, pos, "meta", MAX_META)
    if not id or not origin:
        raise FrameError("STANZA: empty id or origin")
    if pos >= len(body):
        raise FrameError("STANZA: no stanza bytes")
    return StanzaFrame(seq, id, origin, ttl, from_, to, body[pos:], meta)


def _decode(kind: Kind, body: bytes) -> Frame:
    if kind is Kind.STANZA:
        return _decode_stanza(body)
    if kind is Kind.ACK:
        if len(body) != _U64.size:
            raise FrameError(f"ACK: body of {len(body)} bytes (expected {_U64.size})")
        return Ack(_U64.unpack(body)[0])
    obj = _object(kind, body)
    if kind is Kind.HELLO:
        return Hello(_str_field(kind, obj, "region", MAX_REGION), _str_field(kind, obj, "gateway", MAX_REGION),
                     _str_field(kind, obj, "version", 32))
    if kind is Kind.REFUSE:
        reason = obj.get("reason")
        return Refuse(reason[:1000] if isinstance(reason, str) else "no reason given")
    if kind is Kind.PING:
        return Ping(_time_field(kind, obj))
    return Pong(_time_field(kind, obj))


class FrameDecoder:
    """Feed bytes as they come (any split), take whole decoded frames one at a time.

    One at a time, so that the frames before a bad one are still handled in order.  After a
    :class:`FrameError` the decoder stays broken: the stream has lost its framing, so the link must
    be closed, never resynchronized.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        self._error: FrameError | None = None

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None until more bytes are fed."""
        if self._error is not None:
            raise self._error
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 5:
            return None
        try:
            length, kind = _HEAD.unpack_from(buf, pos)
            if length < 1 or length > self.max_frame:
                raise FrameError(f"frame length {length} out of range (at most {self.max_frame})")
            try:
                k = Kind(kind)
            except ValueError:
                raise FrameError(f"unknown frame kind {kind}") from None
            if len(buf) - pos < 4 + length:
                return None
            self._pos = pos + 4 + length
            return _decode(k, bytes(buf[pos + 5:pos + 4 + length]))
        except FrameError as e:
            self._error = e
            raise
