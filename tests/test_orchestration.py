"""A Prefect server on the sandbox's PostgreSQL with real process workers (sandbox/orchestration.py):
two workers on one pool each run a deployed flow, the runs live in PostgreSQL, and `kill()`
ends a worker and its flow-run process, and nothing else."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from sandbox import orchestration
from sandbox.orchestration import PrefectServer, Worker
from sandbox.process import pid_alive, wait_until
from tasks.errors import PermanentError

POOL = "orchestration-test"
KILL_POOL = "orchestration-kill"  # the victim's own pool: no other worker takes its run
RUN_SECONDS = 60  # a run is picked up and finished well within this


@pytest.fixture(scope="module")
def server(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    url = orchestration.create_prefect_database(sandbox)
    assert orchestration.create_prefect_database(sandbox) == url  # idempotent: same role, same password
    server = orchestration.start_server(
        tmp_path_factory.mktemp("prefect-server"), database_url=url,
        settings={"PREFECT_SERVER_UI_ENABLED": "false"},  # saves copying the UI's files at start
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def deployments(server: PrefectServer) -> dict[str, UUID]:
    """`hello` deployed from this checkout to POOL and to KILL_POOL, by pool."""
    from tests.orchestration_flows import hello

    ids = {}
    with temporary_settings({PREFECT_API_URL: server.api_url}):  # not the session's test harness
        source = hello.from_source(source=str(orchestration.REPO_ROOT), entrypoint="tests/orchestration_flows.py:hello")
        for pool in (POOL, KILL_POOL):
            orchestration.ensure_pool(server.api_url, pool)
            orchestration.ensure_pool(server.api_url, pool)  # idempotent
            ids[pool] = source.deploy(
                name=pool, work_pool_name=pool, print_next_steps=False, ignore_warnings=True,
                # The engine straight away, as prefect.yaml does: one Python start-up per run, not two.
                job_variables={"command": f"{sys.executable} -m prefect.engine"},
            )
    return ids


@pytest.fixture(scope="module")
def workers(
    server: PrefectServer, deployments: dict[str, UUID], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Worker]]:
    """worker-1 and worker-2 on POOL (one run at a time each) and victim alone on KILL_POOL,
    started side by side (each takes seconds to import Prefect); killed at the end."""
    logs = tmp_path_factory.mktemp("workers")
    specs = {"worker-1": POOL, "worker-2": POOL, "victim": KILL_POOL}
    with ThreadPoolExecutor(max_workers=len(specs)) as threads:
        starting = {name: threads.submit(orchestration.start_worker, server.api_url, pool, name,
                                         log=logs / f"{name}.log", limit=1)
                    for name, pool in specs.items()}
    started = {name: f.result() for name, f in starting.items() if f.exception() is None}
    try:
        yield {name: f.result() for name, f in starting.items()}
    finally:
        for worker in started.values():
            worker.kill()


@pytest.fixture
def client(server: PrefectServer) -> Iterator[SyncPrefectClient]:
    with SyncPrefectClient(server.api_url) as client:
        yield client


def _wait_for(client: SyncPrefectClient, run_id: UUID, check: Callable[[FlowRun], bool]) -> FlowRun:
    runs: list[FlowRun] = []

    def seen() -> bool:
        runs.append(client.read_flow_run(run_id))
        return check(runs[-1])

    assert wait_until(seen, RUN_SECONDS, interval=0.5), f"run {run_id}: {runs[-1].state}"
    return runs[-1]


def _final(client: SyncPrefectClient, run_id: UUID) -> FlowRun:
    return _wait_for(client, run_id, lambda run: run.state is not None and run.state.is_final())


def _running_in(worker: Worker) -> Callable[[FlowRun], bool]:
    """The run is Running in a process the worker started."""
    def check(run: FlowRun) -> bool:
        pid = run.infrastructure_pid
        return (run.state_type == StateType.RUNNING and pid is not None
                and int(pid) in {p.pid for p in worker.children()})
    return check


def test_two_workers_on_one_pool_each_run_a_deployment_and_postgres_holds_the_runs(
    server, deployments, workers, client, sandbox, tmp_path
):
    gate = tmp_path / "gate"
    first = client.create_flow_run_from_deployment(deployments[POOL], parameters={"gate": str(gate)})
    first = _wait_for(client, first.id, lambda run: "prefect.worker.name" in run.labels)
    # The worker that claimed the first run is full (limit 1) while the run waits at its gate:
    # only the other one can take the second.
    second = client.create_flow_run_from_deployment(deployments[POOL], parameters={})
    second = _final(client, second.id)
    _wait_for(client, first.id, _running_in(workers[first.labels["prefect.worker.name"]]))
    gate.touch()
    first = _final(client, first.id)

    assert (first.state_type, second.state_type) == (StateType.COMPLETED, StateType.COMPLETED)
    assert {first.labels["prefect.worker.name"], second.labels["prefect.worker.name"]} == {"worker-1", "worker-2"}
    assert server.database == "postgresql"
    with psycopg.connect(sandbox.pg_admin_dsn(orchestration.PREFECT_DATABASE)) as conn:
        rows = conn.execute(
            "SELECT id::text, state_type::text FROM flow_run WHERE id::text = ANY(%s)",
            ([str(first.id), str(second.id)],),
        ).fetchall()
    assert sorted(rows) == sorted([(str(first.id), "COMPLETED"), (str(second.id), "COMPLETED")])


def test_kill_ends_the_worker_and_its_flow_run_process_and_nothing_else(
    server, deployments, workers, client, tmp_path
):
    victim = workers["victim"]
    run = client.create_flow_run_from_deployment(deployments[KILL_POOL], parameters={"gate": str(tmp_path / "never")})
    _wait_for(client, run.id, _running_in(victim))
    family = {victim.pid, *(p.pid for p in victim.children())}
    assert len(family) >= 2

    started = time.monotonic()
    victim.kill()

    assert time.monotonic() - started < 5
    assert [pid for pid in family if pid_alive(pid)] == []
    assert not victim.alive() and victim.children() == []
    assert workers["worker-1"].alive() and workers["worker-2"].alive() and server.alive()
    assert httpx.get(f"{server.api_url}/health", timeout=5).status_code == 200
    # Nothing told the server: the run stays Running until crash detection marks it.
    assert client.read_flow_run(run.id).state_type == StateType.RUNNING


def test_prefect_up_refuses_a_dir_without_a_sandbox(tmp_path):
    with pytest.raises(PermanentError, match="no sandbox in .*python -m sandbox up"):
        orchestration.start_in_sandbox(tmp_path)
