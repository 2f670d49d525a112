"""Starting and stopping: in-process servers leave no thread or port behind, and the
detached processes the sandbox CLI will use start, serve kubectl, and stop."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import kubernetes

from sandbox.kube import server as kube_server
from sandbox.webapp import server as webapp_server

KUBECTL = Path(sys.executable).parent / "kubectl"


def _port_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def test_stopping_the_server_ends_open_watches_and_frees_the_port() -> None:
    lines: list[str] = []
    with kube_server.running_server(tick=0.02) as srv:
        ready = threading.Event()

        def watch() -> None:
            with httpx.stream(
                "GET", f"{srv.url}/api/v1/namespaces/default/configmaps", params={"watch": "true"}, timeout=30
            ) as response:
                ready.set()
                lines.extend(response.iter_lines())

        reader = threading.Thread(target=watch)
        reader.start()
        ready.wait(5)
        httpx.post(f"{srv.url}/api/v1/namespaces/default/configmaps", json={"metadata": {"name": "seen"}})
        url = srv.url
    reader.join(timeout=5)
    assert not reader.is_alive(), "the watch stream ended with the server"
    assert [json.loads(line)["type"] for line in lines if line] == ["ADDED"]
    assert _port_closed(url)
    assert not [
        t.name for t in threading.enumerate() if t.name in ("sandbox-kube-api", "sandbox-kube-controllers")
    ]


def test_detached_server_and_webapp_serve_kubectl_and_stop(tmp_path: Path) -> None:
    kube_state, web_state = tmp_path / "kube", tmp_path / "web"
    kube = kube_server.start_detached(kube_state, rules={"sandbox/app:v9": "NeverReady"}, tick=0.02)
    try:
        web = webapp_server.start_detached(
            web_state, kubeconfig=kube.kubeconfig, services=["default/web"], rate=20
        )
        try:
            out = subprocess.run(
                [
                    str(KUBECTL),
                    "--kubeconfig",
                    str(kube.kubeconfig),
                    "--cache-dir",
                    str(tmp_path / "cache"),
                    "get",
                    "namespaces",
                    "-o",
                    "name",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            assert "namespace/default" in out.split()
            assert httpx.get(f"{kube.url}/sandbox/image-rules").json()["rules"] == {
                "sandbox/app:v9": {"pod": "NeverReady", "job": "succeed"}
            }
            health = httpx.get(f"{web.url}/svc/default/web/health")
            assert (health.status_code, health.json()["reason"]) == (503, "service default/web not found")
        finally:
            assert webapp_server.stop_detached(web_state)
        assert _port_closed(web.url) and not (web_state / "webapp.json").exists()
    finally:
        assert kube_server.stop_detached(kube_state)
    assert _port_closed(kube.url) and not (kube_state / "kube-server.json").exists()
    assert not kube_server.stop_detached(kube_state), "stopping twice finds nothing to stop"


def test_server_with_a_token_refuses_requests_without_it(tmp_path: Path) -> None:
    with kube_server.running_server(token="s3cret", tick=0.02) as srv:
        refused = httpx.get(f"{srv.url}/api/v1/namespaces")
        assert (refused.status_code, refused.json()["reason"]) == (401, "Unauthorized")
        api_client = kubernetes.config.new_client_from_config(
            config_file=str(srv.write_kubeconfig(tmp_path / "kubeconfig"))
        )
        try:
            names = [
                ns.metadata.name for ns in kubernetes.client.CoreV1Api(api_client).list_namespace().items
            ]
        finally:
            api_client.close()
    assert "default" in names
