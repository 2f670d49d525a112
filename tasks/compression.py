"""How a logical backup is compressed: the `compression` setting of a database, and the
zstd streams that carry a dump to storage and back.

    zstd[:level]   pg_dump writes uncompressed custom format (-Z0) and we compress the
                   stream on its way to storage, on every core (the default, level 3)
    gzip[:level]   pg_dump compresses, with zlib on one core (PostgreSQL 15's only choice)

A zstd object is a run of ordinary zstd frames: each 128 MiB of the dump is one frame with
its checksum, compressed on every core. `zstd -d` restores it by hand, without this
project, and a restore decompresses the frames in parallel by the frame sizes the
manifest records. Ways to compress were measured on the 1 GB sample database
(`bench/compression.py`): the `zstandard` wheel on threads (which release the GIL) beat
Debian's `zstd -T2` as a second process in the pipe by 6%; ending a frame every 128 MiB
costs 6% of the wheel's speed and lets a restore decompress on every core.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

DEFAULT = "zstd:3"
KINDS = {"zstd": (3, 1, 19), "gzip": (6, 0, 9)}  # default level, lowest, highest
FRAME_BYTES = 128 * 1024 * 1024  # of the dump per zstd frame: a restore decompresses frames in parallel
WORKERS = os.cpu_count() or 2  # threads that decompress frames
SUFFIX = ".zst"
_SPEC_RE = re.compile(r"^(?P<kind>[a-z]+)(?::(?P<level>-?\d+))?$")


@dataclass(frozen=True)
class Compression:
    kind: str  # "zstd" or "gzip"
    level: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.level}"

    @property
    def ours(self) -> bool:
        """True when we compress (zstd); False when pg_dump does (gzip)."""
        return self.kind == "zstd"

    @property
    def pg_dump_level(self) -> int:
        """pg_dump's -Z: 0 when we compress the stream ourselves."""
        return 0 if self.ours else self.level

    def stored_name(self, name: str) -> str:
        """The key a file pg_dump wrote is stored under: `dump.pgc` or `dump.pgc.zst`."""
        return name + SUFFIX if self.ours else name


def parse(spec: str) -> Compression:
    """`zstd`, `zstd:5`, `gzip:6`... or a ValueError saying what is allowed."""
    allowed = ", ".join(f"{k}[:{lo}-{hi}] (default level {d})" for k, (d, lo, hi) in KINDS.items())
    m = _SPEC_RE.match(spec.strip().lower()) if isinstance(spec, str) else None
    if not m or m.group("kind") not in KINDS:
        raise ValueError(f"{spec!r} is not a compression; allowed: {allowed}")
    default, lo, hi = KINDS[m.group("kind")]
    level = default if m.group("level") is None else int(m.group("level"))
    if not lo <= level <= hi:
        raise ValueError(f"{spec!r}: {m.group('kind')} levels run from {lo} to {hi}")
    return Compression(m.group("kind"), level)


def of_manifest(spec: str | None) -> Compression:
    """What a manifest says; manifests written before the setting existed are pg_dump's gzip
    at an unrecorded level (0 here: the level does not matter for reading)."""
    return parse(spec) if spec else Compression("gzip", 0)


class FrameCompressor:
    """The stream as a run of zstd frames of about FRAME_BYTES of the dump each, every frame
    compressed on all cores (zstd's own workers, which release the GIL) and ended with its
    checksum. `zstd -d` reads the run as one stream; a restore decompresses the frames in
    parallel, by the (stored, raw) sizes recorded in `frames`."""

    def __init__(self, level: int) -> None:
        import zstandard

        self._finish = zstandard.COMPRESSOBJ_FLUSH_FINISH
        self._cctx = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
        self._obj = self._cctx.compressobj()
        self._raw = self._stored = 0  # of the frame being written
        self.frames: list[tuple[int, int]] = []

    def compress(self, chunk: bytes) -> bytes:
        """What is ready to store (often b"")."""
        out = self._obj.compress(chunk)
        self._raw += len(chunk)
        self._stored += len(out)
        if self._raw >= FRAME_BYTES:
            out += self._end_frame()
            self._obj = self._cctx.compressobj()
        return out

    def _end_frame(self) -> bytes:
        tail = self._obj.flush(self._finish)
        self.frames.append((self._stored + len(tail), self._raw))
        self._raw = self._stored = 0
        return tail

    def flush(self) -> bytes:
        return self._end_frame() if self._raw or not self.frames else b""


