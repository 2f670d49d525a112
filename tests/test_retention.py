"""Retention decisions: which backups a run keeps and which it deletes, and why."""

from __future__ import annotations

import calendar
import random
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from tasks.config import Retention
from tasks.retention import (
    REASON_FAILED_RUN,
    REASON_FUTURE,
    REASON_INCOMPLETE,
    REASON_NEWEST,
    BackupRecord,
    RetentionPlan,
    plan_retention,
)

UTC = ZoneInfo("UTC")
IST = ZoneInfo("Asia/Kolkata")
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # a Saturday, ISO week 2026-W47


def at(iso: str) -> datetime:
    """An aware UTC datetime from 'YYYY-MM-DDTHH:MM'."""
    return datetime.fromisoformat(iso).replace(tzinfo=UTC)


def ok(backup_id: str, when: str | datetime) -> BackupRecord:
    return BackupRecord(backup_id, at(when) if isinstance(when, str) else when, complete=True)


def bad(backup_id: str, when: str | datetime) -> BackupRecord:
    return BackupRecord(backup_id, at(when) if isinstance(when, str) else when, complete=False)


def gfs(daily: int | None = None, weekly: int | None = None, monthly: int | None = None) -> Retention:
    return Retention(daily=daily, weekly=weekly, monthly=monthly)


def days(n: int) -> Retention:
    return Retention(days=n)


# --- the table -------------------------------------------------------------------------
# Each row: records, policy, now, tz, this_run_ok, expected keep, expected delete.

