"""Maintenance windows and freezes: when may a runbook change things? A pure decision, no I/O.

A `Window` is a maintenance window (changes may run inside it) or a freeze (a blackout:
changes are refused inside it); both have the same shape. It recurs `every: week` (on
`days`, at `at`), `every: month` (the `nth` `weekday` of the month, at `at`; `nth: -1` is
the last one) or happens `once` (at `start`). `WindowsConfig` says which runbooks
(`require_for`, flow names) may only change things inside a maintenance window.

Semantics, the same for every function here:

- An occurrence starts at the local wall time `at` (or `start`) in the window's
  `timezone`, or in the environment's (`default_tz`) when the window has none.
- Its end is start + `duration` in elapsed time: a 2 h window across a DST change is still
  two hours long, so its local end time moves by an hour.
- A start inside a DST gap (02:30 on the US spring-forward Sunday does not exist in
  America/New_York) moves forward by the gap: it is read with the offset before the
  change (zoneinfo's fold=0), so 02:30 "EST" is 07:30 UTC, 03:30 EDT.
- A start inside a DST overlap (01:30 on the fall-back Sunday happens twice) is the first
  one (fold=0): 01:30 EDT, 05:30 UTC.
- Intervals are half-open, [start, end): at its end a window is over.
- Every `now` (and `after`/`before`) must be timezone-aware; naive raises ValueError.

`decide` is the verdict a changing runbook asks for: unplanned DR failovers are never
blocked; a freeze that applies to the runbook refuses it; a runbook in `require_for` is
refused outside every maintenance window; `emergency=True` turns either refusal into an
allowed run that needs an approval (`needs_emergency`).

Recurrence is dateutil's rrule over local wall times, then localised with zoneinfo.
`schedule_rrule` writes the same recurrence as a Prefect RRuleSchedule for prefect.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil import rrule as rr
from pydantic import Field, field_validator, model_validator

from tasks.fields import Duration, Model, check_timezone

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
NTHS = (1, 2, 3, 4, -1)
MAX_DURATION = timedelta(days=31)
# How far next_window looks: a yearly-ish 'once' window, plus a month of slack.
LOOKAHEAD = timedelta(days=400)

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_RRULE_DAYS = (rr.MO, rr.TU, rr.WE, rr.TH, rr.FR, rr.SA, rr.SU)
_ICAL_DAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
# Wall time and elapsed time differ by at most a day (Samoa skipped 2011-12-30); two days
# of slack around a range never miss an occurrence, and the exact filter is on instants.
_SLACK = timedelta(days=2)
# Which fields belong to which kind of window, for "'days' is for every: week".
_KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "days": ("week",),
    "weekday": ("month",),
    "nth": ("month",),
    "at": ("week", "month"),
    "start": ("once",),
}


class Window(Model):
    """A maintenance window, or a freeze (blackout) period: the same shape."""

    name: str = Field(description="Unique within its list; shows in verdicts and reports")
    every: Literal["week", "month", "once"] = Field(description="week, month, or once")
    days: list[Day] = Field(default_factory=list, description="every: week — the weekdays it starts on")
    weekday: Day | None = Field(None, description="every: month — the nth `weekday` of the month")
    nth: int | None = Field(None, description="every: month — 1, 2, 3, 4, or -1 for the last one")
    at: str | None = Field(None, description="every: week or month — local start time HH:MM")
    start: datetime | None = Field(
        None, description="every: once — the start; without an offset it is local wall time in `timezone`")
    duration: Duration = Field(description="How long it lasts, like '2h' or '4h' (elapsed time, at most 31 days)")
    timezone: str | None = Field(None, description="IANA timezone; empty means the environment's")
    applies_to: list[str] = Field(
        default_factory=list,
        description="Freezes only: the runbooks (flow names) it blocks; empty blocks every changing runbook")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("'name' must not be empty")
        return v

    @field_validator("at")
    @classmethod
    def _at(cls, v: str | None) -> str | None:
        if v is not None and not _HHMM.match(v):
            raise ValueError(f"'at' is a 24-hour local time HH:MM like '02:00' or '22:30', got {v!r}")
        return v

    @field_validator("duration")
    @classmethod
    def _duration(cls, v: timedelta) -> timedelta:
        if not timedelta(0) < v <= MAX_DURATION:
            raise ValueError(f"'duration' must be more than 0 and at most 31 days, got {v}")
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return check_timezone(v)
        except ValueError as exc:
            raise ValueError(f"'timezone' {v!r} is not known: use {exc}") from None

    @model_validator(mode="after")
    def _shape(self) -> Window:
        for field, kinds in _KIND_FIELDS.items():
            if self.every not in kinds and getattr(self, field) not in (None, []):
                raise ValueError(f"'{field}' is for every: {' or '.join(kinds)}, "
                                 f"not every: {self.every} (window {self.name!r})")
        if self.every == "week":
            if not self.days:
                raise ValueError(f"every: week needs 'days', at least one of {', '.join(DAYS)} "
                                 f"(window {self.name!r})")
            twice = sorted({d for d in self.days if self.days.count(d) > 1})
            if twice:
                raise ValueError(f"'days' lists {', '.join(twice)} more than once (window {self.name!r})")
        if self.every == "month":
            if self.weekday is None:
                raise ValueError(f"every: month needs 'weekday', one of {', '.join(DAYS)} (window {self.name!r})")
            if self.nth not in NTHS:
                raise ValueError(f"every: month needs 'nth' of 1, 2, 3, 4 or -1 (the last), got {self.nth} "
                                 f"(window {self.name!r})")
        if self.every in ("week", "month") and self.at is None:
            raise ValueError(f"every: {self.every} needs 'at', the local start time HH:MM (window {self.name!r})")
        if self.every == "once" and self.start is None:
            raise ValueError(f"every: once needs 'start', a date and time (window {self.name!r})")
        return self


class WindowsConfig(Model):
    """An environment's maintenance windows and freezes, and the runbooks bound to the windows."""

    require_for: list[str] = Field(
        default_factory=list,
        description="Runbooks (flow names, like deploy or migrate-database) that may only change things "
                    "inside a maintenance window")
    maintenance: list[Window] = Field(default_factory=list, description="When changes may run")
    freezes: list[Window] = Field(default_factory=list, description="When changes are refused (blackouts)")

    @model_validator(mode="after")
    def _consistent(self) -> WindowsConfig:
        for section, windows in (("maintenance", self.maintenance), ("freezes", self.freezes)):
            names = [w.name for w in windows]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"window names must be unique within '{section}': "
                                 f"{', '.join(repr(n) for n in twice)} appears more than once")
        for w in self.maintenance:
            if w.applies_to:
                raise ValueError(f"'applies_to' is for freezes only; maintenance window {w.name!r} has it "
                                 "(use 'require_for' to bind runbooks to the maintenance windows)")
        if self.require_for and not self.maintenance:
            raise ValueError(f"'require_for' lists {', '.join(self.require_for)}, but 'maintenance' has no window: "
                             "add at least one maintenance window, or empty 'require_for'")
        return self


