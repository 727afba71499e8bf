"""The client's poll loop, driven by hand: every decision without a server or a clock."""

from __future__ import annotations

import random

import pytest

from repoll import PollingTimeout
from repoll.core._poll import (
    Observed,
    Poll,
    PollOptions,
    Sleep,
    is_polling_response,
    needs_polling,
    poll_flow,
)

BASE = "http://api.test/start"


def observed(status, at, **headers):
    return Observed(
        status=status,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
        url=BASE,
        at=at,
    )


def run(first, responses, options):
    """Drive the flow; return (actions, final response)."""
    flow = poll_flow(first, options, wall_clock=lambda: 0.0, rng=random.Random(1))
    actions = []
    clock = first.at
    try:
        action = next(flow)
        while True:
            actions.append(action)
            if isinstance(action, Sleep):
                clock += action.seconds
                action = flow.send(None)
            else:
                response = responses.pop(0)
                response = Observed(
                    response.status, response.headers, action.url, clock + response.at
                )
                clock = response.at
                action = flow.send(response)
    except StopIteration as stop:
        return actions, stop.value


def test_non_polling_responses_pass_through():
    assert not is_polling_response(observed(200, 0))
    assert not is_polling_response(observed(303, 0, location="/x"))  # a plain redirect
    assert not is_polling_response(observed(202, 0))  # no Location
    assert is_polling_response(observed(303, 0, location="/x", retry_after="1"))
    assert is_polling_response(observed(202, 0, location="/x", operation_status="running"))
    assert not is_polling_response(observed(303, 0, location="/x", operation_status="succeeded"))


def test_needs_polling_is_the_clients_only_test():
    # The transports ask nothing else before following (they once had their own pre-check).
    assert needs_polling(observed(202, 0, location="/x"))
    assert needs_polling(observed(201, 0, operation_location="/monitor"))
    assert needs_polling(observed(200, 0, azure_asyncoperation="/monitor"))
    assert not needs_polling(observed(204, 0, operation_location="/monitor"))
    assert not needs_polling(observed(302, 0, location="/x", retry_after="1"))
    assert not needs_polling(observed(200, 0))


def test_honours_retry_after_when_not_long_polling():
    first = observed(303, 0, location="/operations/a", retry_after="3")
    polls = [
        observed(303, 0.01, location="/operations/a", retry_after_ms="1500"),
        observed(200, 0.01, operation_status="succeeded"),
    ]
    actions, final = run(first, polls, PollOptions(long_poll=None))
    assert actions == [
        Sleep(3.0),
        Poll("http://api.test/operations/a", {"prefer": "respond-async"}),
        Sleep(1.5),
        Poll("http://api.test/operations/a", {"prefer": "respond-async"}),
    ]
    assert final.status == 200


def test_long_polls_a_repoll_server_at_once():
    first = observed(202, 0, location="/operations/a", retry_after="3", operation_status="queued")
    polls = [
        observed(202, 30.0, location="/operations/a", retry_after="5", operation_status="running"),
        observed(200, 2.0, operation_status="succeeded"),
    ]
    actions, final = run(first, polls, PollOptions(long_poll=30))
    assert [type(a) for a in actions] == [Poll, Poll]
    assert actions[0].headers == {"prefer": "respond-async, wait=30"}
    assert final.status == 200


def test_falls_back_to_retry_after_when_the_server_does_not_hold():
    first = observed(202, 0, location="/operations/a", retry_after="2", operation_status="queued")
    polls = [
        observed(202, 0.01, location="/operations/a", retry_after="2", operation_status="running"),
        observed(200, 0.01, operation_status="succeeded"),
    ]
    actions, _ = run(first, polls, PollOptions(long_poll=30))
    assert [type(a) for a in actions] == [Poll, Sleep, Poll]
    assert actions[1] == Sleep(2.0)


