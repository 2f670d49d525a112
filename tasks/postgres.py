"""PostgreSQL: connections with psycopg 3, and the client tools pg_dump and pg_restore.

Passwords never go on a command line: the tools get the connection through libpq
environment variables (PGPASSWORD among them) in the child's environment only, and any
text that comes back is scrubbed of secrets before it is raised or logged.

psycopg errors are classified by SQLSTATE, never by message text: class 08 (connection),
57P01-57P03 (shutdown) and 53xxx (resources) are transient; 28xxx (auth) and 3D000
(no such database) are permanent. libpq gives no SQLSTATE for a failed connection, so
there a probe decides: nobody listening is transient, a server that refuses is permanent.
The client tools report only text (translated, at that): when pg_restore fails, the
server's own counters (`sessions_killed`) and the same probe say whether it lost its
connection.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tasks.config import DatabaseConfig
from tasks.errors import CheckFailed, ConfigError, PermanentError, TransientError
from tasks.redact import scrub

CONNECT_TIMEOUT_S = 10  # libpq's default is to wait forever on a silent network
PROBE_TIMEOUT_S = 3.0  # is anything listening where the server should be
SESSIONS_END_WAIT_S = 5.0  # for a client tool's sessions to end after the tool exited

_LIBPQ_ENV = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME",
    "options": "PGOPTIONS",
}


@dataclass(frozen=True)
class Server:
    """Where a database lives: connection parameters, with the password kept out of repr."""

    params: dict[str, str]

    @classmethod
    def from_dsn(cls, dsn: str) -> Server:
        try:
            params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
        except psycopg.ProgrammingError:
            raise ConfigError("the DSN is not a valid libpq connection string or URI") from None
        params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
        params.setdefault("application_name", "runbook-flows")
        return cls(params)

    def __repr__(self) -> str:
        return f"Server(host={self.params.get('host')!r}, port={self.params.get('port')!r})"

    def describe(self) -> str:
        return f"{self.params.get('host', 'localhost')}:{self.params.get('port', '5432')}"

    def with_db(self, dbname: str) -> dict[str, str]:
        return {**self.params, "dbname": dbname}

    def env(self, dbname: str) -> dict[str, str]:
        """A child environment carrying the connection, for pg_dump and pg_restore."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        for key, value in self.with_db(dbname).items():
            if key in _LIBPQ_ENV:
                env[_LIBPQ_ENV[key]] = value
        return env


def server_for(db: DatabaseConfig, *, scratch: bool = False) -> Server:
    """The server a database lives on, its DSN resolved now: once per task, so a rotated
    password is picked up by the next step. With `scratch`, the server its scratch restores
    go to: `restore_test.dsn` if set, else its own."""
    ref = (db.restore_test.dsn or db.dsn) if scratch else db.dsn
    return Server.from_dsn(ref.resolve())


def classify(exc: BaseException) -> BaseException:
    """Turn a psycopg error into TransientError or PermanentError by its SQLSTATE."""
    if not isinstance(exc, psycopg.Error):
        return exc
    state = exc.sqlstate or ""
    text = scrub(str(exc).strip())
    if state.startswith("28"):
        return PermanentError(f"authentication refused ({state}): {text}")
    if state == "3D000":
        return PermanentError(f"database does not exist: {text}")
    if state == "42501":
        return PermanentError(f"permission denied: {text}")
    if not state or state.startswith(("08", "53", "57P")) or state == "40001":
        if isinstance(exc, psycopg.OperationalError) or state:
            return TransientError(f"database connection problem ({state or 'no SQLSTATE'}): {text}")
    return PermanentError(f"database error ({state}): {text}")


