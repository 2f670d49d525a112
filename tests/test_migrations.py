"""Migration decisions without a database: file names, statement splitting, checksums,
line numbers of errors, plans against the history, and failure messages."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import psycopg.errors
import pytest

from tasks import migration_plan as plan_mod
from tasks import migrations as mig
from tasks.config import REPO_ROOT
from tasks.errors import ConfigError, PolicyRefused

WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def migration(version: int, sql: str = "SELECT 1;", name: str | None = None) -> plan_mod.Migration:
    file = name or f"V{version}__step_{version}.sql"
    return plan_mod.parse_migration(file, f"/m/{file}", sql.encode())


def applied(m: plan_mod.Migration, *, checksum: str | None = None, success: bool = True) -> plan_mod.HistoryRow:
    return plan_mod.HistoryRow(m.version, m.description, m.file, checksum or m.checksum, m.transactional, WHEN, 42, success)


# --- file names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected", "why"), [
    ("V1__create_table.sql", (1, "create table"), "the Flyway form"),
    ("V007__add-index.sql", (7, "add-index"), "leading zeros are the same number; '-' is allowed"),
    ("V12__x.sql", (12, "x"), "versions beyond 9 are numbers, not text"),
    ("V1_1__point_release.sql", None, "dotted versions would make gaps undecidable"),
    ("v1__lower_case.sql", None, "the V is upper case, as Flyway wants it"),
    ("V1_single_underscore.sql", None, "the common typo: one underscore"),
    ("V0__zero.sql", None, "versions start at 1"),
    ("R__repeatable_views.sql", None, "repeatable migrations are not supported"),
    ("V2__.sql", None, "a description is required"),
    ("V2__has space.sql", None, "spaces make shell-hostile names"),
    ("V2__name.SQL", None, "the suffix is .sql exactly"),
])
def test_file_names(name: str, expected: tuple[int, str] | None, why: str) -> None:
    assert plan_mod.parse_file_name(name) == expected, why


# --- statements -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sql", "texts", "why"), [
    ("SELECT 1; SELECT 2", ["SELECT 1", "SELECT 2"], "the last statement needs no semicolon"),
    ("SELECT ';' ; SELECT 'it''s;'", ["SELECT ';'", "SELECT 'it''s;'"], "semicolons and '' inside quotes"),
    ("SELECT E'a\\';b'; SELECT 1", ["SELECT E'a\\';b'", "SELECT 1"], "backslash escapes in E'' strings"),
    ('SELECT "a;""b" FROM t; SELECT 1', ['SELECT "a;""b" FROM t', "SELECT 1"], "quoted identifiers"),
    ("SELECT $$a;b$$; SELECT $fn$ $$; $fn$", ["SELECT $$a;b$$", "SELECT $fn$ $$; $fn$"], "dollar quotes, tagged"),
    ("SELECT a$b$ FROM t; SELECT $1", ["SELECT a$b$ FROM t", "SELECT $1"], "$ inside names and $1 are not quotes"),
    ("-- a; comment\nSELECT 1; /* x; /* nested; */ y; */ SELECT 2;", ["SELECT 1", "SELECT 2"],
     "line and nested block comments"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END;"
     " SELECT 3", ["CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true "
                   "THEN 2 END; END", "SELECT 3"], "SQL-standard function bodies keep their semicolons"),
    ("ALTER TABLE t ADD COLUMN begin date; SELECT 2", ["ALTER TABLE t ADD COLUMN begin date", "SELECT 2"],
     "BEGIN outside a routine body is just a word"),
    (";;  -- only comments\n", [], "empty statements are dropped"),
])
def test_statements_split_like_psql(sql: str, texts: list[str], why: str) -> None:
    assert [s.text for s in plan_mod.split_statements(sql)] == texts, why


@pytest.mark.parametrize(("sql", "line"), [
    ("SELECT 'never ends;", 1),
    ("SELECT 1;\n\nSELECT $x$ body", 3),
    ("SELECT 1; /* open /* nested */", 1),
    ('SELECT "open', 1),
])
def test_unterminated_text_is_refused_with_its_line(sql: str, line: int) -> None:
    with pytest.raises(plan_mod.SqlTextError) as err:
        plan_mod.split_statements(sql)
    assert err.value.line == line


def test_statements_know_where_they_start() -> None:
    text = "-- header\nCREATE TABLE a (x int);\n\n  ALTER TABLE a\n    ADD y int;\n"
    assert [(s.offset, s.line) for s in plan_mod.split_statements(text)] == [(10, 2), (text.index("ALTER"), 4)]


# --- line numbers of errors --------------------------------------------------------------------------


@pytest.mark.parametrize(("position", "line", "why"), [
    (1, 3, "the first character of the statement"),
    (len("ALTER TABLE a\n  ADD COLUMN y"), 4, "an offset on the statement's second line"),
    (None, 3, "no position (a runtime error): the statement's first line"),
])
def test_error_position_maps_to_a_line_of_the_file(position: int | None, line: int, why: str) -> None:
    m = migration(1, "-- one\nSELECT 1;\nALTER TABLE a\n  ADD COLUMN y nope;\n")
    statement = m.statements[1]
    assert plan_mod.error_line(m, statement, position) == line, why


def test_positions_count_characters_not_bytes() -> None:
    m = migration(1, "SELECT 'é';\nSELECT 'ü',\n  nope;")
    position = len("SELECT 'ü',\n  n")
    assert plan_mod.error_line(m, m.statements[1], position) == 3


def test_crlf_files_map_lines_too() -> None:
    m = migration(1, "SELECT 1;\r\nSELECT\r\n  nope;\r\n")
    assert plan_mod.error_line(m, m.statements[1], len("SELECT\r\n  n")) == 3


# --- checksums and markers ---------------------------------------------------------------------------


def test_checksum_ignores_line_endings_and_bom_but_not_edits() -> None:
    base = plan_mod.checksum("SELECT 1;\nSELECT 2;\n")
    assert plan_mod.checksum("SELECT 1;\r\nSELECT 2;\r\n") == base
    assert plan_mod.checksum("\ufeffSELECT 1;\nSELECT 2;\n") == base
    assert plan_mod.checksum("SELECT 1;\nSELECT 3;\n") != base
    assert len(base) == 64


@pytest.mark.parametrize(("sql", "transactional"), [
    ("-- runbook: no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);", False),
    ("--runbook:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);", False),
    ("-- a comment\nCREATE INDEX i ON t (x);", True),
])
def test_no_transaction_marker_on_the_first_line(sql: str, transactional: bool) -> None:
    assert migration(1, sql).transactional is transactional


@pytest.mark.parametrize(("sql", "message", "why"), [
    ("-- comment\n-- runbook: no-transaction\nSELECT 1;", "must be the first line", "a marker that would be ignored"),
    ("-- runbook: no-transactions\nSELECT 1;", "unknown directive", "a typo in the marker"),
    ("CREATE TABLE a (x int);\nCOMMIT;", "line 2: transaction control (COMMIT)", "the flow owns the transaction"),
    ("BEGIN;\nSELECT 1;", "transaction control (BEGIN)", "the flow owns the transaction"),
    ("SELECT 1;\nSELECT 'oops;\n", "line 2: quoted string never ends", "broken SQL before any side effect"),
])
def test_files_refused_before_running(sql: str, message: str, why: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        migration(1, sql)


def test_a_file_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(ValueError, match="not UTF-8"):
        plan_mod.parse_migration("V1__latin1.sql", "/m/V1__latin1.sql", "SELECT 'café';".encode("latin-1"))


# --- the folder ----------------------------------------------------------------------------------------


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_folder_reads_in_version_order_and_ignores_other_files(tmp_path: Path) -> None:
    write(tmp_path, {"V10__ten.sql": "SELECT 10;", "README.md": "notes", ".V3__hidden.sql": "x",
                     **{f"V{i}__n{i}.sql": f"SELECT {i};" for i in range(1, 10)}})
    assert [m.version for m in plan_mod.read_migrations(tmp_path)] == list(range(1, 11))


@pytest.mark.parametrize(("files", "message", "why"), [
    ({"V1__a.sql": "", "V3__c.sql": ""}, "V1__a.sql is followed by V3__c.sql: version 2 missing", "a gap"),
    ({"V1__a.sql": "", "V4__d.sql": ""}, "versions 2-3 missing", "a wider gap"),
    ({"V2__b.sql": ""}, "the first file is V2__b.sql: version 1 missing", "versions start at 1"),
    ({"V1__a.sql": "", "V01__again.sql": ""}, "version 1 is in 2 files: V01__again.sql, V1__a.sql", "a duplicate"),
    ({"V1__a.sql": "", "V2_b.sql": ""}, "V2_b.sql: the name is not V<version>__<description>.sql", "malformed"),
])
def test_folder_problems_name_the_files(tmp_path: Path, files: dict[str, str], message: str, why: str) -> None:
    write(tmp_path, files)
    with pytest.raises(ConfigError) as err:
        plan_mod.read_migrations(tmp_path)
    assert message in str(err.value), why


def test_a_missing_folder_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="migrations.path"):
        plan_mod.read_migrations(tmp_path / "nope")


def test_folder_defaults_to_migrations_of_the_database_relative_to_the_repository() -> None:
    assert plan_mod.folder_for("fleet", None) == REPO_ROOT / "migrations" / "fleet"
    assert plan_mod.folder_for("fleet", "db/sql") == REPO_ROOT / "db" / "sql"
    assert plan_mod.folder_for("fleet", "/srv/sql") == Path("/srv/sql")


def test_the_sample_fleet_migrations_are_valid() -> None:
    files = plan_mod.read_migrations(plan_mod.folder_for("fleet", None))
    assert [m.version for m in files] == [1, 2, 3]
    assert [m.transactional for m in files] == [True, True, False]


# --- target version --------------------------------------------------------------------------------------


FILES = [migration(1), migration(2), migration(3)]


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), (2, 2), ("3", 3), (" 1 ", 1)])
def test_target_versions_accepted(value: object, expected: int | None) -> None:
    assert plan_mod.parse_target(value, FILES) == expected


@pytest.mark.parametrize(("value", "message"), [
    (7, "target_version 7 has no migration file; known versions: 1-3"),
    ("latest", "target_version 'latest' is not a version: a whole number; known versions: 1-3"),
    (True, "is not a version"),
    (2.5, "is not a version"),
    (-1, "has no migration file"),
])
def test_bad_target_versions_name_the_value_and_the_known_ones(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        plan_mod.parse_target(value, FILES)
    assert message in str(err.value)


# --- plans ------------------------------------------------------------------------------------------------


def versions(ms: tuple[plan_mod.Migration, ...]) -> list[int]:
    return [m.version for m in ms]


@pytest.mark.parametrize(("history", "target", "pending", "above", "why"), [
    ([], None, [1, 2, 3], [], "a fresh database gets everything"),
    ([1], None, [2, 3], [], "a re-run applies only what is pending"),
    ([1, 2, 3], None, [], [], "up to date: nothing to do"),
    ([], 2, [1, 2], [3], "a target stops at that version"),
    ([1], 1, [], [2, 3], "a target already reached is nothing to do"),
])
def test_plans(history: list[int], target: int | None, pending: list[int], above: list[int], why: str) -> None:
    p = plan_mod.plan(FILES, [applied(FILES[v - 1]) for v in history], target)
    assert (versions(p.pending), versions(p.above_target), p.refusal()) == (pending, above, None), why


def test_a_changed_applied_file_is_refused_naming_it() -> None:
    p = plan_mod.plan(FILES, [applied(FILES[0], checksum="0" * 64), applied(FILES[1])], None)
    refusal = p.refusal()
    assert isinstance(refusal, ConfigError)
    assert "V1__step_1.sql changed after it was applied" in str(refusal)
    assert p.changed == (1,)
    assert next(r for r in p.rows() if r["version"] == 1)["status"] == "changed since applied"


@pytest.mark.parametrize(("history", "target", "message", "why"), [
    ([plan_mod.HistoryRow(4, "gone", "V4__gone.sql", "ab" * 32, True, WHEN, 1, True)], None,
     "version 4 (V4__gone.sql) is applied but no file", "a deleted or wrong folder"),
    ([applied(FILES[0]), applied(FILES[2])], None, "V2__step_2.sql is not applied but version 3 is",
     "a hole in what is applied"),
    ([applied(FILES[0]), applied(FILES[1])], 1, "target_version 1 is below the applied version 2",
     "migrations only go forward"),
])
def test_plans_refused_as_bad_input(history: list[plan_mod.HistoryRow], target: int | None, message: str, why: str) -> None:
    refusal = plan_mod.plan(FILES, history, target).refusal()
    assert isinstance(refusal, ConfigError) and message in str(refusal), why


def test_a_migration_that_failed_part_way_blocks_later_runs() -> None:
    p = plan_mod.plan(FILES, [applied(FILES[0]), applied(FILES[1], success=False)], None)
    refusal = p.refusal()
    assert isinstance(refusal, PolicyRefused)
    assert "V2__step_2.sql (version 2) failed part-way" in str(refusal)
    assert f"DELETE FROM public.{plan_mod.HISTORY_TABLE} WHERE version = 2" in str(refusal)


def test_result_rows_show_what_this_run_did() -> None:
    p = plan_mod.plan(FILES, [applied(FILES[0])], None)
    rows = plan_mod.result_rows(p, [plan_mod.Applied(2, FILES[1].file, 0.5, 1)], FILES[2], dry_run=False)
    assert [r["status"] for r in rows] == [f"applied {WHEN:%Y-%m-%d %H:%M}", "applied", "FAILED, rolled back"]
    assert [r["checksum"] for r in rows] == [m.checksum for m in FILES]
    assert [r["status"] for r in plan_mod.result_rows(p, [], None, dry_run=True)][1:] == ["pending", "pending"]
    assert [r["status"] for r in plan_mod.result_rows(p, [], FILES[1], dry_run=False)][1:] == ["FAILED, rolled back",
                                                                                              "not run"]


# --- failures ------------------------------------------------------------------------------------------


def test_a_transactional_failure_names_file_line_and_says_rolled_back() -> None:
    m = migration(2, "ALTER TABLE a ADD x int;\nUPDATE a\n   SET x = nope;\n")
    text = plan_mod.failure_message(m, m.statements[1], 1, position=len("UPDATE a\n   SET x = n"), sqlstate="42703",
                               error='column "nope" does not exist')
    assert text.startswith('V2__step_2.sql line 3: column "nope" does not exist (SQLSTATE 42703)')
    assert "the line: 'SET x = nope;'" in text
    assert "Rolled back" in text


def test_a_non_transactional_failure_says_exactly_what_was_applied() -> None:
    m = migration(3, "-- runbook: no-transaction\nCREATE INDEX CONCURRENTLY a_x ON a (x);\n"
                     "CREATE UNIQUE INDEX CONCURRENTLY a_y ON a (y);\n")
    text = plan_mod.failure_message(m, m.statements[1], 1, position=None, sqlstate="23505", error="could not create "
                               "unique index", invalid_indexes=["public.a_y"])
    assert "V3__step_3.sql line 3" in text
    assert "NOT rolled back (no transaction): statement(s) 1 (line 2) of 2 were applied" in text
    assert "left INVALID index(es): public.a_y" in text


def test_concurrently_in_a_transaction_gets_a_hint() -> None:
    m = migration(1, "CREATE INDEX CONCURRENTLY i ON t (x);")
    text = plan_mod.failure_message(m, m.statements[0], 0, position=None, sqlstate="25001", error="cannot run")
    assert "'-- runbook: no-transaction' on its first line" in text


@pytest.mark.parametrize(("exc", "transactional", "retry", "why"), [
    (psycopg.errors.LockNotAvailable("lock timeout"), True, True, "lock_timeout: the whole file rolled back"),
    (psycopg.errors.DeadlockDetected("deadlock"), True, True, "a deadlock victim may pass next time"),
    (psycopg.errors.OperationalError("connection lost"), True, True, "the retry checks the history first"),
    (psycopg.errors.QueryCanceled("statement timeout"), True, False, "too slow now is too slow again"),
    (psycopg.errors.UndefinedColumn("no column"), True, False, "a bug in the file"),
    (psycopg.errors.LockNotAvailable("lock timeout"), False, False, "no-transaction files may be half done"),
])
def test_which_failures_are_retried(exc: psycopg.Error, transactional: bool, retry: bool, why: str) -> None:
    m = migration(1, "SELECT 1;" if transactional else "-- runbook: no-transaction\nSELECT 1;")
    assert mig.is_retryable(m, exc) is retry, why
