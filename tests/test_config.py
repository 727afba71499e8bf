"""The server's grouped settings: ``Limits``, ``Lifetimes``, ``UrlPolicy``.

Each object checks its values when made; ``install`` and ``PollingServer``
take the objects, and the environment still fills what they leave unset.
"""

from __future__ import annotations

import dataclasses

import httpx
import pytest
from fastapi import FastAPI

import repoll
from repoll import Lifetimes, Limits, UrlPolicy
from repoll.cli._main import EXIT_USAGE, main
from repoll.core._origin import LOOPBACK

FAST = repoll.PacingPolicy(min_interval=0.05, default_interval=0.1, min_hold=0.05, max_hold=5)


@pytest.fixture(autouse=True)
def _no_url_environment(monkeypatch):
    monkeypatch.delenv("REPOLL_PUBLIC_URL", raising=False)
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)


# --- the objects -----------------------------------------------------------------


def test_the_defaults_are_the_documented_ones():
    assert Limits() == Limits(
        max_body_size=1024 * 1024,
        max_response_size=64 * 1024 * 1024,
        max_held_polls=10_000,
        max_operations=10_000,
        max_operations_per_principal=100,
    )
    assert Lifetimes() == Lifetimes(retention=3600.0, shutdown_grace=5.0, heartbeat_interval=2.0)
    assert UrlPolicy() == UrlPolicy(
        operations_path="/operations",
        absolute_urls=False,
        public_url=None,
        forwarded_allow_ips=None,
    )


def test_the_objects_are_frozen():
    for settings in (Limits(), Lifetimes(), UrlPolicy()):
        field = dataclasses.fields(settings)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings, field, 1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_body_size": -1}, r"max_body_size must be an integer of at least 0, not -1"),
        ({"max_response_size": -5}, r"max_response_size must be an integer of at least 0"),
        ({"max_held_polls": -1}, r"max_held_polls must be an integer of at least 0"),
        ({"max_operations": 0}, r"max_operations must be an integer of at least 1, not 0"),
        (
            {"max_operations_per_principal": 0},
            r"max_operations_per_principal must be .* at least 1",
        ),
        ({"max_body_size": 1.5}, r"max_body_size must be an integer"),
        ({"max_operations": True}, r"max_operations must be an integer"),
        ({"max_held_polls": "10"}, r"max_held_polls must be an integer"),
    ],
)
def test_limits_refuse_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        Limits(**changes)


def test_limits_accept_their_bounds():
    limits = Limits(max_body_size=0, max_response_size=0, max_held_polls=0, max_operations=1)
    assert limits.max_operations_per_principal == 100


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"retention": -1}, r"retention must be a finite number of seconds, at least 0, not -1"),
        ({"retention": float("inf")}, r"retention must be a finite number"),
        ({"shutdown_grace": -0.5}, r"shutdown_grace must be .* at least 0"),
        ({"shutdown_grace": float("nan")}, r"shutdown_grace must be a finite number"),
        ({"heartbeat_interval": 0}, r"heartbeat_interval must be .* greater than 0, not 0"),
        ({"heartbeat_interval": "2"}, r"heartbeat_interval must be a finite number"),
    ],
)
def test_lifetimes_refuse_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        Lifetimes(**changes)


def test_lifetimes_accept_zero_where_it_means_something():
    assert Lifetimes(retention=0, shutdown_grace=0).heartbeat_interval == 2.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"operations_path": ""}, r"operations_path must be a non-empty path"),
        ({"operations_path": "/"}, r"operations_path must be a non-empty path"),
        ({"operations_path": "/a b"}, r"operations_path must be a non-empty path"),
        ({"operations_path": "/a//b"}, r"operations_path must be a non-empty path"),
        ({"public_url": "api.example.com"}, r"public_url must be an absolute http\(s\) URL"),
        ({"public_url": "ftp://api.example.com"}, r"public_url must be an absolute http\(s\) URL"),
        ({"public_url": ""}, r"public_url must be an absolute http\(s\) URL"),
        ({"public_url": "https://api.example.com/?a=1"}, r"public_url must not have a query"),
        ({"forwarded_allow_ips": "10.0.0.1, proxy"}, r"'proxy' is not an IP address"),
        ({"forwarded_allow_ips": ["10.0.0.0/33"]}, r"'10.0.0.0/33' is not an IP address"),
    ],
)
def test_url_policies_refuse_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        UrlPolicy(**changes)


def test_url_policies_normalise_what_they_are_given():
    assert UrlPolicy(operations_path="jobs/").operations_path == "/jobs"
    assert UrlPolicy(operations_path="/api/v1/ops").operations_path == "/api/v1/ops"
    listed = UrlPolicy(forwarded_allow_ips=["10.0.0.1", "10.1.0.0/16"])
    assert listed.forwarded_allow_ips == ("10.0.0.1", "10.1.0.0/16")
    assert hash(listed) == hash(UrlPolicy(forwarded_allow_ips=("10.0.0.1", "10.1.0.0/16")))
    assert listed.trusted_proxies.trusts("10.1.2.3")
    assert not listed.trusted_proxies.trusts("10.2.0.1")
    assert UrlPolicy().trusted_proxies == LOOPBACK
    assert UrlPolicy(forwarded_allow_ips="*").trusted_proxies.trusts("203.0.113.9")


