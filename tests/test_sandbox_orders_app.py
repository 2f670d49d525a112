"""`orders`: a sample service whose health is the health of the database it points at.

Its pods take PGHOST and PGPORT from ConfigMap `orders-database` and the credentials from
Secret `orders-credentials` when they start (the fake kubelet resolves the environment
once, like a real one), so a DR failover must repoint the ConfigMap and restart the
Deployment. /health logs in to each database the routed pods point at and is 503 unless
every one answers and takes writes.

The integration tests run on the session's sandbox, each in its own namespaces (seeded
by `cluster.seed_orders`), against the sandbox's PostgreSQL, a closed port and a
throwaway standby. The pure pieces (environment resolution, the database verdict) have
tables of their own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from kubernetes import client, config

from sandbox import cluster, postgres
from sandbox.kube import podenv
from sandbox.kube.podenv import ENV_ANNOTATION, ENV_SECRETS_ANNOTATION, ContainerEnv, SecretRef
from sandbox.process import free_port, postgres_account, wait_until
from sandbox.webapp.database import (
    DatabaseCheck,
    DatabaseChecker,
    DatabaseTarget,
    database_targets,
    database_verdict,
)
from tasks import kubernetes as k8s
from tasks.config import ServiceConfig

TIMEOUT = 20


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_client(sandbox: Any) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(sandbox.kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="module")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="module")
def apps(api_client: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api_client)


Seed = Callable[..., str]


@pytest.fixture
def seed(sandbox: Any, core: client.CoreV1Api) -> Iterator[Seed]:
    """`seed(port=..., password=...)` seeds orders in fresh namespaces NS and NS-dr, pointed at
    the sandbox's PostgreSQL unless told otherwise; returns NS. The namespaces go afterwards."""
    made: list[str] = []

    def make(**overrides: Any) -> str:
        ns = f"orders-{uuid.uuid4().hex[:6]}"
        made.extend([ns, f"{ns}-dr"])
        args = {"host": sandbox.pg_host, "port": sandbox.pg_port, "user": sandbox.pg_user,
                "password": sandbox.pg_password, "dbname": "postgres", **overrides}
        cluster.seed_orders(sandbox.kubeconfig, namespace=ns, dr_namespace=f"{ns}-dr", **args)
        return ns

    yield make
    for ns in made:
        with contextlib.suppress(client.exceptions.ApiException):
            core.delete_namespace(ns)


def _pods(core: client.CoreV1Api, ns: str) -> list[Any]:
    return core.list_namespaced_pod(ns, label_selector="app=orders").items


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _env(pod: Any) -> dict[str, dict[str, str]]:
    return json.loads((pod.metadata.annotations or {})[ENV_ANNOTATION])


def _rolled_out(apps: client.AppsV1Api, ns: str) -> bool:
    d = apps.read_namespaced_deployment("orders", ns)
    s = d.status
    return bool(d.metadata.generation <= (s.observed_generation or 0) and s.updated_replicas == d.spec.replicas
                and (s.available_replicas or 0) == d.spec.replicas and (s.replicas or 0) == d.spec.replicas)


def _wait_rolled_out(apps: client.AppsV1Api, ns: str) -> None:
    assert wait_until(lambda: _rolled_out(apps, ns), TIMEOUT), f"orders in {ns} did not roll out"


def _repoint(core: client.CoreV1Api, ns: str, port: int, host: str = "127.0.0.1") -> None:
    core.patch_namespaced_config_map("orders-database", ns, {"data": {"PGHOST": host, "PGPORT": str(port)}})


def _health(sandbox: Any, ns: str) -> httpx.Response:
    return httpx.get(f"{sandbox.webapp_url}/svc/{ns}/orders/health", timeout=10)


# --- the kubelet: environment at pod start --------------------------------------------------


def test_pods_keep_the_configmap_values_they_started_with_until_a_restart(sandbox, seed, core, apps, api_client):
    ns = seed()
    _wait_rolled_out(apps, ns)
    before = {p.metadata.name for p in _pods(core, ns)}
    assert all(_env(p) == {"orders": {"PGHOST": sandbox.pg_host, "PGPORT": str(sandbox.pg_port)}}
               for p in _pods(core, ns))

    _repoint(core, ns, 6543)
    assert not wait_until(lambda: any(_env(p)["orders"]["PGPORT"] == "6543" for p in _pods(core, ns)), 1.0)
    assert {p.metadata.name for p in _pods(core, ns)} == before

    k8s.restart(api_client, ns, "orders")
    _wait_rolled_out(apps, ns)
    pods = _pods(core, ns)
    assert not before & {p.metadata.name for p in pods}
    assert [_env(p)["orders"]["PGPORT"] for p in pods] == ["6543", "6543"]


