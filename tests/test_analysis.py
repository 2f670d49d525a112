"""Analysis gate decisions: what each measurement means and when the run is decided."""

from __future__ import annotations

import dataclasses
import random

import pytest

from tasks.analysis import (
    AnalysisSpec,
    Measurement,
    Thresholds,
    _phase_for,
    judge_measurement,
    judge_run,
    next_due,
)

NAN = float("nan")

# The seed runbook: "normal" is the success condition, the rollback matrix the failure one.
SUCCESS = Thresholds(max_error_rate=0.01, max_latency_ms=500)
FAILURE = Thresholds(max_error_rate=0.05, max_latency_ms=1000)
SPEC = AnalysisSpec(interval_seconds=30, count=5, success=SUCCESS, failure=FAILURE)


def spec(**changes) -> AnalysisSpec:
    return dataclasses.replace(SPEC, **changes)


def m(
    at: float = 0,
    healthy: bool | None = True,
    rate: float | None = 0.001,
    latency: float | None = 120,
    error: str | None = None,
) -> Measurement:
    """A measurement of a good service unless told otherwise."""
    return Measurement(at=at, healthy=healthy, error_rate=rate, latency_ms=latency, error=error)


def err(at: float = 0, message: str = "connection refused") -> Measurement:
    return m(at, healthy=None, rate=None, latency=None, error=message)


KINDS = {
    "ok": lambda at: m(at),
    "fail": lambda at: m(at, rate=0.08),  # the runbook's rollback trigger
    "band": lambda at: m(at, rate=0.02),  # between success 1% and failure 5%
    "slow": lambda at: m(at, latency=1500),
    "down": lambda at: m(at, healthy=False),
    "err": lambda at: err(at),
}


def series(*kinds: str, interval: float = 30) -> list[Measurement]:
    """Measurements of these kinds (see KINDS), one interval apart from 0."""
    return [KINDS[k](i * interval) for i, k in enumerate(kinds)]


# --- one measurement -------------------------------------------------------------------

