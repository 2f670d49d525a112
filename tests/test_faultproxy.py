"""The fault proxy (sandbox/faultproxy.py) on the real wire: boto3 against moto and the
official kubernetes client against our fake API server, through the proxy, each meeting a
fault from a rule and reacting as it would in production; the control API; the HTTP framing
the proxy must carry (chunked uploads, HEAD, bodies read until close, streams); and the
sandbox's two detached proxies.

Servers and proxies run in this process, except the detached proxy and the sandbox's.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import httpx
import kubernetes
import pytest
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError, ResponseStreamingError
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from sandbox import api, faultproxy, httpserver
from sandbox.environment import through_proxies
from sandbox.faultproxy import (
    FaultProxy,
    FaultProxyClient,
    kube_error,
    latency,
    reset_request,
    reset_response,
    respond,
    running_proxy,
    s3_error,
)
from sandbox.kube.server import KubeServer, kubeconfig, running_server
from sandbox.process import pid_alive, port_open
from tasks.config import load_environment

BUCKET = "faultproxy-tests"


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """Nothing here talks to Prefect: this overrides the session's autouse Prefect test
    harness (tests/conftest.py) for this module, as tests/kube does for its folder."""
    yield


def _log(proxy: FaultProxy, *keys: str, **match: Any) -> list[tuple[Any, ...]]:
    """The proxy's log as tuples of `keys`, only the entries whose fields equal `match`."""
    entries = [e for e in proxy.control.log() if all(e[k] == v for k, v in match.items())]
    return [tuple(e[k] for k in keys) for e in entries]


# --- S3: boto3 against moto ----------------------------------------------------------------------


def _s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "max_attempts": 5}, proxies={}, connect_timeout=3, read_timeout=10),
    )


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = _s3_client(url)
    client.create_bucket(Bucket=BUCKET)
    client.close()
    yield url
    server.stop()
    server._server.server_close()  # type: ignore[union-attr]  # stop() leaves the socket open


@pytest.fixture
def s3_proxy(moto_url: str) -> Iterator[FaultProxy]:
    with running_proxy(moto_url) as proxy:
        yield proxy


@pytest.fixture
def s3(s3_proxy: FaultProxy) -> Iterator[Any]:
    client = _s3_client(s3_proxy.url)
    yield client
    client.close()


def test_s3_put_get_and_head_pass_through_unchanged(s3, s3_proxy):
    data = bytes(range(256)) * 1024
    s3.put_object(Bucket=BUCKET, Key="plain", Body=io.BytesIO(data))  # a file: boto3 sends Expect: 100-continue
    assert s3.get_object(Bucket=BUCKET, Key="plain")["Body"].read() == data
    assert s3.head_object(Bucket=BUCKET, Key="plain")["ContentLength"] == len(data)
    assert _log(s3_proxy, "method", "path", "status", "rule") == [
        ("PUT", f"/{BUCKET}/plain", 200, None),
        ("GET", f"/{BUCKET}/plain", 200, None),
        ("HEAD", f"/{BUCKET}/plain", 200, None),
    ]


def test_slowdown_on_part_uploads_is_retried_by_botocore_standard_mode(s3, s3_proxy):
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="parts")["UploadId"]
    rule = s3_proxy.control.add(method="PUT", path=f"/{BUCKET}/parts", query="partNumber=", count=2,
                                **s3_error("SlowDown"))
    part = s3.upload_part(Bucket=BUCKET, Key="parts", UploadId=upload, PartNumber=1, Body=b"p" * 4096)
    s3.complete_multipart_upload(Bucket=BUCKET, Key="parts", UploadId=upload,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})

    assert part["ResponseMetadata"]["RetryAttempts"] == 2
    assert s3.get_object(Bucket=BUCKET, Key="parts")["Body"].read() == b"p" * 4096
    part_uploads = [(status, fired) for status, fired, query in _log(s3_proxy, "status", "rule", "query", method="PUT")
                    if "partNumber=" in query]
    assert part_uploads == [(503, rule["id"]), (503, rule["id"]), (200, None)]
    assert [(r["count_left"], r["fired"]) for r in s3_proxy.control.rules()] == [(0, 2)]


def test_slowdown_refusing_an_upload_before_its_body_is_retried(s3, s3_proxy):
    """With Expect: 100-continue the proxy answers 503 before the body is sent, as S3 does;
    botocore sends the whole request again."""
    s3_proxy.control.add(method="PUT", path=f"/{BUCKET}/expect", **s3_error("SlowDown"))
    data = b"e" * 100_000
    response = s3.put_object(Bucket=BUCKET, Key="expect", Body=io.BytesIO(data))
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    assert s3.get_object(Bucket=BUCKET, Key="expect")["Body"].read() == data
    assert _log(s3_proxy, "status", method="PUT") == [(503,), (200,)]


