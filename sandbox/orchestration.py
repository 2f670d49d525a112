"""A Prefect server and process workers as real processes: the first step past one machine.

`start_server` runs `prefect server start` on PostgreSQL (or SQLite) in its own process group,
`start_worker` runs `prefect worker start --type process` on a work pool, and `ensure_pool`
creates that pool. Tests use them for scenarios with real workers (a `kill -9` of the worker
running a flow); `python -m sandbox prefect up` uses them on the sandbox's PostgreSQL
(`start_in_sandbox`, `stop_in_sandbox`).

Each child gets a clean environment: no PREFECT_* variable is inherited (the test session's
harness points PREFECT_API_URL and PREFECT_HOME at its own server), only what is set here.
The database password travels in the environment, never on a command line, and is scrubbed
from every error. Only processes started here, or their descendants, are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from secrets import token_hex
from urllib.parse import quote, urlsplit

import httpx
import psutil
import psycopg
from psycopg import sql

from sandbox.process import cmdline, free_port, pid_alive, scrub, stop_process_group, tail, wait_until
from sandbox.state import SandboxState, load_state, save_state
from tasks.errors import ConfigError, PermanentError

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PREFECT_DATABASE = "prefect"  # role and database on the sandbox PostgreSQL
DEFAULT_POOL = "runbook-process"
SERVER_LOG = "server.log"
SERVER_READY_SECONDS = 90  # migrations of a fresh database take most of it on a slow box
WORKER_READY_SECONDS = 60
STOP_GRACE_SECONDS = 10.0
PORT_ATTEMPTS = 3
SANDBOX_DIR = "prefect"  # under the sandbox work dir: logs, PREFECT_HOMEs, results
# Heartbeats from every deployed run, so a dead worker's run can be detected (Prefect needs >= 30).
HEARTBEAT_SECONDS = "30"


# --- the server ---------------------------------------------------------------------------


@dataclass
class PrefectServer:
    """`prefect server start`, running in its own process group."""

    api_url: str
    pid: int
    log: Path
    database: str  # "postgresql" or "sqlite"
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return is_server(self.pid)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM to its group, SIGKILL after `grace` seconds; fine to call twice."""
        if self.alive():
            stop_process_group(self.pid, grace=grace)
        if self._proc is not None:
            self._proc.wait()


