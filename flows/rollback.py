"""Immediate rollback, from the seeds:

    kubectl rollout undo deployment/backend
    kubectl rollout status deployment/backend

In a protected environment the operator confirms by typing ROLLBACK, as the runbooks ask.
With a database, the seeds' database rollback: stop the app, restore the backup, deploy
the previous version.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task

from flows.restore_database import restore_database
from tasks import approvals, checkpoints, http_checks, kubernetes, reports
from tasks.config import EnvironmentConfig, check_revision, load_environment
from tasks.errors import CheckFailed
from tasks.naming import namer
from tasks.prefect_api import HOOKS, resume_attempt
from tasks.redact import scrub


@task(**checkpoints.CHECKPOINT)
def plan_undo(env: EnvironmentConfig, service: str, to_revision: int | None) -> dict[str, Any]:
    """The checkpoint: the images the undo goes back to (`kubectl rollout undo --dry-run`).
    An undo renumbers revisions, so a resumed attempt compares images, not numbers."""
    svc = env.service(service)
    with kubernetes.api_client(env.kubernetes) as api:
        return kubernetes.undo_rollout(api, svc.namespace, svc.deployment, to_revision=to_revision, dry_run=True)


@task(**checkpoints.EFFECT)
def undo(env: EnvironmentConfig, service: str, to_revision: int | None, plan: dict[str, Any]) -> dict[str, Any]:
    """`kubectl rollout undo [--to-revision N]` through the API, then wait for it. When the
    Deployment runs the planned images already (an earlier attempt undid it), it only waits."""
    svc = env.service(service)
    started = time.monotonic()
    with kubernetes.api_client(env.kubernetes) as api:
        running = kubernetes.container_images(kubernetes.read_deployment(api, svc.namespace, svc.deployment))
        if running == plan["images"] and not plan["skipped"]:
            info = {**plan, "skipped": True, "replayed": True}
        else:
            info = kubernetes.undo_rollout(api, svc.namespace, svc.deployment, to_revision=to_revision)
        kubernetes.wait_for_rollout(api, svc.namespace, svc.deployment, svc.rollout_timeout.total_seconds())
    return {**info, "seconds": round(time.monotonic() - started, 3)}


@task(**checkpoints.OBSERVE)
def check_health(env: EnvironmentConfig, service: str) -> dict[str, Any]:
    svc = env.service(service)
    with http_checks.client(svc.http_timeout) as client:
        waited = http_checks.wait_healthy(client, svc.health_urls, svc.rollout_timeout.total_seconds())
    if waited is None:
        raise CheckFailed(f"{service} is not healthy after the rollback: {', '.join(svc.health_urls)}")
    return {"healthy_after_seconds": round(waited, 3)}


@flow(name="rollback", flow_run_name=namer("rollback"), **HOOKS)
def rollback(environment: str, service: str, to_revision: int | None = None,
             with_database: str | None = None) -> dict[str, Any]:
    """Roll a service back to its previous revision (or `to_revision`) and check its health.
    Protected environments ask for the word ROLLBACK first. With `with_database` (a backup
    id), the seeds' database rollback: the app's database is restored from that backup and
    swapped in first (restore-database: app scaled to 0, restore, swap), then the image.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        service: The service to roll back, as named under `services` in the environment.
        to_revision: The Deployment revision to go back to (kubectl rollout history); empty for the previous one.
        with_database: A backup id, like 20260101T020000Z-a1b2c3, to restore the service's database from
            first; empty to leave the database alone.
    """
    env = load_environment(environment)
    env.service(service)
    check_revision(to_revision)
    resume_attempt()
    database = env.database_of(service) if with_database else None
    approver = approvals.ask_rollback(service, env.name) if env.protected else None
    outcome, error, figures = "failed", None, {}
    try:
        if database:
            restored = restore_database(env.name, database, backup_id=with_database, mode="swap")
            figures["database"] = f"{database} restored from {with_database}, previous kept as {restored['names']['kept']}"
        figures.update(undo(env, service, to_revision, plan_undo(env, service, to_revision)))
        figures.update(check_health(env, service))
        outcome = "succeeded"
    except BaseException as exc:  # a failure, or a cancel's SIGTERM
        error = scrub(str(exc))
        raise
    finally:
        reports.publish(reports.rollback(env.name, service, outcome, error, approver, figures))
    return {"runbook": "rollback", "service": service, "approver": approver, **figures}
