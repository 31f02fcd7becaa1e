"""The sans-IO RFC 6455 frame parser (cluster_node.xmpp.ws_frames): what a client may send a server."""

from __future__ import annotations

import os

import pytest

from cluster_node.xmpp.ws_frames import (
    MESSAGE_TOO_BIG,
    NO_STATUS,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    PROTOCOL_ERROR,
    Binary,
    Close,
    Event,
    FrameParser,
    Ping,
    Pong,
    ProtocolError,
    Text,
    close_payload,
    frame,
    unmask,
)

LIMIT = 1000


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes | None = b"\x12\x34\x56\x78",
                 rsv: int = 0, length: int | None = None) -> bytes:
    """A client's frame: masked with ``mask`` (None: unmasked), the length ``length`` if given."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    bit = 0x80 if mask is not None else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def parse(*reads: bytes, limit: int = LIMIT) -> list[Event]:
    parser = FrameParser(limit)
    return [event for data in reads for event in parser.feed(data)]


# -- masking ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 7, 8, 9, 125, 126, 1000, 65537])
def test_unmask_is_the_xor_with_the_repeated_key(n: int) -> None:
    data, mask = os.urandom(n), os.urandom(4)
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert unmask(mask, data) == expected
    assert unmask(mask, expected) == data


def test_leading_zero_bytes_survive_unmasking() -> None:
    assert unmask(b"\x00\x00\x00\x00", b"\x00\x00a") == b"\x00\x00a"
    assert unmask(b"abcd", b"abcd") == b"\x00\x00\x00\x00"


def test_a_text_frame_is_unmasked() -> None:
    assert parse(client_frame(OP_TEXT, b"<presence/>")) == [Text(b"<presence/>")]


def test_an_injected_unmask_is_used() -> None:
    calls = []

    def spy(mask: bytes, data: bytes) -> bytes:
        calls.append(mask)
        return unmask(mask, data)

    parser = FrameParser(LIMIT, unmask=spy)
    assert parser.feed(client_frame(OP_TEXT, b"hi", mask=b"abcd")) == [Text(b"hi")]
    assert calls == [b"abcd"]


def test_an_unmasked_frame_is_a_protocol_error_from_its_first_two_bytes() -> None:
    parser = FrameParser(LIMIT)
    [error] = parser.feed(client_frame(OP_TEXT, b"hello", mask=None)[:2])
    assert isinstance(error, ProtocolError) and error.code == PROTOCOL_ERROR
    assert parser.done
    assert parser.feed(client_frame(OP_TEXT, b"more")) == []  # nothing after a protocol error


# -- lengths, several frames per read, frames cut across reads ----------------------------------------


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536, 70000])
def test_the_three_length_encodings(n: int) -> None:
    payload = os.urandom(n)
    assert parse(client_frame(OP_BINARY, payload), limit=100_000) == [Binary(payload)]


def test_several_frames_in_one_read() -> None:
    data = b"".join(client_frame(OP_TEXT, f"<m{i}/>".encode()) for i in range(5)) + client_frame(OP_PING, b"p")
    assert parse(data) == [*(Text(f"<m{i}/>".encode()) for i in range(5)), Ping(b"p")]


@pytest.mark.parametrize("n", [10, 200, 70_000])
def test_every_cut_of_a_stream_of_frames_gives_the_same_events(n: int) -> None:
    payloads = [os.urandom(n), b"<a/>", os.urandom(3)]
    data = b"".join(client_frame(OP_BINARY, p) for p in payloads)
    expected = [Binary(p) for p in payloads]
    cuts = range(1, len(data)) if len(data) < 400 else [1, 2, 3, 5, 9, 13, 14, 15, 100, n, n + 7, len(data) - 1]
    for cut in cuts:
        assert parse(data[:cut], data[cut:], limit=100_000) == expected, cut


def test_one_byte_at_a_time() -> None:
    data = client_frame(OP_TEXT, b"x" * 300) + client_frame(OP_PING) + client_frame(OP_TEXT, b"y")
    parser = FrameParser(LIMIT)
    events = [e for i in range(len(data)) for e in parser.feed(data[i:i + 1])]
    assert events == [Text(b"x" * 300), Ping(b""), Text(b"y")]


def test_a_large_payload_over_many_reads() -> None:
    payload = os.urandom(200_000)
    data = client_frame(OP_TEXT, payload)
    parser = FrameParser(300_000)
    events: list[Event] = []
    for i in range(0, len(data), 16_384):
        events += parser.feed(data[i:i + 16_384])
    assert events == [Text(payload)]


def test_empty_reads_are_nothing() -> None:
    parser = FrameParser(LIMIT)
    assert parser.feed(b"") == []
    assert parser.feed(client_frame(OP_TEXT, b"a")) == [Text(b"a")]


# -- fragments ------------------------------------------------------------------------------------------


def test_fragments_are_reassembled_with_control_frames_between() -> None:
    data = (client_frame(OP_TEXT, b"<message>", fin=False, mask=b"aaaa")
            + client_frame(OP_PING, b"in between")
            + client_frame(OP_CONTINUATION, b"<body>hi</body>", fin=False, mask=b"bcde")
            + client_frame(OP_CONTINUATION, b"</message>", mask=b"\x00\xff\x00\xff"))
    expected = [Ping(b"in between"), Text(b"<message><body>hi</body></message>")]
    assert parse(data) == expected
    for cut in range(1, len(data)):
        assert parse(data[:cut], data[cut:]) == expected, cut


def test_a_fragmented_binary_message() -> None:
    data = client_frame(OP_BINARY, b"ab", fin=False) + client_frame(OP_CONTINUATION, b"cd")
    assert parse(data) == [Binary(b"abcd")]


def test_empty_fragments() -> None:
    data = (client_frame(OP_TEXT, b"", fin=False) + client_frame(OP_CONTINUATION, b"x", fin=False)
            + client_frame(OP_CONTINUATION, b""))
    assert parse(data) == [Text(b"x")]


@pytest.mark.parametrize("data", [
    client_frame(OP_CONTINUATION, b"x"),  # nothing to continue
    client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"),  # a new message mid-message
    client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_BINARY, b"b"),
], ids=["continuation-first", "text-mid-message", "binary-mid-message"])
def test_fragments_out_of_order_are_a_protocol_error(data: bytes) -> None:
    [error] = parse(data)
    assert isinstance(error, ProtocolError) and error.code == PROTOCOL_ERROR


# -- control frames -------------------------------------------------------------------------------------


def test_ping_and_pong() -> None:
    assert parse(client_frame(OP_PING, b"x" * 125), client_frame(OP_PONG, b"y")) == [Ping(b"x" * 125), Pong(b"y")]


@pytest.mark.parametrize("data", [
    client_frame(OP_PING, b"x" * 126),
    client_frame(OP_PING, b"x", fin=False),
    client_frame(OP_CLOSE, b"\x03\xe8" + b"x" * 124),
    client_frame(0x3, b"x"),  # reserved data opcodes
    client_frame(0x7, b"x"),
    client_frame(0xB, b"x"),  # reserved control opcodes
    client_frame(0xF, b"x"),
    client_frame(OP_TEXT, b"x", rsv=1),
    client_frame(OP_TEXT, b"x", rsv=4),
    client_frame(OP_TEXT, b"", length=1 << 63),
], ids=["ping-126", "ping-fragmented", "close-126", "op3", "op7", "opB", "opF", "rsv3", "rsv1", "top-bit"])
def test_bad_frames_are_protocol_errors(data: bytes) -> None:
    parser = FrameParser(LIMIT)
    [error] = parser.feed(data[:14])  # from the header
    assert isinstance(error, ProtocolError) and error.code == PROTOCOL_ERROR, error
    assert parser.done


# -- close ----------------------------------------------------------------------------------------------


def test_a_close_frame_with_a_code_and_a_reason() -> None:
    parser = FrameParser(LIMIT)
    events = parser.feed(client_frame(OP_CLOSE, close_payload(1001, "going away – bye")) + client_frame(OP_TEXT, b"x"))
    assert events == [Close(1001, "going away – bye")]  # nothing after the close frame
    assert parser.done


def test_an_empty_close_frame_has_no_status() -> None:
    assert parse(client_frame(OP_CLOSE)) == [Close(NO_STATUS, "")]


@pytest.mark.parametrize("payload,code", [
    (b"\x03", PROTOCOL_ERROR),  # one byte: half a code
    ((999).to_bytes(2, "big"), PROTOCOL_ERROR),
    ((1004).to_bytes(2, "big"), PROTOCOL_ERROR),
    ((1005).to_bytes(2, "big"), PROTOCOL_ERROR),
    ((1006).to_bytes(2, "big"), PROTOCOL_ERROR),
    ((1015).to_bytes(2, "big"), PROTOCOL_ERROR),
    ((2000).to_bytes(2, "big"), PROTOCOL_ERROR),
    ((5000).to_bytes(2, "big"), PROTOCOL_ERROR),
    ((1000).to_bytes(2, "big") + b"\xff\xfe", 1007),  # the reason is not UTF-8
])
def test_bad_close_frames(payload: bytes, code: int) -> None:
    [error] = parse(client_frame(OP_CLOSE, payload))
    assert isinstance(error, ProtocolError) and error.code == code


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 3000, 4999])
def test_good_close_codes(code: int) -> None:
    assert parse(client_frame(OP_CLOSE, close_payload(code))) == [Close(code, "")]


def test_close_payload_cuts_the_reason_on_a_character() -> None:
    payload = close_payload(1000, "é" * 100)
    assert len(payload) <= 125
    assert payload[2:].decode("utf-8") == "é" * 61
    assert close_payload(NO_STATUS) == b""


# -- the size limit -------------------------------------------------------------------------------------


def test_a_message_at_the_limit_passes() -> None:
    assert parse(client_frame(OP_TEXT, b"x" * LIMIT)) == [Text(b"x" * LIMIT)]


def test_a_frame_over_the_limit_is_refused_from_its_header_and_skipped() -> None:
    parser = FrameParser(LIMIT)
    data = client_frame(OP_TEXT, b"x" * 10_000)
    [error] = parser.feed(data[:20])
    assert isinstance(error, ProtocolError) and error.code == MESSAGE_TOO_BIG
    assert not parser.done  # its payload is skipped, then the peer's close frame read
    assert parser.feed(data[20:5000]) == []
    assert parser.feed(data[5000:] + client_frame(OP_TEXT, b"dropped?") + client_frame(OP_CLOSE, close_payload(1000))) \
        == [Text(b"dropped?"), Close(1000, "")]


def test_a_huge_declared_length_is_refused_without_waiting_for_it() -> None:
    [error] = parse(client_frame(OP_BINARY, b"", length=10 * 1024 * 1024))
    assert isinstance(error, ProtocolError) and error.code == MESSAGE_TOO_BIG


def test_fragments_over_the_limit_together_are_refused_and_the_rest_dropped() -> None:
    data = (client_frame(OP_TEXT, b"a" * 600, fin=False) + client_frame(OP_CONTINUATION, b"b" * 600, fin=False)
            + client_frame(OP_CONTINUATION, b"c" * 10) + client_frame(OP_TEXT, b"next"))
    events = parse(data)
    assert len(events) == 2 and isinstance(events[0], ProtocolError) and events[0].code == MESSAGE_TOO_BIG
    assert events[1] == Text(b"next")
    for cut in (1, 100, 610, 700, 1215, len(data) - 3):
        assert parse(data[:cut], data[cut:]) == events, cut


# -- what the server writes -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536])
def test_server_frames_are_final_and_unmasked(n: int) -> None:
    payload = os.urandom(n)
    data = frame(OP_TEXT, payload)
    assert data[0] == 0x81 and not data[1] & 0x80
    assert data.endswith(payload) and len(data) - n == (2 if n < 126 else 4 if n < 65536 else 10)
