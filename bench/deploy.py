"""Benchmark: how fast a bad rolling deploy is detected and undone, and what the
orchestration itself costs.

    .venv/bin/python bench/deploy.py

On the sandbox (our Kubernetes API server, the sample web service):
- a good rolling deploy: overhead = flow wall time minus the time spent waiting on the
  rollout and on the analysis (the parts Kubernetes and the service decide);
- a bad one (8% errors): rollback_seconds = from the first failed measurement to healthy
  again after the automatic undo; its overhead = wall minus rollout, analysis and recovery.

Runs are as shipped: checkpoints and effects persisted to result storage, heartbeats every
30 s. Each round also runs a good deploy bare (no result persisted, no heartbeats), so that
what crash recovery costs is measured in the same run: `checkpoint_cost_seconds`.

A good deploy's wall time is its run's, as the API records it (created to Completed): what
the UI and a CI trigger wait for. `good_call_overhead_seconds` is the local call's, which
also includes Prefect joining its heartbeat thread after the state is final (up to 1 s).

Prints a table, then one JSON line with rollback_seconds and overhead_seconds (the larger
of the two overheads). Targets: overhead_seconds under 1, checkpoint_cost_seconds near 0.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

from _lib.common import bench_sandbox, checkpoints, prefect_api, run_seconds  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def main() -> None:
    good: list[dict[str, Any]] = []
    bare: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    written = 0
    with bench_sandbox("deploy", 8), prefect_api():
        import flows.deploy
        from flows.deploy import deploy

        deploy("sandbox", "api", "sandbox/app:warmup")  # imports, client models, first API calls

        def good_deploy(image: str) -> dict[str, Any]:
            start = time.monotonic()
            state = deploy("sandbox", "api", image, return_state=True)
            call = time.monotonic() - start
            r = state.result()
            wall = run_seconds(state.state_details.flow_run_id)
            waited = r["timings"]["rollout"] + r["timings"]["analysis"]
            return {"wall": wall, "rollout": r["timings"]["rollout"], "analysis": r["timings"]["analysis"],
                    "overhead": wall - waited, "call_overhead": call - waited}

        for i in range(ROUNDS):
            with checkpoints(False, flows.deploy):
                bare.append(good_deploy(f"sandbox/app:v{i + 2}-bare"))
            with checkpoints(True) as counts:
                good.append(good_deploy(f"sandbox/app:v{i + 2}"))
            written += counts["result_files_written"]
            with checkpoints(True):
                start = time.monotonic()
                s = deploy("sandbox", "api", f"sandbox/app:v{i + 2}-err8", return_state=True)
                call = time.monotonic() - start
            assert s.is_failed()
            wall = run_seconds(s.state_details.flow_run_id)
            rep = _failed_deploy_figures()
            waited = rep["timings"]["rollout"] + rep["timings"]["analysis"] + rep["recovery_seconds"]
            bad.append({"wall": wall, "rollout": rep["timings"]["rollout"], "analysis": rep["timings"]["analysis"],
                        "recovery": rep["recovery_seconds"], "overhead": wall - waited, "call_overhead": call - waited})

    print(f"{'run':<32} {'wall s':>7} {'rollout s':>10} {'analysis s':>11} {'recovery s':>11} {'overhead s':>11} "
          f"{'call ovh s':>11}")
    for name, rows in (("good rolling deploy", good), ("good, bare (no checkpoints)", bare),
                       ("bad deploy (8% errors)", bad)):
        for i, r in enumerate(rows):
            print(f"{name + f' #{i + 1}':<32} {r['wall']:>7.2f} {r['rollout']:>10.2f} {r['analysis']:>11.2f} "
                  f"{r.get('recovery', 0.0):>11.2f} {r['overhead']:>11.2f} {r.get('call_overhead', 0.0):>11.2f}")
    figures = {
        "rounds": ROUNDS,
        "rollback_seconds": round(statistics.median(r["recovery"] for r in bad), 2),
        "good_overhead_seconds": round(statistics.median(r["overhead"] for r in good), 2),
        "bad_overhead_seconds": round(statistics.median(r["overhead"] for r in bad), 2),
        "good_overhead_bare_seconds": round(statistics.median(r["overhead"] for r in bare), 2),
        "good_call_overhead_seconds": round(statistics.median(r["call_overhead"] for r in good), 2),
        "good_call_overhead_bare_seconds": round(statistics.median(r["call_overhead"] for r in bare), 2),
        "result_files_per_good_deploy": round(written / ROUNDS, 1),
    }
    figures["checkpoint_cost_seconds"] = round(figures["good_overhead_seconds"]
                                               - figures["good_overhead_bare_seconds"], 2)
    figures["overhead_seconds"] = max(figures["good_overhead_seconds"], figures["bad_overhead_seconds"])
    print(json.dumps(figures))


_seen: set[str] = set()


def _failed_deploy_figures() -> dict[str, Any]:
    """The failed run's figures, from the runbook.deploy.failed event it emitted."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        resp = httpx.post(f"{PREFECT_API_URL.value()}/events/filter",
                          json={"filter": {"event": {"name": ["runbook.deploy.failed"]}}, "limit": 5})
        for event in resp.json().get("events", []):
            if event["id"] not in _seen and event["payload"].get("recovery_seconds") is not None:
                _seen.add(event["id"])
                return event["payload"]
        time.sleep(0.3)
    raise RuntimeError("no runbook.deploy.failed event with recovery figures")


if __name__ == "__main__":
    main()
