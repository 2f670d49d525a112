"""A fault-injecting HTTP/1.1 proxy on real TCP: faults on the wire, for tests and drills.

Why: a test that patches one of our functions proves only that our code handles the
exception the test imagined. In front of moto's S3 server or our Kubernetes API server,
this proxy makes the real clients (botocore, urllib3, the kubernetes client) meet a real
503 SlowDown, a real TCP reset in the middle of a body or a slow answer, and lets their own
retry logic do what it would do in production. See sandbox/README.md.

    with running_proxy(moto_url) as proxy:       # proxy.url: point the client here
        proxy.control.add(method="PUT", query="partNumber=", count=3, **s3_error("SlowDown"))
        ...                                      # upload through proxy.url
        proxy.control.log()                      # what it saw: method, path, status, rule

The data path is a threaded socket server: one thread per client connection, each with
its own upstream connection, kept alive as long as both sides keep theirs. Bodies are
copied as they arrive (Content-Length, chunked, or until close), so a Kubernetes watch
streams through. The control API (`control_app`) is a small Starlette app on its own port,
served by `httpserver.ThreadedServer`. `python -m sandbox.faultproxy` runs one detached
(`start_detached` / `stop_detached`).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sandbox import httpserver
from tasks.config import format_validation_error

INFO_FILE = "faultproxy.json"
LOG_FILE = "faultproxy.log"
DETACHED = httpserver.DetachedProcess("sandbox.faultproxy", INFO_FILE, LOG_FILE)

CONNECT_TIMEOUT = 5.0
LOG_LIMIT = 10_000  # oldest entries go first: a detached proxy may run for days
_READ_SIZE = 65536
_HEAD_LIMIT = 65536
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


# --- rules ---------------------------------------------------------------------------------

Action = Literal["respond", "reset_request", "reset_response", "forward"]


class Rule(BaseModel):
    """One fault: which requests it matches, how many times it fires, and what it does."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field("*", description="HTTP method it matches, or * for any")
    path: str = Field("/", description="prefix of the request path (without the query string)")
    query: str | None = Field(None, description="text the query string must contain, e.g. 'partNumber='")
    count: int | None = Field(1, ge=1, description="how many matching requests it fires on; null: until removed")
    action: Action = Field(
        "respond",
        description="respond: answer without forwarding; reset_request: RST after after_bytes of the "
        "request body; reset_response: forward, then RST after after_bytes of the response body; "
        "forward: forward normally (with delay: latency)",
    )
    status: int = Field(503, ge=200, le=599, description="respond: the status code")
    headers: dict[str, str] = Field(default_factory=dict, description="respond: response headers")
    body: str = Field("", description="respond: the response body")
    delay: float = Field(0.0, ge=0, le=600, description="seconds to wait before acting")
    after_bytes: int | None = Field(
        None,
        ge=0,
        description="reset_*: body bytes let through before the reset; reset_request default 0, "
        "reset_response default half a Content-Length body (else 0)",
    )

    @field_validator("method")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"a path prefix starts with '/', got {value!r}")
        return value

    def matches(self, method: str, path: str, query: str) -> bool:
        return (
            self.method in ("*", method.upper())
            and path.startswith(self.path)
            and (self.query is None or self.query in query)
        )


def respond(
    status: int, body: str = "", *, headers: dict[str, str] | None = None, retry_after: float | None = None
) -> dict[str, Any]:
    """A `respond` action: answer `status` with `body` without forwarding (429 with `retry_after`...)."""
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = f"{retry_after:g}"
    return {"action": "respond", "status": status, "body": body, "headers": headers}


def s3_error(code: str = "SlowDown", status: int = 503, message: str | None = None) -> dict[str, Any]:
    """A `respond` action answering as S3 does when it refuses a request: the XML error body
    botocore parses; its Code (SlowDown, InternalError, ...) decides whether botocore retries."""
    text = escape(message or f"injected by the fault proxy: {code}")
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{text}</Message>"
        "<RequestId>FAULTPROXY</RequestId><HostId>faultproxy</HostId></Error>"
    )
    return respond(status, body, headers={"Content-Type": "application/xml"})


def kube_error(status: int = 500, reason: str = "InternalError", message: str | None = None) -> dict[str, Any]:
    """A `respond` action answering as the Kubernetes API server does: a v1 Status object."""
    status_object = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message or f"injected by the fault proxy: {reason}", "reason": reason, "code": status,
    }
    return respond(status, json.dumps(status_object), headers={"Content-Type": "application/json"})


