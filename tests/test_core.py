"""The I/O-free core: headers, states, pacing, replies. No server, no clock, no sleeps."""

from __future__ import annotations

import email.utils
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from repoll._errors import InvalidTransition
from repoll.core import _headers as h
from repoll.core import _replies as replies
from repoll.core import _stream as stream
from repoll.core._headers import Preferences, parse_prefer
from repoll.core._model import Operation, StoredResponse, clamp_progress
from repoll.core._pacing import (
    DurationHistory,
    PacingPolicy,
    WorkSnapshot,
    estimate_interval,
    hold_seconds,
    work_snapshot,
)
from repoll.core._status import TRANSITIONS, Event, OperationStatus, finish_event, transition

NOW = 1_800_000_000.0


# --- Retry-After --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), ("3", 3.0), (" 12 ", 12.0), ("-1", None), ("1.5", None), ("", None), (None, None)],
)
def test_retry_after_delay_seconds(value, expected):
    assert h.parse_retry_after(value, now=NOW) == expected


def test_retry_after_http_date_is_relative_to_now():
    date = email.utils.formatdate(NOW + 7, usegmt=True)
    assert h.parse_retry_after(date, now=NOW) == pytest.approx(7.0)


def test_retry_after_date_in_the_past_means_now():
    date = email.utils.formatdate(NOW - 100, usegmt=True)
    assert h.parse_retry_after(date, now=NOW) == 0.0


def test_retry_after_absurd_values_are_rejected():
    assert h.parse_retry_after("99999999999", now=NOW) is None
    assert h.parse_retry_after_ms("99999999999999") is None


def test_retry_after_ms():
    assert h.parse_retry_after_ms("250") == 0.25
    assert h.parse_retry_after_ms("x") is None
    assert h.parse_retry_after_ms(None) is None


@pytest.mark.parametrize(
    ("delay", "seconds", "millis"), [(0.0, "0", "0"), (0.25, "1", "250"), (2.0, "2", "2000")]
)
def test_retry_after_headers_round_seconds_up(delay, seconds, millis):
    assert h.retry_after_headers(delay) == {"retry-after": seconds, "retry-after-ms": millis}


@given(st.text(max_size=80))
def test_retry_after_parsers_never_raise(value):
    result = h.parse_retry_after(value, now=NOW)
    assert result is None or result >= 0
    result_ms = h.parse_retry_after_ms(value)
    assert result_ms is None or result_ms >= 0


@given(st.floats(min_value=0, max_value=86400))
def test_retry_after_round_trip(delay):
    headers = h.retry_after_headers(delay)
    assert h.parse_retry_after(headers["retry-after"], now=NOW) >= delay
    assert h.parse_retry_after_ms(headers["retry-after-ms"]) == pytest.approx(delay, abs=0.001)


# --- Prefer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ([], Preferences()),
        (["respond-async"], Preferences(respond_async=True)),
        (["respond-async, wait=10"], Preferences(respond_async=True, wait=10.0)),
        (["RESPOND-ASYNC", "Wait=5"], Preferences(respond_async=True, wait=5.0)),
        (['wait="7"'], Preferences(wait=7.0)),
        (["wait=5; foo=bar, respond-async"], Preferences(respond_async=True, wait=5.0)),
        (["wait=abc"], Preferences()),
        (["wait=-3"], Preferences()),
        (["wait=2, wait=9"], Preferences(wait=2.0)),  # RFC 7240: the first one wins
        (["handling=lenient"], Preferences()),
        (["=,;;;"], Preferences()),
    ],
)
def test_parse_prefer(fields, expected):
    assert parse_prefer(fields) == expected


@given(st.lists(st.text(max_size=60), max_size=3))
def test_parse_prefer_never_raises(fields):
    prefs = parse_prefer(fields)
    assert prefs.wait is None or prefs.wait >= 0


def test_format_prefer():
    assert h.format_prefer() is None
    assert h.format_prefer(respond_async=True, wait=2.9) == "respond-async, wait=2"
    assert parse_prefer([h.format_prefer(respond_async=True, wait=4)]) == Preferences(True, 4.0)


# --- ids -------------------------------------------------------------------------


def test_operation_ids_are_long_random_and_valid():
    ids = {h.new_operation_id(1_800_000_000.0) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 29 and h.is_valid_operation_id(i) for i in ids)
    assert len({i[:7] for i in ids}) == 1  # one millisecond: one prefix, 22 random characters


