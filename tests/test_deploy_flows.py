"""Deploys against the sandbox: our Kubernetes API server over real HTTP, the sample web
service whose health and error rate follow the routed image, and a real Prefect API."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from kubernetes import client, config

from flows.deploy import deploy
from sandbox.cluster import GOOD_IMAGE, NAMESPACE

pytestmark = pytest.mark.scenario


@pytest.fixture
def apps(sandbox: Any) -> Any:
    api_client = config.new_client_from_config(config_file=str(sandbox.kubeconfig))
    yield client.AppsV1Api(api_client)
    api_client.close()


def image_of(apps: Any, deployment: str, container: str) -> str:
    dep = apps.read_namespaced_deployment(deployment, NAMESPACE)
    return next(c.image for c in dep.spec.template.spec.containers if c.name == container)


def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_a_good_image_succeeds(make_environment: Any, apps: Any, api_on_v1: None) -> None:
    env = make_environment("deploy-good")
    result = deploy(env, "api", "sandbox/app:v2")
    assert result["outcome"] == "succeeded"
    assert result["before"]["image"] == GOOD_IMAGE and result["after"]["image"] == "sandbox/app:v2"
    assert image_of(apps, "api", "api") == "sandbox/app:v2"
    assert image_of(apps, "api", "log-shipper") == "sandbox/log-shipper:1.4"  # only the named container changed
    assert result["analyses"][0]["phase"] == "Successful"


def test_a_never_ready_image_hits_the_progress_deadline_and_rolls_back(
    make_environment: Any, apps: Any, api_on_v1: None
) -> None:
    env = make_environment("deploy-never-ready")
    state = deploy(env, "api", "sandbox/app:v2-never-ready", return_state=True)
    assert state.is_failed()
    assert "ProgressDeadlineExceeded" in state.message or "progress deadline" in state.message
    assert image_of(apps, "api", "api") == GOOD_IMAGE


def test_an_eight_percent_error_rate_fails_analysis_and_rolls_back(
    make_environment: Any, apps: Any, api_on_v1: None
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    env = make_environment("deploy-err8")
    state = deploy(env, "api", "sandbox/app:v2-err8", return_state=True)
    assert state.is_failed()
    assert "analysis" in state.message and "Failed" in state.message
    assert image_of(apps, "api", "api") == GOOD_IMAGE

    # By key and run: "the latest 100 artifacts" misses it once the session's server holds more keys.
    with get_client(sync_client=True) as c:
        found = c.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"deploy-{env}-api"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert len(found) == 1, found
    report = found[0]
    assert "time to recovery (s)" in report.data
    recovery = float(report.data.split("time to recovery (s) | ")[1].split(" |")[0])
    assert 0 < recovery < 60


def task_runs_of(state: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as c:
        return c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))


@pytest.mark.parametrize("bad", ["sandbox/app", "Sandbox/App:v1", "other/app:v1", "sandbox/app:", 20240101],
                         ids=["no-tag", "upper-case", "other-repository", "empty-tag", "int-tag"])
def test_bad_image_reference_fails_before_any_api_call(make_environment: Any, apps: Any, bad: Any) -> None:
    env = make_environment("deploy-bad-ref")
    generation = apps.read_namespaced_deployment("api", NAMESPACE).metadata.generation
    state = deploy.with_options(validate_parameters=False)(env, "api", bad, return_state=True)
    assert state.is_failed() and repr(bad) in state.message
    assert task_runs_of(state) == []  # nothing ran: no Kubernetes call, no lock, no backup
    assert apps.read_namespaced_deployment("api", NAMESPACE).metadata.generation == generation


def test_unknown_service_fails_naming_the_known_ones(make_environment: Any) -> None:
    env = make_environment("deploy-unknown")
    state = deploy(env, "nope", "sandbox/app:v2", return_state=True)
    assert state.is_failed() and "'nope'" in state.message and "api" in state.message
    assert task_runs_of(state) == []


def test_two_concurrent_deploys_never_overlap(make_environment: Any, apps: Any, api_on_v1: None) -> None:
    env = make_environment("deploy-concurrent")
    results: list[Any] = []

    def run(image: str) -> None:
        results.append(deploy(env, "api", image))

    threads = [threading.Thread(target=run, args=(img,)) for img in ("sandbox/app:v3", "sandbox/app:v4")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2
    spans = sorted((r["held_from"], r["held_until"]) for r in results)
    assert spans[0][1] <= spans[1][0], f"deploys overlapped: {spans}"


def _paused_run(flow_name: str, since: float) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as c:
        runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    return next((r for r in runs if r.name and r.start_time and r.start_time.timestamp() >= since - 5), None)


def deploy_answering_its_pause(env: str, image: str, run_input: dict[str, Any]) -> Any:
    """Deploy `image` to `api` in a thread; when the run pauses for a person, resume it
    through the API with `run_input`, as the UI would. Returns the final state."""
    from prefect.flow_runs import resume_flow_run

    outcome: list[Any] = []
    started = time.time()
    runner = threading.Thread(target=lambda: outcome.append(deploy(env, "api", image, return_state=True)))
    runner.start()
    holder: list[Any] = []
    wait_until(lambda: bool(holder.append(_paused_run("deploy", started)) or holder[-1]), timeout=60)
    resume_flow_run(holder[-1].id, run_input=run_input)
    runner.join(timeout=120)
    return outcome[0]


@pytest.mark.parametrize("approve", [True, False], ids=["approved", "rejected"])
def test_protected_environment_needs_an_approval_resumed_through_the_api(
    make_environment: Any, apps: Any, api_on_v1: None, approve: bool
) -> None:
    def protect(doc: dict[str, Any]) -> None:
        doc["protected"] = True

    env = make_environment(f"deploy-protected-{str(approve).lower()}", protect)
    state = deploy_answering_its_pause(env, "sandbox/app:v5",
                                       {"approve": approve, "approver": "alice", "reason": "change 42"})
    if approve:
        assert state.is_completed()
        assert state.result()["approver"] == "alice"
        assert image_of(apps, "api", "api") == "sandbox/app:v5"
    else:
        assert state.is_failed() and "rejected by alice" in state.message
        assert image_of(apps, "api", "api") == GOOD_IMAGE


@pytest.fixture
def web_on_blue(apps: Any, sandbox: Any) -> None:
    """Blue-green tests start with the live Service on blue, running the good image."""
    core = client.CoreV1Api(apps.api_client)
    core.patch_namespaced_service("web", NAMESPACE, {"spec": {"selector": {"app": "web", "colour": "blue"}}})
    if image_of(apps, "web-blue", "web") != GOOD_IMAGE:
        apps.patch_namespaced_deployment("web-blue", NAMESPACE, {"spec": {"replicas": 2, "template": {"spec": {
            "containers": [{"name": "web", "image": GOOD_IMAGE}]}}}})
    apps.patch_namespaced_deployment_scale("web-blue", NAMESPACE, {"spec": {"replicas": 2}})
    wait_until(lambda: apps.read_namespaced_deployment("web-blue", NAMESPACE).status.available_replicas == 2)


def health_only_preview(service: str) -> Any:
    """The preview is judged on health alone, so an 8% error rate only shows once live."""

    def edit(doc: dict[str, Any]) -> None:
        bg = doc["services"][service]["blue_green"]
        bg["preview_metrics_url"] = None
        bg["preview_analysis"] = {"interval": "1s", "count": 2, "success": {"require_healthy": True},
                                  "failure": {"require_healthy": True}}

    return edit


def assert_blue_untouched_and_green_down(apps: Any, service: str, blue_before: Any) -> None:
    blue_after = apps.read_namespaced_deployment(f"{service}-blue", NAMESPACE)
    assert blue_after.metadata.generation == blue_before.metadata.generation  # blue never touched
    assert blue_after.spec.replicas == 2 and image_of(apps, f"{service}-blue", service) == GOOD_IMAGE
    assert apps.read_namespaced_deployment(f"{service}-green", NAMESPACE).spec.replicas == 0


def live_colour(apps: Any) -> str:
    return client.CoreV1Api(apps.api_client).read_namespaced_service("web", NAMESPACE).spec.selector["colour"]


def test_blue_green_succeeds_and_retires_blue(make_environment: Any, apps: Any, web_on_blue: None) -> None:
    env = make_environment("bg-good")
    result = deploy(env, "web", "sandbox/app:v2")
    assert result["outcome"] == "succeeded"
    assert live_colour(apps) == "green"
    assert image_of(apps, "web-green", "web") == "sandbox/app:v2"
    assert [a["phase"] for a in result["analyses"]] == ["Successful", "Successful"]
    assert apps.read_namespaced_deployment("web-blue", NAMESPACE).spec.replicas == 0  # after the grace period
    assert image_of(apps, "web-blue", "web") == GOOD_IMAGE


def test_failing_post_promotion_analysis_switches_back_and_leaves_blue_untouched(
    make_environment: Any, apps: Any, web_on_blue: None
) -> None:
    env = make_environment("bg-post-fails", health_only_preview("web"))
    blue_before = apps.read_namespaced_deployment("web-blue", NAMESPACE)
    state = deploy(env, "web", "sandbox/app:v3-err8", return_state=True)
    assert state.is_failed() and "post-promotion" in state.message
    assert live_colour(apps) == "blue"
    assert_blue_untouched_and_green_down(apps, "web", blue_before)


def test_a_deploy_inside_a_freeze_window_is_refused_before_any_change(
    make_environment: Any, apps: Any, api_on_v1: None
) -> None:
    from datetime import UTC, datetime, timedelta

    def frozen(doc: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        doc["deploy_freeze"] = [{"name": "year end", "start": (now - timedelta(hours=1)).isoformat(),
                                 "end": (now + timedelta(hours=1)).isoformat()}]

    env = make_environment("deploy-frozen", frozen)
    generation = apps.read_namespaced_deployment("api", NAMESPACE).metadata.generation
    state = deploy(env, "api", "sandbox/app:v2", return_state=True)
    # Written as before maintenance windows existed (deploy_freeze): still a freeze of deploys.
    assert state.is_failed() and "deploy is frozen: year end" in state.message, state.message
    assert "emergency=True" in state.message
    assert apps.read_namespaced_deployment("api", NAMESPACE).metadata.generation == generation
    assert image_of(apps, "api", "api") == GOOD_IMAGE


# --- blue-green through an Ingress (SEV Fleet: kubectl apply -f kubernetes/ingress-green.yaml) ----------


def ingress_backend(apps: Any) -> str:
    ing = client.NetworkingV1Api(apps.api_client).read_namespaced_ingress("admin", NAMESPACE)
    return ing.spec.rules[0].http.paths[0].backend.service.name


@pytest.fixture
def admin_on_blue(apps: Any, sandbox: Any) -> None:
    """The Ingress routes to admin-blue, which runs the good image on 2 replicas."""
    net = client.NetworkingV1Api(apps.api_client)
    ing = net.read_namespaced_ingress("admin", NAMESPACE)
    ing.spec.rules[0].http.paths[0].backend.service.name = "admin-blue"
    net.replace_namespaced_ingress("admin", NAMESPACE, ing)
    if image_of(apps, "admin-blue", "admin") != GOOD_IMAGE:
        apps.patch_namespaced_deployment("admin-blue", NAMESPACE, {"spec": {"template": {"spec": {
            "containers": [{"name": "admin", "image": GOOD_IMAGE}]}}}})
    apps.patch_namespaced_deployment_scale("admin-blue", NAMESPACE, {"spec": {"replicas": 2}})
    wait_until(lambda: apps.read_namespaced_deployment("admin-blue", NAMESPACE).status.available_replicas == 2)


def test_blue_green_through_an_ingress_switches_its_backend_and_retires_blue(
    make_environment: Any, apps: Any, admin_on_blue: None
) -> None:
    env = make_environment("bg-ingress-good")
    result = deploy(env, "admin", "sandbox/app:v2")
    assert result["outcome"] == "succeeded" and result["strategy"] == "blue-green"
    assert ingress_backend(apps) == "admin-green"
    green = client.CoreV1Api(apps.api_client).read_namespaced_service("admin-green", NAMESPACE)
    assert green.spec.selector == {"app": "admin", "colour": "green"}  # made from admin-blue's
    assert image_of(apps, "admin-green", "admin") == "sandbox/app:v2"
    assert [a["phase"] for a in result["analyses"]] == ["Successful", "Successful"]
    assert result["after"]["image"] == "sandbox/app:v2" and result["after"]["deployment"] == "admin-green"
    assert apps.read_namespaced_deployment("admin-blue", NAMESPACE).spec.replicas == 0  # after the grace period


def test_a_failing_post_promotion_analysis_switches_the_ingress_back(
    make_environment: Any, apps: Any, admin_on_blue: None, sandbox: Any
) -> None:
    env = make_environment("bg-ingress-fails", health_only_preview("admin"))
    blue_before = apps.read_namespaced_deployment("admin-blue", NAMESPACE)
    state = deploy(env, "admin", "sandbox/app:v3-err8", return_state=True)
    assert state.is_failed() and "post-promotion" in state.message
    assert ingress_backend(apps) == "admin-blue"
    assert_blue_untouched_and_green_down(apps, "admin", blue_before)
    health = httpx.get(f"{sandbox.webapp_url}/ing/{NAMESPACE}/admin/health", timeout=5)
    assert health.status_code == 200 and health.json()["versions"] == {GOOD_IMAGE: 2}  # users see blue again


def test_pre_deploy_backup_runs_as_a_subflow_and_is_recorded(make_environment: Any, apps: Any, api_on_v1: None) -> None:
    from tasks import backups
    from tasks.config import load_environment
    from tasks.storage import open_storage

    def with_backup(doc: dict[str, Any]) -> None:
        doc["services"]["api"]["backup_database"] = "pgbench"

    env = make_environment("deploy-backup", with_backup)
    result = deploy(env, "api", "sandbox/app:v6")
    assert result["backup_id"]
    storage = open_storage(load_environment(env).database("pgbench").storage)
    assert backups.load_manifest(storage, "pgbench", result["backup_id"]).row_counts


@pytest.mark.parametrize("action", ["promote", "rollback"])
def test_inconclusive_analysis_pauses_for_a_person(
    make_environment: Any, apps: Any, api_on_v1: None, action: str
) -> None:
    """A slow version (p95 800 ms) is between the success (500 ms) and failure (1000 ms)
    bounds: the seed's "performance degradation: monitor, then decide" case."""
    env = make_environment(f"deploy-inconclusive-{action}")
    state = deploy_answering_its_pause(env, "sandbox/app:v7-slow",
                                       {"action": action, "approver": "carol", "reason": "looked at p95"})
    if action == "promote":
        assert state.is_completed() and state.result()["analyses"][0]["phase"] == "Inconclusive"
        assert image_of(apps, "api", "api") == "sandbox/app:v7-slow"
    else:
        assert state.is_failed() and "carol chose to roll back" in state.message
        assert image_of(apps, "api", "api") == GOOD_IMAGE


