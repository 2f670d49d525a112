"""The deployment controller's arithmetic, as pure functions (kubernetes pkg/controller/deployment).

Values in, replica counts or a status out, no I/O: the controller module reads the
store, calls these and writes the result. Each function names the upstream function it
follows, so a difference from a real cluster can be checked against the source.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.kube import clock

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
HASH_LABEL = "pod-template-hash"
CHANGE_CAUSE = "kubernetes.io/change-cause"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
# Deployment annotations that are not copied to its ReplicaSets (annotationsToSkip upstream).
NOT_COPIED_TO_REPLICASET = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        REVISION_HISTORY,
        DESIRED_REPLICAS,
        MAX_REPLICAS,
        "deprecated.deployment.rollback.to",
    }
)

# Condition reasons (deploymentutil).
NEW_RS_CREATED = "NewReplicaSetCreated"
FOUND_NEW_RS = "FoundNewReplicaSet"
RS_UPDATED = "ReplicaSetUpdated"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
TIMED_OUT = "ProgressDeadlineExceeded"
PAUSED = "DeploymentPaused"
RESUMED = "DeploymentResumed"
MIN_AVAILABLE = "MinimumReplicasAvailable"
MIN_UNAVAILABLE = "MinimumReplicasUnavailable"


# --- maxSurge / maxUnavailable ---------------------------------------------------------


def scaled_value(value: int | str, total: int, *, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent: an int as is, "N%" of total rounded up or down."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an int or a percentage")
    if isinstance(value, int):
        return value
    text = value.strip()
    if text.endswith("%") and text[:-1].isdigit():
        exact = int(text[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    raise ValueError(f"invalid value for IntOrString: {value!r} is not an int or a percentage like '25%'")


@dataclass(frozen=True)
class Strategy:
    type: str = "RollingUpdate"
    max_surge: int | str = "25%"
    max_unavailable: int | str = "25%"

    @classmethod
    def from_spec(cls, strategy: Mapping[str, Any] | None) -> Strategy:
        strategy = strategy or {}
        rolling = strategy.get("rollingUpdate") or {}
        return cls(
            type=strategy.get("type") or "RollingUpdate",
            max_surge=rolling.get("maxSurge", "25%"),
            max_unavailable=rolling.get("maxUnavailable", "25%"),
        )

    @property
    def rolling(self) -> bool:
        return self.type == "RollingUpdate"


def resolve_fenceposts(max_surge: int | str, max_unavailable: int | str, desired: int) -> tuple[int, int]:
    """deploymentutil.ResolveFenceposts: surge rounds up, unavailable down, never both 0."""
    surge = scaled_value(max_surge, desired, round_up=True)
    unavailable = scaled_value(max_unavailable, desired, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def max_surge(strategy: Strategy, desired: int) -> int:
    if not strategy.rolling:
        return 0
    return resolve_fenceposts(strategy.max_surge, strategy.max_unavailable, desired)[0]


def max_unavailable(strategy: Strategy, desired: int) -> int:
    if not strategy.rolling or desired == 0:
        return 0
    return min(resolve_fenceposts(strategy.max_surge, strategy.max_unavailable, desired)[1], desired)


# --- one step of a rollout --------------------------------------------------------------


@dataclass(frozen=True)
class RSCounts:
    """What the controller knows of one ReplicaSet. `age_rank` orders by creation: lower is older."""

    name: str
    replicas: int
    available: int = 0
    age_rank: int = 0
    max_replicas_annotation: int | None = None
    desired_annotation: int | None = None


def new_rs_replicas(strategy: Strategy, desired: int, total_replicas: int, new_replicas: int) -> int:
    """deploymentutil.NewRSNewReplicas: how far the new ReplicaSet may grow now."""
    if not strategy.rolling:
        return desired
    surge = scaled_value(strategy.max_surge, desired, round_up=True)
    max_total = desired + surge
    if total_replicas >= max_total:
        return new_replicas
    return new_replicas + min(max_total - total_replicas, desired - new_replicas)


def rolling_step(desired: int, strategy: Strategy, new: RSCounts, olds: Sequence[RSCounts]) -> dict[str, int]:
    """rolloutRolling's scaling: grow the new ReplicaSet if it may, else shrink the old ones
    (unhealthy replicas first). Returns the ReplicaSets to scale, name -> replicas."""
    everyone = [*olds, new]
    total = sum(rs.replicas for rs in everyone)
    # reconcileNewReplicaSet
    if new.replicas > desired:
        return {new.name: desired}
    if new.replicas < desired:
        target = new_rs_replicas(strategy, desired, total, new.replicas)
        if target != new.replicas:
            return {new.name: target}
    # reconcileOldReplicaSets
    active_olds = sorted((rs for rs in olds if rs.replicas > 0), key=lambda rs: rs.age_rank)
    if not active_olds:
        return {}
    min_available = desired - max_unavailable(strategy, desired)
    new_unavailable = new.replicas - new.available
    max_scaled_down = total - min_available - new_unavailable
    if max_scaled_down <= 0:
        return {}
    replicas = {rs.name: rs.replicas for rs in active_olds}
    # cleanupUnhealthyReplicas: old replicas that are not available go first.
    cleaned = 0
    for rs in active_olds:
        if cleaned >= max_scaled_down:
            break
        if rs.replicas == rs.available:
            continue
        down = min(max_scaled_down - cleaned, rs.replicas - rs.available)
        replicas[rs.name] -= down
        cleaned += down
    # scaleDownOldReplicaSetsForRollingUpdate: keep minAvailable available pods.
    available = sum(rs.available for rs in everyone)
    if available > min_available:
        to_scale_down = available - min_available
        scaled = 0
        for rs in active_olds:
            if scaled >= to_scale_down:
                break
            if replicas[rs.name] == 0:
                continue
            down = min(replicas[rs.name], to_scale_down - scaled)
            replicas[rs.name] -= down
            scaled += down
    return {rs.name: replicas[rs.name] for rs in active_olds if replicas[rs.name] != rs.replicas}


def recreate_step(
    desired: int, new: RSCounts | None, olds: Sequence[RSCounts], old_pods_running: bool
) -> dict[str, int] | None:
    """rolloutRecreate: old ReplicaSets to 0, wait for their pods to go, then the new one to
    full size. None means "create the new ReplicaSet now"."""
    scale_down = {rs.name: 0 for rs in olds if rs.replicas > 0}
    if scale_down:
        return scale_down
    if old_pods_running:
        return {}
    if new is None:
        return None
    return {new.name: desired} if new.replicas != desired else {}


def _round(x: float) -> int:
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def proportional_scale(
    desired: int, strategy: Strategy, new: RSCounts | None, olds: Sequence[RSCounts], status_replicas: int
) -> dict[str, int]:
    """DeploymentController.scale: a scaling event (spec.replicas changed) mid-rollout spreads the
    change over the active ReplicaSets in proportion to their size. Returns name -> replicas."""
    everyone = [*olds, *([new] if new else [])]
    active = [rs for rs in everyone if rs.replicas > 0]
    if len(active) <= 1:
        if active:
            target = active[0]
        elif new is not None:
            target = new
        elif olds:
            target = max(olds, key=lambda rs: rs.age_rank)
        else:
            return {}
        return {target.name: desired} if target.replicas != desired else {}
    if (
        new is not None
        and new.desired_annotation == desired
        and new.replicas == desired
        and new.available >= desired
    ):
        return {rs.name: 0 for rs in olds if rs.replicas > 0}
    if not strategy.rolling:
        return {}
    surge = max_surge(strategy, desired)
    allowed = desired + surge if desired > 0 else 0
    to_add = allowed - sum(rs.replicas for rs in active)
    if to_add == 0:
        return {}
    # ReplicaSetsBySizeNewer when growing, BySizeOlder when shrinking: biggest first.
    if to_add > 0:
        ordered = sorted(active, key=lambda rs: (-rs.replicas, -rs.age_rank))
    else:
        ordered = sorted(active, key=lambda rs: (-rs.replicas, rs.age_rank))
    sizes: dict[str, int] = {}
    added = 0
    for rs in ordered:
        proportion = 0
        if to_add != added:
            if desired == 0:
                fraction = -rs.replicas
            else:
                before = rs.max_replicas_annotation or status_replicas
                fraction = _round(rs.replicas * (desired + surge) / before) - rs.replicas if before else 0
            allowed_left = to_add - added
            proportion = min(fraction, allowed_left) if to_add > 0 else max(fraction, allowed_left)
        sizes[rs.name] = rs.replicas + proportion
        added += proportion
    if added != to_add:
        first = ordered[0].name
        sizes[first] = max(0, sizes[first] + to_add - added)
    return {rs.name: sizes[rs.name] for rs in active if sizes[rs.name] != rs.replicas}


# --- templates and revisions -------------------------------------------------------------


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v is not None and v != {} and v != []}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def canonical_template(template: Mapping[str, Any]) -> dict[str, Any]:
    """The template without its pod-template-hash label and without empty fields, which
    the Go types cannot tell from absent ones (EqualIgnoreHash compares typed objects)."""
    t = copy.deepcopy(dict(template))
    labels = (t.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
    t.get("metadata", {}).pop("creationTimestamp", None)
    return _prune(t)


def templates_equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return canonical_template(a) == canonical_template(b)


_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def pod_template_hash(template: Mapping[str, Any], collision_count: int | None = None) -> str:
    """controller.ComputeHash: FNV-1a 32 of the template (and the collision count), in the
    vowel-free alphabet of rand.SafeEncodeString."""
    data = json.dumps(canonical_template(template), sort_keys=True, separators=(",", ":")).encode()
    if collision_count:
        data += collision_count.to_bytes(4, "little")
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_SAFE_ALPHABET[ord(ch) % len(_SAFE_ALPHABET)] for ch in str(h))


def revision_of(annotations: Mapping[str, str] | None) -> int:
    try:
        return int((annotations or {}).get(REVISION, "0"))
    except ValueError:
        return 0


# --- status and conditions ---------------------------------------------------------------


def condition(type_: str, status: str, reason: str, message: str, now: float) -> dict[str, str]:
    ts = clock.rfc3339(now)
    return {
        "type": type_,
        "status": status,
        "lastUpdateTime": ts,
        "lastTransitionTime": ts,
        "reason": reason,
        "message": message,
    }


def get_condition(status: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def set_condition(status: dict[str, Any], new: dict[str, Any]) -> None:
    """deploymentutil.SetDeploymentCondition: same status and reason changes nothing; the
    same status keeps its lastTransitionTime."""
    current = get_condition(status, new["type"])
    if current is not None and current["status"] == new["status"] and current.get("reason") == new["reason"]:
        return
    if current is not None and current["status"] == new["status"]:
        new = {**new, "lastTransitionTime": current["lastTransitionTime"]}
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != new["type"]] + [new]


def remove_condition(status: dict[str, Any], type_: str) -> None:
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != type_]


def deployment_complete(desired: int, generation: int, status: Mapping[str, Any]) -> bool:
    """deploymentutil.DeploymentComplete."""
    return (
        status.get("updatedReplicas", 0) == desired
        and status.get("replicas", 0) == desired
        and status.get("availableReplicas", 0) == desired
        and status.get("observedGeneration", 0) >= generation
    )


def deployment_progressing(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """deploymentutil.DeploymentProgressing: more updated, fewer old, more ready or available."""
    old_old = old.get("replicas", 0) - old.get("updatedReplicas", 0)
    new_old = new.get("replicas", 0) - new.get("updatedReplicas", 0)
    return (
        new.get("updatedReplicas", 0) > old.get("updatedReplicas", 0)
        or new_old < old_old
        or new.get("readyReplicas", 0) > old.get("readyReplicas", 0)
        or new.get("availableReplicas", 0) > old.get("availableReplicas", 0)
    )


def deployment_timed_out(
    progress_deadline_seconds: int | None, status: Mapping[str, Any], now: float
) -> bool:
    """deploymentutil.DeploymentTimedOut: no progress since the Progressing condition's lastUpdateTime."""
    if progress_deadline_seconds is None:
        return False
    cond = get_condition(status, "Progressing")
    if cond is None or cond.get("reason") == NEW_RS_AVAILABLE:
        return False
    if cond.get("reason") == TIMED_OUT:
        return True
    return clock.parse(cond["lastUpdateTime"]) + progress_deadline_seconds < now


