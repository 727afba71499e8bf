"""Which requests may defer, decided from method and path before the app runs.

Deferring costs the middleware a child task, a captured response and some
bookkeeping per request; an app's other requests (most of them) should pay
nothing. For a Starlette or FastAPI app, the endpoints that can defer are
known from its routes: those wrapped by :func:`~repoll.deferred` and those
marked :func:`~repoll.deferrable` (they call :func:`~repoll.defer` themselves).
A request that matches none of them passes straight to the app.

Matching uses each route's own ``matches()``, through the ``Mount`` and
``Host`` routes above it, so it agrees with Starlette's router. A mounted app
that is not a router is opaque: its endpoints cannot be seen, so they are
not deferrable through this table (wrap such an app in its own
:class:`~repoll.PollingMiddleware`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, Final, TypeVar

from .._errors import MissingExtraError
from ._scope import first_header

try:
    from starlette.routing import BaseRoute, Host, Match, Mount, Route
except ModuleNotFoundError as exc:
    raise MissingExtraError("server", "starlette") from exc

Scope = MutableMapping[str, Any]
F = TypeVar("F", bound=Callable[..., Any])

DEFERRED_MARK: Final = "__repoll_deferred__"
DEFERRABLE_MARK: Final = "__repoll_deferrable__"
_HTTP_METHODS: Final = ("get", "head", "post", "put", "patch", "delete", "options")


def deferrable(endpoint: F) -> F:
    """Mark an endpoint that calls :func:`repoll.defer` itself (after its own validation).

    Endpoints wrapped by :func:`repoll.deferred` need no mark. Without it,
    ``repoll.install`` passes the endpoint's requests straight through, and
    ``defer()`` raises :class:`~repoll.NotDeferrableError`.
    """
    setattr(endpoint, DEFERRABLE_MARK, True)
    return endpoint


def can_defer(endpoint: object) -> bool:
    """True for an endpoint (function, partial, or HTTPEndpoint class) that may defer."""
    while isinstance(endpoint, functools.partial):
        endpoint = endpoint.func
    if getattr(endpoint, DEFERRED_MARK, False) or getattr(endpoint, DEFERRABLE_MARK, False):
        return True
    if inspect.isclass(endpoint):
        return any(can_defer(getattr(endpoint, name, None)) for name in _HTTP_METHODS)
    return False


# How a request may end up deferred: not at all, maybe (the endpoint decides
# by calling defer()), or always (the endpoint is @deferred).
NEVER, MAYBE, ALWAYS = 0, 1, 2

_Chain = tuple[BaseRoute, ...]


def _kind(endpoint: object) -> int:
    while isinstance(endpoint, functools.partial):
        endpoint = endpoint.func
    if getattr(endpoint, DEFERRED_MARK, False):
        return ALWAYS
    return MAYBE if can_defer(endpoint) else NEVER


def _chains(routes: Sequence[BaseRoute], above: _Chain = ()) -> list[tuple[_Chain, int]]:
    found: list[tuple[_Chain, int]] = []
    for route in routes:
        if isinstance(route, Route):
            kind = _kind(route.endpoint)
            if kind != NEVER:
                found.append(((*above, route), kind))
        elif isinstance(route, Mount | Host):
            found += _chains(route.routes, (*above, route))
    return found


def _matches(chain: _Chain, scope: Scope) -> bool:
    current: Scope = scope
    for route in chain:
        match, child = route.matches(current)
        if match is not Match.FULL:
            return False
        current = {**current, **child}
    return True


class RouteTable:
    """``table(scope)``: NEVER, MAYBE or ALWAYS, for the route the request would reach.

    Built from ``app.routes`` on first use and again whenever the number of
    top-level routes changes (routes added after ``install``). Routes are
    tried in the router's order, so the first match decides, as it does in
    Starlette.
    """

    def __init__(self, app: Any) -> None:
        self._app = app
        self._count = -1
        self._chains: list[tuple[_Chain, int]] = []
        self._by_host = False
        # Answers by what they depend on: method, path, root path, and the
        # host when a Host route is in the table. Each route's matches() costs
        # a microsecond or two, and every request of the app asks; a handful
        # of paths make most of them. Bounded, and emptied when full, so that
        # a flood of distinct paths costs what matching does.
        self._known: dict[tuple[str, str, str, str], int] = {}

    def __call__(self, scope: Scope) -> int:
        routes = self._app.routes
        if len(routes) != self._count:
            self._chains = _chains(routes)
            self._count = len(routes)
            self._by_host = any(isinstance(route, Host) for c, _ in self._chains for route in c)
            self._known.clear()
        host = first_header(scope, b"host") if self._by_host else ""
        key = (scope["method"], scope["path"], scope.get("root_path", ""), host)
        kind = self._known.get(key)
        if kind is None:
            kind = self._match(scope)
            if len(self._known) >= _KNOWN_MAX:
                self._known.clear()
            self._known[key] = kind
        return kind

    def _match(self, scope: Scope) -> int:
        for chain, kind in self._chains:
            if _matches(chain, scope):
                return kind
        return NEVER


_KNOWN_MAX = 1024
