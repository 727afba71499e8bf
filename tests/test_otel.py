"""OpenTelemetry, end to end: one client call against a real server is one trace.

Each case runs in a fresh interpreter, since OpenTelemetry's global
providers are set once per process: the demo server (in a thread of that
process) and clients on ``repoll.PollingTransport``, the requests adapter
and the aiohttp middleware, with the SDK's
in-memory span exporter and metric reader. Without OpenTelemetry (its import
blocked), the same call works and nothing of it is loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

TRACED = textwrap.dedent(
    """
    import json, sys
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    import httpx, repoll
    from repoll.cli._demo import create_app
    from repoll.cli._main import running_server

    import asyncio, aiohttp, requests
    app = create_app(store="memory://", pacing=repoll.PacingPolicy(max_hold=1.0))
    with running_server(app) as url:
        with httpx.Client(transport=repoll.PollingTransport(), timeout=30) as client:
            response = client.post(url + "/start_work", json={"seconds": 2.5})
            plain = client.get(url + "/healthz")
        # The other clients: their operations must each be a trace too.
        with requests.Session() as session:
            session.mount("http://", repoll.PollingAdapter())
            others = [session.post(url + "/start_work", json={"seconds": 1.5}).status_code]

        async def through_aiohttp():
            middlewares = (repoll.aiohttp_polling(),)
            async with aiohttp.ClientSession(middlewares=middlewares) as session:
                async with session.post(url + "/start_work", json={"seconds": 1.5}) as r:
                    return r.status

        others.append(asyncio.run(through_aiohttp()))
    found = []
    for span in spans.get_finished_spans():
        parent = span.parent.span_id if span.parent else None
        found.append({
            "name": span.name, "trace": span.context.trace_id, "id": span.context.span_id,
            "parent": parent, "links": [l.context.span_id for l in span.links],
            "attributes": {k: v for k, v in span.attributes.items()},
        })
    points = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    key = metric.name + json.dumps(dict(point.attributes), sort_keys=True)
                    points[key] = point.value if hasattr(point, "value") else point.count
    print(json.dumps({"status": response.status_code, "plain": plain.status_code,
                      "others": others, "spans": found, "metrics": points}))
    """
)

BLOCKED = textwrap.dedent(
    """
    import json, sys
    sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
    import asyncio
    import httpx, repoll
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from repoll import _telemetry
    from repoll.cli._main import running_server

    @repoll.deferred
    async def work(request):
        await asyncio.sleep(1)
        return JSONResponse({"result": "done"})

    # Starlette: FastAPI itself imports OpenTelemetry when it can.
    app = Starlette(routes=[Route("/start_work", work, methods=["POST"])])
    repoll.install(app, store="memory://")
    with running_server(app) as url:
        with httpx.Client(transport=repoll.PollingTransport(), timeout=30) as client:
            response = client.post(url + "/start_work")
    loaded = [name for name in sys.modules if name.startswith("opentelemetry.")]
    print(json.dumps({"status": response.status_code, "enabled": _telemetry.ENABLED,
                      "loaded": loaded}))
    """
)


def _run(script: str) -> dict:
    pytest.importorskip("opentelemetry.sdk")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_one_client_call_is_one_trace_with_the_servers_work():
    seen = _run(TRACED)
    assert seen["status"] == 200
    assert seen["others"] == [200, 200]
    spans = seen["spans"]
    by_name: dict[str, list[dict]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    operations = [s for s in by_name["repoll.operation"] if s["attributes"].get("repoll.polls")]
    assert len(operations) == 3  # httpx, requests, aiohttp: one trace each
    assert len({s["trace"] for s in operations}) == 3
    assert len(by_name["repoll.work"]) == 3
    assert {w["trace"] for w in by_name["repoll.work"]} == {s["trace"] for s in operations}
    operation = operations[0]  # the httpx call's, the first to end
    trace_id = operation["trace"]
    [start] = [s for s in by_name["repoll.start"] if s["parent"] == operation["id"]]
    polls = [s for s in by_name["repoll.poll"] if s["parent"] == operation["id"]]
    assert polls  # 2.5 s of work, 1 s holds: a few polls
    assert operation["attributes"]["repoll.polls"] == len(polls)
    assert operation["attributes"]["http.response.status_code"] == 200
    [work] = [w for w in by_name["repoll.work"] if w["trace"] == trace_id]
    assert work["parent"] == start["id"]  # a child of the start request...
    assert work["links"] == [start["id"]]  # ...and linked to it
    assert work["attributes"]["repoll.outcome"] == "succeeded"
    statuses = [s for s in by_name.get("repoll.status", []) if s["trace"] == trace_id]
    assert statuses
    assert {s["parent"] for s in statuses} <= {p["id"] for p in polls}
    assert polls[-1]["attributes"]["repoll.operation_status"] == "succeeded"
    metrics = seen["metrics"]
    assert metrics["repoll.operations.started{}"] == 3
    assert metrics['repoll.operations.finished{"repoll.outcome": "succeeded"}'] == 3
    assert metrics['repoll.operation.duration{"repoll.outcome": "succeeded"}'] == 3  # a count
    assert metrics["repoll.polls.held{}"] == 0  # every hold released
    assert metrics["repoll.client.polls{}"] >= 1
    assert metrics["repoll.operations.queued{}"] == 0  # the gauge, read at the end


def test_without_opentelemetry_nothing_of_it_loads_and_all_works():
    seen = _run(BLOCKED)
    assert seen == {"status": 200, "enabled": False, "loaded": []}
