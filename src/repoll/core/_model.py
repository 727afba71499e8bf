"""The operation record every store keeps, and its JSON status document."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._status import Event, OperationStatus, transition


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """An endpoint's response, kept to be replayed byte for byte."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Operation:
    """One deferred request: who started it, where it is, and its final response."""

    id: str
    principal: str
    endpoint: str
    status: OperationStatus
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    progress: float | None = None
    message: str | None = None
    cancel_requested: bool = False
    response: StoredResponse | None = None
    version: int = 0
    # Digest of (principal, Idempotency-Key), unique among stored operations,
    # and digest of the request it came with (method, target, body).
    idempotency_key: str | None = None
    request_digest: str | None = None
    # The instance (server process or worker) running the work; when it stops
    # sending heartbeats, another instance declares the work lost.
    owner: str | None = None
    # The start asked for 202 (Prefer: respond-async): polls get 202 too, so a
    # poller that never repeats the preference (azure-core, say) keeps its style.
    respond_async: bool = False

    def apply(
        self,
        event: Event,
        *,
        now: float,
        retention: float,
        response: StoredResponse | None = None,
        message: str | None = None,
    ) -> Operation:
        """The record after ``event`` (raises InvalidTransition if it cannot happen)."""
        status = transition(self.status, event)
        changes: dict[str, Any] = {"status": status, "updated_at": now}
        if event is Event.START:
            changes["started_at"] = now
        if status.is_terminal:
            changes["finished_at"] = now
            changes["expires_at"] = now + retention
            changes["response"] = response
            if status is OperationStatus.SUCCEEDED:
                changes["progress"] = 1.0
        if message is not None:
            changes["message"] = message
        return self.evolve(**changes)

    def evolve(self, **changes: Any) -> Operation:
        """A copy with ``changes``: ``dataclasses.replace`` without its per-call
        introspection, which showed in profiles of every start and every write."""
        copy = object.__new__(Operation)
        for name in _FIELD_NAMES:
            value = changes[name] if name in changes else getattr(self, name)
            object.__setattr__(copy, name, value)
        return copy

    def is_expired(self, now: float) -> bool:
        """Whether the outcome's retention time has passed (the store may still hold it)."""
        return self.expires_at is not None and self.expires_at <= now

    def with_cancel_requested(self, *, now: float) -> Operation | None:
        """The record asking its work to stop, or None: it has ended or already asks."""
        if self.status.is_terminal or self.cancel_requested:
            return None
        return self.evolve(cancel_requested=True, updated_at=now)

    def with_progress(
        self, progress: float | None, message: str | None, *, now: float
    ) -> Operation | None:
        """The record with new progress, or None once it has ended (nothing to report)."""
        if self.status.is_terminal:
            return None
        return self.evolve(progress=progress, message=message, updated_at=now)

    def status_document(self) -> dict[str, Any]:
        """The JSON body of a status response (never the result itself)."""
        return {
            "id": self.id,
            "status": self.status.value,
            "progress": self.progress,
            "message": self.message,
            "cancel_requested": self.cancel_requested,
            "created_at": _rfc3339(self.created_at),
            "updated_at": _rfc3339(self.updated_at),
            "started_at": _rfc3339(self.started_at),
            "finished_at": _rfc3339(self.finished_at),
            "expires_at": _rfc3339(self.expires_at),
        }

    def status_json(self) -> bytes:
        """:meth:`status_document` as compact JSON.

        Written out by hand because it goes with every pending answer: only
        the message needs JSON escaping; ids, statuses and timestamps are
        plain ASCII by construction.
        """
        stamps: dict[float | None, str] = {None: "null"}
        for stamp in (self.created_at, self.updated_at, self.started_at):
            if stamp not in stamps:  # at creation all three are the same instant
                stamps[stamp] = f'"{_rfc3339(stamp)}"'
        finished = "null" if self.finished_at is None else f'"{_rfc3339(self.finished_at)}"'
        expires = "null" if self.expires_at is None else f'"{_rfc3339(self.expires_at)}"'
        progress = "null" if self.progress is None else repr(float(self.progress))
        message = "null" if self.message is None else json.dumps(self.message)
        canceled = "true" if self.cancel_requested else "false"
        return (
            f'{{"id":"{self.id}","status":"{self.status.value}","progress":{progress},'
            f'"message":{message},"cancel_requested":{canceled},'
            f'"created_at":{stamps[self.created_at]},"updated_at":{stamps[self.updated_at]},'
            f'"started_at":{stamps[self.started_at]},"finished_at":{finished},'
            f'"expires_at":{expires}}}'
        ).encode()


_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(Operation))


def _rfc3339(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds")


def clamp_progress(value: float | None) -> float | None:
    """Progress as the protocol carries it: None, or a number in [0, 1]."""
    if value is None or math.isnan(value):  # NaN means "don't know"
        return None
    return min(max(float(value), 0.0), 1.0)


# --- the row form shared by the SQL and Redis stores ---------------------------


def _json_number(value: float | None) -> str:
    return "null" if value is None else repr(float(value))


def _json_text(value: str | None) -> str:
    if value is None:
        return "null"
    # Printable ASCII without a quote or backslash is its own JSON (ids,
    # digests, methods and paths, header fields): what json.dumps would write.
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)


def encode_row(op: Operation) -> tuple[Any, ...]:
    """The record as (id, version, status, expires_at, record JSON, body, idempotency key).

    The JSON is written out by hand (every start and every outcome writes
    one): numbers and flags as they are, strings through ``json.dumps``.
    """
    record = (
        f'{{"principal":{_json_text(op.principal)},"endpoint":{_json_text(op.endpoint)},'
        f'"created_at":{_json_number(op.created_at)},"updated_at":{_json_number(op.updated_at)},'
        f'"started_at":{_json_number(op.started_at)},'
        f'"finished_at":{_json_number(op.finished_at)},'
        f'"progress":{_json_number(op.progress)},"message":{_json_text(op.message)},'
        f'"cancel_requested":{"true" if op.cancel_requested else "false"},'
        f'"request_digest":{_json_text(op.request_digest)},"owner":{_json_text(op.owner)},'
        f'"respond_async":{"true" if op.respond_async else "false"}'
    )
    response = None
    if op.response is not None:
        fields = ",".join(
            f"[{_json_text(name)},{_json_text(value)}]" for name, value in op.response.headers
        )
        record += f',"response_meta":{{"status":{int(op.response.status)},"headers":[{fields}]}}'

        response = op.response.body
    return (
        op.id,
        op.version,
        op.status.value,
        op.expires_at,
        record + "}",
        response,
        op.idempotency_key,
    )


def decode_row(row: Sequence[Any]) -> Operation:
    """The inverse of :func:`encode_row`."""
    op_id, version, status, expires_at, record_json, body, idempotency_key = row
    record = json.loads(record_json)
    meta = record.pop("response_meta", None)
    response = None
    if meta is not None and body is not None:
        headers = tuple((str(k), str(v)) for k, v in meta["headers"])
        response = StoredResponse(int(meta["status"]), headers, bytes(body))
    record.setdefault("owner", None)
    record.setdefault("respond_async", False)
    record.setdefault("request_digest", None)
    return Operation(
        id=op_id,
        version=version,
        status=OperationStatus(status),
        expires_at=expires_at,
        response=response,
        idempotency_key=idempotency_key,
        **record,
    )
