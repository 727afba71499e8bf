"""The benchmark suite, in its seconds-long smoke version, so that it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_runs_and_reports(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "repoll, long-poll" in result.stdout
    results = ROOT / "bench" / "results"
    polling = json.loads((results / "polling.json").read_text())
    assert polling["smoke"] is True
    rows = {row["strategy"]: row for row in polling["rows"]}
    assert len(rows) == 6
    assert all(row["failed"] == 0 for row in rows.values())
    # Sanity, not speed: long-poll needs a start and about one poll.
    assert rows["repoll, long-poll"]["requests_mean"] <= 3
    defaults = {
        r["strategy"]: r for r in json.loads((results / "defaults.json").read_text())["rows"]
    }
    assert all(row["failed"] == 0 for row in defaults.values())
    assert defaults["repoll client, its defaults"]["requests_mean"] <= 3
    scale = json.loads((results / "scale.json").read_text())
    assert all(row["all_200"] for row in scale["held"])
    if "distributed: skipped" not in result.stdout:
        distributed = json.loads((results / "distributed.json").read_text())
        assert distributed["smoke"] is True
        assert all(row["failed"] == 0 for row in distributed["rows"])
    elif os.environ.get("CI"):
        pytest.fail("CI must run the distributed benchmark: " + result.stdout[-300:])
    throughput = json.loads((results / "throughput.json").read_text())
    assert all(row["rps"] > 0 for row in throughput["rows"])
    # The charts docs/performance.md shows, drawn from these results (into a
    # temporary directory: the committed ones come from a full run).
    from bench import charts

    drawn = {path.name for path in charts.draw(results, tmp_path)}
    assert drawn == {
        "polling.svg",
        "defaults.svg",
        "throughput.svg",
        "held_polls.svg",
        "budgets.svg",
    }
    polling_chart = (tmp_path / "polling.svg").read_text()
    assert polling_chart.startswith("<?xml")
    assert "repoll, long-poll" in polling_chart
    assert "--smoke" in polling_chart


def test_the_budget_chart_plays_the_figures_the_readme_states():
    """The README's longest jobs per client come from the server's own decisions."""
    from bench.charts import longest_jobs

    jobs = {name: (seconds, requests) for name, seconds, requests in longest_jobs()}
    assert jobs["curl"] == (1225.0, 50)  # "20 min with curl -L"
    assert jobs["requests"] == (725.0, 30)  # "12 min with requests"
    assert jobs["wget"][0] == jobs["node"][0] == 475.0  # "7.9 min"
    assert jobs["urllib"][0] == jobs["aiohttp"][0] == jobs["go"][0] == 225.0  # "3.75 min"
    assert jobs["httpx"] == (76.0, 20)  # "76 s with httpx"
    readme = (ROOT / "README.md").read_text()
    for claim in ("20 min with `curl -L`", "12 min with requests", "7.9 min", "3.75 min", "76 s"):
        assert claim in readme


def test_the_id_cost_benchmark_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "bench.sqlite_ids", "3000", "16"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "random (128 bits)" in out
    assert "time-ordered (repoll's)" in out