@dataclass(frozen=True)
class Occurrence:
    """One occurrence of a window: [start, end), aware, in the window's timezone.

    Compare instants with `.astimezone(UTC)`: datetimes sharing a ZoneInfo compare by wall
    time and ignore fold, and one in a DST overlap (01:30 EDT) is never == to a datetime of
    another zone (PEP 495).
    """

    name: str
    start: datetime
    end: datetime

    def describe(self) -> str:
        """'weekly-patches, Sun 2026-12-06 02:00-04:00 IST (+05:30)': local and readable."""
        same_day = self.start.date() == self.end.date()
        same_zone = self.start.utcoffset() == self.end.utcoffset()
        if same_day and same_zone:
            return f"{self.name}, {_day_time(self.start)}-{self.end:%H:%M} {_zone(self.end)}"
        if same_zone:
            return f"{self.name}, {_day_time(self.start)} to {_day_time(self.end)} {_zone(self.end)}"
        end = f"{self.end:%H:%M}" if same_day else _day_time(self.end)
        return f"{self.name}, {_day_time(self.start)} {_zone(self.start)} to {end} {_zone(self.end)}"


@dataclass(frozen=True)
class Verdict:
    """May this runbook change things now, and why."""

    allowed: bool
    needs_emergency: bool  # refused, but emergency=True (with an approval) may go ahead
    reason: str
    window: Occurrence | None  # the maintenance window now inside, if any
    freeze: Occurrence | None  # the freeze now applying to the runbook, if any
    next: Occurrence | None  # the next maintenance window

    def __post_init__(self) -> None:
        # Every refusal here can be overridden by an emergency: a refused verdict that
        # cannot would leave the caller with no way forward and no one to ask.
        if not self.allowed and not self.needs_emergency:
            raise ValueError("a refused verdict needs an emergency override (needs_emergency=True)")


# --- the calendar ------------------------------------------------------------------------------


