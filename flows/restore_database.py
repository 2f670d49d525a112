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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.transactions import Transaction, transaction

from flows.deploy import live_deployment
from flows.restore_test import choose_backup, drop_scratch, restore_into_scratch, restore_server
from tasks import backups, checks, http_checks, kubernetes, postgres
from tasks.config import EnvironmentConfig, load_environment
from tasks.errors import CheckFailed, ConfigError, PermanentError, PolicyRefused
from tasks.faults import fault_point
from tasks.prefect_api import artifact_key, emit, holding, md_table, publish_report, remember_for_rollback
from tasks.redact import scrub

MODES = ("swap", "new")
LOCK_TIMEOUT = timedelta(hours=1).total_seconds()
APPROVAL_TIMEOUT = int(timedelta(hours=4).total_seconds())
PG_NAME_MAX = 63  # bytes; PostgreSQL silently truncates longer identifiers


# --- inputs a human gives -----------------------------------------------------------------------------


class RestoreConfirmation(RunInput):
    """Type the database's name to replace it with the backup."""

    confirm: str
    approver: str


# --- decisions (no I/O) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreNames:
    live: str  # the database the apps use
    restored: str  # <db>_restore_<timestamp>: the backup is restored here
    kept: str  # <db>_pre_restore_<timestamp>: the live database after a swap


def restore_names(dbname: str, at: datetime) -> RestoreNames:
    """The names a restore uses, stamped with its UTC start time, within PostgreSQL's 63
    bytes (a long database name is shortened in the copies' names, never the stamp)."""
    stamp = f"{at.astimezone(UTC):%Y%m%d%H%M%S}"
    base = dbname[: PG_NAME_MAX - len("_pre_restore_") - len(stamp)]
    return RestoreNames(dbname, f"{base}_restore_{stamp}", f"{base}_pre_restore_{stamp}")


def check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is not a restore mode; allowed: {', '.join(MODES)}")
    return str(mode)


def confirmation_refused(typed: str, approver: str, dbname: str) -> str | None:
    """Why a confirmation does not count, or None if it does: the approver typed the
    database's exact name, and gave theirs."""
    if typed.strip() != dbname:
        return f"restore not confirmed: expected the database name {dbname!r}, got {typed!r}"
    if not approver.strip():
        return "restore confirmation needs the approver's name"
    return None


def scaled_down(dep: dict[str, Any]) -> bool:
    """The Deployment's controller has seen replicas 0 and counts no pod left. kubectl's
    rollout-status rules call a scale-down done before that; pods already shutting down
    are not counted, so their sessions are terminated next."""
    generation = (dep.get("metadata") or {}).get("generation") or 0
    status = dep.get("status") or {}
    return ((dep.get("spec") or {}).get("replicas") == 0 and generation <= (status.get("observedGeneration") or 0)
            and not status.get("replicas"))


@dataclass(frozen=True)
class App:
    """A service that uses the database, and the replicas it ran before the restore."""

    service: str
    namespace: str
    deployment: str
    replicas: int


