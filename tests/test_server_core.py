"""The server's I/O-free decisions: admission, origins, principals, routes, replies."""

from __future__ import annotations

import pytest
from starlette.requests import HTTPConnection
from starlette.routing import Host, Mount, Route, Router

import repoll
from repoll.core._admission import Admission, quota_key
from repoll.core._liveness import heartbeats_settled, orphaned, owner_ttl
from repoll.core._model import Operation, StoredResponse
from repoll.core._origin import LOOPBACK, Forwarded, TrustedProxies, operation_url, parse_forwarded
from repoll.core._profiles import needs_absolute_location
from repoll.core._replies import cors_headers, final
from repoll.core._status import OperationStatus
from repoll.server._principal import PrincipalDigests, default_principal
from repoll.server._routes import ALWAYS, MAYBE, NEVER, RouteTable

# --- admission ---------------------------------------------------------------------


def test_admission_counts_exactly_and_gives_back():
    admission = Admission(max_operations=3, max_per_key=2, max_held=1)
    assert admission.admit("a") is None
    assert admission.admit("a") is None
    assert admission.admit("a") == "one client"
    assert admission.admit("b") is None
    assert admission.admit("c") == "the server"
    admission.release("a")
    assert admission.admit("c") is None
    assert admission.operations == 3
    with pytest.raises(RuntimeError):
        admission.release("nobody")
    assert admission.try_hold()
    assert not admission.try_hold()
    admission.release_hold()
    assert admission.held == 0
    with pytest.raises(RuntimeError):
        admission.release_hold()


def test_anonymous_quotas_are_per_client_address():
    assert quota_key("digest", "10.0.0.1") == "digest"
    assert quota_key("", "10.0.0.1") != quota_key("", "10.0.0.2")


# --- origins -----------------------------------------------------------------------


def test_trusted_proxies():
    assert LOOPBACK.trusts("127.0.0.1")
    assert LOOPBACK.trusts("::1")
    assert not LOOPBACK.trusts("10.1.2.3")
    assert not LOOPBACK.trusts(None)
    assert not LOOPBACK.trusts("/run/app.sock")
    networks = TrustedProxies.parse("10.0.0.0/8, 192.168.1.1")
    assert networks.trusts("10.200.0.1")
    assert not networks.trusts("192.168.1.2")
    assert TrustedProxies.parse("*").trusts("203.0.113.9")
    with pytest.raises(ValueError, match="does not appear"):
        TrustedProxies.parse("not-an-address")


def test_forwarded_headers():
    rfc = parse_forwarded(forwarded=['for=1.2.3.4;proto=https;host="api.example.com"'])
    assert rfc == Forwarded(scheme="https", host="api.example.com", prefix=None)
    x = parse_forwarded(
        x_forwarded_host=["api.example.com:8443, backend"],
        x_forwarded_proto=["HTTPS"],
        x_forwarded_prefix=["/v1/"],
    )
    assert x == Forwarded(scheme="https", host="api.example.com:8443", prefix="/v1")
    hostile = parse_forwarded(
        x_forwarded_host=["evil.example/path?x"],
        x_forwarded_proto=["javascript"],
        x_forwarded_prefix=["//evil.example"],
    )
    assert hostile.scheme is None
    assert hostile.host is None
    # A prefix never makes a scheme-relative URL (//host/...) that leaves the origin.
    assert hostile.prefix == "/evil.example"
    assert parse_forwarded(x_forwarded_prefix=["/a b"]).prefix is None


def test_operation_urls():
    path = "/operations/abc"
    base = {"public_url": None, "scheme": "http", "host": "backend:8000", "forwarded": None}
    assert operation_url(path, absolute=False, **base) == path
    assert operation_url(path, absolute=True, **base) == "http://backend:8000" + path
    behind = {**base, "forwarded": Forwarded("https", "api.example.com", "/v1")}
    assert operation_url(path, absolute=False, **behind) == "/v1" + path
    assert operation_url(path, absolute=True, **behind) == "https://api.example.com/v1" + path
    public = {**base, "public_url": "https://api.example.com/x"}
    assert operation_url(path, absolute=False, **public) == "https://api.example.com/x" + path
    assert operation_url(path, absolute=True, **{**base, "host": "a b"}) == path


