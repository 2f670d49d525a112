"""Benchmark: our backup and restore against raw pg_dump and pg_restore, same database, same run.

    .venv/bin/python bench/backup.py            # about 1 GB (BENCH_SIZE_MB to change)

Figures:
- raw `pg_dump -Fc` to /dev/null vs our backup flow to file:// and to S3 (moto), wall
  time of the whole flow run (preflight, snapshot and row counts, dump, verify, retention);
- raw `pg_restore -j N` of the stored dump file vs our restore: download and checksum
  included, timed from file:// storage, as the restore-test flow reports it.

Our runs are as shipped: checkpoints and effects persisted, heartbeats every 30 s. One
more backup to file:// runs bare (nothing persisted, no heartbeats), for what crash
recovery costs: `checkpoint_cost_seconds`.

Prints a table, then one JSON line with backup_file_ratio, backup_s3_ratio and
restore_ratio (throughput ours / raw: above 1 is faster than raw; target at least 0.9).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from _lib.common import (  # noqa: E402
    bench_sandbox,
    checkpoints,
    database_bytes,
    prefect_api,
    raw_pg_restore,
    write_environment,
)

SIZE_MB = int(os.environ.get("BENCH_SIZE_MB", "1024"))
JOBS = int(os.environ.get("BENCH_JOBS", "2"))


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.monotonic()
    out = fn(*args)
    return time.monotonic() - start, out


def main() -> None:
    from sandbox import api
    from tasks import postgres
    from tasks.backups import CUSTOM_FILE

    with bench_sandbox("backup", SIZE_MB) as (state, t_gen):
        server = postgres.Server.from_dsn(os.environ["RUNBOOK_SANDBOX_PG_DSN"])
        db_bytes = database_bytes(server, "fleet")
        pg_dump = postgres.find_tool("pg_dump", 15)

        def raw_dump() -> float:
            start = time.monotonic()
            subprocess.run([pg_dump, "-Fc", "-Z6"], stdout=subprocess.DEVNULL, env=server.env("fleet"), check=True)
            return time.monotonic() - start

        doc = api.environment_dict(state, name="bench")
        fleet = doc["databases"]["fleet"]
        fleet["objectives"]["rto"] = "6h"
        fleet["restore_test"]["jobs"] = JOBS
        file_db = {**fleet, "dbname": "fleet",
                   "storage": {"url": f"file://{state.workdir}/bench-backups"}}
        doc["databases"] = {"fleet": fleet, "fleet_file": file_db}
        write_environment("bench", doc)

        # Alternate ours and raw, twice each, and keep the best of each: the order of
        # runs (checkpoints, cache) must not decide the comparison.
        with prefect_api():
            import flows.backup
            from flows.backup import backup_database
            from flows.restore_test import restore_test

            raw_dumps, file_runs, restores, raw_restores = [], [], [], []
            for _ in range(2):
                raw_dumps.append(raw_dump())
                with checkpoints(True):
                    file_runs.append(timed(backup_database, "bench", "fleet_file"))
            with checkpoints(False, flows.backup):
                t_bare, res_bare = timed(backup_database, "bench", "fleet_file")
            with checkpoints(True):
                t_s3, res_s3 = timed(backup_database, "bench", "fleet")
            res_file = file_runs[-1][1]
            # The newest backup: retention keeps one a day, so the earlier ones of today are gone.
            dump_file = state.workdir / "bench-backups" / "fleet_file" / res_bare["backup_id"] / CUSTOM_FILE
            for _ in range(2):
                with checkpoints(True):
                    t_wall, rt = timed(restore_test, "bench", "fleet_file")
                restores.append((t_wall, rt))
                raw_restores.append(raw_pg_restore(server, dump_file, JOBS))

    t_raw_dump = min(raw_dumps)
    t_file = min(t for t, _ in file_runs)
    t_raw_restore = min(raw_restores)
    t_our_restore_wall = min(t for t, _ in restores)
    rt = min((r for _, r in restores), key=lambda r: r["timings"]["download_and_checksum"] + r["timings"]["pg_restore"])
    dump_seconds = min(r["seconds"]["dump"] for _, r in file_runs)
    t_our_restore = rt["timings"]["download_and_checksum"] + rt["timings"]["pg_restore"]
    mb = db_bytes / 1e6
    rows = [
        ("generate sample database", t_gen, None),
        ("raw pg_dump -Fc > /dev/null", t_raw_dump, mb / t_raw_dump),
        ("our backup flow -> file://", t_file, mb / t_file),
        ("  of which snapshot, counts, dump stream", dump_seconds, mb / dump_seconds),
        ("our backup flow -> file://, bare", t_bare, mb / t_bare),
        ("our backup flow -> S3 (moto)", t_s3, mb / t_s3),
        (f"raw pg_restore -j{JOBS}", t_raw_restore, mb / t_raw_restore),
        ("our restore (checksum + pg_restore)", t_our_restore, mb / t_our_restore),
        ("our restore-test flow, wall (with checks)", t_our_restore_wall, None),
    ]
    print(f"database: {mb:.0f} MB on disk, dump {res_file['size'] / 1e6:.0f} MB, {JOBS} restore jobs")
    print(f"{'step':<44} {'seconds':>8} {'MB/s':>8}")
    for name, secs, thr in rows:
        print(f"{name:<44} {secs:>8.1f} {'' if thr is None else f'{thr:.1f}':>8}")
    figures = {
        "database_mb": round(mb, 1),
        "dump_mb": round(res_file["size"] / 1e6, 1),
        "raw_pg_dump_seconds": round(t_raw_dump, 2),
        "raw_pg_dump_runs": [round(x, 2) for x in raw_dumps],
        "backup_file_runs": [round(t, 2) for t, _ in file_runs],
        "backup_file_dump_seconds": round(dump_seconds, 2),
        "backup_file_seconds": round(t_file, 2),
        "backup_file_bare_seconds": round(t_bare, 2),
        "checkpoint_cost_seconds": round(t_file - t_bare, 2),
        "backup_s3_seconds": round(t_s3, 2),
        "raw_pg_restore_seconds": round(t_raw_restore, 2),
        "raw_pg_restore_runs": [round(x, 2) for x in raw_restores],
        "our_restore_seconds": round(t_our_restore, 2),
        "backup_file_ratio": round(t_raw_dump / t_file, 3),
        "backup_s3_ratio": round(t_raw_dump / t_s3, 3),
        "restore_ratio": round(t_raw_restore / t_our_restore, 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
