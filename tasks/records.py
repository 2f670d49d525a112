"""What a run did, filled in step by step by its flow: the input of its report
(`tasks.reports`), its `runbook.*` event and its return value.

A record holds facts, never markdown. Its properties derive figures from those facts
(the schema version a migration reached, how long the apps were down), so that the
report, the event and the return value cannot disagree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tasks import checks
from tasks.backups import Manifest
from tasks.checks import Check
from tasks.errors import PolicyRefused
from tasks.migration_plan import Applied, Migration, Plan
from tasks.naming import RestoreNames
from tasks.redact import scrub


@contextmanager
def timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Record how long a step took, also when it fails."""
    clock = time.monotonic()
    try:
        yield
    finally:
        timings[step] = round(time.monotonic() - clock, 3)


@contextmanager
def held(record: DeployRecord | MigrationRecord) -> Iterator[None]:
    """When the run held its lock (epoch seconds): two runs' spans never overlap."""
    record.held_from = time.time()
    try:
        yield
    finally:
        record.held_until = time.time()


@dataclass(kw_only=True)
class RunRecord:
    """What every run records: how it ended, what failed, how long each step took."""

    outcome: str = "running"
    failure: str | None = None  # scrubbed of secrets
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # facts for the report, e.g. what a resumed attempt found
    attempt: int = 1  # 2 and up: resumed after its worker died (tasks.prefect_api.resume_attempt)

    def resumed(self, attempt: int) -> None:
        self.attempt = attempt
        if attempt > 1:
            self.notes.append(f"Attempt {attempt} of this flow run: its worker died {attempt - 1} time(s) and the "
                              "run was resumed; steps recorded as done were not repeated.")

    def fail(self, exc: BaseException) -> None:
        if not isinstance(exc, Exception):  # SIGTERM from a cancel (TerminationSignal), Ctrl-C
            self.outcome, self.failure = "cancelled", f"cancelled ({type(exc).__name__})"
            return
        self.outcome, self.failure = "failed", scrub(str(exc))


# --- deploy ----------------------------------------------------------------------------------------


@dataclass
class DeployRecord(RunRecord):
    environment: str
    service: str
    image: str
    strategy: str
    approver: str | None = None
    backup_id: str | None = None
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    analyses: list[dict[str, Any]] = field(default_factory=list)
    smoke: list[Check] = field(default_factory=list)
    changed: bool = False  # the new image reached the cluster: a failure after this rolls back
    rolled_back: bool = False
    detected_at: float | None = None  # epoch seconds: the failure was first seen
    recovery_seconds: float | None = None
    migration: dict[str, Any] | None = None
    held_from: float | None = None  # when this run held the deploy lock (epoch seconds)
    held_until: float | None = None

    def recovered(self, healthy_at: float | None) -> None:
        """Healthy again after a rollback: the time to recovery counts from the first failure seen."""
        if healthy_at and self.detected_at:
            self.recovery_seconds = round(healthy_at - self.detected_at, 3)


# --- migrate ----------------------------------------------------------------------------------------


@dataclass
class MigrationRecord(RunRecord):
    environment: str
    database: str
    mode: str  # "sql" (files in a folder) or "job" (the application's command)
    dry_run: bool
    source: str = ""  # the folder, or the Job's command
    target: int | None = None
    plan: Plan | None = None
    applied: list[Applied] = field(default_factory=list)
    running: Migration | None = None  # the migration that was being applied when the run failed
    backup_id: str | None = None
    image: str | None = None
    job: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    held_from: float | None = None  # when this run held the migration lock (epoch seconds)
    held_until: float | None = None

    @property
    def newly_applied(self) -> list[Applied]:
        return [a for a in self.applied if not a.already]

    @property
    def schema_version(self) -> int | None:
        if self.plan is None:
            return None
        return max([self.plan.applied_version, *(a.version for a in self.applied)])

    @property
    def planned_version(self) -> int | None:
        if self.plan is None:
            return None
        return max([self.plan.applied_version, *(m.version for m in self.plan.pending)])

    @property
    def final_outcome(self) -> str:
        """What a run that did not fail did."""
        if self.dry_run:
            return "dry run"
        return "succeeded" if self.newly_applied or self.mode == "job" else "up to date"


# --- restore --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class App:
    """A service that uses the database, and the replicas it ran before the restore."""

    service: str
    namespace: str
    deployment: str
    replicas: int


@dataclass
class RestoreRecord(RunRecord):
    environment: str
    database: str
    mode: str
    names: RestoreNames
    approver: str | None = None
    backup: dict[str, Any] = field(default_factory=dict)
    original_oid: int | None = None
    apps: list[App] = field(default_factory=list)
    replicas_after: dict[str, int] = field(default_factory=dict)
    sessions_terminated: int = 0
    checks: list[Check] = field(default_factory=list)
    down_from: float | None = None  # epoch seconds: the first scale to 0
    healthy_at: float | None = None  # epoch seconds: every app healthy again
    changed: bool = False  # production was touched: apps scaled or sessions terminated
    swapped: bool = False
    scratch: str = ""  # what became of the restored copy after a failure
    recovery: dict[str, Any] = field(default_factory=dict)

    @property
    def app_down_seconds(self) -> float | None:
        if self.down_from is None or self.healthy_at is None:
            return None
        return round(self.healthy_at - self.down_from, 3)

    def chose(self, manifest: Manifest) -> None:
        self.backup = {"backup_id": manifest.backup_id, "taken_at": manifest.snapshot_time,
                       "size_mb": round(manifest.size / 1e6, 2), "sha256": manifest.sha256}

    @property
    def replicas_before(self) -> dict[str, int]:
        return {a.service: a.replicas for a in self.apps}


