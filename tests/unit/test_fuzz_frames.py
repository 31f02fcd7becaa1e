"""Property-based fuzzing of the two length-prefixed frame codecs: the inter-region link
(gateway/link/frames.py) and the cluster link (cluster_node/cluster/frames.py).

Budget and reproducibility: the ``meridian`` hypothesis profile of tests/conftest.py.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import example, given, strategies as st

from cluster_node.cluster import frames as cf
from gateway.link import frames as gf

# -- strategies ----------------------------------------------------------------------------------


def bounded_text(limit: int, *, min_size: int = 1) -> st.SearchStrategy[str]:
    """Text (no lone surrogates: what the encoder is ever given) of at most ``limit`` UTF-8 bytes."""
    return st.text(st.characters(codec="utf-8"), min_size=min_size,
                   max_size=limit // 4).filter(lambda s: len(s.encode()) <= limit)


stanza_frames = st.builds(
    gf.StanzaFrame,
    seq=st.integers(0, 2**64 - 1),
    id=bounded_text(gf.MAX_ID),
    origin=bounded_text(gf.MAX_REGION),
    ttl=st.integers(1, gf.MAX_TTL),
    from_=st.none() | bounded_text(gf.MAX_JID, min_size=0),
    to=st.none() | bounded_text(gf.MAX_JID, min_size=0),
    data=st.binary(min_size=1, max_size=2048),
    meta=st.none() | bounded_text(gf.MAX_META, min_size=0),
)
finite = st.floats(allow_nan=False, allow_infinity=False)
link_frames: st.SearchStrategy[gf.Frame] = st.one_of(
    stanza_frames,
    st.builds(gf.Ack, st.integers(0, 2**64 - 1)),
    st.builds(gf.Hello, bounded_text(gf.MAX_REGION), bounded_text(gf.MAX_REGION), bounded_text(32)),
    st.builds(gf.Refuse, bounded_text(1000, min_size=0)),
    st.builds(gf.Ping, finite),
    st.builds(gf.Pong, finite),
)

# JSON as a peer may send it: lone surrogates ("\\ud800"), integers far beyond the float range.
json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(-10**400, 10**400) | finite
                | st.text())
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(), inner, max_size=3), max_leaves=6)
json_objects = st.dictionaries(st.text(), json_values, max_size=4)
# Bodies of the link's control frames: their own field names more often than not.
control_bodies = st.fixed_dictionaries(
    {}, optional={k: json_scalars for k in ("region", "gateway", "version", "reason", "t")}) | json_objects


def split_points(data: bytes) -> st.SearchStrategy[list[int]]:
    """Sorted cut positions inside ``data``."""
    return st.lists(st.integers(0, len(data)), max_size=12).map(sorted)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (empty pieces included: feeding b"" must be harmless)."""
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def drain(decoder: gf.FrameDecoder) -> list[gf.Frame]:
    """Every whole frame the decoder holds now."""
    out: list[gf.Frame] = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


def normalised(frame: gf.Frame) -> gf.Frame:
    """What a frame decodes to: REFUSE reasons travel cut to 1000 characters, times as floats."""
    if isinstance(frame, gf.Refuse):
        return gf.Refuse(frame.reason[:1000])
    if isinstance(frame, gf.Ping | gf.Pong):
        return type(frame)(float(frame.t))
    return frame


