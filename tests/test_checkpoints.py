"""The pieces of crash recovery that need no server: the hang fault point a kill test
waits for, the automations' shape, and the setup command's input checks."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from deployments import automations, setup
from tasks.config import REPO_ROOT


def test_a_hang_fault_point_says_where_it_stopped_and_waits_for_the_kill(tmp_path: Path) -> None:
    code = "from tasks.faults import fault_point; fault_point('deploy.after-set-image'); print('went on')"
    env = {"RUNBOOK_FAULTS": "deploy.after-set-image:hang", "RUNBOOK_FAULTS_SIGNAL_DIR": str(tmp_path),
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE)
    try:
        marker = tmp_path / "deploy.after-set-image"
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "no marker"
            time.sleep(0.05)
        assert marker.read_text() == str(proc.pid)
        time.sleep(1.5)
        assert proc.poll() is None, "a hang point must not go on"
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == -9 and b"went on" not in out


def test_the_crash_automation_watches_heartbeats_of_runbook_runs_only() -> None:
    detect, resume = automations.automations(timedelta(seconds=90))
    trigger = detect.trigger
    assert trigger.posture == "Proactive" and trigger.within == timedelta(seconds=90)
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert {"prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Crashed",
            "prefect.flow-run.Cancelled", "prefect.flow-run.heartbeat"} == set(trigger.expect)
    assert trigger.for_each == {"prefect.resource.id"}
    for auto in (detect, resume):
        related = auto.trigger.match_related
        assert related["prefect.resource.id"] in ("prefect.tag.runbook", ["prefect.tag.runbook"]), auto.name
    assert detect.actions[0].state.value == "CRASHED" and resume.actions[0].state.value == "SCHEDULED"
    assert resume.trigger.expect == {"prefect.flow-run.Crashed"} and resume.trigger.posture == "Reactive"


@pytest.mark.parametrize(("url", "parsed"), [
    ("s3://results", ("results", "")),
    ("s3://results/prefect/tasks/", ("results", "prefect/tasks")),
])
def test_results_urls(url: str, parsed: tuple[str, str]) -> None:
    assert setup.parse_results_url(url) == parsed


@pytest.mark.parametrize("url", ["results", "file:///tmp/x", "s3:///no-bucket", "https://s3.example.com/b"])
def test_a_results_url_that_is_not_s3_is_refused_naming_it(url: str) -> None:
    with pytest.raises(ValueError, match=f"--results {url!r} is not an S3 URL; expected s3://<bucket>"):
        setup.parse_results_url(url)


def test_a_silent_window_shorter_than_two_heartbeats_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        setup.main(["--silent-after", "45"])
    assert exit_.value.code == 2
    assert "--silent-after 45: at least 60 s" in capsys.readouterr().err


def test_results_go_to_s3_through_the_block_that_setup_creates(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several machines: `deployments.setup --results s3://...` makes an S3Bucket block naming no
    credentials; a worker with PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK writes its checkpoints there
    (moto here), with its own AWS credentials from the environment."""
    import boto3
    from prefect import flow, task
    from prefect.settings import PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, temporary_settings

    from tasks import checkpoints

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", sandbox.s3_access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", sandbox.s3_secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", sandbox.s3_region)
    said = setup.ensure_results_block(f"s3://{sandbox.s3_bucket}/prefect-results", "runbook-results-test",
                                      endpoint_url=sandbox.s3_endpoint)
    assert said == f"S3Bucket block 'runbook-results-test' -> s3://{sandbox.s3_bucket}/prefect-results"

    @task(**checkpoints.CHECKPOINT)
    def remember(value: str) -> str:
        return value

    @flow
    def uses_a_checkpoint() -> str:
        return remember("before")

    s3 = boto3.client("s3", endpoint_url=sandbox.s3_endpoint)
    try:
        before = s3.list_objects_v2(Bucket=sandbox.s3_bucket, Prefix="prefect-results/").get("KeyCount", 0)
        with temporary_settings({PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: "s3-bucket/runbook-results-test"}):
            assert uses_a_checkpoint() == "before"
        after = s3.list_objects_v2(Bucket=sandbox.s3_bucket, Prefix="prefect-results/").get("KeyCount", 0)
    finally:
        s3.close()
    assert after > before, "the checkpoint was not written to the results bucket"


def test_the_automations_are_created_once_and_then_left_alone() -> None:
    from prefect.client.orchestration import get_client

    try:
        first = automations.ensure_automations(timedelta(seconds=75))
        again = automations.ensure_automations(timedelta(seconds=75))
        changed = automations.ensure_automations(timedelta(seconds=90))
        with get_client(sync_client=True) as client:
            found = client.read_automations_by_name(automations.DETECT)
    finally:  # the session's other tests run without them
        with get_client(sync_client=True) as client:
            for name in (automations.DETECT, automations.RESUME):
                for auto in client.read_automations_by_name(name):
                    client.delete_automation(auto.id)
    assert first == [f"created automation {automations.DETECT!r}", f"created automation {automations.RESUME!r}"]
    assert again == [f"automation {automations.DETECT!r} is up to date", f"automation {automations.RESUME!r} is up to date"]
    assert changed == [f"updated automation {automations.DETECT!r}", f"automation {automations.RESUME!r} is up to date"]
    assert len(found) == 1 and found[0].trigger.within == timedelta(seconds=90)
