"""Deploy a new image, as the seeds' runbooks do it by hand:

    kubectl set image deployment/backend backend=sevfleet/backend:v2.1.0
    kubectl rollout status deployment/backend
    curl -f https://api.sevfleet.com/actuator/health
    # error rate > 5%: kubectl rollout undo deployment/backend

and the blue-green variant: apply green, wait until available, switch traffic, verify,
scale blue down. Here the checks are an analysis gate with explicit verdicts, a failed
deploy undoes itself (Prefect transaction rollback hooks), and the run leaves a report of
what changed, every measurement, the approver and the time to recovery.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import timedelta
from typing import Any, Literal

from prefect import flow, task
from prefect.transactions import Transaction, transaction

from flows.backup import backup_database
from flows.migrate import migrate_database
from tasks import (
    analysis,
    approvals,
    changes,
    checkpoints,
    checks,
    http_checks,
    kubernetes,
    locks,
    reports,
    retries,
    rollout,
)
from tasks.checks import Check
from tasks.config import AnalysisConfig, EnvironmentConfig, check_choice, load_environment, validate_image
from tasks.errors import CheckFailed
from tasks.faults import fault_point
from tasks.naming import artifact_key, namer
from tasks.prefect_api import HOOKS, holding, remember_for_rollback, resume_attempt
from tasks.records import DeployRecord, held

LOCK_TIMEOUT = timedelta(minutes=30).total_seconds()
MIGRATE_STEPS = ("none", "before", "after")


# --- tasks: rolling ---------------------------------------------------------------------------------


def _service_state(env: EnvironmentConfig, service: str) -> dict[str, Any]:
    svc = env.service(service)
    with kubernetes.api_client(env.kubernetes) as api:
        name = kubernetes.live_deployment(api, svc)
        dep = kubernetes.read_deployment(api, svc.namespace, name)
    return {"image": kubernetes.container_image(dep, svc.container), "revision": kubernetes.current_revision(dep),
            "replicas": dep.get("spec", {}).get("replicas", 1), "deployment": name}


@task(**retries.policy("kubernetes"), **checkpoints.CHECKPOINT)
def remember_service_state(env: EnvironmentConfig, service: str) -> dict[str, Any]:
    """The checkpoint: the image, revision and replicas the service ran before this deploy.
    A resumed attempt compares with this, not with what its first attempt changed."""
    return _service_state(env, service)


@task(**retries.policy("kubernetes"), **checkpoints.OBSERVE)
def read_service_state(env: EnvironmentConfig, service: str) -> dict[str, Any]:
    """The image, revision and replicas the service runs now."""
    return _service_state(env, service)


@task(**checkpoints.EFFECT)
def set_image(env: EnvironmentConfig, service: str, image: str, before: dict[str, Any]) -> dict[str, Any]:
    """`kubectl set image`: only the named container changes; a no-op when it runs the image."""
    svc = env.service(service)
    remember_for_rollback(env=env, service=service, before=before)
    with kubernetes.api_client(env.kubernetes) as api:
        dep = kubernetes.patch_container_image(api, svc.namespace, svc.deployment, svc.container, image)
    return {"generation": dep.get("metadata", {}).get("generation")}


@set_image.on_rollback
def undo_image(txn: Transaction) -> None:
    """`kubectl rollout undo` to the revision that ran before, then wait for it."""
    env: EnvironmentConfig = txn.get("env")
    svc = env.service(txn.get("service"))
    revision = txn.get("before").get("revision")  # None: not numbered yet; undo then picks the previous one
    with kubernetes.api_client(env.kubernetes) as api:
        kubernetes.undo_rollout(api, svc.namespace, svc.deployment,
                                to_revision=int(revision) if revision is not None else None)
        kubernetes.wait_for_rollout(api, svc.namespace, svc.deployment, svc.rollout_timeout.total_seconds())


@task(**checkpoints.OBSERVE)
def wait_for_rollout(env: EnvironmentConfig, service: str, deployment: str | None = None) -> dict[str, Any]:
    """`kubectl rollout status` with the Deployment's progress deadline."""
    svc = env.service(service)
    started = time.monotonic()
    with kubernetes.api_client(env.kubernetes) as api:
        status = kubernetes.wait_for_rollout(api, svc.namespace, deployment or svc.deployment,
                                             svc.rollout_timeout.total_seconds())
    return {"message": status.message, "seconds": round(time.monotonic() - started, 3)}


