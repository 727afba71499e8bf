"""repoll's exceptions.

The tree (``repoll.X`` unless marked ``stores``: exported by :mod:`repoll.stores`,
for people who write a store; ``internal``: never reaches application code)::

    RepollError
    ├── MissingExtraError (also ImportError)   an optional dependency is not installed
    ├── ProtocolError                          a peer broke docs/protocol.md
    │   ├── InvalidTransition                  internal: an operation cannot move that way
    │   └── CrossOriginError                   a Location on another origin, refused
    ├── NotDeferrableError (also RuntimeError) defer() outside a deferrable request
    ├── StoreError                             the store cannot do what was asked
    │   ├── StoreUnavailable                   the store is down or busy (the server answers 503)
    │   ├── StoreURLError (also ValueError)    a store URL repoll cannot use
    │   ├── StoreNotOpen (also RuntimeError)   stores: a store used before open() or after close()
    │   └── DuplicateOperation                 stores: a store refused a taken idempotency key
    ├── OperationError                         an operation did not give a usable answer
    │   │                                      (also: transient poll failures past max_retries)
    │   ├── OperationNotFound                  404: unknown, foreign or malformed id
    │   ├── OperationExpired                   410: retention ended
    │   ├── OperationFailed                    the final outcome is ``failed`` (a status
    │   │                                      monitor's Failed; .response has its answer)
    │   ├── OperationCanceled                  the final outcome is ``canceled``
    │   └── CircuitOpenError                   the origin kept failing: polls refused for now
    └── PollingTimeout (also TimeoutError)     the overall deadline passed
"""

from __future__ import annotations


class RepollError(Exception):
    """Base class of every exception repoll raises on purpose."""


class MissingExtraError(RepollError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, extra: str, module: str) -> None:
        self.extra = extra
        self.module = module
        super().__init__(
            f"{module!r} is not installed; it comes with repoll's {extra!r} extra: "
            f"pip install 'repoll[{extra}]'"
        )


class ProtocolError(RepollError):
    """A message broke the protocol in docs/protocol.md."""


class InvalidTransition(ProtocolError):
    """An operation was asked to move to a state its current state cannot reach."""

    def __init__(self, current: str, event: str) -> None:
        self.current = current
        self.event = event
        super().__init__(f"operation in state {current!r} cannot take event {event!r}")


class CrossOriginError(ProtocolError):
    """The server named an operation URL on another origin; refused unless allowed."""


class NotDeferrableError(RepollError, RuntimeError):
    """``defer()`` was called where no repoll middleware can defer the request."""


class StoreError(RepollError):
    """The store could not do what was asked (for instance, it holds data repoll cannot use)."""


class StoreUnavailable(StoreError):
    """The store could not be reached, or stayed busy past its timeout."""


class StoreURLError(StoreError, ValueError):
    """A store URL repoll cannot use; the message lists the URLs it can."""


class StoreNotOpen(StoreError, RuntimeError):
    """A store was used before :meth:`~repoll.stores.Store.open` (or after ``close``)."""


class DuplicateOperation(StoreError):
    """A store refused a new operation whose idempotency key is already taken."""

    def __init__(self, existing_id: str) -> None:
        self.existing_id = existing_id
        super().__init__(f"the idempotency key belongs to operation {existing_id}")


class OperationError(RepollError):
    """An operation did not end with a response the caller can use.

    ``operation_url`` resumes or inspects it; ``response``, when set, is the
    HTTP library's response that ended it (a status monitor saying
    ``Failed``, say), as the library gave it.
    """

    def __init__(
        self, message: str, *, operation_url: str | None = None, response: object = None
    ) -> None:
        self.operation_url = operation_url
        self.response = response
        super().__init__(message)


class OperationNotFound(OperationError):
    """The server does not know the operation (or it belongs to someone else)."""


class OperationExpired(OperationError):
    """The operation's result was kept for its retention time and then dropped."""


class OperationFailed(OperationError):
    """The operation ended ``failed``."""


class OperationCanceled(OperationError):
    """The operation ended ``canceled``."""


class CircuitOpenError(OperationError):
    """The operation's origin kept failing: its polls are refused for a cool-down.

    Raised at once, without a request, while the client's circuit for that
    origin is open (``PollOptions(circuit_breaker=...)``);
    ``operation_url`` resumes the operation once the origin is back.
    """


class PollingTimeout(OperationError, TimeoutError):
    """The overall deadline passed; ``operation_url`` resumes the operation."""


def require(module: str, extra: str) -> None:
    """Raise :class:`MissingExtraError` unless ``module`` can be imported."""
    import importlib.util  # noqa: PLC0415 - only needed on this cold path

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(extra, module)
