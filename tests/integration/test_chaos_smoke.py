"""The chaos suite's short run (``benchmarks/chaos.py --quick``): every scenario, under load, must
lose no acknowledged message, deliver none twice, and leave none in offline storage for a
recipient who stayed online (late is not good enough for an online user).

One run of the script serves every test (it starts seven server processes, two Redis, the
domain's PostgreSQL and the proxies once; the scenarios run one after another).  A scenario that
does not meet the goal yet is ``xfail(strict=True)`` with what goes wrong: when it is fixed, the
test fails until the mark goes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.chaos import SCENARIOS
from tests.helpers.node import ROOT
from tests.helpers.postgres import pg_bindir
from tests.helpers.redis import redis_server_binary

pytestmark = pytest.mark.timeout(900)  # the whole run happens in the first test's fixture

# Scenarios that do not meet the goal yet, and why (see benchmarks/README.md, "Chaos").
KNOWN: dict[str, str] = {}
# Scenarios that meet the goal in most runs but not all yet: xfail(strict=False), reported as
# XPASS when they meet it.  A stanza the killed receiving gateway handed on in the instant before
# its link ACK went out is resent to the restarted gateway, whose id window starts empty: a
# duplicate, possible in theory, not seen in 8 quick runs and a full one since the link acks on
# hand-on (before that fix, 1 duplicate in 3 quick runs).
FLAKY: dict[str, str] = {
    "only-gateway-kill": "a stanza handed on just before the killed gateway's ACK went out can arrive twice",
}

# What each fault must visibly do to the clients, so a scenario that injected nothing cannot pass.
FELT: dict[str, str] = {"node-kill": "resume failed", "rolling-restart": "disconnected", "move-region": "moved"}


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed")
    out: Path = tmp_path_factory.mktemp("chaos") / "chaos.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.chaos", "--quick", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=540)
    # 1: a scenario missed the goal (each test below says which); 2: the run itself failed.
    assert r.returncode in (0, 1), r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    assert not data["failed"] and not data["run"]["tracebacks"], r.stdout
    data["stdout"] = r.stdout
    return data


def _param(name: str) -> Any:
    if name == "postgres-restart" and pg_bindir() is None:  # the run puts the domain on SQLite then
        return pytest.param(name, marks=pytest.mark.skip(reason="PostgreSQL is not installed"))
    if name in KNOWN:
        return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN[name]))
    if name in FLAKY:
        return pytest.param(name, marks=pytest.mark.xfail(strict=False, reason=FLAKY[name]))
    return name


@pytest.mark.parametrize("scenario", [_param(name) for name in SCENARIOS])
def test_nothing_lost_duplicated_or_parked(chaos: dict[str, Any], scenario: str) -> None:
    row = next(r for r in chaos["scenarios"] if r["scenario"] == scenario)
    story = json.dumps({k: row[k] for k in ("fault", "examples", "server_warnings", "clients")}, indent=1)
    assert row["sent"] >= 50 and row["acked"] > 0 and row["delivered"] > 0, story  # the load ran
    if scenario in FELT:
        assert row["clients"].get(FELT[scenario], 0) > 0, story
    if scenario == "node-kill":  # each client whose resumption failed caught up from its archive
        assert row["clients"].get("caught up from the archive", 0) > 0, story
        assert "archive catch-up failed" not in row["clients"], story
    assert row["unsent"] == 0, story  # every client was back online to send what it kept
    assert row["lost"] == 0, story
    assert row["duplicates"] == 0, story
    assert row["parked"] == 0, story
