"""HTTP: health URLs, the metrics endpoint and smoke checks of a service (httpx).

A measurement reads the cumulative request and error counters twice and takes the error
rate of the interval between them, as Prometheus' rate() would, so errors from before a
rollback do not linger in a window.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx

from tasks import analysis
from tasks.analysis import Measurement
from tasks.checks import Check
from tasks.config import HttpCheck

POLL_SECONDS = 0.25  # between two health probes while waiting for a service


@contextmanager
def client(timeout: timedelta) -> Iterator[httpx.Client]:
    """The HTTP client for a service's health, metrics and smoke URLs (`http_timeout`)."""
    with httpx.Client(timeout=timeout.total_seconds()) as c:
        yield c


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


def wait_healthy(client: httpx.Client, urls: list[str], timeout_s: float, poll_s: float = POLL_SECONDS) -> float | None:
    """Seconds until every health URL answers 2xx, or None if it never did in time."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if probe_health(client, urls)[0]:
            return time.monotonic() - start
        time.sleep(poll_s)
    return None


def run_analysis(client: httpx.Client, spec: analysis.AnalysisSpec, health_urls: list[str],
                 metrics_url: str | None, label: str) -> dict[str, Any]:
    """Measure every interval until the analysis decides (Successful, Failed, Inconclusive
    or Error), looping on `analysis.next_due` as Argo Rollouts does. Returns the verdict,
    its reasons, one row per measurement, and when the first failed measurement was taken."""
    measurements: list[Measurement] = []
    started_wall, started = time.time(), time.monotonic()
    _, sample = measure(client, [], metrics_url, None, 0.0)  # baseline counters
    while (due := analysis.next_due(measurements, spec)) is not None:
        due = max(due, spec.interval_seconds)  # the first measurement needs an interval of traffic
        time.sleep(max(0.0, due - (time.monotonic() - started)))
        m, sample = measure(client, health_urls, metrics_url, sample, time.monotonic() - started)
        measurements.append(m)
    result = analysis.judge_run(measurements, spec)
    first_failed = None if result.first_failure_at is None else started_wall + result.first_failure_at
    return {"label": label, "phase": result.phase, "reasons": list(result.reasons),
            "rows": result.rows(measurements, spec), "first_failure_wall": first_failed,
            "seconds": round(time.monotonic() - started, 3)}


def page_check(client: httpx.Client, url: str, marker: str, on: bool) -> Check:
    """The maintenance page, seen as a user sees it: while `on`, the URL serves a page holding
    `marker`; once off, it answers 2xx without it."""
    name = "maintenance page served" if on else "maintenance page gone, the app answers"
    try:
        resp = client.get(url)
    except httpx.HTTPError as exc:
        return Check(name, False, f"{url} unreachable: {type(exc).__name__}")
    shown = marker.lower() in resp.text.lower()
    if on:
        return Check(name, shown, f"{url} answered {resp.status_code}" + ("" if shown else f", without {marker!r}"))
    ok = resp.is_success and not shown
    return Check(name, ok, f"{url} answered {resp.status_code}" + (f", still with {marker!r}" if shown else ""))


def wait_page(client: httpx.Client, url: str, marker: str, on: bool, timeout_s: float,
              poll_s: float = POLL_SECONDS) -> Check:
    """`page_check` until it passes or `timeout_s` ran out: the last answer either way."""
    start = time.monotonic()
    while True:
        check = page_check(client, url, marker, on)
        if check.passed or time.monotonic() - start >= timeout_s:
            return check
        time.sleep(poll_s)
