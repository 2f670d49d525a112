"""One storage client per flow run and storage URL, not one per task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from tasks.config import StorageConfig
from tasks.storage import open_storage


@task
def storage_id(cfg: StorageConfig) -> int:
    return id(open_storage(cfg))


@flow
def two_steps(cfg: StorageConfig, other: StorageConfig) -> dict[str, Any]:
    return {"first": storage_id(cfg), "second": storage_id(cfg), "other": storage_id(other),
            "in_flow": id(open_storage(cfg))}


def test_the_tasks_of_a_run_share_one_client_per_storage_and_a_new_run_gets_its_own(tmp_path: Path) -> None:
    cfg = StorageConfig(url=f"file://{tmp_path}/a")
    other = StorageConfig(url=f"file://{tmp_path}/b")
    run1, run2 = two_steps(cfg, other), two_steps(cfg, other)
    assert run1["first"] == run1["second"] == run1["in_flow"]
    assert run1["other"] != run1["first"]  # another storage URL, another client
    # a new run builds its client again, so rotated credentials are picked up (the first run's
    # client is still cached, so its id cannot have been reused)
    assert run2["first"] == run2["second"] != run1["first"]
