"""Standard clients at their defaults against jobs of every length (issue 12, item 6).

For each client (curl -L, wget, urllib, requests, httpx with its default
timeout and with ``timeout=None``, aiohttp, Node's fetch where ``node`` is
installed, and repoll's own client for reference) and each job length, with
and without progress reports: a fresh ``repoll serve bench.apps:budgets_app``
process (SQLite store in a temporary directory, nothing queued), one
``POST /bench/work`` by the client with its defaults, and what happened:

- the final status the client saw, and the exception it raised or its exit code;
- the requests that reached the server, counted by the app itself, and the
  seconds from the first request's arrival to the last answer, at the server;
- the longest single request (the longest hold);
- how it ended: the endpoint's final answer (``final``), or a ``202`` naming
  the operation URL in ``Location`` or ``Content-Location`` (``202+op``), after
  which the benchmark GETs that URL once the work is over and says whether it
  gave the final answer.

Every client runs in a subprocess with a timeout, on loopback. ``--max-hold``
goes to ``repoll serve`` when it has the option; otherwise the app caps its
holds itself (``$REPOLL_BENCH_MAX_HOLD``), so that the same matrix runs against
older servers. ``--compressed`` (and ``--smoke``) is the matrix in seconds: a
small max hold and short jobs, so that every client runs out of its redirect
budget on the long job.

The Python clients are run as ``python -m bench.budgets CLIENT URL BODY``,
which prints one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from urllib.parse import urljoin, urlsplit

import httpx

from ._common import ROOT, server_process

# Job lengths in seconds.
FULL_JOBS = (10.0, 60.0, 300.0, 1800.0)
# Time-compressed: holds of at most COMPRESSED_MAX_HOLD s instead of tens of
# seconds, so that even curl's 50 redirects are spent in 12.5 s. The short job
# ends within every client's budget; the long one outlasts all of them.
COMPRESSED_MAX_HOLD = 0.25
COMPRESSED_JOBS = (1.5, 16.0)

PYTHON_CLIENTS = (
    "urllib",
    "requests",
    "httpx",
    "httpx timeout=None",
    "aiohttp",
    "repoll client",
)
ALL_CLIENTS = (
    "curl -L",
    "wget",
    "urllib",
    "requests",
    "httpx",
    "httpx timeout=None",
    "aiohttp",
    "node fetch",
    "repoll client",
)
# What each name means, for the table's legend.
DESCRIPTIONS = {
    "curl -L": "curl -sS -L -d BODY (50 redirects, no timeout)",
    "wget": "wget -S -O - --post-data BODY (20 redirects, 900 s read timeout)",
    "urllib": "urllib.request.urlopen(Request(url, data)) (10 redirects, 4 repeats of a URL)",
    "requests": "requests.post(url, json=body) (30 redirects, no timeout)",
    "httpx": "httpx.post(url, json=body, follow_redirects=True) (20 redirects, 5 s timeout)",
    "httpx timeout=None": "the same with timeout=None",
    "aiohttp": "aiohttp.ClientSession().post(url, json=body) (10 redirects, 300 s total)",
    "node fetch": "node -e 'fetch(url, {method: \"POST\", body})' (20 redirects)",
    "repoll client": "httpx.Client(transport=repoll.PollingTransport()).post(url, json=body)",
}

NODE_SCRIPT = r"""
const [url, body] = process.argv.slice(-2);
fetch(url, {method: "POST", headers: {"content-type": "application/json"}, body})
  .then(async (r) => {
    const text = await r.text();
    console.log(JSON.stringify({status: r.status, location: r.headers.get("location"),
      content_location: r.headers.get("content-location"), body: text.slice(0, 4000),
      exception: null, message: null}));
  })
  .catch((e) => {
    const cause = e.cause ? `${e.cause.name}: ${e.cause.message}` : "";
    const message = `${e.message} ${cause}`;
    console.log(JSON.stringify({status: null, exception: e.name, message}));
    process.exit(1);
  });
