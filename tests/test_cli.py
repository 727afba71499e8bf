"""The command line, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def repoll(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "repoll._cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_shows_the_hops_and_the_result():
    result = repoll("demo", "--seconds", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "POST" in out
    assert "-> 303" in out
    assert "Retry-After:" in out
    assert "/operations/" in out
    assert "-> 200" in out
    assert '"result":"done"' in out


def test_demo_with_a_failing_job_shows_the_problem():
    result = repoll("demo", "--seconds", "0.5", "--fail")
    assert result.returncode == 0, result.stderr
    assert "-> 500" in result.stdout
    assert "operation-failed" in result.stdout


def test_bad_arguments_are_rejected():
    result = repoll("demo", "--seconds", "soon")
    assert result.returncode == 2
    assert "invalid float value" in result.stderr