def occurrences(window: Window, after: datetime, before: datetime, default_tz: str) -> list[Occurrence]:
    """Every occurrence of `window` that overlaps [after, before), in start order."""
    # Everything compares in UTC: two datetimes sharing a ZoneInfo compare by wall time and
    # ignore fold, so 01:30 EDT and 01:30 EST would be equal.
    after, before = _utc(after, "after"), _utc(before, "before")
    tz = _tz(window, default_tz)
    if window.every == "once":
        assert window.start is not None
        starts = [_localise(window.start, tz)]
    else:
        lo = (after - window.duration).astimezone(tz).replace(tzinfo=None) - _SLACK
        hi = before.astimezone(tz).replace(tzinfo=None) + _SLACK
        starts = [_localise(wall, tz) for wall in _rule(window, lo).between(lo, hi, inc=True)]
    found: dict[datetime, Occurrence] = {}
    for start in starts:
        begin = start.astimezone(UTC)
        end = begin + window.duration
        # A gap can move a wall time onto the next one: one occurrence per instant.
        if begin < before and end > after:
            found.setdefault(begin, Occurrence(window.name, start, end.astimezone(tz)))
    return [found[k] for k in sorted(found)]


def in_window(windows: Sequence[Window], now: datetime, default_tz: str) -> Occurrence | None:
    """The occurrence covering `now`; of several, the one ending last."""
    now = _utc(now, "now")
    covering = [o for w in windows for o in occurrences(w, now, now + timedelta(microseconds=1), default_tz)]
    return max(covering, key=_end, default=None)


def next_window(windows: Sequence[Window], now: datetime, default_tz: str) -> Occurrence | None:
    """The earliest occurrence starting strictly after `now`, within LOOKAHEAD; None if none."""
    now = _utc(now, "now")
    later = [o for w in windows for o in occurrences(w, now, now + LOOKAHEAD, default_tz) if _start(o) > now]
    return min(later, key=_start, default=None)


def current_freeze(freezes: Sequence[Window], now: datetime, default_tz: str,
                   runbook: str | None = None) -> Occurrence | None:
    """A freeze covering `now` that applies to `runbook` (an empty `applies_to` applies to all;
    runbook None counts every freeze); of several, the one ending last."""
    applying = [f for f in freezes if runbook is None or not f.applies_to or runbook in f.applies_to]
    return in_window(applying, now, default_tz)


def decide(cfg: WindowsConfig | None, runbook: str, now: datetime, default_tz: str, *,
           emergency: bool = False, unplanned: bool = False) -> Verdict:
    """May `runbook` change things at `now`? See the module docstring for the rules."""
    now = _utc(now, "now")
    if cfg is None:
        return Verdict(True, False, f"{runbook}: no maintenance windows or freezes are configured",
                       None, None, None)
    window = in_window(cfg.maintenance, now, default_tz)
    freeze = current_freeze(cfg.freezes, now, default_tz, runbook)
    upcoming = next_window(cfg.maintenance, now, default_tz)
    if unplanned:
        return Verdict(True, False, f"{runbook} is unplanned (a DR failover): maintenance windows and freezes "
                                    "never block it", window, freeze, upcoming)
    refusals = []
    if freeze is not None:
        refusals.append(f"{runbook} is frozen: {freeze.describe()}; ends {_day_time(freeze.end)} "
                        f"{_zone(freeze.end)}")
    if runbook in cfg.require_for and window is None:
        if upcoming is None:
            refusals.append(f"{runbook} is outside every maintenance window and no maintenance window is coming "
                            f"(none in the next {LOOKAHEAD.days} days)")
        else:
            refusals.append(f"{runbook} is outside every maintenance window; the next is {upcoming.describe()}")
    if refusals:
        refused = ". ".join(refusals)
        if emergency:
            return Verdict(True, True, f"emergency overrides, with an approval: {refused}", window, freeze, upcoming)
        return Verdict(False, True, refused, window, freeze, upcoming)
    if window is not None:
        reason = f"{runbook} is inside maintenance window {window.describe()}"
    else:
        reason = f"{runbook} needs no maintenance window and no freeze applies to it"
    return Verdict(True, False, reason, window, freeze, upcoming)


# --- Prefect schedules ---------------------------------------------------------------------------


