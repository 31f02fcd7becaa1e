"""RFC 6455 frames from a WebSocket client, sans-IO: bytes in, message events out.

:class:`FrameParser` takes what the socket reads, whatever its cut (several frames in one read, a
frame over several reads), and returns the events of the frames completed so far: a text or binary
message (fragments reassembled), a ping, a pong, the peer's close, or a :class:`ProtocolError` —
after which the connection is failed with its close code, so the parser stops (but for a message
over the size limit, 1009, whose payload it skips to find the peer's close frame after it).

A server's view: frames must be masked (else 1002), no extension is negotiated (an RSV bit is 1002),
control frames are final and at most 125 bytes, a message longer than ``max_message_size`` is 1009
from its frame header — never buffered.  Text payloads are not checked for UTF-8: the XMPP parser
they go to checks it (a ``not-well-formed`` stream error, as over TCP).

Unmasking is one XOR of two big integers (:func:`unmask`), or what the server passes in (aiohttp's
C helper).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FrameParser", "Text", "Binary", "Ping", "Pong", "Close", "ProtocolError", "Event", "unmask",
           "frame", "close_payload", "OP_CONTINUATION", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING",
           "OP_PONG", "NORMAL_CLOSURE", "PROTOCOL_ERROR", "INVALID_DATA", "MESSAGE_TOO_BIG", "NO_STATUS"]

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

NORMAL_CLOSURE = 1000
PROTOCOL_ERROR = 1002
NO_STATUS = 1005  # a close frame without a code (never sent in one)
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009

MAX_CONTROL = 125


@dataclass(slots=True)
class Text:
    """A complete text message (its bytes: the XMPP parser checks the UTF-8)."""
    data: bytes


@dataclass(slots=True)
class Binary:
    data: bytes


@dataclass(slots=True)
class Ping:
    payload: bytes


@dataclass(slots=True)
class Pong:
    payload: bytes


@dataclass(slots=True)
class Close:
    """The peer's close frame: ``code`` is :data:`NO_STATUS` when it had none."""
    code: int
    reason: str


@dataclass(slots=True)
class ProtocolError:
    """Fail the connection with ``code`` (RFC 6455 §7.1.7): 1002, 1007 or 1009."""
    code: int
    why: str


Event = Text | Binary | Ping | Pong | Close | ProtocolError