def test_interval_is_clamped():
    first = observed(303, 0, location="/a", retry_after="0")
    actions, _ = run(first, [observed(200, 0)], PollOptions(long_poll=None, min_interval=0.2))
    assert actions[0] == Sleep(0.2)
    first = observed(303, 0, location="/a", retry_after="9999")
    actions, _ = run(first, [observed(200, 0)], PollOptions(long_poll=None, max_interval=5))
    assert actions[0] == Sleep(5.0)


def test_backs_off_with_jitter_without_an_interval():
    first = observed(202, 0, location="/a", operation_status="running")
    polls = [observed(202, 0, location="/a", operation_status="running") for _ in range(5)]
    polls.append(observed(200, 0))
    options = PollOptions(long_poll=None, backoff_initial=1, backoff_factor=2, backoff_max=4)
    actions, _ = run(first, polls, options)
    sleeps = [a.seconds for a in actions if isinstance(a, Sleep)]
    caps = [1, 2, 4, 4, 4, 4]
    assert len(sleeps) == 6
    assert all(options.min_interval <= s <= cap for s, cap in zip(sleeps, caps, strict=True))


def test_deadline_raises_with_the_operation_url():
    first = observed(303, 0, location="/operations/a", retry_after="10")
    polls = [observed(303, 0, location="/operations/a", retry_after="10")] * 5
    with pytest.raises(PollingTimeout) as caught:
        run(first, polls, PollOptions(long_poll=None, deadline=15))
    assert caught.value.operation_url == "http://api.test/operations/a"
    assert "resume" in str(caught.value)


def test_max_polls():
    first = observed(303, 0, location="/a", retry_after="1")
    polls = [observed(303, 0, location="/a", retry_after="1")] * 5
    with pytest.raises(PollingTimeout, match="after 2 polls"):
        run(first, polls, PollOptions(long_poll=None, max_polls=2))


def test_options_validate():
    with pytest.raises(ValueError, match="deadline"):
        PollOptions(deadline=0)
    with pytest.raises(ValueError, match="min_interval"):
        PollOptions(min_interval=2, max_interval=1)


def test_a_held_poll_waits_its_hold_beyond_the_library_timeout():
    from repoll.core._poll import poll_read_timeout

    assert poll_read_timeout(25.0, 5.0) == 30.0  # httpx's default read timeout, a 25 s hold
    assert poll_read_timeout(25.0, None) is None  # no timeout to extend
    assert poll_read_timeout(0.0, 5.0) is None  # wait=0: not held, the library's setting
    assert poll_read_timeout(None, 5.0) is None


def test_retry_after_zero_for_ever_backs_off_even_with_min_interval_zero():
    # docs/client.md: never a tight loop. "Come back now" for ever, with
    # min_interval=0, once gave 1,000 polls a second.
    first = observed(202, 0, location="/op", retry_after="0")
    responses = [observed(202, 0, location="/op", retry_after="0") for _ in range(12)]
    responses.append(observed(200, 0))
    actions, final = run(first, responses, PollOptions(min_interval=0, long_poll=None))
    assert final.status == 200
    sleeps = [a.seconds for a in actions if isinstance(a, Sleep)]
    assert len(sleeps) == 13
    assert all(s > 0 for s in sleeps)
    assert sum(sleeps) > 5  # backoff grows toward backoff_max


def test_an_operation_that_never_ends_is_logged(caplog):
    first = observed(202, 0, location="/op", retry_after="10")
    responses = [observed(202, 0, location="/op", retry_after="10") for _ in range(30)]
    responses.append(observed(200, 0))
    with caplog.at_level("INFO", logger="repoll"):
        run(first, responses, PollOptions(long_poll=None))
    notes = [r.getMessage() for r in caplog.records if "still polling" in r.getMessage()]
    # 300 s of polling: noted at 1, 2 and 4 minutes, not at every poll.
    assert len(notes) == 3, notes
    assert notes[0].startswith("still polling http://api.test/op after 60 s")
