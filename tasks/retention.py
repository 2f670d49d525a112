"""Which backups to keep and which to delete: a pure decision, no I/O.

`plan_retention` takes the backup catalogue, the retention policy, the clock and the
timezone, and returns a `RetentionPlan` that names a verdict and its reasons for every
backup. The task that deletes objects only carries the plan out.

Rules, in the order they win:

1. This run failed (`this_run_ok=False`): nothing is deleted.
2. A backup dated after `now` (clock skew, or a host writing with a fast clock) is kept
   and never deleted; it takes no part in the policy, so it cannot use up a daily,
   weekly or monthly slot or stand in for the newest valid backup.
3. An incomplete backup (no valid manifest) is deleted, whatever its age.
4. The newest complete backup is kept, whatever the policy says.
5. The policy: `days: N` keeps complete backups taken after `now - N days` (an absolute
   span of N * 24 h); GFS counts keep, like restic and borg, the newest complete backup of
   each of the N most recent local days / ISO weeks / months that have one, so a gap in
   the backups stretches the window back instead of losing slots. Buckets are computed
   in the local calendar of `tz`.

Ties on `taken_at` are broken by `backup_id` (the larger id counts as newer), so the
plan is the same whatever order the catalogue is listed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from tasks.config import Retention

REASON_FAILED_RUN = "this run failed: retention skipped"
REASON_FUTURE = "dated in the future (clock skew?): never deleted"
REASON_INCOMPLETE = "incomplete: no manifest"
REASON_NEWEST = "newest valid backup"

_NO_TIME = datetime.min.replace(tzinfo=UTC)  # sorts a hand-built plan's undated ids last


@dataclass(frozen=True)
class BackupRecord:
    backup_id: str
    taken_at: datetime  # timezone-aware
    complete: bool  # False: no valid manifest (an interrupted or failed backup)


@dataclass(frozen=True)
class RetentionPlan:
    keep: dict[str, tuple[str, ...]]  # backup_id -> every reason it is kept
    delete: dict[str, str]  # backup_id -> why it goes
    taken_at: dict[str, datetime] = field(default_factory=dict)  # backup_id -> local time, for rows()

    def rows(self) -> list[dict]:
        """One row per backup, newest first, for a Prefect table artifact."""
        ids = sorted(
            [*self.keep, *self.delete], key=lambda i: (self.taken_at.get(i, _NO_TIME), i), reverse=True
        )
        return [
            {
                "backup_id": i,
                "taken_at": self.taken_at[i].isoformat() if i in self.taken_at else "",
                "verdict": "keep" if i in self.keep else "delete",
                "reasons": "; ".join(self.keep[i]) if i in self.keep else self.delete[i],
            }
            for i in ids
        ]


def plan_retention(
    records: Sequence[BackupRecord],
    policy: Retention,
    now: datetime,
    tz: ZoneInfo,
    this_run_ok: bool = True,
) -> RetentionPlan:
    """Decide keep or delete for every backup in the catalogue, with the reasons."""
    _check_inputs(records, now)
    local = {r.backup_id: r.taken_at.astimezone(tz) for r in records}

    if not this_run_ok:
        return RetentionPlan(
            keep={r.backup_id: (REASON_FAILED_RUN,) for r in records}, delete={}, taken_at=local
        )

    keep: dict[str, list[str]] = {}
    delete: dict[str, str] = {}
    candidates: list[BackupRecord] = []  # complete, not in the future
    for r in records:
        if r.taken_at > now:
            keep[r.backup_id] = [REASON_FUTURE]
        elif not r.complete:
            delete[r.backup_id] = REASON_INCOMPLETE
        else:
            candidates.append(r)
    candidates.sort(key=lambda r: (r.taken_at, r.backup_id), reverse=True)  # newest first

    selected: dict[str, list[str]] = {r.backup_id: [] for r in candidates}
    if policy.days is not None:
        cutoff = now - timedelta(days=policy.days)
        for r in candidates:
            if r.taken_at > cutoff:
                selected[r.backup_id].append(f"younger than {_days(policy.days)}")
        not_selected = f"older than {_days(policy.days)}"
    else:
        rules: list[tuple[str, int | None, Callable[[date], str]]] = [
            ("daily", policy.daily, lambda d: d.isoformat()),
            ("weekly", policy.weekly, lambda d: "{}-W{:02d}".format(*d.isocalendar()[:2])),
            ("monthly", policy.monthly, lambda d: f"{d.year:04d}-{d.month:02d}"),
        ]
        for name, count, bucket_of in rules:
            if not count:
                continue
            buckets: set[str] = set()
            for r in candidates:  # newest first: the first one seen in a bucket is its newest
                bucket = bucket_of(local[r.backup_id].date())
                if bucket in buckets:
                    continue
                if len(buckets) == count:
                    break
                buckets.add(bucket)
                selected[r.backup_id].append(f"{name} {bucket}")
        not_selected = "not selected by " + " / ".join(
            f"{name} {count}" for name, count, _ in rules if count is not None
        )

    if candidates:
        selected[candidates[0].backup_id].append(REASON_NEWEST)

    for r in candidates:
        if selected[r.backup_id]:
            keep[r.backup_id] = selected[r.backup_id]
        else:
            delete[r.backup_id] = not_selected

    return RetentionPlan(
        keep={i: tuple(reasons) for i, reasons in keep.items()},
        delete=delete,
        taken_at=local,
    )


def _check_inputs(records: Sequence[BackupRecord], now: datetime) -> None:
    if _is_naive(now):
        raise ValueError(f"now={now.isoformat()} has no timezone; pass an aware datetime")
    seen: set[str] = set()
    for r in records:
        if _is_naive(r.taken_at):
            raise ValueError(
                f"backup {r.backup_id!r}: taken_at={r.taken_at.isoformat()} has no timezone; "
                "catalogue times must be aware"
            )
        if r.backup_id in seen:
            raise ValueError(f"backup {r.backup_id!r} appears more than once in the catalogue")
        seen.add(r.backup_id)


def _is_naive(dt: datetime) -> bool:
    return dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"