@dataclass(frozen=True)
class RSStatus:
    name: str
    spec_replicas: int
    replicas: int
    ready: int
    available: int


def calculate_status(
    desired: int,
    generation: int,
    strategy: Strategy,
    everyone: Sequence[RSStatus],
    new_name: str | None,
    old_status: Mapping[str, Any],
    now: float,
) -> dict[str, Any]:
    """DeploymentController.calculateStatus, with the Available condition."""
    available = sum(rs.available for rs in everyone)
    total = sum(rs.spec_replicas for rs in everyone)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": sum(rs.replicas for rs in everyone),
        "updatedReplicas": sum(rs.replicas for rs in everyone if rs.name == new_name),
        "readyReplicas": sum(rs.ready for rs in everyone),
        "availableReplicas": available,
        "unavailableReplicas": max(total - available, 0),
        "conditions": copy.deepcopy(old_status.get("conditions") or []),
    }
    if "collisionCount" in old_status:
        status["collisionCount"] = old_status["collisionCount"]
    if available >= desired - max_unavailable(strategy, desired):
        set_condition(
            status, condition("Available", "True", MIN_AVAILABLE, "Deployment has minimum availability.", now)
        )
    else:
        set_condition(
            status,
            condition(
                "Available", "False", MIN_UNAVAILABLE, "Deployment does not have minimum availability.", now
            ),
        )
    return status


