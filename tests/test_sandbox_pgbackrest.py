"""The sandbox's continuous WAL archiving: pgBackRest into S3 on moto over TLS, and a posix repo.

Most tests use the session's sandbox. The last one takes a small sandbox of its own, since it
backs up, restores a scratch instance into the restores dir, leaves it running and checks
that `down` stops it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import ssl
import stat
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import psutil
import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import SSLError

from sandbox import api, pgbackrest, postgres, tls
from sandbox.process import as_postgres, free_port, pid_alive, postgres_account, run, wait_until
from sandbox.state import MARKER_FILE

MiB = 2**20


def _tls_client(sandbox, **config):
    return boto3.client(
        "s3", endpoint_url=sandbox.tls_s3_url, region_name=sandbox.s3_region,
        aws_access_key_id=sandbox.s3_access_key, aws_secret_access_key=sandbox.s3_secret_key,
        verify=str(sandbox.tls_ca_file),
        config=Config(proxies={}, retries={"max_attempts": 1}, **config),
    )


def _info(state, *args: str) -> dict:
    out = run(pgbackrest.command(state.pgbackrest_config, "info", "--output=json", *args), what="pgbackrest info",
              secrets=state.secrets()).stdout
    return next(s for s in json.loads(out) if s["name"] == pgbackrest.STANZA)


# --- the TLS terminator ------------------------------------------------------------------------


def test_tls_terminator_serves_boto3_over_verified_https(sandbox):
    assert sandbox.tls_s3_url.startswith("https://127.0.0.1:")
    body = os.urandom(20 * MiB)
    prefix = f"tls-test/{os.getpid()}"
    client = _tls_client(sandbox)
    try:
        client.put_object(Bucket=sandbox.s3_bucket, Key=f"{prefix}/big", Body=body)
        client.put_object(Bucket=sandbox.s3_bucket, Key=f"{prefix}/small", Body=b"hello")
        got = client.get_object(Bucket=sandbox.s3_bucket, Key=f"{prefix}/big")["Body"].read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
        listing = client.list_objects_v2(Bucket=sandbox.s3_bucket, Prefix=prefix + "/")
        assert {o["Key"]: o["Size"] for o in listing["Contents"]} == {f"{prefix}/big": 20 * MiB,
                                                                       f"{prefix}/small": 5}
        client.delete_objects(Bucket=sandbox.s3_bucket,
                              Delete={"Objects": [{"Key": f"{prefix}/big"}, {"Key": f"{prefix}/small"}]})
    finally:
        client.close()

    # The certificate is verified for real: a client that trusts only the system CAs refuses it.
    stranger = boto3.client("s3", endpoint_url=sandbox.tls_s3_url, region_name=sandbox.s3_region,
                            aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="x",
                            verify=ssl.get_default_verify_paths().cafile or True,
                            config=Config(proxies={}, retries={"max_attempts": 1}))
    try:
        with pytest.raises(SSLError):
            stranger.list_buckets()
    finally:
        stranger.close()


def test_tls_terminator_ends_each_connection_with_close_notify(sandbox):
    """The bug it exists for: moto closes after each answer; the client must get a close_notify,
    not a bare EOF (which OpenSSL 3 reports as "unexpected eof while reading")."""
    host, port = "127.0.0.1", int(sandbox.tls_s3_url.rsplit(":", 1)[1])
    context = tls.client_context(sandbox.tls_ca_file)
    with socket.create_connection((host, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host, suppress_ragged_eofs=False) as conn:
            conn.sendall(f"GET /moto-api/ HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            received = b""
            while chunk := conn.recv(65536):  # b"" only after a close_notify; a bare EOF raises
                received += chunk
            assert received.startswith(b"HTTP/1.1 200")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return tls.make_certificate(tmp_path_factory.mktemp("tls"))


def test_tls_terminator_passes_half_close_on_both_ways(certificate):
    """The client's close_notify reaches the upstream as a FIN; the answer the upstream then
    sends still reaches the client, followed by the terminator's close_notify."""
    cert, key = certificate
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def reverse_after_eof() -> None:
            conn, _ = listener.accept()
            with conn:
                got = b""
                while chunk := conn.recv(65536):
                    got += chunk
                conn.sendall(got[::-1])

        upstream = threading.Thread(target=reverse_after_eof, daemon=True)
        upstream.start()
        with tls.TLSTerminator(f"http://127.0.0.1:{listener.getsockname()[1]}", cert, key) as terminator, \
                socket.create_connection(("127.0.0.1", terminator.port), timeout=10) as raw:
            # A memory-BIO client: Python's SSLSocket cannot send close_notify and read on.
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            conn = tls.client_context(cert).wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")

            def flush() -> None:
                if data := outgoing.read():
                    raw.sendall(data)

            def fill() -> None:
                data = raw.recv(65536)
                incoming.write(data) if data else incoming.write_eof()

            while True:
                try:
                    conn.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    flush()
                    fill()
            conn.write(b"request body")
            with pytest.raises(ssl.SSLWantReadError):
                conn.unwrap()  # close_notify out; it waits for the peer's
            flush()
            answer = b""
            while True:
                try:
                    chunk = conn.read(65536)
                except ssl.SSLWantReadError:
                    fill()
                    continue
                except ssl.SSLZeroReturnError:
                    break  # the terminator's close_notify
                if not chunk:
                    break
                answer += chunk
        upstream.join(timeout=10)
    assert answer == b"ydob tseuqer"


