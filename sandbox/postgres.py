"""The sandbox's PostgreSQL 15 primary: create the cluster, start it, stop it, check it.

The cluster lives in `<workdir>/pg`, owned by the OS user PostgreSQL runs as
(`postgres` when we are root). It listens on 127.0.0.1 only, on a port picked at
start, with its unix socket inside that directory, so only its owner and root can
use the socket. Over TCP every login needs a SCRAM password.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import psutil
import psycopg
from psycopg import sql

from sandbox.process import (
    as_postgres,
    cmdline,
    pid_alive,
    port_open,
    postgres_account,
    run,
    running_as_root,
    tail,
    wait_until,
)
from tasks.errors import PermanentError

DEFAULT_PG_BIN = Path("/usr/lib/postgresql/15/bin")
TOOLS = ("initdb", "pg_ctl", "postgres", "psql", "pgbench", "pg_dump", "pg_restore")
HOST = "127.0.0.1"
BOOTSTRAP_USER = "postgres"

# pg_hba.conf, whole: the socket (reachable only by the cluster's owner and root) trusts
# the bootstrap superuser; TCP on loopback needs a SCRAM password for everyone.
# The replication lines are there so a streaming replica can be added later.
PG_HBA = """\
# Runbook Flows sandbox (written by sandbox/postgres.py)
# TYPE  DATABASE     USER      ADDRESS        METHOD
local   all          postgres                 trust
local   replication  postgres                 trust
host    all          all       127.0.0.1/32   scram-sha-256
host    replication  all       127.0.0.1/32   scram-sha-256
"""

# Settings for a small, disposable test box that still behaves like a production
# primary: WAL good enough for a replica and base backups, fsync left on.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "100",
    "shared_buffers": "'128MB'",
    "maintenance_work_mem": "'256MB'",
    "wal_level": "replica",
    "max_wal_senders": "5",
    "max_replication_slots": "5",
    "wal_keep_size": "'256MB'",
    "hot_standby": "on",
    "max_wal_size": "'2GB'",
    "fsync": "on",
    "password_encryption": "'scram-sha-256'",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    "lc_messages": "'C'",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
    "log_connections": "off",
    # Continuous archiving with pgBackRest (sandbox/pgbackrest.py): archive_command is added
    # by `set_port`, since it names the work dir's pgbackrest.conf. archive_timeout forces a
    # WAL switch at least once a minute while anything is written, so RPO can be measured.
    "archive_mode": "on",
    "archive_timeout": "60",
}


def pg_bin() -> Path:
    """Where the PostgreSQL 15 programs are: $RUNBOOK_PG_BIN or Debian's directory."""
    path = Path(os.environ.get("RUNBOOK_PG_BIN") or DEFAULT_PG_BIN)
    missing = [t for t in TOOLS if not (path / t).is_file()]
    if missing:
        raise PermanentError(
            f"PostgreSQL 15 programs {', '.join(missing)} are not in {path}; "
            "install them with `make install` (Debian postgresql-15) or set RUNBOOK_PG_BIN"
        )
    return path


def make_cluster_dir(pg_dir: Path) -> None:
    """Create `pg_dir` for the cluster, owned by the PostgreSQL account, mode 0700.

    As root we also prove the account can reach it: a parent dir it cannot enter
    (like /root or pytest's 0700 base dir) would otherwise fail deep inside initdb.
    """
    account = postgres_account()
    pg_dir.mkdir(mode=0o700)
    os.chown(pg_dir, account.pw_uid, account.pw_gid)
    if running_as_root() and not _can_write(pg_dir):
        raise PermanentError(
            f"the OS user {account.pw_name!r} cannot enter {pg_dir}: a parent directory is closed to it "
            "(mode 0700?); put the sandbox under /tmp, e.g. --dir /tmp/runbook-flows-sandbox"
        )


