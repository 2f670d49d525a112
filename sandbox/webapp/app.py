"""The sample web service: one process serving any number of Kubernetes Services.

Every Service is addressed by path, /svc/NAMESPACE/SERVICE/..., or through an Ingress,
/ing/NAMESPACE/INGRESS/..., which answers as /svc/... does for the Service the Ingress's
backend names (its default backend, else its first rule's first path).

    GET /svc/NS/SVC/health     200 {"status": "ok", "versions": {IMAGE: PODS}, "pods": N}
                               503 {"status": "unhealthy" | "unavailable" | "maintenance",
                                    "reason": ..., ...}
                               pods with PGHOST in their environment: also the database
                               each points at must answer and be writable (database.py);
                               "databases": {"HOST:PORT": "ok" | "read-only" | "unreachable"}
    GET /svc/NS/SVC/metrics    JSON: cumulative requests and errors, the window's error rate
                               and latency p50/p95/p99 (ms), per version too;
                               ?format=prometheus for Prometheus text
    GET /svc/NS/SVC/[anything] one real request: 200 {"version", "latency_ms"} or 500, after
                               the version's latency; in maintenance (a routed version is
                               a maintenance page, traffic.py) the page: 503 text/html
                               with "Down for maintenance", Retry-After: 600 and
                               X-Sandbox-Service, X-Sandbox-Version (and X-Sandbox-Ingress)
    GET /ing/NS/ING/...        the same three through the Ingress; bodies add "ingress"
    GET /metrics               Prometheus text for every tracked Service and Ingress
    GET /healthz               the web app's own liveness
    GET|POST /sandbox/behaviours   read or replace the version behaviours (behaviour.py)

A Service or an Ingress is tracked from its first request (or from `services` and
`ingresses` at start): a background thread then re-reads its routing from the API server
every `refresh` seconds and sends it `rate` synthetic requests per second, so its counters
move on their own. /health reads the routing afresh on every call, so a selector switch, an
Ingress backend switch or a finished rollout shows at once.
"""

from __future__ import annotations

import asyncio
import html
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sandbox.webapp.behaviour import VersionBehaviours
from sandbox.webapp.database import CredentialsProblem, DatabaseChecker, database_verdict, decode_secret
from sandbox.webapp.traffic import (
    Routing,
    ServiceTraffic,
    health_verdict,
    ingress_backend,
    maintenance_pages,
    routed_versions,
)

Kind = Literal["svc", "ing"]
MAINTENANCE_RETRY_AFTER_SECONDS = 600


@dataclass(frozen=True)
class Target:
    """What a path addresses: a Service (`svc`), or an Ingress (`ing`) and, through its
    backend, a Service."""

    kind: Kind
    namespace: str
    name: str

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"

    def names(self, routing: Routing) -> dict[str, str | None]:
        """What an answer is about: the Service, or the Ingress and the Service it routed to."""
        if self.kind == "ing":
            return {"ingress": self.label, "service": routing.service}
        return {"service": self.label}


class KubeReader:
    """Reads an Ingress, a Service and its pods from the (fake) Kubernetes API."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=5)

    def read(self, client: httpx.Client, target: Target) -> Routing:
        """Where `target` sends traffic now; an Ingress, through the Service its backend names."""
        if target.kind == "svc":
            return self._service(client, target.namespace, target.name)
        path = f"/apis/networking.k8s.io/v1/namespaces/{target.namespace}/ingresses/{target.name}"
        ingress = client.get(path)
        if ingress.status_code == 404:
            return Routing({}, problem=f"ingress {target.label} not found")
        ingress.raise_for_status()
        service = ingress_backend(ingress.json())
        if service is None:
            return Routing({}, problem=f"ingress {target.label} names no Service backend")
        return self._service(client, target.namespace, service)

    def _service(self, client: httpx.Client, namespace: str, name: str) -> Routing:
        label = f"{namespace}/{name}"
        svc = client.get(f"/api/v1/namespaces/{namespace}/services/{name}")
        if svc.status_code == 404:
            return routed_versions(None, [], label)
        svc.raise_for_status()
        selector = (svc.json().get("spec") or {}).get("selector") or {}
        pods = []
        if selector:
            labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
            pods = client.get(
                f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": labels}
            ).json()["items"]
        return routed_versions(svc.json(), pods, label)

    def secret(self, client: httpx.Client, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's data, decoded; None if there is no such Secret."""
        secret = client.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        if secret.status_code == 404:
            return None
        secret.raise_for_status()
        return decode_secret(secret.json())


