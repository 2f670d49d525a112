"""Weekly restore test, from the seeds' "Backup Verification":

    # 1. Restore to staging   # 2. Run smoke tests
    # 3. Verify data integrity # 4. Document results

A backup is only as good as its last restore. This flow restores the newest valid backup
(or the one given) into a scratch database, checks it, drops the scratch database
whatever happens, and leaves the evidence as an artifact. It ends Failed if any check fails.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.runtime import flow_run

from flows.azure_restore import azure_restore_test
from tasks import checkpoints, checks, reports
from tasks.config import EnvironmentConfig, load_environment
from tasks.errors import CheckFailed
from tasks.naming import artifact_key, namer, scratch_name
from tasks.prefect_api import HOOKS, resume_attempt
from tasks.redact import scrub
from tasks.restores import choose_backup, drop_scratch, restore_into_scratch, verify_restored


@task(**checkpoints.CHECKPOINT)
def name_scratch(env: EnvironmentConfig, database: str) -> tuple[datetime, str]:
    """The checkpoint: when this run started and its scratch database's name, so that a
    resumed attempt restores into (and drops) the same one."""
    started_at = datetime.now(UTC)
    return started_at, scratch_name(env.database(database).dbname, started_at, str(flow_run.id or ""))


@flow(name="restore-test", flow_run_name=namer("restore-test"), **HOOKS)
def restore_test(environment: str, database: str, backup_id: str | None = None) -> dict[str, Any]:
    """Prove a backup restores: fetch it with its checksum checked, restore into a
    scratch database with pg_restore -j, compare row counts with the manifest, run
    amcheck and the smoke queries, measure RTO and RPO against the objectives, and
    drop the scratch database whatever happens. For an Azure flexible server: restore
    the server to a recent point in time as a new server, run the smoke queries there,
    and delete it whatever happens.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        database: The database whose backup is tested, as named under `databases`.
        backup_id: The backup to test, like 20260101T020000Z-a1b2c3; empty for the newest valid one.
    """
    env = load_environment(environment)
    cfg = env.database(database)
    if cfg.kind == "azure-flexible":  # a new server at a recent point in time, not a logical dump
        return azure_restore_test(environment, database)
    cfg.check_secrets()
    resume_attempt()
    started_at, scratch = name_scratch(env, database)
    manifest = None
    results: list[checks.Check] = []
    timings: dict[str, float] = {}
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
        error = checks.about_backup(manifest.backup_id if manifest else None, scrub(str(exc)))
    finally:
        dropped = drop_scratch(env, database, scratch)
    reports.publish(reports.restore_test(env, database, manifest, scratch, results, timings, dropped, error))
    failure = checks.restore_test_failure(manifest.backup_id if manifest else None, results, error)
    if failure:
        raise CheckFailed(f"restore test of {database} in {env.name} failed: {failure}")
    return {
        "runbook": "restore-test", "environment": env.name, "database": database,
        "backup_id": manifest.backup_id, "checks": len(results), "timings": timings,
        "artifact": artifact_key("restore-test", env.name, database),
    }


if __name__ == "__main__":
    import sys

    restore_test(sys.argv[1] if len(sys.argv) > 1 else "sandbox", sys.argv[2] if len(sys.argv) > 2 else "fleet")
