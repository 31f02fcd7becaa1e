"""docs/operations.md says, for every alert compose/monitoring/alerts.yml defines, what it means and
what to do: an operator paged at night finds the alert by its name."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_every_alert_has_a_runbook_row() -> None:
    rules = yaml.safe_load((ROOT / "compose" / "monitoring" / "alerts.yml").read_text())
    names = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    assert len(names) >= 10
    runbook = (ROOT / "docs" / "operations.md").read_text().split("## When an alert fires", 1)[1]
    rows = {line.split("|")[1].strip().strip("`") for line in runbook.splitlines() if line.startswith("| `")}
    assert sorted(set(names) - rows) == [], "alerts without a row in docs/operations.md"
    assert sorted(rows - set(names)) == [], "rows for alerts alerts.yml no longer has"
