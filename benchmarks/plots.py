"""Pictures of a ``compare.py`` run: the knee, logins/s and RSS per held connection, per server.

Reads the JSON that ``compare.py --json FILE`` (or ``--save``, benchmarks/results.json) writes and
draws, in the style of docs/scale.png (matplotlib, Agg, PNG at 110 dpi):

- ``bench-knee.png`` — the offered-load sweep (``compare.py --sweep``): delivered msg/s against
  offered msg/s, and p50 / p99 latency against offered msg/s: where each server stops keeping up;
- ``bench-logins.png`` — logins/s per server: the loadgen closed loop and the Tsung storm;
- ``bench-rss.png`` — server RSS against the number of idle connections held (``--idle`` sizes).

    .venv/bin/python benchmarks/plots.py /tmp/compare.json docs/

A picture whose data the run lacks is skipped (and named on stdout).  Exit status 0, 2 when the
JSON cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# one colour per server, in every picture
COLOURS = {"meridian": "#1f77b4", "meridian-cluster": "#17becf", "ejabberd": "#2ca02c", "ejabberd-scram": "#98df8a",
           "prosody": "#ff7f0e"}
ORDER = ("meridian", "meridian-cluster", "ejabberd", "ejabberd-scram", "prosody")
DEFAULT_LABELS = {"meridian": "Meridian 1 node", "meridian-cluster": "Meridian 2-node cluster",
                  "ejabberd": "ejabberd", "ejabberd-scram": "ejabberd (SCRAM store)", "prosody": "Prosody"}


class PlotError(Exception):
    """The results file is not what ``compare.py`` writes."""


def load(path: Path) -> dict[str, Any]:
    """The results document, checked enough that drawing cannot fail half-way with a traceback."""
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise PlotError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise PlotError(f"{path} is not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("medians"), dict):
        raise PlotError(f"{path}: no 'medians' object (write it with compare.py --json FILE or --save)")
    for kind, figures in doc["medians"].items():
        if kind.startswith("_"):
            continue
        if not isinstance(figures, dict) or not all(isinstance(v, int | float) for v in figures.values()):
            raise PlotError(f"{path}: medians of {kind!r} are not figure → number")
    return doc


def servers(doc: dict[str, Any]) -> list[str]:
    med = doc["medians"]
    return [k for k in ORDER if isinstance(med.get(k), dict)] + \
        sorted(k for k in med if k not in ORDER and not k.startswith("_"))


def label(doc: dict[str, Any], kind: str) -> str:
    labels = doc.get("labels") or {}
    return str(labels.get(kind) or DEFAULT_LABELS.get(kind, kind))


def series(figures: dict[str, float], prefix: str, suffix: str) -> list[tuple[float, float]]:
    """(x, value) for every ``prefix.<x>.suffix`` (or ``prefix.<x>`` when suffix is empty), sorted by x."""
    out = []
    for key, v in figures.items():
        if not key.startswith(prefix + "."):
            continue
        rest = key[len(prefix) + 1:]
        if suffix:
            if not rest.endswith("." + suffix):
                continue
            rest = rest[:-len(suffix) - 1]
        try:
            out.append((float(rest), float(v)))
        except ValueError:
            continue
    return sorted(out)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _note(doc: dict[str, Any]) -> str:
    machine = str(doc.get("machine") or "").split(",")[0]  # "2 CPUs": the platform string is too long
    return f"{machine}; " if machine else ""


def _save(plt: Any, fig: Any, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def knee(doc: dict[str, Any], path: Path) -> bool:
    """Delivered msg/s and p50/p99 latency against the offered rate, one colour per server."""
    kinds = [k for k in servers(doc) if series(doc["medians"][k], "sweep", "rate")]
    if not kinds:
        return False
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, gridspec_kw={"height_ratios": [1, 1]})
    most = 0.0
    for k in kinds:
        f = doc["medians"][k]
        offered = dict(series(f, "sweep", "offered"))
        rate = [(r, v) for r, v in series(f, "sweep", "rate") if v > 0]  # log scale: nothing delivered is off it
        xs = [offered.get(r, r) for r, _ in rate]
        most = max(most, *xs)
        c = COLOURS.get(k)
        top.plot(xs, [v for _, v in rate], marker="o", color=c, lw=1.5, label=label(doc, k))
        for suffix, style, name in (("p99_ms", "-", "p99"), ("p50_ms", "--", "p50")):
            pts = series(f, "sweep", suffix)
            bottom.plot([offered.get(r, r) for r, _ in pts], [v for _, v in pts], ls=style, marker=".", color=c,
                        lw=1.5, label=f"{label(doc, k)} {name}")
    least = min(x for k in kinds for x, _ in series(doc["medians"][k], "sweep", "offered")) if most else 1.0
    top.plot([least, most], [least, most], color="#bbbbbb", lw=1, ls=":", label="delivered = offered")
    top.set_xscale("log")
    top.set_yscale("log")
    top.set_ylabel("delivered msg/s (log scale)")
    top.set_title(f"Offered load against delivered messages and latency ({_note(doc)}loopback, "
                  "loadgen paced senders)", fontsize=10)
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    bottom.set_yscale("log")
    bottom.set_ylabel("delivery latency (ms)")
    bottom.set_xlabel("offered msg/s (log scale)")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in (top.xaxis, top.yaxis, bottom.xaxis):  # 100, 200, 500, 1,000 … rather than powers of ten
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        axis.set_minor_formatter(NullFormatter())
    bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _save(plt, fig, path)


def logins(doc: dict[str, Any], path: Path) -> bool:
    """Logins/s per server: the loadgen closed loop (100 at a time) and the Tsung storm side by side."""
    what = (("idle.logins_per_s", "closed loop (loadgen, 100 at a time)"), ("login.rate", "storm (Tsung)"))
    kinds = [k for k in servers(doc) if any(key in doc["medians"][k] for key, _ in what)]
    if not kinds:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(what)
    for i, (key, name) in enumerate(what):
        xs = [j + (i - (len(what) - 1) / 2) * width for j in range(len(kinds))]
        vals = [doc["medians"][k].get(key, 0.0) for k in kinds]
        bars = ax.bar(xs, vals, width * 0.95, label=name, color=[COLOURS.get(k, "#888888") for k in kinds],
                      alpha=1.0 if i == 0 else 0.55, hatch="" if i == 0 else "//", edgecolor="black", lw=0.5)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v else "" for v in vals], fontsize=8, padding=2)
    ax.set_xticks(range(len(kinds)), [label(doc, k) for k in kinds])
    ax.set_ylabel("logins/s (STARTTLS, SASL PLAIN, bind, presence)")
    ax.set_title(f"Logins per second ({_note(doc)}server on one CPU)", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _save(plt, fig, path)


def rss(doc: dict[str, Any], path: Path) -> bool:
    """Server RSS (MB) against idle connections held, with the KB per connection of the largest size."""
    kinds = [k for k in servers(doc) if len(series(doc["medians"][k], "idle.rss_mb", "")) >= 2]
    if not kinds:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for k in kinds:
        pts = series(doc["medians"][k], "idle.rss_mb", "")
        (n0, r0), (n1, r1) = pts[0], pts[-1]
        per = (r1 - r0) * 1000 / (n1 - n0) if n1 > n0 else 0.0
        ax.plot([n for n, _ in pts], [r for _, r in pts], marker="o", color=COLOURS.get(k), lw=1.5,
                label=f"{label(doc, k)} ({per:.0f} KB per connection)")
    ax.set_xlabel("idle connections held (logged in, presence sent)")
    ax.set_ylabel("server RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Memory against held connections ({_note(doc)}whole process tree)", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _save(plt, fig, path)


PICTURES = (("bench-knee.png", knee), ("bench-logins.png", logins), ("bench-rss.png", rss))


def draw(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every picture the document has data for, written to ``out_dir``; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in PICTURES:
        if fn(doc, out_dir / name):
            written.append(out_dir / name)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("results", type=Path, help="JSON from compare.py --json FILE (or results.json)")
    ap.add_argument("out_dir", type=Path, help="directory for the PNGs (e.g. docs/)")
    args = ap.parse_args(argv)
    try:
        doc = load(args.results)
    except PlotError as e:
        print(f"plots: {e}", file=sys.stderr)
        return 2
    written = draw(doc, args.out_dir)
    for name, _ in PICTURES:
        path = args.out_dir / name
        print(f"  {'wrote  ' if path in written else 'skipped'} {path}"
              + ("" if path in written else " (no data for it in this run)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
