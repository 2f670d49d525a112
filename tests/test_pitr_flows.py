"""Physical backups, point-in-time recovery, physical restore tests and archive health, on the
sandbox: PostgreSQL 15 archiving WAL through pgBackRest into S3 on moto (over TLS), a real
Prefect API. Faults are real: a broken archive_command, bad input typed in a form."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.archive_health import archive_health
from flows.physical_backup import physical_backup
from flows.physical_restore_test import physical_restore_test
from flows.pitr_restore import pitr_restore
from tasks import pgbackrest, pghost, postgres
from tasks.config import load_environment
from tests.cluster_state import latest_report

pytestmark = pytest.mark.scenario


def admin() -> postgres.Server:
    return postgres.Server.from_dsn(os.environ["RUNBOOK_SANDBOX_PG_DSN"])


def sql(dbname: str, statement: str, params: tuple[Any, ...] = ()) -> Any:
    with postgres.connect(admin(), dbname) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else None


def archive_now() -> None:
    """Close the WAL segment and wait until it is archived: what a recovery to a time just
    written needs (recovery stops at the first commit after the target, which must be archived)."""
    with postgres.connect(admin(), "postgres") as conn:
        walfile = postgres.switch_wal(conn)
        assert postgres.wait_archived(conn, walfile, 60) is not None, "WAL was not archived within 60 s"


def mark(note: str) -> datetime:
    """A committed row in the heartbeat table, and its time."""
    sql("postgres", f"CREATE TABLE IF NOT EXISTS {postgres.HEARTBEAT_TABLE} "
                    "(at timestamptz PRIMARY KEY DEFAULT clock_timestamp(), note text)")
    return sql("postgres", f"INSERT INTO {postgres.HEARTBEAT_TABLE} (note) VALUES (%s) RETURNING at", (note,))[0][0]


def restore_dir(sandbox: Any) -> Path:
    return Path(sandbox.pgbackrest_restore_dir)


def instances_running(sandbox: Any) -> list[str]:
    cfg = load_environment("sandbox").cluster("main")
    return [str(p) for p in restore_dir(sandbox).iterdir() if p.is_dir() and pghost.postmaster_pid(cfg, str(p))]


@pytest.fixture
def cluster_env(make_environment: Any, sandbox: Any) -> Iterator[str]:
    """An environment with the sandbox's cluster `main`; whatever instance a test left running
    from the restore directory is stopped and removed afterwards."""
    env = make_environment(f"pitr-{os.urandom(3).hex()}")
    yield env
    cfg = load_environment(env).cluster("main")
    for path in restore_dir(sandbox).iterdir():
        if path.is_dir():
            pghost.stop(cfg, str(path))
            pghost.remove(cfg, str(path))


report = latest_report


# --- physical backups ------------------------------------------------------------------------------


def test_a_full_then_an_incremental_backup_are_recorded_from_pgbackrest_info(cluster_env: str) -> None:
    full = physical_backup(cluster_env, "main", "full")
    assert full["type"] == "full" and full["label"].endswith("F") and full["size"] > 10_000_000
    mark("between the backups")
    incr = physical_backup(cluster_env, "main", "incr")
    assert incr["type"] == "incr" and incr["label"].startswith(full["label"] + "_") and incr["label"].endswith("I")
    assert incr["repo_size"] < full["repo_size"]  # only what changed
    text = report(f"physical-backup-{cluster_env}-main")
    for figure in ("backup label", incr["label"], "WAL start", "start LSN", "stop LSN", "duration (s)",
                   "Backups in the repository", full["label"]):
        assert figure in text, figure


def test_a_second_full_backup_the_same_day_expires_the_first_by_gfs(cluster_env: str) -> None:
    first = physical_backup(cluster_env, "main", "full")
    second = physical_backup(cluster_env, "main", "full")  # daily: 7 keeps the newest of each day
    assert first["label"] in second["expired"]
    labels = [b.label for b in pgbackrest.info(load_environment(cluster_env).cluster("main")).backups]
    assert first["label"] not in labels and second["label"] in labels


# --- point-in-time recovery ------------------------------------------------------------------------


def test_pitr_to_a_time_between_two_writes_brings_back_exactly_the_rows_before_it(cluster_env: str,
                                                                                  sandbox: Any) -> None:
    physical_backup(cluster_env, "main", "full")
    before_incr = mark("after the full")
    physical_backup(cluster_env, "main", "incr")
    first = mark("first write after the incremental")
    time.sleep(0.6)
    second = mark("second write")
    time.sleep(1.2)
    third = mark("third write")
    time.sleep(0.6)
    fourth = mark("fourth write")
    archive_now()
    target = second + (third - second) / 2

    result = pitr_restore(cluster_env, "main", target.isoformat())

    host, port = result["instance"].rsplit(":", 1)
    server = postgres.Server({**admin().params, "host": host, "port": port})
    with postgres.connect(server, "postgres") as conn:
        rows = [r[0] for r in conn.execute(f"SELECT at FROM {postgres.HEARTBEAT_TABLE} WHERE at >= %s ORDER BY at",
                                           (before_incr,))]
        assert conn.execute("SHOW archive_mode").fetchone()[0] == "off"  # never pushes WAL into production's repo
    assert rows == [before_incr, first, second], f"expected the rows up to {target}, got {rows}"
    assert third not in rows and fourth not in rows
    text = report(f"pitr-restore-{cluster_env}-main")
    assert "recovery target reached" in text and "| pass |" in text and result["instance"] in text
    assert len(instances_running(sandbox)) == 1


@pytest.mark.parametrize("typed, says", [
    ("yesterday at ten", "is not a time"),
    ((datetime.now(UTC) + timedelta(hours=1)).isoformat(), "in the future"),
    ("2001-01-01 00:00:00", "before the oldest backup ends"),
])
def test_a_bad_target_time_fails_early_and_clearly(cluster_env: str, sandbox: Any, typed: str, says: str) -> None:
    if not pghost.run(load_environment(cluster_env).cluster("main"), ["ls", str(restore_dir(sandbox))],
                      what="ls", timeout=10) and says == "before the oldest backup ends":
        physical_backup(cluster_env, "main", "full")
    before = sorted(p.name for p in restore_dir(sandbox).iterdir())
    state = pitr_restore(cluster_env, "main", typed, return_state=True)
    assert state.is_failed()
    assert "target_time" in state.message and says in state.message, state.message
    assert sorted(p.name for p in restore_dir(sandbox).iterdir()) == before  # nothing was created


# --- physical restore test and archive health ------------------------------------------------------


def test_a_physical_restore_test_passes_with_measured_rto_and_rpo(cluster_env: str, sandbox: Any) -> None:
    physical_backup(cluster_env, "main", "incr")
    mark("before the restore test")
    archive_now()
    # The first port of restore.ports looks free (nothing listens) but is held, as a client's
    # ephemeral port would hold it: the instance must start on the next one.
    cfg = load_environment(cluster_env).cluster("main")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        taken: list[int] = []  # ports that look free but are held already (that is the point)
        while True:
            port = pghost.free_port(cfg, taken)
            try:
                held.bind((pghost.host_of(cfg), port))
                break
            except OSError:
                taken.append(port)
        result = physical_restore_test(cluster_env, "main")
    assert 0 < result["rto_seconds"] < 1800
    text = report(f"physical-restore-test-{cluster_env}-main")
    for line in ("| RTO | pass |", "| RPO | pass |", "| pg_amcheck, every database | pass |",
                 "| fleet: smoke: vehicles exist | pass |", "scratch directory removed | True"):
        assert line in text, line
    assert instances_running(sandbox) == []
    assert not any(p.is_dir() for p in restore_dir(sandbox).iterdir())  # always removed


def test_a_broken_archive_command_makes_archive_health_fail_within_one_run(cluster_env: str) -> None:
    assert archive_health(cluster_env, "main")["runbook"] == "archive-health"
    original = sql("postgres", "SHOW archive_command")[0][0]
    sql("postgres", "ALTER SYSTEM SET archive_command = '/bin/false'")
    sql("postgres", "SELECT pg_reload_conf()")
    try:
        time.sleep(0.5)  # the archiver rereads its config
        state = archive_health(cluster_env, "main", return_state=True)
        assert state.is_failed()
        assert "archiving works" in state.message and "last attempt failed" in state.message, state.message
        text = report(f"archive-health-{cluster_env}-main")
        assert "AT RISK" in text
    finally:
        sql("postgres", "ALTER SYSTEM RESET archive_command")
        sql("postgres", "SELECT pg_reload_conf()")
    assert sql("postgres", "SHOW archive_command")[0][0] == original
    deadline = time.monotonic() + 60
    while not archive_health(cluster_env, "main", return_state=True).is_completed():
        assert time.monotonic() < deadline, "archiving did not recover after the command was put back"
        time.sleep(1)


# --- the seed's procedure, end to end --------------------------------------------------------------


@pytest.fixture
def seed_database(make_environment: Any) -> Iterator[tuple[str, str]]:
    """A fresh fleet database `pitrseed`, the `fleet` entry of its environment pointing at it
    with `apps: [api]`; what the swap left is dropped afterwards, and `api` is back at 3."""
    from kubernetes import client, config
    from psycopg.conninfo import make_conninfo

    from sandbox.cluster import NAMESPACE
    from sandbox.sampledata import generate_fleet

    name = "pitrseed"
    server = admin()
    for leftover in postgres.list_databases(server, f"{name}%"):
        postgres.drop_database(server, leftover)
    postgres.create_database(server, name)
    generate_fleet(make_conninfo(**server.with_db(name)), 8)

    def edit(doc: dict[str, Any]) -> None:
        doc["databases"] = {"fleet": {**doc["databases"]["fleet"], "dbname": name, "apps": ["api"]}}

    env = make_environment(f"pitr-seed-{os.urandom(2).hex()}", edit)
    yield env, name
    for db in postgres.list_databases(admin(), f"{name}%"):
        postgres.drop_database(admin(), db)
    api_client = config.new_client_from_config(config_file=str(load_environment(env).kubernetes.kubeconfig))
    apps = client.AppsV1Api(api_client)
    if apps.read_namespaced_deployment("api", NAMESPACE).spec.replicas != 3:
        apps.patch_namespaced_deployment_scale("api", NAMESPACE, {"spec": {"replicas": 3}})
    api_client.close()


def _answer_swap_confirmation(env: str, typed: str, runner: Any) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    deadline = time.monotonic() + 180
    while True:
        with get_client(sync_client=True) as c:
            runs = c.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["restore-database"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
        run = next((r for r in runs if r.parameters.get("environment") == env), None)
        if run is not None:
            resume_flow_run(run.id, run_input={"confirm": typed, "approver": "dana"})
            return
        assert time.monotonic() < deadline and runner.is_alive(), "the swap never asked for its confirmation"
        time.sleep(0.3)


def test_the_seed_procedure_a_bad_delete_is_undone_by_pitr_and_swap(seed_database: tuple[str, str],
                                                                   sandbox: Any) -> None:
    import threading

    env, dbname = seed_database
    sql(dbname, "CREATE TABLE orders (id int PRIMARY KEY, note text, at timestamptz DEFAULT clock_timestamp())")
    sql(dbname, "INSERT INTO orders (id, note) SELECT g, 'before' FROM generate_series(1, 100) g")
    physical_backup(env, "main", "incr")
    sql(dbname, "INSERT INTO orders (id, note) SELECT g, 'before' FROM generate_series(101, 120) g")
    target = sql(dbname, "SELECT clock_timestamp()")[0][0]
    time.sleep(0.5)
    sql(dbname, "DELETE FROM orders WHERE id <= 60")  # the bad DELETE, at a known time
    time.sleep(0.2)
    sql(dbname, "INSERT INTO orders (id, note) SELECT g, 'after' FROM generate_series(1001, 1010) g")
    archive_now()

    out: list[Any] = []
    runner = threading.Thread(target=lambda: out.append(pitr_restore(
        env, "main", target.isoformat(), extract_database="fleet", return_state=True)))
    runner.start()
    _answer_swap_confirmation(env, dbname, runner)
    runner.join(timeout=300)
    state = out[0]
    assert state.is_completed(), state.message

    live = dict(sql(dbname, "SELECT note, count(*) FROM orders GROUP BY note"))
    assert live == {"before": 120}, "the deleted rows are back, and nothing after the target"
    kept = postgres.list_databases(admin(), f"{dbname}_pre_restore_%")
    assert len(kept) == 1
    assert dict(sql(kept[0], "SELECT note, count(*) FROM orders GROUP BY note")) == {"before": 60, "after": 10}
    assert instances_running(sandbox) == []  # the recovered instance was removed after the extract
    text = report(f"pitr-restore-{env}-main")
    assert "swapped into production as" in text and kept[0] in text


def test_a_physical_restore_test_whose_check_fails_ends_failed_and_still_removes_its_instance(
        make_environment: Any, sandbox: Any) -> None:
    def impossible(doc: dict[str, Any]) -> None:
        doc["clusters"]["main"]["restore"]["smoke_queries"] = {
            "fleet": [{"name": "a billion vehicles", "sql": "SELECT count(*) FROM vehicles", "min": 1e9}]}

    env = make_environment("pitr-failing-check", impossible)
    physical_backup(env, "main", "incr")
    state = physical_restore_test(env, "main", return_state=True)
    assert state.is_failed()
    assert "fleet: smoke: a billion vehicles" in state.message and "expected at least 1e+09" in state.message
    assert "FAILED" in report(f"physical-restore-test-{env}-main")
    assert instances_running(sandbox) == [] and not any(p.is_dir() for p in restore_dir(sandbox).iterdir())


def test_in_a_protected_environment_a_rejected_approval_stops_the_recovery_before_anything_is_restored(
        make_environment: Any, sandbox: Any) -> None:
    import threading

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    def protected(doc: dict[str, Any]) -> None:
        doc["protected"] = True

    env = make_environment("pitr-protected", protected)
    physical_backup(env, "main", "incr")
    target = mark("the target")
    mark("after it")
    archive_now()
    before = sorted(p.name for p in restore_dir(sandbox).iterdir())
    out: list[Any] = []
    runner = threading.Thread(target=lambda: out.append(pitr_restore(env, "main", target.isoformat(),
                                                                     return_state=True)))
    runner.start()
    deadline = time.monotonic() + 60
    while True:
        with get_client(sync_client=True) as c:
            runs = [r for r in c.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["pitr-restore"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PAUSED])))) if r.parameters["environment"] == env]
        if runs:
            break
        assert time.monotonic() < deadline and runner.is_alive(), "the recovery never asked for an approval"
        time.sleep(0.3)
    assert sorted(p.name for p in restore_dir(sandbox).iterdir()) == before  # nothing restored while it waits
    resume_flow_run(runs[0].id, run_input={"approve": False, "approver": "dana", "reason": "wrong time"})
    runner.join(timeout=60)
    assert out[0].is_failed() and "point-in-time recovery rejected by dana: wrong time" in out[0].message
    assert sorted(p.name for p in restore_dir(sandbox).iterdir()) == before


def test_an_interrupted_restore_is_finished_with_delta_in_the_same_directory(cluster_env: str, sandbox: Any) -> None:
    """What a worker killed during `pgbackrest restore` leaves: a directory with part of the
    files and no `.restored` mark. The next attempt finishes it there (--delta), once."""
    from tasks import pgbackrest as pbr
    from tasks.physical_restores import InstancePlan, check_target, restore_instance

    physical_backup(cluster_env, "main", "incr")
    target = mark("the target")
    mark("after it")
    archive_now()
    env = load_environment(cluster_env)
    cfg = env.cluster("main")
    plan = InstancePlan("main-pitr-interrupted", pghost.scratch_path(cfg, "main-pitr-interrupted"),
                        datetime.now(UTC))
    pbr.restore(cfg, plan.data_dir, target_time=target, label=None, delta=False)
    pghost.run(cfg, ["rm", "-rf", f"{plan.data_dir}/base", f"{plan.data_dir}/global/pg_control"],
               what="losing part of the restore", timeout=30)  # as if killed halfway

    restored = restore_instance.fn(env, "main", plan, target, None)

    assert restored["found"] == "an interrupted restore, finished with --delta"
    assert instances_running(sandbox) == [plan.data_dir]
    assert check_target.fn(env, "main", restored["instance"], target).passed
