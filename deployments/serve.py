"""Serve every runbook deployment from one process, with no work pool:

    .venv/bin/python -m deployments.serve            # every environments/*.yaml
    .venv/bin/python -m deployments.serve staging    # only these environments

Each environment gets `backup-all/<env>` on its backup cron and `restore-test/<env>-<db>`
on its restore-test cron, both in the environment's timezone, and, when it has services,
`deploy/<env>`, `rollback/<env>`, `scale/<env>`, `restart/<env>` and `autoscale/<env>`;
`backup-database/<env>`, `migrate-database/<env>` and `restore-database/<env>` for manual
runs. Each cluster (pgBackRest) gets `physical-backup/<env>-<cluster>-incr` hourly and `-full`
daily, `physical-restore-test/<env>-<cluster>` on the restore-test cron, and
`archive-health/<env>-<cluster>` every few minutes; `physical-backup/<env>` and
`pitr-restore/<env>` for manual runs. Runs happen in this process; stop it with Ctrl-C. It also creates (or updates) the
automations that mark a run whose heartbeats stopped Crashed and resume it
(deployments/automations.py); a second serve process serving the same environments picks
up such a run when this one is gone.

The forms in the UI: a deployment's environment is fixed (read-only), and its `service`
and `database` fields are dropdowns of that environment's services and databases.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.flows import Flow
from prefect.schedules import Cron, RRule
from prefect.utilities.annotations import freeze

from deployments.automations import HEARTBEAT_SECONDS, ensure_automations
from flows.archive_health import archive_health
from flows.azure_failover import azure_failover
from flows.azure_restore import azure_restore, azure_restore_test
from flows.backup import backup_all, backup_database
from flows.deploy import deploy
from flows.dr_drill import dr_drill
from flows.dr_failover import dr_failover
from flows.maintenance_window import maintenance_window
from flows.migrate import migrate_database
from flows.physical_backup import physical_backup
from flows.physical_restore_test import physical_restore_test
from flows.pitr_restore import pitr_restore
from flows.primary_watch import primary_watch
from flows.rebuild_replica import rebuild_replica
from flows.restore_database import restore_database
from flows.restore_test import restore_test
from flows.rollback import rollback
from flows.scaling import autoscale, restart, scale
from tasks import windows
from tasks.config import EnvironmentConfig, environments_dir, load_environment

SERVICE_FLOWS: tuple[Flow[..., Any], ...] = (deploy, rollback, scale, restart, autoscale)
DATABASE_FLOWS: tuple[Flow[..., Any], ...] = (backup_database, migrate_database, restore_database)
CLUSTER_FLOWS: tuple[Flow[..., Any], ...] = (physical_backup, pitr_restore, physical_restore_test, archive_health)
DR_FLOWS: tuple[Flow[..., Any], ...] = (dr_failover, rebuild_replica, primary_watch, dr_drill)
# Run by restore_test and dr_failover for an Azure database; azure-restore has its own deployment too.
AZURE_FLOWS: tuple[Flow[..., Any], ...] = (azure_restore, azure_restore_test, azure_failover)
FLOWS = (backup_all, restore_test, *SERVICE_FLOWS, *DATABASE_FLOWS, *CLUSTER_FLOWS, *DR_FLOWS, maintenance_window,
         *AZURE_FLOWS)


def _deployment(fl: Flow[..., Any], env: EnvironmentConfig, name: str | None = None, **options: Any) -> Any:
    """A deployment of `fl` for `env`: its environment fixed, its service and database
    offered as the environment's own names."""
    fixed = {"environment": env.name, **options.pop("parameters", {})}
    dep = fl.to_deployment(name=name or env.name, parameters={k: freeze(v) for k, v in fixed.items()},
                           tags=["runbook", fl.name, env.name], **options)
    # Prefect builds the form from this JSON schema: an enum makes the field a dropdown.
    properties = dep._parameter_openapi_schema.properties
    for parameter, names in (("service", env.services), ("database", env.databases), ("cluster", env.clusters)):
        if parameter in properties and parameter not in fixed:
            properties[parameter]["enum"] = sorted(names)
    return dep


def deployments_for(environment: str) -> list[Any]:
    env = load_environment(environment)
    tz = env.timezone
    deps = [
        _deployment(backup_all, env, schedules=[Cron(env.schedules.backup, timezone=tz)],
                    description=f"Nightly backup of every database in {env.name}"),
    ]
    if env.services:  # deploy/<env>, rollback/<env>, ...: the UI's form asks for the service
        deps += [_deployment(fl, env) for fl in SERVICE_FLOWS]
    if env.databases:  # manual runs: the form asks for the database
        deps += [_deployment(fl, env) for fl in DATABASE_FLOWS]
    for database in env.databases:
        deps.append(_deployment(
            restore_test, env, name=f"{env.name}-{database}", parameters={"database": database},
            schedules=[Cron(env.schedules.restore_test, timezone=tz)],
            description=f"Weekly restore test of {database} in {env.name}",
        ))
    if any(db.kind == "azure-flexible" for db in env.databases.values()):
        deps.append(_deployment(azure_restore, env, description=f"Restore an Azure flexible server of {env.name} "
                                                                "to a point in time, as a new server"))
    deps += cluster_deployments(env)
    deps += dr_deployments(env)
    deps += maintenance_deployments(env)
    return deps


