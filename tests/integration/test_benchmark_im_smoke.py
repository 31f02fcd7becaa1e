"""The IM modules benchmark (blocking on/off, PEP fan-out) still runs: ``--quick`` (this checks it
works and loses nothing, not speed)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers.node import ROOT

pytestmark = pytest.mark.timeout(450)  # a benchmark run, on whatever the machine is doing


def test_im_modules_benchmark_runs():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "im_modules.py"), "--quick"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    out = r.stdout
    # 1: the 5 % goal missed — possible here (short rounds, other jobs sharing the CPUs).
    assert r.returncode in (0, 1), out + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for figure in ("messages/s, blocking on (median of rounds)", "messages/s, blocking off (median of rounds)",
                   "on / off, messages/s (slower by)", "on / off, node CPU per message", "notifications/s",
                   "publish → last of 50 notifications p50", "publish → last notification p99",
                   "burst of 10 publishes: notifications/s"):
        assert figure in out, f"{figure!r} missing:\n{out}"
    # the filter ran (a message to a blocked JID was refused) and the module was off on the other node
    assert re.search(r"check, blocking on\s+ok\s", out), out
    assert re.search(r"check, blocking off\s+ok\s", out), out
    # every message and every notification delivered, no error came back
    m = re.search(r"messages delivered / sent \(all rounds\)\s+([\d,]+) / ([\d,]+)", out)
    assert m and m.group(1) == m.group(2) and m.group(1) != "0", out
    assert re.search(r"contacts online / disco#info answered\s+50 / [1-9]", out), out
    assert re.search(r"notifications missing / duplicated\s+0 / 0\s", out), out
    assert re.search(r"publish errors / error stanzas\s+0 / 0\s", out), out
    if r.returncode == 1:
        assert "GOAL MISSED:" in out, out
