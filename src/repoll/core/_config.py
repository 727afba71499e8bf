"""The server's settings, grouped: what it takes on, how long things last, its URLs.

:class:`repoll.PollingServer` (and so ``repoll.install``) takes its settings
as a few small frozen objects instead of a long list of keyword arguments,
as :class:`~repoll.core._pacing.PacingPolicy` already is for pacing:

- :class:`Limits`: how much one process accepts (body and response sizes,
  held polls, unfinished operations, overall and per principal);
- :class:`Lifetimes`: how long outcomes are kept, how long work may finish
  at shutdown, how often the process does its upkeep;
- :class:`UrlPolicy`: where operation URLs live and how they are written
  (a path, or an absolute URL built on a public base or on what a trusted
  proxy says).

Each checks its values when it is made and raises ValueError naming the
field, so a bad setting stops the app at start-up, not at the first request.
Pure data: reading the environment (``$REPOLL_PUBLIC_URL``,
``$FORWARDED_ALLOW_IPS``) is the server's job; :meth:`UrlPolicy.with_environment`
only merges what it is given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final
from urllib.parse import urlsplit

from ._origin import LOOPBACK, TrustedProxies

PUBLIC_URL_ENV: Final = "REPOLL_PUBLIC_URL"
FORWARDED_ALLOW_IPS_ENV: Final = "FORWARDED_ALLOW_IPS"

# One or more clean path segments: what may precede ``/{operation id}``.
_PATH_RE: Final = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+")


def _need_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        msg = f"{name} must be an integer of at least {minimum}, not {value!r}"
        raise ValueError(msg)


def _need_seconds(name: str, value: object, *, positive: bool = False) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "greater than 0" if positive else "at least 0"
        msg = f"{name} must be a finite number of seconds, {bound}, not {value!r}"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one server process accepts; past each limit it refuses or sheds.

    Every count is per process: with several workers, each has its own.
    """

    max_body_size: int = 1024 * 1024
    """The largest request body (bytes) a deferred endpoint accepts; a larger
    one is refused with ``413`` and no operation is created. 0 or more."""

    max_response_size: int = 64 * 1024 * 1024
    """The largest final response body (bytes) kept; a larger one ends the
    operation ``failed`` (``response-too-large``). 0 or more."""

    max_held_polls: int = 10_000
    """Polls and event streams held at once; past it, polls are answered at
    once and the advertised interval grows. 0 or more (0: never hold)."""

    max_operations: int = 10_000
    """Unfinished operations; past it, starts get ``429``. At least 1."""

    max_operations_per_principal: int = 100
    """The same, per principal (anonymous requests: per client address).
    At least 1."""

    def __post_init__(self) -> None:
        _need_count("max_body_size", self.max_body_size, 0)
        _need_count("max_response_size", self.max_response_size, 0)
        _need_count("max_held_polls", self.max_held_polls, 0)
        _need_count("max_operations", self.max_operations, 1)
        _need_count("max_operations_per_principal", self.max_operations_per_principal, 1)


