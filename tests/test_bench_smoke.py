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


def test_bench_smoke_runs_and_reports():
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
