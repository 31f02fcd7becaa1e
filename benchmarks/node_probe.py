"""Runs ``meridian node`` with an observer of its cyclic garbage collector (``benchmarks/node_load.py``).

    python benchmarks/node_probe.py OUT.json node --config node.toml

is ``python -m gateway.cli node --config node.toml`` plus a ``gc.callbacks`` entry that notes every
collector pass (CLOCK_MONOTONIC start, seconds, generation); SIGUSR1 writes them to OUT.json.
Nothing the node does changes: no setting, no collector threshold.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


def install(out: str) -> None:
    passes: list[tuple[float, float, int, int]] = []
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.monotonic()
        else:
            passes.append((started[0], time.monotonic() - started[0], info["generation"], info["collected"]))

    def dump(_signum: int, _frame: Any) -> None:
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"passes": passes, "objects": len(gc.get_objects()), "counts": gc.get_count(),
                       "thresholds": gc.get_threshold()}, f)
        os.replace(tmp, out)

    gc.callbacks.append(callback)
    signal.signal(signal.SIGUSR1, dump)


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    install(out)
    from gateway.cli import main as meridian

    return meridian(argv)


if __name__ == "__main__":
    sys.exit(main())