def test_an_s3_error_botocore_does_not_retry_reaches_the_caller(s3, s3_proxy):
    s3_proxy.control.add(method="GET", **s3_error("AccessDenied", 403, "no & no"))
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=BUCKET, Key="anything")
    error = caught.value.response["Error"]
    assert (error["Code"], error["Message"]) == ("AccessDenied", "no & no")
    assert _log(s3_proxy, "status") == [(403,)]


def test_a_reset_mid_download_breaks_the_body_botocore_reads(s3, s3_proxy):
    s3.put_object(Bucket=BUCKET, Key="download", Body=b"d" * 200_000)
    s3_proxy.control.clear_log()
    s3_proxy.control.add(method="GET", path=f"/{BUCKET}/download", **reset_response())  # after half the body
    body = s3.get_object(Bucket=BUCKET, Key="download")["Body"]
    with pytest.raises(ResponseStreamingError):
        body.read()
    assert _log(s3_proxy, "method", "status", "reset") == [("GET", 200, True)]


def test_s3transfer_retries_a_download_reset_midway(s3, s3_proxy):
    data = bytes(range(256)) * 800
    s3.put_object(Bucket=BUCKET, Key="download-retried", Body=data)
    s3_proxy.control.add(method="GET", path=f"/{BUCKET}/download-retried", **reset_response(after_bytes=1000))
    out = io.BytesIO()
    s3.download_fileobj(BUCKET, "download-retried", out)
    assert out.getvalue() == data
    assert _log(s3_proxy, "status", "reset", method="GET") == [(200, True), (200, False)]


def test_a_reset_mid_upload_is_retried_by_botocore(s3, s3_proxy):
    s3_proxy.control.add(method="PUT", path=f"/{BUCKET}/upload", **reset_request(after_bytes=10_000))
    data = b"u" * 100_000
    response = s3.put_object(Bucket=BUCKET, Key="upload", Body=io.BytesIO(data))
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    assert s3.get_object(Bucket=BUCKET, Key="upload")["Body"].read() == data
    assert _log(s3_proxy, "status", "reset", method="PUT") == [(None, True), (200, False)]


def test_latency_delays_the_answer_and_changes_nothing_else(s3, s3_proxy):
    s3.put_object(Bucket=BUCKET, Key="slow", Body=b"slow")
    rule = s3_proxy.control.add(method="HEAD", path=f"/{BUCKET}/slow", **latency(0.4))
    started = time.monotonic()
    assert s3.head_object(Bucket=BUCKET, Key="slow")["ContentLength"] == 4
    assert time.monotonic() - started >= 0.4
    assert _log(s3_proxy, "status", "rule", "action", method="HEAD") == [(200, rule["id"], "forward")]


# --- Kubernetes: the official client against our fake API server ------------------------------


@pytest.fixture
def kube() -> Iterator[KubeServer]:
    with running_server(tick=0.02, ready_delay=0.05) as server:
        yield server


@pytest.fixture
def kube_proxy(kube: KubeServer) -> Iterator[FaultProxy]:
    with running_proxy(kube.url) as proxy:
        yield proxy


@pytest.fixture
def api_client(kube_proxy: FaultProxy) -> Iterator[kubernetes.client.ApiClient]:
    client = kubernetes.config.new_client_from_config_dict(kubeconfig(kube_proxy.url, None))
    yield client
    client.close()


def _deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "app", "image": "sandbox/app:v1"}]}}},
    }


def test_kubernetes_reads_pass_through_on_one_kept_alive_connection(api_client, kube_proxy):
    core = kubernetes.client.CoreV1Api(api_client)
    assert "default" in {ns.metadata.name for ns in core.list_namespace().items}
    assert core.read_namespace("default").metadata.name == "default"
    assert _log(kube_proxy, "method", "path", "status") == [
        ("GET", "/api/v1/namespaces", 200), ("GET", "/api/v1/namespaces/default", 200)]
    assert len({e["connection"] for e in kube_proxy.control.log()}) == 1


def test_a_500_on_apps_is_seen_by_the_kubernetes_client_and_then_passes(api_client, kube_proxy):
    apps = kubernetes.client.AppsV1Api(api_client)
    kube_proxy.control.add(method="GET", path="/apis/apps/v1/", **kube_error(500, "InternalError", "etcd is sad"))
    with pytest.raises(kubernetes.client.ApiException) as caught:
        apps.list_namespaced_deployment("default")
    assert caught.value.status == 500 and "etcd is sad" in caught.value.body
    assert apps.list_namespaced_deployment("default").items == []
    assert _log(kube_proxy, "status") == [(500,), (200,)]


