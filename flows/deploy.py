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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import httpx
from prefect import flow, task
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.transactions import Transaction, transaction

from flows.backup import backup_database
from tasks import analysis, http_checks, kubernetes
from tasks.checks import Check
from tasks.config import IMAGE_RE, AnalysisConfig, EnvironmentConfig, ServiceConfig, load_environment
from tasks.errors import CheckFailed, ConfigError, PolicyRefused
from tasks.prefect_api import (
    artifact_key,
    emit,
    holding,
    md_table,
    publish_report,
    publish_table,
    remember_for_rollback,
)
from tasks.redact import scrub
from tasks.windows import active_freeze

LOCK_TIMEOUT = timedelta(minutes=30).total_seconds()
APPROVAL_TIMEOUT = int(timedelta(hours=4).total_seconds())


# --- inputs a human gives ---------------------------------------------------------------------------


class Approval(RunInput):
    """Approve or reject a deploy to a protected environment."""

    approve: bool
    approver: str
    reason: str = ""


class InconclusiveDecision(RunInput):
    """The analysis could not decide: promote the new version, or roll back."""

    action: Literal["promote", "rollback"]
    approver: str
    reason: str = ""


# --- validation (before any API call) --------------------------------------------------------------


def validate_image(image: Any, svc: ServiceConfig) -> str:
    if not isinstance(image, str):  # `--param image=20240101` arrives as an int
        raise ConfigError(f"image {image!r} must be a string like 'registry/app:v1.2.3' (got {type(image).__name__}); "
                          "quote it, or use deployments/ci/trigger.py")
    m = IMAGE_RE.match(image)
    if not m or not (m.group("tag") or m.group("digest")):
        raise ConfigError(f"image {image!r} is not an image reference with a tag or digest, "
                          "like 'registry.example.com/team/app:v1.2.3' or 'app@sha256:<64 hex>'")
    repo = "/".join(p for p in (m.group("registry"), m.group("repo")) if p)
    if svc.image_repository and repo != svc.image_repository:
        raise ConfigError(f"image {image!r} is not from repository {svc.image_repository!r}, "
                          f"the only one allowed for deployment {svc.deployment!r}")
    return image


def analysis_spec(cfg: AnalysisConfig) -> analysis.AnalysisSpec:
    def th(t: Any) -> analysis.Thresholds:
        return analysis.Thresholds(t.max_error_rate, t.max_latency_ms, t.require_healthy)

    return analysis.AnalysisSpec(
        interval_seconds=cfg.interval.total_seconds(), count=cfg.count, success=th(cfg.success),
        failure=th(cfg.failure), failure_limit=cfg.failure_limit, inconclusive_limit=cfg.inconclusive_limit,
        consecutive_error_limit=cfg.consecutive_error_limit,
    )


@dataclass
class DeployRecord:
    """What the report says: filled in step by step."""

    environment: str
    service: str
    image: str
    strategy: str
    outcome: str = "running"
    approver: str | None = None
    backup_id: str | None = None
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    analyses: list[dict[str, Any]] = field(default_factory=list)
    smoke: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    failure: str | None = None
    rolled_back: bool = False
    detected_at: float | None = None
    recovery_seconds: float | None = None
    migration: dict[str, Any] | None = None
    held_from: float | None = None  # when this run held the deploy lock (epoch seconds)
    held_until: float | None = None


# --- tasks ----------------------------------------------------------------------------------------------


def live_deployment(api: Any, svc: ServiceConfig) -> str:
    """The Deployment serving traffic: the service's own, or for blue-green the colour the
    live Service selects (`<deployment>-<colour>`)."""
    if svc.blue_green is None:
        return svc.deployment
    colour = kubernetes.service_selector(api, svc.namespace, svc.blue_green.service).get(kubernetes.COLOUR_LABEL)
    if not colour:
        raise ConfigError(f"Service {svc.blue_green.service!r} in {svc.namespace!r} selects no "
                          f"'{kubernetes.COLOUR_LABEL}' label: blue-green needs one")
    return f"{svc.deployment}-{colour}"


@task
def read_service_state(env: EnvironmentConfig, service: str) -> dict[str, Any]:
    """The image, revision and replicas the service runs now."""
    svc = env.service(service)
    with kubernetes.api_client(env.kubernetes) as api:
        name = live_deployment(api, svc)
        dep = kubernetes.read_deployment(api, svc.namespace, name)
    return {"image": kubernetes.container_image(dep, svc.container), "revision": kubernetes.current_revision(dep),
            "replicas": dep.get("spec", {}).get("replicas", 1), "deployment": name}


