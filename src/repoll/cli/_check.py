"""``repoll check``: run the protocol's clauses against any server and report each.

Each clause names its level (MUST or SHOULD, as docs/protocol.md words it)
and what was seen. The start request is sent four times (plain, with
``Prefer: respond-async``, once to run a client out of redirects, and once
more to cancel), so the endpoint should start work that lasts a few seconds
(at least 5 for the graceful ``202``). Every request carries the headers
given to the check (``-H``), polls included, as a client's would.

The checker reads the server's fields with the same parsers the client and
server use (``core._headers``) and names states with ``OperationStatus``, so
it judges by the rules repoll itself follows, and a server's malformed value
(a non-ASCII digit in ``Retry-After``, an unknown status) is a failed clause
in the report, never a crash of the checker.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin

from .._errors import MissingExtraError
from ..core import _headers as h
from ..core._poll import same_origin
from ..core._status import OperationStatus

try:
    import httpx
except ModuleNotFoundError as exc:
    raise MissingExtraError("client", "httpx") from exc


def _status(response: httpx.Response) -> OperationStatus | None:
    """The response's Operation-Status, exactly as the protocol spells one; else None."""
    try:
        return OperationStatus(response.headers.get(h.OPERATION_STATUS, ""))
    except ValueError:
        return None


def _pending(response: httpx.Response) -> bool:
    status = _status(response)
    return status is not None and not status.is_terminal


def _terminal(response: httpx.Response) -> bool:
    status = _status(response)
    return status is not None and status.is_terminal


@dataclass
class Clause:
    name: str
    level: str  # MUST or SHOULD
    text: str
    result: str = "skip"  # pass, fail, skip
    saw: str = "not reached"


@dataclass
class Check:
    url: str
    method: str = "POST"
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 60.0
    clauses: dict[str, Clause] = field(default_factory=dict)

    def clause(self, name: str, level: str, text: str) -> Clause:
        return self.clauses.setdefault(name, Clause(name, level, text))

    def verdict(self, name: str, level: str, text: str, ok: bool, saw: str) -> bool:
        clause = self.clause(name, level, text)
        clause.result, clause.saw = ("pass" if ok else "fail"), saw
        return ok


def _describe(response: httpx.Response) -> str:
    wanted = (
        "location",
        "retry-after",
        "retry-after-ms",
        "operation-status",
        "cache-control",
        "content-location",
        "preference-applied",
        "content-type",
    )
    shown = ", ".join(f"{k}: {response.headers[k]}" for k in wanted if k in response.headers)
    return f"{response.status_code}" + (f" ({shown})" if shown else "")


CLAUSES: list[tuple[str, str, str]] = [
    ("start-answer", "MUST", "a deferred start answers 303 (or 202) with Location"),
    ("location-same-origin", "MUST", "the operation URL is on the request's origin"),
    ("retry-after", "MUST", "pending answers carry Retry-After in whole seconds"),
    ("retry-after-ms", "SHOULD", "pending answers carry Retry-After-Ms matching Retry-After"),
    ("operation-status", "MUST", "pending answers carry Operation-Status queued or running"),
    ("status-document", "SHOULD", "pending answers carry a JSON status document (id, status)"),
    ("no-store", "MUST", "operation responses carry Cache-Control: no-store"),
    ("respond-async", "MUST", "Prefer: respond-async gets 202 with Preference-Applied"),
    ("wait-zero", "MUST", "Prefer: wait=0 is answered at once"),
    ("pacing", "MUST", "a status GET without Prefer is held, not answered at once"),
    (
        "hop-urls",
        "SHOULD",
        "a poll's 303 names a URL not yet visited (clients count repeats as loops)",
    ),
    (
        "final-replay",
        "MUST",
        "the outcome carries a terminal Operation-Status and Content-Location",
    ),
    ("final-stable", "MUST", "the outcome is the same on every later GET"),
    ("unknown-404", "MUST", "an unknown id gets 404 problem+json without Operation-Status"),
    ("malformed-404", "SHOULD", "a malformed id gets 404"),
    (
        "graceful-202",
        "SHOULD",
        "a poll at a client's last redirect gets 202 and the operation URL, not a 303",
    ),
    ("cancel", "SHOULD", "DELETE cancels: 200/202, then a canceled outcome"),
    ("method-405", "SHOULD", "other methods on an operation URL get 405 with Allow"),
]


