"""The sample web service: one process serving any number of Kubernetes Services.

Every Service is addressed by path: /svc/NAMESPACE/SERVICE/...

    GET /svc/NS/SVC/health     200 {"status": "ok", "versions": {IMAGE: PODS}, "pods": N}
                               503 {"status": "unhealthy" | "unavailable", "reason": ..., ...}
    GET /svc/NS/SVC/metrics    JSON: cumulative requests and errors, the window's error rate
                               and latency p50/p95/p99 (ms), per version too;
                               ?format=prometheus for Prometheus text
    GET /svc/NS/SVC/[anything] one real request: 200 {"version", "latency_ms"} or 500, after
                               the version's latency
    GET /metrics               Prometheus text for every tracked Service
    GET /healthz               the web app's own liveness
    GET|POST /sandbox/behaviours   read or replace the version behaviours (behaviour.py)

A Service is tracked from its first request (or from `services` at start): a background
thread then re-reads its routing from the API server every `refresh` seconds and sends it
`rate` synthetic requests per second, so its counters move on their own. /health reads
the routing afresh on every call, so a selector switch or a finished rollout shows at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sandbox.webapp.behaviour import VersionBehaviours
from sandbox.webapp.traffic import Routing, ServiceTraffic, health_verdict, routed_versions


class KubeReader:
    """Reads a Service and its pods from the (fake) Kubernetes API."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _paths(self, namespace: str, name: str) -> tuple[str, str]:
        return f"/api/v1/namespaces/{namespace}/services/{name}", f"/api/v1/namespaces/{namespace}/pods"

    @staticmethod
    def _routing(service_resp: httpx.Response, pods: list[dict[str, Any]], label: str) -> Routing:
        if service_resp.status_code == 404:
            return routed_versions(None, [], label)
        service_resp.raise_for_status()
        return routed_versions(service_resp.json(), pods, label)

    @staticmethod
    def _selector(service_resp: httpx.Response) -> str | None:
        if service_resp.status_code != 200:
            return None
        selector = (service_resp.json().get("spec") or {}).get("selector") or {}
        return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or None

    def read(self, client: httpx.Client, namespace: str, name: str) -> Routing:
        svc_path, pods_path = self._paths(namespace, name)
        svc = client.get(svc_path)
        selector = self._selector(svc)
        pods = client.get(pods_path, params={"labelSelector": selector}).json()["items"] if selector else []
        return self._routing(svc, pods, f"{namespace}/{name}")

    async def aread(self, client: httpx.AsyncClient, namespace: str, name: str) -> Routing:
        svc_path, pods_path = self._paths(namespace, name)
        svc = await client.get(svc_path)
        selector = self._selector(svc)
        pods = (
            (await client.get(pods_path, params={"labelSelector": selector})).json()["items"]
            if selector
            else []
        )
        return self._routing(svc, pods, f"{namespace}/{name}")


@dataclass
class Tracked:
    traffic: ServiceTraffic
    routing: Routing = field(default_factory=lambda: Routing({}, problem="not read yet"))
    last_error: str | None = None


