"""The seeds' maintenance procedure, inside its window:

    # 0. in the window?                 Weekly, Sunday 2-4 AM IST; monthly, 1st Sunday, 4 hours
    # 1. Enable maintenance mode        kubectl apply -f kubernetes/maintenance-page.yaml
    # 2. Verify maintenance page        curl https://app.sevfleet.com
    # 3. Perform maintenance            VACUUM ANALYZE, REINDEX, kill queries stuck > 5 min,
    #                                   prune old backups, check certificates, migrate, deploy
    # 4. Verify system health           ./scripts/health-check.sh
    # 5. Disable maintenance mode       kubectl delete -f kubernetes/maintenance-page.yaml
    # 6. Verify normal operation        curl -f https://api.sevfleet.com/actuator/health

with what the page leaves out: it refuses outside the window and holds the environment's one
change slot; each task is a checkpoint; a task that cannot finish before the window ends is
not started; and maintenance mode goes off in every outcome. A failed task, a cancel (its
SIGTERM unwinds through the same `finally`) and a killed process all end with the page off:
the Ingress remembers its backend in an annotation, so the next run (or the resumed attempt
of this one) turns off what a dead run left on. The start and the end are announced.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, task
from prefect.runtime import flow_run

from flows.deploy import deploy
from flows.migrate import migrate_database
from tasks import (
    certificates,
    changes,
    checkpoints,
    http_checks,
    kubernetes,
    maintenance_plan,
    naming,
    postgres,
    prefect_api,
    reports,
    retries,
    windows,
)
from tasks.backup_steps import apply_retention
from tasks.checks import Check
from tasks.config import (
    EnvironmentConfig,
    MaintenanceConfig,
    MaintenanceModeConfig,
    load_environment,
    validate_image,
)
from tasks.dr_steps import announce
from tasks.errors import CheckFailed, ConfigError, PolicyRefused
from tasks.faults import fault_point
from tasks.maintenance_plan import MaintenanceTask
from tasks.naming import artifact_key, namer
from tasks.prefect_api import HOOKS, resume_attempt
from tasks.records import MaintenanceRecord

RUNBOOK = "maintenance-window"


def _mode(env: EnvironmentConfig) -> MaintenanceModeConfig | None:
    return env.maintenance.mode if env.maintenance else None


def _run_id() -> str:
    return str(flow_run.root_flow_run_id or flow_run.id or "local")


# --- tasks: the window and maintenance mode ----------------------------------------------------------


@task(**checkpoints.CHECKPOINT)
def choose_window(env: EnvironmentConfig, window: str | None) -> windows.Occurrence:
    """The checkpoint: the window this run is in, as its first attempt found it (a resumed
    attempt keeps to the same end). Refuses outside it, naming the next one."""
    occurrence, why = maintenance_plan.current_window(env.windows, window, datetime.now(UTC), env.timezone)
    if occurrence is None:
        raise PolicyRefused(why)
    return occurrence


@task(**retries.policy("kubernetes"), **checkpoints.REDO)
def turn_off_left_on(env: EnvironmentConfig, run_id: str) -> dict[str, Any] | None:
    """Maintenance mode that another run left on (it crashed or was killed): off, first."""
    mode = _mode(env)
    if mode is None:
        return None
    with kubernetes.api_client(env.kubernetes) as api:
        mark = kubernetes.maintenance_mode(api, mode.namespace, mode.ingress)
        if mark is None or mark.get("run") == run_id:
            return None  # off, or on by an earlier attempt of this same run, which goes on with it
        return kubernetes.maintenance_off(api, mode.namespace, mode.ingress)


@task(**retries.policy("kubernetes"), **checkpoints.EFFECT)
def maintenance_mode_on(env: EnvironmentConfig, run_id: str, since: str) -> dict[str, Any]:
    """`kubectl apply -f maintenance-page.yaml`: the Ingress routes to the page's Service."""
    mode = _mode(env)
    assert mode is not None
    with kubernetes.api_client(env.kubernetes) as api:
        return kubernetes.maintenance_on(api, mode.namespace, mode.ingress, mode.page_service, run_id, since)


@task(**retries.policy("kubernetes"), **checkpoints.REDO)
def maintenance_mode_off(env: EnvironmentConfig) -> dict[str, Any] | None:
    """`kubectl delete -f maintenance-page.yaml`: the Ingress routes back to the backend it
    remembers. Off already: nothing to do."""
    mode = _mode(env)
    assert mode is not None
    with kubernetes.api_client(env.kubernetes) as api:
        return kubernetes.maintenance_off(api, mode.namespace, mode.ingress)


