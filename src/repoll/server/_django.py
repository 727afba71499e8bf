"""The Django shell: Django's ASGI or WSGI application with repoll in front.

Django needs no protocol code of its own; what it needs is Django's ways:

* configuration from settings: ``REPOLL = {"store": ..., ...}`` holds
  :class:`~repoll.PollingServer`'s options;
* database connections: a sync view marked ``@repoll.deferred`` runs on the
  executor's threads, outside Django's request cycle, whose end closes a
  thread's connections. So the executor closes them (``close_old_connections``,
  which honours ``CONN_MAX_AGE``) after each piece of work. A view that calls
  :func:`repoll.defer_sync` stays in its own request cycle; Django closes
  its connections as usual;
* sync views under ASGI: Django runs each request's sync code in a thread of
  its own (asgiref's ``ThreadSensitiveContext``), so a long deferred view does
  not hold up other requests' views.
"""

from __future__ import annotations

from typing import Any

from .._errors import require
from ..executors._in_process import InProcessExecutor
from ._engine import PollingServer
from ._middleware import PollingMiddleware
from ._wsgi import wsgi


def django_app(
    application: Any = None, server: PollingServer | None = None, **options: Any
) -> PollingMiddleware:
    """Django, deferrable: ``get_asgi_application()`` (the default) or a WSGI application.

    Options come from ``settings.REPOLL`` (a dict of :class:`PollingServer`'s
    options, plus ``threads`` for a WSGI application, see :func:`repoll.wsgi`),
    then from keyword arguments. Serve the result with uvicorn.
    """
    require("django", "django")
    from django.conf import settings  # noqa: PLC0415 - an optional extra
    from django.core.handlers.wsgi import WSGIHandler  # noqa: PLC0415
    from django.db import close_old_connections  # noqa: PLC0415

    if application is None:
        from django.core.asgi import get_asgi_application  # noqa: PLC0415

        application = get_asgi_application()
    configured: dict[str, Any] = {**getattr(settings, "REPOLL", {}), **options}
    threads = int(configured.pop("threads", 10))
    if server is not None and configured:
        msg = "pass either server= or PollingServer options (or settings.REPOLL), not both"
        raise TypeError(msg)
    server = server or PollingServer(**configured)
    if isinstance(server.executor, InProcessExecutor):
        server.executor.after_thread_work = close_old_connections
    if isinstance(application, WSGIHandler):
        return wsgi(application, server, threads=threads)
    return PollingMiddleware(application, server)