def start_server(
    state_dir: Path,
    *,
    database_url: str | None = None,
    port: int | None = None,
    settings: dict[str, str] | None = None,
) -> PrefectServer:
    """Start `prefect server start` on 127.0.0.1 and wait until GET /api/health answers.

    `database_url` is a `postgresql+asyncpg://` URL; None means SQLite in `state_dir`.
    PREFECT_HOME is `state_dir/prefect-home`, the log `state_dir/server.log`; `settings` are
    extra PREFECT_* variables for the server. Raises PermanentError with the log's tail
    (scrubbed of the database password) if it exits or does not answer in time.
    """
    state_dir = Path(state_dir).absolute()
    state_dir.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite+aiosqlite:///{state_dir / 'prefect.db'}"
    database = "sqlite" if url.startswith("sqlite") else "postgresql"
    hidden = _url_secrets(database_url)
    log = state_dir / SERVER_LOG
    env = _clean_env({
        "PREFECT_HOME": str(state_dir / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": url,
        **(settings or {}),
    })
    attempt = 0
    while True:
        attempt += 1
        chosen = port if port is not None else free_port(HOST)
        seen = len(_read(log))  # judge only what this attempt logs
        proc = _spawn(
            ["-m", "prefect", "server", "start", "--host", HOST, "--port", str(chosen)], env, state_dir, log
        )
        server = PrefectServer(f"http://{HOST}:{chosen}/api", proc.pid, log, database, proc)
        try:
            _wait_healthy(server, proc, seen, hidden)
            return server
        except _PortTaken:
            # free_port's race: someone bound the port between our check and the server's bind.
            if port is not None or attempt == PORT_ATTEMPTS:
                raise PermanentError(f"port {chosen} was taken before the Prefect server could bind it") from None


class _PortTaken(Exception):
    pass


def _wait_healthy(server: PrefectServer, proc: subprocess.Popen[bytes], seen: int, hidden: list[str]) -> None:
    deadline = time.monotonic() + SERVER_READY_SECONDS
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            text = _read(server.log)[seen:]
            if "already in use" in text:
                raise _PortTaken
            raise PermanentError(
                f"the Prefect server exited with status {code} before it answered; "
                f"log {server.log}:\n{scrub(tail(text), hidden)}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    server.stop()
    raise PermanentError(
        f"the Prefect server at {server.api_url} did not answer /health within {SERVER_READY_SECONDS} s; "
        f"log {server.log}:\n{scrub(tail(_read(server.log)[seen:]), hidden)}"
    )


# --- the database ---------------------------------------------------------------------------


def create_prefect_database(state: SandboxState) -> str:
    """Create the role and database `prefect` on the sandbox PostgreSQL if missing; returns
    the server's `postgresql+asyncpg://` URL (password included: keep it out of logs).

    The role's password is generated once and kept in the sandbox's state.json (0600);
    calling this again sets the same password, so it is idempotent.
    """
    current = load_state(state.workdir) or state
    password = current.prefect_db_password
    if password is None:
        password = token_hex(16)
        save_state(replace(current, prefect_db_password=password))
    name = PREFECT_DATABASE
    try:
        with psycopg.connect(state.pg_admin_dsn(), autocommit=True, connect_timeout=10) as conn:
            # A SCRAM verifier computed here: the plain password is never in a statement.
            verifier = conn.pgconn.encrypt_password(password.encode(), name.encode(), b"scram-sha-256").decode()
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(verifier)))
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(name)))
        # Prefect's migrations create pg_trgm; as the superuser it cannot fail on privileges.
        with psycopg.connect(state.pg_admin_dsn(name), autocommit=True, connect_timeout=10) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except psycopg.Error as exc:
        message = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                        [password, *state.secrets()])
        raise PermanentError(f"creating the Prefect database {name!r} on {state.pg_host}:{state.pg_port}: {message}") from None
    return f"postgresql+asyncpg://{name}:{quote(password, safe='')}@{state.pg_host}:{state.pg_port}/{name}"


# --- workers ----------------------------------------------------------------------------------