@task(**checkpoints.OBSERVE)
def verify_page(env: EnvironmentConfig, on: bool) -> Check:
    """`curl https://app...`: the page is served (on), or the app answers again (off)."""
    mode = _mode(env)
    assert mode is not None
    with http_checks.client((env.maintenance or MaintenanceConfig()).http_timeout) as client:
        return http_checks.wait_page(client, mode.page_url, mode.page_marker, on, mode.settle.total_seconds())


@task(**checkpoints.OBSERVE)
def check_health(env: EnvironmentConfig, label: str) -> Check:
    """`./scripts/health-check.sh`: every health URL answers 2xx (waiting up to the settle time)."""
    cfg = env.maintenance or MaintenanceConfig()
    settle = cfg.mode.settle.total_seconds() if cfg.mode else 30.0
    with http_checks.client(cfg.http_timeout) as client:
        waited = http_checks.wait_healthy(client, cfg.health_urls, settle) if cfg.health_urls else 0.0
        ok, said = http_checks.probe_health(client, cfg.health_urls) if cfg.health_urls else (True, "no health URLs")
    return Check(label, ok and waited is not None, said)


# --- tasks: the maintenance itself ----------------------------------------------------------------


def _server(env: EnvironmentConfig, database: str) -> tuple[postgres.Server, str]:
    cfg = env.database(database)
    return postgres.server_for(cfg), cfg.dbname


@task(**checkpoints.EFFECT)
def vacuum_analyze(env: EnvironmentConfig, database: str, tables: list[str]) -> dict[str, Any]:
    """VACUUM (ANALYZE) of the database, or of the tables named."""
    server, dbname = _server(env, database)
    with postgres.connect(server, dbname) as conn:
        return postgres.vacuum_analyze(conn, tables or None)


@task(**checkpoints.EFFECT)
def reindex(env: EnvironmentConfig, database: str) -> dict[str, Any]:
    """REINDEX ... CONCURRENTLY of every user schema, plain REINDEX where it cannot."""
    server, dbname = _server(env, database)
    with postgres.connect(server, dbname) as conn:
        return postgres.reindex(conn, concurrently=True)


@task(**checkpoints.REDO)
def terminate_stuck_queries(env: EnvironmentConfig, database: str, older_than_seconds: float) -> dict[str, Any]:
    """End the sessions whose transaction or query has run longer than `older_than`, and
    list them: who, what state, how long, which query."""
    server, dbname = _server(env, database)
    with postgres.connect(server, dbname) as conn:
        stuck = postgres.stuck_sessions(conn, timedelta(seconds=older_than_seconds), dbname)
        ended = set(postgres.terminate_sessions(conn, [s.pid for s in stuck]))
    return {"terminated": len(ended), "sessions": [asdict(s) for s in stuck if s.pid in ended]}


@task(**checkpoints.OBSERVE)
def check_certificates(env: EnvironmentConfig) -> list[dict[str, Any]]:
    """Days left on each configured host's TLS certificate, against its warn and fail limits."""
    now = datetime.now(UTC)
    rows = []
    for target in (env.maintenance or MaintenanceConfig()).certificates:
        try:
            cert = certificates.fetch(target.host, target.port, target.server_name, ca_file=target.ca_file)
            verdict, why = certificates.verdict(cert, target.warn_days, target.fail_days, now)
            days = round(cert.days_left, 1)
        except Exception as exc:  # an unreachable host is a failed check, not a crashed run
            verdict, why, days = "fail", f"{type(exc).__name__}: {exc}", None
        rows.append({"host": f"{target.host}:{target.port}", "days_left": days, "verdict": verdict, "detail": why})
    return rows


@task(**checkpoints.EFFECT)
def run_job(env: EnvironmentConfig, service: str, name: str, command: list[str], image: str | None,
            timeout_seconds: float, run_id: str) -> dict[str, Any]:
    """`kubectl create job` from the service's image (or `image`): its exit code and log's end."""
    svc = env.service(service)
    job_name = naming.job_name(name, run_id=run_id)
    with kubernetes.api_client(env.kubernetes) as api:
        image = image or kubernetes.live_image(api, svc)
        job = kubernetes.run_job(api, svc.namespace, job_name, image, command, timeout_seconds)
    result = {"job": job_name, "image": image, "exit_code": job.exit_code,
              "log_end": job.logs[-300:] if job.logs else ""}
    if not job.succeeded:
        raise CheckFailed(f"job {name} failed ({job.reason or 'exit code ' + str(job.exit_code)}): "
                          f"{result['log_end']}")
    return result


