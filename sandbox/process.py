"""Process plumbing for the sandbox: run tools, find free ports, wait, stop processes.

Every helper here keeps secrets out of what it reports: `run` takes the secrets to
scrub and removes them from the stderr it puts in an error, because a tool may echo a
connection string back at us.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import psutil

from tasks.errors import PermanentError

REDACTED = "********"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by asterisks, so it is safe to print or raise."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def tail(text: str, lines: int = 15) -> str:
    """The last lines of a tool's output: the error is almost always there."""
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,
    secrets: Iterable[str] = (),
    timeout: float = 120,
    new_session: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion; on failure raise PermanentError naming `what` went wrong.

    Secrets must come in through `env` or `input`, never `argv` (argv is visible to
    every user in `ps`); `secrets` lists them so they are scrubbed from the message.
    `new_session` detaches what the tool leaves running (a server) from our terminal,
    so a Ctrl-C in the shell that ran `up` does not reach it.
    """
    secrets = list(secrets)
    full_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(
            list(argv),
            env=full_env,
            cwd=cwd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
            start_new_session=new_session,
        )
    except FileNotFoundError:
        raise PermanentError(f"{what}: program {argv[0]!r} not found") from None
    except subprocess.TimeoutExpired:
        raise PermanentError(f"{what}: {Path(argv[0]).name} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        detail = tail(proc.stderr or proc.stdout or "(no output)")
        raise PermanentError(
            f"{what}: {Path(argv[0]).name} exited with status {proc.returncode}:\n{scrub(detail, secrets)}"
        )
    return proc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it when we bind port 0).

    Another process could take it before our server binds it; callers retry on
    "address in use" rather than pretend the race away.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists (zombies count as gone)."""
    if not pid or pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # exists, owned by someone else


def cmdline(pid: int) -> str:
    """The command line of a process, '' if it is gone or unreadable."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll `check` until it is true or `timeout` seconds pass; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_process_group(pid: int, grace: float = 10.0) -> None:
    """Stop a process we started in its own session: SIGTERM to the group, then SIGKILL.

    The group id equals the pid because we start these with start_new_session=True;
    signalling the group also reaches any helper the process forked.
    """

    def gone() -> bool:
        _reap(pid)
        return not _group_alive(pid)

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        if wait_until(gone, wait):
            return
    raise PermanentError(f"process group {pid} did not stop after SIGKILL")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # A group of zombies still answers the signal; only live members count. psutil does
    # not report process groups, so each process's group comes from getpgid.
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(ProcessLookupError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                return True
    return False


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# --- the OS user that runs PostgreSQL ---------------------------------------------------


def running_as_root() -> bool:
    return os.geteuid() == 0


def postgres_account() -> pwd.struct_passwd:
    """The OS account PostgreSQL runs as: 'postgres' when we are root, else ourselves.

    initdb and postgres refuse to run as root, so as root we hand them to the account
    the Debian package creates.
    """
    if not running_as_root():
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PermanentError(
            "running as root, so PostgreSQL must run as the OS user 'postgres', which does not exist; "
            "install postgresql-15 (`make install`) or run the sandbox as a non-root user"
        ) from None


def as_postgres(argv: Sequence[str]) -> list[str]:
    """argv prefixed so that it runs as the PostgreSQL account (a no-op when not root)."""
    if not running_as_root():
        return list(argv)
    return ["runuser", "-u", postgres_account().pw_name, "--", *argv]