def _can_write(pg_dir: Path) -> bool:
    try:
        run(as_postgres(["test", "-w", str(pg_dir)]), what="checking access", timeout=15)
    except PermanentError:
        return False
    return True


def init_cluster(pg_dir: Path, bin_dir: Path, *, hba: str = PG_HBA, include: str = "sandbox.conf") -> Path:
    """initdb a fresh cluster in `<pg_dir>/data` and write our pg_hba.conf (`hba`) and settings.

    Returns the data directory. The port goes into `include` (see `set_port`; relative
    to the data directory), which postgresql.conf includes, so a port clash can be fixed
    by rewriting it.
    """
    data = pg_dir / "data"
    run(
        as_postgres(
            [
                str(bin_dir / "initdb"),
                "-D", str(data),
                "-U", BOOTSTRAP_USER,
                # Replaced by PG_HBA before the first start; initdb only needs no password
                # for the bootstrap user, who logs in on the socket only.
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--data-checksums",  # like production, and pg_checksums / amcheck drills need them
                "--no-sync",  # a disposable cluster: durability of initdb's own files does not matter
            ]
        ),
        what=f"initdb in {data}",
        cwd=pg_dir,
        timeout=120,
    )
    write_as_owner(data / "pg_hba.conf", hba)
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"\n# Runbook Flows sandbox: settings and port live in {include}\ninclude = {conf_quote(include)}\n")
    return data


def set_port(
    data: Path,
    pg_dir: Path,
    port: int,
    *,
    archive_command: str | None = None,
    settings: Mapping[str, str] = SETTINGS,
    conf_file: Path | None = None,
) -> None:
    """Write sandbox.conf (or `conf_file`): `settings`, the TCP port and the socket directory.

    `archive_command` (a shell command with %p, see pgbackrest.archive_command) is the
    primary's; without it archive_mode stays on and WAL waits in pg_wal until one is set.
    archive_mode needs a restart, so all of this must be in place before the first start."""
    lines = ["# Runbook Flows sandbox (written by sandbox/postgres.py)"]
    lines += [f"{key} = {value}" for key, value in settings.items()]
    if archive_command is not None:
        lines.append(f"archive_command = {conf_quote(archive_command)}")
    lines += [f"port = {port}", f"unix_socket_directories = {conf_quote(str(pg_dir))}"]
    write_as_owner(conf_file or data / "sandbox.conf", "\n".join(lines) + "\n")


def conf_quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def write_as_owner(path: Path, text: str) -> None:
    """Write a config file the cluster's owner can read, whoever we are."""
    account = postgres_account()
    path.write_text(text)
    os.chown(path, account.pw_uid, account.pw_gid)
    path.chmod(0o600)


def start(data: Path, pg_dir: Path, bin_dir: Path, port: int) -> int:
    """Start the server and wait until it accepts connections; returns the postmaster pid.

    On a port clash raises PortInUse so the caller can pick another port.
    """
    log = pg_dir / "postgres.log"
    seen = len(_read(log))  # judge only what this attempt logs
    try:
        run(
            as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-s", "start"]),
            what=f"starting PostgreSQL on {HOST}:{port}",
            cwd=pg_dir,  # the postgres user must be able to enter the cwd
            timeout=90,
            new_session=True,
        )
    except PermanentError as exc:
        text = _read(log)[seen:]
        if "could not bind" in text or "Address already in use" in text:
            raise PortInUse(f"port {port} was taken before PostgreSQL could bind it") from None
        raise PermanentError(f"{exc}\nserver log {log}:\n{tail(text)}") from None
    pid = postmaster_pid(data)
    if pid is None:
        raise PermanentError(f"PostgreSQL started but {data}/postmaster.pid is missing; see {log}")
    return pid


class PortInUse(PermanentError):
    """The port we picked was taken by someone else before our server bound it."""


