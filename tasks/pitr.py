"""Point-in-time recovery decisions: pure functions, no I/O, no clock.

- `parse_target_time`: the recovery target an operator typed, checked against the clock and
  the backups there are (unparseable, in the future, before the oldest backup: refused).
- `plan_expiry`: which full backups `pgbackrest expire --set` removes, by the same GFS
  retention as the logical backups (`tasks.retention`), never the newest valid one and never
  one a kept backup depends on.
- `archive_verdict`: is the recovery point objective at risk? From `pg_stat_archiver` and the
  WAL position.
- `target_reached`: did a recovered instance stop where it was asked to?
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from tasks.checks import Check, _fmt
from tasks.config import Retention
from tasks.errors import ConfigError
from tasks.retention import BackupRecord, RetentionPlan, plan_retention

WAL_SEGMENT_BYTES = 16 * 1024 * 1024
# A marker's time is when its row was inserted; its transaction commits a little later, and
# recovery stops by commit time. A marker inserted within this much before the target may
# rightly be missing, so "data up to the target" is checked against the newest marker before
# target - MARKER_SLACK (markers are minutes apart).
MARKER_SLACK = timedelta(seconds=1)


# --- the recovery target -------------------------------------------------------------------------


def parse_target_time(value: str, *, now: datetime, oldest_backup_end: datetime | None, tz: ZoneInfo) -> datetime:
    """The target as an aware UTC datetime. A time without an offset is in the environment's
    timezone `tz` (the seeds write `2024-01-15 10:00:00`). Refused, with what is allowed:
    unparseable, later than `now`, or earlier than the end of the oldest backup (nothing can
    be recovered to before a backup's consistent point)."""
    text = (value or "").strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ConfigError(f"target_time {value!r} is not a time: give ISO 8601 like '2024-01-15 10:00:00' (in the "
                          f"environment's timezone {tz.key}) or '2024-01-15T10:00:00+00:00'") from None
    at = (parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)).astimezone(UTC)
    if at > now:
        raise ConfigError(f"target_time {value!r} ({at.isoformat(timespec='seconds')}) is in the future; "
                          f"allowed: up to now ({now.isoformat(timespec='seconds')})")
    if oldest_backup_end is None:
        raise ConfigError(f"target_time {value!r}: there is no physical backup to recover from")
    if at < oldest_backup_end:
        raise ConfigError(f"target_time {value!r} ({at.isoformat(timespec='seconds')}) is before the oldest backup "
                          f"ends ({oldest_backup_end.isoformat(timespec='seconds')}); allowed: from then to now")
    return at


# --- retention over full backups -----------------------------------------------------------------


@dataclass(frozen=True)
class Backup:
    label: str
    type: str  # full | diff | incr
    full_label: str  # the full it depends on (itself for a full)
    stop: datetime
    valid: bool


@dataclass(frozen=True)
class ExpiryPlan:
    plan: RetentionPlan  # over full backups
    expire: tuple[str, ...]  # full labels to expire, oldest first
    goes_with: dict[str, tuple[str, ...]]  # full label -> the diff/incr backups that go with it

    def rows(self) -> list[dict[str, str]]:
        rows = []
        for r in self.plan.rows():
            label = r.pop("backup_id")
            if r["verdict"] == "delete" and label not in self.expire:
                r = {**r, "verdict": "keep", "reasons": "the newest valid backup depends on it"}
            rows.append({"backup": label, **r, "goes with it": ", ".join(self.goes_with.get(label, ()))})
        return rows


def plan_expiry(backups: Sequence[Backup], policy: Retention, *, now: datetime, tz: ZoneInfo) -> ExpiryPlan:
    """GFS over the full backups; a full goes with the diff and incr backups built on it. A
    full that the newest valid backup (of any type) depends on is always kept."""
    fulls = [b for b in backups if b.type == "full"]
    plan = plan_retention([BackupRecord(b.label, b.stop, b.valid) for b in fulls], policy, now=now, tz=tz)
    valid = [b for b in backups if b.valid and b.stop <= now]
    newest = max(valid, key=lambda b: (b.stop, b.label)) if valid else None
    needed = {newest.full_label} if newest else set()
    expire = tuple(sorted((label for label in plan.delete if label not in needed),
                          key=lambda label: plan.taken_at.get(label, datetime.min.replace(tzinfo=UTC))))
    goes_with = {full: tuple(b.label for b in backups if b.type != "full" and b.full_label == full)
                 for full in {b.label for b in fulls}}
    return ExpiryPlan(plan, expire, goes_with)


