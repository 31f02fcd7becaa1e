"""A fault-injecting TCP proxy for integration tests: forward, partition, heal.

It runs its own asyncio loop in a background thread, so a test that blocks (``subprocess.run``,
``time.sleep``) or runs its own loop never stalls the traffic it relays.  Methods are called
from the test's thread.

Partition modes:

``blackhole``
    Nothing crosses, nothing is closed: the proxy stops reading both sides of every connection
    (bytes already in flight wait in the kernel's buffers, as they would in a real network's
    retransmissions), and new connections are accepted but not connected upstream.  The peers
    only notice through their own timeouts.  On heal, everything still open resumes, in order;
    connections held since the partition are connected upstream then, with what the client sent.
``drop``
    Every connection is reset (RST on both sides) and new ones are reset as soon as accepted.
``stale``
    The connections open now go silent as in ``blackhole``, but new ones pass: a dead flow (a NAT
    or stateful firewall that lost its state, a path that broke) while the hosts can still reach
    each other.  Healing lets the silent connections resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["FaultProxy"]

T = TypeVar("T")


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST, not FIN: what a dropped connection looks like to the peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Pair:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.flowing = asyncio.Event()  # cleared: this connection is partitioned
        self.flowing.set()

    def reset(self) -> None:
        for task in self.tasks:
            task.cancel()
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = port
        self.mode: str | None = None  # None (forwarding), "blackhole", "drop", "stale"
        self.accepted = 0  # connections accepted, for the tests' curiosity
        self.reset_count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._pairs: set[_Pair] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- control, from the test's thread -----------------------------------------------------------

    def start(self) -> FaultProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"proxy->{self.target[1]}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise TimeoutError("proxy did not start")
        return self

    def partition(self, mode: str = "blackhole") -> None:
        if mode not in ("blackhole", "drop", "stale"):
            raise ValueError(f"unknown partition mode {mode!r}")
        self._call(self._partition(mode))

    def heal(self) -> None:
        self._call(self._heal())

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None, "proxy not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- inside the proxy's loop -------------------------------------------------------------------

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            pair.reset()
        self._pairs.clear()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _partition(self, mode: str) -> None:
        assert self._flowing is not None
        self.mode = mode
        for pair in self._pairs:
            pair.flowing.clear()
        if mode != "stale":
            self._flowing.clear()  # new connections too
        if mode == "drop":
            for pair in list(self._pairs):
                self.reset_count += 1
                pair.reset()
            self._pairs.clear()

    async def _heal(self) -> None:
        assert self._flowing is not None
        self.mode = None
        self._flowing.set()
        for pair in self._pairs:
            pair.flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self.accepted += 1
        if self.mode == "drop":
            self.reset_count += 1
            _reset(writer)
            return
        pair = _Pair(writer)
        self._pairs.add(pair)
        try:
            await self._flowing.wait()  # a blackhole holds new connections until the heal
            pair.flowing.set()
            if writer.is_closing():
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _reset(writer)
                return
            pair.upstream = up_writer
            there = asyncio.ensure_future(self._pump(reader, up_writer, pair.flowing))
            back = asyncio.ensure_future(self._pump(up_reader, writer, pair.flowing))
            pair.tasks = [there, back]
            await asyncio.wait(pair.tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pair.tasks:
                task.cancel()
            for w in (writer, up_writer):
                w.close()
        except asyncio.CancelledError:
            pass
        finally:
            self._pairs.discard(pair)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
        try:
            while True:
                await flowing.wait()
                data = await src.read(65536)
                await flowing.wait()  # read just as the partition began: still in flight
                if not data:
                    return
                dst.write(data)
                await dst.drain()
        except (OSError, RuntimeError):
            return
