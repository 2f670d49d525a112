"""Names a runbook gives to what it creates, and to its runs: pure functions, no I/O.

- Databases: the scratch copy of a restore test, the copies a restore-by-swap makes
  (`restore_names`), all within PostgreSQL's 63 bytes (it silently truncates longer
  identifiers, which would cut the time stamp off and make two runs collide).
- Prefect: artifact keys and concurrency limit names (^[a-z0-9-]*$).
- Kubernetes: a migration Job's name.
- Flow runs: a name made from the run's parameters, so that on-call can tell the runs
  apart in the runs list ("deploy api sandbox/app:v2 to sandbox"), and the tags every run
  carries: its environment and its runbook.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PG_NAME_MAX = 63  # bytes
K8S_NAME_MAX = 63


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (or concurrency limit name): lower-case letters, digits and '-'."""
    key = "-".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts if p)
    return re.sub(r"-{2,}", "-", key)[:100].strip("-")


# --- databases -----------------------------------------------------------------------------


def scratch_name(dbname: str, at: datetime, run_id: str) -> str:
    """A unique, recognisable scratch database name for a restore test."""
    suffix = re.sub(r"[^a-z0-9]", "", run_id.lower())[:8] or "manual"
    return f"rt_{dbname[:30]}_{at:%Y%m%d%H%M%S}_{suffix}".lower()


@dataclass(frozen=True)
class RestoreNames:
    live: str  # the database the apps use
    restored: str  # <db>_restore_<timestamp>: the backup is restored here
    kept: str  # <db>_pre_restore_<timestamp>: the live database after a swap


def restore_names(dbname: str, at: datetime) -> RestoreNames:
    """The names a restore uses, stamped with its UTC start time (a long database name is
    shortened in the copies' names, never the stamp)."""
    stamp = f"{at.astimezone(UTC):%Y%m%d%H%M%S}"
    base = dbname[: PG_NAME_MAX - len("_pre_restore_") - len(stamp)]
    return RestoreNames(dbname, f"{base}_restore_{stamp}", f"{base}_pre_restore_{stamp}")


# --- Kubernetes ----------------------------------------------------------------------------------


def job_name(*parts: str, run_id: str) -> str:
    """`<parts>-<run>`: a Kubernetes Job name, unique per run (an attempt of the same run finds
    the Job an earlier one started)."""
    return artifact_key(*parts, run_id[:8])[:K8S_NAME_MAX].strip("-")


def migration_job_name(database: str, run_id: str) -> str:
    """`migrate-<database>-<run>`."""
    return job_name("migrate", database, run_id=run_id)


# --- flow runs ---------------------------------------------------------------------------------


def _given(value: Any) -> bool:
    """A parameter set to something other than its "from config"/"none" default."""
    return value not in (None, "", "from config", "none")


def _opt(value: Any, text: str) -> str:
    return text if _given(value) else ""


_RUN_NAMES: dict[str, Callable[[dict[str, Any]], str]] = {
    "backup-all": lambda p: f"backup-all in {p['environment']}",
    "backup-database": lambda p: f"backup {p['database']} in {p['environment']}",
    "restore-test": lambda p: (f"restore-test {p['database']} in {p['environment']}"
                               + _opt(p.get("backup_id"), f" from {p.get('backup_id')}")),
    "restore-database": lambda p: (f"restore {p['database']} in {p['environment']} from "
                                   f"{p.get('backup_id') if _given(p.get('backup_id')) else 'the newest backup'}"
                                   f" ({p.get('mode', 'swap')})"),
    "migrate-database": lambda p: (f"migrate {p['database']} in {p['environment']}"
                                   + _opt(p.get("target_version"), f" to V{p.get('target_version')}")
                                   + (" (dry run)" if p.get("dry_run") else "")),
    "deploy": lambda p: (f"deploy {p['service']} {p['image']} to {p['environment']}"
                         + _opt(p.get("strategy"), f" ({p.get('strategy')})")
                         + _opt(p.get("migrate"), f", migrate {p.get('migrate')}")
                         + (" (emergency)" if p.get("emergency") is True else "")),
    "rollback": lambda p: (f"rollback {p['service']} in {p['environment']}"
                           + _opt(p.get("to_revision"), f" to revision {p.get('to_revision')}")
                           + _opt(p.get("with_database"), f" with database {p.get('with_database')}")),
    "physical-backup": lambda p: f"physical-backup {p.get('type', 'incr')} of {p['cluster']} in {p['environment']}",
    "pitr-restore": lambda p: (f"pitr-restore {p['cluster']} in {p['environment']} to {p['target_time']}"
                               + _opt(p.get("extract_database"), f", extract {p.get('extract_database')}")),
    "physical-restore-test": lambda p: f"physical-restore-test {p['cluster']} in {p['environment']}",
    "archive-health": lambda p: f"archive-health {p['cluster']} in {p['environment']}",
    "dr-failover": lambda p: (("planned switchover" if p.get("planned") is True else "failover")
                              + f" in {p['environment']}" + (" (forced)" if p.get("force") is True else "")),
    "azure-failover": lambda p: (("planned promotion" if p.get("planned") is True else "forced promotion")
                                 + f" of {p['database']}'s replica in {p['environment']}"),
    "azure-restore": lambda p: (f"azure-restore {p['database']} in {p['environment']} to "
                                f"{p.get('point_in_time') if _given(p.get('point_in_time')) else 'now'}"),
    "azure-restore-test": lambda p: f"azure-restore-test {p['database']} in {p['environment']}",
    "rebuild-replica": lambda p: f"rebuild-replica in {p['environment']}",
    "primary-watch": lambda p: f"primary-watch in {p['environment']}",
    "dr-drill": lambda p: f"dr-drill in {p['environment']}",
    "maintenance-window": lambda p: (f"maintenance-window in {p['environment']}"
                                     + _opt(p.get("window"), f" ({p.get('window')})")),
    "scale": lambda p: f"scale {p['service']} to {p['replicas']} in {p['environment']}",
    "restart": lambda p: f"restart {p['service']} in {p['environment']}",
    "autoscale": lambda p: (f"autoscale {p['service']} {p['min']}-{p['max']} at {p['cpu_percent']}% cpu "
                            f"in {p['environment']}"),
}
RUNBOOKS = tuple(_RUN_NAMES)


def run_name(runbook: str, params: Mapping[str, Any]) -> str:
    """A run's name from its parameters, e.g. `deploy api sandbox/app:v2 to sandbox`. A
    parameter that is missing (a bad call Prefect is about to refuse) shows as `?`."""
    return _RUN_NAMES[runbook](defaultdict(lambda: "?", params))


def namer(runbook: str) -> Callable[[], str]:
    """For `@flow(flow_run_name=...)`: names the run from its parameters when it starts."""

    def name() -> str:
        from prefect.runtime import flow_run

        return run_name(runbook, flow_run.parameters)

    name.__name__ = f"{runbook.replace('-', '_')}_run_name"
    return name


def run_tags(runbook: str, params: Mapping[str, Any]) -> list[str]:
    """The tags of every run: the project's, its runbook's and its environment's."""
    tags = {"runbook", runbook}
    if params.get("environment"):
        tags.add(str(params["environment"]))
    return sorted(tags)
