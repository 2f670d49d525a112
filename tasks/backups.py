"""Logical backups: pg_dump streamed to storage, a manifest as the commit record,
and the catalogue built from what storage holds.

Layout under the storage URL:

    <database>/<backup_id>/dump.pgc.zst        custom format, zstd: one object, a run of zstd frames
    <database>/<backup_id>/dump.pgc            custom format, gzip (pg_dump's own compression)
    <database>/<backup_id>/dump/<file>[.zst]   directory format: toc.dat and data files
    <database>/<backup_id>/manifest.json       written last; without it the backup is incomplete

With zstd, pg_dump writes uncompressed (-Z0) and the stream is compressed on its way to
storage; the sizes and checksums in the manifest are those of the stored (compressed)
bytes, and `raw_size` is what `zstd -d` gives back.

`backup_id` is the UTC start time plus a random suffix, so ids sort by age.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from tasks import compression
from tasks.errors import CheckFailed, DumpAborted, ObjectMissing, PermanentError, RunbookError, TransientError
from tasks.postgres import (
    Server,
    Snapshot,
    connect,
    count_rows,
    exported_snapshot,
    find_tool,
    server_answers,
    sessions_killed,
    tool_major,
)
from tasks.redact import scrub
from tasks.retention import BackupRecord
from tasks.storage import CHUNK, HashingReader, Storage, get_json, put_json

MANIFEST = "manifest.json"
CUSTOM_FILE = "dump.pgc"
DIR_PREFIX = "dump/"
ID_RE = re.compile(r"^(\d{8}T\d{6}Z)-[0-9a-f]{6}$")
PROGRESS_EVERY_SECONDS = 2  # between two progress reports of a running dump
DRAIN_WAIT_S = 10  # for pg_dump's stderr reader after the dump ended
_TABLE_LINE = re.compile(r'dumping contents of table "([^"]+)"')


class StoredFile(BaseModel):
    key: str = Field(description="Key relative to the backup folder")
    size: int = Field(description="Bytes stored")
    sha256: str = Field(description="Of the bytes stored")
    raw_size: int | None = Field(None, description="Bytes after decompression, for a file we compressed")
    frames: list[tuple[int, int]] | None = Field(None, description="(stored, raw) bytes of each zstd frame, in order")

    @property
    def restored_name(self) -> str:
        """The file's name as pg_dump wrote it (without .zst)."""
        return self.key.removesuffix(compression.SUFFIX) if self.raw_size is not None else self.key

    @property
    def local_size(self) -> int:
        """Bytes the file takes once ready for pg_restore."""
        return self.raw_size if self.raw_size is not None else self.size


class Manifest(BaseModel):
    """The commit record of a backup. Only backups with a manifest are ever restored."""

    backup_id: str
    environment: str
    database: str
    dbname: str
    format: str
    compression: str | None = Field(None, description="zstd:N or gzip:N; None: written before the setting, gzip")
    files: list[StoredFile]
    size: int
    sha256: str
    row_counts: dict[str, int]
    lsn: str
    snapshot_time: str
    server_version: int
    pg_dump_version: int
    database_size: int
    durations: dict[str, float]
    flow_run_id: str | None = None
    created_at: str
    tool: str = "runbook-flows"
    source: str | None = Field(None, description="None: a backup of the live database. Else where the data came "
                                                 "from, e.g. a point-in-time recovery's instance; such an extract is "
                                                 "restored only by its id, and retention leaves it alone")

    @property
    def taken_at(self) -> datetime:
        return datetime.fromisoformat(self.snapshot_time)

    @property
    def codec(self) -> compression.Compression:
        return compression.of_manifest(self.compression)


def new_backup_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def id_time(backup_id: str) -> datetime | None:
    m = ID_RE.match(backup_id)
    return datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) if m else None


def backup_prefix(database: str, backup_id: str) -> str:
    return f"{database}/{backup_id}/"


# --- catalogue ---------------------------------------------------------------------------------


