"""Decisions for Azure flexible servers: which server a promotion takes, how, restore names and
points in time, and Azure's patching window as a freeze. Pure: no Azure here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks import windows
from tasks.azure_plan import (
    PatchWindow,
    backup_name,
    check_point_in_time,
    identify,
    patch_freeze,
    promotion,
    restore_name,
    restore_test_name,
)
from tasks.errors import ConfigError, PolicyRefused

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)  # a Wednesday


# server role, replica role, replica's source, server's source -> primary, target, problem (a piece of it)
IDENTIFY = [
    ("Primary", "AsyncReplica", "db", None, "db", "db-r", None,
     "the normal pair: the replica is promoted"),
    ("Primary", "GeoAsyncReplica", "db", None, "db", "db-r", None,
     "a cross-region replica is a replica too"),
    ("AsyncReplica", "Primary", None, "db-r", "db-r", "db", None,
     "after a switchover the configured server is the replica: promoting it is the failback"),
    ("Primary", "Primary", None, None, "db-r", "db", "nothing to promote",
     "promoted standalone already: a re-run must not promote anything"),
    ("Primary", "None", None, None, "db-r", "db", "nothing to promote",
     "a standalone server reports role None"),
    ("Primary", None, None, None, "db", "db-r", "does not exist",
     "a deleted replica is named, not promoted"),
    (None, None, None, None, "db", "db-r", "neither",
     "a wrong resource group finds neither server"),
    ("Primary", "AsyncReplica", "other", None, "db", "db-r", "replicates from other",
     "a replica of another server is never promoted in place of this one"),
    (None, "AsyncReplica", "db", None, "db", "db-r", None,
     "the primary is gone (the unplanned case): its replica is still promoted"),
]


@pytest.mark.parametrize("server_role,replica_role,replica_source,server_source,primary,target,problem,why",
                         IDENTIFY, ids=[row[-1] for row in IDENTIFY])
def test_identify(server_role, replica_role, replica_source, server_source, primary, target, problem, why):
    roles = identify("db", "db-r", server_role, replica_role, replica_source, server_source)
    assert (roles.primary, roles.target) == (primary, target)
    if problem is None:
        assert roles.problem is None
    else:
        assert problem in (roles.problem or "")


@pytest.mark.parametrize("planned,endpoint,mode,option", [
    (True, "db-ve", "Switchover", "Planned"),  # roles swap, the endpoint follows, nothing lost
    (False, "db-ve", "Switchover", "Forced"),  # the primary is gone: promote what the replica has
    (True, None, "Standalone", "Planned"),  # no endpoint to follow: the replica leaves replication
    (False, None, "Standalone", "Forced"),
])
def test_promotion(planned, endpoint, mode, option):
    p = promotion(planned, endpoint)
    assert (p.mode, p.option) == (mode, option)


def test_restore_name_is_the_same_for_the_same_request_and_fits_azure():
    at = datetime(2025, 11, 24, 10, 0, 30, tzinfo=UTC)
    assert restore_name("fleet-postgres-server", at, None) == "fleet-postgres-server-202511241000"
    assert restore_name("fleet-postgres-server", at, None) == restore_name("fleet-postgres-server", at, None)
    assert restore_name("x", at, "my-restore") == "my-restore"
    long = restore_name("a" * 63, at, None)
    assert len(long) <= 63 and long.endswith("-202511241000")


def test_restore_test_and_backup_names_come_from_the_run():
    run = "0f8a5c2e-1111-2222-3333-444455556666"
    assert restore_test_name("fleet-pg", run) == "fleet-pg-rt-0f8a5c2e"
    assert len(restore_test_name("b" * 63, run)) <= 63
    assert backup_name(run) == "runbook-0f8a5c2e1111"


@pytest.mark.parametrize("at,earliest,error,why", [
    (NOW - timedelta(hours=1), NOW - timedelta(days=7), None, "inside the retention: fine"),
    (NOW, None, None, "now is a restore point"),
    (NOW + timedelta(minutes=1), None, ConfigError, "the future is bad input"),
    (NOW - timedelta(days=8), NOW - timedelta(days=7), PolicyRefused, "Azure no longer has the backups"),
    (datetime(2026, 12, 2, 10, 0), None, ConfigError, "a naive time is ambiguous: UTC must be said"),
])
def test_check_point_in_time(at, earliest, error, why):
    if error is None:
        assert check_point_in_time(at, earliest, NOW) == at
    else:
        with pytest.raises(error):
            check_point_in_time(at, earliest, NOW)


def test_a_custom_patch_window_becomes_a_freeze_of_every_change():
    freeze = patch_freeze("fleet-pg", PatchWindow(True, 0, 2, 30), timedelta(hours=1))
    assert freeze is not None and freeze.days == ["sun"] and freeze.at == "02:30" and freeze.timezone == "UTC"
    assert freeze.applies_to == []  # every changing runbook
    sunday = datetime(2026, 12, 6, 2, 45, tzinfo=UTC)
    cfg = windows.WindowsConfig(freezes=[freeze])
    assert not windows.decide(cfg, "deploy", sunday, "UTC").allowed
    assert windows.decide(cfg, "deploy", sunday + timedelta(hours=1), "UTC").allowed
    assert not windows.decide(cfg, "maintenance-window", sunday, "UTC").allowed


def test_a_system_managed_or_missing_window_is_no_freeze_and_a_bad_one_is_named():
    assert patch_freeze("fleet-pg", PatchWindow(False, None, None, None), timedelta(hours=1)) is None
    assert patch_freeze("fleet-pg", None, timedelta(hours=1)) is None
    with pytest.raises(ConfigError, match="dayOfWeek 9"):
        patch_freeze("fleet-pg", PatchWindow(True, 9, 2, 0), timedelta(hours=1))
    assert "sat 23:00 UTC" == PatchWindow(True, 6, 23, 0).describe()