def run_check(check: Check, client: httpx.Client) -> list[Clause]:
    for name, level, text in CLAUSES:
        check.clause(name, level, text)
    started = _start(check, client, {})
    if started is not None:
        operation = started[0]
        _pending_clauses(check, client, operation)
        _outcome_clauses(check, client, operation)
        _error_clauses(check, client, operation)
    async_operation = _start(check, client, {"prefer": "respond-async"}, record=False)
    if async_operation is not None:
        response = async_operation[1]
        check.verdict(
            "respond-async",
            "MUST",
            "",
            response.status_code == 202
            and "respond-async" in response.headers.get("preference-applied", ""),
            _describe(response),
        )
        _cancel_clause(check, client, async_operation[0])
    ran_out = _start(check, client, {"prefer": "respond-async"}, record=False)
    if ran_out is not None:
        _graceful_clause(check, client, ran_out[0])
    return list(check.clauses.values())


def _start(
    check: Check, client: httpx.Client, extra: dict[str, str], *, record: bool = True
) -> tuple[str, httpx.Response] | None:
    response = client.request(
        check.method, check.url, content=check.body, headers={**check.headers, **extra}
    )
    location = response.headers.get("location")
    ok = response.status_code in (202, 303) and location is not None
    if record:
        check.verdict("start-answer", "MUST", "", ok, _describe(response))
    if not ok or location is None:
        return None
    operation_url = urljoin(str(response.url), location)
    if record:
        check.verdict(
            "location-same-origin", "MUST", "", same_origin(operation_url, check.url), operation_url
        )
        _pending_response_clauses(check, response)
    return operation_url, response


def _pending_response_clauses(check: Check, response: httpx.Response) -> None:
    seen = _describe(response)
    # The protocol asks for delay-seconds, not an HTTP-date: the form-strict parser.
    retry_after = h.parse_delay_seconds(response.headers.get(h.RETRY_AFTER))
    check.verdict("retry-after", "MUST", "", retry_after is not None, seen)
    ms = h.parse_retry_after_ms(response.headers.get(h.RETRY_AFTER_MS))
    consistent = retry_after is not None and ms is not None and math.ceil(ms) == retry_after
    check.verdict("retry-after-ms", "SHOULD", "", consistent, seen)
    check.verdict("operation-status", "MUST", "", _pending(response), seen)
    try:
        document = response.json()
        ok = isinstance(document, dict) and "id" in document and "status" in document
    except ValueError:
        ok = False
    check.verdict("status-document", "SHOULD", "", ok, response.text[:120])
    check.verdict(
        "no-store", "MUST", "", "no-store" in response.headers.get("cache-control", ""), seen
    )


def _timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def _pending_clauses(check: Check, client: httpx.Client, operation: str) -> None:
    response, took = _timed(lambda: client.get(operation, headers={"prefer": "wait=0"}))
    if _terminal(response):
        return  # the work ended already: nothing to pace
    check.verdict("wait-zero", "MUST", "", took < 1.0, f"after {took:.2f} s: {_describe(response)}")
    if response.status_code == 303 and "location" in response.headers:
        following = urljoin(operation, response.headers["location"])
        check.verdict("hop-urls", "SHOULD", "", following != operation, _describe(response))
    response, took = _timed(lambda: client.get(operation))
    final = _terminal(response)
    check.verdict(
        "pacing", "MUST", "", took >= 0.5 or final, f"after {took:.2f} s: {_describe(response)}"
    )


def _outcome_clauses(check: Check, client: httpx.Client, operation: str) -> None:
    deadline = time.monotonic() + check.timeout
    response = client.get(operation, headers={"prefer": "wait=10"})
    polls = 1
    while _pending(response) or (
        response.status_code in (202, 303)
        and h.OPERATION_STATUS not in response.headers
        and polls < 100
    ):
        if time.monotonic() > deadline:
            check.verdict(
                "final-replay", "MUST", "", False, f"still pending after {check.timeout} s"
            )
            return
        if h.OPERATION_STATUS not in response.headers:
            time.sleep(0.5)  # a server that does not hold: do not spin
        response = client.get(operation, headers={"prefer": "wait=10"})
        polls += 1
    # The start may have sent a hop URL (the operation URL with a query,
    # protocol.md 5.6): the outcome names the operation URL itself.
    ok = (
        _terminal(response)
        and response.headers.get("content-location") is not None
        and urljoin(operation, response.headers["content-location"]).partition("?")[0]
        == operation.partition("?")[0]
    )
    check.verdict("final-replay", "MUST", "", ok, _describe(response))
    if "no-store" not in response.headers.get("cache-control", ""):
        check.verdict("no-store", "MUST", "", False, "final: " + _describe(response))
    again = client.get(operation)
    stable = (again.status_code, again.content) == (response.status_code, response.content)
    check.verdict("final-stable", "MUST", "", stable, _describe(again))


