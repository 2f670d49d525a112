"""Restore a database from a backup in production's place, as the seeds' point-in-time
recovery does it by hand:

    kubectl scale deployment/backend --replicas=0
    pg_restore -U postgres -d evfleet_recovery evfleet_20240115.dump
    psql -U postgres evfleet_recovery -c "SELECT MAX(created_at) FROM vehicles;"
    ALTER DATABASE evfleet RENAME TO evfleet_old;
    ALTER DATABASE evfleet_recovery RENAME TO evfleet;
    kubectl scale deployment/backend --replicas=2

Here the replicas to come back to are remembered, not typed; the restored copy is checked
against the backup's manifest before anything is swapped; the two renames happen in one
PostgreSQL transaction; the old database is always kept; and a failure puts production
back as it was (Prefect transaction rollback hooks: the databases swapped back, the apps
scaled to their replicas again). `mode="new"` restores beside production and touches
nothing else.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prefect import flow, task
from prefect.transactions import Transaction, transaction

from flows.azure_restore import azure_restore
from tasks import (
    approvals,
    azure,
    backups,
    changes,
    checkpoints,
    checks,
    http_checks,
    kubernetes,
    locks,
    postgres,
    reports,
    retries,
)
from tasks.config import EnvironmentConfig, check_choice, load_environment
from tasks.errors import CheckFailed, ConfigError, PermanentError
from tasks.faults import fault_point
from tasks.naming import RestoreNames, artifact_key, namer, restore_names
from tasks.prefect_api import HOOKS, holding, remember_for_rollback, resume_attempt
from tasks.records import App, RestoreRecord, timed
from tasks.redact import scrub
from tasks.restores import choose_backup, drop_scratch, restore_into_scratch, verify_restored

MODES = ("swap", "new")
LOCK_TIMEOUT = timedelta(hours=1).total_seconds()


# --- tasks: PostgreSQL ----------------------------------------------------------------------------


def _server(env: EnvironmentConfig, database: str) -> postgres.Server:
    """The database's own server: a swap renames databases there."""
    return postgres.server_for(env.database(database))


@task(**checkpoints.CHECKPOINT)
def name_copies(env: EnvironmentConfig, database: str) -> RestoreNames:
    """The checkpoint: the names of this run's copies, from the time it started."""
    return restore_names(env.database(database).dbname, datetime.now(UTC))


@task(**checkpoints.CHECKPOINT)
def check_names(env: EnvironmentConfig, database: str, names: RestoreNames, mode: str) -> int | None:
    """The copies' names are free and, for a swap, the live database exists. Returns its oid:
    the checkpoint that tells production's database from the restored one ever after."""
    server = _server(env, database)
    oid = postgres.database_oid(server, names.live)
    if mode == "swap" and oid is None:
        raise ConfigError(f"database {names.live!r} does not exist on {server.describe()}: nothing to swap; "
                          "restore it with mode='new' and rename the copy")
    taken = [n for n in (names.restored, names.kept) if postgres.database_exists(server, n)]
    if taken:
        raise PermanentError(f"database(s) {', '.join(taken)} already exist on {server.describe()}; "
                             "a restore never overwrites one: drop or rename it, or start again in a second")
    return oid


@task(**checkpoints.REDO)
def terminate_connections(env: EnvironmentConfig, database: str, dbname: str) -> int:
    """`pg_terminate_backend` on every session of the live database but ours."""
    return postgres.terminate_connections(_server(env, database), dbname)


def _oids(env: EnvironmentConfig, database: str, names: RestoreNames) -> tuple[int | None, int | None]:
    server = _server(env, database)
    return postgres.database_oid(server, names.live), postgres.database_oid(server, names.kept)


@task(**checkpoints.OBSERVE)
def find_swap(env: EnvironmentConfig, database: str, names: RestoreNames, original_oid: int | None) -> bool:
    """Did an earlier attempt of this run swap already? Told by oids, never by names."""
    return checks.swap_phase(original_oid, *_oids(env, database, names)) == "swapped"