@task(**checkpoints.OBSERVE)
def read_durations(env: EnvironmentConfig) -> dict[str, list[float]]:
    """How long each kind of task took in recent windows (a Prefect Variable)."""
    value = prefect_api.read_variable(maintenance_plan.durations_variable(env.name), {})
    return value if isinstance(value, dict) else {}


@task(**checkpoints.REDO)
def remember_durations(env: EnvironmentConfig, durations: dict[str, list[float]]) -> None:
    prefect_api.write_variable(maintenance_plan.durations_variable(env.name), durations)


# --- steps -----------------------------------------------------------------------------------------


def do_task(env: EnvironmentConfig, t: MaintenanceTask, run_id: str) -> dict[str, Any]:
    """One maintenance task, by kind: its figures. The migrate and deploy runbooks run as
    subflows, inside this run's change slot."""
    if isinstance(t, maintenance_plan.VacuumAnalyze):
        return vacuum_analyze(env, t.database, t.tables)
    if isinstance(t, maintenance_plan.Reindex):
        return reindex(env, t.database)
    if isinstance(t, maintenance_plan.TerminateStuckQueries):
        return terminate_stuck_queries(env, t.database, t.older_than.total_seconds())
    if isinstance(t, maintenance_plan.PruneBackups):
        plan = apply_retention(env, t.database, datetime.now(UTC))
        return {"deleted": len(plan.delete), "kept": len(plan.keep)}
    if isinstance(t, maintenance_plan.CheckCertificates):
        rows = check_certificates(env)
        failed = [r for r in rows if r["verdict"] == "fail"]
        if failed:
            raise CheckFailed("certificates: " + "; ".join(f"{r['host']} {r['detail']}" for r in failed))
        return {"certificates": rows}
    if isinstance(t, maintenance_plan.Migrate):
        done = migrate_database(env.name, t.database, t.target_version)
        return {"applied": done["applied"], "schema_version": done["schema_version"]}
    if isinstance(t, maintenance_plan.Deploy):
        done = deploy(env.name, t.service, t.image)
        return {"image": t.image, "outcome": done["outcome"]}
    assert isinstance(t, maintenance_plan.RunJob)
    return run_job(env, t.service, t.name, t.command, t.image, t.timeout.total_seconds(), run_id)


def run_tasks(env: EnvironmentConfig, plan: list[MaintenanceTask], window: windows.Occurrence,
              record: MaintenanceRecord, run_id: str) -> None:
    """Each task in order, if it still fits before the window's end; after a failure or an
    overrun, the rest are listed as not run."""
    cfg = env.maintenance or MaintenanceConfig()
    past = read_durations(env)
    stop: str | None = None
    for t in plan:
        if stop is not None:
            record.task_result(t.label, "skipped" if stop == "overrun" else "not run", None, "-", stop_reason(stop))
            continue
        step = maintenance_plan.next_step(t, datetime.now(UTC), window.end, cfg.margin, cfg.estimates, past)
        estimate = f"{int(step.estimate.total_seconds())} s ({step.source})" if step.estimate else "none"
        if not step.go:
            stop = "overrun"
            record.task_result(t.label, "skipped", None, estimate, step.reason)
            record.step(datetime.now(UTC), f"stopped before {t.label}", step.reason)
            prefect_api.emit("runbook.maintenance.overrun", f"runbook.environment.{env.name}",
                             {"environment": env.name, "task": t.label, "reason": step.reason})
            continue
        record.step(datetime.now(UTC), f"{t.label} started", step.reason)
        clock = time.monotonic()
        try:
            figures = do_task(env, t, run_id)
        except Exception as exc:
            seconds = round(time.monotonic() - clock, 3)
            record.task_result(t.label, "failed", seconds, estimate, f"{type(exc).__name__}: {exc}")
            record.step(datetime.now(UTC), f"{t.label} failed", str(exc))
            stop = "failed"
            continue
        seconds = round(time.monotonic() - clock, 3)
        past = maintenance_plan.record_duration(past, t.kind, seconds)
        record.task_result(t.label, "done", seconds, estimate, "ok", figures)
        record.step(datetime.now(UTC), f"{t.label} done", f"{seconds} s")
        fault_point("maintenance.after-task")
    remember_durations(env, past)


def stop_reason(stop: str) -> str:
    return ("not started: a task before it could not finish before the window's end" if stop == "overrun"
            else "not started: a task before it failed")