class Catalogue(BaseModel):
    manifests: dict[str, Manifest] = Field(default_factory=dict)
    incomplete: list[str] = Field(default_factory=list)

    def records(self) -> list[BackupRecord]:
        recs = [BackupRecord(i, m.taken_at, True) for i, m in self.manifests.items() if m.source is None]
        for i in self.incomplete:
            t = id_time(i)
            if t is not None:
                recs.append(BackupRecord(i, t, False))
        return recs

    def newest(self) -> Manifest | None:
        """The newest backup of the live database (never a point-in-time extract)."""
        return max((m for m in self.manifests.values() if m.source is None), key=lambda m: m.taken_at, default=None)

    def for_run(self, flow_run_id: str | None) -> Manifest | None:
        if not flow_run_id:
            return None
        found = [m for m in self.manifests.values() if m.flow_run_id == flow_run_id]
        return max(found, key=lambda m: m.taken_at, default=None)


def read_catalogue(storage: Storage, database: str) -> Catalogue:
    ids: dict[str, bool] = {}
    for key in storage.list_keys(f"{database}/"):
        parts = key.split("/")
        if len(parts) < 3 or parts[0] != database or not ID_RE.match(parts[1]):
            continue
        ids[parts[1]] = ids.get(parts[1], False) or parts[2] == MANIFEST
    cat = Catalogue()
    for backup_id, has_manifest in sorted(ids.items()):
        if has_manifest:
            cat.manifests[backup_id] = _read_manifest(storage, database, backup_id)
        else:
            cat.incomplete.append(backup_id)
    return cat


def load_manifest(storage: Storage, database: str, backup_id: str) -> Manifest:
    if not ID_RE.match(backup_id):
        raise PermanentError(f"backup_id {backup_id!r} is not a backup id like 20260101T020000Z-a1b2c3")
    key = f"{database}/{backup_id}/{MANIFEST}"
    if not storage.exists(key):
        raise PermanentError(f"backup {backup_id!r} of {database!r} has no manifest in {storage.url}: incomplete or missing")
    return _read_manifest(storage, database, backup_id)


def _read_manifest(storage: Storage, database: str, backup_id: str) -> Manifest:
    """The manifest, or a CheckFailed naming the backup, the file and what is wrong with it."""
    key = f"{database}/{backup_id}/{MANIFEST}"
    where = f"backup {backup_id}: manifest {storage.url}/{key}"
    try:
        return Manifest.model_validate(get_json(storage, key))
    except json.JSONDecodeError as exc:
        raise CheckFailed(f"{where} is not readable: not valid JSON ({exc.msg} at line {exc.lineno} "
                          f"column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise CheckFailed(f"{where} is not readable: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors()[:5])
        raise CheckFailed(f"{where} is not readable: not a manifest ({fields})") from None


def write_manifest(storage: Storage, manifest: Manifest) -> None:
    put_json(storage, f"{manifest.database}/{manifest.backup_id}/{MANIFEST}", manifest.model_dump())


# --- dumping --------------------------------------------------------------------------------------


class DumpProgress:
    """Follows pg_dump -v on stderr (which table is being copied) and, when given, the
    server's pg_stat_progress_copy (how many of its rows are done), as a share of table bytes."""

    def __init__(self, table_sizes: dict[str, int], row_counts: dict[str, int] | None = None) -> None:
        self.sizes = table_sizes
        self.rows = row_counts or {}
        self.total = max(sum(table_sizes.values()), 1)
        self.started: list[str] = []
        self.tail: deque[str] = deque(maxlen=50)

    def feed(self, line: str) -> None:
        m = _TABLE_LINE.search(line)
        if m:
            self.started.append(m.group(1))
        elif "pg_dump: dumping contents" not in line:
            self.tail.append(line)

    def fraction(self, current_rows_done: int = 0) -> float:
        done = sum(self.sizes.get(t, 0) for t in self.started[:-1])  # the last one is in progress
        if self.started:
            current = self.started[-1]
            rows = self.rows.get(current, 0)
            if rows:
                done += self.sizes.get(current, 0) * min(current_rows_done / rows, 1.0)
        return min(done / self.total, 0.99)


def _widen_pipe(stream: Any) -> None:
    """A 1 MiB pipe instead of 64 KiB: fewer stalls and wake-ups between pg_dump and us."""
    try:
        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1024 * 1024)
    except OSError:
        pass  # not Linux, or over /proc/sys/fs/pipe-max-size: the default still works


