"""Deploy freeze windows: is now inside one? A pure decision on an injected clock.

A window is a fixed span (`start`/`end`, absolute) or weekly (`days` with `from_time` and
`to_time` in the environment's timezone). A weekly window whose `to_time` is earlier than
its `from_time` runs past midnight into the next day (fri 22:00 to 06:00 covers Saturday
morning).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from tasks.config import FreezeWindow

_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _hhmm(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def covers(window: FreezeWindow, now: datetime, tz: ZoneInfo) -> bool:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if window.start is not None and window.end is not None:
        return window.start <= now < window.end
    assert window.from_time is not None and window.to_time is not None
    local = now.astimezone(tz)
    start_t, end_t = _hhmm(window.from_time), _hhmm(window.to_time)
    # The window that may cover `local` started today or, when it runs past midnight, yesterday.
    for back in (0, 1):
        day = local.date() - timedelta(days=back)
        if _DAYS[day.weekday()] not in window.days:
            continue
        begin = datetime.combine(day, start_t, tz)
        end_day = day if end_t > start_t else day + timedelta(days=1)
        end = datetime.combine(end_day, end_t, tz)
        if begin <= local < end:
            return True
    return False


def active_freeze(windows: Sequence[FreezeWindow], now: datetime, tz: ZoneInfo) -> FreezeWindow | None:
    """The first freeze window covering `now`, or None."""
    return next((w for w in windows if covers(w, now, tz)), None)