def test_deploy_runs_the_migrations_before_the_rollout(
    make_environment: Any, apps: Any, api_on_v1: None, tmp_path: Any, sandbox: Any
) -> None:
    import os

    from tasks import postgres

    server = postgres.Server.from_dsn(os.environ["RUNBOOK_SANDBOX_PG_DSN"])
    postgres.drop_database(server, "deploy_migrate")
    postgres.create_database(server, "deploy_migrate")
    (tmp_path / "V1__create_notes.sql").write_text("CREATE TABLE notes (id bigint PRIMARY KEY, body text);\n")

    def migrations(doc: dict[str, Any]) -> None:
        fleet = doc["databases"]["fleet"]
        fleet["dbname"] = "deploy_migrate"
        fleet["migrations"] = {"path": str(tmp_path), "backup_first": False}

    env = make_environment("deploy-migrate", migrations)
    try:
        result = deploy(env, "api", "sandbox/app:v8", migrate="before")
        assert result["migration"]["applied"] == ["V1__create_notes.sql"]
        with postgres.connect(server, "deploy_migrate") as conn:
            assert conn.execute("SELECT to_regclass('public.notes')").fetchone()[0] == "notes"
    finally:
        postgres.drop_database(server, "deploy_migrate")


def test_migrate_without_a_database_for_the_service_fails_before_any_change(make_environment: Any) -> None:
    env = make_environment("deploy-migrate-none")
    state = deploy(env, "web", "sandbox/app:v9", migrate="before", return_state=True)
    assert state.is_failed() and "'apps'" in state.message and "'web'" in state.message
    assert task_runs_of(state) == []