def test_operation_ids_sort_by_creation_time():
    # Byte order, as a store's index sorts them: later ids after earlier ones.
    times = [0.0, 0.001, 1.0, 1_764_600_000.123, 1_764_600_000.124, 1_800_000_000.0, 4e12]
    ids = [h.new_operation_id(t) for t in times]
    assert [i[:7] for i in ids] == sorted(i[:7] for i in ids)
    assert len({i[:7] for i in ids}) == len(times)
    assert h.new_operation_id(-5.0)[:7] == "-------"  # clamped, never malformed


def test_ids_of_earlier_versions_stay_valid():
    assert h.is_valid_operation_id("qymdi2iLGjINr_8qm_CEIQ")  # 22 characters
    assert not h.is_valid_operation_id("qymdi2iLGjINr_8qm_CEIQ" + "abc")


@pytest.mark.parametrize(
    "bad",
    ["", "abc", "../../etc/passwd", "a" * 23, "a" * 21 + "!", "a" * 22 + "\n", "a" * 30, "a" * 28],
)
def test_malformed_ids_are_rejected(bad):
    assert not h.is_valid_operation_id(bad)


# --- states ---------------------------------------------------------------------


def test_terminal_states_accept_no_event():
    for status in OperationStatus:
        for event in Event:
            if status.is_terminal:
                with pytest.raises(InvalidTransition):
                    transition(status, event)


def test_table_matches_the_documented_life_cycle():
    q, r = OperationStatus.QUEUED, OperationStatus.RUNNING
    assert transition(q, Event.START) is r
    assert transition(r, Event.FINISH_OK) is OperationStatus.SUCCEEDED
    assert transition(r, Event.FINISH_ERROR) is OperationStatus.FAILED
    assert transition(r, Event.CANCEL) is OperationStatus.CANCELED
    assert transition(r, Event.LOSE) is OperationStatus.FAILED
    with pytest.raises(InvalidTransition):
        transition(r, Event.START)
    assert all(not current.is_terminal for current, _ in TRANSITIONS)


@pytest.mark.parametrize(
    ("code", "event"),
    [
        (200, Event.FINISH_OK),
        (303, Event.FINISH_OK),
        (404, Event.FINISH_ERROR),
        (500, Event.FINISH_ERROR),
    ],
)
def test_finish_event(code, event):
    assert finish_event(code) is event


def make_operation(**changes) -> Operation:
    base = {
        "id": "A" * 22,
        "principal": "",
        "endpoint": "POST /x",
        "status": OperationStatus.QUEUED,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Operation(**{**base, **changes})


def test_apply_sets_timestamps_and_retention():
    op = make_operation().apply(Event.START, now=NOW + 1, retention=60)
    assert op.status is OperationStatus.RUNNING
    assert op.started_at == NOW + 1
    done = op.apply(
        Event.FINISH_OK, now=NOW + 5, retention=60, response=StoredResponse(200, (), b"ok")
    )
    assert done.status is OperationStatus.SUCCEEDED
    assert done.finished_at == NOW + 5
    assert done.expires_at == NOW + 65
    assert done.progress == 1.0
    assert done.response.body == b"ok"


def test_status_document():
    doc = json.loads(make_operation(progress=0.5, message="half").status_json())
    assert doc["id"] == "A" * 22
    assert doc["status"] == "queued"
    assert doc["progress"] == 0.5
    assert doc["message"] == "half"
    assert doc["created_at"].endswith("+00:00")
    assert doc["finished_at"] is None


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), (float("nan"), None), (-1, 0.0), (0.3, 0.3), (7, 1.0)]
)
def test_clamp_progress(value, expected):
    assert clamp_progress(value) == expected


# --- pacing ---------------------------------------------------------------------

POLICY = PacingPolicy(
    min_interval=0.5, max_interval=60, default_interval=1, min_hold=1, max_hold=30
)


def snapshot(**changes) -> WorkSnapshot:
    base = {"age": 0.0, "running_for": 0.0, "progress": None, "typical_duration": None}
    return WorkSnapshot(**{**base, **changes})


def test_interval_from_progress_rate():
    # 2 s for the first 20 %: 8 s to go at the same rate.
    assert estimate_interval(snapshot(age=2, running_for=2, progress=0.2), POLICY) == pytest.approx(
        8
    )


def test_interval_from_history():
    assert estimate_interval(snapshot(running_for=1, typical_duration=5), POLICY) == pytest.approx(
        4
    )


def test_interval_without_information_grows_with_age():
    young = estimate_interval(snapshot(age=1, running_for=1), POLICY)
    old = estimate_interval(snapshot(age=100, running_for=100), POLICY)
    assert young == 1.0
    assert old == 25.0


