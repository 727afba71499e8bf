"""Reading an ASGI request's scope and receive channel: header fields, the client leaving."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..core import _replies as replies
from ..core._headers import Preferences

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def first_header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def wants_page(scope: Scope, preferences: Preferences) -> bool:
    """Whether the request wants a progress page (decided by ``core._replies.wants_page``)."""
    return replies.wants_page(first_header(scope, b"accept"), preferences)


async def until_disconnect(receive: Receive) -> None:
    """Return when the client has gone (its ASGI channel says ``http.disconnect``)."""
    for _ in range(64):
        if (await receive())["type"] == "http.disconnect":
            return
        await asyncio.sleep(0)
    # A server whose receive() never blocks (not ASGI-conformant, but seen in
    # test harnesses) would make this a busy loop: stop watching instead.
    await asyncio.get_running_loop().create_future()
