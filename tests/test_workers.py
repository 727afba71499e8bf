"""``repoll serve --workers 4`` on the default SQLite store: real processes, one killed.

The embedded default must survive the standard production setup: several
uvicorn worker processes on one store file. A worker killed mid-operation
loses its own operations (they end ``operation-lost``), and nothing else:
the other workers' operations succeed, polls held on one process wake when
the work ends on another, and a DELETE reaches the process doing the work.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests
from tests.test_restart import free_port, start_server

pytestmark = pytest.mark.slow

WORKERS = 4


def _owners(store: Path) -> dict[str, str]:
    """Operation id -> the process (host:pid:...) that owns it, read from the file."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT id, record FROM repoll_operations").fetchall()
    return {op_id: json.loads(record)["owner"] for op_id, record in rows}


def _start(base: str, seconds: float) -> str:
    # A fresh connection each time, so that the kernel spreads starts over the workers.
    response = requests.post(
        f"{base}/start_work",
        json={"seconds": seconds},
        allow_redirects=False,
        timeout=10,
        headers={"connection": "close"},
    )
    assert response.status_code == 303, response.text
    return urljoin(base, response.headers["location"])


def _wait_for_every_worker(store: Path) -> None:
    # One worker answering says nothing of the others, still importing the
    # app; each holds its lock file in PATH-owners/ once its store is open.
    owners = Path(f"{store}-owners")
    deadline = time.monotonic() + 60
    while not owners.exists() or len(list(owners.glob("*.lock"))) < WORKERS:
        assert time.monotonic() < deadline, "not every worker started"
        time.sleep(0.1)


@pytest.fixture
def served(tmp_path):
    store = tmp_path / "ops.sqlite3"
    port = free_port()
    process = start_server(f"sqlite:///{store}", port, "--workers", str(WORKERS))
    try:
        _wait_for_every_worker(store)
        yield f"http://127.0.0.1:{port}", store, process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        process.log.close()


def test_a_killed_worker_loses_only_its_own_operations(served):
    base, store, _ = served
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        urls = list(pool.map(lambda _: _start(base, 6.0), range(100)))
    owners = _owners(store)
    by_process: dict[str, list[str]] = {}
    for url in urls:
        by_process.setdefault(owners[url.rsplit("/", 1)[1].split("?")[0]], []).append(url)
    assert len(by_process) >= 2, "the starts all landed on one worker"
    victim = max(by_process, key=lambda owner: len(by_process[owner]))
    victim_pid = int(victim.split(":")[-2])
    time.sleep(1.0)
    killed_at = time.monotonic()
    os.kill(victim_pid, signal.SIGKILL)

    # The victim's operations end lost promptly, long before their work would have.
    lost = set(by_process[victim])
    deadline = killed_at + 15
    pending = set(lost)
    while pending and time.monotonic() < deadline:
        for url in list(pending):
            answer = requests.get(url, headers={"prefer": "wait=0"}, timeout=10)
            if answer.headers.get("operation-status") == "failed":
                assert answer.status_code == 500
                assert answer.json()["type"] == "urn:repoll:problem:operation-lost"
                pending.discard(url)
        time.sleep(0.2)
    assert not pending, f"{len(pending)} operations of the killed worker still unfinished"
    lost_after = time.monotonic() - killed_at
    assert lost_after < 6.0  # documented: within two maintenance rounds (2 s each)

    # Every other operation succeeds and replays its result, through any worker.
    def final(url: str) -> requests.Response:
        return requests.get(url, headers={"prefer": "wait=20"}, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = dict(zip(urls, pool.map(final, urls), strict=True))
    for url, answer in answers.items():
        if url in lost:
            assert answer.status_code == 500
        else:
            assert answer.status_code == 200, answer.text
            assert answer.json()["result"] == "done"
            again = requests.get(url, timeout=10)  # stable, from whichever worker
            assert again.content == answer.content
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        unfinished = db.execute(
            "SELECT count(*) FROM repoll_operations WHERE status IN ('queued', 'running')"
        ).fetchone()[0]
    assert unfinished == 0


def test_held_polls_wake_across_processes(served):
    base, _store, _ = served
    delays = []
    for _ in range(24):
        url = _start(base, 0.5)
        # A new connection: with four workers, most polls land on another
        # process than the one running the work.
        answer = requests.get(url, headers={"prefer": "wait=10", "connection": "close"}, timeout=20)
        returned = time.time()
        assert answer.status_code == 200
        delays.append(returned - answer.json()["finished_at"])
    assert statistics.median(delays) < 0.15
    assert max(delays) < 0.5, delays


def test_delete_reaches_the_worker_doing_the_work(served):
    base, _store, _ = served
    for _ in range(8):
        url = _start(base, 30.0)
        canceled = requests.delete(url, headers={"connection": "close"}, timeout=10)
        assert canceled.status_code in {200, 202}
        final = requests.get(url, headers={"prefer": "wait=5"}, timeout=10)
        assert final.status_code == 409
        assert final.headers["operation-status"] == "canceled"


def test_private_stores_are_refused_with_several_workers(tmp_path):
    for store in ("memory://", "sqlite://"):
        result = subprocess.run(
            [sys.executable, "-m", "repoll", "serve", "--workers", "2", "--store", store],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2
        assert "private to one process" in result.stderr
