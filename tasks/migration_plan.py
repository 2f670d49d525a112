"""Schema migrations as SQL files, the way Flyway keeps them: the decisions, without a
database. Given the files of a folder and the rows of the history table, this module
decides which files are migrations, what each one's statements are and whether it runs
in a transaction, whether the folder is a valid sequence, what a run would apply up to
its target version or why it must be refused, and how an outcome or a failure is told
to the operator. Values go in, values (or ConfigError with every problem) come out;
reading the folder is the only I/O. The database side that acts on these decisions is
`tasks.migrations`.

Files are `V<version>__<description>.sql` (`migrations/<database>/` by default, or the
database's `migrations.path`, relative to the repository root). Versions are whole
numbers from 1 without gaps or duplicates, so a missing or doubled file is seen before
anything runs. Non-`.sql` files are ignored; a `.sql` file with another name is an error.

A file runs in one transaction, its history row included, unless its first line is
`-- runbook: no-transaction` (needed for `CREATE INDEX CONCURRENTLY` and the like): then
each statement commits on its own, and a failure part-way is recorded in the history as
`success = false`, which the plan turns into a refusal of later runs until someone
restores the checkpoint backup or repairs the database and deletes that row.

Statements are split as psql splits them (quotes, dollar quotes, comments, BEGIN ATOMIC
bodies) and sent one at a time: a no-transaction file needs that (a multi-statement
query string is one implicit transaction), and an error then names its statement, so
its file and line (PostgreSQL's statement position is a character offset into it).
Transaction control (BEGIN, COMMIT...) in a file is refused: the runner owns transactions.

Checksums are SHA-256 of the file's text with a UTF-8 BOM removed and CRLF turned into
LF, so a checkout with other line endings is not a change, while any edit is.

The history is `public.runbook_schema_history` (`HISTORY_TABLE`), one `HistoryRow` per
version: version, description, script, checksum, transactional, applied_at, duration_ms,
success (the table also keeps applied_by and flow_run_id).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tasks.config import REPO_ROOT
from tasks.errors import ConfigError, PolicyRefused, RunbookError

HISTORY_TABLE = "runbook_schema_history"  # in schema public
NO_TRANSACTION = "no-transaction"
MARKER_RE = re.compile(r"^\s*--\s*runbook:\s*(?P<directive>\S*)\s*$", re.IGNORECASE)
FILE_RE = re.compile(r"^V(?P<version>[0-9]+)__(?P<description>[A-Za-z0-9][A-Za-z0-9_-]*)\.sql$")
FILE_FORM = ("V<version>__<description>.sql, e.g. V3__add_fuel_cards.sql: the version a whole "
             "number from 1, two underscores, the description letters, digits, '_' and '-'")
TRANSACTION_CONTROL = ("begin", "start", "commit", "end", "rollback", "abort")
ACTIVE_SQL_TRANSACTION = "25001"  # "cannot run inside a transaction block"


# --- migrations on disk ---------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One SQL statement of a file: its text as sent, where it starts in the file's text
    (character offset) and the line of its first token."""

    text: str
    offset: int
    line: int


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    file: str  # the file name, V<version>__<description>.sql
    path: str
    checksum: str  # sha256 hex of the normalised text
    transactional: bool
    text: str
    statements: tuple[Statement, ...]

    def line_at(self, offset: int) -> int:
        return line_at(self.text, offset)


def folder_for(database: str, path: str | None) -> Path:
    """The migrations folder: `path` from config (relative to the repository root), or
    migrations/<database>."""
    folder = Path(path) if path else Path("migrations") / database
    return folder if folder.is_absolute() else REPO_ROOT / folder


def checksum(text: str) -> str:
    """SHA-256 of the text with a BOM removed and CRLF as LF."""
    return hashlib.sha256(text.removeprefix("\ufeff").replace("\r\n", "\n").encode()).hexdigest()


def line_at(text: str, offset: int) -> int:
    """The 1-based line of the character at `offset` in `text`."""
    return text.count("\n", 0, max(0, min(offset, len(text)))) + 1