def reset_response(after_bytes: int | None = None) -> dict[str, Any]:
    """Forward, pass the response head and `after_bytes` of its body (default: half a
    Content-Length body), then reset the connection: a download broken midway."""
    return {"action": "reset_response", "after_bytes": after_bytes}


def reset_request(after_bytes: int = 0) -> dict[str, Any]:
    """Read `after_bytes` of the request body (answering 100 Continue if asked), then reset
    the connection without forwarding: an upload broken midway."""
    return {"action": "reset_request", "after_bytes": after_bytes}


def latency(seconds: float) -> dict[str, Any]:
    """Forward normally, `seconds` late."""
    return {"action": "forward", "delay": seconds}


@dataclass
class _Armed:
    id: int
    rule: Rule
    left: int | None
    fired: int = 0

    def view(self) -> dict[str, Any]:
        return {"id": self.id, **self.rule.model_dump(), "count_left": self.left, "fired": self.fired}


class Faults:
    """A proxy's rules and its request log, shared by the data path and the control API.

    Rules are tried in the order they were added; the first that matches and has count left
    fires and counts down. A spent rule stays listed (count_left 0) until cleared."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Armed] = []
        self._log: list[dict[str, Any]] = []
        self._rule_ids = itertools.count(1)
        self._request_ids = itertools.count(1)

    def add(self, rule: Rule) -> dict[str, Any]:
        with self._lock:
            armed = _Armed(next(self._rule_ids), rule, rule.count)
            self._rules.append(armed)
            return armed.view()

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [armed.view() for armed in self._rules]

    def remove(self, rule_id: int) -> bool:
        with self._lock:
            kept = [armed for armed in self._rules if armed.id != rule_id]
            removed, self._rules = len(kept) < len(self._rules), kept
            return removed

    def clear(self) -> int:
        with self._lock:
            count, self._rules = len(self._rules), []
            return count

    def take(self, method: str, path: str, query: str) -> tuple[int, Rule] | None:
        """The rule (id, rule) that fires on this request, counted down; None: forward it untouched."""
        with self._lock:
            for armed in self._rules:
                if armed.left != 0 and armed.rule.matches(method, path, query):
                    if armed.left is not None:
                        armed.left -= 1
                    armed.fired += 1
                    return armed.id, armed.rule
            return None

    def record(
        self, connection: int, method: str, path: str, query: str, fired: tuple[int, Rule] | None
    ) -> dict[str, Any]:
        """Log a request as it arrives; the data path fills in status, reset and error later."""
        entry = {
            "id": next(self._request_ids), "time": time.time(), "connection": connection,
            "method": method, "path": path, "query": query,
            "rule": fired[0] if fired else None, "action": fired[1].action if fired else "forward",
            "status": None, "reset": False, "error": None,
        }
        with self._lock:
            self._log.append(entry)
            del self._log[:-LOG_LIMIT]
        return entry

    def update(self, entry: dict[str, Any], **fields: Any) -> None:
        with self._lock:
            entry.update(fields)

    def log(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._log]

    def clear_log(self) -> int:
        with self._lock:
            count, self._log = len(self._log), []
            return count


# --- the control API -------------------------------------------------------------------------


def control_app(faults: Faults, upstream: str) -> Starlette:
    """GET /healthz; GET, POST, DELETE /rules; DELETE /rules/{id}; GET, DELETE /log."""

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "upstream": upstream})

    async def list_rules(request: Request) -> JSONResponse:
        return JSONResponse({"rules": faults.rules()})

    async def add_rule(request: Request) -> JSONResponse:
        try:
            rule = Rule.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"error": format_validation_error("rule", exc, Rule)}, status_code=422)
        return JSONResponse(faults.add(rule), status_code=201)

    async def clear_rules(request: Request) -> JSONResponse:
        return JSONResponse({"removed": faults.clear()})

    async def remove_rule(request: Request) -> JSONResponse:
        rule_id = request.path_params["rule_id"]
        if not faults.remove(rule_id):
            known = ", ".join(str(r["id"]) for r in faults.rules()) or "none"
            return JSONResponse({"error": f"no rule {rule_id}; known: {known}"}, status_code=404)
        return JSONResponse({"removed": 1})

    async def read_log(request: Request) -> JSONResponse:
        return JSONResponse({"requests": faults.log()})

    async def clear_log(request: Request) -> JSONResponse:
        return JSONResponse({"removed": faults.clear_log()})

    return Starlette(
        routes=[
            Route("/healthz", health, methods=["GET"]),
            Route("/rules", list_rules, methods=["GET"]),
            Route("/rules", add_rule, methods=["POST"]),
            Route("/rules", clear_rules, methods=["DELETE"]),
            Route("/rules/{rule_id:int}", remove_rule, methods=["DELETE"]),
            Route("/log", read_log, methods=["GET"]),
            Route("/log", clear_log, methods=["DELETE"]),
        ]
    )


class FaultProxyClient:
    """The control API from Python: `add` a rule, read `rules` and the `log`, `clear` them."""

    def __init__(self, url: str, *, timeout: float = 10) -> None:
        import httpx  # here, not at the top: a detached proxy starts a third of a second sooner

        self.url = url.rstrip("/")
        # trust_env=False: an HTTP_PROXY in the environment must not carry loopback calls.
        self._http = httpx.Client(base_url=self.url, timeout=timeout, trust_env=False)

    def add(
        self, *, method: str = "*", path: str = "/", query: str | None = None, count: int | None = 1, **action: Any
    ) -> dict[str, Any]:
        """Add a rule (see `Rule`; `action` from a preset such as `s3_error(...)`); returns it with its id."""
        rule = Rule(method=method, path=path, query=query, count=count, **action)  # bad input fails here
        return self._call("POST", "/rules", json=rule.model_dump())

    def rules(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/rules")["rules"])

    def remove(self, rule_id: int) -> None:
        self._call("DELETE", f"/rules/{rule_id}")

    def clear(self) -> None:
        """Remove every rule."""
        self._call("DELETE", "/rules")

    def log(self) -> list[dict[str, Any]]:
        """Every request the proxy saw, oldest first."""
        return list(self._call("GET", "/log")["requests"])

    def clear_log(self) -> None:
        self._call("DELETE", "/log")

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return dict(response.json())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FaultProxyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- HTTP/1.1 on sockets ---------------------------------------------------------------------


class _Closed(Exception):
    """The peer closed the connection, or broke HTTP framing, in the middle of a message."""


def _readable(socks: list[socket.socket], timeout: float | None = None) -> list[socket.socket]:
    """The sockets with something to read, or a hang-up (poll, not select: no fd limit)."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLIN)
    ready = {fd for fd, _ in poller.poll(None if timeout is None else timeout * 1000)}
    return [sock for sock in socks if sock.fileno() in ready]


