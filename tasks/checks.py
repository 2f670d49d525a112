"""Verdicts of a restore test and of smoke queries, as plain functions: figures in, a pass or
fail with its reason out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tasks.config import SmokeQuery


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def row_counts_match(expected: dict[str, int], actual: dict[str, int]) -> Check:
    diffs = []
    for table in sorted(set(expected) | set(actual)):
        e, a = expected.get(table), actual.get(table)
        if e != a:
            diffs.append(f"{table}: manifest {e if e is not None else 'absent'}, restored {a if a is not None else 'absent'}")
    total = sum(expected.values())
    if diffs:
        return Check("row counts", False, f"{len(diffs)} table(s) differ: " + "; ".join(diffs[:10]))
    return Check("row counts", True, f"{len(expected)} tables, {total} rows, all equal to the manifest")


def indexes_intact(results: dict[str, str]) -> Check:
    bad = {k: v for k, v in results.items() if v != "ok"}
    if bad:
        return Check("amcheck", False, "; ".join(f"{k}: {v}" for k, v in sorted(bad.items())[:10]))
    return Check("amcheck", True, f"bt_index_check passed on {len(results)} B-tree indexes")


def smoke_query(q: SmokeQuery, value: Any) -> Check:
    name = f"smoke: {q.name}"
    problems = []
    if value is None and (q.min is not None or q.max is not None or q.equals is not None):
        problems.append("returned no value")
    else:
        if q.equals is not None and str(value) != str(q.equals) and value != q.equals:
            problems.append(f"expected {q.equals!r}")
        try:
            if q.min is not None and float(value) < q.min:
                problems.append(f"expected at least {q.min:g}")
            if q.max is not None and float(value) > q.max:
                problems.append(f"expected at most {q.max:g}")
        except (TypeError, ValueError):
            problems.append("is not a number")
    if problems:
        return Check(name, False, f"got {value!r}: " + ", ".join(problems))
    return Check(name, True, f"got {value!r}")


def rpo_met(backup_age: timedelta, rpo: timedelta) -> Check:
    ok = backup_age <= rpo
    return Check("RPO", ok, f"backup age {_fmt(backup_age)} {'within' if ok else 'exceeds'} objective {_fmt(rpo)}")


def rpo_of_archive(wal_age: timedelta | None, rpo: timedelta) -> Check:
    """Continuous archiving: the data a recovery now would lose is what came after the last
    archived WAL."""
    if wal_age is None:
        return Check("RPO", False, f"no WAL was ever archived; objective {_fmt(rpo)}")
    ok = wal_age <= rpo
    return Check("RPO", ok, f"last archived WAL is {_fmt(wal_age)} old, {'within' if ok else 'exceeds'} objective "
                            f"{_fmt(rpo)}")


def rto_met(seconds: float, rto: timedelta) -> Check:
    ok = seconds <= rto.total_seconds()
    return Check("RTO", ok, f"restore and verify took {seconds:.1f}s; objective {_fmt(rto)}")


def _fmt(d: timedelta) -> str:
    s = int(d.total_seconds())
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def failures(results: list[Check]) -> str | None:
    """The failed checks in one line, None when all passed."""
    failed = [c for c in results if not c.passed]
    return "; ".join(f"{c.name}: {c.detail}" for c in failed) if failed else None


def about_backup(backup_id: str | None, message: str) -> str:
    """An error message that names the backup it is about, once."""
    if backup_id is None or message.startswith(f"backup {backup_id}"):
        return message
    return f"backup {backup_id}: {message}"


def restore_test_failure(backup_id: str | None, results: list[Check], error: str | None) -> str | None:
    """Why a restore test failed, naming the backup; None when it passed."""
    what = error or failures(results)
    if what is None:
        return None
    return what if what.startswith("backup ") else f"backup {backup_id or '?'}: {what}"


def recovery(swapped: bool, original_oid: int | None, live_oid: int | None, previous_left: bool,
             replicas_before: dict[str, int], replicas_now: dict[str, int], healthy: bool) -> dict[str, Any]:
    """After a failed restore that touched production: is production back as it was? The
    original database carries its name again (a rename keeps the oid), the apps run their
    replicas from before, and they answer healthy."""
    original_live = live_oid is not None and live_oid == original_oid
    return {
        "swap": ("swapped back" if original_live else "NOT swapped back") if swapped else "none happened",
        "original database live": original_live,
        "previous copy left": previous_left,
        "replicas restored": all(replicas_now.get(s) == n for s, n in replicas_before.items()),
        "replicas": replicas_now,
        "healthy": healthy,
    }


def swap_phase(original_oid: int | None, live_oid: int | None, kept_oid: int | None) -> str:
    """Where a restore's swap stands, told by oids (a rename keeps a database's oid):
    "before" (production is the original, nothing kept yet), "swapped" (the original is
    kept under its `_pre_restore_` name and another database is live), or a sentence
    saying what is unexpected, for an error."""
    if original_oid is not None and live_oid == original_oid and kept_oid is None:
        return "before"
    if original_oid is not None and kept_oid == original_oid and live_oid is not None:
        return "swapped"
    return (f"unexpected databases: the original had oid {original_oid}, the live name has oid {live_oid}, "
            f"the kept name has oid {kept_oid}")
