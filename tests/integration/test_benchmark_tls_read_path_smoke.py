"""The TLS read-path benchmark still runs (``--quick``: this checks it works, not speed)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers.node import ROOT

pytestmark = pytest.mark.timeout(180)


def test_tls_read_path_benchmark_runs():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tls_read_path.py"), "--quick"],
                       capture_output=True, text=True, cwd=ROOT, timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for label in ("asyncio's TLS transport", "own protocol over MemoryBIO", "plain TCP"):
        m = re.search(re.escape(label) + r"\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)", r.stdout)
        assert m and int(m.group(1).replace(",", "")) > 0 and float(m.group(2)) > 0, r.stdout