def unmask(mask: bytes, data: bytes) -> bytes:
    """``data`` XOR the 4-byte ``mask`` repeated: one big-integer XOR over the whole payload."""
    n = len(data)
    if not n:
        return data
    key = (mask * ((n + 3) >> 2))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def _valid_close_code(code: int) -> bool:
    """RFC 6455 §7.4: the codes a peer may send (1004–1006 and 1015 are reserved, never sent)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class FrameParser:
    """The frames of one client connection (see the module docstring)."""

    __slots__ = ("max_message_size", "_unmask", "_buf", "_parts", "_want", "_head", "_skip", "_message",
                 "_message_op", "_message_size", "_discarding", "done")

    def __init__(self, max_message_size: int, unmask: Callable[[bytes, bytes], bytes] = unmask) -> None:
        self.max_message_size = max_message_size
        self._unmask = unmask
        self._buf = b""  # the start of a frame whose header is not complete yet
        self._parts: list[bytes] | None = None  # the payload so far of a frame whose header was read
        self._want = 0  # payload bytes still to come for _parts
        self._head: tuple[bool, int, bytes] = (True, 0, b"")  # that frame's (fin, opcode, mask)
        self._skip = 0  # payload bytes of a refused (too big) frame still to drop
        self._message: list[bytes] | None = None  # the fragments so far of a fragmented message
        self._message_op = 0
        self._message_size = 0
        self._discarding = False  # the rest of a refused fragmented message is dropped
        self.done = False  # after a close frame or a protocol error: nothing more is parsed

    def feed(self, data: bytes) -> list[Event]:
        """The events of the frames that ``data`` completes."""
        events: list[Event] = []
        if self.done or not data:
            return events
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return events
            data = data[self._skip:]
            self._skip = 0
        if self._parts is not None:  # the payload of a frame already begun
            want = self._want
            if len(data) < want:
                self._parts.append(data)
                self._want = want - len(data)
                return events
            self._parts.append(data[:want])
            payload = b"".join(self._parts)
            self._parts = None
            self._want = 0
            fin, opcode, mask = self._head
            self._frame(fin, opcode, mask, payload, events)
            data = data[want:]
        elif self._buf:
            data = self._buf + data
            self._buf = b""
        pos = 0
        end = len(data)
        unmask_ = self._unmask
        while end - pos >= 2 and not self.done:
            b0 = data[pos]
            b1 = data[pos + 1]
            if b0 == 0x81 and b1 & 0x80 and self._message is None:  # most frames: a whole text message
                if b1 < 0xFE:
                    start = pos + 6
                    stop = start + b1 - 0x80
                elif b1 == 0xFE and end - pos >= 8:
                    start = pos + 8
                    stop = start + (data[pos + 2] << 8 | data[pos + 3])
                else:
                    start = stop = end + 1
                if stop <= end and stop - start <= self.max_message_size:  # all here, not too big
                    events.append(Text(unmask_(data[start - 4:start], data[start:stop])))
                    pos = stop
                    continue
            error = self._check_start(b0, b1)
            if error is not None:
                events.append(error)
                self.done = True
                return events
            length = b1 & 0x7F
            size = 6 if length < 126 else 8 if length == 126 else 14  # with the mask
            if end - pos < size:
                break  # the rest of the header is still to come
            if length == 126:
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
            fin = bool(b0 & 0x80)
            opcode = b0 & 0x0F
            start = pos + size
            stop = start + length
            if opcode == OP_CONTINUATION and self._discarding:  # the rest of a refused message
                self._discarding = not fin
                error = None
            else:
                error = self._check_length(opcode, length)
                if error is None:
                    if stop > end:  # the payload goes on in the next reads
                        self._parts = [data[start:]]
                        self._want = stop - end
                        self._head = (fin, opcode, data[start - 4:start])
                        return events
                    self._frame(fin, opcode, data[start - 4:start], data[start:stop], events)
                    pos = stop
                    continue
                events.append(error)
                if error.code != MESSAGE_TOO_BIG:
                    self.done = True
                    return events
                self._refuse(fin)  # and skip its payload: the peer's close may follow
            if stop > end:
                self._skip = stop - end
                return events
            pos = stop
        if pos < end and not self.done:
            self._buf = data[pos:]
        return events

    @staticmethod
    def _check_start(b0: int, b1: int) -> ProtocolError | None:
        """What is wrong with a frame, from its first two bytes."""
        if b0 & 0x70:
            return ProtocolError(PROTOCOL_ERROR, "RSV bits set (no extension was negotiated)")
        if not b1 & 0x80:
            return ProtocolError(PROTOCOL_ERROR, "a client's frame must be masked")
        opcode = b0 & 0x0F
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                return ProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            if not b0 & 0x80:
                return ProtocolError(PROTOCOL_ERROR, "a fragmented control frame")
            if b1 & 0x7F > MAX_CONTROL:
                return ProtocolError(PROTOCOL_ERROR, "a control frame over 125 bytes")
        elif opcode > OP_BINARY:
            return ProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        return None

    def _check_length(self, opcode: int, length: int) -> ProtocolError | None:
        """What is wrong with a data frame, from its whole header (the fragments before it)."""
        if opcode >= OP_CLOSE:
            return None  # _check_start saw its length
        if length >> 63:
            return ProtocolError(PROTOCOL_ERROR, "a 64-bit length with its top bit set")
        if opcode == OP_CONTINUATION:
            if self._message is None:
                return ProtocolError(PROTOCOL_ERROR, "a continuation frame with no message begun")
            length += self._message_size
        elif self._message is not None:
            return ProtocolError(PROTOCOL_ERROR, "a new message before the last one's final fragment")
        if length > self.max_message_size:
            return ProtocolError(MESSAGE_TOO_BIG, f"a message over {self.max_message_size} bytes")
        return None

    def _refuse(self, fin: bool) -> None:
        """A frame over the limit: forget its message, and drop the fragments still to come."""
        self._message = None
        self._message_size = 0
        self._discarding = not fin

    def _frame(self, fin: bool, opcode: int, mask: bytes, payload: bytes, events: list[Event]) -> None:
        """One complete frame whose header passed the checks."""
        payload = self._unmask(mask, payload)
        if opcode == OP_TEXT or opcode == OP_BINARY:
            if fin:
                events.append(Text(payload) if opcode == OP_TEXT else Binary(payload))
            else:
                self._message = [payload]
                self._message_op = opcode
                self._message_size = len(payload)
        elif opcode == OP_CONTINUATION:
            message = self._message
            assert message is not None  # _check_length
            message.append(payload)
            self._message_size += len(payload)
            if fin:
                data = b"".join(message)
                self._message = None
                self._message_size = 0
                events.append(Text(data) if self._message_op == OP_TEXT else Binary(data))
        elif opcode == OP_PING:
            events.append(Ping(payload))
        elif opcode == OP_PONG:
            events.append(Pong(payload))
        else:
            events.append(self._close(payload))
            self.done = True  # nothing comes after a close frame

    @staticmethod
    def _close(payload: bytes) -> Close | ProtocolError:
        if not payload:
            return Close(NO_STATUS, "")
        if len(payload) == 1:
            return ProtocolError(PROTOCOL_ERROR, "a close frame with a 1-byte payload")
        code = int.from_bytes(payload[:2], "big")
        if not _valid_close_code(code):
            return ProtocolError(PROTOCOL_ERROR, f"close code {code} may not be sent")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            return ProtocolError(INVALID_DATA, "a close reason that is not UTF-8")
        return Close(code, reason)


def frame(opcode: int, payload: bytes = b"") -> bytes:
    """A final, unmasked frame (RFC 6455 §5.2: a server never masks)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: the code, then a reason cut to fit a control frame."""
    if code == NO_STATUS:
        return b""
    text = reason.encode("utf-8")[:MAX_CONTROL - 2].decode("utf-8", "ignore")  # whole characters
    return code.to_bytes(2, "big") + text.encode("utf-8")
