"""Benchmark: our backup and restore against the raw tools, same database, same run.

    .venv/bin/python bench/backup.py            # about 1 GB (BENCH_SIZE_MB to change)

Figures, each the best of BENCH_ROUNDS (3) backups and two restores, ours and raw alternating:
- raw `pg_dump -Fc` (gzip level 6, the default before zstd) into a file, and the raw
  pipe `pg_dump -Fc -Z0 | zstd -3 -T2` into a file;
- our backup flow with `compression: zstd:3` (the default) to file:// and to S3 (moto):
  wall time of the whole flow run (preflight, snapshot, dump with the row counts beside
  it, verify, manifest, retention, report);
- raw `pg_restore -j N` of the gzip file vs our restore of the zstd backup: checksum,
  zstd -d into the file pg_restore needs, and pg_restore, as the restore-test flow
  reports them.

Our runs are as shipped: checkpoints and effects persisted, heartbeats every 30 s. One
more backup to file:// runs bare (nothing persisted, no heartbeats), for what crash
recovery costs: `checkpoint_cost_seconds`.

Prints a table, then one JSON line. Ratios are throughput, ours over raw (above 1 is
faster than raw): backup_vs_gzip_ratio (target 3.0 or more), backup_vs_zstd_pipe_ratio
and its old name backup_file_ratio (0.9), backup_s3_ratio (S3 against the zstd pipe),
restore_ratio (0.95); size_ratio is our size over gzip's (1.15 or less).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from _lib.common import (  # noqa: E402
    bench_sandbox,
    checkpoints,
    database_bytes,
    prefect_api,
    raw_gzip_dump,
    raw_pg_restore,
    raw_zstd_pipe,
    run_seconds,
    write_environment,
)

SIZE_MB = int(os.environ.get("BENCH_SIZE_MB", "1024"))
JOBS = int(os.environ.get("BENCH_JOBS", "2"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))  # of each backup, ours and raw alternating


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    """A flow run's seconds from its creation to its final state, as the API records them
    (what the UI and a CI trigger see; as bench/deploy.py), and its result. The local call
    returns up to a second later: Prefect joins its heartbeat thread, which sleeps in 1 s
    steps (`call_seconds` in the JSON)."""
    start = time.monotonic()
    state = fn(*args, return_state=True)
    CALLS.append(time.monotonic() - start)
    return run_seconds(state.state_details.flow_run_id), state.result()


CALLS: list[float] = []


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and its children so far."""
    import psutil

    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    return sum(t.user + t.system for p in procs for t in [p.cpu_times()])


