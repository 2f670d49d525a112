"""DR flows on the sandbox's replicated pair (pg-a primary, pg-b streaming), Route53 on moto,
the `orders` app whose health follows the database it points at, and a local webhook.

Faults are real: `kill -9` of the primary's processes, a stopped (SIGSTOP) postmaster for a
dropped probe, replay paused on the standby for lag. Each test starts from the original
topology (`replication.reset`) and leaves it so.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import httpx
import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName

from flows.dr_drill import dr_drill
from flows.dr_failover import dr_failover
from flows.primary_watch import primary_watch
from flows.rebuild_replica import rebuild_replica
from sandbox import replication
from sandbox.process import wait_until
from tasks.config import load_environment
from tasks.errors import ConfigError
from tests.cluster_state import latest_report, put_back_pair

pytestmark = pytest.mark.scenario

# No maintenance window open for days, and a freeze of everything now: what a planned switchover
# must respect and an unplanned failover must not.
CLOSED_AND_FROZEN = {
    "require_for": ["dr-failover"],
    "maintenance": [{"name": "later", "every": "once", "duration": "2h",
                     "start": (datetime.now(UTC) + timedelta(days=3)).isoformat()}],
    "freezes": [{"name": "change freeze", "every": "once", "duration": "1d",
                 "start": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}],
}


@pytest.fixture
def pair(sandbox: Any, webhook: Any) -> Iterator[Any]:
    """The original topology before and after each test."""
    put_back_pair(sandbox)
    try:
        yield sandbox
    finally:
        for node in replication.NODES:  # a test that stopped a postmaster must not leave it stopped
            pid = replication.postgres.postmaster_pid(replication._node(sandbox, node).data)
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
        put_back_pair(sandbox)


report = latest_report


def write_rows(dsn: str, n: int, note: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(n):
            conn.execute("INSERT INTO orders (note) VALUES (%s)", (note,))


def dns_target(sandbox: Any) -> str:
    r53 = boto3.client("route53", endpoint_url=sandbox.s3_endpoint, region_name="us-east-1",
                       aws_access_key_id=sandbox.s3_access_key, aws_secret_access_key=sandbox.s3_secret_key)
    sets = r53.list_resource_record_sets(HostedZoneId=sandbox.route53_zone_id)["ResourceRecordSets"]
    record = next(s for s in sets if s["Name"].rstrip(".") == replication.DB_RECORD and s["Type"] == "CNAME")
    return record["ResourceRecords"][0]["Value"].rstrip(".")


def orders_health() -> httpx.Response:
    return httpx.get(load_environment("sandbox").service("orders").health_urls[0], timeout=5)


def test_unplanned_failover_after_kill_9_promotes_repoints_the_app_updates_dns_and_measures_rpo(
        pair: Any, webhook: Any) -> None:
    write_rows(replication.app_dsn(pair, "pg-a"), 20, "before the crash")
    replication.wait_streaming(pair, "pg-b")
    assert orders_health().status_code == 200
    webhook.clear()
    replication.kill_node(pair, "pg-a")
    deadline = time.monotonic() + 5  # the app's database check is cached for 0.5 s
    while orders_health().status_code != 503:  # the app still points at the dead primary
        assert time.monotonic() < deadline, "the app stayed healthy with its database killed"
        time.sleep(0.1)

    out = dr_failover("sandbox", reason="INC-1: pg-a died (kill -9)")

    assert replication.role(pair, "pg-b") == "primary" and out["new_primary"] == "pg-b"
    assert isinstance(out["rpo_bytes"], int) and out["rto_seconds"] > 0
    health = orders_health()
    assert health.status_code == 200, health.text
    assert str(pair.ha_nodes["pg-b"]["port"]) in json.dumps(health.json())
    assert dns_target(pair) == "pg-b.sandbox.internal"
    with psycopg.connect(replication.app_dsn(pair, "pg-b"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE note = 'before the crash'").fetchone()[0] == 20
    text = report("dr-failover-sandbox")
    assert "RPO bytes" in text and "Timeline" in text and "SUCCEEDED" in text

    # The old primary comes back: fenced by standby.signal, it cannot take a write.
    replication.start_node(pair, "pg-a")
    with psycopg.connect(replication.app_dsn(pair, "pg-a"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO orders (note) VALUES ('split brain?')")
        with pytest.raises(psycopg.Error):  # and it cannot be talked out of it
            conn.execute("SET default_transaction_read_only = off")
            conn.execute("SET transaction_read_only = off")
            conn.execute("INSERT INTO orders (note) VALUES ('split brain?')")

    # The incident channel heard the start, the decision and the end, without a secret.
    bodies = webhook.received()
    texts = [b["text"] for b in bodies]
    assert len(bodies) >= 3 and "INCIDENT" in texts[0] and "RESOLVED" in texts[-1], texts
    dumped = json.dumps(bodies)
    for secret in (pair.ha_admin_password, pair.ha_replicator_password, pair.ha_app_password, webhook.url):
        assert secret not in dumped

    # And the old primary is rebuilt as a standby of the new one.
    rebuilt = rebuild_replica("sandbox")
    assert rebuilt["old_primary"] == "pg-a" and replication.role(pair, "pg-a") == "standby"


def test_a_planned_switchover_under_a_steady_write_load_loses_no_committed_row(pair: Any) -> None:
    committed: list[int] = []
    stop = threading.Event()

    def writer() -> None:  # numbered rows; a row counts once its COMMIT returned
        n = 0
        while not stop.is_set():
            try:
                with psycopg.connect(replication.app_dsn(pair, "pg-a"), autocommit=True, connect_timeout=2) as conn:
                    while not stop.is_set():
                        n += 1
                        conn.execute("INSERT INTO orders (id, note) VALUES (%s, 'load')", (10_000_000 + n,))
                        committed.append(10_000_000 + n)
            except psycopg.Error:
                time.sleep(0.05)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(1.0)
        out = dr_failover("sandbox", reason="planned: host maintenance on pg-a", planned=True)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert out["new_primary"] == "pg-b" and out["rpo_bytes"] == 0
    assert len(committed) > 50, "the load wrote too little to mean anything"
    with psycopg.connect(replication.app_dsn(pair, "pg-b"), autocommit=True) as conn:
        present = {r[0] for r in conn.execute("SELECT id FROM orders WHERE note = 'load'")}
    lost = sorted(set(committed) - present)
    assert lost == [], f"{len(lost)} committed rows lost: {lost[:10]}"


def test_a_failover_over_the_lag_limit_is_refused_and_goes_ahead_with_force(pair: Any, make_environment: Any) -> None:
    def tiny_limit(doc: dict[str, Any]) -> None:
        doc["dr"]["lag"] = {"max_bytes": 1024, "max_seconds": "30s"}
        doc["windows"] = CLOSED_AND_FROZEN  # an unplanned failover goes ahead all the same

    env = make_environment("dr-lag", tiny_limit)
    with psycopg.connect(replication.node_dsn(pair, "pg-b"), autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    write_rows(replication.app_dsn(pair, "pg-a"), 200, "behind")

    refused = dr_failover(env, reason="INC-2: test the lag limit", return_state=True)
    assert refused.is_failed()
    assert "over the limit of 1024" in refused.message and "force=True" in refused.message
    assert replication.role(pair, "pg-a") == "primary" and replication.role(pair, "pg-b") == "standby"
    assert "REFUSED" in report(f"dr-failover-{env}")
    with psycopg.connect(replication.app_dsn(pair, "pg-a"), autocommit=True) as conn:  # untouched: it takes writes
        conn.execute("INSERT INTO orders (note) VALUES ('still the primary')")

    forced = dr_failover(env, reason="INC-2: accept the loss", force=True)
    assert forced["new_primary"] == "pg-b" and replication.role(pair, "pg-b") == "primary"
    assert "go (forced)" in report(f"dr-failover-{env}")


def test_a_planned_switchover_outside_the_maintenance_windows_is_refused_before_anything_changes(
        pair: Any, make_environment: Any) -> None:
    env = make_environment("dr-windows", lambda doc: doc.update(windows=CLOSED_AND_FROZEN))
    state = dr_failover(env, reason="CHG-7: move the primary", planned=True, return_state=True)
    assert state.is_failed() and "dr-failover is frozen: change freeze" in state.message, state.message
    assert "outside every maintenance window; the next is later" in state.message
    assert replication.role(pair, "pg-a") == "primary" and replication.role(pair, "pg-b") == "standby"
    assert "REFUSED" in report(f"dr-failover-{env}")


def test_in_a_protected_environment_a_rejected_approval_stops_the_switchover_before_any_fence(
        pair: Any, make_environment: Any) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    env = make_environment("dr-protected", lambda doc: doc.update(protected=True))
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(dr_failover(
        env, reason="CHG-8: rehearse the approval", planned=True, return_state=True)))
    runner.start()

    def paused() -> Any:
        with get_client(sync_client=True) as c:
            runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
        return next((r for r in runs if r.parameters.get("environment") == env), None)

    holder: list[Any] = []
    wait_until(lambda: bool(holder.append(paused()) or holder[-1]), timeout=60)
    assert "pg-a" in report(f"dr-failover-{env}")  # the assessment is in the artifact before the question
    resume_flow_run(holder[-1].id, run_input={"approve": False, "approver": "dana", "reason": "not today"})
    runner.join(timeout=60)
    assert outcome and outcome[0].is_failed(), outcome
    assert replication.role(pair, "pg-a") == "primary" and replication.role(pair, "pg-b") == "standby"
    with psycopg.connect(replication.app_dsn(pair, "pg-a"), autocommit=True) as conn:  # never fenced
        conn.execute("INSERT INTO orders (note) VALUES ('approval rejected')")


def test_bad_input_fails_before_anything_changes(pair: Any, make_environment: Any) -> None:
    with pytest.raises(ConfigError, match="reason '' must be a sentence"):
        dr_failover("sandbox", reason="")
    env = make_environment("dr-no-drills", lambda doc: doc.update(drills_allowed=False))
    state = dr_drill(env, return_state=True)
    assert state.is_failed() and "not marked drills_allowed" in state.message
    assert replication.role(pair, "pg-a") == "primary" and replication.role(pair, "pg-b") == "standby"


def test_a_full_drill_with_failback_ends_with_the_original_topology_and_a_report(pair: Any) -> None:
    out = dr_drill("sandbox")
    assert [r["label"] for r in out["runs"]] == ["switchover", "failback"]
    assert [(r["from"], r["to"]) for r in out["runs"]] == [("pg-a", "pg-b"), ("pg-b", "pg-a")]
    assert all(r["rpo_bytes"] == 0 for r in out["runs"])
    assert replication.role(pair, "pg-a") == "primary" and replication.role(pair, "pg-b") == "standby"
    replication.wait_streaming(pair, "pg-b")
    assert dns_target(pair) == "pg-a.sandbox.internal" and orders_health().status_code == 200
    text = report("dr-drill-sandbox")
    assert "PASSED" in text and "RTO within objective" in text and "original topology" in text


def _failovers() -> int:
    with get_client(sync_client=True) as c:
        return len(c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["dr-failover"]))))


def test_primary_watch_does_not_fail_over_for_a_single_dropped_probe(pair: Any) -> None:
    before = _failovers()
    pid = replication.postgres.postmaster_pid(replication._node(pair, "pg-a").data)
    # New sessions hang for 4.5 s: the watch's first look (2 s timeout) and its first probe
    # (2 s) fail; the probes 2 s later answer.
    os.kill(pid, signal.SIGSTOP)
    timer = threading.Timer(4.5, os.kill, (pid, signal.SIGCONT))
    timer.start()
    try:
        out = primary_watch("sandbox")
    finally:
        timer.cancel()
        os.kill(pid, signal.SIGCONT)
    assert out["verdict"] == "blip" and out["failover"] is None
    assert _failovers() == before and replication.role(pair, "pg-a") == "primary"


def test_primary_watch_starts_a_failover_after_kill_9_of_the_primary(pair: Any) -> None:
    replication.kill_node(pair, "pg-a")
    out = primary_watch("sandbox")
    assert out["verdict"] == "failover" and out["failover"]["new_primary"] == "pg-b"
    assert replication.role(pair, "pg-b") == "primary"
    text = report("dr-failover-sandbox")
    assert "primary_watch: pg-a down since" in text
