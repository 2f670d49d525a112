"""Benchmark: two ways to compress the dump stream with zstd, against the raw shell pipe.

    .venv/bin/python bench/compression.py       # about 1 GB (BENCH_SIZE_MB to change)

The backup flow reads pg_dump's uncompressed custom format (-Z0) and must hash the
stored (compressed) bytes on the way to storage. Either zstd runs as a second process in
the pipe and we read its output, or the `zstandard` wheel compresses in this process on
its own threads (they release the GIL). Each variant writes to a file and hashes what it
writes, as a backup to file:// does; each runs twice, alternating, and the best counts:
- raw: `pg_dump -Fc -Z0 | zstd -3 -T2 > file` in a shell, the yardstick;
- cli: pg_dump -Z0 | zstd -3 -T2, its output read, hashed and written by Python;
- wheel: pg_dump -Z0 read by Python, `zstandard` level 3 on N threads (1, all CPUs), one frame;
- ours: `tasks.compression.FrameCompressor`, the wheel on all CPUs with a frame ended every
  128 MiB (so that a restore decompresses frames in parallel).

`tasks/compression.py` uses what wins. Prints a table, then one JSON line.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _lib.common import bench_sandbox, database_bytes, raw_zstd_pipe  # noqa: E402

SIZE_MB = int(os.environ.get("BENCH_SIZE_MB", "1024"))
CHUNK = 1024 * 1024


def main() -> None:
    import zstandard

    from tasks import postgres
    from tasks.compression import FrameCompressor

    with bench_sandbox("compression", SIZE_MB) as (state, _):
        server = postgres.Server.from_dsn(os.environ["RUNBOOK_SANDBOX_PG_DSN"])
        env = server.env("fleet")
        pg_dump = postgres.find_tool("pg_dump", 15)
        out = state.workdir / "out.zst"
        mb = database_bytes(server, "fleet") / 1e6

        def dump() -> subprocess.Popen[bytes]:
            return subprocess.Popen([pg_dump, "-Fc", "-Z0"], stdout=subprocess.PIPE, env=env)

        def store(pipe: Any, compressor: Any = None) -> int:
            """Read `pipe` to its end, compressed by `compressor` (compress/flush) if given, hashed
            and written to `out`, as a backup to file:// does. Returns the bytes written."""
            size, sha = 0, hashlib.sha256()
            with open(out, "wb") as fh:
                def put(data: bytes) -> None:
                    nonlocal size
                    sha.update(data)
                    fh.write(data)
                    size += len(data)

                while chunk := pipe.read1(CHUNK):
                    put(compressor.compress(chunk) if compressor else chunk)
                if compressor:
                    put(compressor.flush())
            pipe.close()
            return size

        def cli() -> int:
            source = dump()
            zstd = subprocess.Popen(["zstd", "-3", "-T2", "-q", "-c"], stdin=source.stdout, stdout=subprocess.PIPE)
            assert source.stdout is not None
            source.stdout.close()
            size = store(zstd.stdout)
            if source.wait() != 0 or zstd.wait() != 0:
                raise RuntimeError("pg_dump | zstd failed")
            return size

        def in_process(make_compressor: Callable[[], Any]) -> Callable[[], int]:
            def run() -> int:
                source = dump()
                size = store(source.stdout, make_compressor())
                if source.wait() != 0:
                    raise RuntimeError("pg_dump failed")
                return size

            return run

        def wheel(threads: int) -> Callable[[], int]:
            return in_process(
                lambda: zstandard.ZstdCompressor(level=3, threads=threads, write_checksum=True).compressobj())

        def raw() -> int:
            raw_zstd_pipe(server, "fleet", Path(out))
            return out.stat().st_size

        variants: dict[str, Callable[[], int]] = {
            "raw: pg_dump -Z0 | zstd -3 -T2 > file (shell)": raw,
            "cli: zstd -T2 in the pipe, Python hashes": cli,
            "wheel: zstandard, 1 thread": wheel(1),
            "wheel: zstandard, all CPUs (threads=-1)": wheel(-1),
            "ours: all CPUs, a frame per 128 MiB": in_process(lambda: FrameCompressor(3)),
        }
        runs: dict[str, list[float]] = {name: [] for name in variants}
        sizes: dict[str, int] = {}
        for _ in range(2):
            for name, fn in variants.items():
                started = time.monotonic()
                sizes[name] = fn()
                runs[name].append(time.monotonic() - started)

    best = {name: min(times) for name, times in runs.items()}
    print(f"database: {mb:.0f} MB on disk, {os.cpu_count()} CPUs")
    print(f"{'variant':<48} {'seconds':>8} {'MB/s':>8} {'output MB':>10}")
    for name, secs in best.items():
        print(f"{name:<48} {secs:>8.2f} {mb / secs:>8.1f} {sizes[name] / 1e6:>10.1f}")
    keys = ["raw", "cli", "wheel_1", "wheel_all", "ours"]
    figures = {"database_mb": round(mb, 1)}
    for key, (name, secs) in zip(keys, best.items(), strict=True):
        figures[f"{key}_seconds"] = round(secs, 2)
        figures[f"{key}_runs"] = [round(t, 2) for t in runs[name]]
    names = list(variants)
    figures["wheel_over_cli"] = round(best[names[1]] / best[names[3]], 3)  # above 1: the wheel is faster
    figures["ours_over_raw"] = round(best[names[0]] / best[names[4]], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
