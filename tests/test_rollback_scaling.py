"""Rollback, scale, restart and autoscale flows on the sandbox cluster."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kubernetes import client, config

from flows.deploy import deploy
from flows.rollback import rollback
from flows.scaling import autoscale, restart, scale
from sandbox.cluster import NAMESPACE

pytestmark = pytest.mark.scenario


@pytest.fixture
def k8s(sandbox: Any) -> Any:
    api_client = config.new_client_from_config(config_file=str(sandbox.kubeconfig))
    yield api_client
    api_client.close()


def api_image(k8s: Any) -> str:
    dep = client.AppsV1Api(k8s).read_namespaced_deployment("api", NAMESPACE)
    return next(c.image for c in dep.spec.template.spec.containers if c.name == "api")


def test_rollback_returns_to_the_previous_image(make_environment: Any, k8s: Any) -> None:
    env = make_environment("rb-plain")
    deploy(env, "api", "sandbox/app:rb1")
    deploy(env, "api", "sandbox/app:rb2")
    result = rollback(env, "api")
    assert result["image"] == "sandbox/app:rb1" and api_image(k8s) == "sandbox/app:rb1"
    assert result["healthy_after_seconds"] >= 0


def _paused_rollback() -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as c:
        runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    return next(iter(runs), None)


@pytest.mark.parametrize(("typed", "rolls_back"), [("ROLLBACK", True), ("rollback please", False)],
                         ids=["confirmed", "wrong-word"])
def test_protected_rollback_needs_the_word_rollback(
    make_environment: Any, k8s: Any, typed: str, rolls_back: bool
) -> None:
    from prefect.flow_runs import resume_flow_run

    plain = make_environment(f"rb-setup-{rolls_back}".lower())
    deploy(plain, "api", "sandbox/app:rc1")
    deploy(plain, "api", "sandbox/app:rc2")

    def protect(doc: dict[str, Any]) -> None:
        doc["protected"] = True

    env = make_environment(f"rb-protected-{rolls_back}".lower(), protect)
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(rollback(env, "api", return_state=True)))
    t.start()
    deadline = time.monotonic() + 60
    while (run := _paused_rollback()) is None:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    resume_flow_run(run.id, run_input={"confirm": typed, "approver": "bob"})
    t.join(timeout=120)
    state = out[0]
    if rolls_back:
        assert state.is_completed() and state.result()["approver"] == "bob"
        assert api_image(k8s) == "sandbox/app:rc1"
    else:
        assert state.is_failed() and "expected the word ROLLBACK" in state.message
        assert api_image(k8s) == "sandbox/app:rc2"


def test_scale_restart_and_autoscale(make_environment: Any, k8s: Any) -> None:
    env = make_environment("scaling")
    apps = client.AppsV1Api(k8s)
    assert scale(env, "api", 5)["replicas after"] == 5
    assert apps.read_namespaced_deployment("api", NAMESPACE).status.available_replicas == 5
    scale(env, "api", 3)

    restart(env, "api")
    annotations = apps.read_namespaced_deployment("api", NAMESPACE).spec.template.metadata.annotations
    assert "kubectl.kubernetes.io/restartedAt" in annotations

    autoscale(env, "api", 3, 10, 70)
    hpa = client.AutoscalingV2Api(k8s).read_namespaced_horizontal_pod_autoscaler("api", NAMESPACE)
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (3, 10)


def test_scale_refuses_a_bad_replica_count_before_any_change(make_environment: Any) -> None:
    env = make_environment("scaling-bad")
    state = scale.with_options(validate_parameters=False)(env, "api", -1, return_state=True)
    assert state.is_failed() and "replicas -1" in state.message