def _error_clauses(check: Check, client: httpx.Client, operation: str) -> None:
    base = operation.rsplit("/", 1)[0]
    unknown = client.get(f"{base}/{'A' * 22}")
    check.verdict(
        "unknown-404",
        "MUST",
        "",
        unknown.status_code == 404
        and unknown.headers.get("content-type", "").startswith(h.PROBLEM_JSON)
        and h.OPERATION_STATUS not in unknown.headers,
        _describe(unknown),
    )
    malformed = client.get(f"{base}/not-an-operation-id")
    check.verdict("malformed-404", "SHOULD", "", malformed.status_code == 404, _describe(malformed))
    wrong = client.post(operation)
    check.verdict(
        "method-405",
        "SHOULD",
        "",
        wrong.status_code == 405 and "allow" in wrong.headers,
        _describe(wrong),
    )


# A client whose profile (protocol.md 5.7) allows 20 redirects with a 5 s read
# timeout, arriving at hop 19 (5.6): it can follow no more, so a poll still
# pending is answered 202 after a hold of at most 4 s (5.8).
_RAN_OUT_AGENT = "python-httpx/check"
_RAN_OUT_HOP = 19


def _graceful_clause(check: Check, client: httpx.Client, operation: str) -> None:
    canonical = operation.partition("?")[0]
    response = client.get(f"{canonical}?hop={_RAN_OUT_HOP}", headers={"user-agent": _RAN_OUT_AGENT})
    client.delete(canonical)  # the work is not needed any more; its answer is not judged
    seen = _describe(response)
    if _terminal(response):
        clause = check.clause("graceful-202", "SHOULD", "")
        clause.saw = f"the work ended within the hold ({seen}): start work of 5 s or more"
        return
    names_operation = all(
        urljoin(canonical, response.headers.get(field, "")) == canonical
        for field in ("location", "content-location")
    )
    ok = (
        response.status_code == 202
        and names_operation
        and _pending(response)
        and h.parse_delay_seconds(response.headers.get(h.RETRY_AFTER)) is not None
    )
    check.verdict("graceful-202", "SHOULD", "", ok, seen)


def _cancel_clause(check: Check, client: httpx.Client, operation: str) -> None:
    deleted = client.delete(operation)
    if deleted.status_code not in (200, 202):
        check.verdict("cancel", "SHOULD", "", False, "DELETE: " + _describe(deleted))
        return
    outcome = client.get(operation, headers={"prefer": "wait=10"})
    check.verdict(
        "cancel",
        "SHOULD",
        "",
        _terminal(outcome),
        f"DELETE {deleted.status_code}, then {_describe(outcome)}",
    )


def report(clauses: list[Clause], width: int | None = None) -> str:
    """The clauses as a table; the "saw" column wraps to the terminal's width, never cut."""
    import io  # noqa: PLC0415
    import shutil  # noqa: PLC0415

    from rich import box  # noqa: PLC0415 - the cli extra
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("clause", "level", "result"):
        table.add_column(name, no_wrap=True)
    table.add_column("saw", overflow="fold")
    for clause in clauses:
        table.add_row(clause.name, clause.level, clause.result.upper(), clause.saw)
    text = io.StringIO()
    columns = width or shutil.get_terminal_size((120, 24)).columns
    Console(file=text, width=columns, color_system=None, soft_wrap=False).print(table)
    lines = [line.rstrip() for line in text.getvalue().splitlines()]
    return "\n".join(line for line in lines if line)


def main(
    url: str,
    method: str,
    body: bytes | None,
    headers: dict[str, str],
    *,
    timeout: float,
    as_json: bool,
) -> int:
    with httpx.Client(timeout=max(timeout, 40.0), headers=headers) as client:
        clauses = run_check(Check(url, method, body, headers, timeout), client)
    if as_json:
        print(json.dumps([c.__dict__ for c in clauses], indent=2))
    else:
        print(report(clauses))
    failed_must = [c.name for c in clauses if c.level == "MUST" and c.result == "fail"]
    return 1 if failed_must else 0
