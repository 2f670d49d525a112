"""The database host as an outside system: programs run as the PostgreSQL account there
(pgBackRest, pg_ctl, pg_amcheck), and the restored instances a physical restore starts.

A restored instance is a data directory under the cluster's `restore.directory`, started on
a port of `restore.ports` with archiving off, so it can never push WAL into production's
repository. What runs is read from the directory itself (`postmaster.pid`), never from our
own memory, so an attempt resumed after a crash finds an instance its predecessor started.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tasks import postgres
from tasks.config import ClusterConfig
from tasks.errors import ConfigError, PermanentError, TransientError
from tasks.redact import scrub

OUTPUT_TAIL = 2000  # characters of a failed program's output kept in the error


class Host(Protocol):
    """What running a program on the database host needs: the account that owns the data
    (a cluster's or the DR pair's config)."""

    @property
    def os_user(self) -> str | None: ...


def as_account(cluster: Host, argv: Sequence[str]) -> list[str]:
    """argv run as the cluster's OS account: as is when we are it (or none is set), through
    runuser when we are root, through `sudo -n` otherwise."""
    user = cluster.os_user
    if user is None or pwd.getpwuid(os.geteuid()).pw_name == user:
        return list(argv)
    if os.geteuid() == 0:
        return ["runuser", "-u", user, "--", *argv]
    return ["sudo", "-n", "-u", user, "--", *argv]


def run(cluster: Host, argv: Sequence[str], *, what: str, timeout: float,
        env: Mapping[str, str] | None = None, as_owner: bool = True, clean_env: bool = False) -> str:
    """Run a program on the host and return its stdout; PermanentError with the tail of its
    output when it fails, TransientError when it takes longer than `timeout`."""
    return spawn(cluster, argv, what=what, env=env, as_owner=as_owner, clean_env=clean_env).wait(timeout)


@dataclass
class Running:
    """A program started on the host, in a process group of its own, so that a timeout or
    a failure beside it stops the whole of it (runuser and what it runs)."""

    what: str
    proc: subprocess.Popen[str]

    def wait(self, timeout: float) -> str:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TransientError(f"{self.what}: no answer within {timeout:.0f} s") from None
        if self.proc.returncode != 0:
            output = (err.strip() or out.strip())[-OUTPUT_TAIL:]
            raise ProgramFailed(self.what, self.proc.returncode, scrub(output))
        return out

    def stop(self) -> None:
        """SIGTERM to the group (pgBackRest then stops cleanly), SIGKILL after 10 s."""
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.proc.communicate(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue


def spawn(cluster: Host, argv: Sequence[str], *, what: str, env: Mapping[str, str] | None = None,
          as_owner: bool = True, clean_env: bool = False) -> Running:
    full = as_account(cluster, argv) if as_owner else list(argv)
    try:
        proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, cwd="/", start_new_session=True,
                                env=dict(env or {}) if clean_env else {**os.environ, **(env or {})})
    except FileNotFoundError:
        raise PermanentError(f"{what}: {full[0]} is not installed on this host") from None
    return Running(what, proc)


class ProgramFailed(PermanentError):
    """A program on the host exited non-zero; `code` is its exit status."""

    def __init__(self, what: str, code: int, output: str) -> None:
        super().__init__(f"{what} failed (exit {code}): {output}")
        self.code = code
        self.output = output


class PortTaken(ProgramFailed):
    """A restored instance could not bind its port: something holds it without listening."""


# --- restored instances -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """A restored instance: its data directory, port and log, on the database host."""

    data_dir: str
    port: int
    log: str

    @property
    def socket_dir(self) -> str:
        return str(Path(self.data_dir).parent)


def scratch_path(cluster: ClusterConfig, name: str) -> str:
    """`<restore.directory>/<name>`: the only kind of directory this module creates or removes."""
    if "/" in name or name in ("", ".", ".."):
        raise ConfigError(f"restored instance name {name!r} must be a plain folder name")
    return str(Path(cluster.restore.directory) / name)


def _inside_restore_dir(cluster: ClusterConfig, path: str) -> None:
    parent = Path(cluster.restore.directory).resolve()
    if Path(path).resolve().parent != parent:
        raise PermanentError(f"{path} is not directly under the restore directory {parent}: refused")


def primary(cluster: ClusterConfig) -> postgres.Server:
    return postgres.Server.from_dsn(cluster.dsn.resolve())


def server_of(cluster: ClusterConfig, instance: Instance) -> postgres.Server:
    """The cluster's own connection on the instance's port: a physical copy has the same roles
    and passwords as the primary it was restored from."""
    server = primary(cluster)
    return postgres.Server({**server.params, "port": str(instance.port)})


def host_of(cluster: ClusterConfig) -> str:
    return primary(cluster).params.get("host") or "127.0.0.1"


def postmaster_pid(cluster: Host, data_dir: str) -> int | None:
    """The pid in `<data_dir>/postmaster.pid` if that process is alive, else None."""
    path = Path(data_dir) / "postmaster.pid"
    try:
        first = path.read_text().split("\n", 1)[0]
    except PermissionError:
        try:
            first = run(cluster, ["cat", str(path)], what=f"reading {path}", timeout=15).split("\n", 1)[0]
        except ProgramFailed:
            return None
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        pid = int(first.strip())
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return None
    except PermissionError:
        pass  # alive, owned by the account
    return pid


def running_port(cluster: ClusterConfig, data_dir: str) -> int | None:
    """The port of the instance running from `data_dir` (line 4 of postmaster.pid), or None."""
    if postmaster_pid(cluster, data_dir) is None:
        return None
    path = Path(data_dir) / "postmaster.pid"
    try:
        lines = path.read_text().splitlines()
    except PermissionError:
        lines = run(cluster, ["cat", str(path)], what=f"reading {path}", timeout=15).splitlines()
    return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None


def exists(cluster: Host, path: str) -> bool:
    try:
        run(cluster, ["test", "-e", path], what=f"looking for {path}", timeout=15)
    except ProgramFailed:
        return False
    return True


def restore_state(cluster: ClusterConfig, data_dir: str, mark: str) -> str:
    """What the host holds for a restore into `data_dir`, in one call: "restored" (its mark
    is there), "partial" (files, no mark) or "empty" (missing or empty)."""
    script = ('if [ -e "$2" ]; then echo restored; elif [ -d "$1" ] && [ -n "$(ls -A "$1")" ]; then echo partial; '
              'else echo empty; fi')
    return run(cluster, ["sh", "-c", script, "sh", data_dir, mark], what=f"looking at {data_dir}",
               timeout=30).strip()


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port(cluster: ClusterConfig, skip: Collection[int] = ()) -> int:
    """The first port of `restore.ports`, not in `skip`, that nothing listens on."""
    host = host_of(cluster)
    for port in cluster.restore.port_range:
        if port not in skip and not port_in_use(host, port):
            return port
    raise PermanentError(f"every port of restore.ports {cluster.restore.ports} is in use on {host}")


def start_on_a_free_port(cluster: ClusterConfig, data_dir: str, log: str) -> Instance:
    """`start` on the first free port of `restore.ports`. Nothing listening is not the same as
    free: a client's connection can hold the port as its local end (the range may overlap the
    ephemeral ports), or another server can bind it first. So when the port is taken, the next
    one is tried, up to PORT_ATTEMPTS of them."""
    taken: list[int] = []
    while True:
        port = free_port(cluster, taken)
        try:
            return start(cluster, data_dir, port, log)
        except PortTaken:
            taken.append(port)
            if len(taken) == PORT_ATTEMPTS:
                raise


PORT_ATTEMPTS = 5
# PostgreSQL's own words (lc_messages=C) when its listen socket cannot bind: pg_ctl's exit
# status does not tell this apart from any other failed start, only the server's log does.
_ADDRESS_IN_USE = "Address already in use"


def start(cluster: ClusterConfig, data_dir: str, port: int, log: str) -> Instance:
    """pg_ctl start of a restored data directory on `port`, archiving off, its socket beside it.
    Waits while recovery runs, up to `restore.start_timeout`."""
    _inside_restore_dir(cluster, data_dir)
    timeout = cluster.restore.start_timeout.total_seconds()
    options = (f"-p {port} -c archive_mode=off -c unix_socket_directories={Path(data_dir).parent} "
               "-c lc_messages=C")  # English in the log, which start reads when it fails
    try:
        run(cluster, [f"{cluster.pg_bin}/pg_ctl", "-D", data_dir, "-l", log, "-o", options, "-w", "-t",
                      str(int(timeout)), "-s", "start"], what=f"starting the restored instance in {data_dir}",
            timeout=timeout + 30)
    except ProgramFailed as exc:  # pg_ctl says "examine the log output": the log's end is the reason
        tail = log_tail(cluster, log)
        failed = PortTaken if _ADDRESS_IN_USE in tail.rsplit("starting PostgreSQL", 1)[-1] else ProgramFailed
        raise failed(f"starting the restored instance in {data_dir}", exc.code,
                     f"{exc.output}; {log} ends: {tail}") from None
    return Instance(data_dir, port, log)


def log_tail(cluster: Host, log: str, lines: int = 8) -> str:
    try:
        return " | ".join(run(cluster, ["tail", "-n", str(lines), log], what=f"reading {log}",
                              timeout=15).strip().splitlines())
    except (ProgramFailed, TransientError):
        return "(unreadable)"


def wait_accepting(cluster: ClusterConfig, instance: Instance, timeout: float = 60) -> None:
    """Until the instance takes a query (pg_ctl -w returns once it accepts connections, but
    a promotion may still be finishing)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    server = server_of(cluster, instance)
    while time.monotonic() < deadline:
        try:
            with postgres.connect(server, "postgres") as c:
                if not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
        except (TransientError, PermanentError) as exc:
            last = exc
        time.sleep(0.05)
    raise PermanentError(f"the restored instance on port {instance.port} did not finish recovery within "
                         f"{timeout:.0f} s: {scrub(str(last)) if last else 'still in recovery'}")


