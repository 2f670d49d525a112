"""Restore-database against the sandbox: PostgreSQL 15, moto's S3, our Kubernetes API server
with the `api` Deployment (3 replicas), the sample web service, and a real Prefect API.

Each test restores its own fresh database, never the shared `fleet`, and leaves `api` at 3."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from psycopg.conninfo import make_conninfo

from flows.backup import backup_database
from flows.restore_database import restore_database
from sandbox.cluster import NAMESPACE
from sandbox.sampledata import generate_fleet
from tasks import postgres
from tasks.faults import reset as reset_faults

pytestmark = pytest.mark.scenario

API_REPLICAS = 3


# --- helpers --------------------------------------------------------------------------------------------


def admin() -> postgres.Server:
    return postgres.Server.from_dsn(os.environ["RUNBOOK_SANDBOX_PG_DSN"])


def counts(dbname: str) -> dict[str, int]:
    with postgres.connect(admin(), dbname) as conn:
        return postgres.row_counts(conn)


def execute(dbname: str, statement: str) -> None:
    with postgres.connect(admin(), dbname) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


@pytest.fixture
def apps(sandbox: Any) -> Iterator[Any]:
    api_client = config.new_client_from_config(config_file=str(sandbox.kubeconfig))
    yield client.AppsV1Api(api_client)
    # Whatever a test did, the next one (in any file) finds `api` as the sandbox made it.
    if apps_api_replicas(client.AppsV1Api(api_client)) != API_REPLICAS:
        client.AppsV1Api(api_client).patch_namespaced_deployment_scale(
            "api", NAMESPACE, {"spec": {"replicas": API_REPLICAS}})
    api_client.close()


def apps_api_replicas(apps: Any) -> int:
    return int(apps.read_namespaced_deployment("api", NAMESPACE).spec.replicas)


def api_generation(apps: Any) -> int:
    return int(apps.read_namespaced_deployment("api", NAMESPACE).metadata.generation)


def api_back_at_three(apps: Any) -> bool:
    status = apps.read_namespaced_deployment("api", NAMESPACE).status
    return apps_api_replicas(apps) == API_REPLICAS and status.available_replicas == API_REPLICAS


@pytest.fixture
def backed_up(make_environment: Any) -> Iterator[Any]:
    """`backed_up(name)`: a fresh fleet database `name`, the `fleet` entry of environment
    `rd-<name>` pointing at it with `apps: [api]`, and one backup of it. Drops what the
    restore left (`name`, `name_restore_*`, `name_pre_restore_*`) afterwards."""
    made: list[str] = []

    def make(name: str, compression: str | None = None) -> str:
        server = admin()
        for leftover in postgres.list_databases(server, f"{name}%"):
            postgres.drop_database(server, leftover)
        postgres.create_database(server, name)
        made.append(name)
        generate_fleet(make_conninfo(**server.with_db(name)), 8)

        def edit(doc: dict[str, Any]) -> None:
            doc["databases"] = {"fleet": {**doc["databases"]["fleet"], "dbname": name, "apps": ["api"]}}
            if compression:
                doc["databases"]["fleet"]["compression"] = compression

        env = make_environment(f"rd-{name}", edit)
        backup_database(env, "fleet")
        return env

    yield make
    for name in made:
        for db in postgres.list_databases(admin(), f"{name}%"):
            postgres.drop_database(admin(), db)


def _paused_restore(env: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as c:
        runs = c.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["restore-database"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
        )
    return next((r for r in runs if r.parameters.get("environment") == env), None)


def swap_confirmed(env: str, typed: str, approver: str = "dana") -> Any:
    """Run a swap restore, answer its confirmation through the API, return its final state."""
    from prefect.flow_runs import resume_flow_run

    out: list[Any] = []
    runner = threading.Thread(target=lambda: out.append(restore_database(env, "fleet", return_state=True)))
    runner.start()
    deadline = time.monotonic() + 60
    while (run := _paused_restore(env)) is None:
        assert time.monotonic() < deadline and runner.is_alive(), "the restore never asked for confirmation"
        time.sleep(0.2)
    resume_flow_run(run.id, run_input={"confirm": typed, "approver": approver})
    runner.join(timeout=120)
    return out[0]


def report(env: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as c:
        found = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"restore-{env}-fleet"])),
                                 sort=ArtifactSort.CREATED_DESC, limit=1)
    return str(found[0].data)


def figure(markdown: str, name: str) -> str:
    return markdown.split(f"| {name} | ")[1].split(" |")[0]


def change_after_backup(dbname: str) -> None:
    """What the restore is for: a mistake after the backup, and writes after it."""
    execute(dbname, "DELETE FROM trips")
    execute(dbname, "CREATE TABLE written_after_backup AS SELECT g AS n FROM generate_series(1, 5) g")


# --- scenarios ------------------------------------------------------------------------------------------


def test_restore_and_swap_puts_the_backup_live_and_keeps_the_old_database(backed_up: Any, apps: Any) -> None:
    env = backed_up("rdswap")
    backed = counts("rdswap")
    change_after_backup("rdswap")

    state = swap_confirmed(env, "rdswap")

    assert state.is_completed(), state.message
    result = state.result()
    assert counts("rdswap") == backed  # the trips are back, the later table is gone
    kept = result["names"]["kept"]
    assert counts(kept)["public.trips"] == 0 and counts(kept)["public.written_after_backup"] == 5
    assert postgres.list_databases(admin(), "rdswap_restore_%") == []  # it is live now
    assert result["replicas_before"] == result["replicas_after"] == {"api": API_REPLICAS}
    assert api_back_at_three(apps)
    assert result["approver"] == "dana" and 0 < result["app_down_seconds"] < 60
    text = report(env)
    assert "SUCCEEDED" in text and f"kept as {kept}" in text
    assert float(figure(text, "app-down time (s)")) == result["app_down_seconds"]


@pytest.mark.parametrize(("point", "swap"), [
    ("restore.after-swap", "swapped back"),
    ("restore.before-swap", "none happened"),
    # the app already runs on the restored copy: it goes down again before the swap back
    ("restore.after-scale-up", "swapped back"),
], ids=["after-swap", "before-swap", "after-scale-up"])
def test_a_failure_around_the_swap_leaves_production_as_it_was(
    backed_up: Any, apps: Any, monkeypatch: pytest.MonkeyPatch, point: str, swap: str
) -> None:
    dbname = "rdfault" + point.split(".")[1].replace("-", "")
    env = backed_up(dbname)
    change_after_backup(dbname)
    live_before = counts(dbname)
    oid_before = postgres.database_oid(admin(), dbname)
    monkeypatch.setenv("RUNBOOK_FAULTS", point)
    reset_faults()

    state = swap_confirmed(env, dbname)

    assert state.is_failed() and point in state.message
    assert postgres.database_oid(admin(), dbname) == oid_before and counts(dbname) == live_before
    assert postgres.list_databases(admin(), f"{dbname}_%") == []  # no copy left, none kept
    assert api_back_at_three(apps)
    text = report(env)
    assert "FAILED" in text and point in text
    assert f"swap: {swap}" in text and "original database live: True" in text
    assert "replicas restored: True" in text and "healthy: True" in text


def test_a_wrong_confirmation_aborts_before_any_change(backed_up: Any, apps: Any) -> None:
    env = backed_up("rdrefused")
    generation = api_generation(apps)
    oid = postgres.database_oid(admin(), "rdrefused")

    state = swap_confirmed(env, "rdrefused_please")

    assert state.is_failed() and "expected the database name 'rdrefused'" in state.message
    assert api_generation(apps) == generation  # never scaled
    assert postgres.database_oid(admin(), "rdrefused") == oid
    assert postgres.list_databases(admin(), "rdrefused_%") == []


@pytest.mark.parametrize(("name", "compression"), [("rdnew", None), ("rdnewgz", "gzip")], ids=["zstd", "gzip"])
def test_mode_new_restores_beside_production_and_leaves_the_app_alone(backed_up: Any, apps: Any, name: str,
                                                                      compression: str | None) -> None:
    env = backed_up(name, compression)
    backed = counts(name)
    change_after_backup(name)
    live = counts(name)
    generation = api_generation(apps)

    result = restore_database(env, "fleet", mode="new")  # no confirmation: production is not touched

    restored = result["names"]["restored"]
    assert postgres.list_databases(admin(), f"{name}_%") == [restored]
    assert counts(restored) == backed and counts(name) == live
    assert api_generation(apps) == generation and result["replicas_before"] == {}


@pytest.mark.parametrize(("database", "backup_id", "mode", "says"), [
    ("nope", None, "swap", "database 'nope' is not in environment"),
    ("fleet", None, "replace", "mode 'replace' is not a restore mode; allowed: swap, new"),
    ("fleet", "20200101T000000Z-abcdef", "swap", "backup '20200101T000000Z-abcdef' of 'fleet' has no manifest"),
], ids=["unknown-database", "bad-mode", "missing-backup"])
def test_bad_input_fails_before_any_change(make_environment: Any, apps: Any, database: str,
                                           backup_id: str | None, mode: str, says: str) -> None:
    env = make_environment("rd-bad-input")  # the sandbox's own fleet: nothing may touch it
    generation = api_generation(apps)
    state = restore_database.with_options(validate_parameters=False)(env, database, backup_id, mode,
                                                                     return_state=True)
    assert state.is_failed() and says in state.message
    assert api_generation(apps) == generation
    assert postgres.list_databases(admin(), "fleet%restore%") == []


def test_the_apps_role_keeps_its_grants_and_the_database_its_owner_after_a_swap(
    backed_up: Any, apps: Any
) -> None:
    """A swapped-in copy must serve the application's role as the old one did."""
    server = admin()
    with postgres.connect(server, "postgres") as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'fleet_app'").fetchone() is None:
            conn.execute("CREATE ROLE fleet_app NOLOGIN")
    env = backed_up("rdowner")
    execute("rdowner", "ALTER DATABASE rdowner OWNER TO fleet_app")
    execute("rdowner", "GRANT SELECT ON ALL TABLES IN SCHEMA public TO fleet_app")
    backup_database(env, "fleet")  # the backup now carries the grant

    state = swap_confirmed(env, "rdowner")

    assert state.is_completed(), state.message
    with postgres.connect(server, "rdowner") as conn:
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'rdowner'").fetchone()
        grant = conn.execute("SELECT has_table_privilege('fleet_app', 'public.trips', 'SELECT')").fetchone()
    assert owner is not None and owner[0] == "fleet_app"
    assert grant is not None and grant[0] is True


