"""`make demo`: every runbook on the sandbox, end to end.

Brings the sandbox up and, on the local (ephemeral) Prefect API, runs the nightly backup
of every database, the weekly restore test of each, a schema migration (with its
checkpoint backup), a restore-and-swap of that checkpoint (the database rollback; the
demo types the confirmation as an on-call engineer would in the UI), a good rolling
deploy, a bad one that rolls itself back, and blue-green deploys by Service selector and
by Ingress; and for the whole cluster with pgBackRest: a full physical backup, a point-in-time
recovery to a marked time on a new instance, a physical restore test and the WAL archive's
health check; and for the replicated pair, a DR drill (a planned switchover to the standby,
a failback and two rebuilds), announced to a local webhook receiver; and a maintenance window
(maintenance page on, VACUUM ANALYZE, a stuck query ended, the TLS certificate checked, page
off). Prints a summary and brings the sandbox down. Exit code 0 only if every run passed.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The local Prefect API is started on demand; keep it from phoning home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

DEMO_DIR = Path(os.environ.get("RUNBOOK_DEMO_DIR", "/tmp/runbook-flows-demo"))


def _run(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    print(f"== {name}")
    started = time.monotonic()
    state = fn(*args, **kwargs, return_state=True)
    seconds = time.monotonic() - started
    ok = state.is_completed()
    result = state.result(raise_on_failure=False) if ok else None
    return {"runbook": name, "outcome": "passed" if ok else "FAILED", "seconds": seconds,
            "result": result if isinstance(result, dict | list) else None,
            "message": "" if ok else (state.message or state.name)}


def _confirmed(name: str, fn: Callable[..., Any], run_input: dict[str, Any], *args: Any,
               **kwargs: Any) -> dict[str, Any]:
    """Run a flow that pauses for a person, and answer its form through the API as that
    person would in the UI."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    out: list[dict[str, Any]] = []
    runner = threading.Thread(target=lambda: out.append(_run(name, fn, *args, **kwargs)))
    runner.start()
    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    while runner.is_alive():
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=paused, limit=1)
        if runs:
            print(f"   answering the form of {runs[0].name!r}: {run_input}")
            resume_flow_run(runs[0].id, run_input=run_input)
            break
        time.sleep(0.5)
    runner.join()
    return out[0]


def _marked_time() -> str:
    """A recovery target: a heartbeat marker, the time just after it, one more marker after
    the target, and the WAL holding them archived (what the sandbox's primary does by itself
    within archive_timeout)."""
    from datetime import timedelta

    from tasks import postgres

    server = postgres.Server.from_dsn(os.environ["RUNBOOK_SANDBOX_PG_DSN"])
    with postgres.connect(server, "postgres") as conn:
        marked = postgres.write_heartbeat(conn)
        time.sleep(0.3)
        postgres.write_heartbeat(conn)
        postgres.wait_archived(conn, postgres.switch_wal(conn), 60)
    return (marked + timedelta(seconds=0.1)).isoformat()


def _received(base_url: str) -> list[Any]:
    import httpx

    return list(httpx.get(f"{base_url}/received", timeout=5).json())


def _expect_rollback(row: dict[str, Any], environment: str, service: str, previous: str) -> dict[str, Any]:
    """A bad deploy passes the demo when its run failed and the previous image runs again."""
    from tasks import kubernetes
    from tasks.config import load_environment

    env = load_environment(environment)
    svc = env.service(service)
    with kubernetes.api_client(env.kubernetes) as api:
        image = kubernetes.container_image(kubernetes.read_deployment(api, svc.namespace, svc.deployment),
                                           svc.container)
    recovered = row["outcome"] == "FAILED" and image == previous
    figures = _last_deploy_figures(environment, service)
    return {**row, "outcome": "passed" if recovered else "FAILED",
            "result": {"runbook": "deploy-rolled-back", "image": image, **figures},
            "message": row["message"]}


def _last_deploy_figures(environment: str, service: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"deploy-{environment}-{service}"])),
            sort=ArtifactSort.CREATED_DESC, limit=1)
    report = found[0] if found else None
    text = str(report.data) if report else ""
    recovery = text.split("time to recovery (s) | ")[1].split(" |")[0] if "time to recovery (s) | " in text else "?"
    return {"recovery_seconds": recovery}


