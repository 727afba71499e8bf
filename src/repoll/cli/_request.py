"""``repoll request`` and ``repoll wait``: one call, the final answer on stdout.

Progress goes to stderr: on a terminal, a rich progress display (spinner,
bar, percentage, elapsed time, the server's message) that fits the
terminal's width; otherwise one plain line per change, for logs. Errors are
one line each, with the exit codes of :mod:`._args`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .._errors import require
from ._args import (
    EXIT_FAILURE,
    EXIT_HTTP_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
)


class RichProgress:
    """The operation's progress on a terminal, redrawn in place."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console  # noqa: PLC0415 - the cli extra
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            Progress,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.fields[status]:<9}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[message]}"),
            console=Console(file=stream),
            transient=False,
        )
        self._task = self._progress.add_task("", total=None, status="starting", message="")
        self._progress.start()

    def update(self, hop: Any) -> None:
        status = hop.operation_status or str(hop.status)
        fields: dict[str, Any] = {"status": status}
        if hop.message:
            fields["message"] = hop.message
        if hop.progress is not None:
            self._progress.update(self._task, total=1.0, completed=hop.progress, **fields)
        else:
            self._progress.update(self._task, **fields)

    def close(self, status: str | None) -> None:
        if status == "succeeded":
            # The last progress message ("step 8 of 12") would read as where it stopped.
            self._progress.update(self._task, total=1.0, completed=1.0, status=status, message="")
        elif status:
            self._progress.update(self._task, status=status)
        self._progress.stop()


class PlainProgress:
    """One line per change of status, progress or message: for logs and pipes."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = time.monotonic()
        self._last: tuple[object, ...] | None = None

    def update(self, hop: Any) -> None:
        status = hop.operation_status or str(hop.status)
        seen = (status, hop.progress, hop.message)
        if seen == self._last:
            return
        self._last = seen
        parts = [f"repoll: {time.monotonic() - self._started:6.1f}s", status]
        if hop.progress is not None:
            parts.append(f"{hop.progress:.0%}")
        if hop.message:
            parts.append(hop.message)
        print("  ".join(parts), file=self._stream, flush=True)

    def close(self, status: str | None) -> None:
        return None


def headers_from(values: Sequence[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            msg = f"bad header {value!r}: use 'Name: value'"
            raise ValueError(msg)
        headers[name.strip()] = content.strip()
    return headers


def body_from(data: str | None, json_text: str | None, headers: dict[str, str]) -> bytes | None:
    if json_text is not None:
        try:
            json.loads(json_text)
        except ValueError as exc:
            msg = f"--json is not valid JSON: {exc}"
            raise ValueError(msg) from exc
        headers.setdefault("Content-Type", "application/json")
        return json_text.encode()
    if data is None:
        return None
    if data.startswith("@"):
        try:
            return Path(data[1:]).read_bytes()
        except OSError as exc:
            msg = f"cannot read {data[1:]}: {exc.strerror or exc}"
            raise ValueError(msg) from exc
    headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    return data.encode()


def connection_error(exc: Exception) -> str:
    """One line for an HTTP error: which host and port, and why."""
    try:
        request = exc.request  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # httpx raises when the error has no request
        request = None
    reason = str(exc) or type(exc).__name__
    if reason.startswith("[Errno") and "] " in reason:
        reason = reason.split("] ", 1)[1]  # "[Errno 111] Connection refused"
    if request is None:
        return reason
    url = request.url
    where = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
    import httpx  # noqa: PLC0415 - the client extra, loaded by now

    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {where}: {reason}"
    if isinstance(exc, httpx.TimeoutException):
        return f"{where} did not answer in time ({type(exc).__name__})"
    return f"{where}: {reason}"


def _print_final(response: Any, *, include_headers: bool, out: TextIO) -> int:
    if include_headers:
        print(f"HTTP/1.1 {response.status_code} {response.reason_phrase}", file=out)
        for name, value in response.headers.items():
            print(f"{name}: {value}", file=out)
        print(file=out)
    out.write(response.text)
    if response.text and not response.text.endswith("\n"):
        out.write("\n")
    out.flush()
    return EXIT_OK if response.status_code < 400 else EXIT_HTTP_ERROR


def request_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``repoll request`` and ``repoll wait``."""
    require("httpx", "client")
    import httpx  # noqa: PLC0415

    from .._errors import OperationError, PollingTimeout, ProtocolError  # noqa: PLC0415
    from ..clients._handle import OperationHandle  # noqa: PLC0415
    from ..core._poll import PollOptions  # noqa: PLC0415

    try:
        headers = headers_from(args.header)
        body = body_from(args.data, args.json, headers) if args.command == "request" else None
    except ValueError as exc:
        print(f"repoll: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress: RichProgress | PlainProgress | None = None
    if not args.quiet:
        progress = RichProgress(sys.stderr) if sys.stderr.isatty() else PlainProgress(sys.stderr)
    options = PollOptions(
        # On a terminal, short holds keep the progress display moving.
        long_poll=2.0 if isinstance(progress, RichProgress) else 30.0,
        on_progress=progress.update if progress else None,
    )
    timeout = httpx.Timeout(30.0, read=max(60.0, (args.timeout or 0) + 35.0))
    handle: Any = None

    def stop_progress() -> None:
        if progress:
            progress.close(handle.status.value if handle and handle.status else None)

    try:
        with httpx.Client(headers=headers, timeout=timeout) as client:
            if args.command == "request":
                method = args.method or ("POST" if body is not None else "GET")
                handle = OperationHandle.start(
                    client, method, args.url, content=body, options=options
                )
                if args.no_wait and (not handle.done or handle.status is not None):
                    stop_progress()
                    print(handle.url, file=out)
                    return EXIT_OK
            else:
                handle = OperationHandle.resume(client, args.url, options=options)
            response = handle.wait(timeout=args.timeout)
    except PollingTimeout as exc:
        stop_progress()
        print(f"repoll: {exc}; resume with: repoll wait {exc.operation_url}", file=sys.stderr)
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        stop_progress()
        if handle is not None and not handle.done:
            print(
                f"repoll: interrupted; the operation goes on: repoll wait {handle.url}",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED
    except httpx.HTTPError as exc:
        stop_progress()
        print(f"repoll: {connection_error(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except (OperationError, ProtocolError) as exc:
        stop_progress()
        print(f"repoll: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    stop_progress()
    return _finish(args, handle, response, out)


def _finish(args: argparse.Namespace, handle: Any, response: Any, out: TextIO) -> int:
    from ..core._status import OperationStatus  # noqa: PLC0415

    if handle.status is None and (args.command == "wait" or args.no_wait):
        # No Operation-Status anywhere: the URL answered as an ordinary resource.
        what = "an operation URL" if args.command == "wait" else "a deferred endpoint"
        print(
            f"repoll: {args.url} is not {what}: it answered {response.status_code} "
            "at once, without Operation-Status (its answer follows)",
            file=sys.stderr,
        )
        _print_final(response, include_headers=args.include, out=out)
        return EXIT_HTTP_ERROR
    code = _print_final(response, include_headers=args.include, out=out)
    if handle.status in (OperationStatus.FAILED, OperationStatus.CANCELED):
        # A status monitor's Failed is a 200 whose body says so: not a success.
        return EXIT_HTTP_ERROR
    return code