def test_interval_while_queued_counts_the_queue():
    alone = estimate_interval(snapshot(running_for=None, typical_duration=2), POLICY)
    behind = estimate_interval(
        snapshot(running_for=None, typical_duration=2, queued_ahead=8, concurrency=4), POLICY
    )
    assert alone == 2.0
    assert behind == 6.0


def test_interval_grows_with_load_and_is_clamped():
    idle = estimate_interval(snapshot(running_for=1, typical_duration=5), POLICY)
    busy = estimate_interval(snapshot(running_for=1, typical_duration=5, load=1.0), POLICY)
    assert busy == pytest.approx(2 * idle)
    assert estimate_interval(snapshot(running_for=1000, progress=0.001), POLICY) == 60
    assert estimate_interval(snapshot(running_for=1, progress=0.9999), POLICY) == 0.5


def test_hold():
    assert hold_seconds(Preferences(wait=0), 5, POLICY) == 0
    assert hold_seconds(Preferences(wait=10), 5, POLICY) == 10
    assert hold_seconds(Preferences(wait=999), 5, POLICY) == 30
    assert hold_seconds(Preferences(), 0.2, POLICY) == 1  # at least min_hold
    assert hold_seconds(Preferences(), 5, POLICY) == 5
    assert hold_seconds(Preferences(), 500, POLICY) == 30


def test_policy_validates():
    with pytest.raises(ValueError, match="min_interval"):
        PacingPolicy(min_interval=5, max_interval=1)


def test_duration_history_is_a_weighted_mean():
    history = DurationHistory()
    history.add(10)
    assert history.mean == 10
    history.add(20)
    assert history.mean == pytest.approx(12)
    assert history.count == 2


# --- replies --------------------------------------------------------------------


def test_pending_reply_is_a_303_to_the_operation():
    reply = replies.pending(
        make_operation(), operation_url="/operations/x", preferences=Preferences(), interval=0.75
    )
    assert reply.status == 303
    assert reply.header("location") == "/operations/x"
    assert reply.header("retry-after") == "1"
    assert reply.header("retry-after-ms") == "750"
    assert reply.header("operation-status") == "queued"
    assert reply.header("cache-control") == "no-store"
    assert reply.header("preference-applied") is None
    assert json.loads(reply.body)["status"] == "queued"


def test_pending_reply_with_respond_async_is_a_202():
    reply = replies.pending(
        make_operation(),
        operation_url="/operations/x",
        preferences=Preferences(respond_async=True),
        interval=2,
    )
    assert reply.status == 202
    assert reply.header("preference-applied") == "respond-async"
    assert reply.header("location") == "/operations/x"


def test_final_reply_replays_and_marks():
    stored = StoredResponse(
        201, (("content-type", "text/plain"), ("cache-control", "max-age=60"), ("x-a", "1")), b"hi"
    )
    op = make_operation(status=OperationStatus.SUCCEEDED, response=stored)
    reply = replies.final(op, operation_url="/operations/x")
    assert reply.status == 201
    assert reply.body == b"hi"
    assert reply.header("x-a") == "1"
    assert reply.header("content-location") == "/operations/x"
    assert reply.header("operation-status") == "succeeded"
    assert reply.header("cache-control") == "no-store"
    assert [k for k, _ in reply.headers].count("cache-control") == 1


def test_problem_replies_are_problem_json():
    for reply in (
        replies.not_found(),
        replies.expired(make_operation()),
        replies.body_too_large(10),
    ):
        assert reply.header("content-type") == "application/problem+json"
        assert reply.header("operation-status") is None
        doc = json.loads(reply.body)
        assert doc["status"] == reply.status
        assert doc["type"].startswith("urn:repoll:problem:")


@given(st.text(max_size=40))
def test_id_validation_never_raises(value):
    assert h.is_valid_operation_id(value) in {True, False}
    if h.is_valid_operation_id(value):
        assert len(value) in (22, 29)


# --- the decisions the server shell carries ----------------------------------------
#
# The engine and the ASGI middleware gather facts (a record, the time, the
# advertised interval, Accept/Prefer/Origin) and send what these return.

URL = "/operations/" + "A" * 22
SITE = "https://app.example"


def _ended(**changes) -> Operation:
    stored = StoredResponse(200, (("content-type", "text/plain"),), b"done")
    base = {
        "status": OperationStatus.SUCCEEDED,
        "response": stored,
        "finished_at": NOW,
        "expires_at": NOW + 60,
    }
    return make_operation(**{**base, **changes})