@task(**checkpoints.OBSERVE)
def run_analysis(env: EnvironmentConfig, service: str, cfg: AnalysisConfig, health_urls: list[str],
                 metrics_url: str | None, label: str) -> dict[str, Any]:
    """Measure every interval until the analysis decides: Successful, Failed, Inconclusive or Error."""
    with http_checks.client(env.service(service).http_timeout) as client:
        return http_checks.run_analysis(client, analysis.spec_of(cfg), health_urls, metrics_url, label)


@task(**checkpoints.OBSERVE)
def run_smoke_checks(env: EnvironmentConfig, service: str) -> list[Check]:
    svc = env.service(service)
    with http_checks.client(svc.http_timeout) as client:
        return [http_checks.smoke_check(client, c) for c in svc.smoke_checks]


@task(**checkpoints.OBSERVE)
def confirm_recovered(env: EnvironmentConfig, service: str, expected_image: str) -> dict[str, Any]:
    """After a rollback: the old image runs again and the health URLs answer 2xx."""
    svc = env.service(service)
    with kubernetes.api_client(env.kubernetes) as api:
        dep = kubernetes.read_deployment(api, svc.namespace, kubernetes.live_deployment(api, svc))
        image = kubernetes.container_image(dep, svc.container)
    with http_checks.client(svc.http_timeout) as client:
        waited = http_checks.wait_healthy(client, svc.health_urls, svc.rollout_timeout.total_seconds())
    return {"image": image, "image_restored": image == expected_image, "healthy": waited is not None,
            "healthy_at": time.time() if waited is not None else None}


# --- tasks: blue-green --------------------------------------------------------------------------------


@task(**checkpoints.EFFECT)
def deploy_colour(env: EnvironmentConfig, service: str, colour: str, live: str, image: str,
                  replicas: int) -> dict[str, Any]:
    """`kubectl apply -f kubernetes/green/`: the idle colour gets the new image."""
    svc = env.service(service)
    remember_for_rollback(env=env, service=service, colour=colour)
    with kubernetes.api_client(env.kubernetes) as api:
        dep = kubernetes.ensure_colour_deployment(api, svc.namespace, svc.deployment, colour, image, svc.container,
                                                  replicas, template_from=rollout.colour_name(svc.deployment, live))
    return {"deployment": dep["metadata"]["name"]}


@deploy_colour.on_rollback
def scale_colour_down(txn: Transaction) -> None:
    """Undo of deploy_colour: the new colour takes no traffic, so it goes to 0 replicas."""
    env: EnvironmentConfig = txn.get("env")
    svc = env.service(txn.get("service"))
    with kubernetes.api_client(env.kubernetes) as api:
        kubernetes.scale(api, svc.namespace, rollout.colour_name(svc.deployment, txn.get("colour")), 0)


@task(**checkpoints.EFFECT)
def point_preview(env: EnvironmentConfig, service: str, colour: str, live: str) -> dict[str, Any]:
    """The preview Service selects the new colour, for the pre-promotion analysis."""
    with kubernetes.api_client(env.kubernetes) as api:
        return kubernetes.point_preview(api, env.service(service), colour, live)


@task(**checkpoints.EFFECT)
def switch_traffic(env: EnvironmentConfig, service: str, colour: str, live: str) -> dict[str, Any]:
    """`kubectl apply -f kubernetes/ingress-green.yaml`: the live Service selects the new
    colour, or the Ingress routes to the new colour's Service."""
    with kubernetes.api_client(env.kubernetes) as api:
        result = kubernetes.route_to_colour(api, env.service(service), colour, live)
    remember_for_rollback(env=env, service=service, previous=result["previous"])
    return result


