"""What every benchmark needs: an isolated Prefect home, a sandbox of a given size, a local
Prefect API, and raw pg_restore as the yardstick. Import it before Prefect: it sets the
Prefect settings that are read at import time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
TMP = Path(tempfile.mkdtemp(prefix="runbook-bench-"))
os.environ["PREFECT_HOME"] = str(TMP / "prefect")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(TMP / "results")  # no cached results from earlier runs
ENVIRONMENTS = TMP / "environments"
ENVIRONMENTS.mkdir()
os.environ["RUNBOOK_ENVIRONMENTS_DIR"] = str(ENVIRONMENTS)


@contextmanager
def bench_sandbox(name: str, size_mb: int) -> Iterator[tuple[Any, float]]:
    """A fresh sandbox in /tmp/runbook-bench-<name>, its secrets in the environment; yields the
    state and the seconds `up` took (data generation included). Always brought down."""
    from sandbox import api

    workdir = Path(f"/tmp/runbook-bench-{name}")
    api.down(workdir)
    start = time.monotonic()
    state = api.up(workdir, size_mb, ENVIRONMENTS)
    seconds = time.monotonic() - start
    os.environ.update(state.secret_env())
    try:
        yield state, seconds
    finally:
        api.down(workdir)
        shutil.rmtree(TMP, ignore_errors=True)


@contextmanager
def prefect_api() -> Iterator[None]:
    """A local Prefect API for the run (the test harness)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


HEARTBEAT_SECONDS = 30  # as deployed runs send them (deployments/automations.py)


@contextmanager
def checkpoints(on: bool, *modules: Any) -> Iterator[dict[str, int]]:
    """Runs as shipped (`on`: persisted checkpoints and effects, heartbeats every 30 s), or
    bare, to measure what those cost: the tasks of `modules` swapped for copies that
    persist nothing, and no heartbeats. Yields counts: tasks swapped and, afterwards, the
    result files written."""
    from prefect.cache_policies import NO_CACHE
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.tasks import Task

    results = Path(os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"])
    before = sum(1 for p in results.rglob("*") if p.is_file()) if results.exists() else 0
    saved: list[tuple[Any, str, Any]] = []
    if not on:
        for module in modules:
            for name, value in vars(module).items():
                if isinstance(value, Task) and value.persist_result:
                    saved.append((module, name, value))
                    setattr(module, name, value.with_options(persist_result=False, cache_policy=NO_CACHE))
    counts = {"tasks_made_bare": len(saved), "result_files_written": 0}
    try:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: HEARTBEAT_SECONDS if on else None}):
            yield counts
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
        after = sum(1 for p in results.rglob("*") if p.is_file()) if results.exists() else 0
        counts["result_files_written"] = after - before


def write_environment(name: str, doc: dict[str, Any]) -> None:
    import yaml

    (ENVIRONMENTS / f"{name}.yaml").write_text(yaml.safe_dump(doc))


def database_bytes(server: Any, dbname: str) -> int:
    from tasks import postgres

    with postgres.connect(server, dbname) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


def raw_gzip_dump(server: Any, dbname: str, out: Path) -> float:
    """Seconds of a plain `pg_dump -Fc` (gzip level 6, pg_dump's default) into `out`."""
    from tasks import postgres

    started = time.monotonic()
    with open(out, "wb") as fh:
        subprocess.run([postgres.find_tool("pg_dump", 15), "-Fc", "-Z6"], stdout=fh, env=server.env(dbname),
                       check=True)
    return time.monotonic() - started


def raw_zstd_pipe(server: Any, dbname: str, out: Path) -> float:
    """Seconds of the shell pipe `pg_dump -Fc -Z0 | zstd -3 -T2 > out`."""
    from tasks import postgres

    started = time.monotonic()
    with open(out, "wb") as fh:
        dump = subprocess.Popen([postgres.find_tool("pg_dump", 15), "-Fc", "-Z0"], stdout=subprocess.PIPE,
                                env=server.env(dbname))
        zstd = subprocess.run(["zstd", "-3", "-T2", "-q", "-c"], stdin=dump.stdout, stdout=fh, check=True)
        assert dump.stdout is not None
        dump.stdout.close()
        if dump.wait() != 0 or zstd.returncode != 0:
            raise RuntimeError("pg_dump | zstd failed")
    return time.monotonic() - started


def raw_pg_restore(server: Any, dump_file: Path, jobs: int) -> float:
    """Seconds of a plain `pg_restore -j` of the dump into a new database (then dropped)."""
    from tasks import postgres

    pg_restore = postgres.find_tool("pg_restore", 15)
    postgres.create_database(server, "raw_restore")
    started = time.monotonic()
    subprocess.run([pg_restore, f"-j{jobs}", "--no-owner", "--no-privileges", "--exit-on-error",
                    "-d", "raw_restore", str(dump_file)], env=server.env("raw_restore"), check=True)
    elapsed = time.monotonic() - started
    postgres.drop_database(server, "raw_restore")
    return elapsed


def run_seconds(flow_run_id: Any) -> float:
    """From the run's creation to its final state, as the API records them: what the UI and a
    CI trigger see. The local call returns later by up to a second when heartbeats are on:
    Prefect joins its heartbeat thread, which sleeps in 1 s steps, after the final state is set
    (`call_overhead`)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        run = c.read_flow_run(flow_run_id)
    return (run.state.timestamp - run.created).total_seconds()
