"""Backup and restore-test flows against the real sandbox: PostgreSQL 15, moto's S3
server over HTTP, and a real Prefect API."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from flows.backup import backup_all, backup_database
from flows.restore_test import restore_test
from tasks import backups, postgres
from tasks.config import load_environment
from tasks.faults import reset as reset_faults
from tasks.storage import S3Storage, open_storage


def storage_of(env_name: str, database: str) -> Any:
    return open_storage(load_environment(env_name).database(database).storage)


def live_counts(env_name: str, database: str) -> dict[str, int]:
    cfg = load_environment(env_name).database(database)
    with postgres.connect(postgres.Server.from_dsn(cfg.dsn.resolve()), cfg.dbname or database) as conn:
        return postgres.row_counts(conn)


def stored_sha256(storage: Any, manifest: backups.Manifest) -> str:
    h = hashlib.sha256()
    for chunk in storage.iter_chunks(f"{manifest.database}/{manifest.backup_id}/{manifest.files[0].key}"):
        h.update(chunk)
    return h.hexdigest()


def compressed_with(spec: str) -> Any:
    """An edit for `make_environment`: every database backed up with `spec`."""

    def edit(doc: dict[str, Any]) -> None:
        for db in doc["databases"].values():
            db["compression"] = spec

    return edit


def dump_in(folder: Path) -> Path:
    """The one dump file of a custom-format backup folder: dump.pgc or dump.pgc.zst."""
    (dump,) = folder.glob(backups.CUSTOM_FILE + "*")
    return dump


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@pytest.mark.parametrize("compression", ["zstd", "gzip:6"])
@pytest.mark.parametrize("database", ["fleet", "pgbench"], ids=["s3", "file"])
def test_backup_then_restore_test_round_trip(make_environment: Any, database: str, compression: str) -> None:
    env = make_environment(f"roundtrip-{database}-{compression[:4]}", compressed_with(compression))
    result = backup_database(env, database)
    storage = storage_of(env, database)
    manifest = backups.load_manifest(storage, database, result["backup_id"])

    assert manifest.row_counts == live_counts(env, database)
    assert sum(manifest.row_counts.values()) > 0
    assert stored_sha256(storage, manifest) == manifest.sha256 == result["sha256"]
    (stored,) = manifest.files
    head = next(storage.iter_chunks(f"{database}/{manifest.backup_id}/{stored.key}"))[:5]
    if compression == "zstd":
        assert manifest.compression == "zstd:3" and stored.key == "dump.pgc.zst" and head[:4] == ZSTD_MAGIC
        assert stored.raw_size is not None and stored.raw_size > stored.size  # what zstd -d gives back
    else:
        assert manifest.compression == "gzip:6" and stored.key == "dump.pgc" and head == b"PGDMP"
        assert stored.raw_size is None  # pg_dump compressed inside its archive

    verdict = restore_test(env, database)
    assert verdict["backup_id"] == manifest.backup_id
    # The scratch database is gone afterwards.
    cfg = load_environment(env).database(database)
    assert postgres.list_databases(postgres.Server.from_dsn(cfg.dsn.resolve()), "rt_%") == []


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_restore_test_fails_when_one_byte_is_flipped(make_environment: Any, compression: str) -> None:
    env = make_environment(f"flipped-{compression}", compressed_with(compression))
    result = backup_database(env, "pgbench")
    storage = storage_of(env, "pgbench")
    path = dump_in(storage.local_path(f"pgbench/{result['backup_id']}/"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    state = restore_test(env, "pgbench", return_state=True)
    assert state.is_failed()
    # The checksum names it, not the decompressor that trips over it first.
    assert f"backup {result['backup_id']}: checksum check failed for {path.name}: expected sha256 " in state.message
    assert "its content changed" in state.message


def test_restore_test_fails_on_a_flipped_byte_in_s3(make_environment: Any) -> None:
    env = make_environment("flipped-s3")
    result = backup_database(env, "fleet")
    storage = storage_of(env, "fleet")
    key = f"fleet/{result['backup_id']}/{backups.CUSTOM_FILE}.zst"
    data = bytearray(storage.get_bytes(key))
    data[-100] ^= 0x80
    storage.put_bytes(key, bytes(data))

    state = restore_test(env, "fleet", return_state=True)
    assert state.is_failed()
    assert result["backup_id"] in state.message and "checksum" in state.message


def _tampered_restore_test(make_environment: Any, name: str, tamper: Any, edit: Any = None) -> tuple[str, Any]:
    """Back up pgbench to file:// storage, damage the stored backup, run the restore test."""
    env = make_environment(name, edit)
    backup_id = backup_database(env, "pgbench")["backup_id"]
    tamper(storage_of(env, "pgbench").local_path(f"pgbench/{backup_id}/"))
    return backup_id, restore_test(env, "pgbench", return_state=True)


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_a_truncated_dump_is_named_with_both_sizes(make_environment: Any, compression: str) -> None:
    sizes: list[int] = []
    names: list[str] = []

    def truncate(folder: Path) -> None:
        dump = dump_in(folder)
        names.append(dump.name)
        sizes.append(dump.stat().st_size)
        dump.write_bytes(dump.read_bytes()[: sizes[0] // 2])

    backup_id, state = _tampered_restore_test(make_environment, f"truncated-{compression}", truncate,
                                              compressed_with(compression))
    assert state.is_failed()
    assert f"backup {backup_id}: checksum check failed for {names[0]}: truncated" in state.message
    assert f"expected {sizes[0]} bytes, the stored object has {sizes[0] // 2}" in state.message


def test_an_unreadable_manifest_is_named_with_why(make_environment: Any) -> None:
    def cut_manifest(folder: Path) -> None:
        manifest = folder / backups.MANIFEST
        manifest.write_text(manifest.read_text()[:40])

    backup_id, state = _tampered_restore_test(make_environment, "bad-manifest", cut_manifest)
    assert state.is_failed()
    assert f"backup {backup_id}: manifest " in state.message and f"{backup_id}/{backups.MANIFEST}" in state.message
    assert "is not readable: not valid JSON" in state.message


def test_a_manifest_that_is_json_but_not_a_manifest_names_the_fields(make_environment: Any) -> None:
    def empty_manifest(folder: Path) -> None:
        (folder / backups.MANIFEST).write_text("{}")

    backup_id, state = _tampered_restore_test(make_environment, "not-manifest", empty_manifest)
    assert state.is_failed() and f"backup {backup_id}: manifest " in state.message
    assert "not a manifest (backup_id: Field required" in state.message


def test_a_missing_dump_is_named(make_environment: Any) -> None:
    def delete_dump(folder: Path) -> None:
        dump_in(folder).unlink()

    backup_id, state = _tampered_restore_test(make_environment, "missing-dump", delete_dump)
    assert state.is_failed()
    assert f"backup {backup_id}: {backups.CUSTOM_FILE}.zst is missing from " in state.message


def _big_env(make_environment: Any, sandbox: Any) -> str:
    """A database big enough that pg_dump runs for seconds, so it can be killed mid-way."""
    from sandbox.sampledata import generate_fleet

    admin = postgres.Server.from_dsn(os.environ["RUNBOOK_SANDBOX_PG_DSN"])
    if not postgres.database_exists(admin, "fleet_big"):
        postgres.create_database(admin, "fleet_big")
        generate_fleet(postgres_dsn(admin, "fleet_big"), 48)

    def edit(doc: dict[str, Any]) -> None:
        big = dict(doc["databases"]["fleet"])
        big["dbname"] = "fleet_big"
        big["compression"] = "gzip:9"  # pg_dump compresses slowly: seconds to kill it in
        big["restore_test"] = {"jobs": 2}
        doc["databases"] = {"fleet_big": big}

    return make_environment("killed", edit)


def postgres_dsn(server: postgres.Server, dbname: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(**server.with_db(dbname))


def _kill_pg_dump_when_running(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the pg_dump this test's flow started (a child of this process), nothing else."""
    deadline = time.monotonic() + 60
    me = psutil.Process()
    while not stop.is_set() and time.monotonic() < deadline:
        for child in me.children(recursive=True):
            try:
                cmd = child.cmdline()
            except psutil.NoSuchProcess:
                continue
            if cmd and cmd[0].endswith("pg_dump") and any(a.startswith("--snapshot=") for a in cmd):
                time.sleep(1.0)  # let it stream some data first
                child.kill()
                killed.append(child.pid)
                return
        time.sleep(0.05)


def test_killing_the_dump_leaves_no_manifest_and_no_open_upload(make_environment: Any, sandbox: Any) -> None:
    env = _big_env(make_environment, sandbox)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_pg_dump_when_running, args=(stop, killed))
    killer.start()
    state = backup_database(env, "fleet_big", return_state=True)
    stop.set()
    killer.join()

    assert killed, "pg_dump was never seen running"
    assert state.is_failed()
    assert "killed by signal 9" in state.message
    storage = storage_of(env, "fleet_big")
    assert isinstance(storage, S3Storage)
    assert storage.open_uploads("") == []
    assert storage.list_keys("fleet_big/") == []

    again = backup_database(env, "fleet_big")
    assert backups.load_manifest(storage, "fleet_big", again["backup_id"]).row_counts
    assert storage.open_uploads("") == []


def test_stale_upload_of_a_dead_process_is_aborted_by_the_next_run(make_environment: Any) -> None:
    env = make_environment("stale-upload")
    storage = storage_of(env, "fleet")
    storage.client.create_multipart_upload(Bucket=storage.bucket, Key=storage.full_key("fleet/20200101T000000Z-abcdef/dump.pgc"))
    assert len(storage.open_uploads("fleet/")) == 1
    backup_database(env, "fleet")
    assert storage.open_uploads("fleet/") == []


def test_a_retry_after_a_crash_past_the_upload_reuses_the_committed_backup(
    make_environment: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_environment("checkpoint")
    reset_faults()
    monkeypatch.setenv("RUNBOOK_FAULTS", "backup.after-commit:1")
    result = backup_database.with_options(retries=1, retry_delay_seconds=0)(env, "pgbench")

    assert result["reused"] is True
    catalogue = backups.read_catalogue(storage_of(env, "pgbench"), "pgbench")
    assert list(catalogue.manifests) == [result["backup_id"]]
    assert catalogue.incomplete == []


def test_retention_removes_incomplete_backups_and_keeps_the_new_one(make_environment: Any) -> None:
    env = make_environment("retention")
    storage = storage_of(env, "pgbench")
    storage.put_bytes("pgbench/20200101T020000Z-aaaaaa/dump.pgc", b"half a dump")
    result = backup_database(env, "pgbench")

    catalogue = backups.read_catalogue(storage, "pgbench")
    assert catalogue.incomplete == []
    assert list(catalogue.manifests) == [result["backup_id"]]
    assert result["deleted"] == 1


def test_backup_all_backs_up_every_database(make_environment: Any) -> None:
    env = make_environment("all")
    results = backup_all(env)
    assert sorted(r["database"] for r in results) == ["fleet", "pgbench"]
    assert all(r["outcome"] == "ok" for r in results)


def test_directory_format_round_trip(make_environment: Any) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["databases"]["fleet"]["format"] = "directory"

    env = make_environment("dirformat", edit)
    result = backup_database(env, "fleet")
    manifest = backups.load_manifest(storage_of(env, "fleet"), "fleet", result["backup_id"])
    assert manifest.format == "directory" and len(manifest.files) > 1
    assert all(f.key.endswith(".zst") and f.raw_size for f in manifest.files)  # each file compressed on its own
    assert restore_test(env, "fleet")["backup_id"] == result["backup_id"]


def test_smoke_query_failure_fails_the_restore_test(make_environment: Any) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["databases"]["pgbench"]["restore_test"]["smoke_queries"] = [
            {"name": "impossible", "sql": "SELECT count(*) FROM pgbench_branches", "min": 1000000}
        ]

    env = make_environment("smokefail", edit)
    backup_database(env, "pgbench")
    state = restore_test(env, "pgbench", return_state=True)
    assert state.is_failed()
    assert "smoke: impossible" in state.message


def test_a_pg_dump_older_than_the_server_is_refused_before_anything_is_written(
    make_environment: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pg_dump of an older major version cannot dump a newer server reliably; preflight says so."""
    old = tmp_path / "pg_dump"
    old.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.11'\n")
    old.chmod(0o755)
    monkeypatch.setenv("PG_BIN_DIR", str(tmp_path))
    env = make_environment("old-pg-dump")
    state = backup_database(env, "pgbench", return_state=True)
    assert state.is_failed() and "pg_dump 14 is older than the server (15)" in state.message
    assert "install postgresql-client-15 or set PG_BIN_DIR" in state.message
    assert storage_of(env, "pgbench").list_keys("pgbench/") == []


# The manifest's fields before compression was a setting (commit 6037059), and its files'.
MANIFEST_FIELDS_BEFORE_ZSTD = {
    "backup_id", "environment", "database", "dbname", "format", "files", "size", "sha256", "row_counts", "lsn",
    "snapshot_time", "server_version", "pg_dump_version", "database_size", "durations", "flow_run_id",
    "created_at", "tool",
}
FILE_FIELDS_BEFORE_ZSTD = {"key", "size", "sha256"}


def test_a_gzip_backup_taken_before_zstd_still_passes_the_restore_test(make_environment: Any) -> None:
    """A backup as the code before this change wrote it: pg_dump -Fc -Z6 in dump.pgc, and a
    manifest without `compression`, `raw_size` or `frames` (nor `source`, which came later)."""
    import json

    env = make_environment("old-gzip", compressed_with("gzip:6"))
    backup_id = backup_database(env, "pgbench")["backup_id"]
    folder = storage_of(env, "pgbench").local_path(f"pgbench/{backup_id}/")
    doc = json.loads((folder / backups.MANIFEST).read_text())
    del doc["compression"], doc["source"]
    for f in doc["files"]:
        del f["raw_size"], f["frames"]
    assert set(doc) == MANIFEST_FIELDS_BEFORE_ZSTD and all(set(f) == FILE_FIELDS_BEFORE_ZSTD for f in doc["files"])
    (folder / backups.MANIFEST).write_text(json.dumps(doc, indent=2, sort_keys=True))
    assert dump_in(folder).name == backups.CUSTOM_FILE

    verdict = restore_test(env, "pgbench")
    assert verdict["backup_id"] == backup_id
    assert backups.load_manifest(storage_of(env, "pgbench"), "pgbench", backup_id).codec.kind == "gzip"



def test_a_stored_file_of_zero_bytes_is_fetched_as_an_empty_file(tmp_path: Path) -> None:
    """Preallocating 0 bytes is EINVAL: an empty dump file must still fetch."""
    from tasks import compression
    from tasks.storage import FileStorage

    storage = FileStorage(f"file://{tmp_path}/store", tmp_path / "store")
    backup_id = backups.new_backup_id()
    stream = backups.StoredStream(storage, backups.backup_prefix("db", backup_id), "dump/1.dat",
                                  compression.parse("zstd"))
    stored = stream.commit()
    assert stored.raw_size == 0 and stored.size > 0 and stored.frames
    manifest = backups.Manifest(
        backup_id=backup_id, environment="t", database="db", dbname="db", format="directory",
        compression="zstd:3", files=[stored], size=stored.size, sha256=stored.sha256, row_counts={}, lsn="0/0",
        snapshot_time="2026-12-02T00:00:00+00:00", server_version=150000, pg_dump_version=15, database_size=0,
        durations={}, created_at="2026-12-02T00:00:00+00:00")
    (tmp_path / "work").mkdir()
    path, _ = backups.fetch_backup(storage, manifest, tmp_path / "work")
    assert path == tmp_path / "work" / "dump" and (path / "1.dat").read_bytes() == b""
