"""pgBackRest as an outside system: stanza-create, check, backup, info, expire, restore.

Every command runs on the database host as the cluster's OS account, with the host's own
pgbackrest.conf (`pgbackrest.config_file`): that file holds the repository's location and
credentials, which archive_command needs too. Nothing secret goes on a command line.

A backup carries the annotation `runbook-run=<flow run id>`, so a resumed run finds the
backup its earlier attempt took in `info` instead of taking another one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tasks import pghost
from tasks.config import ClusterConfig
from tasks.errors import PermanentError, TransientError

RUN_ANNOTATION = "runbook-run"
BACKUP_TYPES = ("full", "diff", "incr")
# pgBackRest's exit codes that a later try can cure: the lock is held by another backup (50),
# a file system or network error (39 file-open, 41 read, 46 host-connect, 49 protocol).
TRANSIENT_CODES = frozenset({39, 41, 46, 49, 50})


@dataclass(frozen=True)
class PhysicalBackup:
    """One backup set, as `pgbackrest info --output=json` describes it."""

    label: str
    type: str  # full | diff | incr
    prior: str | None
    start: datetime
    stop: datetime
    size: int  # database size restored
    repo_size: int  # as stored, compressed
    wal_start: str
    wal_stop: str
    lsn_start: str
    lsn_stop: str
    error: bool
    annotation: dict[str, str] = field(default_factory=dict)

    @property
    def full_label(self) -> str:
        """The full backup this one depends on (itself, for a full)."""
        return self.label.split("_", 1)[0] if self.type != "full" else self.label

    @property
    def seconds(self) -> float:
        return (self.stop - self.start).total_seconds()

    def as_row(self) -> dict[str, Any]:
        return {"label": self.label, "type": self.type, "start": self.start.isoformat(timespec="seconds"),
                "seconds": round(self.seconds, 1), "size (MB)": round(self.size / 1e6, 1),
                "stored (MB)": round(self.repo_size / 1e6, 1), "WAL": f"{self.wal_start}..{self.wal_stop}"}


@dataclass(frozen=True)
class StanzaInfo:
    status_code: int
    status_message: str
    backups: list[PhysicalBackup]
    archive_min: str | None
    archive_max: str | None

    def newest(self) -> PhysicalBackup | None:
        valid = [b for b in self.backups if not b.error]
        return max(valid, key=lambda b: (b.stop, b.label)) if valid else None

    def oldest(self) -> PhysicalBackup | None:
        valid = [b for b in self.backups if not b.error]
        return min(valid, key=lambda b: (b.stop, b.label)) if valid else None

    def taken_by(self, run_id: str) -> PhysicalBackup | None:
        return next((b for b in self.backups if b.annotation.get(RUN_ANNOTATION) == run_id and not b.error), None)


def _argv(cluster: ClusterConfig, command: str, *options: str, repo: bool = True) -> list[str]:
    cfg = cluster.pgbackrest
    argv = ["pgbackrest", f"--config={cfg.config_file}", f"--stanza={cfg.stanza}"]
    if repo:
        argv.append(f"--repo={cfg.repository}")
    return [*argv, *options, command]


def run(cluster: ClusterConfig, command: str, *options: str, timeout: float | None = None,
        repo: bool = True) -> str:
    """One pgBackRest command; its error named with pgBackRest's code, transient ones as such."""
    cfg = cluster.pgbackrest
    what = f"pgbackrest {command} (stanza {cfg.stanza})"
    try:
        return pghost.run(cluster, _argv(cluster, command, *options, repo=repo), what=what,
                          timeout=timeout or cfg.timeout.total_seconds())
    except pghost.ProgramFailed as exc:
        if exc.code in TRANSIENT_CODES:
            raise TransientError(str(exc)) from None
        raise


# `info` status codes (pgBackRest's own): the stanza is missing in the repository, or its data is.
MISSING_STANZA = frozenset({1, 3})
DATABASE_MISMATCH = 5


def stanza_create(cluster: ClusterConfig) -> bool:
    """`stanza-create` when the repository has no stanza yet; True if it ran. stanza-create is a
    no-op for a stanza that exists, but it reads every repository to say so (0.65 s of a
    backup on S3), so `info` of the one repository (20 ms) asks first. A stanza whose
    system id differs from the cluster's (a new cluster under an old name) is refused."""
    status = info(cluster)
    if status.status_code == DATABASE_MISMATCH:
        raise PermanentError(f"stanza {cluster.pgbackrest.stanza!r} belongs to another PostgreSQL system "
                             f"({status.status_message}); run `pgbackrest stanza-upgrade` or use a new stanza")
    if status.status_code not in MISSING_STANZA:
        return False
    run(cluster, "stanza-create", timeout=300, repo=False)
    return True


