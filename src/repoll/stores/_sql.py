"""The SQL the SQLite and PostgreSQL stores share: one table, the same statements.

Both keep operations in ``repoll_operations``, with the same columns,
indexes, reads and writes; they differ only in column types and in how a
statement marks its parameters (``?`` for sqlite3, ``%s`` for psycopg).
Rows go in and out in :data:`COLUMNS` order, through
:func:`~repoll.core._model.encode_row` and :func:`~repoll.core._model.decode_row`.
What only one of them has (SQLite's events, PostgreSQL's owners and NOTIFY,
each one's way of keeping the secret) stays in its own module.
"""

# ruff: noqa: S608 - every statement is built from constants and a driver's parameter mark
from __future__ import annotations

import dataclasses
from typing import Any

from ..core._model import Operation, encode_row

COLUMNS = "id, version, status, expires_at, record, response, idempotency_key"
# The statuses of unfinished operations, as stored (and as a partial index has them).
UNFINISHED = ("queued", "running")


def operations_schema(*, integer: str, real: str, blob: str) -> tuple[str, ...]:
    """The operations table and its indexes, in the backend's column types."""
    return (
        f"""CREATE TABLE IF NOT EXISTS repoll_operations (
            id TEXT PRIMARY KEY,
            version {integer} NOT NULL,
            status TEXT NOT NULL,
            expires_at {real},
            record TEXT NOT NULL,
            response {blob},
            idempotency_key TEXT
        )""",
        """CREATE UNIQUE INDEX IF NOT EXISTS repoll_operations_idempotency_key
            ON repoll_operations (idempotency_key) WHERE idempotency_key IS NOT NULL""",
        """CREATE INDEX IF NOT EXISTS repoll_operations_expires
            ON repoll_operations (expires_at) WHERE expires_at IS NOT NULL""",
        """CREATE INDEX IF NOT EXISTS repoll_operations_unfinished
            ON repoll_operations (status) WHERE status IN ('queued', 'running')""",
    )


@dataclasses.dataclass(frozen=True)
class Statements:
    """The statements on operations, with one driver's parameter mark."""

    insert: str  # the params: encode_row(operation)
    select_by_id: str  # a row of COLUMNS
    select_by_key: str  # a row of COLUMNS
    id_by_key: str  # who holds an idempotency key
    select_unfinished: str  # rows of COLUMNS
    update: str  # the params: update_params(operation, expected_version)
    delete_expired: str  # the param: now - tombstone
    drop_responses: str  # the param: now

    @classmethod
    def marked(cls, mark: str) -> Statements:
        select = f"SELECT {COLUMNS} FROM repoll_operations WHERE"
        return cls(
            insert=f"INSERT INTO repoll_operations ({COLUMNS}) VALUES ({', '.join([mark] * 7)})",
            select_by_id=f"{select} id = {mark}",
            select_by_key=f"{select} idempotency_key = {mark}",
            id_by_key=f"SELECT id FROM repoll_operations WHERE idempotency_key = {mark}",
            select_unfinished=f"{select} status IN ('queued', 'running')",
            update=(
                f"UPDATE repoll_operations SET version = {mark}, status = {mark}, "
                f"expires_at = {mark}, record = {mark}, response = {mark} "
                f"WHERE id = {mark} AND version = {mark}"
            ),
            delete_expired=f"DELETE FROM repoll_operations WHERE expires_at <= {mark}",
            drop_responses=(
                f"UPDATE repoll_operations SET response = NULL "
                f"WHERE expires_at <= {mark} AND response IS NOT NULL"
            ),
        )


def update_params(operation: Operation, expected_version: int) -> tuple[Any, ...]:
    """The parameters of :attr:`Statements.update`: the new row, if at ``expected_version``."""
    op_id, version, status, expires_at, record, response, _ = encode_row(operation)
    return (version, status, expires_at, record, response, op_id, expected_version)
