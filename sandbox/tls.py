"""A TLS terminator in front of moto's plain-HTTP S3 server, for pgBackRest.

pgBackRest speaks S3 only over TLS, and stock `moto_server --ssl` breaks on the first PUT:
werkzeug closes the TLS socket without a close_notify alert, and pgBackRest (OpenSSL 3)
fails with "unexpected eof while reading". This terminator accepts TLS on loopback, copies
the bytes to and from moto's HTTP port, and when it closes a client connection it first
does a proper TLS shutdown (`SSLSocket.unwrap()`: close_notify), then closes.

One thread per client connection, each with its own upstream connection; both sockets are
non-blocking and one poll loop copies both directions (an OpenSSL connection must not be
read and written from two threads at once). Reads are 256 KiB, and each direction buffers at
most 1 MiB before it stops reading, so a slow side slows the other instead of eating memory.
Half-close works both ways: a client's close_notify (or FIN) becomes a FIN to moto after
what it sent is delivered; moto's FIN becomes a close_notify to the client after what moto
sent is delivered.

The certificate is self-signed (`make_certificate`, with the `openssl` CLI) and is its own
CA: clients verify against the certificate file. `python -m sandbox.tls` runs one detached
(`start_detached` / `stop_detached`), as the fault proxy does. This module imports only the
standard library, so the detached process starts quickly.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import json
import os
import resource
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

INFO_FILE = "tls.json"
LOG_FILE = "tls.log"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"

READ_SIZE = 256 * 1024
BUFFER_LIMIT = 1024 * 1024  # per direction: stop reading a side while this much waits for the other
HANDSHAKE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 2.0  # how long unwrap() waits for the client's close_notify in answer to ours
IDLE_POLL = 1.0  # poll timeout: how often an idle connection looks at the stop flag
CERT_DAYS = 30

_BAD_GATEWAY = (b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s")
_GONE = (ConnectionError, ssl.SSLError, OSError, ValueError)


# --- certificate -----------------------------------------------------------------------------


def make_certificate(directory: Path, *, host: str = "127.0.0.1", days: int = CERT_DAYS) -> tuple[Path, Path]:
    """A self-signed certificate for `host` (its own CA) and its key, made with `openssl req`.

    Returns (cert, key). The certificate is world-readable (0644: the PostgreSQL account's
    pgBackRest verifies against it), the key only by us (0600: the terminator runs as us).
    Its SAN holds the address both as a DNS name (pgBackRest 2.45 matches the endpoint
    against DNS names only) and as an IP address (what Python's ssl matches for an IP)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    cert, key = directory / CERT_FILE, directory / KEY_FILE
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days),
            "-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host},IP:{host}",
            "-keyout", str(key), "-out", str(cert)]
    old = os.umask(0o077)  # the key is never readable by anyone else, not even for a moment
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise RuntimeError("making the sandbox's TLS certificate: program 'openssl' not found") from None
    finally:
        os.umask(old)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl req exited with status {proc.returncode}: {proc.stderr.strip()[-500:]}")
    key.chmod(0o600)
    cert.chmod(0o644)
    return cert, key


def client_context(ca_file: str | Path) -> ssl.SSLContext:
    """An SSL context that trusts only the sandbox's certificate."""
    return ssl.create_default_context(cafile=str(ca_file))


# --- the terminator ----------------------------------------------------------------------------


