"""The deployment, replica set and horizontal pod autoscaler controllers.

They read the store and write through the registry, like the real controllers do through
the API: the deployment controller turns a Deployment into ReplicaSets (one per pod
template, `<name>-<pod-template-hash>`, with revision annotations) and steps a rollout
with the arithmetic of `rollout.py`; the replica set controller keeps each ReplicaSet's
pod count and status; the autoscaler holds its target inside [minReplicas, maxReplicas]
(the sandbox has no metrics, so it never scales on load).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from sandbox.kube import clock, errors, resources, rollout
from sandbox.kube.events import EventRecorder
from sandbox.kube.registry import Registry, random_suffix
from sandbox.kube.rollout import RSCounts, RSStatus, Strategy

DEPLOYMENTS = resources.storage_resource("Deployment")
REPLICASETS = resources.storage_resource("ReplicaSet")
PODS = resources.storage_resource("Pod")
HPAS = resources.storage_resource("HorizontalPodAutoscaler")

Obj = dict[str, Any]


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def pod_available(pod: Mapping[str, Any], min_ready_seconds: int, now: float) -> bool:
    if not pod_ready(pod):
        return False
    if min_ready_seconds <= 0:
        return True
    cond = next(c for c in pod["status"]["conditions"] if c.get("type") == "Ready")
    return clock.parse(cond["lastTransitionTime"]) + min_ready_seconds <= now


def pod_active(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and not pod["metadata"].get(
        "deletionTimestamp"
    )


def create_pod_from_template(registry: Registry, events: EventRecorder, owner: Obj, component: str) -> Obj:
    """Create a pod from the pod template of `owner` (a ReplicaSet or a Job), controlled by it
    and named `<owner>-<suffix>`, and record the SuccessfulCreate event `component` reports."""
    template = owner["spec"]["template"]
    meta = template.get("metadata") or {}
    namespace, name = owner["metadata"]["namespace"], owner["metadata"]["name"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-{random_suffix()}",
            "generateName": f"{name}-",
            "namespace": namespace,
            "labels": dict(meta.get("labels") or {}),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": copy.deepcopy(template.get("spec") or {}),
    }
    if meta.get("annotations"):
        pod["metadata"]["annotations"] = dict(meta["annotations"])
    created = registry.create(PODS, namespace, pod)
    events.record(
        owner, "Normal", "SuccessfulCreate", f"Created pod: {created['metadata']['name']}", component
    )
    return created


def _created(obj: Mapping[str, Any]) -> tuple[str, str]:
    return (obj["metadata"].get("creationTimestamp", ""), obj["metadata"]["name"])


# --- deployments --------------------------------------------------------------------------


class DeploymentController:
    component = "deployment-controller"

    def __init__(self, registry: Registry, events: EventRecorder) -> None:
        self.registry = registry
        self.events = events

    def sync_all(self, now: float) -> None:
        replicasets = self.registry.list(REPLICASETS, None, readonly=True)["items"]
        pods = self.registry.list(PODS, None, readonly=True)["items"]
        for d in self.registry.list(DEPLOYMENTS, None, readonly=True)["items"]:
            uid = d["metadata"]["uid"]
            owned = [rs for rs in replicasets if controller_uid(rs) == uid]
            rs_uids = {rs["metadata"]["uid"] for rs in owned}
            owned_pods = [p for p in pods if controller_uid(p) in rs_uids]
            try:
                self.sync(d, owned, owned_pods, now)
            except (errors.Conflict, errors.NotFound):
                continue  # changed or gone meanwhile: the next pass sees the new state

    # DeploymentController.syncDeployment
    def sync(self, d: Obj, replicasets: list[Obj], pods: list[Obj], now: float) -> None:
        d = self._check_paused_conditions(d, now)
        spec = d["spec"]
        if spec.get("paused"):
            self._sync_scale(d, replicasets, now)
        elif self._is_scaling_event(d, replicasets):
            self._sync_scale(d, replicasets, now)
        elif Strategy.from_spec(spec.get("strategy")).rolling:
            self._rollout_rolling(d, replicasets, now)
        else:
            self._rollout_recreate(d, replicasets, pods, now)

    def _check_paused_conditions(self, d: Obj, now: float) -> Obj:
        if d["spec"].get("progressDeadlineSeconds") is None:
            return d
        cond = rollout.get_condition(d.get("status") or {}, "Progressing")
        paused_cond = cond is not None and cond.get("reason") == rollout.PAUSED
        if d["spec"].get("paused") and not paused_cond:
            new = rollout.condition("Progressing", "Unknown", rollout.PAUSED, "Deployment is paused", now)
        elif not d["spec"].get("paused") and paused_cond:
            new = rollout.condition("Progressing", "Unknown", rollout.RESUMED, "Deployment is resumed", now)
        else:
            return d
        status = copy.deepcopy(d.get("status") or {})
        rollout.set_condition(status, new)
        return self._write_status(d, status)

    def _write_status(self, d: Obj, status: Obj, annotations: Mapping[str, str] | None = None) -> Obj:
        def change(obj: Obj) -> None:
            obj["status"] = status
            if annotations is not None:
                obj["metadata"]["annotations"] = dict(annotations)

        return self.registry.mutate(
            DEPLOYMENTS, d["metadata"]["namespace"], d["metadata"]["name"], change, subresource="status"
        )

    @staticmethod
    def _is_scaling_event(d: Obj, replicasets: Sequence[Obj]) -> bool:
        desired = d["spec"]["replicas"]
        for rs in replicasets:
            if rs["spec"].get("replicas", 0) <= 0:
                continue
            annotation = (rs["metadata"].get("annotations") or {}).get(rollout.DESIRED_REPLICAS)
            if annotation is not None and annotation != str(desired):
                return True
        return False

    # getAllReplicaSetsAndSyncRevision / getNewReplicaSet
    def _get_all(
        self, d: Obj, replicasets: list[Obj], create: bool, now: float
    ) -> tuple[Obj | None, list[Obj], Obj]:
        template = d["spec"]["template"]
        ordered = sorted(replicasets, key=_created)
        new_rs = next(
            (rs for rs in ordered if rollout.templates_equal(rs["spec"]["template"], template)), None
        )
        olds = [rs for rs in ordered if rs is not new_rs]
        new_revision = str(
            max((rollout.revision_of(rs["metadata"].get("annotations")) for rs in olds), default=0) + 1
        )
        annotations = dict(d["metadata"].get("annotations") or {})
        status = copy.deepcopy(d.get("status") or {})
        has_deadline = d["spec"].get("progressDeadlineSeconds") is not None
        if new_rs is not None:
            new_rs = self._sync_rs_annotations(d, new_rs, new_revision)
            revision = (new_rs["metadata"].get("annotations") or {}).get(rollout.REVISION, new_revision)
            annotations[rollout.REVISION] = revision
            if has_deadline and rollout.get_condition(status, "Progressing") is None:
                msg = f'Found new replica set "{new_rs["metadata"]["name"]}"'
                rollout.set_condition(
                    status, rollout.condition("Progressing", "True", rollout.FOUND_NEW_RS, msg, now)
                )
        elif create:
            new_rs = self._create_new_rs(d, olds, new_revision, now)
            if new_rs is None:
                return None, olds, d
            annotations[rollout.REVISION] = new_revision
            if has_deadline:
                msg = f'Created new replica set "{new_rs["metadata"]["name"]}"'
                rollout.set_condition(
                    status, rollout.condition("Progressing", "True", rollout.NEW_RS_CREATED, msg, now)
                )
        if annotations != (d["metadata"].get("annotations") or {}) or status != (d.get("status") or {}):
            d = self._write_status(d, status, annotations)
        return new_rs, olds, d

    def _sync_rs_annotations(self, d: Obj, rs: Obj, new_revision: str) -> Obj:
        """Copy the Deployment's annotations to its new ReplicaSet and give a re-used one the
        next revision (remembering the old one in revision-history). Writes only on change."""
        ann = dict(rs["metadata"].get("annotations") or {})
        for key, value in (d["metadata"].get("annotations") or {}).items():
            if key not in rollout.NOT_COPIED_TO_REPLICASET:
                ann[key] = value
        old_revision = ann.get(rollout.REVISION)
        if rollout.revision_of(ann) < int(new_revision):
            ann[rollout.REVISION] = new_revision
            if old_revision:
                history = ann.get(rollout.REVISION_HISTORY)
                ann[rollout.REVISION_HISTORY] = f"{history},{old_revision}" if history else old_revision
        min_ready = d["spec"].get("minReadySeconds", 0)
        if (
            ann == (rs["metadata"].get("annotations") or {})
            and rs["spec"].get("minReadySeconds", 0) == min_ready
        ):
            return rs

        def change(obj: Obj) -> None:
            obj["metadata"]["annotations"] = ann
            obj["spec"]["minReadySeconds"] = min_ready

        return self.registry.mutate(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"], change)

    def _create_new_rs(self, d: Obj, olds: list[Obj], revision: str, now: float) -> Obj | None:
        spec = d["spec"]
        namespace = d["metadata"]["namespace"]
        collision_count = (d.get("status") or {}).get("collisionCount")
        template_hash = rollout.pod_template_hash(spec["template"], collision_count)
        template = copy.deepcopy(spec["template"])
        template.setdefault("metadata", {}).setdefault("labels", {})[rollout.HASH_LABEL] = template_hash
        selector = copy.deepcopy(spec["selector"])
        selector.setdefault("matchLabels", {})[rollout.HASH_LABEL] = template_hash
        strategy = Strategy.from_spec(spec.get("strategy"))
        desired = spec["replicas"]
        replicas = rollout.new_rs_replicas(
            strategy, desired, sum(rs["spec"].get("replicas", 0) for rs in olds), 0
        )
        annotations = {
            k: v
            for k, v in (d["metadata"].get("annotations") or {}).items()
            if k not in rollout.NOT_COPIED_TO_REPLICASET
        }
        annotations[rollout.REVISION] = revision
        annotations[rollout.DESIRED_REPLICAS] = str(desired)
        annotations[rollout.MAX_REPLICAS] = str(desired + rollout.max_surge(strategy, desired))
        name = f"{d['metadata']['name']}-{template_hash}"
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": dict(template["metadata"]["labels"]),
                "annotations": annotations,
                "ownerReferences": [owner_reference(d)],
            },
            "spec": {
                "replicas": replicas,
                "minReadySeconds": spec.get("minReadySeconds", 0),
                "selector": selector,
                "template": template,
            },
        }
        try:
            created = self.registry.create(REPLICASETS, namespace, rs)
        except errors.AlreadyExists:
            existing = self.registry.get(REPLICASETS, namespace, name)
            if controller_uid(existing) == d["metadata"]["uid"] and rollout.templates_equal(
                existing["spec"]["template"], spec["template"]
            ):
                return existing
            status = copy.deepcopy(d.get("status") or {})
            status["collisionCount"] = (collision_count or 0) + 1
            self._write_status(d, status)
            return None
        if replicas > 0:
            self.events.record(
                d,
                "Normal",
                "ScalingReplicaSet",
                f"Scaled up replica set {name} from 0 to {replicas}",
                self.component,
            )
        return created

    def _scale_rs(self, d: Obj, rs: Obj, replicas: int) -> Obj:
        desired = d["spec"]["replicas"]
        strategy = Strategy.from_spec(d["spec"].get("strategy"))
        before = rs["spec"].get("replicas", 0)

        def change(obj: Obj) -> None:
            obj["spec"]["replicas"] = replicas
            ann = obj["metadata"].setdefault("annotations", {})
            ann[rollout.DESIRED_REPLICAS] = str(desired)
            ann[rollout.MAX_REPLICAS] = str(desired + rollout.max_surge(strategy, desired))

        updated = self.registry.mutate(
            REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"], change
        )
        if replicas != before:
            direction = "up" if replicas > before else "down"
            msg = f"Scaled {direction} replica set {rs['metadata']['name']} from {before} to {replicas}"
            self.events.record(d, "Normal", "ScalingReplicaSet", msg, self.component)
        return updated

    def _apply(self, d: Obj, everyone: list[Obj], changes: Mapping[str, int]) -> list[Obj]:
        return [
            self._scale_rs(d, rs, changes[rs["metadata"]["name"]])
            if rs["metadata"]["name"] in changes
            else rs
            for rs in everyone
        ]

    @staticmethod
    def _counts(rs: Obj, rank: int) -> RSCounts:
        ann = rs["metadata"].get("annotations") or {}

        def as_int(key: str) -> int | None:
            try:
                return int(ann[key])
            except (KeyError, ValueError):
                return None

        return RSCounts(
            name=rs["metadata"]["name"],
            replicas=rs["spec"].get("replicas", 0),
            available=(rs.get("status") or {}).get("availableReplicas", 0),
            age_rank=rank,
            max_replicas_annotation=as_int(rollout.MAX_REPLICAS),
            desired_annotation=as_int(rollout.DESIRED_REPLICAS),
        )

    def _rollout_rolling(self, d: Obj, replicasets: list[Obj], now: float) -> None:
        new_rs, olds, d = self._get_all(d, replicasets, True, now)
        if new_rs is None:
            return
        everyone = sorted([*olds, new_rs], key=_created)
        ranks = {rs["metadata"]["name"]: i for i, rs in enumerate(everyone)}
        strategy = Strategy.from_spec(d["spec"].get("strategy"))
        changes = rollout.rolling_step(
            d["spec"]["replicas"],
            strategy,
            self._counts(new_rs, ranks[new_rs["metadata"]["name"]]),
            [self._counts(rs, ranks[rs["metadata"]["name"]]) for rs in olds],
        )
        everyone = self._apply(d, everyone, changes)
        new_rs = next(rs for rs in everyone if rs["metadata"]["name"] == new_rs["metadata"]["name"])
        if not changes and rollout.deployment_complete(
            d["spec"]["replicas"], d["metadata"]["generation"], d.get("status") or {}
        ):
            self._cleanup(d, [rs for rs in everyone if rs is not new_rs])
        self._sync_rollout_status(d, everyone, new_rs, now)

    def _rollout_recreate(self, d: Obj, replicasets: list[Obj], pods: list[Obj], now: float) -> None:
        new_rs, olds, d = self._get_all(d, replicasets, False, now)
        new_uid = new_rs["metadata"]["uid"] if new_rs else None
        old_pods_running = any((rs.get("status") or {}).get("replicas", 0) > 0 for rs in olds) or any(
            controller_uid(p) != new_uid
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            for p in pods
        )
        everyone = sorted([*olds, *([new_rs] if new_rs else [])], key=_created)
        ranks = {rs["metadata"]["name"]: i for i, rs in enumerate(everyone)}
        desired = d["spec"]["replicas"]
        step = rollout.recreate_step(
            desired,
            self._counts(new_rs, ranks[new_rs["metadata"]["name"]]) if new_rs else None,
            [self._counts(rs, ranks[rs["metadata"]["name"]]) for rs in olds],
            old_pods_running,
        )
        if step is None:
            new_rs, olds, d = self._get_all(d, replicasets, True, now)
            if new_rs is None:
                return
            everyone = sorted([*olds, new_rs], key=_created)
            step = {new_rs["metadata"]["name"]: desired} if new_rs["spec"].get("replicas") != desired else {}
        everyone = self._apply(d, everyone, step)
        new_rs = next(
            (rs for rs in everyone if new_rs and rs["metadata"]["name"] == new_rs["metadata"]["name"]), None
        )
        if not step and rollout.deployment_complete(
            desired, d["metadata"]["generation"], d.get("status") or {}
        ):
            self._cleanup(d, [rs for rs in everyone if rs is not new_rs])
        self._sync_rollout_status(d, everyone, new_rs, now)

    def _sync_scale(self, d: Obj, replicasets: list[Obj], now: float) -> None:
        """DeploymentController.sync: scaling (proportional mid-rollout) and status, no rollout."""
        new_rs, olds, d = self._get_all(d, replicasets, False, now)
        everyone = sorted([*olds, *([new_rs] if new_rs else [])], key=_created)
        ranks = {rs["metadata"]["name"]: i for i, rs in enumerate(everyone)}
        changes = rollout.proportional_scale(
            d["spec"]["replicas"],
            Strategy.from_spec(d["spec"].get("strategy")),
            self._counts(new_rs, ranks[new_rs["metadata"]["name"]]) if new_rs else None,
            [self._counts(rs, ranks[rs["metadata"]["name"]]) for rs in olds],
            (d.get("status") or {}).get("replicas", 0),
        )
        everyone = self._apply(d, everyone, changes)
        new_rs = next(
            (rs for rs in everyone if new_rs and rs["metadata"]["name"] == new_rs["metadata"]["name"]), None
        )
        if d["spec"].get("paused"):
            self._cleanup(d, [rs for rs in everyone if rs is not new_rs])
        status = self._calculate_status(d, everyone, new_rs, now)
        if status != d.get("status"):
            self._write_status(d, status)

    def _calculate_status(self, d: Obj, everyone: Sequence[Obj], new_rs: Obj | None, now: float) -> Obj:
        statuses = [
            RSStatus(
                name=rs["metadata"]["name"],
                spec_replicas=rs["spec"].get("replicas", 0),
                replicas=(rs.get("status") or {}).get("replicas", 0),
                ready=(rs.get("status") or {}).get("readyReplicas", 0),
                available=(rs.get("status") or {}).get("availableReplicas", 0),
            )
            for rs in everyone
        ]
        return rollout.calculate_status(
            d["spec"]["replicas"],
            d["metadata"]["generation"],
            Strategy.from_spec(d["spec"].get("strategy")),
            statuses,
            new_rs["metadata"]["name"] if new_rs else None,
            d.get("status") or {},
            now,
        )

    def _sync_rollout_status(self, d: Obj, everyone: Sequence[Obj], new_rs: Obj | None, now: float) -> None:
        old_status = d.get("status") or {}
        status = self._calculate_status(d, everyone, new_rs, now)
        status = rollout.rollout_status(
            d["spec"]["replicas"],
            d["metadata"]["generation"],
            d["spec"].get("progressDeadlineSeconds"),
            status,
            old_status,
            new_rs["metadata"]["name"] if new_rs else None,
            now,
        )
        if status != old_status:
            self._write_status(d, status)

    def _cleanup(self, d: Obj, olds: Sequence[Obj]) -> None:
        """cleanupDeployment: keep revisionHistoryLimit old ReplicaSets, delete the oldest scaled-down ones."""
        limit = d["spec"].get("revisionHistoryLimit")
        if limit is None:
            return
        diff = len(olds) - limit
        if diff <= 0:
            return
        for rs in sorted(olds, key=lambda rs: rollout.revision_of(rs["metadata"].get("annotations")))[:diff]:
            status = rs.get("status") or {}
            if status.get("replicas", 0) != 0 or rs["spec"].get("replicas", 0) != 0:
                continue
            if rs["metadata"].get("generation", 0) > status.get("observedGeneration", 0):
                continue
            try:
                self.registry.delete(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"])
            except errors.NotFound:
                pass


# --- replica sets -------------------------------------------------------------------------


def _deletion_rank(pod: Mapping[str, Any]) -> tuple[Any, ...]:
    """controller.ActivePods ordering: pods that are less far along are deleted first."""
    status = pod.get("status") or {}
    phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}.get(status.get("phase", "Pending"), 0)
    restarts = max((c.get("restartCount", 0) for c in status.get("containerStatuses") or []), default=0)
    created = (
        clock.parse(pod["metadata"]["creationTimestamp"]) if pod["metadata"].get("creationTimestamp") else 0.0
    )
    return (bool(pod["spec"].get("nodeName")), phase_rank, pod_ready(pod), -restarts, -created)


class ReplicaSetController:
    component = "replicaset-controller"

    def __init__(self, registry: Registry, events: EventRecorder) -> None:
        self.registry = registry
        self.events = events

    def sync_all(self, now: float) -> None:
        pods = self.registry.list(PODS, None, readonly=True)["items"]
        for rs in self.registry.list(REPLICASETS, None, readonly=True)["items"]:
            uid = rs["metadata"]["uid"]
            try:
                self.sync(rs, [p for p in pods if controller_uid(p) == uid], now)
            except (errors.Conflict, errors.NotFound):
                continue

    def sync(self, rs: Obj, pods: list[Obj], now: float) -> None:
        namespace, name = rs["metadata"]["namespace"], rs["metadata"]["name"]
        active = [p for p in pods if pod_active(p)]
        diff = len(active) - rs["spec"].get("replicas", 0)
        if diff < 0:
            for _ in range(-diff):
                active.append(create_pod_from_template(self.registry, self.events, rs, self.component))
        elif diff > 0:
            for pod in sorted(active, key=_deletion_rank)[:diff]:
                try:
                    self.registry.delete(PODS, namespace, pod["metadata"]["name"])
                except errors.NotFound:
                    pass
                active.remove(pod)
                self.events.record(
                    rs,
                    "Normal",
                    "SuccessfulDelete",
                    f"Deleted pod: {pod['metadata']['name']}",
                    self.component,
                )
        template_labels = ((rs["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
        min_ready = rs["spec"].get("minReadySeconds", 0)
        status = {
            "replicas": len(active),
            "fullyLabeledReplicas": sum(
                1
                for p in active
                if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in template_labels.items())
            ),
            "readyReplicas": sum(1 for p in active if pod_ready(p)),
            "availableReplicas": sum(1 for p in active if pod_available(p, min_ready, now)),
            "observedGeneration": rs["metadata"].get("generation", 0),
        }
        old = rs.get("status") or {}
        if any(old.get(k, 0) != v for k, v in status.items()):
            self.registry.mutate(
                REPLICASETS,
                namespace,
                name,
                lambda obj: obj.__setitem__("status", status),
                subresource="status",
            )


# --- horizontal pod autoscalers ---------------------------------------------------------


class AutoscalerController:
    """Keeps each target's replicas within [minReplicas, maxReplicas]; no metrics, no load scaling."""

    component = "horizontal-pod-autoscaler"

    def __init__(self, registry: Registry, events: EventRecorder) -> None:
        self.registry = registry
        self.events = events

    def sync_all(self, now: float) -> None:
        for hpa in self.registry.list(HPAS, None, readonly=True)["items"]:
            try:
                self.sync(hpa, now)
            except (errors.Conflict, errors.NotFound):
                continue

    def sync(self, hpa: Obj, now: float) -> None:
        spec = hpa["spec"]
        ref = spec["scaleTargetRef"]
        namespace = hpa["metadata"]["namespace"]
        target_res = next(
            (r for r in resources.RESOURCES if r.kind == ref.get("kind") and "scale" in r.subresources), None
        )
        status = copy.deepcopy(hpa.get("status") or {})
        target = self.registry.try_get(target_res, namespace, ref["name"]) if target_res else None
        if target is None:
            cond = {
                "type": "AbleToScale",
                "status": "False",
                "reason": "FailedGetScale",
                "message": f'the HPA controller was unable to get the target\'s current scale: {ref.get("kind")} "{ref["name"]}" not found',
            }
            status["conditions"] = [dict(cond, lastTransitionTime=_keep_time(status, cond, now))]
        else:
            current = target["spec"].get("replicas", 0)
            desired = min(max(current, spec.get("minReplicas", 1)), spec["maxReplicas"])
            if desired != current and target_res is not None:
                self.registry.mutate(
                    target_res,
                    namespace,
                    ref["name"],
                    lambda obj: obj["spec"].__setitem__("replicas", desired),
                )
                status["lastScaleTime"] = clock.rfc3339(now)
                reason = "above" if desired < current else "below"
                self.events.record(
                    hpa,
                    "Normal",
                    "SuccessfulRescale",
                    f"New size: {desired}; reason: Current number of replicas {reason} Spec.{'Max' if desired < current else 'Min'}Replicas",
                    self.component,
                )
            status["currentReplicas"] = (target.get("status") or {}).get("replicas", 0)
            status["desiredReplicas"] = desired
            conds = [
                {
                    "type": "AbleToScale",
                    "status": "True",
                    "reason": "ReadyForNewScale",
                    "message": "recommended size matches current size",
                },
                {
                    "type": "ScalingActive",
                    "status": "False",
                    "reason": "FailedGetResourceMetric",
                    "message": "the sandbox has no metrics server: replicas stay within minReplicas and maxReplicas",
                },
                {
                    "type": "ScalingLimited",
                    "status": "True" if desired != current else "False",
                    "reason": "TooFewReplicas"
                    if desired > current
                    else ("TooManyReplicas" if desired < current else "DesiredWithinRange"),
                    "message": "the desired count is within the acceptable range"
                    if desired == current
                    else "the desired replica count is outside the range",
                },
            ]
            status["conditions"] = [dict(c, lastTransitionTime=_keep_time(status, c, now)) for c in conds]
        status.setdefault("desiredReplicas", 0)
        if status != (hpa.get("status") or {}):
            self.registry.mutate(
                HPAS,
                namespace,
                hpa["metadata"]["name"],
                lambda obj: obj.__setitem__("status", status),
                subresource="status",
            )


def _keep_time(status: Mapping[str, Any], cond: Mapping[str, Any], now: float) -> str:
    for old in status.get("conditions") or []:
        if old.get("type") == cond["type"] and old.get("status") == cond["status"]:
            return old.get("lastTransitionTime", clock.rfc3339(now))
    return clock.rfc3339(now)
