"""The `compression` setting and the zstd streams: pure code, table-driven."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasks import compression
from tasks.compression import Compression


@pytest.mark.parametrize(("spec", "expected"), [
    ("zstd", Compression("zstd", 3)),
    ("zstd:1", Compression("zstd", 1)),
    ("zstd:19", Compression("zstd", 19)),
    ("ZSTD:5", Compression("zstd", 5)),
    (" zstd:4 ", Compression("zstd", 4)),
    ("gzip", Compression("gzip", 6)),
    ("gzip:0", Compression("gzip", 0)),
    ("gzip:9", Compression("gzip", 9)),
])
def test_a_compression_is_a_kind_and_a_level(spec: str, expected: Compression) -> None:
    assert compression.parse(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("lz4", "'lz4' is not a compression; allowed: zstd[:1-19] (default level 3), gzip[:0-9] (default level 6)"),
    ("zstd:0", "'zstd:0': zstd levels run from 1 to 19"),
    ("zstd:20", "'zstd:20': zstd levels run from 1 to 19"),
    ("zstd:-1", "'zstd:-1': zstd levels run from 1 to 19"),
    ("gzip:10", "'gzip:10': gzip levels run from 0 to 9"),
    ("zstd:fast", "'zstd:fast' is not a compression"),
    ("", "'' is not a compression"),
])
def test_a_bad_compression_names_the_value_and_what_is_allowed(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        compression.parse(spec)
    assert message in str(err.value)


@pytest.mark.parametrize(("spec", "ours", "pg_dump_level", "stored"), [
    ("zstd:3", True, 0, "dump.pgc.zst"),   # pg_dump writes uncompressed; we compress
    ("zstd:9", True, 0, "dump.pgc.zst"),
    ("gzip:6", False, 6, "dump.pgc"),      # pg_dump compresses inside its archive
    ("gzip:0", False, 0, "dump.pgc"),
])
def test_who_compresses_and_what_the_stored_file_is_called(spec: str, ours: bool, pg_dump_level: int,
                                                           stored: str) -> None:
    codec = compression.parse(spec)
    assert (codec.ours, codec.pg_dump_level, codec.stored_name("dump.pgc")) == (ours, pg_dump_level, stored)


@pytest.mark.parametrize(("manifest_says", "kind"), [
    (None, "gzip"),          # written before the setting: pg_dump's gzip
    ("gzip:6", "gzip"),
    ("zstd:3", "zstd"),
])
def test_what_a_manifest_says_about_its_compression(manifest_says: str | None, kind: str) -> None:
    assert compression.of_manifest(manifest_says).kind == kind


def _framed(data: bytes, frame_bytes: int = 1 << 20) -> tuple[bytes, list[tuple[int, int]]]:
    """`data` as the backup stores it, fed in 64 KiB chunks, with frames of `frame_bytes`."""
    c = compression.FrameCompressor(3)
    out = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compression, "FRAME_BYTES", frame_bytes)
        for i in range(0, len(data), 65536):
            out.append(c.compress(data[i:i + 65536]))
        out.append(c.flush())
    return b"".join(out), c.frames


DATA = os.urandom(300_000) + b"vehicle_id,odometer,fleet depot\n" * 150_000  # about 5 MB


def test_the_stream_is_cut_into_frames_in_order_that_one_zstd_stream_reads() -> None:
    stored, frames = _framed(DATA)
    assert stored[:4] == b"\x28\xb5\x2f\xfd"
    assert len(frames) == -(-len(DATA) // (1 << 20))  # about one per MiB, the last one shorter
    assert sum(s for s, _ in frames) == len(stored) and sum(r for _, r in frames) == len(DATA)
    chunks = [stored[i:i + 65536] for i in range(0, len(stored), 65536)]
    assert b"".join(compression.decompress(iter(chunks), len(DATA))) == DATA


def test_an_empty_stream_is_one_empty_frame() -> None:
    stored, frames = _framed(b"")
    assert len(frames) == 1 and b"".join(compression.decompress(iter([stored]), 0)) == b""


def test_frames_are_written_in_parallel_each_at_its_place(tmp_path: Path) -> None:
    stored, frames = _framed(DATA)
    out = tmp_path / "dump.pgc"
    with open(out, "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, len(DATA))
        chunks = (stored[i:i + 100_000] for i in range(0, len(stored), 100_000))
        assert compression.write_frames(chunks, frames, fh.fileno(), workers=3) is None
    assert out.read_bytes() == DATA


def _flip(b: bytes) -> bytes:
    return b[:200] + bytes([b[200] ^ 0xFF]) + b[201:]


@pytest.mark.parametrize(("damage", "message"), [
    (lambda b: b[: len(b) // 2], "ends early"),
    (lambda b: b[:-1], "ends early"),
    (_flip, ""),
    (lambda b: b"not zstd at all" + b, ""),
], ids=["half", "last byte cut", "flipped byte", "garbage in front"])
def test_a_damaged_or_cut_stream_is_not_zstd(damage: Callable[[bytes], bytes], message: str,
                                             tmp_path: Path) -> None:
    stored, frames = _framed(DATA)
    with pytest.raises(compression.NotZstd) as err:
        b"".join(compression.decompress(iter([damage(stored)]), len(DATA)))
    assert message in str(err.value)
    with open(tmp_path / "out", "wb") as fh:  # the parallel path says so too, after reading every chunk
        seen: list[int] = []

        def chunks() -> Iterator[bytes]:
            bad = damage(stored)
            for i in range(0, len(bad), 65536):
                seen.append(i)
                yield bad[i:i + 65536]

        broken = compression.write_frames(chunks(), frames, fh.fileno())
    assert isinstance(broken, compression.NotZstd) and message in str(broken)
    assert len(seen) == -(-len(damage(stored)) // 65536)


def test_zstd_on_the_command_line_reads_the_frames_as_one_stream(tmp_path: Path) -> None:
    """The manual restore (docs/operations.md) runs `zstd -d` on what we store."""
    import subprocess

    stored, frames = _framed(DATA)
    assert len(frames) > 1
    (tmp_path / "dump.pgc.zst").write_bytes(stored)
    subprocess.run(["zstd", "-d", "-q", str(tmp_path / "dump.pgc.zst"), "-o", str(tmp_path / "dump.pgc")], check=True)
    assert (tmp_path / "dump.pgc").read_bytes() == DATA