MEASUREMENTS = [
    # The normal case: every bound is named with its figure, so the artifact shows why.
    pytest.param(
        m(), SPEC, "Successful", "healthy; error rate 0.1% <= 1.0%; latency p95 120 ms <= 500 ms", id="good"
    ),
    # The runbook's rollback trigger: above 5% errors fails at once.
    pytest.param(m(rate=0.08), SPEC, "Failed", "error rate 8.0% > 5.0%", id="error-rate-8pct"),
    # "> 5%" in the runbook: exactly 5% does not fail, it is only not good enough.
    pytest.param(
        m(rate=0.05),
        SPEC,
        "Inconclusive",
        "error rate 5.0% > success bound 1.0%",
        id="error-rate-at-failure-bound",
    ),
    # A bound is a maximum: a figure equal to the success bound meets it.
    pytest.param(
        m(rate=0.01, latency=500),
        SPEC,
        "Successful",
        "healthy; error rate 1.0% <= 1.0%; latency p95 500 ms <= 500 ms",
        id="at-success-bounds",
    ),
    # Between the bounds neither condition holds: that is what Inconclusive means.
    pytest.param(
        m(rate=0.02), SPEC, "Inconclusive", "error rate 2.0% > success bound 1.0%", id="inconclusive-band"
    ),
    # The performance-degradation row: slow but under the failure bound is not yet a rollback...
    pytest.param(
        m(latency=700), SPEC, "Inconclusive", "latency p95 700 ms > success bound 500 ms", id="latency-band"
    ),
    # ...and above it is.
    pytest.param(m(latency=1500), SPEC, "Failed", "latency p95 1500 ms > 1000 ms", id="slow"),
    # Figures are shown as measured, not rounded onto the bound they broke.
    pytest.param(m(latency=1000.4), SPEC, "Failed", "latency p95 1000.4 ms > 1000 ms", id="just-slow"),
    # The health URL not answering 2xx fails even when the metrics look fine.
    pytest.param(
        m(healthy=False), SPEC, "Failed", "unhealthy: health URL did not answer 2xx", id="unhealthy"
    ),
    # Every broken bound is reported, not only the first: the operator sees the whole picture.
    pytest.param(
        m(healthy=False, rate=0.5, latency=2500),
        SPEC,
        "Failed",
        "unhealthy: health URL did not answer 2xx; error rate 50.0% > 5.0%; latency p95 2500 ms > 1000 ms",
        id="everything-broken",
    ),
    # A measurement that failed is an Error whatever figures it carries: they are not trusted.
    pytest.param(
        m(healthy=False, rate=0.9, error="metrics payload is not JSON"),
        SPEC,
        "Error",
        "measurement error: metrics payload is not JSON",
        id="error-beats-figures",
    ),
    pytest.param(err(message=""), SPEC, "Error", "measurement error: no message", id="error-without-message"),
    # Missing figures must never pass the gate.
    pytest.param(m(healthy=None), SPEC, "Inconclusive", "health not measured", id="health-not-measured"),
    # No traffic makes the error rate 0/0 = NaN: that is no data, not a good rate.
    pytest.param(m(rate=NAN), SPEC, "Inconclusive", "error rate not measured", id="error-rate-nan"),
    pytest.param(
        m(rate=None, latency=None),
        SPEC,
        "Inconclusive",
        "error rate not measured; latency not measured",
        id="metrics-not-measured",
    ),
    # One measured figure is enough to fail, even when the others are missing.
    pytest.param(
        m(rate=None, latency=1500), SPEC, "Failed", "latency p95 1500 ms > 1000 ms", id="fail-on-partial"
    ),
    # Without a failure health bound, an unhealthy answer cannot fail, but it cannot pass either.
    pytest.param(
        m(healthy=False),
        spec(failure=Thresholds(max_error_rate=0.05, require_healthy=False)),
        "Inconclusive",
        "unhealthy: health URL did not answer 2xx",
        id="unhealthy-without-failure-health-bound",
    ),
    # A figure that no bound names is not looked at: a health-only gate needs no metrics.
    pytest.param(
        m(rate=None, latency=None),
        spec(success=Thresholds(), failure=Thresholds()),
        "Successful",
        "healthy",
        id="health-only-gate",
    ),
    pytest.param(
        m(healthy=None, rate=None, latency=None),
        spec(success=Thresholds(require_healthy=False), failure=Thresholds(require_healthy=False)),
        "Successful",
        "success condition sets no bounds",
        id="no-bounds-at-all",
    ),
]


@pytest.mark.parametrize(("measurement", "analysis", "verdict", "why"), MEASUREMENTS)
def test_judge_measurement(measurement, analysis, verdict, why):
    assert judge_measurement(measurement, analysis) == (verdict, why)


# --- the run ---------------------------------------------------------------------------
# Each row: measurements, spec, phase, (successful, failed, inconclusive, errors,
# consecutive errors), measurements judged, the decision (first reason).

