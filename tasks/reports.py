"""Every runbook's report, rendered in one place.

A flow fills in a record of what it did (`tasks.records`, or a few values), asks this
module for its `Report` and publishes it as its last step:

    reports.publish(reports.deploy(record, svc))

A `Report` is a small record: a title and an outcome, what failed, figures, one checks
table (pass/FAIL with its figures), one timings table, sections with more tables, links,
the table artifacts that go with it and the `runbook.*` events it emits. `render` turns it
into the markdown of the run's artifact; nothing else in the project writes markdown.
Every string leaves through `tasks.prefect_api`, which scrubs secrets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from prefect import task

from tasks import checkpoints, prefect_api
from tasks.backups import Manifest
from tasks.checks import Check, failures
from tasks.config import EnvironmentConfig, ServiceConfig
from tasks.migration_plan import HISTORY_TABLE, result_rows
from tasks.naming import artifact_key
from tasks.pgbackrest import PhysicalBackup, StanzaInfo
from tasks.records import (
    ClusterRecord,
    DeployRecord,
    DrRecord,
    MaintenanceRecord,
    MigrationRecord,
    RestoreRecord,
)
from tasks.retention import RetentionPlan

LOG_CHARS = 20_000  # of a Job's log kept in a report: the end, where the error is


@dataclass
class Section:
    heading: str
    lines: list[str] = field(default_factory=list)  # markdown lines: bullets, paragraphs
    rows: list[dict[str, Any]] | None = None
    columns: list[str] | None = None
    code: str | None = None  # a log, shown verbatim


@dataclass
class Table:
    """A table artifact of its own, for the UI's artifact list."""

    key: str
    rows: list[dict[str, Any]]
    description: str


@dataclass
class Event:
    name: str  # runbook.<runbook>.<what happened>
    resource: str  # runbook.<kind>.<environment>.<name>
    payload: dict[str, Any]


