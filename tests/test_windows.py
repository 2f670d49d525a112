"""Deploy freeze windows, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from tasks.config import FreezeWindow
from tasks.windows import active_freeze, covers

IST = ZoneInfo("Asia/Kolkata")
# Seed 000: weekly maintenance window Sunday 2-4 AM IST.
SUNDAY_IST = FreezeWindow(name="weekly patches", days=["sun"], from_time="02:00", to_time="04:00")
# Friday night to Monday morning, across midnight.
WEEKEND = FreezeWindow(name="weekend", days=["fri"], from_time="22:00", to_time="06:00")
HOLIDAY = FreezeWindow(name="year end", start=datetime(2026, 12, 24, tzinfo=UTC), end=datetime(2027, 1, 2, tzinfo=UTC))


@pytest.mark.parametrize(
    ("window", "now", "tz", "expected"),
    [
        # Sunday 02:30 IST is Saturday 21:00 UTC: the local calendar decides, not UTC's.
        (SUNDAY_IST, datetime(2026, 11, 21, 21, 0, tzinfo=UTC), IST, True),
        # 04:00 IST is the end: half-open, deploys may start again.
        (SUNDAY_IST, datetime(2026, 11, 21, 22, 30, tzinfo=UTC), IST, False),
        # The same wall time on a Monday is not frozen.
        (SUNDAY_IST, datetime(2026, 11, 22, 21, 0, tzinfo=UTC), IST, False),
        # Past midnight: Saturday 01:00 is inside Friday's 22:00-06:00 window.
        (WEEKEND, datetime(2026, 11, 21, 1, 0, tzinfo=UTC), ZoneInfo("UTC"), True),
        # Friday 21:59 is before it.
        (WEEKEND, datetime(2026, 11, 20, 21, 59, tzinfo=UTC), ZoneInfo("UTC"), False),
        # A fixed span: inside, and at its end (excluded).
        (HOLIDAY, datetime(2026, 12, 25, tzinfo=UTC), ZoneInfo("UTC"), True),
        (HOLIDAY, datetime(2027, 1, 2, tzinfo=UTC), ZoneInfo("UTC"), False),
    ],
    ids=["sunday-ist-inside", "sunday-ist-end", "monday-same-time", "past-midnight", "before-start",
         "fixed-inside", "fixed-end"],
)
def test_covers(window: FreezeWindow, now: datetime, tz: ZoneInfo, expected: bool) -> None:
    assert covers(window, now, tz) is expected


def test_active_freeze_returns_the_covering_window() -> None:
    now = datetime(2026, 12, 25, tzinfo=UTC)
    assert active_freeze([SUNDAY_IST, HOLIDAY], now, IST) == HOLIDAY
    assert active_freeze([SUNDAY_IST], now, IST) is None


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        covers(HOLIDAY, datetime(2026, 12, 25), ZoneInfo("UTC"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"days": ["sun"], "from_time": "2am", "to_time": "04:00"},
        {"start": datetime(2027, 1, 2, tzinfo=UTC), "end": datetime(2026, 1, 2, tzinfo=UTC)},
        {"days": ["sun"], "from_time": "02:00", "to_time": "04:00", "start": datetime(2026, 1, 1, tzinfo=UTC)},
    ],
    ids=["bad-time", "end-before-start", "both-shapes"],
)
def test_bad_windows_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FreezeWindow(name="x", **kwargs)
