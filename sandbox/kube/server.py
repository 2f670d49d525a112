"""Run the fake Kubernetes API server: in-process for tests, or detached for the sandbox.

In a test:

    with running_server(rules={"sandbox/app:bad": "CrashLoopBackOff"}) as srv:
        srv.write_kubeconfig(tmp_path / "kubeconfig")
        ...  # kubectl --kubeconfig ..., or kubernetes.config.new_client_from_config(...)

For the sandbox CLI: `start_detached(state_dir)` runs `python -m sandbox.kube` in its own
session, which writes `kubeconfig`, `kube-server.json` (pid, url) and `kube-server.log` in
`state_dir`; `stop_detached(state_dir)` ends it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sandbox.kube import httpserver
from sandbox.kube.api import KubeApi
from sandbox.kube.cluster import Cluster

INFO_FILE = "kube-server.json"
LOG_FILE = "kube-server.log"
KUBECONFIG_FILE = "kubeconfig"
RULES_FILE = "image-rules.json"


def kubeconfig(
    url: str, token: str | None, *, context: str = "sandbox", namespace: str | None = None
) -> dict[str, Any]:
    ctx: dict[str, Any] = {"cluster": context, "user": context}
    if namespace:
        ctx["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": url}}],
        "contexts": [{"name": context, "context": ctx}],
        "current-context": context,
        "users": [{"name": context, "user": {"token": token} if token else {}}],
        "preferences": {},
    }


class KubeServer:
    """The fake cluster and its API on one loopback port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rules: Mapping[str, Any] | None = None,
        default_rules: bool = True,
        token: str | None = None,
        tick: float = 0.05,
        ready_delay: float = 0.2,
        crash_interval: float = 0.5,
        job_duration: float = 0.2,
    ) -> None:
        self.token = token
        self.cluster = Cluster(
            rules,
            default_rules=default_rules,
            tick=tick,
            ready_delay=ready_delay,
            crash_interval=crash_interval,
            job_duration=job_duration,
        )
        self.api = KubeApi(self.cluster, token=token)
        self._http = httpserver.ThreadedServer(self.api.app, host, port, name="sandbox-kube-api")

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def port(self) -> int:
        return self._http.port

    def start(self) -> KubeServer:
        self.cluster.start()
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop(before_shutdown=self.api.close_streams)
        self.cluster.stop()

    def __enter__(self) -> KubeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kubeconfig(self, *, context: str = "sandbox", namespace: str | None = None) -> dict[str, Any]:
        return kubeconfig(self.url, self.token, context=context, namespace=namespace)

    def write_kubeconfig(
        self, path: str | Path, *, context: str = "sandbox", namespace: str | None = None
    ) -> Path:
        path = Path(path)
        path.write_text(
            yaml.safe_dump(self.kubeconfig(context=context, namespace=namespace), sort_keys=False)
        )
        path.chmod(0o600)
        return path

    def set_image_rules(
        self, rules: Mapping[str, Any], *, default_rules: bool = True, merge: bool = False
    ) -> None:
        self.cluster.set_rules(rules, default_rules=default_rules, merge=merge)


@contextmanager
def running_server(**options: Any) -> Iterator[KubeServer]:
    """A started KubeServer, stopped on exit. Options are KubeServer's."""
    server = KubeServer(**options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- detached ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DetachedServer:
    pid: int
    url: str
    kubeconfig: Path
    state_dir: Path


def start_detached(
    state_dir: str | Path,
    *,
    port: int = 0,
    rules: Mapping[str, Any] | None = None,
    token: str | None = None,
    tick: float | None = None,
    ready_delay: float | None = None,
) -> DetachedServer:
    """Start `python -m sandbox.kube` in its own session; returns once it serves."""
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    args = ["--port", str(port), "--state-dir", str(state)]
    if rules is not None:
        rules_file = state / RULES_FILE
        rules_file.write_text(json.dumps(rules, indent=2))
        args += ["--rules", str(rules_file)]
    if token:
        args += ["--token", token]
    if tick is not None:
        args += ["--tick", str(tick)]
    if ready_delay is not None:
        args += ["--ready-delay", str(ready_delay)]
    info = httpserver.spawn("sandbox.kube", args, state / INFO_FILE, state / LOG_FILE)
    return DetachedServer(
        pid=info["pid"], url=info["url"], kubeconfig=Path(info["kubeconfig"]), state_dir=state
    )


def stop_detached(state_dir: str | Path, *, timeout: float = 10) -> bool:
    """Stop the detached server of `state_dir`; False if none was running."""
    return httpserver.terminate(Path(state_dir) / INFO_FILE, timeout=timeout)