@dataclass
class Report:
    key: str  # artifact key: lower-case letters, digits and '-'
    subject: str  # "Deploy of `api` to `sandbox`"
    outcome: str  # "SUCCEEDED", "FAILED", "PASSED", ...
    failure: str | None = None
    notes: list[str] = field(default_factory=list)  # paragraphs after what failed
    figures: list[tuple[str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def description(self) -> str:
        return f"{self.subject.replace('`', '')}: {self.outcome}"


# --- rendering ----------------------------------------------------------------------------------


def md_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "_(none)_\n"
    cols = list(columns or rows[0].keys())
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        out.append("| " + " | ".join(_cell(row.get(c, "")) for c in cols) + " |")
    return "\n".join(out) + "\n"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def check_rows(checks: Sequence[Check]) -> list[dict[str, Any]]:
    """The one checks table: each check, pass or FAIL, with its figures."""
    return [{"check": c.name, "result": "pass" if c.passed else "FAIL", "figures": c.detail} for c in checks]


def timing_rows(timings: dict[str, float]) -> list[dict[str, Any]]:
    """The one timings table: each step and its seconds."""
    return [{"step": step, "seconds": seconds} for step, seconds in timings.items()]


def render(report: Report) -> str:
    lines = [f"# {report.subject}: {report.outcome}", ""]
    if report.failure:
        lines += [f"**What failed:** {report.failure}", ""]
    for note in report.notes:
        lines += [note, ""]
    if report.figures:
        lines += [md_table([{"figure": k, "value": v} for k, v in report.figures]), ""]
    if report.checks:
        lines += ["## Checks", "", md_table(check_rows(report.checks)), ""]
    if report.timings:
        lines += ["## Timings", "", md_table(timing_rows(report.timings)), ""]
    for s in report.sections:
        lines += [f"## {s.heading}", "", *s.lines]
        if s.lines:
            lines.append("")
        if s.rows is not None:
            lines += [md_table(s.rows, s.columns), ""]
        if s.code is not None:
            lines += ["```text", s.code.replace("```", "'''").rstrip("\n"), "```", ""]
    if report.links:
        lines += ["## Links", "", *(f"- [{label}]({url})" for label, url in report.links), ""]
    return "\n".join(lines)


@task(name="report", **checkpoints.REDO)
def publish(report: Report) -> str:
    """The run's evidence: its report artifact, its table artifacts and its events."""
    prefect_api.publish_report(report.key, render(report), report.description)
    for t in report.tables:
        prefect_api.publish_table(t.key, t.rows, t.description)
    for e in report.events:
        prefect_api.emit(e.name, e.resource, e.payload)
    return report.outcome


def _database(env: str, database: str) -> str:
    return f"runbook.database.{env}.{database}"


def _service(env: str, service: str) -> str:
    return f"runbook.service.{env}.{service}"


# --- backups -------------------------------------------------------------------------------------


def _compression(manifest: Manifest) -> str:
    return manifest.compression or "gzip (pg_dump's, before the setting)"


def _raw_mb(manifest: Manifest) -> str:
    raw = [f.raw_size for f in manifest.files]
    return f"{sum(raw) / 1e6:.2f}" if all(r is not None for r in raw) else "(compressed by pg_dump)"


def backup(env: EnvironmentConfig, database: str, manifest: Manifest | None, reused: bool,
           plan: RetentionPlan | None, error: str | None, preflight: dict[str, Any],
           server_backup: dict[str, Any] | None = None) -> Report:
    cfg = env.database(database)
    outcome = "FAILED" if error else ("REUSED committed backup" if reused else "OK")
    report = Report(artifact_key("backup", env.name, database), f"Backup of `{database}` in `{env.name}`", outcome,
                    failure=error)
    if error:
        report.notes.append("No manifest was written for a failed attempt; its upload was aborted or deleted. "
                            "Retention did not run.")
    if manifest:
        dump_s = manifest.durations.get("dump", 0.0)
        report.figures = [
            ("backup id", manifest.backup_id),
            ("storage", f"{cfg.storage.url}/{database}/{manifest.backup_id}/"),
            ("format", manifest.format),
            ("compression", _compression(manifest)),
            ("size (MB)", f"{manifest.size / 1e6:.2f}"),
            ("uncompressed dump (MB)", _raw_mb(manifest)),
            ("database size (MB)", f"{manifest.database_size / 1e6:.2f}"),
            ("sha256", manifest.sha256),
            ("snapshot time", manifest.snapshot_time),
            ("LSN", manifest.lsn),
            ("rows", sum(manifest.row_counts.values())),
            ("tables", len(manifest.row_counts)),
            ("throughput (MB/s of database)", f"{manifest.database_size / 1e6 / dump_s:.1f}" if dump_s else ""),
            ("server / pg_dump", f"{manifest.server_version} / {manifest.pg_dump_version}"),
        ]
        report.timings = dict(manifest.durations)
        report.sections.append(Section("Row counts", rows=[{"table": t, "rows": n}
                                                           for t, n in sorted(manifest.row_counts.items())]))
    report.figures = azure_backup_figures(server_backup) + report.figures
    if preflight:
        report.sections.append(Section("Preflight", rows=[{"check": k, "result": v} for k, v in preflight.items()]))
    if plan is not None:
        report.sections.append(Section("Retention", [f"Kept {len(plan.keep)}, deleted {len(plan.delete)}."],
                                       rows=plan.rows()))
        report.tables.append(Table(artifact_key("backup-catalogue", env.name, database), plan.rows(),
                                   f"Backup catalogue of {database} in {env.name} after retention"))
    resource = _database(env.name, database)
    if error or manifest is None:
        report.events.append(Event("runbook.backup.failed", resource,
                                   {"environment": env.name, "database": database, "error": error}))
    else:
        report.events.append(Event("runbook.backup.succeeded", resource, {
            "environment": env.name, "database": database, "backup_id": manifest.backup_id,
            "size": manifest.size, "sha256": manifest.sha256, "compression": _compression(manifest),
            "reused": reused, "dump_seconds": manifest.durations.get("dump"), "deleted": sorted(plan.delete) if plan else [],
            "azure_backup": server_backup["name"] if server_backup else None,
        }))
    return report


def backup_all(env: EnvironmentConfig, results: list[dict[str, Any]]) -> Report:
    rows = [{"database": r["database"], "outcome": r["outcome"], "backup_id": r.get("backup_id", ""),
             "size_mb": round(r.get("size", 0) / 1e6, 2), "error": r.get("error", "")} for r in results]
    failed = [r["database"] for r in results if r["outcome"] != "ok"]
    report = Report(artifact_key("backup-all-report", env.name), f"Backups of every database in `{env.name}`",
                    "FAILED" if failed else "OK", failure=f"backup failed for {', '.join(failed)}" if failed else None,
                    figures=[("databases", len(results)), ("failed", len(failed))],
                    sections=[Section("Backups", rows=rows)])
    report.tables.append(Table(artifact_key("backup-all", env.name), rows, f"Backups of every database in {env.name}"))
    report.events.append(Event(f"runbook.backup-all.{'failed' if failed else 'succeeded'}",
                               f"runbook.environment.{env.name}",
                               {"environment": env.name, "databases": len(results), "failed": failed}))
    return report


def restore_test(env: EnvironmentConfig, database: str, manifest: Manifest | None, scratch: str,
                 results: list[Check], timings: dict[str, float], dropped: bool | None, error: str | None) -> Report:
    passed = error is None and all(c.passed for c in results)
    report = Report(artifact_key("restore-test", env.name, database), f"Restore test of `{database}` in `{env.name}`",
                    "PASSED" if passed else "FAILED", failure=error, checks=list(results), timings=dict(timings))
    if manifest:
        report.figures = [
            ("backup id", manifest.backup_id),
            ("backup taken at", manifest.snapshot_time),
            ("backup size (MB)", f"{manifest.size / 1e6:.2f}"),
            ("compression", _compression(manifest)),
            ("sha256", manifest.sha256),
            ("scratch database", scratch),
            ("scratch database dropped", dropped),
        ]
    report.tables.append(Table(artifact_key("restore-test-checks", env.name, database), check_rows(results),
                               f"Restore test checks of {database} in {env.name}"))
    report.events.append(Event(f"runbook.restore-test.{'passed' if passed else 'failed'}", _database(env.name, database), {
        "environment": env.name, "database": database, "backup_id": manifest.backup_id if manifest else None,
        "checks": {c.name: c.passed for c in results}, "timings": timings, "error": error,
    }))
    return report


# --- deploys ----------------------------------------------------------------------------------------


def deploy(rec: DeployRecord, svc: ServiceConfig) -> Report:
    report = Report(artifact_key("deploy", rec.environment, rec.service),
                    f"Deploy of `{rec.service}` to `{rec.environment}`", rec.outcome.upper(), failure=rec.failure,
                    checks=list(rec.smoke), timings=dict(rec.timings), notes=list(rec.notes))
    report.figures = [
        ("strategy", rec.strategy),
        ("image before", rec.before.get("image", "")),
        ("image requested", rec.image),
        ("image after", rec.after.get("image", "")),
        ("revision before / after", f"{rec.before.get('revision', '')} / {rec.after.get('revision', '')}"),
        ("approver", rec.approver or "(not required)"),
        ("pre-deploy backup", rec.backup_id or "(none)"),
        ("migration", _migration_summary(rec.migration)),
        ("rolled back", rec.rolled_back),
        ("time to recovery (s)", "" if rec.recovery_seconds is None else f"{rec.recovery_seconds:.2f}"),
        ("service", svc.url or ", ".join(svc.health_urls)),
    ]
    rows = []
    for a in rec.analyses:
        report.sections.append(Section(f"Analysis: {a['label']}: {a['phase']}",
                                       [f"- {r}" for r in a["reasons"][:5]], rows=a["rows"]))
        rows += [{"analysis": a["label"], **r} for r in a["rows"]]
    report.links = [("service", svc.url)] if svc.url else []
    report.tables.append(Table(artifact_key("deploy-analysis", rec.environment, rec.service),
                               rows or [{"analysis": "(none)"}],
                               f"Analysis measurements of the deploy of {rec.service} to {rec.environment}"))
    payload = {k: v for k, v in asdict(rec).items() if k != "analyses"}
    resource = _service(rec.environment, rec.service)
    report.events.append(Event(f"runbook.deploy.{rec.outcome if rec.outcome in ('succeeded', 'cancelled') else 'failed'}",
                               resource, payload))
    if rec.outcome != "succeeded" and rec.rolled_back:
        report.events.append(Event("runbook.deploy.rolled-back", resource, payload))
    return report


def _migration_summary(migration: dict[str, Any] | None) -> str:
    if not migration:
        return "(none)"
    return ", ".join(f"{k}: {migration.get(k)}" for k in ("outcome", "applied", "schema_version", "backup_id"))


def rollback(env: str, service: str, outcome: str, error: str | None, approver: str | None,
             figures: dict[str, Any]) -> Report:
    report = Report(artifact_key("rollback", env, service), f"Rollback of `{service}` in `{env}`", outcome.upper(),
                    failure=error, figures=[*figures.items(), ("approver", approver or "(not required)")])
    report.events.append(Event(f"runbook.rollback.{outcome}", _service(env, service),
                               {"environment": env, "service": service, "approver": approver, "error": error,
                                **{k: v for k, v in figures.items() if k != "healthy_after_seconds"}}))
    return report


def scaling(env: str, service: str, action: str, figures: dict[str, Any]) -> Report:
    report = Report(artifact_key(action, env, service), f"{action.capitalize()} of `{service}` in `{env}`", "DONE",
                    figures=list(figures.items()))
    report.events.append(Event(f"runbook.{action}.succeeded", _service(env, service),
                               {"environment": env, "service": service, **figures}))
    return report


# --- migrations --------------------------------------------------------------------------------------


def migration(rec: MigrationRecord) -> Report:
    report = Report(artifact_key("migrate", rec.environment, rec.database),
                    f"Migration of `{rec.database}` in `{rec.environment}`", rec.outcome.upper(), failure=rec.failure,
                    notes=list(rec.notes) + _what_changed(rec), figures=_migration_figures(rec), checks=list(rec.checks),
                    timings=dict(rec.timings))
    rows = result_rows(rec.plan, rec.applied, rec.running, rec.dry_run) if rec.plan else []
    if rec.plan is not None:
        report.sections.append(Section("Migrations", rows=rows,
                                       columns=["version", "file", "checksum", "status", "duration_s"]))
        report.tables.append(Table(artifact_key("migrate-migrations", rec.environment, rec.database), rows,
                                   f"Migrations of {rec.database} in {rec.environment}"))
    if rec.job.get("logs") is not None:
        report.sections.append(Section(f"Log of Job `{rec.job['name']}`", code=rec.job["logs"][-LOG_CHARS:]))
    event = "planned" if rec.dry_run and not rec.failure else ("failed" if rec.failure else "succeeded")
    report.events.append(Event(f"runbook.migration.{event}", _database(rec.environment, rec.database), {
        "environment": rec.environment, "database": rec.database, "mode": rec.mode, "dry_run": rec.dry_run,
        "outcome": rec.outcome, "applied": [a.file for a in rec.newly_applied],
        "failed_file": rec.running.file if rec.running else None, "backup_id": rec.backup_id,
        "schema_version": rec.schema_version, "image": rec.image, "exit_code": rec.job.get("exit_code"),
        "error": rec.failure,
    }))
    return report


def _migration_figures(rec: MigrationRecord) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("mode", "SQL files" if rec.mode == "sql" else "application's migration Job"),
        ("source", rec.source),
        ("dry run", rec.dry_run),
        ("checkpoint backup", rec.backup_id or "(none)"),
    ]
    if rec.mode == "sql":
        rows += [("target version", rec.target if rec.target is not None else "(latest)"),
                 ("schema version before", rec.plan.applied_version if rec.plan else ""),
                 ("schema version after" + (" the pending files" if rec.dry_run else ""),
                  rec.planned_version if rec.dry_run else rec.schema_version if rec.plan else ""),
                 ("history table", f"public.{HISTORY_TABLE}")]
        if rec.image:
            rows.append(("image being deployed", f"{rec.image} (SQL files do not use it)"))
    else:
        rows += [("image", rec.image),
                 ("Job", rec.job.get("name", "(not run)")),
                 ("exit code", rec.job.get("exit_code", "")),
                 ("Job condition", rec.job.get("reason") or "")]
    return rows


def _what_changed(rec: MigrationRecord) -> list[str]:
    """After a failure: exactly what was applied, and how to go back to the checkpoint."""
    if not rec.failure or rec.dry_run:
        return []
    applied = rec.newly_applied
    running = rec.running
    partial = running is not None and not running.transactional
    if not applied and not partial and not (rec.mode == "job" and rec.job):
        return ["Nothing was changed by this run."]
    lines = [f"- `{a.file}`: applied and recorded ({a.statements} statement(s), {a.seconds:.3f} s)" for a in applied]
    if running is not None:
        state = "stopped part-way, NOT rolled back (see above)" if partial else "rolled back"
        lines.append(f"- `{running.file}`: {state}")
    if rec.mode == "job" and rec.job:
        lines.append(f"- Job `{rec.job['name']}` ran `{rec.source}` from `{rec.image}` and exited with code "
                     f"{rec.job.get('exit_code')}: what it changed is in its log below")
    notes = ["## What was applied", "\n".join(lines), "## Next steps"]
    if running is not None and partial:
        notes.append(f"The database may be half-migrated: `{running.file}` ran without a transaction "
                     "and its failure is recorded, so later runs refuse until this is resolved.")
    elif rec.mode == "sql":
        notes.append(f"The database is at version {rec.schema_version}: every applied file is complete and "
                     "recorded. Fix the failed file (or what blocked it) and run again to continue.")
    if rec.backup_id:
        restore = (f"restore_database(environment={rec.environment!r}, database={rec.database!r}, "
                   f"backup_id={rec.backup_id!r})")
        notes += ["To go back to before this run, restore the checkpoint backup taken before the first change:",
                  f"```python\n{restore}\n```"]
    else:
        notes.append("No checkpoint backup was taken (migrations.backup_first is false): going back means "
                     "undoing the changes by hand.")
    return notes


# --- restores ------------------------------------------------------------------------------------------


def restore(rec: RestoreRecord) -> Report:
    """Also written while the run is in progress: the checkpoint to recover from by hand."""
    names = rec.names
    running = rec.outcome == "running"
    report = Report(artifact_key("restore", rec.environment, rec.database),
                    f"Restore of `{rec.database}` in `{rec.environment}` ({rec.mode})",
                    "IN PROGRESS" if running else rec.outcome.upper(), failure=rec.failure,
                    checks=list(rec.checks), timings=dict(rec.timings), notes=list(rec.notes))
    if running:
        report.notes.append(f"If this run dies, scale the apps back to the replicas below; `{names.live}` is "
                            f"production unless a swap happened, in which case the previous database is "
                            f"`{names.kept}`.")
    if rec.recovery:
        report.notes.append("**Recovery:** " + "; ".join(f"{k}: {v}" for k, v in rec.recovery.items()
                                                         if k != "healthy_at"))
    restored, previous = _where_the_copies_are(rec)
    report.figures = [
        ("backup id", rec.backup.get("backup_id", "")),
        ("backup taken at", rec.backup.get("taken_at", "")),
        ("backup size (MB)", rec.backup.get("size_mb", "")),
        ("backup sha256", rec.backup.get("sha256", "")),
        ("live database", names.live),
        ("restored copy", restored),
    ]
    if rec.mode == "swap":
        report.figures += [
            ("previous database", previous),
            ("approver", rec.approver or ""),
            ("sessions terminated", rec.sessions_terminated),
            ("app-down time (s)", "" if rec.app_down_seconds is None else rec.app_down_seconds),
        ]
    if rec.apps:
        report.sections.append(Section("Apps", rows=[
            {"service": a.service, "deployment": f"{a.namespace}/{a.deployment}", "replicas before": a.replicas,
             "replicas after": rec.replicas_after.get(a.service, "")} for a in rec.apps]))
    if not running:
        report.events.append(Event(f"runbook.restore.{rec.outcome}", _database(rec.environment, rec.database), {
            "environment": rec.environment, "database": rec.database, "mode": rec.mode,
            "backup_id": rec.backup.get("backup_id"), "names": asdict(names), "approver": rec.approver,
            "replicas_before": rec.replicas_before, "replicas_after": rec.replicas_after,
            "app_down_seconds": rec.app_down_seconds, "timings": rec.timings, "swapped": rec.swapped,
            "checks": {c.name: c.passed for c in rec.checks}, "error": rec.failure,
            "recovery": {k: v for k, v in rec.recovery.items() if k != "healthy_at"},
        }))
    return report


def _where_the_copies_are(rec: RestoreRecord) -> tuple[str, str]:
    """What became of the restored copy and of the previous database."""
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


# --- clusters: physical backups, PITR, physical restore tests, archive health ------------------------

_CLUSTER_SUBJECTS = {
    "physical-backup": "Physical backup of cluster `{c}` in `{e}`",
    "pitr-restore": "Point-in-time recovery of cluster `{c}` in `{e}`",
    "physical-restore-test": "Physical restore test of cluster `{c}` in `{e}`",
    "archive-health": "WAL archive health of cluster `{c}` in `{e}`",
}
_PASS_WORDS = {"physical-backup": "SUCCEEDED", "pitr-restore": "SUCCEEDED", "physical-restore-test": "PASSED",
               "archive-health": "HEALTHY"}


def physical_backup_figures(backup: PhysicalBackup, asked: str) -> dict[str, Any]:
    return {
        "backup label": backup.label,
        "type": backup.type if backup.type == asked else f"{backup.type} (asked: {asked}; pgBackRest takes a full "
                                                             "when there is none to build on)",
        "started": backup.start.isoformat(timespec="seconds"), "stopped": backup.stop.isoformat(timespec="seconds"),
        "duration (s)": round(backup.seconds, 1), "database size (MB)": round(backup.size / 1e6, 1),
        "stored (MB)": round(backup.repo_size / 1e6, 1), "WAL start": backup.wal_start, "WAL stop": backup.wal_stop,
        "start LSN": backup.lsn_start, "stop LSN": backup.lsn_stop,
    }


def pitr_plan_figures(at: datetime, data_dir: str, catalogue: StanzaInfo) -> dict[str, Any]:
    oldest, newest = catalogue.oldest(), catalogue.newest()
    return {"recovery target": at.isoformat(), "new data directory": data_dir,
            "backups in the repository": len(catalogue.backups),
            "oldest backup ends": oldest.stop.isoformat(timespec="seconds") if oldest else "(none)",
            "newest backup": newest.label if newest else "(none)",
            "WAL archive": f"{catalogue.archive_min}..{catalogue.archive_max}"}


def pitr_question(env: str, cluster: str, at: datetime) -> str:
    return (f"Recover cluster {cluster} in {env} to {at.isoformat()} on a new instance beside production? "
            "Approve to go on.")


def pitr_source(cluster: str, at: datetime) -> str:
    return f"point-in-time recovery of cluster {cluster} to {at.isoformat()}"


def extract_figures(manifest: Manifest, discarded: dict[str, bool]) -> dict[str, Any]:
    return {"extract backup id": manifest.backup_id, "extract size (MB)": round(manifest.size / 1e6, 2),
            "extract rows": sum(manifest.row_counts.values()),
            "recovered instance removed": discarded["removed"]}


def swap_figures(result: dict[str, Any]) -> dict[str, Any]:
    names = result["names"]
    return {"swapped into production as": names["live"], "previous live data kept as": names["kept"],
            "swap approver": result.get("approver"), "apps down (s)": result.get("app_down_seconds")}


def restore_test_figures(newest: PhysicalBackup, catalogue: StanzaInfo, status: Any) -> dict[str, Any]:
    """What a physical restore test restores, and the archive it replays (RPO: the last WAL
    the primary archived, and the newest in the repository)."""
    return {**physical_backup_figures(newest, newest.type),
            "WAL in the repository": f"{catalogue.archive_min}..{catalogue.archive_max}",
            "last WAL archived by the primary": status.last_archived_wal or "(none)",
            "at": status.last_archived_time.isoformat(timespec="seconds") if status.last_archived_time else "(never)"}


def discarded_figures(discarded: dict[str, bool]) -> dict[str, Any]:
    return {"scratch instance stopped": discarded["stopped"], "scratch directory removed": discarded["removed"]}


def archive_figures(probe: dict[str, Any], catalogue: StanzaInfo, now: datetime) -> dict[str, Any]:
    status = probe["status"]
    age = (now - status.last_archived_time).total_seconds() if status.last_archived_time else None
    return {
        "heartbeat marker written": probe["marker"].isoformat(),
        "segment closed by the probe": probe["switched"] or "(none: nothing written since the last switch)",
        "archived within (s)": probe["seconds"] if probe["seconds"] is not None else "not archived",
        "last archived WAL": status.last_archived_wal or "(none)",
        "time since the last archived WAL (s)": round(age, 1) if age is not None else "(never)",
        "failed archive attempts": status.failed_count,
        "last failure": (f"{status.last_failed_wal} at {status.last_failed_time.isoformat(timespec='seconds')}"
                         if status.last_failed_time else "(none)"),
        "WAL being written": status.current_wal,
        "WAL in the repository": f"{catalogue.archive_min}..{catalogue.archive_max}",
        "backups in the repository": len(catalogue.backups),
        "repository size of the backups (MB)": round(sum(b.repo_size for b in catalogue.backups) / 1e6, 1),
    }


def cluster(rec: ClusterRecord) -> Report:
    """The report of a physical runbook: figures, checks, timings, the catalogue of backups
    (also as a table artifact) and a `runbook.<runbook>.<outcome>` event."""
    ok = rec.passed and rec.outcome != "cancelled"
    outcome = _PASS_WORDS[rec.runbook] if ok else ("CANCELLED" if rec.outcome == "cancelled" else
                                                   "AT RISK" if rec.runbook == "archive-health" else "FAILED")
    report = Report(artifact_key(rec.runbook, rec.environment, rec.cluster),
                    _CLUSTER_SUBJECTS[rec.runbook].format(c=rec.cluster, e=rec.environment), outcome,
                    failure=rec.failure or rec.failed_checks(), notes=list(rec.notes),
                    figures=list(rec.figures.items()), checks=list(rec.checks), timings=dict(rec.timings))
    if rec.retention:
        report.sections.append(Section("Retention (GFS over full backups)", rows=rec.retention))
    if rec.catalogue:
        report.sections.append(Section("Backups in the repository", rows=rec.catalogue))
        report.tables.append(Table(artifact_key(f"{rec.runbook}-catalogue", rec.environment, rec.cluster),
                                   rec.catalogue, f"pgBackRest backups of {rec.cluster} in {rec.environment}"))
    word = "succeeded" if ok else ("cancelled" if rec.outcome == "cancelled" else "failed")
    report.events.append(Event(f"runbook.{rec.runbook}.{word}", f"runbook.cluster.{rec.environment}.{rec.cluster}", {
        "environment": rec.environment, "cluster": rec.cluster, "figures": {k: str(v) for k, v in rec.figures.items()},
        "checks": {c.name: c.passed for c in rec.checks}, "timings": rec.timings, "error": report.failure,
    }))
    return report


# --- DR -----------------------------------------------------------------------------------------

_DR_SUBJECTS = {
    "dr-failover": "{kind} of `{e}`",
    "rebuild-replica": "Rebuild of the standby in `{e}`",
    "primary-watch": "Primary watch of `{e}`",
    "dr-drill": "DR drill of `{e}`",
}
_DR_PASS = {"dr-failover": "SUCCEEDED", "rebuild-replica": "SUCCEEDED", "primary-watch": "OK", "dr-drill": "PASSED"}


def _dr_outcome(rec: DrRecord) -> str:
    if rec.outcome == "cancelled":
        return "CANCELLED"
    if rec.outcome == "running":
        return "ASSESSED" if rec.runbook == "dr-failover" else "RUNNING"
    if rec.outcome == "refused":
        return "REFUSED"
    return _DR_PASS[rec.runbook] if rec.passed else "FAILED"


def dr(rec: DrRecord) -> Report:
    """The report of a DR runbook: its figures, the assessment, the timeline, checks, and a
    `runbook.dr.<runbook>.<outcome>` event (steps emit their own `runbook.dr.*` as they happen)."""
    kind = "Planned switchover" if rec.planned else "Failover"
    outcome = _dr_outcome(rec)
    figures: list[tuple[str, Any]] = [("reason", rec.reason)] if rec.reason else []
    if rec.runbook == "dr-failover":
        figures += [("planned", rec.planned), ("force", rec.force), ("old primary", rec.old_primary),
                    ("new primary", rec.new_primary), ("decision", rec.decision), ("approver", rec.approver or "-"),
                    ("RTO seconds (decision to application healthy)", rec.rto_seconds)]
    figures += list(rec.figures.items())
    report = Report(artifact_key(rec.runbook, rec.environment), _DR_SUBJECTS[rec.runbook].format(kind=kind,
                    e=rec.environment), outcome, failure=rec.failure or rec.failed_checks(), notes=list(rec.notes),
                    figures=figures, checks=list(rec.checks), timings=dict(rec.timings))
    if rec.assessment:
        report.sections.append(Section("Assessment, before any change",
                                       rows=[{"figure": k, "value": v} for k, v in rec.assessment.items()]))
    if rec.timeline:
        report.sections.append(Section("Timeline (UTC)", rows=rec.timeline, columns=["at", "step", "detail"]))
    if rec.rows:
        report.sections.append(Section("Probes" if rec.runbook == "primary-watch" else "Runs", rows=rec.rows))
    word = outcome.lower().replace(" ", "-")
    report.events.append(Event(f"runbook.dr.{rec.runbook.removeprefix('dr-')}.{word}",
                               f"runbook.dr.{rec.environment}", {
        "environment": rec.environment, "reason": rec.reason, "planned": rec.planned, "force": rec.force,
        "old_primary": rec.old_primary, "new_primary": rec.new_primary, "rto_seconds": rec.rto_seconds,
        "figures": {k: str(v) for k, v in rec.figures.items()}, "checks": {c.name: c.passed for c in rec.checks},
        "error": report.failure,
    }))
    return report


def assessment_figures(a: Any) -> dict[str, Any]:
    """The assessment as the artifact shows it: who, how far behind, how sure."""
    from tasks.failover import lsn_text

    return {
        "old primary": a.old_primary, "target (standby)": a.target,
        "primary reachable": a.primary_reachable,
        "primary LSN": f"{lsn_text(a.primary_lsn)} ({a.primary_lsn_source})" if a.primary_lsn is not None else
        "unknown",
        "standby received LSN": lsn_text(a.receive_lsn), "standby replayed LSN": lsn_text(a.replay_lsn),
        "data at risk (bytes)": a.bytes_at_risk if a.bytes_at_risk is not None else "unknown",
        "data at risk (seconds)": a.seconds_at_risk if a.seconds_at_risk is not None else "unknown",
        "standby timeline": a.timeline, "assessed at": a.assessed_at.isoformat(),
        "primary last seen": a.primary_seen_at.isoformat() if a.primary_seen_at else "unknown",
    }


def dr_question(env: str, rec: DrRecord, down_since: datetime | None, now: datetime) -> str:
    """The approval page of a failover: the assessment, and how long the primary has been down."""
    a = rec.assessment
    down = (f" The primary has been down since {down_since:%H:%M:%S} UTC ({(now - down_since).total_seconds():.0f} s "
            "when this was asked)." if down_since else "")
    kind = "a planned switchover" if rec.planned else "a failover"
    return (f"Approve {kind} in {env}: promote {rec.new_primary} in place of {rec.old_primary}.{down} "
            f"Data at risk: {a.get('data at risk (bytes)')} bytes, {a.get('data at risk (seconds)')} s. "
            f"Decision: {rec.decision}. Reason: {rec.reason}")


def rpo_figures(a: Any, fenced: Any, promoted: Any) -> dict[str, Any]:
    """RPO measured from the LSNs: what the primary had (its final LSN once fenced, else the
    newest known) against what the standby had replayed when it was promoted."""
    from tasks.failover import lsn_text, rpo_bytes

    reference = fenced.final_lsn if fenced.final_lsn is not None else a.primary_lsn
    lost = rpo_bytes(reference, promoted.replay_lsn)
    seconds = 0.0 if lost == 0 else a.seconds_at_risk
    return {"RPO bytes (WAL not replayed when promoted)": lost if lost is not None else "unknown",
            "RPO seconds": seconds if seconds is not None else "unknown",
            "primary's final LSN": lsn_text(reference), "promoted at LSN": lsn_text(promoted.replay_lsn),
            "new timeline": promoted.timeline,
            "promoted by this attempt": promoted.promoted_now}


def dr_summary(rec: DrRecord, artifact: str) -> dict[str, Any]:
    """What a DR flow returns: the figures a caller (a drill, CI, the demo) compares."""
    rpo = rec.figures.get("RPO bytes (WAL not replayed when promoted)")
    return {"runbook": rec.runbook, "environment": rec.environment, "planned": rec.planned,
            "old_primary": rec.old_primary, "new_primary": rec.new_primary, "rto_seconds": rec.rto_seconds,
            "rpo_bytes": rpo if isinstance(rpo, int) else None,
            "rpo_seconds": rec.figures.get("RPO seconds") if isinstance(rpo, int) else None,
            "outcome": rec.outcome, "artifact": artifact}


def dr_announcement(env: EnvironmentConfig, rec: DrRecord, phase: str) -> Any:
    """The incident template for a failover's start, its decision and its end."""
    from datetime import timedelta

    from tasks.notify import Announcement

    kind = "Planned switchover" if rec.planned else "Database failover"
    what = f"{kind} in {env.name}: {rec.old_primary} -> {rec.new_primary}"
    a = rec.assessment
    details = [f"Reason: {rec.reason}", f"Data at risk: {a.get('data at risk (bytes)')} bytes, "
                                        f"{a.get('data at risk (seconds)')} s"]
    assessed = datetime.fromisoformat(a["assessed at"]) if a.get("assessed at") else None
    next_update = assessed + env.notify.update_every if assessed and env.notify else None
    if phase == "started":
        return Announcement(what, "Investigating", details=details, next_update=next_update)
    if phase == "decided":
        return Announcement(what, "Identified" if (rec.decision or "").startswith("go") else "Refused",
                            details=[*details, f"Decision: {rec.decision}"], next_update=next_update)
    if rec.outcome == "succeeded":
        return Announcement(what, "Resolved", resolved=True, details=details,
                            duration=timedelta(seconds=rec.rto_seconds or 0),
                            root_cause=rec.reason, fix_applied=f"promoted {rec.new_primary}; applications and DNS "
                                                               f"repointed (RTO {rec.rto_seconds} s, "
                                                               f"RPO {rec.figures.get('RPO bytes (WAL not replayed when promoted)')} bytes)")
    return Announcement(what, "Failed" if rec.outcome != "refused" else "Refused",
                        details=[*details, f"Outcome: {rec.outcome}: {rec.failure}"], next_update=next_update)


def probe_rows(probes: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"at": p.at.isoformat(), "answered": "yes" if p.ok else "NO", "detail": p.detail} for p in probes]


