"""One stanza for many recipients of a region, as one relayed frame (sans-IO).

A room's message to its occupants in another region crosses the link once, not once per
occupant: the frame's data is the recipients' full JIDs (a JSON list) followed by the stanza's
bytes, and its meta says where the list ends (``{"many": <bytes>}``).  The receiving gateway
expands it into one delivery per recipient.  The list travels in the data, not the meta, because
meta is bounded (``MAX_META``) and a room may have thousands of occupants in a region; lists
longer than :data:`CHUNK_BYTES` are split over several frames.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

__all__ = ["CHUNK_BYTES", "MANY", "chunks", "decode", "encode"]

MANY = "many"  # the meta key
CHUNK_BYTES = 64 * 1024  # recipients' JIDs per frame (a link frame holds at most about 1 MB)


def chunks(recipients: list[str], limit: int = CHUNK_BYTES) -> Iterator[list[str]]:
    """``recipients`` in order, in lists of at most about ``limit`` bytes once encoded (at least
    one JID each; a JID with quotes or backslashes takes a little more)."""
    chunk: list[str] = []
    size = 0
    for r in recipients:
        n = len(r.encode()) + 3  # quotes and comma
        if chunk and size + n > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(r)
        size += n
    if chunk:
        yield chunk


def encode(recipients: list[str], stanza: bytes) -> tuple[bytes, dict[str, Any]]:
    """The frame's data and meta for ``stanza`` to ``recipients``."""
    head = json.dumps(recipients, separators=(",", ":"), ensure_ascii=False).encode()
    return head + stanza, {MANY: len(head)}


def decode(meta: dict[str, Any], data: bytes) -> tuple[list[str], bytes]:
    """The recipients and the stanza's bytes; ValueError when the frame is not one of ours."""
    n = meta.get(MANY)
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n < len(data):
        raise ValueError(f"bad recipient list length {n!r}")
    try:
        recipients = json.loads(data[:n])
    except RecursionError:  # nesting too deep for the parser: not a list of JIDs either
        raise ValueError("the recipient list nests too deep") from None
    if not isinstance(recipients, list) or not recipients or not all(isinstance(r, str) for r in recipients):
        raise ValueError("the recipient list is not a list of JIDs")
    return recipients, data[n:]