@switch_traffic.on_rollback
def switch_back(txn: Transaction) -> None:
    """Undo of switch_traffic: traffic goes to the old colour again."""
    env: EnvironmentConfig = txn.get("env")
    with kubernetes.api_client(env.kubernetes) as api:
        kubernetes.route_back(api, env.service(txn.get("service")), txn.get("previous"))


@task(**checkpoints.EFFECT)
def retire_colour(env: EnvironmentConfig, service: str, colour: str) -> dict[str, Any]:
    """After the grace period, scale the old colour to 0 (kept, for a quick switch back)."""
    svc = env.service(service)
    assert svc.blue_green is not None
    time.sleep(svc.blue_green.grace.total_seconds())
    with kubernetes.api_client(env.kubernetes) as api:
        kubernetes.scale(api, svc.namespace, rollout.colour_name(svc.deployment, colour), 0)
    return {"scaled_down": rollout.colour_name(svc.deployment, colour),
            "after_seconds": svc.blue_green.grace.total_seconds()}


# --- gates -------------------------------------------------------------------------------------------


def rollout_gate(env: EnvironmentConfig, service: str, record: DeployRecord, deployment: str | None = None) -> None:
    """The rollout finishes within its progress deadline, or the deploy stops."""
    try:
        record.timings["rollout"] = wait_for_rollout(env, service, deployment)["seconds"]
    except CheckFailed:
        record.detected_at = time.time()
        raise


def analysis_gate(record: DeployRecord, result: dict[str, Any]) -> None:
    """Record an analysis and stop the deploy unless it passed, or a person promotes it."""
    record.analyses.append(result)
    record.timings["analysis"] = round(record.timings.get("analysis", 0.0) + result["seconds"], 3)
    if result["phase"] == "Successful":
        return
    record.detected_at = result["first_failure_wall"] or time.time()
    if result["phase"] == "Inconclusive":
        record.approver = approvals.ask_promotion(
            f"The analysis of {record.image} was inconclusive: promote or roll back?") or record.approver
        return
    raise CheckFailed(f"analysis {result['label']} {result['phase']}: {'; '.join(result['reasons'][:3])}")


def smoke_gate(env: EnvironmentConfig, service: str, record: DeployRecord) -> None:
    record.smoke = run_smoke_checks(env, service)
    failed = checks.failures(record.smoke)
    if failed:
        record.detected_at = time.time()
        raise CheckFailed(f"smoke checks failed: {failed}")


# --- the two strategies ---------------------------------------------------------------------------


def rolling(env: EnvironmentConfig, service: str, image: str, record: DeployRecord) -> None:
    """set image, wait for the rollout, analysis, smoke checks; undo on any failure."""
    svc = env.service(service)
    try:
        with transaction():
            set_image(env, service, image, record.before)
            record.changed = True
            fault_point("deploy.after-set-image")
            rollout_gate(env, service, record)
            analysis_gate(record, run_analysis(env, service, svc.analysis, svc.health_urls, svc.metrics_url,
                                               "after rollout"))
            smoke_gate(env, service, record)
    except BaseException:  # a failure, or a cancel's SIGTERM: the same undo
        record.rolled_back = record.changed  # the transaction's rollback hook undid the change
        raise


def blue_green(env: EnvironmentConfig, service: str, image: str, record: DeployRecord) -> None:
    """Deploy the idle colour, wait until available, analyse it through the preview, switch
    traffic (the live Service's selector or the Ingress), analyse again; switch back on
    failure. The live colour is never modified."""
    svc = env.service(service)
    bg = svc.blue_green
    assert bg is not None
    live = rollout.colour_of(svc.deployment, record.before["deployment"]) or ""
    new = rollout.other_colour(live)
    try:
        with transaction():
            deploy_colour(env, service, new, live, image, int(record.before["replicas"]))
            record.changed = True
            rollout_gate(env, service, record, rollout.colour_name(svc.deployment, new))
            if bg.preview_service:
                point_preview(env, service, new, live)
            analysis_gate(record, run_analysis(env, service, bg.preview_analysis or svc.analysis,
                                               bg.preview_health_urls, bg.preview_metrics_url,
                                               f"pre-promotion ({new})"))
            switch_traffic(env, service, new, live)
            analysis_gate(record, run_analysis(env, service, svc.analysis, svc.health_urls, svc.metrics_url,
                                               "post-promotion"))
            smoke_gate(env, service, record)
    except BaseException:  # a failure, or a cancel's SIGTERM: the same undo
        record.rolled_back = record.changed
        raise
    record.timings["grace"] = retire_colour(env, service, live)["after_seconds"]