@dataclass
class Tracked:
    traffic: ServiceTraffic
    routing: Routing = field(default_factory=lambda: Routing({}, problem="not read yet"))


class WebApp:
    def __init__(
        self,
        kube_url: str,
        *,
        token: str | None = None,
        behaviours: Mapping[str, Any] | None = None,
        tag_conventions: bool = True,
        services: Iterable[tuple[str, str]] = (),
        ingresses: Iterable[tuple[str, str]] = (),
        rate: float = 50.0,
        window: float = 5.0,
        refresh: float = 0.1,
        database_timeout: float = 1.0,
        database_ttl: float = 0.5,
    ) -> None:
        self.kube = KubeReader(kube_url, token)
        self.databases = DatabaseChecker(timeout=database_timeout, ttl=database_ttl)
        self.behaviours = VersionBehaviours(behaviours, conventions=tag_conventions)
        self.rate = rate
        self.window = window
        self.refresh = refresh
        self._lock = threading.Lock()
        self._tracked: dict[Target, Tracked] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # For the handlers, which read the API in the thread pool; the traffic thread has its own.
        self._client = self.kube.client()
        for namespace, name in services:
            self.track(Target("svc", namespace, name))
        for namespace, name in ingresses:
            self.track(Target("ing", namespace, name))
        routes = [
            Route("/healthz", lambda _: PlainTextResponse("ok")),
            Route("/metrics", self.prometheus_all),
            Route("/sandbox/behaviours", self.behaviour_config, methods=["GET", "POST", "PUT"]),
        ]
        for kind in ("svc", "ing"):
            base = f"/{kind}/{{namespace}}/{{name}}"
            routes += [
                Route(f"{base}/health", partial(self.health, kind)),
                Route(f"{base}/metrics", partial(self.metrics, kind)),
                Route(base, partial(self.serve, kind), methods=["GET", "POST"]),
                Route(f"{base}/{{rest:path}}", partial(self.serve, kind), methods=["GET", "POST"]),
            ]
        self.app = Starlette(routes=routes)

    # --- tracking and the traffic thread --------------------------------------------

    def track(self, target: Target) -> Tracked:
        with self._lock:
            if target not in self._tracked:
                self._tracked[target] = Tracked(ServiceTraffic(window_seconds=self.window))
            return self._tracked[target]

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sandbox-webapp-traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._client.close()

    def _run(self) -> None:
        last = time.monotonic()
        with self.kube.client() as client:
            while not self._stop.is_set():
                now = time.monotonic()
                dt, last = now - last, now
                with self._lock:
                    tracked = list(self._tracked.items())
                for target, state in tracked:
                    routing = self._read(client, target)
                    with self._lock:
                        state.routing = routing
                        state.traffic.simulate(routing, self.behaviours, self.rate, dt, time.time())
                self._stop.wait(self.refresh)

    def _read(self, client: httpx.Client, target: Target) -> Routing:
        try:
            return self.kube.read(client, target)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            return Routing({}, problem=f"cannot read the Kubernetes API: {exc}")

    # --- handlers -------------------------------------------------------------------

    def _target(self, kind: Kind, request: Request) -> Target:
        return Target(kind, request.path_params["namespace"], request.path_params["name"])

    async def health(self, kind: Kind, request: Request) -> Response:
        target = self._target(kind, request)
        self.track(target)
        routing = await run_in_threadpool(self._read, self._client, target)
        code, body = health_verdict(routing, self.behaviours)
        if routing.databases and not routing.problem:
            results = {
                db.address: await self.databases.check(db, self._read_secret) for db in routing.databases
            }
            code, body = database_verdict(code, body, results)
        return JSONResponse({**target.names(routing), **body}, status_code=code)

    async def _read_secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        try:
            return await run_in_threadpool(self.kube.secret, self._client, namespace, name)
        except (httpx.HTTPError, ValueError) as exc:
            raise CredentialsProblem(f"cannot read secret {namespace}/{name}: {exc}") from None

    async def serve(self, kind: Kind, request: Request) -> Response:
        target = self._target(kind, request)
        state = self.track(target)
        routing = await run_in_threadpool(self._read, self._client, target)
        with self._lock:
            version = state.traffic.pick(routing)
            failed, latency = state.traffic.request(version, self.behaviours, time.time())
        await asyncio.sleep(latency / 1000)
        body = {**target.names(routing), "version": version, "latency_ms": round(latency, 1)}
        if routing.problem:
            return JSONResponse({**body, "error": routing.problem}, status_code=503)
        if maintenance_pages(routing):
            return maintenance_page(target.names(routing), version)
        if failed:
            return JSONResponse({**body, "error": "simulated failure of this version"}, status_code=500)
        return JSONResponse(body)

    def _snapshot(self, target: Target) -> dict[str, Any]:
        state = self.track(target)
        with self._lock:
            snap = state.traffic.snapshot(time.time())
            routing = state.routing
        return {**target.names(routing), "routed": dict(routing.versions), "rate_rps": self.rate, **snap}

    async def metrics(self, kind: Kind, request: Request) -> Response:
        snap = self._snapshot(self._target(kind, request))
        if request.query_params.get("format") == "prometheus":
            return PlainTextResponse(prometheus_text([snap]), media_type="text/plain; version=0.0.4")
        return JSONResponse(snap)

    async def prometheus_all(self, request: Request) -> Response:
        with self._lock:
            targets = list(self._tracked)
        return PlainTextResponse(
            prometheus_text([self._snapshot(t) for t in targets]), media_type="text/plain; version=0.0.4"
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


def maintenance_page(names: Mapping[str, str | None], version: str) -> Response:
    """The static page a maintenance-page image serves: what `curl https://app...` shows an
    operator during maintenance. The sandbox's names go in headers and a comment, not the text."""
    about = {**names, "version": version}
    comment = ", ".join(f"{k} {v}" for k, v in about.items() if v)
    page = (
        "<!doctype html>\n"
        f"<!-- sandbox: {html.escape(comment)} -->\n"
        '<html lang="en"><head><meta charset="utf-8"><title>Maintenance</title></head>\n'
        "<body><h1>Down for maintenance</h1><p>We will be back shortly.</p></body></html>\n"
    )
    headers = {"Retry-After": str(MAINTENANCE_RETRY_AFTER_SECONDS)}
    headers |= {f"X-Sandbox-{k.capitalize()}": v for k, v in about.items() if v}
    return HTMLResponse(page, status_code=503, headers=headers)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def prometheus_text(snapshots: Iterable[Mapping[str, Any]]) -> str:
    lines = [
        "# HELP sandbox_requests_total Requests served, by service or ingress, and version.",
        "# TYPE sandbox_requests_total counter",
    ]
    errors = [
        "# HELP sandbox_errors_total Failed requests, by service or ingress, and version.",
        "# TYPE sandbox_errors_total counter",
    ]
    latency = [
        "# HELP sandbox_request_latency_ms Request latency quantiles over the window, by service or ingress.",
        "# TYPE sandbox_request_latency_ms summary",
    ]
    for snap in snapshots:
        # Traffic through an Ingress is counted apart from its Service's, under the Ingress's name.
        kind = "ingress" if "ingress" in snap else "service"
        namespace, name = snap[kind].split("/", 1)
        base = f'namespace="{_label(namespace)}",{kind}="{_label(name)}"'
        for version, v in snap["versions"].items():
            labels = f'{base},version="{_label(version)}"'
            lines.append(f"sandbox_requests_total{{{labels}}} {v['requests']}")
            errors.append(f"sandbox_errors_total{{{labels}}} {v['errors']}")
        for p, value in snap["latency_ms"].items():
            if value is not None:
                latency.append(f'sandbox_request_latency_ms{{{base},quantile="0.{p[1:]}"}} {value}')
    return "\n".join(lines + errors + latency) + "\n"
