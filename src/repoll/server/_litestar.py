"""The Litestar shell: the ASGI middleware around the app, and its OpenAPI document.

Litestar needs no code of repoll's to defer: its handlers validate and
inject dependencies as usual, then call ``await repoll.defer()`` (or are
wrapped in ``@repoll.deferred``), and :class:`~repoll.PollingMiddleware`
does the rest. What it adds is the OpenAPI document, as ``repoll.install``
does for FastAPI: the 303/202/413 answers of every handler marked
``@repoll.deferred`` or ``@repoll.deferrable``, and the operation routes.
"""

from __future__ import annotations

from typing import Any

from .._errors import require
from ._engine import PollingServer
from ._middleware import PollingMiddleware
from ._openapi import add_deferred_responses, add_operation_routes
from ._routes import can_defer


def litestar_app(
    app: Any, server: PollingServer | None = None, **options: Any
) -> PollingMiddleware:
    """Make a Litestar app deferrable and document it; serve the result with uvicorn.

    The options are :class:`PollingServer`'s (or pass a ready ``server``).
    """
    require("litestar", "litestar")
    from litestar.routes import HTTPRoute  # noqa: PLC0415 - an optional extra

    if server is not None and options:
        msg = "pass either server= or PollingServer options, not both"
        raise TypeError(msg)
    server = server or PollingServer(**options)
    if app.openapi_config is not None:
        # The plugin builds the document once and serves that dict from then
        # on: build it now, and complete it in place.
        schema: dict[str, Any] = app.plugins.get("OpenAPIPlugin").provide_openapi_schema()
        paths = schema.get("paths", {})
        for route in app.routes:
            if not isinstance(route, HTTPRoute):
                continue
            for handler in route.route_handlers:
                if can_defer(handler.fn):
                    for method in handler.http_methods:
                        operation = paths.get(route.path_format or "/", {}).get(method.lower())
                        if operation is not None:
                            add_deferred_responses(operation)
        add_operation_routes(schema, server.operations_path)
    return PollingMiddleware(app, server)
