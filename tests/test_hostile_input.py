"""Hostile input to every parser on the request path: linear time, never an exception.

Each parser runs on the event loop on input an unauthenticated peer controls,
so a slow one freezes the whole server for everyone (a 12 KB ``Prefer``
once took 13 s). Every case here is timed on 100 KB of the worst shapes we
know for it, and must answer in well under 100 ms.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from repoll.core._headers import (
    MAX_PREFER_LENGTH,
    InvalidIdempotencyKey,
    parse_idempotency_key,
    parse_prefer,
    parse_retry_after,
    parse_retry_after_ms,
)
from repoll.core._origin import is_safe_host, parse_forwarded

HOSTILE = [
    "a" * 100_000 + '"',
    '"' * 100_000,
    '"\\' * 50_000,
    "a=" * 50_000,
    "," * 100_000,
    ";" * 100_000,
    "wait=" + "9" * 100_000,
    'respond-async, wait="' + "\\" * 100_000,
    'a="b",' * 16_000,
    " " * 100_000 + "x",
    "\u00b9" * 100_000,
]


def _timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_prefer_is_linear_and_total(value):
    result, seconds = _timed(parse_prefer, [value])
    assert seconds < 0.05
    assert result.wait is None or result.wait >= 0
    # Many fields at once cost no more than their budget.
    _, seconds = _timed(parse_prefer, [value[:1000]] * 1000)
    assert seconds < 0.05


def test_prefer_with_absurd_digits_saturates_instead_of_raising():
    assert parse_prefer(["wait=" + "9" * 400]).wait == 7 * 24 * 3600.0
    assert parse_prefer(["wait=" + "9" * 4400]).wait is None  # past the length budget
    assert parse_prefer(["wait=0000000000000000000000005"]).wait == 5.0


def test_prefer_keeps_its_meaning_for_real_values():
    assert parse_prefer(["respond-async, wait=10"]).respond_async
    assert parse_prefer(["respond-async, wait=10"]).wait == 10.0
    assert parse_prefer(['wait="7"']).wait == 7.0
    assert parse_prefer(['respond-async; x="a,b", wait=5']).wait == 5.0
    assert parse_prefer(["wait=1.5"]).wait is None
    assert parse_prefer(["wait=5", "wait=9"]).wait == 5.0  # the first one counts
    # Past the budget, later fields are ignored, earlier ones still count.
    assert parse_prefer(["wait=5", "x" * MAX_PREFER_LENGTH, "respond-async"]).wait == 5.0
    assert not parse_prefer(["wait=5", "x" * MAX_PREFER_LENGTH, "respond-async"]).respond_async


@pytest.mark.parametrize("value", [*HOSTILE, "9" * 4301, "9" * 400, "1" * 13], ids=range(14))
def test_retry_after_parsers_are_linear_and_total(value):
    result, seconds = _timed(parse_retry_after, value, now=time.time())
    assert seconds < 0.05
    assert result is None or 0 <= result <= 7 * 24 * 3600
    result, seconds = _timed(parse_retry_after_ms, value)
    assert seconds < 0.05
    assert result is None or 0 <= result <= 7 * 24 * 3600


@given(st.text(max_size=300))
def test_retry_after_never_raises(value):
    parse_retry_after(value, now=0.0)
    parse_retry_after_ms(value)
    parse_prefer([value])


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_idempotency_key_is_linear(value):
    started = time.perf_counter()
    with pytest.raises(InvalidIdempotencyKey):
        parse_idempotency_key([value])
    assert time.perf_counter() - started < 0.05


@pytest.mark.parametrize("value", [*HOSTILE, "a." * 50_000 + "/", "[" + ":" * 100_000])
def test_forwarding_headers_are_linear(value):
    _, seconds = _timed(
        parse_forwarded,
        forwarded=[value],
        x_forwarded_host=[value],
        x_forwarded_proto=[value],
        x_forwarded_prefix=[value],
    )
    assert seconds < 0.05
    _, seconds = _timed(is_safe_host, value)
    assert seconds < 0.05