def _figures(row: dict[str, Any]) -> tuple[str, str]:
    r = row["result"]
    if isinstance(r, dict) and r.get("runbook") == "deploy":
        phases = "/".join(a["phase"] for a in r["analyses"])
        return (f"{r['before'].get('image')} -> {r['after'].get('image')} ({r['strategy']}), analysis {phases}",
                r["artifact"])
    if isinstance(r, dict) and r.get("runbook") == "deploy-rolled-back":
        return (f"analysis failed, rolled back to {r['image']}, recovered in {r['recovery_seconds']} s",
                "deploy-sandbox-api")
    if isinstance(r, list):  # backup_all
        parts = [f"{x['database']}: {x.get('size', 0) / 1e6:.1f} MB, {x.get('rows', 0)} rows" for x in r]
        return "; ".join(parts), f"backup-all-{r[0]['environment'] if r else ''}"
    if isinstance(r, dict) and r.get("runbook") == "migrate":
        return (f"{r['database']}: applied {', '.join(r['applied']) or 'nothing'}, schema version "
                f"{r['schema_version']}, checkpoint backup {r['backup_id']}", r["artifact"])
    if isinstance(r, dict) and r.get("runbook") == "restore-database":
        return (f"{r['database']} swapped for backup {r['backup_id']}, previous kept as {r['names']['kept']}, "
                f"app down {r['app_down_seconds']:.1f}s", r["artifact"])
    if isinstance(r, dict) and r.get("runbook") == "restore-test":
        t = r["timings"]
        return (f"{r['database']}: {r['checks']} checks passed, restore {t.get('pg_restore', 0):.1f}s, "
                f"restore+verify {t.get('restore_and_verify', 0):.1f}s", r["artifact"])
    if isinstance(r, dict) and r.get("runbook") == "physical-backup":
        return (f"{r['type']} backup {r['label']}: {r['size'] / 1e6:.0f} MB, {r['repo_size'] / 1e6:.1f} MB stored, "
                f"{r['seconds']:.1f}s", r["artifact"])
    if isinstance(r, dict) and r.get("runbook") == "pitr-restore":
        return f"recovered to {r['target_time']} on {r['instance']}, target reached", r["artifact"]
    if isinstance(r, dict) and r.get("runbook") == "physical-restore-test":
        return f"{r['label']}: {r['checks']} checks passed, RTO {r['rto_seconds']:.1f}s", r["artifact"]
    if isinstance(r, dict) and r.get("runbook") == "dr-drill":
        runs = "; ".join(f"{x['label']} {x['from']}->{x['to']}: RTO {x['rto_seconds']:.1f}s, RPO {x['rpo_bytes']} bytes"
                         for x in r["runs"])
        return runs, r["artifact"]
    if isinstance(r, dict) and r.get("runbook") == "maintenance-window":
        done = {t["task"]: t for t in r["tasks"]}
        stuck = done.get("terminate_stuck_queries fleet", {}).get("figures", "")
        ended = stuck.split("terminated: ")[1].split(",")[0] if "terminated: " in stuck else "?"
        certs = done.get("check_certificates", {}).get("result", "not run")
        return (f"page on and off (checked over HTTP), {len(done)} tasks: vacuum, {ended} stuck session(s) "
                f"ended, certificates {certs}", r["artifact"])
    if isinstance(r, dict) and r.get("runbook") == "archive-health":
        f = r["figures"]
        return (f"last WAL {f.get('last archived WAL')}, archived within {f.get('archived within (s)')} s",
                r["artifact"])
    return row["message"][:100], ""