@dataclass
class RestoreRecord:
    """What the report says: filled in step by step."""

    environment: str
    database: str
    mode: str
    names: RestoreNames
    outcome: str = "running"
    approver: str | None = None
    backup: dict[str, Any] = field(default_factory=dict)
    original_oid: int | None = None
    apps: list[App] = field(default_factory=list)
    replicas_after: dict[str, int] = field(default_factory=dict)
    sessions_terminated: int = 0
    checks: list[checks.Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    down_from: float | None = None  # epoch seconds: the first scale to 0
    healthy_at: float | None = None  # epoch seconds: every app healthy again
    changed: bool = False  # production was touched: apps scaled or sessions terminated
    swapped: bool = False
    scratch: str = ""  # what became of the restored copy after a failure
    failure: str | None = None
    recovery: dict[str, Any] = field(default_factory=dict)

    @property
    def app_down_seconds(self) -> float | None:
        if self.down_from is None or self.healthy_at is None:
            return None
        return round(self.healthy_at - self.down_from, 3)


def require_passed(results: list[checks.Check], restored: str) -> None:
    failed = [c for c in results if not c.passed]
    if failed:
        raise CheckFailed(f"restored copy {restored!r} failed its checks, nothing was swapped: "
                          + "; ".join(f"{c.name}: {c.detail}" for c in failed))


# --- tasks: PostgreSQL ----------------------------------------------------------------------------


@task
def check_names(env: EnvironmentConfig, database: str, names: RestoreNames, mode: str) -> int | None:
    """The copies' names are free and, for a swap, the live database exists. Returns its oid."""
    server = restore_server(env, database, own_server=True)
    oid = postgres.database_oid(server, names.live)
    if mode == "swap" and oid is None:
        raise ConfigError(f"database {names.live!r} does not exist on {server.describe()}: nothing to swap; "
                          "restore it with mode='new' and rename the copy")
    taken = [n for n in (names.restored, names.kept) if postgres.database_exists(server, n)]
    if taken:
        raise PermanentError(f"database(s) {', '.join(taken)} already exist on {server.describe()}; "
                             "a restore never overwrites one: drop or rename it, or start again in a second")
    return oid


@task(cache_policy=NO_CACHE)
def terminate_connections(env: EnvironmentConfig, database: str, dbname: str) -> int:
    """`pg_terminate_backend` on every session of the live database but ours."""
    return postgres.terminate_connections(restore_server(env, database, own_server=True), dbname)


@task
def check_restored(env: EnvironmentConfig, manifest: backups.Manifest, dbname: str) -> list[checks.Check]:
    """Row counts against the manifest, and the restore-test smoke queries."""
    cfg = env.database(manifest.database)
    with postgres.connect(restore_server(env, manifest.database, own_server=True), dbname) as conn:
        results = [checks.row_counts_match(manifest.row_counts, postgres.row_counts(conn))]
        for q in cfg.restore_test.smoke_queries:
            try:
                results.append(checks.smoke_query(q, postgres.first_value(conn, q.sql)))
            except CheckFailed as exc:
                results.append(checks.Check(f"smoke: {q.name}", False, f"query failed: {exc}"))
    return results


@task(cache_policy=NO_CACHE)
def swap_in(env: EnvironmentConfig, database: str, names: RestoreNames) -> int:
    """`ALTER DATABASE live RENAME TO <db>_pre_restore_…; ALTER DATABASE <db>_restore_… RENAME
    TO live`, both in one transaction, with new sessions refused meanwhile. Returns the
    sessions it terminated."""
    remember_for_rollback(env=env, database=database, names=names)
    return postgres.swap_databases(restore_server(env, database, own_server=True), names.live, names.restored, names.kept)


@swap_in.on_rollback
def swap_back(txn: Transaction) -> None:
    """Undo of swap_in: the original takes its name back, the restored copy its scratch name."""
    env: EnvironmentConfig = txn.get("env")
    names: RestoreNames = txn.get("names")
    postgres.swap_databases(restore_server(env, txn.get("database"), own_server=True), names.live, names.kept, names.restored)


# --- tasks: the apps ----------------------------------------------------------------------------------


@task
def remember_replicas(env: EnvironmentConfig, service: str) -> App:
    """The checkpoint: which Deployment serves the service, and its replicas now."""
    svc = env.service(service)
    with kubernetes.api_client(env.kubernetes) as api:
        name = live_deployment(api, svc)
        dep = kubernetes.read_deployment(api, svc.namespace, name)
    return App(service, svc.namespace, name, int(dep.get("spec", {}).get("replicas", 1)))


def _wait_scaled_down(api: Any, app: App, timeout_s: float, poll_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while not scaled_down(kubernetes.read_deployment(api, app.namespace, app.deployment)):
        if time.monotonic() > deadline:
            raise CheckFailed(f"Deployment {app.deployment!r} in namespace {app.namespace!r} still has pods "
                              f"{timeout_s:g}s after scaling to 0")
        time.sleep(poll_s)


def _scale_and_wait(env: EnvironmentConfig, app: App, replicas: int) -> None:
    timeout = env.service(app.service).rollout_timeout.total_seconds()
    with kubernetes.api_client(env.kubernetes) as api:
        kubernetes.scale(api, app.namespace, app.deployment, replicas)
        if replicas == 0:
            _wait_scaled_down(api, app, timeout)
        else:
            kubernetes.wait_for_rollout(api, app.namespace, app.deployment, timeout)


@task(cache_policy=NO_CACHE)
def scale_down(env: EnvironmentConfig, app: App) -> int:
    """`kubectl scale --replicas=0`. Returns the replicas it had, which the undo puts back."""
    with kubernetes.api_client(env.kubernetes) as api:
        before = kubernetes.scale(api, app.namespace, app.deployment, 0)
    remember_for_rollback(env=env, app=replace(app, replicas=before))
    return before


@scale_down.on_rollback
def scale_back(txn: Transaction) -> None:
    """Undo of scale_down: the replicas it had, rolled out."""
    app: App = txn.get("app")
    _scale_and_wait(txn.get("env"), app, app.replicas)


@task
def wait_scaled_down(env: EnvironmentConfig, apps: list[App]) -> None:
    """Until no pod of the apps is left."""
    with kubernetes.api_client(env.kubernetes) as api:
        for app in apps:
            _wait_scaled_down(api, app, env.service(app.service).rollout_timeout.total_seconds())


@task(cache_policy=NO_CACHE)
def scale_up(env: EnvironmentConfig, app: App) -> None:
    """`kubectl scale --replicas=<as before>`. The undo takes it down again, so that a swap
    back never happens under a running app."""
    with kubernetes.api_client(env.kubernetes) as api:
        kubernetes.scale(api, app.namespace, app.deployment, app.replicas)
    remember_for_rollback(env=env, app=app)


@scale_up.on_rollback
def take_down_again(txn: Transaction) -> None:
    _scale_and_wait(txn.get("env"), txn.get("app"), 0)


@task
def wait_healthy(env: EnvironmentConfig, apps: list[App]) -> dict[str, Any]:
    """`kubectl rollout status` for each app, then its health URLs answer 2xx."""
    replicas: dict[str, int] = {}
    with kubernetes.api_client(env.kubernetes) as api, httpx.Client(timeout=5.0) as client:
        for app in apps:
            svc = env.service(app.service)
            if app.replicas > 0:
                kubernetes.wait_for_rollout(api, app.namespace, app.deployment, svc.rollout_timeout.total_seconds())
                if http_checks.wait_healthy(client, svc.health_urls, svc.rollout_timeout.total_seconds()) is None:
                    raise CheckFailed(f"{app.service} is not healthy after the restore: {', '.join(svc.health_urls)}")
            dep = kubernetes.read_deployment(api, app.namespace, app.deployment)
            replicas[app.service] = int(dep.get("spec", {}).get("replicas", 1))
    return {"healthy_at": time.time(), "replicas": replicas}


@task
def check_recovered(env: EnvironmentConfig, database: str, names: RestoreNames, original_oid: int | None,
                    apps: list[App]) -> dict[str, Any]:
    """After a failure: is the original database live under its name, are the apps back at
    their replicas, and healthy?"""
    server = restore_server(env, database, own_server=True)
    live_oid = postgres.database_oid(server, names.live)
    replicas: dict[str, int] = {}
    healthy = True
    with kubernetes.api_client(env.kubernetes) as api, httpx.Client(timeout=5.0) as client:
        for app in apps:
            dep = kubernetes.read_deployment(api, app.namespace, app.deployment)
            replicas[app.service] = int(dep.get("spec", {}).get("replicas", 1))
            svc = env.service(app.service)
            if app.replicas > 0:
                waited = http_checks.wait_healthy(client, svc.health_urls, svc.rollout_timeout.total_seconds())
                healthy = healthy and waited is not None
    return {
        "original database live": live_oid is not None and live_oid == original_oid,
        "previous copy left": postgres.database_exists(server, names.kept),
        "replicas restored": all(replicas[a.service] == a.replicas for a in apps),
        "replicas": replicas,
        "healthy": healthy,
        "healthy_at": time.time() if healthy else None,
    }


# --- report -------------------------------------------------------------------------------------------


@task
def report_restore(record: RestoreRecord) -> None:
    """The report artifact; a run in progress writes it too, as the checkpoint to recover from by hand."""
    rec, names = record, record.names
    outcome = "IN PROGRESS" if rec.outcome == "running" else rec.outcome.upper()
    lines = [f"# Restore of `{rec.database}` in `{rec.environment}` ({rec.mode}): {outcome}", ""]
    if rec.outcome == "running":
        lines += [f"If this run dies, scale the apps back to the replicas below; `{names.live}` is production "
                  f"unless a swap happened, in which case the previous database is `{names.kept}`.", ""]
    if rec.failure:
        lines += [f"**What failed:** {rec.failure}", ""]
    if rec.recovery:
        lines += ["**Recovery:** " + "; ".join(f"{k}: {v}" for k, v in rec.recovery.items() if k != "healthy_at"),
                  ""]
    restored, previous = _where_the_copies_are(rec)
    rows = [
        {"figure": "backup id", "value": rec.backup.get("backup_id", "")},
        {"figure": "backup taken at", "value": rec.backup.get("taken_at", "")},
        {"figure": "backup size (MB)", "value": rec.backup.get("size_mb", "")},
        {"figure": "backup sha256", "value": rec.backup.get("sha256", "")},
        {"figure": "live database", "value": names.live},
        {"figure": "restored copy", "value": restored},
    ]
    if rec.mode == "swap":
        rows += [
            {"figure": "previous database", "value": previous},
            {"figure": "approver", "value": rec.approver or ""},
            {"figure": "sessions terminated", "value": rec.sessions_terminated},
            {"figure": "app-down time (s)", "value": "" if rec.app_down_seconds is None else rec.app_down_seconds},
        ]
    rows += [{"figure": f"{k} seconds", "value": v} for k, v in rec.timings.items()]
    lines += [md_table(rows), ""]
    if rec.apps:
        lines += ["## Apps", "", md_table([
            {"service": a.service, "deployment": f"{a.namespace}/{a.deployment}", "replicas before": a.replicas,
             "replicas after": rec.replicas_after.get(a.service, "")} for a in rec.apps]), ""]
    if rec.checks:
        lines += ["## Checks", "", md_table([
            {"check": c.name, "result": "pass" if c.passed else "FAIL", "figures": c.detail} for c in rec.checks])]
    publish_report(artifact_key("restore", rec.environment, rec.database), "\n".join(lines),
                   f"Restore of {rec.database} in {rec.environment}: {outcome}")
    if rec.outcome == "running":
        return
    payload = {
        "environment": rec.environment, "database": rec.database, "mode": rec.mode,
        "backup_id": rec.backup.get("backup_id"), "names": asdict(names), "approver": rec.approver,
        "replicas_before": {a.service: a.replicas for a in rec.apps}, "replicas_after": rec.replicas_after,
        "app_down_seconds": rec.app_down_seconds, "timings": rec.timings, "swapped": rec.swapped,
        "checks": {c.name: c.passed for c in rec.checks}, "error": rec.failure,
        "recovery": {k: v for k, v in rec.recovery.items() if k != "healthy_at"},
    }
    emit(f"runbook.restore.{rec.outcome}", f"runbook.database.{rec.environment}.{rec.database}", payload)


def _where_the_copies_are(rec: RestoreRecord) -> tuple[str, str]:
    """For the report: what became of the restored copy and of the previous database."""
    names = rec.names
    if rec.outcome == "running":
        return names.restored, names.live
    if rec.outcome == "succeeded":
        if rec.mode == "new":
            return f"{names.restored} (kept)", names.live
        return f"{names.restored} (now live as {names.live})", f"kept as {names.kept}"
    restored = f"{names.restored} ({rec.scratch})" if rec.scratch else names.restored
    if not rec.swapped:
        return restored, f"{names.live} (untouched)"
    if rec.recovery.get("original database live"):
        return restored, f"{names.live} (swapped back)"
    return f"{names.restored}: see the recovery line", f"{names.kept}: the swap back FAILED"


# --- steps a human takes ------------------------------------------------------------------------------


def confirm_swap(env: EnvironmentConfig, names: RestoreNames, manifest: backups.Manifest, apps: list[str]) -> str:
    """A swap replaces production data, so it always asks: type the database's name."""
    down = f"{', '.join(apps)} will be scaled to 0 meanwhile" if apps else "no app is configured to stop"
    answer = pause_flow_run(wait_for_input=RestoreConfirmation.with_initial_data(
        description=(f"Replace database {names.live!r} in {env.name} with backup {manifest.backup_id} "
                     f"(taken {manifest.snapshot_time}); the current one is kept as {names.kept!r}; {down}. "
                     f"Type {names.live} to confirm."),
        confirm="", approver=""), timeout=APPROVAL_TIMEOUT, poll_interval=1)
    refused = confirmation_refused(answer.confirm, answer.approver, names.live)
    if refused:
        raise PolicyRefused(refused)
    return answer.approver.strip()


# --- flow ---------------------------------------------------------------------------------------------


def locks(env: EnvironmentConfig, database: str, mode: str) -> dict[str, int]:
    """One restore of a database at a time; a swap also holds off its backups and the
    deploys of its apps, which would scale them up or connect mid-way."""
    held = {artifact_key("restore", env.name, database): 1}
    if mode == "swap":
        held[artifact_key("backup", env.name, database)] = 1
        held.update({artifact_key("deploy", env.name, app): 1 for app in env.database(database).apps})
    return held


@flow(name="restore-database")
def restore_database(environment: str, database: str, backup_id: str | None = None,
                     mode: Literal["swap", "new"] = "swap") -> dict[str, Any]:
    """Restore the newest valid backup (or `backup_id`) of a database. `swap` puts it in
    production's place: after the operator types the database's name, the apps that use
    it are scaled to 0 (their replicas remembered), the remaining sessions terminated, the
    backup restored into `<db>_restore_<time>` and its row counts checked against the
    manifest, then the two databases swap names (the old one is kept as
    `<db>_pre_restore_<time>`, never dropped) and the apps come back and must be healthy.
    Any failure puts production back as it was and ends Failed. `new` only restores and
    checks the copy beside production, and keeps it."""
    env = load_environment(environment)
    cfg = env.database(database)
    mode = check_mode(mode)
    cfg.check_secrets()
    record = RestoreRecord(env.name, database, mode, restore_names(cfg.dbname or database, datetime.now(UTC)))
    started = time.monotonic()
    try:
        manifest = choose_backup(env, database, backup_id)
        record.backup = {"backup_id": manifest.backup_id, "taken_at": manifest.snapshot_time,
                         "size_mb": round(manifest.size / 1e6, 2), "sha256": manifest.sha256}
        record.original_oid = check_names(env, database, record.names, mode)
        if mode == "swap":
            record.approver = confirm_swap(env, record.names, manifest, cfg.apps)
        with holding(locks(env, database, mode), timeout_seconds=LOCK_TIMEOUT):
            if mode == "swap":
                restore_and_swap(env, database, manifest, record)
            else:
                restore_beside(env, database, manifest, record)
        record.outcome = "succeeded"
    except Exception as exc:
        record.outcome = "failed"
        record.failure = scrub(str(exc))
        if record.changed:
            state = check_recovered(env, database, record.names, record.original_oid, record.apps,
                                    return_state=True)
            if state.is_completed():
                recovered = state.result()
                swap = "swapped back" if recovered["original database live"] else "NOT swapped back"
                record.recovery = {"swap": swap if record.swapped else "none happened", **recovered}
                record.replicas_after = recovered["replicas"]
                record.healthy_at = recovered["healthy_at"]
            else:
                record.recovery = {"recovery check failed": scrub(state.message or "")}
        record.timings["total"] = round(time.monotonic() - started, 3)
        report_restore(record)
        raise
    record.timings["total"] = round(time.monotonic() - started, 3)
    report_restore(record)
    return {
        "runbook": "restore-database", "environment": env.name, "database": database, "mode": mode,
        "backup_id": manifest.backup_id, "names": asdict(record.names), "approver": record.approver,
        "replicas_before": {a.service: a.replicas for a in record.apps}, "replicas_after": record.replicas_after,
        "sessions_terminated": record.sessions_terminated, "app_down_seconds": record.app_down_seconds,
        "checks": [asdict(c) for c in record.checks], "timings": record.timings,
        "artifact": artifact_key("restore", env.name, database),
    }


def restore_and_swap(env: EnvironmentConfig, database: str, manifest: backups.Manifest,
                     record: RestoreRecord) -> None:
    """Scale the apps to 0, terminate sessions, restore beside, check, swap, scale back,
    health. A failure rolls back through the hooks in reverse: apps down again, swap
    back, apps to their replicas; then the restored copy is dropped."""
    names = record.names
    record.apps = [remember_replicas(env, service) for service in env.database(database).apps]
    report_restore(record)  # the checkpoint, for a person should this run die
    try:
        with transaction():
            record.changed = True
            record.down_from = time.time()
            with timed(record, "scale to 0"):
                for app in record.apps:
                    scale_down(env, app)
                wait_scaled_down(env, record.apps)
            with timed(record, "terminate sessions"):
                record.sessions_terminated = terminate_connections(env, database, names.live)
            record.timings.update(restore_into_scratch(env, manifest, names.restored, replacing=names.live))
            with timed(record, "verify"):
                record.checks = check_restored(env, manifest, names.restored)
            require_passed(record.checks, names.restored)
            fault_point("restore.before-swap")
            with timed(record, "swap"):
                record.sessions_terminated += swap_in(env, database, names)
            record.swapped = True
            fault_point("restore.after-swap")
            with timed(record, "scale back and healthy"):
                for app in record.apps:
                    scale_up(env, app)
                fault_point("restore.after-scale-up")
                healthy = wait_healthy(env, record.apps)
            record.healthy_at = healthy["healthy_at"]
            record.replicas_after = healthy["replicas"]
    except Exception:
        record.scratch = drop_restored_copy(env, database, names)
        raise


@contextmanager
def timed(record: RestoreRecord, step: str) -> Iterator[None]:
    clock = time.monotonic()
    try:
        yield
    finally:
        record.timings[step] = round(time.monotonic() - clock, 3)


def restore_beside(env: EnvironmentConfig, database: str, manifest: backups.Manifest,
                   record: RestoreRecord) -> None:
    """Restore into `<db>_restore_<time>` and check it; keep it if it passes, drop it if not."""
    names = record.names
    try:
        record.timings.update(restore_into_scratch(env, manifest, names.restored, replacing=names.live))
        with timed(record, "verify"):
            record.checks = check_restored(env, manifest, names.restored)
        require_passed(record.checks, names.restored)
    except Exception:
        record.scratch = drop_restored_copy(env, database, names)
        raise


def drop_restored_copy(env: EnvironmentConfig, database: str, names: RestoreNames) -> str:
    """After a failure, drop `<db>_restore_<time>`. Only a committed swap ever gives the
    restored copy another name, and the original never gets this one, so dropping it by
    name is safe even when a swap back failed."""
    state = drop_scratch(env, database, names.restored, own_server=True, return_state=True)
    if not state.is_completed():
        return f"drop failed, drop it by hand: {scrub(state.message or '')}"
    return "dropped" if state.result() else "not created"


if __name__ == "__main__":
    import sys

    args = sys.argv[1:] + [None] * 4  # environment database [backup_id] [mode]
    restore_database(args[0] or "sandbox", args[1] or "fleet", args[2], args[3] or "swap")
