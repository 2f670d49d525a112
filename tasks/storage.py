"""Backup storage: S3 (boto3) or a local folder, behind one small interface.

Keys are relative to the storage URL's prefix. Writes are all-or-nothing: an S3 object
is a multipart upload completed only on `commit()` and aborted otherwise; a file is
written as `<name>.partial` and renamed on `commit()`.

Transient S3 failures (5xx, throttling, dropped connections) are retried by botocore's
"standard" mode with exponential backoff and jitter; what is left over surfaces as
`TransientError`, and auth or missing-bucket errors as `PermanentError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from tasks.config import StorageConfig
from tasks.errors import ObjectMissing, PermanentError, TransientError

CHUNK = 1024 * 1024
PARTIAL = ".partial"
S3_CONNECT_TIMEOUT_S = 10
S3_READ_TIMEOUT_S = 120  # one part of a multipart upload can take a while on a slow link
PARTS_IN_FLIGHT = 2  # parts queued for the uploader thread: bounds memory at 2 x part size
S3_RESUME_BACKOFF_S = 0.2  # before picking a broken download up again, doubling each time
S3_RESUME_BACKOFF_MAX_S = 10.0
ABORT_WAIT_S = 60  # for the uploader to finish its current part before the upload is aborted


class ObjectWriter(Protocol):
    bytes_written: int

    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class Storage(Protocol):
    url: str

    def writer(self, key: str) -> ObjectWriter: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def iter_chunks(self, key: str) -> Iterator[bytes]: ...
    def exists(self, key: str) -> bool: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def local_path(self, key: str) -> Path | None: ...
    def abort_stale_uploads(self, prefix: str) -> list[str]: ...


def open_storage(cfg: StorageConfig) -> Storage:
    """The storage behind `cfg`: one client per flow run and storage config, shared by the
    run's tasks (boto3 clients are thread-safe), so a backup makes one S3 client rather
    than one per step. A new run resolves the credentials again."""
    key = (_run_key(), cfg)
    with _open_lock:
        storage = _open.pop(key, None) or _new_storage(cfg)
        _open[key] = storage  # most recently used last
        while len(_open) > OPEN_MAX:
            _open.popitem(last=False)
    return storage


def _new_storage(cfg: StorageConfig) -> Storage:
    parsed = urlparse(cfg.url)
    if parsed.scheme == "file":
        return FileStorage(cfg.url, Path(parsed.path))
    return S3Storage(cfg)


def _run_key() -> str:
    """The flow run whose tasks share a client; '' outside a run."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx is not None and ctx.flow_run is not None else ""


# Clients of the runs in progress in this process (a serve process runs many at once).
OPEN_MAX = 32
_open: OrderedDict[tuple[str, StorageConfig], Storage] = OrderedDict()
_open_lock = threading.Lock()


# --- JSON helpers ------------------------------------------------------------------------


def put_json(storage: Storage, key: str, doc: dict[str, Any]) -> None:
    storage.put_bytes(key, json.dumps(doc, indent=2, sort_keys=True, default=str).encode())


def get_json(storage: Storage, key: str) -> dict[str, Any]:
    return json.loads(storage.get_bytes(key))


@dataclass
class HashingReader:
    """Reads an object chunk by chunk while computing its sha256 and size."""

    chunks: Iterator[bytes]
    sha256: Any = field(default_factory=hashlib.sha256)
    size: int = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.sha256.update(chunk)
            self.size += len(chunk)
            yield chunk


# --- local folder ------------------------------------------------------------------------