def server_answers(server: Server, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether anything listens where the server should be (TCP port or unix socket)."""
    host = server.params.get("host") or server.params.get("hostaddr") or "localhost"
    port = int(server.params.get("port") or 5432)
    for h in host.split(","):
        try:
            if h.startswith("/"):
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(timeout)
                    s.connect(f"{h}/.s.PGSQL.{port}")
            else:
                socket.create_connection((h, port), timeout=timeout).close()
            return True
        except OSError:
            continue
    return False


def classify_connect_error(server: Server, dbname: str, exc: psycopg.Error) -> BaseException:
    """libpq reports connection failures without a SQLSTATE. Tell them apart by probing:
    nothing listening is transient (server down, restarting, network); a server that
    answers and refuses the session (auth, pg_hba, missing database) is permanent."""
    if exc.sqlstate:
        return classify(exc)
    text = scrub(str(exc).strip())
    if not server_answers(server):
        return TransientError(f"database server {server.describe()} does not answer: {text}")
    return PermanentError(f"database server {server.describe()} refused a session on {dbname!r}: {text}")


@contextlib.contextmanager
def connect(server: Server, dbname: str, autocommit: bool = True) -> Iterator[psycopg.Connection[Any]]:
    try:
        conn = psycopg.connect(**server.with_db(dbname), autocommit=autocommit)
    except psycopg.Error as exc:
        raise classify_connect_error(server, dbname, exc) from None
    try:
        with conn:
            yield conn
    except psycopg.Error as exc:
        raise classify(exc) from None


# --- facts ----------------------------------------------------------------------------------


def server_version_num(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return int(row[0])


def major_of(version_num: int) -> int:
    return version_num // 10000


def find_tool(name: str, server_major: int | None = None) -> str:
    """The client tool to use: PG_BIN_DIR if set, else the server's major version's
    Debian directory, else the newest under /usr/lib/postgresql, else PATH."""
    candidates: list[Path] = []
    if os.environ.get("PG_BIN_DIR"):
        candidates.append(Path(os.environ["PG_BIN_DIR"]) / name)
    base = Path("/usr/lib/postgresql")
    if server_major is not None:
        candidates.append(base / str(server_major) / "bin" / name)
    if base.is_dir():
        versions = sorted((p for p in base.iterdir() if p.name.isdigit()), key=lambda p: int(p.name), reverse=True)
        candidates.extend(v / "bin" / name for v in versions)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which(name)
    if not found:
        raise PermanentError(f"{name} not found: install postgresql-client or set PG_BIN_DIR")
    return found


def tool_major(path: str) -> int:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    if not m:
        raise PermanentError(f"cannot read the version of {path}: {out.strip()!r}")
    return int(m.group(1))


def user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r'
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, 2
        """
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Exact row count of every user table (ONLY: no double counting of inheritance)."""
    counts: dict[str, int] = {}
    for schema, table in user_tables(conn):
        q = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        row = conn.execute(q).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def count_rows(server: Server, dbname: str, snapshot_id: str) -> dict[str, int]:
    """Exact row counts as of an exported snapshot, on a connection of their own, so that
    they can be counted while pg_dump reads the same snapshot."""
    with connect(server, dbname, autocommit=False) as conn:
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_id)))
            counts = row_counts(conn)
        except psycopg.Error as exc:
            raise classify(exc) from None
        conn.rollback()
        return counts


def table_stats(conn: psycopg.Connection[Any]) -> tuple[dict[str, int], dict[str, int]]:
    """Every user table's size in bytes, and its planner row estimate (pg_class.reltuples),
    by schema.table: free to read, for a dump's progress."""
    rows = conn.execute(
        """
        SELECT n.nspname || '.' || c.relname, pg_table_size(c.oid), greatest(c.reltuples, 0)::bigint
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg_toast%'
        """
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}, {r[0]: int(r[2]) for r in rows}


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    lsn: str
    taken_at: str  # ISO timestamp from the server's now()
    row_estimates: dict[str, int]  # pg_class.reltuples, for progress; `count_rows` gives exact counts
    table_sizes: dict[str, int]
    server_version: int
    database_size: int


@contextlib.contextmanager
def exported_snapshot(server: Server, dbname: str) -> Iterator[Snapshot]:
    """Hold a REPEATABLE READ transaction open with an exported snapshot. The LSN and now()
    are read inside it, so pg_dump --snapshot sees exactly that state, and so does
    `count_rows` with the snapshot's id."""
    with connect(server, dbname, autocommit=False) as conn:
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snap_row = conn.execute(
                "SELECT pg_export_snapshot(), "
                "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, "
                "now(), pg_database_size(current_database())"
            ).fetchone()
            assert snap_row is not None
            sizes, estimates = table_stats(conn)
            snapshot = Snapshot(
                snapshot_id=snap_row[0],
                lsn=str(snap_row[1]),
                taken_at=snap_row[2].isoformat(),
                row_estimates=estimates,
                table_sizes=sizes,
                server_version=server_version_num(conn),
                database_size=int(snap_row[3]),
            )
        except psycopg.Error as exc:
            raise classify(exc) from None
        yield snapshot
        conn.rollback()


# --- databases ---------------------------------------------------------------------------------


def create_database(server: Server, name: str, like: str | None = None) -> None:
    """Create an empty database; with `like`, owned by that database's owner, with its encoding
    and locale, so it can take that database's place."""
    with connect(server, "postgres") as conn:
        if like is None:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
            return
        row = conn.execute(
            "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype "
            "FROM pg_database WHERE datname = %s", (like,)).fetchone()
        if row is None:
            raise PermanentError(f"database {like!r} does not exist on {server.describe()}")
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 OWNER {} ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            sql.Identifier(name), sql.Identifier(row[0]), sql.Literal(row[1]), sql.Literal(row[2]), sql.Literal(row[3])))