def copy_rows_done(server: Server, dbname: str, app_name: str) -> int:
    """Rows the dump's COPY has sent so far, from pg_stat_progress_copy (PostgreSQL 14+)."""
    try:
        with connect(server, dbname) as conn:
            row = conn.execute(
                "SELECT coalesce(max(p.tuples_processed), 0) FROM pg_stat_progress_copy p "
                "JOIN pg_stat_activity a ON a.pid = p.pid WHERE a.application_name = %s", (app_name,)
            ).fetchone()
    except RunbookError:
        return 0  # progress is best effort; the dump itself decides the outcome
    return int(row[0]) if row else 0


def _drain(stream: Any, progress: DumpProgress) -> None:
    for raw in iter(stream.readline, b""):
        progress.feed(raw.decode(errors="replace").rstrip())


def _dump_failed(proc: subprocess.Popen[bytes], progress: DumpProgress) -> Exception:
    err = scrub("\n".join(progress.tail))[-2000:]
    if proc.returncode is not None and proc.returncode < 0:
        return DumpAborted(f"pg_dump was killed by signal {-proc.returncode}; upload aborted. {err}")
    # pg_dump exits 1 for every failure; a connection lost mid-dump is the common,
    # retryable case, and a permanent cause (auth, missing db) was ruled out in preflight.
    return TransientError(f"pg_dump failed (exit {proc.returncode}); upload aborted: {err}")


class StoredStream:
    """One file on its way to storage: compressed when the compression is ours (zstd),
    hashed and counted as stored."""

    def __init__(self, storage: Storage, prefix: str, name: str, codec: compression.Compression) -> None:
        self.key = codec.stored_name(name)
        self.writer = storage.writer(prefix + self.key)
        self.sha = hashlib.sha256()
        self.raw = 0
        self.compressor = compression.FrameCompressor(codec.level) if codec.ours else None

    def write(self, chunk: bytes) -> None:
        self.raw += len(chunk)
        self._store(self.compressor.compress(chunk) if self.compressor else chunk)

    def _store(self, data: bytes) -> None:
        if data:
            self.sha.update(data)
            self.writer.write(data)

    def commit(self) -> StoredFile:
        if self.compressor:
            self._store(self.compressor.flush())
        self.writer.commit()
        return StoredFile(key=self.key, size=self.writer.bytes_written, sha256=self.sha.hexdigest(),
                          raw_size=self.raw if self.compressor else None,
                          frames=self.compressor.frames if self.compressor else None)

    def abort(self) -> None:
        self.writer.abort()


def stream_custom_dump(
    server: Server,
    dbname: str,
    snapshot: Snapshot,
    storage: Storage,
    prefix: str,
    codec: compression.Compression,
    on_progress: Callable[[float, int], None],
) -> StoredFile:
    """pg_dump -Fc straight into storage, compressed (zstd) and hashed on the way; no local copy."""
    pg_dump = find_tool("pg_dump", snapshot.server_version // 10000)
    args = [pg_dump, "-Fc", f"-Z{codec.pg_dump_level}", f"--snapshot={snapshot.snapshot_id}", "-v", "--no-password"]
    progress = DumpProgress(snapshot.table_sizes, snapshot.row_estimates)
    app_name = f"runbook-dump-{secrets.token_hex(4)}"  # to find its COPY in pg_stat_progress_copy
    stream = StoredStream(storage, prefix, CUSTOM_FILE, codec)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**server.env(dbname), "PGAPPNAME": app_name})
    assert proc.stdout is not None
    _widen_pipe(proc.stdout)
    drain = threading.Thread(target=_drain, args=(proc.stderr, progress), daemon=True)
    drain.start()
    last = time.monotonic()
    try:
        # read1, not read: waiting for whole chunks was about 0.3 s slower on the 1 GB sample database
        while chunk := proc.stdout.read1(CHUNK):
            stream.write(chunk)
            if time.monotonic() - last > PROGRESS_EVERY_SECONDS:
                last = time.monotonic()
                on_progress(progress.fraction(copy_rows_done(server, dbname, app_name)), stream.writer.bytes_written)
        proc.wait()
        drain.join()
        if proc.returncode != 0:
            raise _dump_failed(proc, progress)
        stored = stream.commit()
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stream.abort()
        raise
    finally:
        drain.join(timeout=DRAIN_WAIT_S)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    return stored