RUNS = [
    # A good service passes once `count` measurements are in.
    pytest.param(
        series(*["ok"] * 5), SPEC, "Successful", (5, 0, 0, 0, 0), 5, "count (5) reached", id="good-service"
    ),
    # Not enough measurements yet: the flow keeps measuring.
    pytest.param(
        series("ok", "ok", "ok"),
        SPEC,
        "Running",
        (3, 0, 0, 0, 0),
        3,
        "3 of 5 measurements counted: 3 successful, 0 failed, 0 inconclusive; 0 errors",
        id="running",
    ),
    pytest.param([], SPEC, "Running", (0, 0, 0, 0, 0), 0, "0 of 5", id="nothing-measured-yet"),
    # failure_limit 0: the first 8% measurement rolls back; no waiting for `count`.
    pytest.param(
        series("fail"),
        SPEC,
        "Failed",
        (0, 1, 0, 0, 0),
        1,
        "failed (1) > failure_limit (0)",
        id="8pct-fails-first",
    ),
    # failure_limit 1 tolerates one failed measurement and fails on the second.
    pytest.param(
        series("fail", "fail"),
        spec(failure_limit=1),
        "Failed",
        (0, 2, 0, 0, 0),
        2,
        "failed (2) > failure_limit (1)",
        id="8pct-fails-second-with-limit-1",
    ),
    # ...and a single failed measurement within the limit still lets the run succeed.
    pytest.param(
        series("fail", "ok", "ok", "ok", "ok"),
        spec(failure_limit=1),
        "Successful",
        (4, 1, 0, 0, 0),
        5,
        "count (5) reached",
        id="one-failure-within-limit",
    ),
    # The band between 1% and 5%: not a rollback, not a pass; the gate stops and says so.
    pytest.param(
        series("ok", "band"),
        SPEC,
        "Inconclusive",
        (1, 0, 1, 0, 0),
        2,
        "inconclusive (1) > inconclusive_limit (0)",
        id="inconclusive-band",
    ),
    pytest.param(
        series("band", "ok", "ok", "ok", "ok"),
        spec(inconclusive_limit=1),
        "Successful",
        (4, 0, 1, 0, 0),
        5,
        "count (5) reached",
        id="inconclusive-within-limit",
    ),
    pytest.param(series("ok", "slow"), SPEC, "Failed", (1, 1, 0, 0, 0), 2, "failed (1)", id="slow-latency"),
    pytest.param(series("down"), SPEC, "Failed", (0, 1, 0, 0, 0), 1, "failed (1)", id="unhealthy"),
    # Four errors in a row are tolerated (Argo's default limit), the fifth ends the run.
    pytest.param(series(*["err"] * 4), SPEC, "Running", (0, 0, 0, 4, 4), 4, "0 of 5", id="errors-at-limit"),
    pytest.param(
        series(*["err"] * 5),
        SPEC,
        "Error",
        (0, 0, 0, 5, 5),
        5,
        "consecutive errors (5) > consecutive_error_limit (4)",
        id="errors-over-limit",
    ),
    pytest.param(
        series("err"),
        spec(consecutive_error_limit=0),
        "Error",
        (0, 0, 0, 1, 1),
        1,
        "consecutive",
        id="error-limit-0",
    ),
    # A good measurement ends the streak: eight errors, never five in a row, is not an Error.
    # Errors do not count towards `count` (as in Argo), so 5 good ones take 13 measurements.
    pytest.param(
        series(*["err"] * 4, "ok", *["err"] * 4, "ok", "ok", "ok", "ok"),
        SPEC,
        "Successful",
        (5, 0, 0, 8, 0),
        13,
        "count (5) reached",
        id="error-streak-broken-by-success",
    ),
    pytest.param(
        series("ok", "err", "ok"),
        spec(count=2),
        "Successful",
        (2, 0, 0, 1, 0),
        3,
        "count (2) reached",
        id="errors-do-not-count-towards-count",
    ),
    pytest.param(
        series("ok", "err"),
        spec(count=2),
        "Running",
        (1, 0, 0, 1, 1),
        2,
        "1 of 2",
        id="error-last-still-running",
    ),
    # A failed measurement also ends an error streak, and fails the run on its own.
    pytest.param(
        series("err", "err", "fail"), SPEC, "Failed", (0, 1, 0, 2, 0), 3, "failed (1)", id="error-then-fail"
    ),
    # The measurement that completes `count` also trips a limit: the limit wins.
    pytest.param(
        series("ok", "ok", "fail"),
        spec(count=3),
        "Failed",
        (2, 1, 0, 0, 0),
        3,
        "failed (1)",
        id="fail-beats-count",
    ),
    pytest.param(
        series("ok", "ok", "band"),
        spec(count=3),
        "Inconclusive",
        (2, 0, 1, 0, 0),
        3,
        "inconclusive (1)",
        id="inconclusive-beats-count",
    ),
    # The run is decided by the first limit that trips; a measurement taken after that
    # (the flow should have stopped) is not judged and cannot change the verdict.
    pytest.param(
        series("band", "fail"),
        SPEC,
        "Inconclusive",
        (0, 0, 1, 0, 0),
        1,
        "inconclusive (1)",
        id="decided-run-ignores-rest",
    ),
    pytest.param(
        series("ok", "ok", "ok", "ok", "ok", "fail"),
        SPEC,
        "Successful",
        (5, 0, 0, 0, 0),
        5,
        "count (5) reached",
        id="success-not-undone-by-late-failure",
    ),
]


