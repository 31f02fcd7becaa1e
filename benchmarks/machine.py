"""What every benchmark reports about the machine it ran on, and free loopback ports."""

from __future__ import annotations

import os

from tests.helpers.ports import free_ports

__all__ = ["load_average", "machine_busy", "free_ports"]


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_busy() -> float | None:
    """CPU seconds the whole machine spent busy since boot (all but idle and iowait), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
