"""The Fleet Management runbook's restore, on Azure, and its restore test:

    az postgres flexible-server backup list --resource-group <rg> --server-name <server>
    az postgres flexible-server restore --resource-group <rg> --name <server>-restored \\
        --source-server <server> --restore-point-in-time "2025-11-24T10:00:00Z"
    # Update application

A restore creates a new server: production is not touched. The run waits until the new server
is Ready, keeps its connection string in a Prefect Secret block, and reports the server's FQDN
and that block's name, which is what the application is pointed at. Asking again for the same
restore finds the same server (or the operation still running) and never starts a second one.

The restore test does the same at a recent point in time, runs the smoke queries on the new
server, measures the RTO, and deletes the server whatever happened.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, task
from prefect.runtime import flow_run

from tasks import azure, azure_plan, checkpoints, checks, postgres, reports, retries
from tasks.config import AzureServerConfig, EnvironmentConfig, load_environment
from tasks.errors import CheckFailed, ConfigError, PolicyRefused
from tasks.naming import artifact_key, namer
from tasks.prefect_api import HOOKS, resume_attempt, save_secret
from tasks.redact import scrub
from tasks.restores import run_smoke_queries


def _azure(env: EnvironmentConfig, database: str) -> AzureServerConfig:
    return env.database(database).azure_server()


@task(**retries.policy("azure"), **checkpoints.CHECKPOINT)
def plan_restore(env: EnvironmentConfig, database: str, point_in_time: datetime | None,
                 target_server: str | None, lag: bool = False) -> dict[str, Any]:
    """The checkpoint: the source as Azure sees it, the point in time (default: now, or for a
    restore test `restore_lag` ago) and the new server's name."""
    cfg = _azure(env, database)
    now = datetime.now(UTC)
    with azure.client(cfg) as arm:
        source = azure.get_server(arm, cfg, cfg.server)
    if source is None:
        raise ConfigError(f"server {cfg.server!r} is not in resource group {cfg.resource_group!r} of subscription "
                          f"{cfg.subscription_id}")
    at = point_in_time or (now - cfg.restore_lag if lag else now)
    at = azure_plan.check_point_in_time(at, source.earliest_restore, now)
    target = (azure_plan.restore_test_name(cfg.server, str(flow_run.root_flow_run_id or flow_run.id or "manual"))
              if lag else azure_plan.restore_name(cfg.server, at, target_server))
    return {"source": source.describe(), "point_in_time": at, "target": target,
            "earliest_restore": source.earliest_restore.isoformat() if source.earliest_restore else None}


@task(**retries.policy("azure"), **checkpoints.EFFECT)
def restore_server(env: EnvironmentConfig, database: str, target: str, point_in_time: datetime) -> dict[str, Any]:
    """Create the restored server, once: a server of that name that is already a restore of
    ours is waited for (or reused when Ready); any other server of that name refuses."""
    cfg = _azure(env, database)
    with azure.client(cfg) as arm:
        existing = azure.get_server(arm, cfg, target)
        if existing is not None and existing.source != cfg.server:
            raise PolicyRefused(f"a server named {target!r} already exists and is not a restore of {cfg.server} "
                                f"({existing.describe()}); give another target_server")
        reused = existing is not None and existing.state == "Ready"
        op, resumed, seconds = (None, False, 0.0) if reused else azure.run_operation(
            arm, cfg, env.name, "restore", target, lambda: azure.start_restore(arm, cfg, target, point_in_time))
        server = azure.get_server(arm, cfg, target)
    if server is None or server.state != "Ready" or not server.fqdn:
        raise CheckFailed(f"the restore of {cfg.server} to {target} finished, but the server is "
                          f"{server.describe() if server else 'missing'}")
    return {"server": target, "fqdn": server.fqdn, "state": server.state, "seconds": seconds,
            "resumed": resumed, "reused": reused, "operation": op.url.split("?")[0] if op and op.url else None}


@task(**checkpoints.EFFECT)
def keep_connection_string(env: EnvironmentConfig, database: str, target: str, fqdn: str) -> str:
    """The new server's libpq URI, as its administrator, in a Prefect Secret block: the name is
    what the report gives, never the value."""
    cfg = env.database(database)
    name = f"{env.name}-{target}-dsn"
    save_secret(name, azure.dsn(cfg.azure_server(), fqdn, cfg.dbname))
    return name


@task(**retries.policy("postgres"), **checkpoints.OBSERVE)
def smoke_test(env: EnvironmentConfig, database: str, fqdn: str) -> list[checks.Check]:
    """The restore test's smoke queries, on the restored server."""
    cfg = env.database(database)
    server = postgres.Server.from_dsn(azure.dsn(cfg.azure_server(), fqdn, cfg.dbname))
    with postgres.connect(server, cfg.dbname) as conn:
        return run_smoke_queries(conn, cfg.restore_test.smoke_queries)


