"""Which global concurrency limits a runbook holds while it changes something: pure.

Prefect's global concurrency limits are named here and nowhere else, because runbooks
hold each other's: a restore by swap holds off the backups of its database and the
deploys of the apps that use it, so those names must be the ones the backup and deploy
runbooks hold. Each maps a limit's name to its size (1: one run at a time).
"""

from __future__ import annotations

from tasks.config import EnvironmentConfig
from tasks.naming import artifact_key


def backup(env: EnvironmentConfig, database: str) -> dict[str, int]:
    """At most `backup_concurrency` backups in the environment, one per database."""
    return {artifact_key("backup", env.name): env.backup_concurrency,
            artifact_key("backup", env.name, database): 1}


def deploy(env: EnvironmentConfig, service: str) -> dict[str, int]:
    """One deploy of a service at a time."""
    return {artifact_key("deploy", env.name, service): 1}


def restore(env: EnvironmentConfig, database: str, mode: str) -> dict[str, int]:
    """One restore of a database at a time; a swap also holds off its backups and the
    deploys of its apps, which would scale them up or connect mid-way."""
    held = {artifact_key("restore", env.name, database): 1}
    if mode == "swap":
        held[artifact_key("backup", env.name, database)] = 1
        held.update({artifact_key("deploy", env.name, app): 1 for app in env.database(database).apps})
    return held


def physical(env: EnvironmentConfig, cluster: str) -> dict[str, int]:
    """One pgBackRest backup, expiry or restore of a cluster at a time (pgBackRest's own lock
    would refuse the second one; this makes it wait instead)."""
    return {artifact_key("pgbackrest", env.name, cluster): 1}


def dr(env: EnvironmentConfig) -> dict[str, int]:
    """One failover, switchover or rebuild of the environment's pair at a time: two would
    fence or promote each other's nodes."""
    return {artifact_key("dr", env.name): 1}


def change(env: EnvironmentConfig) -> dict[str, int]:
    """One change to the environment at a time, whatever the runbook: deploy, migrate,
    restore, planned failover, drill, maintenance window (`tasks.changes.one_change`)."""
    return {artifact_key("change", env.name): 1}
