"""The shared benchmark toolkit (benchmarks/common.py), compare.py's sweep options and the pictures
of benchmarks/plots.py, on fixed input: what the scripts print must not change with the toolkit,
and a bad results file must give a clear error, not a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402
import compare  # noqa: E402
import mobile  # noqa: E402
import node_load  # noqa: E402
import plots  # noqa: E402


def test_percentile_is_nearest_rank() -> None:
    values = [float(x) for x in range(1, 101)]
    assert common.pct(values, 50) == 50.0 and common.pct(values, 99) == 99.0 and common.pct(values, 100) == 100.0
    assert common.pct([3.0], 99) == 3.0
    assert common.pct([], 50) != common.pct([], 50)  # NaN
    assert node_load.pct is common.pct  # the scripts' names still work


def test_report_prints_as_mobile_did(capsys: pytest.CaptureFixture[str]) -> None:
    r = mobile.Report()
    r.section("1. a section title longer than any row")
    r.row("logins/s", "1,234", "≥ 1,000", True)
    r.row("p99", "12.5 ms", "", None)
    r.row("msg/s", "10", "≥ 20", False, missed="msg/s 10 < 20")
    # rows indented under the sections, section titles not counted in the width
    r.print()
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "  figure        value  goal     result"
    assert out[3] == "  1. a section title longer than any row"
    assert out[4] == "    logins/s    1,234  ≥ 1,000  met"
    assert out[5] == "    p99       12.5 ms"
    assert out[6] == "    msg/s          10  ≥ 20     MISSED"
    assert r.missed == ["msg/s 10 < 20"]
    assert common.verdict(r) == 1
    assert capsys.readouterr().out == "\nGOAL MISSED: msg/s 10 < 20\n"


def test_report_prints_as_node_load_did(capsys: pytest.CaptureFixture[str]) -> None:
    r = node_load.Report()
    r.row("logins/s", "900", "", None)
    r.row("RSS per connection", "20 KB", "≤ 25", True)
    r.print()
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "  metric              value  target  result"
    assert out[2] == "  ------------------  -----  ----  ------"
    assert out[4] == "  RSS per connection  20 KB  ≤ 25  ok"
    assert common.verdict(r, "TARGET", "all targets met") == 0
    assert capsys.readouterr().out == "  all targets met\n"
    r.failed.append("part 2: the node died")
    assert common.verdict(r) == 2


def test_split_cpus() -> None:
    node, load = common.split_cpus(False)
    assert (node, load) == ([], [])
    node, load = common.split_cpus(True)
    assert not set(node) & set(load)
    assert (len(node), bool(load)) == ((1, True) if len(node) else (0, False))


def test_toml_config_nests_tables() -> None:
    text = common.toml_config({"a": 1, "b": "x\"y", "c": {"d": True, "e": {"f": [1, 2]}}})
    assert text == 'a = 1\nb = "x\\"y"\n\n[c]\nd = true\n\n[c.e]\nf = [1, 2]\n'
    # a dotted key is a nested table, as im_modules.py writes "modules.mam"
    assert common.toml_config({"modules.mam": {"enabled": False}}) == "\n[modules.mam]\nenabled = false\n"


def test_sweep_and_idle_options() -> None:
    assert compare.rates("1000,5000,20000") == [1000.0, 5000.0, 20000.0]
    assert compare.sizes("500,1000,2000,4000") == [500, 1000, 2000, 4000]
    for bad in ("5000,1000", "0", "x", "-3"):
        with pytest.raises(argparse.ArgumentTypeError):
            compare.rates(bad)
    for bad in ("1000,500", "1", "a,b", ",".join(str(x) for x in range(2, 12))):
        with pytest.raises(argparse.ArgumentTypeError):
            compare.sizes(bad)


DOC: dict[str, Any] = {
    "machine": "2 CPUs, Linux", "labels": {"meridian": "Meridian 1 node", "ejabberd": "ejabberd 23.01"},
    "medians": {
           "meridian": {"sweep.1000.offered": 998.0, "sweep.1000.rate": 995.0, "sweep.1000.p50_ms": 0.4,
                        "sweep.1000.p99_ms": 2.0, "sweep.8000.offered": 7990.0, "sweep.8000.rate": 5000.0,
                        "sweep.8000.p50_ms": 300.0, "sweep.8000.p99_ms": 900.0, "idle.logins_per_s": 450.0,
                        "login.rate": 420.0, "idle.rss_mb.0": 80.0, "idle.rss_mb.1000": 120.0,
                        "idle.rss_mb.2000": 160.0},
           "ejabberd": {"sweep.1000.offered": 999.0, "sweep.1000.rate": 999.0, "sweep.1000.p50_ms": 0.2,
                        "sweep.1000.p99_ms": 0.9, "idle.logins_per_s": 1400.0, "idle.rss_mb.0": 90.0,
                        "idle.rss_mb.1000": 140.0},
           "_load": {"idle": [1000, 2000]}}}


def test_plots_are_drawn(tmp_path: Path) -> None:
    src = tmp_path / "r.json"
    src.write_text(json.dumps(DOC))
    assert plots.main([str(src), str(tmp_path / "out")]) == 0
    for name in ("bench-knee.png", "bench-logins.png", "bench-rss.png"):
        data = (tmp_path / "out" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    assert plots.series(DOC["medians"]["meridian"], "idle.rss_mb", "") == [(0, 80.0), (1000, 120.0), (2000, 160.0)]


def test_plots_skip_what_the_run_lacks(tmp_path: Path) -> None:
    assert plots.draw({"medians": {"meridian": {"login.rate": 400.0}}}, tmp_path) == [tmp_path / "bench-logins.png"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not JSON"),
    ('{"date": "x"}', "no 'medians' object"),
    ('{"medians": {"meridian": {"login.rate": "fast"}}}', "are not figure → number"),
])
def test_plots_refuse_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                                message: str) -> None:
    src = tmp_path / "r.json"
    src.write_text(content)
    assert plots.main([str(src), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert plots.main([str(tmp_path / "missing.json"), str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_node_load_refuses_a_relative_rate_without_the_closed_loop(capsys: pytest.CaptureFixture[str]) -> None:
    """``80%`` is a share of what the closed loop measures: with no closed loop it would offer ~0."""
    assert node_load.rates("5000,80%") == [node_load.Rate(5000.0, False), node_load.Rate(80.0, True)]
    with pytest.raises(SystemExit) as exit_:
        node_load.main(["--rate", "80%", "--capacity-duration", "0"])
    assert exit_.value.code == 2
    assert "--capacity-duration > 0" in capsys.readouterr().err
