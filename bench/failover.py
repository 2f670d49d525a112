"""Benchmark: DR failover and planned switchover on the sandbox's replicated pair, ours against
the raw tools, same pair, same run.

    .venv/bin/python bench/failover.py          # BENCH_ROUNDS (3) of each, alternating

- **Unplanned:** `kill -9` of the primary's processes, then
  - ours: `dr_failover(planned=False)`: assess, fence, promote, repoint the `orders` app
    (ConfigMap + restart), Route53 UPSERT + INSYNC, scale the DR site, validate; RTO is
    the flow's own (decision to the app answering healthy through the new primary);
  - raw: `psql -c "SELECT pg_promote()"`, `kubectl patch configmap`, `kubectl rollout
    restart` and `kubectl rollout status`, then the app's health URL polled until 200, timed
    from the promote.
- **Planned, under load:** a writer inserts numbered rows into pg-a (one per commit) all along;
  - ours: `dr_failover(planned=True)`; rows lost = rows whose COMMIT returned but that the
    new primary does not have;
  - raw: what an operator types: `ALTER SYSTEM SET default_transaction_read_only`, reload,
    `pg_terminate_backend`, `pg_ctl stop -m fast`, then promote and repoint as above (no wait
    for the final LSN: the operator's usual shortcut), timed from the ALTER SYSTEM.

Each round starts from the original topology (`sandbox.replication.reset`). Prints a table,
then one JSON line: rto_unplanned_seconds, rto_planned_seconds (best of the rounds, ours),
rows_lost_planned (the worst round, ours), and the raw figures beside them. Targets: planned
RTO under 10 s, rows_lost_planned 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from typing import Any

from _lib.common import bench_sandbox, prefect_api

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


class Writer:
    """Numbered rows into `orders` on one node, a row counted once its COMMIT returned."""

    def __init__(self, dsn: str, first_id: int) -> None:
        self.dsn, self.next_id = dsn, first_id
        self.committed: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        while not self.stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=2) as conn:
                    while not self.stop.is_set():
                        conn.execute("INSERT INTO orders (id, note) VALUES (%s, 'bench')", (self.next_id,))
                        self.committed.append(self.next_id)
                        self.next_id += 1
            except psycopg.Error:
                time.sleep(0.05)

    def __enter__(self) -> Writer:
        self.thread.start()
        time.sleep(1.0)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def lost_on(self, dsn: str) -> int:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            present = {r[0] for r in conn.execute("SELECT id FROM orders WHERE note = 'bench'")}
        return len(set(self.committed) - present)


def put_back(state: Any) -> None:
    from sandbox import replication
    from tasks import kubernetes
    from tasks.config import load_environment

    replication.reset(state)
    env = load_environment("sandbox")
    cfg = env.dr_pair()
    node, rp = cfg.node("pg-a"), cfg.repoint
    with kubernetes.api_client(env.kubernetes) as api:
        if kubernetes.set_config_values(api, rp.namespace, rp.kind, rp.name,
                                        {rp.host_key: node.host, rp.port_key: str(node.port)}):
            kubernetes.restart(api, "sandbox", "orders", {"runbook-flows/database": "reset"})
            kubernetes.wait_for_rollout(api, "sandbox", "orders", 60)
        for name in cfg.dr_site.deployments:
            kubernetes.scale(api, cfg.dr_site.namespace, name, 0)


def kubectl(state: Any, *args: str) -> None:
    import sys
    from pathlib import Path

    binary = Path(sys.executable).parent / "kubectl"
    for attempt in (1, 2):
        done = subprocess.run([str(binary), f"--kubeconfig={state.kubeconfig}", "-n", "sandbox", *args],
                              capture_output=True, text=True)
        # kubectl refuses a second `rollout restart` within the same second (its annotation has
        # second precision): what an operator typing it would do is try again.
        if done.returncode == 0 or attempt == 2 or "already been triggered" not in done.stderr:
            break
        time.sleep(1.1)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")


def psql(dsn: str, sql: str) -> None:
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql], check=True,
                   capture_output=True, text=True)


def raw_promote_and_repoint(state: Any) -> None:
    import httpx

    from sandbox import replication
    from tasks.config import load_environment

    b = state.ha_nodes["pg-b"]
    psql(replication.node_dsn(state, "pg-b"), "SELECT pg_promote()")
    kubectl(state, "patch", "configmap", "orders-database", "--type=merge",
            "-p", json.dumps({"data": {"PGHOST": "127.0.0.1", "PGPORT": str(b["port"])}}))
    kubectl(state, "rollout", "restart", "deployment/orders")
    kubectl(state, "rollout", "status", "deployment/orders", "--timeout=60s")
    url = load_environment("sandbox").service("orders").health_urls[0]
    deadline = time.monotonic() + 60
    while httpx.get(url, timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("raw: orders never became healthy")
        time.sleep(0.05)


def raw_unplanned(state: Any) -> float:
    from sandbox import replication

    replication.kill_node(state, "pg-a")
    start = time.monotonic()
    raw_promote_and_repoint(state)
    return time.monotonic() - start


def ours_unplanned(state: Any) -> float:
    from flows.dr_failover import dr_failover
    from sandbox import replication

    replication.kill_node(state, "pg-a")
    return float(dr_failover("sandbox", reason="bench: pg-a killed")["rto_seconds"])


def raw_planned(state: Any, first_id: int) -> tuple[float, int]:
    from sandbox import replication

    a = replication.node_dsn(state, "pg-a")
    with Writer(replication.app_dsn(state, "pg-a"), first_id) as writer:
        start = time.monotonic()
        psql(a, "ALTER SYSTEM SET default_transaction_read_only = on")
        psql(a, "SELECT pg_reload_conf()")
        psql(a, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid()")
        replication.stop_node(state, "pg-a", "fast")
        raw_promote_and_repoint(state)
        seconds = time.monotonic() - start
    return seconds, writer.lost_on(replication.app_dsn(state, "pg-b"))


def ours_planned(state: Any, first_id: int) -> tuple[float, int]:
    from flows.dr_failover import dr_failover
    from sandbox import replication

    with Writer(replication.app_dsn(state, "pg-a"), first_id) as writer:
        out = dr_failover("sandbox", reason="bench: planned switchover", planned=True)
    return float(out["rto_seconds"]), writer.lost_on(replication.app_dsn(state, "pg-b"))


def main() -> None:
    from sandbox import webhook
    from sandbox.state import ENV_WEBHOOK_URL

    figures: dict[str, list[Any]] = {k: [] for k in ("ours_unplanned", "raw_unplanned", "ours_planned",
                                                      "raw_planned", "ours_lost", "raw_lost")}
    with bench_sandbox("failover", 8) as (state, _), prefect_api():
        hook = webhook.start_detached(state.workdir / "bench-webhook")
        os.environ[ENV_WEBHOOK_URL] = hook.url
        try:
            for r in range(ROUNDS):
                order = ("ours", "raw") if r % 2 == 0 else ("raw", "ours")
                for who in order:
                    put_back(state)
                    if who == "ours":
                        figures["ours_unplanned"].append(ours_unplanned(state))
                    else:
                        figures["raw_unplanned"].append(raw_unplanned(state))
                for who in order:
                    put_back(state)
                    first = 1_000_000 * (len(figures["ours_planned"]) + len(figures["raw_planned"]) + 1)
                    seconds, lost = (ours_planned if who == "ours" else raw_planned)(state, first)
                    figures[f"{who}_planned"].append(seconds)
                    figures[f"{who}_lost"].append(lost)
            put_back(state)
        finally:
            webhook.stop_detached(state.workdir / "bench-webhook")

    print(f"{'figure':<44} {'ours':>10} {'raw tools':>10}")
    print(f"{'unplanned RTO, best of ' + str(ROUNDS) + ' (s)':<44} {min(figures['ours_unplanned']):>10.2f} "
          f"{min(figures['raw_unplanned']):>10.2f}")
    print(f"{'planned switchover RTO, best (s)':<44} {min(figures['ours_planned']):>10.2f} "
          f"{min(figures['raw_planned']):>10.2f}")
    print(f"{'rows lost under load, worst round':<44} {max(figures['ours_lost']):>10} {max(figures['raw_lost']):>10}")
    print(f"{'every round (s): ours unplanned':<44} {', '.join(f'{x:.2f}' for x in figures['ours_unplanned'])}")
    print(f"{'every round (s): ours planned':<44} {', '.join(f'{x:.2f}' for x in figures['ours_planned'])}")
    print(json.dumps({
        "rto_unplanned_seconds": round(min(figures["ours_unplanned"]), 3),
        "rto_planned_seconds": round(min(figures["ours_planned"]), 3),
        "rows_lost_planned": max(figures["ours_lost"]),
        "raw_rto_unplanned_seconds": round(min(figures["raw_unplanned"]), 3),
        "raw_rto_planned_seconds": round(min(figures["raw_planned"]), 3),
        "raw_rows_lost_planned": max(figures["raw_lost"]),
        "rounds": ROUNDS,
    }))


if __name__ == "__main__":
    main()
