"""The verdicts of restore tests, smoke queries and a failed restore's recovery: pure, one
row per case and why it matters."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from tasks.checks import (
    Check,
    about_backup,
    failures,
    indexes_intact,
    recovery,
    restore_test_failure,
    row_counts_match,
    rpo_met,
    rto_met,
    smoke_query,
    swap_phase,
)
from tasks.config import SmokeQuery


@pytest.mark.parametrize(("expected", "actual", "passed", "says"), [
    ({"public.a": 3, "public.b": 0}, {"public.a": 3, "public.b": 0}, True, "2 tables, 3 rows, all equal"),
    # one lost row is a failed restore, however big the database
    ({"public.a": 3}, {"public.a": 2}, False, "public.a: manifest 3, restored 2"),
    ({"public.a": 3, "public.b": 1}, {"public.a": 3}, False, "public.b: manifest 1, restored absent"),
    # a table the backup never had means the copy is not the backup
    ({"public.a": 3}, {"public.a": 3, "public.x": 0}, False, "public.x: manifest absent, restored 0"),
    ({}, {}, True, "0 tables, 0 rows"),
], ids=["equal", "row-lost", "table-missing", "table-extra", "empty-database"])
def test_row_counts_must_equal_the_manifest(expected: dict[str, int], actual: dict[str, int], passed: bool,
                                            says: str) -> None:
    check = row_counts_match(expected, actual)
    assert check.passed is passed and says in check.detail


def test_row_count_differences_are_listed_ten_at_most() -> None:
    check = row_counts_match({f"public.t{i}": 1 for i in range(30)}, {})
    assert "30 table(s) differ" in check.detail and check.detail.count("manifest 1") == 10


@pytest.mark.parametrize(("results", "passed", "says"), [
    ({"public.a_pkey": "ok", "public.a_idx": "ok"}, True, "passed on 2 B-tree indexes"),
    ({"public.a_pkey": "ok", "public.a_idx": "index is corrupt"}, False, "public.a_idx: index is corrupt"),
    ({}, True, "passed on 0 B-tree indexes"),  # a database without indexes is not a failure
], ids=["intact", "corrupt", "no-indexes"])
def test_amcheck_fails_on_any_corrupt_index(results: dict[str, str], passed: bool, says: str) -> None:
    check = indexes_intact(results)
    assert check.passed is passed and says in check.detail


def q(**expect: Any) -> SmokeQuery:
    return SmokeQuery(name="vehicles", sql="SELECT count(*) FROM vehicles", **expect)


@pytest.mark.parametrize(("query", "value", "passed", "says"), [
    (q(min=1), 120, True, "got 120"),
    (q(min=1), 0, False, "expected at least 1"),  # an empty table after a restore is the classic silent failure
    (q(max=10), 11, False, "expected at most 10"),
    (q(min=1), Decimal("5"), True, "got Decimal('5')"),  # numeric() columns come back as Decimal
    (q(equals="ok"), "ok", True, "got 'ok'"),
    (q(equals=3), "3", True, "got '3'"),  # a text column holding a number still equals it
    (q(equals=True), False, False, "expected True"),
    (q(min=1), None, False, "returned no value"),  # no row at all must not pass a bound
    (q(min=1), "many", False, "is not a number"),
    (q(), None, True, "got None"),  # a query with no expectation only has to run
], ids=["min-met", "min-missed", "max-missed", "decimal", "equals-text", "equals-number-as-text",
        "equals-bool", "no-row", "not-a-number", "no-expectation"])
def test_a_smoke_query_checks_its_value_against_its_expectation(query: SmokeQuery, value: Any, passed: bool,
                                                                says: str) -> None:
    check = smoke_query(query, value)
    assert check.name == "smoke: vehicles" and check.passed is passed and says in check.detail


@pytest.mark.parametrize(("age", "rpo", "passed", "says"), [
    (timedelta(hours=23), timedelta(hours=25), True, "backup age 23h00m00s within objective 25h00m00s"),
    (timedelta(hours=25), timedelta(hours=25), True, "within"),  # exactly on the objective still meets it
    (timedelta(hours=26, minutes=1), timedelta(hours=25), False, "backup age 26h01m00s exceeds objective"),
], ids=["within", "on-the-objective", "too-old"])
def test_rpo_is_the_age_of_the_newest_backup(age: timedelta, rpo: timedelta, passed: bool, says: str) -> None:
    check = rpo_met(age, rpo)
    assert check.passed is passed and says in check.detail


@pytest.mark.parametrize(("seconds", "rto", "passed"), [
    (59.9, timedelta(minutes=1), True),
    (60.0, timedelta(minutes=1), True),
    (60.1, timedelta(minutes=1), False),  # a restore that misses the RTO must fail the test, not warn
], ids=["within", "on-the-objective", "over"])
def test_rto_is_restore_plus_verify(seconds: float, rto: timedelta, passed: bool) -> None:
    check = rto_met(seconds, rto)
    assert check.passed is passed and "objective 0h01m00s" in check.detail


def test_failures_list_only_the_failed_checks() -> None:
    assert failures([Check("a", True, "fine")]) is None
    assert failures([Check("a", True, "fine"), Check("b", False, "2 lost"), Check("c", False, "x")]) == "b: 2 lost; c: x"


@pytest.mark.parametrize(("backup_id", "message", "expected"), [
    ("B1", "checksum check failed", "backup B1: checksum check failed"),
    ("B1", "backup B1: checksum check failed", "backup B1: checksum check failed"),  # named once, not twice
    (None, "no valid backup of 'fleet'", "no valid backup of 'fleet'"),  # no backup chosen yet: nothing to name
], ids=["named", "already-named", "no-backup"])
def test_an_error_names_its_backup_once(backup_id: str | None, message: str, expected: str) -> None:
    assert about_backup(backup_id, message) == expected


@pytest.mark.parametrize(("backup_id", "results", "error", "failure"), [
    ("B1", [Check("row counts", True, "ok")], None, None),
    ("B1", [Check("row counts", False, "1 differs")], None, "backup B1: row counts: 1 differs"),
    ("B1", [Check("RPO", False, "old")], "backup B1: pg_restore failed", "backup B1: pg_restore failed"),
    (None, [], "no valid backup", "backup ?: no valid backup"),  # the error comes first: it is why nothing ran
], ids=["passed", "check-failed", "error-wins", "no-backup"])
def test_a_restore_test_failure_names_the_backup(backup_id: str | None, results: list[Check], error: str | None,
                                                 failure: str | None) -> None:
    assert restore_test_failure(backup_id, results, error) == failure


@pytest.mark.parametrize(("swapped", "live_oid", "replicas_now", "healthy", "expected"), [
    (True, 100, {"api": 3}, True, {"swap": "swapped back", "original database live": True,
                                   "replicas restored": True, "healthy": True}),
    # the name is back but on the restored copy (another oid): the swap back did not happen
    (True, 200, {"api": 3}, True, {"swap": "NOT swapped back", "original database live": False}),
    (False, 100, {"api": 0}, False, {"swap": "none happened", "replicas restored": False, "healthy": False}),
    (False, None, {"api": 3}, True, {"original database live": False}),  # no database under the name at all
], ids=["recovered", "not-swapped-back", "app-still-down", "name-gone"])
def test_recovery_after_a_failed_swap_says_what_is_back(swapped: bool, live_oid: int | None,
                                                        replicas_now: dict[str, int], healthy: bool,
                                                        expected: dict[str, Any]) -> None:
    verdict = recovery(swapped, 100, live_oid, False, {"api": 3}, replicas_now, healthy)
    assert {k: verdict[k] for k in expected} == expected


@pytest.mark.parametrize(("original", "live", "kept", "phase"), [
    (10, 10, None, "before"),  # production is the original, nothing kept yet: swap
    (10, 20, 10, "swapped"),  # a rename keeps the oid: the original is kept, the copy is live
    # a resumed attempt must not swap again, nor guess: each of these is refused
    (10, 20, None, "unexpected databases: the original had oid 10, the live name has oid 20, "
                   "the kept name has oid None"),
    (10, 10, 30, "unexpected databases: the original had oid 10, the live name has oid 10, "
                 "the kept name has oid 30"),
    (10, None, 10, "unexpected databases: the original had oid 10, the live name has oid None, "
                   "the kept name has oid 10"),
    (None, 10, None, "unexpected databases: the original had oid None, the live name has oid 10, "
                     "the kept name has oid None"),
])
def test_the_swap_phase_is_told_by_oids(original: int | None, live: int | None, kept: int | None,
                                        phase: str) -> None:
    assert swap_phase(original, live, kept) == phase
