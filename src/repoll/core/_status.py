"""Operation states and the transitions between them.

Theory of operation
-------------------
An operation is born ``queued`` when a deferred endpoint calls ``defer()``. It
becomes ``running`` when the executor gives it a slot, and ends in exactly one
of three terminal states:

* ``succeeded``: the endpoint produced a response with a status below 400;
* ``failed``: the endpoint produced a 4xx/5xx response, raised, or the server
  lost the work (restart, shutdown);
* ``canceled``: a client asked for cancellation (``DELETE``) and the work
  stopped before it produced a response.

One change keeps the state: a Celery worker taking over an operation whose
worker died (``TAKE_OVER``, only for work declared safe to run again). The
status stays ``running``, but the work starts again under a new owner; going
through the table means it can happen only to running work, never to queued
or ended work.

How work that produced no response ended is told to the core as an
:class:`Ending`, a plain value: the shells (the server's deferral and the
Celery worker) translate what asyncio raised into it, and
``_replies.interrupted_outcome`` decides the event and the stored problem, the
same way for both.

Every change of state goes through :func:`transition`, which reads the table
below. Stores apply a transition as a compare-and-set on the current state, so
two racers (say, the work finishing and a ``DELETE`` arriving) can never both
win: the loser sees :class:`~repoll.InvalidTransition` and re-reads.

There is no I/O here: this module is pure data and pure functions.
"""

from __future__ import annotations

import enum
from typing import Final

from .._errors import InvalidTransition


class OperationStatus(enum.StrEnum):
    """Where an operation is in its life; the value of ``Operation-Status``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        """True once the operation can no longer change."""
        return self in TERMINAL_STATUSES


class Event(enum.Enum):
    """What can happen to an operation."""

    START = "start"  # the executor gave the work a slot
    FINISH_OK = "finish_ok"  # the endpoint answered below 400
    FINISH_ERROR = "finish_error"  # the endpoint answered 4xx/5xx or raised
    LOSE = "lose"  # the server lost the work (restart, shutdown, worker death)
    CANCEL = "cancel"  # cancellation took effect
    TAKE_OVER = "take_over"  # a worker re-runs work whose worker died (rerun=True)


class Ending(enum.Enum):
    """How work ended without a response, in the core's terms (no exception types).

    A client's cancellation request decides between the first two: work
    stopped by a cancellation that was asked for is ``canceled``; a
    cancellation nobody asked for (a shutdown, a library cancelling its
    caller) means the work was lost.
    """

    CANCELLED = "cancelled"  # the task running the work was cancelled
    STOPPED = "stopped"  # the work raised OperationCanceled (raise_if_canceled)
    RAISED = "raised"  # the work raised anything else
    NO_RESPONSE = "no_response"  # the work returned without a complete response


TERMINAL_STATUSES: Final = frozenset(
    {OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.CANCELED}
)

_Q, _R = OperationStatus.QUEUED, OperationStatus.RUNNING
_S, _F, _C = OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.CANCELED

# (current state, event) -> next state. Anything absent is a protocol error.
# Finishing straight from QUEUED is allowed: an operation can be answered
# without ever holding an executor slot (for example when it raises while
# waiting for one).
TRANSITIONS: Final[dict[tuple[OperationStatus, Event], OperationStatus]] = {
    (_Q, Event.START): _R,
    (_Q, Event.FINISH_OK): _S,
    (_Q, Event.FINISH_ERROR): _F,
    (_Q, Event.LOSE): _F,
    (_Q, Event.CANCEL): _C,
    (_R, Event.FINISH_OK): _S,
    (_R, Event.FINISH_ERROR): _F,
    (_R, Event.LOSE): _F,
    (_R, Event.CANCEL): _C,
    (_R, Event.TAKE_OVER): _R,
}


def transition(current: OperationStatus, event: Event) -> OperationStatus:
    """Return the state after ``event``, or raise :class:`InvalidTransition`."""
    try:
        return TRANSITIONS[(current, event)]
    except KeyError:
        raise InvalidTransition(current.value, event.value) from None


def finish_event(status_code: int) -> Event:
    """The event a final response of ``status_code`` causes."""
    return Event.FINISH_OK if status_code < 400 else Event.FINISH_ERROR
