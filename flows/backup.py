"""Nightly database backup, as the seeds' runbooks describe it:

    pg_dump -Fc evfleet > evfleet_$(date).dump
    aws s3 cp evfleet_*.dump s3://sev-backups/db/
    pg_restore --list evfleet_*.dump | head -20
    find /backups -mtime +30 -delete

done so that nobody has to check it: a consistent snapshot with exact row counts, streamed
to storage with its checksum, verified, committed by a manifest, and pruned by a
retention policy that never removes the newest good backup.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.transactions import Transaction, transaction

from tasks import azure, azure_plan, backups, checkpoints, locks, postgres, reports, retries
from tasks.backup_steps import apply_retention
from tasks.config import DatabaseConfig, EnvironmentConfig, load_environment
from tasks.errors import CheckFailed, PermanentError, RunbookError
from tasks.faults import fault_point
from tasks.naming import artifact_key, namer
from tasks.prefect_api import HOOKS, holding, remember_for_rollback, resume_attempt
from tasks.redact import scrub
from tasks.retention import RetentionPlan
from tasks.storage import open_storage

LOCK_TIMEOUT = timedelta(hours=4).total_seconds()


# --- tasks ----------------------------------------------------------------------------------------


@task(**retries.policy("postgres"), **checkpoints.OBSERVE)
def preflight(env: EnvironmentConfig, database: str) -> dict[str, Any]:
    """The database answers, pg_dump is new enough for the server, storage takes writes."""
    cfg = env.database(database)
    server = postgres.server_for(cfg)
    with postgres.connect(server, cfg.dbname) as conn:
        version = postgres.server_version_num(conn)
    server_major = postgres.major_of(version)
    dump_major = backups.pg_dump_major(server_major)
    if dump_major < server_major:
        raise PermanentError(f"pg_dump {dump_major} is older than the server ({server_major}); "
                             f"install postgresql-client-{server_major} or set PG_BIN_DIR")
    storage = open_storage(cfg.storage)
    probe = f"{database}/.probe-{backups.new_backup_id()}"
    storage.put_bytes(probe, b"ok")
    storage.delete_prefix(probe)
    aborted = storage.abort_stale_uploads(f"{database}/")
    return {"server": server.describe(), "server_version": version, "pg_dump_major": dump_major,
            "stale_uploads_aborted": aborted}


@task(**checkpoints.CHECKPOINT)
def allocate_backup_id(env: EnvironmentConfig, database: str) -> str:
    """The checkpoint: this run's backup id, so that every attempt writes under one prefix."""
    return backups.new_backup_id()


@task(**retries.policy("postgres"), **checkpoints.EFFECT)
def dump_to_storage(env: EnvironmentConfig, database: str, run_id: str | None, backup_id: str,
                    pg_dump_major: int) -> backups.Manifest:
    """Snapshot, then pg_dump --snapshot streamed into storage (compressed on the way for
    zstd) while the snapshot's exact row counts are counted beside it. What an
    earlier attempt of this run left under the backup's prefix is discarded first."""
    logger = get_run_logger()
    cfg = env.database(database)
    server = postgres.server_for(cfg)
    storage = open_storage(cfg.storage)
    prefix = backups.backup_prefix(database, backup_id)
    remember_for_rollback(cfg=cfg, prefix=prefix)
    storage.abort_stale_uploads(prefix)
    if storage.delete_prefix(prefix):
        logger.warning("discarded what an earlier attempt of this run left under %s; dumping again", prefix)
    progress_id = create_progress_artifact(progress=0.0, key=artifact_key("backup-progress", env.name, database),
                                           description=f"pg_dump of {database} into {cfg.storage.url}")

    def on_progress(fraction: float, written: int) -> None:
        update_progress_artifact(progress_id, progress=round(fraction * 100, 1))
        logger.info("dumping %s: %.0f%% of table data, %.1f MB written", database, fraction * 100, written / 1e6)

    manifest = backups.take_dump(server, cfg, env.name, database, storage, backup_id, run_id, pg_dump_major,
                                 on_progress)
    update_progress_artifact(progress_id, progress=100.0)
    return manifest


@dump_to_storage.on_rollback
def discard_upload(txn: Transaction) -> None:
    """Undo of `dump_to_storage`: a backup that did not commit leaves nothing behind."""
    cfg: DatabaseConfig = txn.get("cfg")
    open_storage(cfg.storage).delete_prefix(txn.get("prefix"))


