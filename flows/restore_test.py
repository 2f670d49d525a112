"""Weekly restore test, from the seeds' "Backup Verification":

    # 1. Restore to staging   # 2. Run smoke tests
    # 3. Verify data integrity # 4. Document results

A backup is only as good as its last restore. This flow restores the newest valid backup
(or the one given) into a scratch database, checks it, drops the scratch database
whatever happens, and leaves the evidence as an artifact. It ends Failed if any check fails.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.runtime import flow_run

from flows.backup import RETRIES
from tasks import backups, checks, postgres
from tasks.config import EnvironmentConfig, load_environment
from tasks.errors import CheckFailed, PermanentError
from tasks.prefect_api import artifact_key, emit, md_table, publish_report, publish_table
from tasks.redact import scrub
from tasks.storage import open_storage

# --- tasks ------------------------------------------------------------------------------------------


@task(**RETRIES)
def choose_backup(env: EnvironmentConfig, database: str, backup_id: str | None) -> backups.Manifest:
    """The newest backup with a manifest, or the one asked for."""
    storage = open_storage(env.database(database).storage)
    if backup_id:
        return backups.load_manifest(storage, database, backup_id)
    newest = backups.read_catalogue(storage, database).newest()
    if newest is None:
        raise PermanentError(f"no valid backup of {database!r} in {env.database(database).storage.url}")
    return newest


def restore_server(env: EnvironmentConfig, database: str, own_server: bool = False) -> postgres.Server:
    """Where scratch restores go: `restore_test.dsn` if set, else (or with `own_server`) the
    database's own server."""
    cfg = env.database(database)
    ref = cfg.dsn if own_server else (cfg.restore_test.dsn or cfg.dsn)
    return postgres.Server.from_dsn(ref.resolve())


@task
def restore_into_scratch(env: EnvironmentConfig, manifest: backups.Manifest, scratch: str,
                         replacing: str | None = None) -> dict[str, float]:
    """Download with checksum verification, create the scratch database, pg_restore -j.
    With `replacing` (the live database it will take the place of), restore on the database's
    own server, with the live database's owner, encoding and locale, keeping owners and grants."""
    cfg = env.database(manifest.database)
    server = restore_server(env, manifest.database, own_server=replacing is not None)
    storage = open_storage(cfg.storage)
    with tempfile.TemporaryDirectory(prefix="runbook-restore-") as tmp:
        path, fetch_seconds = backups.fetch_backup(storage, manifest, Path(tmp))
        started = time.monotonic()
        postgres.create_database(server, scratch, like=replacing)
        backups.pg_restore_into(server, scratch, path, cfg.restore_test.jobs, manifest.server_version // 10000,
                                keep_ownership=replacing is not None)
        return {"download_and_checksum": round(fetch_seconds, 3), "pg_restore": round(time.monotonic() - started, 3)}


@task
def drop_scratch(env: EnvironmentConfig, database: str, scratch: str, own_server: bool = False) -> bool:
    return postgres.drop_database(restore_server(env, database, own_server), scratch)


@task
def verify_restored(env: EnvironmentConfig, manifest: backups.Manifest, scratch: str) -> list[checks.Check]:
    """Row counts against the manifest, amcheck on every B-tree index, smoke queries."""
    cfg = env.database(manifest.database)
    server = restore_server(env, manifest.database)
    with postgres.connect(server, scratch) as conn:
        counts = postgres.row_counts(conn)
        results = [checks.row_counts_match(manifest.row_counts, counts)]
        results.append(checks.indexes_intact(postgres.amcheck_indexes(conn)))
        for q in cfg.restore_test.smoke_queries:
            try:
                value: Any = postgres.first_value(conn, q.sql)
                results.append(checks.smoke_query(q, value))
            except CheckFailed as exc:
                results.append(checks.Check(f"smoke: {q.name}", False, f"query failed: {exc}"))
    return results


