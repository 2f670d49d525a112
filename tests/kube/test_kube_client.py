"""The official Python client (v37, which validates every response) against the fake."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from sandbox.kube.server import KubeServer

Wait = Callable[..., Any]


@pytest.fixture
def web(
    apps: client.AppsV1Api, deployment_manifest: Callable[..., dict[str, Any]], wait_until: Wait
) -> client.V1Deployment:
    """A Deployment `web` with an app and a sidecar container, rolled out."""
    apps.create_namespaced_deployment(
        "default", deployment_manifest("web", sidecar="sandbox/proxy:1.0", replicas=2)
    )
    return wait_until(lambda: _rolled_out(apps.read_namespaced_deployment("web", "default")))


def _rolled_out(d: client.V1Deployment) -> client.V1Deployment | None:
    s = d.status
    done = (
        (s.observed_generation or 0) >= d.metadata.generation
        and (s.updated_replicas or 0) == d.spec.replicas
        and (s.replicas or 0) == (s.updated_replicas or 0)
        and (s.available_replicas or 0) >= (s.updated_replicas or 0)
    )
    return d if done else None


def test_created_deployment_reads_back_complete_and_typed(web: client.V1Deployment) -> None:
    assert web.metadata.uid and web.metadata.resource_version and web.metadata.creation_timestamp
    assert web.metadata.generation == 1
    assert web.spec.strategy.rolling_update.max_surge == "25%"
    assert [c.image for c in web.spec.template.spec.containers] == ["sandbox/app:v1", "sandbox/proxy:1.0"]
    assert {c.type: c.reason for c in web.status.conditions} == {
        "Available": "MinimumReplicasAvailable",
        "Progressing": "NewReplicaSetAvailable",
    }


def test_strategic_merge_patch_changes_one_image_and_keeps_the_sidecar(
    apps: client.AppsV1Api, web: client.V1Deployment
) -> None:
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "sandbox/app:v2"}]}}}}
    patched = apps.patch_namespaced_deployment("web", "default", patch)
    assert [(c.name, c.image) for c in patched.spec.template.spec.containers] == [
        ("app", "sandbox/app:v2"),
        ("sidecar", "sandbox/proxy:1.0"),
    ]
    assert patched.metadata.generation == 2


def test_metadata_only_patch_does_not_bump_generation(
    apps: client.AppsV1Api, web: client.V1Deployment
) -> None:
    patched = apps.patch_namespaced_deployment("web", "default", {"metadata": {"labels": {"team": "ops"}}})
    assert (patched.metadata.generation, patched.metadata.labels["team"]) == (1, "ops")
    assert int(patched.metadata.resource_version) > int(web.metadata.resource_version)


def test_update_with_a_stale_resource_version_is_a_409_conflict(
    apps: client.AppsV1Api, web: client.V1Deployment
) -> None:
    apps.patch_namespaced_deployment("web", "default", {"metadata": {"labels": {"touched": "yes"}}})
    web.spec.replicas = 5
    with pytest.raises(ApiException) as exc:
        apps.replace_namespaced_deployment("web", "default", web)
    assert exc.value.status == 409
    assert '"reason":"Conflict"' in exc.value.body and "the object has been modified" in exc.value.body


def test_missing_object_is_a_404_with_a_status(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_pod("nope", "default")
    assert exc.value.status == 404 and 'pods \\"nope\\" not found' in exc.value.body


def test_creating_in_a_missing_namespace_is_a_404(
    apps: client.AppsV1Api, deployment_manifest: Callable[..., dict[str, Any]]
) -> None:
    with pytest.raises(ApiException) as exc:
        apps.create_namespaced_deployment(
            "staging", deployment_manifest("web") | {"metadata": {"name": "web"}}
        )
    assert exc.value.status == 404 and "namespaces" in exc.value.body


def test_list_with_label_selector(core: client.CoreV1Api, web: client.V1Deployment) -> None:
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "a", "labels": {"tier": "db", "env": "prod"}}, "data": {"k": "v"}}
    )
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "b", "labels": {"tier": "web", "env": "prod"}}}
    )

    def names(selector: str) -> list[str]:
        return [
            cm.metadata.name
            for cm in core.list_namespaced_config_map("default", label_selector=selector).items
        ]

    assert names("env=prod") == ["a", "b"]
    assert names("env=prod,tier notin (web)") == ["a"]
    assert names("!tier") == []
    assert len(core.list_namespaced_pod("default", label_selector="app=web").items) == 2


def test_watch_from_a_resource_version_replays_what_happened_since(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_config_map("default", {"metadata": {"name": "cfg"}, "data": {"v": "1"}})
    core.patch_namespaced_config_map("cfg", "default", {"data": {"v": "2"}})
    core.delete_namespaced_config_map("cfg", "default")
    w = watch.Watch()
    events = []
    for event in w.stream(
        core.list_namespaced_config_map,
        "default",
        resource_version=created.metadata.resource_version,
        timeout_seconds=2,
    ):
        events.append((event["type"], event["object"].metadata.name, (event["object"].data or {}).get("v")))
        if event["type"] == "DELETED":
            w.stop()
    assert events == [("MODIFIED", "cfg", "2"), ("DELETED", "cfg", "2")]


def test_watch_streams_new_events_with_a_label_selector(core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    seen: list[tuple[str, str]] = []
    w = watch.Watch()

    def consume() -> None:
        for event in w.stream(
            core.list_namespaced_config_map,
            "default",
            label_selector="watched=yes",
            resource_version=rv,
            timeout_seconds=5,
        ):
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 3:
                w.stop()

    reader = threading.Thread(target=consume)
    reader.start()
    core.create_namespaced_config_map("default", {"metadata": {"name": "ignored"}})
    core.create_namespaced_config_map("default", {"metadata": {"name": "x", "labels": {"watched": "yes"}}})
    core.patch_namespaced_config_map("x", "default", {"data": {"a": "b"}})
    core.patch_namespaced_config_map("x", "default", {"metadata": {"labels": {"watched": "no"}}})
    reader.join(timeout=10)
    assert seen == [("ADDED", "x"), ("MODIFIED", "x"), ("DELETED", "x")], (
        "leaving the selector reads as DELETED"
    )


def test_scale_subresource(apps: client.AppsV1Api, web: client.V1Deployment, wait_until: Wait) -> None:
    scale = apps.read_namespaced_deployment_scale("web", "default")
    assert (scale.spec.replicas, scale.status.replicas, scale.status.selector) == (2, 2, "app=web")
    apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 4}})
    d = wait_until(
        lambda: (d := apps.read_namespaced_deployment("web", "default")).status.available_replicas == 4 and d
    )
    assert (d.spec.replicas, d.metadata.generation) == (4, 2)
    rs = apps.list_namespaced_replica_set("default").items[0]
    assert apps.read_namespaced_replica_set_scale(rs.metadata.name, "default").spec.replicas == 4


def test_status_subresource_ignores_spec_changes(apps: client.AppsV1Api, web: client.V1Deployment) -> None:
    body = apps.read_namespaced_deployment_status("web", "default")
    body.spec.replicas = 9
    out = apps.replace_namespaced_deployment_status("web", "default", body)
    assert out.spec.replicas == 2


def test_pod_logs_name_the_image(core: client.CoreV1Api, web: client.V1Deployment) -> None:
    pod = core.list_namespaced_pod("default", label_selector="app=web").items[0]
    assert pod.status.phase == "Running" and pod.status.pod_ip
    log = core.read_namespaced_pod_log(pod.metadata.name, "default", container="app")
    assert "starting sandbox/app:v1" in log and "listening on :8080" in log
    assert (
        core.read_namespaced_pod_log(pod.metadata.name, "default", container="app", tail_lines=1).count("\n")
        == 1
    )
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_pod_log(pod.metadata.name, "default")
    assert exc.value.status == 400 and "choose one of: [app sidecar]" in exc.value.body


def test_crash_looping_pod_restarts_and_keeps_its_previous_log(
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    deployment_manifest: Callable[..., dict[str, Any]],
    wait_until: Wait,
) -> None:
    apps.create_namespaced_deployment(
        "default", deployment_manifest("crash", "sandbox/app:bad-crash", replicas=1)
    )
    status = wait_until(
        lambda: (
            (p := core.list_namespaced_pod("default", label_selector="app=crash").items)
            and p[0].status.container_statuses
            and (s := p[0].status.container_statuses[0]).restart_count >= 2
            and s
        )
    )
    assert status.state.waiting.reason == "CrashLoopBackOff" and status.last_state.terminated.exit_code == 1
    assert status.ready is False
    pod = core.list_namespaced_pod("default", label_selector="app=crash").items[0]
    assert "crashed at start" in core.read_namespaced_pod_log(pod.metadata.name, "default", previous=True)


def test_image_pull_failure_keeps_the_pod_pending(
    apps: client.AppsV1Api,
    core: client.CoreV1Api,
    deployment_manifest: Callable[..., dict[str, Any]],
    wait_until: Wait,
) -> None:
    apps.create_namespaced_deployment(
        "default", deployment_manifest("pull", "sandbox/app:bad-pull", replicas=1)
    )
    reason = wait_until(
        lambda: (
            (p := core.list_namespaced_pod("default", label_selector="app=pull").items)
            and p[0].status.container_statuses
            and (w := p[0].status.container_statuses[0].state.waiting)
            and w.reason == "ImagePullBackOff"
            and p[0]
        )
    )
    assert reason.status.phase == "Pending"
    events = core.list_namespaced_event(
        "default", field_selector=f"involvedObject.name={reason.metadata.name}"
    ).items
    assert {"Scheduled", "Failed", "BackOff"} <= {e.reason for e in events}


def _job(name: str, image: str, backoff_limit: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "migrate", "image": image}]}
            },
        },
    }


def _finished(batch: client.BatchV1Api, name: str) -> client.V1Job | None:
    job = batch.read_namespaced_job(name, "default")
    return (
        job
        if any(c.type in ("Complete", "Failed") and c.status == "True" for c in job.status.conditions or [])
        else None
    )


def test_job_that_succeeds_is_complete_with_its_pod_log(
    batch: client.BatchV1Api, core: client.CoreV1Api, wait_until: Wait
) -> None:
    batch.create_namespaced_job("default", _job("migrate", "sandbox/migrate:v2"))
    job = wait_until(lambda: _finished(batch, "migrate"))
    assert [c.type for c in job.status.conditions] == ["SuccessCriteriaMet", "Complete"]
    assert (job.status.succeeded, job.status.failed, job.status.completion_time is not None) == (
        1,
        None,
        True,
    )
    (pod,) = core.list_namespaced_pod("default", label_selector="job-name=migrate").items
    assert pod.status.phase == "Succeeded"
    assert core.read_namespaced_pod_log(pod.metadata.name, "default").endswith("done\n")


def test_job_that_fails_runs_backoff_limit_plus_one_pods_then_fails(
    kube: KubeServer, batch: client.BatchV1Api, core: client.CoreV1Api, wait_until: Wait
) -> None:
    kube.set_image_rules(
        {
            "sandbox/migrate:v3": {
                "job": "fail",
                "exit_code": 3,
                "logs": "ERROR: relation users already exists",
            }
        }
    )
    batch.create_namespaced_job("default", _job("migrate", "sandbox/migrate:v3", backoff_limit=1))
    job = wait_until(lambda: _finished(batch, "migrate"))
    failed = job.status.conditions[-1]
    assert (failed.type, failed.reason, failed.message) == (
        "Failed",
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
    )
    assert job.status.failed == 2
    pod = core.list_namespaced_pod("default", label_selector="job-name=migrate").items[0]
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3
    assert "ERROR: relation users already exists" in core.read_namespaced_pod_log(
        pod.metadata.name, "default"
    )


def test_image_rules_change_at_runtime_over_http(kube: KubeServer) -> None:
    response = httpx.post(f"{kube.url}/sandbox/image-rules", json={"rules": {"sandbox/app:v9": "NeverReady"}})
    assert response.status_code == 200
    assert kube.cluster.rules.for_image("sandbox/app:v9").pod == "NeverReady"
    bad = httpx.post(f"{kube.url}/sandbox/image-rules", json={"rules": {"x": "Explode"}})
    assert bad.status_code == 400 and "unknown outcome 'Explode'" in bad.json()["message"]


def test_other_kinds_read_back_complete(
    core: client.CoreV1Api, api_client: client.ApiClient, web: client.V1Deployment
) -> None:
    svc = core.create_namespaced_service(
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    assert svc.spec.cluster_ip.startswith("10.96.") and svc.spec.ports[0].protocol == "TCP"
    secret = core.create_namespaced_secret(
        "default", {"metadata": {"name": "s"}, "stringData": {"password": "hunter2"}}
    )
    assert (secret.type, secret.data) == ("Opaque", {"password": "aHVudGVyMg=="})
    ingress = client.NetworkingV1Api(api_client).create_namespaced_ingress(
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {
                "rules": [
                    {
                        "host": "web.local",
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {"service": {"name": "web", "port": {"number": 80}}},
                                }
                            ]
                        },
                    }
                ]
            },
        },
    )
    assert ingress.spec.rules[0].http.paths[0].backend.service.name == "web"
    assert [n.metadata.name for n in core.list_namespace().items] == [
        "default",
        "kube-node-lease",
        "kube-public",
        "kube-system",
    ]
    assert core.list_node().items[0].status.node_info.kubelet_version.startswith("v1.37")


def test_autoscaler_keeps_its_target_within_min_and_max(
    api_client: client.ApiClient, apps: client.AppsV1Api, web: client.V1Deployment, wait_until: Wait
) -> None:
    hpa = {
        "metadata": {"name": "web"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 3,
            "maxReplicas": 5,
        },
    }
    autoscaling = client.AutoscalingV2Api(api_client)
    autoscaling.create_namespaced_horizontal_pod_autoscaler("default", hpa)
    wait_until(lambda: apps.read_namespaced_deployment("web", "default").spec.replicas == 3)
    status = wait_until(
        lambda: (
            (
                h := autoscaling.read_namespaced_horizontal_pod_autoscaler("web", "default")
            ).status.current_replicas
            == 3
            and h.status
        )
    )
    assert status.desired_replicas == 3
    v1 = client.AutoscalingV1Api(api_client).read_namespaced_horizontal_pod_autoscaler("web", "default")
    assert (v1.spec.min_replicas, v1.spec.target_cpu_utilization_percentage) == (3, 80)