class _Stream:
    """A socket with a read buffer. While it waits for bytes, a hang-up of `watch` (the
    other side of the proxy) ends the exchange: a client that drops a watch must not leave
    the proxy blocked on the upstream."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.watch: socket.socket | None = None

    def _fill(self) -> None:
        while self.watch is not None and self.sock not in _readable([self.sock, self.watch]):
            if not self.watch.recv(1, socket.MSG_PEEK):
                raise _Closed("the other side hung up")
            self.watch = None  # it sent something (a pipelined request): it is alive
        data = self.sock.recv(_READ_SIZE)
        if not data:
            raise _Closed("connection closed")
        self.buf += data

    def _take(self, n: int) -> bytes:
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_head(self) -> bytes | None:
        """The start line and headers, blank line included; None if the peer closed first."""
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if len(self.buf) > _HEAD_LIMIT:
                raise _Closed(f"a message head longer than {_HEAD_LIMIT} bytes")
            try:
                self._fill()
            except _Closed:
                if self.buf:
                    raise
                return None
        return self._take(end + 4)

    def readline(self) -> bytes:
        while (end := self.buf.find(b"\n")) < 0:
            if len(self.buf) > _HEAD_LIMIT:
                raise _Closed(f"a line longer than {_HEAD_LIMIT} bytes")
            self._fill()
        return self._take(end + 1)

    def read_some(self, n: int) -> bytes:
        """Up to `n` bytes: what has arrived, waiting only if nothing has."""
        if not self.buf:
            self._fill()
        return self._take(n)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


@dataclass(frozen=True)
class _Head:
    raw: bytes
    start: list[str]  # request line (method, target, version) or status line (version, code, reason)
    headers: list[tuple[str, str]]

    @classmethod
    def parse(cls, raw: bytes) -> _Head:
        lines = raw.decode("latin-1").split("\r\n")[:-2]
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _Closed(f"malformed header line {line!r}")
            headers.append((name.strip().lower(), value.strip()))
        start = lines[0].split(" ", 2)
        if len(start) < 2:
            raise _Closed(f"malformed start line {lines[0]!r}")
        return cls(raw, start, headers)

    def get(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        return ", ".join(values) if values else None

    def has(self, name: str, token: str) -> bool:
        return token in (t.strip().lower() for t in (self.get(name) or "").split(","))

    def without(self, name: str) -> bytes:
        lines = self.raw.split(b"\r\n")
        kept = [line for line in lines if line.split(b":", 1)[0].strip().lower() != name.encode()]
        return b"\r\n".join(kept)

    @property
    def version(self) -> str:
        """A status line starts with the HTTP version, a request line ends with it."""
        if self.start[0].startswith("HTTP/"):
            return self.start[0]
        return self.start[2] if len(self.start) > 2 else "HTTP/0.9"

    def keep_alive(self) -> bool:
        if self.version == "HTTP/1.1":
            return not self.has("connection", "close")
        return self.has("connection", "keep-alive")


Framing = tuple[Literal["length", "chunked", "close"], int]


def _request_framing(head: _Head) -> Framing:
    if head.has("transfer-encoding", "chunked"):
        return ("chunked", 0)
    return ("length", int(head.get("content-length") or 0))


def _response_framing(head: _Head, method: str) -> Framing:
    status = int(head.start[1])
    if method == "HEAD" or status < 200 or status in (204, 304):
        return ("length", 0)
    if head.has("transfer-encoding", "chunked"):
        return ("chunked", 0)
    length = head.get("content-length")
    return ("length", int(length)) if length is not None else ("close", 0)


def _copy_body(src: _Stream, dst: _Stream | None, framing: Framing, budget: int | None = None) -> bool:
    """Copy one message body from `src` to `dst` as it arrives (`dst` None: read and drop it).

    With a budget, stop once that many body bytes have passed; returns whether the body
    ended first. A chunked body's framing is copied as it is."""
    kind, length = framing
    passed = 0

    def send(data: bytes) -> None:
        if dst is not None:
            dst.send(data)

    def payload(n: int) -> bool:
        nonlocal passed
        while n:
            if budget is not None and passed >= budget:
                return False
            data = src.read_some(n if budget is None else min(n, budget - passed))
            send(data)
            n -= len(data)
            passed += len(data)
        return True

    if kind == "length":
        return payload(length)
    if kind == "close":  # until the sender closes
        try:
            while payload(_READ_SIZE):
                pass
        except _Closed:
            return True
        return False
    while True:
        line = src.readline()
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _Closed(f"malformed chunk size line {line!r}") from None
        send(line)
        if size == 0:
            while (trailer := src.readline()) not in (b"\r\n", b"\n"):
                send(trailer)
            send(trailer)
            return True
        if not payload(size):
            return False
        send(src.readline())


