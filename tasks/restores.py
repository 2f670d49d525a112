"""Restoring a logical backup: the steps every runbook that restores shares (the weekly
restore test, restore-and-swap, a migration's way back, point-in-time recovery's
hand-over).

    choose_backup         the newest backup with a manifest, or the one asked for
    restore_into_scratch  fetch it with its checksum checked, create a database, pg_restore -j
    verify_restored       row counts against the manifest, amcheck, the smoke queries
    drop_scratch          drop the copy, whatever happened

These are Prefect tasks: a flow calls them as steps. `run_smoke_queries` is the one loop
over a list of read-only queries and their expectations, used on a restored copy and on a
migrated database alike.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from prefect import task

from tasks import backups, checks, postgres, retries
from tasks.config import EnvironmentConfig, SmokeQuery
from tasks.errors import CheckFailed, PermanentError
from tasks.storage import open_storage


def run_smoke_queries(conn: psycopg.Connection[Any], queries: list[SmokeQuery]) -> list[checks.Check]:
    """Each query, read only, against its expectation; a query that fails is a failed check."""
    results = []
    for q in queries:
        try:
            results.append(checks.smoke_query(q, postgres.first_value(conn, q.sql)))
        except CheckFailed as exc:
            results.append(checks.Check(f"smoke: {q.name}", False, f"query failed: {exc}"))
    return results


@task(**retries.policy("storage"))
def choose_backup(env: EnvironmentConfig, database: str, backup_id: str | None) -> backups.Manifest:
    """The newest backup with a manifest, or the one asked for."""
    storage = open_storage(env.database(database).storage)
    if backup_id:
        return backups.load_manifest(storage, database, backup_id)
    newest = backups.read_catalogue(storage, database).newest()
    if newest is None:
        raise PermanentError(f"no valid backup of {database!r} in {env.database(database).storage.url}")
    return newest


@task
def restore_into_scratch(env: EnvironmentConfig, manifest: backups.Manifest, scratch: str,
                         replacing: str | None = None) -> dict[str, float]:
    """Download with checksum verification, create the scratch database, pg_restore -j.
    Without `replacing`, on the restore-test server (`restore_test.dsn`), owners and grants
    dropped. With `replacing` (the live database it will take the place of), on the
    database's own server, with the live database's owner, encoding and locale, keeping
    owners and grants."""
    cfg = env.database(manifest.database)
    server = postgres.server_for(cfg, scratch=replacing is None)
    with tempfile.TemporaryDirectory(prefix="runbook-restore-") as tmp:
        path, fetch_seconds = backups.fetch_backup(open_storage(cfg.storage), manifest, Path(tmp))
        started = time.monotonic()
        postgres.create_database(server, scratch, like=replacing)
        backups.pg_restore_into(server, scratch, path, cfg.restore_test.jobs, manifest.server_version // 10000,
                                keep_ownership=replacing is not None)
        return {"download_and_checksum": round(fetch_seconds, 3), "pg_restore": round(time.monotonic() - started, 3)}


@task
def verify_restored(env: EnvironmentConfig, manifest: backups.Manifest, dbname: str, *,
                    own_server: bool = False, amcheck: bool = True) -> list[checks.Check]:
    """Row counts against the manifest, amcheck on every B-tree index (unless `amcheck` is
    off: a swap keeps the app down meanwhile), and the restore-test smoke queries."""
    cfg = env.database(manifest.database)
    with postgres.connect(postgres.server_for(cfg, scratch=not own_server), dbname) as conn:
        results = [checks.row_counts_match(manifest.row_counts, postgres.row_counts(conn))]
        if amcheck:
            results.append(checks.indexes_intact(postgres.amcheck_indexes(conn)))
        return results + run_smoke_queries(conn, cfg.restore_test.smoke_queries)


@task
def drop_scratch(env: EnvironmentConfig, database: str, scratch: str, own_server: bool = False) -> bool:
    """DROP DATABASE ... WITH (FORCE). True if it existed."""
    return postgres.drop_database(postgres.server_for(env.database(database), scratch=not own_server), scratch)