"""


_STARTING = threading.Semaphore(2)


@dataclass(frozen=True)
class Run:
    client: str
    seconds: float
    progress: bool


@cache
def serve_options() -> frozenset[str]:
    """The options this ``repoll serve`` accepts (as run with this environment)."""
    out = subprocess.run(
        [sys.executable, "-m", "repoll", "serve", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    return frozenset(word.strip("[],") for word in out.split() if word.startswith("--"))


def available_clients() -> list[str]:
    names = list(ALL_CLIENTS)
    for name, program in (("curl -L", "curl"), ("wget", "wget"), ("node fetch", "node")):
        if shutil.which(program) is None:
            names.remove(name)
    return names


# The clients -------------------------------------------------------------


def _python_client(name: str, url: str, body: dict[str, object]) -> dict[str, object]:
    """Run one Python client with its defaults; what it ended with (never raises)."""
    result: dict[str, object] = {"status": None, "exception": None, "message": None}
    try:
        if name == "urllib":
            import urllib.request

            request = urllib.request.Request(
                url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request) as response:
                status, headers, text = response.status, response.headers, response.read().decode()
        elif name == "requests":
            import requests

            response = requests.post(url, json=body)
            status, headers, text = response.status_code, response.headers, response.text
        elif name in {"httpx", "httpx timeout=None"}:
            kwargs: dict[str, object] = {"timeout": None} if name.endswith("None") else {}
            response = httpx.post(url, json=body, follow_redirects=True, **kwargs)  # type: ignore[arg-type]
            status, headers, text = response.status_code, response.headers, response.text
        elif name == "aiohttp":
            import aiohttp

            async def post() -> tuple[int, object, str]:
                async with aiohttp.ClientSession() as session, session.post(url, json=body) as r:
                    return r.status, r.headers, await r.text()

            status, headers, text = asyncio.run(post())
        elif name == "repoll client":
            import repoll

            with httpx.Client(transport=repoll.PollingTransport()) as client:
                response = client.post(url, json=body)
            status, headers, text = response.status_code, response.headers, response.text
        else:
            msg = f"unknown client {name}"
            raise ValueError(msg)
    except Exception as exc:
        result["exception"] = type(exc).__name__
        result["message"] = " ".join(str(exc).split())[:300]
        result["status"] = getattr(exc, "code", None) or getattr(
            getattr(exc, "response", None), "status_code", None
        )
        return result
    result.update(
        status=status,
        location=headers.get("Location"),  # type: ignore[attr-defined]
        content_location=headers.get("Content-Location"),  # type: ignore[attr-defined]
        body=text[:4000],
    )
    return result


def _last_header_block(raw: str) -> tuple[int | None, dict[str, str]]:
    """The status and fields of the last response in a ``curl -D`` / ``wget -S`` dump."""
    status: int | None = None
    fields: dict[str, str] = {}
    for line in raw.splitlines():
        line = line.strip()  # noqa: PLW2901
        if line.startswith("HTTP/"):
            parts = line.split()
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
            fields = {}
        elif ":" in line and status is not None:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    return status, fields


def _subprocess_client(
    name: str, url: str, body: dict[str, object], timeout: float
) -> dict[str, object]:
    payload = json.dumps(body)
    with tempfile.TemporaryDirectory(prefix="repoll-budgets-") as tmp:
        if name == "curl -L":
            argv = [
                "curl",
                "-sS",
                "-L",
                "-d",
                payload,
                "-H",
                "Content-Type: application/json",
                "-D",
                f"{tmp}/headers",
                "-o",
                f"{tmp}/body",
                url,
            ]
        elif name == "wget":
            argv = [
                "wget",
                "-S",
                "-O",
                f"{tmp}/body",
                f"--post-data={payload}",
                "--header=Content-Type: application/json",
                url,
            ]
        elif name == "node fetch":
            argv = ["node", "-e", NODE_SCRIPT, url, payload]
        else:
            argv = [sys.executable, "-m", "bench.budgets", name, url, payload]
        try:
            done = subprocess.run(
                argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return {"status": None, "exception": "bench timeout", "message": f"{timeout:g} s"}
        result: dict[str, object] = {"exit": done.returncode}
        if name in {"curl -L", "wget"}:
            raw = (
                _read(f"{tmp}/headers")
                if name == "curl -L"
                else "\n".join(line for line in done.stderr.splitlines() if line.startswith("  "))
            )
            status, fields = _last_header_block(raw)
            result.update(
                status=status,
                location=fields.get("location"),
                content_location=fields.get("content-location"),
                body=_read(f"{tmp}/body")[:4000],
                exception=None,
                message=done.stderr.strip().splitlines()[-1][:300]
                if done.returncode and done.stderr.strip()
                else None,
            )
            return result
        try:
            result.update(json.loads(done.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            result.update(status=None, exception="no output", message=done.stderr[-300:])
        return result


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:
        return ""


# One run -------------------------------------------------------------------


def _is_final(status: object, body: object) -> bool:
    if status != 200 or not isinstance(body, str):
        return False
    try:
        return json.loads(body).get("result") == "done"
    except (ValueError, AttributeError):
        return False


def _canonical(base: str, location: str | None) -> str | None:
    """The operation URL a start's ``Location`` names, without any query (hop counter)."""
    if not location:
        return None
    parts = urlsplit(urljoin(base + "/", location))
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _later_get(operation_url: str, work_ends: float, deadline: float) -> object:
    """GET the operation URL after the work is over: its status, or an exception name."""
    time.sleep(max(0.0, work_ends - time.time()))
    last: object = None
    while True:
        try:
            response = httpx.get(operation_url, follow_redirects=True, timeout=60)
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        else:
            if _is_final(response.status_code, response.text):
                return "final"
            last = response.status_code
        if time.time() > deadline:
            return last
        time.sleep(0.5)


