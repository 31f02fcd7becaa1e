"""The XML stream core shared by the c2s, component and S2S streams (RFC 6120 §4), sans-IO.

:class:`XmlStream` is what a stream is whatever it carries: the parser and its limits, the
parsed input waiting to be handled, the output buffer (:meth:`~XmlStream.data_to_send`), the
events for the adapter, whether our stream header went out, and the ways our side ends a stream —
with a stream error, cleanly, or silently when the connection is already gone — and restarts it
(RFC 6120 §4.3.3).  Each protocol (:mod:`.c2s`, :mod:`.component`, ``gateway.s2s.stream``) is a
subclass that says what its header carries (:meth:`~XmlStream._header_attrs`), what to do with
the peer's header, each top-level element and the peer's close (``_on_header``, ``_on_element``,
``_on_close``), how it fails (``_fail``: which event it emits), and when input must wait for the
adapter (``_paused``).  No sockets, no asyncio, no clock.

What goes on the wire *around* the elements is a :class:`Framing` strategy: how our side opens
and closes the stream, how a stream error is wrapped, and which parser reads the peer's bytes.
:class:`TcpFraming` (:data:`TCP`) is RFC 6120 over TCP and TLS: one long XML document,
``<?xml version='1.0'?><stream:stream xmlns=… xmlns:stream=… …>`` … ``</stream:stream>``, parsed
incrementally by :class:`~.parser.StreamParser`.

WebSocket (RFC 7395) is :class:`~.websocket.WebSocketFraming` (:data:`~.websocket.WEBSOCKET`), and
the protocols do not change: ``<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' …/>`` with the same
header attributes, ``<close/>``, a ``<stream:error/>`` declaring its own ``xmlns:stream``, and a
parser fed one whole message at a time whose ``<open/>`` is the stream header.  The output buffer
still hands out complete elements — joined (:meth:`~XmlStream.data_to_send`), or in the pieces they
were written in (:meth:`~XmlStream.chunks_to_send`); the WebSocket adapter
(``cluster_node/net/websocket_server.py``) cuts each piece into one message per element, each
declaring its namespaces, with :meth:`~.websocket.WebSocketFraming.messages`, and passes
``framing=`` to :class:`~.c2s.C2SStream` (c2s is the only protocol RFC 7395 covers).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from . import ns
from .errors import StreamError
from .parser import Event, StreamClosed, StreamOpened, StreamParser
from .stanza import Stanza

__all__ = ["XmlStream", "Framing", "TcpFraming", "TCP", "Parser", "Attr"]

E = TypeVar("E")

# A stream header attribute: its name and its value as an XML attribute literal, quotes included,
# so each protocol keeps the exact bytes it has always written.
Attr = tuple[str, str]


class Parser(Protocol):
    """What the core needs of the parser a framing makes."""

    def feed(self, data: bytes) -> list[Event]:
        """Parse bytes from the peer; a :class:`StreamError` for hostile or broken input."""
        ...

    @property
    def bytes_buffered(self) -> int:
        """Bytes received but not yet part of an event (for c2s's STARTTLS injection check)."""
        ...

    def park(self) -> bool:
        """Give up the memory an idle stream's parsing holds until the next :meth:`feed` (True),
        or not at this point (False)."""
        ...

    def close(self) -> None:
        """No more input (the stream restarted or ended): free what parsing holds now."""
        ...


class Framing(Protocol):
    """How a stream is framed on its transport (see the module docstring)."""

    def parser(self, content_ns: str, *, max_stanza_size: int, max_depth: int) -> Parser:
        """A fresh parser for the peer's bytes, elements without a namespace in ``content_ns``."""
        ...

    def opening(self, content_ns: str, attrs: Sequence[Attr], prefixes: Sequence[tuple[str, str]] = ()) -> bytes:
        """Our stream header: default namespace ``content_ns``, ``attrs`` in order, and the
        namespace ``prefixes`` (prefix, URI) the stream's elements use besides ``stream:``."""
        ...

    def closing(self) -> bytes:
        """The end of our stream."""
        ...

    def error(self, error: StreamError) -> bytes:
        """``error`` as the stream error element, sent just before :meth:`closing`."""
        ...


class TcpFraming:
    """RFC 6120 over TCP (and TLS): the whole stream is one XML document."""

    def parser(self, content_ns: str, *, max_stanza_size: int, max_depth: int) -> Parser:
        return StreamParser(max_stanza_size=max_stanza_size, max_depth=max_depth, content_ns=content_ns)

    def opening(self, content_ns: str, attrs: Sequence[Attr], prefixes: Sequence[tuple[str, str]] = ()) -> bytes:
        decls = "".join(f" xmlns:{prefix}='{uri}'" for prefix, uri in prefixes)
        rest = "".join(f" {name}={value}" for name, value in attrs)
        return (f"<?xml version='1.0'?><stream:stream xmlns='{content_ns}' xmlns:stream='{ns.STREAM}'"
                f"{decls}{rest}>").encode()

    def closing(self) -> bytes:
        return b"</stream:stream>"

    def error(self, error: StreamError) -> bytes:
        return error.to_xml()  # <stream:error>, its prefix bound by our header


TCP = TcpFraming()


class XmlStream(Generic[E]):
    """One XML stream's common machinery; ``E`` is the protocol's event type.  A subclass feeds
    bytes with :meth:`_receive`, writes with :meth:`_write`, emits into ``_events`` and returns
    :meth:`_take_events` to its adapter."""

    def __init__(self, content_ns: str, *, framing: Framing = TCP, prefixes: Sequence[tuple[str, str]] = (),
                 max_stanza_size: int = 262_144, max_depth: int = 32) -> None:
        self.framing = framing
        self.content_ns = content_ns
        self.prefixes = tuple(prefixes)
        self._max_stanza_size = max_stanza_size
        self._max_depth = max_depth
        self.parser = self._new_parser()
        self.header_sent = False  # our header of the current stream
        self.closed = False  # our side is done: nothing more is written or handled
        self._input: deque[Event] = deque()  # parsed, not handled yet (the protocol may be paused)
        self._out: list[bytes] = []
        self._events: list[E] = []

    def data_to_send(self) -> bytes:
        """The bytes to write to the connection, each returned once."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def chunks_to_send(self) -> list[bytes]:
        """:meth:`data_to_send` as the pieces it was written in — each one or more whole elements
        (one stanza, mostly): a framing with one message per element cuts them without a search."""
        out, self._out = self._out, []
        return out

    # -- for the protocols ------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Queue bytes for the peer; nothing is written once the stream is closed."""
        if not self.closed:
            self._out.append(data)

    def _take_events(self) -> list[E]:
        """The events emitted since the last call, each returned once."""
        events, self._events = self._events, []
        return events

    def _send_header(self) -> None:
        """Write our stream header, with what :meth:`_header_attrs` says now."""
        self._write(self.framing.opening(self.content_ns, self._header_attrs(), self.prefixes))
        self.header_sent = True

    def _close(self, error: StreamError | None = None, *, send_close: bool = True, open_first: bool = True) -> bool:
        """End the stream from our side, once; True if this call ended it.  With ``error``: the
        stream error, then the closing.  Without: the closing, unless ``send_close`` is False (the
        connection is gone, or there is nothing to say).  Our header goes first if it has not
        been sent (RFC 6120 §4.9.1.2) — for a clean close only if ``open_first``.  Parsed input
        not handled yet is dropped."""
        if self.closed:
            return False
        if error is not None or send_close:
            if not self.header_sent and (open_first or error is not None):
                self._send_header()
            if error is not None:
                self._write(self.framing.error(error))
            self._write(self.framing.closing())
        self.closed = True
        self._input.clear()
        self.parser.close()  # nothing more is handled: free it now, not at a collector pass
        return True

    def _restart(self) -> None:
        """A new stream on the same connection (RFC 6120 §4.3.3): a fresh parser for the peer's
        new header.  What else restarts (pending input, our header, the stream id) is the
        protocol's to say."""
        self.parser.close()
        self.parser = self._new_parser()

    def _receive(self, data: bytes) -> None:
        """Parse bytes from the peer and handle what may be handled now; input the parser
        refuses fails the stream with its condition."""
        try:
            self._input.extend(self.parser.feed(data))
        except StreamError as e:
            self._fail(e)
            return
        self._process()

    def _process(self) -> None:
        """Hand parsed input to the protocol in order, until none is left, the stream is closed
        or the protocol waits for its adapter (:meth:`_paused`).  A :class:`StreamError` raised
        by a handler fails the stream."""
        while self._input and not self.closed and not self._paused():
            event = self._input.popleft()
            try:
                if isinstance(event, StreamOpened):
                    self._on_header(event)
                elif isinstance(event, StreamClosed):
                    self._on_close()
                else:
                    self._on_element(event.stanza)
            except StreamError as e:
                self._fail(e)

    def _new_parser(self) -> Parser:
        return self.framing.parser(self.content_ns, max_stanza_size=self._max_stanza_size,
                                   max_depth=self._max_depth)

    # -- what each protocol says ------------------------------------------------------------------

    def _header_attrs(self) -> Sequence[Attr]:
        """The attributes of our stream header, asked once per header written (the place to
        pick a new stream id)."""
        raise NotImplementedError

    def _paused(self) -> bool:
        """True while input must wait for the adapter (a TLS upgrade, a lookup, a route)."""
        return False

    def _on_header(self, header: StreamOpened) -> None:
        raise NotImplementedError

    def _on_element(self, stanza: Stanza) -> None:
        raise NotImplementedError

    def _on_close(self) -> None:
        """The peer sent the end of its stream."""
        raise NotImplementedError

    def _fail(self, error: StreamError) -> None:
        """Close with ``error`` (usually ``self._close(error)``) and emit the protocol's event."""
        raise NotImplementedError
