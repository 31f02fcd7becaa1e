"""A run of stanzas for recipients of another region, in as few relayed frames as fit (sans-IO).

A room's output crosses the link as *runs* (:meth:`~cluster_node.core.router.Router.route_run`):
one stanza for many recipients (a message to the room's occupants in that region), or several
stanzas for one recipient (what a joiner gets: every occupant's presence, its own, the history,
the subject) — each recipient to get a copy of every stanza, in order.  Before, a join crossed
the link once per occupant, and a few joins at once into a big room overflowed the link's queue.

A frame's data is a JSON head followed by the stanzas' bytes; its meta says where the head ends
(``{"many": <bytes>}``).  The head is the recipients' full JIDs — a list, when one stanza follows
(the format of one-stanza frames from before runs) — or ``{"to": [...], "sizes": [...]}`` when
several follow, back to back, of those byte lengths.  The head travels in the data, not the meta,
because meta is bounded (``MAX_META``) and a room may have thousands of occupants in a region.
A run longer than :data:`CHUNK_BYTES` of recipients or of stanzas is split over several frames
(:func:`frames`) that go out in order on one lane, so each recipient still gets its copies in order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

from cluster_node.clustering import split

__all__ = ["CHUNK_BYTES", "MANY", "Frame", "chunks", "decode", "encode", "frames"]

MANY = "many"  # the meta key
CHUNK_BYTES = 64 * 1024  # recipients' JIDs, and stanzas' bytes, per frame (a link frame holds at most about 1 MB)

T = TypeVar("T")


class Frame(NamedTuple):
    """One frame's share of a run: ``recipients`` get ``stanzas``, the run's from index ``first``."""

    recipients: list[str]
    first: int
    stanzas: list[bytes]


def chunks(items: list[T], size: Callable[[T], int], limit: int = CHUNK_BYTES) -> Iterator[list[T]]:
    """``items`` in order, in lists of at most ``limit`` bytes by ``size`` (at least one item
    each: one larger than ``limit`` goes alone)."""
    chunk: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        if chunk and total + n > limit:
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += n
    if chunk:
        yield chunk


def _jid_size(jid: str) -> int:
    return len(jid.encode()) + 3  # quotes and comma (a JID with quotes or backslashes takes a little more)


def _stanza_size(stanza: bytes) -> int:
    return len(stanza) + 8  # its size in the head


def frames(recipients: list[str], stanzas: list[bytes], limit: int = CHUNK_BYTES) -> Iterator[Frame]:
    """The frames of a run, in the order to send them: the stanzas in chunks of about ``limit``
    bytes, each chunk to the recipients in chunks of about ``limit`` bytes of JIDs.  A recipient's
    copies follow each other in the run's order; a run is either long in stanzas or in
    recipients, so this is one frame per chunk of the long side."""
    first = 0
    for part in chunks(stanzas, _stanza_size, limit):
        for group in chunks(recipients, _jid_size, limit):
            yield Frame(group, first, part)
        first += len(part)


def encode(recipients: list[str], stanzas: list[bytes]) -> tuple[bytes, dict[str, Any]]:
    """The frame's data and meta for ``stanzas`` to ``recipients``."""
    head: Any = recipients if len(stanzas) == 1 else {"to": recipients, "sizes": [len(s) for s in stanzas]}
    encoded = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
    return encoded + b"".join(stanzas), {MANY: len(encoded)}


def decode(meta: dict[str, Any], data: bytes) -> tuple[list[str], list[bytes]]:
    """The recipients and the stanzas' bytes, in order; ValueError when the frame is not one of
    ours."""
    n = meta.get(MANY)
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n < len(data):
        raise ValueError(f"bad head length {n!r}")
    try:
        head = json.loads(data[:n])
    except RecursionError:  # nesting too deep for the parser: not a head of ours either
        raise ValueError("the head nests too deep") from None
    body = data[n:]
    if isinstance(head, dict):
        recipients, stanzas = head.get("to"), split(body, head.get("sizes"))
    else:
        recipients, stanzas = head, [body]
    if not isinstance(recipients, list) or not recipients or not all(isinstance(r, str) for r in recipients):
        raise ValueError("the recipient list is not a list of JIDs")
    return recipients, stanzas
