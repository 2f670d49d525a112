"""Routine maintenance against the sandbox's PostgreSQL 15: vacuum, reindex (with the invalid
indexes an interrupted or failed concurrent build leaves), stuck sessions and their
termination; and TLS certificates fetched from real TLS servers on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from sandbox.tls import make_certificate
from tasks import certificates, postgres, redact
from tasks.certificates import Certificate, verdict
from tasks.errors import ConfigError, PermanentError, TransientError


def admin() -> postgres.Server:
    return postgres.Server.from_dsn(os.environ["RUNBOOK_SANDBOX_PG_DSN"])


@pytest.fixture(scope="module")
def scratch_db(sandbox: Any) -> Iterator[str]:
    name = f"maint_{uuid.uuid4().hex[:10]}"
    postgres.create_database(admin(), name)
    yield name
    postgres.drop_database(admin(), name)


@pytest.fixture
def conn(scratch_db: str) -> Iterator[psycopg.Connection[Any]]:
    with postgres.connect(admin(), scratch_db) as c:
        yield c


@pytest.fixture
def schema(conn: psycopg.Connection[Any]) -> Iterator[str]:
    """A schema of its own, with a space and capitals in its name: quoting must hold."""
    name = f"Maint {uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def run(conn: psycopg.Connection[Any], schema: str, statement: str) -> None:
    """`statement` with {s} standing for the quoted schema."""
    conn.execute(sql.SQL(statement).format(s=sql.Identifier(schema)))


def indexes_of(conn: psycopg.Connection[Any], schema: str) -> dict[str, bool]:
    rows = conn.execute("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                        "WHERE c.relnamespace = %s::regnamespace", (sql.Identifier(schema).as_string(conn),))
    return dict(rows.fetchall())


# --- vacuum -------------------------------------------------------------------------------------


def test_vacuum_analyze_of_a_table_clears_its_dead_tuples(conn: psycopg.Connection[Any], schema: str) -> None:
    run(conn, schema, "CREATE TABLE {s}.items (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false)")
    run(conn, schema, "INSERT INTO {s}.items SELECT g, g::text FROM generate_series(1, 1000) g")
    run(conn, schema, "DELETE FROM {s}.items WHERE id % 2 = 0")
    conn.execute("SELECT pg_stat_force_next_flush()")  # our DELETE's counts, into the shared statistics

    figures = postgres.vacuum_analyze(conn, [f"{schema}.items"])

    assert figures["tables"] == 1
    assert figures["dead_tuples_before"] == 500
    assert figures["dead_tuples_after"] == 0
    assert figures["seconds"] >= 0


def test_vacuum_analyze_without_tables_covers_the_whole_database(conn: psycopg.Connection[Any],
                                                                  schema: str) -> None:
    run(conn, schema, "CREATE TABLE {s}.a (id int)")
    run(conn, schema, "CREATE TABLE {s}.b (id int)")

    assert postgres.vacuum_analyze(conn)["tables"] >= 2


def test_vacuum_analyze_names_a_missing_table_before_vacuuming_anything(conn: psycopg.Connection[Any],
                                                                         schema: str) -> None:
    run(conn, schema, "CREATE TABLE {s}.present (id int)")
    with pytest.raises(ConfigError, match=r"'public\.absent'"):
        postgres.vacuum_analyze(conn, [f"{schema}.present", "public.absent"])


# --- reindex ------------------------------------------------------------------------------------


@pytest.fixture
def indexed(conn: psycopg.Connection[Any], schema: str) -> str:
    run(conn, schema, "CREATE TABLE {s}.items (id int PRIMARY KEY, v text)")
    run(conn, schema, "CREATE INDEX items_v ON {s}.items (v)")
    run(conn, schema, "INSERT INTO {s}.items SELECT g, g::text FROM generate_series(1, 200) g")
    return schema


@pytest.fixture
def broken(conn: psycopg.Connection[Any], indexed: str) -> str:
    """Beside the good indexes: a unique index whose concurrent build failed on duplicate rows
    (left INVALID, as a failed migration leaves it), the `_ccnew` leftover of a concurrent
    reindex of it that failed the same way, and an exclusion constraint."""
    run(conn, indexed, "CREATE TABLE {s}.dup (v int)")
    run(conn, indexed, "INSERT INTO {s}.dup VALUES (1), (1), (2)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        run(conn, indexed, "CREATE UNIQUE INDEX CONCURRENTLY dup_v ON {s}.dup (v)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        run(conn, indexed, "REINDEX INDEX CONCURRENTLY {s}.dup_v")
    run(conn, indexed, "CREATE TABLE {s}.booking (during int4range, EXCLUDE USING gist (during WITH &&))")
    assert indexes_of(conn, indexed) == {"items_pkey": True, "items_v": True, "dup_v": False,
                                         "dup_v_ccnew": False, "booking_during_excl": True}
    return indexed


def test_reindex_rebuilds_every_index_concurrently(conn: psycopg.Connection[Any], indexed: str) -> None:
    figures = postgres.reindex(conn)

    assert figures["concurrently"] is True
    assert indexed in figures["schemas"]
    assert figures["indexes"] >= 2
    assert figures["fallbacks"] == [] and figures["leftovers_dropped"] == [] and figures["not_rebuilt"] == []


def test_reindex_drops_the_leftover_of_an_interrupted_run_and_reports_what_it_cannot_rebuild(
        conn: psycopg.Connection[Any], broken: str) -> None:
    figures = postgres.reindex(conn)

    assert figures["leftovers_dropped"] == [f"{broken}.dup_v_ccnew"]
    assert figures["indexes"] == 2  # items_pkey and items_v
    reasons = {row["index"]: row["reason"] for row in figures["not_rebuilt"]}
    assert set(reasons) == {f"{broken}.dup_v", f"{broken}.booking_during_excl"}
    assert reasons[f"{broken}.dup_v"].startswith("invalid")
    assert reasons[f"{broken}.booking_during_excl"].startswith("exclusion constraint")
    assert "dup_v_ccnew" not in indexes_of(conn, broken)
    assert indexes_of(conn, broken)["dup_v"] is False  # someone's failed migration: reported, not dropped


def test_a_plain_reindex_fails_on_an_invalid_unique_index_over_duplicates_naming_the_schema(
        conn: psycopg.Connection[Any], broken: str) -> None:
    with pytest.raises(PermanentError, match=f"REINDEX SCHEMA '{broken}' failed \\(23505\\)") as caught:
        postgres.reindex(conn, concurrently=False)
    assert "Key (v)" not in str(caught.value)  # the DETAIL quotes row data


class RefusesConcurrentReindex:
    """A connection whose server says FeatureNotSupported to REINDEX ... CONCURRENTLY, as a
    server does for what it cannot rebuild concurrently (PostgreSQL 15 refuses no user
    schema outright, so the refusal is ours)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, query: Any, params: Any = None) -> Any:
        text = query.as_string(self._conn) if isinstance(query, sql.Composable) else str(query)
        if text.startswith("REINDEX") and "CONCURRENTLY" in text:
            raise psycopg.errors.FeatureNotSupported("cannot reindex this schema concurrently")
        return self._conn.execute(query, params)