def _tunnel(a: _Stream, b: _Stream) -> None:
    """After 101 Switching Protocols: bytes both ways as they come, until one side closes."""
    for stream, other in ((a, b), (b, a)):
        other.send(stream._take(len(stream.buf)))
    while True:
        for sock in _readable([a.sock, b.sock]):
            data = sock.recv(_READ_SIZE)
            if not data:
                return
            (b if sock is a.sock else a).send(data)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN: SO_LINGER on, timeout 0."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _tcp(sock: socket.socket) -> socket.socket:
    # Nagle off: each response would otherwise wait ~40 ms for the peer's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# --- the data path ---------------------------------------------------------------------------


class _Connection:
    """One client connection and its upstream connection, request after request."""

    def __init__(self, proxy: FaultProxy, sock: socket.socket, number: int) -> None:
        self.proxy, self.number = proxy, number
        self.client = _Stream(sock)
        self.upstream: _Stream | None = None

    def run(self) -> None:
        entry: dict[str, Any] | None = None
        try:
            while self._next_request() and (raw := self.client.read_head()) is not None:
                head = _Head.parse(raw)
                method, (path, query) = head.start[0], _split_target(head.start[1])
                fired = self.proxy.faults.take(method, path, query)
                entry = self.proxy.faults.record(self.number, method, path, query, fired)
                if not self._exchange(head, fired[1] if fired else None, entry):
                    break
        except (OSError, _Closed, ValueError) as exc:
            if entry is not None and entry["status"] is None and not entry["reset"]:
                self.proxy.faults.update(entry, error=f"{type(exc).__name__}: {exc}")
        finally:
            self._drop_upstream()
            self.proxy._forget(self.client.sock)
            with contextlib.suppress(OSError):
                self.client.sock.close()

    def _next_request(self) -> bool:
        """Wait for the next request; False if the upstream hung up meanwhile (the client
        then sees the connection close, as it would without the proxy)."""
        if self.client.buf or self.upstream is None:
            return True
        return self.client.sock in _readable([self.client.sock, self.upstream.sock])

    def _exchange(self, head: _Head, rule: Rule | None, entry: dict[str, Any]) -> bool:
        """Serve one request; returns whether the client connection stays open."""
        framing = _request_framing(head)
        if rule is not None and rule.delay and self.proxy._stopping.wait(rule.delay):
            return False
        if rule is not None and rule.action == "respond":
            return self._answer(head, framing, entry, rule.status, rule.headers, rule.body)
        expect = head.has("expect", "100-continue")
        if rule is not None and rule.action == "reset_request":
            if expect:
                self.client.send(_CONTINUE)
            _copy_body(self.client, None, framing, rule.after_bytes or 0)
            self._reset_client(entry)
            return False
        try:
            upstream = self._connect()
        except OSError as exc:
            host, port = self.proxy.upstream_addr
            self.proxy.faults.update(entry, error=f"upstream {host}:{port} unreachable: {exc}")
            return self._answer(head, framing, entry, 502, {}, f"fault proxy: upstream {host}:{port} unreachable\n")
        # The proxy answers 100 Continue itself: the body then flows through at once, and a
        # rule can still refuse a request before its body was sent.
        if expect:
            self.client.send(_CONTINUE)
        upstream.send(head.without("expect") if expect else head.raw)
        _copy_body(self.client, upstream, framing)
        return self._relay_response(head, rule, entry, upstream)

    def _relay_response(self, head: _Head, rule: Rule | None, entry: dict[str, Any], upstream: _Stream) -> bool:
        upstream.watch = self.client.sock
        while True:
            raw = upstream.read_head()
            if raw is None:
                raise _Closed("the upstream closed the connection before answering")
            response = _Head.parse(raw)
            if not 100 <= int(response.start[1]) < 200 or response.start[1] == "101":
                break
            self.client.send(raw)  # an interim response (103 Early Hints...) goes through
        self.proxy.faults.update(entry, status=int(response.start[1]))
        self.client.send(raw)
        if response.start[1] == "101":
            upstream.watch = None
            _tunnel(self.client, upstream)
            return False
        framing = _response_framing(response, head.start[0])
        if rule is not None and rule.action == "reset_response":
            budget = rule.after_bytes
            if budget is None:
                budget = framing[1] // 2 if framing[0] == "length" else 0
            _copy_body(upstream, self.client, framing, budget)
            self._reset_client(entry)
            return False
        _copy_body(upstream, self.client, framing)
        upstream.watch = None
        if framing[0] == "close" or not response.keep_alive():
            return False
        if not head.keep_alive():
            self._drop_upstream()  # it was told to close too
            return False
        return True

    def _answer(
        self, head: _Head, framing: Framing, entry: dict[str, Any], status: int, headers: dict[str, str], body: str
    ) -> bool:
        """Answer without forwarding; returns whether the connection stays open."""
        close = not head.keep_alive()
        if framing != ("length", 0):
            if head.has("expect", "100-continue"):
                close = True  # the client holds its body back for a 100 that never comes
            else:
                _copy_body(self.client, None, framing)
        data = body.encode()
        given = {name.lower() for name in headers}
        lines = [f"HTTP/1.1 {status} {_reason(status)}"]
        if "content-type" not in given:
            lines.append("Content-Type: text/plain; charset=utf-8")
        lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() not in ("content-length", "connection")]
        lines.append(f"Content-Length: {len(data)}")
        if close:
            lines.append("Connection: close")
        # Logged before it is sent: a client that has its answer must find it in the log.
        self.proxy.faults.update(entry, status=status)
        self.client.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head.start[0] == "HEAD" else data))
        if close:
            self.client.sock.shutdown(socket.SHUT_WR)
            # Let the client read the answer before the socket goes: closing with unread
            # request bytes would send a RST that can destroy it.
            with contextlib.suppress(OSError, _Closed):
                self.client.sock.settimeout(1.0)
                while True:
                    self.client.read_some(_READ_SIZE)
        return not close

    def _connect(self) -> _Stream:
        if self.upstream is not None and _readable([self.upstream.sock], 0):
            self._drop_upstream()  # it hung up while idle
        if self.upstream is None:
            sock = socket.create_connection(self.proxy.upstream_addr, timeout=CONNECT_TIMEOUT)
            sock.settimeout(None)
            self.upstream = _Stream(_tcp(sock))
            self.proxy._track(sock)
        return self.upstream

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            self.proxy._forget(self.upstream.sock)
            with contextlib.suppress(OSError):
                self.upstream.sock.close()
            self.upstream = None

    def _reset_client(self, entry: dict[str, Any]) -> None:
        self.proxy.faults.update(entry, reset=True)
        self._drop_upstream()
        self.proxy._forget(self.client.sock)
        _reset(self.client.sock)


