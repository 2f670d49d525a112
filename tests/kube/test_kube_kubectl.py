"""The oracle: the real kubectl against the fake, asserting what a real cluster answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

Kubectl = Callable[..., Any]


@pytest.fixture
def apply(kubectl: Kubectl, deployment_manifest: Callable[..., dict[str, Any]]) -> Callable[..., None]:
    def run(name: str = "web", **kwargs: Any) -> None:
        kubectl("apply", "-f", "-", stdin=json.dumps(deployment_manifest(name, **kwargs)))

    return run


def _deployment(kubectl: Kubectl, name: str = "web") -> dict[str, Any]:
    return json.loads(kubectl("get", "deployment", name, "-o", "json").stdout)


def _image(kubectl: Kubectl) -> str:
    return _deployment(kubectl)["spec"]["template"]["spec"]["containers"][0]["image"]


def _history(kubectl: Kubectl) -> list[int]:
    out = kubectl("rollout", "history", "deployment/web").stdout
    lines = out.strip().splitlines()
    assert lines[1].split() == ["REVISION", "CHANGE-CAUSE"], out
    return [int(line.split()[0]) for line in lines[2:]]


def _rollout(kubectl: Kubectl) -> None:
    out = kubectl("rollout", "status", "deployment/web", "--timeout=20s").stdout
    assert out.strip().endswith('deployment "web" successfully rolled out'), out


def test_apply_then_set_image_rolls_out_revision_2(kubectl: Kubectl, apply: Callable[..., None]) -> None:
    apply(sidecar="sandbox/proxy:1.0")
    _rollout(kubectl)
    kubectl("set", "image", "deployment/web", "app=sandbox/app:v2")
    _rollout(kubectl)
    d = _deployment(kubectl)
    assert [c["image"] for c in d["spec"]["template"]["spec"]["containers"]] == [
        "sandbox/app:v2",
        "sandbox/proxy:1.0",
    ]
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert (d["status"]["replicas"], d["status"]["updatedReplicas"], d["status"]["availableReplicas"]) == (
        3,
        3,
        3,
    )
    assert d["status"]["observedGeneration"] == d["metadata"]["generation"] == 2
    pods = json.loads(kubectl("get", "pods", "-l", "app=web", "-o", "json").stdout)["items"]
    assert sorted(p["spec"]["containers"][0]["image"] for p in pods) == ["sandbox/app:v2"] * 3


def test_rollout_history_and_undo_renumber_revisions_like_kubernetes(
    kubectl: Kubectl, apply: Callable[..., None]
) -> None:
    apply()
    _rollout(kubectl)
    for image in ("sandbox/app:v2", "sandbox/app:v3"):
        kubectl("set", "image", "deployment/web", f"app={image}")
        _rollout(kubectl)
    assert _history(kubectl) == [1, 2, 3]
    assert "rolled back" in kubectl("rollout", "undo", "deployment/web").stdout
    _rollout(kubectl)
    assert (_image(kubectl), _history(kubectl)) == ("sandbox/app:v2", [1, 3, 4]), (
        "undo re-uses revision 2's ReplicaSet as revision 4"
    )
    kubectl("rollout", "undo", "deployment/web", "--to-revision=1")
    _rollout(kubectl)
    assert (_image(kubectl), _history(kubectl)) == ("sandbox/app:v1", [3, 4, 5])
    detail = kubectl("rollout", "history", "deployment/web", "--revision=3").stdout
    assert "sandbox/app:v3" in detail


def test_rollout_history_shows_the_change_cause(kubectl: Kubectl, apply: Callable[..., None]) -> None:
    apply()
    _rollout(kubectl)
    kubectl("set", "image", "deployment/web", "app=sandbox/app:v2")
    kubectl("annotate", "deployment/web", "kubernetes.io/change-cause=deploy v2")
    _rollout(kubectl)
    out = kubectl("rollout", "history", "deployment/web").stdout
    assert [line.split(None, 1) for line in out.strip().splitlines()[2:]] == [
        ["1", "<none>"],
        ["2", "deploy v2"],
    ]


def test_undo_without_history_is_refused(kubectl: Kubectl, apply: Callable[..., None]) -> None:
    apply()
    _rollout(kubectl)
    proc = kubectl("rollout", "undo", "deployment/web", check=False)
    assert proc.returncode == 1 and 'no rollout history found for deployment "web"' in proc.stderr


def test_undo_of_a_paused_deployment_is_refused(kubectl: Kubectl, apply: Callable[..., None]) -> None:
    apply()
    _rollout(kubectl)
    kubectl("set", "image", "deployment/web", "app=sandbox/app:v2")
    _rollout(kubectl)
    kubectl("rollout", "pause", "deployment/web")
    proc = kubectl("rollout", "undo", "deployment/web", check=False)
    assert proc.returncode == 1 and "you cannot rollback a paused deployment" in proc.stderr
    kubectl("rollout", "resume", "deployment/web")
    _rollout(kubectl)


def test_rollout_restart_makes_a_new_revision_with_the_same_image(
    kubectl: Kubectl, apply: Callable[..., None]
) -> None:
    apply()
    _rollout(kubectl)
    assert "restarted" in kubectl("rollout", "restart", "deployment/web").stdout
    _rollout(kubectl)
    d = _deployment(kubectl)
    assert "kubectl.kubernetes.io/restartedAt" in d["spec"]["template"]["metadata"]["annotations"]
    assert (_image(kubectl), _history(kubectl)) == ("sandbox/app:v1", [1, 2])
    pods = json.loads(kubectl("get", "pods", "-l", "app=web", "-o", "json").stdout)["items"]
    assert all("kubectl.kubernetes.io/restartedAt" in p["metadata"]["annotations"] for p in pods)


def test_scale_changes_replicas_without_a_new_revision(kubectl: Kubectl, apply: Callable[..., None]) -> None:
    apply()
    _rollout(kubectl)
    assert "scaled" in kubectl("scale", "deployment/web", "--replicas=5").stdout
    _rollout(kubectl)
    d = _deployment(kubectl)
    assert (d["spec"]["replicas"], d["status"]["availableReplicas"], _history(kubectl)) == (5, 5, [1])
    kubectl("scale", "deployment/web", "--replicas=0")
    _rollout(kubectl)
    assert json.loads(kubectl("get", "pods", "-o", "json").stdout)["items"] == []


def test_rollout_status_fails_when_the_progress_deadline_passes(
    kubectl: Kubectl, apply: Callable[..., None]
) -> None:
    apply(progress_deadline=1)
    _rollout(kubectl)
    kubectl("set", "image", "deployment/web", "app=sandbox/app:never-ready")
    proc = kubectl("rollout", "status", "deployment/web", "--timeout=20s", check=False)
    assert proc.returncode == 1
    assert 'error: deployment "web" exceeded its progress deadline' in proc.stderr
    kubectl("rollout", "undo", "deployment/web")
    _rollout(kubectl)
    assert _image(kubectl) == "sandbox/app:v1"


def test_rollout_status_times_out_on_a_stuck_rollout(kubectl: Kubectl, apply: Callable[..., None]) -> None:
    apply()
    _rollout(kubectl)
    kubectl("set", "image", "deployment/web", "app=sandbox/app:bad-crash")
    proc = kubectl("rollout", "status", "deployment/web", "--timeout=1s", check=False)
    assert proc.returncode == 1 and "timed out waiting for the condition" in proc.stderr


def test_reapply_with_changed_replicas_patches_the_deployment(
    kubectl: Kubectl, apply: Callable[..., None]
) -> None:
    apply(replicas=2)
    _rollout(kubectl)
    apply(replicas=4)
    _rollout(kubectl)
    assert (_deployment(kubectl)["spec"]["replicas"], _history(kubectl)) == (4, [1])


def test_get_prints_tables_and_logs_name_the_image(kubectl: Kubectl, apply: Callable[..., None]) -> None:
    apply(replicas=2)
    _rollout(kubectl)
    table = kubectl("get", "deployments").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert table[1].split()[:4] == ["web", "2/2", "2", "2"]
    pods = kubectl("get", "pods").stdout.splitlines()[1:]
    assert [line.split()[1:4] for line in pods] == [["1/1", "Running", "0"]] * 2
    assert "starting sandbox/app:v1" in kubectl("logs", "deployment/web").stdout


def test_delete_deployment_removes_its_replicasets_and_pods(
    kubectl: Kubectl, apply: Callable[..., None]
) -> None:
    apply()
    _rollout(kubectl)
    kubectl("delete", "deployment", "web")
    assert json.loads(kubectl("get", "replicasets,pods", "-o", "json").stdout)["items"] == []


def test_typed_create_commands_and_autoscale_work(kubectl: Kubectl) -> None:
    # These send protobuf bodies (sandbox/kube/protobuf.py), unlike apply and create -f.
    ns = ("-n", "staging")
    kubectl("create", "namespace", "staging")
    kubectl("create", "deployment", "api", "--image=sandbox/app:v1", "--replicas=2", "--port=8080", *ns)
    kubectl("create", "deployment", "idle", "--image=sandbox/app:v1", "--replicas=0", *ns)
    kubectl("create", "secret", "generic", "db", "--from-literal=password=hunter2", *ns)
    kubectl("create", "job", "migrate", "--image=sandbox/migrate:v1", *ns, "--", "migrate", "up")
    kubectl("autoscale", "deployment", "api", "--min=3", "--max=5", *ns)
    kubectl("wait", "--for=jsonpath={.status.availableReplicas}=3", "deployment/api", "--timeout=20s", *ns)
    kubectl("wait", "--for=condition=complete", "job/migrate", "--timeout=20s", *ns)
    deployments = json.loads(kubectl("get", "deployments", "-o", "json", *ns).stdout)["items"]
    assert {d["metadata"]["name"]: d["spec"]["replicas"] for d in deployments} == {"api": 3, "idle": 0}
    assert deployments[0]["spec"]["template"]["spec"]["containers"][0]["ports"] == [
        {"containerPort": 8080, "protocol": "TCP"}
    ]
    secret = json.loads(kubectl("get", "secret", "db", "-o", "json", *ns).stdout)
    assert secret["data"] == {"password": "aHVudGVyMg=="}
    job = json.loads(kubectl("get", "job", "migrate", "-o", "json", *ns).stdout)
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["migrate", "up"]
