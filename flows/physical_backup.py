"""Physical backup of a whole cluster with pgBackRest, for the seeds' objectives a nightly
dump cannot meet ("Incremental DB hourly, RPO 1 hour"; "Database RTO 30 min, RPO 1 min"):

    pgbackrest --stanza=main stanza-create
    pgbackrest --stanza=main check
    pgbackrest --stanza=main --type=incr backup
    pgbackrest --stanza=main info

The WAL between backups is archived continuously by the primary's archive_command. Here the
backup is recorded (label, size, WAL range, LSNs, duration), and GFS retention over the full
backups expires old ones with `expire --set`, never the newest valid backup or one a kept
backup depends on.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from prefect import flow, task
from prefect.runtime import flow_run

from tasks import checkpoints, locks, pgbackrest, pitr, reports, retries
from tasks.config import EnvironmentConfig, check_choice, load_environment
from tasks.errors import PermanentError
from tasks.naming import artifact_key, namer
from tasks.physical_restores import read_catalogue
from tasks.prefect_api import HOOKS, holding, resume_attempt
from tasks.records import ClusterRecord

LOCK_TIMEOUT = timedelta(hours=6).total_seconds()


@task(**retries.policy("pgbackrest"), **checkpoints.REDO)
def prepare_stanza(env: EnvironmentConfig, cluster: str) -> bool:
    """`stanza-create` when the repository has none yet; True if this run created it."""
    return pgbackrest.stanza_create(env.cluster(cluster))


@task(**retries.policy("pgbackrest"), **checkpoints.EFFECT)
def take_backup(env: EnvironmentConfig, cluster: str, type: str, run_id: str) -> pgbackrest.PhysicalBackup:
    """`pgbackrest check` (the config is valid, a WAL segment reaches the repository) beside
    `pgbackrest backup --type=<type>`, annotated with the run; then `info` for what it took. A
    backup this run already took (before a crash) is found, not taken again."""
    cfg = env.cluster(cluster)
    taken = pgbackrest.info(cfg).taken_by(run_id)
    if taken is None:
        pgbackrest.checked_backup(cfg, type, run_id)
        taken = pgbackrest.info(cfg).taken_by(run_id)
    if taken is None:
        raise PermanentError(f"pgbackrest backup of {cluster} ended, but info lists no backup of run {run_id}")
    return taken


@task(**retries.policy("pgbackrest"), **checkpoints.REDO)
def expire_by_policy(env: EnvironmentConfig, cluster: str, now: datetime) -> pitr.ExpiryPlan:
    """Plan GFS retention over the full backups from what the repository holds now, then
    `pgbackrest expire --set` each full that goes (its diff and incr backups go with it)."""
    cfg = env.cluster(cluster)
    backups = [pitr.Backup(b.label, b.type, b.full_label, b.stop, not b.error) for b in pgbackrest.info(cfg).backups]
    plan = pitr.plan_expiry(backups, cfg.pgbackrest.retention, now=now, tz=ZoneInfo(env.timezone))
    for label in plan.expire:
        pgbackrest.expire_set(cfg, label)
    return plan


@flow(name="physical-backup", flow_run_name=namer("physical-backup"), **HOOKS)
def physical_backup(environment: str, cluster: str, type: Literal["incr", "diff", "full"] = "incr") -> dict[str, Any]:
    """Take a pgBackRest backup of a cluster: stanza-create (when missing), check beside the
    backup, its record from `info`, then GFS retention over the full backups. An incremental backup with no full
    before it is taken as a full by pgBackRest. A resumed run reuses the backup it took.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        cluster: The cluster, as named under `clusters` in the environment.
        type: "incr" (changes since the last backup), "diff" (since the last full) or "full".
    """
    env = load_environment(environment)
    cfg = env.cluster(cluster)
    type = check_choice("type", type, pgbackrest.BACKUP_TYPES, "a backup type")
    cfg.check_secrets()
    record = ClusterRecord("physical-backup", env.name, cluster)
    record.resumed(resume_attempt())
    run_id = str(flow_run.root_flow_run_id or flow_run.id or "local")
    try:
        with holding(locks.physical(env, cluster), timeout_seconds=LOCK_TIMEOUT):
            record.figures["stanza created by this run"] = prepare_stanza(env, cluster)
            backup = take_backup(env, cluster, type, run_id)
            record.figures.update(reports.physical_backup_figures(backup, type))
            plan = expire_by_policy(env, cluster, datetime.now(UTC))
            record.retention = plan.rows()
        record.catalogue = [b.as_row() for b in reversed(read_catalogue(env, cluster).backups)]
        record.outcome = "succeeded"
    except BaseException as exc:  # a failure, or a cancel's SIGTERM
        record.fail(exc)
        raise
    finally:
        reports.publish(reports.cluster(record))
    return {"runbook": "physical-backup", "environment": env.name, "cluster": cluster, "label": backup.label,
            "type": backup.type, "size": backup.size, "repo_size": backup.repo_size, "seconds": backup.seconds,
            "expired": list(plan.expire), "artifact": artifact_key("physical-backup", env.name, cluster)}


if __name__ == "__main__":
    import sys

    args = sys.argv[1:] + [None] * 3
    physical_backup(args[0] or "sandbox", args[1] or "main", args[2] or "incr")