def test_tls_terminator_answers_502_when_the_upstream_is_down(certificate):
    cert, key = certificate
    dead = free_port()
    with tls.TLSTerminator(f"http://127.0.0.1:{dead}", cert, key) as terminator:
        tls.handshake(terminator.url, cert)  # a handshake alone never dials the upstream
        with pytest.raises(OSError, match="502"):
            tls.check(terminator.url, cert)


def test_tls_terminator_takes_many_concurrent_connections(sandbox):
    host, port = "127.0.0.1", int(sandbox.tls_s3_url.rsplit(":", 1)[1])
    context = tls.client_context(sandbox.tls_ca_file)
    # 64 connections open at once, all shaken hands before any speaks...
    conns = []
    try:
        for _ in range(64):
            raw = socket.create_connection((host, port), timeout=20)
            conns.append(context.wrap_socket(raw, server_hostname=host))
        barrier = threading.Barrier(len(conns))

        def ask(conn: ssl.SSLSocket) -> bytes:
            barrier.wait(timeout=20)
            conn.sendall(f"GET /moto-api/ HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
            return received

        with ThreadPoolExecutor(max_workers=len(conns)) as pool:
            answers = list(pool.map(ask, conns))
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
    finally:
        for conn in conns:
            conn.close()

    # ...and boto3 from 8 threads at once, each with its own connections.
    prefix = f"tls-concurrent/{os.getpid()}"

    def round_trip(i: int) -> bool:
        client = _tls_client(sandbox)
        try:
            data = os.urandom(256 * 1024 + i)
            for j in range(5):
                client.put_object(Bucket=sandbox.s3_bucket, Key=f"{prefix}/{i}/{j}", Body=data)
                assert client.get_object(Bucket=sandbox.s3_bucket, Key=f"{prefix}/{i}/{j}")["Body"].read() == data
                client.delete_object(Bucket=sandbox.s3_bucket, Key=f"{prefix}/{i}/{j}")
            return True
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(round_trip, range(8)))
    assert tls.check(sandbox.tls_s3_url, sandbox.tls_ca_file).startswith("TLS to moto")


# --- pgBackRest ------------------------------------------------------------------------------------


