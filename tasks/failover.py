"""Failover decisions, pure: who is primary, how much data is at risk, whether to go ahead,
what a run of probes means, and the measured RTO and RPO.

Values in, a verdict with its reason out; no I/O and no clock (times are arguments).
The facts come from `tasks/replication.py`, which reads them from the two servers.

LSNs are integers here (bytes into the WAL stream): `lsn_int("0/3000148")`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, Protocol

Role = Literal["primary", "standby", "down"]


def lsn_int(lsn: str | None) -> int | None:
    """'16/B374D848' -> its byte position; None stays None."""
    if lsn is None:
        return None
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def lsn_text(value: int | None) -> str | None:
    if value is None:
        return None
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class NodeView:
    """What one look at a server saw. A down node has only `name`, `seen_at` and `error`."""

    name: str
    seen_at: datetime
    reachable: bool
    in_recovery: bool | None = None
    timeline: int | None = None
    current_lsn: int | None = None  # a primary's pg_current_wal_lsn()
    receive_lsn: int | None = None  # a standby's pg_last_wal_receive_lsn()
    replay_lsn: int | None = None  # a standby's pg_last_wal_replay_lsn()
    last_replay_at: datetime | None = None  # a standby's pg_last_xact_replay_timestamp()
    receiver_status: str | None = None  # a standby's pg_stat_wal_receiver.status: streaming, ...
    sender_seen_at: datetime | None = None  # a standby's last message from its primary
    sender_end_lsn: int | None = None  # the primary's WAL end, as its last message reported it
    read_only: bool | None = None  # default_transaction_read_only
    error: str | None = None

    @property
    def role(self) -> Role:
        if not self.reachable:
            return "down"
        return "standby" if self.in_recovery else "primary"


@dataclass(frozen=True)
class Roles:
    """Which node fails over to which; `problem` says why there is no such pair."""

    old_primary: str | None
    target: str | None
    problem: str | None = None


def identify(views: Mapping[str, NodeView], dns_target: str | None = None) -> Roles:
    """The primary and the standby that takes over from it.

    One primary and one standby: the obvious pair. A standby and a down node: the down node
    was the primary (two standbys or two primaries need a person). `dns_target` (the node the
    database's record points to) settles a standby beside a down node only when it agrees.
    """
    roles = {name: v.role for name, v in views.items()}
    primaries = [n for n, r in roles.items() if r == "primary"]
    standbys = [n for n, r in roles.items() if r == "standby"]
    down = [n for n, r in roles.items() if r == "down"]
    if len(primaries) == 2:
        return Roles(None, None, "both nodes accept writes (split brain): fence one by hand before anything else")
    if len(primaries) == 1 and len(standbys) == 1:
        return Roles(primaries[0], standbys[0])
    if len(primaries) == 1:
        return Roles(primaries[0], None, f"there is no standby to take over: {down[0]} is down "
                                         f"({views[down[0]].error or 'no answer'}); run rebuild_replica")
    if len(standbys) == 1 and len(down) == 1:
        if dns_target is not None and dns_target == standbys[0]:
            return Roles(None, None, f"the database record points to {standbys[0]}, which is a standby, and "
                                     f"{down[0]} is down: the topology is not the one a failover expects")
        return Roles(down[0], standbys[0])
    if len(standbys) == 2:
        return Roles(None, None, "both nodes are standbys: there is no primary to fail over from")
    return Roles(None, None, "neither node answers: there is nothing to promote")


@dataclass(frozen=True)
class Assessment:
    """Data at risk, before anything changes: the first thing a failover records."""

    old_primary: str
    target: str
    primary_reachable: bool
    primary_lsn: int | None  # the primary's current LSN, or the newest one known of it
    primary_lsn_source: str
    replay_lsn: int | None
    receive_lsn: int | None
    bytes_at_risk: int | None
    seconds_at_risk: float | None
    timeline: int | None  # the target's timeline before promotion
    assessed_at: datetime
    primary_seen_at: datetime | None  # when the primary last answered (the standby's last message, if down)


def assess(roles: Roles, views: Mapping[str, NodeView], last_known_lsn: int | None = None) -> Assessment:
    """How far the target is behind the primary. A reachable primary's current LSN is the
    reference; for a down one, the newest of what its standby last heard of it and
    `last_known_lsn` (from primary_watch's probes)."""
    if roles.old_primary is None or roles.target is None:
        raise ValueError(f"no failover pair to assess: {roles.problem}")
    primary, target = views[roles.old_primary], views[roles.target]
    if primary.reachable and primary.current_lsn is not None:
        ref, source, seen = primary.current_lsn, "the primary's current LSN", primary.seen_at
    else:
        known = [x for x in (target.sender_end_lsn, target.receive_lsn, last_known_lsn) if x is not None]
        ref = max(known) if known else None
        source = "the newest LSN known of the primary (it is down)"
        seen = target.sender_seen_at
    replayed = target.replay_lsn
    at_risk = None if ref is None or replayed is None else max(ref - replayed, 0)
    seconds: float | None
    if at_risk == 0:
        seconds = 0.0
    elif at_risk is None or target.last_replay_at is None:
        seconds = None
    else:
        reference_time = primary.seen_at if primary.reachable else (seen or target.seen_at)
        seconds = max((reference_time - target.last_replay_at).total_seconds(), 0.0)
    return Assessment(
        old_primary=roles.old_primary, target=roles.target, primary_reachable=primary.reachable,
        primary_lsn=ref, primary_lsn_source=source, replay_lsn=replayed, receive_lsn=target.receive_lsn,
        bytes_at_risk=at_risk, seconds_at_risk=seconds, timeline=target.timeline, assessed_at=target.seen_at,
        primary_seen_at=seen,
    )


@dataclass(frozen=True)
class Decision:
    go: bool
    forced: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        verdict = "go (forced)" if self.forced else ("go" if self.go else "refused")
        return f"{verdict}: {'; '.join(self.reasons)}" if self.reasons else verdict


class Limits(Protocol):
    @property
    def max_bytes(self) -> int: ...

    @property
    def max_seconds(self) -> timedelta: ...


def decide(a: Assessment, limits: Limits, *, planned: bool, force: bool) -> Decision:
    """Go, or refuse with the reason. Lag over a limit (or unknown) is overridden by force;
    a planned switchover of a down primary is not: that is an unplanned failover."""
    max_bytes, max_seconds = limits.max_bytes, limits.max_seconds
    if planned and not a.primary_reachable:
        return Decision(False, False, [f"a planned switchover needs the primary {a.old_primary} reachable; it is "
                                       "down, so run an unplanned failover (planned=False)"])
    if planned:
        return Decision(True, False, ["planned: the standby replays the primary's final LSN before promotion, so "
                                      "nothing is lost"])
    over: list[str] = []
    if a.bytes_at_risk is None:
        over.append("the standby's lag is unknown")
    elif a.bytes_at_risk > max_bytes:
        over.append(f"{a.bytes_at_risk} bytes of WAL at risk, over the limit of {max_bytes}")
    if a.seconds_at_risk is not None and a.seconds_at_risk > max_seconds.total_seconds():
        over.append(f"{a.seconds_at_risk:.1f} s of transactions at risk, over the limit of "
                    f"{max_seconds.total_seconds():g} s")
    if not over:
        within = f"{a.bytes_at_risk} bytes at risk, within the limit of {max_bytes}"
        return Decision(True, False, [within])
    if force:
        return Decision(True, True, [*over, "force=True: going ahead, accepting the loss"])
    return Decision(False, False, [*over, "pass force=True to fail over anyway"])


def rpo_bytes(primary_lsn: int | None, promoted_at_lsn: int | None) -> int | None:
    """WAL the promoted standby never replayed: data lost, in bytes."""
    if primary_lsn is None or promoted_at_lsn is None:
        return None
    return max(primary_lsn - promoted_at_lsn, 0)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


# --- primary_watch --------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    at: datetime
    ok: bool
    detail: str  # "writable", "read-only", or the error


@dataclass(frozen=True)
class WatchVerdict:
    action: Literal["healthy", "blip", "failover", "disagree", "no-standby"]
    reason: str
    down_since: datetime | None = None
    failed_in_a_row: int = 0


def trailing_failures(probes: Sequence[Probe]) -> list[Probe]:
    run: list[Probe] = []
    for p in reversed(probes):
        if p.ok:
            break
        run.append(p)
    return list(reversed(run))


def watch_verdict(probes: Sequence[Probe], needed: int, standby: NodeView | None) -> WatchVerdict:
    """`needed` failed probes in a row, confirmed from the standby's side (its WAL receiver
    no longer streams), start a failover. Anything less is a blip or a disagreement."""
    failed = trailing_failures(probes)
    if not probes or not failed:
        blips = sum(1 for p in probes if not p.ok)
        if blips:
            return WatchVerdict("blip", f"{blips} failed probe(s) of {len(probes)}, then it answered again")
        return WatchVerdict("healthy", f"{len(probes)} probe(s), all answered")
    since = failed[0].at
    if len(failed) < needed:
        return WatchVerdict("blip", f"{len(failed)} failed probe(s) in a row, fewer than {needed}", since, len(failed))
    if standby is None or not standby.reachable or not standby.in_recovery:
        return WatchVerdict("no-standby", f"{len(failed)} failed probes in a row, but there is no standby to "
                                          "take over", since, len(failed))
    if standby.receiver_status == "streaming":
        return WatchVerdict("disagree", f"{len(failed)} failed probes in a row, but the standby still streams "
                                        "from the primary: a network problem on our side, not a failover",
                            since, len(failed))
    return WatchVerdict("failover", f"{len(failed)} failed probes in a row since {since:%H:%M:%S} UTC "
                                    f"({failed[-1].detail}); the standby's WAL receiver is "
                                    f"{standby.receiver_status or 'not running'}", since, len(failed))


def standby_conninfo(host: str, port: int, user: str, passfile: str, application_name: str) -> str:
    """primary_conninfo for a standby of host:port; the password stays in the passfile."""
    def quote(v: str) -> str:
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"

    parts = {"host": host, "port": str(port), "user": user, "passfile": passfile,
             "application_name": application_name}
    return " ".join(f"{k}={quote(v)}" for k, v in parts.items())


def objective_checks(runs: Sequence[Mapping[str, object]], rto: timedelta, rpo: timedelta) -> list[tuple[str, bool, str]]:
    """A drill's verdict: each switchover's measured RTO and RPO against the objectives.
    Returns (check name, passed, figures) rows."""
    rows = []
    for run in runs:
        label = str(run.get("label"))
        measured = run.get("rto_seconds")
        ok = isinstance(measured, int | float) and measured <= rto.total_seconds()
        rows.append((f"{label}: RTO within objective", ok, f"{measured} s, objective {rto.total_seconds():g} s"))
        lost_b, lost_s = run.get("rpo_bytes"), run.get("rpo_seconds")
        ok = lost_b == 0 or (isinstance(lost_s, int | float) and lost_s <= rpo.total_seconds())
        rows.append((f"{label}: RPO within objective", ok,
                     f"{lost_b} bytes, {lost_s} s lost, objective {rpo.total_seconds():g} s"))
    return rows
