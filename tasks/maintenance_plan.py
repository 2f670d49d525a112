"""What a maintenance window does, and whether the next task still fits: pure.

The tasks come as a typed list (the flow's `tasks` parameter, or `maintenance.tasks` of the
environment for scheduled runs), each one of:

    {"kind": "vacuum_analyze", "database": "fleet", "tables": []}          # [] = every table
    {"kind": "reindex", "database": "fleet"}                               # CONCURRENTLY where it can
    {"kind": "terminate_stuck_queries", "database": "fleet", "older_than": "5m"}
    {"kind": "prune_backups", "database": "fleet"}                         # the retention policy
    {"kind": "check_certificates"}                                         # maintenance.certificates
    {"kind": "migrate", "database": "fleet", "target_version": null}       # the migrate-database runbook
    {"kind": "deploy", "service": "api", "image": "registry/app:v1.2.3"}   # the deploy runbook
    {"kind": "run_job", "service": "api", "name": "reports", "command": ["./rebuild"], "image": null}

each with an optional `estimate` ("10m"). Before a task starts, `next_step` says whether it
can finish before the window ends, leaving `margin` for the health check and maintenance
mode off: by its own estimate, else the config's estimate for its kind, else the longest of
its kind's recent durations. With none of them, it runs (nothing says it will not fit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator

from tasks import windows
from tasks.fields import Duration, Model


class _Task(Model):
    estimate: Duration | None = Field(None, description="How long it takes; past runs' durations when left out")

    @property
    def label(self) -> str:
        """The kind and what it acts on: `vacuum_analyze fleet`, `run_job reports`."""
        kind: str = self.kind  # type: ignore[attr-defined]
        target = next((v for f in ("database", "name", "service") if (v := getattr(self, f, None))), None)
        return f"{kind} {target}" if target else kind


class VacuumAnalyze(_Task):
    kind: Literal["vacuum_analyze"] = "vacuum_analyze"
    database: str = Field(description="A database of the environment")
    tables: list[str] = Field(default_factory=list, description="schema.table names; empty for every table")


class Reindex(_Task):
    kind: Literal["reindex"] = "reindex"
    database: str


class TerminateStuckQueries(_Task):
    kind: Literal["terminate_stuck_queries"] = "terminate_stuck_queries"
    database: str
    older_than: Duration = Field(timedelta(minutes=5), description="A transaction or query running longer is stuck")

    @field_validator("older_than")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("a duration above 0, like '5m'")
        return v


class PruneBackups(_Task):
    kind: Literal["prune_backups"] = "prune_backups"
    database: str


class CheckCertificates(_Task):
    kind: Literal["check_certificates"] = "check_certificates"


class Migrate(_Task):
    kind: Literal["migrate"] = "migrate"
    database: str
    target_version: int | str | None = None


class Deploy(_Task):
    kind: Literal["deploy"] = "deploy"
    service: str
    image: str


class RunJob(_Task):
    kind: Literal["run_job"] = "run_job"
    service: str = Field(description="The Job runs in this service's namespace, from its image unless `image`")
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$", description="Short name of the Job")
    command: list[str] = Field(min_length=1)
    image: str | None = None
    timeout: Duration = Field(timedelta(minutes=30))


MaintenanceTask = Annotated[VacuumAnalyze | Reindex | TerminateStuckQueries | PruneBackups | CheckCertificates
                            | Migrate | Deploy | RunJob, Field(discriminator="kind")]
KINDS = ("vacuum_analyze", "reindex", "terminate_stuck_queries", "prune_backups", "check_certificates", "migrate",
         "deploy", "run_job")
_TASKS: TypeAdapter[list[MaintenanceTask]] = TypeAdapter(list[MaintenanceTask])


def parse_tasks(raw: Sequence[Any], field: str = "tasks") -> list[MaintenanceTask]:
    """The typed tasks, or ValueError naming the entry, the key and what is allowed."""
    try:
        return _TASKS.validate_python([t.model_dump() if isinstance(t, Model) else t for t in raw])
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"] if p not in KINDS)
            problems.append(f"{field}[{where}]: {err['msg']}" if where else f"{field}: {err['msg']}")
        raise ValueError("; ".join(problems) + f" (kinds: {', '.join(KINDS)})") from None


@dataclass(frozen=True)
class Step:
    go: bool
    estimate: timedelta | None
    source: str  # "task", "config", "past runs" or "none"
    reason: str


def estimate_of(task: MaintenanceTask, configured: Mapping[str, timedelta],
                past: Mapping[str, Sequence[float]]) -> tuple[timedelta | None, str]:
    if task.estimate is not None:
        return task.estimate, "task"
    if task.kind in configured:
        return configured[task.kind], "config"
    if past.get(task.kind):
        return timedelta(seconds=max(past[task.kind])), "past runs"
    return None, "none"


def next_step(task: MaintenanceTask, now: datetime, window_end: datetime, margin: timedelta,
              configured: Mapping[str, timedelta], past: Mapping[str, Sequence[float]]) -> Step:
    """Whether `task` may start now: it must end `margin` before the window does."""
    if now.tzinfo is None or window_end.tzinfo is None:
        raise ValueError("now and window_end must be timezone-aware")
    estimate, source = estimate_of(task, configured, past)
    left = window_end - margin - now
    if left <= timedelta(0):
        return Step(False, estimate, source, f"no time left: the window ends at {window_end.isoformat()} and "
                                             f"{_text(margin)} are kept for the health check and mode off")
    if estimate is None:
        return Step(True, None, source, f"{_text(left)} left; no estimate for {task.kind}")
    if estimate > left:
        return Step(False, estimate, source, f"needs about {_text(estimate)} ({source}) but only {_text(left)} "
                                             f"are left before the window's end less {_text(margin)}")
    return Step(True, estimate, source, f"about {_text(estimate)} ({source}) of {_text(left)} left")


def record_duration(past: Mapping[str, Sequence[float]], kind: str, seconds: float,
                    keep: int = 5) -> dict[str, list[float]]:
    """The recent durations by kind, with this one added (the newest `keep` of each)."""
    updated = {k: list(v) for k, v in past.items()}
    updated[kind] = [*updated.get(kind, []), round(seconds, 3)][-keep:]
    return updated


def current_window(cfg: windows.WindowsConfig | None, name: str | None, now: datetime,
                   default_tz: str) -> tuple[windows.Occurrence | None, str]:
    """The maintenance window open now (the one named, or any), or None and why not: no
    window configured, a freeze, or outside it (naming the next one)."""
    configured = list(cfg.maintenance) if cfg else []
    if not configured:
        return None, "no maintenance window is configured (windows.maintenance); a maintenance run needs one"
    chosen = [w for w in configured if name is None or w.name == name]
    if not chosen:
        return None, f"window {name!r} is not configured; known: {', '.join(w.name for w in configured)}"
    assert cfg is not None
    freeze = windows.current_freeze(cfg.freezes, now, default_tz, "maintenance-window")
    if freeze is not None:
        return None, f"maintenance is frozen: {freeze.describe()}"
    occurrence = windows.in_window(chosen, now, default_tz)
    if occurrence is not None:
        return occurrence, f"inside {occurrence.describe()}"
    which = f"window {name!r}" if name else "every maintenance window"
    upcoming = windows.next_window(chosen, now, default_tz)
    return None, (f"outside {which}; the next is {upcoming.describe()}" if upcoming
                  else f"outside {which}, and none is coming")


def window_fields(occurrence: windows.Occurrence) -> tuple[str, str, str]:
    """The occurrence as a record keeps it: described, start and end in ISO 8601."""
    return occurrence.describe(), occurrence.start.isoformat(), occurrence.end.isoformat()


def durations_variable(environment: str) -> str:
    """The Prefect Variable holding recent task durations of an environment's windows."""
    return f"maintenance-durations-{environment}"


def _text(d: timedelta) -> str:
    seconds = int(d.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"
