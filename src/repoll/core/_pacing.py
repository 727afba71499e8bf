"""Retry-After arithmetic: when to tell a client to come back, and how long to hold it.

The server, not a constant in the client, decides the poll interval. The
estimate uses what the server knows about this operation and its kind:

1. the work's own progress reports: at a steady rate, the remaining time is
   ``elapsed * (1 - progress) / progress``;
2. otherwise the history of this endpoint: ``typical duration - elapsed``;
3. otherwise an interval that grows with the operation's age (a quarter of
   it), so unknown long work is polled less and less often;
4. plus, while queued, the time for the operations ahead to drain through
   the executor's slots;
5. stretched by the server's load (0 = idle, 1 = at its hold limit).

The result is clamped to ``[min_interval, max_interval]``. This is advice,
not wire format: the protocol only says Retry-After is the server's estimate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ._headers import Preferences


@dataclass(frozen=True, slots=True)
class PacingPolicy:
    """Bounds on the intervals the server advertises and the polls it holds."""

    min_interval: float = 0.5
    max_interval: float = 60.0
    default_interval: float = 1.0
    # A status GET without ``Prefer: wait`` is held at least this long, so a
    # client following redirects at once still makes at most one request per
    # ``min_hold`` seconds.
    min_hold: float = 1.0
    max_hold: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_interval <= self.max_interval:
            msg = "need 0 <= min_interval <= max_interval"
            raise ValueError(msg)
        if not 0 <= self.min_hold <= self.max_hold:
            msg = "need 0 <= min_hold <= max_hold"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class WorkSnapshot:
    """What the server knows about one unfinished operation right now."""

    age: float  # seconds since the operation was created
    running_for: float | None  # seconds since it got a slot; None while queued
    progress: float | None
    typical_duration: float | None  # this endpoint's recent mean, if any
    queued_ahead: int = 0
    concurrency: int = 1
    load: float = 0.0


def estimate_interval(work: WorkSnapshot, policy: PacingPolicy) -> float:
    """Seconds until the next poll is worth making (see the module docstring)."""
    remaining: float | None = None
    if work.running_for is not None:
        progress = work.progress
        if progress is not None and 0.0 < progress < 1.0 and work.running_for > 0:
            remaining = work.running_for * (1.0 - progress) / progress
        elif progress is not None and progress >= 1.0:
            remaining = 0.0
        elif work.typical_duration is not None and work.running_for < work.typical_duration:
            remaining = work.typical_duration - work.running_for
    else:
        per_job = work.typical_duration or policy.default_interval
        slots = max(work.concurrency, 1)
        remaining = (work.queued_ahead // slots + 1) * per_job

    if remaining is None:
        remaining = max(policy.default_interval, work.age * 0.25)
    remaining *= 1.0 + min(max(work.load, 0.0), 1.0)
    return min(max(remaining, policy.min_interval), policy.max_interval)


def hold_seconds(preferences: Preferences, advertised: float, policy: PacingPolicy) -> float:
    """How long to hold a status request before answering "not yet".

    ``Prefer: wait=N`` asks for N seconds (0 answers at once); without it the
    hold is the interval the server advertises, at least ``min_hold``. Both are
    capped by ``max_hold``.
    """
    if preferences.wait is not None:
        return min(preferences.wait, policy.max_hold)
    return min(max(advertised, policy.min_hold), policy.max_hold)


def refusal_interval(typical_durations: Iterable[float], policy: PacingPolicy) -> float:
    """The Retry-After of a start refused for too many unfinished operations.

    A slot frees up when some operation ends: about the shortest typical
    duration among the endpoints, else the default interval; at least a
    second, since nothing frees up sooner than work ends, and within the
    advertised bounds.
    """
    soonest = min(typical_durations, default=policy.default_interval)
    return min(max(soonest, 1.0, policy.min_interval), policy.max_interval)


@dataclass(slots=True)
class DurationHistory:
    """A cheap running statistic of how long an endpoint's work takes.

    An exponentially weighted mean: recent runs count most, memory is O(1).
    """

    mean: float | None = None
    count: int = 0
    weight: float = 0.2

    def add(self, seconds: float) -> None:
        self.count += 1
        if self.mean is None:
            self.mean = seconds
        else:
            self.mean += self.weight * (seconds - self.mean)