def drop_database(server: Server, name: str) -> bool:
    """Drop a database, terminating its sessions. True if it existed."""
    with connect(server, "postgres") as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if row is None:
            return False
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        return True


def database_exists(server: Server, name: str) -> bool:
    with connect(server, "postgres") as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def sessions_killed(server: Server, dbname: str, app_name: str | None = None,
                    wait: float = SESSIONS_END_WAIT_S) -> int | None:
    """How many sessions of `dbname` the server has terminated by an operator's command
    (pg_terminate_backend, a fast shutdown: SQLSTATE 57P01), from pg_stat_database. It is
    the server's own account of why a session ended, where a client tool's exit gives only
    translated text. With `app_name`, first waits (up to `wait` s) for that application's
    sessions to end: a backend counts itself only as it exits. None before PostgreSQL 14
    or when there is no such database."""
    with connect(server, "postgres") as conn:
        if server_version_num(conn) < 140000:
            return None
        deadline = time.monotonic() + wait
        while app_name and time.monotonic() < deadline and conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (app_name,)).fetchone():
            time.sleep(0.05)
        row = conn.execute("SELECT sessions_killed FROM pg_stat_database WHERE datname = %s", (dbname,)).fetchone()
    return None if row is None else int(row[0])


def list_databases(server: Server, like: str) -> list[str]:
    with connect(server, "postgres") as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", (like,)).fetchall()
    return [r[0] for r in rows]


def amcheck_indexes(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Run amcheck's bt_index_check on every valid B-tree index; index -> 'ok' or the error."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    rows = conn.execute(
        """
        SELECT c.oid, n.nspname || '.' || c.relname
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_am am ON am.oid = c.relam
        WHERE am.amname = 'btree' AND i.indisvalid AND i.indisready
          AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
        ORDER BY 2
        """
    ).fetchall()
    results: dict[str, str] = {}
    for oid, name in rows:
        try:
            conn.execute("SELECT bt_index_check(%s::regclass, true)", (oid,))
            results[name] = "ok"
        except psycopg.Error as exc:
            if exc.sqlstate and exc.sqlstate.startswith("08"):
                raise classify(exc) from None
            results[name] = scrub(str(exc).strip())
    return results


def first_value(conn: psycopg.Connection[Any], query: str) -> Any:
    """Run a read-only smoke query and return its first column of its first row."""
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            row = conn.execute(query).fetchone()  # type: ignore[arg-type]
    except psycopg.Error as exc:
        if exc.sqlstate and exc.sqlstate.startswith("08"):
            raise classify(exc) from None
        raise CheckFailed(scrub(str(exc).strip())) from None
    return None if row is None else row[0]


# --- sessions and renames (restore by swap) ---------------------------------------------------


def database_oid(server: Server, name: str) -> int | None:
    """The database's oid, None if there is no such database. A rename keeps the oid, so it
    tells which database carries a name after a swap."""
    with connect(server, "postgres") as conn:
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return None if row is None else int(row[0])


def _terminate(conn: psycopg.Connection[Any], names: tuple[str, ...]) -> int:
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
        (list(names),),
    ).fetchall()
    return sum(1 for r in rows if r[0])


def terminate_connections(server: Server, dbname: str) -> int:
    """pg_terminate_backend on every session of `dbname` but our own; returns how many.
    Needs superuser or the pg_signal_backend role (and superuser for superusers' sessions)."""
    with connect(server, "postgres") as conn:
        return _terminate(conn, (dbname,))


def _allow_connections(conn: psycopg.Connection[Any], names: tuple[str, ...], allowed: bool) -> None:
    for name in names:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if allowed else "false")))


