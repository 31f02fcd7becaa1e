"""Cluster link wire format (sans-IO): length-prefixed frames, safe to decode.

A frame is ``length (4 bytes, big endian) | kind (1 byte) | body``.  Control bodies are JSON
objects with known fields only; a routed stanza is a JSON envelope followed by the stanza's bytes,
never re-serialized.  Nothing is deserialized into arbitrary objects: a malformed frame raises
:class:`FrameError` and the link is closed with that reason.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

from .table import collector_paused

__all__ = ["Kind", "Frame", "FrameDecoder", "FrameError", "encode", "encode_stanza", "decode_stanza",
           "MAX_FRAME"]

MAX_FRAME = 64 * 1024 * 1024  # a full table dump of 100k sessions fits comfortably
_HEAD = struct.Struct(">IB")
_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps(..., separators=...) builds one per call
_BULK = 256 * 1024  # a body this large (a table dump) is decoded with the cyclic GC paused


class FrameError(Exception):
    """The peer sent something that is not a valid frame; close the link."""


class Kind(enum.IntEnum):
    HELLO = 1  # {cluster, node, incarnation, version, nonce, address}
    AUTH = 2  # {mac}: HMAC(secret, peer nonce | our node | cluster)
    WELCOME = 3  # {tables: [names]}
    REFUSE = 4  # {reason}
    DUMP = 5  # {table, records: [[key, value, owner], ...]}: the sender's own records
    OP = 6  # {table, seq, op: "insert"|"delete", key, value?, owner}
    ACK = 7  # {seq}
    STANZA = 8  # envelope JSON + stanza bytes
    PING = 9  # {t}
    PONG = 10  # {t}
    CALL = 11  # {name, args}: a cluster-wide request (e.g. kick a session), no reply
    READ = 12  # {n}: the receiver has read the first n STANZA frames of this link (protocol 1.2)


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    body: bytes

    def json(self) -> dict[str, Any]:
        try:
            if len(self.body) < _BULK:
                value = json.loads(self.body)
            else:
                with collector_paused():  # tens of thousands of containers, no cycles
                    value = json.loads(self.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nesting too deep
            raise FrameError(f"{self.kind.name}: bad JSON: {e}") from None
        if not isinstance(value, dict):
            raise FrameError(f"{self.kind.name}: body is not an object")
        return value


def encode(kind: Kind, body: dict[str, Any] | bytes) -> bytes:
    data = body if isinstance(body, bytes) else _JSON.encode(body).encode()
    return _HEAD.pack(len(data) + 1, kind) + data


def encode_stanza(envelope: dict[str, Any], stanza: bytes) -> bytes:
    head = _JSON.encode(envelope).encode()
    body = struct.pack(">I", len(head)) + head + stanza
    return _HEAD.pack(len(body) + 1, Kind.STANZA) + body


def decode_stanza(frame: Frame) -> tuple[dict[str, Any], bytes]:
    body = frame.body
    if len(body) < 4:
        raise FrameError("STANZA: truncated")
    (n,) = struct.unpack_from(">I", body)
    if 4 + n > len(body):
        raise FrameError("STANZA: envelope longer than frame")
    try:
        envelope = json.loads(body[4:4 + n])
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nesting too deep
        raise FrameError(f"STANZA: bad envelope: {e}") from None
    if not isinstance(envelope, dict):
        raise FrameError("STANZA: envelope is not an object")
    return envelope, body[4 + n:]


class FrameDecoder:
    """Feed bytes, get whole frames."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 5:
            length, kind = _HEAD.unpack_from(buf, pos)
            if length < 1 or length > self.max_frame:
                raise FrameError(f"frame length {length} out of range")
            if len(buf) - pos < 4 + length:
                break
            try:
                k = Kind(kind)
            except ValueError:
                raise FrameError(f"unknown frame kind {kind}") from None
            frames.append(Frame(k, bytes(buf[pos + 5:pos + 4 + length])))
            pos += 4 + length
        if pos:
            del buf[:pos]
        return frames
