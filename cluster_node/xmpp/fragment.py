"""Parse one stored or relayed stanza (bytes as sent on a stream) back into a :class:`Stanza`."""

from __future__ import annotations

from . import ns
from .errors import StreamError
from .parser import StanzaReceived, StreamParser
from .stanza import Stanza

__all__ = ["parse_stanza"]

_HEADERS = {
    ns.CLIENT: f"<stream:stream xmlns='{ns.CLIENT}' xmlns:stream='{ns.STREAM}'>".encode(),
    ns.SERVER: f"<stream:stream xmlns='{ns.SERVER}' xmlns:stream='{ns.STREAM}'>".encode(),
}


class _OpenStream:
    """A parser kept inside an open stream, so relayed stanzas skip the header parse and the
    parser's set-up (a third of the cost of a fresh parser per stanza).  Any surprise — an error,
    zero or several stanzas, bytes left over — discards it; the next call starts a fresh one."""

    def __init__(self, content_ns: str, max_size: int) -> None:
        self.parser = StreamParser(max_stanza_size=max_size, content_ns=content_ns)
        self.parser.feed(_HEADERS[content_ns])


_open: dict[tuple[str, int], _OpenStream] = {}  # a cache of parsers, one per kind, reused by each call


def parse_stanza(raw: bytes, content_ns: str = ns.CLIENT, *, max_size: int = 10 * 1024 * 1024) -> Stanza:
    """The single top-level element in ``raw``; ``ValueError`` if there is not exactly one."""
    key = (content_ns, max_size)
    stream = _open.pop(key, None) or _OpenStream(content_ns, max_size)
    try:
        events = stream.parser.feed(raw)
    except StreamError as e:
        raise ValueError(f"not a stanza: {e}") from None
    stanzas = [ev.stanza for ev in events if isinstance(ev, StanzaReceived)]
    if len(stanzas) != 1 or len(events) != 1:
        raise ValueError(f"expected one stanza, found {len(stanzas)}")
    if not stream.parser.between_stanzas:
        raise ValueError("trailing bytes after the stanza")
    _open[key] = stream  # only a parser left cleanly between two stanzas is reused
    return stanzas[0]