def _answer(op, *, now=NOW, page=False, preferences=Preferences(), cors=frozenset()):
    return replies.answer(
        op,
        now=now,
        interval=2.5,
        page=page,
        preferences=preferences,
        operation_url=URL,
        origin=SITE,
        cors_origins=cors,
    )


def test_answer_for_no_record_is_the_404_with_cors():
    reply = _answer(None, cors=frozenset({SITE}))
    assert reply.status == 404
    assert reply.header("access-control-allow-origin") == SITE


def test_answer_once_retention_has_passed_is_410_readable_by_a_listed_origin():
    op = _ended()
    assert _answer(op, now=NOW + 59.9).status == 200
    reply = _answer(op, now=NOW + 60, cors=frozenset({SITE}))
    assert reply.status == 410
    assert json.loads(reply.body)["type"].endswith("operation-expired")
    # A script on a listed origin can read it, as it can the DELETE's 410.
    assert reply.header("access-control-allow-origin") == SITE


def test_answer_for_an_ended_operation_replays_it():
    reply = _answer(_ended(), cors=frozenset({SITE}))
    assert reply.status == 200
    assert reply.body == b"done"
    assert reply.header("content-location") == URL
    assert reply.header("access-control-allow-origin") == SITE
    # Even a browser navigating gets the outcome, not a page.
    assert _answer(_ended(), page=True).body == b"done"


def test_answer_while_running_is_pending_or_a_page():
    running = make_operation(status=OperationStatus.RUNNING, started_at=NOW)
    pending = _answer(running, cors=frozenset({SITE}))
    assert pending.status == 303
    assert pending.header("location") == URL
    assert pending.header("retry-after-ms") == "2500"
    assert pending.header("access-control-allow-origin") == SITE
    page = _answer(running, page=True, cors=frozenset({SITE}))
    assert page.status == 202
    assert page.header("content-type").startswith("text/html")
    assert page.header("refresh") == f"3; url={URL}"
    assert page.header("access-control-allow-origin") == SITE


def test_answer_keeps_the_start_s_respond_async():
    # A poller that never repeats Prefer: respond-async keeps getting 202.
    op = make_operation(respond_async=True)
    reply = _answer(op)
    assert reply.status == 202
    assert reply.header("preference-applied") == "respond-async"
    assert _answer(make_operation()).status == 303


def test_wants_page():
    assert replies.wants_page("text/html,application/xhtml+xml", Preferences())
    assert not replies.wants_page("application/json", Preferences())
    assert not replies.wants_page("text/html", Preferences(respond_async=True))


def test_hold_lengths_for_pages_and_starts():
    # A page is never held, whatever was asked.
    assert hold_seconds(Preferences(), 5, POLICY, page=True) == 0
    assert hold_seconds(Preferences(wait=10), 5, POLICY, page=True) == 0
    # A start (nothing advertised yet) is held only when it asks.
    assert hold_seconds(Preferences(), None, POLICY) == 0
    assert hold_seconds(Preferences(wait=7), None, POLICY) == 7
    assert hold_seconds(Preferences(wait=999), None, POLICY) == 30


def test_policy_validates_the_cancel_hold_and_stream_refresh():
    assert PacingPolicy().cancel_hold == 1.0
    assert PacingPolicy().stream_refresh == 0.5
    with pytest.raises(ValueError, match="cancel_hold"):
        PacingPolicy(cancel_hold=-1)
    with pytest.raises(ValueError, match="stream_refresh"):
        PacingPolicy(stream_refresh=0)


def test_work_snapshot_reads_the_record():
    op = make_operation(status=OperationStatus.RUNNING, started_at=NOW + 2, progress=0.4)
    work = work_snapshot(op, NOW + 5, typical_duration=9, queued_ahead=3, concurrency=2, load=0.5)
    assert work == WorkSnapshot(
        age=5,
        running_for=3,
        progress=0.4,
        typical_duration=9,
        queued_ahead=3,
        concurrency=2,
        load=0.5,
    )
    # Another host's clock a little behind never makes a negative age.
    assert work_snapshot(op, NOW - 1).age == 0
    assert work_snapshot(op, NOW - 1).running_for == 0
    assert work_snapshot(make_operation(), NOW + 1).running_for is None