def test_a_watch_streams_through_as_events_happen(api_client, kube_proxy):
    apps = kubernetes.client.AppsV1Api(api_client)
    later = threading.Timer(0.3, apps.create_namespaced_deployment, ("default", _deployment("streamed")))
    watch = kubernetes.watch.Watch()
    started = time.monotonic()
    later.start()
    try:
        for event in watch.stream(apps.list_namespaced_deployment, "default", timeout_seconds=20):
            if event["object"].metadata.name == "streamed":
                break
    finally:
        watch.stop()
        later.join()
    assert event["type"] == "ADDED"
    assert time.monotonic() - started < 5  # long before the watch's own end: streamed, not buffered
    watches = [e for e in kube_proxy.control.log() if "watch=" in e["query"]]
    assert [(e["status"], e["error"]) for e in watches] == [(200, None)]


# --- HTTP framing and the control API, against a small upstream of our own -----------------------


def _upstream_app(gate: threading.Event) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                             "transfer_encoding": request.headers.get("transfer-encoding")})

    async def text(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello " * 1000)

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> Any:
            yield b"first\n"
            await asyncio.to_thread(gate.wait, 5)
            yield b"second\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    return Starlette(routes=[Route("/echo", echo, methods=["POST", "PUT"]), Route("/text", text),
                             Route("/stream", stream)])


@pytest.fixture
def upstream() -> Iterator[SimpleNamespace]:
    gate = threading.Event()
    server = httpserver.ThreadedServer(_upstream_app(gate), name="faultproxy-test-upstream")
    server.start()
    yield SimpleNamespace(url=server.url, gate=gate)
    gate.set()
    server.stop()


@pytest.fixture
def proxy(upstream: SimpleNamespace) -> Iterator[FaultProxy]:
    with running_proxy(upstream.url) as proxy:
        yield proxy


@pytest.fixture
def http(proxy: FaultProxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as client:
        yield client


def test_a_chunked_upload_arrives_whole(http):
    pieces = [bytes([n]) * (1000 + n) for n in range(50)]
    answer = http.post("/echo", content=iter(pieces)).json()  # an iterator: httpx sends it chunked
    body = b"".join(pieces)
    assert answer == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest(), "transfer_encoding": "chunked"}


def test_head_has_no_body_and_the_connection_goes_on(http, proxy):
    head = http.head("/text")
    assert head.status_code == 200 and head.headers["content-length"] == str(len("hello " * 1000))
    assert http.get("/text").text == "hello " * 1000
    assert _log(proxy, "method", "status", "connection") == [("HEAD", 200, 1), ("GET", 200, 1)]


def test_a_streamed_response_is_relayed_as_it_arrives(http, upstream):
    started = time.monotonic()
    with http.stream("GET", "/stream") as response:
        chunks = response.iter_raw()
        assert next(chunks) == b"first\n"
        assert time.monotonic() - started < 2  # the upstream holds "second" back until the gate opens
        upstream.gate.set()
        assert b"".join(chunks) == b"second\n"


@contextmanager
def _one_shot_upstream(after_head: Callable[[socket.socket], None]) -> Iterator[str]:
    """A raw upstream for framing httpx and uvicorn never produce: it takes one connection,
    reads the request head and leaves the rest to `after_head`; yields its URL."""
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (data := conn.recv(65536)):
                    head += data
                after_head(conn)

        server = threading.Thread(target=serve)
        server.start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            server.join(timeout=5)


def test_a_body_delimited_by_close_passes_through():
    body = b"no length, no chunks: the end is the close\n" * 100
    with _one_shot_upstream(lambda conn: conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + body)) as url:
        with running_proxy(url) as proxy:
            assert httpx.get(proxy.url + "/", trust_env=False, timeout=10).content == body


