"""Client budgets in the core: profiles, hop URLs, the hold rule, the graceful 202.

No server, no clock: protocol.md 5.6-5.8.
"""

from __future__ import annotations

import json

import pytest

from repoll.core import _replies as replies
from repoll.core._headers import Preferences
from repoll.core._model import Operation, StoredResponse
from repoll.core._pacing import (
    MIN_BUDGET_HOLD,
    PacingPolicy,
    follows_again,
    hold_seconds,
    plain_hold,
)
from repoll.core._profiles import (
    KNOWN_CLIENTS,
    UNKNOWN_CLIENT,
    ClientProfile,
    hop_url,
    parse_hop,
    profile_for,
)
from repoll.core._status import OperationStatus

NOW = 1_800_000_000.0
POLICY = PacingPolicy()  # max_hold 25 s
BY_NAME = {profile.name: profile for profile in KNOWN_CLIENTS}


# --- profiles -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_agent", "name"),
    [
        ("curl/8.5.0", "curl"),
        ("Wget/1.21.4", "wget"),
        ("python-requests/2.32.3", "requests"),
        ("python-httpx/0.28.1", "httpx"),
        ("Python-urllib/3.12", "urllib"),
        ("Python/3.12 aiohttp/3.10.5", "aiohttp"),
        ("Go-http-client/1.1", "go"),
        ("node", "node"),
        ("undici", "node"),
        ("Java-http-client/21.0.2", "java"),
        ("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0", "browser"),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "browser",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Microsoft Windows 10.0.22631; en-US) PowerShell/7.4.6",
            "powershell",
        ),
        ("", "unknown"),
        ("my-script/1.0", "unknown"),
        ("(node) other/1", "unknown"),  # a comment names no product
    ],
)
def test_profiles_are_matched_on_the_user_agents_products(user_agent, name):
    assert profile_for(user_agent).name == name


def test_the_defaults_of_the_table():
    assert BY_NAME["curl"] == ClientProfile("curl", 50, agents=("curl",))
    assert (BY_NAME["wget"].max_redirects, BY_NAME["wget"].read_timeout) == (20, 900.0)
    assert BY_NAME["requests"].max_redirects == 30
    assert (BY_NAME["httpx"].max_redirects, BY_NAME["httpx"].read_timeout) == (20, 5.0)
    assert (BY_NAME["urllib"].max_redirects, BY_NAME["urllib"].same_url_repeats) == (10, 4)
    assert (BY_NAME["aiohttp"].max_redirects, BY_NAME["aiohttp"].total_timeout) == (10, 300.0)
    assert BY_NAME["go"].max_redirects == 10
    assert (BY_NAME["node"].max_redirects, BY_NAME["node"].read_timeout) == (20, 300.0)
    assert BY_NAME["java"].max_redirects == 5
    assert (BY_NAME["browser"].max_redirects, BY_NAME["browser"].read_timeout) == (20, 300.0)
    assert (UNKNOWN_CLIENT.max_redirects, UNKNOWN_CLIENT.read_timeout) == (10, 5.0)


def test_a_deployment_adds_and_overrides_profiles():
    patient = ClientProfile("patient-httpx", 20, read_timeout=60.0, agents=("python-httpx",))
    mine = ClientProfile("mine", 3, agents=("my-script",))
    extra = (patient, mine)
    assert profile_for("python-httpx/0.28", extra) is patient
    assert profile_for("my-script/2", extra) is mine
    assert profile_for("curl/8", extra).name == "curl"
    assert PacingPolicy(profiles=extra).profiles == extra


def test_profiles_are_validated():
    with pytest.raises(ValueError, match="max_redirects"):
        ClientProfile("x", -1)
    with pytest.raises(ValueError, match="timeouts"):
        ClientProfile("x", 5, read_timeout=0)
    with pytest.raises(TypeError, match="ClientProfile"):
        PacingPolicy(profiles=("curl",))  # type: ignore[arg-type]


