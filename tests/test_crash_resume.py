"""Dead workers and cancels, on a real Prefect server (on the sandbox's PostgreSQL) with real
process workers (sandbox/orchestration.py) and the automations of deployments/automations.py.

- A worker is killed (SIGKILL of it and its flow-run processes, by pid) while it runs a deploy
  right after the image was set, a restore-and-swap right after the swap, and a backup after
  the upload and before the manifest. Each run is marked Crashed when its heartbeats stop,
  resumed on a second worker, and finishes without repeating what was done.
- A deploy cancelled through the API during its analysis ends with the previous image
  serving; a restore-and-swap cancelled during pg_restore leaves production untouched and
  no scratch database.

The windows are the shortest Prefect allows: heartbeats every 30 s, a run silent for 40 s is
crashed (production: 90 s), and a dead worker's lock lease runs out after 60 s.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import boto3
import httpx
import psutil
import pytest
import yaml
from kubernetes import client, config
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.automations import ensure_automations
from flows.backup import backup_database
from flows.deploy import deploy
from flows.dr_failover import dr_failover
from flows.maintenance_window import maintenance_window
from flows.physical_backup import physical_backup
from flows.pitr_restore import pitr_restore
from flows.restore_database import restore_database
from sandbox import orchestration, replication
from sandbox.cluster import GOOD_IMAGE, NAMESPACE
from sandbox.environment import environment_dict, through_proxies
from sandbox.faultproxy import FaultProxyClient
from sandbox.orchestration import PrefectServer, Worker
from tasks import backups, kubernetes, postgres
from tasks.config import load_environment
from tasks.storage import open_storage
from tests.cluster_state import put_back_pair, rolled_out

pytestmark = pytest.mark.scenario

POOL = "runbook-crash-tests"
ENV = "crash"
RESTORE_ENV, DR_ENV = f"{ENV}-restore", f"{ENV}-dr"
SILENT_AFTER = timedelta(seconds=40)
KILL_AT = {"deploy": "deploy.after-set-image", "restore": "restore.after-swap", "backup": "backup.before-manifest",
           "pitr": "physical-restore.instance-started", "dr": "dr.before-repoint"}
FINISHED_WITHIN = 300.0  # crash detection (<= 70 s) + a dead lease running out (<= 60 s) + the work
FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED}


@dataclass
class Stack:
    server: PrefectServer
    root: Path
    env: dict[str, str]
    deployments: dict[str, UUID]

    def worker(self, name: str, faults: str | None = None) -> Worker:
        extra = {"RUNBOOK_FAULTS": faults, "RUNBOOK_FAULTS_SIGNAL_DIR": str(self.root / "signals")} if faults else {}
        return orchestration.start_worker(self.server.api_url, POOL, name, env={**self.env, **extra},
                                          log=self.root / f"{name}.log")

    def client(self) -> SyncPrefectClient:
        return SyncPrefectClient(self.server.api_url)


def _write_environment(sandbox: Any, environments_dir: Path, name: str, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = environment_dict(sandbox, name=name)
    for db in doc["databases"].values():
        db["storage"]["url"] = f"{db['storage']['url']}/{name}"
    through_proxies(sandbox)(doc)
    doc["databases"]["pgbench"]["apps"] = ["web"]  # the restore stops and restarts `web`; deploys go to `api`
    edit(doc)
    (environments_dir / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture(scope="module")
def stack(sandbox: Any, environments_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("crash-stack")
    (root / "signals").mkdir()
    _write_environment(sandbox, environments_dir, ENV, lambda doc: None)

    def slow_analysis(doc: dict[str, Any]) -> None:  # 30 measurements: time to cancel during them
        doc["services"]["api"]["analysis"]["count"] = 30

    _write_environment(sandbox, environments_dir, f"{ENV}-slow", slow_analysis)
    # One change per environment at a time: the deploy, the restore's swap and the switchover that
    # die together each run in an environment of their own.
    for changing in (RESTORE_ENV, DR_ENV):
        _write_environment(sandbox, environments_dir, changing, lambda doc: None)
    backup_database(ENV, "pgbench")  # what the restores restore, made through the session's harness
    backup_database(RESTORE_ENV, "pgbench")
    physical_backup(ENV, "main", "incr")  # what the point-in-time recovery starts from
    server = orchestration.start_server(root / "server", database_url=orchestration.create_prefect_database(sandbox),
                                        settings={"PREFECT_SERVER_UI_ENABLED": "false"})
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            orchestration.ensure_pool(server.api_url, POOL)
            ensure_automations(SILENT_AFTER)
            deployments = {}
            for fl, entrypoint in ((deploy, "flows/deploy.py:deploy"),
                                   (restore_database, "flows/restore_database.py:restore_database"),
                                   (backup_database, "flows/backup.py:backup_database"),
                                   (pitr_restore, "flows/pitr_restore.py:pitr_restore"),
                                   (dr_failover, "flows/dr_failover.py:dr_failover"),
                                   (maintenance_window, "flows/maintenance_window.py:maintenance_window")):
                deployments[fl.name] = fl.from_source(source=str(orchestration.REPO_ROOT), entrypoint=entrypoint).deploy(
                    name=ENV, work_pool_name=POOL, tags=["runbook", fl.name, ENV], print_next_steps=False,
                    ignore_warnings=True, job_variables={"command": f"{sys.executable} -m prefect.engine"})
        env = {
            "RUNBOOK_ENVIRONMENTS_DIR": str(environments_dir), **sandbox.secret_env(),
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(root / "results"),  # one machine: a shared folder
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO",
        }
        yield Stack(server, root, env, deployments)
    finally:
        server.stop()


# --- helpers ------------------------------------------------------------------------------------------


def start_run(stack: Stack, flow_name: str, **parameters: Any) -> UUID:
    with stack.client() as c:
        return c.create_flow_run_from_deployment(stack.deployments[flow_name], parameters=parameters).id


def read_run(stack: Stack, run_id: UUID) -> FlowRun:
    with stack.client() as c:
        return c.read_flow_run(run_id)


def state_types(stack: Stack, run_id: UUID) -> list[StateType]:
    with stack.client() as c:
        return [s.type for s in sorted(c.read_flow_run_states(run_id), key=lambda s: s.timestamp)]


def wait_for(what: str, check: Callable[[], Any], timeout: float, logs: list[Path], interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:] for p in logs if p.exists())
            pytest.fail(f"{what}: not within {timeout:.0f} s\n{tails}")
        time.sleep(interval)
    return found


def wait_final(stack: Stack, run_ids: list[UUID], logs: list[Path], timeout: float = FINISHED_WITHIN) -> None:
    wait_for("every run in a final state",
             lambda: all(read_run(stack, r).state.type in FINAL for r in run_ids), timeout, logs, interval=1)


def answer_confirmation(stack: Stack, run_id: UUID, dbname: str, logs: list[Path]) -> None:
    from prefect.flow_runs import resume_flow_run

    wait_for("the restore asks for its confirmation",
             lambda: read_run(stack, run_id).state.type == StateType.PAUSED, 120, logs)
    with temporary_settings({PREFECT_API_URL: stack.server.api_url}):
        resume_flow_run(run_id, run_input={"confirm": dbname, "approver": "dana"})


def latest_report(stack: Stack, key: str) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with stack.client() as c:
        found = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                 sort=ArtifactSort.CREATED_DESC, limit=1)
    return str(found[0].data) if found else ""


def events(stack: Stack, name: str, run_id: UUID) -> list[dict[str, Any]]:
    """The events `name` about flow run `run_id` (the resource, or a related one)."""
    answer = httpx.post(f"{stack.server.api_url}/events/filter", timeout=10,
                        json={"filter": {"event": {"name": [name]}}, "limit": 50})
    answer.raise_for_status()
    return [e for e in answer.json().get("events", []) if str(run_id) in str(e)]


@pytest.fixture
def apps(sandbox: Any) -> Iterator[Any]:
    api_client = config.new_client_from_config(config_file=str(sandbox.kubeconfig))
    yield client.AppsV1Api(api_client)
    api_client.close()


def image_of(apps: Any, deployment: str) -> str:
    dep = apps.read_namespaced_deployment(deployment, NAMESPACE)
    return next(c.image for c in dep.spec.template.spec.containers if c.name == deployment)


def live_web(apps: Any) -> tuple[str, int]:
    """The Deployment serving `web` (blue-green: the colour its Service selects) and its replicas."""
    core = client.CoreV1Api(apps.api_client)
    colour = core.read_namespaced_service("web", NAMESPACE).spec.selector.get("colour")
    name = f"web-{colour}" if colour else "web"
    return name, apps.read_namespaced_deployment(name, NAMESPACE).spec.replicas


def database_oids(sandbox: Any, like: str) -> dict[str, int]:
    server = postgres.server_for(load_environment(ENV).database("pgbench"))
    with postgres.connect(server, "postgres") as conn:
        rows = conn.execute("SELECT datname, oid FROM pg_database WHERE datname LIKE %s", (like,)).fetchall()
    return {name: int(oid) for name, oid in rows}


def signalled(stack: Stack, point: str) -> int | None:
    marker = stack.root / "signals" / point
    return int(marker.read_text()) if marker.exists() else None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by its new parent
    except psutil.NoSuchProcess:
        return True


def open_uploads(sandbox: Any, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=sandbox.s3_endpoint, region_name=sandbox.s3_region,
                      aws_access_key_id=sandbox.s3_access_key, aws_secret_access_key=sandbox.s3_secret_key)
    try:
        answer = s3.list_multipart_uploads(Bucket=sandbox.s3_bucket, Prefix=prefix)
    finally:
        s3.close()
    return [u["Key"] for u in answer.get("Uploads", [])]


def pitr_target() -> str:
    """A recovery target after the stack's physical backup, with a commit after it archived."""
    server = postgres.Server.from_dsn(sandbox_dsn())
    with postgres.connect(server, "postgres") as conn:
        before = postgres.write_heartbeat(conn)
        time.sleep(0.3)
        postgres.write_heartbeat(conn)
        assert postgres.wait_archived(conn, postgres.switch_wal(conn), 60) is not None
    return (before + timedelta(seconds=0.1)).isoformat()


