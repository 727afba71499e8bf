"""Other servers' long-running operations, as their own rules say; no I/O.

Besides repoll's protocol the client follows the conventions below. Each row
is a rule of this module (docs/client.md has the same table for people);
:func:`~repoll.core._poll.poll_flow` asks these functions and decides nothing
about them itself.

* **Status monitor** (Microsoft REST API guidelines, Azure, ARM): a first
  response 200/201/202 with ``Operation-Location`` or
  ``Azure-AsyncOperation``. The monitor's JSON ``status`` says where the
  operation is: ``Succeeded``, ``Failed`` and ``Canceled`` end it, any other
  value means still running (ARM's rule). On ``Succeeded`` the result is
  where ``final_state_via`` says (auto: the monitor's ``resourceLocation``,
  else the original URL for PUT/PATCH, else ``Location`` for POST, else the
  monitor's own answer; a DELETE gets no final GET). ``Failed`` and
  ``Canceled`` raise, carrying the monitor's answer.
* **Provisioning state** (ARM): a PUT/PATCH answered 200/201 with a resource
  whose ``properties.provisioningState`` has not ended. The original URL is
  polled until it has; its last answer is the result.

Protocol errors (:class:`~repoll.ProtocolError`): a monitor whose answer is
not a JSON object with a string ``status`` (empty, not JSON, no status), a
monitor or resource answering a non-transient 4xx/5xx
(:class:`~repoll.OperationError`). A first response that already says
``Succeeded`` (or ``Failed``) is not polled. Google's AIP-151 operations
(``{"name": ..., "done": false}``) name no URL to poll in HTTP terms: they
are out of scope and come back as the ordinary response they are.
"""

from __future__ import annotations

import enum
import json
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import urljoin

from .._errors import ProtocolError

if TYPE_CHECKING:
    from ._poll import Observed

FinalStateVia = Literal[
    "auto", "location", "operation-location", "azure-async-operation", "original-uri"
]
FINAL_STATES: Final = (
    "auto",
    "location",
    "operation-location",
    "azure-async-operation",
    "original-uri",
)
MONITOR_FIELDS: Final = ("azure-asyncoperation", "operation-location")


class MonitorState(enum.Enum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


_TERMINAL: Final = {
    "succeeded": MonitorState.SUCCEEDED,
    "failed": MonitorState.FAILED,
    "canceled": MonitorState.CANCELED,
    "cancelled": MonitorState.CANCELED,
}
_BODY_STATUSES: Final = frozenset({200, 201})


def monitor_url(response: Observed) -> str | None:
    """The status monitor URL of a status-monitor operation, if ``response`` starts one."""
    if response.status not in (200, 201, 202):
        return None
    for name in MONITOR_FIELDS:
        value = response.headers.get(name)
        if value:
            return urljoin(response.url, value)
    return None


def json_object(body: bytes) -> dict[str, object] | None:
    """``body`` as a JSON object, or None if it is not one."""
    if not body:
        return None
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


def state_of(value: object) -> MonitorState:
    """A status string by ARM's rule: three values end the operation, any other is pending."""
    return _TERMINAL.get(str(value).strip().lower(), MonitorState.PENDING)


def monitor_state(response: Observed) -> MonitorState:
    """What a status monitor's answer says; a malformed one is a :class:`ProtocolError`."""
    document = json_object(response.body)
    status = None if document is None else document.get("status")
    if not isinstance(status, str) or not status.strip():
        shown = response.body[:120].decode("utf-8", "replace") or "an empty body"
        msg = (
            f"the status monitor {response.url} answered {response.status} without a "
            f"JSON status: {shown}"
        )
        raise ProtocolError(msg)
    return state_of(status)


def provisioning_state(body: bytes) -> MonitorState | None:
    """ARM's ``properties.provisioningState`` of a resource body; None without one."""
    document = json_object(body)
    properties = None if document is None else document.get("properties")
    if not isinstance(properties, dict):
        return None
    value = properties.get("provisioningState")
    return state_of(value) if isinstance(value, str) and value.strip() else None


def may_need_body(method: str, status: int, content_type: str) -> bool:
    """Whether following this first response depends on its body (read it first).

    Only a PUT or PATCH answered 200/201 in JSON may be a resource still
    being provisioned; every other response is judged by its header alone.
    """
    return (
        method in ("PUT", "PATCH") and status in _BODY_STATUSES and "json" in content_type.lower()
    )


def provisioning_pending(response: Observed) -> bool:
    """A PUT/PATCH answered with a resource whose provisioning has not ended."""
    if response.method not in ("PUT", "PATCH") or response.status not in _BODY_STATUSES:
        return False
    return provisioning_state(response.body) is MonitorState.PENDING


def already_ended(first: Observed) -> MonitorState | None:
    """A first response whose own body already says how the operation ended."""
    document = json_object(first.body)
    if document is None or first.status not in _BODY_STATUSES:
        return None
    state = provisioning_state(first.body)
    if state is None and isinstance(document.get("status"), str):
        state = state_of(document["status"])
    return None if state is MonitorState.PENDING else state


def final_target(first: Observed, monitor: Observed, final_state_via: FinalStateVia) -> str | None:
    """Where the result of a succeeded monitor lives; None: the monitor's answer is it.

    As azure-core's operation-resource polling decides, with
    ``final_state_via`` as its ``final-state-via`` option.
    """
    location = first.headers.get("location")
    if final_state_via == "location" and location:
        return urljoin(first.url, location)
    if final_state_via == "original-uri":
        return first.url
    if final_state_via in ("operation-location", "azure-async-operation") and (
        first.method == "POST"
    ):
        return None
    document = json_object(monitor.body) or {}
    resource = document.get("resourceLocation")
    if isinstance(resource, str) and resource:
        return urljoin(monitor.url, resource)
    if first.method in ("PUT", "PATCH"):
        return first.url
    if first.method == "POST" and location:
        return urljoin(first.url, location)
    return None


def monitor_answer(response: Observed) -> MonitorState | None:
    """What ``response`` says if it reads as a status monitor's answer, else None.

    For a handle, which may see a monitor without the response that named it
    (resumed from its URL): a 200/202 without ``Operation-Status`` whose
    JSON has a string ``status``.
    """
    status = _monitor_status(response)
    return None if status is None else state_of(status)


def _monitor_status(response: Observed) -> str | None:
    """The ``status`` string of a 200/202 without ``Operation-Status``, if its JSON has one."""
    if response.status not in (200, 202) or "operation-status" in response.headers:
        return None
    document = json_object(response.body)
    status = None if document is None else document.get("status")
    return status if isinstance(status, str) else None


# The states Azure's and ARM's status monitors report (any case). A URL a
# handle is resumed on, whose response says nothing else, is taken for a
# monitor only when its "status" is one of these: {"status": "ok"} from a
# health check is a resource, not an operation that never ends.
_KNOWN_STATES: Final = frozenset(
    {
        *_TERMINAL,
        "notstarted",
        "running",
        "inprogress",
        "accepted",
        "queued",
        "creating",
        "updating",
        "deleting",
        "provisioning",
        "canceling",
        "cancelling",
    }
)


def recognised_monitor(response: Observed) -> MonitorState | None:
    """:func:`monitor_answer`, only for the states status monitors are known to report."""
    status = _monitor_status(response)
    if status is None or status.strip().lower() not in _KNOWN_STATES:
        return None
    return state_of(status)


def handle_state(state: MonitorState) -> str:
    """The :class:`~repoll.OperationStatus` value a handle shows for a monitor's state."""
    return "running" if state is MonitorState.PENDING else state.value
