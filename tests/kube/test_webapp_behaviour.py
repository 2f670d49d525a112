"""The sample service's pure logic: behaviours, routing, the health verdict, counters."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.webapp.app import prometheus_text
from sandbox.webapp.behaviour import PRESETS, Behaviour, VersionBehaviours
from sandbox.webapp.traffic import (
    NO_ENDPOINT,
    Routing,
    ServiceTraffic,
    health_verdict,
    ingress_backend,
    percentile,
    routed_versions,
)

BEHAVIOURS = VersionBehaviours(
    {"sandbox/app:v7": "unhealthy", ":canary-*": {"kind": "errors", "error_rate": 0.25}}
)


@pytest.mark.parametrize(
    ("image", "expected", "why"),
    [
        ("sandbox/app:v1", PRESETS["good"], "no rule, no convention: good"),
        ("sandbox/app:v7", PRESETS["unhealthy"], "an exact image"),
        ("sandbox/app:canary-3", Behaviour(error_rate=0.25), "':' globs the tag"),
        ("sandbox/app:bad-health", PRESETS["unhealthy"], "convention: bad-health"),
        ("sandbox/app:v2-unhealthy", PRESETS["unhealthy"], "convention: unhealthy"),
        ("sandbox/app:err8", Behaviour(error_rate=0.08), "convention: err8 is 8% errors"),
        ("sandbox/app:v3-err25", Behaviour(error_rate=0.25), "convention: errN anywhere in the tag"),
        ("sandbox/app:slow", PRESETS["slow"], "convention: slow is p95 800 ms"),
        (
            "sandbox/app:slow1500",
            Behaviour(latency_p50_ms=600, latency_p95_ms=1500),
            "convention: slowN sets p95",
        ),
    ],
)
def test_behaviour_for_image(image: str, expected: Behaviour, why: str) -> None:
    assert BEHAVIOURS.for_image(image) == expected, why


def test_tag_conventions_can_be_switched_off() -> None:
    assert VersionBehaviours(conventions=False).for_image("x:err8") == PRESETS["good"]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"x": "flaky"}, "unknown preset 'flaky'; known: good, unhealthy, errors, slow"),
        ({"x": {"kind": "errors", "error_rate": 2}}, "error_rate: Input should be less than or equal to 1"),
        ({"x": {"latency_p50_ms": 900}}, "latency_p95_ms \\(60.0\\) must be at least latency_p50_ms"),
    ],
)
def test_bad_behaviour_config_says_what_is_wrong(rules: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VersionBehaviours(rules)


def test_latency_distribution_has_the_configured_median_and_p95() -> None:
    slow = PRESETS["slow"]
    assert round(slow.latency_at(0.5)) == 300 and round(slow.latency_at(0.95)) == 800


def _pod(
    name: str, image: str, labels: dict[str, str], ready: bool = True, phase: str = "Running"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": image}, {"name": "sidecar", "image": "proxy:1"}]},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


SERVICE = {"spec": {"selector": {"app": "web", "track": "blue"}}}


@pytest.mark.parametrize(
    ("service", "pods", "versions", "problem", "why"),
    [
        (
            SERVICE,
            [
                _pod("a", "app:v1", {"app": "web", "track": "blue"}),
                _pod("b", "app:v1", {"app": "web", "track": "blue", "x": "y"}),
            ],
            {"app:v1": 2},
            None,
            "extra labels still match",
        ),
        (
            SERVICE,
            [
                _pod("a", "app:v1", {"app": "web", "track": "blue"}),
                _pod("b", "app:v2", {"app": "web", "track": "green"}),
            ],
            {"app:v1": 1},
            None,
            "the selector picks the track",
        ),
        (
            SERVICE,
            [
                _pod("a", "app:v1", {"app": "web", "track": "blue"}),
                _pod("b", "app:v2", {"app": "web", "track": "blue"}, ready=False),
            ],
            {"app:v1": 1},
            None,
            "not-ready pods get no traffic",
        ),
        (
            SERVICE,
            [_pod("a", "app:v1", {"app": "web", "track": "blue"}, phase="Pending")],
            {},
            "has no ready endpoints",
            "pending pods get no traffic",
        ),
        (
            {"spec": {}},
            [_pod("a", "app:v1", {"app": "web"})],
            {},
            "has no selector",
            "a selector-less service routes to nothing here",
        ),
        (None, [], {}, "not found", "no service"),
    ],
)
def test_routed_versions(
    service: Any, pods: list[dict[str, Any]], versions: dict[str, int], problem: str | None, why: str
) -> None:
    routing = routed_versions(service, pods, "default/web")
    assert dict(routing.versions) == versions, why
    assert (problem is None and routing.problem is None) or (
        problem is not None and problem in (routing.problem or "")
    ), why


@pytest.mark.parametrize(
    ("routing", "code", "status"),
    [
        (Routing({"app:v1": 3}, ("a", "b", "c")), 200, "ok"),
        (Routing({"app:err8": 3}, ("a", "b", "c")), 200, "ok"),
        (Routing({"app:v1": 2, "app:bad-health": 1}, ("a", "b", "c")), 503, "unhealthy"),
        (Routing({}, problem="service default/web has no ready endpoints"), 503, "unavailable"),
    ],
)
def test_health_verdict(routing: Routing, code: int, status: str) -> None:
    got_code, body = health_verdict(routing, VersionBehaviours())
    assert (got_code, body["status"]) == (code, status)


def test_error_rate_is_exact_over_whole_hundreds() -> None:
    traffic = ServiceTraffic()
    assert (
        traffic.simulate(
            Routing({"app:err8": 2}, ("a", "b")), VersionBehaviours(), rate=100, dt=3.0, now=100.0
        )
        == 300
    )
    assert (traffic.requests, traffic.errors) == (300, 24)


def test_requests_split_by_pod_count() -> None:
    traffic = ServiceTraffic()
    traffic.simulate(
        Routing({"app:v1": 2, "app:v2": 1}, ("a", "b", "c")), VersionBehaviours(), rate=300, dt=1.0, now=100.0
    )
    assert {v: c.requests for v, c in traffic.versions.items()} == {"app:v1": 200, "app:v2": 100}


def test_no_endpoint_means_every_request_fails() -> None:
    traffic = ServiceTraffic()
    traffic.simulate(Routing({}, problem="none"), VersionBehaviours(), rate=10, dt=1.0, now=100.0)
    assert (traffic.requests, traffic.errors, list(traffic.versions)) == (10, 10, [NO_ENDPOINT])


def test_snapshot_window_forgets_old_requests() -> None:
    traffic = ServiceTraffic(window_seconds=1.0)
    traffic.simulate(Routing({"app:slow": 1}, ("a",)), VersionBehaviours(), rate=200, dt=1.0, now=100.0)
    traffic.simulate(Routing({"app:v1": 1}, ("a",)), VersionBehaviours(), rate=200, dt=1.0, now=102.0)
    snap = traffic.snapshot(102.0)
    assert (snap["requests"], snap["window_requests"]) == (400, 200)
    assert snap["latency_ms"]["p95"] < 100, "only the fast version is in the window"
    assert snap["versions"]["app:slow"]["latency_ms"]["p50"] is None


@pytest.mark.parametrize(("p", "expected"), [(50, 5), (95, 10), (99, 10), (1, 1)])
def test_percentile_is_nearest_rank(p: float, expected: float) -> None:
    assert percentile(list(range(1, 11)), p) == expected


def test_prometheus_text_has_counters_per_version() -> None:
    traffic = ServiceTraffic()
    traffic.simulate(Routing({"app:err8": 1}, ("a",)), VersionBehaviours(), rate=100, dt=1.0, now=100.0)
    text = prometheus_text([{"service": "default/web", **traffic.snapshot(100.0)}])
    assert 'sandbox_requests_total{namespace="default",service="web",version="app:err8"} 100' in text
    assert 'sandbox_errors_total{namespace="default",service="web",version="app:err8"} 8' in text
    assert 'sandbox_request_latency_ms{namespace="default",service="web",quantile="0.95"}' in text


def _backend(service: str) -> dict[str, Any]:
    return {"service": {"name": service, "port": {"number": 80}}}


def _rule(host: str, service: str) -> dict[str, Any]:
    return {
        "host": host,
        "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": _backend(service)}]},
    }


BUCKET = {"resource": {"apiGroup": "storage.example.com", "kind": "Bucket", "name": "static"}}


@pytest.mark.parametrize(
    ("spec", "service", "why"),
    [
        (
            {"rules": [_rule("a.local", "web-blue")]},
            "web-blue",
            "the first rule's first path, as the sandbox's",
        ),
        (
            {"defaultBackend": _backend("web-green"), "rules": [_rule("a.local", "web-blue")]},
            "web-green",
            "a default backend wins over the rules",
        ),
        (
            {"defaultBackend": BUCKET, "rules": [_rule("a.local", "web-blue")]},
            "web-blue",
            "a default backend that is no Service leaves it to the rules",
        ),
        (
            {"rules": [_rule("a.local", "first"), _rule("b.local", "second")]},
            "first",
            "only the first rule counts",
        ),
        ({"defaultBackend": BUCKET}, None, "a resource backend names no Service"),
        ({"rules": [{"host": "a.local"}]}, None, "a rule without http paths names no Service"),
        ({}, None, "an empty spec names no Service"),
    ],
)
def test_ingress_backend_names_the_service(spec: dict[str, Any], service: str | None, why: str) -> None:
    assert ingress_backend({"spec": spec}) == service, why