@dataclass
class Worker:
    """`prefect worker start --type process`, in its own process group.

    A process worker starts each flow run as its child process, in a session of its own
    unless the deployment sets a job `command` (Prefect 3.8.8), so a signal to the worker's
    group may not reach them; `kill` and `stop` follow the process tree instead.
    """

    name: str
    pool: str
    pid: int
    log: Path
    _process: psutil.Process | None = field(default=None, repr=False, compare=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._process is not None and pid_alive(self.pid) and self._process.is_running()

    def children(self) -> list[psutil.Process]:
        """Every live descendant: the flow-run processes it started and what they started."""
        if not self.alive() or self._process is None:
            return []
        try:
            return [p for p in self._process.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the worker and all its descendants at once, as if its machine died: no
        handler, hook or clean-up runs. Returns when every one of them is gone."""
        if self.alive() and self._process is not None:
            _kill_tree([self._process])
        self._reap()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM (the worker stops polling and waits for its runs), then after `grace`
        seconds SIGKILL of whatever is left of it and its descendants."""
        root = self._process
        if root is None or not self.alive():
            self._reap()
            return
        family = [root, *self.children()]
        with contextlib.suppress(psutil.NoSuchProcess):
            root.terminate()
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=grace)
        else:
            wait_until(lambda: _dead(root), grace)
        _kill_tree(family)
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()


def start_worker(
    api_url: str,
    pool: str,
    name: str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path = REPO_ROOT,
    log: Path,
    limit: int | None = None,
    secrets: Iterable[str] = (),
) -> Worker:
    """Start a process worker on `pool` and wait until the server lists it.

    Its environment: PREFECT_API_URL, PREFECT_WORKER_QUERY_SECONDS=2 (fast pickup),
    PREFECT_HOME beside the log (`worker-home`), then `env`, which may override any of them.
    `limit` caps its concurrent flow runs (`--limit`). Raises PermanentError with the log's
    tail, scrubbed of `secrets`, if it exits or is not listed within WORKER_READY_SECONDS.
    """
    log = Path(log).absolute()
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = _clean_env({
        "PREFECT_API_URL": api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_HOME": str(log.parent / "worker-home"),
        **(env or {}),
    })
    argv = ["-m", "prefect", "worker", "start", "--pool", pool, "--type", "process", "--name", name]
    if limit is not None:
        argv += ["--limit", str(limit)]
    seen = len(_read(log))
    proc = _spawn(argv, full_env, Path(cwd), log)
    worker = Worker(name, pool, proc.pid, log, psutil.Process(proc.pid), proc)
    hidden = list(secrets)
    deadline = time.monotonic() + WORKER_READY_SECONDS
    try:
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                raise PermanentError(
                    f"worker {name!r} exited with status {code} before it joined pool {pool!r}; "
                    f"log {log}:\n{scrub(tail(_read(log)[seen:]), hidden)}"
                )
            if name in _worker_names(api_url, pool):
                return worker
            time.sleep(0.5)
    except BaseException:
        worker.kill()  # Ctrl-C while waiting: leave nothing behind
        raise
    worker.kill()
    raise PermanentError(
        f"worker {name!r} did not join pool {pool!r} within {WORKER_READY_SECONDS} s; "
        f"log {log}:\n{scrub(tail(_read(log)[seen:]), hidden)}"
    )


def ensure_pool(api_url: str, pool: str) -> None:
    """Create the process work pool `pool` if it does not exist (with Prefect's default
    process job template); an existing pool is left as it is."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    with SyncPrefectClient(api_url) as client:
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))


def _worker_names(api_url: str, pool: str) -> set[str]:
    try:
        answer = httpx.post(f"{api_url}/work_pools/{quote(pool, safe='')}/workers/filter", json={}, timeout=3)
    except httpx.HTTPError:
        return set()
    return {w["name"] for w in answer.json()} if answer.status_code == 200 else set()


def _kill_tree(roots: Iterable[psutil.Process]) -> None:
    """SIGSTOP each process and its descendants until no new one appears (a stopped process
    forks nothing, and its children keep their parent while we look), then SIGKILL them all.
    psutil refuses to signal a pid that was reused by another process."""
    frozen: dict[int, psutil.Process] = {}
    pending = list(roots)
    while pending:
        for proc in pending:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.suspend()
                frozen[proc.pid] = proc
        pending = []
        for proc in list(frozen.values()):
            with contextlib.suppress(psutil.NoSuchProcess):
                pending += [c for c in proc.children() if c.pid not in frozen]
    for proc in frozen.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    # A zombie counts as gone: it runs nothing, and only its parent (or init) can reap it.
    if not wait_until(lambda: all(_dead(p) for p in frozen.values()), 10, interval=0.02):
        alive = sorted(p.pid for p in frozen.values() if not _dead(p))
        raise PermanentError(f"processes {alive} did not die after SIGKILL")


def _dead(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- process plumbing --------------------------------------------------------------------------


def _clean_env(own: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any PREFECT_* variable, plus `own`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.update(own)
    return env


def _spawn(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """`<this python> args...` in a new session (a Ctrl-C in our terminal does not reach it),
    output appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, *args], env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )


def _url_secrets(url: str | None) -> list[str]:
    if not url:
        return []
    password = urlsplit(url).password
    return [url, *([password] if password else [])]


def is_server(pid: int | None) -> bool:
    """Whether `pid` is a running `prefect server start` (not a pid since reused)."""
    return _is(pid, "server start")


def is_worker(pid: int | None) -> bool:
    """Whether `pid` is a running `prefect worker start`."""
    return _is(pid, "worker start")


def _is(pid: int | None, what: str) -> bool:
    """Whether `pid` is alive and still a `prefect <what>` process (not a reused pid)."""
    return bool(pid) and pid_alive(pid) and f"prefect {what}" in cmdline(pid or 0)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# --- in the sandbox: `python -m sandbox prefect up | down` ------------------------------------------