def test_a_missing_configmap_keeps_the_container_in_create_container_config_error(seed, core, apps):
    ns = seed()
    _wait_rolled_out(apps, ns)
    core.delete_namespaced_config_map("orders-database", ns)
    apps.patch_namespaced_deployment("orders", ns, {"spec": {"replicas": 3}})

    def waiting() -> list[Any]:
        return [p for p in _pods(core, ns) if (p.status.container_statuses or [None])[0] is not None
                and p.status.container_statuses[0].state.waiting is not None
                and p.status.container_statuses[0].state.waiting.reason == "CreateContainerConfigError"]

    assert wait_until(lambda: len(waiting()) == 1, TIMEOUT)
    pod = waiting()[0]
    assert pod.status.container_statuses[0].state.waiting.message == 'configmap "orders-database" not found'
    assert pod.status.phase == "Pending" and not _ready(pod)
    assert ENV_ANNOTATION not in (pod.metadata.annotations or {})


def test_a_container_waiting_on_its_configmap_starts_once_it_exists(seed, core, apps):
    ns = seed(replicas=0)
    core.delete_namespaced_config_map("orders-database", ns)
    apps.patch_namespaced_deployment("orders", ns, {"spec": {"replicas": 1}})
    assert wait_until(lambda: any(p.status.container_statuses for p in _pods(core, ns)), TIMEOUT)
    assert not wait_until(lambda: any(_ready(p) for p in _pods(core, ns)), 1.0)

    core.create_namespaced_config_map(ns, {"metadata": {"name": "orders-database"},
                                           "data": {"PGHOST": "127.0.0.1", "PGPORT": "7000"}})
    _wait_rolled_out(apps, ns)
    assert _env(_pods(core, ns)[0]) == {"orders": {"PGHOST": "127.0.0.1", "PGPORT": "7000"}}


def test_no_secret_value_is_in_pod_annotations(seed, core, apps):
    secret = {k: f"{k.lower()}-{uuid.uuid4().hex}" for k in ("user", "password", "dbname")}
    ns = seed(**secret)  # values no annotation key could contain by chance
    _wait_rolled_out(apps, ns)
    stored = core.read_namespaced_secret("orders-credentials", ns).data
    assert sorted(base64.b64decode(v).decode() for v in stored.values()) == sorted(secret.values())
    for pod in _pods(core, ns):
        annotations = json.dumps(pod.metadata.annotations)
        assert not [v for v in secret.values() if v in annotations]
        refs = json.loads(pod.metadata.annotations[ENV_SECRETS_ANNOTATION])
        assert refs == {"orders": {k: {"secret": "orders-credentials", "key": k}
                                   for k in ("PGDATABASE", "PGPASSWORD", "PGUSER")}}


# --- the web service: health follows the database ----------------------------------------


def test_health_is_unreachable_on_a_closed_port_and_ok_after_repointing_and_a_restart(
        sandbox, seed, core, apps, api_client):
    closed = free_port()
    ns = seed(port=closed)
    _wait_rolled_out(apps, ns)
    r = _health(sandbox, ns)
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["status"] == "unhealthy" and body["databases"] == {f"127.0.0.1:{closed}": "unreachable"}
    assert body["reason"].startswith(f"database 127.0.0.1:{closed} unreachable: ")
    assert sandbox.pg_password not in r.text

    _repoint(core, ns, sandbox.pg_port)
    r = _health(sandbox, ns)  # the pods still have the old port
    assert (r.status_code, r.json()["databases"]) == (503, {f"127.0.0.1:{closed}": "unreachable"})

    k8s.restart(api_client, ns, "orders")
    _wait_rolled_out(apps, ns)
    r = _health(sandbox, ns)
    assert r.status_code == 200, r.text
    assert r.json()["databases"] == {f"{sandbox.pg_host}:{sandbox.pg_port}": "ok"}
    assert sandbox.pg_password not in r.text


