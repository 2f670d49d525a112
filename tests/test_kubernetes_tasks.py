"""tasks.kubernetes against the fake Kubernetes API server (sandbox/kube) over real HTTP."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from sandbox.kube.server import KubeServer, kubeconfig, running_server
from tasks import kubernetes as k8s
from tasks.config import KubernetesConfig
from tasks.errors import CheckFailed, ConfigError, PermanentError, TransientError
from tasks.rollout import RolloutStatus

NS = "default"
FAST = {"tick": 0.02, "ready_delay": 0.05, "crash_interval": 0.2, "job_duration": 0.05}
RULES = {"sandbox/migrate:bad": {"job": "fail", "exit_code": 3, "logs": "relation users already exists"}}
WAIT = {"timeout_s": 10, "poll_s": 0.05}


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeServer]:
    with running_server(rules=RULES, **FAST) as server:
        yield server
    assert server.cluster.loop_errors == [], server.cluster.loop_errors[0]
    assert server.api.api_errors == [], server.api.api_errors[0]


@pytest.fixture(scope="module")
def cfg(kube: KubeServer, tmp_path_factory: pytest.TempPathFactory) -> KubernetesConfig:
    path = kube.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
    return KubernetesConfig(kubeconfig=str(path), context="sandbox")


@pytest.fixture(scope="module")
def api(cfg: KubernetesConfig) -> Iterator[client.ApiClient]:
    with k8s.api_client(cfg) as api:
        yield api


def create_deployment(
    api: client.ApiClient,
    name: str,
    image: str = "sandbox/app:v1",
    *,
    replicas: int = 2,
    sidecar: str | None = None,
    progress_deadline: int | None = None,
) -> dict[str, Any]:
    """A Deployment, rolled out."""
    labels = {"app": name}
    containers = [{"name": "app", "image": image}]
    if sidecar:
        containers.append({"name": "sidecar", "image": sidecar})
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": containers}},
    }
    if progress_deadline is not None:
        spec["progressDeadlineSeconds"] = progress_deadline
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}
    client.AppsV1Api(api).create_namespaced_deployment(NS, body)
    k8s.wait_for_rollout(api, NS, name, **WAIT)
    return k8s.read_deployment(api, NS, name)


def set_image(api: client.ApiClient, name: str, image: str) -> None:
    k8s.patch_container_image(api, NS, name, "app", image)
    k8s.wait_for_rollout(api, NS, name, **WAIT)


def images(api: client.ApiClient, name: str) -> dict[str, str]:
    dep = k8s.read_deployment(api, NS, name)
    return {c["name"]: c["image"] for c in dep["spec"]["template"]["spec"]["containers"]}


# --- set image and rollout status --------------------------------------------------------------


def test_patching_one_container_keeps_the_other(api: client.ApiClient) -> None:
    create_deployment(api, "two", sidecar="sandbox/proxy:1.0")
    patched = k8s.patch_container_image(api, NS, "two", "app", "sandbox/app:v2")
    assert [(c["name"], c["image"]) for c in patched["spec"]["template"]["spec"]["containers"]] == [
        ("app", "sandbox/app:v2"),
        ("sidecar", "sandbox/proxy:1.0"),
    ]


def test_patching_an_unknown_container_names_the_ones_that_exist(api: client.ApiClient) -> None:
    create_deployment(api, "typo", sidecar="sandbox/proxy:1.0")
    with pytest.raises(
        ConfigError, match="container 'ap' is not in Deployment 'typo'.*containers: app, sidecar"
    ):
        k8s.patch_container_image(api, NS, "typo", "ap", "sandbox/app:v2")
    assert images(api, "typo") == {"app": "sandbox/app:v1", "sidecar": "sandbox/proxy:1.0"}


def test_wait_for_rollout_returns_done_for_a_good_image(api: client.ApiClient) -> None:
    create_deployment(api, "good")
    k8s.patch_container_image(api, NS, "good", "app", "sandbox/app:v2")
    seen: list[RolloutStatus] = []
    status = k8s.wait_for_rollout(api, NS, "good", on_poll=seen.append, **WAIT)
    assert status == RolloutStatus(True, False, 'deployment "good" successfully rolled out')
    assert seen[-1] == status
    assert k8s.current_revision(k8s.read_deployment(api, NS, "good")) == 2


def test_never_ready_image_fails_on_the_progress_deadline_naming_the_pods(api: client.ApiClient) -> None:
    create_deployment(api, "stuck", progress_deadline=2)
    k8s.patch_container_image(api, NS, "stuck", "app", "sandbox/app:never-ready")
    with pytest.raises(CheckFailed, match="ProgressDeadlineExceeded") as exc:
        k8s.wait_for_rollout(api, NS, "stuck", **WAIT)
    assert "exceeded its progress deadline" in str(exc.value)
    assert "container 'app' running but not ready" in str(exc.value)


def test_crash_looping_image_fails_naming_crash_loop_back_off(api: client.ApiClient) -> None:
    create_deployment(api, "crashy", progress_deadline=2)
    k8s.patch_container_image(api, NS, "crashy", "app", "sandbox/app:bad-crash")
    with pytest.raises(
        CheckFailed, match=r"container 'app' CrashLoopBackOff \(\d+ restarts, last exit code 1\)"
    ):
        k8s.wait_for_rollout(api, NS, "crashy", **WAIT)


def test_wait_for_rollout_gives_up_after_its_timeout(api: client.ApiClient) -> None:
    create_deployment(api, "slow")
    k8s.patch_container_image(api, NS, "slow", "app", "sandbox/app:bad-pull")
    with pytest.raises(
        CheckFailed, match=r"did not finish rolling out within 0.5s: .*(ImagePullBackOff|ErrImagePull)"
    ):
        k8s.wait_for_rollout(api, NS, "slow", timeout_s=0.5, poll_s=0.05)


# --- undo --------------------------------------------------------------------------------------------


def test_undo_goes_back_to_the_previous_image(api: client.ApiClient) -> None:
    create_deployment(api, "back")
    set_image(api, "back", "sandbox/app:v2")
    info = k8s.undo_rollout(api, NS, "back")
    assert info == {
        "deployment": "back",
        "from_revision": 2,
        "to_revision": 1,
        "image": "sandbox/app:v1",
        "images": {"app": "sandbox/app:v1"},
        "skipped": False,
    }
    k8s.wait_for_rollout(api, NS, "back", **WAIT)
    dep = k8s.read_deployment(api, NS, "back")
    assert (k8s.container_image(dep, "app"), k8s.current_revision(dep)) == ("sandbox/app:v1", 3)


def test_undo_to_a_given_revision(api: client.ApiClient) -> None:
    create_deployment(api, "hist")
    set_image(api, "hist", "sandbox/app:v2")
    set_image(api, "hist", "sandbox/app:v3")
    info = k8s.undo_rollout(api, NS, "hist", to_revision=1)
    assert (info["from_revision"], info["to_revision"], info["image"]) == (3, 1, "sandbox/app:v1")
    k8s.wait_for_rollout(api, NS, "hist", **WAIT)
    assert images(api, "hist") == {"app": "sandbox/app:v1"}


def test_undo_to_the_current_revision_is_skipped(api: client.ApiClient) -> None:
    create_deployment(api, "same")
    set_image(api, "same", "sandbox/app:v2")
    assert k8s.undo_rollout(api, NS, "same", to_revision=2)["skipped"] is True
    assert k8s.current_revision(k8s.read_deployment(api, NS, "same")) == 2


def test_undo_without_history_is_refused(api: client.ApiClient) -> None:
    create_deployment(api, "fresh")
    with pytest.raises(PermanentError, match=r"'fresh' has no rollout history to undo to: revisions: 1"):
        k8s.undo_rollout(api, NS, "fresh")


# --- scale, restart, autoscale ----------------------------------------------------------------------


def test_scale_returns_the_replicas_before(api: client.ApiClient) -> None:
    create_deployment(api, "sized", replicas=2)
    assert k8s.scale(api, NS, "sized", 4) == 2
    k8s.wait_for_rollout(api, NS, "sized", **WAIT)
    dep = k8s.read_deployment(api, NS, "sized")
    assert (dep["spec"]["replicas"], dep["status"]["availableReplicas"], k8s.current_revision(dep)) == (
        4,
        4,
        1,
    )


def test_restart_rolls_out_new_pods_with_the_same_image(api: client.ApiClient) -> None:
    create_deployment(api, "again")
    stamp = k8s.restart(api, NS, "again")
    k8s.wait_for_rollout(api, NS, "again", **WAIT)
    dep = k8s.read_deployment(api, NS, "again")
    assert dep["spec"]["template"]["metadata"]["annotations"] == {"kubectl.kubernetes.io/restartedAt": stamp}
    assert (k8s.container_image(dep, "app"), k8s.current_revision(dep)) == ("sandbox/app:v1", 2)


def test_set_autoscaler_creates_then_replaces_the_hpa(api: client.ApiClient) -> None:
    create_deployment(api, "auto")
    first = k8s.set_autoscaler(api, NS, "auto", 2, 5, 70)
    second = k8s.set_autoscaler(api, NS, "auto", 3, 6, 60)
    assert first["metadata"]["uid"] == second["metadata"]["uid"]
    assert second["apiVersion"] == "autoscaling/v2"
    assert second["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "auto"}
    assert (second["spec"]["minReplicas"], second["spec"]["maxReplicas"]) == (3, 6)
    assert second["spec"]["metrics"][0]["resource"]["target"] == {
        "type": "Utilization",
        "averageUtilization": 60,
    }


# --- blue-green -------------------------------------------------------------------------------------


def test_blue_green_switches_the_service_to_the_new_colour(api: client.ApiClient) -> None:
    create_deployment(api, "shop", replicas=1)
    client.CoreV1Api(api).create_namespaced_service(
        NS,
        {
            "metadata": {"name": "shop"},
            "spec": {
                "selector": {"app": "shop", "colour": "blue"},
                "ports": [{"port": 80, "targetPort": 8080}],
            },
        },
    )
    k8s.ensure_colour_deployment(api, NS, "shop", "blue", "sandbox/app:v1", "app", 2)
    green = k8s.ensure_colour_deployment(api, NS, "shop", "green", "sandbox/app:v2", "app", 2)
    assert green["spec"]["selector"] == {"matchLabels": {"app": "shop", "colour": "green"}}
    assert green["spec"]["template"]["metadata"]["labels"] == {"app": "shop", "colour": "green"}
    k8s.wait_available(api, NS, "shop-green", **WAIT)

    assert k8s.set_service_selector(api, NS, "shop", {"app": "shop", "colour": "green"}) == {
        "previous": {"app": "shop", "colour": "blue"}
    }
    assert k8s.service_selector(api, NS, "shop") == {"app": "shop", "colour": "green"}
    pods = client.CoreV1Api(api).list_namespaced_pod(NS, label_selector="app=shop,colour=green").items
    assert {p.spec.containers[0].image for p in pods} == {"sandbox/app:v2"}


def test_colour_deployment_can_copy_the_live_colour_instead_of_the_base(api: client.ApiClient) -> None:
    create_deployment(api, "menu", replicas=1)
    k8s.ensure_colour_deployment(api, NS, "menu", "blue", "sandbox/app:v1", "app", 1)
    client.AppsV1Api(api).patch_namespaced_deployment(
        "menu-blue", NS, {"spec": {"template": {"metadata": {"annotations": {"tuned": "live"}}}}}
    )
    green = k8s.ensure_colour_deployment(
        api, NS, "menu", "green", "sandbox/app:v2", "app", 1, template_from="menu-blue"
    )
    assert green["metadata"]["name"] == "menu-green"
    assert green["spec"]["selector"] == {"matchLabels": {"app": "menu", "colour": "green"}}
    assert green["spec"]["template"]["metadata"] == {
        "labels": {"app": "menu", "colour": "green"},
        "annotations": {"tuned": "live"},
    }
    assert k8s.container_image(green, "app") == "sandbox/app:v2"


def interfering_reads(monkeypatch: pytest.MonkeyPatch, api: client.ApiClient, times: int) -> list[str]:
    """Someone else edits the Service between our first `times` reads and our writes."""
    real_read = client.CoreV1Api.read_namespaced_service
    reads: list[str] = []

    def read(self: client.CoreV1Api, name: str, namespace: str, **kw: Any) -> Any:
        svc = real_read(self, name, namespace, **kw)
        reads.append(name)
        if len(reads) <= times:
            client.CoreV1Api(api).patch_namespaced_service(
                name, namespace, {"metadata": {"labels": {"edited": str(len(reads))}}}
            )
        return svc

    monkeypatch.setattr(client.CoreV1Api, "read_namespaced_service", read)
    return reads


def create_service(api: client.ApiClient, name: str, selector: dict[str, str]) -> None:
    client.CoreV1Api(api).create_namespaced_service(
        NS, {"metadata": {"name": name}, "spec": {"selector": selector, "ports": [{"port": 80}]}}
    )


def test_selector_switch_reads_again_after_a_conflict(
    api: client.ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_service(api, "busy", {"app": "busy", "colour": "blue"})
    reads = interfering_reads(monkeypatch, api, times=1)
    previous = k8s.set_service_selector(api, NS, "busy", {"app": "busy", "colour": "green"})
    assert (previous, len(reads)) == ({"previous": {"app": "busy", "colour": "blue"}}, 2)
    monkeypatch.undo()
    assert k8s.service_selector(api, NS, "busy") == {"app": "busy", "colour": "green"}


def test_selector_switch_gives_up_on_endless_conflicts_as_transient(
    api: client.ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_service(api, "contested", {"app": "contested"})
    reads = interfering_reads(monkeypatch, api, times=100)
    with pytest.raises(TransientError, match="Service 'contested' in namespace 'default': HTTP 409"):
        k8s.set_service_selector(api, NS, "contested", {"app": "contested", "colour": "green"})
    assert len(reads) == k8s.CONFLICT_ATTEMPTS


def test_ensure_colour_deployment_updates_an_existing_one(api: client.ApiClient) -> None:
    create_deployment(api, "cart", replicas=1)
    first = k8s.ensure_colour_deployment(api, NS, "cart", "green", "sandbox/app:v2", "app", 1)
    again = k8s.ensure_colour_deployment(api, NS, "cart", "green", "sandbox/app:v3", "app", 2)
    assert again["metadata"]["uid"] == first["metadata"]["uid"]
    dep = k8s.wait_available(api, NS, "cart-green", **WAIT)
    assert (k8s.container_image(dep, "app"), dep["status"]["availableReplicas"]) == ("sandbox/app:v3", 2)


# --- jobs ---------------------------------------------------------------------------------------------


def test_run_job_success_returns_exit_code_0_and_logs_and_deletes_the_job(api: client.ApiClient) -> None:
    result = k8s.run_job(
        api, NS, "migrate-ok", "sandbox/migrate:v2", ["migrate", "up"], timeout_s=10, poll_s=0.05
    )
    assert (result.succeeded, result.exit_code, result.reason) == (True, 0, "CompletionsReached")
    assert "starting sandbox/migrate:v2" in result.logs
    assert client.BatchV1Api(api).list_namespaced_job(NS, label_selector="job-name=migrate-ok").items == []


def test_run_job_failure_returns_the_exit_code_and_logs(api: client.ApiClient) -> None:
    result = k8s.run_job(
        api, NS, "migrate-bad", "sandbox/migrate:bad", ["migrate", "up"], timeout_s=10, poll_s=0.05
    )
    assert (result.succeeded, result.exit_code, result.reason) == (False, 3, "BackoffLimitExceeded")
    assert "relation users already exists" in result.logs


def test_run_job_that_cannot_start_times_out_and_is_deleted(api: client.ApiClient) -> None:
    with pytest.raises(
        CheckFailed,
        match="Job 'migrate-pull' .* did not finish within 0.5s: .*(ErrImagePull|ImagePullBackOff)",
    ):
        k8s.run_job(
            api, NS, "migrate-pull", "sandbox/migrate:bad-pull", ["migrate"], timeout_s=0.5, poll_s=0.05
        )
    assert "migrate-pull" not in [
        j.metadata.name for j in client.BatchV1Api(api).list_namespaced_job(NS).items
    ]


# --- errors ---------------------------------------------------------------------------------------------


def test_unknown_deployment_is_a_permanent_error_naming_it(api: client.ApiClient) -> None:
    with pytest.raises(PermanentError, match=r"read Deployment 'nope' in namespace 'default': HTTP 404"):
        k8s.read_deployment(api, NS, "nope")


def test_unreachable_api_is_a_transient_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the socket closes
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig(f"http://127.0.0.1:{port}", None)))
    with k8s.api_client(KubernetesConfig(kubeconfig=str(path))) as api:
        with pytest.raises(
            TransientError, match="'web' in namespace 'default': cannot reach the Kubernetes API"
        ):
            k8s.read_deployment(api, NS, "web")


def test_missing_kubeconfig_context_is_a_config_error(cfg: KubernetesConfig) -> None:
    with pytest.raises(ConfigError, match="context 'prod'"):
        with k8s.api_client(KubernetesConfig(kubeconfig=cfg.kubeconfig, context="prod")):
            pass


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, TransientError),
        (503, TransientError),
        (429, TransientError),
        (409, TransientError),
        (400, PermanentError),
        (403, PermanentError),
        (404, PermanentError),
        (422, PermanentError),
    ],
)
def test_api_errors_are_classified_by_status(status: int, expected: type[Exception]) -> None:
    err = k8s.api_error(client.ApiException(status=status, reason="X"), "patch", "Deployment", "prod", "web")
    assert type(err) is expected
    assert str(err).startswith(f"patch Deployment 'web' in namespace 'prod': HTTP {status}")
