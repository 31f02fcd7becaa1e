"""Free loopback ports for the servers the tests start.

Ports come from below the kernel's ephemeral range (``ip_local_port_range``, from 32768 by
default): a port taken from inside it with ``bind(0)`` could be given by the kernel, a moment
later, to an outgoing connection of a process started meanwhile, and the server meant to
listen on it then fails with "address already in use".  Ports handed out are remembered, so
one test run never hands the same one out twice.
"""

from __future__ import annotations

import random
import socket

__all__ = ["free_port", "free_ports"]

_LOW, _HIGH = 10_000, 32_000
_given: set[int] = set()


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    high = min(_HIGH, _ephemeral_floor() - 1)
    ports: list[int] = []
    for _ in range(100 * n):
        if len(ports) == n:
            break
        port = random.randint(_LOW, high)
        if port in _given or not _bindable(port):
            continue
        _given.add(port)
        ports.append(port)
    if len(ports) < n:
        raise RuntimeError(f"no {n} free loopback ports between {_LOW} and {high}")
    return ports


def free_port() -> int:
    return free_ports(1)[0]