@task(**checkpoints.EFFECT)
def swap_in(env: EnvironmentConfig, database: str, names: RestoreNames, original_oid: int | None) -> int:
    """`ALTER DATABASE live RENAME TO <db>_pre_restore_…; ALTER DATABASE <db>_restore_… RENAME
    TO live`, both in one transaction, with new sessions refused meanwhile. Returns the
    sessions it terminated. A swap that an earlier attempt did is not done again."""
    remember_for_rollback(env=env, database=database, names=names, original_oid=original_oid)
    phase = checks.swap_phase(original_oid, *_oids(env, database, names))
    if phase == "swapped":
        return 0
    if phase != "before":
        raise PermanentError(f"will not swap {names.live!r}: {phase}; nothing was renamed")
    return postgres.swap_databases(_server(env, database), names.live, names.restored, names.kept)


@swap_in.on_rollback
def swap_back(txn: Transaction) -> None:
    """Undo of swap_in: the original takes its name back, the restored copy its scratch name.
    Nothing to do when the original is live already."""
    env, database, names = txn.get("env"), txn.get("database"), txn.get("names")
    if checks.swap_phase(txn.get("original_oid"), *_oids(env, database, names)) == "swapped":
        postgres.swap_databases(_server(env, database), names.live, names.kept, names.restored)


# --- tasks: the apps ----------------------------------------------------------------------------------


@task(**checkpoints.CHECKPOINT)
def remember_replicas(env: EnvironmentConfig, service: str) -> App:
    """The checkpoint: which Deployment serves the service, and its replicas now."""
    svc = env.service(service)
    with kubernetes.api_client(env.kubernetes) as api:
        name = kubernetes.live_deployment(api, svc)
        dep = kubernetes.read_deployment(api, svc.namespace, name)
    return App(service, svc.namespace, name, int(dep.get("spec", {}).get("replicas", 1)))


def _scale_and_wait(env: EnvironmentConfig, app: App, replicas: int) -> None:
    timeout = env.service(app.service).rollout_timeout.total_seconds()
    with kubernetes.api_client(env.kubernetes) as api:
        kubernetes.scale(api, app.namespace, app.deployment, replicas)
        if replicas == 0:
            kubernetes.wait_scaled_down(api, app.namespace, app.deployment, timeout)
        else:
            kubernetes.wait_for_rollout(api, app.namespace, app.deployment, timeout)


@task(**checkpoints.EFFECT)
def scale_down(env: EnvironmentConfig, app: App) -> int:
    """`kubectl scale --replicas=0`. Returns the replicas it had, which the undo puts back:
    on a replay after a crash the app is at 0 already, and the checkpoint says how many."""
    with kubernetes.api_client(env.kubernetes) as api:
        before = kubernetes.scale(api, app.namespace, app.deployment, 0) or app.replicas
    remember_for_rollback(env=env, app=replace(app, replicas=before))
    return before


@scale_down.on_rollback
def scale_back(txn: Transaction) -> None:
    """Undo of scale_down: the replicas it had, rolled out."""
    app: App = txn.get("app")
    _scale_and_wait(txn.get("env"), app, app.replicas)


@task(**checkpoints.OBSERVE)
def wait_scaled_down(env: EnvironmentConfig, apps: list[App]) -> None:
    """Until no pod of the apps is left."""
    with kubernetes.api_client(env.kubernetes) as api:
        for app in apps:
            kubernetes.wait_scaled_down(api, app.namespace, app.deployment,
                                        env.service(app.service).rollout_timeout.total_seconds())


@task(**checkpoints.EFFECT)
def scale_up(env: EnvironmentConfig, app: App) -> None:
    """`kubectl scale --replicas=<as before>`. The undo takes it down again, so that a swap
    back never happens under a running app."""
    with kubernetes.api_client(env.kubernetes) as api:
        kubernetes.scale(api, app.namespace, app.deployment, app.replicas)
    remember_for_rollback(env=env, app=app)