def sandbox_dsn() -> str:
    return os.environ["RUNBOOK_SANDBOX_PG_DSN"]


def restored_instances(sandbox: Any) -> list[str]:
    from tasks import pghost

    cfg = load_environment(ENV).cluster("main")
    return [str(p) for p in Path(sandbox.pgbackrest_restore_dir).iterdir()
            if p.is_dir() and pghost.postmaster_pid(cfg, str(p)) is not None]


def restores_into(sandbox: Any, data_dir: str) -> int:
    """How many `pgbackrest restore` commands pgBackRest's own log shows into `data_dir`."""
    log = Path(sandbox.pgbackrest_config).parent / "log" / f"{sandbox.pgbackrest_stanza}-restore.log"
    return sum(1 for line in log.read_text().splitlines()
               if "restore command begin" in line and f"--pg1-path={data_dir}" in line)


def discard_restored_instances(sandbox: Any) -> None:
    from tasks import pghost

    cfg = load_environment(ENV).cluster("main")
    for p in Path(sandbox.pgbackrest_restore_dir).iterdir():
        if p.is_dir():
            pghost.stop(cfg, str(p))
            pghost.remove(cfg, str(p))


# --- a dead worker ------------------------------------------------------------------------------------


def test_a_dead_worker_s_deploy_restore_and_backup_are_crashed_resumed_on_another_worker_and_finish(
    stack: Stack, sandbox: Any, apps: Any, api_on_v1: None
) -> None:
    with FaultProxyClient(sandbox.kube_proxy_control_url) as kube:
        kube.clear_log()
    web, web_replicas = live_web(apps)
    original_pgbench = database_oids(sandbox, "pgbench")["pgbench"]
    put_back_pair(sandbox)
    promotions_before = promotions(sandbox, "pg-b")
    first = stack.worker("first", faults=",".join(f"{p}:hang" for p in KILL_AT.values()))
    logs = [first.log, stack.root / "second.log"]
    second = None
    try:
        target = pitr_target()
        runs = {
            "pitr": start_run(stack, "pitr-restore", environment=ENV, cluster="main", target_time=target),
            "deploy": start_run(stack, "deploy", environment=ENV, service="api", image="sandbox/app:v2"),
            "restore": start_run(stack, "restore-database", environment=RESTORE_ENV, database="pgbench",
                                 mode="swap"),
            "backup": start_run(stack, "backup-database", environment=ENV, database="fleet"),
            "dr": start_run(stack, "dr-failover", environment=DR_ENV, reason="crash test: switchover", planned=True),
        }
        answer_confirmation(stack, runs["restore"], "pgbench", logs)
        pids = {what: wait_for(f"the {what} stops at {point}", lambda p=point: signalled(stack, p), 180, logs)
                for what, point in KILL_AT.items()}
        family = {p.pid for p in first.children()}
        assert set(pids.values()) <= family, "each run stopped in a process of the first worker"
        generation = apps.read_namespaced_deployment("api", NAMESPACE).metadata.generation
        assert image_of(apps, "api") == "sandbox/app:v2" and live_web(apps)[1] == 0  # mid-procedure, as planned

        first.kill()  # the machine dies: no hook, no finally, no rollback runs
        assert all(gone(p) for p in pids.values())
        second = stack.worker("second")
        wait_final(stack, list(runs.values()), logs)

        for what, run_id in runs.items():
            history = state_types(stack, run_id)
            assert StateType.CRASHED in history, f"{what}: {history}"
            assert history[-1] == StateType.COMPLETED, f"{what}: {history}\n{read_run(stack, run_id).state.message}"

        # deploy: the image was set once, by the first attempt; the second analysed it and completed
        with FaultProxyClient(sandbox.kube_proxy_control_url) as kube:
            log = kube.log()
        patches = [e for e in log if e["method"] == "PATCH"
                   and e["path"] == f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/api"]
        assert len(patches) == 1, patches
        assert apps.read_namespaced_deployment("api", NAMESPACE).metadata.generation == generation
        assert image_of(apps, "api") == "sandbox/app:v2"
        deploy_report = latest_report(stack, f"deploy-{ENV}-api")
        assert "Attempt 2 of this flow run" in deploy_report and "Successful" in deploy_report

        # restore: swapped once, the original kept, web back at its replicas and healthy
        kept = database_oids(sandbox, "pgbench_pre_restore_%")
        assert list(kept.values()).count(original_pgbench) == 1, kept
        assert database_oids(sandbox, "pgbench")["pgbench"] != original_pgbench
        assert not database_oids(sandbox, "pgbench_restore_%")
        assert live_web(apps) == (web, web_replicas)
        health = load_environment(ENV).service("web").health_urls[0]
        assert httpx.get(health, timeout=5).status_code == 200
        assert "swapped 'pgbench' after its checks passed" in latest_report(stack, f"restore-{RESTORE_ENV}-pgbench")

        # backup: one committed backup of this run, and nothing left open or half-written
        storage = open_storage(load_environment(ENV).database("fleet").storage)
        catalogue = backups.read_catalogue(storage, "fleet")
        mine = [m for m in catalogue.manifests.values() if m.flow_run_id == str(runs["backup"])]
        assert len(mine) == 1, catalogue
        assert catalogue.incomplete == [], "a backup without a manifest was left behind"
        prefix = load_environment(ENV).database("fleet").storage.url.split("/", 3)[3]
        assert open_uploads(sandbox, prefix) == []

        # pitr: restored once into its directory; the instance the first attempt started was
        # adopted by the second, and it is the only one running
        running = restored_instances(sandbox)
        assert len(running) == 1, running
        assert restores_into(sandbox, running[0]) == 1, "pgbackrest restore ran again into the same directory"
        pitr_report = latest_report(stack, f"pitr-restore-{ENV}-main")
        assert "a running instance, adopted" in pitr_report and "Attempt 2 of this flow run" in pitr_report

        # dr: killed between the promotion and the repoint; promoted once, then repointed
        assert replication.role(sandbox, "pg-b") == "primary"
        assert promotions(sandbox, "pg-b") - promotions_before == 1, "pg-b was promoted twice"
        dr_report = latest_report(stack, f"dr-failover-{DR_ENV}")
        assert "Attempt 2 of this flow run" in dr_report and "SUCCEEDED" in dr_report
        assert "promoted by this attempt | False" not in dr_report  # the promotion's record was reused
        with config.new_client_from_config(str(sandbox.kubeconfig)) as api:
            cm = client.CoreV1Api(api).read_namespaced_config_map("orders-database", NAMESPACE)
        assert cm.data["PGPORT"] == str(sandbox.ha_nodes["pg-b"]["port"])
    finally:
        first.kill()
        if second is not None:
            second.stop()
        discard_restored_instances(sandbox)
        put_back_pair(sandbox)


def promotions(sandbox: Any, node: str) -> int:
    """How many times the node's log says it was promoted."""
    log = Path(sandbox.ha_nodes[node]["log"])
    return log.read_text(errors="replace").count("selected new timeline ID") if log.exists() else 0


# --- cancels ------------------------------------------------------------------------------------------


def cancel(stack: Stack, run_id: UUID) -> None:
    from prefect.states import Cancelling

    with stack.client() as c:
        c.set_flow_run_state(run_id, Cancelling(message="cancelled by the test, as from the UI"), force=True)


def running_task(stack: Stack, run_id: UUID, name: str) -> bool:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with stack.client() as c:
        tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return any(t.name.startswith(name) and t.state is not None and t.state.is_running() for t in tasks)


def test_a_deploy_cancelled_during_its_analysis_ends_with_the_previous_image_serving(
    stack: Stack, sandbox: Any, apps: Any, api_on_v1: None
) -> None:
    worker = stack.worker("cancel-deploy")
    try:
        run_id = start_run(stack, "deploy", environment=f"{ENV}-slow", service="api", image="sandbox/app:v2")
        wait_for("the analysis runs", lambda: running_task(stack, run_id, "run_analysis"), 120, [worker.log])
        assert image_of(apps, "api") == "sandbox/app:v2"
        cancel(stack, run_id)
        wait_final(stack, [run_id], [worker.log], timeout=90)
        assert read_run(stack, run_id).state.type == StateType.CANCELLED
        assert image_of(apps, "api") == GOOD_IMAGE
        wait_for("api rolled back out", lambda: rolled_out(apps, "api"), 60, [worker.log])
        health = load_environment(ENV).service("api").health_urls[0]
        assert httpx.get(health, timeout=5).status_code == 200
        report = latest_report(stack, f"deploy-{ENV}-slow-api")
        assert "CANCELLED" in report and "| rolled back | True |" in report
        wait_for("the cancel hook's event", lambda: events(stack, "runbook.run.cancelled", run_id), 30, [worker.log])
        assert events(stack, "runbook.deploy.cancelled", run_id)
    finally:
        worker.stop()


def test_a_restore_cancelled_during_pg_restore_leaves_production_untouched_and_no_scratch_database(
    stack: Stack, sandbox: Any, apps: Any
) -> None:
    worker = stack.worker("cancel-restore")
    web, web_replicas = live_web(apps)
    live = database_oids(sandbox, "pgbench")["pgbench"]
    kept_before = database_oids(sandbox, "pgbench_pre_restore_%")
    stopped: list[psutil.Process] = []
    try:
        run_id = start_run(stack, "restore-database", environment=ENV, database="pgbench", mode="swap")
        answer_confirmation(stack, run_id, "pgbench", [worker.log])

        def pg_restore() -> psutil.Process | None:  # a descendant of the worker this test started
            return next((p for p in worker.children() if p.name() == "pg_restore"), None)

        proc = wait_for("pg_restore runs", pg_restore, 120, [worker.log], interval=0.01)
        proc.send_signal(signal.SIGSTOP)  # pg_restore stalls mid-restore, for as long as the cancel takes
        stopped.append(proc)
        cancel(stack, run_id)
        wait_final(stack, [run_id], [worker.log], timeout=90)
        assert read_run(stack, run_id).state.type == StateType.CANCELLED
        assert database_oids(sandbox, "pgbench")["pgbench"] == live  # production untouched
        assert not database_oids(sandbox, "pgbench_restore_%")  # the scratch copy dropped
        assert database_oids(sandbox, "pgbench_pre_restore_%") == kept_before  # nothing swapped
        wait_for("web back at its replicas", lambda: live_web(apps) == (web, web_replicas), 60, [worker.log])
        assert "CANCELLED" in latest_report(stack, f"restore-{ENV}-pgbench")
    finally:
        for proc in stopped:
            if proc.is_running():
                os.kill(proc.pid, signal.SIGCONT)
        worker.stop()


# --- a run that keeps crashing --------------------------------------------------------------------------


def test_a_run_that_crashed_more_often_than_allowed_is_not_resumed_again_and_says_so(stack: Stack) -> None:
    from prefect.states import Crashed, Scheduled

    from tasks.prefect_api import MAX_RESUMES

    with stack.client() as c:  # no worker yet: nobody takes it while it "crashes"
        run_id = c.create_flow_run_from_deployment(stack.deployments["backup-database"],
                                                   parameters={"environment": ENV, "database": "pgbench"},
                                                   state=Scheduled(scheduled_time=_in_an_hour())).id
    for _ in range(MAX_RESUMES + 1):
        with stack.client() as c:
            c.set_flow_run_state(run_id, Crashed(message="its worker died (the test)"), force=True)
        wait_for("the resume automation schedules it again",  # each crash is resumed, as in production
                 lambda: read_run(stack, run_id).state.type == StateType.SCHEDULED, 60, [])
    worker = stack.worker("resumes")
    try:
        wait_for("the next attempt ends", lambda: read_run(stack, run_id).state.type in
                 {StateType.FAILED, StateType.COMPLETED}, 120, [worker.log], interval=1)
        run = read_run(stack, run_id)
        assert run.state.type == StateType.FAILED, run.state
        assert f"crashed {MAX_RESUMES + 1} times, more than the {MAX_RESUMES} resumes allowed" in run.state.message
        wait_for("the runbook.resume.exhausted event", lambda: events(stack, "runbook.resume.exhausted", run_id),
                 30, [worker.log])
    finally:
        worker.stop()


def _in_an_hour() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC) + timedelta(hours=1)