def dump_directory(
    server: Server,
    dbname: str,
    snapshot: Snapshot,
    storage: Storage,
    prefix: str,
    codec: compression.Compression,
    jobs: int,
    on_progress: Callable[[float, int], None],
) -> list[StoredFile]:
    """pg_dump -Fd -j N to a local temp folder, then upload each file (compressed, for zstd)
    with its hash."""
    pg_dump = find_tool("pg_dump", snapshot.server_version // 10000)
    files: list[StoredFile] = []
    with tempfile.TemporaryDirectory(prefix="runbook-dump-") as tmp:
        out = Path(tmp) / "dump"
        args = [pg_dump, "-Fd", f"-j{jobs}", f"-Z{codec.pg_dump_level}", f"--snapshot={snapshot.snapshot_id}",
                "-v", "--no-password", "-f", str(out)]
        progress = DumpProgress(snapshot.table_sizes)
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=server.env(dbname))
        _drain(proc.stderr, progress)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        if proc.returncode != 0:
            raise _dump_failed(proc, progress)
        uploaded = 0
        for path in sorted(out.iterdir()):
            stream = StoredStream(storage, prefix, DIR_PREFIX + path.name, codec)
            try:
                with open(path, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        stream.write(chunk)
                files.append(stream.commit())
            except BaseException:
                stream.abort()
                raise
            uploaded += files[-1].size
            on_progress(0.99, uploaded)
    return files


def dump_and_count(server: Server, dbname: str, snapshot: Snapshot, storage: Storage, prefix: str, fmt: str,
                   codec: compression.Compression, jobs: int,
                   on_progress: Callable[[float, int], None]) -> tuple[list[StoredFile], dict[str, int]]:
    """The dump into storage, and the exact row counts of the same snapshot, counted beside
    it on a second connection rather than before it."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="row-counts") as pool:
        counting = pool.submit(count_rows, server, dbname, snapshot.snapshot_id)
        if fmt == "custom":
            files = [stream_custom_dump(server, dbname, snapshot, storage, prefix, codec, on_progress)]
        else:
            files = dump_directory(server, dbname, snapshot, storage, prefix, codec, jobs, on_progress)
        return files, counting.result()


def take_dump(server: Server, cfg: Any, environment: str, database: str, storage: Storage, backup_id: str,
              run_id: str | None, pg_dump_major: int, on_progress: Callable[[float, int], None],
              source: str | None = None) -> Manifest:
    """A consistent dump of `cfg.dbname` on `server` under the backup's prefix, and its
    manifest (not written yet: committing it is the caller's last step)."""
    prefix = backup_prefix(database, backup_id)
    started = time.monotonic()
    with exported_snapshot(server, cfg.dbname) as snap:
        files, row_counts = dump_and_count(server, cfg.dbname, snap, storage, prefix, cfg.format, cfg.codec,
                                           cfg.jobs, on_progress)
    return Manifest(
        backup_id=backup_id, environment=environment, database=database, dbname=cfg.dbname, format=cfg.format,
        compression=cfg.compression, files=files, size=sum(f.size for f in files), sha256=combined_sha256(files),
        row_counts=row_counts, lsn=snap.lsn, snapshot_time=snap.taken_at, server_version=snap.server_version,
        pg_dump_version=pg_dump_major, database_size=snap.database_size,
        durations={"dump": round(time.monotonic() - started, 3)}, flow_run_id=run_id,
        created_at=datetime.now(UTC).isoformat(), source=source,
    )


def combined_sha256(files: list[StoredFile]) -> str:
    """One checksum for a backup: the file's own for one file, else a hash over the list."""
    if len(files) == 1:
        return files[0].sha256
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.key):
        h.update(f"{f.key} {f.size} {f.sha256}\n".encode())
    return h.hexdigest()


# --- verifying and fetching -------------------------------------------------------------------


def verify_stored(storage: Storage, prefix: str, files: list[StoredFile], backup_id: str,
                  fmt: str, server_major: int | None = None) -> list[str]:
    """Read every stored object back: compare sha256 and size with what was written, and
    read the archive's table of contents with `pg_restore --list`, from the decompressed
    stream when we compressed it. Returns the TOC."""
    pg_restore = find_tool("pg_restore", server_major)
    toc: list[str] | None = None
    with tempfile.TemporaryDirectory(prefix="runbook-verify-") as tmp:
        for f in files:
            if fmt == "custom":
                toc = _list_stream(pg_restore, Path(tmp), storage, prefix, backup_id, f)
            elif f.restored_name == DIR_PREFIX + "toc.dat":
                (Path(tmp) / "dump").mkdir()
                with open(Path(tmp) / "dump" / "toc.dat", "wb") as sink:
                    read_file(read_stored(storage, prefix, backup_id, f), f, backup_id, sink.write)
            else:
                read_file(read_stored(storage, prefix, backup_id, f), f, backup_id, _checksum_only)
        if fmt == "directory":
            toc = restore_list(Path(tmp) / "dump", server_major)
    if toc is None:
        raise CheckFailed(f"backup {backup_id}: no table of contents found")
    return toc


def _list_stream(pg_restore: str, tmp: Path, storage: Storage, prefix: str, backup_id: str,
                 f: StoredFile) -> list[str]:
    """`pg_restore --list` fed from the stored object as it is read and checked."""
    # Output to files, not pipes: a long TOC must not block pg_restore while we feed it.
    with open(tmp / "toc.txt", "w+b") as out_f, open(tmp / "toc.err", "w+b") as err_f:
        listing = subprocess.Popen([pg_restore, "--list"], stdin=subprocess.PIPE, stdout=out_f, stderr=err_f,
                                   bufsize=0)  # unbuffered: nothing left to flush at close
        assert listing.stdin is not None
        stdin: Any = listing.stdin

        def feed(chunk: bytes) -> bool:
            nonlocal stdin
            if stdin is not None:
                try:
                    stdin.write(chunk)
                except BrokenPipeError:  # it has read the TOC and left
                    stdin.close()
                    stdin = None
            return stdin is not None

        try:
            read_file(read_stored(storage, prefix, backup_id, f), f, backup_id, feed)
        except BaseException:
            listing.kill()
            listing.wait()
            raise
        finally:
            if stdin is not None:
                stdin.close()
        listing.wait()
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    if listing.returncode != 0:
        raise CheckFailed(f"backup {backup_id}: pg_restore --list failed: "
                          f"{scrub(err.decode(errors='replace').strip())[-1000:]}")
    return _toc_lines(out.decode(errors="replace"))


def _checksum_only(chunk: bytes) -> bool:
    return False


def read_file(reader: HashingReader, f: StoredFile, backup_id: str, sink: Callable[[bytes], Any]) -> None:
    """One stored file into `sink` as pg_dump wrote it (decompressed, when we compressed it),
    until the sink returns False; then the checksum check on every stored byte. Damage that
    stops decompression is read past, so that the checksum names it: a changed byte, or an
    object cut short."""
    broken: compression.NotZstd | None = None
    chunks = compression.decompress(iter(reader), f.raw_size) if f.raw_size is not None else iter(reader)
    try:
        for chunk in chunks:
            if sink(chunk) is False:
                break
    except compression.NotZstd as exc:
        broken = exc
    for _ in reader:  # the rest, for its checksum
        pass
    _checked(reader, f, backup_id, broken)


def _checked(reader: HashingReader, f: StoredFile, backup_id: str, broken: compression.NotZstd | None) -> None:
    """After a whole stored file was read: its checksum first, then what decompressing it found."""
    check_checksum(backup_id, f, reader)
    if broken is not None:
        raise CheckFailed(f"backup {backup_id}: {f.key} matches its checksum but does not decompress as zstd: "
                          f"{broken}")


def check_checksum(backup_id: str, expected: StoredFile, read: HashingReader) -> None:
    """The bytes read back are the bytes written: same size, same sha256."""
    what = f"backup {backup_id}: checksum check failed for {expected.key}"
    if read.size < expected.size:
        raise CheckFailed(f"{what}: truncated: expected {expected.size} bytes, the stored object has {read.size}")
    if read.size > expected.size:
        raise CheckFailed(f"{what}: longer than written: expected {expected.size} bytes, the stored object has "
                          f"{read.size}")
    if read.sha256.hexdigest() != expected.sha256:
        raise CheckFailed(f"{what}: expected sha256 {expected.sha256}, the stored object ({read.size} bytes, as "
                          f"written) has {read.sha256.hexdigest()}: its content changed")


def read_stored(storage: Storage, prefix: str, backup_id: str, f: StoredFile) -> HashingReader:
    """The stored object of one backup file, hashed as it is read; a missing one is named."""
    chunks = storage.iter_chunks(prefix + f.key)
    try:
        first = next(chunks, None)
    except ObjectMissing:
        raise CheckFailed(f"backup {backup_id}: {f.key} is missing from {storage.url}/{prefix}") from None
    return HashingReader(itertools.chain([] if first is None else [first], chunks))


def _toc_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith(";")]