def test_reindex_falls_back_to_a_plain_reindex_for_a_schema_refused_concurrently(
        conn: psycopg.Connection[Any], indexed: str) -> None:
    figures = postgres.reindex(RefusesConcurrentReindex(conn))  # type: ignore[arg-type]

    assert {"schema": indexed, "reason": "cannot reindex this schema concurrently"} in figures["fallbacks"]
    assert figures["indexes"] >= 2
    assert figures["concurrently"] is True


# --- stuck sessions -----------------------------------------------------------------------------

STUCK_FOR = 1.5  # seconds the stuck sessions wait before they are looked for, over older_than 1 s


def _session(db: str, app: str) -> psycopg.Connection[Any]:
    return psycopg.connect(**{**admin().with_db(db), "application_name": app})  # not autocommit: BEGIN implied


@pytest.fixture
def stuck(scratch_db: str) -> Iterator[dict[str, Any]]:
    """A session sleeping in a transaction, one idle in a transaction, one idle in a transaction
    after setting a password; and `observer`, our own session, in a transaction as old."""
    token = f"tok-{uuid.uuid4().hex}"
    redact.remember(token)
    role = f"maint_role_{uuid.uuid4().hex[:8]}"
    with postgres.connect(admin(), scratch_db) as c:
        c.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    sleeper, idler, rotator, observer = (_session(scratch_db, f"maint-{n}")
                                         for n in ("sleeper", "idler", "rotator", "observer"))
    errors: list[BaseException] = []

    def sleep() -> None:
        try:
            sleeper.execute(f"SELECT '{token}' AS token,\n     pg_sleep(600)")
        except psycopg.Error as exc:
            errors.append(exc)

    thread = threading.Thread(target=sleep, daemon=True)
    thread.start()
    idler.execute("SELECT 1")
    rotator.execute(f"ALTER ROLE {role} PASSWORD 'pw-{token[4:]}'")
    observer.execute("SELECT 1")
    time.sleep(STUCK_FOR)
    pids = {"sleeper": sleeper.info.backend_pid, "idler": idler.info.backend_pid,
            "rotator": rotator.info.backend_pid, "observer": observer.info.backend_pid}
    try:
        yield {"pids": pids, "token": token, "errors": errors, "thread": thread, "observer": observer}
    finally:
        with postgres.connect(admin(), scratch_db) as c:
            postgres.terminate_sessions(c, [pids["sleeper"], pids["idler"], pids["rotator"]])
            thread.join(10)
            c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        for session in (sleeper, idler, rotator, observer):
            session.close()


