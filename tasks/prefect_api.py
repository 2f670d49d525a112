"""Prefect as an outside system: artifacts, events, run tags and global concurrency limits.

Artifact keys must match ^[a-z0-9-]*$; `naming.artifact_key()` makes them so. Concurrency
limits are created when missing, because `concurrency(..., strict=True)` fails on a
missing limit and a non-strict one silently does nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from tasks.errors import PolicyRefused
from tasks.naming import run_tags
from tasks.redact import remember, scrub


def publish_report(key: str, markdown: str, description: str) -> None:
    create_markdown_artifact(key=key, markdown=scrub(markdown), description=scrub(description))


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    clean = [{k: scrub(str(v)) if isinstance(v, str) else v for k, v in row.items()} for row in rows]
    create_table_artifact(key=key, table=clean, description=scrub(description))


def emit(event: str, resource_id: str, payload: dict[str, Any], related: list[dict[str, str]] | None = None) -> None:
    """Emit a `runbook.*` event about one resource; strings are scrubbed of secrets."""
    assert event.startswith("runbook."), event
    clean = {k: scrub(v) if isinstance(v, str) else v for k, v in payload.items()}
    emit_event(event=event, resource={"prefect.resource.id": resource_id}, payload=clean, related=related)


def ensure_concurrency_limit(name: str, limit: int) -> None:
    """Create the global concurrency limit if missing; align its size with config."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            except ObjectAlreadyExists:  # another run created it first
                pass
            return
        if existing.limit != limit:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit))


def remember_for_rollback(**values: Any) -> None:
    """Keep values in the running task's transaction, for its `on_rollback` hook
    (`txn.get(name)`). Outside a transaction there is nothing to undo: a no-op."""
    from prefect.transactions import get_transaction

    txn = get_transaction()
    if txn is not None:
        for name, value in values.items():
            txn.set(name, value)


# A slot is a lease that its holder renews; a dead worker's slot frees itself when the lease
# runs out, so that the resumed attempt of its run can take it (60 s is Prefect's minimum).
LOCK_LEASE_SECONDS = 60


@contextmanager
def holding(limits: dict[str, int], timeout_seconds: float) -> Iterator[None]:
    """Hold one slot of each named global limit, creating limits as needed."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency.sync import concurrency
    from prefect.runtime import flow_run

    for name, size in limits.items():
        ensure_concurrency_limit(name, size)
    holder = ConcurrencyLeaseHolder(type="flow_run", id=flow_run.id) if flow_run.id else None
    with concurrency(list(limits), occupy=1, timeout_seconds=timeout_seconds, strict=True,
                     lease_duration=LOCK_LEASE_SECONDS, holder=holder):
        yield


# --- who holds an environment's change slot ---------------------------------------------------------

# Prefect's API does not say which run holds a global concurrency slot, so the holder tags
# itself; runs that are not running any more do not count, whatever their tags.
CHANGE_TAG = "change:{}"
_HOLDING_STATES = ("RUNNING", "PAUSED", "CANCELLING")


@dataclass(frozen=True)
class RunRef:
    id: str
    name: str
    flow: str
    state: str
    url: str

    def describe(self) -> str:
        return f"{self.flow} run {self.name!r} ({self.state.lower()}, {self.url})"


def describe_runs(runs: list[RunRef]) -> str:
    return ", ".join(r.describe() for r in runs)


def run_url(flow_run_id: Any) -> str:
    from prefect.settings import get_current_settings

    ui = (get_current_settings().ui_url or "").rstrip("/")
    return f"{ui}/runs/flow-run/{flow_run_id}" if ui else f"flow run {flow_run_id}"


def _this_run() -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx is not None and ctx.flow_run is not None else None


def change_holders(environment: str) -> list[RunRef]:
    """The runs, other than this one, that hold the environment's change slot. (A subflow whose
    parent holds it never asks: `changes.one_change` knows its parent holds it. This run can
    carry the tag from an attempt that crashed.)"""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    mine = _this_run()
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[CHANGE_TAG.format(environment)]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in _HOLDING_STATES]))))
        others = [r for r in runs if str(r.id) != mine]
        flows = {r.flow_id: client.read_flow(r.flow_id).name for r in others}
    return [RunRef(str(r.id), r.name, flows[r.flow_id], r.state_type.value if r.state_type else "?", run_url(r.id))
            for r in others]


@contextmanager
def marked_change_holder(environment: str) -> Iterator[None]:
    """Tag this run as the holder of the environment's change slot while it holds it."""
    run = _this_run()
    if run is None:
        yield
        return
    tag = CHANGE_TAG.format(environment)
    _retag(run, add=tag)
    try:
        yield
    finally:
        _retag(run, remove=tag)


