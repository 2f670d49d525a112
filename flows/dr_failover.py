"""The seeds' failover procedure, with the steps they leave out:

    1. Detect primary failure        (primary_watch, or an operator with a reason)
    2. Promote read replica          assess the lag first; approve; fence the old primary;
                                     SELECT pg_promote(wait => true)
    3. Update DNS to new primary     aws route53 change-resource-record-sets ... wait INSYNC
    4. Deploy app to backup region   repoint the app's ConfigMap and restart it; scale the DR site
    5. Verify all services           a write and a read through the new primary; health checks
    6. Communicate                   the incident template, to the webhook, at start, each decision
                                     and the end

A planned switchover (`planned=True`) makes the old primary read-only, ends its sessions,
stops it, and waits until the standby has replayed its final LSN before promoting: nothing
committed is lost. An unplanned one promotes what the standby has, after checking that the
data at risk is within the configured limits (or `force=True`), and fences the old primary so
that it comes back read-only.

Every step is a checkpoint: a resumed run skips what it did, never promotes twice, and never
fences the node it promoted (the assessment, taken before any change, says which is which).
"""

from __future__ import annotations

from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.transactions import get_transaction, transaction

from flows.azure_failover import azure_failover
from tasks import (
    approvals,
    changes,
    checkpoints,
    dns,
    failover,
    http_checks,
    kubernetes,
    locks,
    replication,
    reports,
)
from tasks.checks import Check
from tasks.config import EnvironmentConfig, check_reason, load_environment
from tasks.dr_steps import announce, emit_step, now_iso, repoint_services
from tasks.errors import CheckFailed, PolicyRefused
from tasks.faults import fault_point
from tasks.naming import artifact_key, namer
from tasks.prefect_api import HOOKS, holding, resume_attempt
from tasks.records import DrRecord

LOCK_TIMEOUT = 600


@task(**checkpoints.CHECKPOINT)
def assess_pair(env: EnvironmentConfig, last_known_lsn: int | None) -> failover.Assessment:
    """The checkpoint: which node is the primary, which takes over, and the data at risk, as
    the first attempt saw them before anything changed."""
    cfg = env.dr_pair()
    views = replication.look_all(cfg, cfg.watch.probe_timeout.total_seconds())
    roles = failover.identify(views)
    if roles.problem:
        raise PolicyRefused(f"no failover: {roles.problem}")
    return failover.assess(roles, views, last_known_lsn)


@task(**checkpoints.EFFECT)
def fence_old_primary(env: EnvironmentConfig, node: str, planned: bool) -> replication.Fenced:
    """Make the old primary refuse writes: read-only and its sessions ended when it answers,
    standby.signal in its data directory always, and stopped (after the standby caught up,
    for a switchover) when the config says so or when it runs without answering."""
    cfg = env.dr_pair()
    fenced = replication.fence(cfg, node, stop=cfg.fencing.method == "stop")
    get_transaction().set("fenced", fenced)
    emit_step(env, "fenced", {"node": node, "detail": fenced.describe()})
    return fenced


@fence_old_primary.on_rollback
def unfence(txn: Any) -> None:
    """Undo the fence while the standby is still a standby: nothing was promoted, so the old
    primary must take writes again. Once a promotion happened, never (split brain)."""
    env: EnvironmentConfig = txn.get("env")
    cfg = env.dr_pair()
    old, target = txn.get("pair")
    if replication.look(target, cfg.node(target), cfg.watch.probe_timeout.total_seconds()).role == "primary":
        return
    fenced: replication.Fenced | None = txn.get("fenced", None)
    replication.unfence(cfg, old, restart=fenced is not None and fenced.reachable and fenced.stopped)
    emit_step(env, "unfenced", {"node": old})


@task(**checkpoints.OBSERVE)
def wait_caught_up(env: EnvironmentConfig, target: str, final_lsn: int | None) -> dict[str, Any]:
    """A switchover's zero data loss: the standby replays the old primary's final LSN."""
    cfg = env.dr_pair()
    if final_lsn is None:
        raise CheckFailed("the old primary's final LSN is unknown: not promoting, so nothing is lost")
    seconds = replication.wait_replayed(cfg.node(target), final_lsn, cfg.promote_timeout.total_seconds())
    return {"at": now_iso(), "detail": f"replayed {failover.lsn_text(final_lsn)} in {seconds} s"}