def run_one(
    run: Run, *, max_hold: float | None, env: dict[str, str] | None = None
) -> dict[str, object]:
    """One client, one job, one fresh server; a row of the table."""
    args = ["bench.apps:budgets_app", "--factory"]
    extra_env = dict(env or {})
    how_capped = "-"
    if max_hold is not None:
        if "--max-hold" in serve_options():
            args += ["--max-hold", f"{max_hold:g}"]
            how_capped = "--max-hold"
        else:
            extra_env["REPOLL_BENCH_MAX_HOLD"] = f"{max_hold:g}"
            how_capped = "app"
    body = {"seconds": run.seconds, "progress": run.progress}
    # Long enough for any client to get its answer; what a client's own
    # timeouts allow is the point, so this only ends runs that hang.
    timeout = run.seconds * 1.25 + 120
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="repoll-budgets-"))
        with _STARTING:  # a few servers start at a time: 2 cores, many runs at once
            url, _ = stack.enter_context(
                server_process(
                    [*args, "--store", f"sqlite:///{tmp}/operations.sqlite3"], env=extra_env
                )
            )
        info = httpx.get(f"{url}/bench/info", timeout=10).json()
        started = time.time()
        outcome = _subprocess_client(run.client, f"{url}/bench/work", body, timeout)
        client_seconds = time.time() - started
        seen = httpx.get(f"{url}/bench/requests", timeout=10).json()
        operation = _canonical(url, seen[0]["location"]) if seen else None
        status = outcome.get("status")
        final = _is_final(status, outcome.get("body"))
        named = sorted(
            {
                name
                for name in ("location", "content_location")
                # Exactly the canonical URL: a hop URL (with its query) does not count.
                if operation
                and outcome.get(name)
                and urljoin(url + "/", str(outcome.get(name))) == operation
            }
        )
        exit_code = outcome.get("exit", 0)
        raised = outcome.get("exception")
        if final:
            end = "final"
        elif status == 202 and named:
            end = "202+op"
        elif status == 202:
            end = "202, no op URL"
        else:
            end = "-"
        later: object = "-"
        if end == "202+op" and operation:
            later = _later_get(operation, started + run.seconds + 0.5, started + run.seconds + 60)
        ends = [r["end"] for r in seen if r["end"]]
        holds = [r["end"] - r["start"] for r in seen if r["end"] and r["method"] == "GET"]
        hops_with_query = sum(1 for r in seen if r["query"])
    ok = not raised and not exit_code and (final or (end == "202+op" and later == "final"))
    failure = raised or (f"exit {exit_code}" if exit_code else "-")
    return {
        "client": run.client,
        "job_seconds": run.seconds,
        "progress": "yes" if run.progress else "no",
        "status": "-" if status is None else status,
        "requests": len(seen),
        "server_seconds": (max(ends) - seen[0]["start"]) if ends and seen else float("nan"),
        "client_seconds": client_seconds,
        "longest_hold": max(holds, default=0.0),
        "failure": failure,
        "message": outcome.get("message") or "",
        "end": end,
        "named_in": ",".join(named) or "-",
        "later_get": later,
        "ok": "yes" if ok else "NO",
        "hop_queries": hops_with_query,
        "max_hold": "-" if max_hold is None else f"{max_hold:g} ({how_capped})",
        "repoll": info.get("repoll"),
        "user_agent": seen[0]["user_agent"] if seen else "",
    }