def test_stuck_sessions_lists_old_transactions_but_not_a_fresh_one_nor_our_own(
        scratch_db: str, stuck: dict[str, Any]) -> None:
    pids = stuck["pids"]
    with _session(scratch_db, "maint-fresh") as fresh:
        fresh.execute("SELECT 1")  # idle in a transaction, like the idler, but only just
        found = {s.pid: s for s in postgres.stuck_sessions(stuck["observer"], timedelta(seconds=1), scratch_db)}

    assert set(found) == {pids["sleeper"], pids["idler"], pids["rotator"]}  # neither fresh nor observer
    sleeping, idle = found[pids["sleeper"]], found[pids["idler"]]
    assert (sleeping.state, sleeping.application, sleeping.database) == ("active", "maint-sleeper", scratch_db)
    assert idle.state == "idle in transaction" and idle.query == "SELECT 1"
    assert 1 <= sleeping.age_seconds < 30


def test_stuck_sessions_scrub_secrets_and_passwords_from_query_text(scratch_db: str,
                                                                    stuck: dict[str, Any]) -> None:
    found = {s.pid: s for s in postgres.stuck_sessions(stuck["observer"], timedelta(seconds=1), scratch_db)}

    assert found[stuck["pids"]["sleeper"]].query == f"SELECT '{redact.MASK}' AS token, pg_sleep(600)"
    rotated = found[stuck["pids"]["rotator"]].query
    assert rotated.endswith(f"PASSWORD '{redact.MASK}'") and stuck["token"][4:] not in rotated


def test_stuck_sessions_of_another_database_are_not_listed(stuck: dict[str, Any]) -> None:
    found = postgres.stuck_sessions(stuck["observer"], timedelta(seconds=1), dbname="postgres")
    assert not set(stuck["pids"].values()) & {s.pid for s in found}


def test_terminate_sessions_ends_them_and_a_second_call_finds_nothing_to_end(
        conn: psycopg.Connection[Any], stuck: dict[str, Any]) -> None:
    targets = [stuck["pids"]["sleeper"], stuck["pids"]["idler"]]

    assert postgres.terminate_sessions(conn, targets) == targets
    stuck["thread"].join(10)
    assert [type(e) for e in stuck["errors"]] == [psycopg.errors.AdminShutdown]  # 57P01, in the sleeper
    assert postgres.terminate_sessions(conn, targets) == []
    assert postgres.terminate_sessions(conn, [conn.info.backend_pid]) == []  # never our own session
    assert conn.execute("SELECT 1").fetchone() == (1,)


# --- certificates -------------------------------------------------------------------------------


