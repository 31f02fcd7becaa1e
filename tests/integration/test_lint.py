"""The README's Developing checks, in the suite so CI runs them: ruff (rules in pyproject.toml)
and mypy (strict) over the code."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.node import ROOT


def test_ruff() -> None:
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "cluster_node", "gateway"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr
