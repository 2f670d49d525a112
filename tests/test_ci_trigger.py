"""The CI trigger (`deployments/ci/trigger.py`): its pure helpers, then end to end against the
harness's Prefect API with the deployments served by a Runner in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from deployments.ci.trigger import (
    Api,
    NotStarted,
    exit_code_for,
    follow,
    format_table,
    main,
    parse_params,
    summarize_artifact,
    ui_url_for,
)


@flow(name="ci-trigger-echo")
def echo(image: str) -> str:
    """Says back the image it was given; fails for an image tagged `fail`."""
    create_markdown_artifact(key="ci-echo", markdown=f"# Echo\n\nimage `{image}`\n", description="what arrived")
    create_table_artifact(key="ci-echo-types", table=[{"parameter": "image", "type": type(image).__name__}])
    if image.endswith(":fail"):
        raise RuntimeError(f"image {image!r} is tagged to fail")
    return image


# ---------------------------------------------------------------------------------------------
# Pure helpers


@pytest.mark.parametrize(("args", "expected"), [
    (["image=registry/app:20240101"], {"image": "registry/app:20240101"}),  # the tag that started it all
    (["tag=20240101"], {"tag": "20240101"}),        # `prefect deployment run --param` would give an int
    (["flag=true", "n=null"], {"flag": "true", "n": "null"}),  # JSON keywords stay words
    (["q=a=b"], {"q": "a=b"}),                      # only the first '=' splits
    (["list=[1, 2]"], {"list": "[1, 2]"}),          # no JSON at all
])
def test_param_values_are_always_strings(args: list[str], expected: dict[str, Any]) -> None:
    assert parse_params(args) == expected


def test_json_param_values_are_typed() -> None:
    assert parse_params(["image=x"], ["replicas=3", "dry_run=false", "services=[\"api\"]"]) == {
        "image": "x", "replicas": 3, "dry_run": False, "services": ["api"]}


@pytest.mark.parametrize(("params", "json_params", "says"), [
    (["image"], [], "not NAME=VALUE"),                 # forgot the '='
    (["=x"], [], "not NAME=VALUE"),                    # no name
    (["image="], [], "empty value"),                   # an unset CI variable
    (["my-image=x"], [], "not a valid parameter name"),  # flow parameters are identifiers
    (["image=a", "image=b"], [], "given twice"),
    (["image=a"], ["image=1"], "given twice"),         # across both options too
    ([], ["replicas=three"], "is not JSON"),
])
def test_bad_params_are_refused_with_the_reason(params: list[str], json_params: list[str], says: str) -> None:
    with pytest.raises(NotStarted, match=says):
        parse_params(params, json_params)


@pytest.mark.parametrize(("state_type", "code"), [
    ("COMPLETED", 0),
    ("FAILED", 1),
    ("CRASHED", 1),     # the infrastructure died: the deploy did not happen as asked
    ("CANCELLED", 1),   # someone stopped it: not a success for CI
])
def test_exit_code_is_0_only_for_completed(state_type: str, code: int) -> None:
    assert exit_code_for(state_type) == code


@pytest.mark.parametrize("state_type", ["RUNNING", "PAUSED", "SCHEDULED", "PENDING", "CANCELLING"])
def test_exit_code_for_a_state_that_is_not_final_is_an_error(state_type: str) -> None:
    with pytest.raises(ValueError, match="not terminal"):
        exit_code_for(state_type)


@pytest.mark.parametrize(("api_url", "ui_url"), [
    ("http://127.0.0.1:4200/api", "http://127.0.0.1:4200"),
    ("https://prefect.example.com/api/", "https://prefect.example.com"),
    ("https://api.prefect.cloud/api/accounts/a1/workspaces/w1",
     "https://app.prefect.cloud/account/a1/workspace/w1"),
])
def test_ui_url_is_derived_from_the_api_url_like_prefect_does(api_url: str, ui_url: str) -> None:
    assert ui_url_for(api_url) == ui_url


def test_markdown_artifact_summary_shows_its_first_lines() -> None:
    lines = summarize_artifact({"key": "deploy-api", "type": "markdown", "description": "Deploy report",
                                "data": "# Deploy\n\n" + "\n".join(f"line {i}" for i in range(20))}, max_lines=3)
    assert lines == ["deploy-api [markdown]: Deploy report", "    # Deploy", "    line 0", "    line 1",
                     "    ... 18 more lines"]


@pytest.mark.parametrize("data", [
    '[{"check": "p99", "verdict": "pass"}, {"check": "errors", "verdict": "fail"}]',  # list of rows
    '{"check": ["p99", "errors"], "verdict": ["pass", "fail"]}',                       # dict of columns
])
def test_table_artifact_summary_is_a_short_table(data: str) -> None:
    lines = summarize_artifact({"key": "analysis", "type": "table", "data": data})
    assert lines == ["analysis [table]", "    check   verdict", "    ------  -------",
                     "    p99     pass", "    errors  fail"]


def test_long_tables_are_cut_with_a_count() -> None:
    assert format_table([[i] for i in range(12)], max_rows=10)[-1] == "... 2 more rows"


def test_following_rides_out_an_api_outage_and_says_so_once() -> None:
    # Two polls' worth of 503s (each poll tries 4 times), a dropped connection, then the answer.
    replies: list[Any] = [503] * 8 + [httpx.ConnectError("refused"), "COMPLETED"]

    def api(request: httpx.Request) -> httpx.Response:
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, int):
            return httpx.Response(reply, json={"detail": "restarting"})
        return httpx.Response(200, json={"id": "r1", "name": "r", "state": {"type": reply, "name": "Completed"}})

    running = {"id": "r1", "name": "r", "state": {"type": "RUNNING", "name": "Running"}}
    said: list[str] = []
    with httpx.Client(base_url="http://prefect.test/api", transport=httpx.MockTransport(api)) as client:
        run = follow(Api(client, backoff_seconds=0), running, timeout=10, poll=0.01, say=said.append)
    assert run["state"]["type"] == "COMPLETED"
    assert len(said) == 3 and said[0].endswith("] Running (RUNNING)") and said[2].endswith("] Completed (COMPLETED)")
    assert said[1] == "  (could not read the flow run, still trying: 503 restarting)"


# ---------------------------------------------------------------------------------------------
# End to end on the harness API


@dataclass
class Trigger:
    code: int
    out: str
    err: str

    @property
    def flow_run_id(self) -> str:
        return next(x.split()[-1] for x in self.out.splitlines() if x.strip().startswith("id:"))


def trigger(*args: str) -> Trigger:
    from prefect.settings import PREFECT_API_URL

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--api-url", PREFECT_API_URL.value(), "--poll", "0.5", "--timeout", "45", *args])
    return Trigger(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def served() -> Iterator[None]:
    """`ci-trigger-echo/ci-test` and `/ci-other` served by a Runner; `/ci-unserved` and
    `/ci-unserved-2` registered only."""
    from prefect.runner import Runner

    runner = Runner(name=f"ci-trigger-tests-{uuid.uuid4().hex[:8]}", query_seconds=1, pause_on_shutdown=False)
    for name in ("ci-test", "ci-other"):
        runner.add_deployment(echo.to_deployment(name=name))
    for name in ("ci-unserved", "ci-unserved-2"):
        echo.to_deployment(name=name).apply()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(runner.start(),), daemon=True)
    thread.start()
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(runner.astop(), loop).result(timeout=30)
        thread.join(timeout=30)
        loop.close()


@pytest.fixture(scope="module")
def first_run(served: None) -> Iterator[tuple[Trigger, str]]:
    """The one run ever made of `ci-test`, with an image tag that looks like a number, and an API
    key in the environment that must never be printed."""
    key = f"ci-{uuid.uuid4()}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_API_KEY", "pnu_not-to-be-printed")
        yield trigger("--deployment", "ci-trigger-echo/ci-test", "--param", "image=20240101",
                      "--idempotency-key", key), key


def test_a_completing_run_exits_0_with_its_artifacts(first_run: tuple[Trigger, str]) -> None:
    result, _ = first_run
    assert result.code == 0, result.out + result.err
    assert "Completed (COMPLETED)" in result.out
    assert "ci-echo [markdown]: what arrived" in result.out
    assert "image `20240101`" in result.out


def test_an_image_tag_like_20240101_arrives_as_a_string(first_run: tuple[Trigger, str]) -> None:
    from prefect import get_client

    result, _ = first_run
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(uuid.UUID(result.flow_run_id))
    assert flow_run.parameters == {"image": "20240101"}
    assert any(line.split() == ["image", "str"] for line in result.out.splitlines())  # the flow saw a str


def test_the_api_key_is_never_printed(first_run: tuple[Trigger, str]) -> None:
    result, _ = first_run
    assert "pnu_not-to-be-printed" not in result.out + result.err


def test_the_same_idempotency_key_gives_the_same_flow_run(first_run: tuple[Trigger, str]) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    result, key = first_run
    again = trigger("--deployment", "ci-trigger-echo/ci-test", "--param", "image=20240101", "--idempotency-key", key)
    assert again.code == 0 and again.out.startswith("reusing flow run")
    assert again.flow_run_id == result.flow_run_id
    with get_client(sync_client=True) as client:
        count = client.count_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["ci-test"])))
    assert count == 1


def test_a_reused_key_with_other_parameters_exits_2(first_run: tuple[Trigger, str]) -> None:
    _, key = first_run
    result = trigger("--deployment", "ci-trigger-echo/ci-test", "--param", "image=20240202", "--idempotency-key", key)
    assert result.code == 2
    assert "image='20240101' (asked '20240202')" in result.err


def test_a_failing_run_exits_1_with_its_state_message(served: None) -> None:
    result = trigger("--deployment", "ci-trigger-echo/ci-other", "--param", "image=registry/app:fail",
                     "--idempotency-key", f"ci-{uuid.uuid4()}")
    assert result.code == 1, result.out + result.err
    assert "ended Failed (FAILED)" in result.out
    assert "is tagged to fail" in result.out
    assert "artifacts (2):" in result.out  # not the record of where the exception is stored


def test_an_unknown_deployment_exits_2_naming_it_and_the_known_ones(served: None) -> None:
    result = trigger("--deployment", "ci-trigger-echo/nope", "--param", "image=x", "--idempotency-key", "k")
    assert result.code == 2
    assert "deployment 'ci-trigger-echo/nope' not found" in result.err
    assert "ci-trigger-echo/ci-test" in result.err


def test_an_unknown_parameter_exits_2_before_starting_anything(served: None) -> None:
    result = trigger("--deployment", "ci-trigger-echo/ci-other", "--param", "imag=x", "--idempotency-key", "k")
    assert result.code == 2
    assert "takes no parameter 'imag'; known: image" in result.err
    assert result.out == ""


def test_a_run_nobody_picks_up_exits_3_after_the_timeout(served: None) -> None:
    result = trigger("--deployment", "ci-trigger-echo/ci-unserved", "--param", "image=x",
                     "--idempotency-key", f"ci-{uuid.uuid4()}", "--timeout", "1")
    assert result.code == 3
    assert "still Scheduled after 1s" in result.err


def test_prefect_dedupes_idempotency_keys_per_flow_not_per_deployment(served: None) -> None:
    """Why the trigger scopes its keys: the raw API gives one run for two deployments of a flow."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    key = f"raw-{uuid.uuid4()}"
    with httpx.Client(base_url=PREFECT_API_URL.value()) as client:
        runs = []
        for name in ("ci-unserved", "ci-unserved-2"):
            deployment = client.get(f"/deployments/name/ci-trigger-echo/{name}").raise_for_status().json()
            runs.append(_post_retrying_5xx(client, f"/deployments/{deployment['id']}/create_flow_run",
                                           {"parameters": {"image": "x"}, "idempotency_key": key}))
    assert runs[0]["id"] == runs[1]["id"]


