"""Test harness: a real Prefect API (prefect_test_harness) and the real sandbox
(PostgreSQL 15 and moto's S3 server), shared by the whole session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Before Prefect is imported: settings are read at import time.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="runbook-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect-home")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"  # avoids "database is locked"
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_SESSION_TMP / "results")  # no cache leaks between runs
os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
os.environ.pop("RUNBOOK_FAULTS", None)

import pytest  # noqa: E402
import yaml  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[None]:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # No heartbeats: each flow run ends about a second sooner.
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        with prefect_test_harness(server_startup_timeout=120):
            yield


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Here rather than in a fixture's teardown: tests/kube replaces the harness fixture.
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def environments_dir() -> Path:
    path = _SESSION_TMP / "environments"
    path.mkdir(exist_ok=True)
    os.environ["RUNBOOK_ENVIRONMENTS_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def sandbox(environments_dir: Path) -> Iterator[Any]:
    from sandbox import api

    workdir = Path(tempfile.mkdtemp(prefix="runbook-sandbox-test-"))
    workdir.rmdir()  # up() creates it with the right owner
    state = api.up(workdir=workdir, size_mb=8, environments_dir=environments_dir)
    saved = {k: os.environ.get(k) for k in state.secret_env()}
    os.environ.update(state.secret_env())
    try:
        yield state
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        api.down(workdir)


@pytest.fixture
def make_environment(sandbox: Any, environments_dir: Path) -> Any:
    """Write a variant of the sandbox environment: `make_environment("t1", edit)` where
    `edit(dict)` changes the config in place. Returns the environment's name."""
    from sandbox import api

    def make(name: str, edit: Any = None) -> str:
        doc = api.environment_dict(sandbox, name=name)
        for db in doc["databases"].values():  # each variant gets its own storage prefix
            url = db["storage"]["url"]
            db["storage"]["url"] = f"{url}/{name}"
        if edit is not None:
            edit(doc)
        (environments_dir / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return name

    return make


@pytest.fixture
def through_proxies(sandbox: Any) -> Any:
    """An edit for `make_environment`: S3 and Kubernetes traffic through the sandbox's fault proxies."""
    from sandbox.environment import through_proxies

    return through_proxies(sandbox)


@pytest.fixture(scope="module")
def webhook() -> Iterator[Any]:
    """A local HTTP receiver as the environment's incident webhook (its URL in the variable the
    sandbox environment names), for one test module."""
    from sandbox.state import ENV_WEBHOOK_URL
    from sandbox.webhook import receiving_webhook

    with receiving_webhook() as hook:
        saved = os.environ.get(ENV_WEBHOOK_URL)
        os.environ[ENV_WEBHOOK_URL] = hook.url
        try:
            yield hook
        finally:
            if saved is None:
                os.environ.pop(ENV_WEBHOOK_URL, None)
            else:
                os.environ[ENV_WEBHOOK_URL] = saved


def _faults(control_url: str) -> Iterator[Any]:
    from sandbox.faultproxy import FaultProxyClient

    with FaultProxyClient(control_url) as faults:  # the proxies are the session's: start and end clean
        faults.clear()
        faults.clear_log()
        yield faults
        faults.clear()


@pytest.fixture
def s3_faults(sandbox: Any) -> Iterator[Any]:
    yield from _faults(sandbox.s3_proxy_control_url)


@pytest.fixture
def kube_faults(sandbox: Any) -> Iterator[Any]:
    yield from _faults(sandbox.kube_proxy_control_url)


@pytest.fixture
def azure_control(sandbox: Any) -> Iterator[Any]:
    """The control API of the session sandbox's fake Azure Resource Manager (sandbox/azure_arm.py):
    request faults, failed and held operations, the request log; all cleared before and after."""
    from sandbox.azure_arm import ArmControl

    control = ArmControl(sandbox.azure_arm_url)
    control.reset()
    yield control
    control.reset()


@pytest.fixture
def api_on_v1(sandbox: Any) -> None:
    """`api` runs the good image, fully rolled out, and the sample service's 5 s metrics window
    holds no request of another version: an analysis starts from a clean window, not from the
    slow or failing image of the test before."""
    import time

    import httpx
    from kubernetes import client, config

    from sandbox.cluster import GOOD_IMAGE, NAMESPACE
    from tests.cluster_state import rolled_out

    api_client = config.new_client_from_config(config_file=str(sandbox.kubeconfig))
    apps = client.AppsV1Api(api_client)
    try:
        dep = apps.read_namespaced_deployment("api", NAMESPACE)
        if next(c.image for c in dep.spec.template.spec.containers if c.name == "api") != GOOD_IMAGE:
            apps.patch_namespaced_deployment("api", NAMESPACE, {"spec": {"template": {"spec": {"containers": [
                {"name": "api", "image": GOOD_IMAGE}]}}}})

        def window_clean() -> bool:
            snap = httpx.get(f"{sandbox.webapp_url}/svc/{NAMESPACE}/api/metrics", timeout=5).json()
            return all(v["window_requests"] == 0 or GOOD_IMAGE.endswith(name)
                       for name, v in snap.get("versions", {}).items())

        deadline = time.monotonic() + 60
        while not (rolled_out(apps, "api") and window_clean()):
            assert time.monotonic() < deadline, "api did not settle on the good image within 60 s"
            time.sleep(0.2)
    finally:
        api_client.close()