def test_a_wrong_password_is_unreachable_and_in_no_health_body(sandbox, seed, apps):
    wrong = f"wrong-{uuid.uuid4().hex}"
    ns = seed(password=wrong)
    _wait_rolled_out(apps, ns)
    r = _health(sandbox, ns)
    assert r.status_code == 503
    assert "password authentication failed" in r.json()["reason"]
    assert wrong not in r.text and sandbox.pg_password not in r.text


@contextlib.contextmanager
def _throwaway_cluster(sandbox: Any, *, standby: bool) -> Iterator[int]:
    """A throwaway PostgreSQL the sandbox's login role can log in to; yields its port. With
    `standby`, it restarts with standby.signal and no primary: in recovery for good."""
    base = Path(tempfile.mkdtemp(prefix="runbook-orders-pg-"))
    base.chmod(0o711)  # as root, the postgres account must enter it
    pg_dir, bin_dir, port = base / "pg", postgres.pg_bin(), free_port()
    postgres.make_cluster_dir(pg_dir)
    data = postgres.init_cluster(pg_dir, bin_dir)
    postgres.set_port(data, pg_dir, port)
    try:
        postgres.start(data, pg_dir, bin_dir, port)
        postgres.create_login_role(pg_dir, port, sandbox.pg_user, sandbox.pg_password)
        if standby:
            postgres.stop(data, pg_dir, bin_dir, port)
            signal = data / "standby.signal"
            signal.touch()
            account = postgres_account()
            shutil.chown(signal, account.pw_uid, account.pw_gid)
            postgres.start(data, pg_dir, bin_dir, port)
        yield port
    finally:
        postgres.stop(data, pg_dir, bin_dir, port)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def standby(sandbox: Any) -> Iterator[int]:
    with _throwaway_cluster(sandbox, standby=True) as port:
        yield port


@pytest.fixture
def fenced(sandbox: Any) -> Iterator[int]:
    """A primary fenced as a DR failover fences the old one: default_transaction_read_only on."""
    with _throwaway_cluster(sandbox, standby=False) as port:
        dsn = f"postgresql://{sandbox.pg_user}:{sandbox.pg_password}@127.0.0.1:{port}/postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            conn.execute("SELECT pg_reload_conf()")

        def seen() -> bool:
            with psycopg.connect(dsn) as conn:
                return bool(conn.execute("SELECT current_setting('default_transaction_read_only')::bool").fetchone()[0])

        assert wait_until(seen, 10)  # the reload reaches new sessions a moment later
        yield port


def test_a_database_in_recovery_is_read_only(sandbox, seed, apps, standby):
    ns = seed(port=standby)
    _wait_rolled_out(apps, ns)
    r = _health(sandbox, ns)
    assert r.status_code == 503, r.text
    assert r.json()["databases"] == {f"127.0.0.1:{standby}": "read-only"}
    assert r.json()["reason"] == f"database 127.0.0.1:{standby} is read-only (in recovery)"


def test_a_fenced_primary_is_read_only(sandbox, seed, apps, fenced):
    ns = seed(port=fenced)
    _wait_rolled_out(apps, ns)
    r = _health(sandbox, ns)
    assert r.status_code == 503, r.text
    assert r.json()["databases"] == {f"127.0.0.1:{fenced}": "read-only"}
    assert r.json()["reason"] == f"database 127.0.0.1:{fenced} is read-only (default_transaction_read_only is on)"


def test_pods_split_between_two_databases_need_both_writable(sandbox, seed, core, apps, standby):
    ns = seed(replicas=1)
    _wait_rolled_out(apps, ns)
    _repoint(core, ns, standby)
    apps.patch_namespaced_deployment("orders", ns, {"spec": {"replicas": 2}})  # the new pod reads the standby
    _wait_rolled_out(apps, ns)
    body = _health(sandbox, ns).json()
    assert body["databases"] == {f"127.0.0.1:{sandbox.pg_port}": "ok", f"127.0.0.1:{standby}": "read-only"}
    assert body["status"] == "unhealthy"


def test_services_without_database_env_answer_as_before(sandbox):
    r = httpx.get(f"{sandbox.webapp_url}/svc/{cluster.NAMESPACE}/api/health", timeout=10)
    assert r.status_code == 200 and "databases" not in r.json()


