"""Decisions for Azure flexible servers, with no I/O: restore names and points in time, how a
replica is promoted, and the server's own patching window as a freeze of the calendar."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tasks import windows
from tasks.errors import ConfigError, PolicyRefused

# Azure's dayOfWeek: 0 is Sunday.
AZURE_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MAX_NAME = 63
PROMOTE_MODES = ("Standalone", "Switchover")


@dataclass(frozen=True)
class PatchWindow:
    """A server's `maintenance_window` property, as Azure reports it (times in UTC)."""

    custom: bool
    day_of_week: int | None
    start_hour: int | None
    start_minute: int | None

    def describe(self) -> str:
        if not self.custom:
            return "system-managed (Azure picks the time and announces it 5 days ahead)"
        return f"{AZURE_DAYS[self.day_of_week or 0]} {self.start_hour or 0:02d}:{self.start_minute or 0:02d} UTC"


def patch_freeze(server: str, window: PatchWindow | None, duration: timedelta) -> windows.Window | None:
    """Azure's patching of `server` as a freeze of every changing runbook, so that nothing is
    planned on top of it. A system-managed window has no fixed time: None (the report says so)."""
    if window is None or not window.custom:
        return None
    day, hour, minute = window.day_of_week, window.start_hour, window.start_minute
    if day is None or not 0 <= day <= 6 or hour is None or not 0 <= hour <= 23 or not 0 <= (minute or 0) <= 59:
        raise ConfigError(f"server {server}: Azure reported a maintenance window that is not a day 0-6 and a "
                          f"time: dayOfWeek {day}, startHour {hour}, startMinute {minute}")
    return windows.Window(name=f"azure-patching-{server}", every="week", days=[AZURE_DAYS[day]],
                          at=f"{hour:02d}:{minute or 0:02d}", duration=duration, timezone="UTC")


def restore_name(server: str, point_in_time: datetime, given: str | None) -> str:
    """The new server's name: the operator's, or `<server>-<yyyymmddhhmm>` of the point in time,
    so that asking twice for the same restore names the same server (and finds it)."""
    if given:
        return given
    suffix = "-" + point_in_time.astimezone(UTC).strftime("%Y%m%d%H%M")
    return server[: MAX_NAME - len(suffix)].rstrip("-") + suffix


def backup_name(run_id: str) -> str:
    """An on-demand backup's name, from the run that takes it: a new attempt finds it again."""
    return "runbook-" + re.sub(r"[^a-z0-9]", "", run_id.lower())[:12]


def restore_test_name(server: str, run_id: str) -> str:
    """A restore test's throwaway server: one per flow run, found again by a resumed attempt."""
    suffix = "-rt-" + re.sub(r"[^a-z0-9]", "", run_id.lower())[:8]
    return server[: MAX_NAME - len(suffix)].rstrip("-") + suffix


def check_point_in_time(point_in_time: datetime, earliest: datetime | None, now: datetime) -> datetime:
    """A restore point Azure can serve: aware, not in the future, not before the earliest restore point."""
    if point_in_time.tzinfo is None:
        raise ConfigError(f"point_in_time {point_in_time.isoformat()} has no timezone; give it in UTC, like "
                          "2026-11-24T10:00:00Z")
    if point_in_time > now:
        raise ConfigError(f"point_in_time {point_in_time.isoformat()} is in the future (now "
                          f"{now.isoformat(timespec='seconds')})")
    if earliest is not None and point_in_time < earliest:
        raise PolicyRefused(f"point_in_time {point_in_time.isoformat()} is before the earliest restore point "
                            f"{earliest.isoformat()}: Azure no longer has the backups for it")
    return point_in_time


@dataclass(frozen=True)
class Promotion:
    mode: str  # Standalone | Switchover
    option: str  # Planned | Forced
    why: str


def promotion(planned: bool, virtual_endpoint: str | None) -> Promotion:
    """How the replica is promoted. Planned waits until the replica has everything (no data lost);
    Forced promotes what it has (the primary is gone). With a virtual endpoint, a switchover:
    Azure swaps the roles and moves the endpoint; without one, the replica becomes standalone."""
    option = "Planned" if planned else "Forced"
    if virtual_endpoint:
        return Promotion("Switchover", option, f"switchover through virtual endpoint {virtual_endpoint}")
    return Promotion("Standalone", option, "standalone: the replica leaves replication and takes writes")


@dataclass(frozen=True)
class PairRoles:
    primary: str
    target: str  # the replica to promote
    problem: str | None


def _is_replica(role: str | None) -> bool:
    return (role or "").endswith("AsyncReplica")  # AsyncReplica, GeoAsyncReplica


def identify(server: str, replica: str, server_role: str | None, replica_role: str | None,
             replica_source: str | None, server_source: str | None) -> PairRoles:
    """Which of the pair is the primary now and which replica a promotion takes: the configured
    replica, or after a switchover the configured server (a failback). Roles are Azure's:
    Primary, AsyncReplica (or GeoAsyncReplica), None."""
    if server_role is None and replica_role is None:
        return PairRoles(server, replica, f"neither {server} nor {replica} exists")
    if replica_role is None:
        return PairRoles(server, replica, f"replica {replica} does not exist")
    if _is_replica(replica_role):
        if replica_source not in (None, server):
            return PairRoles(server, replica, f"{replica} replicates from {replica_source}, not {server}")
        return PairRoles(server, replica, None)
    if _is_replica(server_role):
        if server_source not in (None, replica):
            return PairRoles(replica, server, f"{server} replicates from {server_source}, not {replica}")
        return PairRoles(replica, server, None)  # after a switchover: promoting it is the failback
    return PairRoles(replica, server, f"neither server is a replica now ({server}: {server_role}, {replica}: "
                                      f"{replica_role}): promoted already, nothing to promote")
