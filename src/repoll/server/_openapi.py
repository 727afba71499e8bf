"""The OpenAPI description of what repoll adds: deferred answers and the operation routes.

Plain data, shared by the frameworks that publish an OpenAPI document
(FastAPI through ``repoll.install``, Litestar through ``repoll.litestar_app``).
"""

from __future__ import annotations

from typing import Any

from ..core._status import OperationStatus

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


DEFERRED_RESPONSES: dict[int | str, dict[str, Any]] = {
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


def _operation_paths(operations_path: str) -> dict[str, Any]:
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
        f"{operations_path}/{{operation_id}}": {
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


def add_operation_routes(schema: dict[str, Any], operations_path: str) -> None:
    """Add the operation routes and the schemas they name to an OpenAPI document."""
    schema.setdefault("paths", {}).update(_operation_paths(operations_path))
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["RepollOperationStatus"] = _STATUS_SCHEMA
    schemas["RepollProblem"] = _PROBLEM_SCHEMA


def add_deferred_responses(operation: dict[str, Any]) -> None:
    """Add the answers of a deferred endpoint to one operation of an OpenAPI document."""
    responses = operation.setdefault("responses", {})
    for code, response in DEFERRED_RESPONSES.items():
        responses.setdefault(str(code), response)
