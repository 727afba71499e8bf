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

Holds
-----
Standard clients follow a ``303`` at once, whatever its Retry-After says, so
the server paces them by holding their polls (:func:`hold_seconds`).
``Prefer: wait=N`` asks for N seconds. A client that follows redirects by
itself (no ``Prefer: wait``) has a budget, its profile (``_profiles``):
redirects, a read timeout, a total timeout. Since a hold ends the moment the
work ends, a short hold buys such a client nothing and costs it a redirect,
so its polls are held as long as its budget allows from the first one
(:func:`plain_hold`), and when it could not follow another redirect it gets
a ``202`` instead (:func:`follows_again`). A start is held only when it asks
with ``Prefer: wait``, a progress page never (a person sees it at once; its
``Refresh`` paces the browser). A ``DELETE`` on
running work waits ``cancel_hold`` for the work to stop, and an event stream
re-reads the record every ``stream_refresh`` for progress. The shell only
measures time and waits; every length comes from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ._headers import Preferences
from ._model import Operation
from ._profiles import ClientProfile

# A hold stays this far under a client's read timeout (network and server
# time between the client's clock and the server's), and the share of a
# total timeout left for a hold leaves this much unspent.
TIMEOUT_MARGIN = 1.0
# No hold a client's budget allows is shorter than this: a client whose
# timeouts leave less gets its last answer (a 202) instead of another redirect.
MIN_BUDGET_HOLD = 0.5


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
    # No request is held longer: under the 30 s of Heroku's router and of
    # Google Cloud's load balancers, well under nginx's and AWS ALB's 60 s
    # (docs/deployment.md has the table).
    max_hold: float = 25.0
    # A DELETE on running work waits this long for it to stop: cooperative
    # cancellation usually lands within a moment, and then the answer is the
    # outcome (200) instead of "stopping" (202).
    cancel_hold: float = 1.0
    # An event stream re-reads the record this often for progress; ends
    # arrive at once whatever it is.
    stream_refresh: float = 0.5
    # A deployment's own client profiles, searched before the built-in
    # table (``_profiles.KNOWN_CLIENTS``): to add clients or change defaults.
    profiles: tuple[ClientProfile, ...] = ()

    def __post_init__(self) -> None:
        if not all(isinstance(p, ClientProfile) for p in self.profiles):
            msg = "profiles must be ClientProfile instances"
            raise TypeError(msg)
        if not 0 <= self.min_interval <= self.max_interval:
            msg = "need 0 <= min_interval <= max_interval"
            raise ValueError(msg)
        if not 0 <= self.min_hold <= self.max_hold:
            msg = "need 0 <= min_hold <= max_hold"
            raise ValueError(msg)
        if self.cancel_hold < 0:
            msg = "need 0 <= cancel_hold"
            raise ValueError(msg)
        if not self.stream_refresh > 0:
            msg = "need 0 < stream_refresh"
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


def work_snapshot(
    operation: Operation,
    now: float,
    *,
    typical_duration: float | None = None,
    queued_ahead: int = 0,
    concurrency: int = 1,
    load: float = 0.0,
) -> WorkSnapshot:
    """What ``operation``'s record says about its work at ``now``.

    Ages are never negative: clocks of different hosts sharing a store may
    disagree a little.
    """
    started = operation.started_at
    return WorkSnapshot(
        age=max(now - operation.created_at, 0.0),
        running_for=None if started is None else max(now - started, 0.0),
        progress=operation.progress,
        typical_duration=typical_duration,
        queued_ahead=queued_ahead,
        concurrency=concurrency,
        load=load,
    )


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


def hold_seconds(
    preferences: Preferences,
    advertised: float | None,
    policy: PacingPolicy,
    *,
    page: bool = False,
    profile: ClientProfile | None = None,
    followed: int = 0,
    age: float = 0.0,
) -> float:
    """How long to hold a request before answering "not yet".

    A progress page (``page``) is never held: a person sees it at once, and
    its ``Refresh`` paces the browser. Otherwise ``Prefer: wait=N`` asks for
    N seconds (0 answers at once). Without it, a start (``advertised`` None:
    its answer is the first redirect, nothing to pace yet) is not held, and
    a status poll is held as long as the client's budget allows
    (:func:`plain_hold`, given its ``profile``, the redirects it has
    ``followed`` and the operation's ``age``) or, when the client is not
    known (``profile`` None), for the advertised interval, at least
    ``min_hold``. Every hold is capped by ``max_hold``.
    """
    if page:
        return 0.0
    if preferences.wait is not None:
        return min(preferences.wait, policy.max_hold)
    if advertised is None:
        return 0.0
    if profile is not None:
        return plain_hold(profile, followed, age, policy)
    return min(max(advertised, policy.min_hold), policy.max_hold)


def _requests_left(profile: ClientProfile, followed: int) -> int:
    """This request and the redirects the client can still follow, one kept spare."""
    return max(profile.max_redirects - 1 - followed, 0) + 1


def _total_left(profile: ClientProfile, age: float) -> float | None:
    if profile.total_timeout is None:
        return None
    return profile.total_timeout - age - TIMEOUT_MARGIN


def plain_hold(profile: ClientProfile, followed: int, age: float, policy: PacingPolicy) -> float:
    """The hold of a poll from a client that follows redirects by itself.

    As long as the client and the path allow, from the first poll: at most
    ``max_hold`` (the path's idle timeouts), ``TIMEOUT_MARGIN`` under the
    client's read timeout (at least ``MIN_BUDGET_HOLD``), and what is left
    of its total timeout (counted from the operation's creation, ``age``)
    spread evenly over the requests it has left. The hold still ends the
    moment the work ends, so a longer hold never delays the client; a
    remaining time the server could estimate changes nothing, since
    spreading it over the hops left would only spend more of them.
    """
    hold = policy.max_hold
    if profile.read_timeout is not None:
        timeout = profile.read_timeout
        hold = min(hold, max(timeout - TIMEOUT_MARGIN, min(MIN_BUDGET_HOLD, timeout / 2)))
    total = _total_left(profile, age)
    if total is not None:
        hold = min(hold, max(total, 0.0) / _requests_left(profile, followed))
    return max(hold, 0.0)


def follows_again(profile: ClientProfile, followed: int, age: float, policy: PacingPolicy) -> bool:
    """Whether a client that has ``followed`` redirects may get another ``303`` now.

    Not when that redirect would reach its limit (one is kept spare: clients
    count a little differently), nor when what is left of its total timeout
    would not allow another hold of ``MIN_BUDGET_HOLD``. Otherwise the
    client gets the graceful ``202`` (``_replies.ran_out``) instead.
    """
    if followed + 1 > profile.max_redirects - 1:
        return False
    total = _total_left(profile, age)
    if total is not None:
        return total >= min(MIN_BUDGET_HOLD, policy.max_hold)
    return True


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