def _retag(flow_run_id: Any, add: str | None = None, remove: str | None = None) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        tags = set(client.read_flow_run(flow_run_id).tags or [])
        client.update_flow_run(flow_run_id, tags=sorted((tags | {add} if add else tags) - {remove}))


def say(message: str) -> None:
    """A line in the run's log (or the process's, outside a run)."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_logger, get_run_logger

    try:
        get_run_logger().info(scrub(message))
    except MissingContextError:
        get_logger("runbook").info(scrub(message))


# How often a crashed run is resumed (`deployments/automations.py` reschedules it) before
# it stops and says so: a run that keeps killing its worker needs a person.
MAX_RESUMES = 2


def resume_attempt(max_resumes: int = MAX_RESUMES) -> int:
    """Which attempt of this flow run this is: 1, or 1 + the times it crashed before. Past
    `max_resumes` resumes, refuses to go on (the run ends Failed, an alert's cue) and emits
    `runbook.resume.exhausted`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.runtime import flow_run

    if not flow_run.id:
        return 1
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run.id)
    crashes = sum(1 for st in states if st.type == StateType.CRASHED)
    if crashes > max_resumes:
        emit("runbook.resume.exhausted", f"prefect.flow-run.{flow_run.id}",
             {"flow_run": str(flow_run.id), "flow": flow_run.flow_name, "crashes": crashes, "max_resumes": max_resumes})
        raise PolicyRefused(f"flow run {flow_run.name} crashed {crashes} times, more than the {max_resumes} resumes "
                            "allowed: not resuming again. Its last report says where it stopped; finish or "
                            "undo it by hand, then start a new run")
    return 1 + crashes


def interrupted(flow: Any, flow_run: Any, state: Any) -> None:
    """`on_cancellation` and `on_crashed` hook of every runbook: say so, as an event alerts can
    follow. The compensation itself has run by then, in the flow: a cancel's SIGTERM unwinds
    through the same transaction undo hooks and `except` blocks as a failure, and the report
    published on the way out says what was undone. A run killed outright runs nothing: it is
    marked Crashed and resumed (deployments/automations.py), and the new attempt finishes or
    compensates."""
    what = "cancelled" if state.is_cancelling() or state.is_cancelled() else "crashed"
    emit(f"runbook.run.{what}", f"prefect.flow-run.{flow_run.id}",
         {"flow": flow.name, "flow_run": str(flow_run.id), "name": flow_run.name, "state": state.name,
          "message": state.message or "", "parameters": {k: v for k, v in (flow_run.parameters or {}).items()
                                                         if isinstance(v, str | int | float | bool)}})


def tag_run(flow: Any, flow_run: Any, state: Any) -> None:
    """`on_running` hook of every runbook: tag the run with its runbook and environment
    (`naming.run_tags`), so that the runs list filters by them also when the flow was
    called directly rather than through a deployment, whose tags a run inherits."""
    from prefect.client.orchestration import SyncPrefectClient, get_client
    from prefect.context import FlowRunContext

    tags = sorted(set(flow_run.tags or []) | set(run_tags(flow.name, flow_run.parameters or {})))
    if tags == sorted(flow_run.tags or []):
        return
    ctx = FlowRunContext.get()
    if ctx is not None and isinstance(ctx.client, SyncPrefectClient):  # the engine's own: no new connection
        ctx.client.update_flow_run(flow_run.id, tags=tags)
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, tags=tags)


# Every runbook's `@flow(..., **HOOKS)`: tagged when it runs; an event when cancelled or crashed.
HOOKS: dict[str, Any] = {"on_running": [tag_run], "on_cancellation": [interrupted], "on_crashed": [interrupted]}


# --- variables: what runs remember between them -------------------------------------------------------


def read_variable(name: str, default: Any) -> Any:
    from prefect.variables import Variable

    return Variable.get(name, default=default, _sync=True)  # type: ignore[call-arg]


def write_variable(name: str, value: Any) -> None:
    from prefect.variables import Variable

    Variable.set(name, value, overwrite=True, _sync=True)  # type: ignore[call-arg]


def save_secret(name: str, value: str) -> None:
    """A Prefect Secret block holding `value` (a connection string the run made); the name is
    what reports give."""
    from prefect.blocks.system import Secret

    remember(value)
    Secret(value=value).save(name, overwrite=True, _sync=True)  # type: ignore[call-arg]


def unset_variable(name: str) -> None:
    from prefect.variables import Variable

    Variable.unset(name, _sync=True)  # type: ignore[call-arg]
