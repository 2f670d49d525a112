"""The sandbox: `up` starts PostgreSQL and moto with realistic data, `status` sees them,
the config validates, `up` again changes nothing, `down` leaves nothing behind.

One small sandbox (8 MB) serves the module; the down test runs last and checks that
no process, port or directory survives it.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from sandbox import api, cluster, postgres, s3, sampledata
from sandbox.process import free_port, pid_alive, port_open, run, scrub, wait_until
from sandbox.state import ENV_FILE, MARKER_FILE, STATE_FILE, SandboxState
from tasks.config import load_environment
from tasks.errors import ConfigError, PermanentError

REPO = Path(__file__).resolve().parent.parent
FLEET_TABLES = {"depots", "vehicles", "drivers", "trips", "work_orders"}


@pytest.fixture(scope="module")
def base_dir():
    # Not tmp_path: pytest's base dir is 0700, and as root the 'postgres' account must enter the work dir.
    base = Path(tempfile.mkdtemp(prefix="runbook-sandbox-test-"))
    base.chmod(0o711)
    yield base
    for child in base.iterdir():
        if (child / MARKER_FILE).exists():
            api.down(child)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def sandbox(base_dir) -> SandboxState:
    return api.up(base_dir / "work", size_mb=8, environments_dir=base_dir / "environments")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandbox", *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def test_up_starts_everything_and_status_sees_it_healthy(sandbox):
    report = api.status(sandbox.workdir)
    assert report["healthy"], report
    assert set(report["components"]) == {"postgres", "s3", "kubernetes", "webapp"}
    assert report["components"]["postgres"]["address"] == f"127.0.0.1:{sandbox.pg_port}"
    assert report["components"]["s3"]["address"] == sandbox.s3_endpoint
    assert sandbox.pg_password not in repr(report)

    cli = _cli("status", "--dir", str(sandbox.workdir))
    assert cli.returncode == 0, cli.stderr
    assert "healthy" in cli.stdout
    assert "s3-proxy" in cli.stdout and "kube-proxy" in cli.stdout  # what `healthy` counts, it shows
    assert sandbox.pg_password not in cli.stdout + cli.stderr


def test_state_and_secrets_are_private_and_well_formed(sandbox):
    for name in (STATE_FILE, ENV_FILE):
        assert stat.S_IMODE((sandbox.workdir / name).stat().st_mode) == 0o600, name
    assert len(sandbox.pg_password) >= 24 and sandbox.pg_password.isalnum()
    assert sandbox.pg_password not in repr(sandbox)
    assert api.load_state(sandbox.workdir) == sandbox

    env = sandbox.secret_env()
    assert env["RUNBOOK_SANDBOX_PG_DSN"] == (
        f"postgresql://runbook:{sandbox.pg_password}@127.0.0.1:{sandbox.pg_port}/postgres"
    )
    assert set(env) == {"RUNBOOK_SANDBOX_PG_DSN", "RUNBOOK_SANDBOX_S3_ACCESS_KEY", "RUNBOOK_SANDBOX_S3_SECRET_KEY",
                        "RUNBOOK_SANDBOX_HA_PG_A_DSN", "RUNBOOK_SANDBOX_HA_PG_B_DSN", "RUNBOOK_SANDBOX_HA_APP_PASSWORD",
                        "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "RUNBOOK_SANDBOX_AZURE_ADMIN_PASSWORD",
                        "RUNBOOK_SANDBOX_AZURE_DSN"}
    sourced = subprocess.run(
        ["bash", "-c", f"source {sandbox.workdir / ENV_FILE} && env"], capture_output=True, text=True, check=True
    ).stdout
    for name, value in env.items():
        assert f"{name}={value}\n" in sourced
    assert sandbox.backup_dir.is_dir() and sandbox.backup_dir.stat().st_uid == os.geteuid()


def test_password_is_in_no_command_line_and_no_server_log(sandbox):
    for proc in psutil.process_iter(["cmdline"]):
        assert sandbox.pg_password not in " ".join(proc.info["cmdline"] or [])
    log = (sandbox.pg_socket_dir / "postgres.log").read_text()
    assert sandbox.pg_password not in log


def test_fleet_database_has_tables_keys_indexes_and_rows(sandbox):
    with psycopg.connect(sandbox.pg_admin_dsn("fleet")) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert tables == FLEET_TABLES
        fks = {
            r[0]
            for r in conn.execute(
                "SELECT conrelid::regclass || '.' || a.attname FROM pg_constraint c "
                "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] WHERE c.contype = 'f'"
            )
        }
        assert {"trips.vehicle_id", "trips.driver_id", "work_orders.vehicle_id", "vehicles.depot_id"} <= fks
        pkeys = {r[0] for r in conn.execute("SELECT conrelid::regclass::text FROM pg_constraint WHERE contype = 'p' "
                "AND connamespace = 'public'::regnamespace")}
        assert pkeys == FLEET_TABLES
        indexes = {r[0]: r[1] for r in conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")}
        assert "WHERE" in indexes["work_orders_open_vehicle_idx"]  # partial
        assert "lower(email)" in indexes["drivers_email_lower_key"]  # expression
        assert "(vehicle_id, started_at)" in indexes["trips_vehicle_started_idx"]
        assert "UNIQUE" in indexes["vehicles_vin_key"]
        for table in FLEET_TABLES:
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0, table
        orphans = conn.execute(
            "SELECT count(*) FROM trips t LEFT JOIN vehicles v ON v.id = t.vehicle_id WHERE v.id IS NULL"
        ).fetchone()[0]
        assert orphans == 0
        size = conn.execute("SELECT pg_database_size('fleet')").fetchone()[0]
        assert 0.7 * 8 * 2**20 <= size <= 1.3 * 8 * 2**20
        # Text from word lists, not hex or filler: many distinct values.
        distinct, total = conn.execute("SELECT count(DISTINCT notes), count(notes) FROM work_orders").fetchone()
        assert distinct > 0.9 * total


def test_fleet_data_compresses_like_production_text(sandbox):
    """pg_dump -Fc shrinks the table data a few times (2.5x-6x), not 30x like filler would."""
    dump = sandbox.workdir / "fleet.dump"
    run(
        [str(sandbox.pg_bin / "pg_dump"), "-Fc", "-f", str(dump), "fleet"],
        what="pg_dump",
        env=sandbox.pg_env(),
        secrets=sandbox.secrets(),
    )
    with psycopg.connect(sandbox.pg_admin_dsn("fleet")) as conn:
        data = conn.execute(
            "SELECT sum(pg_table_size(c::regclass)) FROM unnest(%s::text[]) AS c", [sorted(FLEET_TABLES)]
        ).fetchone()[0]
    dumped = dump.stat().st_size
    dump.unlink()
    ratio = data / dumped
    assert 2.5 <= ratio <= 6, f"table data {data} bytes, dump {dumped} bytes: {ratio:.1f}x"


def test_pgbench_database_is_initialised(sandbox):
    with psycopg.connect(sandbox.pg_admin_dsn("pgbench")) as conn:
        assert conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()[0] == 100_000
        fks = conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f'").fetchone()[0]
        assert fks >= 4


def test_s3_bucket_takes_objects(sandbox):
    client = s3.client(sandbox.s3_endpoint, sandbox.s3_access_key, sandbox.s3_secret_key)
    client.put_object(Bucket=sandbox.s3_bucket, Key="sandbox/probe.txt", Body=b"hello")
    assert client.get_object(Bucket=sandbox.s3_bucket, Key="sandbox/probe.txt")["Body"].read() == b"hello"
    client.delete_object(Bucket=sandbox.s3_bucket, Key="sandbox/probe.txt")


def test_admin_portal_answers_through_its_ingress_as_the_blue_colour(sandbox):
    url = cluster.services_config(sandbox.webapp_url)["admin"]["health_urls"][0]
    assert wait_until(lambda: httpx.get(url).status_code == 200, timeout=10)
    health = httpx.get(url).json()
    assert (health["ingress"], health["service"], health["versions"]) == (
        "sandbox/admin", "sandbox/admin-blue", {cluster.GOOD_IMAGE: 2})


def test_environment_config_validates_and_its_secrets_connect(sandbox, base_dir, monkeypatch):
    path = sandbox.environment_file
    assert path == base_dir / "environments" / "sandbox.yaml"
    env = load_environment(path)
    assert env.name == "sandbox" and not env.protected and env.backup_concurrency == 2
    fleet, bench = env.database("fleet"), env.database("pgbench")
    assert fleet.storage.url == "s3://runbook-backups/sandbox"
    assert fleet.storage.s3.endpoint_url == sandbox.s3_endpoint and fleet.storage.s3.part_size_mb == 5
    assert fleet.retention.daily == 7 and fleet.retention.weekly == 4 and fleet.retention.monthly == 12
    assert fleet.objectives.rto.total_seconds() == 3600 and fleet.objectives.rpo.total_seconds() == 25 * 3600
    assert len(fleet.restore_test.smoke_queries) >= 3
    assert bench.storage.url == f"file://{sandbox.backup_dir}" and bench.retention.days == 30
    assert sandbox.pg_password not in path.read_text()

    for name, value in sandbox.secret_env().items():
        monkeypatch.setenv(name, value)
    with psycopg.connect(fleet.dsn.resolve(), dbname="fleet") as conn:
        for q in fleet.restore_test.smoke_queries:
            value = conn.execute(q.sql).fetchone()[0]
            assert q.min is None or value >= q.min, q.name
            assert q.equals is None or value == q.equals, q.name

    # Variants for other tests: tweak the dict, write it, load it.
    variant = api.environment_dict(sandbox, name="sandbox-two")
    variant["protected"] = True
    assert variant["name"] == "sandbox-two"
    out = api.write_environment(sandbox, base_dir / "environments" / "sandbox-two.yaml", "sandbox-two")
    assert load_environment(out).name == "sandbox-two"
    out.unlink()


def test_up_again_is_idempotent(sandbox, base_dir):
    again = api.up(sandbox.workdir, size_mb=8, environments_dir=base_dir / "environments")
    assert again == sandbox
    cli = _cli("up", "--dir", str(sandbox.workdir), "--environments-dir", str(base_dir / "environments"))
    assert cli.returncode == 0, cli.stderr
    assert "already running" in cli.stdout
    assert f"source {sandbox.workdir / ENV_FILE}" in cli.stdout
    assert sandbox.pg_password not in cli.stdout + cli.stderr
    assert sandbox.s3_secret_key not in cli.stdout + cli.stderr


def test_bad_arguments_fail_before_anything_starts(base_dir):
    with pytest.raises(ConfigError, match="size_mb 4 is not allowed"):
        api.up(base_dir / "too-small", size_mb=4)
    assert not (base_dir / "too-small").exists()
    not_ours = base_dir / "not-ours"
    not_ours.mkdir()
    (not_ours / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        api.up(not_ours, size_mb=8, environments_dir=base_dir / "environments")
    with pytest.raises(ConfigError, match="not a sandbox work dir"):
        api.down(not_ours)
    assert (not_ours / "precious.txt").read_text() == "keep me"
    cli = _cli("up", "--dir", str(base_dir / "x"), "--size-mb", "0")
    assert cli.returncode == 2 and "size_mb 0 is not allowed" in cli.stderr


def test_failed_up_leaves_nothing_behind(base_dir, monkeypatch):
    started: dict[str, int] = {}
    real_pg_start, real_moto_start = postgres.start, s3.start

    def pg_start(*args, **kwargs):
        started["postgres"] = real_pg_start(*args, **kwargs)
        return started["postgres"]

    def moto_start(*args, **kwargs):
        proc = real_moto_start(*args, **kwargs)
        started["moto"] = proc.pid
        return proc

    def broken_generator(conninfo, size_mb):
        raise RuntimeError(f"generator broke on {conninfo}")

    monkeypatch.setattr(postgres, "start", pg_start)
    monkeypatch.setattr(s3, "start", moto_start)
    monkeypatch.setattr(sampledata, "generate_fleet", broken_generator)
    workdir = base_dir / "failing"
    with pytest.raises(PermanentError, match="loading the sample data") as caught:
        api.up(workdir, size_mb=8, environments_dir=base_dir / "failing-env")
    assert "********" in str(caught.value)  # the DSN's password was scrubbed
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert set(started) == {"postgres", "moto"}
    assert not any(pid_alive(pid) for pid in started.values())
    assert not workdir.exists() and not (base_dir / "failing-env").exists()


def test_up_picks_another_port_when_one_is_taken(base_dir, monkeypatch):
    """free_port's answer can be stale by the time a server binds it; up retries."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = iter([taken, taken])  # moto's first port, then PostgreSQL's first port
        monkeypatch.setattr(api, "free_port", lambda: next(ports, None) or free_port())
        workdir = base_dir / "port-clash"
        state = api.up(workdir, size_mb=8, environments_dir=base_dir / "port-clash-env")
        try:
            assert taken not in (state.pg_port, int(state.s3_endpoint.rsplit(":", 1)[1]))
            assert api.status(workdir)["healthy"]
        finally:
            api.down(workdir)
    assert not workdir.exists()


