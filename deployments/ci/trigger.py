"""Start a runbook deployment from CI, wait for it, and pass its outcome on as the exit code.

    python -m deployments.ci.trigger --deployment deploy/production \\
        --param environment=production --param service=api --param image=registry/app:20240101 \\
        --idempotency-key "$CI_RUN_ID"

Needs only httpx, so a CI machine can run it without Prefect. It talks to the API at
`--api-url` (or `$PREFECT_API_URL`), with `Authorization: Bearer $PREFECT_API_KEY` when that is set
(or Basic auth from `$PREFECT_API_AUTH_STRING`, for a self-hosted server behind it).

`--param k=v` values are always strings: `prefect deployment run --param` parses each value as
JSON, so an image tag `20240101` would arrive as the integer 20240101. `--json-param k=<json>` is
there for values that are meant to be typed.

The idempotency key makes the trigger safe to retry: a CI retry with the same key follows the run
it already started instead of starting a second deploy. The server keeps one flow run per (flow,
key), not per deployment, so the key sent is scoped to the deployment: `deploy/production:<key>`.

Exit codes:
    0  the flow run ended COMPLETED
    1  the flow run ended FAILED, CRASHED or CANCELLED (its state message is printed)
    2  nothing was started: bad arguments, unknown deployment, parameters refused, API unreachable
    3  the flow run was started but its outcome is unknown: --timeout passed (the run goes on)

Errors (all `TriggerError`, each carrying the exit code above):
    TriggerError
    ├── NotStarted        nothing started: arguments, deployment, parameters, auth, API down (2)
    └── OutcomeUnknown    started, but we stopped following it (3)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

EXIT_COMPLETED = 0
EXIT_NOT_COMPLETED = 1
EXIT_NOT_STARTED = 2
EXIT_OUTCOME_UNKNOWN = 3

TERMINAL_STATE_TYPES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
# Worth another try: the server or a proxy in front of it is busy or restarting.
TRANSIENT_STATUS_CODES = frozenset({429, 502, 503, 504})


class TriggerError(Exception):
    exit_code = EXIT_NOT_STARTED


class NotStarted(TriggerError):
    exit_code = EXIT_NOT_STARTED


class OutcomeUnknown(TriggerError):
    exit_code = EXIT_OUTCOME_UNKNOWN


# ---------------------------------------------------------------------------------------------
# Pure helpers


def parse_params(string_params: Iterable[str], json_params: Iterable[str] = ()) -> dict[str, Any]:
    """`["image=registry/app:20240101"]` -> `{"image": "registry/app:20240101"}`; values of
    `string_params` stay strings, values of `json_params` are parsed as JSON."""
    params: dict[str, Any] = {}

    def add(text: str, option: str, convert: Callable[[str, str], Any]) -> None:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not name:
            raise NotStarted(f"{option} {text!r} is not NAME=VALUE")
        if not name.isidentifier():
            raise NotStarted(f"{option} {text!r}: {name!r} is not a valid parameter name")
        if name in params:
            raise NotStarted(f"parameter {name!r} is given twice")
        params[name] = convert(name, value)

    def as_string(name: str, value: str) -> str:
        # An empty value is nearly always an unset CI variable, not a wish for "".
        if value == "":
            raise NotStarted(f"--param {name}= has an empty value; for an empty string use --json-param {name}='\"\"'")
        return value

    def as_json(name: str, value: str) -> Any:
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise NotStarted(f"--json-param {name}: {value!r} is not JSON ({exc.msg})") from None

    for text in string_params:
        add(text, "--param", as_string)
    for text in json_params:
        add(text, "--json-param", as_json)
    return params


def split_deployment_name(name: str) -> tuple[str, str]:
    """`"deploy/production"` -> `("deploy", "production")`."""
    flow_name, sep, deployment_name = name.partition("/")
    if not sep or not flow_name or not deployment_name or "/" in deployment_name:
        raise NotStarted(f"deployment {name!r} is not FLOW_NAME/DEPLOYMENT_NAME, e.g. 'deploy/production'")
    return flow_name, deployment_name


def scoped_key(deployment: str, key: str) -> str:
    """The idempotency key as sent. Prefect dedupes flow runs by (flow, key) (the unique index
    `uq_flow_run__flow_id_idempotency_key`), so without the deployment's name a staging and a
    production deploy from one CI run would share a flow run."""
    return f"{deployment}:{key}"


def unknown_params(params: dict[str, Any], parameter_schema: dict[str, Any] | None) -> list[str]:
    """Names in `params` that the deployment's flow does not take (none if the schema is unknown)."""
    known = (parameter_schema or {}).get("properties") or {}
    if not known:
        return []
    return sorted(set(params) - set(known))


def exit_code_for(state_type: str) -> int:
    """The exit code for a flow run that ended in `state_type`."""
    if state_type not in TERMINAL_STATE_TYPES:
        raise ValueError(f"state {state_type!r} is not terminal; terminal: {', '.join(sorted(TERMINAL_STATE_TYPES))}")
    return EXIT_COMPLETED if state_type == "COMPLETED" else EXIT_NOT_COMPLETED


def ui_url_for(api_url: str) -> str:
    """The UI's base URL for an API URL, the way Prefect derives it: `http://host:4200/api` ->
    `http://host:4200`; `https://api.prefect.cloud/api/accounts/A/workspaces/W` ->
    `https://app.prefect.cloud/account/A/workspace/W`."""
    url = api_url.rstrip("/")
    if url.startswith("https://api.") and ".prefect." in url:
        url = "https://app." + url[len("https://api."):]
    if url.endswith("/api"):
        url = url[: -len("/api")]
    return url.replace("/api/", "/").replace("/accounts/", "/account/").replace("/workspaces/", "/workspace/")


def format_table(data: Any, max_rows: int = 10, max_width: int = 30) -> list[str]:
    """A table artifact's data (list of dicts, dict of columns, or list of rows) as text lines."""
    header: list[str] = []
    rows: list[list[Any]]
    if isinstance(data, dict):
        header = [str(k) for k in data]
        columns = list(data.values())
        rows = [list(r) for r in zip(*columns, strict=False)]
    elif isinstance(data, list) and all(isinstance(r, dict) for r in data):
        for r in data:
            header += [str(k) for k in r if str(k) not in header]
        rows = [[r.get(k, "") for k in header] for r in data]
    elif isinstance(data, list):
        rows = [list(r) if isinstance(r, list | tuple) else [r] for r in data]
    else:
        return [_clip(str(data), max_width * 3)]

    def cell(v: Any) -> str:
        return _clip("" if v is None else str(v), max_width)

    shown = [[cell(v) for v in r] for r in rows[:max_rows]]
    table = ([header] if header else []) + shown
    ncols = max((len(r) for r in table), default=0)
    widths = [max((len(r[i]) for r in table if i < len(r)), default=0) for i in range(ncols)]

    def line(r: list[str]) -> str:
        return "  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip()

    out = [line(header), line(["-" * w for w in widths])] if header else []
    out += [line(r) for r in shown]
    if len(rows) > max_rows:
        out.append(f"... {len(rows) - max_rows} more rows")
    return out


def summarize_artifact(artifact: dict[str, Any], max_lines: int = 8) -> list[str]:
    """A few lines about one artifact: key, type and description, then a glimpse of its data."""
    kind = artifact.get("type") or "artifact"
    head = f"{artifact.get('key') or '(no key)'} [{kind}]"
    if artifact.get("description"):
        head += f": {' '.join(str(artifact['description']).split())}"
    data = artifact.get("data")
    body: list[str] = []
    if kind == "markdown" and isinstance(data, str):
        lines = [x.rstrip() for x in data.splitlines() if x.strip()]
        body = lines[:max_lines] + ([f"... {len(lines) - max_lines} more lines"] if len(lines) > max_lines else [])
    elif kind == "table":
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError:
                pass
        body = format_table(data, max_rows=max_lines)
    elif kind == "progress":
        body = [f"{data}%"]
    elif kind in ("link", "image") and data:
        body = [str(data)]
    return [head] + [f"    {x}" for x in body]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------------------------------------
# The Prefect API over HTTP


@dataclass
class Api:
    client: httpx.Client
    attempts: int = 4
    backoff_seconds: float = 1.0

    def send(self, method: str, path: str, json_body: Any = None) -> httpx.Response:
        """One request, tried again on transient failures. Safe for the POSTs we make: filters are
        reads, and creating a flow run is deduplicated by its idempotency key."""
        for attempt in range(1, self.attempts + 1):
            try:
                response = self.client.request(method, path, json=json_body)
            except httpx.TransportError as exc:
                if attempt == self.attempts:
                    raise NotStarted(f"{method} {path}: cannot reach the Prefect API at {self.client.base_url}: {exc!r}") from exc
            else:
                if response.status_code not in TRANSIENT_STATUS_CODES or attempt == self.attempts:
                    return response
            time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def checked(self, method: str, path: str, json_body: Any = None) -> Any:
        return check(self.send(method, path, json_body), f"{method} {path}")


def check(response: httpx.Response, doing: str) -> Any:
    """The response's JSON, or `NotStarted` saying what `doing` was refused and why."""
    if response.status_code in (401, 403):
        raise NotStarted(f"{doing}: the Prefect API refused the credentials ({response.status_code}); "
                         "check PREFECT_API_KEY (or PREFECT_API_AUTH_STRING)")
    if response.is_error:
        raise NotStarted(f"{doing} failed ({response.status_code}): {_detail(response)}")
    return response.json()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


def make_client(api_url: str, api_key: str | None, auth_string: str | None, timeout: float = 30) -> httpx.Client:
    headers = {"User-Agent": "runbook-flows-ci-trigger"}
    if auth_string:
        headers["Authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
    elif api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=timeout)


def read_deployment(api: Api, name: str) -> dict[str, Any]:
    flow_name, deployment_name = split_deployment_name(name)
    response = api.send("GET", f"/deployments/name/{quote(flow_name, safe='')}/{quote(deployment_name, safe='')}")
    if response.status_code == 404:
        others = api.checked("POST", "/deployments/filter",
                             {"flows": {"name": {"any_": [flow_name]}}, "limit": 50})
        known = sorted(f"{flow_name}/{d['name']}" for d in others)
        raise NotStarted(f"deployment {name!r} not found at {api.client.base_url}; "
                         + (f"known for flow {flow_name!r}: {', '.join(known)}" if known
                            else f"flow {flow_name!r} has no deployments there"))
    return check(response, f"looking up deployment {name!r}")


def create_flow_run(api: Api, deployment: dict[str, Any], params: dict[str, Any], key: str) -> tuple[dict[str, Any], bool]:
    """The flow run for (deployment, key), and whether this call created it."""
    response = api.send("POST", f"/deployments/{deployment['id']}/create_flow_run",
                        {"parameters": params, "idempotency_key": key})
    flow_run = check(response, f"starting a run of deployment {deployment['name']!r}")
    return flow_run, response.status_code == 201


def follow(api: Api, flow_run: dict[str, Any], timeout: float, poll: float,
           say: Callable[[str], None]) -> dict[str, Any]:
    """Poll the flow run until it reaches a terminal state, saying each change of state."""
    clock = time.monotonic
    started = clock()
    last: tuple[str, str] | None = None
    last_problem: str | None = None
    while True:
        state = flow_run.get("state") or {}
        seen = (state.get("type", "?"), state.get("name", "?"))
        if seen != last:
            say(f"[{clock() - started:6.1f}s] {seen[1]} ({seen[0]})")
            last = seen
        if seen[0] in TERMINAL_STATE_TYPES:
            return flow_run
        if clock() - started >= timeout:
            raise OutcomeUnknown(f"flow run {flow_run['name']!r} is still {seen[1]} after {timeout:g}s; "
                                 "it carries on: follow it in the UI")
        time.sleep(poll)
        # A hiccup while following must not fail a deploy that is going fine; the timeout bounds it.
        try:
            response = api.send("GET", f"/flow_runs/{flow_run['id']}")
        except NotStarted as exc:
            problem: str | None = str(exc)
        else:
            problem = None if response.is_success else f"{response.status_code} {_detail(response)[:200]}"
            if response.is_success:
                flow_run = response.json()
        if problem and problem != last_problem:
            say(f"  (could not read the flow run, still trying: {problem})")
        last_problem = problem


def read_artifacts(api: Api, flow_run_id: str) -> list[dict[str, Any]]:
    artifacts = api.checked("POST", "/artifacts/filter",
                            {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}},
                             "sort": "CREATED_DESC", "limit": 50})
    # Untyped, keyless artifacts are Prefect's own records of where a result is stored.
    return [a for a in reversed(artifacts) if a.get("type") not in (None, "result")]


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    def positive(text: str) -> float:
        value = float(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
        return value

    p = argparse.ArgumentParser(
        prog="python -m deployments.ci.trigger",
        description="Start a Prefect deployment run from CI, follow it, exit 0 only if it completes.")
    p.add_argument("--deployment", required=True, metavar="FLOW/DEPLOYMENT", help="e.g. deploy/production")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter whose value is passed as a string, always (repeatable)")
    p.add_argument("--json-param", action="append", default=[], metavar="NAME=JSON",
                   help="a parameter whose value is parsed as JSON: numbers, booleans, lists (repeatable)")
    p.add_argument("--idempotency-key", required=True,
                   help="one flow run per key and deployment: a CI retry follows the run it already started")
    p.add_argument("--api-url", default=os.environ.get("PREFECT_API_URL"),
                   help="Prefect API URL (default: $PREFECT_API_URL)")
    p.add_argument("--api-key-env", default="PREFECT_API_KEY", metavar="VAR",
                   help="environment variable holding the API key (default: PREFECT_API_KEY); "
                        "the key itself is never taken on the command line nor printed")
    p.add_argument("--ui-url", default=os.environ.get("PREFECT_UI_URL"),
                   help="UI base URL for the printed link (default: $PREFECT_UI_URL, else derived from the API URL)")
    p.add_argument("--timeout", type=positive, default=1800.0, help="seconds to follow the run (default: 1800)")
    p.add_argument("--poll", type=positive, default=2.0, help="seconds between polls (default: 2)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def say(text: str) -> None:
        print(text, flush=True)

    try:
        return _trigger(args, say)
    except TriggerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


def _trigger(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    params = parse_params(args.param, args.json_param)
    if not args.api_url:
        raise NotStarted("no Prefect API URL: pass --api-url or set PREFECT_API_URL")
    key = args.idempotency_key.strip()
    if not key:
        raise NotStarted("--idempotency-key is empty: pass the CI run's id, e.g. \"$CI_PIPELINE_ID\"")

    with make_client(args.api_url, os.environ.get(args.api_key_env), os.environ.get("PREFECT_API_AUTH_STRING")) as client:
        api = Api(client)
        deployment = read_deployment(api, args.deployment)
        unknown = unknown_params(params, deployment.get("parameter_openapi_schema"))
        if unknown:
            known = sorted((deployment.get("parameter_openapi_schema") or {}).get("properties") or {})
            raise NotStarted(f"{args.deployment!r} takes no parameter {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(known)}")

        key = scoped_key(args.deployment, key)
        flow_run, created = create_flow_run(api, deployment, params, key)
        if flow_run.get("deployment_id") != deployment["id"]:
            # Only when the deployment was deleted and made again under the same name since.
            raise NotStarted(f"idempotency key {key!r} already belongs to flow run {flow_run['name']!r} "
                             f"({flow_run['id']}) of an earlier deployment named {args.deployment!r}; use a new key")
        had = flow_run.get("parameters") or {}
        mismatched = [f"{k}={had.get(k)!r} (asked {v!r})" for k, v in params.items() if had.get(k) != v]
        if not created and mismatched:
            # The server hands back the first run for a key whatever the parameters; following it
            # would report another deploy as this one.
            raise NotStarted(f"idempotency key {key!r} already belongs to flow run {flow_run['name']!r} "
                             f"({flow_run['id']}) with other parameters: {', '.join(mismatched)}; use a new key")

        ui = (args.ui_url or ui_url_for(args.api_url)).rstrip("/")
        say(f"{'created' if created else 'reusing'} flow run {flow_run['name']!r} of {args.deployment} "
            f"(idempotency key {key!r})")
        say(f"  id:         {flow_run['id']}")
        say(f"  url:        {ui}/runs/flow-run/{flow_run['id']}")
        say(f"  parameters: {json.dumps(flow_run.get('parameters', {}), sort_keys=True)}")

        flow_run = follow(api, flow_run, args.timeout, args.poll, say)
        state = flow_run["state"]

        try:
            artifacts = read_artifacts(api, flow_run["id"])
        except NotStarted as exc:  # the run's outcome is known; the artifacts are extra
            say(f"artifacts: could not read them: {exc}")
        else:
            say(f"artifacts ({len(artifacts)}):")
            for artifact in artifacts:
                for line in summarize_artifact(artifact):
                    say(f"  {line}")

        code = exit_code_for(state["type"])
        if code == EXIT_COMPLETED:
            say(f"flow run {flow_run['name']!r} {state['name']}")
        else:
            say(f"flow run {flow_run['name']!r} ended {state['name']} ({state['type']}): {state.get('message') or '(no message)'}")
        return code


if __name__ == "__main__":
    sys.exit(main())