@task(**checkpoints.EFFECT)
def promote_standby(env: EnvironmentConfig, target: str, timeline_before: int | None) -> replication.Promoted:
    """SELECT pg_promote(wait => true), unless it is out of recovery already; then it is out of
    recovery on a new timeline, and takes writes."""
    cfg = env.dr_pair()
    promoted = replication.promote(cfg.node(target), target, cfg.promote_timeout.total_seconds(), timeline_before)
    replication.reset_read_only(cfg.node(target))
    emit_step(env, "promoted", {"node": target, "timeline": promoted.timeline, "promoted_now": promoted.promoted_now})
    return promoted


@task(**checkpoints.EFFECT)
def repoint_apps(env: EnvironmentConfig, target: str) -> dict[str, Any]:
    """The app's ConfigMap (or Secret) gets the new primary's address, and its Deployments
    restart to pick it up (`kubectl rollout restart`), then roll out."""
    cfg = env.dr_pair()
    if cfg.repoint is None:
        return {"at": now_iso(), "detail": "no dr.repoint configured"}
    fault_point("dr.before-repoint")
    node = cfg.node(target)
    detail = repoint_services(env, cfg.repoint, node.host, node.port)
    emit_step(env, "repointed", {"node": target, "services": ",".join(cfg.repoint.services)})
    return {"at": now_iso(), "detail": detail}


@task(**checkpoints.EFFECT)
def update_dns(env: EnvironmentConfig, target: str) -> dict[str, Any]:
    """UPSERT the database's CNAME to the new primary's name, then wait until Route53 says INSYNC."""
    cfg = env.dr_pair()
    if cfg.dns is None:
        return {"at": now_iso(), "detail": "no dr.dns configured"}
    name = cfg.node(target).dns_name
    with dns.client(cfg.dns) as r53:
        change = dns.upsert_cname(r53, cfg.dns, name)
        if change is not None:
            dns.wait_insync(r53, change, cfg.dns.timeout.total_seconds())
    emit_step(env, "dns-updated", {"record": cfg.dns.record, "target": name})
    return {"at": now_iso(), "detail": f"{cfg.dns.record} -> {name}" + (" (INSYNC)" if change else " (already)")}


@task(**checkpoints.EFFECT)
def scale_dr_site(env: EnvironmentConfig) -> dict[str, Any]:
    """The seeds' "deploy the app to the backup region": its Deployments scaled up there."""
    site = env.dr_pair().dr_site
    if site is None:
        return {"at": now_iso(), "detail": "no dr.dr_site configured"}
    with kubernetes.api_client(site.kubernetes or env.kubernetes) as api:
        for name, replicas in site.deployments.items():
            kubernetes.scale(api, site.namespace, name, replicas)
        for name in site.deployments:
            kubernetes.wait_for_rollout(api, site.namespace, name, env.dr_pair().promote_timeout.total_seconds())
    return {"at": now_iso(), "detail": ", ".join(f"{site.namespace}/{n} at {r}" for n, r in site.deployments.items())}


@task(**checkpoints.OBSERVE)
def validate(env: EnvironmentConfig, target: str, old: str) -> tuple[list[Check], str]:
    """One write and its read through the new primary, the apps' health checks, and the old
    primary refusing writes. Returns the checks and when the apps answered healthy."""
    cfg = env.dr_pair()
    checks = []
    try:
        wrote = replication.write_and_read(cfg.node(target), cfg.database)
        checks.append(Check("write and read through the new primary", True, f"{wrote['server']}/{wrote['database']}"))
    except CheckFailed as exc:
        checks.append(Check("write and read through the new primary", False, str(exc)))
    urls = [u for s in (cfg.repoint.services if cfg.repoint else []) for u in env.service(s).health_urls]
    with http_checks.client(cfg.watch.probe_timeout) as http:
        took = http_checks.wait_healthy(http, urls, cfg.promote_timeout.total_seconds()) if urls else 0.0
        detail = (f"{len(urls)} health URL(s) answered 2xx" if took is not None else
                  f"not healthy within {cfg.promote_timeout.total_seconds():g} s: {http_checks.probe_health(http, urls)[1]}")
    checks.append(Check("applications healthy", took is not None, detail))
    old_view = replication.look(old, cfg.node(old), cfg.watch.probe_timeout.total_seconds())
    checks.append(Check("old primary refuses writes", old_view.role != "primary" or bool(old_view.read_only),
                        f"{old}: {old_view.role}{', read-only' if old_view.read_only else ''}"))
    return checks, now_iso()


# --- steps -----------------------------------------------------------------------------------------