def stop(cluster: ClusterConfig, data_dir: str) -> bool:
    """Stop the instance running from `data_dir` (fast, then immediate); False if none ran."""
    _inside_restore_dir(cluster, data_dir)
    pid = postmaster_pid(cluster, data_dir)
    if pid is None:
        return False
    for mode in ("fast", "immediate"):
        try:
            run(cluster, [f"{cluster.pg_bin}/pg_ctl", "-D", data_dir, "-m", mode, "-w", "-t", "60", "-s", "stop"],
                what=f"stopping the restored instance in {data_dir}", timeout=90)
            return True
        except (ProgramFailed, TransientError):
            continue
    os.kill(pid, signal.SIGKILL)
    return True


def remove(cluster: ClusterConfig, path: str) -> bool:
    """Remove a restored data directory, and its log and `.restored` mark beside it; False if
    it was not there."""
    _inside_restore_dir(cluster, path)
    if postmaster_pid(cluster, path) is not None:
        raise PermanentError(f"an instance still runs from {path}: stop it before removing it")
    found = exists(cluster, path)
    run(cluster, ["rm", "-rf", "--one-file-system", path, f"{path}.log", f"{path}.restored"], what=f"removing {path}",
        timeout=600)
    return found


def amcheck(cluster: ClusterConfig, instance: Instance) -> tuple[bool, str]:
    """pg_amcheck of every database of the instance (tables and B-tree indexes; the amcheck
    extension is installed where missing, on this copy only). Returns (clean, its output)."""
    env = server_of(cluster, instance).env("postgres")
    argv = [f"{cluster.pg_bin}/pg_amcheck", "--all", "--install-missing", "--no-password",
            f"--jobs={cluster.pgbackrest.process_max}"]
    try:
        out = run(cluster, argv, what="pg_amcheck", timeout=3600, env=env, as_owner=False, clean_env=True)
    except ProgramFailed as exc:
        if exc.code == 2:  # corruption found; 1 is an error running it
            return False, exc.output
        raise
    return True, out.strip()
