"""``repoll.install(app)``: one call to make a Starlette or FastAPI app deferrable."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._errors import require
from ..core._config import Lifetimes, Limits, UrlPolicy
from ..core._pacing import PacingPolicy
from ..core._status import OperationStatus
from ..executors._in_process import Executor
from ..stores._store import Store
from ._deferral import is_deferred
from ._engine import PollingServer
from ._middleware import PollingMiddleware
from ._principal import PrincipalFunction

_STATUS_SCHEMA: dict[str, Any] = {
    "title": "OperationStatus",
    "type": "object",
    "required": ["id", "status"],
    "properties": {
        "id": {"type": "string"},
        "status": {
            "type": "string",
            "enum": [status.value for status in OperationStatus],
        },
        "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "message": {"type": ["string", "null"]},
        "cancel_requested": {"type": "boolean"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
    },
}
_PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "ProblemDetails",
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}
_STATUS_REF = {"$ref": "#/components/schemas/RepollOperationStatus"}
_PROBLEM_REF = {"$ref": "#/components/schemas/RepollProblem"}
_POLL_HEADERS = {
    "Location": {"description": "The operation URL.", "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds until the next poll.", "schema": {"type": "integer"}},
    "Retry-After-Ms": {"description": "The same, in milliseconds.", "schema": {"type": "integer"}},
    "Operation-Status": {"description": "The operation's status.", "schema": {"type": "string"}},
}


def _pending_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _POLL_HEADERS,
        "content": {"application/json": {"schema": _STATUS_REF}},
    }


_DEFERRED_RESPONSES: dict[int | str, dict[str, Any]] = {
    303: _pending_response("Deferred: follow Location after Retry-After (docs/protocol.md)."),
    202: _pending_response("Deferred, for requests with `Prefer: respond-async`."),
    413: {
        "description": "Request body too large to defer.",
        "content": {"application/problem+json": {"schema": _PROBLEM_REF}},
    },
}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _PROBLEM_REF}},
    }


def _operation_paths(server: PollingServer) -> dict[str, Any]:
    parameter = {
        "name": "operation_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    prefer = {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "`respond-async` for 202 instead of 303; `wait=N` to hold up to N s.",
    }
    return {
        f"{server.operations_path}/{{operation_id}}": {
            "get": {
                "tags": ["operations"],
                "summary": "Poll an operation",
                "description": "While running: 303 to itself (or 202). When done: the "
                "deferred endpoint's own response, with `Operation-Status` and "
                "`Content-Location`.",
                "operationId": "repoll_get_operation",
                "parameters": [parameter, prefer],
                "responses": {
                    "200": {"description": "The deferred endpoint's own response, replayed."},
                    "202": _pending_response("Still running (`Prefer: respond-async`)."),
                    "303": _pending_response("Still running: come back to Location."),
                    "404": _problem("Unknown operation."),
                    "410": _problem("The operation's outcome expired."),
                },
            },
            "delete": {
                "tags": ["operations"],
                "summary": "Cancel an operation",
                "operationId": "repoll_cancel_operation",
                "parameters": [parameter],
                "responses": {
                    "200": {
                        "description": "The operation has ended.",
                        "content": {"application/json": {"schema": _STATUS_REF}},
                    },
                    "202": {
                        "description": "Cancellation requested; the work is stopping.",
                        "content": {"application/json": {"schema": _STATUS_REF}},
                    },
                    "404": _problem("Unknown operation."),
                    "410": _problem("The operation's outcome expired."),
                },
            },
        }
    }


def _document_fastapi(app: Any, server: PollingServer) -> None:
    from fastapi.routing import APIRoute  # noqa: PLC0415 - only for FastAPI apps

    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema  # type: ignore[no-any-return]
        for route in app.routes:
            if isinstance(route, APIRoute) and is_deferred(route.endpoint):
                for code, response in _DEFERRED_RESPONSES.items():
                    route.responses.setdefault(code, response)
        schema: dict[str, Any] = build_openapi()
        schema.setdefault("paths", {}).update(_operation_paths(server))
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["RepollOperationStatus"] = _STATUS_SCHEMA
        schemas["RepollProblem"] = _PROBLEM_SCHEMA
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