def fence_and_promote(env: EnvironmentConfig, a: failover.Assessment, planned: bool, record: DrRecord) -> None:
    """Fence the old primary, (planned) wait until the standby replayed its final LSN, promote:
    one transaction, whose rollback unfences while nothing was promoted."""
    with transaction() as txn:
        txn.set("env", env)
        txn.set("pair", (a.old_primary, a.target))
        fenced = fence_old_primary(env, a.old_primary, planned)
        record.step(now_iso(), "fenced", f"{a.old_primary}: {fenced.describe()}")
        if planned:
            record.step(**wait_caught_up(env, a.target, fenced.final_lsn), step="caught up")
        promoted = promote_standby(env, a.target, a.timeline)
    record.step(promoted.at.isoformat(), "promoted", f"{a.target} on timeline {promoted.timeline}")
    record.figures.update(reports.rpo_figures(a, fenced, promoted))


@flow(name="dr-failover", flow_run_name=namer("dr-failover"), **HOOKS)
def dr_failover(environment: str, reason: str, planned: bool = False, force: bool = False,
                down_since: datetime | None = None, last_known_lsn: int | None = None, emergency: bool = False,
                emergency_reason: str | None = None) -> dict[str, Any]:
    """Promote the standby (with no `dr` section: an Azure flexible server's replica) in place of
    the primary, repoint the apps and DNS to it, check it takes writes and the apps are healthy,
    and tell the incident channel at each step. In a protected environment an approval shows the
    assessment first. Refuses when the data at risk is over the limits, unless force=True.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        reason: Why, for the record and the incident channel (the incident, what was seen).
        planned: A switchover: the old primary is made read-only and stopped, and the standby
            replays everything it wrote before it is promoted. Nothing is lost.
        force: Go ahead although the data at risk is over the configured limits.
        down_since: When the primary was first seen down (primary_watch passes it).
        last_known_lsn: The newest LSN known of the primary, as a byte position, if any.
        emergency: A switchover outside the windows or in a freeze, after an approval (unplanned: never needed).
        emergency_reason: Why the switchover cannot wait for the next window (required with emergency).
    """
    env = load_environment(environment)
    if env.dr is None and (db := env.azure_replicated()):  # an Azure server and its replica
        return azure_failover(environment, db, reason, planned, emergency, emergency_reason)
    record = DrRecord("dr-failover", env.name, reason=check_reason(reason), planned=planned, force=force)
    env.check_dr_secrets()
    record.resumed(resume_attempt())
    with ExitStack() as held:
        try:
            if planned:  # an unplanned failover is never blocked: no window, no waiting for a maintenance run
                changes.admit(env, "dr-failover", record, emergency=emergency, emergency_reason=emergency_reason)
                held.enter_context(changes.one_change(env, "dr-failover"))
            held.enter_context(holding(locks.dr(env), timeout_seconds=LOCK_TIMEOUT))
            a = assess_pair(env, last_known_lsn)
            record.assessed(a.old_primary, a.target, a.assessed_at.isoformat(), reports.assessment_figures(a))
            announce(env, reports.dr_announcement(env, record, "started"))
            reports.publish(reports.dr(record))  # the assessment, in the artifact before anything changes
            record.decision = (decision := failover.decide(a, env.dr_pair().lag, planned=planned, force=force)).summary
            announce(env, reports.dr_announcement(env, record, "decided"))
            if not decision.go:
                raise PolicyRefused(f"failover refused: {decision.summary}")
            if env.protected:
                record.approver = approvals.ask_approval(reports.dr_question(env.name, record, down_since,
                                                                             datetime.now(UTC)), "failover")
            record.decided_at = now_iso()
            record.step(record.decided_at, "decided", decision.summary)
            fence_and_promote(env, a, planned, record)
            record.step(**repoint_apps(env, a.target), step="repointed")
            record.step(**update_dns(env, a.target), step="DNS updated")
            record.step(**scale_dr_site(env), step="DR site scaled")
            record.checks, record.healthy_at = validate(env, a.target, a.old_primary)
            record.step(record.healthy_at, "validated", record.failed_checks() or "all checks passed")
            record.outcome = "succeeded" if record.passed else "failed"
        except BaseException as exc:
            record.fail(exc)
            raise
        finally:
            announce(env, reports.dr_announcement(env, record, "ended"))
            reports.publish(reports.dr(record))
    if not record.passed:
        raise CheckFailed(f"failover checks failed: {record.failed_checks()}")
    return reports.dr_summary(record, artifact_key("dr-failover", env.name))


if __name__ == "__main__":
    import sys

    dr_failover(sys.argv[1] if len(sys.argv) > 1 else "sandbox", " ".join(sys.argv[2:]) or "manual failover")
