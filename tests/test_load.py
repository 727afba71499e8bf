"""The load test, reduced: many clients, each its own principal, for a few seconds."""

from __future__ import annotations

import pytest
from bench.load import run

pytestmark = pytest.mark.slow


def test_reduced_load_loses_nothing():
    result = run(clients=100, seconds=5)
    assert result["errors"] == 0, result["first_errors"]
    assert result["lost"] == 0
    assert result["operations_started"] > 100
    assert result["operations_completed"] == result["operations_started"]