def maintenance_on(env: EnvironmentConfig, record: MaintenanceRecord, run_id: str) -> None:
    """Page on, then seen on over HTTP; the tasks do not start while users would see errors."""
    if _mode(env) is None:
        record.step(datetime.now(UTC), "no maintenance mode", "the environment configures none: tasks run live")
        return
    mark = maintenance_mode_on(env, run_id, datetime.now(UTC).isoformat(timespec="seconds"))
    record.mode_on, record.mode_off = True, False
    record.step(datetime.now(UTC), "maintenance mode on", f"Ingress backend {mark['backend']} -> page")
    fault_point("maintenance.mode-on")
    record.checks.append(seen := verify_page(env, on=True))
    if not seen.passed:
        raise CheckFailed(f"the maintenance page is not served: {seen.detail}")


def maintenance_off(env: EnvironmentConfig, record: MaintenanceRecord) -> None:
    """Page off, in every outcome, then the app seen answering again over HTTP."""
    if _mode(env) is None or not record.mode_on:
        return
    maintenance_mode_off(env)
    record.step(datetime.now(UTC), "maintenance mode off", "Ingress backend restored")
    record.checks.append(gone := verify_page(env, on=False))
    record.mode_off = gone.passed


def check_plan(env: EnvironmentConfig, tasks: list[Any] | None) -> list[MaintenanceTask]:
    """The tasks, typed and checked against the environment before anything changes."""
    cfg = env.maintenance
    raw = tasks if tasks is not None else list(cfg.tasks if cfg else [])
    try:
        plan = maintenance_plan.parse_tasks(raw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for t in plan:
        if database := getattr(t, "database", None):
            env.database(database).check_secrets()
        if service := getattr(t, "service", None):
            svc = env.service(service)
            if isinstance(t, maintenance_plan.Deploy):
                validate_image(t.image, svc)  # the deploy would refuse it only once the page is on
        if isinstance(t, maintenance_plan.CheckCertificates) and not (cfg and cfg.certificates):
            raise ConfigError(f"tasks: check_certificates needs maintenance.certificates in {env.name}")
    return plan


# --- flow ------------------------------------------------------------------------------------------


@flow(name=RUNBOOK, flow_run_name=namer(RUNBOOK), **HOOKS)
def maintenance_window(environment: str, tasks: list[MaintenanceTask] | None = None,
                       window: str | None = None) -> dict[str, Any]:
    """Inside a maintenance window: announce it, turn maintenance mode on and check the page is
    served, run the tasks in order (each only if it can finish before the window ends), check
    health, turn maintenance mode off and check the app answers, announce the end. Maintenance
    mode goes off whatever happens, and a run that finds it left on by a dead run turns it off.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        tasks: What to do, in order, like [{"kind": "vacuum_analyze", "database": "fleet"}]; empty
            for the environment's `maintenance.tasks`.
        window: The maintenance window (by name) to run in; empty for whichever is open now.
    """
    env = load_environment(environment)
    plan = check_plan(env, tasks)
    record = MaintenanceRecord(environment=env.name)
    record.resumed(resume_attempt())
    run_id = _run_id()
    try:
        occurrence = choose_window(env, window)
        record.window, record.window_start, record.window_end = maintenance_plan.window_fields(occurrence)
        with changes.one_change(env, RUNBOOK):
            record.left_on = turn_off_left_on(env, run_id)
            announce(env, reports.maintenance_announcement(record, "started", prefect_api.run_url(run_id)))
            record.announced = True
            try:
                maintenance_on(env, record, run_id)
                run_tasks(env, plan, occurrence, record, run_id)
                record.checks.append(check_health(env, "health before maintenance mode off"))
            finally:
                maintenance_off(env, record)
            record.checks.append(check_health(env, "normal operation"))
        record.outcome = "succeeded" if record.passed else "failed"
    except BaseException as exc:  # a failure, a refusal, or a cancel's SIGTERM
        record.fail(exc)
        raise
    finally:
        if record.announced:  # a run refused before it started announces no end either
            announce(env, reports.maintenance_announcement(record, "ended", prefect_api.run_url(run_id)))
        reports.publish(reports.maintenance(record))
    if not record.passed:
        raise CheckFailed(f"maintenance window: {record.failed_checks()}")
    return {"runbook": RUNBOOK, "environment": env.name, "window": record.window, "tasks": record.tasks,
            "skipped": record.skipped, "left_on": record.left_on, "artifact": artifact_key("maintenance", env.name)}


if __name__ == "__main__":
    import sys

    maintenance_window(sys.argv[1] if len(sys.argv) > 1 else "sandbox")
