"""The sandbox's S3: moto's server on loopback, with the backup bucket created.

moto keeps everything in memory and accepts any access key, so the keys we hand out
only make the client side look like production. Its output goes to
`<workdir>/moto.log`; its pid to `<workdir>/moto.pid`, so `down` can find it even
if state.json is gone.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from sandbox.process import cmdline, pid_alive, stop_process_group, tail
from tasks.errors import PermanentError

HOST = "127.0.0.1"
REGION = "us-east-1"
START_TIMEOUT = 60.0

# Servers this process started, kept so the Popen objects are not garbage-collected
# while moto runs (that warns "subprocess is still running") and so `stop` reaps them.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


class PortInUse(PermanentError):
    """The port we picked was taken before moto could bind it."""


def start(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """Start moto's server detached from our session; returns at once (see `wait_ready`).

    Starting is slow (moto imports a lot), so `up` starts it first and creates the
    PostgreSQL cluster meanwhile.
    """
    log = workdir / "moto.log"
    # Each attempt starts the log afresh, so `wait_ready` judges only this one.
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,  # a Ctrl-C in the shell that ran `up` must not reach it
        )
    _STARTED[proc.pid] = proc
    (workdir / "moto.pid").write_text(f"{proc.pid}\n")
    return proc


def wait_ready(proc: subprocess.Popen[bytes], workdir: Path, port: int) -> None:
    """Wait until moto answers HTTP on its port; raise with its log if it died or hung."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = _read(workdir / "moto.log")
            if "Address already in use" in text:
                raise PortInUse(f"port {port} was taken before moto could bind it")
            raise PermanentError(
                f"moto's S3 server exited with status {proc.returncode} while starting; "
                f"{workdir / 'moto.log'}:\n{tail(text)}"
            )
        if answers(port):
            return
        time.sleep(0.1)
    raise PermanentError(f"moto's S3 server did not answer on {HOST}:{port} within {START_TIMEOUT:.0f} s")


def answers(port: int, timeout: float = 1.0) -> bool:
    """Whether an HTTP server answers on the port (any status counts).

    http.client rather than urllib, so an HTTP_PROXY in the environment is never used
    for loopback.
    """
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/moto-api/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def client(endpoint: str, access_key: str, secret_key: str):  # type: ignore[no-untyped-def]
    """A boto3 S3 client for the sandbox endpoint, never going through a proxy."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(proxies={}, retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3, read_timeout=10),
    )


def create_bucket(endpoint: str, access_key: str, secret_key: str, bucket: str) -> None:
    try:
        client(endpoint, access_key, secret_key).create_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as exc:
        raise PermanentError(f"creating bucket {bucket!r} on {endpoint}: {exc}") from None


def check(endpoint: str, access_key: str, secret_key: str, bucket: str) -> str:
    """One line on the S3 server; raises if the bucket does not answer."""
    s3 = client(endpoint, access_key, secret_key)
    s3.head_bucket(Bucket=bucket)
    count = s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0)
    return f"moto S3, bucket {bucket} ({count}{'+' if count >= 1000 else ''} objects)"


def pid_from_file(workdir: Path) -> int | None:
    try:
        return int((workdir / "moto.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def stop(workdir: Path, pid: int | None) -> int | None:
    """Stop moto if it runs; returns the pid it had, None if nothing ran.

    The pid comes from our state or moto.pid; we check it still is moto before
    signalling, because a pid can be reused after a reboot.
    """
    for candidate in (pid, pid_from_file(workdir)):
        if candidate and pid_alive(candidate) and "moto" in cmdline(candidate):
            stop_process_group(candidate)
            _forget(candidate)
            return candidate
    if pid:
        _forget(pid)
    return None


def _forget(pid: int) -> None:
    proc = _STARTED.pop(pid, None)
    if proc is not None:
        proc.wait(timeout=5)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