CASES = [
    # `taken_at > now - N days`: a backup exactly N days old goes, one a microsecond
    # younger stays. An off-by-one here deletes the oldest backup an operator counts on.
    pytest.param(
        [
            ok("edge", NOW - timedelta(days=30)),
            ok("inside", NOW - timedelta(days=30) + timedelta(microseconds=1)),
            ok("new", NOW - timedelta(hours=1)),
        ],
        days(30),
        NOW,
        UTC,
        True,
        {"inside": ("younger than 30 days",), "new": ("younger than 30 days", REASON_NEWEST)},
        {"edge": "older than 30 days"},
        id="days-boundary-exact",
    ),
    # A policy that would delete everything (backups stopped for a week, days: 1) must
    # still leave the newest valid backup: otherwise retention finishes the outage.
    pytest.param(
        [
            ok("a", NOW - timedelta(days=10)),
            ok("b", NOW - timedelta(days=20)),
            ok("c", NOW - timedelta(days=40)),
        ],
        days(1),
        NOW,
        UTC,
        True,
        {"a": (REASON_NEWEST,)},
        {"b": "older than 1 day", "c": "older than 1 day"},
        id="days-aggressive-keeps-newest-valid",
    ),
    # Incomplete backups go whatever their age: a fresh interrupted one is not a backup.
    pytest.param(
        [
            bad("fresh", NOW - timedelta(hours=1)),
            ok("x", NOW - timedelta(hours=2)),
            bad("ancient", at("2025-01-01T00:00")),
        ],
        days(30),
        NOW,
        UTC,
        True,
        {"x": ("younger than 30 days", REASON_NEWEST)},
        {"fresh": REASON_INCOMPLETE, "ancient": REASON_INCOMPLETE},
        id="incomplete-deleted-whatever-age",
    ),
    # The newest backup failed: the guard protects the newest *complete* one instead.
    pytest.param(
        [
            bad("n", NOW - timedelta(hours=2)),
            ok("v1", NOW - timedelta(days=3)),
            ok("v0", NOW - timedelta(days=4)),
        ],
        days(1),
        NOW,
        UTC,
        True,
        {"v1": (REASON_NEWEST,)},
        {"n": REASON_INCOMPLETE, "v0": "older than 1 day"},
        id="incomplete-newest",
    ),
    # Nothing valid at all: every record is junk, and there is no newest valid to keep.
    pytest.param(
        [bad("a", "2026-11-20T02:00"), bad("b", "2026-11-21T02:00")],
        gfs(daily=7),
        NOW,
        UTC,
        True,
        {},
        {"a": REASON_INCOMPLETE, "b": REASON_INCOMPLETE},
        id="only-incomplete",
    ),
    # A new database has no backups yet: the plan is empty, not an error.
    pytest.param([], gfs(daily=7, weekly=4, monthly=12), NOW, UTC, True, {}, {}, id="empty-catalogue"),
    # The backup of this run failed: deleting now could leave fewer good backups than
    # the policy promises, so nothing is deleted, not even junk or future-dated ones.
    pytest.param(
        [
            bad("a", "2026-11-21T02:00"),
            ok("b", "2025-01-01T02:00"),
            ok("c", "2026-11-21T01:00"),
            ok("d", "2027-01-01T00:00"),
        ],
        days(1),
        NOW,
        UTC,
        False,
        {
            "a": (REASON_FAILED_RUN,),
            "b": (REASON_FAILED_RUN,),
            "c": (REASON_FAILED_RUN,),
            "d": (REASON_FAILED_RUN,),
        },
        {},
        id="this-run-failed-deletes-nothing",
    ),
    # GFS counts days that HAVE a backup (restic/borg): after a gap the window stretches
    # back instead of keeping fewer backups. Two on one day: only the later one counts.
    pytest.param(
        [
            ok("d0", "2026-11-21T01:00"),
            ok("d1-early", "2026-11-20T05:00"),
            ok("d1-late", "2026-11-20T22:00"),
            ok("d4", "2026-11-17T02:00"),
            ok("d8", "2026-11-13T02:00"),
            ok("d9", "2026-11-12T02:00"),
        ],
        gfs(daily=3),
        NOW,
        UTC,
        True,
        {
            "d0": ("daily 2026-11-21", REASON_NEWEST),
            "d1-late": ("daily 2026-11-20",),
            "d4": ("daily 2026-11-17",),
        },
        {
            "d1-early": "not selected by daily 3",
            "d8": "not selected by daily 3",
            "d9": "not selected by daily 3",
        },
        id="gfs-daily-with-gaps",
    ),
    # One backup kept by several rules lists every reason, so the artifact explains it.
    pytest.param(
        [
            ok("sat21", "2026-11-21T02:00"),  # W47, November
            ok("fri20", "2026-11-20T02:00"),  # W47
            ok("sun15", "2026-11-15T02:00"),  # last day of W46
            ok("mon09", "2026-11-09T02:00"),  # W46, not its newest
            ok("sat31", "2026-10-31T02:00"),  # newest of October
            ok("fri02", "2026-10-02T02:00"),
        ],
        gfs(daily=2, weekly=2, monthly=2),
        NOW,
        UTC,
        True,
        {
            "sat21": ("daily 2026-11-21", "weekly 2026-W47", "monthly 2026-11", REASON_NEWEST),
            "fri20": ("daily 2026-11-20",),
            "sun15": ("weekly 2026-W46",),
            "sat31": ("monthly 2026-10",),
        },
        {
            "mon09": "not selected by daily 2 / weekly 2 / monthly 2",
            "fri02": "not selected by daily 2 / weekly 2 / monthly 2",
        },
        id="gfs-every-reason-listed",
    ),
    # In UTC these three backups share 2026-11-20, so daily 2 keeps one of them...
    pytest.param(
        [ok("r1", "2026-11-20T10:00"), ok("r2", "2026-11-20T17:00"), ok("r3", "2026-11-20T23:30")],
        gfs(daily=2),
        NOW,
        UTC,
        True,
        {"r3": ("daily 2026-11-20", REASON_NEWEST)},
        {"r1": "not selected by daily 2", "r2": "not selected by daily 2"},
        id="tz-edge-utc",
    ),
    # ...in Asia/Kolkata (+05:30) 23:30 UTC is 05:00 on the 21st, a separate local day.
    # Buckets in UTC would give an Indian team a different history than its calendar.
    pytest.param(
        [ok("r1", "2026-11-20T10:00"), ok("r2", "2026-11-20T17:00"), ok("r3", "2026-11-20T23:30")],
        gfs(daily=2),
        NOW,
        IST,
        True,
        {"r3": ("daily 2026-11-21", REASON_NEWEST), "r2": ("daily 2026-11-20",)},
        {"r1": "not selected by daily 2"},
        id="tz-edge-kolkata",
    ),
    # 2026 has 53 ISO weeks: Mon 28 Dec 2026 and Sat 2 Jan 2027 are both 2026-W53, so
    # weekly 2 keeps Jan 5 (2027-W01) and Jan 2, not Dec 28 as a week of its own.
    pytest.param(
        [
            ok("dec20", "2026-12-20T02:00"),
            ok("dec24", "2026-12-24T02:00"),
            ok("dec28", "2026-12-28T02:00"),
            ok("jan02", "2027-01-02T02:00"),
            ok("jan05", "2027-01-05T02:00"),
        ],
        gfs(weekly=2),
        at("2027-01-06T12:00"),
        UTC,
        True,
        {"jan05": ("weekly 2027-W01", REASON_NEWEST), "jan02": ("weekly 2026-W53",)},
        {
            "dec20": "not selected by weekly 2",
            "dec24": "not selected by weekly 2",
            "dec28": "not selected by weekly 2",
        },
        id="iso-week-53-across-new-year",
    ),
    # Mon 30 Dec 2024 belongs to ISO year 2025 (2025-W01): the label uses the ISO year,
    # and it shares the week with Jan 3, so only Jan 3 represents that week.
    pytest.param(
        [
            ok("dec27", "2024-12-27T02:00"),
            ok("dec29", "2024-12-29T02:00"),
            ok("dec30", "2024-12-30T02:00"),
            ok("jan03", "2025-01-03T02:00"),
        ],
        gfs(weekly=2),
        at("2025-01-05T12:00"),
        UTC,
        True,
        {"jan03": ("weekly 2025-W01", REASON_NEWEST), "dec29": ("weekly 2024-W52",)},
        {"dec27": "not selected by weekly 2", "dec30": "not selected by weekly 2"},
        id="iso-week-year-differs-from-calendar-year",
    ),
    # No backup in February: monthly 4 reaches back to January's newest, and only three
    # months exist, so the older January backup still goes.
    pytest.param(
        [
            ok("jan15", "2026-01-15T02:00"),
            ok("jan31-late", "2026-01-31T20:00"),
            ok("mar03", "2026-03-03T02:00"),
            ok("mar20", "2026-03-20T02:00"),
            ok("apr01", "2026-04-01T02:00"),
        ],
        gfs(monthly=4),
        at("2026-04-10T12:00"),
        UTC,
        True,
        {
            "apr01": ("monthly 2026-04", REASON_NEWEST),
            "mar20": ("monthly 2026-03",),
            "jan31-late": ("monthly 2026-01",),
        },
        {"jan15": "not selected by monthly 4", "mar03": "not selected by monthly 4"},
        id="months-with-gap",
    ),
    # The same catalogue in Kolkata: 31 Jan 20:00 UTC is 1 Feb 01:30 local, so February
    # has a backup and January's own newest is Jan 15. Month buckets follow local time.
    pytest.param(
        [
            ok("jan15", "2026-01-15T02:00"),
            ok("jan31-late", "2026-01-31T20:00"),
            ok("mar03", "2026-03-03T02:00"),
            ok("mar20", "2026-03-20T02:00"),
            ok("apr01", "2026-04-01T02:00"),
        ],
        gfs(monthly=4),
        at("2026-04-10T12:00"),
        IST,
        True,
        {
            "apr01": ("monthly 2026-04", REASON_NEWEST),
            "mar20": ("monthly 2026-03",),
            "jan31-late": ("monthly 2026-02",),
            "jan15": ("monthly 2026-01",),
        },
        {"mar03": "not selected by monthly 4"},
        id="months-local-tz",
    ),
    # All counts 0 select nothing; only the newest-valid guard keeps a backup.
    pytest.param(
        [
            ok("a", NOW - timedelta(days=1)),
            ok("b", NOW - timedelta(days=2)),
            ok("c", NOW - timedelta(days=40)),
        ],
        gfs(daily=0, weekly=0, monthly=0),
        NOW,
        UTC,
        True,
        {"a": (REASON_NEWEST,)},
        {
            "b": "not selected by daily 0 / weekly 0 / monthly 0",
            "c": "not selected by daily 0 / weekly 0 / monthly 0",
        },
        id="zero-counts",
    ),
    # A missing rule selects nothing and is not named in the reason.
    pytest.param(
        [ok("a", "2026-11-21T01:00"), ok("b", "2026-11-19T02:00"), ok("c", "2026-11-10T02:00")],
        gfs(weekly=1),
        NOW,
        UTC,
        True,
        {"a": ("weekly 2026-W47", REASON_NEWEST)},
        {"b": "not selected by weekly 1", "c": "not selected by weekly 1"},
        id="missing-rules",
    ),
    # Future-dated backups (clock skew) are kept and stay out of the policy: the one at
    # 13:00 neither takes today's daily slot nor stands in as the newest valid backup.
    # An incomplete one in the future is kept too: it may be a backup still being written
    # by a host whose clock runs fast.
    pytest.param(
        [
            ok("future-today", "2026-11-21T13:00"),
            bad("future-partial", "2026-11-25T02:00"),
            ok("today", "2026-11-21T10:00"),
            ok("yesterday", "2026-11-20T10:00"),
        ],
        gfs(daily=1),
        NOW,
        UTC,
        True,
        {
            "future-today": (REASON_FUTURE,),
            "future-partial": (REASON_FUTURE,),
            "today": ("daily 2026-11-21", REASON_NEWEST),
        },
        {"yesterday": "not selected by daily 1"},
        id="future-backups-gfs",
    ),
    # Under days: N a far-future backup is not "younger than N days" but still kept.
    pytest.param(
        [ok("future", NOW + timedelta(days=400)), ok("old", NOW - timedelta(days=3))],
        days(1),
        NOW,
        UTC,
        True,
        {"future": (REASON_FUTURE,), "old": (REASON_NEWEST,)},
        {},
        id="future-backups-days",
    ),
    # Same timestamp twice: the tie is broken by id, so reruns plan the same deletion.
    pytest.param(
        [ok("a", "2026-11-21T02:00"), ok("b", "2026-11-21T02:00")],
        gfs(daily=1),
        NOW,
        UTC,
        True,
        {"b": ("daily 2026-11-21", REASON_NEWEST)},
        {"a": "not selected by daily 1"},
        id="same-time-tie-broken-by-id",
    ),
]