@task(**retries.policy("storage"), **checkpoints.OBSERVE)
def verify_backup(env: EnvironmentConfig, manifest: backups.Manifest) -> backups.Manifest:
    """Read the stored objects back against their checksums; read the archive's TOC."""
    storage = open_storage(env.database(manifest.database).storage)
    started = time.monotonic()
    toc = backups.verify_stored(storage, backups.backup_prefix(manifest.database, manifest.backup_id),
                                manifest.files, manifest.backup_id, manifest.format,
                                manifest.server_version // 10000)
    missing = backups.tables_missing(manifest.row_counts, toc)
    if missing:
        raise CheckFailed(f"backup {manifest.backup_id}: tables missing from the archive: {', '.join(missing)}")
    durations = {**manifest.durations, "verify": round(time.monotonic() - started, 3)}
    return manifest.model_copy(update={"durations": durations})


@task(**retries.policy("storage"), **checkpoints.EFFECT)
def commit_manifest(env: EnvironmentConfig, manifest: backups.Manifest) -> backups.Manifest:
    """Write the manifest last: from here on the backup exists."""
    backups.write_manifest(open_storage(env.database(manifest.database).storage), manifest)
    return manifest


@task(**retries.policy("storage"), **checkpoints.OBSERVE)
def find_committed_backup(env: EnvironmentConfig, database: str, run_id: str | None) -> backups.Manifest | None:
    """A backup this same flow run already committed (a retry after a crash past upload)."""
    storage = open_storage(env.database(database).storage)
    return backups.read_catalogue(storage, database).for_run(run_id)


@task(**retries.policy("azure"), **checkpoints.EFFECT)
def take_server_backup(env: EnvironmentConfig, database: str, run_id: str | None) -> dict[str, Any]:
    """az postgres flexible-server backup create: Azure's own on-demand backup of the server,
    named after this run, so a new attempt finds it instead of taking another. It stays in
    Azure; the logical dump that follows is the copy that leaves it."""
    cfg = env.database(database).azure_server()
    name = azure_plan.backup_name(run_id or backups.new_backup_id())
    with azure.client(cfg) as arm:
        seconds = 0.0
        if azure.get_backup(arm, cfg, name) is None:
            _, _, seconds = azure.run_operation(arm, cfg, env.name, "backup", f"{cfg.server}-{name}",
                                                lambda: azure.start_backup(arm, cfg, name))
        done = azure.get_backup(arm, cfg, name)
    if done is None:
        raise CheckFailed(f"Azure's backup {name} of {cfg.server} finished, but the server does not list it")
    return {"server": cfg.server, "name": done.name, "kind": done.kind, "seconds": seconds,
            "completed_at": done.completed_at.isoformat() if done.completed_at else None}


@task(**checkpoints.REDO)
def backup_one(environment: str, database: str) -> dict[str, Any]:
    """Run one database's backup as a subflow and report its outcome without raising."""
    state = backup_database(environment, database, return_state=True)
    if state.is_completed():
        return {"database": database, "outcome": "ok", **state.result()}
    return {"database": database, "outcome": "failed", "error": scrub(state.message or state.name or "")}


# --- flows ------------------------------------------------------------------------------------------


@flow(name="backup-database", flow_run_name=namer("backup-database"), **HOOKS)
def backup_database(environment: str, database: str) -> dict[str, Any]:
    """Back up one database: preflight, consistent dump streamed to storage, verify,
    commit the manifest, apply retention, and report. A re-run of the same flow run
    reuses a backup it already committed instead of dumping again.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        database: The database to back up, as named under `databases` in the environment.
    """
    env = load_environment(environment)
    env.database(database).check_secrets()  # unknown database or missing secret: fails before anything runs
    resume_attempt()
    # A retry of this run, or of the backup_all run above it, finds what it committed.
    run_id = str(flow_run.root_flow_run_id or flow_run.id or "") or None
    manifest: backups.Manifest | None = None
    plan: RetentionPlan | None = None
    reused = False
    preflight_checks: dict[str, Any] = {}
    server_backup: dict[str, Any] | None = None
    try:
        with holding(locks.backup(env, database), timeout_seconds=LOCK_TIMEOUT):
            if env.database(database).kind == "azure-flexible":
                server_backup = take_server_backup(env, database, run_id)
            manifest = find_committed_backup(env, database, run_id)
            reused = manifest is not None
            if not reused:
                preflight_checks = preflight(env, database)
                with transaction():
                    dumped = dump_to_storage(env, database, run_id, allocate_backup_id(env, database),
                                             preflight_checks["pg_dump_major"])
                    verified = verify_backup(env, dumped)
                    fault_point("backup.before-manifest")
                    manifest = commit_manifest(env, verified)
            fault_point("backup.after-commit")
            plan = apply_retention(env, database, datetime.now(UTC))
    except BaseException as exc:  # a failure, or a cancel's SIGTERM
        reports.publish(reports.backup(env, database, manifest, reused, None, scrub(str(exc)), preflight_checks,
                                       server_backup))
        raise
    reports.publish(reports.backup(env, database, manifest, reused, plan, None, preflight_checks, server_backup))
    return {
        "runbook": "backup", "environment": env.name, "database": database, "backup_id": manifest.backup_id,
        "size": manifest.size, "sha256": manifest.sha256, "reused": reused,
        "rows": sum(manifest.row_counts.values()), "seconds": manifest.durations,
        "kept": len(plan.keep), "deleted": len(plan.delete), "azure_backup": server_backup,
        "artifact": artifact_key("backup", env.name, database),
    }


@flow(name="backup-all", flow_run_name=namer("backup-all"), **HOOKS,
      task_runner=ThreadPoolTaskRunner(max_workers=8), retries=1, retry_delay_seconds=60)
def backup_all(environment: str) -> list[dict[str, Any]]:
    """Back up every database of the environment, as one subflow each, at most
    `backup_concurrency` at a time. Fails if any backup failed.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
    """
    env = load_environment(environment)
    results = [f.result() for f in backup_one.map(environment, list(env.databases))]
    report = reports.backup_all(env, results)
    reports.publish(report)
    if report.failure:
        raise RunbookError(f"{report.failure} in {env.name}")
    return results


if __name__ == "__main__":
    import sys

    backup_all(sys.argv[1] if len(sys.argv) > 1 else "sandbox")
