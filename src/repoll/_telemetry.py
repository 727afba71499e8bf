"""OpenTelemetry traces and metrics, when it is installed (``pip install 'repoll[otel]'``).

Without OpenTelemetry every function here does nothing and nothing imports
it. With it, repoll uses the global tracer and meter providers the
application configured (or OpenTelemetry's no-op ones), so nothing is
recorded until the application sets up an exporter (docs/observability.md).

What is recorded:

* client: an operation span (``repoll.operation``) from the start request
  to the final answer, a ``repoll.start`` span for the first request and a
  ``repoll.poll`` span per poll, each sent with its ``traceparent`` (and
  ``tracestate``, ``baggage``) so the server's spans join the trace; the
  histogram ``repoll.client.polls`` (polls per operation);
* server: a ``repoll.work`` span for the work, a child of the start
  request's trace context and linked to it, ended with the outcome; a
  ``repoll.status`` span per status request, a child of the poll's context;
  the counters ``repoll.operations.started``, ``repoll.operations.finished``
  (by ``repoll.outcome``), ``repoll.polls.shed``, the up-down counter
  ``repoll.polls.held``, the histogram ``repoll.operation.duration`` (s) and
  the gauge ``repoll.operations.queued`` (waiting for an executor slot).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

try:
    from opentelemetry import context as _context
    from opentelemetry import metrics as _metrics
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
    from opentelemetry.metrics._internal import _ProxyMeterProvider
except ImportError:  # the otel extra is not installed
    ENABLED = False
else:
    ENABLED = True


def active() -> bool:
    """Whether the application configured a tracer or meter provider.

    Until it does, OpenTelemetry's global providers are placeholders whose
    spans and instruments record nothing; repoll then skips even the
    work of making them (context extraction costs a busy server time).
    """
    global _configured, _checked_at  # noqa: PLW0603 - a cache of one process-wide fact
    if not ENABLED:
        return False
    if _configured:
        return True
    # OpenTelemetry reads the environment on every question until a provider
    # is set: ask at most once a second (a provider set at start-up is seen
    # from the first request on, one set later within a second).
    now = time.monotonic()
    if now - _checked_at < 1.0:
        return False
    _checked_at = now
    _configured = not isinstance(
        _trace.get_tracer_provider(), _trace.ProxyTracerProvider
    ) or not isinstance(_metrics.get_meter_provider(), _ProxyMeterProvider)
    return _configured


_configured = False
_checked_at = -1e9


_SCOPE = "repoll"
_instruments: dict[str, Any] = {}


def _instrument(kind: str, name: str, **options: Any) -> Any:
    instrument = _instruments.get(name)
    if instrument is None:
        meter = _metrics.get_meter(_SCOPE)
        instrument = _instruments[name] = getattr(meter, kind)(name, **options)
    return instrument


def reset_instruments() -> None:
    """Forget the instruments (tests that install a new meter provider)."""
    _instruments.clear()


# --- client ---------------------------------------------------------------------------


class ClientTrace:
    """The spans of one request through a polling client; every method is a no-op without OTel."""

    def __init__(self, method: str, url: str) -> None:
        self._operation: Any = None
        self._start: Any = None
        self._poll: Any = None
        self._polls = 0
        if not ENABLED:
            return
        tracer = _trace.get_tracer(_SCOPE)
        attributes = {"http.request.method": method, "url.full": url}
        self._operation = tracer.start_span("repoll.operation", attributes=attributes)
        parent = _trace.set_span_in_context(self._operation)
        self._start = tracer.start_span(
            "repoll.start", context=parent, kind=_trace.SpanKind.CLIENT, attributes=attributes
        )

    def inject_start(self, headers: MutableMapping[str, str]) -> None:
        """Put the start span's trace context in the first request's header fields."""
        if self._start is not None:
            _propagate.inject(headers, context=_trace.set_span_in_context(self._start))

    def started(self, status: int, *, deferred: bool) -> None:
        if self._start is None:
            return
        self._start.set_attribute("http.response.status_code", status)
        self._start.end()
        if not deferred:  # an ordinary request: no operation to speak of
            self._operation.set_attribute("repoll.deferred", False)
            self._operation.end()
            self._operation = None

    def poll(self, url: str, headers: MutableMapping[str, str]) -> None:
        """A poll goes out: its span, and its trace context in ``headers``."""
        self._polls += 1
        if self._operation is None:
            return
        tracer = _trace.get_tracer(_SCOPE)
        parent = _trace.set_span_in_context(self._operation)
        self._poll = tracer.start_span(
            "repoll.poll",
            context=parent,
            kind=_trace.SpanKind.CLIENT,
            attributes={"http.request.method": "GET", "url.full": url},
        )
        _propagate.inject(headers, context=_trace.set_span_in_context(self._poll))

    def polled(
        self, status: int, headers: Mapping[str, str], *, error: BaseException | None = None
    ) -> None:
        span, self._poll = self._poll, None
        if span is None:
            return
        if error is not None:
            span.record_exception(error)
            span.set_status(_trace.StatusCode.ERROR)
        else:
            span.set_attribute("http.response.status_code", status)
            for field in ("operation-status", "retry-after-ms", "retry-after"):
                value = headers.get(field)
                if value is not None:
                    span.set_attribute(f"repoll.{field.replace('-', '_')}", value)
        span.end()

    def ended(self, status: int | None, error: BaseException | None = None) -> None:
        if not ENABLED:
            return
        _instrument("create_histogram", "repoll.client.polls", unit="{poll}").record(self._polls)
        span, self._operation = self._operation, None
        if span is None:
            return
        span.set_attribute("repoll.polls", self._polls)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.record_exception(error)
            span.set_status(_trace.StatusCode.ERROR)
        span.end()


class _NoTrace(ClientTrace):
    """What :func:`client_trace` gives without OpenTelemetry: every method does nothing."""

    def __init__(self) -> None:
        self._operation = self._start = self._poll = None
        self._polls = 0

    def poll(self, url: str, headers: MutableMapping[str, str]) -> None:
        return None

    def ended(self, status: int | None, error: BaseException | None = None) -> None:
        return None


_NO_TRACE = _NoTrace()


def client_trace(method: str, url: str, headers: MutableMapping[str, str]) -> ClientTrace:
    """The trace of a request about to go out (its context into ``headers``).

    Without OpenTelemetry, or until a provider is configured, one that does
    nothing: the shells call it unconditionally.
    """
    if not active():
        return _NO_TRACE
    trace = ClientTrace(method, url)
    trace.inject_start(headers)
    return trace


# --- server ---------------------------------------------------------------------------


def _carrier(raw_headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    wanted = {"traceparent", "tracestate", "baggage"}
    return {
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in raw_headers
        if k.decode("latin-1") in wanted
    }


class WorkSpan:
    """The span of an operation's work, in the start request's trace; no-op without OTel."""

    def __init__(
        self, raw_headers: Iterable[tuple[bytes, bytes]], operation_id: str, endpoint: str
    ) -> None:
        self._span: Any = None
        self._token: Any = None
        self._started = time.monotonic()
        if not ENABLED:
            return
        parent = _propagate.extract(_carrier(raw_headers))
        start = _trace.get_current_span(parent).get_span_context()
        links = [_trace.Link(start)] if start.is_valid else []
        self._span = _trace.get_tracer(_SCOPE).start_span(
            "repoll.work",
            context=parent,
            links=links,
            attributes={"repoll.operation_id": operation_id, "repoll.endpoint": endpoint},
        )
        _instrument("create_counter", "repoll.operations.started", unit="{operation}").add(1)

    def enter(self) -> None:
        """Make the work span current for the rest of this task (the endpoint's own spans nest)."""
        if self._span is not None:
            self._token = _context.attach(_trace.set_span_in_context(self._span))

    def end(self, outcome: str) -> None:
        if not ENABLED:
            return
        _instrument("create_counter", "repoll.operations.finished", unit="{operation}").add(
            1, {"repoll.outcome": outcome}
        )
        _instrument("create_histogram", "repoll.operation.duration", unit="s").record(
            time.monotonic() - self._started, {"repoll.outcome": outcome}
        )
        span, self._span = self._span, None
        if span is None:
            return
        span.set_attribute("repoll.outcome", outcome)
        if outcome != "succeeded":
            span.set_status(_trace.StatusCode.ERROR)
        span.end()
        if self._token is not None:
            # A context of another task has nothing to restore here.
            with contextlib.suppress(ValueError):
                _context.detach(self._token)
            self._token = None


def status_span(raw_headers: Iterable[tuple[bytes, bytes]], operation_id: str) -> Any:
    """A span for one status request, in the poll's trace context; a context manager."""
    if not active():
        return _NULL
    parent = _propagate.extract(_carrier(raw_headers))
    return _trace.get_tracer(_SCOPE).start_as_current_span(
        "repoll.status",
        context=parent,
        kind=_trace.SpanKind.SERVER,
        attributes={"repoll.operation_id": operation_id},
    )


def held(delta: int) -> bool:
    """Count a held poll in or out; False (and nothing counted) without OTel."""
    if not active():
        return False
    _instrument("create_up_down_counter", "repoll.polls.held", unit="{poll}").add(delta)
    return True


def watch_queue(waiting: Callable[[], int]) -> None:
    """Report ``waiting()`` (operations waiting for a slot) as ``repoll.operations.queued``."""
    if not active():
        return

    def observe(_: Any) -> Iterable[Any]:
        yield _metrics.Observation(waiting())

    _metrics.get_meter(_SCOPE).create_observable_gauge(
        "repoll.operations.queued", callbacks=[observe], unit="{operation}"
    )


def shed() -> None:
    if active():
        _instrument("create_counter", "repoll.polls.shed", unit="{poll}").add(1)


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


_NULL = _Null()