@scale_up.on_rollback
def take_down_again(txn: Transaction) -> None:
    _scale_and_wait(txn.get("env"), txn.get("app"), 0)


def _apps_now(env: EnvironmentConfig, apps: list[App], *, wait_for_rollout: bool) -> tuple[dict[str, int], list[str]]:
    """Each app's replicas now, and the apps that should run but do not answer healthy."""
    replicas: dict[str, int] = {}
    unhealthy: list[str] = []
    with kubernetes.api_client(env.kubernetes) as api:
        for app in apps:
            svc = env.service(app.service)
            if app.replicas > 0:
                if wait_for_rollout:
                    kubernetes.wait_for_rollout(api, app.namespace, app.deployment,
                                                svc.rollout_timeout.total_seconds())
                with http_checks.client(svc.http_timeout) as client:
                    if http_checks.wait_healthy(client, svc.health_urls, svc.rollout_timeout.total_seconds()) is None:
                        unhealthy.append(f"{app.service} is not healthy after the restore: {', '.join(svc.health_urls)}")
            dep = kubernetes.read_deployment(api, app.namespace, app.deployment)
            replicas[app.service] = int(dep.get("spec", {}).get("replicas", 1))
    return replicas, unhealthy


@task(**checkpoints.OBSERVE)
def wait_healthy(env: EnvironmentConfig, apps: list[App]) -> dict[str, Any]:
    """`kubectl rollout status` for each app, then its health URLs answer 2xx."""
    replicas, unhealthy = _apps_now(env, apps, wait_for_rollout=True)
    if unhealthy:
        raise CheckFailed("; ".join(unhealthy))
    return {"healthy_at": time.time(), "replicas": replicas}


@task(**checkpoints.OBSERVE)
def check_recovered(env: EnvironmentConfig, database: str, record: RestoreRecord) -> dict[str, Any]:
    """After a failure: is the original database live under its name, are the apps back at
    their replicas, and healthy? (`checks.recovery`)"""
    server = _server(env, database)
    live_oid = postgres.database_oid(server, record.names.live)
    replicas, unhealthy = _apps_now(env, record.apps, wait_for_rollout=False)
    verdict = checks.recovery(record.swapped, record.original_oid, live_oid,
                              postgres.database_exists(server, record.names.kept), record.replicas_before,
                              replicas, not unhealthy)
    return {"verdict": verdict, "healthy_at": None if unhealthy else time.time()}


# --- steps -----------------------------------------------------------------------------------------


def confirm_swap(env: EnvironmentConfig, record: RestoreRecord, manifest: backups.Manifest) -> str:
    """A swap replaces production data, so it always asks: type the database's name."""
    names, apps = record.names, env.database(record.database).apps
    down = f"{', '.join(apps)} will be scaled to 0 meanwhile" if apps else "no app is configured to stop"
    return approvals.ask_restore(
        f"Replace database {names.live!r} in {env.name} with backup {manifest.backup_id} "
        f"(taken {manifest.snapshot_time}); the current one is kept as {names.kept!r}; {down}. "
        f"Type {names.live} to confirm.", names.live)


def require_passed(results: list[checks.Check], restored: str) -> None:
    failed = checks.failures(results)
    if failed:
        raise CheckFailed(f"restored copy {restored!r} failed its checks, nothing was swapped: {failed}")


def restore_and_check(env: EnvironmentConfig, manifest: backups.Manifest, record: RestoreRecord) -> None:
    """Restore into `<db>_restore_<time>` on the database's own server, like the live one,
    and check it against the manifest."""
    names = record.names
    record.timings.update(restore_into_scratch(env, manifest, names.restored, replacing=names.live))
    with timed(record.timings, "verify"):
        record.checks = verify_restored(env, manifest, names.restored, own_server=True, amcheck=False)
    require_passed(record.checks, names.restored)