def start_in_sandbox(workdir: Path, *, workers: int = 2, sqlite: bool = False) -> SandboxState:
    """Start the server (on the sandbox's PostgreSQL, or SQLite), the pool `runbook-process`
    and `workers` process workers; record them in state.json and return the new state.

    The workers get the sandbox's secrets and RUNBOOK_ENVIRONMENTS_DIR, heartbeats every
    30 s, and one results folder. If they already run, the state is returned as it is.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    state = load_state(workdir)
    if state is None:
        raise PermanentError(f"no sandbox in {workdir}: start one with `python -m sandbox up --dir {workdir}`")
    if state.prefect_server_pid is not None:
        if is_server(state.prefect_server_pid):
            return state
        raise PermanentError(
            f"the Prefect server recorded in {workdir} (pid {state.prefect_server_pid}) is gone; "
            f"run `python -m sandbox prefect down --dir {workdir}` and then `prefect up` again"
        )
    base = state.workdir / SANDBOX_DIR
    base.mkdir(mode=0o700, exist_ok=True)
    try:
        with psycopg.connect(state.pg_admin_dsn(), connect_timeout=3):
            pass
    except psycopg.Error:
        raise PermanentError(
            f"the sandbox's PostgreSQL on {state.pg_host}:{state.pg_port} does not answer; "
            f"see `python -m sandbox status --dir {workdir}`"
        ) from None
    database_url = None if sqlite else create_prefect_database(state)
    server: PrefectServer | None = None
    starting: list[Future[Worker]] = []
    try:
        server = start_server(base, database_url=database_url)
        ensure_pool(server.api_url, DEFAULT_POOL)
        state = load_state(workdir) or state  # create_prefect_database may have saved a password
        env = {
            **state.secret_env(),
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": HEARTBEAT_SECONDS,
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(base / "results"),
        }
        if state.environment_file is not None:
            env["RUNBOOK_ENVIRONMENTS_DIR"] = str(state.environment_file.parent)
        # Side by side: each takes seconds to import Prefect. Leaving the `with` waits for all
        # of them, also on a failure or Ctrl-C, so the clean-up below finds every one that started.
        with ThreadPoolExecutor(max_workers=workers) as threads:
            for i in range(1, workers + 1):
                starting.append(threads.submit(
                    start_worker, server.api_url, DEFAULT_POOL, f"worker-{i}", env=env,
                    log=base / f"worker-{i}.log", secrets=state.secrets(),
                ))
        state = replace(
            state,
            prefect_api_url=server.api_url,
            prefect_server_pid=server.pid,
            prefect_database=server.database,
            prefect_pool=DEFAULT_POOL,
            prefect_worker_pids=[future.result().pid for future in starting],  # raises the first failure
        )
        save_state(state)
    except BaseException:
        for future in starting:
            if future.done() and not future.cancelled() and future.exception() is None:
                with contextlib.suppress(Exception):
                    future.result().kill()
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()
        raise
    return state


def stop_recorded(state: SandboxState) -> list[str]:
    """Stop the workers, then the server, that state.json records (each only if its pid still
    names that kind of Prefect process); returns what it did. state.json is not changed."""
    actions = []
    for pid in state.prefect_worker_pids or []:
        if is_worker(pid):
            attach_worker(pid).stop()
            actions.append(f"stopped the Prefect worker (pid {pid})")
    if is_server(state.prefect_server_pid):
        stop_process_group(state.prefect_server_pid or 0)
        actions.append(f"stopped the Prefect server (pid {state.prefect_server_pid})")
    return actions


def stop_in_sandbox(workdir: Path) -> list[str]:
    """`prefect down`: stop what `start_in_sandbox` started and forget it (the database stays)."""
    state = load_state(workdir)
    if state is None:
        return [f"no sandbox in {workdir}: nothing to do"]
    if state.prefect_server_pid is None and not state.prefect_worker_pids:
        return ["no Prefect server or workers recorded: nothing to do"]
    actions = stop_recorded(state)
    save_state(replace(state, prefect_api_url=None, prefect_server_pid=None, prefect_database=None,
                       prefect_pool=None, prefect_worker_pids=None))
    return actions or ["the recorded Prefect processes had already stopped"]


def attach_worker(pid: int, name: str = "", pool: str = "", log: Path = Path()) -> Worker:
    """A Worker for a running worker that another process started (say `prefect up`)."""
    if not is_worker(pid):
        raise PermanentError(f"pid {pid} is not a running Prefect worker")
    return Worker(name, pool, pid, log, psutil.Process(pid))