def watch_reason(primary: str, verdict: Any, probes: Sequence[Any]) -> str:
    """A failover's reason when primary_watch starts it: the probe history."""
    history = ", ".join(f"{p.at:%H:%M:%S} {'ok' if p.ok else p.detail[:60]}" for p in probes[-6:])
    return f"primary_watch: {primary} down since {verdict.down_since:%H:%M:%S} UTC; {verdict.reason}. Probes: {history}"


def drill_row(label: str, switched: dict[str, Any], rebuilt: dict[str, Any]) -> dict[str, Any]:
    return {"label": label, "from": switched.get("old_primary"), "to": switched.get("new_primary"),
            "rto_seconds": switched.get("rto_seconds"), "rpo_bytes": switched.get("rpo_bytes"),
            "rpo_seconds": switched.get("rpo_seconds"), "rebuilt": rebuilt.get("old_primary")}


def drill_figures(rows: Sequence[dict[str, Any]], objectives: Any) -> dict[str, Any]:
    rtos = [r["rto_seconds"] for r in rows if isinstance(r.get("rto_seconds"), int | float)]
    return {"RTO objective": f"{objectives.rto.total_seconds():g} s", "RPO objective":
            f"{objectives.rpo.total_seconds():g} s", "worst measured RTO (s)": max(rtos) if rtos else "unknown",
            "worst measured RPO (bytes)": max((r.get("rpo_bytes") or 0) for r in rows) if rows else "unknown"}


