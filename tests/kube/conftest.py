"""Fixtures for the fake Kubernetes API server and the sample web service.

Every test that needs a cluster gets its own server on a free loopback port, with a fast
loop (pods Ready 50 ms after they start) so rollouts finish in a fraction of a second.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from sandbox.kube.server import KubeServer, running_server

KUBECTL = Path(sys.executable).parent / "kubectl"
FAST = {"tick": 0.02, "ready_delay": 0.05, "crash_interval": 0.2, "job_duration": 0.05}


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """Nothing here talks to Prefect: this overrides the session's autouse Prefect test
    harness (tests/conftest.py) for this folder, which saves its ~20 s start-up when the
    folder runs alone."""
    yield


@pytest.fixture
def kube() -> Iterator[KubeServer]:
    with running_server(**FAST) as server:
        yield server
    assert server.cluster.loop_errors == [], server.cluster.loop_errors[0]
    assert server.api.api_errors == [], server.api.api_errors[0]


@pytest.fixture
def kubeconfig(kube: KubeServer, tmp_path: Path) -> Path:
    return kube.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def api_client(kubeconfig: Path) -> Iterator[kubernetes.client.ApiClient]:
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    yield client
    client.close()


@pytest.fixture
def apps(api_client: kubernetes.client.ApiClient) -> kubernetes.client.AppsV1Api:
    return kubernetes.client.AppsV1Api(api_client)


@pytest.fixture
def core(api_client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api_client)


@pytest.fixture
def batch(api_client: kubernetes.client.ApiClient) -> kubernetes.client.BatchV1Api:
    return kubernetes.client.BatchV1Api(api_client)


Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    """Run the real kubectl against the fake; raises on a non-zero exit unless check=False."""

    def run(
        *args: str, check: bool = True, timeout: float = 30, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            str(KUBECTL),
            "--kubeconfig",
            str(kubeconfig),
            "--cache-dir",
            str(tmp_path / "kube-cache"),
            *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy; returns its value or fails with the last one."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)
        value = predicate()
    return value


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    return wait_until


def deployment_manifest(
    name: str,
    image: str = "sandbox/app:v1",
    *,
    replicas: int = 3,
    labels: dict[str, str] | None = None,
    sidecar: str | None = None,
    strategy: dict[str, Any] | None = None,
    progress_deadline: int | None = None,
) -> dict[str, Any]:
    labels = labels or {"app": name}
    containers: list[dict[str, Any]] = [{"name": "app", "image": image, "ports": [{"containerPort": 8080}]}]
    if sidecar:
        containers.append({"name": "sidecar", "image": sidecar})
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": containers}},
    }
    if strategy:
        spec["strategy"] = strategy
    if progress_deadline is not None:
        spec["progressDeadlineSeconds"] = progress_deadline
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


@pytest.fixture(name="deployment_manifest")
def deployment_manifest_fixture() -> Callable[..., dict[str, Any]]:
    return deployment_manifest
