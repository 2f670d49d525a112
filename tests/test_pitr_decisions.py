"""The point-in-time recovery decisions (tasks/pitr.py), one row per case with why it matters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tasks import pitr
from tasks.config import Retention
from tasks.errors import ConfigError

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
OLDEST = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


# --- the recovery target -------------------------------------------------------------------------

@pytest.mark.parametrize("typed, tz, expected, why", [
    ("2026-03-15 10:00:00", ZoneInfo("UTC"), datetime(2026, 3, 15, 10, 0, tzinfo=UTC),
     "the seed's own form, no offset: the environment's timezone"),
    ("2026-03-15 10:00:00", BERLIN, datetime(2026, 3, 15, 9, 0, tzinfo=UTC),
     "an operator in Berlin means Berlin time: an hour off recovers the wrong data"),
    ("2026-03-15T10:00:00+02:00", BERLIN, datetime(2026, 3, 15, 8, 0, tzinfo=UTC),
     "an explicit offset wins over the environment's timezone"),
    ("2026-03-15T10:00:00Z", BERLIN, datetime(2026, 3, 15, 10, 0, tzinfo=UTC), "Z is UTC"),
    ("2026-03-15 10:00:00.250000+00:00", BERLIN, datetime(2026, 3, 15, 10, 0, 0, 250000, tzinfo=UTC),
     "sub-second targets stop between two commits a few ms apart"),
    ("2026-03-01 02:00:00+00:00", BERLIN, OLDEST, "exactly the end of the oldest backup is recoverable"),
])
def test_target_times_that_are_accepted(typed: str, tz: ZoneInfo, expected: datetime, why: str) -> None:
    assert pitr.parse_target_time(typed, now=NOW, oldest_backup_end=OLDEST, tz=tz) == expected, why


@pytest.mark.parametrize("typed, oldest, says, why", [
    ("yesterday at ten", OLDEST, "is not a time", "unparseable: name the forms that work"),
    ("", OLDEST, "is not a time", "an empty form field is not 'now'"),
    ("2026-03-20 12:00:01+00:00", OLDEST, "in the future", "a second ahead of the clock cannot be recovered"),
    ("2030-01-01 00:00:00", OLDEST, "in the future", "a typo in the year"),
    ("2026-03-01 01:59:59+00:00", OLDEST, "before the oldest backup ends",
     "before any backup's consistent point nothing can be recovered"),
    ("2026-03-15 10:00:00", None, "no physical backup", "no backup at all"),
])
def test_target_times_that_are_refused_before_anything_runs(typed: str, oldest: datetime | None, says: str,
                                                            why: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        pitr.parse_target_time(typed, now=NOW, oldest_backup_end=oldest, tz=ZoneInfo("UTC"))
    assert "target_time" in str(caught.value) and repr(typed) in str(caught.value), why


# --- retention over full backups -----------------------------------------------------------------


def _full(label_day: int, valid: bool = True) -> pitr.Backup:
    label = f"202603{label_day:02d}-020000F"
    return pitr.Backup(label, "full", label, datetime(2026, 3, label_day, 2, 10, tzinfo=UTC), valid)


def _incr(full_day: int, day: int, hour: int) -> pitr.Backup:
    full = f"202603{full_day:02d}-020000F"
    return pitr.Backup(f"{full}_202603{day:02d}-{hour:02d}0000I", "incr", full,
                       datetime(2026, 3, day, hour, 5, tzinfo=UTC), True)


@pytest.mark.parametrize("backups, policy, expire, why", [
    ([_full(d) for d in range(1, 21)], Retention(daily=7), [f"202603{d:02d}-020000F" for d in range(1, 14)],
     "daily 7 keeps the last 7 days' fulls and expires the 13 before them, oldest first"),
    ([_full(d) for d in range(1, 21)], Retention(daily=3, weekly=2),
     [f"202603{d:02d}-020000F" for d in (*range(1, 15), 16, 17)],
     "weekly keeps the newest full of the week before too (Sunday the 15th)"),
    ([_full(1), _full(19), _incr(19, 19, 5), _incr(19, 20, 5)], Retention(daily=1), ["20260301-020000F"],
     "the incrementals of a kept full are not in the plan: they stay with it"),
    ([_full(1), _full(2, valid=False)], Retention(daily=1), [],
     "an invalid newest full does not count: the valid one before it is the newest valid backup and stays; "
     "the invalid one goes"),
    ([_full(1)], Retention(days=1), [], "the only backup is never expired, however old"),
    ([_full(1), _incr(1, 20, 1)], Retention(days=1), [],
     "the newest valid backup is an incremental of an old full: the full it depends on stays"),
])
def test_expiry_keeps_what_gfs_says(backups: list[pitr.Backup], policy: Retention, expire: list[str],
                                    why: str) -> None:
    plan = pitr.plan_expiry(backups, policy, now=NOW, tz=ZoneInfo("UTC"))
    invalid = [b.label for b in backups if not b.valid]
    assert [x for x in plan.expire if x not in invalid] == expire, why


def test_an_expired_full_names_the_incrementals_that_go_with_it() -> None:
    backups = [_full(1), _incr(1, 1, 5), _incr(1, 1, 6), _full(19)]
    plan = pitr.plan_expiry(backups, Retention(daily=1), now=NOW, tz=ZoneInfo("UTC"))
    assert plan.expire == ("20260301-020000F",)
    assert plan.goes_with["20260301-020000F"] == ("20260301-020000F_20260301-050000I",
                                                  "20260301-020000F_20260301-060000I")
    row = next(r for r in plan.rows() if r["backup"] == "20260301-020000F")
    assert "050000I" in row["goes with it"]


# --- the WAL archive -----------------------------------------------------------------------------

T0 = datetime(2026, 3, 20, 11, 50, tzinfo=UTC)


def _status(last_wal: str | None = "000000010000000000000010", last_at: datetime | None = T0,
            failed_wal: str | None = None, failed_at: datetime | None = None,
            current: str = "000000010000000000000011") -> pitr.ArchiverStatus:
    return pitr.ArchiverStatus(archived_count=16, last_archived_wal=last_wal, last_archived_time=last_at,
                               failed_count=1 if failed_at else 0, last_failed_wal=failed_wal,
                               last_failed_time=failed_at, current_wal=current)


@pytest.mark.parametrize("status, rpo, failing, why", [
    (_status(), timedelta(minutes=5), [], "nothing pending: an idle database risks nothing, however old the last WAL"),
    (_status(current="000000010000000000000013"), timedelta(minutes=5), ["RPO"],
     "two closed segments wait, and the last success is 10 minutes old: over a 5 minute RPO"),
    (_status(current="000000010000000000000013"), timedelta(minutes=15), [],
     "the same backlog within a 15 minute RPO"),
    (_status(failed_wal="000000010000000000000011", failed_at=T0 + timedelta(minutes=9)), timedelta(hours=1),
     ["archiving works"], "the newest attempt failed: broken now, even far inside the RPO"),
    (_status(failed_wal="00000001000000000000000F", failed_at=T0 - timedelta(minutes=1)), timedelta(hours=1), [],
     "a failure before the last success was retried and cured"),
    (_status(last_wal=None, last_at=None, current="000000010000000000000001"), timedelta(hours=1),
     ["archive has WAL"], "a primary that never archived has no recovery point"),
    (_status(last_wal="00000002.history", current="000000020000000000000011"), timedelta(minutes=5), [],
     "a timeline history file archived last (after a promotion) is not a segment to count from"),
])
def test_archive_verdict(status: pitr.ArchiverStatus, rpo: timedelta, failing: list[str], why: str) -> None:
    results = pitr.archive_verdict(status, now=NOW, rpo=rpo)
    assert [c.name for c in results if not c.passed] == failing, why


# --- the recovered instance ---------------------------------------------------------------------

TARGET = datetime(2026, 3, 20, 10, 0, tzinfo=UTC)
BEFORE = TARGET - timedelta(seconds=30)
AFTER = TARGET + timedelta(seconds=30)


@pytest.mark.parametrize("primary_before, restored, passed, why", [
    (BEFORE, BEFORE, True, "the newest marker before the target is there, none after"),
    (BEFORE, AFTER, False, "a marker after the target: recovery overshot"),
    (BEFORE, BEFORE - timedelta(seconds=60), False, "an older marker only: recovery stopped short"),
    (BEFORE, None, False, "no marker at all though the primary had one before the target"),
    (None, None, True, "no marker existed before the target on the primary: nothing to miss"),
])
def test_target_reached(primary_before: datetime | None, restored: datetime | None, passed: bool, why: str) -> None:
    assert pitr.target_reached(TARGET, None, primary_before, restored).passed is passed, why
