"""Schema migrations, the database half: the history table, the one-at-a-time lock and
applying a migration, in thin psycopg through `tasks.postgres.connect`. What to apply,
in which order, and when to refuse is decided in `tasks.migration_plan`; this module
reads the history it needs and carries out one migration at a time.

The history is `public.runbook_schema_history`: version, description, script, checksum,
transactional, applied_at, applied_by, duration_ms, success, flow_run_id. A
transactional file's row is written in its transaction; a no-transaction file that
fails part-way gets a row with `success = false`.

One migration at a time per database: a session-level `pg_try_advisory_lock` on
`LOCK_KEY`, held by its own connection for the whole run (backup included). A second run
does not wait: it fails at once with PolicyRefused, naming the session that holds the
lock. Waiting would queue it behind a backup that may take hours, then run it against a
schema its operator did not plan for; failing tells them at once, and a re-run later
applies only what is still pending.

A failure is TransientError only when a retry may pass (`is_retryable`: it looks at the
SQLSTATE and psycopg's error class), otherwise PermanentError; the message comes from
`migration_plan.failure_message`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from tasks import postgres
from tasks.errors import PermanentError, PolicyRefused, RunbookError, TransientError
from tasks.migration_plan import HISTORY_TABLE, Applied, HistoryRow, Migration, Statement, failure_message
from tasks.redact import scrub

# pg_try_advisory_lock(bigint) key: the first 8 bytes of sha256("runbook-flows:migrate"),
# kept positive. Advisory locks are per database, so one key serves every database.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"runbook-flows:migrate").digest()[:8], "big") >> 1
# SQLSTATEs after which a transactional migration, rolled back whole, may pass on a retry:
# lock_not_available (lock_timeout), deadlock_detected, serialization_failure.
RETRYABLE_STATES = ("55P03", "40P01", "40001")


# --- which failures a retry may pass ------------------------------------------------------------


def is_retryable(m: Migration, exc: psycopg.Error) -> bool:
    """A transactional migration rolled back whole by a lock timeout, deadlock or lost
    connection may pass on a retry; a non-transactional one is never retried on its own."""
    if not m.transactional:
        return False
    return (exc.sqlstate or "") in RETRYABLE_STATES or isinstance(postgres.classify(exc), TransientError)


# --- the database side ----------------------------------------------------------------------------


_HISTORY_DDL = f"""
CREATE TABLE IF NOT EXISTS public.{HISTORY_TABLE} (
    version        integer PRIMARY KEY,
    description    text NOT NULL,
    script         text NOT NULL,
    checksum       text NOT NULL,
    transactional  boolean NOT NULL,
    applied_at     timestamptz NOT NULL DEFAULT now(),
    applied_by     text NOT NULL DEFAULT current_user,
    duration_ms    integer NOT NULL,
    success        boolean NOT NULL,
    flow_run_id    text
);
COMMENT ON TABLE public.{HISTORY_TABLE} IS 'Schema migrations applied by runbook-flows (migrate-database)'
"""


def history_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{HISTORY_TABLE}",)).fetchone()
    return bool(row and row[0])


def read_history(conn: psycopg.Connection[Any]) -> list[HistoryRow]:
    """The history rows, oldest version first; none when the table does not exist yet."""
    if not history_exists(conn):
        return []
    rows = conn.execute(
        f"SELECT version, description, script, checksum, transactional, applied_at, duration_ms, success "
        f"FROM public.{HISTORY_TABLE} ORDER BY version"
    ).fetchall()
    return [HistoryRow(*r) for r in rows]


def ensure_history_table(conn: psycopg.Connection[Any]) -> bool:
    """Create the history table if missing; True if it was created."""
    if history_exists(conn):
        return False
    conn.execute(_HISTORY_DDL)
    return True


def _record(conn: psycopg.Connection[Any], m: Migration, duration_ms: int, success: bool, run_id: str | None) -> None:
    conn.execute(
        f"INSERT INTO public.{HISTORY_TABLE} (version, description, script, checksum, transactional, duration_ms, "
        "success, flow_run_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (m.version, m.description, m.file, m.checksum, m.transactional, duration_ms, success, run_id),
    )


def invalid_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    """Indexes a failed CREATE INDEX CONCURRENTLY leaves behind (indisvalid = false)."""
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def _ms(d: timedelta) -> str:
    return f"{int(d.total_seconds() * 1000)}ms"


@dataclass
class LockHolder:
    """Who holds the migration lock, for the refusal message."""

    pid: int | None = None
    application: str = ""
    since: datetime | None = None
    client: str = ""

    def describe(self) -> str:
        if self.pid is None:
            return "a session that has since let go (try again)"
        since = f", connected since {self.since:%Y-%m-%d %H:%M:%S %Z}" if self.since else ""
        return f"backend pid {self.pid} ({self.application or 'no application_name'}{since}{self.client})"


@contextmanager
def advisory_lock(server: postgres.Server, dbname: str, holder: str) -> Iterator[None]:
    """Hold the migration lock of `dbname` for the block, on a connection of its own whose
    application_name is `holder` (so a refused run can say who holds it). Raises
    PolicyRefused at once when another session holds it."""
    named = postgres.Server({**server.params, "application_name": holder[:63]})
    with postgres.connect(named, dbname) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        if not (row and row[0]):
            other = lock_holder(conn)
            raise PolicyRefused(f"another migration of database {dbname!r} is running: the migration lock is "
                                f"held by {other.describe()}; nothing was changed by this run")
        try:
            yield
        finally:
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            except psycopg.Error:
                pass  # the session is gone, and the lock with it


def lock_holder(conn: psycopg.Connection[Any]) -> LockHolder:
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.backend_start, coalesce(' from ' || host(a.client_addr), '') "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
        (LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF),
    ).fetchone()
    if row is None:
        return LockHolder()
    return LockHolder(pid=row[0], application=row[1] or "", since=row[2], client=row[3])


def lock_held(server: postgres.Server, dbname: str) -> bool:
    """Whether any session holds the migration lock of `dbname` (for reports and tests)."""
    with postgres.connect(server, dbname) as conn:
        return lock_holder(conn).pid is not None


def apply(server: postgres.Server, dbname: str, m: Migration, lock_timeout: timedelta,
          statement_timeout: timedelta, run_id: str | None) -> Applied:
    """Apply one migration with the timeouts set: in one transaction with its history row,
    or statement by statement when it is marked no-transaction. A version the history
    already has (an earlier attempt that committed) is not applied again. Raises
    TransientError (retryable, see `is_retryable`) or PermanentError naming file and line."""
    started = time.monotonic()
    executed = 0
    current: Statement | None = None
    with postgres.connect(server, dbname) as conn:
        done = next((h for h in read_history(conn) if h.version == m.version), None)
        if done is not None:
            if done.success and done.checksum == m.checksum:
                return Applied(m.version, m.file, 0.0, len(m.statements), already=True)
            raise PolicyRefused(f"{m.file}: version {m.version} is already in the history "
                                f"(success={done.success}, checksum {done.checksum[:12]}...); not applying it again")
        conn.execute("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
                     (_ms(lock_timeout), _ms(statement_timeout)))
        try:
            if m.transactional:
                with conn.transaction():
                    for current in m.statements:
                        conn.execute(current.text, prepare=False)  # type: ignore[call-overload]
                        executed += 1
                    current = None
                    _record(conn, m, int((time.monotonic() - started) * 1000), True, run_id)
            else:
                for current in m.statements:
                    conn.execute(current.text, prepare=False)  # type: ignore[call-overload]
                    executed += 1
                current = None
                _record(conn, m, int((time.monotonic() - started) * 1000), True, run_id)
        except psycopg.Error as exc:
            raise _failed(conn, m, current, executed, exc, started, run_id) from None
    return Applied(m.version, m.file, round(time.monotonic() - started, 3), len(m.statements))


def _failed(conn: psycopg.Connection[Any], m: Migration, current: Statement | None, executed: int,
            exc: psycopg.Error, started: float, run_id: str | None) -> RunbookError:
    left: list[str] = []
    note = ""
    if not m.transactional and not conn.broken:
        try:
            left = invalid_indexes(conn)
            _record(conn, m, int((time.monotonic() - started) * 1000), False, run_id)
        except psycopg.Error as again:
            note = f" The failure could not be recorded in {HISTORY_TABLE}: {again.sqlstate} {again}"
    position = exc.diag.statement_position
    message = failure_message(
        m, current, executed, position=int(position) if position and position.isdigit() else None,
        sqlstate=exc.sqlstate, error=exc.diag.message_primary or str(exc), detail=exc.diag.message_detail,
        hint=exc.diag.message_hint, invalid_indexes=left) + note
    kind = TransientError if is_retryable(m, exc) else PermanentError
    return kind(scrub(message))