ROLLOUTS = {"rolling": rolling, "blue-green": blue_green}


def check_recovery(env: EnvironmentConfig, service: str, record: DeployRecord) -> None:
    """After an automatic rollback: the old image runs and is healthy; the time to recovery."""
    recovered = confirm_recovered(env, service, record.before.get("image", ""))
    record.after = {**read_service_state(env, service), **recovered}
    record.recovered(recovered["healthy_at"])


# --- flow ------------------------------------------------------------------------------------------


@flow(name="deploy", flow_run_name=namer("deploy"), **HOOKS)
def deploy(environment: str, service: str, image: str,
           strategy: Literal["from config", "rolling", "blue-green"] = "from config",
           migrate: Literal["none", "before", "after"] = "none", emergency: bool = False,
           emergency_reason: str | None = None) -> dict[str, Any]:
    """Deploy an image to a service: preflight (one change to the environment at a time,
    maintenance windows and freezes, approval in protected environments, optional pre-deploy
    backup), then a rolling or
    blue-green rollout gated by analysis and smoke checks. A failure after a change rolls
    back on its own; the run then ends Failed with the time to recovery.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        service: The service to deploy, as named under `services` in the environment.
        image: The image to run, with a tag or digest, like registry.example.com/team/app:v1.2.3.
        strategy: Rolling (kubectl set image) or blue-green (the idle colour, then a traffic switch);
            "from config" uses the service's `strategy`.
        migrate: Run the service's database migrations before the rollout, after it passed, or not at all.
        emergency: A hotfix outside the maintenance windows or inside a freeze: goes ahead after an approval.
        emergency_reason: Why it cannot wait for the next window (required with emergency).
    """
    env = load_environment(environment)
    svc = env.service(service)
    validate_image(image, svc)
    record = DeployRecord(env.name, service, image, env.deploy_strategy(service, strategy))
    record.resumed(resume_attempt())
    check_choice("migrate", migrate, MIGRATE_STEPS)
    database = env.database_of(service) if migrate != "none" else None
    started = time.monotonic()
    try:
        record.approver = changes.admit(env, "deploy", record, emergency=emergency,
                                        emergency_reason=emergency_reason)
        with changes.one_change(env, "deploy"), holding(locks.deploy(env, service), timeout_seconds=LOCK_TIMEOUT), \
                held(record):
            if env.protected and record.approver is None:
                record.approver = approvals.ask_approval(f"Deploy {image} to {service} in {env.name}?")
            if svc.backup_database:
                record.backup_id = backup_database(env.name, svc.backup_database)["backup_id"]
            record.before = remember_service_state(env, service)
            if migrate == "before":
                record.migration = migrate_database(env.name, database, image=image)
            ROLLOUTS[record.strategy](env, service, image, record)
            record.after = read_service_state(env, service)
            if migrate == "after":
                # The new version passed its analysis; a failed migration now fails the run
                # but does not undo the image (the migration report says what to restore).
                record.migration = migrate_database(env.name, database, image=image)
            record.outcome = "succeeded"
    except BaseException as exc:  # a failure, or a cancel's SIGTERM
        record.fail(exc)
        if record.rolled_back:
            check_recovery(env, service, record)
        raise
    finally:
        record.timings["total"] = round(time.monotonic() - started, 3)
        reports.publish(reports.deploy(record, svc))
    return {"runbook": "deploy", **asdict(record), "artifact": artifact_key("deploy", env.name, service)}


if __name__ == "__main__":
    import sys

    deploy(*sys.argv[1:4])
