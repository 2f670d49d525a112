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

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sandbox import httpserver
from sandbox.kube.api import KubeApi
from sandbox.kube.cluster import Cluster

INFO_FILE = "kube-server.json"
LOG_FILE = "kube-server.log"
KUBECONFIG_FILE = "kubeconfig"
DETACHED = httpserver.DetachedProcess("sandbox.kube", INFO_FILE, LOG_FILE)


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


class KubeServer(httpserver.LoopbackServer):
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

    def start(self) -> KubeServer:
        self.cluster.start()
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop(before_shutdown=self.api.close_streams)
        self.cluster.stop()

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


def running_server(**options: Any) -> KubeServer:
    """A KubeServer that `with` starts and stops. Options are KubeServer's."""
    return KubeServer(**options)


# --- detached ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DetachedKubeServer(httpserver.DetachedServer):
    kubeconfig: Path


def start_detached(
    state_dir: str | Path,
    *,
    port: int = 0,
    rules: Mapping[str, Any] | None = None,
    token: str | None = None,
    tick: float | None = None,
    ready_delay: float | None = None,
) -> DetachedKubeServer:
    """Start `python -m sandbox.kube` in its own session; returns once it serves."""
    info = DETACHED.start(
        state_dir,
        {
            "--port": port,
            "--rules": rules,
            "--token": token or None,
            "--tick": tick,
            "--ready-delay": ready_delay,
        },
    )
    return DetachedKubeServer(info["pid"], info["url"], Path(state_dir), Path(info["kubeconfig"]))


def stop_detached(state_dir: str | Path, *, timeout: float = 10) -> bool:
    """Stop the detached server of `state_dir`; False if none was running."""
    return DETACHED.stop(state_dir, timeout=timeout)