@pytest.mark.parametrize(("records", "policy", "now", "tz", "this_run_ok", "keep", "delete"), CASES)
def test_plan_retention(records, policy, now, tz, this_run_ok, keep, delete):
    plan = plan_retention(records, policy, now, tz, this_run_ok=this_run_ok)
    assert plan.keep == keep
    assert plan.delete == delete


@pytest.mark.parametrize(
    ("records", "now", "match"),
    [
        # A naive time would be bucketed in whatever zone the worker runs in.
        pytest.param(
            [BackupRecord("a", datetime(2026, 11, 20, 2, 0), True)],
            NOW,
            "'a'.*no timezone",
            id="naive-taken-at",
        ),
        pytest.param(
            [ok("a", "2026-11-20T02:00")], datetime(2026, 11, 21, 12, 0), "now=.*no timezone", id="naive-now"
        ),
        # Plans are keyed by id: a duplicate would silently lose one verdict.
        pytest.param(
            [ok("a", "2026-11-20T02:00"), bad("a", "2026-11-19T02:00")],
            NOW,
            "'a' appears more than once",
            id="duplicate-id",
        ),
    ],
)
def test_plan_retention_rejects_bad_input(records, now, match):
    # Bad input is refused even when the run failed: the caller has a bug either way.
    for this_run_ok in (True, False):
        with pytest.raises(ValueError, match=match):
            plan_retention(records, days(30), now, UTC, this_run_ok=this_run_ok)


