"""Maintenance windows on the sandbox: the maintenance page through the Ingress `api`, real
PostgreSQL sessions stuck in a transaction, the TLS terminator's certificate, Jobs on the fake
Kubernetes API, a local webhook, a real Prefect API. The change policy: a deploy outside the
window is refused, an emergency one goes ahead after an approval, a migration does not run
beside a maintenance run. Cancel and kill -9 are in tests/test_crash_resume.py."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from flows.deploy import deploy
from flows.maintenance_window import maintenance_window
from flows.migrate import migrate_database
from sandbox.cluster import GOOD_IMAGE
from sandbox.process import wait_until
from sandbox.state import ENV_PG_DSN
from tasks import kubernetes
from tasks.config import load_environment
from tests.cluster_state import latest_report

pytestmark = pytest.mark.scenario


def task_names(state: Any) -> set[str]:
    """The tasks the flow run ran."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as c:
        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])))
    return {r.name.rsplit("-", 1)[0] for r in runs}


def page(env: str) -> httpx.Response:
    mode = load_environment(env).maintenance.mode  # type: ignore[union-attr]
    return httpx.get(mode.page_url, timeout=5)


def ingress_mark(env: str) -> Any:
    cfg = load_environment(env)
    mode = cfg.maintenance.mode  # type: ignore[union-attr]
    with kubernetes.api_client(cfg.kubernetes) as api:
        return kubernetes.maintenance_mode(api, mode.namespace, mode.ingress)


@pytest.fixture
def page_off_after(sandbox: Any) -> Iterator[None]:
    """Whatever a test did, the Ingress `api` routes to the app afterwards (tests share it)."""
    yield
    cfg = load_environment("sandbox")
    mode = cfg.maintenance.mode  # type: ignore[union-attr]
    with kubernetes.api_client(cfg.kubernetes) as api:
        kubernetes.maintenance_off(api, mode.namespace, mode.ingress)


class PageWatch:
    """What users saw at the page URL, polled in a thread while a run goes on."""

    def __init__(self, url: str) -> None:
        self.url, self.seen, self._stop = url, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as c:
            while not self._stop.is_set():
                try:
                    r = c.get(self.url)
                    self.seen.append((r.status_code, "down for maintenance" in r.text.lower()))
                except httpx.HTTPError:
                    self.seen.append((0, False))
                self._stop.wait(0.1)

    def __enter__(self) -> PageWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def stuck_session(dbname: str) -> tuple[threading.Thread, list[BaseException], list[int]]:
    """A session sleeping inside a transaction, as a forgotten psql would; records how it ended."""
    ended: list[BaseException] = []
    pid: list[int] = []

    def run() -> None:
        try:
            with psycopg.connect(os.environ[ENV_PG_DSN], dbname=dbname, autocommit=False) as conn:
                pid.append(conn.info.backend_pid)
                conn.execute("SELECT pg_sleep(600)")
        except psycopg.Error as exc:
            ended.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: bool(pid), timeout=10)
    return thread, ended, pid


def window_env(make_environment: Any, name: str, start: datetime, duration: str, margin: str = "30s",
               **extra: Any) -> str:
    def edit(doc: dict[str, Any]) -> None:
        doc["windows"] = {"maintenance": [{"name": "short", "every": "once", "start": start.isoformat(),
                                           "duration": duration}], **extra.pop("windows", {})}
        doc["maintenance"]["margin"] = margin
        doc.update(extra)

    return make_environment(name, edit)


# --- the maintenance run ----------------------------------------------------------------------------


def test_a_maintenance_run_turns_the_page_on_and_off_ends_a_stuck_query_and_announces_without_secrets(
        sandbox: Any, webhook: Any, page_off_after: None) -> None:
    assert page("sandbox").status_code == 200
    thread, ended, pid = stuck_session("fleet")
    time.sleep(1.5)
    webhook.clear()
    tasks = [{"kind": "vacuum_analyze", "database": "fleet", "tables": ["public.vehicles"]},
             {"kind": "terminate_stuck_queries", "database": "fleet", "older_than": "1s"},
             {"kind": "check_certificates"}]
    with PageWatch(load_environment("sandbox").maintenance.mode.page_url) as watch:  # type: ignore[union-attr]
        result = maintenance_window("sandbox", tasks=tasks)

    # The page was served during the run, over HTTP, and the app answers again after it.
    assert (503, True) in watch.seen, watch.seen[:5]
    assert watch.seen[-1] == (200, False)
    assert page("sandbox").status_code == 200 and ingress_mark("sandbox") is None

    # The stuck session was ended, and listed with its pid and query.
    thread.join(timeout=10)
    assert ended and not thread.is_alive()
    stuck = next(t for t in result["tasks"] if t["task"] == "terminate_stuck_queries fleet")
    assert stuck["result"] == "done" and str(pid[0]) in stuck["figures"] and "pg_sleep" in stuck["figures"]
    assert {t["result"] for t in result["tasks"]} == {"done"}

    text = latest_report("maintenance-sandbox")
    for line in ("SUCCEEDED", "| maintenance page served | pass |", "| maintenance page gone, the app answers | pass |",
                 "| normal operation | pass |", "maintenance mode on", "vacuum_analyze fleet done", "days_left"):
        assert line in text, line

    # The start and the end reached the webhook, with no secret in them.
    bodies = webhook.received()
    assert len(bodies) == 2 and "Maintenance window in sandbox" in bodies[0]["text"], bodies
    dumped = json.dumps(bodies)
    for secret in (*sandbox.secret_env().values(), webhook.url):
        assert secret not in dumped