@task
def set_image(env: EnvironmentConfig, service: str, image: str, before: dict[str, Any]) -> dict[str, Any]:
    """`kubectl set image`: only the named container changes."""
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
    before = txn.get("before")
    with kubernetes.api_client(env.kubernetes) as api:
        revision = before.get("revision")  # None: not numbered yet; undo then picks the previous one
        kubernetes.undo_rollout(api, svc.namespace, svc.deployment,
                                to_revision=int(revision) if revision is not None else None)
        kubernetes.wait_for_rollout(api, svc.namespace, svc.deployment, svc.rollout_timeout.total_seconds())


@task
def wait_for_rollout(env: EnvironmentConfig, service: str, deployment: str | None = None) -> dict[str, Any]:
    """`kubectl rollout status` with the Deployment's progress deadline."""
    svc = env.service(service)
    started = time.monotonic()
    with kubernetes.api_client(env.kubernetes) as api:
        status = kubernetes.wait_for_rollout(api, svc.namespace, deployment or svc.deployment,
                                             svc.rollout_timeout.total_seconds())
    return {"message": status.message, "seconds": round(time.monotonic() - started, 3)}


@task
def run_analysis(spec_cfg: AnalysisConfig, health_urls: list[str], metrics_url: str | None,
                 label: str) -> dict[str, Any]:
    """Measure every interval until the analysis decides: Successful, Failed, Inconclusive or Error."""
    spec = analysis_spec(spec_cfg)
    measurements: list[analysis.Measurement] = []
    started_wall, started = time.time(), time.monotonic()
    with httpx.Client(timeout=5.0) as client:
        _, sample = http_checks.measure(client, [], metrics_url, None, 0.0)  # baseline counters
        while (due := analysis.next_due(measurements, spec)) is not None:
            due = max(due, spec.interval_seconds)  # the first measurement needs an interval of traffic
            time.sleep(max(0.0, due - (time.monotonic() - started)))
            m, sample = http_checks.measure(client, health_urls, metrics_url, sample, time.monotonic() - started)
            measurements.append(m)
    result = analysis.judge_run(measurements, spec)
    first_failed = None if result.first_failure_at is None else started_wall + result.first_failure_at
    return {"label": label, "phase": result.phase, "reasons": list(result.reasons),
            "rows": result.rows(measurements, spec), "first_failure_wall": first_failed,
            "seconds": round(time.monotonic() - started, 3)}


@task
def run_smoke_checks(env: EnvironmentConfig, service: str) -> list[Check]:
    svc = env.service(service)
    with httpx.Client() as client:
        return [http_checks.smoke_check(client, c) for c in svc.smoke_checks]


@task
def confirm_recovered(env: EnvironmentConfig, service: str, expected_image: str) -> dict[str, Any]:
    """After a rollback: the old image runs again and the health URLs answer 2xx."""
    svc = env.service(service)
    with kubernetes.api_client(env.kubernetes) as api:
        dep = kubernetes.read_deployment(api, svc.namespace, live_deployment(api, svc))
        image = kubernetes.container_image(dep, svc.container)
    with httpx.Client(timeout=5.0) as client:
        waited = http_checks.wait_healthy(client, svc.health_urls, svc.rollout_timeout.total_seconds())
    return {"image": image, "image_restored": image == expected_image, "healthy": waited is not None,
            "healthy_at": time.time() if waited is not None else None}


