"""The steps a point-in-time recovery and a physical restore test share: read the catalogue,
name the instance, restore it from pgBackRest and start it on a new port, check it, discard it.

Each step finds its state on the host rather than in memory, so an attempt resumed after a
dead worker neither restores twice nor leaves an instance behind:

- an instance already running from the run's directory is adopted, never restored again;
- a directory with our `.restored` mark beside it holds a finished restore: it is only started;
- a directory without it holds an interrupted restore: pgBackRest finishes it (`--delta`);
- an empty or missing directory gets the restore.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect import task

from tasks import backups, checkpoints, pgbackrest, pghost, pitr, postgres, retries
from tasks.checks import Check
from tasks.config import EnvironmentConfig
from tasks.errors import CheckFailed
from tasks.faults import fault_point
from tasks.restores import run_smoke_queries
from tasks.storage import open_storage


@dataclass(frozen=True)
class InstancePlan:
    """The checkpoint of a restore: where its instance goes, and when the run started."""

    name: str
    data_dir: str
    started_at: datetime

    @property
    def log(self) -> str:
        return f"{self.data_dir}.log"

    @property
    def mark(self) -> str:
        return f"{self.data_dir}.restored"


@task(**retries.policy("pgbackrest"), **checkpoints.OBSERVE)
def read_catalogue(env: EnvironmentConfig, cluster: str) -> pgbackrest.StanzaInfo:
    """`pgbackrest info`: the backups and the WAL archive's range, as they are now."""
    return pgbackrest.info(env.cluster(cluster))


@task(**checkpoints.CHECKPOINT)
def name_instance(env: EnvironmentConfig, cluster: str, kind: str, run_id: str) -> InstancePlan:
    """The checkpoint: the restored instance's directory, from the run's start and id, so a
    resumed attempt finds the same one."""
    started_at = datetime.now(UTC)
    name = f"{cluster}-{kind}-{started_at:%Y%m%dT%H%M%SZ}-{(run_id or 'local').replace('-', '')[:8]}"
    return InstancePlan(name, pghost.scratch_path(env.cluster(cluster), name), started_at)


@task(**checkpoints.REDO)
def restore_instance(env: EnvironmentConfig, cluster: str, plan: InstancePlan, target_time: datetime | None,
                     label: str | None) -> dict[str, Any]:
    """`pgbackrest restore` into the new directory (to `target_time`, or to the end of the
    archive), then start it on a free port and wait until recovery has promoted it. What an
    earlier attempt did is found on the host and not done again (see the module)."""
    cfg = env.cluster(cluster)
    timings: dict[str, float] = {}
    found = "nothing"
    port = pghost.running_port(cfg, plan.data_dir)
    if port is not None:
        found = "a running instance, adopted"
    else:
        on_host = pghost.restore_state(cfg, plan.data_dir, plan.mark)
        if on_host != "restored":
            delta = on_host == "partial"
            found = "an interrupted restore, finished with --delta" if delta else "nothing"
            clock = time.monotonic()
            pgbackrest.restore(cfg, plan.data_dir, target_time=target_time, label=label, delta=delta)
            pghost.run(cfg, ["touch", plan.mark], what=f"marking {plan.data_dir} restored", timeout=15)
            timings["restore"] = round(time.monotonic() - clock, 3)
        else:
            found = "a finished restore, started"
        clock = time.monotonic()
        port = pghost.start_on_a_free_port(cfg, plan.data_dir, plan.log).port
        timings["start_and_recover"] = round(time.monotonic() - clock, 3)
        fault_point("physical-restore.instance-started")
    instance = pghost.Instance(plan.data_dir, port, plan.log)
    clock = time.monotonic()
    pghost.wait_accepting(cfg, instance, cfg.restore.start_timeout.total_seconds())
    timings["promote"] = round(time.monotonic() - clock, 3)
    return {"instance": instance, "address": f"{pghost.host_of(cfg)}:{port}", "found": found, "timings": timings}


