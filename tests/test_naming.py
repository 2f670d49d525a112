"""Names of what runbooks create and of their runs: pure, one row per case and why it matters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tasks.naming import (
    RUNBOOKS,
    artifact_key,
    migration_job_name,
    restore_names,
    run_name,
    run_tags,
    scratch_name,
)

AT = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


@pytest.mark.parametrize(("dbname", "restored", "kept"), [
    ("fleet", "fleet_restore_20260304050607", "fleet_pre_restore_20260304050607"),
    # 63 bytes is PostgreSQL's limit: it would silently cut the stamp off a longer name
    ("x" * 63, "x" * 36 + "_restore_20260304050607", "x" * 36 + "_pre_restore_20260304050607"),
    ("Fleet_2", "Fleet_2_restore_20260304050607", "Fleet_2_pre_restore_20260304050607"),  # case is kept
], ids=["plain", "longest-name-is-shortened-not-the-stamp", "mixed-case"])
def test_restore_names(dbname: str, restored: str, kept: str) -> None:
    names = restore_names(dbname, AT)
    assert (names.live, names.restored, names.kept) == (dbname, restored, kept)
    assert len(names.kept.encode()) <= 63


def test_restore_names_use_utc() -> None:
    from zoneinfo import ZoneInfo

    assert restore_names("db", AT.astimezone(ZoneInfo("Asia/Kolkata"))) == restore_names("db", AT)


@pytest.mark.parametrize(("dbname", "run_id", "expected"), [
    ("fleet", "0b7e5c1a-3f0e-4c3e", "rt_fleet_20260304050607_0b7e5c1a"),
    # no run (a direct call in a script): still unique by time, and says so
    ("fleet", "", "rt_fleet_20260304050607_manual"),
    # PostgreSQL folds unquoted names to lower case; a mixed-case scratch name would need quoting everywhere
    ("Fleet_2", "ABC", "rt_fleet_2_20260304050607_abc"),
    # 30 bytes of the name at most: the stamp and run id must survive the 63-byte limit
    ("y" * 63, "r1", "rt_" + "y" * 30 + "_20260304050607_r1"),
], ids=["plain", "no-run", "lower-case", "long-name"])
def test_scratch_names_are_unique_and_short(dbname: str, run_id: str, expected: str) -> None:
    name = scratch_name(dbname, AT, run_id)
    assert name == expected and len(name.encode()) <= 63


@pytest.mark.parametrize(("parts", "key"), [
    (("deploy", "sandbox", "api"), "deploy-sandbox-api"),
    # artifact keys allow only [a-z0-9-]: an underscore in a database name would make Prefect refuse the artifact
    (("backup", "prod", "united_cars"), "backup-prod-united-cars"),
    (("restore", "", "Fleet"), "restore-fleet"),  # an empty part leaves no double dash
], ids=["plain", "underscore", "empty-part"])
def test_artifact_keys_are_what_prefect_accepts(parts: tuple[str, ...], key: str) -> None:
    assert artifact_key(*parts) == key


def test_a_migration_job_name_is_a_kubernetes_name_unique_per_run() -> None:
    assert migration_job_name("united_cars", "0b7e5c1a-3f0e") == "migrate-united-cars-0b7e5c1a"
    assert len(migration_job_name("d" * 80, "run")) <= 63


@pytest.mark.parametrize(("runbook", "params", "name"), [
    ("deploy", {"environment": "sandbox", "service": "api", "image": "sandbox/app:v2", "strategy": "from config",
                "migrate": "none"}, "deploy api sandbox/app:v2 to sandbox"),
    # a choice away from its default is what tells two deploys of one image apart
    ("deploy", {"environment": "prod", "service": "web", "image": "r/app:v3", "strategy": "blue-green",
                "migrate": "before"}, "deploy web r/app:v3 to prod (blue-green), migrate before"),
    ("backup-all", {"environment": "sandbox"}, "backup-all in sandbox"),
    ("backup-database", {"environment": "sandbox", "database": "fleet"}, "backup fleet in sandbox"),
    ("restore-test", {"environment": "sandbox", "database": "fleet", "backup_id": None},
     "restore-test fleet in sandbox"),
    ("restore-database", {"environment": "prod", "database": "fleet", "backup_id": "20260101T020000Z-a1b2c3",
                          "mode": "swap"}, "restore fleet in prod from 20260101T020000Z-a1b2c3 (swap)"),
    ("restore-database", {"environment": "prod", "database": "fleet", "backup_id": None, "mode": "new"},
     "restore fleet in prod from the newest backup (new)"),
    ("migrate-database", {"environment": "sandbox", "database": "fleet", "target_version": 2, "dry_run": True,
                          "image": None}, "migrate fleet in sandbox to V2 (dry run)"),
    ("rollback", {"environment": "prod", "service": "api", "to_revision": None, "with_database": None},
     "rollback api in prod"),
    ("rollback", {"environment": "prod", "service": "api", "to_revision": 4, "with_database": "20260101T020000Z-a1b2c3"},
     "rollback api in prod to revision 4 with database 20260101T020000Z-a1b2c3"),
    ("scale", {"environment": "sandbox", "service": "api", "replicas": 5}, "scale api to 5 in sandbox"),
    ("restart", {"environment": "sandbox", "service": "api"}, "restart api in sandbox"),
    ("autoscale", {"environment": "sandbox", "service": "api", "min": 3, "max": 10, "cpu_percent": 70},
     "autoscale api 3-10 at 70% cpu in sandbox"),
    # a call Prefect is about to refuse for a missing parameter must still get a name, not crash the run
    ("scale", {"environment": "sandbox"}, "scale ? to ? in sandbox"),
], ids=lambda v: v if isinstance(v, str) and " " not in v else None)
def test_run_names_come_from_the_parameters(runbook: str, params: dict[str, Any], name: str) -> None:
    assert run_name(runbook, params) == name


def test_every_runbook_has_a_run_name() -> None:
    from deployments.serve import FLOWS

    assert {f.name for f in FLOWS} == set(RUNBOOKS)


def test_runs_are_tagged_with_their_runbook_and_environment() -> None:
    assert run_tags("deploy", {"environment": "prod", "service": "api"}) == ["deploy", "prod", "runbook"]
