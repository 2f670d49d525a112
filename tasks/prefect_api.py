"""Prefect as an outside system: artifacts, events, run tags and global concurrency limits.

Artifact keys must match ^[a-z0-9-]*$; `naming.artifact_key()` makes them so. Concurrency
limits are created when missing, because `concurrency(..., strict=True)` fails on a
missing limit and a non-strict one silently does nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from tasks.naming import run_tags
from tasks.redact import scrub


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


@contextmanager
def holding(limits: dict[str, int], timeout_seconds: float) -> Iterator[None]:
    """Hold one slot of each named global limit, creating limits as needed."""
    from prefect.concurrency.sync import concurrency

    for name, size in limits.items():
        ensure_concurrency_limit(name, size)
    with concurrency(list(limits), occupy=1, timeout_seconds=timeout_seconds, strict=True):
        yield


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
