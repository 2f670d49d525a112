"""After a failover, the old primary becomes a standby of the new one:

    pg_ctl -D $OLD stop                                   # if it still runs (fenced, read-only)
    pg_rewind --target-pgdata=$OLD --source-server="host=$NEW ..."
    #   or, when rewind cannot:  pgbackrest --stanza=... --type=standby --delta restore
    echo "primary_conninfo = '...'" >> $OLD/postgresql.auto.conf; touch $OLD/standby.signal
    pg_ctl -D $OLD start
    SELECT state, replay_lag FROM pg_stat_replication;    # streaming, lag under the limit

It never touches the primary: the node it rebuilds is the one that is not the primary, and a
pair with two primaries (or none) is refused for a person to sort out.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from tasks import approvals, checkpoints, locks, replication, reports
from tasks.checks import Check
from tasks.config import EnvironmentConfig, load_environment
from tasks.dr_steps import now_iso
from tasks.errors import PolicyRefused
from tasks.naming import artifact_key, namer
from tasks.pghost import ProgramFailed
from tasks.prefect_api import HOOKS, holding, resume_attempt
from tasks.records import DrRecord

LOCK_TIMEOUT = 600


@task(**checkpoints.OBSERVE)
def plan_rebuild(env: EnvironmentConfig) -> tuple[str, str, bool]:
    """(primary, node to rebuild, whether it streams already with its lag under the limit)."""
    cfg = env.dr_pair()
    views = replication.look_all(cfg, cfg.watch.probe_timeout.total_seconds())
    primaries = [n for n, v in views.items() if v.role == "primary"]
    if len(primaries) != 1:
        raise PolicyRefused(f"no rebuild: {len(primaries)} nodes accept writes ({', '.join(primaries) or 'none'}); "
                            "a rebuild needs exactly one primary")
    primary = primaries[0]
    other = cfg.other(primary)
    state = replication.replication_of(cfg.node(primary), other)
    healthy = bool(state and state["state"] == "streaming" and (state["lag_bytes"] or 0) <= cfg.lag.max_bytes)
    return primary, other, healthy


@task(**checkpoints.REDO)
def stop_old_primary(env: EnvironmentConfig, node: str) -> dict[str, Any]:
    """pg_ctl stop, if it runs: it is rewound next."""
    stopped = replication.stop_node(env.dr_pair(), node, mode="fast")
    return {"at": now_iso(), "detail": "stopped" if stopped else "was not running"}


@task(**checkpoints.REDO)
def resync(env: EnvironmentConfig, node: str, primary: str) -> dict[str, Any]:
    """pg_rewind from the primary; when it cannot, a standby restore from pgBackRest. Both can
    run again on the same directory (rewind finds nothing to do; restore uses --delta)."""
    cfg = env.dr_pair()
    try:
        return {"at": now_iso(), "detail": f"pg_rewind: {replication.rewind(cfg, node, primary)}"}
    except ProgramFailed as exc:
        rewind_error = exc.output[-300:]
    return {"at": now_iso(), "detail": f"pg_rewind failed ({rewind_error}); "
                                       f"{replication.restore_standby(cfg, node, primary)}"}


@task(**checkpoints.REDO)
def start_as_standby(env: EnvironmentConfig, node: str, primary: str) -> dict[str, Any]:
    """standby.signal and primary_conninfo to the primary (password from the passfile), then start."""
    cfg = env.dr_pair()
    replication.follow(cfg, node, primary)
    replication.start_node(cfg, node, cfg.rebuild_timeout.total_seconds())
    return {"at": now_iso(), "detail": f"{node} started as a standby of {primary}"}


@task(**checkpoints.OBSERVE)
def check_streaming(env: EnvironmentConfig, node: str, primary: str) -> Check:
    """It streams from the primary, its lag under the limit."""
    cfg = env.dr_pair()
    state = replication.wait_streaming(cfg.node(primary), node, cfg.rebuild_timeout.total_seconds(),
                                       cfg.lag.max_bytes)
    return Check("standby streams, lag under the limit", True,
                 f"{node}: {state['state']}, {state['lag_bytes']} bytes behind (limit {cfg.lag.max_bytes})")


@flow(name="rebuild-replica", flow_run_name=namer("rebuild-replica"), **HOOKS)
def rebuild_replica(environment: str) -> dict[str, Any]:
    """Turn the node that is not the primary (the old primary, after a failover) into a
    streaming standby of the primary: pg_rewind, or a pgBackRest standby restore when rewind
    cannot, then start it and check it streams with its lag under the limit. Its writes that
    never reached the new primary are discarded. In a protected environment this needs an approval.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
    """
    env = load_environment(environment)
    env.check_dr_secrets()
    record = DrRecord("rebuild-replica", env.name)
    record.resumed(resume_attempt())
    with holding(locks.dr(env), timeout_seconds=LOCK_TIMEOUT):
        try:
            primary, node, healthy = plan_rebuild(env)
            record.old_primary, record.new_primary = node, primary
            record.figures.update({"primary": primary, "rebuilt node": node})
            if healthy:
                record.notes.append(f"{node} already streams from {primary}: nothing to rebuild.")
            else:
                if env.protected:
                    record.approver = approvals.ask_approval(
                        f"Rebuild {node} as a standby of {primary} in {env.name}: its data directory is rewound "
                        "and anything it wrote that never reached the primary is discarded.", "rebuild")
                record.step(**stop_old_primary(env, node), step="stopped")
                record.step(**resync(env, node, primary), step="resynced")
                record.step(**start_as_standby(env, node, primary), step="started as standby")
            record.checks.append(check_streaming(env, node, primary))
            record.step(now_iso(), "streaming", record.checks[-1].detail)
            record.outcome = "succeeded"
        except BaseException as exc:
            record.fail(exc)
            raise
        finally:
            reports.publish(reports.dr(record))
    return reports.dr_summary(record, artifact_key("rebuild-replica", env.name))


if __name__ == "__main__":
    import sys

    rebuild_replica(sys.argv[1] if len(sys.argv) > 1 else "sandbox")
