"""Per-second rates from the cumulative counters in region status records (sans-IO: time is an argument).

A region's status key in Redis is written by whichever of its gateways announced last, so two
consecutive reads may come from different gateways with unrelated counters.  Samples are therefore
kept per (region, gateway), and a region's rate is the sum of its gateways' rates over a sliding
window (a few announce intervals), which also smooths the steps of a record refreshed every few seconds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

__all__ = ["RateTracker", "totals"]

# Counter name in the status record -> rate name shown by the dashboard.
RATES = {"relayed": "relayedPerSec", "received": "receivedPerSec", "bounced": "bouncedPerSec"}


def _number(value: Any) -> float:
    """A counter is a number or a per-region dict of numbers (``relayed``/``received``)."""
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, Mapping):
        return sum(_number(v) for v in value.values())
    return 0.0


def totals(status: Mapping[str, Any]) -> dict[str, float]:
    counters = status.get("counters")
    if not isinstance(counters, Mapping):
        return {}
    return {name: _number(counters.get(name)) for name in RATES}


class RateTracker:
    def __init__(self, window: float = 12.0) -> None:
        self.window = window
        self._samples: dict[tuple[str, str], deque[tuple[float, dict[str, float]]]] = {}

    def observe(self, region: str, status: Mapping[str, Any], now: float) -> None:
        gateway = str(status.get("gateway", ""))
        samples = self._samples.setdefault((region, gateway), deque())
        current = totals(status)
        if samples and any(current.get(k, 0.0) < v for k, v in samples[-1][1].items()):
            samples.clear()  # the gateway restarted: its counters began again
        if not samples or samples[-1][1] != current or now - samples[-1][0] >= 1.0:
            samples.append((now, current))
        while len(samples) > 2 and now - samples[1][0] > self.window:
            samples.popleft()

    def rates(self, region: str, now: float) -> dict[str, float]:
        """Sum over the region's gateways seen within the window; 0.0 until two samples exist."""
        out = dict.fromkeys(RATES.values(), 0.0)
        for (r, _gw), samples in list(self._samples.items()):
            if r != region:
                continue
            if not samples or now - samples[-1][0] > 2 * self.window:
                del self._samples[(r, _gw)]  # that gateway left
                continue
            (t0, first), (t1, last) = samples[0], samples[-1]
            if t1 <= t0:
                continue
            for counter, rate in RATES.items():
                out[rate] += max(0.0, last.get(counter, 0.0) - first.get(counter, 0.0)) / (t1 - t0)
        return {k: round(v, 2) for k, v in out.items()}