def test_the_web_service_tracks_orders_from_the_start_even_before_it_exists(sandbox):
    text = httpx.get(f"{sandbox.webapp_url}/metrics", timeout=10).text
    assert 'namespace="sandbox",service="orders"' in text
    assert 'namespace="sandbox-dr",service="orders"' in text


def test_services_config_has_orders_only_when_seeded():
    assert "orders" not in cluster.services_config("http://w")
    entry = cluster.services_config("http://w", orders=True)["orders"]
    assert ServiceConfig.model_validate(entry).health_urls == ["http://w/svc/sandbox/orders/health"]


# --- the pure pieces ------------------------------------------------------------------------


def _lookup(objects: dict[tuple[str, str], dict[str, str]]) -> podenv.Lookup:
    return lambda kind, name: objects.get((kind, name))


CM = {("ConfigMap", "db"): {"PGHOST": "10.0.0.5", "PGPORT": "5433"},
      ("Secret", "creds"): {"PGUSER": "dXNlcg==", "PGPASSWORD": "cHc="}}


@pytest.mark.parametrize(("container", "expected"), [
    pytest.param({"envFrom": [{"configMapRef": {"name": "db"}}, {"secretRef": {"name": "creds"}}]},
                 ContainerEnv({"PGHOST": "10.0.0.5", "PGPORT": "5433"},
                              {"PGUSER": SecretRef("creds", "PGUSER"), "PGPASSWORD": SecretRef("creds", "PGPASSWORD")}),
                 id="envFrom both: ConfigMap values kept, Secret keys only as references"),
    pytest.param({"envFrom": [{"configMapRef": {"name": "db"}}],
                  "env": [{"name": "PGPORT", "value": "6000"}]},
                 ContainerEnv({"PGHOST": "10.0.0.5", "PGPORT": "6000"}),
                 id="env overrides envFrom, as the kubelet orders them"),
    pytest.param({"envFrom": [{"configMapRef": {"name": "db"}}],
                  "env": [{"name": "PGHOST", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "PGUSER"}}}]},
                 ContainerEnv({"PGPORT": "5433"}, {"PGHOST": SecretRef("creds", "PGUSER")}),
                 id="a Secret overriding a ConfigMap value drops the value: it must not leak as plain"),
    pytest.param({"envFrom": [{"configMapRef": {"name": "db"}, "prefix": "DB_"}]},
                 ContainerEnv({"DB_PGHOST": "10.0.0.5", "DB_PGPORT": "5433"}),
                 id="envFrom prefix"),
    pytest.param({"env": [{"name": "H", "valueFrom": {"configMapKeyRef": {"name": "db", "key": "PGHOST"}}}]},
                 ContainerEnv({"H": "10.0.0.5"}),
                 id="configMapKeyRef"),
    pytest.param({"envFrom": [{"configMapRef": {"name": "nope", "optional": True}}],
                  "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "db", "key": "no", "optional": True}}}]},
                 ContainerEnv(),
                 id="optional sources that are missing are skipped, not an error"),
    pytest.param({"envFrom": [{"configMapRef": {"name": "db"}}],
                  "env": [{"name": "PGHOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]},
                 ContainerEnv({"PGPORT": "5433"}),
                 id="a fieldRef replaces the earlier value; it is not recorded"),
    pytest.param({"env": [{"name": "A", "value": "$(PGPASSWORD)"}]},
                 ContainerEnv({"A": "$(PGPASSWORD)"}),
                 id="no $(VAR) expansion: it could copy a Secret into the annotation"),
])
def test_container_env_resolution(container, expected):
    assert podenv.resolve(container, "ns", _lookup(CM)) == expected


@pytest.mark.parametrize(("container", "message"), [
    pytest.param({"envFrom": [{"configMapRef": {"name": "nope"}}]}, 'configmap "nope" not found', id="configmap"),
    pytest.param({"envFrom": [{"secretRef": {"name": "nope"}}]}, 'secret "nope" not found', id="secret"),
    pytest.param({"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "db", "key": "no"}}}]},
                 "couldn't find key no in ConfigMap ns/db", id="configmap key"),
    pytest.param({"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "no"}}}]},
                 "couldn't find key no in Secret ns/creds", id="secret key"),
])
def test_container_env_missing_source_is_the_kubelets_config_error(container, message):
    with pytest.raises(podenv.ConfigError) as exc:
        podenv.resolve(container, "ns", _lookup(CM))
    assert str(exc.value) == message


OK, RO, DOWN = (DatabaseCheck("ok"), DatabaseCheck("read-only", "in recovery"),
                DatabaseCheck("unreachable", "Connection refused"))
FENCED = DatabaseCheck("read-only", "default_transaction_read_only is on")
VERSIONS_OK = (200, {"status": "ok", "versions": {"sandbox/app:v1": 2}, "pods": 2})
VERSION_BAD = (503, {"status": "unhealthy", "reason": "unhealthy versions get traffic: x", "pods": 2})


@pytest.mark.parametrize(("versions", "results", "code", "status", "reason"), [
    pytest.param(VERSIONS_OK, {"h:1": OK}, 200, "ok", None, id="one writable database: healthy"),
    pytest.param(VERSIONS_OK, {"h:1": RO}, 503, "unhealthy", "database h:1 is read-only (in recovery)",
                 id="a standby: a failover that points at the old primary after demotion must fail"),
    pytest.param(VERSIONS_OK, {"h:1": FENCED}, 503, "unhealthy",
                 "database h:1 is read-only (default_transaction_read_only is on)",
                 id="a fenced old primary: not in recovery, yet it refuses writes"),
    pytest.param(VERSIONS_OK, {"h:1": DOWN}, 503, "unhealthy", "database h:1 unreachable: Connection refused",
                 id="unreachable"),
    pytest.param(VERSIONS_OK, {"h:1": OK, "h:2": RO}, 503, "unhealthy", "database h:2 is read-only (in recovery)",
                 id="pods split mid-restart: every database counts, not the majority"),
    pytest.param(VERSIONS_OK, {"h:2": DOWN, "h:1": RO}, 503, "unhealthy",
                 "database h:1 is read-only (in recovery); database h:2 unreachable: Connection refused",
                 id="every problem is named, in address order"),
    pytest.param(VERSION_BAD, {"h:1": RO}, 503, "unhealthy", "unhealthy versions get traffic: x",
                 id="a version problem keeps its reason; databases still reported"),
])
def test_database_verdict(versions, results, code, status, reason):
    got_code, body = database_verdict(*versions, results)
    assert (got_code, body["status"], body.get("reason")) == (code, status, reason)
    assert body["databases"] == {a: results[a].state for a in sorted(results)}


def test_database_checks_are_cached_for_the_ttl():
    class Counting(DatabaseChecker):
        probes = 0

        async def _probe(self, target: DatabaseTarget, read_secret: Any) -> DatabaseCheck:
            self.probes += 1
            return OK

    async def run() -> list[int]:
        checker, target = Counting(ttl=0.2), DatabaseTarget("ns", "h", "1")
        seen = []
        for pause in (0, 0.05, 0.3):
            await asyncio.sleep(pause)
            await asyncio.gather(*(checker.check(target, None) for _ in range(3)))  # type: ignore[arg-type]
            seen.append(checker.probes)
        return seen

    assert asyncio.run(run()) == [1, 1, 2]  # concurrent calls share a probe; a stale answer is probed again


def test_a_server_that_never_answers_is_unreachable_within_the_timeout():
    creds = {"PGUSER": "u", "PGPASSWORD": "pw", "PGDATABASE": "d"}

    async def read_secret(namespace: str, name: str) -> dict[str, str]:
        return creds

    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never speaks
        target = DatabaseTarget("ns", "127.0.0.1", str(silent.getsockname()[1]),
                                secrets=tuple((k, "s", k) for k in creds))
        started = time.monotonic()
        check = asyncio.run(DatabaseChecker(timeout=0.3).check(target, read_secret))
    assert check == DatabaseCheck("unreachable", "no answer within 0.3 s")
    assert time.monotonic() - started < 1.5  # not libpq's 2 s floor


def test_database_targets_are_distinct_addresses_with_default_port():
    def pod(name: str, env: dict[str, str]) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": "ns",
                             "annotations": {ENV_ANNOTATION: json.dumps({"orders": env})}}}

    targets = database_targets([pod("b", {"PGHOST": "h"}), pod("a", {"PGHOST": "h", "PGPORT": "5432"}),
                                pod("c", {"OTHER": "x"}), {"metadata": {"name": "d"}}])
    assert [t.address for t in targets] == ["h:5432"]