def test_the_environment_fills_only_what_is_unset():
    environ = {"REPOLL_PUBLIC_URL": "https://env.example", "FORWARDED_ALLOW_IPS": "10.0.0.1"}
    filled = UrlPolicy().with_environment(environ)
    assert filled.public_url == "https://env.example"
    assert filled.forwarded_allow_ips == "10.0.0.1"
    given = UrlPolicy(public_url="https://given.example", forwarded_allow_ips="*")
    assert given.with_environment(environ) == given
    empty = {"REPOLL_PUBLIC_URL": "", "FORWARDED_ALLOW_IPS": ""}
    assert UrlPolicy().with_environment(empty) == UrlPolicy()


def test_a_bad_environment_value_names_its_variable():
    with pytest.raises(ValueError, match=r"public_url must be .*\(from \$REPOLL_PUBLIC_URL\)"):
        UrlPolicy().with_environment({"REPOLL_PUBLIC_URL": "example.com"})
    with pytest.raises(ValueError, match=r"'nope' is not .*\(from \$FORWARDED_ALLOW_IPS\)"):
        UrlPolicy(public_url="https://ok.example").with_environment(
            {"REPOLL_PUBLIC_URL": "example.com", "FORWARDED_ALLOW_IPS": "nope"}
        )


# --- install() with the objects ----------------------------------------------------


def _app(**options) -> tuple[FastAPI, repoll.PollingServer]:
    app = FastAPI()
    server = repoll.install(app, store=repoll.MemoryStore(), pacing=FAST, **options)

    @app.post("/quick")
    @repoll.deferred
    async def quick() -> dict:
        return {"done": True}

    return app, server


def _operation_url(started: httpx.Response) -> str:
    # Location while the work runs; Content-Location if it ended first.
    return started.headers.get("location") or started.headers["content-location"]


def test_install_keeps_the_objects_and_their_values():
    limits = Limits(max_body_size=10, max_held_polls=3, max_operations=7)
    lifetimes = Lifetimes(retention=60, shutdown_grace=1, heartbeat_interval=0.5)
    urls = UrlPolicy(operations_path="jobs")
    _, server = _app(limits=limits, lifetimes=lifetimes, urls=urls)
    assert (server.limits, server.lifetimes, server.urls) == (limits, lifetimes, urls)
    assert server.max_body_size == 10
    assert server.max_held_polls == 3
    assert server.max_operations == 7
    assert server.max_operations_per_principal == 100
    assert server.retention == 60
    assert server.shutdown_grace == 1
    assert server.heartbeat_interval == 0.5
    assert server.owner_ttl == 2.5
    assert server.operations_path == "/jobs"


def test_install_defaults_to_each_objects_defaults():
    _, server = _app()
    assert (server.limits, server.lifetimes, server.urls) == (Limits(), Lifetimes(), UrlPolicy())


def test_install_takes_either_a_server_or_options():
    server = repoll.PollingServer(store=repoll.MemoryStore())
    with pytest.raises(TypeError, match="either server= or PollingServer options"):
        repoll.install(FastAPI(), server, limits=Limits())
    assert repoll.install(FastAPI(), server) is server


@pytest.mark.parametrize(
    "old", ["max_operations", "retention", "absolute_urls", "public_url", "forwarded_allow_ips"]
)
def test_the_old_keywords_are_gone(old):
    with pytest.raises(TypeError, match=old):
        repoll.install(FastAPI(), store=repoll.MemoryStore(), **{old: None})


@pytest.mark.anyio
async def test_operation_urls_follow_the_url_policy():
    app, server = _app(urls=UrlPolicy(operations_path="/jobs", public_url="https://api.example"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        started = await c.post("/quick", headers={"prefer": "respond-async"})
        assert _operation_url(started).startswith("https://api.example/jobs/")
        path = _operation_url(started).removeprefix("https://api.example")
        assert (await c.get(path, headers={"prefer": "wait=5"})).json() == {"done": True}
    await server.close()


@pytest.mark.anyio
async def test_the_environment_still_configures_urls(monkeypatch):
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8")
    app, server = _app(urls=UrlPolicy(absolute_urls=True))
    assert server.urls.forwarded_allow_ips == "10.0.0.0/8"
    forwarded = {"x-forwarded-host": "public.example", "x-forwarded-proto": "https"}
    for peer, expected in [("10.1.2.3", "https://public.example/"), ("192.0.2.1", "http://t/")]:
        transport = httpx.ASGITransport(app=app, client=(peer, 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            started = await c.post("/quick", headers={"prefer": "respond-async", **forwarded})
            assert _operation_url(started).startswith(expected + "operations/")
    await server.close()
    monkeypatch.setenv("REPOLL_PUBLIC_URL", "https://from-env.example")
    app, server = _app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        started = await c.post("/quick", headers={"prefer": "respond-async"})
        assert _operation_url(started).startswith("https://from-env.example/operations/")
    await server.close()


def test_a_bad_environment_stops_the_server_at_start(monkeypatch):
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "proxy.internal")
    with pytest.raises(ValueError, match=r"FORWARDED_ALLOW_IPS"):
        repoll.PollingServer(store=repoll.MemoryStore())


def test_limits_reach_admission():
    _, server = _app(limits=Limits(max_operations=2, max_operations_per_principal=1))
    assert server.admission.admit("a") is None
    assert server.admission.admit("a") == "one client"
    assert server.admission.admit("b") is None
    assert server.admission.admit("c") == "the server"


# --- repoll serve --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--public-url", "api.example.com", "public_url must be an absolute http(s) URL"),
        ("--forwarded-allow-ips", "10.0.0.1,proxy", "'proxy' is not an IP address"),
    ],
)
def test_serve_refuses_bad_url_settings_before_starting(flag, value, message, capsys):
    assert main(["serve", flag, value]) == EXIT_USAGE
    assert message in capsys.readouterr().err