def test_pgbackrest_config_is_the_hosts_own_private_file(sandbox):
    config = sandbox.pgbackrest_config
    assert config == sandbox.workdir / "pgbackrest" / "pgbackrest.conf"
    info = config.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == postgres_account().pw_uid
    text = config.read_text()
    assert f"repo1-s3-key-secret={sandbox.s3_secret_key}\n" in text
    port = sandbox.tls_s3_url.rsplit(":", 1)[1]
    for line in ("repo1-type=s3", f"repo1-s3-bucket={sandbox.s3_bucket}", "repo1-path=/pgbackrest",
                 f"repo1-storage-port={port}", "repo1-s3-uri-style=path", "repo1-storage-verify-tls=y",
                 f"repo1-storage-ca-file={sandbox.tls_ca_file}", "repo2-type=posix",
                 f"repo2-path={sandbox.pgbackrest_posix_repo}", "compress-type=lz4", "[sandbox]",
                 f"pg1-path={sandbox.pg_data_dir}", f"pg1-port={sandbox.pg_port}"):
        assert f"\n{line}\n" in text, line
    for path in (sandbox.pgbackrest_restore_dir, sandbox.pgbackrest_posix_repo):
        assert path.is_dir() and path.stat().st_uid == postgres_account().pw_uid
    assert stat.S_IMODE(sandbox.pgbackrest_restore_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(sandbox.tls_ca_file.stat().st_mode) == 0o644

    # The keys are in that file only: not in postgresql's settings, not on any command line.
    with psycopg.connect(sandbox.pg_admin_dsn()) as conn:
        settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name LIKE 'archive%'").fetchall())
    assert settings["archive_mode"] == "on" and settings["archive_timeout"] == "60"
    assert settings["archive_command"] == pgbackrest.archive_command(config)
    for proc in psutil.process_iter(["cmdline"]):
        assert sandbox.s3_secret_key not in " ".join(proc.info["cmdline"] or [])


def test_status_reports_the_terminator_and_pgbackrest(sandbox):
    report = api.status(sandbox.workdir)
    assert report["healthy"], report
    archiving = report["archiving"]
    assert set(archiving) == {"s3-tls", "pgbackrest"}
    assert archiving["s3-tls"]["ok"] and archiving["s3-tls"]["pid"] == sandbox.tls_pid
    assert archiving["pgbackrest"]["ok"], archiving["pgbackrest"]
    assert f"stanza {pgbackrest.STANZA}" in archiving["pgbackrest"]["detail"]
    assert sandbox.s3_secret_key not in repr(report)


def test_wal_is_archived_to_both_repositories(sandbox):
    with psycopg.connect(sandbox.pg_admin_dsn(), autocommit=True) as conn:
        def archiver() -> tuple[int, int, str | None]:
            return conn.execute("SELECT archived_count, failed_count, last_archived_wal FROM pg_stat_archiver").fetchone()

        archived, failed, _ = archiver()
        conn.execute("CREATE TABLE IF NOT EXISTS wal_probe (id serial PRIMARY KEY, at timestamptz DEFAULT now())")
        conn.execute("INSERT INTO wal_probe DEFAULT VALUES")
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        assert wait_until(lambda: (archiver()[2] or "") >= segment, timeout=60), archiver()
        now_archived, now_failed, last = archiver()
        conn.execute("DROP TABLE wal_probe")
    assert now_archived > archived
    assert now_failed == failed

    entry = _info(sandbox)
    # No backup is taken by `up`: "no valid backups" (2) is a healthy stanza; 0 once each repo has one.
    assert entry["status"]["code"] in (0, 2, 4), entry["status"]
    assert {r["key"]: r["status"]["code"] in (0, 2) for r in entry["repo"]} == {1: True, 2: True}
    for repo in (1, 2):
        newest = pgbackrest.archive_max(entry, repo)
        assert newest is not None and newest >= segment, (repo, newest, segment)
        if last == segment:  # nothing newer archived meanwhile
            assert newest == segment

    # The segment itself is in both: the posix repo's file, and the S3 object.
    timeline_dir = f"archive/{pgbackrest.STANZA}/15-1/{segment[:16]}"
    posix = [p.name for p in (sandbox.pgbackrest_posix_repo / timeline_dir).iterdir()]
    assert any(name.startswith(segment + "-") and name.endswith(".lz4") for name in posix), posix
    client = _tls_client(sandbox)
    try:
        keys = [o["Key"] for o in client.list_objects_v2(
            Bucket=sandbox.s3_bucket, Prefix=f"pgbackrest/{timeline_dir}/{segment}-")["Contents"]]
    finally:
        client.close()
    assert len(keys) == 1 and keys[0].endswith(".lz4"), keys


def test_running_instances_ignores_a_stale_postmaster_pid(tmp_path):
    data = tmp_path / "restored"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    (data / "postmaster.pid").write_text(f"{os.getpid()}\n{data}\n")  # a live pid, but not a postmaster
    assert pgbackrest.running_instances(tmp_path) == []
    assert pgbackrest.stop_orphans(tmp_path / "missing", None) == []


# --- a sandbox of its own: backup, restore a scratch instance, `down` stops it ----------------------


@pytest.fixture(scope="module")
def own_base():
    # Not tmp_path: pytest's base dir is 0700, and the 'postgres' account must enter the work dir.
    base = Path(tempfile.mkdtemp(prefix="runbook-pgbr-test-"))
    base.chmod(0o711)
    yield base
    for child in base.iterdir():
        if (child / MARKER_FILE).exists():
            api.down(child)
    shutil.rmtree(base, ignore_errors=True)


def test_down_stops_a_scratch_instance_restored_into_the_restores_dir(own_base):
    started = time.monotonic()
    state = api.up(own_base / "work", size_mb=8, environments_dir=own_base / "env")
    hidden = state.secrets()
    config = state.pgbackrest_config

    # A full backup into the posix repo: that repo's status turns ok (0).
    run(pgbackrest.command(config, "--repo=2", "--type=full", "backup"), what="pgbackrest backup", secrets=hidden,
        timeout=120)
    assert _info(state, "--repo=2")["status"]["code"] == 0

    # Restore it as a flow would: a new data dir under restores/, started on another port,
    # without archiving (its sandbox.conf is the primary's copy). Then leave it running.
    target = state.pgbackrest_restore_dir / "scratch-1"
    run(pgbackrest.command(config, "--repo=2", f"--pg1-path={target}", "--type=immediate", "restore"),
        what="pgbackrest restore", secrets=hidden, timeout=120)
    port = free_port()
    run(as_postgres([str(state.pg_bin / "pg_ctl"), "-D", str(target), "-l", str(target / "scratch.log"), "-w",
                     "-t", "60", "-o", f"-p {port} -c archive_mode=off -c unix_socket_directories={target}",
                     "start"]),
        what="starting the restored instance", cwd=state.pgbackrest_restore_dir, timeout=90, new_session=True)
    pid = postgres.postmaster_pid(target)
    assert pid is not None
    assert pgbackrest.running_instances(state.pgbackrest_restore_dir) == [(target, pid)]
    with psycopg.connect(host=str(target), port=port, user=postgres.BOOTSTRAP_USER, dbname="fleet") as conn:
        assert conn.execute("SELECT count(*) FROM vehicles").fetchone()[0] > 0

    actions = api.down(state.workdir)
    assert f"stopped the restored PostgreSQL instance in {target} (pid {pid})" in actions
    assert "stopped the TLS terminator in front of S3" in actions
    assert not pid_alive(pid) and not pid_alive(state.pg_pid) and not pid_alive(state.tls_pid)
    assert not state.workdir.exists()
    assert not any(state.s3_secret_key in a for a in actions)
    assert time.monotonic() - started < 60