# --- hop URLs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "hop"),
    [
        ("hop=1", 1),
        ("hop=12", 12),
        ("hop=9999", 9999),
        ("a=b&hop=3", 3),
        ("hop=3&hop=5", 3),
        ("", None),
        ("hop", None),
        ("hop=", None),
        ("hop=10000", None),
        ("hop=-1", None),
        ("hop=+1", None),
        ("hop=1.5", None),
        ("hop=x", None),
        ("hop=\u0663", None),  # a digit, but not an ASCII one
        ("hops=2", None),
    ],
)
def test_hops_are_parsed_leniently(query, hop):
    assert parse_hop(query) == hop


def test_hop_urls_name_the_operation_url():
    assert hop_url("/operations/abc", 3) == "/operations/abc?hop=3"
    assert hop_url("https://api.example.com/operations/abc", 1).endswith("/abc?hop=1")


# --- the hold rule --------------------------------------------------------------


def test_prefer_wait_keeps_its_hold_whatever_the_client():
    httpx_profile = BY_NAME["httpx"]
    wait = Preferences(wait=30)
    assert hold_seconds(wait, 2.0, POLICY, profile=httpx_profile) == 25
    assert hold_seconds(Preferences(wait=3), 2.0, POLICY, profile=httpx_profile) == 3
    assert hold_seconds(Preferences(wait=0), 2.0, POLICY, profile=httpx_profile) == 0


def test_a_start_and_a_page_are_not_held():
    curl = BY_NAME["curl"]
    assert hold_seconds(Preferences(), None, POLICY, profile=curl) == 0
    assert hold_seconds(Preferences(), 2.0, POLICY, page=True, profile=curl) == 0


def test_an_unknown_client_without_profile_keeps_the_interval_rule():
    assert hold_seconds(Preferences(), 0.2, POLICY) == 1.0
    assert hold_seconds(Preferences(), 7.0, POLICY) == 7.0
    assert hold_seconds(Preferences(), 99.0, POLICY) == 25.0


@pytest.mark.parametrize(
    ("name", "hold"),
    [
        ("curl", 25.0),
        ("wget", 25.0),
        ("requests", 25.0),
        ("httpx", 4.0),  # 1 s under its 5 s read timeout
        ("urllib", 25.0),
        ("go", 25.0),
        ("node", 25.0),
        ("java", 25.0),
        ("browser", 25.0),
    ],
)
def test_redirect_followers_are_held_as_long_as_they_allow_from_the_first_poll(name, hold):
    profile = BY_NAME[name]
    assert hold_seconds(Preferences(), 0.5, POLICY, profile=profile, followed=1, age=0.1) == hold


def test_the_unknown_profile_holds_under_five_seconds():
    assert plain_hold(UNKNOWN_CLIENT, 1, 0.0, POLICY) == 4.0


def test_max_hold_caps_every_hold():
    short = PacingPolicy(max_hold=0.3, min_hold=0.3)
    for profile in (*KNOWN_CLIENTS, UNKNOWN_CLIENT):
        assert plain_hold(profile, 1, 0.0, short) <= 0.3


def test_a_short_read_timeout_still_leaves_some_hold():
    quick = ClientProfile("quick", 10, read_timeout=1.2)
    assert plain_hold(quick, 1, 0.0, POLICY) == MIN_BUDGET_HOLD
    tiny = ClientProfile("tiny", 10, read_timeout=0.4)
    assert plain_hold(tiny, 1, 0.0, POLICY) == pytest.approx(0.2)  # half of it


def test_a_total_timeout_is_spread_over_the_requests_left():
    aiohttp = BY_NAME["aiohttp"]
    # 300 s total, 1 s margin, 9 requests left after the start's redirect: 33 s each, capped.
    assert plain_hold(aiohttp, 1, 0.0, POLICY) == 25.0
    # After 200 s and 5 redirects: 99 s left for 5 requests.
    assert plain_hold(aiohttp, 5, 200.0, POLICY) == pytest.approx(99 / 5)
    # Nothing left: no hold.
    assert plain_hold(aiohttp, 5, 400.0, POLICY) == 0.0


