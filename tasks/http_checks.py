"""HTTP: health URLs, the metrics endpoint and smoke checks of a service (httpx).

A measurement reads the cumulative request and error counters twice and takes the error
rate of the interval between them, as Prometheus' rate() would, so errors from before a
rollback do not linger in a window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from tasks.analysis import Measurement
from tasks.checks import Check
from tasks.config import HttpCheck


@dataclass(frozen=True)
class MetricsSample:
    requests: int
    errors: int
    latency_p95_ms: float | None


def probe_health(client: httpx.Client, urls: list[str]) -> tuple[bool, str]:
    """All health URLs answer 2xx. Returns the verdict and what each answered."""
    notes = []
    ok = True
    for url in urls:
        try:
            resp = client.get(url)
            notes.append(f"{url} {resp.status_code}")
            ok = ok and resp.is_success
        except httpx.HTTPError as exc:
            notes.append(f"{url} unreachable ({type(exc).__name__})")
            ok = False
    return ok, "; ".join(notes)


def read_metrics(client: httpx.Client, url: str) -> MetricsSample:
    resp = client.get(url)
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    latency = body.get("latency_ms") or {}
    return MetricsSample(int(body["requests"]), int(body["errors"]), latency.get("p95"))


def measure(client: httpx.Client, health_urls: list[str], metrics_url: str | None,
            previous: MetricsSample | None, at: float) -> tuple[Measurement, MetricsSample | None]:
    """One analysis measurement: health, and error rate and latency since `previous`."""
    healthy = probe_health(client, health_urls)[0] if health_urls else None
    if metrics_url is None:
        return Measurement(at=at, healthy=healthy, error_rate=None, latency_ms=None), previous
    try:
        sample = read_metrics(client, metrics_url)
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return (Measurement(at=at, healthy=healthy, error_rate=None, latency_ms=None,
                            error=f"metrics unavailable: {type(exc).__name__}: {exc}"), previous)
    rate = None
    if previous is not None and sample.requests > previous.requests:
        rate = (sample.errors - previous.errors) / (sample.requests - previous.requests)
    return Measurement(at=at, healthy=healthy, error_rate=rate, latency_ms=sample.latency_p95_ms), sample


def smoke_check(client: httpx.Client, check: HttpCheck) -> Check:
    name = f"smoke: {check.name}"
    try:
        resp = client.get(check.url, timeout=check.timeout.total_seconds())
    except httpx.HTTPError as exc:
        return Check(name, False, f"{check.url} unreachable: {type(exc).__name__}")
    if resp.status_code != check.expect_status:
        return Check(name, False, f"{check.url} answered {resp.status_code}, expected {check.expect_status}")
    if check.contains is not None and check.contains not in resp.text:
        return Check(name, False, f"{check.url} body lacks {check.contains!r}")
    return Check(name, True, f"{check.url} answered {resp.status_code}")


def wait_healthy(client: httpx.Client, urls: list[str], timeout_s: float, poll_s: float = 0.25) -> float | None:
    """Seconds until every health URL answers 2xx, or None if it never did in time."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if probe_health(client, urls)[0]:
            return time.monotonic() - start
        time.sleep(poll_s)
    return None