def test_switching_protocols_tunnels_bytes_both_ways():
    def shout(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: shout\r\nConnection: Upgrade\r\n\r\n")
        while data := conn.recv(100):
            conn.sendall(data.upper())

    with _one_shot_upstream(shout) as url, running_proxy(url) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
            client.sendall(b"GET /shout HTTP/1.1\r\nHost: x\r\nUpgrade: shout\r\nConnection: Upgrade\r\n\r\n")
            assert client.recv(1000).startswith(b"HTTP/1.1 101 ")
            client.sendall(b"hello")
            assert client.recv(100) == b"HELLO"
        assert _log(proxy, "status") == [(101,)]


def test_a_rule_fires_count_times_then_requests_are_forwarded(http, proxy):
    rule = proxy.control.add(path="/text", count=2, **respond(429, "slow down", retry_after=1))
    answers = [http.get("/text") for _ in range(3)]
    assert [(a.status_code, a.headers.get("retry-after")) for a in answers] == [(429, "1"), (429, "1"), (200, None)]
    assert answers[0].text == "slow down"
    assert [(r["id"], r["count"], r["count_left"], r["fired"]) for r in proxy.control.rules()] == [(rule["id"], 2, 0, 2)]


def test_rules_are_tried_in_order_matching_method_path_and_query(http, proxy):
    posts = proxy.control.add(method="POST", path="/echo", count=None, **respond(500))
    queried = proxy.control.add(query="probe=1", count=None, **respond(418))
    anything = proxy.control.add(count=None, **respond(503))
    assert http.post("/echo", content=b"x").status_code == 500
    assert http.get("/text?probe=1").status_code == 418
    assert http.get("/text").status_code == 503
    proxy.control.remove(anything["id"])
    assert http.get("/text").status_code == 200
    assert [r["fired"] for r in proxy.control.rules()] == [1, 1]
    assert [e["rule"] for e in proxy.control.log()] == [posts["id"], queried["id"], anything["id"], None]
    proxy.control.clear()
    assert proxy.control.rules() == []
    assert http.post("/echo", content=b"x").status_code == 200


def test_the_log_records_each_request_and_can_be_reset(http, proxy):
    http.get("/text?a=b")
    [entry] = proxy.control.log()
    assert {k: entry[k] for k in ("method", "path", "query", "status", "rule", "action", "reset", "error")} == {
        "method": "GET", "path": "/text", "query": "a=b", "status": 200, "rule": None, "action": "forward",
        "reset": False, "error": None}
    assert abs(entry["time"] - time.time()) < 10
    proxy.control.clear_log()
    assert proxy.control.log() == []


def test_a_bad_rule_is_refused_naming_the_field(proxy):
    answer = httpx.post(proxy.control_url + "/rules", json={"action": "explode", "colour": "red"}, trust_env=False)
    assert answer.status_code == 422
    assert "action" in answer.json()["error"] and "unknown key 'colour'" in answer.json()["error"]
    with pytest.raises(ValidationError, match="count"):
        proxy.control.add(count=0, **respond(503))
    assert proxy.control.rules() == []


def test_an_unreachable_upstream_is_answered_502():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with running_proxy(f"http://127.0.0.1:{port}") as proxy:
        assert httpx.get(proxy.url + "/x", trust_env=False).status_code == 502
        [(error,)] = _log(proxy, "error")
    assert "unreachable" in error


def test_a_detached_proxy_serves_until_stopped(tmp_path: Path, upstream):
    proxy = faultproxy.start_detached(tmp_path / "proxy", upstream=upstream.url)
    try:
        with FaultProxyClient(proxy.control_url) as control:
            control.add(path="/text", **respond(503))
            statuses = [httpx.get(proxy.url + "/text", trust_env=False).status_code for _ in range(2)]
            assert statuses == [503, 200]
            assert [e["status"] for e in control.log()] == [503, 200]
    finally:
        assert faultproxy.stop_detached(tmp_path / "proxy")
    assert not pid_alive(proxy.pid)
    assert not any(port_open("127.0.0.1", int(url.rsplit(":", 1)[1])) for url in (proxy.url, proxy.control_url))
    assert not (tmp_path / "proxy" / faultproxy.INFO_FILE).exists()


# --- the sandbox's proxies ------------------------------------------------------------------------


def test_sandbox_proxies_answer_and_through_proxies_routes_s3_and_kubernetes_through_them(
    sandbox, make_environment
):
    proxies = api.status(sandbox.workdir)["proxies"]
    assert {name: p["ok"] for name, p in proxies.items()} == {"s3-proxy": True, "kube-proxy": True}
    env = load_environment(make_environment("through-proxies", through_proxies(sandbox)))
    s3_config = env.database("fleet").storage.s3
    assert s3_config.endpoint_url == sandbox.s3_proxy_url
    server = yaml.safe_load(Path(env.kubernetes.kubeconfig).read_text())["clusters"][0]["cluster"]["server"]
    assert server == sandbox.kube_proxy_url

    with FaultProxyClient(sandbox.s3_proxy_control_url) as s3_control, \
            FaultProxyClient(sandbox.kube_proxy_control_url) as kube_control:
        s3_control.clear_log()
        kube_control.clear_log()
        client = boto3.client("s3", endpoint_url=s3_config.endpoint_url, region_name=s3_config.region,
                              aws_access_key_id=s3_config.access_key_id.resolve(),
                              aws_secret_access_key=s3_config.secret_access_key.resolve(),
                              config=Config(proxies={}))
        client.head_bucket(Bucket=sandbox.s3_bucket)
        client.close()
        api_client = kubernetes.config.new_client_from_config(config_file=env.kubernetes.kubeconfig)
        kubernetes.client.CoreV1Api(api_client).read_namespace("sandbox")
        api_client.close()
        assert [(e["method"], e["path"], e["status"]) for e in s3_control.log()] == [
            ("HEAD", f"/{sandbox.s3_bucket}", 200)]
        assert [(e["method"], e["path"], e["status"]) for e in kube_control.log()] == [
            ("GET", "/api/v1/namespaces/sandbox", 200)]
