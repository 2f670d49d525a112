"""The job controller: a Job runs pods until `completions` succeed or more than
`backoffLimit` fail (or `activeDeadlineSeconds` passes), then gets the conditions the
real controller sets: SuccessCriteriaMet and Complete, or FailureTarget and Failed.
How each pod ends is the kubelet's business (image rules: `job`, `exit_code`, `logs`).
Failed pods are replaced at once: the sandbox skips the real exponential back-off.
"""

from __future__ import annotations

import copy
from typing import Any

from sandbox.kube import clock, errors, resources
from sandbox.kube.controllers import controller_uid, create_pod_from_template, pod_ready
from sandbox.kube.events import EventRecorder
from sandbox.kube.registry import Registry

JOBS = resources.storage_resource("Job")
PODS = resources.storage_resource("Pod")

Obj = dict[str, Any]


def finished(job: Obj) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def _condition(type_: str, reason: str, message: str, now: float) -> Obj:
    ts = clock.rfc3339(now)
    return {
        "type": type_,
        "status": "True",
        "lastProbeTime": ts,
        "lastTransitionTime": ts,
        "reason": reason,
        "message": message,
    }


class JobController:
    component = "job-controller"

    def __init__(self, registry: Registry, events: EventRecorder) -> None:
        self.registry = registry
        self.events = events

    def sync_all(self, now: float) -> None:
        pods = self.registry.list(PODS, None, readonly=True)["items"]
        for job in self.registry.list(JOBS, None, readonly=True)["items"]:
            uid = job["metadata"]["uid"]
            try:
                self.sync(job, [p for p in pods if controller_uid(p) == uid], now)
            except (errors.Conflict, errors.NotFound):
                continue

    def sync(self, job: Obj, pods: list[Obj], now: float) -> None:
        if finished(job):
            return
        spec = job["spec"]
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        old = job.get("status") or {}
        status = copy.deepcopy(old)
        status.setdefault("startTime", clock.rfc3339(now))
        active = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        succeeded = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Succeeded")
        failed = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Failed")
        completions = spec.get("completions") or 1
        deadline = spec.get("activeDeadlineSeconds")
        outcome: tuple[str, str, str] | None = None
        if failed > spec.get("backoffLimit", 6):
            outcome = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif deadline is not None and clock.parse(status["startTime"]) + deadline < now:
            outcome = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        elif succeeded >= completions:
            outcome = ("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
        elif not spec.get("suspend"):
            wanted = min(spec.get("parallelism", 1), completions - succeeded) - len(active)
            for _ in range(max(wanted, 0)):
                active.append(create_pod_from_template(self.registry, self.events, job, self.component))
        if outcome is not None and outcome[0] == "Failed":
            for pod in active:
                try:
                    self.registry.delete(PODS, namespace, pod["metadata"]["name"])
                except errors.NotFound:
                    pass
            active = []
        status.update(
            active=len(active),
            succeeded=succeeded,
            failed=failed,
            ready=sum(1 for p in active if pod_ready(p)),
            terminating=0,
            uncountedTerminatedPods={},
        )
        if outcome is not None:
            type_, reason, message = outcome
            first = "SuccessCriteriaMet" if type_ == "Complete" else "FailureTarget"
            status["conditions"] = [
                *(status.get("conditions") or []),
                _condition(first, reason, message, now),
                _condition(type_, reason, message, now),
            ]
            if type_ == "Complete":
                status["completionTime"] = clock.rfc3339(now)
                self.events.record(job, "Normal", "Completed", "Job completed", self.component)
            else:
                self.events.record(job, "Warning", reason, message, self.component)
        for key in ("active", "succeeded", "failed"):
            if status[key] == 0:
                status.pop(key)
        if status != old:
            self.registry.mutate(
                JOBS, namespace, name, lambda obj: obj.__setitem__("status", status), subresource="status"
            )