def create_login_role(pg_dir: Path, port: int, user: str, password: str) -> None:
    """Create the superuser `user` that runbooks log in as, over the socket as the bootstrap user.

    The password goes to the server as a SCRAM verifier computed here, so the
    plain text is never in a statement the server could log.
    """
    with psycopg.connect(host=str(pg_dir), port=port, user=BOOTSTRAP_USER, dbname="postgres", autocommit=True) as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256").decode()
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(sql.Identifier(user), sql.Literal(verifier))
        )


def postmaster_pid(data: Path) -> int | None:
    """The pid in postmaster.pid, if the file is there and names a live postgres process."""
    try:
        first = (data / "postmaster.pid").read_text().splitlines()[0]
        pid = int(first)
    except (OSError, IndexError, ValueError):
        return None
    # A stale file after a crash may name a pid since reused by something else.
    return pid if pid_alive(pid) and "postgres" in cmdline(pid) else None


def stop(
    data: Path, pg_dir: Path, bin_dir: Path | None, port: int | None, *, modes: tuple[str, ...] = ("fast", "immediate")
) -> int | None:
    """Stop the server if it runs; returns the pid it had, None if nothing ran.

    A fast shutdown first (`modes`: pg_ctl's shutdown modes, tried in turn); if that does
    not finish, the postmaster and every process it left get SIGKILL, because `down` must
    leave nothing running.
    """
    pid = postmaster_pid(data)
    if pid is None:
        remove_orphan_shm(data)
        return None
    if bin_dir is not None and (bin_dir / "pg_ctl").is_file():
        for mode in modes:
            try:
                run(
                    as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", mode, "-w", "-t", "30", "-s", "stop"]),
                    what="stopping PostgreSQL",
                    cwd=pg_dir,
                    timeout=45,
                )
                break
            except PermanentError:
                continue
    if pid_alive(pid) and "postgres" in cmdline(pid):
        _kill_with_children(pid)
    wait_until(lambda: not pid_alive(pid), 10)
    if port is not None:
        wait_until(lambda: not port_open(HOST, port), 10)
    remove_orphan_shm(data)
    return pid


def remove_orphan_shm(data: Path) -> None:
    """Remove the cluster's small System V shared memory segment if a crash left it behind.

    A clean shutdown removes it; after a SIGKILL it stays until the same data dir
    starts again, which never happens once `down` deletes the dir. postmaster.pid
    names it (line 7: key and id); we remove it only if that key matches and
    nothing is attached.
    """
    try:
        key_id = (data / "postmaster.pid").read_text().splitlines()[6].split()
        key, shmid = int(key_id[0]), int(key_id[1])
        # psutil has no view of System V IPC; this is the kernel's own table of segments.
        rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except (OSError, IndexError, ValueError):
        return
    for row in rows:
        cols = row.split()
        if len(cols) > 6 and cols[0] == str(key) and cols[1] == str(shmid) and cols[6] == "0":
            try:
                subprocess.run(["ipcrm", "-m", str(shmid)], capture_output=True, check=False, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass  # a 56-byte leak is not worth failing `down` over


def _kill_with_children(pid: int) -> None:
    """SIGKILL the postmaster and the backends it forked. psutil checks that each pid still
    names the process it listed, so a pid the kernel reused meanwhile is spared."""
    try:
        postmaster = psutil.Process(pid)
        family = [postmaster, *postmaster.children()]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def check(conninfo: str, timeout: float = 3) -> str:
    """One line on a running server (version and database sizes); raises if it does not answer."""
    with psycopg.connect(conninfo, connect_timeout=max(1, int(timeout)), autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        rows = conn.execute(
            "SELECT datname, pg_database_size(datname) FROM pg_database "
            "WHERE NOT datistemplate AND datname <> 'postgres' ORDER BY datname"
        ).fetchall()
    sizes = ", ".join(f"{name} {size / 2**20:.0f} MB" for name, size in rows) or "no databases"
    return f"PostgreSQL {version}; {sizes}"
