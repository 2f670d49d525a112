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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tasks.config import DatabaseConfig
from tasks.errors import CheckFailed, ConfigError, PermanentError, TransientError
from tasks.redact import MASK, scrub

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


def write_and_read(srv: Server, database: str) -> dict[str, Any]:
    """One write and its read back, through the server: a heartbeat row."""
    with connect(srv, database) as conn:
        written = write_heartbeat(conn)
        read = newest_heartbeat(conn)
        recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    if read != written or recovery:
        raise CheckFailed(f"write and read on {srv.describe()}/{database}: wrote {written}, read {read}"
                          f"{' (in recovery)' if recovery else ''}")
    return {"written": written.isoformat(), "server": srv.describe(), "database": database}


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


# --- routine maintenance: vacuum, reindex, stuck sessions ---------------------------------------

QUERY_TEXT_CHARS = 200  # of a session's query text, in a report
# Indexes a concurrent reindex leaves behind when it is interrupted (crash, cancel, a failed
# build): the transient copy is `<index>_ccnew[N]`, the original after the swap `<index>_ccold[N]`.
_REINDEX_LEFTOVER = re.compile(r"_cc(new|old)[0-9]*$")
# Password literals in query text (ALTER ROLE ... PASSWORD '...', a conninfo's password=...),
# which no SecretRef knows about; a literal cut short by track_activity_query_size has no
# closing quote, and is masked to the end.
_QUOTED_PASSWORD = re.compile(r"(?i)(\bpassword\b(?:\s+|\s*=\s*))E?'(?:[^']|'')*(?:'|$)")
_BARE_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)[^\s',)]+")


def _need_autocommit(conn: psycopg.Connection[Any], what: str) -> None:
    if not conn.autocommit:
        raise ConfigError(f"{what} cannot run inside a transaction block: use a connection from "
                          "connect(server, dbname), which is in autocommit mode")


def _table_identifier(name: str) -> sql.Identifier:
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ConfigError(f"table {name!r}: give schema.table (or table, found through the search_path), "
                          "unquoted, as the catalog spells it")
    return sql.Identifier(*parts)


def _dead_tuples(conn: psycopg.Connection[Any], relids: list[int] | None) -> tuple[int, int]:
    """(tables, their n_dead_tup sum) from pg_stat_user_tables: these tables, or all."""
    row = conn.execute(
        "SELECT count(*), coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables "
        "WHERE %(relids)s::oid[] IS NULL OR relid = ANY(%(relids)s::oid[])", {"relids": relids}).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def vacuum_analyze(conn: psycopg.Connection[Any], tables: Sequence[str] | None = None) -> dict[str, Any]:
    """VACUUM (ANALYZE) the given tables ("schema.table"), or with None the whole database.

    Returns {"tables", "seconds", "dead_tuples_before", "dead_tuples_after"}: the dead tuples
    are pg_stat_user_tables' n_dead_tup summed over the tables (over every user table for
    the whole database), an estimate the statistics system keeps. A table that does not
    exist is a ConfigError, raised before anything is vacuumed."""
    _need_autocommit(conn, "VACUUM")
    relids: list[int] | None = None
    targets: list[sql.Identifier] = []
    if tables is not None:
        if isinstance(tables, str) or not tables:
            raise ConfigError(f"tables {tables!r}: give a list of schema.table names, or None for the whole database")
        targets = [_table_identifier(name) for name in tables]
        found = [conn.execute("SELECT to_regclass(%s)::oid", (t.as_string(conn),)).fetchone() for t in targets]
        missing = [name for name, row in zip(tables, found, strict=True) if row is None or row[0] is None]
        if missing:
            db = conn.info.dbname
            raise ConfigError(f"no such table in database {db!r}: {', '.join(map(repr, missing))}")
        relids = [int(row[0]) for row in found if row is not None]
    count, before = _dead_tuples(conn, relids)
    started = time.monotonic()
    statement = sql.SQL("VACUUM (ANALYZE)")
    if targets:
        statement = statement + sql.SQL(" ") + sql.SQL(", ").join(targets)
    conn.execute(statement)
    seconds = round(time.monotonic() - started, 3)
    _, after = _dead_tuples(conn, relids)
    return {"tables": count, "seconds": seconds, "dead_tuples_before": before, "dead_tuples_after": after}


@dataclass(frozen=True)
class _Index:
    schema: str
    name: str
    filenode: int | None
    valid: bool
    exclusion: bool

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


def _user_indexes(conn: psycopg.Connection[Any]) -> dict[str, _Index]:
    """Every index (with storage: no partitioned parents) in the database's user schemas."""
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname, pg_relation_filenode(c.oid), i.indisvalid, i.indisexclusion
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'i' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
        ORDER BY 1, 2
        """
    ).fetchall()
    indexes = [_Index(r[0], r[1], r[2], r[3], r[4]) for r in rows]
    return {i.qualified: i for i in indexes}


def _drop_reindex_leftovers(conn: psycopg.Connection[Any], concurrently: bool) -> list[str]:
    """Drop the invalid `_ccnew`/`_ccold` indexes an interrupted REINDEX CONCURRENTLY left
    behind (what a crash or a cancel leaves): PostgreSQL's own advice is to drop them
    (https://www.postgresql.org/docs/15/sql-reindex.html, "Rebuilding Indexes
    Concurrently"). Left in place, a later REINDEX CONCURRENTLY skips them, a plain one
    rebuilds them into duplicates, and every write keeps maintaining them. Tables with an
    index build in progress are left alone: their `_ccnew` is being built right now."""
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT i.indisvalid AND c.relname ~ '_cc(new|old)[0-9]*$'
          AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
          AND i.indrelid NOT IN (SELECT relid FROM pg_stat_progress_create_index)
        ORDER BY 1, 2
        """
    ).fetchall()
    dropped = []
    for schema, name in rows:
        assert _REINDEX_LEFTOVER.search(name)
        conn.execute(sql.SQL("DROP INDEX {} IF EXISTS {}").format(
            sql.SQL("CONCURRENTLY") if concurrently else sql.SQL(""), sql.Identifier(schema, name)))
        dropped.append(f"{schema}.{name}")
    return dropped


def reindex(conn: psycopg.Connection[Any], concurrently: bool = True) -> dict[str, Any]:
    """Rebuild the indexes of the current database's user schemas, schema by schema.

    First drops the invalid leftovers of an interrupted concurrent reindex. With
    `concurrently`, each schema gets REINDEX SCHEMA CONCURRENTLY, which blocks no reads or
    writes; a schema for which the server refuses it (FeatureNotSupported) gets a plain
    REINDEX SCHEMA instead, and is listed in `fallbacks`. A concurrent reindex skips
    invalid indexes and exclusion-constraint indexes: they are listed in `not_rebuilt`,
    with the reason. A plain reindex (`concurrently=False`, or a fallback) blocks writes to
    each table while its indexes are rebuilt, and rebuilds invalid indexes too; a unique
    one over duplicate rows makes it fail (PermanentError naming the schema).

    Returns {"schemas": [names], "indexes": rebuilt count, "seconds", "concurrently",
    "fallbacks": [{"schema", "reason"}], "leftovers_dropped": ["schema.index"],
    "not_rebuilt": [{"index", "reason"}]}. An index counts as rebuilt when its storage
    (pg_relation_filenode) changed."""
    _need_autocommit(conn, "REINDEX CONCURRENTLY" if concurrently else "REINDEX")
    started = time.monotonic()
    dropped = _drop_reindex_leftovers(conn, concurrently)
    before = _user_indexes(conn)
    schemas = sorted({i.schema for i in before.values()})
    fallbacks: list[dict[str, str]] = []
    for schema in schemas:
        if concurrently:
            try:
                conn.execute(sql.SQL("REINDEX SCHEMA CONCURRENTLY {}").format(sql.Identifier(schema)))
                continue
            except psycopg.errors.FeatureNotSupported as exc:
                reason = exc.diag.message_primary or str(exc)
                fallbacks.append({"schema": schema, "reason": scrub(reason.strip())})
        try:
            conn.execute(sql.SQL("REINDEX SCHEMA {}").format(sql.Identifier(schema)))
        except psycopg.Error as exc:
            if exc.sqlstate and exc.sqlstate.startswith(("08", "53", "57P")):
                raise classify(exc) from None
            # The primary message only: its DETAIL quotes the duplicated key, which is data.
            raise PermanentError(f"REINDEX SCHEMA {schema!r} failed ({exc.sqlstate}): "
                                 f"{scrub((exc.diag.message_primary or str(exc)).strip())}") from None
    if fallbacks:  # a refused concurrent attempt may have left its own leftovers
        dropped += _drop_reindex_leftovers(conn, concurrently=False)
    after = _user_indexes(conn)
    rebuilt = [name for name, i in before.items() if name in after and after[name].filenode != i.filenode]
    not_rebuilt = []
    for name, index in before.items():
        if name in rebuilt or name not in after:
            continue
        if not index.valid:
            reason = "invalid (a failed CREATE INDEX CONCURRENTLY?): drop it, or rebuild it with REINDEX INDEX"
        elif index.exclusion:
            reason = "exclusion constraint: REINDEX CONCURRENTLY cannot rebuild it; a plain reindex can"
        else:
            reason = "not rebuilt (not owned by this role?)"
        not_rebuilt.append({"index": name, "reason": reason})
    return {
        "schemas": schemas,
        "indexes": len(rebuilt),
        "seconds": round(time.monotonic() - started, 3),
        "concurrently": concurrently,
        "fallbacks": fallbacks,
        "leftovers_dropped": dropped,
        "not_rebuilt": not_rebuilt,
    }


@dataclass(frozen=True)
class StuckSession:
    """A client session whose transaction (or, outside one, query) has run too long."""

    pid: int
    user: str | None
    database: str | None
    application: str
    state: str
    age_seconds: float
    query: str  # scrubbed of secrets and password literals, whitespace collapsed, cut short


def _mask_passwords(text: str) -> str:
    text = _QUOTED_PASSWORD.sub(lambda m: f"{m.group(1)}'{MASK}'", text)
    return _BARE_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}", text)


