"""What the shape of operation ids costs SQLite: random ids against time-ordered ones.

``python -m bench.sqlite_ids [ROWS] [BATCH]`` inserts ROWS finished
operations (30,000 by default) into the SQLite store's own schema, BATCH
(16) per transaction as the event loop's writer commits them, once with
ids of 128 random bits and once with repoll's ids (creation time first),
and prints the time per insert. Random ids land all over the id index, so
each transaction rewrites a page of it per insert; ids made one after
another land at its end, on the same few pages.
"""

from __future__ import annotations

import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from repoll.core._headers import new_operation_id
from repoll.core._model import Operation, StoredResponse, encode_row
from repoll.core._status import OperationStatus
from repoll.stores._sqlite import _SCHEMA, _SQL


def _insert_time(path: Path, make_id: Callable[[float], str], rows: int, batch: int) -> float:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.executescript(_SCHEMA)
    now = time.time()
    template = Operation(
        id="",
        principal="p" * 64,
        endpoint="POST /start",
        status=OperationStatus.SUCCEEDED,
        created_at=now,
        updated_at=now,
        started_at=now,
        finished_at=now,
        expires_at=now + 3600,
        owner="host:123:abcdef12",
        response=StoredResponse(200, (("content-type", "application/json"),), b'{"ok":1}'),
    )
    records = [encode_row(template.evolve(id=make_id(now + i / 10_000))) for i in range(rows)]
    started = time.perf_counter()
    for first in range(0, rows, batch):
        connection.execute("BEGIN IMMEDIATE")
        for record in records[first : first + batch]:
            connection.execute(_SQL.insert, record)
        connection.execute("COMMIT")
    took = time.perf_counter() - started
    connection.close()
    return took / rows


def run(rows: int = 30_000, batch: int = 16) -> dict[str, float]:
    """Microseconds per insert, for each kind of id."""
    kinds: dict[str, Callable[[float], str]] = {
        "random (128 bits)": lambda _: secrets.token_urlsafe(16),
        "time-ordered (repoll's)": new_operation_id,
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (kind, make_id) in enumerate(kinds.items()):
            path = Path(tmp) / f"ids-{index}.db"
            results[kind] = _insert_time(path, make_id, rows, batch) * 1e6
    return results


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 30_000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    print(f"{rows} inserts of a finished operation, {batch} per transaction (WAL)")
    for kind, micros in run(rows, batch).items():
        print(f"  {kind:<24} {micros:6.1f} us per insert")


if __name__ == "__main__":
    main()