# --- clusters: physical backups, PITR, physical restore tests, archive health ------------------------


@dataclass
class ClusterRecord(RunRecord):
    """What a physical runbook did to a cluster: its figures, checks and the catalogue after."""

    runbook: str  # physical-backup | pitr-restore | physical-restore-test | archive-health
    environment: str
    cluster: str
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    catalogue: list[dict[str, Any]] = field(default_factory=list)  # the backups, newest first
    retention: list[dict[str, Any]] = field(default_factory=list)  # the expiry plan's rows

    @property
    def passed(self) -> bool:
        return self.failure is None and all(c.passed for c in self.checks)

    def absorb(self, restored: dict[str, Any]) -> None:
        """What `restore_instance` returned: where the instance runs, what an earlier attempt left."""
        self.figures["instance"] = restored["address"]
        self.figures["data directory"] = restored["instance"].data_dir
        self.figures["found on the host"] = restored["found"]
        self.timings.update(restored["timings"])

    def failed_checks(self) -> str | None:
        return checks.failures(self.checks)


# --- DR: failover, rebuild, watch, drill ------------------------------------------------------


@dataclass
class DrRecord(RunRecord):
    """What a DR runbook did to the pair: a timeline of its steps, the assessment before any
    change, the decision, and the measured RTO and RPO."""

    runbook: str  # dr-failover | rebuild-replica | primary-watch | dr-drill
    environment: str
    reason: str = ""
    planned: bool = False
    force: bool = False
    approver: str | None = None
    assessment: dict[str, Any] = field(default_factory=dict)
    decision: str | None = None
    decided_at: str | None = None  # ISO time: the RTO clock starts here
    healthy_at: str | None = None  # ISO time: the application answers healthy through the new primary
    old_primary: str | None = None
    new_primary: str | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)  # {"at", "step", "detail"}
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # probes (watch) or runs (drill)

    def assessed(self, old_primary: str, target: str, at: str, figures: dict[str, Any]) -> None:
        self.old_primary, self.new_primary, self.assessment = old_primary, target, figures
        self.step(at, "assessed", f"{figures.get('data at risk (bytes)')} bytes at risk")

    def fail(self, exc: BaseException) -> None:
        super().fail(exc)
        if isinstance(exc, PolicyRefused):
            self.outcome = "refused"

    def step(self, at: str, step: str, detail: str) -> None:
        self.timeline.append({"at": at, "step": step, "detail": scrub(detail)})

    @property
    def passed(self) -> bool:
        return self.failure is None and all(c.passed for c in self.checks)

    @property
    def rto_seconds(self) -> float | None:
        from datetime import datetime

        if not self.decided_at or not self.healthy_at:
            return None
        return round((datetime.fromisoformat(self.healthy_at) - datetime.fromisoformat(self.decided_at))
                     .total_seconds(), 3)

    def failed_checks(self) -> str | None:
        return checks.failures(self.checks)


# --- maintenance windows ------------------------------------------------------------------------


@dataclass
class MaintenanceRecord(RunRecord):
    """What a maintenance window did: the window, a timeline against it, each task's result
    and figures, and maintenance mode on and off (also what an earlier run left on)."""

    environment: str
    window: str | None = None  # the occurrence, described
    window_start: str | None = None  # ISO
    window_end: str | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)  # {"at", "into window", "step", "detail"}
    tasks: list[dict[str, Any]] = field(default_factory=list)  # {"task", "result", "seconds", "estimate", "figures"}
    checks: list[Check] = field(default_factory=list)
    left_on: dict[str, Any] | None = None  # maintenance mode an earlier run left on, turned off first
    mode_on: bool = False
    mode_off: bool | None = None  # None: never turned on
    announced: bool = False  # the start was announced: so is the end

    def step(self, at: datetime, step: str, detail: str) -> None:
        into = ""
        if self.window_start is not None:
            seconds = int((at - datetime.fromisoformat(self.window_start)).total_seconds())
            into = f"{'-' if seconds < 0 else '+'}{abs(seconds) // 60}m{abs(seconds) % 60:02d}s"
        self.timeline.append({"at": at.isoformat(timespec="seconds"), "into window": into, "step": step,
                              "detail": scrub(detail)})

    def fail(self, exc: BaseException) -> None:
        super().fail(exc)
        if isinstance(exc, PolicyRefused):
            self.outcome = "refused"

    def task_result(self, label: str, result: str, seconds: float | None, estimate: str, detail: str,
                    figures: dict[str, Any] | None = None) -> None:
        self.tasks.append({"task": label, "result": result, "seconds": seconds, "estimate": estimate,
                           "detail": scrub(detail), "figures": scrub(_figures_text(figures or {}))})

    @property
    def skipped(self) -> list[str]:
        return [t["task"] for t in self.tasks if t["result"] == "skipped"]

    @property
    def passed(self) -> bool:
        return (self.failure is None and all(c.passed for c in self.checks)
                and all(t["result"] in ("done", "skipped") for t in self.tasks))

    def failed_checks(self) -> str | None:
        bad = [f"{t['task']}: {t['detail']}" for t in self.tasks if t["result"] == "failed"]
        return "; ".join(filter(None, [checks.failures(self.checks), *bad])) or None


def _figures_text(figures: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in figures.items())
