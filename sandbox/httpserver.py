"""Serving an ASGI app on loopback, in a thread or as a detached process.

Shared by the fake API server and the sample web service: `ThreadedServer` runs uvicorn on
a socket bound before the thread starts (so port 0 gets a free port with no race), and
stops it cleanly; `LoopbackServer` is what both servers' classes build on. `DetachedProcess`
runs `python -m MODULE` detached from the caller (with `spawn` / `terminate`), with a JSON
info file in a state folder telling its pid and URL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import uvicorn

REPO_ROOT = Path(__file__).resolve().parents[1]


def bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio turns Nagle off only on sockets whose proto says TCP,
    # and with Nagle on, each keep-alive response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class ThreadedServer:
    """uvicorn in a daemon thread, on a socket it binds at once."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, name: str = "http") -> None:
        self.sock = bind(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_keep_alive=5,
            timeout_graceful_shutdown=3,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name=name, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server on {self.url} did not start")
            time.sleep(0.01)

    def stop(self, before_shutdown: Callable[[], None] | None = None) -> None:
        if before_shutdown is not None:
            before_shutdown()
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


class LoopbackServer(ABC):
    """An app served by a ThreadedServer (`_http`) together with what runs behind it: a
    subclass starts and stops both in `start` / `stop`; `with` does the same."""

    _http: ThreadedServer

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def port(self) -> int:
        return self._http.port

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- detached processes -------------------------------------------------------------------


@dataclass(frozen=True)
class DetachedServer:
    """A sandbox server running as its own process."""

    pid: int
    url: str
    state_dir: Path


@dataclass(frozen=True)
class DetachedProcess:
    """How a sandbox server runs detached: `python -m MODULE --state-dir DIR ...` in its own
    session, which writes DIR/INFO_FILE ({"pid", "url", "port", ...}) while it serves (see
    `serve_until_signal`) and logs to DIR/LOG_FILE."""

    module: str
    info_file: str
    log_file: str

    def start(
        self, state_dir: str | Path, flags: Mapping[str, Any], *, timeout: float = 20
    ) -> dict[str, Any]:
        """Start it with `flags` on its command line and wait until it serves; returns its info.

        A flag whose value is None is left out, a list repeats the flag for each item, and a
        mapping is written to DIR/<flag>.json, whose path the flag then gets."""
        state = Path(state_dir)
        state.mkdir(parents=True, exist_ok=True)
        args = ["--state-dir", str(state)]
        for flag, value in flags.items():
            if isinstance(value, Mapping):
                path = state / f"{flag.lstrip('-')}.json"
                path.write_text(json.dumps(value, indent=2))
                value = path
            for item in value if isinstance(value, list) else [value]:
                if item is not None:
                    args += [flag, str(item)]
        return spawn(self.module, args, state / self.info_file, state / self.log_file, timeout=timeout)

    def stop(self, state_dir: str | Path, *, timeout: float = 10) -> bool:
        """Stop the process DIR/INFO_FILE names (SIGTERM, then SIGKILL); False if none ran."""
        return terminate(Path(state_dir) / self.info_file, timeout=timeout)


def write_json_atomically(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def spawn(
    module: str, args: Sequence[str], info_file: Path, log_file: Path, *, timeout: float = 20
) -> dict[str, Any]:
    """Start `python -m module args...` in its own session and wait until it has written
    `info_file` (with its pid). Returns that info; raises RuntimeError with the log's tail.

    posix_spawn rather than subprocess.Popen: the caller (say the sandbox CLI) may exit
    while the server runs on, and a dropped Popen of a live child warns."""
    info_file.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-m", module, *args],
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(log_fd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            tail = log_file.read_text(errors="replace")[-2000:]
            code = os.waitstatus_to_exitcode(status)
            raise RuntimeError(
                f"{module} exited with code {code} before it was ready; log {log_file}:\n{tail}"
            )
        if info_file.exists():
            info = json.loads(info_file.read_text())
            if info.get("pid") == pid:
                return info
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise RuntimeError(f"{module} did not get ready within {timeout}s; log {log_file}")


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def terminate(info_file: Path, *, timeout: float = 10) -> bool:
    """Stop the process `info_file` names (SIGTERM, then SIGKILL). False if none was running."""
    if not info_file.exists():
        return False
    pid = json.loads(info_file.read_text())["pid"]
    if not _alive(pid):
        info_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
            break
        time.sleep(0.05)
    info_file.unlink(missing_ok=True)
    return True


def wait_for_signal() -> None:
    """Block the main thread until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1):
        pass


def serve_until_signal(server: Any, info_file: Path, **info: Any) -> None:
    """The detached process's life: publish pid and URL in `info_file`, serve until
    SIGTERM or SIGINT, then stop the server and remove the file."""
    try:
        info = {"pid": os.getpid(), "url": server.url, "port": server.port, **info}
        write_json_atomically(info_file, info)
        print(json.dumps(info), flush=True)
        wait_for_signal()
    finally:
        server.stop()
        info_file.unlink(missing_ok=True)
