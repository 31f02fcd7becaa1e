"""The idle-connections scale benchmark (benchmarks/idle_scale.py) still runs: tiny numbers.

It checks the script works end to end — a real node with its limits raised, loadgen clients bound
to several loopback source addresses, two checkpoints, the probe's messages, the table and the
JSON — and that the figures it writes are plausible, not how fast anything is.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.node import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import idle_scale  # noqa: E402


def test_source_addresses_give_each_client_a_port() -> None:
    # ~28,000 ephemeral loopback ports per source address: 100,000 clients need several
    addrs = idle_scale.source_addresses(100_010, 20_000)
    assert addrs == [f"127.0.0.{k}" for k in range(2, 8)], addrs
    assert idle_scale.source_addresses(10, 20_000) == ["127.0.0.2"]


def test_a_descriptor_limit_too_low_fails_before_starting_the_node(tmp_path: Path) -> None:
    # the hard limit of a container's root, which may not raise it (no CAP_SYS_RESOURCE)
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    out_json = tmp_path / "idle.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "idle_scale.py"), "--sizes", "500,2000",
           "--state-dir", str(tmp_path / "state"), "--json", str(out_json)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60, preexec_fn=low_limit)
    assert r.returncode == 2, r.stdout + r.stderr
    # 1,024 − the probe's 10 clients − 256 for the node itself
    assert "BENCHMARK FAILED: holding 2,000 connections needs 2,266 descriptors" in r.stdout, r.stdout
    doc = json.loads(out_json.read_text())
    assert doc["largest_size"] == 758 and doc["checkpoints"] == [], doc
    assert not (tmp_path / "state" / "meridian" / "n1.log").exists()


def test_idle_scale_runs_and_writes_plausible_figures(tmp_path: Path) -> None:
    out_json = tmp_path / "idle.json"
    t = time.monotonic()
    # --per-address 100: 210 clients from three source addresses, the path 100,000 take
    cmd = [sys.executable, str(ROOT / "benchmarks" / "idle_scale.py"), "--sizes", "100,200", "--workers", "2",
           "--concurrency", "50", "--per-address", "100", "--probe-pairs", "3", "--probe-rate", "30",
           "--probe-duration", "2", "--hold", "1", "--settle", "0.5", "--state-dir", str(tmp_path / "state"),
           "--json", str(out_json)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=180)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for column in ("node RSS MB", "KB/conn", "logins/s", "login p99 ms", "probe p50 ms", "probe p99 ms"):
        assert column in out, f"{column!r} missing:\n{out}"
    doc = json.loads(out_json.read_text())
    assert doc["failed"] == [], doc["failed"]
    assert doc["source_addresses"] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"], doc["source_addresses"]
    assert doc["rss0_mb"] > 10 and doc["node_cpu_s"] > 0, doc
    rows = doc["checkpoints"]
    assert [row["held"] for row in rows] == [100, 200], rows
    for row in rows:
        held = row["held"]
        # every login of the step done, every connection still open, the node holding them all
        assert row["logged_in"] == row["step"] and not row["login_failures"], row
        assert row["held_online"] == row["held_open"] == held, row
        assert row["node_fds"] > held, row
        # the clients came from every source address, the probe's 6 on top
        assert len(row["clients_by_address"]) == 3 and sum(row["clients_by_address"].values()) == held + 6, row
        assert 0 < row["kb_per_conn"] < 1000 and row["rss_mb"] > doc["rss0_mb"], row
        assert row["logins_per_s"] > 0 and 0 < row["login_p50_ms"] <= row["login_p99_ms"] < 60_000, row
        assert row["node_cpu_ms_per_login"] > 0 and row["gen_cpu_ms_per_login"] > 0, row
        # the probe: every message delivered, latencies present and ordered
        assert row["probe_sent"] >= 30 and row["probe_received"] == row["probe_sent"], row
        assert row["probe_errors"] == 0, row
        assert 0 < row["probe_p50_ms"] <= row["probe_p99_ms"] <= row["probe_max_ms"] < 5_000, row
        assert row["gen_kb_per_conn"] > 0, row
        assert row["problems"] == [], row
    # loose: coverage may measure every process, and other jobs share the CPUs
    assert time.monotonic() - t < 120, f"the smoke run took {time.monotonic() - t:.1f}s"
