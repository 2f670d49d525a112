"""The failover decisions (tasks/failover.py), table-driven: who is primary, data at risk,
go or refuse, what a run of probes means, a drill against its objectives."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from tasks import failover
from tasks.failover import NodeView, Probe

T0 = datetime(2026, 12, 2, 2, 10, tzinfo=UTC)
MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 16 * MB
    max_seconds: timedelta = timedelta(seconds=30)


def primary(name: str = "pg-a", lsn: int = 100 * MB, **kw: object) -> NodeView:
    return NodeView(name, T0, reachable=True, in_recovery=False, timeline=1, current_lsn=lsn, read_only=False, **kw)


def standby(name: str = "pg-b", replay: int = 100 * MB, receive: int | None = None, status: str | None = "streaming",
            **kw: object) -> NodeView:
    return NodeView(name, T0, reachable=True, in_recovery=True, timeline=1, receive_lsn=receive or replay,
                    replay_lsn=replay, last_replay_at=T0 - timedelta(seconds=2), receiver_status=status, **kw)


def down(name: str = "pg-a") -> NodeView:
    return NodeView(name, T0, reachable=False, error="connection refused")


@pytest.mark.parametrize(("views", "old", "target", "problem"), [
    # the normal pair: the obvious direction
    ({"pg-a": primary(), "pg-b": standby()}, "pg-a", "pg-b", None),
    # the primary is down: the standby takes over from it
    ({"pg-a": down(), "pg-b": standby()}, "pg-a", "pg-b", None),
    # after a failover the roles are swapped: the direction follows the roles, not the names
    ({"pg-a": standby("pg-a"), "pg-b": primary("pg-b")}, "pg-b", "pg-a", None),
    # two primaries: promoting anything would make it worse; a person must fence one
    ({"pg-a": primary(), "pg-b": primary("pg-b")}, None, None, "split brain"),
    # two standbys: nobody to fail over from (e.g. both fenced)
    ({"pg-a": standby("pg-a"), "pg-b": standby()}, None, None, "both nodes are standbys"),
    # a primary whose standby is down: nothing to promote
    ({"pg-a": primary(), "pg-b": down("pg-b")}, "pg-a", None, "no standby"),
    # nobody answers
    ({"pg-a": down(), "pg-b": down("pg-b")}, None, None, "neither node answers"),
])
def test_identify_roles(views: dict[str, NodeView], old: str | None, target: str | None, problem: str | None) -> None:
    roles = failover.identify(views)
    assert (roles.old_primary, roles.target) == (old, target)
    assert (roles.problem is None) == (problem is None)
    if problem:
        assert problem in roles.problem


@pytest.mark.parametrize(("views", "known", "at_risk", "source"), [
    # a reachable primary: its current LSN against what the standby replayed
    ({"pg-a": primary(lsn=100 * MB), "pg-b": standby(replay=99 * MB)}, None, MB, "current"),
    # caught up: nothing at risk, and zero seconds however old the last replayed commit is
    ({"pg-a": primary(lsn=100 * MB), "pg-b": standby(replay=100 * MB)}, None, 0, "current"),
    # a down primary: the newest of what the standby received and what its sender last reported
    ({"pg-a": down(), "pg-b": standby(replay=90 * MB, receive=95 * MB, sender_end_lsn=97 * MB)}, None, 7 * MB,
     "newest LSN known"),
    # primary_watch knew a newer LSN than the standby heard of: that one counts
    ({"pg-a": down(), "pg-b": standby(replay=90 * MB)}, 92 * MB, 2 * MB, "newest LSN known"),
])
def test_assess_data_at_risk(views: dict[str, NodeView], known: int | None, at_risk: int, source: str) -> None:
    a = failover.assess(failover.identify(views), views, known)
    assert a.bytes_at_risk == at_risk
    assert source in a.primary_lsn_source
    if at_risk == 0:
        assert a.seconds_at_risk == 0


def _assessment(at_risk: int | None, seconds: float | None = 1.0, reachable: bool = False) -> failover.Assessment:
    return failover.Assessment("pg-a", "pg-b", reachable, 100 * MB, "x", None, None, at_risk, seconds, 1, T0, None)


@pytest.mark.parametrize(("a", "planned", "force", "go", "forced", "says"), [
    # within the limits: go
    (_assessment(MB), False, False, True, False, "within the limit"),
    # over the byte limit: refused, and the message says how to override
    (_assessment(20 * MB), False, False, False, False, "force=True"),
    # the same with force: go, recorded as forced, with the reason
    (_assessment(20 * MB), False, True, True, True, "accepting the loss"),
    # over the seconds limit only: refused too
    (_assessment(MB, seconds=45.0), False, False, False, False, "45.0 s"),
    # lag unknown (the standby reports nothing): that is not "zero", it is refused
    (_assessment(None, None), False, False, False, False, "unknown"),
    # planned with the primary reachable: go, the catch-up wait makes it lossless
    (_assessment(20 * MB, reachable=True), True, False, True, False, "final LSN"),
    # planned with the primary down: not a switchover; force does not change that
    (_assessment(0, reachable=False), True, True, False, False, "planned=False"),
])
def test_decide(a: failover.Assessment, planned: bool, force: bool, go: bool, forced: bool, says: str) -> None:
    d = failover.decide(a, Limits(), planned=planned, force=force)
    assert (d.go, d.forced) == (go, forced)
    assert says in d.summary


def _probes(*oks: bool) -> list[Probe]:
    return [Probe(T0 + timedelta(seconds=2 * i), ok, "writable" if ok else "timeout") for i, ok in enumerate(oks)]


@pytest.mark.parametrize(("probes", "standby_view", "action"), [
    # all answered
    (_probes(True, True, True), standby(), "healthy"),
    # one dropped probe, then answers: a blip, never a failover
    (_probes(True, False, True), standby(status=None), "blip"),
    # two failures in a row are fewer than three
    (_probes(True, False, False), standby(status=None), "blip"),
    # three in a row and the standby's receiver lost the primary too: fail over
    (_probes(False, False, False), standby(status="waiting"), "failover"),
    # three in a row but the standby still streams from it: our side of a network problem
    (_probes(False, False, False), standby(status="streaming"), "disagree"),
    # three in a row and no standby to take over
    (_probes(False, False, False), None, "no-standby"),
    # the standby is down as well
    (_probes(False, False, False), down("pg-b"), "no-standby"),
])
def test_watch_verdict(probes: list[Probe], standby_view: NodeView | None, action: str) -> None:
    v = failover.watch_verdict(probes, 3, standby_view)
    assert v.action == action
    if action == "failover":
        assert v.down_since == probes[0].at


@pytest.mark.parametrize(("text", "value"), [
    ("0/0", 0), ("0/3000148", 0x3000148), ("16/B374D848", (0x16 << 32) + 0xB374D848), (None, None)])
def test_lsn_round_trip(text: str | None, value: int | None) -> None:
    assert failover.lsn_int(text) == value
    assert failover.lsn_text(value) == (text if text != "0/0" else "0/0")


@pytest.mark.parametrize(("run", "passed"), [
    # fast and lossless: both pass
    ({"label": "switchover", "rto_seconds": 4.2, "rpo_bytes": 0, "rpo_seconds": 0.0}, [True, True]),
    # slower than the objective
    ({"label": "switchover", "rto_seconds": 4000.0, "rpo_bytes": 0, "rpo_seconds": 0.0}, [False, True]),
    # lost more than the RPO allows
    ({"label": "failover", "rto_seconds": 3.0, "rpo_bytes": 500, "rpo_seconds": 120.0}, [True, False]),
    # an RTO that was never measured does not pass
    ({"label": "failover", "rto_seconds": None, "rpo_bytes": 0, "rpo_seconds": 0.0}, [False, True]),
])
def test_objective_checks(run: dict[str, object], passed: list[bool]) -> None:
    rows = failover.objective_checks([run], timedelta(minutes=30), timedelta(minutes=1))
    assert [ok for _, ok, _ in rows] == passed


def test_standby_conninfo_quotes_and_names_the_passfile_not_a_password() -> None:
    text = failover.standby_conninfo("127.0.0.1", 5433, "replicator", "/var/lib/pg/it's.pgpass", "pg-a")
    assert "passfile='/var/lib/pg/it\\'s.pgpass'" in text
    assert "password" not in text
    assert "application_name='pg-a'" in text