@task
def report_deploy(record: DeployRecord, svc: ServiceConfig) -> None:
    rec = record
    lines = [f"# Deploy of `{rec.service}` to `{rec.environment}`: {rec.outcome.upper()}", ""]
    if rec.failure:
        lines += [f"**What failed:** {rec.failure}", ""]
    lines += [md_table([
        {"figure": "strategy", "value": rec.strategy},
        {"figure": "image before", "value": rec.before.get("image", "")},
        {"figure": "image requested", "value": rec.image},
        {"figure": "image after", "value": rec.after.get("image", "")},
        {"figure": "revision before / after", "value": f"{rec.before.get('revision', '')} / {rec.after.get('revision', '')}"},
        {"figure": "approver", "value": rec.approver or "(not required)"},
        {"figure": "pre-deploy backup", "value": rec.backup_id or "(none)"},
        {"figure": "migration", "value": _migration_summary(rec.migration)},
        {"figure": "rolled back", "value": rec.rolled_back},
        {"figure": "time to recovery (s)", "value": "" if rec.recovery_seconds is None else f"{rec.recovery_seconds:.2f}"},
        {"figure": "service", "value": svc.url or ", ".join(svc.health_urls)},
        *({"figure": f"{k} seconds", "value": v} for k, v in rec.timings.items()),
    ]), ""]
    rows = []
    for a in rec.analyses:
        lines += [f"## Analysis: {a['label']}: {a['phase']}", "", *(f"- {r}" for r in a["reasons"][:5]), ""]
        lines += [md_table(a["rows"]), ""]
        rows += [{"analysis": a["label"], **r} for r in a["rows"]]
    if rec.smoke:
        lines += ["## Smoke checks", "", md_table(rec.smoke)]
    key = artifact_key("deploy", rec.environment, rec.service)
    publish_report(key, "\n".join(lines), f"Deploy of {rec.service} to {rec.environment}: {rec.outcome}")
    publish_table(artifact_key("deploy-analysis", rec.environment, rec.service), rows or [{"analysis": "(none)"}],
                  f"Analysis measurements of the deploy of {rec.service} to {rec.environment}")
    payload = {k: v for k, v in asdict(rec).items() if k not in ("analyses",)}
    resource = f"runbook.service.{rec.environment}.{rec.service}"
    if rec.outcome == "succeeded":
        emit("runbook.deploy.succeeded", resource, payload)
    else:
        emit("runbook.deploy.failed", resource, payload)
        if rec.rolled_back:
            emit("runbook.deploy.rolled-back", resource, payload)


def _migration_summary(migration: dict[str, Any] | None) -> str:
    if not migration:
        return "(none)"
    return ", ".join(f"{k}: {migration.get(k)}" for k in ("outcome", "applied", "schema_version", "backup_id"))


# --- steps a human takes ------------------------------------------------------------------------------


def ask_approval(env: EnvironmentConfig, service: str, image: str) -> str:
    """In a protected environment a person approves; the run pauses until then."""
    answer = pause_flow_run(wait_for_input=Approval.with_initial_data(
        description=f"Deploy {image} to {service} in {env.name}?", approve=False, approver="", reason=""),
        timeout=APPROVAL_TIMEOUT, poll_interval=1)
    if not answer.approver.strip():
        raise PolicyRefused("approval needs the approver's name")
    if not answer.approve:
        raise PolicyRefused(f"deploy rejected by {answer.approver}: {answer.reason or 'no reason given'}")
    return answer.approver


def ask_about_inconclusive(record: DeployRecord) -> None:
    decision = pause_flow_run(wait_for_input=InconclusiveDecision.with_initial_data(
        description=f"The analysis of {record.image} was inconclusive: promote or roll back?",
        action="rollback", approver="", reason=""), timeout=APPROVAL_TIMEOUT, poll_interval=1)
    record.approver = decision.approver or record.approver
    if decision.action != "promote":
        raise PolicyRefused(f"inconclusive analysis: {decision.approver or 'operator'} chose to roll back")


def gate(record: DeployRecord, result: dict[str, Any]) -> None:
    """Record an analysis and stop the deploy unless it passed (or a person promotes it)."""
    record.analyses.append(result)
    record.timings["analysis"] = round(record.timings.get("analysis", 0.0) + result["seconds"], 3)
    if result["phase"] == "Successful":
        return
    record.detected_at = result["first_failure_wall"] or time.time()
    if result["phase"] == "Inconclusive":
        ask_about_inconclusive(record)
        return
    raise CheckFailed(f"analysis {result['label']} {result['phase']}: {'; '.join(result['reasons'][:3])}")


# --- flows --------------------------------------------------------------------------------------------