@pytest.mark.parametrize(("measurements", "analysis", "phase", "counts", "judged", "decision"), RUNS)
def test_judge_run(measurements, analysis, phase, counts, judged, decision):
    result = judge_run(measurements, analysis)
    assert result.phase == phase
    assert (
        result.successful,
        result.failed,
        result.inconclusive,
        result.errors,
        result.consecutive_errors,
    ) == counts
    assert result.counted == sum(counts[:3])  # errors are not counted towards `count`
    assert result.judged == judged
    assert result.reasons[0].startswith(decision)


def test_failed_run_reasons_name_the_limit_every_failed_measurement_and_the_tally():
    result = judge_run(series("fail", "ok", "slow"), spec(failure_limit=1))
    assert result.reasons == (
        "failed (2) > failure_limit (1)",
        "#1 at 0s: error rate 8.0% > 5.0%",
        "#3 at 60s: latency p95 1500 ms > 1000 ms",
        "3 of 5 measurements counted: 1 successful, 2 failed, 0 inconclusive; 0 errors",
    )


def test_error_run_reasons_list_the_streak_only():
    result = judge_run(series("err", "ok", "err", "err"), spec(consecutive_error_limit=1))
    assert result.reasons == (
        "consecutive errors (2) > consecutive_error_limit (1)",
        "#3 at 60s: measurement error: connection refused",
        "#4 at 90s: measurement error: connection refused",
        "1 of 5 measurements counted: 1 successful, 0 failed, 0 inconclusive; 3 errors",
    )


def test_successful_run_reasons_still_show_what_the_limits_let_through():
    result = judge_run(series("band", "ok", "fail", "ok", "ok"), spec(failure_limit=1, inconclusive_limit=1))
    assert result.phase == "Successful"
    assert result.reasons == (
        "count (5) reached",
        "#3 at 60s: error rate 8.0% > 5.0%",
        "#1 at 0s: error rate 2.0% > success bound 1.0%",
        "5 of 5 measurements counted: 3 successful, 1 failed, 1 inconclusive; 0 errors",
    )


@pytest.mark.parametrize(
    ("kinds", "first_failure_at"),
    [
        # Time to recovery is measured from the first failure, not from the one that
        # tripped the limit: here 30 s, not 120 s.
        pytest.param(("ok", "fail", "ok", "fail", "fail"), 30, id="first-of-three"),
        pytest.param(("ok", "band", "ok"), None, id="inconclusive-is-not-a-failure"),
        pytest.param(("err", "slow"), 30, id="after-an-error"),
        pytest.param((), None, id="nothing-measured"),
    ],
)
def test_first_failure_at(kinds, first_failure_at):
    assert (
        judge_run(series(*kinds), spec(failure_limit=2, inconclusive_limit=3)).first_failure_at
        == first_failure_at
    )


@pytest.mark.parametrize(
    ("counters", "expected"),
    [
        # judge_run moves one counter per measurement, so only one limit can newly trip at a
        # time; the order still holds if several are over at once.
        pytest.param((1, 1, 5, 5), "Failed", id="all-tripped-failed-wins"),
        pytest.param((0, 1, 5, 5), "Error", id="error-beats-inconclusive"),
        pytest.param((0, 1, 0, 5), "Inconclusive", id="inconclusive-beats-count"),
        pytest.param((0, 0, 4, 5), "Successful", id="count-reached-within-limits"),
        pytest.param((0, 0, 4, 4), None, id="nothing-decided"),
    ],
)
def test_priority_when_several_trip(counters, expected):
    failed, inconclusive, consecutive_errors, counted = counters
    decided = _phase_for(
        failed=failed,
        inconclusive=inconclusive,
        consecutive_errors=consecutive_errors,
        counted=counted,
        spec=SPEC,
    )
    assert (decided[0] if decided else None) == expected


