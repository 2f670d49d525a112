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
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow, task
from prefect.runtime import flow_run

from flows.backup import RETRIES, backup_database
from flows.deploy import live_deployment, validate_image
from tasks import checks, kubernetes, migrations, postgres
from tasks.config import EnvironmentConfig, load_environment
from tasks.errors import CheckFailed, ConfigError
from tasks.migrations import Applied, Migration, Plan
from tasks.prefect_api import artifact_key, emit, md_table, publish_report, publish_table
from tasks.redact import scrub

LOG_CHARS = 20_000  # of a Job's log kept in the report: the end, where the error is


@dataclass
class MigrationRecord:
    """What the report says: filled in step by step."""

    environment: str
    database: str
    mode: str  # "sql" (files in a folder) or "job" (the application's command)
    dry_run: bool
    source: str = ""  # the folder, or the Job's command
    target: int | None = None
    outcome: str = "running"
    plan: Plan | None = None
    applied: list[Applied] = field(default_factory=list)
    running: Migration | None = None  # the migration that was being applied when the run failed
    backup_id: str | None = None
    image: str | None = None
    job: dict[str, Any] = field(default_factory=dict)
    checks: list[checks.Check] = field(default_factory=list)
    failure: str | None = None
    held_from: float | None = None  # when this run held the migration lock (epoch seconds)
    held_until: float | None = None
    timings: dict[str, float] = field(default_factory=dict)


def server_of(env: EnvironmentConfig, database: str) -> tuple[postgres.Server, str]:
    cfg = env.database(database)
    return postgres.Server.from_dsn(cfg.dsn.resolve()), cfg.dbname or database


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
    folder = migrations.folder_for(database, cfg.path)
    files = migrations.read_migrations(folder)
    record.source, record.target = str(folder), migrations.parse_target(target_version, files)
    return files


# --- tasks ------------------------------------------------------------------------------------------


@task(**RETRIES)
def plan_migrations(env: EnvironmentConfig, database: str, files: list[Migration], target: int | None) -> Plan:
    """`flyway info`: compare the files with the history table (read only). Refuses a
    changed applied file, a target below what is applied, an unresolved failure."""
    server, dbname = server_of(env, database)
    with postgres.connect(server, dbname) as conn:
        history = migrations.read_history(conn)
    return migrations.plan(files, history, target)


@task(**RETRIES)
def ensure_history_table(env: EnvironmentConfig, database: str) -> bool:
    server, dbname = server_of(env, database)
    with postgres.connect(server, dbname) as conn:
        return migrations.ensure_history_table(conn)


@task(**RETRIES)
def apply_migration(env: EnvironmentConfig, database: str, migration: Migration, flow_run_id: str) -> Applied:
    """Apply one file with lock_timeout and statement_timeout, recording it in the history.
    A transactional file rolled back by a lock timeout or deadlock is retried."""
    cfg = env.database(database)
    server, dbname = server_of(env, database)
    return migrations.apply(server, dbname, migration, cfg.migrations.lock_timeout,
                            cfg.migrations.statement_timeout, flow_run_id)


@task(**RETRIES)
def verify_schema(env: EnvironmentConfig, database: str) -> list[checks.Check]:
    """The verification queries from config, read only, each against its expectation."""
    server, dbname = server_of(env, database)
    results = []
    with postgres.connect(server, dbname) as conn:
        for q in env.database(database).migrations.verify_queries:
            try:
                results.append(checks.smoke_query(q, postgres.first_value(conn, q.sql)))
            except CheckFailed as exc:
                results.append(checks.Check(f"smoke: {q.name}", False, f"query failed: {exc}"))
    return results


@task(**RETRIES)
def current_image(env: EnvironmentConfig, service: str) -> str:
    """The image the service runs now: the one its migrations belong to."""
    svc = env.service(service)
    with kubernetes.api_client(env.kubernetes) as api:
        dep = kubernetes.read_deployment(api, svc.namespace, live_deployment(api, svc))
    return kubernetes.container_image(dep, svc.container)