@flow(name="deploy")
def deploy(environment: str, service: str, image: str,
           strategy: Literal["rolling", "blue-green"] | None = None,
           migrate: Literal["before", "after", "none"] = "none") -> dict[str, Any]:
    """Deploy `image` to `service`: preflight (one deploy at a time, freeze windows,
    approval in protected environments, optional pre-deploy backup), then a rolling or
    blue-green rollout gated by analysis and smoke checks. A failure after a change rolls
    back on its own; the run then ends Failed with the time to recovery. `migrate` runs the
    service's database migrations before the rollout or after it passed."""
    from flows.migrate import migrate_database

    env = load_environment(environment)
    svc = env.service(service)
    validate_image(image, svc)
    strategy = strategy or svc.strategy
    if strategy == "blue-green" and svc.blue_green is None:
        raise ConfigError(f"strategy 'blue-green' needs services.{service}.blue_green in {env.name}")
    if migrate not in ("before", "after", "none"):
        raise ConfigError(f"migrate {migrate!r} must be one of: before, after, none")
    database = env.database_of(service) if migrate != "none" else None
    record = DeployRecord(env.name, service, image, strategy)
    started = time.monotonic()
    try:
        with holding({artifact_key("deploy", env.name, service): 1}, timeout_seconds=LOCK_TIMEOUT), \
                held(record):
            freeze = active_freeze(env.deploy_freeze, datetime.now(UTC), ZoneInfo(env.timezone))
            if freeze is not None:
                raise PolicyRefused(f"deploys to {env.name} are frozen: window {freeze.name!r}")
            if env.protected:
                record.approver = ask_approval(env, service, image)
            if svc.backup_database:
                record.backup_id = backup_database(env.name, svc.backup_database)["backup_id"]
            record.before = read_service_state(env, service)
            if migrate == "before" and database:
                record.migration = migrate_database(env.name, database, image=image)
            if strategy == "rolling":
                rolling(env, service, image, record)
            else:
                blue_green(env, service, image, record)
            record.after = read_service_state(env, service)
            if migrate == "after" and database:
                # The new version passed its analysis; a failed migration now fails the run
                # but does not undo the image (the migration report says what to restore).
                record.migration = migrate_database(env.name, database, image=image)
            record.outcome = "succeeded"
    except Exception as exc:
        record.outcome = "failed"
        record.failure = scrub(str(exc))
        if record.rolled_back:
            recovered = confirm_recovered(env, service, record.before.get("image", ""))
            record.after = {**read_service_state(env, service), **recovered}
            if recovered["healthy_at"] and record.detected_at:
                record.recovery_seconds = round(recovered["healthy_at"] - record.detected_at, 3)
        record.timings["total"] = round(time.monotonic() - started, 3)
        report_deploy(record, svc)
        raise
    record.timings["total"] = round(time.monotonic() - started, 3)
    report_deploy(record, svc)
    return {"runbook": "deploy", **asdict(record), "artifact": artifact_key("deploy", env.name, service)}


@contextmanager
def held(record: DeployRecord) -> Iterator[None]:
    record.held_from = time.time()
    try:
        yield
    finally:
        record.held_until = time.time()


def rolling(env: EnvironmentConfig, service: str, image: str, record: DeployRecord) -> None:
    """set image, wait for the rollout, analysis, smoke checks; undo on any failure."""
    svc = env.service(service)
    changed = False
    try:
        with transaction():
            set_image(env, service, image, record.before)
            changed = True
            try:
                record.timings["rollout"] = wait_for_rollout(env, service)["seconds"]
            except CheckFailed:
                record.detected_at = time.time()
                raise
            gate(record, run_analysis(svc.analysis, svc.health_urls, svc.metrics_url, "after rollout"))
            smoke_gate(env, service, record)
    except Exception:
        record.rolled_back = changed  # the transaction's rollback hook undid the change
        raise


