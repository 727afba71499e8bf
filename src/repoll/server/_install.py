"""``repoll.install(app)``: one call to make a Starlette or FastAPI app deferrable."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._errors import require
from ..core._config import Lifetimes, Limits, UrlPolicy
from ..core._pacing import PacingPolicy
from ..executors._in_process import Executor
from ..stores._store import Store
from ._endpoints import is_deferred
from ._engine import PollingServer
from ._middleware import PollingMiddleware
from ._openapi import DEFERRED_RESPONSES, add_operation_routes
from ._principal import PrincipalFunction


def _document_fastapi(app: Any, server: PollingServer) -> None:
    from fastapi.routing import APIRoute  # noqa: PLC0415 - only for FastAPI apps

    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema  # type: ignore[no-any-return]
        for route in app.routes:
            if isinstance(route, APIRoute) and is_deferred(route.endpoint):
                for code, response in DEFERRED_RESPONSES.items():
                    route.responses.setdefault(code, response)
        schema: dict[str, Any] = build_openapi()
        add_operation_routes(schema, server.operations_path)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def install(
    app: Any,
    server: PollingServer | None = None,
    *,
    store: Store | str | None = None,
    executor: Executor | None = None,
    pacing: PacingPolicy | None = None,
    limits: Limits | None = None,
    lifetimes: Lifetimes | None = None,
    urls: UrlPolicy | None = None,
    principal: PrincipalFunction | None = None,
    principal_key: str | bytes | None = None,
    cors_origins: Iterable[str] = (),
) -> PollingServer:
    """Make ``app`` (Starlette or FastAPI) able to defer endpoints; returns its server.

    The options are :class:`PollingServer`'s: where operations live
    (``store``) and their work runs (``executor``); settings grouped in
    :class:`PacingPolicy`, :class:`Limits`, :class:`Lifetimes` and
    :class:`UrlPolicy`; who a request's principal is (``principal``,
    ``principal_key``); the browser origins allowed (``cors_origins``). Or
    pass a ready ``server``. Mark endpoints with :func:`repoll.deferred` (or
    :func:`repoll.deferrable` when they call :func:`repoll.defer` themselves);
    requests to other endpoints pass through untouched. With
    FastAPI, the OpenAPI document gains the operation routes and the 303/202
    answers of deferred endpoints.
    """
    require("starlette", "server")
    options: dict[str, Any] = {
        "store": store,
        "executor": executor,
        "pacing": pacing,
        "limits": limits,
        "lifetimes": lifetimes,
        "urls": urls,
        "principal": principal,
        "principal_key": principal_key,
    }
    options = {name: value for name, value in options.items() if value is not None}
    cors_origins = tuple(cors_origins)
    if cors_origins:
        options["cors_origins"] = cors_origins
    if server is not None and options:
        msg = "pass either server= or PollingServer options, not both"
        raise TypeError(msg)
    server = server or PollingServer(**options)
    app.add_middleware(PollingMiddleware, server=server, routes=app)
    if type(app).__module__.startswith("fastapi"):
        _document_fastapi(app, server)
    return server