def test_the_holds_of_a_whole_budget_stay_under_the_total():
    aiohttp = BY_NAME["aiohttp"]
    age, followed = 0.0, 1
    while follows_again(aiohttp, followed, age, POLICY):
        age += plain_hold(aiohttp, followed, age, POLICY)
        followed += 1
    age += plain_hold(aiohttp, followed, age, POLICY)  # the last request, answered 202
    assert age <= aiohttp.total_timeout - 1


# --- when the budget runs out ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "last_redirect"),
    [
        ("curl", 49),
        ("wget", 19),
        ("requests", 29),
        ("httpx", 19),
        ("urllib", 9),
        ("aiohttp", 9),
        ("go", 9),
        ("node", 19),
        ("java", 4),
        ("browser", 19),
        ("unknown", 9),
    ],
)
def test_the_last_redirect_keeps_one_spare(name, last_redirect):
    profile = BY_NAME.get(name, UNKNOWN_CLIENT)
    # A client that has followed n redirects gets another while n + 1 < its limit.
    assert follows_again(profile, last_redirect - 1, 0.0, POLICY)
    assert not follows_again(profile, last_redirect, 0.0, POLICY)
    assert follows_again(profile, 0, 0.0, POLICY)  # the start's redirect


def test_a_spent_total_timeout_ends_with_the_202():
    aiohttp = BY_NAME["aiohttp"]
    assert follows_again(aiohttp, 3, 298.0, POLICY)
    assert not follows_again(aiohttp, 3, 299.0, POLICY)


def test_a_client_that_follows_nothing_never_gets_a_redirect_it_cannot_take():
    assert not follows_again(ClientProfile("none", 1), 0, 0.0, POLICY)


def _running(**changes) -> Operation:
    base = {
        "id": "A" * 22,
        "principal": "",
        "endpoint": "POST /x",
        "status": OperationStatus.RUNNING,
        "created_at": NOW,
        "updated_at": NOW,
        "started_at": NOW,
        "progress": 0.5,
    }
    return Operation(**{**base, **changes})


def _answer(op: Operation, preferences: Preferences = Preferences(), **kwargs) -> replies.Reply:
    return replies.answer(
        op,
        now=NOW + 1,
        interval=2.0,
        page=False,
        preferences=preferences,
        operation_url="/operations/" + op.id,
        **kwargs,
    )


def test_a_pending_303_goes_to_the_next_hop():
    reply = _answer(_running(), redirect="/operations/" + "A" * 22 + "?hop=4")
    assert reply.status == 303
    assert reply.header("location").endswith("?hop=4")


def test_a_202_names_the_canonical_url_even_with_a_hop():
    reply = _answer(_running(), Preferences(respond_async=True), redirect="/operations/x?hop=4")
    assert reply.status == 202
    assert reply.header("location") == "/operations/" + "A" * 22


def test_the_graceful_202_tells_a_person_what_to_do():
    op = _running()
    reply = _answer(op, redirect="/operations/x?hop=9", ran_out_after=3600.0)
    url = "/operations/" + op.id
    assert reply.status == 202
    assert reply.header("location") == url
    assert reply.header("content-location") == url
    assert reply.header("retry-after") == "2"
    assert reply.header("retry-after-ms") == "2000"
    assert reply.header("operation-status") == "running"
    assert reply.header("cache-control") == "no-store"
    assert reply.header("content-type") == "application/json"
    document = json.loads(reply.body)
    assert document["id"] == op.id
    assert document["status"] == "running"
    assert document["progress"] == 0.5
    assert document["detail"] == (
        f"The work is still running. GET {url} for its outcome; "
        "it is kept for 3600 seconds after it ends."
    )


def test_the_graceful_202_never_replaces_an_outcome_or_an_async_answer():
    done = _running(
        status=OperationStatus.SUCCEEDED,
        finished_at=NOW,
        expires_at=NOW + 60,
        response=StoredResponse(200, (), b"ok"),
    )
    assert _answer(done, ran_out_after=60.0).status == 200
    reply = _answer(_running(respond_async=True), ran_out_after=60.0)
    assert reply.status == 202
    assert "detail" not in json.loads(reply.body)
    assert reply.header("preference-applied") == "respond-async"
