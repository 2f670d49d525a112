"""The fake cluster's controllers, driven pass by pass on a made-up clock (no threads, no
HTTP): rollouts must step within maxSurge/maxUnavailable and end with the conditions,
revisions and ReplicaSets a real cluster shows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sandbox.kube import clock, resources
from sandbox.kube.cluster import Cluster
from sandbox.kube.store import Change

DEPLOY = resources.storage_resource("Deployment")
RS = resources.storage_resource("ReplicaSet")
PODS = resources.storage_resource("Pod")
SMP = "application/strategic-merge-patch+json"


class Sim:
    """A cluster stepped by hand: each `step` is one controller pass, `dt` seconds later."""

    def __init__(self, deployment_manifest: Callable[..., dict[str, Any]], **options: Any) -> None:
        self.cluster = Cluster(ready_delay=0.1, **options)
        self.registry = self.cluster.registry
        self.now = clock.now()
        self.manifest = deployment_manifest

    def step(self, n: int = 1, dt: float = 0.05) -> None:
        for _ in range(n):
            self.now += dt
            self.cluster.run_once(self.now)

    def settle(self, max_steps: int = 400) -> None:
        """Step until the deployment's rollout is complete (status as kubectl checks it)."""
        for _ in range(max_steps):
            self.step()
            d = self.deployment()
            s = d.get("status") or {}
            if (
                s.get("observedGeneration", 0) >= d["metadata"]["generation"]
                and s.get("updatedReplicas", 0) == d["spec"]["replicas"]
                and s.get("replicas", 0) == s.get("updatedReplicas")
                and s.get("availableReplicas", 0) >= s.get("updatedReplicas", 0)
            ):
                return
        raise AssertionError(f"rollout did not finish: {self.deployment()['status']}")

    def create(self, name: str = "web", **kwargs: Any) -> None:
        self.registry.create(DEPLOY, "default", self.manifest(name, **kwargs))

    def set_image(self, image: str, name: str = "web") -> None:
        patch = {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}}
        self.registry.patch(DEPLOY, "default", name, SMP, patch)

    def deployment(self, name: str = "web") -> dict[str, Any]:
        return self.registry.get(DEPLOY, "default", name)

    def replicasets(self) -> list[dict[str, Any]]:
        return self.registry.list(RS, "default")["items"]

    def revisions(self) -> dict[str, str]:
        """image -> revision, as `kubectl rollout history` would list them."""
        return {
            rs["spec"]["template"]["spec"]["containers"][0]["image"]: rs["metadata"]["annotations"][
                "deployment.kubernetes.io/revision"
            ]
            for rs in self.replicasets()
        }

    def pods(self) -> list[dict[str, Any]]:
        return self.registry.list(PODS, "default")["items"]


@pytest.fixture
def sim(deployment_manifest: Callable[..., dict[str, Any]]) -> Sim:
    return Sim(deployment_manifest)


def _progressing(d: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in d["status"]["conditions"] if c["type"] == "Progressing")


@pytest.mark.parametrize(
    ("replicas", "surge", "unavailable", "max_pods", "min_ready"),
    [
        (4, 1, 0, 5, 4),
        (4, 0, 1, 4, 3),
        (6, "50%", "50%", 9, 3),
        (3, "25%", "25%", 4, 3),
    ],
)
def test_rolling_update_never_exceeds_max_surge_nor_drops_below_max_unavailable(
    sim: Sim, replicas: int, surge: Any, unavailable: Any, max_pods: int, min_ready: int
) -> None:
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}
    sim.create(replicas=replicas, strategy=strategy)
    sim.settle()
    seen: list[tuple[int, int]] = []

    def check(change: Change) -> None:
        if change.key not in ("pods", "replicasets.apps"):
            return
        spec_total = sum(rs["spec"]["replicas"] for rs in sim.registry.list(RS, "default")["items"])
        ready = sum(
            1
            for p in sim.registry.list(PODS, "default")["items"]
            if any(
                c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or []
            )
        )
        seen.append((spec_total, ready))

    sim.cluster.store.subscribe(check, None)
    sim.set_image("sandbox/app:v2")
    sim.settle()
    assert max(total for total, _ in seen) == max_pods, "the surge is used, and never exceeded"
    assert min(ready for _, ready in seen) >= min_ready, (
        "availability never drops below replicas - maxUnavailable"
    )
    assert [p["spec"]["containers"][0]["image"] for p in sim.pods()] == ["sandbox/app:v2"] * replicas


def test_recreate_removes_every_old_pod_before_the_first_new_one(sim: Sim) -> None:
    sim.create(replicas=3, strategy={"type": "Recreate"})
    sim.settle()
    mixed: list[set[str]] = []

    def check(change: Change) -> None:
        if change.key == "pods":
            images = {
                p["spec"]["containers"][0]["image"] for p in sim.registry.list(PODS, "default")["items"]
            }
            mixed.append(images)

    sim.cluster.store.subscribe(check, None)
    sim.set_image("sandbox/app:v2")
    sim.settle()
    assert not any(len(images) > 1 for images in mixed)
    assert set() in mixed, "there is a moment with no pod at all"


