"""Whose work is lost: deciding from heartbeats, without I/O.

Every server process (and worker) writes a heartbeat to a shared store every
``heartbeat_interval`` that lives ``owner_ttl`` (:data:`OWNER_TTL_HEARTBEATS`
intervals), and stamps the operations it runs with its name (``owner``).
Unfinished work whose owner the store no longer sees alive will never end
by itself: a live process declares it lost (:func:`orphaned`), so its
pollers get an answer instead of waiting out the retention time.

The list of live owners is believed only when it can be
(:func:`heartbeats_settled`).
Heartbeats expire while the store is out of reach, for every process at
once; a process that reaped right after an outage would take every other
live process for dead and fail its work. So a process reaps only once it
has itself heartbeated without a break for ``owner_ttl``, which every live
process's heartbeat interval fits into. A store whose liveness does not
expire (SQLite's lock files: the kernel drops them the moment a process
dies) is exact and needs no such wait.

The shell (``server._engine``) reads the clock and the store and writes the
loss; this module only decides.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from ._model import Operation
from ._replies import lost_with_owner

# A heartbeat lives this many intervals: a process that misses a few (a
# long GC pause, a slow store) is not taken for dead.
OWNER_TTL_HEARTBEATS = 5


def owner_ttl(heartbeat_interval: float) -> float:
    """How long one heartbeat keeps its process counted alive."""
    return heartbeat_interval * OWNER_TTL_HEARTBEATS


def heartbeats_settled(healthy_since: float | None, now: float, owner_ttl: float) -> bool:
    """Whether a store whose liveness expires can be believed about who is alive at ``now``.

    ``healthy_since`` is when this process's heartbeats last started to go
    through without a break (None while they fail). A store with exact
    liveness is believed at all times, without asking this.
    """
    return healthy_since is not None and now - healthy_since >= owner_ttl


def orphaned(unfinished: Iterable[Operation], live: Container[str]) -> list[tuple[str, str]]:
    """(operation id, reason) of each unfinished operation whose owner stopped.

    Work with no owner has not been handed to anyone yet (a queued start
    whose process is still writing it): it is never declared lost here.
    """
    return [
        (op.id, lost_with_owner(op.owner))
        for op in unfinished
        if op.owner is not None and op.owner not in live
    ]