class TLSTerminator:
    """TLS on `host:port` (0: a free port), plain TCP to `upstream` (http://HOST:PORT).
    `with` starts and stops it; `url` is https://host:port."""

    def __init__(self, upstream: str, cert: str | Path, key: str | Path, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or parts.path.strip("/"):
            raise ValueError(f"upstream {upstream!r}: give http://HOST:PORT (plain HTTP, no path)")
        self.upstream = f"http://{parts.netloc}"
        self.upstream_addr = (parts.hostname, parts.port or 80)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(cert), str(key))
        # moto's server (werkzeug) ends every response with `Connection: close`, so each S3
        # request is a new connection and a full handshake; no client resumes a session, so
        # TLS 1.3 session tickets would only cost time.
        self.context.num_tickets = 0
        self.ca_file = Path(cert)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(256)
        self.host, self.port = self._listener.getsockname()[:2]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._acceptor = threading.Thread(target=self._accept, name="tls-accept", daemon=True)
        self.connections = 0  # accepted so far

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> TLSTerminator:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
        if self._acceptor.is_alive():
            self._acceptor.join(timeout=5)
        self._listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the thread waiting on it
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)

    def __enter__(self) -> TLSTerminator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError as exc:
                if self._stopping.is_set() or exc.errno in (errno.EBADF, errno.EINVAL):
                    return
                time.sleep(0.05)  # EMFILE and the like: do not spin
                continue
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(sock,), name="tls-conn", daemon=True)
            with self._lock:
                self._open.add(sock)
                self._threads.add(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        upstream: socket.socket | None = None
        client: ssl.SSLSocket | None = None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(HANDSHAKE_TIMEOUT)
            client = self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            with self._lock:  # the SSL socket took over raw's file descriptor: `stop` must see it
                self._open.discard(raw)
                self._open.add(client)
                if self._stopping.is_set():
                    return
            try:
                client.do_handshake()
            except _GONE as exc:
                _log(f"handshake failed: {exc}")  # a port probe, or a client that does not trust us
                return
            # moto is dialled only once the client speaks: a probe that just shakes hands (like
            # `handshake`, or the wait in `start_detached` before moto is up) costs it nothing.
            client.settimeout(None)
            first = client.recv(READ_SIZE)
            if not first:
                _close_tls(client)
                return
            try:
                upstream = socket.create_connection(self.upstream_addr, timeout=CONNECT_TIMEOUT)
            except OSError as exc:
                _log(f"upstream {self.upstream} unreachable: {exc}")
                text = f"TLS terminator: upstream {self.upstream} unreachable: {exc}\n".encode()
                with contextlib.suppress(*_GONE):
                    client.sendall(_BAD_GATEWAY % (len(text), text))
                _close_tls(client)
                return
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open.add(upstream)
            if _pump(client, upstream, self._stopping, first):
                _close_tls(client)
        except Exception as exc:  # noqa: BLE001 - one broken connection must not end the others
            _log(f"connection failed: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                for sock in (raw, client, upstream):
                    self._open.discard(sock)
                self._threads.discard(threading.current_thread())
            for sock in (upstream, client, raw):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()


def _pump(client: ssl.SSLSocket, upstream: socket.socket, stopping: threading.Event, first: bytes) -> bool:
    """Copy both ways (starting with `first`, from the client) until moto has said all it will
    and the client has it; returns whether the client connection is still fit for a TLS
    shutdown (False after an error on it)."""
    client.setblocking(False)
    upstream.setblocking(False)
    # poll, not select: select cannot watch a file descriptor above 1023.
    poller = select.poll()
    client_fd, upstream_fd = client.fileno(), upstream.fileno()
    watched: set[int] = set()
    to_upstream, to_client = bytearray(first), bytearray()
    reading_client = reading_upstream = True  # neither has sent EOF yet
    upstream_write_shut = False
    # What OpenSSL waits for before a read or a write can go on: usually the obvious
    # direction, but a TLS read can need a write (and vice versa) at record boundaries.
    read_needs, write_needs = "r", "w"
    retry_len = 0  # a TLS write that hit WANT_* must be retried with the same length
    while not stopping.is_set():
        if not reading_upstream and not to_client:
            return True  # moto is done and the client has everything: close_notify
        if not reading_client and not to_upstream and not upstream_write_shut:
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)  # the client's half-close, passed on
            upstream_write_shut = True
        want_client_read = reading_client and len(to_upstream) < BUFFER_LIMIT
        client_events = upstream_events = 0
        if want_client_read:
            client_events |= select.POLLIN if read_needs == "r" else select.POLLOUT
        if to_client:
            client_events |= select.POLLOUT if write_needs == "w" else select.POLLIN
        if reading_upstream and len(to_client) < BUFFER_LIMIT:
            upstream_events |= select.POLLIN
        if to_upstream:
            upstream_events |= select.POLLOUT
        # Decrypted bytes OpenSSL already holds do not show up in poll.
        if want_client_read and client.pending() > 0:
            client_ready, upstream_ready = True, False
        else:
            for fd, events in ((client_fd, client_events), (upstream_fd, upstream_events)):
                # Not watched at all when nothing is wanted of it: poll reports a hang-up even
                # for an empty event mask, and a closed upstream would make this loop spin.
                if events:
                    poller.register(fd, events)  # an fd registered before is modified
                    watched.add(fd)
                elif fd in watched:
                    poller.unregister(fd)
                    watched.discard(fd)
            ready = {fd for fd, _ in poller.poll(IDLE_POLL * 1000)}
            client_ready, upstream_ready = client_fd in ready, upstream_fd in ready
        if client_ready:
            # One TLS read yields one record (16 KiB at most): read on while records are
            # there, so moto gets a few large writes rather than many small ones.
            while reading_client and len(to_upstream) < BUFFER_LIMIT:
                try:
                    data = client.recv(READ_SIZE)
                    read_needs = "r"
                    if data:
                        to_upstream += data
                    else:
                        reading_client = False  # close_notify (or a bare FIN)
                except ssl.SSLWantReadError:
                    read_needs = "r"
                    break
                except ssl.SSLWantWriteError:
                    read_needs = "w"
                    break
                except _GONE:
                    return False
            if to_client:
                size = retry_len or min(len(to_client), READ_SIZE)
                try:
                    sent = client.send(to_client[:size])
                    del to_client[:sent]
                    write_needs, retry_len = "w", 0
                except ssl.SSLWantWriteError:
                    write_needs, retry_len = "w", size
                except ssl.SSLWantReadError:
                    write_needs, retry_len = "r", size
                except _GONE:
                    return False
        if upstream_ready:
            while reading_upstream and len(to_client) < BUFFER_LIMIT:
                try:
                    data = upstream.recv(READ_SIZE)
                    if data:
                        to_client += data
                    else:
                        reading_upstream = False
                except BlockingIOError:
                    break
                except OSError:
                    reading_upstream = False  # moto reset us: tell the client what we have, then close
                    to_upstream.clear()
            if to_upstream:
                try:
                    sent = upstream.send(to_upstream)
                    del to_upstream[:sent]
                except BlockingIOError:
                    pass
                except OSError:
                    reading_upstream = False
                    to_upstream.clear()
    return False


def _close_tls(client: ssl.SSLSocket) -> None:
    """close_notify to the client, and a short wait for its own, before the socket closes."""
    with contextlib.suppress(*_GONE):
        client.settimeout(SHUTDOWN_TIMEOUT)
        client.unwrap()


def _log(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}", file=sys.stderr, flush=True)


# --- probes ------------------------------------------------------------------------------------


def handshake(url: str, ca_file: str | Path, timeout: float = 3.0) -> None:
    """A TLS handshake with the terminator at `url`, verifying its certificate; raises if it fails."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with client_context(ca_file).wrap_socket(raw, server_hostname=host):
            pass  # the handshake is the probe; the terminator sees a client that leaves


def check(url: str, ca_file: str | Path, timeout: float = 3.0) -> str:
    """One line on the terminator: a verified HTTPS request through it to moto; raises if none."""
    parts = urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout,
                                       context=client_context(ca_file))
    try:
        conn.request("GET", "/moto-api/")
        status = conn.getresponse()
        status.read()
    finally:
        conn.close()
    if status.status >= 500:
        raise OSError(f"GET /moto-api/ through it answered {status.status} {status.reason}")
    return f"TLS to moto, certificate verified, GET /moto-api/ answered {status.status}"


# --- detached ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetachedTerminator:
    pid: int
    url: str
    port: int
    state_dir: Path
    ca_file: Path


def start_detached(state_dir: str | Path, *, upstream: str, cert: str | Path | None = None,
                   key: str | Path | None = None, port: int = 0, timeout: float = 20) -> DetachedTerminator:
    """Start `python -m sandbox.tls` in its own session; returns once it completes a verified
    TLS handshake (moto need not answer yet). Without `cert` and `key` it uses
    `state_dir`/cert.pem and key.pem, made by `make_certificate` if missing."""
    from sandbox.httpserver import spawn  # not at the top: the detached process needs no uvicorn

    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    if cert is None or key is None:
        cert, key = state / CERT_FILE, state / KEY_FILE
        if not (cert.exists() and key.exists()):
            cert, key = make_certificate(state)
    args = ["--state-dir", str(state), "--upstream", upstream, "--cert", str(cert), "--key", str(key),
            "--port", str(port)]
    info = spawn("sandbox.tls", args, state / INFO_FILE, state / LOG_FILE, timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            handshake(info["url"], cert)
            break
        except (OSError, ssl.SSLError):
            if time.monotonic() > deadline:
                stop_detached(state)
                raise
            time.sleep(0.05)
    return DetachedTerminator(info["pid"], info["url"], info["port"], state, Path(cert))


def stop_detached(state_dir: str | Path, *, timeout: float = 10) -> bool:
    """Stop the detached terminator of `state_dir` (SIGTERM, then SIGKILL); False if none ran.

    Only a live process whose command line is ours is signalled (a pid can be reused). A
    zombie counts as gone: once the `up` that started it has exited, the terminator's parent
    is init, which may take a second or two to reap it."""
    from sandbox.process import cmdline, pid_alive, wait_until

    info_file = Path(state_dir) / INFO_FILE
    try:
        pid = int(json.loads(info_file.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not pid_alive(pid) or "sandbox.tls" not in cmdline(pid):
        info_file.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: _gone(pid), timeout, interval=0.02):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: _gone(pid), 5, interval=0.02)
    info_file.unlink(missing_ok=True)
    return True


def _gone(pid: int) -> bool:
    from sandbox.process import pid_alive

    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
    return not pid_alive(pid)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.tls", description="TLS terminator in front of moto")
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT to forward to")
    parser.add_argument("--state-dir", type=Path, required=True, help=f"where {INFO_FILE} goes")
    parser.add_argument("--cert", type=Path, required=True, help="certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="its private key (PEM)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free one")
    args = parser.parse_args(argv)

    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    info_file = state / INFO_FILE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # two descriptors per connection: as many as allowed
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    terminator = TLSTerminator(args.upstream, args.cert, args.key, host=args.host, port=args.port).start()
    try:
        info = {"pid": os.getpid(), "url": terminator.url, "port": terminator.port,
                "upstream": terminator.upstream, "ca_file": str(args.cert.resolve())}
        tmp = info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(info_file)
        _log(f"serving {terminator.url} -> {terminator.upstream}")
        while not stop.wait(1):
            pass
    finally:
        terminator.stop()
        info_file.unlink(missing_ok=True)
        _log(f"stopped after {terminator.connections} connections")


if __name__ == "__main__":
    main()