def test_stalled_rollout_gets_progress_deadline_exceeded(sim: Sim) -> None:
    sim.create(replicas=2)
    sim.settle()
    sim.set_image("sandbox/app:never-ready")
    sim.step(10)
    assert _progressing(sim.deployment())["reason"] == "ReplicaSetUpdated"
    sim.step(1, dt=601)  # progressDeadlineSeconds defaults to 600
    d = sim.deployment()
    cond = _progressing(d)
    assert (cond["status"], cond["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert cond["message"].endswith("has timed out progressing.")
    available = next(c for c in d["status"]["conditions"] if c["type"] == "Available")
    assert available["status"] == "True", "the old pods still serve"
    assert (d["status"]["updatedReplicas"], d["status"]["availableReplicas"]) == (1, 2)


def test_completed_rollout_has_new_replicaset_available(sim: Sim) -> None:
    sim.create(replicas=2)
    sim.settle()
    d = sim.deployment()
    assert (_progressing(d)["reason"], d["status"]["observedGeneration"]) == ("NewReplicaSetAvailable", 1)
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    (rs,) = sim.replicasets()
    template_hash = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["metadata"]["name"] == f"web-{template_hash}"
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": template_hash}
    assert rs["metadata"]["ownerReferences"][0]["uid"] == d["metadata"]["uid"]


def test_going_back_to_an_old_template_reuses_its_replicaset_with_a_new_revision(sim: Sim) -> None:
    sim.create(replicas=2)
    sim.settle()
    sim.set_image("sandbox/app:v2")
    sim.settle()
    sim.set_image("sandbox/app:v1")
    sim.settle()
    assert sim.revisions() == {"sandbox/app:v1": "3", "sandbox/app:v2": "2"}
    reused = next(rs for rs in sim.replicasets() if rs["spec"]["replicas"] == 2)
    assert reused["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "1"
    assert sim.deployment()["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"


def test_restarted_at_annotation_rolls_out_a_new_replicaset(sim: Sim) -> None:
    sim.create(replicas=2)
    sim.settle()
    patch = {
        "spec": {
            "template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": clock.rfc3339()}}}
        }
    }
    sim.registry.patch(DEPLOY, "default", "web", SMP, patch)
    sim.settle()
    assert len(sim.replicasets()) == 2
    assert all(p["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] for p in sim.pods())


def test_paused_deployment_does_not_roll_out_until_resumed(sim: Sim) -> None:
    sim.create(replicas=2)
    sim.settle()
    sim.registry.patch(DEPLOY, "default", "web", SMP, {"spec": {"paused": True}})
    sim.set_image("sandbox/app:v2")
    sim.step(10)
    assert len(sim.replicasets()) == 1
    assert _progressing(sim.deployment())["reason"] == "DeploymentPaused"
    sim.registry.patch(DEPLOY, "default", "web", SMP, {"spec": {"paused": None}})
    sim.settle()
    assert {p["spec"]["containers"][0]["image"] for p in sim.pods()} == {"sandbox/app:v2"}


def test_scale_to_zero_and_back(sim: Sim) -> None:
    sim.create(replicas=3)
    sim.settle()
    sim.registry.patch(DEPLOY, "default", "web", SMP, {"spec": {"replicas": 0}})
    sim.settle()
    assert sim.pods() == [] and sim.deployment()["status"]["replicas"] == 0
    sim.registry.patch(DEPLOY, "default", "web", SMP, {"spec": {"replicas": 2}})
    sim.settle()
    assert len(sim.pods()) == 2 and len(sim.replicasets()) == 1


def test_revision_history_limit_deletes_the_oldest_scaled_down_replicasets(
    sim: Sim, deployment_manifest: Callable[..., dict[str, Any]]
) -> None:
    manifest = deployment_manifest("web", replicas=1)
    manifest["spec"]["revisionHistoryLimit"] = 1
    sim.registry.create(DEPLOY, "default", manifest)
    for image in ("sandbox/app:v2", "sandbox/app:v3", "sandbox/app:v4"):
        sim.settle()
        sim.set_image(image)
    sim.settle()
    sim.step(2)
    assert sim.revisions() == {"sandbox/app:v3": "3", "sandbox/app:v4": "4"}


@pytest.mark.parametrize(("propagation", "left"), [("Background", 0), ("Orphan", 2)])
def test_deleting_a_deployment_collects_its_replicasets_and_pods(
    sim: Sim, propagation: str, left: int
) -> None:
    sim.create(replicas=2)
    sim.settle()
    sim.registry.delete(DEPLOY, "default", "web", propagation=propagation)
    assert len(sim.pods()) == left
    assert len(sim.replicasets()) == (1 if left else 0)