def test_azure_pollers_get_absolute_locations():
    assert needs_absolute_location("azsdk-python-core/1.41.0 Python/3.11.7", set())
    assert needs_absolute_location("python-requests/2.32", {"x-ms-client-request-id"})
    for agent in ("curl/8.0", "python-requests/2.32", "python-httpx/0.28", "Mozilla/5.0", ""):
        assert not needs_absolute_location(agent, {"accept", "host"})


# --- principals --------------------------------------------------------------------


def _connection(headers: dict[str, str]) -> HTTPConnection:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return HTTPConnection({"type": "http", "headers": raw})


def test_the_default_principal_is_credentials_only():
    assert default_principal(_connection({})) == ""
    assert default_principal(_connection({"cookie": "theme=dark; _ga=1"})) == ""
    alice = default_principal(_connection({"authorization": "Bearer alice"}))
    assert alice == default_principal(
        _connection({"authorization": "Bearer alice", "cookie": "junk=1"})
    )
    assert default_principal(_connection({"x-api-key": "k1"})) != default_principal(
        _connection({"x-api-key": "k2"})
    )
    django = default_principal(_connection({"cookie": "csrftoken=x; sessionid=s1"}))
    assert django == default_principal(_connection({"cookie": "sessionid=s1; csrftoken=y"}))
    assert django != default_principal(_connection({"cookie": "sessionid=s2"}))
    rails = default_principal(_connection({"cookie": "_myapp_session=abc"}))
    assert rails


def test_principal_digests_are_keyed():
    one, two = PrincipalDigests(b"1" * 32), PrincipalDigests(b"2" * 32)
    assert one("Bearer a") == one("Bearer a")
    assert one("Bearer a") != two("Bearer a")
    assert one("Bearer a") != one("Bearer b")
    assert one("") == ""
    assert "Bearer" not in one("Bearer a")


# --- routes ------------------------------------------------------------------------


async def _endpoint(request):  # pragma: no cover - never called
    return None


@repoll.deferred
async def _deferred(request):  # pragma: no cover - never called
    return None


@repoll.deferrable
async def _deferrable(request):  # pragma: no cover - never called
    return None


def _scope(method: str, path: str, root_path: str = "") -> dict:
    return {"type": "http", "method": method, "path": root_path + path, "root_path": root_path}


def test_route_table_knows_which_requests_may_defer():
    sub = Router(routes=[Route("/jobs/{id:int}", _deferred, methods=["POST"])])
    app = Router(
        routes=[
            Route("/plain", _endpoint),
            Route("/start", _deferred, methods=["POST"]),
            Route("/form", _deferrable, methods=["POST"]),
            Mount("/v2", routes=sub.routes),
        ]
    )
    table = RouteTable(app)
    assert table(_scope("GET", "/plain")) == NEVER
    assert table(_scope("POST", "/start")) == ALWAYS
    assert table(_scope("GET", "/start")) == NEVER  # wrong method: the app answers 405
    assert table(_scope("POST", "/form")) == MAYBE
    assert table(_scope("POST", "/v2/jobs/7")) == ALWAYS
    assert table(_scope("POST", "/v2/jobs/x")) == NEVER
    assert table(_scope("POST", "/start", root_path="/api")) == ALWAYS
    # Routes added later are seen, also by a request answered before.
    assert table(_scope("PUT", "/late")) == NEVER
    app.routes.append(Route("/late", _deferred, methods=["PUT"]))
    assert table(_scope("PUT", "/late")) == ALWAYS


def test_route_table_answers_from_memory_as_matching_would():
    app = Router(
        routes=[
            Host("api.example", app=Router(routes=[Route("/x", _deferred, methods=["POST"])])),
            Route("/x", _endpoint, methods=["POST"]),
        ]
    )
    table = RouteTable(app)

    def on(host: str) -> dict:
        return {**_scope("POST", "/x"), "headers": [(b"host", host.encode())]}

    for _ in range(2):  # asked again: the same answers, by host
        assert table(on("api.example")) == ALWAYS
        assert table(on("www.example")) == NEVER
    # A flood of distinct paths: what is remembered stays bounded.
    for i in range(5000):
        assert table({**_scope("GET", f"/x/{i}"), "headers": []}) == NEVER
    assert len(table._known) <= 1024
    assert table(on("api.example")) == ALWAYS


# --- replies -----------------------------------------------------------------------


