"""Rollout decisions, as kubectl makes them: pure functions over API objects (plain dicts).

No I/O: `tasks.kubernetes` reads the objects, calls these and acts on the answer.

- `rollout_status`: `kubectl rollout status` for a Deployment (DeploymentStatusViewer in
  kubectl `polymorphichelpers/rollout_status.go`): done, failed or still waiting, with
  kubectl's message.
- `pick_undo_target` and `undo_patch`: `kubectl rollout undo [--to-revision N]`
  (DeploymentRollbacker in kubectl `polymorphichelpers/rollback.go`): which ReplicaSet to
  go back to, and the JSON patch that puts its pod template back on the Deployment.
- `pod_failures`: why pods are not ready, in words for a report.
- `label_selector`, `controlled_by`, `new_replica_set`, `same_template`: the small pieces
  the above need to find a Deployment's ReplicaSets and pods.
- `scaled_down`: a Deployment scaled to 0 has no pod left.
- Blue-green: which colour is live (from the live Service's selector, or the Service an
  Ingress routes to), which colour a deploy fills (`other_colour`), and the Ingress with its
  backend switched (`ingress_backend`, `with_backend`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tasks.errors import PermanentError

REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
TIMED_OUT = "ProgressDeadlineExceeded"
COLOUR_LABEL = "colour"

# Deployment annotations kubectl's undo neither copies from the ReplicaSet nor drops from
# the Deployment (annotationsToSkip in kubectl rollback.go).
UNDO_SKIPPED_ANNOTATIONS = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        "deployment.kubernetes.io/revision-history",
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
        "deprecated.deployment.rollback.to",
    }
)

# Waiting reasons that mean a container will not start without a change (kubelet's).
_STUCK_WAITING = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)

Obj = Mapping[str, Any]


# --- rollout status ----------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutStatus:
    """Where a rollout stands. `failed` is final; `done` means every replica is new and available."""

    done: bool
    failed: bool
    message: str


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def progress_condition(deployment: Obj) -> Mapping[str, Any] | None:
    conditions = (deployment.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Progressing"), None)


def rollout_status(deployment: Obj) -> RolloutStatus:
    """kubectl's DeploymentStatusViewer: the first rule that applies decides.

    1. The controller has not seen the latest spec (generation > observedGeneration): waiting.
    2. The Progressing condition's reason is ProgressDeadlineExceeded: failed.
    3. Fewer updated replicas than spec.replicas: waiting.
    4. Old replicas left (status.replicas > updatedReplicas): waiting.
    5. Fewer available than updated replicas: waiting.
    6. Otherwise done.
    """
    name = _name(deployment)
    generation = (deployment.get("metadata") or {}).get("generation") or 0
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    if generation > (status.get("observedGeneration") or 0):
        return RolloutStatus(False, False, "Waiting for deployment spec update to be observed...")
    cond = progress_condition(deployment)
    if cond is not None and cond.get("reason") == TIMED_OUT:
        return RolloutStatus(False, True, f'deployment "{name}" exceeded its progress deadline')
    # The API server defaults spec.replicas to 1.
    desired = spec.get("replicas", 1)
    updated = status.get("updatedReplicas") or 0
    replicas = status.get("replicas") or 0
    available = status.get("availableReplicas") or 0
    waiting = f'Waiting for deployment "{name}" rollout to finish: '
    if updated < desired:
        return RolloutStatus(
            False, False, f"{waiting}{updated} out of {desired} new replicas have been updated..."
        )
    if replicas > updated:
        return RolloutStatus(
            False, False, f"{waiting}{replicas - updated} old replicas are pending termination..."
        )
    if available < updated:
        return RolloutStatus(
            False, False, f"{waiting}{available} of {updated} updated replicas are available..."
        )
    return RolloutStatus(True, False, f'deployment "{name}" successfully rolled out')


# --- ReplicaSets, revisions, templates ----------------------------------------------------


def revision(obj: Obj) -> int | None:
    """The `deployment.kubernetes.io/revision` annotation as a number; None if absent or bad."""
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(REVISION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def controlled_by(objects: Iterable[Obj], owner_uid: str) -> list[Obj]:
    """The objects whose controller ownerReference is `owner_uid` (metav1.IsControlledBy):
    a label selector alone also matches objects other owners made."""
    return [
        o
        for o in objects
        if any(
            ref.get("controller") and ref.get("uid") == owner_uid
            for ref in (o.get("metadata") or {}).get("ownerReferences") or []
        )
    ]


def _without_hash(template: Obj) -> dict[str, Any]:
    t = copy.deepcopy(dict(template))
    meta = t.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    labels.pop(HASH_LABEL, None)
    if labels:
        meta["labels"] = labels
    else:
        meta.pop("labels", None)
    meta.pop("creationTimestamp", None)
    if meta:
        t["metadata"] = meta
    else:
        t.pop("metadata", None)
    return t


def same_template(a: Obj, b: Obj) -> bool:
    """Pod templates equal but for the pod-template-hash label (EqualIgnoreHash)."""
    return _without_hash(a) == _without_hash(b)


def new_replica_set(deployment: Obj, replica_sets: Iterable[Obj]) -> Obj | None:
    """The ReplicaSet running the Deployment's current template: the oldest whose template
    matches (deploymentutil.FindNewReplicaSet), or None before the controller makes it."""
    template = (deployment.get("spec") or {}).get("template") or {}
    ordered = sorted(
        replica_sets,
        key=lambda rs: ((rs.get("metadata") or {}).get("creationTimestamp") or "", _name(rs)),
    )
    return next(
        (rs for rs in ordered if same_template((rs.get("spec") or {}).get("template") or {}, template)), None
    )


def label_selector(selector: Obj | None) -> str:
    """A LabelSelector object as the `labelSelector` query string the API takes."""
    selector = selector or {}
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], sorted(expr.get("values") or [])
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise ValueError(
                f"label selector operator {op!r} on {key!r}; known: In, NotIn, Exists, DoesNotExist"
            )
    return ",".join(parts)


# --- undo ----------------------------------------------------------------------------------


def pick_undo_target(
    replica_sets: list[dict[str, Any]],
    to_revision: int | None,
    current_revision: int | None,
    *,
    name: str = "",
) -> dict[str, Any]:
    """The ReplicaSet `kubectl rollout undo` goes back to (deploymentRevision in rollback.go).

    `replica_sets` are those the Deployment controls. With `to_revision` None (or 0, as
    kubectl takes it), the one with the second highest revision; else the one with that
    revision. ReplicaSets without a readable revision are not history. Raises
    PermanentError naming the revisions that exist.
    """
    who = f"deployment {name!r}" if name else "the deployment"
    by_revision: dict[int, dict[str, Any]] = {}
    for rs in replica_sets:
        rev = revision(rs)
        if rev is not None:
            by_revision[rev] = rs
    known = ", ".join(str(r) for r in sorted(by_revision)) or "none"
    current = f"current: {current_revision}" if current_revision is not None else "current: unknown"
    if to_revision is not None and to_revision < 0:
        raise PermanentError(
            f"{who}: revision {to_revision} is not a revision; revisions: {known} ({current})"
        )
    if to_revision:
        if to_revision not in by_revision:
            raise PermanentError(
                f"{who} has no revision {to_revision} in its history; revisions: {known} ({current})"
            )
        return by_revision[to_revision]
    revisions = sorted(by_revision, reverse=True)
    if len(revisions) < 2:
        raise PermanentError(
            f"{who} has no rollout history to undo to: revisions: {known} ({current}); "
            "kubectl says 'no rollout history found'"
        )
    return by_revision[revisions[1]]


def undo_patch(rs: Obj, deployment: Obj) -> list[dict[str, Any]]:
    """The JSON patch `kubectl rollout undo` sends to put `rs`'s pod template back.

    `/spec/template` becomes the ReplicaSet's template without its pod-template-hash label.
    `/metadata/annotations` becomes, as in kubectl (rollback.go), the Deployment's own
    annotations from the skip list (revision, last-applied-configuration, ...) plus the
    ReplicaSet's annotations that are not on it. So annotations like
    `kubernetes.io/change-cause` go back to what they were at that revision, and the
    ReplicaSet's revision never overwrites the Deployment's.
    """
    template = copy.deepcopy(dict((rs.get("spec") or {}).get("template") or {}))
    labels = (template.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
    dep_annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    rs_annotations = (rs.get("metadata") or {}).get("annotations") or {}
    annotations = {k: v for k, v in dep_annotations.items() if k in UNDO_SKIPPED_ANNOTATIONS}
    annotations.update({k: v for k, v in rs_annotations.items() if k not in UNDO_SKIPPED_ANNOTATIONS})
    return [
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": annotations},
    ]


# --- pods ----------------------------------------------------------------------------------


def _ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _container_failure(c: Obj) -> str | None:
    state = c.get("state") or {}
    waiting = state.get("waiting")
    terminated = state.get("terminated")
    name = c.get("name")
    if waiting:
        reason = waiting.get("reason") or "Waiting"
        if reason == "CrashLoopBackOff":
            last = (c.get("lastState") or {}).get("terminated") or {}
            code = last.get("exitCode")
            exit_text = f", last exit code {code}" if code is not None else ""
            return f"container {name!r} CrashLoopBackOff ({c.get('restartCount', 0)} restarts{exit_text})"
        if reason in _STUCK_WAITING:
            message = waiting.get("message")
            return f"container {name!r} {reason}" + (f": {message}" if message else "")
        return f"container {name!r} not ready (waiting: {reason})"
    if terminated:
        return (
            f"container {name!r} terminated: {terminated.get('reason') or 'Terminated'} "
            f"(exit code {terminated.get('exitCode')})"
        )
    if not c.get("ready"):
        return f"container {name!r} running but not ready"
    return None


def pod_failures(pods: list[dict[str, Any]]) -> list[str]:
    """Why each pod that is not Ready is failing, one line per container, for a report:
    `pod 'web-7d9f-x2k': container 'app' CrashLoopBackOff (4 restarts, last exit code 1)`.
    Ready pods say nothing."""
    lines: list[str] = []
    for pod in sorted(pods, key=_name):
        if _ready(pod):
            continue
        status = pod.get("status") or {}
        prefix = f"pod {_name(pod)!r}: "
        containers = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        found = [f for f in (_container_failure(c) for c in containers) if f]
        if status.get("phase") == "Failed":
            found.insert(0, f"phase Failed ({status.get('reason') or 'no reason given'})")
        if not found:
            unscheduled = next(
                (
                    c
                    for c in status.get("conditions") or []
                    if c.get("type") == "PodScheduled" and c.get("status") == "False"
                ),
                None,
            )
            if unscheduled is not None:
                found.append(
                    f"not scheduled: {unscheduled.get('reason')}: {unscheduled.get('message', '')}".rstrip(
                        ": "
                    )
                )
            else:
                found.append(f"not ready (phase {status.get('phase') or 'unknown'})")
        lines.extend(prefix + f for f in found)
    return lines


# --- scaling to 0 ------------------------------------------------------------------------


def scaled_down(dep: Obj) -> bool:
    """The Deployment's controller has seen replicas 0 and counts no pod left. kubectl's
    rollout-status rules call a scale-down done before that; pods already shutting down
    are not counted, so their sessions are terminated next."""
    generation = (dep.get("metadata") or {}).get("generation") or 0
    status = dep.get("status") or {}
    return ((dep.get("spec") or {}).get("replicas") == 0 and generation <= (status.get("observedGeneration") or 0)
            and not status.get("replicas"))


# --- blue-green ------------------------------------------------------------------------------


def other_colour(live: str) -> str:
    """The colour a blue-green deploy fills with the new image: the idle one."""
    return "green" if live == "blue" else "blue"


def colour_name(base: str, colour: str) -> str:
    """`<base>-<colour>`: a colour's Deployment, or its Service when an Ingress switches."""
    return f"{base}-{colour}"


