"""The sandbox's replicated pair `ha` and its Route53 zone: pg-b streams from pg-a, the
database's CNAME points at pg-a, a killed standby comes back, `reset` undoes a failover,
no password leaks, and `down` leaves no process of the pair, whatever state it is in.

Each test ends with `replication.reset`, so the next one starts from the original topology.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from sandbox import api, postgres, replication, route53
from sandbox.process import pid_alive, wait_until
from sandbox.state import ENV_HA_APP_PASSWORD, ENV_HA_PG_A_DSN, ENV_HA_PG_B_DSN, MARKER_FILE, STATE_FILE

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def original_topology(sandbox):
    yield
    replication.reset(sandbox)


def _insert(dsn: str, note: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (note) VALUES (%s)", [note])


def _sees(state, node: str, note: str) -> bool:
    try:
        with psycopg.connect(replication.node_dsn(state, node, replication.DATABASE), connect_timeout=2) as conn:
            return conn.execute("SELECT count(*) FROM orders WHERE note = %s", [note]).fetchone()[0] == 1
    except psycopg.OperationalError:
        return False


def _cname(state) -> list[str]:
    return route53.lookup(state.s3_endpoint, state.s3_access_key, state.s3_secret_key, state.route53_zone_id,
                          replication.DB_RECORD, "CNAME")


def _family(data_dir: Path) -> list[int]:
    """The postmaster of `data_dir` and every process it forked."""
    pid = postgres.postmaster_pid(data_dir)
    assert pid is not None, f"no server runs from {data_dir}"
    return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]


def test_a_row_written_on_pg_a_is_read_on_pg_b_within_seconds(sandbox):
    assert (replication.role(sandbox, "pg-a"), replication.role(sandbox, "pg-b")) == ("primary", "standby")
    note = f"streamed {time.time_ns()}"
    _insert(replication.app_dsn(sandbox, "pg-a"), note)
    assert wait_until(lambda: _sees(sandbox, "pg-b", note), timeout=5, interval=0.05)
    with psycopg.connect(replication.node_dsn(sandbox, "pg-a"), autocommit=True) as conn:
        (name, state, sync), = conn.execute("SELECT application_name, state, sync_state FROM pg_stat_replication")
        assert conn.execute("SHOW wal_log_hints").fetchone()[0] == "on"
        assert conn.execute("SHOW data_checksums").fetchone()[0] == "on"
    assert (name, state, sync) == ("pg-b", "streaming", "async")
    with psycopg.connect(replication.node_dsn(sandbox, "pg-b"), autocommit=True) as conn:
        conninfo = conn.execute("SELECT conninfo FROM pg_stat_wal_receiver").fetchone()[0]
    assert f"passfile={sandbox.ha_passfile}" in conninfo and "password" not in conninfo


def test_the_database_record_is_a_cname_to_pg_a_in_route53(sandbox):
    r53 = route53.client(sandbox.s3_endpoint, sandbox.s3_access_key, sandbox.s3_secret_key)
    sets = r53.list_resource_record_sets(HostedZoneId=sandbox.route53_zone_id)["ResourceRecordSets"]
    records = {(s["Name"], s["Type"]): (s.get("TTL"), [r["Value"] for r in s["ResourceRecords"]]) for s in sets}
    assert records[("db.sandbox.internal.", "CNAME")] == (30, ["pg-a.sandbox.internal"])
    assert records[("pg-a.sandbox.internal.", "A")] == (30, ["127.0.0.1"])
    assert records[("pg-b.sandbox.internal.", "A")] == (30, ["127.0.0.1"])
    assert sandbox.dns_zone == "sandbox.internal." and sandbox.dns_record == "db.sandbox.internal"


def test_a_killed_standby_starts_again_and_streams(sandbox):
    family = _family(Path(sandbox.ha_nodes["pg-b"]["data_dir"]))
    assert replication.kill_node(sandbox, "pg-b") == family[0]
    assert not any(pid_alive(p) for p in family)
    assert replication.role(sandbox, "pg-b") == "down"
    note = f"written while pg-b was down {time.time_ns()}"
    _insert(replication.app_dsn(sandbox, "pg-a"), note)

    replication.start_node(sandbox, "pg-b")
    replication.wait_streaming(sandbox, "pg-b", timeout=10)
    assert replication.role(sandbox, "pg-b") == "standby"
    assert wait_until(lambda: _sees(sandbox, "pg-b", note), timeout=5, interval=0.05)


def test_reset_after_a_manual_promote_brings_pg_a_back_as_primary_with_the_newest_data(sandbox):
    log_b = Path(sandbox.ha_nodes["pg-b"]["log"])
    seen = len(log_b.read_text())
    with psycopg.connect(replication.node_dsn(sandbox, "pg-b"), autocommit=True) as conn:
        assert conn.execute("SELECT pg_promote()").fetchone()[0] is True
    assert "selected new timeline ID" in log_b.read_text()[seen:]
    note = f"written after the failover {time.time_ns()}"
    _insert(replication.app_dsn(sandbox, "pg-b"), note)
    with psycopg.connect(replication.node_dsn(sandbox, "pg-a"), autocommit=True) as conn:  # a fenced old primary
        conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        conn.execute("SELECT pg_reload_conf()")
    route53.upsert(sandbox.s3_endpoint, sandbox.s3_access_key, sandbox.s3_secret_key, sandbox.route53_zone_id,
                   [(replication.DB_RECORD, "CNAME", 30, "pg-b.sandbox.internal")])
    assert not api.status(sandbox.workdir)["replication"]["ha"]["ok"]  # two primaries

    started = time.monotonic()
    replication.reset(sandbox)
    assert time.monotonic() - started < 10

    assert (replication.role(sandbox, "pg-a"), replication.role(sandbox, "pg-b")) == ("primary", "standby")
    assert _cname(sandbox) == ["pg-a.sandbox.internal"]
    assert _sees(sandbox, "pg-a", note)  # nothing written after the failover is lost
    with psycopg.connect(replication.app_dsn(sandbox, "pg-a"), autocommit=True) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone()[0] == "off"
    again = f"written after the reset {time.time_ns()}"
    _insert(replication.app_dsn(sandbox, "pg-a"), again)
    assert wait_until(lambda: _sees(sandbox, "pg-b", again), timeout=5, interval=0.05)
    pieces = api.status(sandbox.workdir)["replication"]
    assert pieces["ha"]["ok"] and pieces["dns"]["ok"], pieces
    assert pieces["ha"]["nodes"]["pg-a"]["replication"]["pg-b"]["state"] == "streaming"


def test_no_password_in_state_repr_logs_config_status_or_command_lines(sandbox):
    passwords = [sandbox.ha_admin_password, sandbox.ha_replicator_password, sandbox.ha_app_password]
    assert all(p and len(p) >= 24 for p in passwords)
    env = sandbox.secret_env()
    assert env[ENV_HA_PG_A_DSN] == (f"postgresql://dr_admin:{sandbox.ha_admin_password}@127.0.0.1:"
                                    f"{sandbox.ha_nodes['pg-a']['port']}/postgres")
    assert ENV_HA_PG_B_DSN in env and env[ENV_HA_APP_PASSWORD] == sandbox.ha_app_password
    # Fields other tests add later (the orchestration's Prefect database password) aside.
    loaded = dataclasses.replace(api.load_state(sandbox.workdir), prefect_db_password=sandbox.prefect_db_password)
    assert loaded == sandbox
    assert stat.S_IMODE(sandbox.ha_passfile.stat().st_mode) == 0o600
    assert sandbox.ha_passfile.stat().st_uid == postgres.postgres_account().pw_uid

    cli = subprocess.run([sys.executable, "-m", "sandbox", "status", "--dir", str(sandbox.workdir)], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    texts = {"state repr": repr(sandbox), "status": repr(api.status(sandbox.workdir)),
             "status cli": cli.stdout + cli.stderr, "sandbox.yaml": sandbox.environment_file.read_text()}
    for node in replication.NODES:
        where = Path(sandbox.ha_nodes[node]["dir"])
        texts[f"{node} log"] = (where / "postgres.log").read_text()
        texts[f"{node} node.conf"] = (where / "node.conf").read_text()
        texts[f"{node} postgresql.auto.conf"] = (where / "data" / "postgresql.auto.conf").read_text()
    texts["command lines"] = "\n".join(" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
    for what, text in texts.items():
        for password in passwords:
            assert password not in text, what


def test_down_stops_both_nodes_whatever_flows_left_them_as(sandbox):
    """A pair of its own in a work dir of its own: pg-b promoted, pg-a's postmaster SIGKILLed
    (its backends left to notice), and no state.json: `down` finds both by their data dirs."""
    base = Path(tempfile.mkdtemp(prefix="runbook-pair-test-"))
    base.chmod(0o711)
    workdir = base / "work"
    workdir.mkdir(mode=0o711)
    (workdir / MARKER_FILE).write_text("test\n")
    try:
        pair = replication.create(workdir, sandbox.pg_bin, admin_password="a" * 24, replicator_password="r" * 24,
                                  app_password="o" * 24)
        a, b = pair.nodes["pg-a"], pair.nodes["pg-b"]
        pids = _family(a.data) + _family(b.data)
        with psycopg.connect(host=str(b.dir), port=b.port, user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute("SELECT pg_promote()")
        os.kill(pids[0], 9)
        assert not (workdir / STATE_FILE).exists()

        actions = api.down(workdir)
        assert any("pg-b of the replicated pair" in a for a in actions), actions
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=5)
        assert not workdir.exists()
    finally:
        if workdir.exists():
            api.down(workdir)
        os.rmdir(base)