def rollout_status(
    desired: int,
    generation: int,
    progress_deadline_seconds: int | None,
    new_status: dict[str, Any],
    old_status: Mapping[str, Any],
    new_name: str | None,
    now: float,
) -> dict[str, Any]:
    """DeploymentController.syncRolloutStatus: the Progressing condition of a rollout."""
    status = copy.deepcopy(new_status)
    if progress_deadline_seconds is None:
        remove_condition(status, "Progressing")
        return status
    current = get_condition(status, "Progressing")
    complete = (
        status["replicas"] == status["updatedReplicas"]
        and current is not None
        and current.get("reason") == NEW_RS_AVAILABLE
    )
    if complete:
        return status
    if deployment_complete(desired, generation, status):
        msg = f'ReplicaSet "{new_name}" has successfully progressed.'
        set_condition(status, condition("Progressing", "True", NEW_RS_AVAILABLE, msg, now))
    elif deployment_progressing(old_status, status):
        msg = f'ReplicaSet "{new_name}" is progressing.'
        cond = condition("Progressing", "True", RS_UPDATED, msg, now)
        if current is not None:
            if current["status"] == "True":
                cond["lastTransitionTime"] = current["lastTransitionTime"]
            remove_condition(status, "Progressing")
        set_condition(status, cond)
    elif deployment_timed_out(progress_deadline_seconds, status, now):
        msg = f'ReplicaSet "{new_name}" has timed out progressing.'
        set_condition(status, condition("Progressing", "False", TIMED_OUT, msg, now))
    return status