def raw_frame(kind: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


# -- the inter-region link -----------------------------------------------------------------------


@given(st.lists(link_frames, max_size=6), st.data())
def test_link_frames_round_trip_however_the_bytes_are_cut(frames: list[gf.Frame], data: st.DataObject) -> None:
    """encode → decode gives back the same frames, in order, whatever the chunking of the bytes."""
    wire = b"".join(gf.encode(f) for f in frames)
    decoder = gf.FrameDecoder()
    got: list[gf.Frame] = []
    for piece in chunks(wire, data.draw(split_points(wire))):
        decoder.feed(piece)
        got += drain(decoder)
    assert got == [normalised(f) for f in frames]
    assert decoder.next_frame() is None


@given(st.binary(max_size=600), st.data())
@example(raw_frame(gf.Kind.HELLO, b"[" * 4000), None)  # nested JSON: RecursionError, not a FrameError
@example(raw_frame(gf.Kind.PING, b'{"t":1' + b"0" * 400 + b"}"), None)  # int too big for a float
@example(raw_frame(gf.Kind.HELLO, b'{"region":"\\ud800","gateway":"g","version":"1.0"}'), None)  # lone surrogate
def test_link_decoder_raises_only_frame_error(data: bytes, draw: st.DataObject | None) -> None:
    """Arbitrary bytes, however cut, give frames or FrameError (the decoder then stays broken)."""
    decoder = gf.FrameDecoder(max_frame=4096 + 64)
    pieces = chunks(data, draw.draw(split_points(data))) if draw is not None else [data]
    try:
        for piece in pieces:
            decoder.feed(piece)
            for frame in drain(decoder):
                assert isinstance(frame, gf.Hello | gf.Refuse | gf.StanzaFrame | gf.Ack | gf.Ping | gf.Pong)
                if isinstance(frame, gf.Hello):
                    frame.region.encode()  # what a decoded frame carries is text the node can use
    except gf.FrameError:
        try:
            decoder.next_frame()
        except gf.FrameError:
            return
        raise AssertionError("the decoder went on after a FrameError") from None


@given(st.sampled_from(list(gf.Kind)), control_bodies)
@example(gf.Kind.PONG, {"t": 10**400})  # float(t): OverflowError, not a FrameError
@example(gf.Kind.HELLO, {"region": "\ud800", "gateway": "g", "version": "1.0"})  # .encode(): UnicodeEncodeError
def test_link_control_bodies_raise_only_frame_error(kind: gf.Kind, body: dict[str, Any]) -> None:
    """Any JSON object as the body of any frame kind decodes or raises FrameError."""
    decoder = gf.FrameDecoder()
    decoder.feed(raw_frame(kind, json.dumps(body).encode()))
    try:
        decoder.next_frame()
    except gf.FrameError:
        pass


@given(stanza_frames, st.data())
def test_link_truncated_frames_wait_and_corrupted_ones_fail_cleanly(frame: gf.StanzaFrame,
                                                                    data: st.DataObject) -> None:
    """A frame cut short is never decoded (the decoder waits); one whose length field shrank so
    that its body is cut raises FrameError or decodes a shorter stanza — never another error."""
    wire = gf.encode(frame)
    cut = data.draw(st.integers(0, len(wire) - 1))
    decoder = gf.FrameDecoder()
    decoder.feed(wire[:cut])
    assert decoder.next_frame() is None
    body_len = data.draw(st.integers(1, len(wire) - 4))
    decoder = gf.FrameDecoder()
    decoder.feed(struct.pack(">I", body_len) + wire[4:4 + body_len])
    try:
        decoder.next_frame()
    except gf.FrameError:
        pass


# -- the cluster link ----------------------------------------------------------------------------

cluster_frames = st.one_of(
    st.tuples(st.sampled_from([k for k in cf.Kind if k is not cf.Kind.STANZA]), json_objects),
    st.tuples(st.just(cf.Kind.STANZA), st.tuples(json_objects, st.binary(max_size=1024))),
)


@given(st.lists(cluster_frames, max_size=4), st.data())
def test_cluster_frames_round_trip_however_the_bytes_are_cut(
        frames: list[tuple[cf.Kind, Any]], data: st.DataObject) -> None:
    """encode → FrameDecoder → json()/decode_stanza gives back each frame, whatever the chunking."""
    wire = b"".join(cf.encode_stanza(*body) if kind is cf.Kind.STANZA else cf.encode(kind, body)
                    for kind, body in frames)
    decoder = cf.FrameDecoder()
    got: list[cf.Frame] = []
    for piece in chunks(wire, data.draw(split_points(wire))):
        got += decoder.feed(piece)
    assert [f.kind for f in got] == [k for k, _ in frames]
    for frame, (kind, body) in zip(got, frames, strict=True):
        if kind is cf.Kind.STANZA:
            assert cf.decode_stanza(frame) == body
        else:
            assert frame.json() == body


@given(st.binary(max_size=600), st.data())
@example(raw_frame(cf.Kind.HELLO, b"[" * 4000), None)  # nested JSON: RecursionError, not a FrameError
@example(raw_frame(cf.Kind.STANZA, struct.pack(">I", 4000) + b"[" * 4000 + b"<message/>"), None)
def test_cluster_decoder_raises_only_frame_error(data: bytes, draw: st.DataObject | None) -> None:
    """Arbitrary bytes, however cut, give frames whose bodies decode or raise FrameError — the one
    error the cluster link turns into a refusal besides its own field checks."""
    decoder = cf.FrameDecoder(max_frame=8192)
    pieces = chunks(data, draw.draw(split_points(data))) if draw is not None else [data]
    try:
        for piece in pieces:
            for frame in decoder.feed(piece):
                try:
                    if frame.kind is cf.Kind.STANZA:
                        cf.decode_stanza(frame)
                    else:
                        frame.json()
                except cf.FrameError:
                    pass
    except cf.FrameError:
        pass


@given(st.sampled_from(list(cf.Kind)), json_objects, st.data())
def test_cluster_truncated_frames_are_never_decoded(kind: cf.Kind, body: dict[str, Any], data: st.DataObject) -> None:
    """A frame cut anywhere short of its end yields nothing until the rest arrives, then itself."""
    wire = cf.encode(kind, body)
    cut = data.draw(st.integers(0, len(wire) - 1))
    decoder = cf.FrameDecoder()
    assert decoder.feed(wire[:cut]) == []
    assert decoder.feed(wire[cut:]) == [cf.Frame(kind, wire[5:])]