class WebApp:
    def __init__(
        self,
        kube_url: str,
        *,
        token: str | None = None,
        behaviours: Mapping[str, Any] | None = None,
        tag_conventions: bool = True,
        services: Iterable[tuple[str, str]] = (),
        rate: float = 50.0,
        window: float = 5.0,
        refresh: float = 0.1,
    ) -> None:
        self.kube = KubeReader(kube_url, token)
        self.behaviours = VersionBehaviours(behaviours, conventions=tag_conventions)
        self.rate = rate
        self.window = window
        self.refresh = refresh
        self._lock = threading.Lock()
        self._services: dict[tuple[str, str], Tracked] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for namespace, name in services:
            self.track(namespace, name)
        self.app = Starlette(
            routes=[
                Route("/healthz", lambda _: PlainTextResponse("ok")),
                Route("/metrics", self.prometheus_all),
                Route("/sandbox/behaviours", self.behaviour_config, methods=["GET", "POST", "PUT"]),
                Route("/svc/{namespace}/{service}/health", self.health),
                Route("/svc/{namespace}/{service}/metrics", self.metrics),
                Route("/svc/{namespace}/{service}", self.serve, methods=["GET", "POST"]),
                Route("/svc/{namespace}/{service}/{rest:path}", self.serve, methods=["GET", "POST"]),
            ]
        )

    # --- tracking and the traffic thread --------------------------------------------

    def track(self, namespace: str, name: str) -> Tracked:
        with self._lock:
            key = (namespace, name)
            if key not in self._services:
                self._services[key] = Tracked(ServiceTraffic(window_seconds=self.window))
            return self._services[key]

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sandbox-webapp-traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        last = time.monotonic()
        with httpx.Client(base_url=self.kube.url, headers=self.kube.headers, timeout=5) as client:
            while not self._stop.is_set():
                now = time.monotonic()
                dt, last = now - last, now
                with self._lock:
                    tracked = list(self._services.items())
                for (namespace, name), state in tracked:
                    try:
                        routing = self.kube.read(client, namespace, name)
                        error = None
                    except (httpx.HTTPError, ValueError, KeyError) as exc:
                        routing, error = (
                            Routing({}, problem=f"cannot read the Kubernetes API: {exc}"),
                            str(exc),
                        )
                    with self._lock:
                        state.routing, state.last_error = routing, error
                        state.traffic.simulate(routing, self.behaviours, self.rate, dt, time.time())
                self._stop.wait(self.refresh)

    # --- handlers -------------------------------------------------------------------

    async def _routing(self, namespace: str, name: str) -> Routing:
        async with httpx.AsyncClient(base_url=self.kube.url, headers=self.kube.headers, timeout=5) as client:
            try:
                return await self.kube.aread(client, namespace, name)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                return Routing({}, problem=f"cannot read the Kubernetes API: {exc}")

    async def health(self, request: Request) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["service"]
        self.track(namespace, name)
        code, body = health_verdict(await self._routing(namespace, name), self.behaviours)
        return JSONResponse({"service": f"{namespace}/{name}", **body}, status_code=code)

    async def serve(self, request: Request) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["service"]
        state = self.track(namespace, name)
        routing = await self._routing(namespace, name)
        with self._lock:
            version = state.traffic.pick(routing)
            failed, latency = state.traffic.request(version, self.behaviours, time.time())
        await asyncio.sleep(latency / 1000)
        body = {"service": f"{namespace}/{name}", "version": version, "latency_ms": round(latency, 1)}
        if routing.problem:
            return JSONResponse({**body, "error": routing.problem}, status_code=503)
        if failed:
            return JSONResponse({**body, "error": "simulated failure of this version"}, status_code=500)
        return JSONResponse(body)

    def _snapshot(self, namespace: str, name: str) -> dict[str, Any]:
        state = self.track(namespace, name)
        with self._lock:
            snap = state.traffic.snapshot(time.time())
            routing = state.routing
        return {
            "service": f"{namespace}/{name}",
            "routed": dict(routing.versions),
            "rate_rps": self.rate,
            **snap,
        }

    async def metrics(self, request: Request) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["service"]
        snap = self._snapshot(namespace, name)
        if request.query_params.get("format") == "prometheus":
            return PlainTextResponse(prometheus_text([snap]), media_type="text/plain; version=0.0.4")
        return JSONResponse(snap)

    async def prometheus_all(self, request: Request) -> Response:
        with self._lock:
            keys = list(self._services)
        return PlainTextResponse(
            prometheus_text([self._snapshot(ns, n) for ns, n in keys]), media_type="text/plain; version=0.0.4"
        )

    async def behaviour_config(self, request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(self.behaviours.to_json())
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("rules"), dict):
            return JSONResponse(
                {
                    "error": "send {'rules': {IMAGE_PATTERN: BEHAVIOUR}, 'tag_conventions': true, 'merge': false}"
                },
                status_code=400,
            )
        rules = dict(body["rules"])
        if body.get("merge"):
            rules = {**{p: b for p, b in self.behaviours.rules}, **rules}
        try:
            self.behaviours = VersionBehaviours(rules, conventions=body.get("tag_conventions", True))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(self.behaviours.to_json())


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def prometheus_text(snapshots: Iterable[Mapping[str, Any]]) -> str:
    lines = [
        "# HELP sandbox_requests_total Requests served, by service and version.",
        "# TYPE sandbox_requests_total counter",
    ]
    errors = [
        "# HELP sandbox_errors_total Failed requests, by service and version.",
        "# TYPE sandbox_errors_total counter",
    ]
    latency = [
        "# HELP sandbox_request_latency_ms Request latency quantiles over the window, by service.",
        "# TYPE sandbox_request_latency_ms summary",
    ]
    for snap in snapshots:
        namespace, service = snap["service"].split("/", 1)
        base = f'namespace="{_label(namespace)}",service="{_label(service)}"'
        for version, v in snap["versions"].items():
            labels = f'{base},version="{_label(version)}"'
            lines.append(f"sandbox_requests_total{{{labels}}} {v['requests']}")
            errors.append(f"sandbox_errors_total{{{labels}}} {v['errors']}")
        for p, value in snap["latency_ms"].items():
            if value is not None:
                latency.append(f'sandbox_request_latency_ms{{{base},quantile="0.{p[1:]}"}} {value}')
    return "\n".join(lines + errors + latency) + "\n"
