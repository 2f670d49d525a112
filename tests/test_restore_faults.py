"""A restore that loses its database connection or runs out of disk, on the real sandbox:
PostgreSQL 15 terminating the restore's session with pg_terminate_backend while pg_restore
copies, a real tmpfs that is too small for the download, and moto's S3 over HTTP."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from psycopg.conninfo import make_conninfo

from flows.backup import backup_database
from flows.restore_test import restore_test
from sandbox.sampledata import generate_fleet
from tasks import backups, postgres
from tasks.config import RESTORE_RETRIES_MAX, load_environment
from tasks.errors import ConfigError, PermanentError
from tasks.restores import restore_into_scratch
from tasks.storage import open_storage

pytestmark = pytest.mark.scenario

SLOW_DB = "fleet_restore16"  # 16 MB: pg_restore -j1 copies its trips for about 0.2 s, the killer looks every 20 ms
POLL_S = 0.02


def admin() -> postgres.Server:
    return postgres.Server.from_dsn(os.environ["RUNBOOK_SANDBOX_PG_DSN"])


def scratch_like(state: Any) -> str:
    """The LIKE pattern of the scratch database of this flow run (naming.scratch_name)."""
    suffix = re.sub(r"[^a-z0-9]", "", str(state.state_details.flow_run_id).lower())[:8]
    return f"rt_%_{suffix}"


def restore_attempts(state: Any) -> int:
    """The run count of the flow run's restore_into_scratch task, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    deadline = time.monotonic() + 10
    with get_client(sync_client=True) as c:
        while True:  # task runs reach the API as events, shortly after the flow returns
            runs = c.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="restore_into_scratch")))
            if runs and runs[0].state and runs[0].state.is_final():
                return int(runs[0].run_count)
            assert time.monotonic() < deadline, "the restore task run never reached a final state in the API"
            time.sleep(0.2)


def slow_env(make_environment: Any, name: str, retries: int) -> str:
    """An environment whose `fleet` is a 16 MB database restored with one pg_restore job
    and `restore_test.retries: retries`, with one backup of it in S3."""
    if not postgres.database_exists(admin(), SLOW_DB):
        postgres.create_database(admin(), SLOW_DB)
        generate_fleet(make_conninfo(**admin().with_db(SLOW_DB)), 16)

    def edit(doc: dict[str, Any]) -> None:
        fleet = doc["databases"]["fleet"]
        fleet["restore_test"] = {**fleet["restore_test"], "jobs": 1, "retries": retries}
        doc["databases"] = {"fleet": {**fleet, "dbname": SLOW_DB}}

    env = make_environment(name, edit)
    backup_database(env, "fleet")
    return env