@contextlib.contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[int]:
    """A TLS server on 127.0.0.1 that completes each handshake and hangs up; yields its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            with raw:
                raw.settimeout(5)
                with contextlib.suppress(OSError):  # ssl.SSLError too: a client that does not trust us
                    context.wrap_socket(raw, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, Path]]:
    base = tmp_path_factory.mktemp("certs")
    return {days: make_certificate(base / str(days), host="127.0.0.1", days=days) for days in (365, 1)}


@pytest.mark.parametrize("days", [365, 1])
def test_fetch_reads_days_left_and_verifies_against_the_ca_file(certs: dict[int, tuple[Path, Path]],
                                                                days: int) -> None:
    cert_file, key_file = certs[days]
    with tls_server(cert_file, key_file) as port:
        cert = certificates.fetch("127.0.0.1", port, ca_file=cert_file)

    assert cert.days_left == pytest.approx(days, abs=0.01)
    assert cert.not_after.utcoffset() == timedelta(0)
    assert (cert.subject, cert.issuer, cert.server_name) == ("127.0.0.1", "CN=127.0.0.1", "127.0.0.1")
    assert cert.verified is True and cert.error is None


def test_fetch_reads_a_certificate_that_does_not_verify_and_says_why(certs: dict[int, tuple[Path, Path]]) -> None:
    cert_file, key_file = certs[365]
    with tls_server(cert_file, key_file) as port:
        cert = certificates.fetch("127.0.0.1", port)  # the system store does not know our self-signed CA

    assert cert.days_left == pytest.approx(365, abs=0.01)
    assert cert.verified is False and cert.error and "self-signed" in cert.error


def test_fetch_from_a_closed_port_is_transient_and_names_host_and_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientError, match=f"127.0.0.1:{port}: connection refused"):
        certificates.fetch("127.0.0.1", port)


def test_fetch_from_a_server_that_never_answers_times_out_as_transient() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts in the kernel, never speaks
        port = silent.getsockname()[1]
        with pytest.raises(TransientError, match=f"127.0.0.1:{port}: no answer within 0.3 s"):
            certificates.fetch("127.0.0.1", port, timeout=0.3)


def test_fetch_refuses_a_missing_ca_file_before_connecting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        certificates.fetch("127.0.0.1", 1, ca_file=tmp_path / "absent.pem")


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
GOOD = Certificate(host="db.example", port=443, server_name="db.example", subject="db.example",
                   issuer="CN=Example CA", not_after=NOW + timedelta(days=90), days_left=90.0, verified=True,
                   error=None)


def expiring_in(days: float, **changes: Any) -> Certificate:
    return replace(GOOD, not_after=NOW + timedelta(days=days), **changes)


@pytest.mark.parametrize(("cert", "outcome", "reason_has"), [
    pytest.param(GOOD, "pass", "90.0 days left", id="plenty left: pass, saying how many days"),
    pytest.param(expiring_in(30), "pass", "30.0 days left", id="exactly warn_days left is not under it"),
    pytest.param(expiring_in(29.9), "warn", "under the 30-day warning", id="just under warn_days: warn"),
    pytest.param(expiring_in(7), "warn", "7.0 days left", id="exactly fail_days left: still only a warning"),
    pytest.param(expiring_in(6.9), "fail", "under the 7-day limit", id="just under fail_days: fail"),
    pytest.param(expiring_in(0), "fail", "expired 0.0 days ago", id="expiring this instant counts as expired"),
    pytest.param(expiring_in(-3), "fail", "expired 3.0 days ago", id="expired: fail, saying since when"),
    pytest.param(expiring_in(200, verified=False, error="unable to get local issuer certificate"), "fail",
                 "does not verify: unable to get local issuer certificate",
                 id="years left but untrusted: fail, clients refuse it today"),
    pytest.param(expiring_in(10, verified=False, error="hostname mismatch"), "fail", "hostname mismatch",
                 id="untrusted outranks a mere warning"),
    pytest.param(expiring_in(-1, verified=False, error="certificate has expired"), "fail",
                 "expired 1.0 days ago (not after 2026-05-31 12:00 UTC); does not verify",
                 id="every reason to fail is given, not just the first"),
])
def test_verdict(cert: Certificate, outcome: str, reason_has: str) -> None:
    result, reason = verdict(cert, warn_days=30, fail_days=7, now=NOW)
    assert result == outcome
    assert reason_has in reason


@pytest.mark.parametrize(("warn_days", "fail_days", "now"), [
    pytest.param(7, 30, NOW, id="warn_days under fail_days: the warning could never show"),
    pytest.param(30, -1, NOW, id="a negative limit"),
    pytest.param(30, 7, NOW.replace(tzinfo=None), id="a naive now would compare against the wrong clock"),
])
def test_verdict_refuses_bad_limits(warn_days: float, fail_days: float, now: datetime) -> None:
    with pytest.raises(ConfigError):
        verdict(GOOD, warn_days=warn_days, fail_days=fail_days, now=now)
