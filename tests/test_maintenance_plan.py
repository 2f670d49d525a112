"""What a maintenance window does and whether the next task fits, table-driven."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tasks import maintenance_plan as mp
from tasks.windows import Window, WindowsConfig


@pytest.fixture(autouse=True)
def prefect_api() -> Iterator[None]:  # pure: no Prefect server needed (overrides the session's)
    yield


NOW = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
END = NOW + timedelta(minutes=30)
VACUUM = mp.parse_tasks([{"kind": "vacuum_analyze", "database": "fleet"}])[0]
VACUUM_10M = mp.parse_tasks([{"kind": "vacuum_analyze", "database": "fleet", "estimate": "10m"}])[0]
CERTS = mp.parse_tasks([{"kind": "check_certificates"}])[0]


@pytest.mark.parametrize(
    ("task", "now", "margin", "configured", "past", "go", "source", "says"),
    [
        # Its own estimate wins over the config's and the past's: the operator knows this run.
        (VACUUM_10M, NOW, timedelta(minutes=5), {"vacuum_analyze": timedelta(hours=1)}, {"vacuum_analyze": [7200.0]},
         True, "task", "about 10 min (task) of 25 min left"),
        # The config's estimate for the kind, when the task gives none.
        (VACUUM, NOW, timedelta(minutes=5), {"vacuum_analyze": timedelta(minutes=40)}, {}, False, "config",
         "needs about 40 min (config) but only 25 min are left"),
        # The longest recent duration: one slow run counts, an average would hide it.
        (VACUUM, NOW, timedelta(minutes=5), {}, {"vacuum_analyze": [60.0, 1800.0, 90.0]}, False, "past runs",
         "needs about 30 min (past runs)"),
        # Nothing says it will not fit: it runs, and the reason says there was no estimate.
        (VACUUM, NOW, timedelta(minutes=5), {}, {}, True, "none", "no estimate for vacuum_analyze"),
        # The margin is kept for the health check and mode off: a task may not eat into it.
        (VACUUM_10M, END - timedelta(minutes=14), timedelta(minutes=5), {}, {}, False, "task",
         "only 9 min are left"),
        # An estimate that exactly fits goes: the end of the margin is the deadline, not before it.
        (VACUUM_10M, END - timedelta(minutes=15), timedelta(minutes=5), {}, {}, True, "task", "of 10 min left"),
        # Past the margin nothing starts, not even a task without an estimate.
        (CERTS, END - timedelta(minutes=4), timedelta(minutes=5), {}, {}, False, "none", "no time left"),
    ],
    ids=["own-estimate-wins", "config-estimate", "longest-past-run", "no-estimate-runs", "margin-kept",
         "exact-fit-goes", "past-the-margin"],
)
def test_next_step(task: mp.MaintenanceTask, now: datetime, margin: timedelta, configured: dict[str, timedelta],
                   past: dict[str, list[float]], go: bool, source: str, says: str) -> None:
    step = mp.next_step(task, now, END, margin, configured, past)
    assert (step.go, step.source) == (go, source)
    assert says in step.reason, step.reason


def test_next_step_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        mp.next_step(VACUUM, NOW.replace(tzinfo=None), END, timedelta(0), {}, {})


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        # A misspelt kind names the entry and lists the kinds there are.
        ([{"kind": "vacuum_analyse", "database": "fleet"}], ["tasks", "vacuum_analyse", "kinds: vacuum_analyze"]),
        # A missing key names the entry's index and the key.
        ([{"kind": "reindex"}], ["tasks[0.database]", "Field required"]),
        # An unknown key is refused rather than ignored: a typo must not silently do nothing.
        ([{"kind": "reindex", "database": "fleet", "concurrent": False}], ["tasks[0.concurrent]"]),
        # Stuck means older than a positive duration; 0 would end every session.
        ([{"kind": "terminate_stuck_queries", "database": "fleet", "older_than": "0s"}], ["older_than", "above 0"]),
        # A Job's name becomes a Kubernetes name.
        ([{"kind": "run_job", "service": "api", "name": "Bad_Name", "command": ["x"]}], ["tasks[0.name]"]),
    ],
    ids=["misspelt-kind", "missing-key", "unknown-key", "zero-age", "bad-job-name"],
)
def test_parse_tasks_names_what_is_wrong(raw: list[dict[str, object]], says: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        mp.parse_tasks(raw)
    for fragment in says:
        assert fragment in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ({"kind": "vacuum_analyze", "database": "fleet"}, "vacuum_analyze fleet"),
        ({"kind": "check_certificates"}, "check_certificates"),
        ({"kind": "deploy", "service": "api", "image": "registry/app:v2"}, "deploy api"),
        ({"kind": "run_job", "service": "api", "name": "reports", "command": ["./go"]}, "run_job reports"),
    ],
    ids=["database", "no-target", "service", "job-name-over-service"],
)
def test_labels_say_the_kind_and_what_it_acts_on(raw: dict[str, object], label: str) -> None:
    assert mp.parse_tasks([raw])[0].label == label


def test_record_duration_keeps_the_newest_few_of_each_kind() -> None:
    past = {"reindex": [1.0, 2.0, 3.0, 4.0, 5.0]}
    assert mp.record_duration(past, "reindex", 6.0) == {"reindex": [2.0, 3.0, 4.0, 5.0, 6.0]}
    assert mp.record_duration({}, "vacuum_analyze", 1.23456) == {"vacuum_analyze": [1.235]}
    assert past == {"reindex": [1.0, 2.0, 3.0, 4.0, 5.0]}  # not changed in place


SUNDAY = Window(name="weekly-patches", every="week", days=["sun"], at="02:00", duration="2h",
                timezone="Asia/Kolkata")
YEAR_END = Window(name="year-end", every="once", start=datetime(2026, 12, 20, tzinfo=UTC), duration="14d")
SUNDAY_0230_IST = datetime(2026, 12, 5, 21, 0, tzinfo=UTC)  # Sun 02:30 IST


@pytest.mark.parametrize(
    ("cfg", "name", "now", "inside", "says"),
    [
        # Sunday 02:30 IST is Saturday 21:00 UTC: inside, by the window's own timezone.
        (WindowsConfig(maintenance=[SUNDAY]), None, SUNDAY_0230_IST, True, "inside weekly-patches"),
        # An hour after it closed: refused, naming the next Sunday.
        (WindowsConfig(maintenance=[SUNDAY]), None, SUNDAY_0230_IST + timedelta(hours=2), False,
         "the next is weekly-patches, Sun 2026-12-13 02:00-04:00 IST"),
        # A window asked for by a name that is not configured: the names there are.
        (WindowsConfig(maintenance=[SUNDAY]), "monthly", SUNDAY_0230_IST, False, "known: weekly-patches"),
        # A freeze beats the window: no maintenance during the year-end freeze.
        (WindowsConfig(maintenance=[SUNDAY], freezes=[YEAR_END]), None, datetime(2026, 12, 26, 21, 0, tzinfo=UTC),
         False, "maintenance is frozen: year-end"),
        # No window at all: a maintenance run needs one.
        (None, None, SUNDAY_0230_IST, False, "no maintenance window is configured"),
    ],
    ids=["inside", "after-it-closed", "unknown-name", "frozen", "none-configured"],
)
def test_current_window(cfg: WindowsConfig | None, name: str | None, now: datetime, inside: bool,
                        says: str) -> None:
    occurrence, why = mp.current_window(cfg, name, now, "UTC")
    assert (occurrence is not None) == inside
    assert says in why, why