@task(**retries.policy("azure"), **checkpoints.REDO)
def delete_server(env: EnvironmentConfig, database: str, target: str) -> str:
    """Delete a restore test's server and wait until it is gone; one that is not there is fine."""
    cfg = _azure(env, database)
    if target == cfg.server or target == cfg.replica:
        raise PolicyRefused(f"refusing to delete {target}: it is the configured server or its replica")
    with azure.client(cfg) as arm:
        existing = azure.get_server(arm, cfg, target)
        if existing is None:
            return f"{target} was not there"
        if existing.source != cfg.server:
            raise PolicyRefused(f"refusing to delete {target}: it is not a restore of {cfg.server}")
        azure.run_operation(arm, cfg, env.name, "deletion", target, lambda: azure.start_delete(arm, cfg, target))
        gone = azure.get_server(arm, cfg, target) is None
    if not gone:
        raise CheckFailed(f"the deletion of {target} finished, but Azure still lists the server")
    return f"{target} deleted"


@flow(name="azure-restore", flow_run_name=namer("azure-restore"), **HOOKS)
def azure_restore(environment: str, database: str, point_in_time: datetime | None = None,
                  target_server: str | None = None) -> dict[str, Any]:
    """Restore an Azure flexible server to a point in time, as a new server beside it. Waits until
    it is Ready, keeps its connection string in a Secret block, and reports its FQDN and that
    block's name. Production is not touched; point the application at the new server yourself.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        database: The database (an azure-flexible one), as named under `databases`.
        point_in_time: When to restore to, in UTC, like 2025-11-24T10:00:00Z; empty for now.
        target_server: The new server's name; default <server>-<yyyymmddhhmm> of the point in time.
    """
    env = load_environment(environment)
    env.database(database).check_secrets()
    attempt = resume_attempt()
    started, plan, restored, secret, error = time.monotonic(), None, None, None, None
    try:
        plan = plan_restore(env, database, point_in_time, target_server)
        restored = restore_server(env, database, plan["target"], plan["point_in_time"])
        secret = keep_connection_string(env, database, plan["target"], restored["fqdn"])
    except BaseException as exc:  # a failure, or a cancel's SIGTERM
        error = scrub(str(exc)) or type(exc).__name__
        raise
    finally:
        reports.publish(reports.azure_restore(env.name, database, plan, restored, secret, attempt,
                                              round(time.monotonic() - started, 3), error))
    return {"runbook": "azure-restore", "environment": env.name, "database": database,
            "server": plan["target"], "fqdn": restored["fqdn"], "dsn_secret": secret,
            "point_in_time": plan["point_in_time"].isoformat(), "seconds": restored["seconds"],
            "resumed": restored["resumed"], "artifact": artifact_key("azure-restore", env.name, database)}


@flow(name="azure-restore-test", flow_run_name=namer("azure-restore-test"), **HOOKS)
def azure_restore_test(environment: str, database: str) -> dict[str, Any]:
    """Prove the Azure server restores: restore it to `restore_lag` ago as a new server, run the
    smoke queries there, measure the RTO against the objective, and delete the server whatever
    happens.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        database: The database (an azure-flexible one), as named under `databases`.
    """
    env = load_environment(environment)
    cfg = env.database(database)
    cfg.check_secrets()
    attempt = resume_attempt()
    plan, restored, results, errors, deleted, rto = None, None, [], [], None, None
    clock = time.monotonic()
    try:
        plan = plan_restore(env, database, None, None, lag=True)
        restored = restore_server(env, database, plan["target"], plan["point_in_time"])
        results = smoke_test(env, database, restored["fqdn"])
        rto = round(time.monotonic() - clock, 3)
        results.append(checks.rto_met(rto, cfg.objectives.rto))
    except Exception as exc:  # noqa: BLE001 - reported below, and the flow fails
        errors.append(scrub(str(exc)) or type(exc).__name__)
    finally:  # a cancel's SIGTERM too: the restored server never outlives the test
        try:
            deleted = delete_server(env, database, plan["target"]) if plan else None
        except Exception as exc:  # noqa: BLE001 - reported below, and the flow fails
            errors.append(f"the restored server was NOT deleted: {scrub(str(exc))}")
    reports.publish(reports.azure_restore_test(env.name, database, plan, restored, results, rto, deleted, attempt,
                                               "; ".join(errors) or None))
    failure = "; ".join(errors) or checks.failures(results)
    if failure:
        raise CheckFailed(f"Azure restore test of {database} in {env.name} failed: {failure}")
    return {"runbook": "azure-restore-test", "environment": env.name, "database": database,
            "server": plan["target"], "rto_seconds": rto, "checks": len(results), "deleted": deleted,
            "artifact": artifact_key("azure-restore-test", env.name, database)}


if __name__ == "__main__":
    import sys

    azure_restore_test(sys.argv[1] if len(sys.argv) > 1 else "sandbox-azure",
                       sys.argv[2] if len(sys.argv) > 2 else "fleetdb")
