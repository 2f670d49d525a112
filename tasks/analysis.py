"""Whether a rollout passes its analysis gate: a pure decision, no I/O, no clock.

After a rollout the deploy flow measures the service every `interval_seconds` (does the
health URL answer 2xx, the error rate and the latency p95 from the metrics endpoint) and
asks this module what the figures mean, like an Argo Rollouts AnalysisRun with one metric.
The runbook's rollback matrix ("error rate > 5%: immediate rollback") is a failure
condition; its "normal" column (error rate < 0.1%, p99 < 500 ms) is a success condition.

One measurement (`judge_measurement`), the first rule that applies wins:

1. `error` is set (endpoint unreachable, bad payload): Error. Its figures are not trusted.
2. It breaks the failure condition: Failed. A figure above its failure bound breaks it
   (error rate > `failure.max_error_rate`, latency > `failure.max_latency_ms`), and so does
   a health URL that did not answer 2xx when `failure.require_healthy`.
3. It meets the success condition: Successful. Every bound holds: figure <= bound, and
   healthy when `success.require_healthy`.
4. Otherwise Inconclusive: a figure between the two bounds, or one the success condition
   needs that was not measured.

A figure that was not measured (None, or NaN: the error rate of a service with no traffic
is 0/0) breaks no failure bound and meets no success bound, so missing metrics can never
pass the gate: they make the run Inconclusive. A figure no bound mentions is not looked at.

The run (`judge_run`) is judged after each measurement, in order, as Argo Rollouts does:

- Failed when failed > `failure_limit`: the flow stops measuring and rolls back.
- Error when consecutive errors > `consecutive_error_limit`; any other verdict ends a streak.
- Inconclusive when inconclusive > `inconclusive_limit`.
- Successful when `count` measurements are counted and nothing above tripped.
- Otherwise Running.

Errored measurements do not count towards `count`, as in Argo Rollouts, whose controller
counts only Successful, Failed and Inconclusive measurements and measures again after an
error (`runMeasurements` in argo-rollouts `analysis/analysis.go`). A run of count 5 that
meets two errors takes 7 measurements; `consecutive_error_limit` bounds the retries. The
flow should loop on `next_due`, not on `range(count)`.

The first measurement that trips a rule decides the run, and measurements after it are
not judged: a decided result does not change when more measurements are appended. Each
measurement moves one counter, so only one limit can trip at a time; when the measurement
that completes `count` also trips a limit, the limit wins (Failed > Error > Inconclusive >
Successful).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

if TYPE_CHECKING:
    from tasks.config import AnalysisConfig

Phase = Literal["Running", "Successful", "Failed", "Inconclusive", "Error"]


@dataclass(frozen=True)
class Thresholds:
    """A condition: every bound given must hold. None (or False) sets no bound."""

    max_error_rate: float | None = None  # fraction, 0.05 = 5%
    max_latency_ms: float | None = None  # p95 in ms
    require_healthy: bool = True  # health URL(s) answered 2xx


@dataclass(frozen=True)
class AnalysisSpec:
    interval_seconds: float
    count: int  # measurements to count (errored ones are not counted)
    success: Thresholds  # a measurement meeting this is Successful...
    failure: Thresholds  # ...unless it breaks this: then it is Failed
    failure_limit: int = 0  # the run fails when failed measurements > failure_limit
    inconclusive_limit: int = 0  # Inconclusive when inconclusive measurements > this
    consecutive_error_limit: int = 4  # Error when consecutive errored measurements > this

    def __post_init__(self) -> None:
        _check_spec(self)


@dataclass(frozen=True)
class Measurement:
    at: float  # seconds since analysis start (monotonic, injected)
    healthy: bool | None  # None when it could not be measured
    error_rate: float | None  # fraction, 0.05 = 5%
    latency_ms: float | None  # p95
    error: str | None = None  # set when the measurement itself failed


@dataclass(frozen=True)
class AnalysisResult:
    phase: Phase  # Running while more measurements are due and nothing decided yet
    reasons: tuple[str, ...]  # why, decision first
    successful: int
    failed: int
    inconclusive: int
    errors: int
    consecutive_errors: int
    first_failure_at: float | None  # `at` of the first Failed measurement (time to recovery)
    judged: int  # measurements judged; any after the deciding one are not

    @property
    def counted(self) -> int:
        """Measurements that count towards `count`: every verdict but Error."""
        return self.successful + self.failed + self.inconclusive

    def rows(self, measurements: Sequence[Measurement], spec: AnalysisSpec) -> list[dict]:
        """One row per measurement, in order, for a Prefect table artifact."""
        rows = []
        for i, m in enumerate(measurements, start=1):
            verdict, why = judge_measurement(m, spec)
            if i > self.judged:
                why = f"not judged, the run was decided at #{self.judged}: {why}"
            rows.append(
                {
                    "#": i,
                    "at": m.at,
                    "healthy": "" if m.healthy is None else ("yes" if m.healthy else "no"),
                    "error_rate (%)": round(m.error_rate * 100, 3) if _known(m.error_rate) else "",
                    "latency_ms": round(m.latency_ms, 1) if _known(m.latency_ms) else "",
                    "verdict": verdict,
                    "why": why,
                }
            )
        return rows


def judge_measurement(m: Measurement, spec: AnalysisSpec) -> tuple[Phase, str]:
    """The verdict on one measurement, and why, with the figures."""
    if m.error is not None:
        return "Error", f"measurement error: {m.error or 'no message'}"

    broken = _broken(m, spec.failure)
    if broken:
        return "Failed", "; ".join(broken)

    held, missed = _success(m, spec.success)
    if not missed:
        return "Successful", "; ".join(held) if held else "success condition sets no bounds"
    return "Inconclusive", "; ".join(missed)


def judge_run(measurements: Sequence[Measurement], spec: AnalysisSpec) -> AnalysisResult:
    """The phase of the analysis run after these measurements, with the reasons."""
    _check_times(measurements)
    counts = {"Successful": 0, "Failed": 0, "Inconclusive": 0, "Error": 0}
    whys: dict[str, list[str]] = {phase: [] for phase in counts}
    streak: list[str] = []  # whys of the current run of errors
    first_failure_at: float | None = None
    phase: Phase = "Running"
    decision = ""
    judged = 0

    for i, m in enumerate(measurements, start=1):
        verdict, why = judge_measurement(m, spec)
        judged = i
        counts[verdict] += 1
        line = f"#{i} at {_num(m.at)}s: {why}"
        whys[verdict].append(line)
        streak = [*streak, line] if verdict == "Error" else []
        if verdict == "Failed" and first_failure_at is None:
            first_failure_at = m.at

        decided = _phase_for(
            failed=counts["Failed"],
            inconclusive=counts["Inconclusive"],
            consecutive_errors=len(streak),
            counted=counts["Successful"] + counts["Failed"] + counts["Inconclusive"],
            spec=spec,
        )
        if decided is not None:
            phase, decision = decided
            break

    counted = counts["Successful"] + counts["Failed"] + counts["Inconclusive"]
    summary = (
        f"{counted} of {spec.count} measurements counted: {counts['Successful']} successful, "
        f"{counts['Failed']} failed, {counts['Inconclusive']} inconclusive; {counts['Error']} errors"
    )
    if phase == "Running":
        reasons: tuple[str, ...] = (summary,)
    else:
        evidence = {
            "Failed": whys["Failed"],
            "Error": streak,
            "Inconclusive": whys["Inconclusive"],
            "Successful": whys["Failed"] + whys["Inconclusive"],  # what the limits let through
        }[phase]
        reasons = (decision, *evidence, summary)

    return AnalysisResult(
        phase=phase,
        reasons=reasons,
        successful=counts["Successful"],
        failed=counts["Failed"],
        inconclusive=counts["Inconclusive"],
        errors=counts["Error"],
        consecutive_errors=len(streak),
        first_failure_at=first_failure_at,
        judged=judged,
    )


def next_due(measurements: Sequence[Measurement], spec: AnalysisSpec) -> float | None:
    """When the next measurement is due, in seconds since the analysis start; None once the
    run is decided. The first is due at 0, each next one `interval_seconds` after the last,
    after an errored one too (Argo retries errors after its own 10 s default instead)."""
    if judge_run(measurements, spec).phase != "Running":
        return None
    if not measurements:
        return 0.0
    return measurements[-1].at + spec.interval_seconds


def spec_of(cfg: AnalysisConfig) -> AnalysisSpec:
    """The analysis a service's config asks for."""

    def th(t: Any) -> Thresholds:
        return Thresholds(t.max_error_rate, t.max_latency_ms, t.require_healthy)

    return AnalysisSpec(
        interval_seconds=cfg.interval.total_seconds(), count=cfg.count, success=th(cfg.success),
        failure=th(cfg.failure), failure_limit=cfg.failure_limit, inconclusive_limit=cfg.inconclusive_limit,
        consecutive_error_limit=cfg.consecutive_error_limit,
    )