def in_place(storage: Storage, prefix: str, f: StoredFile) -> Path | None:
    """The stored file itself, when pg_restore can read it where it is: local storage, and
    stored as pg_dump wrote it (not compressed by us)."""
    return storage.local_path(prefix + f.key) if f.raw_size is None else None


def bytes_to_fetch(storage: Storage, manifest: Manifest) -> int:
    """The bytes `fetch_backup` writes to its folder: every file, decompressed, but for those
    that local storage holds as pg_dump wrote them (verified in place)."""
    prefix = backup_prefix(manifest.database, manifest.backup_id)
    return sum(f.local_size for f in manifest.files if in_place(storage, prefix, f) is None)


def no_room(backup_id: str, folder: Path, need: int, free: int, detail: str = "") -> PermanentError:
    """A full disk is not cured by a retry: the folder and the bytes, for whoever makes room."""
    return PermanentError(f"backup {backup_id}: not enough space in {folder} for the download{detail}: "
                          f"it needs {need} bytes, {free} bytes were free")


def check_room(folder: Path, backup_id: str, need: int) -> None:
    """Fail before downloading when `folder`'s file system has fewer than `need` bytes free."""
    free = shutil.disk_usage(folder).free
    if need > free:
        raise no_room(backup_id, folder, need, free)


