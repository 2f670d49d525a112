"""The seeds' first DR step, "detect primary failure", run every minute:

    pg_isready -h $PRIMARY -t 3     # N times in a row, a few seconds apart
    # on the standby: is its WAL receiver still streaming from that primary?
    SELECT status FROM pg_stat_wal_receiver;

N failed probes in a row, and a standby whose WAL receiver agrees that the primary is gone,
start dr_failover with the probe history as its reason (in a protected environment it then
waits for an approval, whose page says how long the primary has been down). One dropped
probe is a blip, and a primary that its standby still streams from is not failed over from
our side of a network problem: it is reported, and a person decides.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task

from flows.dr_failover import dr_failover
from tasks import checkpoints, failover, replication, reports
from tasks.config import EnvironmentConfig, load_environment
from tasks.errors import CheckFailed
from tasks.naming import artifact_key, namer
from tasks.prefect_api import HOOKS, resume_attempt
from tasks.records import DrRecord


@task(**checkpoints.OBSERVE)
def find_primary(env: EnvironmentConfig) -> tuple[str, str | None]:
    """The node to probe, and its standby: the node that is not in recovery, else (it is down)
    the node beside the one standby, else the preferred primary."""
    cfg = env.dr_pair()
    views = replication.look_all(cfg, cfg.watch.probe_timeout.total_seconds())
    roles = failover.identify(views)
    if roles.old_primary is not None:
        return roles.old_primary, roles.target
    standbys = [n for n, v in views.items() if v.role == "standby"]
    primary = cfg.other(standbys[0]) if len(standbys) == 1 else cfg.preferred_primary
    return primary, (standbys[0] if len(standbys) == 1 else None)


@task(**checkpoints.OBSERVE)
def probe_primary(env: EnvironmentConfig, node: str) -> list[failover.Probe]:
    """Probe every `probe_interval` until `failed_probes` probes failed in a row, or as many
    answered after the last failure; at most twice `failed_probes` probes in all."""
    cfg = env.dr_pair()
    needed, interval = cfg.watch.failed_probes, cfg.watch.probe_interval.total_seconds()
    probes: list[failover.Probe] = []
    while len(probes) < 2 * needed:
        probes.append(replication.probe(cfg.node(node), cfg.watch.probe_timeout.total_seconds()))
        if len(failover.trailing_failures(probes)) >= needed:
            break
        if len(probes) >= needed and probes[-1].ok:
            break
        time.sleep(interval)
    return probes


@task(**checkpoints.OBSERVE)
def look_from_standby(env: EnvironmentConfig, standby: str | None) -> failover.NodeView | None:
    """The standby's side: does its WAL receiver still stream from the primary?"""
    if standby is None:
        return None
    cfg = env.dr_pair()
    return replication.look(standby, cfg.node(standby), cfg.watch.probe_timeout.total_seconds())


@flow(name="primary-watch", flow_run_name=namer("primary-watch"), **HOOKS)
def primary_watch(environment: str) -> dict[str, Any]:
    """Probe the primary of the DR pair; after the configured number of failed probes in a row,
    confirmed by the standby, start a failover with the probe history as its reason.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
    """
    env = load_environment(environment)
    cfg = env.dr_pair()
    env.check_dr_secrets()
    record = DrRecord("primary-watch", env.name)
    record.resumed(resume_attempt())
    try:
        primary, standby = find_primary(env)
        probes = probe_primary(env, primary)
        verdict = failover.watch_verdict(probes, cfg.watch.failed_probes, look_from_standby(env, standby))
        record.old_primary, record.new_primary = primary, standby
        record.rows = reports.probe_rows(probes)
        record.figures.update({"primary": primary, "standby": standby or "none", "verdict": verdict.action,
                               "why": verdict.reason})
        if verdict.action == "failover":
            record.figures["failover"] = dr_failover(
                environment, reason=reports.watch_reason(primary, verdict, probes), down_since=verdict.down_since)
        elif verdict.action in ("disagree", "no-standby"):
            raise CheckFailed(f"primary {primary} does not answer, and no failover was started: {verdict.reason}")
        record.outcome = "succeeded"
    except BaseException as exc:
        record.fail(exc)
        raise
    finally:
        reports.publish(reports.dr(record))
    return {"runbook": "primary-watch", "environment": env.name, "verdict": record.figures.get("verdict"),
            "failover": record.figures.get("failover"), "artifact": artifact_key("primary-watch", env.name)}


if __name__ == "__main__":
    import sys

    primary_watch(sys.argv[1] if len(sys.argv) > 1 else "sandbox")
