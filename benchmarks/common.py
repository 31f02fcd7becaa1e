"""What the benchmark scripts share: the error they fail with, percentiles, CPU pinning, the report
table, the machine-share line and the verdict at the end.

Each of mobile.py, websocket.py, sm_resume.py, node_load.py and im_modules.py had its own copy of
these; one copy keeps their output the same and a fix in one place reaches all of them.  The
scripts' own names (``mobile.pct``, ``node_load.Report``, …) stay importable.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

__all__ = ["BenchmarkError", "Report", "each", "machine_share", "measured_run", "median_of", "pct", "register_accounts",
           "self_cpu_s", "split_cpus", "toml_config", "verdict", "wait_idle"]


class BenchmarkError(Exception):
    """The run itself failed (a node did not start, clients could not log in): exit status 2."""


async def register_accounts(db_url: str, domain: str, names: list[str], password: str) -> None:
    """Accounts straight into a deployment's database, all with ``password`` (one SCRAM
    derivation for all of them: registering through the server would cost one each)."""
    from cluster_node.storage import open_storage
    from cluster_node.xmpp.sasl.scram import make_credentials

    storage = open_storage(db_url)
    await storage.open()
    try:
        creds = {name: c.to_dict() for name, c in make_credentials(password).items()}
        for name in names:
            await storage.create_account(domain, name, creds)
    finally:
        await storage.close()


async def wait_idle(alive: Callable[[], bool], cpu_s: Callable[[], float], timeout: float = 20.0,
                    below: float = 0.05) -> None:
    """Until a server uses under ``below`` of a CPU over 0.3 s (or ``timeout``, or it died):
    ``cpu_s`` its CPU seconds so far."""
    deadline = time.monotonic() + timeout
    while alive() and time.monotonic() < deadline:
        before = cpu_s()
        await asyncio.sleep(0.3)
        if cpu_s() - before < below * 0.3:
            return


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 100)) - 1))
    return ordered[k]


def each(values: list[float], fmt: str = ",.0f") -> str:
    """' (a / b / c)' when there is more than one value: the rounds behind a median."""
    return f" ({' / '.join(format(v, fmt) for v in values)})" if len(values) > 1 else ""


def median_of(runs: list[dict[str, float]], key: str) -> float:
    """Median of one figure over rounds (NaN for no rounds)."""
    return statistics.median(r[key] for r in runs) if runs else float("nan")


def self_cpu_s() -> float:
    """CPU seconds of this process (the clients' side of the load)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def split_cpus(pin: bool) -> tuple[list[int], list[int]]:
    """(CPUs for the server, CPUs for the load): the first CPU and the rest when pinning is on and
    there are two or more; ([], []) otherwise — so the load cannot steal the server's CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if pin and len(cpus) >= 2:
        return cpus[:1], cpus[1:]
    return [], []


def toml_config(settings: dict[str, object], prefix: str = "") -> str:
    """Nested settings as TOML, keys written bare — so a key ``"modules.mam"`` is the table
    ``[modules.mam]`` (im_modules.py relies on it; tests/helpers/node.py's ``toml_dump`` quotes it)."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"{k} = {value(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    for k, v in settings.items():
        if isinstance(v, dict):
            lines.append(f"\n[{prefix}{k}]")
            lines.append(toml_config(v, f"{prefix}{k}.").rstrip("\n"))
    return "\n".join(lines) + "\n"


class Report:
    """The table of figures, goals and results every benchmark prints, with the goals missed.

    The scripts' tables differ only in words and indentation: the first column's title
    (``figure``/``metric``), the goal column's (``goal``/``target``), the word for a goal met
    (``met``/``ok``), whether rows are indented under sections and section titles count in the
    column width — the keyword arguments, so each script prints what it printed before."""

    def __init__(self, *, first: str = "metric", goal: str = "goal", met: str = "met", indent: str = "",
                 goal_min: int = 4, sections_in_width: bool = True) -> None:
        self.rows: list[tuple[str, str, str, str | None]] = []  # result None: a section title
        self.missed: list[str] = []
        self.failed: list[str] = []
        self._first, self._goal, self._met, self._indent = first, goal, met, indent
        self._goal_min, self._sections_in_width = goal_min, sections_in_width

    def section(self, title: str) -> None:
        self.rows.append((title, "", "", None))

    def row(self, name: str, value: str, goal: str = "", ok: bool | None = None, missed: str = "") -> None:
        self.rows.append((self._indent + name, value, goal, "" if ok is None else (self._met if ok else "MISSED")))
        if ok is False and missed:
            self.missed.append(missed)

    def print(self) -> None:
        body = [r for r in self.rows if r[3] is not None]
        sized = self.rows if self._sections_in_width else body
        if not body:
            return
        w0 = max(len(r[0]) for r in sized)
        w1 = max(len(r[1]) for r in sized)
        w2 = max([len(r[2]) for r in sized] + [self._goal_min])
        print()
        print(f"  {self._first:<{w0}}  {'value':>{w1}}  {self._goal:<{w2}}  result")
        print(f"  {'-' * w0}  {'-' * w1}  {'-' * w2}  ------")
        for name, value, goal, result in self.rows:
            if result is None:
                print(f"  {name}")
                continue
            print(f"  {name:<{w0}}  {value:>{w1}}  {goal:<{w2}}  {result}".rstrip())
        print()


def machine_share(busy: float, wall: float, ours: float, who: str, others: str, notes: list[str]) -> None:
    """Print the CPU the run's own processes and other work took; a note when others took over a
    tenth of the machine (the figures are then worse than on a quiet one)."""
    other = max(0.0, busy - ours)
    avail = wall * (os.cpu_count() or 1)
    print(f"  CPU during the run: {who} {ours:.0f} CPU-s, {others} {other:.0f} CPU-s, of {avail:.0f} available")
    if other > 0.1 * avail:
        notes.append("other work took over a tenth of the machine: the figures are worse than on a quiet one")


def verdict(report: Report, word: str = "GOAL", all_met: str = "all goals met") -> int:
    """The last lines and the exit status: 2 when a part failed, 1 when a goal was missed, else 0."""
    if report.failed:
        for f in report.failed:
            print(f"BENCHMARK FAILED: {f}")
        return 2
    if report.missed:
        print()
        for m in report.missed:
            print(f"{word} MISSED: {m}")
        return 1
    print(f"  {all_met}")
    return 0


def measured_run(work: Callable[[], Coroutine[Any, Any, None]], report: Report, notes: list[str], tmp: Path, *,
                 keep: bool, servers_cpu: Callable[[], float], who: str, others: str) -> int:
    """Run ``work`` (the benchmark's asyncio part), then print the report, how long it took, the
    machine's share that was not ours, the notes and the verdict; remove ``tmp`` unless ``keep``.
    Exit status: :func:`verdict`'s, or 2 when ``work`` raised :class:`BenchmarkError`."""
    from machine import load_average, machine_busy  # the scripts' directory is on sys.path

    busy0, wall0, me0 = machine_busy(), time.perf_counter(), self_cpu_s()
    try:
        asyncio.run(work())
    except BenchmarkError as e:
        if report.rows:
            report.print()
        print(f"BENCHMARK FAILED: {e}", file=sys.stderr)
        return 2
    finally:
        if keep:
            print(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - wall0
    report.print()
    busy1 = machine_busy()
    print(f"  run took {wall:.0f} s; load average {load_average()}")
    if busy0 is not None and busy1 is not None:
        machine_share(busy1 - busy0, wall, self_cpu_s() - me0 + servers_cpu(), who, others, notes)
    for note in notes:
        print(f"  note: {note}")
    return verdict(report)