def main() -> None:
    from sandbox import api
    from tasks import postgres

    with bench_sandbox("backup", SIZE_MB) as (state, t_gen):
        server = postgres.Server.from_dsn(os.environ["RUNBOOK_SANDBOX_PG_DSN"])
        db_bytes = database_bytes(server, "fleet")
        gzip_file, pipe_file = state.workdir / "raw-gzip.pgc", state.workdir / "raw-pipe.pgc.zst"

        doc = api.environment_dict(state, name="bench")
        fleet = doc["databases"]["fleet"]
        fleet["objectives"]["rto"] = "6h"
        fleet["restore_test"]["jobs"] = JOBS
        file_db = {**fleet, "dbname": "fleet", "storage": {"url": f"file://{state.workdir}/bench-backups"}}
        doc["databases"] = {"fleet": fleet, "fleet_file": file_db}
        write_environment("bench", doc)

        # Alternate ours and raw, twice each, and keep the best of each: the order of
        # runs (checkpoints, cache) must not decide the comparison.
        with prefect_api():
            import flows.backup
            from flows.backup import backup_database
            from flows.restore_test import restore_test

            raw_gzip, raw_pipe, file_runs, s3_runs, restores, raw_restores = [], [], [], [], [], []
            for _ in range(ROUNDS):
                raw_gzip.append(raw_gzip_dump(server, "fleet", gzip_file))
                raw_pipe.append(raw_zstd_pipe(server, "fleet", pipe_file))
                with checkpoints(True):
                    file_runs.append((*timed(backup_database, "bench", "fleet_file"), CALLS[-1]))
                    moto_before = cpu_seconds(state.moto_pid)
                    s3_runs.append((*timed(backup_database, "bench", "fleet"), cpu_seconds(state.moto_pid) - moto_before))
            with checkpoints(False, flows.backup):
                t_bare, _ = timed(backup_database, "bench", "fleet_file")
            for _ in range(2):
                with checkpoints(True):
                    t_wall, rt = timed(restore_test, "bench", "fleet_file")
                restores.append((t_wall, rt))
                raw_restores.append(raw_pg_restore(server, gzip_file, JOBS))
            gzip_bytes, pipe_bytes = gzip_file.stat().st_size, pipe_file.stat().st_size

    t_gzip, t_pipe = min(raw_gzip), min(raw_pipe)
    t_file, res_file, t_file_call = min(file_runs, key=lambda r: r[0])
    t_s3, res_s3, moto_cpu = min(s3_runs, key=lambda r: r[0])
    t_raw_restore = min(raw_restores)
    t_our_restore_wall = min(t for t, _ in restores)
    rt = min((r for _, r in restores), key=lambda r: r["timings"]["download_and_checksum"] + r["timings"]["pg_restore"])
    t_fetch, t_pg_restore = rt["timings"]["download_and_checksum"], rt["timings"]["pg_restore"]
    t_our_restore = t_fetch + t_pg_restore
    mb = db_bytes / 1e6
    rows = [
        ("generate sample database", t_gen, None),
        ("raw pg_dump -Fc (gzip 6) > file", t_gzip, mb / t_gzip),
        ("raw pg_dump -Fc -Z0 | zstd -3 -T2 > file", t_pipe, mb / t_pipe),
        ("our backup flow, zstd:3 -> file://", t_file, mb / t_file),
        ("  of which snapshot, dump and row counts", res_file["seconds"]["dump"], None),
        ("  of which verify (read back, pg_restore --list)", res_file["seconds"]["verify"], None),
        ("our backup flow -> file://, bare", t_bare, mb / t_bare),
        ("our backup flow, zstd:3 -> S3 (moto)", t_s3, mb / t_s3),
        ("  of which snapshot, dump and row counts", res_s3["seconds"]["dump"], None),
        ("  of which verify (read back, pg_restore --list)", res_s3["seconds"]["verify"], None),
        ("  moto's own CPU time meanwhile, on the same cores", moto_cpu, None),
        (f"raw pg_restore -j{JOBS} of the gzip file", t_raw_restore, mb / t_raw_restore),
        ("our restore: checksum + zstd -d + pg_restore", t_our_restore, mb / t_our_restore),
        ("  of which checksum and zstd -d to a file", t_fetch, None),
        (f"  of which pg_restore -j{JOBS}", t_pg_restore, None),
        ("our restore-test flow, wall (with checks)", t_our_restore_wall, None),
    ]
    print(f"database: {mb:.0f} MB on disk; gzip {gzip_bytes / 1e6:.0f} MB, zstd pipe {pipe_bytes / 1e6:.0f} MB, "
          f"ours {res_file['size'] / 1e6:.0f} MB; {JOBS} restore jobs")
    print(f"{'step':<50} {'seconds':>8} {'MB/s':>8}")
    for name, secs, thr in rows:
        print(f"{name:<50} {secs:>8.2f} {'' if thr is None else f'{thr:.1f}':>8}")
    figures = {
        "database_mb": round(mb, 1),
        "dump_mb": round(res_file["size"] / 1e6, 1),
        "gzip_dump_mb": round(gzip_bytes / 1e6, 1),
        "raw_pg_dump_seconds": round(t_gzip, 2),
        "raw_pg_dump_runs": [round(x, 2) for x in raw_gzip],
        "raw_zstd_pipe_seconds": round(t_pipe, 2),
        "raw_zstd_pipe_runs": [round(x, 2) for x in raw_pipe],
        "backup_file_runs": [round(t, 2) for t, _, _ in file_runs],
        "backup_file_call_seconds": round(t_file_call, 2),
        "backup_file_dump_seconds": round(res_file["seconds"]["dump"], 2),
        "backup_file_seconds": round(t_file, 2),
        "backup_file_bare_seconds": round(t_bare, 2),
        "checkpoint_cost_seconds": round(t_file - t_bare, 2),
        "backup_s3_runs": [round(t, 2) for t, _, _ in s3_runs],
        "moto_cpu_seconds": round(moto_cpu, 2),
        "backup_s3_dump_seconds": round(res_s3["seconds"]["dump"], 2),
        "backup_s3_verify_seconds": round(res_s3["seconds"]["verify"], 2),
        "backup_s3_seconds": round(t_s3, 2),
        "raw_pg_restore_seconds": round(t_raw_restore, 2),
        "raw_pg_restore_runs": [round(x, 2) for x in raw_restores],
        "our_restore_seconds": round(t_our_restore, 2),
        "our_restore_fetch_seconds": round(t_fetch, 2),
        "backup_vs_gzip_ratio": round(t_gzip / t_file, 3),
        "backup_vs_zstd_pipe_ratio": round(t_pipe / t_file, 3),
        "backup_file_ratio": round(t_pipe / t_file, 3),
        "backup_s3_ratio": round(t_pipe / t_s3, 3),
        "backup_s3_vs_gzip_ratio": round(t_gzip / t_s3, 3),
        "size_ratio": round(res_file["size"] / gzip_bytes, 3),
        "restore_ratio": round(t_raw_restore / t_our_restore, 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