def _post_retrying_5xx(client: Any, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """As any client of the API must: the test server on SQLite answers 503 ("database is
    locked") now and then under load; any other error fails the test with its status."""
    for attempt in range(1, 6):
        resp = client.post(url, json=body)
        if resp.status_code < 500:
            break
        time.sleep(0.5 * attempt)
    return resp.raise_for_status().json()


def test_the_same_key_on_another_deployment_of_the_flow_gets_its_own_run(served: None) -> None:
    key = f"ci-{uuid.uuid4()}"
    first, second = (trigger("--deployment", f"ci-trigger-echo/{name}", "--param", "image=x",
                             "--idempotency-key", key, "--timeout", "0.5")
                     for name in ("ci-unserved", "ci-unserved-2"))
    assert first.out.startswith("created") and second.out.startswith("created")
    assert first.flow_run_id != second.flow_run_id


def test_a_key_left_by_a_deleted_deployment_of_the_same_name_exits_2(served: None) -> None:
    from prefect import get_client
    from prefect.states import Cancelled

    key = f"ci-{uuid.uuid4()}"
    args = ("--deployment", "ci-trigger-echo/ci-recreated", "--param", "image=x", "--idempotency-key", key,
            "--timeout", "0.5")
    deployment_id = echo.to_deployment(name="ci-recreated").apply()
    first = trigger(*args)
    assert first.code == 3
    with get_client(sync_client=True) as client:
        # A run that got past Scheduled: deleting a deployment deletes its scheduled runs.
        client.set_flow_run_state(uuid.UUID(first.flow_run_id), Cancelled(), force=True)
        client.delete_deployment(deployment_id)
    echo.to_deployment(name="ci-recreated").apply()
    result = trigger(*args)
    assert result.code == 2
    assert "of an earlier deployment named 'ci-trigger-echo/ci-recreated'" in result.err
