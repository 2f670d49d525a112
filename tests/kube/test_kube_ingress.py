"""Ingresses through the official client (v37, which validates every response), the way a
blue-green deploy switches one: read it, then replace it or patch its backend."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sandbox.kube.server import KubeServer

BACKEND = "/spec/rules/0/http/paths/0/backend/service/name"


def _rule(service: str) -> dict[str, Any]:
    backend = {"service": {"name": service, "port": {"number": 80}}}
    return {
        "host": "admin.local",
        "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]},
    }


@pytest.fixture
def networking(api_client: client.ApiClient) -> client.NetworkingV1Api:
    return client.NetworkingV1Api(api_client)


@pytest.fixture
def ingress(networking: client.NetworkingV1Api) -> client.V1Ingress:
    """Ingress `admin` in `default`, sending admin.local to Service `admin-blue`."""
    return networking.create_namespaced_ingress(
        "default", {"metadata": {"name": "admin"}, "spec": {"rules": [_rule("admin-blue")]}}
    )


def _backend(ing: client.V1Ingress) -> str:
    return ing.spec.rules[0].http.paths[0].backend.service.name


def _switch(live: str, new: str) -> list[dict[str, Any]]:
    """A JSON patch moving the backend from `live` to `new` that fails unless it is on `live`."""
    return [{"op": "test", "path": BACKEND, "value": live}, {"op": "replace", "path": BACKEND, "value": new}]


def test_ingress_reads_back_complete_and_typed(
    networking: client.NetworkingV1Api, ingress: client.V1Ingress
) -> None:
    read = networking.read_namespaced_ingress("admin", "default")
    path = read.spec.rules[0].http.paths[0]
    assert (path.path, path.path_type, path.backend.service.port.number) == ("/", "Prefix", 80)
    assert read.metadata.uid == ingress.metadata.uid and read.metadata.resource_version
    assert read.status.load_balancer is not None


def test_replace_switches_the_backend_service(
    networking: client.NetworkingV1Api, ingress: client.V1Ingress
) -> None:
    ingress.spec.rules[0].http.paths[0].backend.service.name = "admin-green"
    replaced = networking.replace_namespaced_ingress("admin", "default", ingress)
    assert _backend(replaced) == "admin-green"
    assert _backend(networking.read_namespaced_ingress("admin", "default")) == "admin-green"


def test_replace_with_a_stale_resource_version_is_a_409_conflict(
    networking: client.NetworkingV1Api, ingress: client.V1Ingress
) -> None:
    networking.patch_namespaced_ingress("admin", "default", {"metadata": {"labels": {"touched": "yes"}}})
    ingress.spec.rules[0].http.paths[0].backend.service.name = "admin-green"
    with pytest.raises(ApiException) as exc:
        networking.replace_namespaced_ingress("admin", "default", ingress)
    assert exc.value.status == 409


def test_strategic_merge_patch_replaces_the_rules_whole(
    networking: client.NetworkingV1Api, ingress: client.V1Ingress
) -> None:
    patched = networking.patch_namespaced_ingress(
        "admin", "default", {"spec": {"rules": [_rule("admin-green")]}}
    )
    rules = [(r.host, r.http.paths[0].backend.service.name) for r in patched.spec.rules]
    assert rules == [("admin.local", "admin-green")]


def test_json_patch_switches_the_backend_after_testing_the_live_one(
    networking: client.NetworkingV1Api, ingress: client.V1Ingress
) -> None:
    patched = networking.patch_namespaced_ingress("admin", "default", _switch("admin-blue", "admin-green"))
    assert _backend(patched) == "admin-green"


def test_json_patch_whose_test_fails_is_a_422_and_changes_nothing(
    networking: client.NetworkingV1Api, ingress: client.V1Ingress
) -> None:
    with pytest.raises(ApiException) as exc:
        networking.patch_namespaced_ingress("admin", "default", _switch("admin-green", "admin-blue"))
    assert exc.value.status == 422 and '"reason":"Invalid"' in exc.value.body
    after = networking.read_namespaced_ingress("admin", "default")
    assert after.metadata.resource_version == ingress.metadata.resource_version


def test_ingress_path_without_a_path_type_is_refused_like_the_real_server(kube: KubeServer) -> None:
    # Sent raw: the client itself refuses to send it, but kubectl or a hand-written manifest could,
    # and a stored path without pathType would then fail the client's read of the Ingress.
    rule = _rule("admin-blue")
    del rule["http"]["paths"][0]["pathType"]
    answer = httpx.post(
        f"{kube.url}/apis/networking.k8s.io/v1/namespaces/default/ingresses",
        json={"metadata": {"name": "admin"}, "spec": {"rules": [rule]}},
    )
    assert answer.status_code == 422
    assert "spec.rules[0].http.paths[0].pathType: Required value" in answer.json()["message"]
