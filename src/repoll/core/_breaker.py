"""The client's circuit breaker: one per client, a state per origin; no I/O, no clock.

Theory of operation
-------------------
Every poll a client sends to an origin asks :meth:`CircuitBreaker.allow`
first and reports how it went with :meth:`CircuitBreaker.record`. Per
origin, the breaker is in one of three states:

==========  ===========================================  ==============================
state       a poll                                       moves to
==========  ===========================================  ==============================
closed      goes                                         open, after ``failures``
                                                         failures in a row
open        is refused (``CircuitOpenError``, at once)   half-open, ``cooldown`` s later
half-open   one goes (the probe); the others are         closed if the probe succeeds,
            refused until it is back                     open again if it fails
==========  ===========================================  ==============================

A failure is a poll that got no answer (a connection error, a timeout) or
a ``500``, ``502``, ``503`` or ``504``: the origin is down or failing. Every
other answer, a ``202``/``303`` asking to come back later included, is a
success: a server pacing its clients is alive. A probe whose answer never
comes (its caller gave up) frees the half-open state after ``cooldown``.

Shared by every operation of a client, so a thousand operations waiting on
one dead origin find it dead once, not a thousand times. Thread-safe: an
``httpx.Client`` may be used from several threads.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import Final

_FAILING_STATUSES = frozenset({500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a client's circuit for an origin opens, and for how long."""

    failures: int = 5  # failures in a row from one origin that open its circuit
    cooldown: float = 30.0  # seconds an open circuit refuses polls before one probe

    def __post_init__(self) -> None:
        if self.failures < 1 or not self.cooldown > 0:
            msg = "need failures >= 1 and cooldown > 0"
            raise ValueError(msg)


DEFAULT_BREAKER: Final = BreakerPolicy()


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(slots=True)
class _Circuit:
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    since: float = 0.0  # when it opened, or when the probe went


def is_failure(status: int, *, error: bool) -> bool:
    """Whether an answer (``status``; ``error`` when there was none) counts against its origin."""
    return error or status in _FAILING_STATUSES


class CircuitBreaker:
    """Per-origin circuits (see the module docstring)."""

    def __init__(self, policy: BreakerPolicy | None = None) -> None:
        self.policy = policy or BreakerPolicy()
        self._circuits: dict[str, _Circuit] = {}
        self._lock = threading.Lock()

    def state(self, origin: str) -> CircuitState:
        with self._lock:
            circuit = self._circuits.get(origin)
            return CircuitState.CLOSED if circuit is None else circuit.state

    def allow(self, origin: str, now: float) -> float | None:
        """None: send the poll. Otherwise the seconds until the circuit may let one through."""
        with self._lock:
            circuit = self._circuits.get(origin)
            if circuit is None or circuit.state is CircuitState.CLOSED:
                return None
            waited = now - circuit.since
            if waited >= self.policy.cooldown:
                # Open and cooled down, or a probe that never came back: probe.
                circuit.state, circuit.since = CircuitState.HALF_OPEN, now
                return None
            return self.policy.cooldown - waited

    def record(self, origin: str, *, failed: bool, now: float) -> None:
        """How a poll that :meth:`allow` let through went."""
        with self._lock:
            circuit = self._circuits.get(origin)
            if not failed:
                if circuit is not None:
                    del self._circuits[origin]  # closed, and nothing to remember
                return
            if circuit is None:
                circuit = self._circuits[origin] = _Circuit()
            circuit.failures += 1
            if circuit.state is CircuitState.HALF_OPEN or circuit.failures >= self.policy.failures:
                circuit.state, circuit.since = CircuitState.OPEN, now