# --- maintenance windows --------------------------------------------------------------------------


def maintenance_outcome(rec: MaintenanceRecord) -> str:
    if rec.outcome == "cancelled":
        return "CANCELLED"
    if rec.outcome == "refused":
        return "REFUSED"
    if rec.outcome == "running":
        return "RUNNING"
    if not rec.passed:
        return "FAILED"
    return "STOPPED AT THE WINDOW'S END" if rec.skipped else "SUCCEEDED"


def maintenance(rec: MaintenanceRecord) -> Report:
    """The report of a maintenance window: the window, maintenance mode, the timeline against
    the window, each task with its figures, the checks, and a `runbook.maintenance.<outcome>`
    event."""
    outcome = maintenance_outcome(rec)
    figures: list[tuple[str, Any]] = [
        ("window", rec.window or "-"), ("maintenance mode on", rec.mode_on),
        ("maintenance mode off again", "-" if rec.mode_off is None else rec.mode_off),
        ("tasks done", sum(1 for t in rec.tasks if t["result"] == "done")),
        ("tasks skipped", ", ".join(rec.skipped) or "none"),
        ("tasks failed", ", ".join(t["task"] for t in rec.tasks if t["result"] == "failed") or "none")]
    notes = list(rec.notes)
    if rec.left_on:
        notes.insert(0, f"Maintenance mode was found on, left by run {rec.left_on.get('run')} since "
                        f"{rec.left_on.get('since')}; it was turned off before anything else.")
    if rec.skipped:
        notes.append(f"Stopped before {rec.skipped[0]}: it could not finish before the window's end. Not run: "
                     f"{', '.join(rec.skipped)}. Schedule them in the next window.")
    report = Report(artifact_key("maintenance", rec.environment), f"Maintenance window in `{rec.environment}`",
                    outcome, failure=rec.failure or rec.failed_checks(), notes=notes, figures=figures,
                    checks=list(rec.checks), timings=dict(rec.timings))
    if rec.timeline:
        report.sections.append(Section("Timeline against the window", rows=rec.timeline,
                                       columns=["at", "into window", "step", "detail"]))
    if rec.tasks:
        report.sections.append(Section("Tasks", rows=rec.tasks,
                                       columns=["task", "result", "seconds", "estimate", "detail", "figures"]))
        report.tables.append(Table(artifact_key("maintenance-tasks", rec.environment), rec.tasks,
                                   f"Maintenance tasks in {rec.environment}"))
    word = outcome.lower().split(" ")[0]
    report.events.append(Event(f"runbook.maintenance.{word}", f"runbook.environment.{rec.environment}", {
        "environment": rec.environment, "window": rec.window, "tasks": {t["task"]: t["result"] for t in rec.tasks},
        "skipped": rec.skipped, "mode_on": rec.mode_on, "mode_off": rec.mode_off, "left_on": bool(rec.left_on),
        "checks": {c.name: c.passed for c in rec.checks}, "error": report.failure}))
    return report