def test_a_failing_task_still_turns_the_page_off_and_the_rest_are_not_run(
        sandbox: Any, page_off_after: None) -> None:
    tasks = [{"kind": "run_job", "service": "api", "name": "broken", "command": ["./fix"],
              "image": "sandbox/app:job-fail"},
             {"kind": "vacuum_analyze", "database": "fleet"}]
    state = maintenance_window("sandbox", tasks=tasks, return_state=True)
    assert state.is_failed() and "run_job broken" in state.message
    assert page("sandbox").status_code == 200 and ingress_mark("sandbox") is None
    text = latest_report("maintenance-sandbox")
    assert "FAILED" in text and "| vacuum_analyze fleet | not run |" in text
    assert "| maintenance page gone, the app answers | pass |" in text


def test_with_a_short_window_a_long_task_is_skipped_and_reported(make_environment: Any,
                                                                  page_off_after: None) -> None:
    env = window_env(make_environment, "maint-short", datetime.now(UTC) - timedelta(minutes=1), "3m")
    tasks = [{"kind": "terminate_stuck_queries", "database": "fleet", "older_than": "5m"},
             {"kind": "vacuum_analyze", "database": "fleet", "estimate": "10m"},
             {"kind": "check_certificates"}]
    result = maintenance_window(env, tasks=tasks)
    assert result["skipped"] == ["vacuum_analyze fleet", "check_certificates"]
    text = latest_report(f"maintenance-{env}")
    assert "STOPPED AT THE WINDOW'S END" in text and "needs about 10 min (task)" in text
    assert "| terminate_stuck_queries fleet | done |" in text
    assert page(env).status_code == 200


def test_outside_its_window_a_maintenance_run_is_refused_before_anything_and_names_the_next(
        make_environment: Any) -> None:
    start = datetime.now(UTC) + timedelta(days=2)
    env = window_env(make_environment, "maint-later", start, "2h")
    state = maintenance_window(env, tasks=[{"kind": "vacuum_analyze", "database": "fleet"}], return_state=True)
    assert state.is_failed()
    assert "outside every maintenance window; the next is short" in state.message
    assert f"{start:%Y-%m-%d}" in state.message
    assert ingress_mark(env) is None and "REFUSED" in latest_report(f"maintenance-{env}")


def test_bad_tasks_are_refused_before_any_side_effect_naming_the_entry(sandbox: Any) -> None:
    state = maintenance_window("sandbox", tasks=[{"kind": "vacuum_analyse", "database": "fleet"}],
                               return_state=True)
    assert state.is_failed() and "vacuum_analyse" in state.message and "vacuum_analyze" in state.message
    state = maintenance_window("sandbox", tasks=[{"kind": "reindex", "database": "nope"}], return_state=True)
    assert state.is_failed() and "database 'nope' is not in environment 'sandbox'" in state.message
    state = maintenance_window("sandbox", tasks=[{"kind": "deploy", "service": "api", "image": "no tag"}],
                               return_state=True)
    assert state.is_failed() and "image 'no tag' is not an image reference" in state.message
    assert task_names(state) == set(), "a bad deploy task is refused before any step, the page included"
    assert ingress_mark("sandbox") is None


# --- the change policy ------------------------------------------------------------------------------


def _paused(flow_name: str, environment: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as c:
        runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    return next((r for r in runs if r.parameters.get("environment") == environment
                 and r.name.startswith(flow_name)), None)


def test_a_deploy_outside_the_window_is_refused_naming_the_next_and_an_approved_emergency_goes_ahead(
        make_environment: Any, api_on_v1: None) -> None:
    from prefect.flow_runs import resume_flow_run

    start = datetime.now(UTC) + timedelta(days=3)
    env = window_env(make_environment, "deploy-windows", start, "2h", windows={"require_for": ["deploy"]})
    refused = deploy(env, "api", GOOD_IMAGE, return_state=True)
    assert refused.is_failed()
    assert "deploy is outside every maintenance window; the next is short" in refused.message
    assert "emergency=True" in refused.message

    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(deploy(
        env, "api", GOOD_IMAGE, emergency=True, emergency_reason="hotfix for INC-42: checkout fails",
        return_state=True)))
    runner.start()
    holder: list[Any] = []
    wait_until(lambda: bool(holder.append(_paused("deploy", env)) or holder[-1]), timeout=60)
    resume_flow_run(holder[-1].id, run_input={"approve": True, "approver": "dana", "reason": "INC-42"})
    runner.join(timeout=180)
    assert outcome and outcome[0].is_completed(), outcome
    text = latest_report(f"deploy-{env}-api")
    assert "**Emergency change**" in text and "INC-42" in text and "Approved by dana" in text


def test_a_migration_started_while_maintenance_tasks_run_is_refused_naming_the_maintenance_run(
        make_environment: Any, sandbox: Any, page_off_after: None) -> None:
    image = f"sandbox/app:maint-slow-{os.urandom(3).hex()}"
    httpx.post(f"{sandbox.kube_url}/sandbox/image-rules", json={
        "rules": {image: {"job": "succeed", "duration": 8}}, "merge": True}).raise_for_status()

    def edit(doc: dict[str, Any]) -> None:
        doc["change_wait"] = "0s"

    env = make_environment("maint-busy", edit)
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(maintenance_window(env, tasks=[
        {"kind": "run_job", "service": "api", "name": "slow", "command": ["./slow"], "image": image}],
        return_state=True)))
    runner.start()
    wait_until(lambda: ingress_mark(env) is not None, timeout=60)  # its tasks are running
    state = migrate_database(env, "fleet", return_state=True)
    runner.join(timeout=120)
    assert state.is_failed()
    assert "one change at a time" in state.message and "maintenance-window run" in state.message
    assert "/runs/flow-run/" in state.message
    assert outcome and outcome[0].is_completed()