class RestoreSessionKiller(threading.Thread):
    """Terminates, once, the session of a pg_restore that this process started, while it
    runs a COPY into a scratch database of SLOW_DB; it finds the backend by the client port
    of that pg_restore's own connection, so nothing else on the server is touched. Also
    records the oid of every scratch database it sees, to count create-and-drop cycles."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.killed: list[str] = []  # the databases whose restore session it terminated
        self.oids: set[int] = set()

    def _our_pg_restore_ports(self) -> list[int]:
        ports = []
        for child in psutil.Process().children(recursive=True):
            try:
                if child.name() == "pg_restore":
                    ports += [c.laddr.port for c in child.net_connections(kind="tcp")]
            except psutil.NoSuchProcess:
                continue
        return ports

    def run(self) -> None:
        deadline = time.monotonic() + 60
        with postgres.connect(admin(), "postgres") as conn:
            while not self.stop.is_set() and time.monotonic() < deadline:
                self.oids.update(r[0] for r in conn.execute(
                    "SELECT oid FROM pg_database WHERE datname LIKE %s", (f"rt_{SLOW_DB}_%",)).fetchall())
                ports = self._our_pg_restore_ports() if not self.killed else []
                if ports:
                    row = conn.execute(
                        "SELECT pid, datname FROM pg_stat_activity WHERE client_port = ANY(%s) AND datname LIKE %s "
                        "AND application_name LIKE 'runbook-restore-%%' AND query LIKE 'COPY %%'",
                        (ports, f"rt_{SLOW_DB}_%")).fetchone()
                    if row and conn.execute("SELECT pg_terminate_backend(%s)", (row[0],)).fetchone() == (True,):
                        self.killed.append(row[1])
                time.sleep(POLL_S)


def restore_test_with_killer(env: str) -> tuple[Any, RestoreSessionKiller]:
    killer = RestoreSessionKiller()
    killer.start()
    try:
        state = restore_test(env, "fleet", return_state=True)
    finally:
        killer.stop.set()
        killer.join()
    return state, killer


# --- connection loss -------------------------------------------------------------------------------


def test_a_terminated_restore_session_without_retries_fails_at_once_naming_database_server_and_cause(
        make_environment: Any, sandbox: Any) -> None:
    env = slow_env(make_environment, "pg-killed-no-retry", retries=0)
    state, killer = restore_test_with_killer(env)

    assert killer.killed, "pg_restore was never seen copying"
    assert state.is_failed()
    assert f"pg_restore into database {killer.killed[0]!r} on {admin().describe()} lost its connection" in state.message
    assert "the server terminated 1 of its session(s) (SQLSTATE 57P01, admin shutdown" in state.message
    assert "not retried (restore_test.retries is 0): pg_restore into" in state.message
    assert sandbox.pg_password not in state.message
    assert restore_attempts(state) == 1
    assert len(killer.oids) == 1  # created once, never again
    assert postgres.list_databases(admin(), scratch_like(state)) == []


def test_a_terminated_restore_session_is_retried_from_a_re_created_database_and_completes(
        make_environment: Any) -> None:
    env = slow_env(make_environment, "pg-killed-retry", retries=1)
    state, killer = restore_test_with_killer(env)

    assert killer.killed, "pg_restore was never seen copying"
    assert state.is_completed(), state.message
    assert restore_attempts(state) == 2
    assert len(killer.oids) == 2  # one scratch database per attempt: the partial one dropped, a new one made
    assert postgres.list_databases(admin(), scratch_like(state)) == []


def test_restore_test_retries_never_ask_for_more_than_the_task_allows() -> None:
    # The decorator's retries bound what restore_test.retries can ask for.
    assert restore_into_scratch.retries >= RESTORE_RETRIES_MAX


# --- disk full -------------------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`tmpfs("1m")`: a fresh tmpfs of that size, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a tmpfs needs root to mount (mount -t tmpfs); these tests run as root in CI")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in mounted:
            subprocess.run(["umount", str(where)], check=True)


def fill(folder: Path) -> None:
    """Write zeros into `folder` until its file system is full."""
    with open(folder / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass


def test_a_restore_test_whose_temp_folder_is_full_names_it_and_the_bytes_and_leaves_nothing(
        make_environment: Any, tmpfs: Callable[[str], Path]) -> None:
    disk = tmpfs("1m")
    folder = disk / "restores"
    folder.mkdir()
    fill(disk)

    env = make_environment("disk-full", lambda doc: doc["databases"]["fleet"]["restore_test"].update(
        temp_dir=str(folder)))
    backup_id = backup_database(env, "fleet")["backup_id"]
    manifest = backups.load_manifest(open_storage(load_environment(env).database("fleet").storage), "fleet", backup_id)
    state = restore_test(env, "fleet", return_state=True)

    assert state.is_failed()
    assert f"backup {backup_id}: not enough space in {folder} for the download" in state.message
    # The dump decompressed: the file pg_restore reads.
    assert f"it needs {manifest.files[0].raw_size} bytes, 0 bytes were free" in state.message
    assert list(folder.iterdir()) == []
    assert postgres.list_databases(admin(), scratch_like(state)) == []


def test_a_download_that_fills_the_disk_names_the_folder_and_the_bytes_and_removes_its_file(
        make_environment: Any, tmpfs: Callable[[str], Path]) -> None:
    folder = tmpfs("64k")  # the sandbox's fleet dump is about 130 KB, 440 KB decompressed
    env = make_environment("disk-fills")
    storage = open_storage(load_environment(env).database("fleet").storage)
    manifest = backups.load_manifest(storage, "fleet", backup_database(env, "fleet")["backup_id"])

    with pytest.raises(PermanentError) as failed:
        backups.fetch_backup(storage, manifest, folder)

    assert f"not enough space in {folder} for the download (no space left on device writing dump.pgc)" in str(
        failed.value)
    assert f"it needs {manifest.files[0].raw_size} bytes, 65536 bytes were free" in str(failed.value)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(("field", "value", "allowed"), [
    ("temp_dir", "tmp/restores", "an absolute path, like /var/tmp/restores"),
    ("retries", 4, "less than or equal to 3"),
], ids=["relative temp_dir", "retries above the policy's"])
def test_bad_restore_settings_are_refused_naming_the_field_the_value_and_what_is_allowed(
        make_environment: Any, field: str, value: Any, allowed: str) -> None:
    env = make_environment(f"bad-rt-{field.replace('_', '-')}",
                           lambda doc: doc["databases"]["fleet"]["restore_test"].update({field: value}))
    with pytest.raises(ConfigError) as refused:
        load_environment(env)
    assert f"databases.fleet.restore_test.{field}: " in str(refused.value)
    assert allowed in str(refused.value) and f"(got {value!r})" in str(refused.value)
