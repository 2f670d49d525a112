"""The Fleet Management runbook's "database issue: failover if needed", on Azure:

    az postgres flexible-server replica promote --resource-group <rg> --name <replica> \\
        --promote-mode switchover|standalone --promote-option planned|forced
    # repoint the application: the virtual endpoint, or the app's Secret
    # verify: a write and a read through the new primary

A planned promotion (`planned=True`) waits until the replica has everything the primary
wrote: nothing is lost. A forced one promotes what the replica has, because the primary is
gone. With a virtual endpoint configured the promotion is a switchover: the roles swap and
the read-write endpoint follows the new primary; without one the replica becomes a standalone
server. Either way the run then repoints what is configured, checks a write and a read
through the new primary, and reports like every DR runbook.

Every step checks Azure's own state first: a re-run finds the replica already promoted and
never promotes twice, and an operation still running is polled, not started again.
"""

from __future__ import annotations

from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

from prefect import flow, task

from tasks import approvals, azure, azure_plan, changes, checkpoints, locks, postgres, reports, retries
from tasks.checks import Check
from tasks.config import AzureServerConfig, EnvironmentConfig, check_reason, load_environment
from tasks.dr_steps import announce, emit_step, now_iso, repoint_services
from tasks.errors import CheckFailed, ConfigError, PolicyRefused
from tasks.faults import fault_point
from tasks.naming import artifact_key, namer
from tasks.prefect_api import HOOKS, holding, resume_attempt
from tasks.records import DrRecord

LOCK_TIMEOUT = 600


def _azure(env: EnvironmentConfig, database: str) -> AzureServerConfig:
    cfg = env.database(database).azure_server()
    if cfg.replica is None:
        raise ConfigError(f"database {database!r} in {env.name!r} has no azure.replica: there is nothing to "
                          "promote")
    return cfg


@task(**retries.policy("azure"), **checkpoints.CHECKPOINT)
def assess_servers(env: EnvironmentConfig, database: str) -> dict[str, Any]:
    """The checkpoint: which server is the primary and which is promoted, as Azure reported them
    before anything changed. A promotion that already happened is found, not repeated."""
    cfg = _azure(env, database)
    assert cfg.replica is not None
    with azure.client(cfg) as arm:
        server, replica = azure.get_server(arm, cfg, cfg.server), azure.get_server(arm, cfg, cfg.replica)
        listed = [r.name for r in azure.replicas_of(arm, cfg, cfg.server)] if server else []
    roles = azure_plan.identify(cfg.server, cfg.replica, server.role if server else None,
                                replica.role if replica else None, replica.source if replica else None,
                                server.source if server else None)
    if roles.problem:
        raise PolicyRefused(f"no promotion: {roles.problem}")
    return {"primary": roles.primary, "replica": roles.target, "assessed at": now_iso(), "data at risk (bytes)": "not reported by Azure",
            "data at risk (seconds)": "not reported by Azure", "replication state":
            (replica.replication_state if replica else None) or "-", "replicas of the primary": ", ".join(listed)
            or "-", "primary state": server.describe() if server else "missing"}


@task(**retries.policy("azure"), **checkpoints.EFFECT)
def promote_replica(env: EnvironmentConfig, database: str, replica: str, promotion: azure_plan.Promotion
                    ) -> dict[str, Any]:
    """Promote the replica, unless Azure already shows it as a primary; wait until it is Ready."""
    cfg = _azure(env, database)
    with azure.client(cfg) as arm:
        now = azure.get_server(arm, cfg, replica)
        if now is not None and now.role.endswith("AsyncReplica"):
            _, resumed, seconds = azure.run_operation(
                arm, cfg, env.name, "promotion", replica,
                lambda: azure.start_promote(arm, cfg, replica, promotion.mode, promotion.option))
        else:
            resumed, seconds = False, 0.0
        after = azure.get_server(arm, cfg, replica)
    if after is None or after.role.endswith("AsyncReplica") or after.state != "Ready" or not after.fqdn:
        raise CheckFailed(f"the promotion of {replica} finished, but it is {after.describe() if after else 'gone'}")
    emit_step(env, "promoted", {"node": replica, "mode": promotion.mode, "option": promotion.option})
    return {"at": now_iso(), "fqdn": after.fqdn, "seconds": seconds, "resumed": resumed,
            "detail": f"{replica} is {after.role} ({promotion.mode}, {promotion.option}) after {seconds} s"}