def test_cancel_now_answers_all_but_running_work():
    assert replies.cancel_now(None, NOW).status == 404
    assert replies.cancel_now(_ended(), NOW + 60).status == 410
    ended = replies.cancel_now(_ended(), NOW)
    assert ended.status == 200
    assert json.loads(ended.body)["status"] == "succeeded"
    assert replies.cancel_now(make_operation(), NOW) is None
    assert replies.cancel_now(make_operation(status=OperationStatus.RUNNING), NOW) is None


def test_after_the_cancel_hold_the_answer_says_stopped_or_stopping():
    stopping = make_operation(status=OperationStatus.RUNNING, cancel_requested=True)
    assert replies.cancel_answer(stopping).status == 202
    assert replies.cancel_answer(_ended(status=OperationStatus.CANCELED)).status == 200


def test_only_queued_work_elsewhere_is_canceled_by_its_record():
    queued = make_operation()
    running = make_operation(status=OperationStatus.RUNNING)
    assert replies.cancel_by_record(queued, running_here=False)
    assert not replies.cancel_by_record(queued, running_here=True)
    assert not replies.cancel_by_record(running, running_here=False)
    event, stored, message = replies.canceled_on_request()
    assert event is Event.CANCEL
    assert stored.status == 409
    assert message == "Canceled on request."


def test_cancel_flag_is_set_once_and_never_on_ended_work():
    flagged = make_operation().with_cancel_requested(now=NOW + 1)
    assert flagged is not None
    assert flagged.cancel_requested
    assert flagged.updated_at == NOW + 1
    assert flagged.with_cancel_requested(now=NOW + 2) is None
    assert _ended().with_cancel_requested(now=NOW) is None


def test_is_expired():
    assert not make_operation().is_expired(NOW + 1e9)  # unfinished work never expires
    assert not _ended().is_expired(NOW + 59)
    assert _ended().is_expired(NOW + 60)


@pytest.mark.parametrize(
    ("method", "name", "accept", "kind"),
    [
        ("OPTIONS", "x", "", "preflight"),
        ("GET", "client.js", "", "module"),
        ("HEAD", "client.js", "", "module"),
        ("DELETE", "client.js", "", "cancel"),
        ("GET", "x", "text/event-stream", "stream"),
        ("HEAD", "x", "text/event-stream", "status"),
        ("GET", "x", "application/json", "status"),
        ("HEAD", "x", "", "status"),
        ("DELETE", "x", "", "cancel"),
        ("POST", "x", "", "not-allowed"),
    ],
)
def test_operation_requests_are_sorted_by_method(method, name, accept, kind):
    assert replies.operation_request(method, name, accept, module="client.js") == kind


@pytest.mark.parametrize(
    ("value", "over"),
    [
        ("", False),
        ("10", False),
        ("11", True),
        ("abc", False),
        ("1" * 19, True),
        ("\u0661\u0661", False),
    ],
)
def test_declared_body_length(value, over):
    assert replies.declares_too_large(value, 10) is over


def test_event_stream_pieces():
    start = stream.stream_start(SITE, frozenset({SITE}))
    assert start.status == 200
    assert start.header("content-type") == "text/event-stream"
    assert start.header("x-accel-buffering") == "no"
    assert start.header("access-control-allow-origin") == SITE
    status = stream.stream_event(make_operation(progress=0.25))
    assert status.startswith(b"event: status\ndata: ")
    assert json.loads(status.split(b"data: ")[1])["progress"] == 0.25
    outcome = stream.stream_event(_ended(), retry=1.2345)
    assert outcome.startswith(b"retry: 1234\nevent: outcome\n")
    assert json.loads(outcome.split(b"data: ")[1])["response_status"] == 200


def test_lost_reasons():
    assert "running" in replies.lost_at_restart(OperationStatus.RUNNING)
    assert "(host:1:ab)" in replies.lost_with_owner("host:1:ab")
    assert replies.LOST_AT_SHUTDOWN.startswith("The server shut down")


# --- the row form -------------------------------------------------------------------


@given(
    st.text(max_size=30),
    st.one_of(st.none(), st.text(max_size=30)),
    st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=4),
    st.binary(max_size=20),
)
def test_rows_round_trip_whatever_the_text(principal, message, headers, body):
    from repoll.core._model import decode_row, encode_row

    op = Operation(
        id="A" * 29,
        principal=principal,
        endpoint='POST /a"b\\c/é',
        status=OperationStatus.SUCCEEDED,
        created_at=1.5,
        updated_at=2.25,
        message=message,
        response=StoredResponse(201, tuple(headers), body),
    )
    row = encode_row(op)
    json.loads(row[4])  # valid JSON, whatever the text
    assert decode_row(row) == op
