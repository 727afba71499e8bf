"""repoll on Flask: the WSGI app behind repoll's ASGI layer, ``repoll.defer_sync()`` in a view.

Run it: ``uvicorn examples.flask_app:asgi`` (or, with several processes,
``gunicorn -k uvicorn_worker.UvicornWorker -w 4 examples.flask_app:asgi`` and
``REPOLL_STORE=sqlite:///ops.db``). The view validates its input (a bad
``pages`` gets Flask's own 400), then defers: the client gets ``303`` and the
operation URL, and the rest of the view, in the same thread and request
context, is the operation's work. ``flask run`` serves the WSGI app alone:
without repoll's layer, ``defer_sync()`` raises ``NotDeferrableError``.
"""

from __future__ import annotations

import os
import time

from flask import Flask, abort, g, request

import repoll

app = Flask(__name__)


@app.post("/reports")
def make_report() -> tuple[dict[str, object], int]:
    pages = request.args.get("pages", type=int)
    if pages is None or not 0 < pages <= 1000:
        abort(400, "pages must be a whole number from 1 to 1000")
    g.requested_by = request.headers.get("X-API-Key", "anonymous")
    operation = repoll.defer_sync()  # answered 303 now; the rest is the work
    for page in range(pages):
        time.sleep(0.5)
        operation.raise_if_canceled()  # sync work stops itself when asked
        repoll.report_progress((page + 1) / pages, f"page {page + 1} of {pages}")
    # Still the same request context: request, g and session are all here.
    return {"pages": pages, "requested_by": g.requested_by, "path": request.path}, 201


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}  # an ordinary view: no operation, no thread held


asgi = repoll.wsgi(app, store=os.environ.get("REPOLL_STORE", "memory://"))