@task
def run_migration_job(env: EnvironmentConfig, database: str, image: str, name: str) -> dict[str, Any]:
    """`kubectl create job ... -- <command>` from the application's image; wait for it,
    keep its log and exit code."""
    job = env.database(database).migrations.job
    assert job is not None
    svc = env.service(job.service)
    with kubernetes.api_client(env.kubernetes) as api:
        result = kubernetes.run_job(api, svc.namespace, name, image, job.command, job.timeout.total_seconds())
    return {"name": name, "namespace": svc.namespace, **asdict(result)}


@task
def report_migration(record: MigrationRecord) -> None:
    rec = record
    title = f"# Migration of `{rec.database}` in `{rec.environment}`: {rec.outcome.upper()}"
    lines = [title, ""]
    if rec.failure:
        lines += [f"**What failed:** {rec.failure}", ""]
    lines += what_changed(rec)
    lines += [md_table(figures(rec)), ""]
    rows = migrations.result_rows(rec.plan, rec.applied, rec.running, rec.dry_run) if rec.plan else []
    if rec.plan is not None:
        lines += ["## Migrations", "", md_table(rows, ["version", "file", "checksum", "status", "duration_s"]), ""]
    if rec.checks:
        lines += ["## Verification", "", md_table([{"check": c.name, "result": "pass" if c.passed else "FAIL",
                                                    "detail": c.detail} for c in rec.checks]), ""]
    if rec.job.get("logs") is not None:
        log = rec.job["logs"][-LOG_CHARS:].replace("```", "'''")
        lines += [f"## Log of Job `{rec.job['name']}`", "", "```text", log.rstrip("\n"), "```", ""]
    key = artifact_key("migrate", rec.environment, rec.database)
    publish_report(key, "\n".join(lines), f"Migration of {rec.database} in {rec.environment}: {rec.outcome}")
    if rows:
        publish_table(artifact_key("migrate-migrations", rec.environment, rec.database), rows,
                      f"Migrations of {rec.database} in {rec.environment}")
    payload = {
        "environment": rec.environment, "database": rec.database, "mode": rec.mode, "dry_run": rec.dry_run,
        "outcome": rec.outcome, "applied": [a.file for a in rec.applied if not a.already],
        "failed_file": rec.running.file if rec.running else None, "backup_id": rec.backup_id,
        "schema_version": schema_version(rec), "image": rec.image, "exit_code": rec.job.get("exit_code"),
        "error": rec.failure,
    }
    event = "planned" if rec.dry_run and not rec.failure else ("failed" if rec.failure else "succeeded")
    emit(f"runbook.migration.{event}", f"runbook.database.{rec.environment}.{rec.database}", payload)


def schema_version(rec: MigrationRecord) -> int | None:
    if rec.plan is None:
        return None
    return max([rec.plan.applied_version, *(a.version for a in rec.applied)])


def planned_version(rec: MigrationRecord) -> int | None:
    if rec.plan is None:
        return None
    return max([rec.plan.applied_version, *(m.version for m in rec.plan.pending)])


def figures(rec: MigrationRecord) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"figure": "mode", "value": "SQL files" if rec.mode == "sql" else "application's migration Job"},
        {"figure": "source", "value": rec.source},
        {"figure": "dry run", "value": rec.dry_run},
        {"figure": "checkpoint backup", "value": rec.backup_id or "(none)"},
    ]
    if rec.mode == "sql":
        rows += [{"figure": "target version", "value": rec.target if rec.target is not None else "(latest)"},
                 {"figure": "schema version before", "value": rec.plan.applied_version if rec.plan else ""},
                 {"figure": "schema version after" + (" the pending files" if rec.dry_run else ""),
                  "value": planned_version(rec) if rec.dry_run else schema_version(rec) if rec.plan else ""},
                 {"figure": "history table", "value": f"public.{migrations.HISTORY_TABLE}"}]
        if rec.image:
            rows.append({"figure": "image being deployed", "value": f"{rec.image} (SQL files do not use it)"})
    else:
        rows += [{"figure": "image", "value": rec.image},
                 {"figure": "Job", "value": rec.job.get("name", "(not run)")},
                 {"figure": "exit code", "value": rec.job.get("exit_code", "")},
                 {"figure": "Job condition", "value": rec.job.get("reason") or ""}]
    rows += [{"figure": f"{k} seconds", "value": v} for k, v in rec.timings.items()]
    return rows


