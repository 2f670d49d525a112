"""Routing, health and simulated traffic of one Kubernetes Service, as pure logic.

`ingress_backend` names the Service an Ingress sends traffic to. `routed_versions` reads
which images the Service sends traffic to (its selector against Ready pods' labels, as the
endpoints controller does), and the databases those pods point at (`database.py`).
`health_verdict` turns that and the
version behaviours into the /health answer. `ServiceTraffic` counts requests, synthetic or
real: each version gets its share by pod count; errors come from a per-version
accumulator (8% is exactly 8 errors in 100 requests) and latencies from a low-discrepancy
sequence over the version's distribution, so figures are steady and tests are exact.

A Service is in maintenance while any version it routes to is a maintenance page
(`maintenance_pages`; behaviour.py says which images are): /health is 503 "maintenance",
and every request, synthetic or real, goes to the page and counts as an error of the
page's version, since its users get a 503. Mixed routing (some pods the app, some the
page) is not modelled: any page puts the whole Service in maintenance.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox.webapp.behaviour import VersionBehaviours, is_maintenance_page
from sandbox.webapp.database import DatabaseTarget, database_targets

NO_ENDPOINT = "<no endpoint>"
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class Routing:
    """Where a Service sends traffic: image -> ready pod count. `problem` says why there is none;
    `service` is the Service's NAMESPACE/NAME, once known (for an Ingress, its backend's);
    `databases` what the routed pods' PGHOST/PGPORT point at."""

    versions: Mapping[str, int]
    pods: tuple[str, ...] = ()
    problem: str | None = None
    service: str | None = None
    databases: tuple[DatabaseTarget, ...] = ()

    @property
    def total(self) -> int:
        return sum(self.versions.values())


def _ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return (
        status.get("phase") == "Running"
        and not pod["metadata"].get("deletionTimestamp")
        and any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )
    )


def ingress_backend(ingress: Mapping[str, Any]) -> str | None:
    """The name of the Service an Ingress sends traffic to: its default backend's if that
    names one, else its first rule's first path's; None if neither names a Service."""
    spec = ingress.get("spec") or {}
    rules = spec.get("rules") or [{}]
    paths = (rules[0].get("http") or {}).get("paths") or [{}]
    for backend in (spec.get("defaultBackend"), paths[0].get("backend")):
        name = ((backend or {}).get("service") or {}).get("name")
        if name:
            return name
    return None


def routed_versions(
    service: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]], name: str
) -> Routing:
    """The image of each Ready pod the Service `name` (NAMESPACE/NAME) selects (its first
    container's image)."""
    if service is None:
        return Routing({}, problem=f"service {name} not found", service=name)
    selector = (service.get("spec") or {}).get("selector") or {}
    if not selector:
        return Routing({}, problem=f"service {name} has no selector", service=name)
    chosen = [
        p
        for p in pods
        if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items()) and _ready(p)
    ]
    if not chosen:
        return Routing({}, problem=f"service {name} has no ready endpoints", service=name)
    versions = Counter((p["spec"].get("containers") or [{}])[0].get("image", "") for p in chosen)
    return Routing(
        dict(sorted(versions.items())),
        tuple(sorted(p["metadata"]["name"] for p in chosen)),
        service=name,
        databases=database_targets(chosen),
    )


def maintenance_pages(routing: Routing) -> list[str]:
    """The routed versions that are maintenance pages: any one puts the Service in maintenance."""
    return [v for v in routing.versions if is_maintenance_page(v)]