# --- next_due --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("measurements", "analysis", "due"),
    [
        pytest.param([], SPEC, 0.0, id="first-at-start"),
        pytest.param(series("ok"), SPEC, 30, id="one-interval-after-the-last"),
        # From when the last one was taken, not from a fixed grid: a slow measurement
        # pushes the next one back instead of bunching them up.
        pytest.param([m(0), m(31.5)], SPEC, 61.5, id="from-the-actual-last"),
        pytest.param(series("ok", "err"), SPEC, 60, id="after-an-error"),
        pytest.param(series("ok"), spec(interval_seconds=0), 0, id="interval-0"),
        pytest.param(series("fail"), SPEC, None, id="failed-stops"),
        pytest.param(series(*["err"] * 5), SPEC, None, id="error-stops"),
        pytest.param(series("band"), SPEC, None, id="inconclusive-stops"),
        pytest.param(series(*["ok"] * 5), SPEC, None, id="successful-stops"),
        # An error is not counted, so a sixth measurement is due after four good ones and an error.
        pytest.param(series("ok", "ok", "ok", "ok", "err"), SPEC, 150, id="error-needs-one-more"),
    ],
)
def test_next_due(measurements, analysis, due):
    assert next_due(measurements, analysis) == due


@pytest.mark.parametrize("seed", range(40))
def test_a_flow_looping_on_next_due_always_stops_and_never_changes_its_verdict(seed):
    rng = random.Random(seed)
    analysis = spec(
        count=rng.randint(1, 6),
        failure_limit=rng.randint(0, 2),
        inconclusive_limit=rng.randint(0, 2),
        consecutive_error_limit=rng.randint(0, 4),
    )
    kinds = rng.choices(["ok", "fail", "band", "slow", "down", "err"], weights=[12, 1, 1, 1, 1, 4], k=200)
    taken: list[Measurement] = []
    while (due := next_due(taken, analysis)) is not None:
        taken.append(KINDS[kinds[len(taken)]](due))
    result = judge_run(taken, analysis)
    assert result.phase != "Running"
    assert result.judged == len(taken)
    # Errors are retried, but never more than the limit in a row: the loop is bounded.
    assert (
        len(taken)
        <= analysis.count * (analysis.consecutive_error_limit + 1) + analysis.consecutive_error_limit + 1
    )
    # Every prefix before the last was Running, and measurements taken late change nothing.
    assert all(judge_run(taken[:k], analysis).phase == "Running" for k in range(len(taken)))
    assert judge_run([*taken, m(taken[-1].at + 1, rate=0.9)], analysis) == result


# --- rows ------------------------------------------------------------------------------


def test_rows_show_each_measurement_with_its_figures_verdict_and_why():
    measurements = [
        m(0, rate=0.0012, latency=118.04),
        err(30, "GET /metrics: 503"),
        m(60, healthy=None, rate=NAN, latency=None),
        m(90, rate=0.08),
        m(120),
    ]
    result = judge_run(measurements, spec(inconclusive_limit=1))
    assert result.phase == "Failed"
    assert result.rows(measurements, spec(inconclusive_limit=1)) == [
        {
            "#": 1,
            "at": 0,
            "healthy": "yes",
            "error_rate (%)": 0.12,
            "latency_ms": 118.0,
            "verdict": "Successful",
            "why": "healthy; error rate 0.12% <= 1.0%; latency p95 118.04 ms <= 500 ms",
        },
        {
            "#": 2,
            "at": 30,
            "healthy": "",
            "error_rate (%)": "",
            "latency_ms": "",
            "verdict": "Error",
            "why": "measurement error: GET /metrics: 503",
        },
        {
            "#": 3,
            "at": 60,
            "healthy": "",
            "error_rate (%)": "",
            "latency_ms": "",
            "verdict": "Inconclusive",
            "why": "health not measured; error rate not measured; latency not measured",
        },
        {
            "#": 4,
            "at": 90,
            "healthy": "yes",
            "error_rate (%)": 8.0,
            "latency_ms": 120,
            "verdict": "Failed",
            "why": "error rate 8.0% > 5.0%",
        },
        {
            "#": 5,
            "at": 120,
            "healthy": "yes",
            "error_rate (%)": 0.1,
            "latency_ms": 120,
            "verdict": "Successful",
            "why": "not judged, the run was decided at #4: healthy; error rate 0.1% <= 1.0%; latency p95 120 ms <= 500 ms",
        },
    ]


# --- validation ------------------------------------------------------------------------

