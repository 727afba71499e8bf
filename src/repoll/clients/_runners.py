"""The two runners of every flow: one blocking, one async. They decide nothing.

A flow is a generator that yields :class:`Sleep` (wait that long) or an action
for ``send`` (a poll, a request), and receives what ``send`` returned.

Waiting is the runner's only dealing with time, and it is injected: ``sleep``
(``asleep`` for the async runner) is called with every :class:`Sleep`'s
seconds. Tests pass one that returns at once, or one that advances a fake
clock; the shells pass :func:`repoll._testing.sleep` unless given another, so
that the user's ``repoll.testing()`` switch still reaches runners they cannot
construct themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator
from typing import TypeVar

from ..core._poll import Action, Observed, Sleep

A = TypeVar("A")  # what the flow asks to send
R = TypeVar("R")  # what sending gives back
T = TypeVar("T")  # what the flow ends with

Flow = Generator[Action, Observed | None, Observed]
Sleeper = Callable[[float], None]
AsyncSleeper = Callable[[float], Awaitable[None]]


def drive(
    flow: Generator[Sleep | A, R | None, T],
    send: Callable[[A], R],
    sleep: Sleeper = time.sleep,
) -> T:
    """Run ``flow`` to its end, sleeping and sending as it asks."""
    try:
        action = next(flow)
        while True:
            if isinstance(action, Sleep):
                sleep(action.seconds)
                action = flow.send(None)
            else:
                action = flow.send(send(action))
    except StopIteration as stop:
        result: T = stop.value
        return result


async def adrive(
    flow: Generator[Sleep | A, R | None, T],
    send: Callable[[A], Awaitable[R]],
    sleep: AsyncSleeper = asyncio.sleep,
) -> T:
    """The same as :func:`drive`, for an event loop."""
    try:
        action = next(flow)
        while True:
            if isinstance(action, Sleep):
                await sleep(action.seconds)
                action = flow.send(None)
            else:
                action = flow.send(await send(action))
    except StopIteration as stop:
        result: T = stop.value
        return result