# --- the WAL archive -----------------------------------------------------------------------------


def segment_number(walfile: str) -> int:
    """A WAL file name's position in the stream (timeline ignored): 000000010000000200000003 -> 2*256+3."""
    if len(walfile) < 24:
        raise ValueError(f"not a WAL file name: {walfile!r}")
    return int(walfile[8:16], 16) * 0x100 + int(walfile[16:24], 16)


@dataclass(frozen=True)
class ArchiverStatus:
    """`pg_stat_archiver` on the primary, with where WAL is being written now."""

    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    current_wal: str  # pg_walfile_name(pg_current_wal_lsn())


def archive_verdict(status: ArchiverStatus, *, now: datetime, rpo: timedelta) -> list[Check]:
    """Three checks; a failed one means the RPO objective is at risk:

    - the newest archive attempt succeeded (a failure after the last success is archiving
      that is broken now, whatever the age says);
    - no closed WAL segment waits to be archived for longer than the RPO: the exposure is the
      age of the last archived WAL while segments are pending, zero when none is;
    - archiving ever worked (a primary that never archived has no recovery point at all)."""
    results = []
    failing = status.last_failed_time is not None and (
        status.last_archived_time is None or status.last_failed_time > status.last_archived_time)
    results.append(Check("archiving works", not failing,
                         f"last attempt failed at {status.last_failed_time:%Y-%m-%d %H:%M:%S} on "
                         f"{status.last_failed_wal} ({status.failed_count} failures since the statistics reset)"
                         if failing and status.last_failed_time else
                         f"last WAL archived: {status.last_archived_wal or '(none)'}; "
                         f"{status.failed_count} failures since the statistics reset"))
    pending = pending_segments(status)
    exposure = (now - status.last_archived_time) if pending and status.last_archived_time else timedelta(0)
    ok = exposure <= rpo
    results.append(Check("RPO", ok, f"{pending} closed WAL segments wait to be archived; data at risk "
                                    f"{_fmt(exposure)}, objective {_fmt(rpo)}"))
    results.append(Check("archive has WAL", status.last_archived_wal is not None,
                         f"{status.archived_count} WAL files archived" if status.last_archived_wal else
                         "nothing was ever archived: no point in time can be recovered"))
    return results


def pending_segments(status: ArchiverStatus) -> int:
    """Closed WAL segments after the last archived one (the current one is still being written)."""
    try:
        current = segment_number(status.current_wal)
        last = segment_number(status.last_archived_wal) if status.last_archived_wal else -1
    except ValueError:  # a .history file was archived last: no segment to count from
        return 0
    return max(current - last - 1, 0)


def wal_age(status: ArchiverStatus, now: datetime) -> timedelta | None:
    """Time since the last WAL was archived: the RPO a restore test records."""
    return now - status.last_archived_time if status.last_archived_time else None


# --- the recovered instance ---------------------------------------------------------------------


def target_reached(target: datetime | None, last_replayed: datetime | None, primary_newest_before: datetime | None,
                   restored_newest: datetime | None) -> Check:
    """The recovered instance stopped at the target. Markers are rows of a heartbeat table with
    their insert time: the restored instance's newest marker must be at least the primary's
    newest one from before the target (`primary_newest_before`, taken MARKER_SLACK before it:
    data up to the target) and not later than the target (none after it).
    `target` None means "the end of the archive": then the newest marker is only reported."""
    replayed = last_replayed.isoformat() if last_replayed else "(none)"
    if target is None:
        return Check("recovered to the end of the archive", True,
                     f"last replayed transaction at {replayed}; newest marker "
                     f"{restored_newest.isoformat() if restored_newest else '(none)'}")
    problems = []
    if restored_newest is not None and restored_newest > target:
        problems.append(f"a marker from {restored_newest.isoformat()}, after the target, is there")
    elif primary_newest_before is not None and (restored_newest is None or restored_newest < primary_newest_before):
        problems.append(f"the marker from {primary_newest_before.isoformat()}, before the target, is missing")
    detail = (f"target {target.isoformat()}; last replayed transaction {replayed}; newest marker "
              f"{restored_newest.isoformat() if restored_newest else '(none)'} (on the primary, the newest one "
              f"before the target: {primary_newest_before.isoformat() if primary_newest_before else '(none)'})")
    return Check("recovery target reached", not problems, "; ".join([detail, *problems]))