def _ended(headers: tuple[tuple[str, str], ...]) -> Operation:
    return Operation(
        id="x" * 22,
        principal="",
        endpoint="POST /x",
        status=OperationStatus.SUCCEEDED,
        created_at=0.0,
        updated_at=0.0,
        response=StoredResponse(200, headers, b"{}"),
    )


def test_replays_never_carry_two_allow_origin_fields():
    op = _ended((("access-control-allow-origin", "https://app.example"), ("vary", "Origin")))
    mine = frozenset({"https://app.example"})
    reply = final(op, operation_url="/o", origin="https://app.example", cors_origins=mine)
    assert [k for k, _ in reply.headers].count("access-control-allow-origin") == 1
    # The app's own CORS answer is replayed only to the origin it answered.
    same = final(op, operation_url="/o", origin="https://app.example")
    assert same.header("access-control-allow-origin") == "https://app.example"
    assert final(op, operation_url="/o", origin="").header("access-control-allow-origin") is None
    other = final(op, operation_url="/o", origin="https://evil.example")
    assert other.header("access-control-allow-origin") is None


def test_a_wildcard_cors_list_never_allows_credentials():
    headers = dict(cors_headers("https://anyone.example", frozenset({"*"})))
    assert headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in headers
    listed = dict(cors_headers("https://app.example", frozenset({"*", "https://app.example"})))
    assert listed["access-control-allow-origin"] == "https://app.example"
    assert listed["access-control-allow-credentials"] == "true"


# --- liveness ----------------------------------------------------------------------


def test_a_heartbeat_lives_five_intervals():
    assert owner_ttl(2.0) == 10.0


def test_live_owners_are_believed_only_after_a_full_ttl_of_heartbeats():
    # Right after an outage every heartbeat has expired: nobody may be reaped yet.
    assert not heartbeats_settled(None, 100.0, 10.0)
    assert not heartbeats_settled(95.0, 100.0, 10.0)
    assert heartbeats_settled(90.0, 100.0, 10.0)


def test_only_work_of_owners_that_stopped_is_orphaned():
    def unfinished(op_id: str, owner: str | None) -> Operation:
        return Operation(
            id=op_id,
            principal="",
            endpoint="POST /x",
            status=OperationStatus.RUNNING,
            created_at=0.0,
            updated_at=0.0,
            owner=owner,
        )

    ops = [unfinished("a", "me"), unfinished("b", "gone"), unfinished("c", None)]
    lost = orphaned(ops, {"me", "other"})
    assert [op_id for op_id, _ in lost] == ["b"]
    assert "(gone) stopped" in lost[0][1]


# --- logs --------------------------------------------------------------------------


def test_an_outage_is_logged_once_not_per_failure(caplog):
    import logging

    from repoll.server._outage_log import OutageLog

    log = OutageLog(every=3600)
    with caplog.at_level(logging.WARNING, logger="repoll"):
        for _ in range(1000):
            log.failed("a poll", repoll.StoreUnavailable("down"))
        log.answered()
        log.answered()  # no outage: nothing to say
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("store unavailable (a poll)")
    assert "1000 failures" in messages[1]


# --- Prefer, parsed once per value ------------------------------------------------


def test_prefer_values_are_parsed_once_and_the_memory_stays_bounded():
    from repoll.server import _middleware

    def prefer(*values: bytes) -> dict:
        return {"headers": [(b"prefer", value) for value in values]}

    first = _middleware._preferences(prefer(b"respond-async, wait=7"))
    assert (first.respond_async, first.wait) == (True, 7)
    assert _middleware._preferences(prefer(b"respond-async, wait=7")) is first  # remembered
    # Two fields: both read, the first occurrence of each preference wins.
    both = _middleware._preferences(prefer(b"wait=3", b"respond-async, wait=9"))
    assert (both.respond_async, both.wait) == (True, 3)
    assert _middleware._preferences({"headers": []}).wait is None
    for i in range(2000):  # a flood of distinct values
        assert _middleware._preferences(prefer(f"wait={i}".encode())).wait == min(i, 7 * 86400)
    assert len(_middleware._parsed_prefer) <= 256
    long = b"wait=5, " + b"x" * 300
    assert _middleware._preferences(prefer(long)).wait == 5
    assert long not in _middleware._parsed_prefer