def test_rows_are_newest_first_in_local_time_with_verdict_and_reasons():
    records = [
        ok("old", "2026-10-01T02:00"),
        bad("broken", "2026-11-21T01:00"),
        ok("new", "2026-11-20T23:30"),
    ]
    plan = plan_retention(records, gfs(daily=7), NOW, IST)
    assert plan.rows() == [
        {
            "backup_id": "broken",
            "taken_at": "2026-11-21T06:30:00+05:30",
            "verdict": "delete",
            "reasons": REASON_INCOMPLETE,
        },
        {
            "backup_id": "new",
            "taken_at": "2026-11-21T05:00:00+05:30",
            "verdict": "keep",
            "reasons": f"daily 2026-11-21; {REASON_NEWEST}",
        },
        {
            "backup_id": "old",
            "taken_at": "2026-10-01T07:30:00+05:30",
            "verdict": "keep",
            "reasons": "daily 2026-10-01",
        },
    ]


def test_rows_of_a_hand_built_plan_without_times():
    plan = RetentionPlan(keep={"a": ("x",)}, delete={"b": "y"})
    assert [r["backup_id"] for r in plan.rows()] == ["b", "a"]


# --- a year and a month of nightly backups -----------------------------------------------


def nightly_catalogue(today: date, tz: ZoneInfo) -> tuple[list[BackupRecord], set[str]]:
    """400 nightly backups at 02:00 local, the newest today, plus incomplete ones at 02:30:
    after the complete backup of their day, so they would win its bucket if counted."""
    records = [
        BackupRecord(
            f"b-{today - timedelta(days=i)}",
            datetime.combine(today - timedelta(days=i), time(2, 0), tz),
            True,
        )
        for i in range(400)
    ]
    last_of_previous_month = today.replace(day=1) - timedelta(days=1)
    broken_days = {today - timedelta(days=i) for i in range(0, 400, 37)} | {last_of_previous_month}
    broken = [
        BackupRecord(f"x-{d}", datetime.combine(d, time(2, 30), tz), False) for d in sorted(broken_days)
    ]
    return records + broken, {r.backup_id for r in broken}


