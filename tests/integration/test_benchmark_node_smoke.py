"""The single-node load benchmark still runs (tiny numbers: this checks it works, not speed)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from tests.helpers.node import ROOT


def test_node_load_benchmark_runs():
    t = time.monotonic()
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "node_load.py"), "--clients", "50",
                        "--senders", "10", "--rate", "300", "--duration", "1.5", "--capacity-duration", "1",
                        "--drain", "5", "--login-concurrency", "25", "--settle", "0.5"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    out = r.stdout
    # 1: targets missed — always here (50 clients, 300 msg/s), and other jobs may share the CPUs.
    assert r.returncode in (0, 1), out + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert re.search(r"connections logged in and held\s+50\s", out), out
    for figure in ("logins/s (TLS + SASL + bind + presence)", "node RSS per connection", "messages/s routed",
                   "latency p50", "latency p95", "latency p99", "node CPU (of which in the kernel) / per message",
                   "capacity:", "errors: error stanzas / stream errors seen", "node CPU seconds in all",
                   "by second of sending"):
        assert figure in out, f"{figure!r} missing:\n{out}"
    # every message sent was delivered, no error came back
    m = re.search(r"delivered / sent\s+([\d,]+) / ([\d,]+)", out)
    assert m and m.group(1) == m.group(2) and m.group(1) != "0", out
    assert re.search(r"errors: error stanzas / stream errors seen\s+0\s", out), out
    if r.returncode == 1:
        assert "TARGET MISSED:" in out, out
    # loose: coverage measures every process, and CI shares the CPUs
    assert time.monotonic() - t < 75, f"the smoke run took {time.monotonic() - t:.1f}s"