def error_line(migration: Migration, statement: Statement, position: int | None) -> int:
    """The file's line of an error: PostgreSQL's statement position is a 1-based
    character offset into the statement as sent; without one, the statement's first line."""
    if position is None or position < 1:
        return statement.line
    return migration.line_at(statement.offset + position - 1)


class SqlTextError(ValueError):
    """The file cannot be SQL: a quote, identifier, dollar quote or comment never ends."""

    def __init__(self, line: int, what: str) -> None:
        super().__init__(f"line {line}: {what} never ends")
        self.line = line


_IDENT_START = re.compile(r"[A-Za-z_\u0080-\U0010ffff]")
_IDENT = re.compile(r"[A-Za-z0-9_$\u0080-\U0010ffff]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_NUMBER = re.compile(r"[0-9][0-9A-Za-z_.]*")


def _routine_header(words: list[str]) -> bool:
    """CREATE [OR REPLACE] FUNCTION|PROCEDURE: its body may be BEGIN ATOMIC ... END, whose
    semicolons do not end the statement (psql's rule, psqlscan.l)."""
    w = words + [""] * 4
    return w[0] == "create" and (w[1] in ("function", "procedure")
                                 or (w[1] == "or" and w[2] == "replace" and w[3] in ("function", "procedure")))


def split_statements(text: str) -> list[Statement]:
    """Split SQL text into statements at top-level semicolons, as psql does: quotes,
    quoted identifiers, E'' escapes, dollar quotes, nested block comments and
    BEGIN ATOMIC bodies are respected. Statements with no token are dropped."""
    out: list[Statement] = []
    n = len(text)
    i = 0
    start: int | None = None
    words: list[str] = []
    parens = 0
    depth = 0

    def begin_token(at: int) -> None:
        nonlocal start
        if start is None:
            start = at

    def close(end: int) -> None:
        nonlocal start, words, parens, depth
        if start is not None:
            out.append(Statement(text[start:end].rstrip(), start, line_at(text, start)))
        start, words, parens, depth = None, [], 0, 0

    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith("--", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif text.startswith("/*", i):
            i = _skip_block_comment(text, i)
        elif c == ";":
            if depth == 0:
                close(i)
            i += 1
        elif c == "'":
            begin_token(i)
            i = _skip_quoted(text, i, "'", "quoted string", backslashes=False)
        elif c == '"':
            begin_token(i)
            i = _skip_quoted(text, i, '"', "quoted identifier", backslashes=False)
        elif c == "$" and (m := _DOLLAR_TAG.match(text, i)):
            begin_token(i)
            end = text.find(m.group(), m.end())
            if end < 0:
                raise SqlTextError(line_at(text, i), f"dollar-quoted string {m.group()}")
            i = end + len(m.group())
        elif _IDENT_START.match(c):
            begin_token(i)
            m = _IDENT.match(text, i + 1)
            word = text[i:m.end()].lower()
            i = m.end()
            if word == "e" and i < n and text[i] == "'":
                i = _skip_quoted(text, i, "'", "quoted string", backslashes=True)
                continue
            words.append(word)
            if _routine_header(words[:4]) and parens == 0:
                if word == "begin":
                    depth += 1
                elif word == "case" and depth >= 1:
                    depth += 1
                elif word == "end" and depth > 0:
                    depth -= 1
        elif c in "0123456789":
            begin_token(i)
            i = _NUMBER.match(text, i).end()  # type: ignore[union-attr]
        else:
            begin_token(i)
            parens += {"(": 1, ")": -1}.get(c, 0)
            i += 1
    close(n)
    return out


def _skip_quoted(text: str, i: int, quote: str, what: str, *, backslashes: bool) -> int:
    j = i + 1
    while True:
        k = text.find(quote, j)
        if backslashes:
            b = text.find("\\", j)
            if 0 <= b < (k if k >= 0 else len(text)):
                j = b + 2
                continue
        if k < 0:
            raise SqlTextError(line_at(text, i), what)
        if text.startswith(quote * 2, k):  # '' or "" inside: an escaped quote
            j = k + 2
            continue
        return k + 1


def _skip_block_comment(text: str, i: int) -> int:
    depth, j = 0, i
    while j < len(text):
        if text.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif text.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                return j
        else:
            j += 1
    raise SqlTextError(line_at(text, i), "block comment")


def _first_word(statement: Statement) -> str:
    m = re.match(r"[A-Za-z_]+", statement.text)
    return m.group().lower() if m else ""


def parse_file_name(name: str) -> tuple[int, str] | None:
    """(version, description) of a well-formed file name; None otherwise."""
    m = FILE_RE.match(name)
    if not m or int(m.group("version")) < 1:
        return None
    return int(m.group("version")), m.group("description").replace("_", " ")


def parse_migration(name: str, path: str, raw: bytes) -> Migration:
    """One file: its name, text, marker and statements. Raises ValueError with what is wrong."""
    parsed = parse_file_name(name)
    if parsed is None:
        raise ValueError(f"the name is not {FILE_FORM}")
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
    lines = text.split("\n")
    transactional = True
    for number, line in enumerate(lines, start=1):
        marker = MARKER_RE.match(line)
        if marker is None:
            continue
        if marker.group("directive").lower() != NO_TRANSACTION:
            raise ValueError(f"line {number}: unknown directive {line.strip()!r}; "
                             f"allowed: '-- runbook: {NO_TRANSACTION}' on the first line")
        if number != 1:
            raise ValueError(f"line {number}: '-- runbook: {NO_TRANSACTION}' must be the first line "
                             "of the file to count")
        transactional = False
    try:
        statements = tuple(split_statements(text))
    except SqlTextError as exc:
        raise ValueError(str(exc)) from None
    for s in statements:
        if _first_word(s) in TRANSACTION_CONTROL:
            raise ValueError(f"line {s.line}: transaction control ({_first_word(s).upper()}) is not allowed: each "
                             f"file runs in its own transaction, or with '-- runbook: {NO_TRANSACTION}' on its "
                             "first line, statement by statement")
    version, description = parsed
    return Migration(version=version, description=description, file=name, path=path, checksum=checksum(text),
                     transactional=transactional, text=text, statements=statements)


def check_sequence(migrations: Sequence[Migration]) -> list[str]:
    """Duplicates and gaps: versions run 1, 2, 3... with one file each."""
    problems: list[str] = []
    by_version: dict[int, list[str]] = {}
    for m in migrations:
        by_version.setdefault(m.version, []).append(m.file)
    for version, files in sorted(by_version.items()):
        if len(files) > 1:
            problems.append(f"version {version} is in {len(files)} files: {', '.join(sorted(files))}; "
                            "each version has exactly one file")
    versions = sorted(by_version)
    expected = 1
    for version in versions:
        if version != expected:
            before = f"{by_version[expected - 1][0]} is followed by" if expected > 1 else "the first file is"
            missing = f"version {expected}" if version == expected + 1 else f"versions {expected}-{version - 1}"
            problems.append(f"{before} {by_version[version][0]}: {missing} missing; versions run 1, 2, 3... "
                            "without gaps")
        expected = version + 1
    return problems


def read_migrations(folder: Path) -> list[Migration]:
    """Every migration in the folder, in version order. Raises ConfigError listing every
    malformed name, unreadable file, gap and duplicate, before anything runs."""
    if not folder.is_dir():
        raise ConfigError(f"migrations folder {folder} does not exist: create it, or set the database's "
                          "migrations.path")
    migrations: list[Migration] = []
    problems: list[str] = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() != ".sql":
            continue
        try:
            migrations.append(parse_migration(path.name, str(path), path.read_bytes()))
        except ValueError as exc:
            problems.append(f"{path.name}: {exc}")
        except OSError as exc:
            problems.append(f"{path.name}: cannot read: {exc.strerror}")
    problems += check_sequence(migrations)
    if problems:
        raise ConfigError(f"migrations in {folder}: {len(problems)} problem(s):\n" +
                          "\n".join(f"  - {p}" for p in problems))
    return sorted(migrations, key=lambda m: m.version)


def parse_target(value: Any, migrations: Sequence[Migration]) -> int | None:
    """The target_version parameter: None (everything), or a version that has a file."""
    if value is None or value == "":
        return None
    known = [m.version for m in migrations]
    allowed = f"known versions: {_ranges(known)}" if known else "the folder has no migrations"
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
        raise ConfigError(f"target_version {value!r} is not a version: a whole number; {allowed}")
    target = int(value)
    if target not in known:
        raise ConfigError(f"target_version {target} has no migration file; {allowed}")
    return target


def _ranges(versions: Sequence[int]) -> str:
    vs = sorted(versions)
    return f"{vs[0]}-{vs[-1]}" if len(vs) > 1 and vs[-1] - vs[0] == len(vs) - 1 else ", ".join(map(str, vs))


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryRow:
    version: int
    description: str
    script: str
    checksum: str
    transactional: bool
    applied_at: datetime
    duration_ms: int
    success: bool


@dataclass(frozen=True)
class Plan:
    """What a run would do, given the files and the history."""

    migrations: tuple[Migration, ...]
    history: tuple[HistoryRow, ...]
    target: int | None
    pending: tuple[Migration, ...]
    above_target: tuple[Migration, ...]
    changed: tuple[int, ...]  # versions whose file changed after it was applied
    failed: tuple[HistoryRow, ...]  # non-transactional migrations that stopped part-way
    problems: tuple[str, ...]  # why the run is refused (with `failed`: see `refusal`)

    @property
    def applied_version(self) -> int:
        return max((h.version for h in self.history if h.success), default=0)

    def refusal(self) -> RunbookError | None:
        """The error to stop with, if any: PolicyRefused while a failed non-transactional
        migration is unresolved, ConfigError for files that do not match the history."""
        if self.failed:
            return PolicyRefused("; ".join(self.problems))
        if self.problems:
            return ConfigError("; ".join(self.problems))
        return None

    def rows(self) -> list[dict[str, Any]]:
        """One row per file (and per history row without a file), as planned."""
        history = {h.version: h for h in self.history}
        pending = {m.version for m in self.pending}
        above = {m.version for m in self.above_target}
        rows = []
        for m in self.migrations:
            h = history.get(m.version)
            if m.version in self.changed:
                status = "changed since applied"
            elif h is not None and not h.success:
                status = "failed part-way earlier"
            elif h is not None:
                status = f"applied {h.applied_at:%Y-%m-%d %H:%M}"
            elif m.version in pending:
                status = "pending"
            elif m.version in above:
                status = "above target"
            else:
                status = "not applied (out of order)"
            rows.append({"version": m.version, "file": m.file, "checksum": m.checksum, "status": status,
                         "duration_s": round(h.duration_ms / 1000, 3) if h is not None else "",
                         "transactional": m.transactional})
        files = {m.version for m in self.migrations}
        for h in self.history:
            if h.version not in files:
                rows.append({"version": h.version, "file": h.script, "checksum": h.checksum,
                             "status": "applied, file missing", "duration_s": round(h.duration_ms / 1000, 3),
                             "transactional": h.transactional})
        return sorted(rows, key=lambda r: r["version"])


def plan(migrations: Sequence[Migration], history: Sequence[HistoryRow], target: int | None) -> Plan:
    """Compare the files with the history: what is pending up to `target`, and whether
    the run must be refused (a changed or missing applied file, a gap in what is applied,
    a target below what is applied, a migration that failed part-way)."""
    files = {m.version: m for m in migrations}
    problems: list[str] = []
    changed: list[int] = []
    failed = tuple(h for h in history if not h.success)
    for h in failed:
        problems.append(
            f"{h.script} (version {h.version}) failed part-way on {h.applied_at:%Y-%m-%d %H:%M:%S %Z} without "
            "a transaction, so the database may be partly migrated: restore the pre-migration backup, or repair "
            f"the database by hand and then DELETE FROM public.{HISTORY_TABLE} WHERE version = {h.version}")
    for h in history:
        m = files.get(h.version)
        if not h.success:
            continue
        if m is None:
            problems.append(f"version {h.version} ({h.script}) is applied but no file in the folder has that "
                            "version: restore the file, or point migrations.path at the right folder")
        elif m.checksum != h.checksum:
            changed.append(h.version)
            problems.append(f"{m.file} changed after it was applied on {h.applied_at:%Y-%m-%d %H:%M:%S %Z} "
                            f"(checksum {h.checksum[:12]}... then, {m.checksum[:12]}... now): an applied "
                            "migration must not change; revert the file and put the change in a new version")
    recorded = {h.version for h in history}
    top = max((h.version for h in history if h.success), default=0)
    missed = [m for m in migrations if m.version not in recorded and m.version < top]
    for m in missed:
        problems.append(f"{m.file} is not applied but version {top} is: migrations apply in version order")
    if target is not None and target < top:
        problems.append(f"target_version {target} is below the applied version {top}: migrations only go "
                        "forward; to go back, restore a backup")
    waiting = [m for m in migrations if m.version not in recorded and m.version > top]
    return Plan(
        migrations=tuple(migrations), history=tuple(sorted(history, key=lambda h: h.version)), target=target,
        pending=tuple(m for m in waiting if target is None or m.version <= target),
        above_target=tuple(m for m in waiting if target is not None and m.version > target),
        changed=tuple(changed), failed=failed, problems=tuple(problems),
    )


# --- outcomes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """One migration applied in this run."""

    version: int
    file: str
    seconds: float
    statements: int
    already: bool = False  # found in the history on a retry: applied by an earlier attempt


def result_rows(plan: Plan, applied: Sequence[Applied], failed: Migration | None, dry_run: bool) -> list[dict[str, Any]]:
    """The plan's rows with this run's outcome: applied now, failed, or not run after a failure."""
    done = {a.version: a for a in applied}
    pending = {m.version for m in plan.pending}
    rows = []
    for row in plan.rows():
        version = row["version"]
        if version in done:
            a = done[version]
            row = {**row, "status": "applied by an earlier attempt" if a.already else "applied",
                   "duration_s": a.seconds}
        elif failed is not None and version == failed.version:
            row = {**row, "status": "FAILED, rolled back" if failed.transactional else "FAILED part-way, not rolled back"}
        elif version in pending and not dry_run:
            row = {**row, "status": "not run"}
        rows.append(row)
    return rows


def failure_message(m: Migration, statement: Statement | None, executed: int, *, position: int | None,
                    sqlstate: str | None, error: str, detail: str | None = None, hint: str | None = None,
                    invalid_indexes: Sequence[str] = ()) -> str:
    """What failed, where (file and line) and what that leaves behind."""
    line = error_line(m, statement, position) if statement is not None else None
    where = f"{m.file} line {line}" if line is not None else f"{m.file} (at commit)"
    text = f"{where}: {error.strip()} (SQLSTATE {sqlstate or 'none'})"
    if detail:
        text += f"; detail: {detail.strip()}"
    if hint:
        text += f"; hint: {hint.strip()}"
    if line is not None:
        source = m.text.split("\n")[line - 1].strip()
        if source:
            text += f"; the line: {source[:200]!r}"
    if sqlstate == ACTIVE_SQL_TRANSACTION and m.transactional:
        text += f"; mark the file with '-- runbook: {NO_TRANSACTION}' on its first line"
    total = len(m.statements)
    if m.transactional:
        return text + f". Rolled back: {m.file} left the database as it was before it."
    if executed:
        done = ", ".join(f"{i + 1} (line {s.line})" for i, s in enumerate(m.statements[:executed]))
        text += f". NOT rolled back (no transaction): statement(s) {done} of {total} were applied"
    else:
        text += f". No transaction: none of its {total} statement(s) completed"
    if invalid_indexes:
        text += f"; left INVALID index(es): {', '.join(invalid_indexes)} (DROP INDEX CONCURRENTLY them)"
    return text + "."