def _split_target(target: str) -> tuple[str, str]:
    """Path and query string of a request target (origin form, or absolute form)."""
    if not target.startswith("/"):
        parts = urlsplit(target)
        return parts.path or "/", parts.query
    path, _, query = target.partition("?")
    return path, query


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Injected"


class FaultProxy(httpserver.LoopbackServer):
    """A fault-injecting proxy to one upstream: the data path on `url`, its control API on
    `control_url` (`control` is a client for it); `with` starts and stops both.

    `url` and `port` are the data path's, not the control API's (which `_http` serves)."""

    def __init__(self, upstream: str, *, host: str = "127.0.0.1", port: int = 0, control_port: int = 0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or parts.path.strip("/"):
            raise ValueError(f"upstream {upstream!r}: give http://HOST:PORT (plain HTTP, no path)")
        self.upstream = f"http://{parts.netloc}"
        self.upstream_addr = (parts.hostname, parts.port or 80)
        self.faults = Faults()
        self._listener = httpserver.bind(host, port)
        self._listener.setblocking(True)
        self._host, self._port = self._listener.getsockname()[:2]
        self._http = httpserver.ThreadedServer(control_app(self.faults, self.upstream), host, control_port,
                                               name="faultproxy-control")
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._acceptor = threading.Thread(target=self._accept, name="faultproxy-accept", daemon=True)
        self._control: FaultProxyClient | None = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        return int(self._port)

    @property
    def control_url(self) -> str:
        return self._http.url

    @property
    def control(self) -> FaultProxyClient:
        if self._control is None:
            self._control = FaultProxyClient(self.control_url)
        return self._control

    def start(self) -> FaultProxy:
        self._http.start()
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
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked on it
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
        self._http.stop()
        if self._control is not None:
            self._control.close()

    def _accept(self) -> None:
        numbers = itertools.count(1)
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.settimeout(None)
            self._track(_tcp(sock))
            connection = _Connection(self, sock, next(numbers))
            thread = threading.Thread(target=self._serve, args=(connection,), name="faultproxy-conn", daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _serve(self, connection: _Connection) -> None:
        try:
            connection.run()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)


def running_proxy(upstream: str, **options: Any) -> FaultProxy:
    """A FaultProxy to `upstream` (http://HOST:PORT) that `with` starts and stops; options
    are host, port and control_port."""
    return FaultProxy(upstream, **options)


# --- detached --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetachedFaultProxy(httpserver.DetachedServer):
    control_url: str


def start_detached(
    state_dir: str | Path, *, upstream: str, port: int = 0, control_port: int = 0
) -> DetachedFaultProxy:
    """Start `python -m sandbox.faultproxy` in its own session; returns once it serves."""
    info = DETACHED.start(state_dir, {"--upstream": upstream, "--port": port, "--control-port": control_port})
    return DetachedFaultProxy(info["pid"], info["url"], Path(state_dir), info["control_url"])


def stop_detached(state_dir: str | Path, *, timeout: float = 10) -> bool:
    """Stop the detached proxy of `state_dir`; False if none was running."""
    return DETACHED.stop(state_dir, timeout=timeout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.faultproxy", description="Fault-injecting HTTP/1.1 proxy for the sandbox"
    )
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT to forward to")
    parser.add_argument("--state-dir", type=Path, required=True, help=f"where {INFO_FILE} goes")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="data port; 0 picks a free one")
    parser.add_argument("--control-port", type=int, default=0, help="control API port; 0 picks a free one")
    args = parser.parse_args(argv)

    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    proxy = FaultProxy(args.upstream, host=args.host, port=args.port, control_port=args.control_port).start()
    httpserver.serve_until_signal(proxy, state / INFO_FILE, control_url=proxy.control_url, upstream=proxy.upstream)


if __name__ == "__main__":
    main()
