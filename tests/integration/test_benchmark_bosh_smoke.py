"""The BOSH benchmark still runs (``--quick``: small numbers; this checks it works, not speed)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers.node import ROOT

pytestmark = pytest.mark.timeout(450)  # a benchmark run, on whatever the machine is doing


def test_bosh_benchmark_runs() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bosh.py"), "--quick"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert re.search(r"logins \(create, SCRAM-SHA-1, restart, bind, presence\)\s+6$", out, re.M), out
    for figure in ("logins/s", "one login p50 / p95", "HTTP requests/s (pings, closed loop)", "pings/s",
                   "ping round trip p50 / p99", "node / load CPU per 1,000 requests",
                   "messages/s (pairs, closed loop)", "HTTP requests per message",
                   "node / load CPU per 1,000 messages"):
        assert re.search(rf"^\s+{re.escape(figure)}\s+\S", out, re.M), f"{figure!r} missing:\n{out}"
    assert re.search(r"messages lost\s+0$", out, re.M), out
