"""Run the sample web service: in-process for tests, or detached for the sandbox.

    with running_webapp(kube_url=srv.url) as web:
        httpx.get(f"{web.url}/svc/default/web/health")
        httpx.get(f"{web.url}/ing/default/web/health")  # through the Ingress `web`

`start_detached(state_dir, kubeconfig=...)` runs `python -m sandbox.webapp`, which writes
`webapp.json` (pid, url) and `webapp.log` in `state_dir`; `stop_detached(state_dir)` ends it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from sandbox import httpserver
from sandbox.webapp.app import WebApp

INFO_FILE = "webapp.json"
LOG_FILE = "webapp.log"
DETACHED = httpserver.DetachedProcess("sandbox.webapp", INFO_FILE, LOG_FILE)


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


class WebAppServer(httpserver.LoopbackServer):
    def __init__(self, kube_url: str, *, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self.webapp = WebApp(kube_url, **options)
        self._http = httpserver.ThreadedServer(self.webapp.app, host, port, name="sandbox-webapp")

    def service_url(self, namespace: str, service: str) -> str:
        """Base URL of one Service: append /health, /metrics or any request path."""
        return f"{self.url}/svc/{namespace}/{service}"

    def ingress_url(self, namespace: str, ingress: str) -> str:
        """Base URL of the Service an Ingress routes to, through the Ingress: the same paths."""
        return f"{self.url}/ing/{namespace}/{ingress}"

    def start(self) -> WebAppServer:
        self.webapp.start()
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()
        self.webapp.stop()


def running_webapp(kube_url: str, **options: Any) -> WebAppServer:
    """A web service reading the API server at `kube_url` that `with` starts and stops;
    options are WebApp's (token, behaviours, tag_conventions, services, ingresses, rate,
    window, refresh) and host/port."""
    return WebAppServer(kube_url, **options)


def start_detached(
    state_dir: str | Path,
    *,
    kubeconfig: str | Path,
    port: int = 0,
    behaviours: Mapping[str, Any] | None = None,
    services: Iterable[str] = (),
    ingresses: Iterable[str] = (),
    rate: float | None = None,
    window: float | None = None,
) -> httpserver.DetachedServer:
    """Start `python -m sandbox.webapp` in its own session; `services` and `ingresses` to
    track from the start are "NS/NAME"."""
    info = DETACHED.start(
        state_dir,
        {
            "--kubeconfig": kubeconfig,
            "--port": port,
            "--behaviours": behaviours,
            "--service": list(services),
            "--ingress": list(ingresses),
            "--rate": rate,
            "--window": window,
        },
    )
    return httpserver.DetachedServer(info["pid"], info["url"], Path(state_dir))


def stop_detached(state_dir: str | Path, *, timeout: float = 10) -> bool:
    return DETACHED.stop(state_dir, timeout=timeout)