def health_verdict(routing: Routing, behaviours: VersionBehaviours) -> tuple[int, dict[str, Any]]:
    """503 when nothing is routed, a maintenance page is, or any routed version is unhealthy;
    else 200."""
    body: dict[str, Any] = {"versions": dict(routing.versions), "pods": len(routing.pods)}
    if routing.problem:
        return 503, {"status": "unavailable", "reason": routing.problem, **body}
    if pages := maintenance_pages(routing):
        return 503, {
            "status": "maintenance",
            "reason": f"the maintenance page gets traffic: {', '.join(pages)}",
            "maintenance": pages,
            **body,
        }
    unhealthy = [v for v in routing.versions if not behaviours.for_image(v).healthy]
    if unhealthy:
        return 503, {
            "status": "unhealthy",
            "reason": f"unhealthy versions get traffic: {', '.join(unhealthy)}",
            "unhealthy": unhealthy,
            **body,
        }
    return 200, {"status": "ok", **body}


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return None
    rank = max(math.ceil(p / 100 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


@dataclass
class _VersionCounters:
    requests: int = 0
    errors: int = 0
    error_debt: float = 0.0
    sequence: int = 0
    share_carry: float = 0.0


@dataclass
class ServiceTraffic:
    """Counters and a sliding window of one service's requests."""

    window_seconds: float = 5.0
    requests: int = 0
    errors: int = 0
    versions: dict[str, _VersionCounters] = field(default_factory=dict)
    _window: deque[tuple[float, str, float, bool]] = field(default_factory=deque)
    _carry: float = 0.0

    def request(self, version: str, behaviours: VersionBehaviours, now: float) -> tuple[bool, float]:
        """One request to `version`: returns (failed, latency_ms)."""
        counters = self.versions.setdefault(version, _VersionCounters())
        counters.requests += 1
        self.requests += 1
        if version == NO_ENDPOINT:
            failed, latency = True, 1.0
        else:
            behaviour = behaviours.for_image(version)
            if is_maintenance_page(version):
                failed = True  # the page answers every request with a 503
            else:
                counters.error_debt += behaviour.error_rate
                failed = counters.error_debt >= 1 - 1e-9
                if failed:
                    counters.error_debt -= 1
            counters.sequence += 1
            latency = behaviour.latency_at((counters.sequence * _GOLDEN) % 1.0)
        if failed:
            counters.errors += 1
            self.errors += 1
        self._window.append((now, version, latency, failed))
        return failed, latency

    def pick(self, routing: Routing) -> str:
        """The version the next request goes to: the one furthest behind its share by pod count,
        among the maintenance pages if any is routed."""
        if not routing.versions:
            return NO_ENDPOINT
        candidates = {v: routing.versions[v] for v in maintenance_pages(routing)} or routing.versions
        total = sum(candidates.values())
        for version, count in candidates.items():
            self.versions.setdefault(version, _VersionCounters()).share_carry += count / total
        chosen = max(candidates, key=lambda v: self.versions[v].share_carry)
        self.versions[chosen].share_carry -= 1
        return chosen

    def simulate(
        self, routing: Routing, behaviours: VersionBehaviours, rate: float, dt: float, now: float
    ) -> int:
        """`rate * dt` synthetic requests spread over the routed versions; returns how many."""
        self._carry += rate * dt
        n = int(self._carry)
        self._carry -= n
        for _ in range(n):
            self.request(self.pick(routing), behaviours, now)
        self._trim(now)
        return n

    def _trim(self, now: float) -> None:
        while self._window and self._window[0][0] < now - self.window_seconds:
            self._window.popleft()

    def snapshot(self, now: float) -> dict[str, Any]:
        self._trim(now)
        window = list(self._window)
        latencies = sorted(w[2] for w in window)
        per_version: dict[str, Any] = {}
        for version, counters in sorted(self.versions.items()):
            mine = sorted(w[2] for w in window if w[1] == version)
            per_version[version] = {
                "requests": counters.requests,
                "errors": counters.errors,
                "window_requests": len(mine),
                "latency_ms": _latency_summary(mine),
            }
        errors_in_window = sum(1 for w in window if w[3])
        return {
            "requests": self.requests,
            "errors": self.errors,
            "window_seconds": self.window_seconds,
            "window_requests": len(window),
            "window_errors": errors_in_window,
            "error_rate": round(errors_in_window / len(window), 4) if window else None,
            "latency_ms": _latency_summary(latencies),
            "versions": per_version,
        }


def _latency_summary(sorted_latencies: Sequence[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for p in (50, 95, 99):
        value = percentile(sorted_latencies, p)
        out[f"p{p}"] = round(value, 1) if value is not None else None
    return out
