"""The deployment controller's arithmetic (sandbox/kube/rollout.py), one row per case,
with the numbers a real cluster produces."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.kube import clock
from sandbox.kube.rollout import (
    RSCounts,
    Strategy,
    calculate_status,
    deployment_timed_out,
    max_unavailable,
    pod_template_hash,
    proportional_scale,
    recreate_step,
    resolve_fenceposts,
    rolling_step,
    rollout_status,
    templates_equal,
)


@pytest.mark.parametrize(
    ("surge", "unavailable", "desired", "expected", "why"),
    [
        ("25%", "25%", 4, (1, 1), "the defaults on 4 replicas"),
        ("25%", "25%", 3, (1, 0), "surge rounds up, unavailable rounds down"),
        ("25%", "25%", 1, (1, 0), "one replica: one extra pod, none unavailable"),
        (0, 0, 5, (0, 1), "both zero: unavailable becomes 1"),
        ("0%", "0%", 5, (0, 1), "both zero as percentages too"),
        (2, "50%", 5, (2, 2), "an int and a percentage"),
        ("100%", 0, 3, (3, 0), "blue-green-like surge"),
    ],
)
def test_fenceposts_round_like_kubernetes(
    surge: Any, unavailable: Any, desired: int, expected: tuple[int, int], why: str
) -> None:
    assert resolve_fenceposts(surge, unavailable, desired) == expected, why


def test_max_unavailable_is_zero_for_recreate_and_capped_at_replicas() -> None:
    assert max_unavailable(Strategy(type="Recreate"), 4) == 0
    assert max_unavailable(Strategy(max_surge=0, max_unavailable=10), 3) == 3


def _run_rollout(desired: int, strategy: Strategy, old_replicas: int) -> list[tuple[int, int]]:
    """Drive rolling_step to the end, new pods becoming available between steps as a
    kubelet would. Returns each (new, old) replica count the controller sets."""
    new = RSCounts("new", 0, 0, age_rank=1)
    old = RSCounts("old", old_replicas, old_replicas, age_rank=0)
    seen = [(new.replicas, old.replicas)]
    for _ in range(50):
        changes = rolling_step(desired, strategy, new, [old])
        if not changes:
            if new.available == new.replicas:
                break
            new = RSCounts("new", new.replicas, new.replicas, age_rank=1)  # pods became ready
            continue
        new = RSCounts("new", changes.get("new", new.replicas), new.available, age_rank=1)
        old_count = changes.get("old", old.replicas)
        old = RSCounts("old", old_count, min(old.available, old_count), age_rank=0)
        seen.append((new.replicas, old.replicas))
    return seen


@pytest.mark.parametrize(
    ("desired", "strategy", "expected", "why"),
    [
        (
            4,
            Strategy(max_surge=1, max_unavailable=0),
            [(0, 4), (1, 4), (1, 3), (2, 3), (2, 2), (3, 2), (3, 1), (4, 1), (4, 0)],
            "surge 1, unavailable 0: one extra pod at a time, never below 4 available",
        ),
        (
            4,
            Strategy(max_surge=0, max_unavailable=1),
            [(0, 4), (0, 3), (1, 3), (1, 2), (2, 2), (2, 1), (3, 1), (3, 0), (4, 0)],
            "surge 0, unavailable 1: take one old pod down first, never above 4 pods",
        ),
        (
            4,
            Strategy(),
            [(0, 4), (1, 4), (1, 3), (2, 3), (2, 1), (4, 1), (4, 0)],
            "the 25%/25% defaults on 4 replicas: 1 up, 1 down, then 2 and 2 once two new pods are ready",
        ),
        (
            10,
            Strategy(max_surge="30%", max_unavailable="30%"),
            [(0, 10), (3, 10), (3, 7), (6, 7), (6, 1), (10, 1), (10, 0)],
            "30%/30% on 10: 3 up, 3 down, 3 up, then 6 down once 6 new pods are ready",
        ),
        (
            3,
            Strategy(max_surge="100%", max_unavailable=0),
            [(0, 3), (3, 3), (3, 0)],
            "100% surge: the whole new set, then the old one goes",
        ),
    ],
)
def test_rolling_update_steps_like_kubernetes(
    desired: int, strategy: Strategy, expected: list[tuple[int, int]], why: str
) -> None:
    assert _run_rollout(desired, strategy, desired) == expected, why


def test_unavailable_old_pods_are_scaled_down_even_below_min_available() -> None:
    # 2 of the old 4 pods are not available, so availability (2) is already below the
    # minimum (3): cleanupUnhealthyReplicas still removes one of them (maxScaledDown is 1),
    # or the rollout would be stuck behind broken pods.
    changes = rolling_step(
        4, Strategy(max_surge=0, max_unavailable=1), RSCounts("new", 0, 0, 1), [RSCounts("old", 4, 2, 0)]
    )
    assert changes == {"old": 3}


def test_new_replicaset_above_desired_is_scaled_down() -> None:
    assert rolling_step(2, Strategy(), RSCounts("new", 5, 5, 1), []) == {"new": 2}


@pytest.mark.parametrize(
    ("new", "olds", "running", "expected", "why"),
    [
        (None, [RSCounts("old", 3, 3)], True, {"old": 0}, "old replicas go to zero first"),
        (None, [RSCounts("old", 0, 0)], True, {}, "then it waits for old pods to be gone"),
        (None, [RSCounts("old", 0, 0)], False, None, "then the new ReplicaSet is created"),
        (RSCounts("new", 0, 0), [], False, {"new": 3}, "and scaled to full size at once"),
    ],
)
def test_recreate_steps(
    new: RSCounts | None, olds: list[RSCounts], running: bool, expected: Any, why: str
) -> None:
    assert recreate_step(3, new, olds, running) == expected, why


@pytest.mark.parametrize(
    ("desired", "new", "olds", "status_replicas", "expected", "why"),
    [
        (5, RSCounts("new", 3, 3, 1), [], 3, {"new": 5}, "one active ReplicaSet takes the whole change"),
        (
            10,
            RSCounts("new", 3, 0, 1, max_replicas_annotation=6, desired_annotation=5),
            [RSCounts("old", 3, 3, 0, max_replicas_annotation=6, desired_annotation=5)],
            6,
            {"new": 7, "old": 6},
            "mid-rollout scale from 5 to 10: allowed 10+3 surge; each grows 3*13/6=6.5, rounded away from zero, the newer one first",
        ),
        (
            0,
            RSCounts("new", 2, 0, 1, max_replicas_annotation=4),
            [RSCounts("old", 2, 2, 0, max_replicas_annotation=4)],
            4,
            {"new": 0, "old": 0},
            "scale to zero mid-rollout empties both",
        ),
    ],
)
def test_proportional_scaling(
    desired: int,
    new: RSCounts,
    olds: list[RSCounts],
    status_replicas: int,
    expected: dict[str, int],
    why: str,
) -> None:
    assert proportional_scale(desired, Strategy(), new, olds, status_replicas) == expected, why


def test_template_hash_ignores_the_hash_label_and_empty_fields() -> None:
    template = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "a:1"}]},
    }
    with_hash = {
        "metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}, "creationTimestamp": None},
        "spec": {**template["spec"], "volumes": []},
    }
    assert templates_equal(template, with_hash)
    assert pod_template_hash(template) == pod_template_hash(with_hash)
    assert pod_template_hash(template) != pod_template_hash(template, collision_count=1)
    assert set(pod_template_hash(template)) <= set("bcdfghjklmnpqrstvwxz2456789")


def _status(
    updated: int, replicas: int, ready: int, available: int, reason: str | None, updated_at: float
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "observedGeneration": 2,
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
    }
    if reason:
        status["conditions"] = [
            {
                "type": "Progressing",
                "status": "True",
                "reason": reason,
                "lastUpdateTime": clock.rfc3339(updated_at),
                "lastTransitionTime": clock.rfc3339(updated_at),
            }
        ]
    return status


@pytest.mark.parametrize(
    ("reason", "age", "expected", "why"),
    [
        ("ReplicaSetUpdated", 5, False, "within the deadline"),
        ("ReplicaSetUpdated", 11, True, "no progress for longer than the deadline"),
        ("NewReplicaSetAvailable", 100, False, "a complete rollout never times out"),
        ("ProgressDeadlineExceeded", 0, True, "once timed out, stays timed out"),
        (None, 100, False, "no Progressing condition, no verdict"),
    ],
)
def test_progress_deadline(reason: str | None, age: float, expected: bool, why: str) -> None:
    now = 1_000_000.0
    assert deployment_timed_out(10, _status(1, 4, 3, 3, reason, now - age), now) is expected, why


def test_stalled_rollout_gets_progress_deadline_exceeded_then_completes_with_new_rs_available() -> None:
    now = 1_000_000.0
    old = _status(1, 4, 3, 3, "ReplicaSetUpdated", now - 30)
    stalled = calculate_status(3, 2, Strategy(), [], "web-new", old, now) | {
        "replicas": 4,
        "updatedReplicas": 1,
        "readyReplicas": 3,
        "availableReplicas": 3,
    }
    out = rollout_status(3, 2, 10, stalled, old, "web-new", now)
    cond = next(c for c in out["conditions"] if c["type"] == "Progressing")
    assert (cond["status"], cond["reason"]) == ("False", "ProgressDeadlineExceeded")
    done = stalled | {"replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3}
    out = rollout_status(3, 2, 10, done, old, "web-new", now)
    cond = next(c for c in out["conditions"] if c["type"] == "Progressing")
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "True",
        "NewReplicaSetAvailable",
        'ReplicaSet "web-new" has successfully progressed.',
    )