@task(**retries.policy("azure"), **checkpoints.EFFECT)
def repoint(env: EnvironmentConfig, database: str, primary: str, fqdn: str) -> dict[str, Any]:
    """The virtual endpoint's read-write member becomes the new primary (Azure moves it in a
    switchover; set here otherwise), and the app's Secret or ConfigMap gets its FQDN."""
    cfg = _azure(env, database)
    fault_point("azure.before-repoint")
    done: list[str] = []
    if cfg.virtual_endpoint:
        with azure.client(cfg) as arm:
            ve = azure.get_virtual_endpoint(arm, cfg, primary, cfg.virtual_endpoint)
            if ve.members != [primary]:
                azure.run_operation(arm, cfg, env.name, "repoint", cfg.virtual_endpoint,
                                    lambda: azure.start_repoint(arm, cfg, primary, cfg.virtual_endpoint or "", primary))
                ve = azure.get_virtual_endpoint(arm, cfg, primary, cfg.virtual_endpoint)
        if ve.members != [primary]:
            raise CheckFailed(f"virtual endpoint {ve.name} points at {ve.members}, not {primary}")
        done.append(f"virtual endpoint {ve.name} ({', '.join(ve.addresses) or 'no address'}) -> {primary}")
    if cfg.repoint:
        done.append(repoint_services(env, cfg.repoint, fqdn, cfg.port))
    emit_step(env, "repointed", {"node": primary, "detail": "; ".join(done) or "nothing configured"})
    return {"at": now_iso(), "detail": "; ".join(done) or "no virtual_endpoint or repoint configured"}


@task(**retries.policy("postgres"), **checkpoints.OBSERVE)
def verify_primary(env: EnvironmentConfig, database: str, fqdn: str) -> tuple[list[Check], str]:
    """One write and its read through the new primary, as the administrator."""
    db = env.database(database)
    try:
        wrote = postgres.write_and_read(postgres.Server.from_dsn(azure.dsn(db.azure_server(), fqdn, db.dbname)),
                                        db.dbname)
        found = Check("write and read through the new primary", True, f"{wrote['server']}/{wrote['database']}")
    except CheckFailed as exc:
        found = Check("write and read through the new primary", False, str(exc))
    return [found], now_iso()


@flow(name="azure-failover", flow_run_name=namer("azure-failover"), **HOOKS)
def azure_failover(environment: str, database: str, reason: str, planned: bool = False, emergency: bool = False,
                   emergency_reason: str | None = None) -> dict[str, Any]:
    """Promote the Azure flexible server's read replica in place of the primary, repoint the
    virtual endpoint (or the app's Secret) to it, and check it takes writes. In a protected
    environment an approval shows the assessment first.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        database: The database (an azure-flexible one with azure.replica), as named under `databases`.
        reason: Why, for the record and the incident channel (the incident, what was seen).
        planned: Promote only once the replica has everything (promote option Planned): nothing is
            lost. Otherwise Forced: what the replica has, because the primary is gone.
        emergency: A planned promotion outside the windows or in a freeze, after an approval.
        emergency_reason: Why it cannot wait for the next window (required with emergency).
    """
    env = load_environment(environment)
    cfg = _azure(env, database)
    record = DrRecord("dr-failover", env.name, reason=check_reason(reason), planned=planned, force=not planned)
    env.database(database).check_secrets()
    record.resumed(resume_attempt())
    with ExitStack() as held:
        try:
            if planned:  # a forced promotion is never blocked: no window, no waiting for a maintenance run
                changes.admit(env, "dr-failover", record, emergency=emergency, emergency_reason=emergency_reason)
                held.enter_context(changes.one_change(env, "dr-failover"))
            held.enter_context(holding(locks.dr(env), timeout_seconds=LOCK_TIMEOUT))
            a = assess_servers(env, database)
            record.assessed(a["primary"], a["replica"], a["assessed at"], a)
            announce(env, reports.dr_announcement(env, record, "started"))
            promotion = azure_plan.promotion(planned, cfg.virtual_endpoint)
            record.decision = f"go: {promotion.mode}, {promotion.option}: {promotion.why}"
            if env.protected:
                record.approver = approvals.ask_approval(reports.dr_question(env.name, record, None,
                                                                             datetime.now(UTC)), "failover")
            record.decided_at = now_iso()
            record.step(record.decided_at, "decided", record.decision)
            promoted = promote_replica(env, database, a["replica"], promotion)
            record.step(promoted["at"], "promoted", promoted["detail"])
            record.figures.update({"promote mode": promotion.mode, "promote option": promotion.option,
                                   "new primary FQDN": promoted["fqdn"]})
            record.step(**repoint(env, database, a["replica"], promoted["fqdn"]), step="repointed")
            record.checks, record.healthy_at = verify_primary(env, database, promoted["fqdn"])
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

    azure_failover(sys.argv[1] if len(sys.argv) > 1 else "sandbox-azure", "fleetdb",
                   " ".join(sys.argv[2:]) or "manual failover", planned=True)