class FileWriter:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.tmp = path.with_name(path.name + PARTIAL)
        self.fh = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.bytes_written += len(data)

    def commit(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


class FileStorage:
    def __init__(self, url: str, root: Path) -> None:
        self.url = url
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents and path != self.root.resolve():
            raise PermanentError(f"key {key!r} escapes storage root {self.url}")
        return path

    def writer(self, key: str) -> FileWriter:
        try:
            return FileWriter(self._path(key))
        except PermissionError as exc:
            raise PermanentError(f"cannot write to {self.url}/{key}: {exc.strerror}") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        w = self.writer(key)
        try:
            w.write(data)
            w.commit()
        except BaseException:
            w.abort()
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(f"{self.url}/{key} does not exist") from None

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        try:
            fh = open(self._path(key), "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise ObjectMissing(f"{self.url}/{key} does not exist") from None
        with fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        root = self.root.resolve()
        return sorted(str(p.resolve().relative_to(root)) for p in base.rglob("*") if p.is_file())

    def delete_prefix(self, prefix: str) -> int:
        target = self._path(prefix)
        if target.is_file():
            target.unlink()
            return 1
        if not target.exists():
            return 0
        count = sum(1 for p in target.rglob("*") if p.is_file())
        shutil.rmtree(target)
        return count

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def abort_stale_uploads(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        stale = [p for p in base.rglob(f"*{PARTIAL}")] if base.is_dir() else []
        for p in stale:
            p.unlink(missing_ok=True)
        return [str(p.relative_to(self.root.resolve())) for p in stale]


# --- S3 -----------------------------------------------------------------------------------


def classify_s3_error(exc: Exception, where: str = "") -> Exception:
    """Map a botocore error to TransientError or PermanentError, by class and status code.
    `where` (s3://bucket/key) and the attempts botocore made go into the message."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, NoCredentialsError

    on = f" on {where}" if where else ""
    if isinstance(exc, ClientError):
        meta = exc.response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        attempts = f" after {meta['RetryAttempts'] + 1} attempt(s)" if "RetryAttempts" in meta else ""
        if status >= 500 or status == 429 or code in {"SlowDown", "Throttling", "RequestTimeout"}:
            return TransientError(f"S3 {code or status}{on}{attempts}: {exc}")
        return PermanentError(f"S3 refused the request ({code or status}){on}: {exc}")
    if isinstance(exc, ConnectionError | HTTPClientError):
        return TransientError(f"S3 unreachable{on}: {exc}")
    if isinstance(exc, NoCredentialsError):
        return PermanentError("S3 credentials not found: set access_key_id/secret_access_key or the AWS chain")
    return exc


@contextlib.contextmanager
def s3_errors(bucket: str, key: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise classify_s3_error(exc, f"s3://{bucket}/{key}") from exc


class S3Writer:
    """A multipart upload fed from one thread and uploaded from another, so a slow
    part upload does not stall the producer (pg_dump's pipe)."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.s = storage
        self.key = key
        self.bytes_written = 0
        self.part_size = storage.part_size
        self.buf = bytearray()
        self.parts: list[dict[str, Any]] = []
        self.queued = 0
        self.error: BaseException | None = None
        with s3_errors(storage.bucket, storage.full_key(key)):
            self.upload_id = storage.client.create_multipart_upload(
                Bucket=storage.bucket, Key=storage.full_key(key), **storage.sse_args()
            )["UploadId"]
        self.q: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=PARTS_IN_FLIGHT)
        self.thread = threading.Thread(target=self._uploader, name=f"s3-upload-{key}", daemon=True)
        self.thread.start()

    def _uploader(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is not None:
                continue  # drain the queue so the producer never blocks
            number, body = item
            try:
                with s3_errors(self.s.bucket, f"{self.s.full_key(self.key)} (part {number})"):
                    etag = self.s.client.upload_part(
                        Bucket=self.s.bucket,
                        Key=self.s.full_key(self.key),
                        UploadId=self.upload_id,
                        PartNumber=number,
                        Body=body,
                    )["ETag"]
                self.parts.append({"PartNumber": number, "ETag": etag})
            except BaseException as exc:  # noqa: BLE001 - handed to the producer
                self.error = exc

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def write(self, data: bytes) -> None:
        self._check()
        self.buf += data
        self.bytes_written += len(data)
        while len(self.buf) >= self.part_size:
            self._queue(bytes(self.buf[: self.part_size]))
            del self.buf[: self.part_size]

    def _queue(self, body: bytes) -> None:
        self.queued += 1
        self.q.put((self.queued, body))

    def _flush_and_join(self) -> None:
        if self.buf or not self.queued:
            self._queue(bytes(self.buf))
            self.buf.clear()
        self.q.put(None)
        self.thread.join()

    def commit(self) -> None:
        self._flush_and_join()
        self._check()
        parts = sorted(self.parts, key=lambda p: p["PartNumber"])
        with s3_errors(self.s.bucket, self.s.full_key(self.key)):
            self.s.client.complete_multipart_upload(
                Bucket=self.s.bucket,
                Key=self.s.full_key(self.key),
                UploadId=self.upload_id,
                MultipartUpload={"Parts": parts},
            )

    def abort(self) -> None:
        if self.thread.is_alive():
            self.error = self.error or RuntimeError("aborted")
            self.q.put(None)
            self.thread.join(timeout=ABORT_WAIT_S)
        with s3_errors(self.s.bucket, self.s.full_key(self.key)):
            self.s.client.abort_multipart_upload(
                Bucket=self.s.bucket, Key=self.s.full_key(self.key), UploadId=self.upload_id
            )


class S3Storage:
    def __init__(self, cfg: StorageConfig) -> None:
        import boto3
        from botocore.config import Config

        parsed = urlparse(cfg.url)
        self.url = cfg.url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.opts = cfg.s3
        self.part_size = cfg.s3.part_size_mb * 1024 * 1024
        creds: dict[str, str] = {}
        if cfg.s3.access_key_id and cfg.s3.secret_access_key:
            creds = {
                "aws_access_key_id": cfg.s3.access_key_id.resolve(),
                "aws_secret_access_key": cfg.s3.secret_access_key.resolve(),
            }
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=cfg.s3.endpoint_url,
            region_name=cfg.s3.region,
            # botocore's "standard" mode: 5xx, throttling and dropped connections, backoff with jitter
            config=Config(retries={"mode": "standard", "total_max_attempts": cfg.s3.max_attempts},
                          connect_timeout=S3_CONNECT_TIMEOUT_S, read_timeout=S3_READ_TIMEOUT_S),
            **creds,
        )

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def sse_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        if self.opts.sse:
            args["ServerSideEncryption"] = self.opts.sse
        if self.opts.kms_key_id:
            args["SSEKMSKeyId"] = self.opts.kms_key_id
        return args

    def writer(self, key: str) -> S3Writer:
        return S3Writer(self, key)

    def put_bytes(self, key: str, data: bytes) -> None:
        with s3_errors(self.bucket, self.full_key(key)):
            self.client.put_object(Bucket=self.bucket, Key=self.full_key(key), Body=data, **self.sse_args())

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_chunks(key))

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        """The object's bytes as they arrive. A connection that breaks mid-body (botocore
        retries a request, not a stream) is picked up where it broke, with a Range request
        pinned to the same object version by its ETag, up to `s3.max_attempts` times."""
        from botocore.exceptions import ConnectionClosedError, ReadTimeoutError, ResponseStreamingError

        full = self.full_key(key)
        offset, etag = 0, None
        for attempt in range(1, self.opts.max_attempts + 1):
            with s3_errors(self.bucket, full):
                try:
                    pinned = {"Range": f"bytes={offset}-", "IfMatch": etag} if etag else {}
                    resp = self.client.get_object(Bucket=self.bucket, Key=full, **pinned)
                except self.client.exceptions.NoSuchKey:
                    raise ObjectMissing(f"{self.url}/{key} does not exist") from None
                etag = etag or resp["ETag"]
                try:
                    for chunk in resp["Body"].iter_chunks(CHUNK):
                        offset += len(chunk)
                        yield chunk
                    return
                except (ResponseStreamingError, ConnectionClosedError, ReadTimeoutError) as exc:
                    if attempt == self.opts.max_attempts:
                        raise TransientError(f"S3 download of s3://{self.bucket}/{full} broke off at byte {offset} "
                                             f"{attempt} times: {exc}") from exc
            time.sleep(min(S3_RESUME_BACKOFF_S * 2 ** (attempt - 1), S3_RESUME_BACKOFF_MAX_S))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with s3_errors(self.bucket, self.full_key(key)):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
                return True
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return False
                raise

    def list_keys(self, prefix: str) -> list[str]:
        full = self.full_key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        with s3_errors(self.bucket, full):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        with s3_errors(self.bucket, self.full_key(prefix)):
            for i in range(0, len(keys), 1000):
                batch = [{"Key": self.full_key(k)} for k in keys[i : i + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def local_path(self, key: str) -> Path | None:
        return None

    def open_uploads(self, prefix: str) -> list[dict[str, Any]]:
        uploads: list[dict[str, Any]] = []
        with s3_errors(self.bucket, self.full_key(prefix)):
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.full_key(prefix)
            ):
                uploads.extend(page.get("Uploads", []))
        return uploads

    def abort_stale_uploads(self, prefix: str) -> list[str]:
        """Abort uploads left open by a process that died (SIGKILL, lost node)."""
        aborted = []
        for up in self.open_uploads(prefix):
            with s3_errors(self.bucket, up["Key"]):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
            aborted.append(up["Key"])
        return aborted