def fetch_backup(storage: Storage, manifest: Manifest, workdir: Path) -> tuple[Path, float]:
    """Make the backup available as a local file or folder for pg_restore (which must seek),
    checking every stored byte against the manifest on the way. A zstd file is decompressed
    as it downloads, or straight from the stored file for local storage; a local file that
    pg_dump compressed is verified in place, not copied. A failed fetch removes what it
    wrote; a full disk is a PermanentError naming the folder and the bytes. Returns the
    path and the seconds spent."""
    start = time.monotonic()
    prefix = backup_prefix(manifest.database, manifest.backup_id)
    need, free = bytes_to_fetch(storage, manifest), shutil.disk_usage(workdir).free
    written: list[Path] = []
    key = ""
    try:
        for f in manifest.files:
            key = f.restored_name
            reader = read_stored(storage, prefix, manifest.backup_id, f)
            if in_place(storage, prefix, f) is not None:
                read_file(reader, f, manifest.backup_id, _checksum_only)
                continue
            local = workdir / f.restored_name
            local.parent.mkdir(parents=True, exist_ok=True)
            written.append(local)
            with open(local, "wb") as fh:
                if f.local_size:  # a full disk fails here, before the download (0 bytes is EINVAL)
                    os.posix_fallocate(fh.fileno(), 0, f.local_size)
                if f.frames:
                    _unzstd_frames(reader, f, manifest.backup_id, fh.fileno())
                else:
                    read_file(reader, f, manifest.backup_id, fh.write)
    except BaseException as exc:
        _remove(written, workdir)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise no_room(manifest.backup_id, workdir, need, free,
                          f" (no space left on device writing {key})") from None
        raise
    first = in_place(storage, prefix, manifest.files[0])
    if manifest.format == "custom":
        path = first if first is not None else workdir / CUSTOM_FILE
    else:
        path = first.parent if first is not None else workdir / DIR_PREFIX.rstrip("/")
    return path, time.monotonic() - start


