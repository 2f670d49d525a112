"""Migrate a database schema, as the seeds' runbooks do it by hand:

    pg_dump -Fc evfleet > evfleet_before_migration.dump
    mvn flyway:migrate            # or: kubectl exec deploy/backend -- python migrate.py
    mvn flyway:info
    psql evfleet -c "SELECT count(*) FROM vehicles"   # the critical queries

Here: one migration per database at a time (a PostgreSQL advisory lock), a backup as the
checkpoint before the first change, each SQL file in its own transaction with lock and
statement timeouts (or the application's own migration command as a Kubernetes Job),
the verification queries after, and a report that says what was applied and how to go
back. A re-run applies only what is pending; a dry run only lists it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from prefect import flow, task
from prefect.runtime import flow_run

from flows.backup import backup_database
from tasks import (
    changes,
    checkpoints,
    checks,
    kubernetes,
    migration_plan,
    migrations,
    postgres,
    reports,
    retries,
)
from tasks.config import EnvironmentConfig, load_environment, validate_image
from tasks.errors import CheckFailed, ConfigError
from tasks.migration_plan import Applied, Migration, Plan
from tasks.naming import artifact_key, migration_job_name, namer
from tasks.prefect_api import HOOKS, resume_attempt
from tasks.records import MigrationRecord, held, timed
from tasks.restores import run_smoke_queries


def run_id() -> str:
    return str(flow_run.id or "manual")


# --- validation (before any side effect) ----------------------------------------------------------


def check_parameters(env: EnvironmentConfig, database: str, target_version: Any, image: str | None) -> None:
    """Parameters that do not fit the database's kind of migrations. An image with SQL files
    is allowed (a deploy passes the image it deploys) and only shown in the report."""
    job = env.database(database).migrations.job
    if job is not None and target_version not in (None, ""):
        raise ConfigError(f"target_version {target_version!r} is for SQL files; database {database!r} in "
                          f"{env.name!r} migrates with its application's command ({' '.join(job.command)}), "
                          "which decides the version itself; leave target_version unset")
    if job is not None and image is not None:
        validate_image(image, env.service(job.service))


def read_files(env: EnvironmentConfig, database: str, target_version: Any, record: MigrationRecord) -> list[Migration]:
    """The SQL files, refused on a malformed name, a gap, a duplicate or a bad target_version;
    none when the application's Job migrates."""
    cfg = env.database(database).migrations
    if cfg.job is not None:
        record.source = " ".join(cfg.job.command)
        return []
    folder = migration_plan.folder_for(database, cfg.path)
    files = migration_plan.read_migrations(folder)
    record.source, record.target = str(folder), migration_plan.parse_target(target_version, files)
    return files


# --- tasks ------------------------------------------------------------------------------------------


@task(**retries.policy("postgres"), **checkpoints.OBSERVE)
def plan_migrations(env: EnvironmentConfig, database: str, files: list[Migration], target: int | None) -> Plan:
    """`flyway info`: compare the files with the history table (read only). Refuses a
    changed applied file, a target below what is applied, an unresolved failure."""
    cfg = env.database(database)
    with postgres.connect(postgres.server_for(cfg), cfg.dbname) as conn:
        history = migrations.read_history(conn)
    return migration_plan.plan(files, history, target)


@task(**retries.policy("postgres"), **checkpoints.EFFECT)
def ensure_history_table(env: EnvironmentConfig, database: str) -> bool:
    cfg = env.database(database)
    with postgres.connect(postgres.server_for(cfg), cfg.dbname) as conn:
        return migrations.ensure_history_table(conn)


@task(**retries.policy("postgres"), **checkpoints.EFFECT)
def apply_migration(env: EnvironmentConfig, database: str, migration: Migration, flow_run_id: str) -> Applied:
    """Apply one file with lock_timeout and statement_timeout, recording it in the history.
    A transactional file rolled back by a lock timeout or deadlock is retried."""
    cfg = env.database(database)
    return migrations.apply(postgres.server_for(cfg), cfg.dbname, migration, cfg.migrations.lock_timeout,
                            cfg.migrations.statement_timeout, flow_run_id)