@dataclass(frozen=True, slots=True)
class Lifetimes:
    """How long outcomes and work last, and how often the process does its upkeep."""

    retention: float = 3600.0
    """Seconds an ended operation's outcome is served (then ``410``); the
    record is deleted one further ``retention`` later (then ``404``). At least 0."""

    shutdown_grace: float = 5.0
    """Seconds running work may go on once shutdown begins; what is still
    running then ends ``failed`` (``operation-lost``). At least 0."""

    heartbeat_interval: float = 2.0
    """Seconds between upkeep rounds: heartbeats and lost-work checks (shared
    stores), purges. A process is taken for gone after five silent rounds
    (``owner_ttl``). Greater than 0."""

    def __post_init__(self) -> None:
        _need_seconds("retention", self.retention)
        _need_seconds("shutdown_grace", self.shutdown_grace)
        _need_seconds("heartbeat_interval", self.heartbeat_interval, positive=True)


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """Where operation URLs live, and when and how they are made absolute.

    By default an operation URL is a path (``/operations/{id}``), which every
    mainstream client resolves against the URL it requested and which stays
    right behind a proxy (see ``core._origin``).
    """

    operations_path: str = "/operations"
    """The path operation URLs live under, below the app's ``root_path``.
    Written with or without slashes around it (``"jobs/"`` is ``/jobs``)."""

    absolute_urls: bool = False
    """True: send every client an absolute operation URL. By default only
    clients known not to resolve a relative ``Location`` get one."""

    public_url: str | None = None
    """The base URL clients use (``https://api.example.com/v1``); absolute
    operation URLs are built on it. None: ``$REPOLL_PUBLIC_URL`` if set, else
    the URL is built from the request (and what a trusted proxy says)."""

    forwarded_allow_ips: str | tuple[str, ...] | None = None
    """The proxies whose ``Forwarded``/``X-Forwarded-*`` fields are believed:
    ``"10.0.0.1, 10.1.0.0/16"``, a sequence of such entries, or ``"*"``.
    None: ``$FORWARDED_ALLOW_IPS`` if set, else loopback (as uvicorn)."""

    def __post_init__(self) -> None:
        path = self.operations_path
        if not isinstance(path, str) or not _PATH_RE.fullmatch("/" + path.strip("/")):
            msg = f"operations_path must be a non-empty path such as '/operations', not {path!r}"
            raise ValueError(msg)
        object.__setattr__(self, "operations_path", "/" + path.strip("/"))
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                msg = (
                    "public_url must be an absolute http(s) URL such as "
                    f"'https://api.example.com', not {self.public_url!r}"
                )
                raise ValueError(msg)
            if parts.query or parts.fragment:
                msg = f"public_url must not have a query or fragment: {self.public_url!r}"
                raise ValueError(msg)
        ips = self.forwarded_allow_ips
        if ips is not None:
            if not isinstance(ips, str):
                ips = tuple(ips)
                object.__setattr__(self, "forwarded_allow_ips", ips)
            _parse_proxies(ips)

    @property
    def trusted_proxies(self) -> TrustedProxies:
        """The parsed ``forwarded_allow_ips``; loopback when it is None."""
        if self.forwarded_allow_ips is None:
            return LOOPBACK
        return _parse_proxies(self.forwarded_allow_ips)

    def with_environment(self, environ: Mapping[str, str]) -> UrlPolicy:
        """This policy, with ``public_url`` and ``forwarded_allow_ips`` it leaves
        unset taken from ``$REPOLL_PUBLIC_URL`` and ``$FORWARDED_ALLOW_IPS``
        (empty values count as unset). Values from there are checked alike."""
        changes: dict[str, str] = {}
        if self.public_url is None and environ.get(PUBLIC_URL_ENV):
            changes["public_url"] = environ[PUBLIC_URL_ENV]
        if self.forwarded_allow_ips is None and environ.get(FORWARDED_ALLOW_IPS_ENV):
            changes["forwarded_allow_ips"] = environ[FORWARDED_ALLOW_IPS_ENV]
        if not changes:
            return self
        try:
            return replace(
                self,
                public_url=changes.get("public_url", self.public_url),
                forwarded_allow_ips=changes.get("forwarded_allow_ips", self.forwarded_allow_ips),
            )
        except ValueError as exc:
            names = " and ".join(
                f"${env}"
                for field, env in (
                    ("public_url", PUBLIC_URL_ENV),
                    ("forwarded_allow_ips", FORWARDED_ALLOW_IPS_ENV),
                )
                if field in changes
            )
            msg = f"{exc} (from {names})"
            raise ValueError(msg) from exc


def _parse_proxies(spec: str | Iterable[str]) -> TrustedProxies:
    entries = spec.split(",") if isinstance(spec, str) else list(spec)
    for entry in entries:
        if not isinstance(entry, str):
            msg = f"forwarded_allow_ips entries must be strings, not {entry!r}"
            raise ValueError(msg)
        try:
            TrustedProxies.parse([entry])
        except ValueError:
            msg = (
                f"forwarded_allow_ips: {entry.strip()!r} is not an IP address, "
                "a network (10.0.0.0/8) or '*'"
            )
            raise ValueError(msg) from None
    return TrustedProxies.parse(entries)