def restore_beside(env: EnvironmentConfig, database: str, manifest: backups.Manifest,
                   record: RestoreRecord) -> None:
    """mode=new: restore and check the copy; keep it if it passes, drop it if not."""
    try:
        restore_and_check(env, manifest, record)
    except BaseException:  # a failure, or a cancel's SIGTERM: the same undo
        record.scratch = drop_restored_copy(env, database, record.names)
        raise


def restore_and_swap(env: EnvironmentConfig, database: str, manifest: backups.Manifest,
                     record: RestoreRecord) -> None:
    """mode=swap: scale the apps to 0, terminate sessions, restore beside, check, swap,
    scale back, health. A failure rolls back through the hooks in reverse (apps down
    again, swap back, apps to their replicas); then the restored copy is dropped."""
    names = record.names
    record.apps = [remember_replicas(env, service) for service in env.database(database).apps]
    record.swapped = find_swap(env, database, names, record.original_oid)
    if record.swapped:
        record.notes.append(f"An earlier attempt of this run swapped {names.live!r} after its checks passed, "
                            "then stopped; this attempt went on from the scale-up.")
    reports.publish(reports.restore(record))  # the checkpoint, for a person should this run die
    try:
        with transaction():
            record.changed = True
            record.down_from = time.time()
            with timed(record.timings, "scale to 0"):
                for app in record.apps:
                    scale_down(env, app)
                wait_scaled_down(env, record.apps)
            with timed(record.timings, "terminate sessions"):
                record.sessions_terminated = terminate_connections(env, database, names.live)
            if not record.swapped:  # a resumed attempt whose first one swapped skips to the scale-up
                restore_and_check(env, manifest, record)
            fault_point("restore.before-swap")
            with timed(record.timings, "swap"):
                record.sessions_terminated += swap_in(env, database, names, record.original_oid)
            record.swapped = True
            fault_point("restore.after-swap")
            with timed(record.timings, "scale back and healthy"):
                for app in record.apps:
                    scale_up(env, app)
                fault_point("restore.after-scale-up")
                healthy = wait_healthy(env, record.apps)
            record.healthy_at, record.replicas_after = healthy["healthy_at"], healthy["replicas"]
    except BaseException:  # a failure, or a cancel's SIGTERM: the same undo
        record.scratch = drop_restored_copy(env, database, names)
        raise


RESTORES = {"swap": restore_and_swap, "new": restore_beside}


def drop_restored_copy(env: EnvironmentConfig, database: str, names: RestoreNames) -> str:
    """After a failure, drop `<db>_restore_<time>`. Only a committed swap ever gives the
    restored copy another name, and the original never gets this one, so dropping it by
    name is safe even when a swap back failed."""
    state = drop_scratch(env, database, names.restored, own_server=True, return_state=True)
    if not state.is_completed():
        return f"drop failed, drop it by hand: {scrub(state.message or '')}"
    return "dropped" if state.result() else "not created"


def check_recovery(env: EnvironmentConfig, database: str, record: RestoreRecord) -> None:
    """After a failure that touched production: what the report says of its state now."""
    state = check_recovered(env, database, record, return_state=True)
    if not state.is_completed():
        record.recovery = {"recovery check failed": scrub(state.message or "")}
        return
    found = state.result()
    record.recovery, record.healthy_at = found["verdict"], found["healthy_at"]
    record.replicas_after = found["verdict"]["replicas"]


# --- flow ---------------------------------------------------------------------------------------------


@task(**retries.policy("azure"), **checkpoints.CHECKPOINT)
def azure_point_in_time(env: EnvironmentConfig, database: str, backup_id: str | None, mode: str) -> datetime | None:
    """An Azure server restores as a new server (mode 'new'), to the time `backup_id` (one of
    `az postgres flexible-server backup list`) completed, or to now."""
    cfg = env.database(database).azure_server()
    if mode != "new":
        raise ConfigError(f"mode {mode!r}: database {database!r} is an Azure flexible server, which restores as a "
                          "new server beside production; use mode 'new', then point the application at it")
    if backup_id is None:
        return None
    with azure.client(cfg) as arm:
        found = azure.get_backup(arm, cfg, backup_id)
    if found is None or found.completed_at is None:
        raise ConfigError(f"backup_id {backup_id!r} is not a completed backup of Azure server {cfg.server}; see "
                          "`az postgres flexible-server backup list` or backup-database's report")
    return found.completed_at


