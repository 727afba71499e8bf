"""The WSGI shell: a WSGI app (Flask, Django under WSGI) served through repoll's ASGI layer.

A held poll on a WSGI server holds one of its few worker threads for as long
as it waits, so 200 held polls would stop a typical gunicorn deployment
(a handful of processes of a few threads each). So WSGI apps are not given
holds of their own: :func:`wsgi` puts the app behind a WSGI-to-ASGI bridge
(``a2wsgi``) and repoll's :class:`~repoll.PollingMiddleware`, served by an
ASGI server (uvicorn, or gunicorn with uvicorn workers). Operation URLs,
held polls and event streams are then answered on the event loop and cost
no thread; only requests that reach the app take one of the bridge's.

A view defers with :func:`repoll.defer_sync` (it runs in a bridge thread):
the client is answered at once, and the rest of the view, in the same thread
and the same request context, is the work. Each operation's work keeps its
thread until it ends, so the bridge has ``threads`` for ordinary requests
plus one per operation the executor may run at once: running operations
never take the threads ordinary requests need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from .._errors import require
from ..executors._in_process import remote_executor
from ._engine import PollingServer
from ._middleware import PollingMiddleware
from ._scope import ASGIApp

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


def wsgi(
    app: WSGIApp, server: PollingServer | None = None, *, threads: int = 10, **options: Any
) -> PollingMiddleware:
    """Make a WSGI app deferrable: an ASGI app to serve with uvicorn.

    ``threads`` is how many requests the app serves at once, besides the
    operations running. The other options are :class:`PollingServer`'s (or
    pass a ready ``server``).
    """
    require("a2wsgi", "wsgi")
    from a2wsgi import WSGIMiddleware  # noqa: PLC0415 - an optional extra

    if threads < 1:
        msg = "threads must be at least 1"
        raise ValueError(msg)
    if server is not None and options:
        msg = "pass either server= or PollingServer options, not both"
        raise TypeError(msg)
    server = server or PollingServer(**options)
    # Work handed to another process (Celery) takes no thread here.
    work = 0 if remote_executor(server.executor) else server.executor.concurrency
    bridge = WSGIMiddleware(cast("Any", app), workers=threads + work)
    return PollingMiddleware(cast("ASGIApp", bridge), server)
