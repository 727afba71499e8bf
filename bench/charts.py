"""Charts of the benchmark results, for docs/performance.md.

``python -m bench`` draws them after a full run (not after ``--smoke``, whose
short runs would replace the committed figures with noise);
``python -m bench --charts`` redraws them from ``bench/results/*.json`` alone.
Each chart is drawn from whatever results are there and skipped when its
file is missing. The budgets chart needs no run: it plays the server's own
pacing decisions (``repoll.core``) for each known client at the defaults.

SVG, with a fixed hash salt and no date, so that the same results give the
same file and a diff shows only what changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._common import RESULTS

CHARTS = Path(__file__).resolve().parent.parent / "docs" / "charts"
_HIGHLIGHT = "#1f6feb"
_PLAIN = "#9aa4b2"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - the bench extra
        msg = "charts need matplotlib: pip install -e '.[bench]'"
        raise SystemExit(msg) from exc
    matplotlib.use("svg")
    matplotlib.rcParams.update(
        {
            "svg.hashsalt": "repoll-bench",
            "svg.fonttype": "none",  # text stays text: small files, searchable
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    import matplotlib.pyplot as plt

    return plt


def _load(results: Path, name: str, *, smoke: bool) -> dict[str, Any] | None:
    """A benchmark's results; None if there are none, or only a --smoke run's and not ``smoke``."""
    path = results / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    if data.get("smoke") and not smoke:
        return None
    return data


def _save(plt: Any, figure: Any, out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.svg"
    figure.tight_layout()
    figure.savefig(path, metadata={"Date": None})
    plt.close(figure)
    return path


def _run_of(data: dict[str, Any]) -> str:
    """Which run a chart shows: its date, and whether it was a smoke run."""
    date = data.get("date")
    run = f"run of {date}" if date else "run"
    return f"{run}, --smoke" if data.get("smoke") else run


def _colours(labels: list[str]) -> list[str]:
    return [_HIGHLIGHT if label.startswith("repoll") else _PLAIN for label in labels]


def _strategies(
    plt: Any, results: Path, out: Path, name: str, title: str, *, smoke: bool
) -> Path | None:
    """Requests per operation and delay, per polling strategy: polling.json, defaults.json."""
    data = _load(results, name, smoke=smoke)
    if data is None:
        return None
    rows = data["rows"]
    labels = [row["strategy"] for row in rows][::-1]
    colours = _colours(labels)
    figure, (requests, delay) = plt.subplots(1, 2, figsize=(9, 0.45 * len(rows) + 1.4))
    bars = requests.barh(labels, [r["requests_mean"] for r in rows][::-1], color=colours)
    requests.bar_label(bars, fmt="%.2f", padding=3)
    requests.set_xlabel("requests per operation (mean)")
    requests.margins(x=0.2)
    bars = delay.barh(labels, [r["delay_p95_ms"] for r in rows][::-1], color=colours)
    delay.bar_label(bars, fmt="%.0f ms", padding=3)
    delay.margins(x=0.25)
    delay.set_xlabel("result delay after the work ends, p95 (ms)")
    delay.set_yticklabels([])
    figure.suptitle(f"{title}: {rows[0]['operations']} operations ({_run_of(data)})")
    return _save(plt, figure, out, name)


def _throughput(plt: Any, results: Path, out: Path, *, smoke: bool) -> Path | None:
    data = _load(results, "throughput", smoke=smoke)
    if data is None:
        return None
    rows = [row for row in data["rows"] if row["store"] != "-"][::-1]
    labels = [f"{row['path']} ({row['store']})" for row in rows]
    ratios = [row["ratio"] for row in rows]
    low = [row["ratio"] - row["ratio_min"] for row in rows]
    high = [row["ratio_max"] - row["ratio"] for row in rows]
    figure, axes = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.2))
    bars = axes.barh(labels, ratios, xerr=[low, high], color=_HIGHLIGHT, ecolor="#444", capsize=3)
    axes.bar_label(bars, fmt="%.2f", label_type="center", color="white")
    axes.axvline(1.0, color="#444", linewidth=0.8, linestyle="--")
    axes.set_xlabel("req/s as a ratio of a plain Starlette endpoint (median, range)")
    figure.suptitle(f"Throughput of one server process ({_run_of(data)})")
    return _save(plt, figure, out, "throughput")


def _held_polls(plt: Any, results: Path, out: Path, *, smoke: bool) -> Path | None:
    data = _load(results, "scale", smoke=smoke)
    if data is None:
        return None
    rows = data["held"]
    figure, axes = plt.subplots(figsize=(6, 1.8))
    labels = [f"{row['store']} ({row['held']:,} held)" for row in rows]
    bars = axes.barh(labels, [row["bytes_per_held_poll"] / 1024 for row in rows], color=_HIGHLIGHT)
    axes.bar_label(bars, fmt="%.1f KiB", padding=3)
    axes.margins(x=0.2)
    axes.set_xlabel("memory per held poll (KiB)")
    figure.suptitle(f"Held polls ({_run_of(data)})")
    return _save(plt, figure, out, "held_polls")


def longest_jobs(max_hold: float | None = None) -> list[tuple[str, float, int]]:
    """Each known client's longest job that ends in the final response, at the defaults.

    The server's own decisions, played hop by hop: every hold as long as the
    client allows (``plain_hold``) while it may be sent another redirect
    (``follows_again``). Returns (client, seconds, requests).
    """
    from repoll.core._pacing import PacingPolicy, follows_again, plain_hold
    from repoll.core._profiles import KNOWN_CLIENTS

    policy = PacingPolicy() if max_hold is None else PacingPolicy(max_hold=max_hold)
    jobs = []
    for profile in KNOWN_CLIENTS:
        age, followed = 0.0, 0
        while follows_again(profile, followed, age, policy):
            age += plain_hold(profile, followed, age, policy)
            followed += 1
        jobs.append((profile.name, age, followed + 1))
    return sorted(jobs, key=lambda job: job[1])


def _budgets(plt: Any, out: Path) -> Path:
    jobs = longest_jobs()
    figure, axes = plt.subplots(figsize=(7, 0.35 * len(jobs) + 1.2))
    axes.barh([name for name, _, _ in jobs], [s / 60 for _, s, _ in jobs], color=_HIGHLIGHT)
    for index, (_, seconds, requests) in enumerate(jobs):
        label = f"  {seconds / 60:.1f} min, {requests} requests"
        axes.text(seconds / 60, index, label, va="center")
    axes.set_xlabel("longest job answered in full, client and server defaults (minutes)")
    axes.set_xlim(0, max(s for _, s, _ in jobs) / 60 * 1.35)
    figure.suptitle("Standard clients' budgets (longer jobs: the graceful 202)")
    return _save(plt, figure, out, "budgets")


def draw(results: Path = RESULTS, out: Path = CHARTS, *, smoke: bool = True) -> list[Path]:
    """Every chart the results in ``results`` allow, written to ``out``; the paths written.

    ``smoke=False`` leaves out results of a ``--smoke`` run (their chart is not
    redrawn): after the test suite's smoke run, a partial run (``--only``)
    would otherwise redraw the committed charts from seconds-long noise.
    """
    plt = _pyplot()
    drawers: list[Callable[[], Path | None]] = [
        lambda: _strategies(plt, results, out, "polling", "Polling strategies", smoke=smoke),
        lambda: _strategies(
            plt, results, out, "defaults", "The repoll client at its defaults", smoke=smoke
        ),
        lambda: _throughput(plt, results, out, smoke=smoke),
        lambda: _held_polls(plt, results, out, smoke=smoke),
        lambda: _budgets(plt, out),
    ]
    return [path for drawer in drawers if (path := drawer()) is not None]
