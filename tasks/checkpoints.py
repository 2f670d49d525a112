"""What a new attempt of the same flow run reuses: the cache policy of every runbook task.

A flow run that dies (a killed worker, a lost machine) is marked Crashed and scheduled
again (`deployments/automations.py`). The new attempt has the same flow run id and runs
the flow from the top; Prefect then answers each task from its persisted result when the
task's cache key matches. Three kinds of task, three policies:

    @task(**checkpoints.OBSERVE)     read the world again on every attempt
    @task(**checkpoints.CHECKPOINT)  what the first attempt saw before it changed anything
    @task(**checkpoints.EFFECT)      a change, done once per flow run
    @task(**checkpoints.REDO)        a change made again by every attempt, from a clean start

OBSERVE is for reads that decide (rollout status, analysis measurements, health, what is in
storage now): an answer from before a crash would be stale. CHECKPOINT is for reads that
later steps must compare against, and that the run's own changes would overwrite: the image
before the deploy, the apps' replicas before a restore scaled them to 0, the names and the
backup chosen. EFFECT is for changes (set image, upload, swap, scale, apply a migration): the
key is inputs + task source + flow run id (Prefect's DEFAULT), so a new attempt of the same
run skips them once recorded, and a new run does them again. REDO is for changes whose
result may be gone by the time a new attempt starts (a restore test's scratch copy, dropped
at the end; sessions terminated; retention planned from what storage holds now; the report):
they are idempotent by starting clean, so doing them again is the safe way.

Tasks inside a Prefect `transaction()` record their results only when the whole transaction
commits (its commit mode is LAZY). A crash inside one therefore replays its changes; each
change is idempotent on its own ("set image X" when X is set is a no-op, a swap checks the
databases' oids first), so the replay changes nothing twice and stages its undo hook again,
which is what lets the new attempt still compensate. docs/architecture.md lists every task.

Results go to Prefect's result storage, a setting of the installation: a local folder by
default (PREFECT_RESULTS_LOCAL_STORAGE_PATH), an S3Bucket block for workers on several
machines (PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK; docs/operations.md).
"""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import DEFAULT, NO_CACHE

OBSERVE: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}
CHECKPOINT: dict[str, Any] = {"cache_policy": DEFAULT, "persist_result": True}
EFFECT: dict[str, Any] = {"cache_policy": DEFAULT, "persist_result": True}
REDO: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}

KINDS = {"OBSERVE": OBSERVE, "CHECKPOINT": CHECKPOINT, "EFFECT": EFFECT, "REDO": REDO}