def test_run_scrubs_secrets_from_errors():
    secret = "s3cretPassw0rdValue"
    with pytest.raises(PermanentError) as caught:
        run(["sh", "-c", 'echo "auth failed for $PW" >&2; exit 3'], what="probe", env={"PW": secret}, secrets=[secret])
    assert secret not in str(caught.value) and "status 3" in str(caught.value)
    assert scrub(f"a {secret} b", [secret, ""]) == "a ******** b"


def test_down_leaves_no_process_port_or_dir(sandbox, base_dir):
    """Runs last: it takes the module's sandbox down."""
    pids = [sandbox.pg_pid, sandbox.moto_pid, sandbox.kube_pid, sandbox.webapp_pid]
    ports = [sandbox.pg_port] + [int(u.rsplit(":", 1)[1]) for u in (sandbox.s3_endpoint, sandbox.kube_url, sandbox.webapp_url)]
    assert all(pid_alive(p) for p in pids)
    actions = api.down(sandbox.workdir)
    assert any("stopped PostgreSQL" in a for a in actions) and any("stopped moto" in a for a in actions)
    assert not any(pid_alive(p) for p in pids)
    assert not any(port_open("127.0.0.1", p) for p in ports)
    assert not sandbox.workdir.exists()
    assert not sandbox.environment_file.exists()  # the sandbox.yaml it wrote went too
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"])
                 if pid_alive(p.pid) and str(sandbox.workdir) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []

    assert api.down(sandbox.workdir) == [f"no sandbox in {sandbox.workdir}: nothing to do"]
    assert api.status(sandbox.workdir)["healthy"] is False
    cli = _cli("status", "--dir", str(sandbox.workdir))
    assert cli.returncode == 1 and "no sandbox" in cli.stdout
    cli = _cli("down", "--dir", str(sandbox.workdir))
    assert cli.returncode == 0
