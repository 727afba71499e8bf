"""A switch for users' tests: skip the client's real sleeps between polls.

    repoll.set_testing(True)      # every wait the client would make returns at once
    with repoll.testing():        # the same, for a block

The decisions are unchanged (same polls, same order); only time does not pass.

Why a process-wide switch at all: the runners take their sleeper as an
argument (``sleep=`` on every transport, adapter and handle), which is what
repoll's own tests use, but a user's test often exercises a client built deep
inside the code under test, where no argument reaches. :func:`sleep` and
:func:`asleep` are the sleepers the clients use when given none: real sleeps,
unless the switch is on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

_skip_sleeps = False


def set_testing(enabled: bool) -> None:
    """Turn the testing mode on or off for the whole process."""
    global _skip_sleeps  # noqa: PLW0603 - one process-wide switch, by design
    _skip_sleeps = enabled


def is_testing() -> bool:
    """True while the testing mode is on."""
    return _skip_sleeps


@contextmanager
def testing(enabled: bool = True) -> Iterator[None]:  # noqa: PT028 - a context manager, not a test
    """Testing mode for the duration of a ``with`` block."""
    before = _skip_sleeps
    set_testing(enabled)
    try:
        yield
    finally:
        set_testing(before)


def sleep(seconds: float) -> None:
    """The clients' default sleeper: :func:`time.sleep`, skipped in testing mode."""
    if not _skip_sleeps and seconds > 0:
        time.sleep(seconds)


async def asleep(seconds: float) -> None:
    """The async clients' default sleeper; in testing mode it only yields to the loop."""
    await asyncio.sleep(0 if _skip_sleeps else seconds)