def maintenance_announcement(rec: MaintenanceRecord, phase: str, link: str | None) -> Any:
    """The start or the end of a maintenance window, for the notifier."""
    from tasks.notify import Announcement

    done = [f"{t['task']}: {t['result']}" for t in rec.tasks]
    if phase == "started":
        return Announcement(what=f"Maintenance window in {rec.environment}: {rec.window}", status="In progress",
                            details=[f"window: {rec.window_start} to {rec.window_end}"], link=link,
                            severity="maintenance", impact="Users see the maintenance page while it runs")
    return Announcement(what=f"Maintenance window in {rec.environment}: {maintenance_outcome(rec)}",
                        status="Completed" if rec.passed else "Needs attention", details=done or ["no task ran"],
                        link=link, resolved=True, severity="maintenance",
                        impact=None if rec.mode_off is not False else "Maintenance mode may still be on",
                        root_cause=rec.failure or rec.failed_checks())


# --- Azure flexible servers ----------------------------------------------------------------------


def _azure_plan_figures(plan: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not plan:
        return []
    return [("source server", plan["source"]), ("point in time (UTC)", plan["point_in_time"].isoformat()),
            ("earliest restore point", plan["earliest_restore"] or "-"), ("new server", plan["target"])]


def _azure_restored_figures(restored: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not restored:
        return []
    how = ("reused: already restored by an earlier run" if restored["reused"] else
           "resumed: polled the operation an earlier run started" if restored["resumed"] else "started by this run")
    return [("FQDN", restored["fqdn"]), ("state", restored["state"]), ("restore operation", how),
            ("seconds waiting for Azure", restored["seconds"])]


def azure_restore(env: str, database: str, plan: dict[str, Any] | None, restored: dict[str, Any] | None,
                  secret: str | None, attempt: int, seconds: float, error: str | None) -> Report:
    outcome = "FAILED" if error else "RESTORED"
    report = Report(artifact_key("azure-restore", env, database), f"Azure restore of `{database}` in `{env}`",
                    outcome, failure=error, figures=[*_azure_plan_figures(plan), *_azure_restored_figures(restored),
                                                     ("connection string", f"Secret block {secret!r}" if secret
                                                      else "-"), ("attempt", attempt), ("total seconds", seconds)])
    if secret:
        report.notes.append(f"Production was not touched. To use the restored server, point the application at "
                            f"the connection string in Secret block `{secret}` (host {restored and restored['fqdn']}).")
    elif error:
        report.notes.append("Production was not touched. A new run of the same request polls the restore that "
                            "may still run in Azure, or reuses the server once Ready: it never starts a second one.")
    report.events.append(Event(f"runbook.azure-restore.{'failed' if error else 'succeeded'}",
                               _database(env, database), {
        "environment": env, "database": database, "server": plan and plan["target"],
        "fqdn": restored and restored["fqdn"], "dsn_secret": secret, "error": error,
        "point_in_time": plan and plan["point_in_time"].isoformat()}))
    return report


def azure_restore_test(env: str, database: str, plan: dict[str, Any] | None, restored: dict[str, Any] | None,
                       results: list[Check], rto: float | None, deleted: str | None, attempt: int,
                       error: str | None) -> Report:
    passed = error is None and all(c.passed for c in results)
    report = Report(artifact_key("azure-restore-test", env, database), f"Azure restore test of `{database}` in "
                    f"`{env}`", "PASSED" if passed else "FAILED", failure=error or failures(results),
                    figures=[*_azure_plan_figures(plan), *_azure_restored_figures(restored),
                             ("RTO seconds (restore request to smoke queries passed)", rto if rto is not None else "-"),
                             ("restored server afterwards", deleted or "NOT deleted"), ("attempt", attempt)],
                    checks=list(results))
    report.events.append(Event(f"runbook.azure-restore-test.{'passed' if passed else 'failed'}",
                               _database(env, database), {
        "environment": env, "database": database, "server": plan and plan["target"], "rto_seconds": rto,
        "checks": {c.name: c.passed for c in results}, "deleted": deleted, "error": report.failure}))
    return report


def azure_backup_figures(backup: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not backup:
        return []
    return [("Azure server backup", f"{backup['name']} of {backup['server']} ({backup['kind']})"),
            ("Azure backup completed", backup["completed_at"] or "-"),
            ("Azure backup seconds", backup["seconds"])]