def query_text(text: str | None, limit: int = QUERY_TEXT_CHARS) -> str:
    """A session's query text fit for a report: secrets out first (before the text is cut,
    which could halve a secret and hide it from the scrubber), then whitespace collapsed."""
    clean = _mask_passwords(scrub(text or ""))
    return " ".join(clean.split())[:limit]


def stuck_sessions(conn: psycopg.Connection[Any], older_than: timedelta,
                   dbname: str | None = None) -> list[StuckSession]:
    """Client sessions, our own excepted, that are active or idle in a transaction, whose
    transaction (outside one: query) started more than `older_than` ago; in `dbname` only,
    if given. Oldest first. Other roles' sessions show only to a superuser or a member of
    pg_read_all_stats: to anyone else they have no state, and are not listed."""
    rows = conn.execute(
        """
        SELECT pid, usename, datname, coalesce(application_name, ''), state,
               extract(epoch FROM clock_timestamp() - coalesce(xact_start, query_start)), query
        FROM pg_stat_activity
        WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
          AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')
          AND coalesce(xact_start, query_start) < clock_timestamp() - %(older_than)s::interval
          AND (%(dbname)s::text IS NULL OR datname = %(dbname)s::text)
        ORDER BY 6 DESC, pid
        """,
        {"older_than": older_than, "dbname": dbname},
    ).fetchall()
    return [StuckSession(pid=int(r[0]), user=r[1], database=r[2], application=r[3], state=r[4],
                         age_seconds=round(float(r[5]), 3), query=query_text(r[6])) for r in rows]


def terminate_sessions(conn: psycopg.Connection[Any], pids: Sequence[int],
                       wait: float = SESSIONS_END_WAIT_S) -> list[int]:
    """pg_terminate_backend each client session of `pids`, and wait (up to `wait` s) for them
    to end; returns those that ended, in the order given. A pid that is no longer a client
    session (ended already, or never was one: a background worker, our own session) is
    skipped. Needs superuser or pg_signal_backend (superuser for superusers' sessions)."""
    _need_autocommit(conn, "waiting for sessions to end")  # each poll needs a fresh pg_stat_activity
    wanted = [int(p) for p in pids]
    if not wanted:
        return []
    # Chosen first, signalled after: in one WHERE clause the planner may call
    # pg_terminate_backend before the filters, on our own session too.
    candidates = [int(r[0]) for r in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s) AND pid <> pg_backend_pid() "
        "AND backend_type = 'client backend'", (wanted,)).fetchall()]
    signalled = {pid for pid in candidates
                 if conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)}
    deadline = time.monotonic() + wait
    alive = signalled
    while alive:
        alive = {int(r[0]) for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (list(alive),)).fetchall()}
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return [p for p in dict.fromkeys(wanted) if p in signalled and p not in alive]
