"""Every standard client, at its defaults, ends well whatever the job's length (issue 12).

The time-compressed matrix of ``bench/budgets.py`` (``python -m bench --only
budgets --compressed``): holds capped at a fraction of a second (``repoll
serve --max-hold``), a short job that ends within every client's redirect
budget and a long one that outlasts all of them, with and without progress
reports, each against a fresh ``repoll serve``. Each client must end without
raising or exiting non-zero, with the endpoint's final answer or with a
``202`` naming the operation URL (``Location`` or ``Content-Location``), on
which a GET after the work is over gives the final answer.
"""

from __future__ import annotations

import pytest
from bench import budgets
from bench._common import table

pytestmark = pytest.mark.slow

CLIENTS = budgets.available_clients()


@pytest.fixture(scope="module")
def matrix() -> list[dict[str, object]]:
    # Every run at once (each has its own server): about 40 s in all, the
    # long job's 16 s plus the servers' starts, two at a time.
    return budgets.run(
        budgets.COMPRESSED_JOBS,
        clients=CLIENTS,
        max_hold=budgets.COMPRESSED_MAX_HOLD,
        parallel=len(CLIENTS) * len(budgets.COMPRESSED_JOBS) * 2,
    )


@pytest.mark.parametrize("client", CLIENTS)
def test_client_ends_with_the_answer_or_the_operation_url(matrix, client):
    rows = [row for row in matrix if row["client"] == client]
    assert len(rows) == len(budgets.COMPRESSED_JOBS) * 2
    bad = [
        row
        for row in rows
        if row["failure"] != "-"
        or not (row["end"] == "final" or (row["end"] == "202+op" and row["later_get"] == "final"))
    ]
    details = "\n".join(f"{row['job_seconds']:g} s: {row['message']}" for row in bad)
    assert not bad, "\n" + table(bad, budgets.COLUMNS) + "\n" + details


def test_the_long_job_outlasts_every_budget(matrix):
    """The matrix exercises running out: no client gets the long job's answer by redirects alone.

    Holds are capped, so even curl's 50 redirects end before the long job
    does: a client that got ``final`` there would mean the cap did not apply.
    """
    longest = max(budgets.COMPRESSED_JOBS)
    capped = [
        row for row in matrix if row["job_seconds"] == longest and row["client"] != "repoll client"
    ]
    assert all(row["longest_hold"] <= budgets.COMPRESSED_MAX_HOLD + 0.5 for row in capped), table(
        capped, budgets.COLUMNS
    )
    assert not [row for row in capped if row["end"] == "final"], table(capped, budgets.COLUMNS)
