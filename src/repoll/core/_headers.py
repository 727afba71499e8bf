"""Parsing and formatting of the header fields the protocol uses.

Pure functions, no I/O, no clock: callers pass ``now`` where time matters.
Parsers are lenient in what they accept and never raise on a peer's bad
input; they return ``None`` (or an empty result) instead, because RFC 7240
asks servers to ignore preferences they do not understand and a client must
not crash on a malformed ``Retry-After``.

Every parser here runs on the event loop, on input an unauthenticated peer
controls, so each one is linear in its input and looks at a bounded amount
of it: values longer than any valid one are refused before any other work,
numbers are converted only when they have few enough digits to be sane, and
no regular expression here can backtrack (tests/test_headers.py times each
parser on 100 KB of hostile input).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

OPERATION_STATUS: Final = "operation-status"
RETRY_AFTER: Final = "retry-after"
RETRY_AFTER_MS: Final = "retry-after-ms"
PREFER: Final = "prefer"
PREFERENCE_APPLIED: Final = "preference-applied"
PROBLEM_JSON: Final = "application/problem+json"
# Fields that carry credentials by a widespread convention: a client sends
# them on a poll only to the origin that received them (the API key fields
# included, since a repoll server takes them for the principal that owns an
# operation: a poll without them would find no operation).
CREDENTIAL_FIELDS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "api-key",
        "ocp-apim-subscription-key",
        "x-auth-token",
    }
)

# Ids carry 128 random bits, URL-safe base64 without padding: 22 characters,
# after 7 characters of creation time (milliseconds since 1970, 42 bits, in
# an alphabet in ASCII order): ids made one after another sort together, so
# a store's index takes new ones at its end, not at random places across the
# whole of it (on SQLite an insert took 13 µs with random ids, 7.8 µs with
# these: docs/performance.md). Ids of 22 characters, from before, stay valid.
_ID_BYTES: Final = 16
_TIME_ALPHABET: Final = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
_TIME_CHARS: Final = 7
_ID_RE: Final = re.compile(r"(?:[A-Za-z0-9_-]{7})?[A-Za-z0-9_-]{22}")

# Seconds a Retry-After may name before we consider it nonsense (one week).
_MAX_DELAY_S: Final = 7 * 24 * 3600.0
# Digits worth converting: a week in milliseconds has 9. Longer runs of digits
# are refused (Retry-After) or saturate (Prefer: wait) without int(), which
# raises past 4,300 digits and whose float() overflows past 308.
_MAX_DIGITS: Final = 12
# An HTTP-date is 29 characters; the obsolete forms are shorter.
_MAX_DATE_LENGTH: Final = 64


def _is_digits(text: str) -> bool:
    # str.isdigit() accepts "¹" and other non-ASCII digits that int() refuses.
    return text.isascii() and text.isdigit()


def _seconds(digits: str, scale: float = 1.0) -> float | None:
    """``digits`` (ASCII digits only) as seconds, or None past a week."""
    if len(digits.lstrip("0")) > _MAX_DIGITS:
        return None
    seconds = int(digits) / scale
    return seconds if seconds <= _MAX_DELAY_S else None


def new_operation_id(now: float = 0.0) -> str:
    """An unguessable operation id: its creation time ``now``, then 128 random bits."""
    millis = max(0, min(int(now * 1000), (1 << (6 * _TIME_CHARS)) - 1))
    stamp = "".join(
        _TIME_ALPHABET[(millis >> shift) & 63] for shift in range(6 * (_TIME_CHARS - 1), -1, -6)
    )
    return stamp + secrets.token_urlsafe(_ID_BYTES)


def is_valid_operation_id(value: str) -> bool:
    """True if ``value`` has the shape of an id this server could have issued."""
    return _ID_RE.fullmatch(value) is not None


# --- Retry-After ------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait, from a ``Retry-After`` value (delay-seconds or HTTP-date).

    ``now`` is a Unix timestamp. A date in the past gives ``0.0``. Malformed,
    negative or absurdly large values give ``None``.
    """
    if value is None:
        return None
    text = value.strip()
    if _is_digits(text):
        return _seconds(text)
    if len(text) > _MAX_DATE_LENGTH:
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one is malformed
        return None
    delay = when.timestamp() - now
    return min(max(delay, 0.0), _MAX_DELAY_S)


def parse_delay_seconds(value: str | None) -> float | None:
    """Seconds from ``Retry-After``'s delay-seconds form only (ASCII digits), else None.

    For those who must tell the form a server used (``repoll check``: the
    protocol asks for whole seconds); clients read either form with
    :func:`parse_retry_after`.
    """
    if value is None:
        return None
    text = value.strip()
    return _seconds(text) if _is_digits(text) else None


def parse_retry_after_ms(value: str | None) -> float | None:
    """Seconds to wait, from a ``Retry-After-Ms`` value (integer milliseconds)."""
    if value is None:
        return None
    text = value.strip()
    if not _is_digits(text):
        return None
    return _seconds(text, 1000.0)


def retry_after_headers(delay_s: float) -> dict[str, str]:
    """``Retry-After`` (whole seconds, rounded up) and ``Retry-After-Ms`` (precise)."""
    delay_s = max(delay_s, 0.0)
    return {
        RETRY_AFTER: str(math.ceil(delay_s)),
        RETRY_AFTER_MS: str(round(delay_s * 1000)),
    }


# --- Prefer (RFC 7240) -------------------------------------------------------