def what_changed(rec: MigrationRecord) -> list[str]:
    """After a failure: exactly what was applied, and how to go back to the checkpoint."""
    if not rec.failure or rec.dry_run:
        return []
    applied = [a for a in rec.applied if not a.already]
    running = rec.running
    partial = running is not None and not running.transactional
    if not applied and not partial and not (rec.mode == "job" and rec.job):
        return ["Nothing was changed by this run.", ""]
    lines = ["## What was applied", ""]
    lines += [f"- `{a.file}`: applied and recorded ({a.statements} statement(s), {a.seconds:.3f} s)" for a in applied]
    if running is not None:
        state = "stopped part-way, NOT rolled back (see above)" if partial else "rolled back"
        lines.append(f"- `{running.file}`: {state}")
    if rec.mode == "job" and rec.job:
        lines.append(f"- Job `{rec.job['name']}` ran `{rec.source}` from `{rec.image}` and exited with code "
                     f"{rec.job.get('exit_code')}: what it changed is in its log below")
    lines += ["", "## Next steps", ""]
    if running is not None and partial:
        lines.append(f"The database may be half-migrated: `{running.file}` ran without a transaction "
                     "and its failure is recorded, so later runs refuse until this is resolved.")
    elif rec.mode == "sql":
        lines.append(f"The database is at version {schema_version(rec)}: every applied file is complete and "
                     "recorded. Fix the failed file (or what blocked it) and run again to continue.")
    restore = (f"restore_database(environment={rec.environment!r}, database={rec.database!r}, "
               f"backup_id={rec.backup_id!r})")
    if rec.backup_id:
        lines += ["", "To go back to before this run, restore the checkpoint backup taken before the first change:",
                  "", "```python", restore, "```", ""]
    else:
        lines += ["", "No checkpoint backup was taken (migrations.backup_first is false): going back means "
                  "undoing the changes by hand.", ""]
    return lines


# --- steps ------------------------------------------------------------------------------------------


@contextmanager
def migration_lock(env: EnvironmentConfig, database: str, record: MigrationRecord) -> Iterator[None]:
    """One migration per database at a time; a second run fails at once, naming the holder."""
    server, dbname = server_of(env, database)
    with migrations.advisory_lock(server, dbname, f"runbook-migrate {run_id()}"):
        record.held_from = time.time()
        try:
            yield
        finally:
            record.held_until = time.time()


def checkpoint(env: EnvironmentConfig, database: str, record: MigrationRecord) -> None:
    """The backup to go back to, before the first change (migrations.backup_first)."""
    if env.database(database).migrations.backup_first:
        started = time.monotonic()
        record.backup_id = backup_database(env.name, database)["backup_id"]
        record.timings["backup"] = round(time.monotonic() - started, 3)


def plan_only(env: EnvironmentConfig, database: str, files: list[Migration], record: MigrationRecord) -> None:
    """flyway info: what is pending, with checksums; no lock, no history table, no backup."""
    record.plan = plan_migrations(env, database, files, record.target)
    refusal = record.plan.refusal()
    if refusal is not None:
        raise refusal


def migrate_with_files(env: EnvironmentConfig, database: str, files: list[Migration],
                       record: MigrationRecord) -> None:
    """flyway migrate: plan under the lock, checkpoint, then each pending file in order."""
    plan_only(env, database, files, record)
    assert record.plan is not None
    if not record.plan.pending:
        return
    checkpoint(env, database, record)
    ensure_history_table(env, database)
    started = time.monotonic()
    for migration in record.plan.pending:
        record.running = migration
        record.applied.append(apply_migration(env, database, migration, run_id()))
    record.running = None
    record.timings["migrate"] = round(time.monotonic() - started, 3)