def schedule_rrule(window: Window, default_tz: str) -> dict[str, str]:
    """A Prefect RRuleSchedule ({"rrule", "timezone"}) that fires at each occurrence's start.

    At a DST gap Prefect does not follow the rule above: dateutil reads a non-existent
    wall time with the offset after the change, so a weekly 02:30 America/New_York run
    on the spring-forward Sunday fires at 06:30 UTC (01:30 EST), an hour before the
    window opens at 07:30 UTC. A 'once' window is written with its already moved start
    (03:30), so it fires on time. Overlaps agree (the first 01:30, EDT).
    """
    tz = _tz(window, default_tz)
    if window.every == "once":
        assert window.start is not None
        local = _localise(window.start, tz).replace(tzinfo=None)
        return {"rrule": f"DTSTART:{local:%Y%m%dT%H%M%S}\nRRULE:FREQ=DAILY;COUNT=1", "timezone": tz.key}
    at = _hhmm(window)
    clock = f"BYHOUR={at.hour};BYMINUTE={at.minute};BYSECOND=0"
    if window.every == "week":
        byday = ",".join(_ICAL_DAYS[i] for i, d in enumerate(DAYS) if d in window.days)
        return {"rrule": f"FREQ=WEEKLY;BYDAY={byday};{clock}", "timezone": tz.key}
    assert window.weekday is not None
    return {"rrule": f"FREQ=MONTHLY;BYDAY={window.nth}{_ICAL_DAYS[DAYS.index(window.weekday)]};{clock}",
            "timezone": tz.key}


# --- legacy deploy_freeze ------------------------------------------------------------------------


def from_weekly_span(name: str, days: Sequence[str], from_time: str, to_time: str,
                     timezone: str | None) -> Window:
    """A legacy weekly freeze (`days`, `from_time`, `to_time`) as a Window freezing deploys.

    A `to_time` at or before `from_time` runs past midnight (fri 22:00-06:00 covers Saturday
    morning; equal times freeze a whole day), as the legacy check did. The legacy end was a
    wall time; here it is elapsed, so a span across a DST change keeps its length.
    """
    for field, value in (("from_time", from_time), ("to_time", to_time)):
        if not _HHMM.match(value):
            raise ValueError(f"legacy freeze {name!r}: '{field}' is HH:MM, got {value!r}")
    start, end = (datetime.combine(datetime.min, time.fromisoformat(t)) for t in (from_time, to_time))
    duration = (end - start) % timedelta(days=1) or timedelta(days=1)
    return Window(name=name, every="week", days=list(days), at=from_time, duration=duration,  # type: ignore[arg-type]
                  timezone=timezone, applies_to=["deploy"])


def from_fixed_span(name: str, start: datetime, end: datetime) -> Window:
    """A legacy fixed freeze (aware `start` and `end`) as a once Window freezing deploys."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError(f"legacy freeze {name!r}: 'start' and 'end' must be timezone-aware")
    if end <= start:
        raise ValueError(f"legacy freeze {name!r}: 'end' ({end.isoformat()}) must be after 'start' "
                         f"({start.isoformat()})")
    return Window(name=name, every="once", start=start, duration=end - start, applies_to=["deploy"])


# --- helpers -------------------------------------------------------------------------------------


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


def _start(o: Occurrence) -> datetime:
    return o.start.astimezone(UTC)


def _end(o: Occurrence) -> datetime:
    return o.end.astimezone(UTC)


def _tz(window: Window, default_tz: str) -> ZoneInfo:
    name = window.timezone or default_tz
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"default_tz {name!r} is not an IANA timezone like 'UTC' or 'Asia/Kolkata'") from None


def _localise(start: datetime, tz: ZoneInfo) -> datetime:
    """An aware start in `tz`: a naive wall time is read with fold=0 (a gap moves it forward,
    an overlap takes the first); the round trip through UTC shows the moved wall time."""
    if start.tzinfo is None:
        start = start.replace(tzinfo=tz)
    return start.astimezone(UTC).astimezone(tz)


def _hhmm(window: Window) -> time:
    assert window.at is not None
    return time.fromisoformat(window.at)


def _rule(window: Window, dtstart: datetime) -> rr.rrule:
    at = _hhmm(window)
    if window.every == "week":
        return rr.rrule(rr.WEEKLY, dtstart=dtstart, byweekday=[_RRULE_DAYS[DAYS.index(d)] for d in window.days],
                        byhour=at.hour, byminute=at.minute, bysecond=0)
    assert window.weekday is not None and window.nth is not None
    return rr.rrule(rr.MONTHLY, dtstart=dtstart, byweekday=_RRULE_DAYS[DAYS.index(window.weekday)](window.nth),
                    byhour=at.hour, byminute=at.minute, bysecond=0)


def _day_time(dt: datetime) -> str:
    return f"{DAYS[dt.weekday()].capitalize()} {dt:%Y-%m-%d %H:%M}"


def _zone(dt: datetime) -> str:
    offset = dt.utcoffset()
    assert offset is not None
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{dt.tzname()} ({sign}{hours:02d}:{mins:02d})"
