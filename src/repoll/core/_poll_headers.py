"""Which header fields a poll carries: the one rule every client follows.

The poll continues the caller's request, so it goes out with the caller's
fields, but not to just anyone: credentials only to the origin that
received them. Cookies a server sets while it is polled (session affinity)
go on the next polls, as a browser's would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final
from urllib.parse import urljoin, urlsplit

if TYPE_CHECKING:
    from ._poll import Poll

_DEFAULT_PORTS = {"http": 80, "https": 443}


def same_origin(a: str, b: str) -> bool:
    """True if two absolute URLs share scheme, host and port."""
    return _origin(a) == _origin(b)


def origin_of(url: str) -> str:
    """The origin of an absolute URL as one string (``scheme://host:port``)."""
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}:{port}"


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # a malformed port never matches a real origin
        return (parts.scheme, parts.hostname, -1)
    if port is None:
        port = _DEFAULT_PORTS.get(parts.scheme.lower())
    return (parts.scheme.lower(), parts.hostname, port)


# The poll continues the caller's request: it goes out with the caller's
# fields (its API key, its User-Agent, its trace context, a tenant header...),
# except those that belong to the original request alone: what describes its
# body, its conditions (If-Match would make a GET of the status fail), its
# Prefer and Idempotency-Key (the flow writes its own Prefer), and the fields
# of the connection, which the HTTP library writes for each request.
NOT_CARRIED: Final = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "content-language",
        "content-location",
        "content-md5",
        "content-range",
        "transfer-encoding",
        "expect",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "if-range",
        "range",
        "idempotency-key",
        "prefer",
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)


def carries_credentials(original_url: str, poll_url: str) -> bool:
    """True if a poll of ``poll_url`` may carry the credentials sent to ``original_url``.

    Only to the origin that received them: a server must not be able to name
    another host in Location and collect the caller's credentials there.
    """
    return same_origin(urljoin(original_url, poll_url), original_url)


def poll_headers(
    original: Mapping[str, str],
    original_url: str,
    poll: Poll,
    cookies: str | None = None,
) -> dict[str, str]:
    """The header fields of ``poll``, from the original request's fields; lower-case names.

    The one rule every client follows (each only translates the result into
    its library's request): the original's fields but those in
    :data:`NOT_CARRIED` (``Accept`` is ``*/*`` without one), minus its
    credentials (``poll.credential_fields``: by default
    :data:`~repoll.core._headers.CREDENTIAL_FIELDS`) when the
    poll goes to another origin, plus the flow's own fields (``Prefer``).
    ``original`` may be any mapping (httpx's or requests' case-insensitive
    ones included); duplicate fields arrive joined, as those mappings give
    them. ``cookies`` is the ``Cookie`` field the shell's jar gives for the
    poll's URL, holding what the server set while it was polled (the jar has
    judged domain, path and expiry): its cookies join or replace the
    original's, on the original's origin only.
    """
    credentials = carries_credentials(original_url, poll.url)
    headers = {"accept": "*/*"}
    for name, value in original.items():
        lower = name.lower()
        if lower in NOT_CARRIED or (not credentials and lower in poll.credential_fields):
            continue
        headers[lower] = value
    if cookies and credentials:
        headers["cookie"] = merge_cookies(headers.get("cookie", ""), cookies)
    headers.update((name.lower(), value) for name, value in poll.headers.items())
    return headers


def merge_cookies(header: str, newer: str) -> str:
    """A ``Cookie`` field: ``header``'s pairs, replaced or joined by ``newer``'s."""
    pairs: dict[str, str] = {}
    for field in (header, newer):
        for part in field.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name:
                pairs[name] = value
    return "; ".join(f"{name}={value}" for name, value in pairs.items())