@task(**checkpoints.OBSERVE)
def check_target(env: EnvironmentConfig, cluster: str, instance: pghost.Instance,
                 target_time: datetime | None) -> Check:
    """Where recovery stopped: the last replayed transaction, and the heartbeat markers on
    the instance against those on the primary (data up to the target, none after)."""
    cfg = env.cluster(cluster)
    with postgres.connect(pghost.server_of(cfg, instance), cfg.heartbeat_database) as conn:
        replayed = postgres.last_replayed(conn)
        restored_newest = postgres.newest_heartbeat(conn)
    primary_newest = None
    if target_time is not None:
        with postgres.connect(pghost.primary(cfg), cfg.heartbeat_database) as conn:
            primary_newest = postgres.newest_heartbeat(conn, target_time - pitr.MARKER_SLACK)
    return pitr.target_reached(target_time, replayed, primary_newest, restored_newest)


@task(**checkpoints.OBSERVE)
def check_instance(env: EnvironmentConfig, cluster: str, instance: pghost.Instance) -> list[Check]:
    """pg_amcheck of every database, then each database's smoke queries."""
    cfg = env.cluster(cluster)
    clean, output = pghost.amcheck(cfg, instance)
    results = [Check("pg_amcheck, every database", clean, output[-300:] if output else "no corruption found")]
    server = pghost.server_of(cfg, instance)
    for database, queries in cfg.restore.smoke_queries.items():
        with postgres.connect(server, database) as conn:
            results += [Check(f"{database}: {c.name}", c.passed, c.detail) for c in run_smoke_queries(conn, queries)]
    return results


@task(**checkpoints.REDO)
def discard_instance(env: EnvironmentConfig, cluster: str, plan: InstancePlan) -> dict[str, bool]:
    """Stop the instance and remove its directory, its log and its mark; fine when gone."""
    cfg = env.cluster(cluster)
    stopped = pghost.stop(cfg, plan.data_dir)
    removed = pghost.remove(cfg, plan.data_dir)
    return {"stopped": stopped, "removed": removed}


# --- handing a database over to restore_database ---------------------------------------------------


@task(**checkpoints.CHECKPOINT)
def allocate_extract_id(env: EnvironmentConfig, database: str) -> str:
    """The checkpoint: the id the extracted dump is stored under, the same for every attempt."""
    return backups.new_backup_id()


@task(**retries.policy("postgres"), **checkpoints.EFFECT)
def dump_extract(env: EnvironmentConfig, cluster: str, instance: pghost.Instance, database: str,
                     backup_id: str, source: str) -> backups.Manifest:
    """pg_dump of the database from the recovered instance into the database's own backup
    storage, verified and committed like a nightly backup, but marked as an extract: only a
    restore by its id uses it, and retention leaves it alone. What an earlier attempt left
    under its prefix is discarded first."""
    cfg, db = env.cluster(cluster), env.database(database)
    server = pghost.server_of(cfg, instance)
    storage = open_storage(db.storage)
    prefix = backups.backup_prefix(database, backup_id)
    storage.abort_stale_uploads(prefix)
    storage.delete_prefix(prefix)
    with postgres.connect(server, db.dbname) as conn:
        dump_major = backups.pg_dump_major(postgres.major_of(postgres.server_version_num(conn)))
    manifest = backups.take_dump(server, db, env.name, database, storage, backup_id, None, dump_major,
                                 lambda fraction, written: None, source=source)
    toc = backups.verify_stored(storage, prefix, manifest.files, backup_id, manifest.format,
                                manifest.server_version // 10000)
    missing = backups.tables_missing(manifest.row_counts, toc)
    if missing:
        raise CheckFailed(f"extract {backup_id}: tables missing from the archive: {', '.join(missing)}")
    backups.write_manifest(storage, manifest)
    return manifest
