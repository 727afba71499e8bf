"""The answers that wait: a status poll (held) and a cancellation (waiting for the work).

Each is a core decision fed what only the shell can gather. A status poll is
``_pacing.hold_seconds`` (given the client's profile and the redirects it has
followed, read from the hop URL it asked for) then the engine's ``answer``; a
cancellation is ``_replies.cancel_now`` and, only when that says the work
still runs, the request to stop, a hold of ``PacingPolicy.cancel_hold`` and
``_replies.cancel_answer``.
"""

from __future__ import annotations

import time

from ..core import _replies as replies
from ..core._headers import Preferences
from ..core._model import Operation
from ..core._pacing import hold_seconds
from ..core._profiles import parse_hop
from ..stores._store import shared_store, update_operation
from ._engine import PollingServer
from ._scope import Receive, Scope, first_header, wants_page


def followed_redirects(scope: Scope) -> int:
    """How many redirects the client has followed, from the hop URL it asked for (0 if none)."""
    query: bytes = scope.get("query_string", b"")
    if not query:
        return 0
    return parse_hop(query.decode("latin-1")) or 0


async def status_reply(
    server: PollingServer,
    scope: Scope,
    operation_id: str,
    preferences: Preferences,
    receive: Receive | None = None,
) -> replies.Reply:
    """The answer to ``GET`` on an operation URL, after holding it if due."""
    origin = first_header(scope, b"origin")
    followed = followed_redirects(scope)
    op = await server.visible(scope, operation_id)
    if op is not None and not op.status.is_terminal:
        now = time.time()
        hold = hold_seconds(
            preferences,
            server.interval_for(op, now),
            server.pacing,
            page=wants_page(scope, preferences),
            profile=server.profile_of(scope),
            followed=followed,
            age=max(now - op.created_at, 0.0),
        )
        op = await server.holds.hold(op.id, hold, receive=receive)
    return server.answer(scope, op, preferences, origin, followed=followed)


async def cancel_reply(
    server: PollingServer, scope: Scope, operation_id: str, receive: Receive | None = None
) -> replies.Reply:
    """The answer to ``DELETE`` on an operation URL."""
    origin = first_header(scope, b"origin")
    op = await server.visible(scope, operation_id)
    reply = replies.cancel_now(op, time.time())
    if reply is None:
        assert op is not None  # cancel_now answers a missing record itself
        await _request_cancel(server, op)
        # Answer with the outcome if the work stops within the hold, else
        # 202 and the current status.
        op = await server.holds.hold(op.id, server.pacing.cancel_hold, receive=receive) or op
        reply = replies.cancel_answer(op)
    return replies.with_cors(reply, origin, server.cors_origins)


async def _request_cancel(server: PollingServer, op: Operation) -> None:
    def flag(current: Operation) -> Operation | None:
        return current.with_cancel_requested(now=time.time())

    await update_operation(server.store, op.id, flag)
    running = server.running(op.id)
    if running is not None:
        running.request_cancel()
    elif (shared := shared_store(server.store)) is not None:
        await shared.announce_cancel(op.id)  # the process running it stops it
    if replies.cancel_by_record(op, running_here=running is not None):
        event, stored, message = replies.canceled_on_request()
        await server.transition(op.id, event, response=stored, message=message)
