"""Rollout decisions as kubectl makes them: rollout status, undo's target and patch, pod failures."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.errors import PermanentError
from tasks.rollout import (
    RolloutStatus,
    colour_of,
    controlled_by,
    ingress_backend,
    label_selector,
    new_replica_set,
    other_colour,
    pick_undo_target,
    pod_failures,
    rollout_status,
    same_template,
    scaled_down,
    selected_colour,
    undo_patch,
    with_backend,
)


def deployment(
    *,
    generation: int = 2,
    observed: int = 2,
    replicas: int | None = 3,
    updated: int = 3,
    total: int = 3,
    available: int = 3,
    progressing: str | None = "NewReplicaSetAvailable",
) -> dict[str, Any]:
    spec: dict[str, Any] = {} if replicas is None else {"replicas": replicas}
    status: dict[str, Any] = {
        "observedGeneration": observed,
        "updatedReplicas": updated,
        "replicas": total,
        "availableReplicas": available,
    }
    if progressing:
        status["conditions"] = [{"type": "Progressing", "status": "True", "reason": progressing}]
    return {"metadata": {"name": "web", "generation": generation}, "spec": spec, "status": status}


WAIT = 'Waiting for deployment "web" rollout to finish: '


@pytest.mark.parametrize(
    ("dep", "expected", "why"),
    [
        (
            deployment(),
            RolloutStatus(True, False, 'deployment "web" successfully rolled out'),
            "all new and available",
        ),
        (
            deployment(generation=3, observed=2),
            RolloutStatus(False, False, "Waiting for deployment spec update to be observed..."),
            "the controller has not seen the change yet: the old status says nothing",
        ),
        (
            deployment(generation=3, observed=2, progressing="ProgressDeadlineExceeded"),
            RolloutStatus(False, False, "Waiting for deployment spec update to be observed..."),
            "a deadline from the previous generation does not fail the new one",
        ),
        (
            deployment(progressing="ProgressDeadlineExceeded", updated=1, available=2),
            RolloutStatus(False, True, 'deployment "web" exceeded its progress deadline'),
            "ProgressDeadlineExceeded fails before the counts are looked at",
        ),
        (
            deployment(updated=1, total=4, available=3, progressing="ReplicaSetUpdated"),
            RolloutStatus(False, False, WAIT + "1 out of 3 new replicas have been updated..."),
            "fewer updated than desired",
        ),
        (
            deployment(updated=3, total=4, available=3),
            RolloutStatus(False, False, WAIT + "1 old replicas are pending termination..."),
            "old replicas still running",
        ),
        (
            deployment(updated=3, total=3, available=2),
            RolloutStatus(False, False, WAIT + "2 of 3 updated replicas are available..."),
            "new replicas not yet available",
        ),
        (
            deployment(replicas=None, updated=1, total=1, available=1),
            RolloutStatus(True, False, 'deployment "web" successfully rolled out'),
            "spec.replicas absent means the API default of 1",
        ),
        (
            deployment(replicas=0, updated=0, total=0, available=0),
            RolloutStatus(True, False, 'deployment "web" successfully rolled out'),
            "scaled to zero is done",
        ),
        (
            deployment(replicas=2, updated=3, total=3, available=3),
            RolloutStatus(True, False, 'deployment "web" successfully rolled out'),
            "kubectl checks updated < desired, so a surplus being scaled down does not wait",
        ),
    ],
)
def test_rollout_status_like_kubectl(dep: dict[str, Any], expected: RolloutStatus, why: str) -> None:
    assert rollout_status(dep) == expected, why


def rs(
    revision: int | str | None, image: str = "app:v1", *, owner: str = "uid-web", **annotations: str
) -> dict[str, Any]:
    notes = dict(annotations)
    if revision is not None:
        notes["deployment.kubernetes.io/revision"] = str(revision)
    return {
        "metadata": {
            "name": f"web-{revision}",
            "annotations": notes,
            "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": owner, "controller": True}],
        },
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "web", "pod-template-hash": f"h{revision}"}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            }
        },
    }


HISTORY = [rs(1, "app:v1"), rs(3, "app:v3"), rs(2, "app:v2")]


@pytest.mark.parametrize(
    ("replica_sets", "to_revision", "expected", "why"),
    [
        (HISTORY, None, 2, "no revision given: the second highest, whatever the list order"),
        (HISTORY, 0, 2, "kubectl's --to-revision=0 means the previous one"),
        (HISTORY, 1, 1, "an explicit revision"),
        (HISTORY, 3, 3, "the current revision can be asked for (undo then skips)"),
        ([rs(5), rs(9)], None, 5, "revisions need not be consecutive: history limits delete old ones"),
        (
            [rs(1), rs("x"), rs(None), rs(2)],
            None,
            1,
            "ReplicaSets without a readable revision are not history",
        ),
    ],
)
def test_pick_undo_target(
    replica_sets: list[dict[str, Any]], to_revision: int | None, expected: int, why: str
) -> None:
    target = pick_undo_target(replica_sets, to_revision, 3)
    assert target["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == str(expected), why


@pytest.mark.parametrize(
    ("replica_sets", "to_revision", "message"),
    [
        ([rs(1)], None, "'web' has no rollout history to undo to: revisions: 1 (current: 3)"),
        ([], None, "revisions: none"),
        (HISTORY, 7, "'web' has no revision 7 in its history; revisions: 1, 2, 3 (current: 3)"),
        (HISTORY, -1, "revision -1 is not a revision"),
    ],
)
def test_pick_undo_target_refuses_with_the_revisions_that_exist(
    replica_sets: list[dict[str, Any]], to_revision: int | None, message: str
) -> None:
    with pytest.raises(PermanentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pick_undo_target(replica_sets, to_revision, 3, name="web")


def test_undo_patch_replaces_the_template_without_the_hash_label() -> None:
    ops = undo_patch(rs(1, "app:v1"), {"metadata": {"annotations": {}}})
    assert ops[0] == {
        "op": "replace",
        "path": "/spec/template",
        "value": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "app:v1"}]},
        },
    }


def test_undo_patch_annotations_follow_kubectl() -> None:
    target = rs(
        1,
        **{
            "kubernetes.io/change-cause": "deploy v1",
            "deployment.kubernetes.io/desired-replicas": "3",
            "deployment.kubernetes.io/max-replicas": "4",
            "team": "payments",
        },
    )
    dep = {
        "metadata": {
            "annotations": {
                "deployment.kubernetes.io/revision": "3",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "kubernetes.io/change-cause": "deploy v3",
                "added-at-v3": "yes",
            }
        }
    }
    assert undo_patch(target, dep)[1] == {
        "op": "replace",
        "path": "/metadata/annotations",
        "value": {
            # the Deployment's own, from kubectl's skip list: revision stays, apply keeps working
            "deployment.kubernetes.io/revision": "3",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
            # the rest as they were at that revision; the ReplicaSet's controller notes stay out
            "kubernetes.io/change-cause": "deploy v1",
            "team": "payments",
        },
    }


def test_undo_patch_does_not_change_the_replicaset() -> None:
    target = rs(1)
    undo_patch(target, {"metadata": {}})
    assert target["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] == "h1"


def test_same_template_ignores_the_hash_label() -> None:
    dep_template = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "app:v1"}]},
    }
    assert same_template(rs(1, "app:v1")["spec"]["template"], dep_template)
    assert not same_template(rs(2, "app:v2")["spec"]["template"], dep_template)


def test_new_replica_set_is_the_one_with_the_deployments_template() -> None:
    dep = {
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "app:v2"}]},
            }
        }
    }
    assert new_replica_set(dep, HISTORY)["metadata"]["name"] == "web-2"  # type: ignore[index]
    assert new_replica_set({"spec": {"template": {}}}, HISTORY) is None


def test_controlled_by_keeps_only_the_owners_objects() -> None:
    objs = [rs(1), rs(2, owner="uid-other"), {"metadata": {"name": "orphan"}}]
    assert [o["metadata"]["name"] for o in controlled_by(objs, "uid-web")] == ["web-1"]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"matchLabels": {"app": "web", "colour": "blue"}}, "app=web,colour=blue"),
        (
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["b", "a"]},
                    {"key": "env", "operator": "NotIn", "values": ["dev"]},
                    {"key": "canary", "operator": "DoesNotExist"},
                    {"key": "team", "operator": "Exists"},
                ],
            },
            "app=web,tier in (a,b),env notin (dev),!canary,team",
        ),
        ({}, ""),
    ],
)
def test_label_selector_text(selector: dict[str, Any], expected: str) -> None:
    assert label_selector(selector) == expected


def pod(
    name: str, *containers: dict[str, Any], ready: bool = False, phase: str = "Running"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": list(containers),
        },
    }


def waiting(reason: str, message: str | None = None, **extra: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"reason": reason}
    if message:
        state["message"] = message
    return {"name": "app", "ready": False, "state": {"waiting": state}, **extra}


@pytest.mark.parametrize(
    ("p", "expected", "why"),
    [
        (
            pod(
                "web-1",
                waiting(
                    "CrashLoopBackOff",
                    "back-off 10s",
                    restartCount=4,
                    lastState={"terminated": {"exitCode": 1, "reason": "Error"}},
                ),
            ),
            ["pod 'web-1': container 'app' CrashLoopBackOff (4 restarts, last exit code 1)"],
            "a crash loop: restarts and the last exit code",
        ),
        (
            pod("web-2", waiting("ImagePullBackOff", 'Back-off pulling image "app:nope"'), phase="Pending"),
            ["pod 'web-2': container 'app' ImagePullBackOff: Back-off pulling image \"app:nope\""],
            "a pull failure with the kubelet's message",
        ),
        (
            pod("web-3", waiting("ErrImagePull", "not found"), phase="Pending"),
            ["pod 'web-3': container 'app' ErrImagePull: not found"],
            "the first pull failure",
        ),
        (
            pod("web-4", {"name": "app", "ready": False, "state": {"running": {}}}),
            ["pod 'web-4': container 'app' running but not ready"],
            "readiness never passes",
        ),
        (
            pod("web-5", {"name": "app", "ready": True, "state": {"running": {}}}, ready=True),
            [],
            "a ready pod says nothing",
        ),
        (
            pod("web-6", waiting("ContainerCreating"), phase="Pending"),
            ["pod 'web-6': container 'app' not ready (waiting: ContainerCreating)"],
            "still starting",
        ),
        (
            {
                "metadata": {"name": "web-7"},
                "status": {
                    "phase": "Pending",
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": "0/3 nodes",
                        }
                    ],
                },
            },
            ["pod 'web-7': not scheduled: Unschedulable: 0/3 nodes"],
            "no node for it",
        ),
        (
            pod(
                "web-8",
                {
                    "name": "app",
                    "ready": False,
                    "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                },
            ),
            ["pod 'web-8': container 'app' terminated: OOMKilled (exit code 137)"],
            "killed for memory",
        ),
    ],
)
def test_pod_failures(p: dict[str, Any], expected: list[str], why: str) -> None:
    assert pod_failures([p]) == expected, why


# --- scaling to 0 ----------------------------------------------------------------------------------


def _dep(spec: int, generation: int, observed: int, replicas: int | None) -> dict[str, Any]:
    status = {"observedGeneration": observed} | ({} if replicas is None else {"replicas": replicas})
    return {"metadata": {"generation": generation}, "spec": {"replicas": spec}, "status": status}


@pytest.mark.parametrize(("dep", "done"), [
    (_dep(0, 2, 2, None), True),
    (_dep(0, 2, 2, 0), True),
    (_dep(0, 2, 2, 3), False),  # seen, but pods still run: kubectl rollout status would say done here
    (_dep(0, 2, 1, None), False),  # the controller has not seen replicas 0 yet
    (_dep(3, 2, 2, None), False),  # scaled up again by someone else
], ids=["no-pods", "zero-pods", "pods-left", "not-observed", "not-scaled-to-0"])
def test_scaled_down_waits_for_the_pods_to_go(dep: dict[str, Any], done: bool) -> None:
    assert scaled_down(dep) is done


# --- blue-green ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("live", "new"), [
    ("blue", "green"),
    ("green", "blue"),
    ("", "blue"),  # a first blue-green deploy with nothing live yet fills blue
], ids=["blue-live", "green-live", "none-live"])
def test_a_deploy_fills_the_idle_colour(live: str, new: str) -> None:
    assert other_colour(live) == new


@pytest.mark.parametrize(("base", "name", "colour"), [
    ("web", "web-green", "green"),
    ("web", "web", None),  # the base itself has no colour: live detection must fail, not guess
    ("web", "webshop-blue", None),  # another app's Service that merely starts alike
    ("web", "web-", None),
], ids=["colour", "bare-base", "other-prefix", "empty-colour"])
def test_the_colour_of_a_name(base: str, name: str, colour: str | None) -> None:
    assert colour_of(base, name) == colour


def test_a_selector_without_a_colour_selects_none() -> None:
    assert selected_colour({"app": "web", "colour": "blue"}) == "blue"
    assert selected_colour({"app": "web"}) is None


def _ingress(default: str | None, *paths: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"rules": [{"host": "admin.example.com", "http": {"paths": [
        {"path": f"/{i}", "pathType": "Prefix", "backend": {"service": {"name": p, "port": {"number": 80}}}}
        for i, p in enumerate(paths)]}}]}
    if default:
        spec["defaultBackend"] = {"service": {"name": default, "port": {"number": 80}}}
    return {"metadata": {"name": "admin"}, "spec": spec}


@pytest.mark.parametrize(("ingress", "backend"), [
    (_ingress(None, "admin-blue"), "admin-blue"),
    (_ingress("admin-green", "admin-blue"), "admin-green"),  # the default backend is where unmatched traffic goes
    (_ingress(None), None),  # an Ingress with no backend cannot tell the live colour
    ({"metadata": {}, "spec": {"rules": [{"host": "x"}]}}, None),  # a rule without http paths
], ids=["first-path", "default-first", "none", "no-http"])
def test_the_service_an_ingress_routes_to(ingress: dict[str, Any], backend: str | None) -> None:
    assert ingress_backend(ingress) == backend


def test_switching_an_ingress_rewrites_every_backend_of_the_old_colour_only() -> None:
    ing = _ingress("admin-blue", "admin-blue", "docs")
    switched = with_backend(ing, "admin-blue", "admin-green")
    paths = switched["spec"]["rules"][0]["http"]["paths"]
    assert switched["spec"]["defaultBackend"]["service"]["name"] == "admin-green"
    assert [p["backend"]["service"]["name"] for p in paths] == ["admin-green", "docs"]  # docs is not ours
    assert paths[0]["backend"]["service"]["port"] == {"number": 80}  # the port is kept
    assert ing["spec"]["defaultBackend"]["service"]["name"] == "admin-blue"  # the original is not changed
