"""A real store with switches that make it fail on purpose, for the failure paths.

Everything goes to a real backend (memory or SQLite); a switch turns one
kind of call into the failure a real backend gives (``StoreUnavailable`` for
an outage, another exception for a refusal). Counters say how often each
call was made, so a test can tell that nothing keeps reading.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from repoll import StoreUnavailable
from repoll.core._model import Operation


class FaultyStore:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        # A SharedStore when the inner one is shared (see repoll.stores.shared_store).
        self.shared = getattr(inner, "shared", False)
        self.exact_liveness = getattr(inner, "exact_liveness", False)
        self.calls: Counter[str] = Counter()
        self.down = False  # every call: StoreUnavailable
        self.fail_create: type[BaseException] | None = None
        self.fail_progress: type[BaseException] | None = None
        self.refuse_outcomes = 0  # the next N terminal writes raise RuntimeError

    def _check(self, name: str) -> None:
        self.calls[name] += 1
        if self.down:
            msg = f"{name}: the store is down (on purpose)"
            raise StoreUnavailable(msg)

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def create(self, operation: Operation) -> None:
        self._check("create")
        if self.fail_create is not None:
            raise self.fail_create("create failed on purpose")
        await self.inner.create(operation)

    async def find_by_idempotency_key(self, key: str) -> Operation | None:
        self._check("find_by_idempotency_key")
        return await self.inner.find_by_idempotency_key(key)

    async def get(self, operation_id: str) -> Operation | None:
        self._check("get")
        return await self.inner.get(operation_id)

    async def compare_and_set(self, operation: Operation, *, expected_version: int) -> bool:
        self._check("compare_and_set")
        if operation.status.is_terminal and self.refuse_outcomes > 0:
            self.refuse_outcomes -= 1
            msg = "outcome refused on purpose"
            raise RuntimeError(msg)
        if not operation.status.is_terminal and self.fail_progress is not None:
            raise self.fail_progress("progress failed on purpose")
        return bool(await self.inner.compare_and_set(operation, expected_version=expected_version))

    async def unfinished(self) -> list[Operation]:
        self._check("unfinished")
        return list(await self.inner.unfinished())

    async def purge(self, *, now: float, tombstone: float) -> int:
        self._check("purge")
        return int(await self.inner.purge(now=now, tombstone=tombstone))

    async def subscribe(self, on_event: Any) -> None:
        await self.inner.subscribe(on_event)

    async def announce_cancel(self, operation_id: str) -> None:
        self._check("announce_cancel")
        await self.inner.announce_cancel(operation_id)

    async def heartbeat(self, owner: str, *, ttl: float) -> None:
        self._check("heartbeat")
        await self.inner.heartbeat(owner, ttl=ttl)

    async def live_owners(self) -> set[str]:
        self._check("live_owners")
        return set(await self.inner.live_owners())

    async def secret(self) -> bytes:
        return bytes(await self.inner.secret())

    def __len__(self) -> int:
        return len(self.inner)