# --- helpers ---------------------------------------------------------------------------


def _phase_for(
    *, failed: int, inconclusive: int, consecutive_errors: int, counted: int, spec: AnalysisSpec
) -> tuple[Phase, str] | None:
    """The run's phase from its counters, or None while it is still Running."""
    if failed > spec.failure_limit:
        return "Failed", f"failed ({failed}) > failure_limit ({spec.failure_limit})"
    if consecutive_errors > spec.consecutive_error_limit:
        return "Error", (
            f"consecutive errors ({consecutive_errors}) > "
            f"consecutive_error_limit ({spec.consecutive_error_limit})"
        )
    if inconclusive > spec.inconclusive_limit:
        return (
            "Inconclusive",
            f"inconclusive ({inconclusive}) > inconclusive_limit ({spec.inconclusive_limit})",
        )
    if counted >= spec.count:
        return "Successful", f"count ({spec.count}) reached"
    return None


def _broken(m: Measurement, t: Thresholds) -> list[str]:
    """The failure bounds this measurement breaks; a figure not measured breaks none."""
    broken = []
    if t.require_healthy and m.healthy is False:
        broken.append("unhealthy: health URL did not answer 2xx")
    if t.max_error_rate is not None and _known(m.error_rate) and m.error_rate > t.max_error_rate:
        broken.append(f"error rate {_pct(m.error_rate)} > {_pct(t.max_error_rate)}")
    if t.max_latency_ms is not None and _known(m.latency_ms) and m.latency_ms > t.max_latency_ms:
        broken.append(f"latency p95 {_ms(m.latency_ms)} > {_ms(t.max_latency_ms)}")
    return broken