def run(
    jobs: Sequence[float],
    *,
    clients: Sequence[str] | None = None,
    progress: Sequence[bool] = (False, True),
    max_hold: float | None = None,
    parallel: int = 1,
    env: dict[str, str] | None = None,
    on_row: object = None,
) -> list[dict[str, object]]:
    """Every client x job x progress combination; rows in the matrix's order."""
    names = list(clients) if clients else available_clients()
    runs = [Run(c, s, p) for s in jobs for p in progress for c in names]
    # Longest jobs first, so that parallel runs end together.
    order = sorted(range(len(runs)), key=lambda i: -runs[i].seconds)
    rows: dict[int, dict[str, object]] = {}
    lock = threading.Lock()

    def one(index: int) -> None:
        try:
            row = run_one(runs[index], max_hold=max_hold, env=env)
        except Exception as exc:
            r = runs[index]
            row = {
                "client": r.client,
                "job_seconds": r.seconds,
                "progress": "yes" if r.progress else "no",
                "status": "-",
                "requests": 0,
                "server_seconds": float("nan"),
                "client_seconds": float("nan"),
                "longest_hold": float("nan"),
                "failure": f"bench: {type(exc).__name__}",
                "message": str(exc)[:300],
                "end": "-",
                "named_in": "-",
                "later_get": "-",
                "ok": "NO",
                "hop_queries": 0,
                "max_hold": "-",
                "repoll": None,
                "user_agent": "",
            }
        with lock:
            rows[index] = row
            if callable(on_row):
                on_row(row)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        list(pool.map(one, order))
    return [rows[i] for i in range(len(runs))]


COLUMNS = [
    ("client", "client", ""),
    ("job_seconds", "job s", "g"),
    ("progress", "progress", ""),
    ("status", "status", ""),
    ("requests", "requests", "d"),
    ("server_seconds", "seconds", ".1f"),
    ("longest_hold", "longest hold s", ".2f"),
    ("failure", "raised / exit", ""),
    ("end", "end", ""),
    ("later_get", "later GET", ""),
    ("ok", "ok", ""),
]


def legend(names: Sequence[str] | None = None) -> str:
    return "\n".join(f"  {name}: {DESCRIPTIONS[name]}" for name in names or available_clients())


if __name__ == "__main__":
    # python -m bench.budgets CLIENT URL BODY: one Python client, one JSON line.
    client_name, target, raw_body = sys.argv[1:4]
    print(json.dumps(_python_client(client_name, target, json.loads(raw_body))), flush=True)
    os._exit(0)