# --- maintenance mode goes off, however the run ends ------------------------------------------------


def page_status(env: str) -> int:
    mode = load_environment(env).maintenance.mode  # type: ignore[union-attr]
    return httpx.get(mode.page_url, timeout=5).status_code


def maintenance_mark(env: str) -> Any:
    cfg = load_environment(env)
    mode = cfg.maintenance.mode  # type: ignore[union-attr]
    with kubernetes.api_client(cfg.kubernetes) as api:
        return kubernetes.maintenance_mode(api, mode.namespace, mode.ingress)


def clear_signal(stack: Stack, point: str) -> None:
    (stack.root / "signals" / point).unlink(missing_ok=True)


MAINTENANCE_TASKS = [{"kind": "vacuum_analyze", "database": "pgbench"}]


def test_a_maintenance_run_cancelled_with_the_page_on_turns_it_off(stack: Stack, sandbox: Any) -> None:
    clear_signal(stack, "maintenance.mode-on")
    worker = stack.worker("cancel-maintenance", faults="maintenance.mode-on:hang")
    try:
        run_id = start_run(stack, "maintenance-window", environment=ENV, tasks=MAINTENANCE_TASKS)
        wait_for("maintenance mode is on", lambda: signalled(stack, "maintenance.mode-on"), 120, [worker.log])
        assert page_status(ENV) == 503 and maintenance_mark(ENV) is not None
        cancel(stack, run_id)
        wait_final(stack, [run_id], [worker.log], timeout=90)
        assert read_run(stack, run_id).state.type == StateType.CANCELLED
        assert page_status(ENV) == 200 and maintenance_mark(ENV) is None
        report = latest_report(stack, f"maintenance-{ENV}")
        assert "CANCELLED" in report and "| maintenance page gone, the app answers | pass |" in report
    finally:
        worker.stop()
        _page_off(ENV)


