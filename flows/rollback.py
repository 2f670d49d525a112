"""Immediate rollback, from the seeds:

    kubectl rollout undo deployment/backend
    kubectl rollout status deployment/backend

In a protected environment the operator confirms by typing ROLLBACK, as the runbooks ask.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from prefect import flow, task
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from tasks import http_checks, kubernetes
from tasks.config import EnvironmentConfig, load_environment
from tasks.errors import CheckFailed, ConfigError, PolicyRefused
from tasks.prefect_api import artifact_key, emit, md_table, publish_report
from tasks.redact import scrub

CONFIRM_WORD = "ROLLBACK"


class RollbackConfirmation(RunInput):
    """Type ROLLBACK to roll the service back."""

    confirm: str
    approver: str


@task
def undo(env: EnvironmentConfig, service: str, to_revision: int | None) -> dict[str, Any]:
    """`kubectl rollout undo [--to-revision N]` through the API, then wait for it."""
    svc = env.service(service)
    started = time.monotonic()
    with kubernetes.api_client(env.kubernetes) as api:
        info = kubernetes.undo_rollout(api, svc.namespace, svc.deployment, to_revision=to_revision)
        kubernetes.wait_for_rollout(api, svc.namespace, svc.deployment, svc.rollout_timeout.total_seconds())
    return {**info, "seconds": round(time.monotonic() - started, 3)}


@task
def check_health(env: EnvironmentConfig, service: str) -> dict[str, Any]:
    svc = env.service(service)
    with httpx.Client(timeout=5.0) as client:
        waited = http_checks.wait_healthy(client, svc.health_urls, svc.rollout_timeout.total_seconds())
    if waited is None:
        raise CheckFailed(f"{service} is not healthy after the rollback: {', '.join(svc.health_urls)}")
    return {"healthy_after_seconds": round(waited, 3)}


def confirm(env: EnvironmentConfig, service: str) -> str:
    answer = pause_flow_run(wait_for_input=RollbackConfirmation.with_initial_data(
        description=f"Type {CONFIRM_WORD} to roll back {service} in {env.name}", confirm="", approver=""),
        timeout=4 * 3600, poll_interval=1)
    if answer.confirm.strip() != CONFIRM_WORD:
        raise PolicyRefused(f"rollback not confirmed: expected the word {CONFIRM_WORD}, got {answer.confirm!r}")
    if not answer.approver.strip():
        raise PolicyRefused("rollback confirmation needs the approver's name")
    return answer.approver


@flow(name="rollback")
def rollback(environment: str, service: str, to_revision: int | None = None,
             with_database: str | None = None) -> dict[str, Any]:
    """Roll a service back to its previous revision (or `to_revision`) and check its health.
    Protected environments ask for the word ROLLBACK first. With `with_database` (a backup
    id), the seeds' database rollback: the app's database is restored from that backup and
    swapped in first (restore-database: app scaled to 0, restore, swap), then the image."""
    from flows.restore_database import restore_database

    env = load_environment(environment)
    env.service(service)
    if to_revision is not None and to_revision < 1:
        raise ConfigError(f"to_revision {to_revision!r} must be a revision number >= 1, or empty for the previous one")
    database = env.database_of(service) if with_database else None
    approver = confirm(env, service) if env.protected else None
    outcome, error, info, health = "failed", None, {}, {}
    try:
        if database:
            restored = restore_database(env.name, database, backup_id=with_database, mode="swap")
            info["database"] = f"{database} restored from {with_database}, previous kept as {restored['names']['kept']}"
        info.update(undo(env, service, to_revision))
        health = check_health(env, service)
        outcome = "succeeded"
    except Exception as exc:
        error = scrub(str(exc))
        raise
    finally:
        rows = [{"figure": k, "value": v} for k, v in {**info, **health}.items()]
        rows += [{"figure": "approver", "value": approver or "(not required)"}]
        publish_report(artifact_key("rollback", env.name, service),
                       f"# Rollback of `{service}` in `{env.name}`: {outcome.upper()}\n\n"
                       + (f"**Error:** {error}\n\n" if error else "") + md_table(rows),
                       f"Rollback of {service} in {env.name}: {outcome}")
        emit(f"runbook.rollback.{outcome}", f"runbook.service.{env.name}.{service}",
             {"environment": env.name, "service": service, "approver": approver, "error": error, **info})
    return {"runbook": "rollback", "service": service, "approver": approver, **info, **health}
