"""Serve every runbook deployment from one process, with no work pool:

    .venv/bin/python -m deployments.serve            # every environments/*.yaml
    .venv/bin/python -m deployments.serve staging    # only these environments

Each environment gets `backup-all/<env>` on its backup cron and `restore-test/<env>-<db>`
on its restore-test cron, both in the environment's timezone, and, when it has services,
`deploy/<env>`, `rollback/<env>`, `scale/<env>`, `restart/<env>` and `autoscale/<env>`;
`migrate-database/<env>` and `restore-database/<env>` for manual runs. Runs happen in this process;
stop it with Ctrl-C.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import serve
from prefect.schedules import Cron

from flows.backup import backup_all, backup_database
from flows.deploy import deploy
from flows.migrate import migrate_database
from flows.restore_database import restore_database
from flows.restore_test import restore_test
from flows.rollback import rollback
from flows.scaling import autoscale, restart, scale
from tasks.config import environments_dir, load_environment


def deployments_for(environment: str) -> list[Any]:
    env = load_environment(environment)
    tz = env.timezone
    deps = [
        backup_all.to_deployment(
            name=env.name, parameters={"environment": env.name},
            schedules=[Cron(env.schedules.backup, timezone=tz)],
            tags=["runbook", "backup", env.name],
            description=f"Nightly backup of every database in {env.name}",
        ),
        backup_database.to_deployment(name=env.name, parameters={"environment": env.name},
                                      tags=["runbook", "backup", env.name]),
    ]
    if env.services:  # deploy/<env>, rollback/<env>, ...: the UI's form asks for the service
        for fl in (deploy, rollback, scale, restart, autoscale):
            deps.append(fl.to_deployment(name=env.name, parameters={"environment": env.name},
                                         tags=["runbook", fl.name, env.name]))
    for fl in (migrate_database, restore_database):  # manual runs: the form asks for the database
        deps.append(fl.to_deployment(name=env.name, parameters={"environment": env.name},
                                     tags=["runbook", fl.name, env.name]))
    for database in env.databases:
        deps.append(restore_test.to_deployment(
            name=f"{env.name}-{database}", parameters={"environment": env.name, "database": database},
            schedules=[Cron(env.schedules.restore_test, timezone=tz)],
            tags=["runbook", "restore-test", env.name],
            description=f"Weekly restore test of {database} in {env.name}",
        ))
    return deps


def main(argv: list[str]) -> None:
    names = argv or sorted(p.stem for p in environments_dir().glob("*.yaml"))
    if not names:
        raise SystemExit(f"no environments in {environments_dir()}: write one, or run `python -m sandbox up`")
    deps = [d for name in names for d in deployments_for(name)]
    serve(*deps)


if __name__ == "__main__":
    main(sys.argv[1:])
