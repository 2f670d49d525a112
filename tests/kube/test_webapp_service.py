"""The sample web service over real HTTP, reading the fake cluster: its health and error
rate follow the images the Service routes to."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from kubernetes import client

from sandbox.kube.server import KubeServer
from sandbox.webapp.server import WebAppServer, running_webapp

Wait = Callable[..., Any]


@pytest.fixture
def webapp(kube: KubeServer) -> Iterator[WebAppServer]:
    with running_webapp(kube.url, rate=400, window=1.0, refresh=0.05) as server:
        yield server


@pytest.fixture
def track(
    apps: client.AppsV1Api, deployment_manifest: Callable[..., dict[str, Any]]
) -> Callable[[str, str], None]:
    """Create Deployment `web-TRACK` running IMAGE, labelled app=web, track=TRACK."""

    def create(track_name: str, image: str) -> None:
        apps.create_namespaced_deployment(
            "default",
            deployment_manifest(
                f"web-{track_name}", image, replicas=2, labels={"app": "web", "track": track_name}
            ),
        )

    return create


@pytest.fixture
def service(core: client.CoreV1Api) -> Callable[[dict[str, str]], None]:
    """Create or re-point the Service `web` at a selector."""

    def point(selector: dict[str, str]) -> None:
        try:
            core.patch_namespaced_service("web", "default", {"spec": {"selector": selector}})
        except client.exceptions.ApiException:
            core.create_namespaced_service(
                "default",
                {
                    "metadata": {"name": "web"},
                    "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": 8080}]},
                },
            )

    return point


def _health(webapp: WebAppServer) -> httpx.Response:
    return httpx.get(f"{webapp.service_url('default', 'web')}/health")


def _metrics(webapp: WebAppServer) -> dict[str, Any]:
    return httpx.get(f"{webapp.service_url('default', 'web')}/metrics").json()


def _serving(webapp: WebAppServer, versions: dict[str, int]) -> Callable[[], bool]:
    return lambda: _health(webapp).json()["versions"] == versions


@pytest.mark.parametrize(
    ("image", "health", "error_rate"),
    [
        ("sandbox/app:v2", 200, 0.0),
        ("sandbox/app:v2-err8", 200, 0.08),
        ("sandbox/app:v2-bad-health", 503, 0.0),
    ],
)
def test_health_and_error_rate_follow_the_routed_image(
    webapp: WebAppServer,
    track: Callable[[str, str], None],
    service: Callable[[dict[str, str]], None],
    wait_until: Wait,
    image: str,
    health: int,
    error_rate: float,
) -> None:
    track("green", image)
    service({"app": "web", "track": "green"})
    wait_until(_serving(webapp, {image: 2}))
    assert _health(webapp).status_code == health
    counters = wait_until(
        lambda: (v := _metrics(webapp)["versions"].get(image)) and v["requests"] >= 300 and v
    )
    assert counters["errors"] / counters["requests"] == pytest.approx(error_rate, abs=0.005)


def test_selector_switch_changes_the_answer_at_once(
    webapp: WebAppServer,
    apps: client.AppsV1Api,
    track: Callable[[str, str], None],
    service: Callable[[dict[str, str]], None],
    wait_until: Wait,
) -> None:
    track("blue", "sandbox/app:v1")
    track("green", "sandbox/app:v2-bad-health")
    service({"app": "web", "track": "blue"})
    wait_until(lambda: apps.read_namespaced_deployment("web-green", "default").status.ready_replicas == 2)
    wait_until(lambda: _metrics(webapp)["routed"] == {"sandbox/app:v1": 2})
    assert _health(webapp).status_code == 200
    service({"app": "web", "track": "green"})
    answer = _health(webapp)
    assert (answer.status_code, answer.json()["status"], answer.json()["versions"]) == (
        503,
        "unhealthy",
        {"sandbox/app:v2-bad-health": 2},
    )
    wait_until(lambda: _metrics(webapp)["routed"] == {"sandbox/app:v2-bad-health": 2}, timeout=0.5)
    service({"app": "web", "track": "blue"})
    assert _health(webapp).status_code == 200


def test_rollout_to_a_bad_health_image_turns_health_503_and_rollback_restores_it(
    webapp: WebAppServer,
    apps: client.AppsV1Api,
    service: Callable[[dict[str, str]], None],
    deployment_manifest: Callable[..., dict[str, Any]],
    wait_until: Wait,
) -> None:
    apps.create_namespaced_deployment("default", deployment_manifest("web", "sandbox/app:v1", replicas=3))
    service({"app": "web"})
    wait_until(_serving(webapp, {"sandbox/app:v1": 3}))

    def set_image(image: str) -> None:
        patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}}
        apps.patch_namespaced_deployment("web", "default", patch)

    set_image("sandbox/app:v2-bad-health")
    wait_until(lambda: _health(webapp).status_code == 503, timeout=3)
    wait_until(_serving(webapp, {"sandbox/app:v2-bad-health": 3}))
    set_image("sandbox/app:v1")
    wait_until(_serving(webapp, {"sandbox/app:v1": 3}))
    assert _health(webapp).json()["status"] == "ok"


def test_no_ready_endpoint_or_no_service_is_503(
    webapp: WebAppServer, track: Callable[[str, str], None], service: Callable[[dict[str, str]], None]
) -> None:
    missing = _health(webapp)
    assert (missing.status_code, missing.json()["reason"]) == (503, "service default/web not found")
    track("red", "sandbox/app:never-ready")
    service({"app": "web", "track": "red"})
    time.sleep(0.3)
    empty = _health(webapp)
    assert (empty.status_code, empty.json()["status"], empty.json()["versions"]) == (503, "unavailable", {})


def test_real_requests_answer_as_the_routed_version_and_count(
    webapp: WebAppServer,
    track: Callable[[str, str], None],
    service: Callable[[dict[str, str]], None],
    wait_until: Wait,
) -> None:
    track("blue", "sandbox/app:v1")
    service({"app": "web", "track": "blue"})
    wait_until(_serving(webapp, {"sandbox/app:v1": 2}))
    answer = httpx.get(f"{webapp.service_url('default', 'web')}/orders/42")
    assert (answer.status_code, answer.json()["version"]) == (200, "sandbox/app:v1")
    assert answer.json()["latency_ms"] > 0


def test_slow_version_shows_in_the_latency_percentiles(
    webapp: WebAppServer,
    track: Callable[[str, str], None],
    service: Callable[[dict[str, str]], None],
    wait_until: Wait,
) -> None:
    track("blue", "sandbox/app:slow")
    service({"app": "web", "track": "blue"})
    wait_until(_serving(webapp, {"sandbox/app:slow": 2}))
    latency = wait_until(
        lambda: (
            (v := _metrics(webapp)["versions"].get("sandbox/app:slow"))
            and v["window_requests"] >= 200
            and v["latency_ms"]
        )
    )
    assert 250 <= latency["p50"] <= 350 and 650 <= latency["p95"] <= 950


def test_behaviours_change_at_runtime(
    webapp: WebAppServer,
    track: Callable[[str, str], None],
    service: Callable[[dict[str, str]], None],
    wait_until: Wait,
) -> None:
    track("blue", "sandbox/app:v1")
    service({"app": "web", "track": "blue"})
    wait_until(_serving(webapp, {"sandbox/app:v1": 2}))
    response = httpx.post(f"{webapp.url}/sandbox/behaviours", json={"rules": {"sandbox/app:v1": "unhealthy"}})
    assert response.status_code == 200
    assert _health(webapp).status_code == 503
    assert httpx.post(f"{webapp.url}/sandbox/behaviours", json={"rules": {"x": "odd"}}).status_code == 400


def test_prometheus_endpoint_lists_tracked_services(
    webapp: WebAppServer,
    track: Callable[[str, str], None],
    service: Callable[[dict[str, str]], None],
    wait_until: Wait,
) -> None:
    track("blue", "sandbox/app:v1")
    service({"app": "web", "track": "blue"})
    wait_until(_serving(webapp, {"sandbox/app:v1": 2}))
    text = wait_until(lambda: "sandbox/app:v1" in (t := httpx.get(f"{webapp.url}/metrics").text) and t)
    assert 'sandbox_requests_total{namespace="default",service="web",version="sandbox/app:v1"}' in text


# --- through an Ingress ---------------------------------------------------------------

GOOD, BAD = "sandbox/app:v1", "sandbox/app:v2-bad-health"


@pytest.fixture
def colours(
    apps: client.AppsV1Api, core: client.CoreV1Api, track: Callable[[str, str], None], wait_until: Wait
) -> None:
    """Deployments and Services `web-blue` (GOOD) and `web-green` (BAD), all pods Ready."""
    for colour, image in (("blue", GOOD), ("green", BAD)):
        track(colour, image)
        selector = {"app": "web", "track": colour}
        core.create_namespaced_service(
            "default",
            {"metadata": {"name": f"web-{colour}"}, "spec": {"selector": selector, "ports": [{"port": 80}]}},
        )
    for colour in ("blue", "green"):
        wait_until(
            lambda c=colour: apps.read_namespaced_deployment(f"web-{c}", "default").status.ready_replicas == 2
        )


@pytest.fixture
def ingress(api_client: client.ApiClient) -> Callable[[str], None]:
    """Create or re-point the Ingress `web` at a Service."""
    networking = client.NetworkingV1Api(api_client)

    def point(service: str) -> None:
        backend = {"service": {"name": service, "port": {"number": 80}}}
        spec = {"rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}]}
        try:
            networking.patch_namespaced_ingress("web", "default", {"spec": spec})
        except client.exceptions.ApiException:
            networking.create_namespaced_ingress("default", {"metadata": {"name": "web"}, "spec": spec})

    return point


def _via_ingress(webapp: WebAppServer, path: str) -> httpx.Response:
    return httpx.get(f"{webapp.ingress_url('default', 'web')}/{path}")


def _unavailable_because(answer: httpx.Response) -> str:
    assert (answer.status_code, answer.json()["status"]) == (503, "unavailable")
    return answer.json()["reason"]


def test_health_through_an_ingress_follows_a_backend_switch_at_once(
    webapp: WebAppServer, colours: None, ingress: Callable[[str], None]
) -> None:
    ingress("web-blue")
    blue = _via_ingress(webapp, "health")
    assert (blue.status_code, blue.json()["versions"]) == (200, {GOOD: 2})
    ingress("web-green")
    green = _via_ingress(webapp, "health")
    assert (green.status_code, green.json()["status"], green.json()["versions"]) == (
        503,
        "unhealthy",
        {BAD: 2},
    )
    assert (green.json()["ingress"], green.json()["service"]) == ("default/web", "default/web-green")
    ingress("web-blue")
    assert _via_ingress(webapp, "health").status_code == 200


def test_metrics_through_an_ingress_follow_a_backend_switch(
    webapp: WebAppServer, colours: None, ingress: Callable[[str], None], wait_until: Wait
) -> None:
    ingress("web-blue")
    wait_until(lambda: _via_ingress(webapp, "metrics").json()["routed"] == {GOOD: 2})
    ingress("web-green")
    after = wait_until(
        lambda: (m := _via_ingress(webapp, "metrics").json())["routed"] == {BAD: 2} and m, timeout=0.5
    )
    assert (after["ingress"], after["service"]) == ("default/web", "default/web-green")
    wait_until(
        lambda: _via_ingress(webapp, "metrics").json()["versions"].get(BAD, {}).get("requests", 0) >= 100
    )


def test_real_request_through_an_ingress_answers_as_its_backend_version(
    webapp: WebAppServer, colours: None, ingress: Callable[[str], None]
) -> None:
    ingress("web-blue")
    answer = _via_ingress(webapp, "orders/42")
    assert (answer.status_code, answer.json()["version"], answer.json()["ingress"]) == (
        200,
        GOOD,
        "default/web",
    )


def test_missing_ingress_answers_like_a_missing_service(webapp: WebAppServer) -> None:
    assert _unavailable_because(_via_ingress(webapp, "health")) == "ingress default/web not found"


def test_ingress_that_names_no_service_answers_like_a_missing_service(
    webapp: WebAppServer, api_client: client.ApiClient
) -> None:
    bucket = {"resource": {"apiGroup": "storage.example.com", "kind": "Bucket", "name": "static"}}
    client.NetworkingV1Api(api_client).create_namespaced_ingress(
        "default", {"metadata": {"name": "web"}, "spec": {"defaultBackend": bucket}}
    )
    assert (
        _unavailable_because(_via_ingress(webapp, "health")) == "ingress default/web names no Service backend"
    )


def test_ingress_to_a_missing_service_names_that_service(
    webapp: WebAppServer, ingress: Callable[[str], None]
) -> None:
    ingress("web-green")
    assert _unavailable_because(_via_ingress(webapp, "health")) == "service default/web-green not found"


def test_ingress_tracked_from_the_start_gets_traffic_before_any_request(
    kube: KubeServer, colours: None, ingress: Callable[[str], None], wait_until: Wait
) -> None:
    ingress("web-blue")
    with running_webapp(kube.url, ingresses=[("default", "web")], rate=400, refresh=0.05) as web:
        series = f'sandbox_requests_total{{namespace="default",ingress="web",version="{GOOD}"}}'
        wait_until(lambda: series in httpx.get(f"{web.url}/metrics").text)