def test_a_maintenance_run_killed_with_the_page_on_leaves_it_to_the_next_run_which_turns_it_off(
        stack: Stack, sandbox: Any) -> None:
    from prefect.states import Cancelled

    clear_signal(stack, "maintenance.mode-on")
    first = stack.worker("kill-maintenance", faults="maintenance.mode-on:hang")
    second = None
    try:
        killed = start_run(stack, "maintenance-window", environment=ENV, tasks=MAINTENANCE_TASKS)
        wait_for("maintenance mode is on", lambda: signalled(stack, "maintenance.mode-on"), 120, [first.log])
        first.kill()  # kill -9: no finally, no hook; the page stays on
        assert page_status(ENV) == 503 and maintenance_mark(ENV)["run"] == str(killed)
        with stack.client() as c:  # an operator gives up on it: it is not resumed
            c.set_flow_run_state(killed, Cancelled(message="its worker died; not resumed"), force=True)
        second = stack.worker("after-kill-maintenance")
        next_run = start_run(stack, "maintenance-window", environment=ENV, tasks=MAINTENANCE_TASKS)
        wait_final(stack, [next_run], [second.log])  # waits out the dead run's change slot lease first
        assert read_run(stack, next_run).state.type == StateType.COMPLETED
        assert page_status(ENV) == 200 and maintenance_mark(ENV) is None
        report = latest_report(stack, f"maintenance-{ENV}")
        assert f"Maintenance mode was found on, left by run {killed}" in report and "SUCCEEDED" in report
    finally:
        first.kill()
        if second is not None:
            second.stop()
        _page_off(ENV)


def _page_off(env: str) -> None:
    cfg = load_environment(env)
    mode = cfg.maintenance.mode  # type: ignore[union-attr]
    with kubernetes.api_client(cfg.kubernetes) as api:
        kubernetes.maintenance_off(api, mode.namespace, mode.ingress)
