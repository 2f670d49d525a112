"""Benchmark: how long a restore-and-swap keeps the app down, against a raw pg_restore.

    .venv/bin/python bench/restore_swap.py      # about 1 GB (BENCH_SIZE_MB to change)

On the sandbox (PostgreSQL 15, our Kubernetes API server with `api` at 3 replicas, the
sample web service), one backup of `fleet` to file:// storage, then alternately, twice
each (the best of each is kept, so the order of runs does not decide):
- raw `pg_restore -j N` into a new database of a plain `pg_dump -Fc` (gzip) file, as a
  restore by hand went before zstd;
- our `restore-database` in swap mode: app-down time from scaling `api` to 0 until its
  health URL answers again (terminate sessions, checksum and zstd -d, pg_restore -j N, row counts and
  smoke queries, the swap, scale back, rollout, health), as the flow reports it.

Prints a table, then one JSON line with app_down_seconds, raw_pg_restore_seconds and
ratio = raw / app-down (as bench/backup.py: 1.0 is as fast as raw, below is slower).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from _lib.common import (  # noqa: E402
    bench_sandbox,
    database_bytes,
    prefect_api,
    raw_gzip_dump,
    raw_pg_restore,
    write_environment,
)

SIZE_MB = int(os.environ.get("BENCH_SIZE_MB", "1024"))
JOBS = int(os.environ.get("BENCH_JOBS", "2"))
ENV = "bench-restore"


def confirmed_swap(env: str, database: str, dbname: str) -> dict[str, Any]:
    """Run a swap restore and answer its confirmation through the API, as an operator would."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    from flows.restore_database import restore_database

    out: list[Any] = []
    runner = threading.Thread(target=lambda: out.append(restore_database(env, database, return_state=True)))
    runner.start()
    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    while True:
        with get_client(sync_client=True) as c:
            runs = c.read_flow_runs(flow_run_filter=paused)
        if runs:
            break
        if not runner.is_alive():
            raise RuntimeError("the restore ended without asking for confirmation")
        time.sleep(0.2)
    resume_flow_run(runs[0].id, run_input={"confirm": dbname, "approver": "bench"})
    runner.join()
    state = out[0]
    if not state.is_completed():
        raise RuntimeError(f"restore failed: {state.message}")
    return state.result()


def main() -> None:
    from sandbox import api
    from tasks import postgres

    with bench_sandbox("restore-swap", SIZE_MB) as (state, t_gen):
        server = postgres.Server.from_dsn(os.environ["RUNBOOK_SANDBOX_PG_DSN"])
        db_bytes = database_bytes(server, "fleet")

        doc = api.environment_dict(state, name=ENV)
        fleet = doc["databases"]["fleet"]
        fleet["storage"] = {"url": f"file://{state.workdir}/bench-backups"}
        fleet["objectives"]["rto"] = "6h"
        fleet["restore_test"]["jobs"] = JOBS
        fleet["apps"] = ["api"]
        doc["databases"] = {"fleet": fleet}
        write_environment(ENV, doc)

        with prefect_api():
            from flows.backup import backup_database

            backup = backup_database(ENV, "fleet")
            # The yardstick: pg_restore of a plain pg_dump -Fc (gzip), as restored by hand before.
            dump_file = state.workdir / "raw-gzip.pgc"
            raw_gzip_dump(server, "fleet", dump_file)
            raws: list[float] = []
            ours: list[dict[str, Any]] = []
            for _ in range(2):
                ours.append(confirmed_swap(ENV, "fleet", "fleet"))
                # Only the live database and the dump are needed for the next round.
                postgres.drop_database(server, ours[-1]["names"]["kept"])
                raws.append(raw_pg_restore(server, dump_file, JOBS))

    best = min(ours, key=lambda r: r["app_down_seconds"])
    app_down = best["app_down_seconds"]
    t_raw = min(raws)
    timings = best["timings"]
    parts = ["scale to 0", "terminate sessions", "download_and_checksum", "pg_restore", "verify", "swap", "scale back and healthy"]
    overhead = app_down - sum(timings.get(p, 0.0) for p in parts)
    mb = db_bytes / 1e6
    rows: list[tuple[str, float]] = [
        ("generate sample database", t_gen),
        (f"raw pg_restore -j{JOBS} into a new database", t_raw),
        ("our restore-and-swap: app-down time", app_down),
        ("  scale api 3 -> 0, pods gone", timings.get("scale to 0", 0.0)),
        ("  terminate the remaining sessions", timings.get("terminate sessions", 0.0)),
        ("  checksum and zstd -d of the stored dump", timings.get("download_and_checksum", 0.0)),
        (f"  pg_restore -j{JOBS} (create database included)", timings.get("pg_restore", 0.0)),
        ("  row counts and smoke queries", timings.get("verify", 0.0)),
        ("  swap (two renames, one transaction)", timings.get("swap", 0.0)),
        ("  scale back, rollout, health", timings.get("scale back and healthy", 0.0)),
        ("  the rest: Prefect task runs between the steps", overhead),
        ("our flow, wall (with backup choice, confirmation)", timings.get("total", 0.0)),
    ]
    print(f"database: {mb:.0f} MB on disk, dump {backup['size'] / 1e6:.0f} MB, {JOBS} restore jobs")
    print(f"{'step':<52} {'seconds':>8}")
    for name, secs in rows:
        print(f"{name:<52} {secs:>8.2f}")
    figures = {
        "database_mb": round(mb, 1),
        "dump_mb": round(backup["size"] / 1e6, 1),
        "app_down_seconds": round(app_down, 2),
        "app_down_runs": [round(r["app_down_seconds"], 2) for r in ours],
        "raw_pg_restore_seconds": round(t_raw, 2),
        "raw_pg_restore_runs": [round(x, 2) for x in raws],
        "our_pg_restore_seconds": round(timings.get("pg_restore", 0.0), 2),
        "swap_seconds": round(timings.get("swap", 0.0), 3),
        "overhead_seconds": round(app_down - t_raw, 2),
        "ratio": round(t_raw / app_down, 3),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