def expected_gfs_ids(today: date, daily: int, weekly: int, monthly: int) -> set[str]:
    """The kept set worked out by calendar, knowing there is one backup every day."""
    keep = {today - timedelta(days=i) for i in range(daily)}
    monday = today - timedelta(days=today.weekday())
    for k in range(weekly):
        sunday = monday - timedelta(weeks=k) + timedelta(days=6)
        keep.add(min(sunday, today))  # the current week's newest is today's
    year, month = today.year, today.month
    for _ in range(monthly):
        last_day = date(year, month, calendar.monthrange(year, month)[1])
        keep.add(min(last_day, today))  # the current month's newest is today's
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return {f"b-{d}" for d in keep}


NIGHTLY = [
    # ISO week 2026-W53 runs into 2027; no DST in the last 30 days.
    pytest.param("Europe/Berlin", date(2027, 1, 2), 19, id="berlin-new-year"),
    pytest.param("Asia/Kolkata", date(2026, 11, 21), 20, id="kolkata-november"),
    # 02:00 does not exist on 8 March 2026 in New York, and DST starts inside the
    # 30-day window: `days: 30` is 30 x 24 h, which must not shift the boundary day.
    pytest.param("America/New_York", date(2026, 3, 31), 20, id="new-york-dst"),
]


@pytest.mark.parametrize(("tz_name", "today", "count"), NIGHTLY)
def test_nightly_catalogue_gfs_7_4_12_keeps_exactly_the_calendar_picks(tz_name, today, count):
    tz = ZoneInfo(tz_name)
    records, broken = nightly_catalogue(today, tz)
    now = datetime.combine(today, time(14, 0), tz)

    plan = plan_retention(records, gfs(daily=7, weekly=4, monthly=12), now, tz)

    expected = expected_gfs_ids(today, 7, 4, 12)
    assert len(expected) == count  # 7 + 4 + 12 minus the overlaps, worked out by hand
    assert set(plan.keep) == expected
    assert set(plan.delete) == {r.backup_id for r in records} - expected
    assert all(plan.delete[i] == REASON_INCOMPLETE for i in broken)
    year, week, _ = today.isocalendar()
    assert plan.keep[f"b-{today}"] == (
        f"daily {today}",
        f"weekly {year}-W{week:02d}",
        f"monthly {today:%Y-%m}",
        REASON_NEWEST,
    )


@pytest.mark.parametrize(("tz_name", "today", "count"), NIGHTLY)
def test_nightly_catalogue_days_30_keeps_exactly_the_last_30_days(tz_name, today, count):
    tz = ZoneInfo(tz_name)
    records, broken = nightly_catalogue(today, tz)
    now = datetime.combine(today, time(14, 0), tz)

    plan = plan_retention(records, days(30), now, tz)

    assert set(plan.keep) == {f"b-{today - timedelta(days=i)}" for i in range(30)}
    assert plan.keep[f"b-{today - timedelta(days=29)}"] == ("younger than 30 days",)
    assert plan.delete[f"b-{today - timedelta(days=30)}"] == "older than 30 days"
    assert plan.keep[f"b-{today}"] == ("younger than 30 days", REASON_NEWEST)
    assert all(plan.delete[i] == REASON_INCOMPLETE for i in broken)


