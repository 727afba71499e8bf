"""Who started a request: principal functions, and the keyed digest that is stored.

An operation belongs to the principal that started it; every other principal
gets a 404 for it (docs/security.md). The default principal is the request's
*credentials*, and only those: ``Authorization``, an API key header, and the
cookies that carry a session by a widespread convention. Other cookies
(analytics, preferences, a load balancer's stickiness) are left out, so that
they may change during a long operation, and so that a client cannot become a
new principal, with a fresh quota, by sending a new junk cookie.

The store never sees a principal, only an HMAC-SHA256 of it under a key: the
server's ``principal_key`` when one is configured (kept outside the store, so
a stolen store does not allow guessing weak credentials offline), else a
random secret the store keeps (which still defeats precomputed tables).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Final

from .._errors import MissingExtraError

try:
    from starlette.requests import HTTPConnection, cookie_parser
except ModuleNotFoundError as exc:
    raise MissingExtraError("server", "starlette") from exc

PrincipalFunction = Callable[[HTTPConnection], str | Awaitable[str]]

# Header fields that carry credentials by a widespread convention.
CREDENTIAL_HEADERS: Final = ("authorization", "x-api-key", "api-key")
_CREDENTIAL_NAMES: Final = frozenset(name.encode() for name in CREDENTIAL_HEADERS)
# Cookie names that carry a session by convention (lower-cased): Starlette,
# Flask and Litestar ("session"), Django ("sessionid"), Express
# ("connect.sid"), Java servlets, PHP, ASP.NET, Rails/Laravel ("*_session").
SESSION_COOKIES: Final = frozenset(
    {
        "session",
        "sessionid",
        "session_id",
        "sid",
        "connect.sid",
        "jsessionid",
        "phpsessid",
        "asp.net_sessionid",
        ".aspnetcore.session",
        "access_token",
        "auth_token",
        "id_token",
        "jwt",
    }
)
SESSION_COOKIE_SUFFIXES: Final = ("_session", "-session", ".session", "_sess")
# Longer Cookie fields are read only this far: principals come from the
# first few kilobytes, and the parsing stays bounded.
_MAX_COOKIE_LENGTH: Final = 8192


def is_session_cookie(name: str) -> bool:
    lowered = name.lower()
    return lowered in SESSION_COOKIES or lowered.endswith(SESSION_COOKIE_SUFFIXES)


def default_principal(request: HTTPConnection) -> str:
    """The request's credentials: its Authorization and API key fields and session cookies.

    Requests with none of them share the anonymous principal ``""``.
    """
    parts: list[str] = []
    cookie = ""
    # One pass over the raw fields: this runs for every start and every poll.
    for raw_name, raw_value in request.scope["headers"]:
        if raw_name in _CREDENTIAL_NAMES:
            parts.append(f"{raw_name.decode()}={raw_value.decode('latin-1')}")
        elif raw_name == b"cookie" and not cookie:
            cookie = raw_value.decode("latin-1")
    if cookie:
        cookies = cookie_parser(cookie[:_MAX_COOKIE_LENGTH])
        parts += (
            f"cookie:{name}={value}" for name, value in cookies.items() if is_session_cookie(name)
        )
    # Sorted: a client may send its fields in another order on its polls.
    return "\0".join(sorted(parts))


def cookie_principal(name: str) -> PrincipalFunction:
    """A principal function for cookie sessions: the value of the cookie ``name``.

    Other cookies may come and go without the user losing sight of their
    operations. Requests without the cookie fall back to their Authorization
    field, else to the anonymous principal.
    """

    def principal(request: HTTPConnection) -> str:
        session = request.cookies.get(name)
        if session:
            return f"cookie:{name}={session}"
        return request.headers.get("authorization", "")

    return principal


class PrincipalDigests:
    """Keyed digests of principal values: what the store keeps instead of them."""

    def __init__(self, key: bytes) -> None:
        # The keyed inner and outer states are computed once; each digest
        # copies them (no credential is cached in memory).
        self._mac = hmac.new(key, b"principal\0", hashlib.sha256)

    def __call__(self, principal: str) -> str:
        """The stored form of ``principal``; the anonymous principal stays ``""``."""
        if not principal:
            return ""
        mac = self._mac.copy()
        mac.update(principal.encode())
        return mac.hexdigest()