@task(**retries.policy("postgres"), **checkpoints.OBSERVE)
def verify_schema(env: EnvironmentConfig, database: str) -> list[checks.Check]:
    """The verification queries from config, read only, each against its expectation."""
    cfg = env.database(database)
    with postgres.connect(postgres.server_for(cfg), cfg.dbname) as conn:
        return run_smoke_queries(conn, cfg.migrations.verify_queries)


@task(**retries.policy("kubernetes"), **checkpoints.OBSERVE)
def current_image(env: EnvironmentConfig, service: str) -> str:
    """The image the service runs now: the one its migrations belong to."""
    with kubernetes.api_client(env.kubernetes) as api:
        return kubernetes.live_image(api, env.service(service))


@task(**checkpoints.EFFECT)
def run_migration_job(env: EnvironmentConfig, database: str, image: str, name: str) -> dict[str, Any]:
    """`kubectl create job ... -- <command>` from the application's image; wait for it,
    keep its log and exit code."""
    job = env.database(database).migrations.job
    assert job is not None
    svc = env.service(job.service)
    with kubernetes.api_client(env.kubernetes) as api:
        result = kubernetes.run_job(api, svc.namespace, name, image, job.command, job.timeout.total_seconds())
    return {"name": name, "namespace": svc.namespace, **asdict(result)}


# --- steps ------------------------------------------------------------------------------------------


@contextmanager
def migration_lock(env: EnvironmentConfig, database: str, record: MigrationRecord) -> Iterator[None]:
    """One migration per database at a time; a second run fails at once, naming the holder."""
    cfg = env.database(database)
    with migrations.advisory_lock(postgres.server_for(cfg), cfg.dbname, f"runbook-migrate {run_id()}"), held(record):
        yield


def checkpoint(env: EnvironmentConfig, database: str, record: MigrationRecord) -> None:
    """The backup to go back to, before the first change (migrations.backup_first)."""
    if env.database(database).migrations.backup_first:
        with timed(record.timings, "backup"):
            record.backup_id = backup_database(env.name, database)["backup_id"]


def list_pending(env: EnvironmentConfig, database: str, files: list[Migration], record: MigrationRecord) -> None:
    """flyway info: what is pending, with checksums; no lock, no history table, no backup.
    The application's own command decides its plan itself: nothing to list."""
    if record.mode == "job":
        return
    record.plan = plan_migrations(env, database, files, record.target)
    refusal = record.plan.refusal()
    if refusal is not None:
        raise refusal


def migrate_with_files(env: EnvironmentConfig, database: str, files: list[Migration],
                       record: MigrationRecord) -> None:
    """flyway migrate: plan under the lock, checkpoint, then each pending file in order."""
    list_pending(env, database, files, record)
    assert record.plan is not None
    if not record.plan.pending:
        return
    checkpoint(env, database, record)
    ensure_history_table(env, database)
    with timed(record.timings, "migrate"):
        for migration in record.plan.pending:
            record.running = migration
            record.applied.append(apply_migration(env, database, migration, run_id()))
        record.running = None


def migrate_with_job(env: EnvironmentConfig, database: str, record: MigrationRecord) -> None:
    """The application's own migration command, as a Job from its image; fails with its exit code."""
    assert record.image is not None
    checkpoint(env, database, record)
    name = migration_job_name(database, run_id())
    with timed(record.timings, "job"):
        record.job = run_migration_job(env, database, record.image, name)
    if not record.job["succeeded"]:
        tail = (record.job["logs"] or "").strip().splitlines()[-3:] or ["(no log)"]
        raise CheckFailed(f"migration Job {name!r} from {record.image} failed with exit code "
                          f"{record.job['exit_code']} ({record.job['reason'] or 'no reason given'}); "
                          f"its log ends: {' | '.join(tail)}")


