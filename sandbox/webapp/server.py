"""Run the sample web service: in-process for tests, or detached for the sandbox.

    with running_webapp(kube_url=srv.url) as web:
        httpx.get(f"{web.url}/svc/default/web/health")

`start_detached(state_dir, kubeconfig=...)` runs `python -m sandbox.webapp`, which writes
`webapp.json` (pid, url) and `webapp.log` in `state_dir`; `stop_detached(state_dir)` ends it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sandbox.kube import httpserver
from sandbox.webapp.app import WebApp

INFO_FILE = "webapp.json"
LOG_FILE = "webapp.log"
BEHAVIOURS_FILE = "behaviours.json"


def api_from_kubeconfig(path: str | Path) -> tuple[str, str | None]:
    """The server URL and bearer token of a kubeconfig's current context."""
    config = yaml.safe_load(Path(path).read_text())
    current = config.get("current-context")
    contexts = {c["name"]: c["context"] for c in config.get("contexts") or []}
    if current not in contexts:
        raise ValueError(
            f"kubeconfig {path}: current-context {current!r} is not among its contexts: {', '.join(contexts)}"
        )
    clusters = {c["name"]: c["cluster"] for c in config.get("clusters") or []}
    users = {u["name"]: u.get("user") or {} for u in config.get("users") or []}
    context = contexts[current]
    return clusters[context["cluster"]]["server"], users.get(context.get("user", ""), {}).get("token")


class WebAppServer:
    def __init__(self, kube_url: str, *, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self.webapp = WebApp(kube_url, **options)
        self._http = httpserver.ThreadedServer(self.webapp.app, host, port, name="sandbox-webapp")

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def port(self) -> int:
        return self._http.port

    def service_url(self, namespace: str, service: str) -> str:
        """Base URL of one Service: append /health, /metrics or any request path."""
        return f"{self.url}/svc/{namespace}/{service}"

    def start(self) -> WebAppServer:
        self.webapp.start()
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()
        self.webapp.stop()

    def __enter__(self) -> WebAppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def running_webapp(kube_url: str, **options: Any) -> Iterator[WebAppServer]:
    """A started web service reading the API server at `kube_url`; options are WebApp's
    (token, behaviours, tag_conventions, services, rate, window, refresh) and host/port."""
    server = WebAppServer(kube_url, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class DetachedWebApp:
    pid: int
    url: str
    state_dir: Path


def start_detached(
    state_dir: str | Path,
    *,
    kubeconfig: str | Path,
    port: int = 0,
    behaviours: Mapping[str, Any] | None = None,
    services: Iterable[str] = (),
    rate: float | None = None,
    window: float | None = None,
) -> DetachedWebApp:
    """Start `python -m sandbox.webapp` in its own session; `services` are "NS/NAME"."""
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    args = ["--kubeconfig", str(kubeconfig), "--port", str(port), "--state-dir", str(state)]
    if behaviours is not None:
        path = state / BEHAVIOURS_FILE
        path.write_text(json.dumps(behaviours, indent=2))
        args += ["--behaviours", str(path)]
    for service in services:
        args += ["--service", service]
    if rate is not None:
        args += ["--rate", str(rate)]
    if window is not None:
        args += ["--window", str(window)]
    info = httpserver.spawn("sandbox.webapp", args, state / INFO_FILE, state / LOG_FILE)
    return DetachedWebApp(pid=info["pid"], url=info["url"], state_dir=state)


def stop_detached(state_dir: str | Path, *, timeout: float = 10) -> bool:
    return httpserver.terminate(Path(state_dir) / INFO_FILE, timeout=timeout)