def maintenance_schedules(env: EnvironmentConfig) -> dict[str, dict[str, str]]:
    """Each maintenance window's schedule, by window name: an RRule firing at its start, in its
    timezone (`windows.schedule_rrule`; prefect.yaml must say the same, a test checks it)."""
    return {w.name: windows.schedule_rrule(w, env.timezone) for w in (env.windows.maintenance if env.windows else [])}


def maintenance_deployments(env: EnvironmentConfig) -> list[Any]:
    """`maintenance-window/<env>` for manual runs, and `maintenance-window/<env>-<window>` on
    each window's schedule, doing the environment's `maintenance.tasks`."""
    if env.maintenance is None:
        return []
    deps = [_deployment(maintenance_window, env, description=f"Maintenance window in {env.name}, run by hand")]
    for name, rule in maintenance_schedules(env).items():
        deps.append(_deployment(maintenance_window, env, name=f"{env.name}-{name}", parameters={"window": name},
                                schedules=[RRule(rule["rrule"], timezone=rule["timezone"])],
                                description=f"Maintenance window {name} in {env.name}, at its start"))
    return deps


def dr_deployments(env: EnvironmentConfig) -> list[Any]:
    """With a DR pair: `primary-watch/<env>` every minute (one run at a time: a run that would
    overlap a failover in progress is cancelled), and manual runs of `dr-failover/<env>` and
    `rebuild-replica/<env>`; `dr-drill/<env>` only where drills are allowed."""
    if env.dr is None:  # an Azure flexible server's replica: dr-failover promotes it
        return [_deployment(dr_failover, env, description=f"Promote the Azure replica of {env.name}'s database")
                ] if env.azure_replicated() else []
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    deps = [
        _deployment(primary_watch, env, schedules=[Cron(env.schedules.primary_watch, timezone=env.timezone)],
                    concurrency_limit=one_at_a_time,
                    description=f"Probe the primary of {env.name}'s DR pair every minute; fail over when it is down"),
        _deployment(dr_failover, env, description=f"Fail over (or switch over) {env.name}'s database to its standby"),
        _deployment(rebuild_replica, env, description=f"Rebuild the standby of {env.name} after a failover"),
    ]
    if env.drills_allowed:
        deps.append(_deployment(dr_drill, env, description=f"DR drill of {env.name}: switch over and back"))
    return deps


def cluster_deployments(env: EnvironmentConfig) -> list[Any]:
    """Per cluster: hourly incremental and daily full physical backups, the weekly physical
    restore test (on the restore-test cron, beside the logical ones), the archive health check
    every few minutes; and manual runs of physical-backup and pitr-restore."""
    tz = env.timezone
    deps = [_deployment(fl, env) for fl in (physical_backup, pitr_restore)] if env.clusters else []
    for name in env.clusters:
        fixed = {"cluster": name}
        deps += [
            _deployment(physical_backup, env, name=f"{env.name}-{name}-incr", parameters={**fixed, "type": "incr"},
                        schedules=[Cron(env.schedules.physical_incr, timezone=tz)],
                        description=f"Hourly incremental physical backup of cluster {name} in {env.name}"),
            _deployment(physical_backup, env, name=f"{env.name}-{name}-full", parameters={**fixed, "type": "full"},
                        schedules=[Cron(env.schedules.physical_full, timezone=tz)],
                        description=f"Daily full physical backup of cluster {name} in {env.name}"),
            _deployment(physical_restore_test, env, name=f"{env.name}-{name}", parameters=fixed,
                        schedules=[Cron(env.schedules.restore_test, timezone=tz)],
                        description=f"Weekly physical restore test of cluster {name} in {env.name}"),
            _deployment(archive_health, env, name=f"{env.name}-{name}", parameters=fixed,
                        schedules=[Cron(env.schedules.archive_health, timezone=tz)],
                        description=f"WAL archive health of cluster {name} in {env.name}, every few minutes"),
        ]
    return deps


def main(argv: list[str]) -> None:
    names = argv or sorted(p.stem for p in environments_dir().glob("*.yaml"))
    if not names:
        raise SystemExit(f"no environments in {environments_dir()}: write one, or run `python -m sandbox up`")
    deps = [d for name in names for d in deployments_for(name)]
    # Runs send heartbeats, and a run whose heartbeats stop is marked Crashed and resumed.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_SECONDS))
    for line in ensure_automations():
        print(line)
    serve(*deps)


if __name__ == "__main__":
    main(sys.argv[1:])