def _success(m: Measurement, t: Thresholds) -> tuple[list[str], list[str]]:
    """The success bounds this measurement meets, and those it misses (or cannot show)."""
    held: list[str] = []
    missed: list[str] = []
    if t.require_healthy:
        if m.healthy is None:
            missed.append("health not measured")
        elif m.healthy:
            held.append("healthy")
        else:  # only reachable when the failure condition does not require health
            missed.append("unhealthy: health URL did not answer 2xx")
    if t.max_error_rate is not None:
        if not _known(m.error_rate):
            missed.append("error rate not measured")
        elif m.error_rate <= t.max_error_rate:
            held.append(f"error rate {_pct(m.error_rate)} <= {_pct(t.max_error_rate)}")
        else:
            missed.append(f"error rate {_pct(m.error_rate)} > success bound {_pct(t.max_error_rate)}")
    if t.max_latency_ms is not None:
        if not _known(m.latency_ms):
            missed.append("latency not measured")
        elif m.latency_ms <= t.max_latency_ms:
            held.append(f"latency p95 {_ms(m.latency_ms)} <= {_ms(t.max_latency_ms)}")
        else:
            missed.append(f"latency p95 {_ms(m.latency_ms)} > success bound {_ms(t.max_latency_ms)}")
    return held, missed


def _check_spec(spec: AnalysisSpec) -> None:
    if isinstance(spec.count, bool) or not isinstance(spec.count, int) or spec.count < 1:
        raise ValueError(f"count={spec.count!r} is not allowed; count must be an integer >= 1")
    if not _finite_number(spec.interval_seconds) or spec.interval_seconds < 0:
        raise ValueError(
            f"interval_seconds={spec.interval_seconds!r} is not allowed; it must be a finite number >= 0"
        )
    for name in ("failure_limit", "inconclusive_limit", "consecutive_error_limit"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} is not allowed; it must be an integer >= 0")
    for side in ("success", "failure"):
        t: Thresholds = getattr(spec, side)
        rate, latency = t.max_error_rate, t.max_latency_ms
        if rate is not None and (not _finite_number(rate) or not 0 <= rate <= 1):
            raise ValueError(
                f"{side}.max_error_rate={rate!r} is not allowed; it is a fraction from 0 to 1 "
                "(0.05 means 5%), or None for no bound"
            )
        if latency is not None and (not _finite_number(latency) or latency < 0):
            raise ValueError(
                f"{side}.max_latency_ms={latency!r} is not allowed; it must be a finite number "
                ">= 0, or None for no bound"
            )
    # A success bound above the failure bound would let one figure be both: reject it.
    # A bound on one side only is fine: a figure the success condition ignores can still
    # fail, and one the failure condition ignores can only be inconclusive.
    for bound, fmt in (("max_error_rate", _pct), ("max_latency_ms", _ms)):
        ok, bad = getattr(spec.success, bound), getattr(spec.failure, bound)
        if ok is not None and bad is not None and ok > bad:
            raise ValueError(
                f"success.{bound}={ok!r} ({fmt(ok)}) is looser than failure.{bound}={bad!r} "
                f"({fmt(bad)}); the success bound must be <= the failure bound"
            )


def _check_times(measurements: Sequence[Measurement]) -> None:
    previous: float | None = None
    for i, m in enumerate(measurements, start=1):
        if not _finite_number(m.at) or m.at < 0:
            raise ValueError(
                f"measurement #{i}: at={m.at!r} is not allowed; `at` is seconds since the "
                "analysis start, a finite number >= 0"
            )
        if previous is not None and m.at < previous:
            raise ValueError(
                f"measurement #{i}: at={m.at!r} is before #{i - 1} at={previous!r}; "
                "measurements must be in the order they were taken"
            )
        previous = m.at


def _finite_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _known(x: float | None) -> TypeGuard[float]:
    return x is not None and math.isfinite(x)


def _num(x: float) -> str:
    """1200.0 -> '1200', 500.4 -> '500.4', 0.125 -> '0.12': two decimals at most."""
    s = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def _pct(fraction: float) -> str:
    """0.08 -> '8.0%', 0.0504 -> '5.04%', 0.001 -> '0.1%': at least one decimal."""
    s = _num(fraction * 100)
    return f"{s}%" if "." in s else f"{s}.0%"


def _ms(ms: float) -> str:
    return f"{_num(ms)} ms"
