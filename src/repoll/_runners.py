"""The two runners of ``poll_flow``: one blocking, one async. They decide nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator

from . import _testing
from ._poll import Action, Observed, Poll, Sleep

Flow = Generator[Action, Observed | None, Observed]


def drive(flow: Flow, send: Callable[[Poll], Observed]) -> Observed:
    """Run ``flow`` to its end, sleeping and sending polls as it asks."""
    try:
        action = next(flow)
        while True:
            if isinstance(action, Sleep):
                _testing.sleep(action.seconds)
                action = flow.send(None)
            else:
                action = flow.send(send(action))
    except StopIteration as stop:
        final: Observed = stop.value
        return final


async def adrive(flow: Flow, send: Callable[[Poll], Awaitable[Observed]]) -> Observed:
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
        final: Observed = stop.value
        return final
