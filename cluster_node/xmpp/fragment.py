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


def parse_stanza(raw: bytes, content_ns: str = ns.CLIENT, *, max_size: int = 10 * 1024 * 1024) -> Stanza:
    """The single top-level element in ``raw``; ``ValueError`` if there is not exactly one."""
    parser = StreamParser(max_stanza_size=max_size, content_ns=content_ns)
    try:
        events = parser.feed(_HEADERS[content_ns] + raw)
    except StreamError as e:
        raise ValueError(f"not a stanza: {e}") from None
    stanzas = [ev.stanza for ev in events if isinstance(ev, StanzaReceived)]
    if len(stanzas) != 1:
        raise ValueError(f"expected one stanza, found {len(stanzas)}")
    return stanzas[0]