def swap_databases(server: Server, live: str, replacement: str, keep_as: str, attempts: int = 3) -> int:
    """Put `replacement` in the place of `live`, which is kept as `keep_as`.

    Both renames run in one transaction: either both happen or neither, so a failure
    between them cannot leave the server without a database named `live`. A rename needs
    the database unused: new sessions to both are refused first (ALLOW_CONNECTIONS false),
    then the remaining ones are terminated. The renaming transaction allows connections
    again; a failed swap allows them again before it raises. Returns the sessions terminated.
    Needs the databases' owner (or superuser) with CREATEDB, and the rights of
    `terminate_connections`."""
    names = (live, replacement)
    terminated = 0
    with connect(server, "postgres") as conn:
        try:
            _allow_connections(conn, names, False)
            for attempt in range(1, attempts + 1):
                terminated += _terminate(conn, names)
                try:
                    with conn.transaction():
                        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(live), sql.Identifier(keep_as)))
                        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(replacement), sql.Identifier(live)))
                        _allow_connections(conn, (live, keep_as), True)
                    return terminated
                except psycopg.errors.ObjectInUse:
                    # A session that connected before ALLOW_CONNECTIONS took effect, and
                    # outlived the 5 s PostgreSQL waits for it: terminate again.
                    if attempt == attempts:
                        raise
        except psycopg.Error as exc:
            error = classify(exc)
            try:
                _allow_connections(conn, names, True)  # rolled back: the names are as before
            except psycopg.Error as again:
                error.add_note(f"and allowing connections to {live!r} and {replacement!r} again failed: "
                               f"{scrub(str(again).strip())}")
            raise error from None
    raise AssertionError("unreachable")


# --- the WAL archive and recovery markers (physical backups) -----------------------------------------

HEARTBEAT_TABLE = "runbook_heartbeat"  # one row per heartbeat: the markers a PITR is checked against


def archiver_status(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """`pg_stat_archiver`, with the WAL file being written now."""
    row = conn.execute(
        "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, "
        "last_failed_time, pg_walfile_name(pg_current_wal_lsn()) FROM pg_stat_archiver").fetchone()
    keys = ("archived_count", "last_archived_wal", "last_archived_time", "failed_count", "last_failed_wal",
            "last_failed_time", "current_wal")
    return dict(zip(keys, row, strict=True))


def switch_wal(conn: psycopg.Connection[Any]) -> str | None:
    """Close the current WAL segment if it holds anything, so it gets archived now; the name
    of the segment closed, None when there was nothing to close."""
    before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    switched = conn.execute("SELECT pg_switch_wal()").fetchone()[0]
    if str(switched) == str(before) and str(before).endswith("000000"):
        return None  # at a segment boundary already
    return str(conn.execute("SELECT pg_walfile_name(%s::pg_lsn)", (switched,)).fetchone()[0])


def write_heartbeat(conn: psycopg.Connection[Any]) -> datetime:
    """One marker row, committed now; returns its time (the commit's, near enough)."""
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (at timestamptz PRIMARY KEY DEFAULT clock_timestamp(), "
                         "note text)").format(sql.Identifier(HEARTBEAT_TABLE)))
    return conn.execute(sql.SQL("INSERT INTO {} DEFAULT VALUES RETURNING at").format(
        sql.Identifier(HEARTBEAT_TABLE))).fetchone()[0]


def newest_heartbeat(conn: psycopg.Connection[Any], at_or_before: datetime | None = None) -> datetime | None:
    """The newest marker (at or before a time); None if there is none, or no table."""
    if conn.execute("SELECT to_regclass(%s)", (HEARTBEAT_TABLE,)).fetchone()[0] is None:
        return None
    query = sql.SQL("SELECT max(at) FROM {}").format(sql.Identifier(HEARTBEAT_TABLE))
    if at_or_before is None:
        return conn.execute(query).fetchone()[0]
    return conn.execute(query + sql.SQL(" WHERE at <= %s"), (at_or_before,)).fetchone()[0]


def last_replayed(conn: psycopg.Connection[Any]) -> datetime | None:
    """The commit time of the last transaction replayed in recovery (static once promoted)."""
    return conn.execute("SELECT pg_last_xact_replay_timestamp()").fetchone()[0]


def list_all_databases(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname")]


def wait_archived(conn: psycopg.Connection[Any], walfile: str | None, timeout: float) -> float | None:
    """Seconds until `walfile` was archived; None when the archiver failed on it (or on one
    before it) or did not get to it within `timeout`. None for `walfile` None at once."""
    if walfile is None:
        return None
    started = time.monotonic()
    failed_before = conn.execute("SELECT last_failed_time FROM pg_stat_archiver").fetchone()[0]
    while time.monotonic() - started < timeout:
        archived, failed_at = conn.execute(
            "SELECT last_archived_wal, last_failed_time FROM pg_stat_archiver").fetchone()
        if archived is not None and archived[8:] >= walfile[8:]:
            return round(time.monotonic() - started, 3)
        if failed_at is not None and failed_at != failed_before:
            return None
        time.sleep(0.1)
    return None