@task
def report_restore_test(env: EnvironmentConfig, database: str, manifest: backups.Manifest | None,
                        scratch: str, results: list[checks.Check], timings: dict[str, float],
                        dropped: bool | None, error: str | None) -> str:
    passed = error is None and all(c.passed for c in results)
    outcome = "PASSED" if passed else "FAILED"
    lines = [f"# Restore test of `{database}` in `{env.name}`: {outcome}", ""]
    if error:
        lines += [f"**Error:** {error}", ""]
    if manifest:
        lines += [md_table([
            {"figure": "backup id", "value": manifest.backup_id},
            {"figure": "backup taken at", "value": manifest.snapshot_time},
            {"figure": "backup size (MB)", "value": f"{manifest.size / 1e6:.2f}"},
            {"figure": "sha256", "value": manifest.sha256},
            {"figure": "scratch database", "value": scratch},
            {"figure": "scratch database dropped", "value": dropped},
            *({"figure": f"{k} seconds", "value": v} for k, v in timings.items()),
        ]), ""]
    rows = [{"check": c.name, "result": "pass" if c.passed else "FAIL", "figures": c.detail} for c in results]
    lines += ["## Checks", "", md_table(rows)]
    publish_report(artifact_key("restore-test", env.name, database), "\n".join(lines),
                   f"Restore test of {database} in {env.name}: {outcome}")
    publish_table(artifact_key("restore-test-checks", env.name, database), rows,
                  f"Restore test checks of {database} in {env.name}")
    emit(f"runbook.restore-test.{'passed' if passed else 'failed'}", f"runbook.database.{env.name}.{database}", {
        "environment": env.name, "database": database, "backup_id": manifest.backup_id if manifest else None,
        "checks": {c.name: c.passed for c in results}, "timings": timings, "error": error,
    })
    return outcome


# --- flow -----------------------------------------------------------------------------------------------


@flow(name="restore-test")
def restore_test(environment: str, database: str, backup_id: str | None = None) -> dict[str, Any]:
    """Prove a backup restores: fetch it with its checksum checked, restore into a
    scratch database with pg_restore -j, compare row counts with the manifest, run
    amcheck and the smoke queries, measure RTO and RPO against the objectives, and
    drop the scratch database whatever happens."""
    env = load_environment(environment)
    cfg = env.database(database)
    cfg.check_secrets()
    started_at = datetime.now(UTC)
    scratch = checks.scratch_name(cfg.dbname or database, started_at, str(flow_run.id or ""))
    manifest: backups.Manifest | None = None
    results: list[checks.Check] = []
    timings: dict[str, float] = {}
    dropped: bool | None = None
    error: str | None = None
    try:
        manifest = choose_backup(env, database, backup_id)
        results.append(checks.rpo_met(started_at - manifest.taken_at, cfg.objectives.rpo))
        clock = time.monotonic()
        timings = restore_into_scratch(env, manifest, scratch)
        results += verify_restored(env, manifest, scratch)
        timings["restore_and_verify"] = round(time.monotonic() - clock, 3)
        results.append(checks.rto_met(timings["restore_and_verify"], cfg.objectives.rto))
    except Exception as exc:  # noqa: BLE001 - reported below, and the flow fails
        error = scrub(str(exc))
        if manifest is not None and not str(exc).startswith(f"backup {manifest.backup_id}"):
            error = f"backup {manifest.backup_id}: {error}"
    finally:
        dropped = drop_scratch(env, database, scratch)
    report_restore_test(env, database, manifest, scratch, results, timings, dropped, error)
    failed = [c for c in results if not c.passed]
    if error or failed:
        what = error or "; ".join(f"{c.name}: {c.detail}" for c in failed)
        prefix = "" if what.startswith("backup ") else f"backup {manifest.backup_id if manifest else '?'}: "
        raise CheckFailed(f"restore test of {database} in {env.name} failed: {prefix}{what}")
    assert manifest is not None
    return {
        "runbook": "restore-test", "environment": env.name, "database": database,
        "backup_id": manifest.backup_id, "checks": len(results), "timings": timings,
        "artifact": artifact_key("restore-test", env.name, database),
    }


if __name__ == "__main__":
    import sys

    restore_test(sys.argv[1] if len(sys.argv) > 1 else "sandbox", sys.argv[2] if len(sys.argv) > 2 else "fleet")
