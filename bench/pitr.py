"""Benchmark: physical backups and point-in-time recovery with pgBackRest, ours against the
raw tools, same cluster, same run.

    .venv/bin/python bench/pitr.py              # 256 MB, then about 1 GB (BENCH_SIZES_MB to change)

For each size, on a fresh sandbox with the generated fleet database (as bench/backup.py):
- a full backup into the posix repository (repo2), so that moto's speed does not hide ours:
  raw `pgbackrest --repo=2 --type=full --process-max=2 backup` against our `physical_backup`
  flow (stanza-create, check, the backup, info, retention, report), and raw
  `pg_basebackup -Ft -z`; our flow into S3 on moto (repo1, over TLS) for reference;
- a recovery to a marked time: raw `pgbackrest restore --type=time --target=...
  --target-action=promote` plus `pg_ctl start` until the instance is promoted, against our
  `pitr_restore` flow (catalogue, the same restore and start, the target check, report);
- the physical restore test's RTO (restore of the newest backup, all WAL, pg_amcheck of every
  database, smoke queries) against the logical restore test's RTO (restore_and_verify) of
  the same data, from a zstd backup on file://.

Each figure is the best of BENCH_ROUNDS (3), ours and raw alternating (and which goes first). Prints a table per size,
then one JSON line: physical_backup_ratio and pitr_restore_ratio are raw seconds over ours
(target 1/1.1 = 0.91 or more), physical_vs_logical_rto is the logical RTO over the physical one
(target 3 or more at 1 GB); the same per size under "sizes".
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from _lib.common import (
    bench_sandbox,
    checkpoints,
    database_bytes,
    prefect_api,
    run_seconds,
    write_environment,
)

SIZES_MB = [int(x) for x in os.environ.get("BENCH_SIZES_MB", "256,1024").split(",")]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
PROCESS_MAX = 2


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """A flow run's seconds from its creation to its final state, as the API records them."""
    state = fn(*args, return_state=True, **kwargs)
    return run_seconds(state.state_details.flow_run_id), state.result()


def as_postgres(argv: list[str]) -> list[str]:
    from sandbox.process import as_postgres as wrap

    return wrap(argv)


def pgbackrest(state: Any, *args: str) -> None:
    subprocess.run(as_postgres(["pgbackrest", f"--config={state.pgbackrest_config}",
                                f"--stanza={state.pgbackrest_stanza}", *args]), check=True, cwd="/",
                   stdout=subprocess.DEVNULL)


def raw_full_backup(state: Any) -> float:
    started = time.monotonic()
    pgbackrest(state, "--repo=2", "--type=full", f"--process-max={PROCESS_MAX}", "backup")
    return time.monotonic() - started


def raw_basebackup(state: Any, server: Any) -> float:
    out = state.workdir / "raw-basebackup"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    started = time.monotonic()
    subprocess.run([str(state.pg_bin / "pg_basebackup"), "-Ft", "-z", "-X", "fetch", "-D", str(out)],
                   env=server.env("postgres"), check=True)
    elapsed = time.monotonic() - started
    subprocess.run(["rm", "-rf", str(out)], check=True)
    return elapsed