def test_rollback_with_database_restores_the_data_and_the_previous_image(backed_up: Any, apps: Any) -> None:
    """The seeds' database rollback: stop the app, restore, previous version, verify."""
    from prefect.flow_runs import resume_flow_run

    from flows.deploy import deploy
    from flows.rollback import rollback
    from tasks import backups
    from tasks.config import load_environment
    from tasks.storage import open_storage

    env = backed_up("rdrollback")
    before_image = next(c.image for c in apps.read_namespaced_deployment("api", NAMESPACE).spec.template.spec.containers
                        if c.name == "api")
    backup_id = backups.read_catalogue(open_storage(load_environment(env).database("fleet").storage), "fleet").newest()
    assert backup_id is not None
    backed = counts("rdrollback")
    deploy(env, "api", "sandbox/app:rr2")
    change_after_backup("rdrollback")  # what the bad release did to the data

    out: list[Any] = []
    runner = threading.Thread(target=lambda: out.append(
        rollback(env, "api", with_database=backup_id.backup_id, return_state=True)))
    runner.start()
    deadline = time.monotonic() + 60
    while (run := _paused_restore(env)) is None:
        assert time.monotonic() < deadline and runner.is_alive(), "the restore never asked for confirmation"
        time.sleep(0.2)
    resume_flow_run(run.id, run_input={"confirm": "rdrollback", "approver": "erin"})
    runner.join(timeout=180)

    state = out[0]
    assert state.is_completed(), state.message
    assert counts("rdrollback") == backed
    image = next(c.image for c in apps.read_namespaced_deployment("api", NAMESPACE).spec.template.spec.containers
                 if c.name == "api")
    assert image == before_image
    assert api_back_at_three(apps)


def test_a_restore_never_overwrites_a_database_that_has_its_copys_name(backed_up: Any, apps: Any) -> None:
    """The restored copy's name is stamped to the second; someone else's database under it
    (a run started in the same second, a copy left by hand) stops the restore before any change."""
    from datetime import UTC, datetime, timedelta

    from tasks.naming import restore_names

    env = backed_up("rdtaken")
    now = datetime.now(UTC)
    taken = [restore_names("rdtaken", now + timedelta(seconds=s)).restored for s in range(20)]
    for name in taken:
        postgres.create_database(admin(), name)
    try:
        state = restore_database(env, "fleet", mode="new", return_state=True)
        assert state.is_failed() and "already exist" in state.message and "never overwrites" in state.message
        assert all(postgres.database_exists(admin(), name) for name in taken)  # none dropped or reused
        assert counts(taken[0]) == {}  # still the empty database it was
    finally:
        for name in taken:
            postgres.drop_database(admin(), name)