def apply_pending(env: EnvironmentConfig, database: str, files: list[Migration], record: MigrationRecord) -> None:
    if record.mode == "job":
        migrate_with_job(env, database, record)
    else:
        migrate_with_files(env, database, files, record)


def verify(env: EnvironmentConfig, database: str, record: MigrationRecord) -> None:
    record.checks = verify_schema(env, database)
    failed = checks.failures(record.checks)
    if failed:
        raise CheckFailed(f"verification after migrating failed: {failed}")


# --- flow ---------------------------------------------------------------------------------------------


@flow(name="migrate-database", flow_run_name=namer("migrate-database"), **HOOKS)
def migrate_database(environment: str, database: str, target_version: int | str | None = None,
                     dry_run: bool = False, image: str | None = None, emergency: bool = False,
                     emergency_reason: str | None = None) -> dict[str, Any]:
    """Migrate one database's schema: inside a maintenance window (where the environment
    requires one) and as the environment's one change at a time, take the migration lock (a
    second run fails at once),
    list what is pending, back up as the checkpoint, apply each pending SQL file in its own
    transaction with lock and statement timeouts (or run the application's migration
    command as a Kubernetes Job), then run the verification queries. On failure the report
    says what was applied and the backup to restore.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        database: The database to migrate, as named under `databases` in the environment.
        target_version: Stop at this version (a whole number, as in V<version>__name.sql); empty for
            the newest file. SQL files only.
        dry_run: Only list the pending files and their checksums; change nothing, take no backup.
        image: With the application's migration command: the image to run it from; empty for the image
            the service runs now. With SQL files it is only shown in the report.
        emergency: Outside the maintenance windows or inside a freeze: go ahead after an approval.
        emergency_reason: Why it cannot wait for the next window (required with emergency).
    """
    env = load_environment(environment)
    cfg = env.database(database)
    cfg.check_secrets()
    check_parameters(env, database, target_version, image)
    record = MigrationRecord(env.name, database, "job" if cfg.migrations.job else "sql", dry_run, image=image)
    record.resumed(resume_attempt())
    files = read_files(env, database, target_version, record)
    started = time.monotonic()
    try:
        if cfg.migrations.job is not None:
            record.image = image or current_image(env, cfg.migrations.job.service)
        if dry_run:
            list_pending(env, database, files, record)
        else:
            changes.admit(env, "migrate-database", record, emergency=emergency, emergency_reason=emergency_reason)
            # The migration lock first: a second migration of the database still fails at once.
            with migration_lock(env, database, record), changes.one_change(env, "migrate-database"):
                apply_pending(env, database, files, record)
            verify(env, database, record)
        record.outcome = record.final_outcome
    except BaseException as exc:  # a failure, or a cancel's SIGTERM
        record.fail(exc)
        raise
    finally:
        record.timings["total"] = round(time.monotonic() - started, 3)
        reports.publish(reports.migration(record))
    return {
        "runbook": "migrate", "environment": env.name, "database": database, "outcome": record.outcome,
        "applied": [a.file for a in record.newly_applied], "schema_version": record.schema_version,
        "planned": [{"version": m.version, "file": m.file, "checksum": m.checksum}
                    for m in (record.plan.pending if record.plan else ())],
        "backup_id": record.backup_id, "image": record.image,
        "job": {k: v for k, v in record.job.items() if k != "logs"},
        "held_from": record.held_from, "held_until": record.held_until,
        "artifact": artifact_key("migrate", env.name, database),
    }


if __name__ == "__main__":
    import sys

    migrate_database(sys.argv[1] if len(sys.argv) > 1 else "sandbox", sys.argv[2] if len(sys.argv) > 2 else "fleet",
                     dry_run="--dry-run" in sys.argv)
