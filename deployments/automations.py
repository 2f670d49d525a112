"""Crash detection and resume: what makes a dead worker's run finish on another worker.

Two Prefect automations, created idempotently (by name) by `deployments/serve.py` and by
`python -m deployments.setup` for work-pool installs:

    runbook: crash silent runs     a run tagged `runbook` sent a heartbeat and then nothing
                                   for SILENT_AFTER (no heartbeat, no final state): it is
                                   marked Crashed. Heartbeats come every HEARTBEAT_SECONDS
                                   from the flow's own process (PREFECT_FLOWS_HEARTBEAT_FREQUENCY).
    runbook: resume crashed runs   a Crashed run tagged `runbook` is set to Scheduled: a
                                   worker of its pool picks it up as a new attempt of the
                                   same flow run, which skips what its checkpoints say is
                                   done (tasks/checkpoints.py).

A run resumes at most `tasks.prefect_api.MAX_RESUMES` times; the next attempt ends Failed
and emits `runbook.resume.exhausted` (`resume_attempt`). Paused runs waiting for an
approval keep sending heartbeats, so waiting is never mistaken for dying.

With the defaults, a dead worker's run is moving again within 3 minutes of its last
heartbeat: SILENT_AFTER (90 s) + the triggers service's evaluation (a few seconds) + the
worker's poll (PREFECT_WORKER_QUERY_SECONDS, 10 s) + at most the lock's lease
(`tasks.prefect_api.LOCK_LEASE_SECONDS`, 60 s, which runs out meanwhile).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect.automations import Automation, ChangeFlowRunState, EventTrigger, Posture
from prefect.client.schemas.objects import StateType

HEARTBEAT_SECONDS = 30  # Prefect's minimum
SILENT_AFTER = timedelta(seconds=90)  # three missed heartbeats
TAG = "runbook"
DETECT = "runbook: crash silent runs"
RESUME = "runbook: resume crashed runs"
_FINAL = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}


def _ours() -> dict[str, Any]:
    return {"match": {"prefect.resource.id": "prefect.flow-run.*"},
            "match_related": {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{TAG}"}}


def automations(silent_after: timedelta = SILENT_AFTER) -> list[Automation]:
    """The two automations, as they should be."""
    detect = Automation(
        name=DETECT,
        description=f"A runbook run that sent no heartbeat for {silent_after.total_seconds():.0f} s lost its "
                    "process (a killed worker, a lost machine): mark it Crashed, so that it is resumed.",
        trigger=EventTrigger(after={"prefect.flow-run.heartbeat"}, expect={"prefect.flow-run.heartbeat", *_FINAL},
                             for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                             within=silent_after, **_ours()),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {silent_after.total_seconds():.0f} s: "
                                            "its worker died (runbook: crash silent runs)")],
    )
    resume = Automation(
        name=RESUME,
        description="Schedule a crashed runbook run again: a new attempt of the same flow run, which skips "
                    "its completed steps. tasks.prefect_api.resume_attempt stops it after MAX_RESUMES.",
        trigger=EventTrigger(expect={"prefect.flow-run.Crashed"}, for_each={"prefect.resource.id"},
                             posture=Posture.Reactive, threshold=1, within=timedelta(0), **_ours()),
        actions=[ChangeFlowRunState(state=StateType.SCHEDULED,
                                    message="resumed after a crash (runbook: resume crashed runs)")],
    )
    return [detect, resume]


def ensure_automations(silent_after: timedelta = SILENT_AFTER) -> list[str]:
    """Create the automations, or bring existing ones (same name) up to date. Returns what
    was done to each, for the caller to print."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    done = []
    with get_client(sync_client=True) as client:
        for wanted in automations(silent_after):
            core = AutomationCore(**wanted.model_dump(exclude={"id", "owner_resource"}))
            found = client.read_automations_by_name(wanted.name)
            if not found:
                client.create_automation(core)
                done.append(f"created automation {wanted.name!r}")
                continue
            for extra in found[1:]:  # two setups raced: keep one
                client.delete_automation(extra.id)
            current = AutomationCore(**found[0].model_dump(exclude={"id", "owner_resource"}))
            # Python-mode dumps: the triggers' sets (expect, after, for_each) compare as sets, not
            # as lists in whatever order a set iterates.
            if current.model_dump() == core.model_dump():
                done.append(f"automation {wanted.name!r} is up to date")
            else:
                client.update_automation(found[0].id, core)
                done.append(f"updated automation {wanted.name!r}")
    return done
