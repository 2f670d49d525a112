"""Faults on the real wire: S3 and Kubernetes traffic of real flows through the sandbox's
fault proxies (sandbox/faultproxy.py), which answer 503s, SlowDowns and 500s, and reset
connections mid-body, while botocore, urllib3 and our code do what they would in production."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client, config

from flows.backup import backup_database
from flows.deploy import deploy
from flows.restore_test import restore_test
from sandbox.cluster import GOOD_IMAGE, NAMESPACE
from sandbox.faultproxy import kube_error, reset_request, reset_response, s3_error
from sandbox.state import ENV_S3_ACCESS_KEY, ENV_S3_SECRET_KEY
from tasks import backups
from tasks.config import StorageConfig, load_environment
from tasks.errors import TransientError
from tasks.storage import S3Storage, open_storage

pytestmark = pytest.mark.scenario


def both(*edits: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        for e in edits:
            e(doc)

    return edit


def s3_attempts(n: int) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc["databases"]["fleet"]["storage"].setdefault("s3", {})["max_attempts"] = n

    return edit


def fired(faults: Any, rule: str | None = None) -> list[dict[str, Any]]:
    return [e for e in faults.log() if e["rule"] is not None and (rule is None or e["rule"] == rule)]


# --- S3 ---------------------------------------------------------------------------------------------


def test_slowdowns_on_upload_parts_and_downloads_are_retried_and_the_backup_restores(
    make_environment: Any, through_proxies: Any, s3_faults: Any
) -> None:
    env = make_environment("wire-s3-slowdown", through_proxies)
    s3_faults.add(method="PUT", query="partNumber=", count=2, **s3_error("SlowDown"))
    result = backup_database(env, "fleet")
    assert [e["status"] for e in fired(s3_faults)] == [503, 503]  # both answered, then botocore went on
    assert any(e["method"] == "PUT" and "partNumber=" in e["query"] and e["status"] == 200 for e in s3_faults.log())

    s3_faults.clear_log()
    s3_faults.add(method="GET", path=dump_path(env, result["backup_id"]), count=2, **s3_error("SlowDown"))
    verdict = restore_test(env, "fleet")
    assert verdict["backup_id"] == result["backup_id"]
    assert [e["status"] for e in fired(s3_faults)] == [503, 503]


def dump_path(env: str, backup_id: str) -> str:
    """The URL path of a backup's dump object, as the proxy sees it."""
    storage = open_storage(load_environment(env).database("fleet").storage)
    assert isinstance(storage, S3Storage)
    key = backups.load_manifest(storage, "fleet", backup_id).files[0].key  # dump.pgc.zst
    return f"/{storage.bucket}/{storage.full_key(backups.backup_prefix('fleet', backup_id) + key)}"


def test_a_download_that_breaks_mid_body_resumes_where_it_broke(
    make_environment: Any, through_proxies: Any, s3_faults: Any
) -> None:
    env = make_environment("wire-s3-reset-download", through_proxies)
    backup_id = backup_database(env, "fleet")["backup_id"]
    s3_faults.clear_log()
    s3_faults.add(method="GET", path=dump_path(env, backup_id), count=1, **reset_response(after_bytes=64 * 1024))
    assert restore_test(env, "fleet")["backup_id"] == backup_id  # every byte checked against the manifest
    dump_reads = [e for e in s3_faults.log() if e["method"] == "GET" and e["path"] == dump_path(env, backup_id)]
    assert [e["reset"] for e in dump_reads] == [True, False]  # one reset, then one request for the rest
    assert dump_reads[1]["status"] == 206  # a Range request: the download went on from where it broke


def test_a_reset_mid_upload_aborts_the_multipart_and_the_retry_commits_one_backup(
    make_environment: Any, through_proxies: Any, s3_faults: Any
) -> None:
    env = make_environment("wire-s3-reset-upload", both(through_proxies, s3_attempts(2)))
    # two resets: botocore's two attempts of the part, so the task fails and Prefect retries it
    s3_faults.add(method="PUT", query="partNumber=", count=2, **reset_request(after_bytes=1024))
    result = backup_database(env, "fleet")
    assert len(fired(s3_faults)) == 2
    storage = open_storage(load_environment(env).database("fleet").storage)
    assert isinstance(storage, S3Storage)
    assert storage.open_uploads("") == []  # the failed attempt's multipart upload was aborted
    catalogue = backups.read_catalogue(storage, "fleet")
    assert list(catalogue.manifests) == [result["backup_id"]] and catalogue.incomplete == []


def test_a_persistent_500_names_the_bucket_the_key_and_the_attempts(sandbox: Any, s3_faults: Any) -> None:
    storage = S3Storage(StorageConfig.model_validate({
        "url": f"s3://{sandbox.s3_bucket}/wire-500", "s3": {
            "endpoint_url": sandbox.s3_proxy_url, "region": sandbox.s3_region, "max_attempts": 3,
            "access_key_id": {"env": ENV_S3_ACCESS_KEY}, "secret_access_key": {"env": ENV_S3_SECRET_KEY}}}))
    s3_faults.add(method="PUT", count=None, **s3_error("InternalError", 500))
    with pytest.raises(TransientError) as caught:
        storage.put_bytes("fleet/probe", b"ok")
    assert f"s3://{sandbox.s3_bucket}/wire-500/fleet/probe after 3 attempt(s)" in str(caught.value)
    assert len(fired(s3_faults)) == 3


# --- Kubernetes ------------------------------------------------------------------------------------


@pytest.fixture
def apps(sandbox: Any) -> Any:
    api_client = config.new_client_from_config(config_file=str(sandbox.kubeconfig))
    yield client.AppsV1Api(api_client)
    api_client.close()


def image_of(apps: Any) -> str:
    dep = apps.read_namespaced_deployment("api", NAMESPACE)
    return next(c.image for c in dep.spec.template.spec.containers if c.name == "api")


def test_5xx_during_the_rollout_wait_and_the_undo_are_retried_and_a_bad_deploy_still_rolls_back(
    make_environment: Any, through_proxies: Any, kube_faults: Any, apps: Any
) -> None:
    deployment = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/api"
    if image_of(apps) != GOOD_IMAGE:
        apps.patch_namespaced_deployment("api", NAMESPACE, {"spec": {"template": {"spec": {"containers": [
            {"name": "api", "image": GOOD_IMAGE}]}}}})
    env = make_environment("wire-kube", through_proxies)
    # Only the undo lists the Deployment's ReplicaSets (kubectl's rollout undo): these 503s hit it.
    kube_faults.add(method="GET", path=f"/apis/apps/v1/namespaces/{NAMESPACE}/replicasets", count=2,
                    **kube_error(503, "ServiceUnavailable"))

    def fail_the_wait_once_the_image_is_set() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(e["method"] == "PATCH" and e["path"] == deployment for e in kube_faults.log()):
                kube_faults.add(method="GET", path=deployment, count=3, **kube_error(500))
                return
            time.sleep(0.02)

    arm = threading.Thread(target=fail_the_wait_once_the_image_is_set)
    arm.start()
    state = deploy(env, "api", "sandbox/app:v7-err8", return_state=True)
    arm.join()

    assert state.is_failed() and "analysis after rollout Failed" in state.message
    assert image_of(apps) == GOOD_IMAGE  # rolled back, through the 5xx
    statuses = {e["rule"]: [] for e in fired(kube_faults)}
    for e in fired(kube_faults):
        statuses[e["rule"]].append(e["status"])
    assert sorted(statuses.values()) == [[500, 500, 500], [503, 503]]