def smoke_gate(env: EnvironmentConfig, service: str, record: DeployRecord) -> None:
    results = run_smoke_checks(env, service)
    record.smoke = [{"check": c.name, "result": "pass" if c.passed else "FAIL", "detail": c.detail} for c in results]
    failed = [c for c in results if not c.passed]
    if failed:
        record.detected_at = time.time()
        raise CheckFailed("smoke checks failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed))


# --- blue-green ---------------------------------------------------------------------------------------


@task
def deploy_colour(env: EnvironmentConfig, service: str, colour: str, live: str, image: str,
                  replicas: int) -> dict[str, Any]:
    """`kubectl apply -f kubernetes/green/`: the idle colour gets the new image."""
    svc = env.service(service)
    remember_for_rollback(env=env, service=service, colour=colour)
    with kubernetes.api_client(env.kubernetes) as api:
        dep = kubernetes.ensure_colour_deployment(api, svc.namespace, svc.deployment, colour, image, svc.container,
                                                  replicas, template_from=f"{svc.deployment}-{live}")
    return {"deployment": dep["metadata"]["name"]}


@deploy_colour.on_rollback
def scale_colour_down(txn: Transaction) -> None:
    """Undo of deploy_colour: the new colour takes no traffic, so it goes to 0 replicas."""
    env: EnvironmentConfig = txn.get("env")
    svc = env.service(txn.get("service"))
    with kubernetes.api_client(env.kubernetes) as api:
        kubernetes.scale(api, svc.namespace, f"{svc.deployment}-{txn.get('colour')}", 0)


@task
def point_preview(env: EnvironmentConfig, service: str, colour: str) -> dict[str, Any]:
    """The preview Service selects the new colour, for the pre-promotion analysis."""
    svc = env.service(service)
    assert svc.blue_green is not None and svc.blue_green.preview_service is not None
    with kubernetes.api_client(env.kubernetes) as api:
        live = kubernetes.service_selector(api, svc.namespace, svc.blue_green.service)
        return kubernetes.set_service_selector(api, svc.namespace, svc.blue_green.preview_service,
                                               {**live, kubernetes.COLOUR_LABEL: colour})


@task
def switch_traffic(env: EnvironmentConfig, service: str, colour: str) -> dict[str, Any]:
    """`kubectl apply -f kubernetes/ingress-green.yaml`: the live Service selects the new colour."""
    svc = env.service(service)
    assert svc.blue_green is not None
    with kubernetes.api_client(env.kubernetes) as api:
        live = kubernetes.service_selector(api, svc.namespace, svc.blue_green.service)
        result = kubernetes.set_service_selector(api, svc.namespace, svc.blue_green.service,
                                                 {**live, kubernetes.COLOUR_LABEL: colour})
    remember_for_rollback(env=env, service=service, previous=result["previous"])
    return result


@switch_traffic.on_rollback
def switch_back(txn: Transaction) -> None:
    """Undo of switch_traffic: the live Service selects the old colour again."""
    env: EnvironmentConfig = txn.get("env")
    svc = env.service(txn.get("service"))
    assert svc.blue_green is not None
    with kubernetes.api_client(env.kubernetes) as api:
        kubernetes.set_service_selector(api, svc.namespace, svc.blue_green.service, txn.get("previous"))


@task
def retire_colour(env: EnvironmentConfig, service: str, colour: str) -> dict[str, Any]:
    """After the grace period, scale the old colour to 0 (kept, for a quick switch back)."""
    svc = env.service(service)
    assert svc.blue_green is not None
    time.sleep(svc.blue_green.grace.total_seconds())
    with kubernetes.api_client(env.kubernetes) as api:
        kubernetes.scale(api, svc.namespace, f"{svc.deployment}-{colour}", 0)
    return {"scaled_down": f"{svc.deployment}-{colour}", "after_seconds": svc.blue_green.grace.total_seconds()}


def blue_green(env: EnvironmentConfig, service: str, image: str, record: DeployRecord) -> None:
    """Deploy the idle colour, wait until available, analyse it through the preview, switch
    the live Service, analyse again; switch back on failure. Blue is never modified."""
    svc = env.service(service)
    bg = svc.blue_green
    assert bg is not None
    live = record.before["deployment"].removeprefix(f"{svc.deployment}-")
    new = "green" if live == "blue" else "blue"
    changed = False
    try:
        with transaction():
            deploy_colour(env, service, new, live, image, int(record.before["replicas"]))
            changed = True
            try:
                record.timings["rollout"] = wait_for_rollout(env, service, f"{svc.deployment}-{new}")["seconds"]
            except CheckFailed:
                record.detected_at = time.time()
                raise
            if bg.preview_service:
                point_preview(env, service, new)
            gate(record, run_analysis(bg.preview_analysis or svc.analysis, bg.preview_health_urls,
                                      bg.preview_metrics_url, f"pre-promotion ({new})"))
            switch_traffic(env, service, new)
            gate(record, run_analysis(svc.analysis, svc.health_urls, svc.metrics_url, "post-promotion"))
            smoke_gate(env, service, record)
    except Exception:
        record.rolled_back = changed
        raise
    record.timings["grace"] = retire_colour(env, service, live)["after_seconds"]


if __name__ == "__main__":
    import sys

    deploy(*sys.argv[1:4])
