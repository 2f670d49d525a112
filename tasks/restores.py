"""Restoring a logical backup: the steps every runbook that restores shares (the weekly
restore test, restore-and-swap, a migration's way back, point-in-time recovery's
hand-over).

    choose_backup         the newest backup with a manifest, or the one asked for
    restore_into_scratch  fetch it with its checksum checked, create a database, pg_restore -j;
                          a lost connection is retried per `restore_test.retries`, from scratch
    verify_restored       row counts against the manifest, amcheck, the smoke queries
    drop_scratch          drop the copy, whatever happened

These are Prefect tasks: a flow calls them as steps. `run_smoke_queries` is the one loop
over a list of read-only queries and their expectations, used on a restored copy and on a
migrated database alike.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from prefect import get_run_logger, task
from prefect.runtime import flow_run, task_run

from tasks import backups, checkpoints, checks, postgres, retries
from tasks.config import DatabaseConfig, EnvironmentConfig, RestoreTestConfig, SmokeQuery
from tasks.errors import CheckFailed, ConfigError, PermanentError, TransientError
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


@task(**retries.policy("storage"), **checkpoints.CHECKPOINT)
def choose_backup(env: EnvironmentConfig, database: str, backup_id: str | None) -> backups.Manifest:
    """The newest backup with a manifest, or the one asked for."""
    storage = open_storage(env.database(database).storage)
    if backup_id:
        return backups.load_manifest(storage, database, backup_id)
    newest = backups.read_catalogue(storage, database).newest()
    if newest is None:
        raise PermanentError(f"no valid backup of {database!r} in {env.database(database).storage.url}")
    return newest


@task(**retries.policy("postgres"), **checkpoints.REDO)
def restore_into_scratch(env: EnvironmentConfig, manifest: backups.Manifest, scratch: str,
                         replacing: str | None = None) -> dict[str, float]:
    """Download with checksum verification, create the scratch database, pg_restore -j.
    Without `replacing`, on the restore-test server (`restore_test.dsn`), owners and grants
    dropped. With `replacing` (the live database it will take the place of), on the
    database's own server, with the live database's owner, encoding and locale, keeping
    owners and grants. A lost connection or another transient failure is tried again
    `restore_test.retries` times, each attempt from a clean state: the partial database
    of the attempt before is dropped, then created and restored again (also in a new
    attempt of the whole flow run, which restores under the same name)."""
    cfg = env.database(manifest.database)
    attempt = max(task_run.run_count, 1)
    try:
        return _restore(cfg, manifest, scratch, replacing, again=attempt > 1 or flow_run.run_count > 1)
    except TransientError as exc:
        allowed = cfg.restore_test.retries
        if attempt > allowed:  # the decorator allows the most; the config says how many
            why = ("not retried (restore_test.retries is 0)" if allowed == 0
                   else f"gave up after {attempt} attempts (restore_test.retries is {allowed})")
            raise PermanentError(f"{why}: {exc}") from exc
        raise


def _restore(cfg: DatabaseConfig, manifest: backups.Manifest, scratch: str, replacing: str | None, *,
             again: bool) -> dict[str, float]:
    server = postgres.server_for(cfg, scratch=replacing is None)
    storage = open_storage(cfg.storage)
    if again and postgres.drop_database(server, scratch):
        # Only this flow run restores under this name (the flows choose free names), so what
        # is there is the partial copy of an earlier attempt.
        get_run_logger().info("dropped %r, the partial copy of an earlier attempt, to restore from the start", scratch)
    with _download_folder(cfg.restore_test, manifest.backup_id, backups.bytes_to_fetch(storage, manifest)) as tmp:
        path, fetch_seconds = backups.fetch_backup(storage, manifest, tmp)
        started = time.monotonic()
        postgres.create_database(server, scratch, like=replacing)
        backups.pg_restore_into(server, scratch, path, cfg.restore_test.jobs, manifest.server_version // 10000,
                                keep_ownership=replacing is not None)
        return {"download_and_checksum": round(fetch_seconds, 3), "pg_restore": round(time.monotonic() - started, 3)}


@contextlib.contextmanager
def _download_folder(rt: RestoreTestConfig, backup_id: str, need: int) -> Iterator[Path]:
    """A temp folder under `restore_test.temp_dir` (or the system's), removed afterwards,
    with `need` bytes free checked before anything is downloaded."""
    parent = Path(rt.temp_dir or tempfile.gettempdir())
    if not parent.is_dir():
        raise ConfigError(f"restore_test.temp_dir {rt.temp_dir!r} is not a folder on this machine; give an existing "
                          "folder, or leave it out for the system temp folder")
    backups.check_room(parent, backup_id, need)
    with tempfile.TemporaryDirectory(prefix="runbook-restore-", dir=parent) as tmp:
        yield Path(tmp)


@task(**checkpoints.OBSERVE)
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


@task(**checkpoints.REDO)
def drop_scratch(env: EnvironmentConfig, database: str, scratch: str, own_server: bool = False) -> bool:
    """DROP DATABASE ... WITH (FORCE). True if it existed."""
    return postgres.drop_database(postgres.server_for(env.database(database), scratch=not own_server), scratch)