@flow(name="restore-database", flow_run_name=namer("restore-database"), **HOOKS)
def restore_database(environment: str, database: str, backup_id: str | None = None,
                     mode: Literal["swap", "new"] = "swap", emergency: bool = False,
                     emergency_reason: str | None = None) -> dict[str, Any]:
    """Restore the newest valid backup (or `backup_id`) of a database. `swap` puts it in
    production's place: after the operator types the database's name, the apps that use
    it are scaled to 0 (their replicas remembered), the remaining sessions terminated, the
    backup restored into `<db>_restore_<time>` and its row counts checked against the
    manifest, then the two databases swap names (the old one is kept as
    `<db>_pre_restore_<time>`, never dropped) and the apps come back and must be healthy.
    Any failure puts production back as it was and ends Failed. `new` only restores and
    checks the copy beside production, and keeps it.

    Args:
        environment: The environment, as named by its file environments/<name>.yaml.
        database: The database to restore, as named under `databases` in the environment.
        backup_id: The backup to restore, like 20260101T020000Z-a1b2c3; empty for the newest valid one.
        mode: "swap" replaces production (typed confirmation, apps stopped meanwhile); "new" restores
            a copy beside it and touches nothing else.
        emergency: A swap outside the maintenance windows or inside a freeze: goes ahead after an approval.
        emergency_reason: Why it cannot wait for the next window (required with emergency).
    """
    env = load_environment(environment)
    cfg = env.database(database)
    mode = check_choice("mode", mode, MODES, "a restore mode")
    if cfg.kind == "azure-flexible":  # Azure restores to a new server, at a backup's completion time
        return azure_restore(environment, database, azure_point_in_time(env, database, backup_id,
                                                                                     mode))
    cfg.check_secrets()
    record = RestoreRecord(env.name, database, mode, name_copies(env, database))
    record.resumed(resume_attempt())
    started = time.monotonic()
    try:
        manifest = choose_backup(env, database, backup_id)
        record.chose(manifest)
        record.original_oid = check_names(env, database, record.names, mode)
        with ExitStack() as change:
            if mode == "swap":  # a copy beside production changes nothing: no window, no change slot
                changes.admit(env, "restore-database", record, emergency=emergency,
                              emergency_reason=emergency_reason)
                record.approver = confirm_swap(env, record, manifest)
                change.enter_context(changes.one_change(env, "restore-database"))
            with holding(locks.restore(env, database, mode), timeout_seconds=LOCK_TIMEOUT):
                RESTORES[mode](env, database, manifest, record)
        record.outcome = "succeeded"
    except BaseException as exc:  # a failure, or a cancel's SIGTERM
        record.fail(exc)
        if record.changed:
            check_recovery(env, database, record)
        raise
    finally:
        record.timings["total"] = round(time.monotonic() - started, 3)
        reports.publish(reports.restore(record))
    return {
        "runbook": "restore-database", "environment": env.name, "database": database, "mode": mode,
        "backup_id": manifest.backup_id, "names": asdict(record.names), "approver": record.approver,
        "replicas_before": record.replicas_before, "replicas_after": record.replicas_after,
        "sessions_terminated": record.sessions_terminated, "app_down_seconds": record.app_down_seconds,
        "checks": [asdict(c) for c in record.checks], "timings": record.timings,
        "artifact": artifact_key("restore", env.name, database),
    }


if __name__ == "__main__":
    import sys

    args = sys.argv[1:] + [None] * 4  # environment database [backup_id] [mode]
    restore_database(args[0] or "sandbox", args[1] or "fleet", args[2], args[3] or "swap")
