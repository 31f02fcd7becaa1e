"""TLS read path: what a lone stanza costs a server on asyncio's TLS transport, on a protocol of
its own over ``ssl.MemoryBIO``, and on plain TCP.

Why: the performance ledger named "c2s TLS over ``MemoryBIO``" as the way to cheaper lone reads
(asyncio's ``SSLProtocol`` layers sit between the socket and the stream on every read and
write).  This measures that claim before anyone rewrites the c2s transport for it: three echo
servers in a child process pinned to one CPU, each answering ``--connections`` clients that
send a 160-byte stanza and wait for it back, ``--trips`` times each (one stanza per read: the
case a busy node's chat users make).  The figure is the server's CPU per round trip (one read
and one write); the servers take turns, ``--rounds`` times.

    .venv/bin/python benchmarks/tls_read_path.py [--rounds 3] [--trips 3000] [--connections 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import split_cpus  # noqa: E402
from cluster_node.net.tls import ensure_self_signed, server_context, shared_tls_read_buffer  # noqa: E402

MODES = ("asyncio", "memorybio", "tcp")
STANZA = b"<message to='bob@example.com/phone' type='chat' id='a1b2c3'><body>" + b"x" * 90 + b"</body></message>"


# -- the servers (child process) ---------------------------------------------------------------------------------


class Echo(asyncio.Protocol):
    """The application: what it reads goes back (asyncio's TLS transport or plain TCP under it)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class BioEcho(asyncio.Protocol):
    """The same over a TLS object of its own on a plain socket: socket bytes into the incoming
    BIO, records decrypted in a loop, the answer encrypted and written in one go."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.ready = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if not self.ready:
            try:
                self.tls.do_handshake()
                self.ready = True
            except ssl.SSLWantReadError:
                pass
        while self.ready:
            try:
                chunk = self.tls.read(16384)
            except ssl.SSLWantReadError:
                break
            if not chunk:
                break
            self.tls.write(chunk)  # the application's answer
        out = self.outgoing.read()
        if out:
            self.transport.write(out)


async def serve(mode: str, cert: Path, key: Path) -> None:
    loop = asyncio.get_running_loop()
    ctx = server_context(cert, key)
    if mode == "asyncio":
        shared_tls_read_buffer()  # as a node runs it
        server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=ctx)
    elif mode == "memorybio":
        server = await loop.create_server(lambda: BioEcho(ctx), "127.0.0.1", 0)
    else:
        server = await loop.create_server(Echo, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin


# -- the clients (this process) ------------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def client(port: int, tls: bool, trips: int, start: asyncio.Event) -> None:
    ctx = None
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    await start.wait()
    for _ in range(trips):
        writer.write(STANZA)
        got = 0
        while got < len(STANZA):
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("the server closed")
            got += len(data)
    writer.close()


async def measure(mode: str, port: int, pid: int, trips: int, connections: int) -> dict[str, float]:
    start = asyncio.Event()
    tasks = [asyncio.create_task(client(port, mode != "tcp", trips, start)) for _ in range(connections)]
    await asyncio.sleep(0.5)  # connected and handshaken
    c0, t0 = cpu_s(pid), time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    wall, cpu = time.perf_counter() - t0, cpu_s(pid) - c0
    n = trips * connections
    return {"rate": n / wall, "us": cpu / n * 1e6}


def run_round(mode: str, cert: Path, key: Path, server_cpus: list[int], load_cpus: list[int], trips: int,
              connections: int) -> dict[str, float]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", mode, "--cert", str(cert), "--key", str(key)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        if server_cpus:
            os.sched_setaffinity(proc.pid, server_cpus)
        if load_cpus:
            os.sched_setaffinity(0, load_cpus)
        return asyncio.run(measure(mode, port, proc.pid, trips, connections))
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trips", type=int, default=3000, help="round trips per connection and round")
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 200 trips")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--cert", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, Path(args.cert), Path(args.key)))
        return 0
    if args.quick:
        args.rounds, args.trips = 1, 200
    server_cpus, load_cpus = split_cpus(args.pin)
    print(f"TLS read path: {args.connections} connections × {args.trips} round trips of a {len(STANZA)}-byte stanza, "
          f"{args.rounds} round(s); server on CPU {server_cpus or 'any'}, clients on {load_cpus or 'any'}", flush=True)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="meridian-tls-path-") as tmp:
        cert, key = ensure_self_signed(Path(tmp), ["example.com"])
        for rnd in range(args.rounds):
            for mode in MODES[rnd % len(MODES):] + MODES[:rnd % len(MODES)]:
                res = run_round(mode, cert, key, server_cpus, load_cpus, args.trips, args.connections)
                runs[mode].append(res)
                print(f"  round {rnd + 1}, {mode:9}: {res['rate']:8,.0f} round trips/s, "
                      f"server {res['us']:5.1f} µs each", flush=True)
    base = statistics.median(r["us"] for r in runs["asyncio"])
    print(f"\n  {'server':28} {'round trips/s':>14} {'server µs per trip':>19} {'vs asyncio TLS':>15}")
    labels = {"asyncio": "asyncio's TLS transport", "memorybio": "own protocol over MemoryBIO", "tcp": "plain TCP"}
    for mode in MODES:
        us = statistics.median(r["us"] for r in runs[mode])
        rate = statistics.median(r["rate"] for r in runs[mode])
        print(f"  {labels[mode]:28} {rate:14,.0f} {us:19.1f} {us / base:15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