def raw_pitr(state: Any, server: Any, target: str, port: int) -> float:
    """pgbackrest restore to the target into a new directory, pg_ctl start, until promoted."""
    from datetime import datetime

    import psycopg

    from tasks.pgbackrest import pg_time

    data = f"{state.pgbackrest_restore_dir}/raw-pitr"
    target = pg_time(datetime.fromisoformat(target))  # as pgBackRest reads it: "YYYY-MM-DD HH:MM:SS.ffffff+00"
    started = time.monotonic()
    pgbackrest(state, "--repo=2", f"--pg1-path={data}", f"--process-max={PROCESS_MAX}", "--archive-mode=off",
               "--type=time", f"--target={target}", "--target-action=promote", "restore")
    subprocess.run(as_postgres([str(state.pg_bin / "pg_ctl"), "-D", data, "-l", f"{data}.log", "-o",
                                f"-p {port} -c archive_mode=off -c unix_socket_directories={state.pgbackrest_restore_dir}",
                                "-w", "-t", "600", "-s", "start"]), check=True, cwd="/")
    params = {**server.params, "port": str(port), "dbname": "postgres"}
    while True:
        try:
            with psycopg.connect(**params, autocommit=True) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    break
        except psycopg.OperationalError:
            pass
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    subprocess.run(as_postgres([str(state.pg_bin / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"]),
                   check=True, cwd="/", stdout=subprocess.DEVNULL)
    subprocess.run(as_postgres(["rm", "-rf", data, f"{data}.log"]), check=True, cwd="/")
    return elapsed


def expire_oldest_full(state: Any) -> float:
    """Seconds of `pgbackrest --repo=2 expire --set=<the oldest full>`: what GFS retention adds
    to a backup run that expires one full backup."""
    from tasks import pgbackrest as ours
    from tasks.config import load_environment

    fulls = [b for b in ours.info(load_environment("bench").cluster("posix")).backups if b.type == "full"]
    started = time.monotonic()
    pgbackrest(state, "--repo=2", f"--set={min(fulls, key=lambda b: b.stop).label}", "expire")
    return time.monotonic() - started


def marked_target(server: Any) -> str:
    """A heartbeat marker, the target just after it, one more marker, WAL archived."""
    from datetime import timedelta

    from tasks import postgres

    with postgres.connect(server, "postgres") as conn:
        before = postgres.write_heartbeat(conn)
        time.sleep(0.3)
        postgres.write_heartbeat(conn)
        postgres.wait_archived(conn, postgres.switch_wal(conn), 120)
    return (before + timedelta(seconds=0.1)).isoformat()


def discard(env: str, cluster: str) -> None:
    from tasks import pghost
    from tasks.config import load_environment

    cfg = load_environment(env).cluster(cluster)
    for path in sorted(os.listdir(cfg.restore.directory)):
        full = f"{cfg.restore.directory}/{path}"
        if os.path.isdir(full):
            pghost.stop(cfg, full)
            pghost.remove(cfg, full)


def one_size(size_mb: int) -> dict[str, Any]:
    from sandbox import api
    from tasks import postgres

    with bench_sandbox(f"pitr-{size_mb}", size_mb) as (state, t_gen):
        server = postgres.Server.from_dsn(os.environ["RUNBOOK_SANDBOX_PG_DSN"])
        db_mb = database_bytes(server, "fleet") / 1e6
        with postgres.connect(server, "postgres") as conn:
            cluster_mb = float(conn.execute("SELECT sum(pg_database_size(oid)) FROM pg_database").fetchone()[0]) / 1e6
        doc = api.environment_dict(state, name="bench")
        main = doc["clusters"]["main"]
        main["objectives"] = {"rto": "6h", "rpo": "1h"}
        # Retention by days keeps every backup of the run: raw pgBackRest expires nothing either
        # (`expire --set` of a 1 GB full costs most of a second, and is measured below).
        doc["clusters"]["posix"] = {**main, "pgbackrest": {**main["pgbackrest"], "repository": 2,
                                                          "retention": {"days": 30}}}
        fleet = doc["databases"]["fleet"]
        fleet["objectives"]["rto"] = "6h"
        doc["databases"] = {"fleet": {**fleet, "storage": {"url": f"file://{state.workdir}/bench-backups"}}}
        write_environment("bench", doc)

        with prefect_api(), checkpoints(True):
            from flows.backup import backup_database
            from flows.physical_backup import physical_backup
            from flows.physical_restore_test import physical_restore_test
            from flows.pitr_restore import pitr_restore
            from flows.restore_test import restore_test

            # Ours and raw alternate, and who goes first alternates too: the page cache must not
            # decide the comparison.
            raw_backups, ours_backups, basebackups, s3_backups = [], [], [], []
            for i in range(ROUNDS):
                for step in (("raw", "ours") if i % 2 == 0 else ("ours", "raw")):
                    if step == "raw":
                        raw_backups.append(raw_full_backup(state))
                    else:
                        ours_backups.append(timed(physical_backup, "bench", "posix", "full")[0])
                basebackups.append(raw_basebackup(state, server))
            s3_backups.append(timed(physical_backup, "bench", "main", "full")[0])
            t_expire = expire_oldest_full(state)

            raw_pitrs, our_pitrs = [], []
            for i in range(ROUNDS):
                for step in (("raw", "ours") if i % 2 == 0 else ("ours", "raw")):
                    if step == "raw":
                        raw_pitrs.append(raw_pitr(state, server, marked_target(server), 54499))
                    else:
                        our_pitrs.append(timed(pitr_restore, "bench", "posix", marked_target(server))[0])
                        discard("bench", "posix")

            physical_rto = min(timed(physical_restore_test, "bench", "posix")[1]["rto_seconds"]
                               for _ in range(ROUNDS))
            backup_database("bench", "fleet")
            logical_rto = min(timed(restore_test, "bench", "fleet")[1]["timings"]["restore_and_verify"]
                              for _ in range(ROUNDS))

    raw_b, ours_b, base_b, raw_p, ours_p = (min(x) for x in (raw_backups, ours_backups, basebackups, raw_pitrs,
                                                               our_pitrs))
    rows = [
        ("generate sample database", t_gen),
        (f"raw pgbackrest backup --type=full --process-max={PROCESS_MAX} (posix)", raw_b),
        ("our physical_backup full (posix)", ours_b),
        ("our physical_backup full (S3 on moto, TLS)", min(s3_backups)),
        ("raw pg_basebackup -Ft -z", base_b),
        ("expire --set of one full backup (GFS retention's cost)", t_expire),
        ("raw pgbackrest restore --type=time + start until promoted", raw_p),
        ("our pitr_restore (posix)", ours_p),
        ("physical restore test RTO (restore, all WAL, pg_amcheck, smoke)", physical_rto),
        ("logical restore test RTO (restore_and_verify)", logical_rto),
    ]
    print(f"\nsize {size_mb} MB: fleet {db_mb:.0f} MB, whole cluster {cluster_mb:.0f} MB")
    print(f"{'step':<68} {'seconds':>8}")
    for name, secs in rows:
        print(f"{name:<68} {secs:>8.2f}")
    return {
        "size_mb": size_mb, "fleet_mb": round(db_mb, 1), "cluster_mb": round(cluster_mb, 1),
        "raw_pgbackrest_full_seconds": round(raw_b, 2), "raw_pgbackrest_full_runs": [round(x, 2) for x in raw_backups],
        "physical_backup_seconds": round(ours_b, 2), "physical_backup_runs": [round(x, 2) for x in ours_backups],
        "physical_backup_s3_seconds": round(min(s3_backups), 2),
        "raw_pg_basebackup_seconds": round(base_b, 2), "expire_one_full_seconds": round(t_expire, 2),
        "raw_pitr_seconds": round(raw_p, 2), "raw_pitr_runs": [round(x, 2) for x in raw_pitrs],
        "pitr_restore_seconds": round(ours_p, 2), "pitr_restore_runs": [round(x, 2) for x in our_pitrs],
        "physical_rto_seconds": round(physical_rto, 2), "logical_rto_seconds": round(logical_rto, 2),
        "physical_backup_ratio": round(raw_b / ours_b, 3), "pitr_restore_ratio": round(raw_p / ours_p, 3),
        "physical_vs_logical_rto": round(logical_rto / physical_rto, 3),
    }


def main() -> None:
    sizes = [one_size(size) for size in SIZES_MB]
    last = sizes[-1]
    print(json.dumps({
        "physical_backup_ratio": last["physical_backup_ratio"], "pitr_restore_ratio": last["pitr_restore_ratio"],
        "physical_vs_logical_rto": last["physical_vs_logical_rto"], "size_mb": last["size_mb"], "sizes": sizes,
    }))


if __name__ == "__main__":
    main()
