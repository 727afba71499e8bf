"""Admission: how many operations and held requests this process takes on.

Pure bookkeeping, no I/O. Every count is taken with a synchronous call
*before* the caller awaits anything and given back exactly once, so limits
are exact under any concurrency on one event loop: 400 starts racing for a
quota of 100 get exactly 100 admissions, whatever order their awaits finish
in. (Checking first and counting after an ``await`` is what let every racer
through.)

Operations are counted per *quota key*: the principal's digest when the
request carries credentials, else the client's address, so anonymous
clients do not share one quota that any one of them could use up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ANONYMOUS_PREFIX = "client:"


def quota_key(principal_digest: str, client_address: str | None) -> str:
    """Whose quota a start counts against: its principal, else its address."""
    if principal_digest:
        return principal_digest
    return ANONYMOUS_PREFIX + (client_address or "")


@dataclass(slots=True)
class Admission:
    """Counters of unfinished operations and of held requests in this process."""

    max_operations: int
    max_per_key: int
    max_held: int
    operations: int = 0
    held: int = 0
    _by_key: dict[str, int] = field(default_factory=dict)

    def admit(self, key: str) -> str | None:
        """Count one more operation for ``key``; else say whose limit refused it.

        Returns None when admitted (then :meth:`release` must follow, once),
        ``"the server"`` or ``"one client"`` when refused (nothing counted).
        """
        if self.operations >= self.max_operations:
            return "the server"
        taken = self._by_key.get(key, 0)
        if taken >= self.max_per_key:
            return "one client"
        self.operations += 1
        self._by_key[key] = taken + 1
        return None

    def release(self, key: str) -> None:
        """Give back one admission of ``key``."""
        taken = self._by_key.get(key, 0)
        if taken <= 0:
            msg = f"released more admissions than were taken for {key!r}"
            raise RuntimeError(msg)
        self.operations -= 1
        if taken == 1:
            del self._by_key[key]
        else:
            self._by_key[key] = taken - 1

    def try_hold(self) -> bool:
        """Take one held-request place; False (nothing taken) at the limit."""
        if self.held >= self.max_held:
            return False
        self.held += 1
        return True

    def release_hold(self) -> None:
        if self.held <= 0:
            msg = "released more holds than were taken"
            raise RuntimeError(msg)
        self.held -= 1

    @property
    def load(self) -> float:
        """Held requests over their limit: 0 idle, 1 at the limit."""
        return self.held / self.max_held if self.max_held else 1.0