SPEC_ERRORS = [
    pytest.param({"count": 0}, r"count=0 is not allowed; count must be an integer >= 1", id="count-0"),
    # A float count would make "count reached" depend on rounding.
    pytest.param({"count": 2.5}, r"count=2\.5 .*integer >= 1", id="count-float"),
    pytest.param({"count": True}, r"count=True .*integer >= 1", id="count-bool"),
    pytest.param(
        {"interval_seconds": -1}, r"interval_seconds=-1 .*finite number >= 0", id="interval-negative"
    ),
    pytest.param({"interval_seconds": NAN}, r"interval_seconds=nan .*finite number >= 0", id="interval-nan"),
    pytest.param({"failure_limit": -1}, r"failure_limit=-1 .*integer >= 0", id="failure-limit"),
    pytest.param(
        {"inconclusive_limit": -1}, r"inconclusive_limit=-1 .*integer >= 0", id="inconclusive-limit"
    ),
    pytest.param(
        {"consecutive_error_limit": -1},
        r"consecutive_error_limit=-1 .*integer >= 0",
        id="consecutive-error-limit",
    ),
    # The classic typo: 5 meant as 5%, which as a fraction would let everything through.
    pytest.param(
        {"failure": Thresholds(max_error_rate=5)},
        r"failure\.max_error_rate=5 .*fraction from 0 to 1 \(0\.05 means 5%\)",
        id="error-rate-as-percent",
    ),
    pytest.param(
        {"success": Thresholds(max_error_rate=-0.01)},
        r"success\.max_error_rate=-0\.01 .*fraction",
        id="rate-negative",
    ),
    pytest.param(
        {"failure": Thresholds(max_latency_ms=-1)},
        r"failure\.max_latency_ms=-1 .*finite number >= 0",
        id="latency",
    ),
    pytest.param(
        {"success": Thresholds(max_latency_ms=float("inf"))}, r"success\.max_latency_ms=inf", id="latency-inf"
    ),
    # A success bound looser than the failure bound would make one figure both good and bad.
    pytest.param(
        {"success": Thresholds(max_error_rate=0.1)},
        r"success\.max_error_rate=0\.1 \(10\.0%\) is looser than failure\.max_error_rate=0\.05 \(5\.0%\); "
        r"the success bound must be <= the failure bound",
        id="success-rate-looser",
    ),
    pytest.param(
        {"success": Thresholds(max_latency_ms=2000)},
        r"success\.max_latency_ms=2000 \(2000 ms\) is looser than failure\.max_latency_ms=1000 \(1000 ms\)",
        id="success-latency-looser",
    ),
]


@pytest.mark.parametrize(("changes", "match"), SPEC_ERRORS)
def test_spec_is_validated_with_the_field_the_value_and_what_is_allowed(changes, match):
    with pytest.raises(ValueError, match=match):
        spec(**changes)


@pytest.mark.parametrize(
    ("success", "failure"),
    [
        # Equal bounds leave no inconclusive band: good up to 5%, failed above.
        pytest.param(Thresholds(max_error_rate=0.05), Thresholds(max_error_rate=0.05), id="equal-bounds"),
        # A bound on one side only: latency can fail the run without being part of "good".
        pytest.param(Thresholds(max_error_rate=0.01), FAILURE, id="failure-only-latency"),
        pytest.param(SUCCESS, Thresholds(require_healthy=False), id="success-only"),
    ],
)
def test_spec_accepts_sane_thresholds(success, failure):
    assert spec(success=success, failure=failure).success == success


@pytest.mark.parametrize(
    ("measurements", "match"),
    [
        # Out-of-order measurements would attribute a failure to the wrong time.
        pytest.param([m(30), m(0)], r"measurement #2: at=0 is before #1 at=30", id="goes-back"),
        pytest.param([m(-1)], r"measurement #1: at=-1 .*finite number >= 0", id="negative"),
        pytest.param([m(NAN)], r"measurement #1: at=nan", id="nan"),
    ],
)
def test_measurement_times_are_validated(measurements, match):
    with pytest.raises(ValueError, match=match):
        judge_run(measurements, SPEC)
    with pytest.raises(ValueError, match=match):
        next_due(measurements, SPEC)