def migrate_with_job(env: EnvironmentConfig, database: str, record: MigrationRecord) -> None:
    """The application's own migration command, as a Job from its image; fails with its exit code."""
    assert record.image is not None
    checkpoint(env, database, record)
    started = time.monotonic()
    name = artifact_key("migrate", database, run_id()[:8])[:63].strip("-")
    record.job = run_migration_job(env, database, record.image, name)
    record.timings["job"] = round(time.monotonic() - started, 3)
    if not record.job["succeeded"]:
        tail = (record.job["logs"] or "").strip().splitlines()[-3:] or ["(no log)"]
        raise CheckFailed(f"migration Job {name!r} from {record.image} failed with exit code "
                          f"{record.job['exit_code']} ({record.job['reason'] or 'no reason given'}); "
                          f"its log ends: {' | '.join(tail)}")


def verify(env: EnvironmentConfig, database: str, record: MigrationRecord) -> None:
    record.checks = verify_schema(env, database)
    failed = [c for c in record.checks if not c.passed]
    if failed:
        raise CheckFailed("verification after migrating failed: " +
                          "; ".join(f"{c.name}: {c.detail}" for c in failed))


# --- flow ---------------------------------------------------------------------------------------------


@flow(name="migrate-database")
def migrate_database(environment: str, database: str, target_version: int | str | None = None,
                     dry_run: bool = False, image: str | None = None) -> dict[str, Any]:
    """Migrate one database's schema: take the migration lock (a second run fails at once),
    list what is pending, back up as the checkpoint, apply each pending SQL file in its own
    transaction with lock and statement timeouts (or run the application's migration
    command as a Kubernetes Job from `image`, default the service's current image), then
    run the verification queries. `target_version` stops at that version; `dry_run` only
    lists the pending files and their checksums. On failure the report says what was
    applied and the backup to restore."""
    env = load_environment(environment)
    cfg = env.database(database)
    cfg.check_secrets()
    check_parameters(env, database, target_version, image)
    job = cfg.migrations.job
    record = MigrationRecord(env.name, database, "job" if job else "sql", dry_run)
    files = read_files(env, database, target_version, record)
    started = time.monotonic()
    record.image = image
    try:
        if job is not None:
            record.image = image or current_image(env, job.service)
        if dry_run:
            if job is None:
                plan_only(env, database, files, record)
        else:
            with migration_lock(env, database, record):
                if job is None:
                    migrate_with_files(env, database, files, record)
                else:
                    migrate_with_job(env, database, record)
            verify(env, database, record)
    except Exception as exc:
        record.outcome = "failed"
        record.failure = scrub(str(exc))
        record.timings["total"] = round(time.monotonic() - started, 3)
        report_migration(record)
        raise
    applied = [a for a in record.applied if not a.already]
    record.outcome = ("dry run" if dry_run else "succeeded" if applied or job else "up to date")
    record.timings["total"] = round(time.monotonic() - started, 3)
    report_migration(record)
    return {
        "runbook": "migrate", "environment": env.name, "database": database, "outcome": record.outcome,
        "applied": [a.file for a in applied], "schema_version": schema_version(record),
        "planned": [{"version": m.version, "file": m.file, "checksum": m.checksum}
                    for m in (record.plan.pending if record.plan else ())],
        "backup_id": record.backup_id, "image": record.image, "job": {k: v for k, v in record.job.items()
                                                                      if k != "logs"},
        "held_from": record.held_from, "held_until": record.held_until,
        "artifact": artifact_key("migrate", env.name, database),
    }


if __name__ == "__main__":
    import sys

    migrate_database(sys.argv[1] if len(sys.argv) > 1 else "sandbox", sys.argv[2] if len(sys.argv) > 2 else "fleet",
                     dry_run="--dry-run" in sys.argv)
