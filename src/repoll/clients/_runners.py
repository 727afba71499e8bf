"""The two runners of every flow: one blocking, one async. They decide nothing.

A flow is a generator that yields :class:`Sleep` (wait that long) or an action
for ``send`` (a poll, a request), and receives what ``send`` returned.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import TypeVar

from .. import _testing
from ..core._poll import Action, Observed, Sleep

A = TypeVar("A")  # what the flow asks to send
R = TypeVar("R")  # what sending gives back
T = TypeVar("T")  # what the flow ends with

Flow = Generator[Action, Observed | None, Observed]


def drive(flow: Generator[Sleep | A, R | None, T], send: Callable[[A], R]) -> T:
    """Run ``flow`` to its end, sleeping and sending as it asks."""
    try:
        action = next(flow)
        while True:
            if isinstance(action, Sleep):
                _testing.sleep(action.seconds)
                action = flow.send(None)
            else:
                action = flow.send(send(action))
    except StopIteration as stop:
        result: T = stop.value
        return result


async def adrive(flow: Generator[Sleep | A, R | None, T], send: Callable[[A], Awaitable[R]]) -> T:
    """The same as :func:`drive`, for an event loop."""
    try:
        action = next(flow)
        while True:
            if isinstance(action, Sleep):
                await _testing.asleep(action.seconds)
                action = flow.send(None)
            else:
                action = flow.send(await send(action))
    except StopIteration as stop:
        result: T = stop.value
        return result