# Prefer = #preference; preference = token [ BWS "=" BWS word ]
# *( OWS ";" [ OWS parameter ] ); word = token / quoted-string. Parameters are
# accepted and dropped: neither preference repoll applies defines any.
#
# Real Prefer fields are a few dozen characters. Only the first
# MAX_PREFER_LENGTH characters of them, all fields together, are read; a field
# that does not fit whole is ignored (RFC 7240 lets a server ignore any
# preference), so the parser's work is bounded whatever arrives.
MAX_PREFER_LENGTH: Final = 1024
_APPLIED: Final = frozenset({"wait", "respond-async"})


@dataclass(frozen=True, slots=True)
class Preferences:
    """What a request's ``Prefer`` fields ask of repoll."""

    respond_async: bool = False
    wait: float | None = None  # seconds; None when absent or malformed


def _elements(field: str) -> list[str]:
    """``field`` split at the commas that are not inside a quoted string; linear."""
    if '"' not in field:
        return field.split(",")
    elements: list[str] = []
    start = 0
    quoted = False
    escaped = False
    for index, char in enumerate(field):
        if escaped:
            escaped = False
        elif quoted:
            if char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == ",":
            elements.append(field[start:index])
            start = index + 1
    elements.append(field[start:])
    return elements


def _preference(element: str) -> tuple[str, str | None] | None:
    """(name, value or None) of an element naming ``respond-async`` or ``wait``, else None.

    Other preferences are not looked at: malformed or not, they are ignored.
    """
    name, equals, raw = element.split(";", 1)[0].partition("=")
    name = name.strip().lower()
    if name not in _APPLIED:
        return None
    if not equals:
        return name, None
    raw = raw.strip()
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            return None
        raw = raw[1:-1]  # escapes matter to no value repoll reads
    return name, raw


def parse_prefer(values: Iterable[str]) -> Preferences:
    """Read ``respond-async`` and ``wait`` from every ``Prefer`` field value.

    Unknown or malformed preferences are ignored (RFC 7240 section 2), and so
    are fields past the first :data:`MAX_PREFER_LENGTH` characters. When a preference
    is repeated, the first occurrence wins, as RFC 7240 asks. ``wait`` counts
    in whole seconds; a value of more digits than any sane wait saturates at
    a week (the server caps every hold far below that).
    """
    respond_async = False
    wait: float | None = None
    seen: set[str] = set()
    budget = MAX_PREFER_LENGTH
    for field in values:
        budget -= len(field)
        if budget < 0:
            break
        for element in _elements(field):
            parsed = _preference(element)
            if parsed is None:
                continue
            name, raw = parsed
            if name in seen:
                continue
            seen.add(name)
            if name == "respond-async":
                respond_async = True
            elif name == "wait" and raw is not None and _is_digits(raw):
                seconds = _seconds(raw)
                wait = _MAX_DELAY_S if seconds is None else seconds
    return Preferences(respond_async=respond_async, wait=wait)


def format_prefer(*, respond_async: bool = False, wait: float | None = None) -> str | None:
    """A ``Prefer`` value asking for the given preferences, or None for none."""
    parts = []
    if respond_async:
        parts.append("respond-async")
    if wait is not None:
        parts.append(f"wait={max(math.floor(wait), 0)}")
    return ", ".join(parts) or None


# --- Idempotency-Key (IETF httpapi draft) ------------------------------------

IDEMPOTENCY_KEY: Final = "idempotency-key"
_MAX_KEY_LENGTH: Final = 255
# The draft makes the value a Structured Field String ("..."); a bare token is
# accepted too, because many clients send one. Printable ASCII only.
_KEY_RE: Final = re.compile(r'"((?:[ !#-\[\]-~]|\\["\\])+)"|([!#-~]+)')


class InvalidIdempotencyKey(ValueError):
    """An ``Idempotency-Key`` value that is empty, too long or not printable ASCII."""


def parse_idempotency_key(values: Iterable[str]) -> str | None:
    """The key from ``Idempotency-Key`` fields: None when absent.

    Raises :class:`InvalidIdempotencyKey` when present but malformed, or sent
    more than once with different values.
    """
    keys = set()
    for value in values:
        # The longest valid value is a quoted key of escaped characters.
        if len(value) > 2 * _MAX_KEY_LENGTH + 2 + 64:
            msg = f"Idempotency-Key may be at most {_MAX_KEY_LENGTH} characters"
            raise InvalidIdempotencyKey(msg)
        match = _KEY_RE.fullmatch(value.strip())
        if match is None:
            msg = "Idempotency-Key must be a quoted string or a token of printable ASCII"
            raise InvalidIdempotencyKey(msg)
        quoted, bare = match.groups()
        key = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        if len(key) > _MAX_KEY_LENGTH:
            msg = f"Idempotency-Key may be at most {_MAX_KEY_LENGTH} characters"
            raise InvalidIdempotencyKey(msg)
        keys.add(key)
    if len(keys) > 1:
        msg = "Idempotency-Key was sent more than once with different values"
        raise InvalidIdempotencyKey(msg)
    return keys.pop() if keys else None


def digest(*parts: bytes | str) -> str:
    """A SHA-256 hex digest of ``parts``, unambiguously separated."""
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "big"))
        hasher.update(data)
    return hasher.hexdigest()


# --- Problem details (RFC 9457) --------------------------------------------

PROBLEM_TYPE_BASE: Final = "urn:repoll:problem:"


def problem_body(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    kind: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """An ``application/problem+json`` document."""
    document: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + kind if kind else "about:blank",
        "title": title,
        "status": status,
    }
    if detail is not None:
        document["detail"] = detail
    if extra:
        document.update(extra)
    return json.dumps(document, separators=(",", ":")).encode()