class NotZstd(Exception):
    """The stored bytes do not decompress: damaged, or cut short."""


def decompress(chunks: Iterator[bytes], raw_size: int) -> Iterator[bytes]:
    """The decompressed bytes of a zstd stream of one or more frames, as its chunks arrive.
    Raises NotZstd on damage, and when it gives back less than `raw_size` (cut short)."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    obj: Any = dctx.decompressobj()
    done, in_frame = 0, False
    for chunk in chunks:
        while chunk:
            in_frame = True
            try:
                out = obj.decompress(chunk)
            except zstandard.ZstdError as exc:
                raise NotZstd(str(exc)) from None
            if out:
                done += len(out)
                yield out
            chunk = b""
            if obj.eof:  # the frame ended, checksum and all: what follows is the next one
                chunk, obj, in_frame = obj.unused_data, dctx.decompressobj(), False
    if in_frame or done < raw_size:
        raise NotZstd(f"the zstd stream ends early: {done} of {raw_size} bytes")
    if done != raw_size:
        raise NotZstd(f"the zstd stream gives {done} bytes, not {raw_size}")


def write_frames(chunks: Iterable[bytes], frames: list[tuple[int, int]], fd: int,
                 workers: int | None = None) -> NotZstd | None:
    """Decompress a framed object into `fd`, each frame at its own offset, on a pool of
    threads while the chunks keep arriving. Reads every chunk, whatever happens, and returns
    the first damage found instead of raising it, so that the caller can check the stored
    bytes' checksum first. OSError (a full disk) is raised."""
    workers = workers or WORKERS
    broken: NotZstd | None = None
    parts: list[memoryview] = []  # of the frame being read
    have = 0
    pending: deque[Future[None]] = deque()
    index, offset = 0, 0

    def settle(future: Future[None]) -> None:
        nonlocal broken
        try:
            future.result()
        except NotZstd as exc:
            broken = broken or exc

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unzstd") as pool:
        for chunk in chunks:
            view = memoryview(chunk)
            while view and broken is None and index < len(frames):
                stored, raw = frames[index]
                take = min(len(view), stored - have)
                parts.append(view[:take])
                have, view = have + take, view[take:]
                if have == stored:
                    pending.append(pool.submit(_frame_into, parts, raw, fd, offset))
                    parts, have = [], 0
                    index, offset = index + 1, offset + raw
                    while len(pending) > workers:  # bounds memory: at most a few frames in flight
                        settle(pending.popleft())
            if view and broken is None:
                broken = NotZstd("the object is longer than its frames")
            # and on damage, read on: the checksum of every stored byte comes first
        while pending:
            settle(pending.popleft())
    if broken is None and index < len(frames):
        broken = NotZstd(f"the zstd stream ends early: {index} of {len(frames)} frames")
    return broken


OUT_PIECE = 4 * 1024 * 1024  # decompressed bytes written at a time


def _frame_into(parts: list[memoryview], raw: int, fd: int, offset: int) -> None:
    """One frame, given as the pieces it arrived in, decompressed to `fd` at `offset` in
    OUT_PIECE writes (no frame-sized buffers)."""
    import zstandard

    obj: Any = zstandard.ZstdDecompressor().decompressobj(write_size=OUT_PIECE)
    done = 0
    try:
        for part in parts:
            data = obj.decompress(part)
            if done + len(data) > raw:
                raise NotZstd(f"frame at byte {offset} of the dump gives more than its {raw} bytes")
            _pwrite_all(fd, data, offset + done)
            done += len(data)
    except zstandard.ZstdError as exc:
        raise NotZstd(f"frame at byte {offset} of the dump: {exc}") from None
    if not obj.eof or done != raw:
        raise NotZstd(f"frame at byte {offset} of the dump gives {done} bytes, not {raw}")


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
