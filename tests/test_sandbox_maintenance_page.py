"""The sandbox's maintenance page, switched by the Ingress backend as the seed runbook does
(`kubectl apply -f kubernetes/maintenance-page.yaml`, `curl https://app...` to see the page,
then back): Ingress `api` normally routes to Service `api`; with its backend on Service
`maintenance-page` (image `sandbox/maintenance-page:v1`) the sample web service answers 503
"Down for maintenance" with Retry-After, and /health says "maintenance".

The pure pieces (which image is a page, the verdict, the counters) have tables; the
integration tests switch the session sandbox's Ingress with the official client and always
put it back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from kubernetes import client, config

from sandbox.cluster import API_INGRESS, GOOD_IMAGE, MAINTENANCE_IMAGE, MAINTENANCE_PAGE, NAMESPACE
from sandbox.process import wait_until
from sandbox.webapp.behaviour import VersionBehaviours, is_maintenance_page
from sandbox.webapp.traffic import Routing, ServiceTraffic, health_verdict

TIMEOUT = 20
BACKEND = "/spec/rules/0/http/paths/0/backend/service/name"


# --- pure: which image is a page, the verdict, the counters ------------------------------


@pytest.mark.parametrize(("image", "expected", "why"), [
    ("sandbox/maintenance-page:v1", True, "the sandbox's page"),
    ("registry:5000/team/maintenance-page:v2@sha256:abc", True, "a registry port and a digest are not the repository"),
    ("maintenance-page", True, "no tag at all"),
    ("sandbox/shop-maintenance-page:v1", True, "a repository that ends with the name"),
    ("sandbox/app:maintenance-page", False, "a tag is not the repository"),
    ("sandbox/maintenance-page-builder:v1", False, "the name must end the repository"),
    ("sandbox/app:v1", False, "the app"),
])
def test_is_maintenance_page_reads_the_repository(image: str, expected: bool, why: str) -> None:
    assert is_maintenance_page(image) is expected, why


@pytest.mark.parametrize(("versions", "code", "status", "why"), [
    ({MAINTENANCE_IMAGE: 1}, 503, "maintenance", "the page alone: the app is not serving"),
    ({GOOD_IMAGE: 2, MAINTENANCE_IMAGE: 1}, 503, "maintenance", "mixed routing counts as maintenance"),
    ({"sandbox/app:bad-health": 1, MAINTENANCE_IMAGE: 1}, 503, "maintenance", "maintenance wins over unhealthy"),
    ({GOOD_IMAGE: 2}, 200, "ok", "no page: the app's own verdict"),
])
def test_health_verdict_of_a_maintenance_page(versions: dict[str, int], code: int, status: str, why: str) -> None:
    got_code, body = health_verdict(Routing(versions, ("a",)), VersionBehaviours())
    assert (got_code, body["status"]) == (code, status), why


def test_maintenance_verdict_names_the_page() -> None:
    _, body = health_verdict(Routing({MAINTENANCE_IMAGE: 1}, ("p",)), VersionBehaviours())
    assert body["maintenance"] == [MAINTENANCE_IMAGE] and MAINTENANCE_IMAGE in body["reason"]


def test_every_request_to_a_maintenance_page_is_an_error_of_the_page() -> None:
    traffic = ServiceTraffic()
    traffic.simulate(Routing({GOOD_IMAGE: 3, MAINTENANCE_IMAGE: 1}, ("a", "b", "c", "p")),
                     VersionBehaviours(), rate=100, dt=1.0, now=100.0)
    assert (traffic.requests, traffic.errors, list(traffic.versions)) == (100, 100, [MAINTENANCE_IMAGE])


# --- the session sandbox ---------------------------------------------------------------


@pytest.fixture(scope="module")
def networking(sandbox: Any) -> Iterator[client.NetworkingV1Api]:
    api_client = config.new_client_from_config(config_file=str(sandbox.kubeconfig))
    yield client.NetworkingV1Api(api_client)
    api_client.close()


@pytest.fixture
def switch(networking: client.NetworkingV1Api, api_on_v1: None) -> Iterator[Any]:
    """`switch(service)` points Ingress `api`'s backend at `service`; it goes back to `api`
    afterwards whatever happens (the session's sandbox is shared)."""
    def to(service: str) -> None:
        networking.patch_namespaced_ingress(
            API_INGRESS, NAMESPACE, [{"op": "replace", "path": BACKEND, "value": service}])

    try:
        yield to
    finally:
        to("api")


def _get(sandbox: Any, path: str) -> httpx.Response:
    return httpx.get(f"{sandbox.webapp_url}/ing/{NAMESPACE}/{API_INGRESS}/{path}", timeout=5)


def _answers(sandbox: Any, path: str, code: int) -> bool:
    return _get(sandbox, path).status_code == code


def test_api_ingress_answers_from_the_app(sandbox: Any, api_on_v1: None) -> None:
    assert wait_until(lambda: _answers(sandbox, "", 200), timeout=TIMEOUT)
    body = _get(sandbox, "").json()
    assert (body["ingress"], body["service"], body["version"]) == ("sandbox/api", "sandbox/api", GOOD_IMAGE)


def test_backend_on_the_page_service_serves_the_maintenance_page(sandbox: Any, switch: Any) -> None:
    switch(MAINTENANCE_PAGE)
    assert wait_until(lambda: _answers(sandbox, "", 503), timeout=TIMEOUT)
    page = _get(sandbox, "")
    assert "Down for maintenance" in page.text
    assert page.headers["retry-after"] == "600" and page.headers["content-type"].startswith("text/html")
    assert (page.headers["x-sandbox-ingress"], page.headers["x-sandbox-service"]) == (
        "sandbox/api", "sandbox/maintenance-page")
    health = _get(sandbox, "health")
    assert health.status_code == 503
    assert (health.json()["status"], health.json()["service"]) == ("maintenance", "sandbox/maintenance-page")


def test_backend_back_on_the_app_serves_the_app_again(sandbox: Any, switch: Any) -> None:
    switch(MAINTENANCE_PAGE)
    assert wait_until(lambda: _answers(sandbox, "", 503), timeout=TIMEOUT)
    switch("api")
    assert wait_until(lambda: _answers(sandbox, "", 200), timeout=TIMEOUT)
    assert _get(sandbox, "").json()["version"] == GOOD_IMAGE
    assert _get(sandbox, "health").json()["status"] == "ok"
