"""A DR game day, which the seeds list as "conduct disaster recovery drill" and nobody had
rehearsed: a planned switchover to the standby, validation, a failback (a switchover back
and a rebuild), and a report comparing the measured RTO and RPO with the objectives.

    dr_failover(planned=True)   -> the standby is primary; apps and DNS follow
    rebuild_replica             -> the old primary streams from it
    dr_failover(planned=True)   -> back to the preferred primary
    rebuild_replica             -> the original topology

It runs only where the environment says `drills_allowed: true`, and only from the normal
topology (the preferred primary, its standby streaming).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from flows.dr_failover import dr_failover
from flows.rebuild_replica import rebuild_replica
from tasks import changes, checkpoints, failover, replication, reports
from tasks.checks import Check
from tasks.config import EnvironmentConfig, load_environment
from tasks.errors import CheckFailed, PolicyRefused
from tasks.naming import artifact_key, namer
from tasks.prefect_api import HOOKS, resume_attempt
from tasks.records import DrRecord


@task(**checkpoints.OBSERVE)
def check_topology(env: EnvironmentConfig) -> Check:
    """The preferred primary takes writes and its standby streams from it, lag under the limit."""
    cfg = env.dr_pair()
    preferred, standby = cfg.preferred_primary, cfg.other(cfg.preferred_primary)
    view = replication.look(preferred, cfg.node(preferred), cfg.watch.probe_timeout.total_seconds())
    state = replication.replication_of(cfg.node(preferred), standby) if view.role == "primary" else None
    ok = view.role == "primary" and bool(state) and state["state"] == "streaming" \
        and (state["lag_bytes"] or 0) <= cfg.lag.max_bytes
    return Check("original topology", ok, f"{preferred}: {view.role}; {standby}: "
                                          f"{state['state'] + ', ' + str(state['lag_bytes']) + ' bytes behind' if state else 'not streaming'}")


@flow(name="dr-drill", flow_run_name=namer("dr-drill"), **HOOKS)
def dr_drill(environment: str) -> dict[str, Any]:
    """Rehearse the failover: switch over to the standby, validate, switch back and rebuild,
    then compare the measured RTO and RPO with the objectives. Only where `drills_allowed`.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
    """
    env = load_environment(environment)
    if not env.drills_allowed:
        raise PolicyRefused(f"environment {env.name!r} is not marked drills_allowed: a drill switches its primary "
                            "over and back; set drills_allowed: true in its file to allow it")
    cfg = env.dr_pair()
    env.check_dr_secrets()
    record = DrRecord("dr-drill", env.name, reason="DR drill", planned=True)
    record.resumed(resume_attempt())
    try:
        changes.admit(env, "dr-drill", record)
        with changes.one_change(env, "dr-drill"):  # both switchovers and rebuilds, nothing in between
            record.checks.append(start := check_topology(env))
            if not start.passed:
                raise PolicyRefused(f"a drill starts from the original topology: {start.detail}")
            there = dr_failover(environment, reason="DR drill: planned switchover to the standby", planned=True)
            record.rows.append(reports.drill_row("switchover", there, rebuild_replica(environment)))
            back = dr_failover(environment, reason="DR drill: failback to the preferred primary", planned=True)
            record.rows.append(reports.drill_row("failback", back, rebuild_replica(environment)))
            record.checks.append(check_topology(env))
        record.checks += [Check(*row) for row in failover.objective_checks(record.rows, cfg.objectives.rto,
                                                                           cfg.objectives.rpo)]
        record.figures.update(reports.drill_figures(record.rows, cfg.objectives))
        record.outcome = "succeeded" if record.passed else "failed"
    except BaseException as exc:
        record.fail(exc)
        raise
    finally:
        reports.publish(reports.dr(record))
    if not record.passed:
        raise CheckFailed(f"the drill's checks failed: {record.failed_checks()}")
    return {"runbook": "dr-drill", "environment": env.name, "runs": record.rows,
            "artifact": artifact_key("dr-drill", env.name)}


if __name__ == "__main__":
    import sys

    dr_drill(sys.argv[1] if len(sys.argv) > 1 else "sandbox")