def _maintenance(environment: str) -> dict[str, Any]:
    """A maintenance window with a session left sleeping in a transaction, as a forgotten psql
    would: the run must end it and list it."""
    import psycopg

    from flows.maintenance_window import maintenance_window
    from sandbox.state import ENV_PG_DSN

    started = threading.Event()

    def forgotten_session() -> None:
        try:
            with psycopg.connect(os.environ[ENV_PG_DSN], dbname="fleet", autocommit=False) as conn:
                conn.execute("SELECT 1")
                started.set()
                conn.execute("SELECT pg_sleep(600)")
        except psycopg.Error:
            pass  # ended by the maintenance run: what the demo shows

    threading.Thread(target=forgotten_session, daemon=True).start()
    started.wait(10)
    time.sleep(2.5)
    return _run("maintenance-window", maintenance_window, environment, tasks=[
        {"kind": "vacuum_analyze", "database": "fleet"},
        {"kind": "terminate_stuck_queries", "database": "fleet", "older_than": "2s"},
        {"kind": "check_certificates"}])


def main() -> int:
    from sandbox import api

    size_mb = int(os.environ.get("RUNBOOK_DEMO_SIZE_MB", "64"))
    print(f"== bringing the sandbox up in {DEMO_DIR} ({size_mb} MB sample database)")
    api.down(DEMO_DIR)
    state = api.up(workdir=DEMO_DIR, size_mb=size_mb)
    os.environ.update(state.secret_env())
    rows: list[dict[str, Any]] = []
    from sandbox import webhook
    from sandbox.state import ENV_WEBHOOK_URL

    hook = webhook.start_detached(DEMO_DIR / "webhook")
    os.environ[ENV_WEBHOOK_URL] = hook.url
    try:
        from flows.archive_health import archive_health
        from flows.backup import backup_all
        from flows.deploy import deploy
        from flows.dr_drill import dr_drill
        from flows.migrate import migrate_database
        from flows.physical_backup import physical_backup
        from flows.physical_restore_test import physical_restore_test
        from flows.pitr_restore import pitr_restore
        from flows.restore_database import restore_database
        from flows.restore_test import restore_test
        from tasks.config import load_environment

        env = load_environment("sandbox")
        rows.append(_run("backup-all", backup_all, env.name))
        for database in env.databases:
            rows.append(_run(f"restore-test {database}", restore_test, env.name, database))
        rows.append(_run("physical-backup main", physical_backup, env.name, "main", "full"))
        rows.append(_run("pitr-restore main", pitr_restore, env.name, "main", _marked_time()))
        rows.append(_run("physical-restore-test", physical_restore_test, env.name, "main"))
        rows.append(_run("archive-health main", archive_health, env.name, "main"))
        rows.append(_run("migrate fleet", migrate_database, env.name, "fleet"))
        # The seeds' database rollback: put the migration's checkpoint backup back in production's place.
        rows.append(_confirmed("restore fleet (swap)", restore_database, {"confirm": "fleet", "approver": "demo"},
                               env.name, "fleet", mode="swap"))
        rows.append(_run("deploy api (good)", deploy, env.name, "api", "sandbox/app:v2"))
        bad = _run("deploy api (8% errors)", deploy, env.name, "api", "sandbox/app:v3-err8")
        rows.append(_expect_rollback(bad, env.name, "api", "sandbox/app:v2"))
        rows.append(_run("deploy web (blue-green)", deploy, env.name, "web", "sandbox/app:v2"))
        rows.append(_run("deploy admin (Ingress)", deploy, env.name, "admin", "sandbox/app:v2"))
        rows.append(_maintenance(env.name))
        rows.append(_run("dr-drill (failback)", dr_drill, env.name))
        print(f"   the incident channel received {len(_received(hook.base_url))} announcements")
    finally:
        webhook.stop_detached(DEMO_DIR / "webhook")
        print("== bringing the sandbox down")
        api.down(DEMO_DIR)

    print()
    print(f"{'runbook':<24} {'outcome':<8} {'seconds':>8}  {'key figures':<80} artifact")
    for row in rows:
        figures, key = _figures(row)
        print(f"{row['runbook']:<24} {row['outcome']:<8} {row['seconds']:>8.1f}  {figures:<80} {key}")
    print()
    print("To look at the runs, artifacts and events in the UI:")
    print("  .venv/bin/prefect server start    # then open http://127.0.0.1:4200")
    ok = all(r["outcome"] == "passed" for r in rows)
    print("demo:", "every run passed" if ok else "SOME RUNS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