def check(cluster: ClusterConfig) -> None:
    """`check`: the configuration is valid and a WAL segment reaches the repository."""
    run(cluster, "check", timeout=300, repo=False)


def checked_backup(cluster: ClusterConfig, type: str, run_id: str) -> None:
    """`check` and `backup --type=<type>`, side by side: they take no lock from each other, and
    `check` (a WAL switch archived to every repository, most of a second) then costs the backup
    nothing. A failed `check` stops the backup at once and is the error; the backup is annotated
    with the run, so that a resumed run finds it."""
    if type not in BACKUP_TYPES:
        raise PermanentError(f"backup type {type!r}: allowed {', '.join(BACKUP_TYPES)}")
    cfg = cluster.pgbackrest
    argv = _argv(cluster, "backup", f"--type={type}", f"--process-max={cfg.process_max}",
                 f"--annotation={RUN_ANNOTATION}={run_id}")
    running = pghost.spawn(cluster, argv, what=f"pgbackrest backup (stanza {cfg.stanza})")
    try:
        check(cluster)
    except BaseException:
        running.stop()
        raise
    try:
        running.wait(cfg.timeout.total_seconds())
    except pghost.ProgramFailed as exc:
        if exc.code in TRANSIENT_CODES:
            raise TransientError(str(exc)) from None
        raise


def info(cluster: ClusterConfig) -> StanzaInfo:
    """`info --output=json` of the cluster's repository (a missing stanza is status code 1)."""
    out = run(cluster, "info", "--output=json", timeout=300)
    return parse_info(out, cluster.pgbackrest.stanza, cluster.pgbackrest.repository)


def parse_info(text: str, stanza: str, repository: int) -> StanzaInfo:
    """The stanza's backups in repository `repository`, from `info --output=json`."""
    try:
        stanzas = json.loads(text)
    except ValueError:
        raise PermanentError(f"pgbackrest info printed no JSON: {text[:200]!r}") from None
    entry = next((s for s in stanzas if s.get("name") == stanza), None)
    if entry is None:
        raise PermanentError(f"pgbackrest info knows no stanza {stanza!r}")
    status = entry.get("status") or {}
    backups = [_backup(b) for b in entry.get("backup") or [] if (b.get("database") or {}).get("repo-key", repository)
               == repository]
    archives = [a for a in entry.get("archive") or [] if (a.get("database") or {}).get("repo-key", repository)
                == repository]
    mins = [a["min"] for a in archives if a.get("min")]
    maxs = [a["max"] for a in archives if a.get("max")]
    return StanzaInfo(int(status.get("code", -1)), str(status.get("message", "")), backups,
                      min(mins, key=_segment_order) if mins else None,
                      max(maxs, key=_segment_order) if maxs else None)


def _segment_order(name: str) -> tuple[int, int]:
    return int(name[:8], 16), int(name[8:], 16)


def _backup(b: dict[str, Any]) -> PhysicalBackup:
    ts, info_, archive, lsn = b["timestamp"], b.get("info") or {}, b.get("archive") or {}, b.get("lsn") or {}
    return PhysicalBackup(
        label=b["label"], type=b["type"], prior=b.get("prior"),
        start=datetime.fromtimestamp(ts["start"], UTC), stop=datetime.fromtimestamp(ts["stop"], UTC),
        size=int(info_.get("size", 0)), repo_size=int((info_.get("repository") or {}).get("delta", 0)),
        wal_start=str(archive.get("start", "")), wal_stop=str(archive.get("stop", "")),
        lsn_start=str(lsn.get("start", "")), lsn_stop=str(lsn.get("stop", "")),
        error=bool(b.get("error", False)), annotation=dict(b.get("annotation") or {}),
    )


def expire_set(cluster: ClusterConfig, label: str) -> None:
    """`expire --set=<label>`: that full backup and the backups that depend on it go, with the
    WAL only they needed."""
    run(cluster, "expire", f"--set={label}", timeout=3600)


def pg_time(at: datetime) -> str:
    """A recovery target as pgBackRest and PostgreSQL read it: UTC, with microseconds."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def restore(cluster: ClusterConfig, data_dir: str, *, target_time: datetime | None, label: str | None,
            delta: bool) -> None:
    """Restore into `data_dir` (a new directory), archiving off. With `target_time`, recovery
    stops there and promotes; without, it replays to the end of the archive and promotes.
    `delta` finishes an interrupted restore into the same directory (pgBackRest keeps the
    files that match)."""
    options = [f"--pg1-path={data_dir}", f"--process-max={cluster.pgbackrest.process_max}", "--archive-mode=off"]
    if target_time is not None:
        options += ["--type=time", f"--target={pg_time(target_time)}", "--target-action=promote"]
    if label is not None:
        options.append(f"--set={label}")
    if delta:
        options.append("--delta")
    run(cluster, "restore", *options)