def _unzstd_frames(reader: HashingReader, f: StoredFile, backup_id: str, fd: int) -> None:
    """A framed zstd file into `fd`, its frames decompressed in parallel as they download;
    then the checksum check, which names damage before the decompressor's view of it."""
    assert f.frames is not None
    _checked(reader, f, backup_id, compression.write_frames(reader, f.frames, fd))


def _remove(files: list[Path], workdir: Path) -> None:
    """Delete downloaded files and the folders made for them under `workdir`."""
    for path in files:
        path.unlink(missing_ok=True)
    for folder in {p.parent for p in files if p.parent != workdir}:
        with contextlib.suppress(OSError):
            folder.rmdir()


def restore_list(path: Path, server_major: int | None = None) -> list[str]:
    """`pg_restore --list`: the archive's table of contents; fails on a damaged archive."""
    pg_restore = find_tool("pg_restore", server_major)
    proc = subprocess.run([pg_restore, "--list", str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CheckFailed(f"pg_restore --list failed: {scrub(proc.stderr.strip())[-1000:]}")
    return _toc_lines(proc.stdout)


def tables_missing(row_counts: dict[str, int], toc: list[str]) -> list[str]:
    """Tables that had rows when the snapshot was taken but have no data in the archive."""
    present = tables_in_toc(toc)
    return sorted(t for t, n in row_counts.items() if n and t not in present)


def tables_in_toc(toc: list[str]) -> set[str]:
    """Tables with a TABLE DATA entry, as schema.table."""
    found = set()
    for line in toc:
        m = re.search(r"TABLE DATA (\S+) (\S+) ", line)
        if m:
            found.add(f"{m.group(1)}.{m.group(2)}")
    return found


def pg_restore_into(server: Server, dbname: str, path: Path, jobs: int, server_major: int | None = None,
                    keep_ownership: bool = False) -> None:
    """pg_restore -j into an existing database. A scratch copy drops owners and grants (the
    roles may not exist there); a copy that will replace production keeps them, so the
    application's role can still read its tables after the swap. A lost connection (the
    server terminated the sessions, or does not answer) is a TransientError; any other
    failure is permanent."""
    pg_restore = find_tool("pg_restore", server_major)
    ownership = [] if keep_ownership else ["--no-owner", "--no-privileges"]
    args = [pg_restore, f"-j{jobs}", *ownership, "--exit-on-error", "--no-password", "-d", dbname, str(path)]
    app_name = f"runbook-restore-{secrets.token_hex(4)}"  # to tell its sessions from any other
    killed_before = sessions_killed(server, dbname)
    proc = subprocess.run(args, env={**server.env(dbname), "PGAPPNAME": app_name}, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise _restore_failed(server, dbname, proc, app_name, killed_before)


def _restore_failed(server: Server, dbname: str, proc: subprocess.CompletedProcess[str], app_name: str,
                    killed_before: int | None) -> RunbookError:
    """Why pg_restore failed, from the server's side: pg_restore exits 1 for every failure,
    and its messages are (translated) text."""
    where = f"pg_restore into database {dbname!r} on {server.describe()}"
    said = scrub(proc.stderr.strip())[-2000:] or "(pg_restore wrote nothing)"
    if proc.returncode < 0:
        return PermanentError(f"{where} was killed by signal {-proc.returncode}. {said}")
    lost = f"{where} lost its connection: "
    if not server_answers(server):
        return TransientError(f"{lost}the server does not answer (SQLSTATE class 08, connection failure). {said}")
    try:
        killed = sessions_killed(server, dbname, app_name)
    except TransientError as exc:
        return TransientError(f"{lost}the server went away (SQLSTATE class 08, connection failure: {exc}). {said}")
    if killed is not None and killed_before is not None and killed > killed_before:
        return TransientError(f"{lost}the server terminated {killed - killed_before} of its session(s) (SQLSTATE "
                              f"57P01, admin shutdown: pg_terminate_backend or a server shutdown). {said}")
    return PermanentError(f"{where} failed (exit {proc.returncode}). {said}")


def pg_dump_major(server_major: int) -> int:
    return tool_major(find_tool("pg_dump", server_major))
