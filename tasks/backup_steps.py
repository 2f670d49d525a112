"""The backup steps more than one runbook takes: retention, applied by every backup and by a
maintenance window's `prune_backups`."""

from __future__ import annotations

from datetime import datetime

from prefect import task

from tasks import backups, checkpoints, retries
from tasks.config import EnvironmentConfig
from tasks.retention import RetentionPlan, plan_retention
from tasks.storage import open_storage


@task(**retries.policy("storage"), **checkpoints.REDO)
def apply_retention(env: EnvironmentConfig, database: str, now: datetime) -> RetentionPlan:
    """Plan by the policy, then delete; the newest valid backup always stays."""
    cfg = env.database(database)
    storage = open_storage(cfg.storage)
    catalogue = backups.read_catalogue(storage, database)
    plan = plan_retention(catalogue.records(), cfg.retention, now=now, tz=env.tz_for(database))
    for backup_id in plan.delete:
        storage.delete_prefix(backups.backup_prefix(database, backup_id))
    return plan