def selected_colour(selector: Mapping[str, str]) -> str | None:
    """The colour a live Service's selector picks, None if it picks by no colour."""
    return selector.get(COLOUR_LABEL) or None


def colour_of(base: str, name: str) -> str | None:
    """The colour in a name `<base>-<colour>` (a colour's Deployment or Service), None for
    a name of another shape."""
    colour = name.removeprefix(f"{base}-")
    return colour if colour != name and colour else None


def _backends(ingress: Obj) -> list[dict[str, Any]]:
    """Every service backend of an Ingress, in order: the default, then each rule's paths."""
    spec = ingress.get("spec") or {}
    found = [spec["defaultBackend"]] if spec.get("defaultBackend") else []
    for rule in spec.get("rules") or []:
        found += [p["backend"] for p in ((rule.get("http") or {}).get("paths") or []) if p.get("backend")]
    return [b for b in found if (b.get("service") or {}).get("name")]


def ingress_backend(ingress: Obj) -> str | None:
    """The Service an Ingress routes to: its default backend's, else its first path's."""
    backends = _backends(ingress)
    return backends[0]["service"]["name"] if backends else None


def with_backend(ingress: Obj, old: str, new: str) -> dict[str, Any]:
    """The Ingress with every backend that names Service `old` naming `new` instead, as
    `kubectl apply -f ingress-green.yaml` would leave it. Ports and other backends are kept."""
    switched = copy.deepcopy(dict(ingress))
    for backend in _backends(switched):
        if backend["service"]["name"] == old:
            backend["service"]["name"] = new
    return switched