# --- random catalogues -----------------------------------------------------------------

ZONES = ["UTC", "Asia/Kolkata", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Pacific/Chatham"]


def random_case(rng: random.Random):
    tz = ZoneInfo(rng.choice(ZONES))
    now = datetime(
        2026, rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59), tzinfo=tz
    )
    records = []
    for i in range(rng.randint(0, 60)):
        taken_at = now + timedelta(minutes=rng.randint(-500 * 24 * 60, 3 * 24 * 60))
        if records and rng.random() < 0.1:
            taken_at = rng.choice(records).taken_at  # ties
        # The catalogue may report times in any offset; only the instant matters.
        records.append(
            BackupRecord(f"r{i:02d}", taken_at.astimezone(ZoneInfo(rng.choice(ZONES))), rng.random() < 0.8)
        )
    if rng.random() < 0.4:
        policy = days(rng.randint(1, 400))
    else:
        counts = [rng.choice([None, 0, 1, 2, 5, 12]) for _ in range(3)]
        if all(c is None for c in counts):
            counts[0] = 3
        policy = gfs(*counts)
    return records, policy, now, tz, rng.random() < 0.85


def bucket_labels(d: date) -> dict[str, str]:
    iso = d.isocalendar()
    return {"daily": d.isoformat(), "weekly": f"{iso.year}-W{iso.week:02d}", "monthly": d.isoformat()[:7]}


@pytest.mark.parametrize("seed", range(30))
def test_random_catalogues_keep_the_invariants(seed):
    records, policy, now, tz, this_run_ok = random_case(random.Random(seed))
    plan = plan_retention(records, policy, now, tz, this_run_ok=this_run_ok)
    ids = {r.backup_id for r in records}

    # Every record gets exactly one verdict, and the listing order does not matter.
    assert set(plan.keep) | set(plan.delete) == ids
    assert not set(plan.keep) & set(plan.delete)
    shuffled = plan_retention(list(reversed(records)), policy, now, tz, this_run_ok=this_run_ok)
    assert (shuffled.keep, shuffled.delete) == (plan.keep, plan.delete)
    assert [row["backup_id"] for row in plan.rows()] == [
        r.backup_id for r in sorted(records, key=lambda r: (r.taken_at, r.backup_id), reverse=True)
    ]

    if not this_run_ok:
        assert plan.delete == {}
        assert set(plan.keep.values()) <= {(REASON_FAILED_RUN,)}
        return

    past_valid = sorted(
        (r for r in records if r.complete and r.taken_at <= now),
        key=lambda r: (r.taken_at, r.backup_id),
        reverse=True,
    )
    for r in records:
        if r.taken_at > now:
            assert plan.keep[r.backup_id] == (REASON_FUTURE,)
        elif not r.complete:
            assert plan.delete[r.backup_id] == REASON_INCOMPLETE
    if past_valid:
        assert plan.keep[past_valid[0].backup_id][-1] == REASON_NEWEST

    if policy.days is not None:
        cutoff = now - timedelta(days=policy.days)
        for i, r in enumerate(past_valid):
            assert (r.backup_id in plan.keep) == (r.taken_at > cutoff or i == 0)
        return

    # GFS: for each rule, the reasons name the N latest buckets (by label) that hold a
    # valid backup, each on that bucket's newest backup.
    for rule, count in (("daily", policy.daily), ("weekly", policy.weekly), ("monthly", policy.monthly)):
        newest_in: dict[str, str] = {}
        for r in past_valid:  # newest first
            newest_in.setdefault(bucket_labels(r.taken_at.astimezone(tz).date())[rule], r.backup_id)
        wanted = sorted(newest_in, reverse=True)[: count or 0]
        given = {
            reason.split(" ", 1)[1]: backup_id
            for backup_id, reasons in plan.keep.items()
            for reason in reasons
            if reason.startswith(f"{rule} ")
        }
        assert given == {label: newest_in[label] for label in wanted}
